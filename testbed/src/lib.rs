//! Network-namespace test beds for netfence, shared by the packet tests
//! (`agent/tests/packet.rs`) and `cargo xtask demo`.
//!
//! A [`TestBed`] is one node: a namespace with a bridge `br0` (198.18.0.1/24,
//! fd00:18::1/64) and, per pod, a namespace whose `eth0` is the far end of a veth
//! whose host end (`nfp-<pod>`) is a port of the bridge. It writes the cluster's
//! Namespaces and Pods into a manifest directory exactly as `kubectl get -o yaml`
//! prints them, runs the real `netfence run` inside the node namespace, and probes
//! real TCP, UDP and ICMP traffic between the namespaces.
//!
//! Every resource is owned by a guard whose `Drop` removes it, panics included, and
//! every name carries a per-bed id (`<prefix><pid>x<n>`), so beds run in parallel.

mod agent;
mod bed;
pub mod cni;
mod manifest;
mod netns;
mod probe;

pub use agent::{Agent, Attach};
pub use bed::{
    NODE_NAME, NODE_V4, NODE_V6, POD_INTERFACES, PodNs, TestBed, namespace_spec, pod_spec,
};
pub use manifest::{NamespaceSpec, PodSpec, cluster_yaml};
pub use netns::Netns;
pub use probe::{CONNECT_TIMEOUT, UdpOutcome, ping, tcp_connects, udp_exchange, udp_from_address};

/// Fails with a clear message unless running as root: the beds create network
/// namespaces and the agent loads BPF programs.
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        anyhow::bail!(
            "network-namespace tests need root (euid is {euid}): they create namespaces, \
             veths and bridges and load BPF programs; run them as root (CI does)"
        );
    }
    Ok(())
}
