//! Deny-until-ready on the agent side: the socket the `netfence-cni` plugin talks to,
//! the pods it announced that the run loop enforces (deny-all both ways until the
//! state has them), and the installation of the plugin into a node's CNI
//! configuration.
//!
//! - [`cache`]: the container runtime's CNI result cache (`--cni-cache-dir`), read as
//!   records of the same authority as the plugin's ADDs.
//! - [`server`]: the unix socket (`--cni-socket`), one request per connection.
//! - [`pending`]: pending endpoints, merged around `compile`, and the readiness check.
//! - [`persist`]: the pending endpoints kept in a file across agent restarts.
//! - [`install`], [`command`]: `netfence cni-install` and `netfence uninstall`'s reverse.
//! - [`keep`]: `netfence run --cni-conf-dir`, the entry put back when Flannel rewrites
//!   its conflist.
//! - [`removal`]: safe removal: the agent's lease, and on SIGTERM whether netfence is
//!   being uninstalled (the entry goes) or restarted (it stays).

pub mod cache;
pub mod command;
pub mod install;
pub mod keep;
pub mod pending;
pub mod persist;
pub mod removal;
pub mod server;

pub use pending::{Pending, PendingEndpoint};
pub use server::{CniCall, CniServer};
