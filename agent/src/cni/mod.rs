//! Deny-until-ready on the agent side: the socket the `netfence-cni` plugin talks to,
//! the pods it announced that the run loop enforces (deny-all both ways until the
//! state has them), and the installation of the plugin into a node's CNI
//! configuration.
//!
//! - [`server`]: the unix socket (`--cni-socket`), one request per connection.
//! - [`pending`]: pending endpoints, merged around `compile`, and the readiness check.
//! - [`install`], [`command`]: `netfence cni-install` and `netfence uninstall`'s reverse.

pub mod command;
pub mod install;
pub mod pending;
pub mod server;

pub use pending::{Pending, PendingEndpoint};
pub use server::{CniCall, CniServer};
