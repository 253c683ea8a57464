//! The test Kubernetes API server (`netfence_testbed::apiserver`) and the real agent
//! started on it (`agent`).
#![allow(
    dead_code,
    reason = "each test file uses a different subset of the controls"
)]

pub mod agent;

pub use netfence_testbed::apiserver::*;
