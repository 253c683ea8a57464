//! netfence's policy engine: the one owner of desired state.
//!
//! Input: Kubernetes objects (k8s-openapi types) validated and defaulted as the API
//! server does (`validate`) into the slim `model::State`, plus what the node adds
//! (its addresses, `--allow-node`). Output: the `image::Image`, the exact contents of
//! every BPF map and the metadata that explains them (which policy and rule an entry
//! came from), computed by `compile`. `image::Image::lookup` mirrors the kernel's
//! lookup so semantics are tested without root.
//!
//! No I/O, no clocks, no BPF, no tokio: this crate builds and its tests run without
//! the BPF toolchain and without root.

pub mod change;
pub mod compile;
pub mod error;
pub mod image;
pub mod model;
pub mod scenario;
pub mod validate;
