//! Network-namespace test beds for netfence, shared by the packet tests
//! (`agent/tests/packet.rs`) and `cargo xtask demo`.
//!
//! A [`TestBed`] is a Flannel node (or two): a namespace with bridge `cni0`
//! (198.18.0.1/24, fd00:18::1/64 on node 1) and, per pod, a namespace made by the real
//! CNI plugins Flannel delegates to (`bridge` + `host-local`, run by [`cni`] as a
//! container runtime runs them), so host-side veths have the plugin's random names.
//! Two nodes are joined by an uplink and `flannel.1` ([`flannel`]). It writes the
//! cluster's Namespaces and Pods into a manifest directory exactly as `kubectl get -o
//! yaml` prints them, runs the real `netfence run --bridge cni0` inside each node
//! namespace, and probes real TCP, UDP and ICMP traffic between the namespaces.
//!
//! Every resource is owned by a guard whose `Drop` removes it, panics included, and
//! every name carries a per-bed id (`<prefix><pid>x<n>`), so beds run in parallel.

mod agent;
pub mod apiserver;
mod bed;
pub mod cni;
pub mod flannel;
pub mod forge;
pub mod kube_agent;
pub mod kube_proxy;
mod manifest;
mod netns;
mod node;
mod probe;
pub mod raw;
mod service_yaml;

pub use agent::{Agent, Attach};
pub use bed::{
    NODE_IP, NODE_NAME, NODE_V4, NODE_V6, POD_INTERFACES, TestBed, namespace_spec, pod_spec,
    pod_spec_on,
};
pub use kube_proxy::{Protocol, SERVICE_CIDR, Vip};
pub use manifest::{NamespaceSpec, PodSpec, cluster_yaml};
pub use netns::Netns;
pub use node::{BRIDGE, CLUSTER_V4, CLUSTER_V6, CNI_BIN_DIR, NodeAddrs, PodNs};
pub use probe::{
    CONNECT_TIMEOUT, UdpOutcome, bind_retrying, ping, tcp_connects, tcp_via, udp_exchange,
    udp_from_address, udp_via,
};
pub use service_yaml::{
    EndpointSliceSpec, ServicePortSpec, ServiceSpec, SliceEndpoint, TargetPort,
    endpoint_slice_yaml, service_yaml,
};

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
