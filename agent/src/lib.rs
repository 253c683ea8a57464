//! netfence: enforces Kubernetes NetworkPolicy with eBPF TC programs on pod veths.
//!
//! Data flow: `source` (manifest directory, later the Kubernetes API) → `model::State`
//! → `compile` (pure) → `image::Image` → `dataplane` (load, attach, sync the BPF maps,
//! read events). The policy engine is the pure crate `netfence_policy`; its modules
//! are re-exported here under the names the agent has always used.

pub use netfence_policy::{compile, image, model, scenario};

pub mod cli;
pub mod cni;
pub mod dataplane;
pub mod enforcer;
pub mod runtime;
pub mod source;
pub mod telemetry;
