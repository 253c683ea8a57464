//! The test Kubernetes API server (`netfence_testbed::apiserver`); the real agent on
//! it is `netfence_testbed::kube_agent`.

pub use netfence_testbed::apiserver::*;
