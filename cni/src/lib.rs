//! netfence-cni: a chained CNI plugin that makes a new pod's sandbox wait until the
//! netfence agent on its node enforces it (deny until ready). The binary is `main.rs`;
//! the protocol types are shared with the agent, which serves the other end.
//!
//! - [`spec`]: the CNI environment, configuration, previous result and errors.
//! - [`protocol`]: the request/response on the agent's unix socket, and the client.
//! - [`lease`]: the agent's lease, which bounds how long the plugin fails closed.
//! - [`plugin`]: one invocation (ADD, DEL, CHECK, VERSION), without process I/O.

pub mod lease;
pub mod plugin;
pub mod protocol;
pub mod spec;
