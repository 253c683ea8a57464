//! netfence: enforces Kubernetes NetworkPolicy with eBPF TC programs on pod veths.
//!
//! Data flow: `source` (manifest directory, later the Kubernetes API) → `model::State`
//! → `compile` (pure) → `image::Image` → `dataplane` (load, attach, sync the BPF maps,
//! read events).

pub mod cli;
pub mod cni;
pub mod compile;
pub mod dataplane;
pub mod image;
pub mod model;
pub mod scenario;
pub mod source;
pub mod telemetry;
