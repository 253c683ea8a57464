//! Two nodes joined as Flannel's VXLAN backend joins them: an uplink veth (`eth0` on
//! both sides) carrying the node IPs, and on each node `flannel.1` (VNI 1, UDP 8472,
//! `local <node IP>`, `nolearning`) holding `<subnet>.0/32`, with, for the other node's
//! subnet, the route `via <other>.0 dev flannel.1 onlink`, a permanent neighbour entry
//! `<other>.0 → other flannel.1's MAC` and an FDB entry `that MAC → other node IP` —
//! the three entries flanneld writes from the other node's lease. IPv6 pod subnets
//! ride the same device (Flannel uses a second one, `flannel-v6.1`, over an IPv6
//! underlay; the forwarding is the same).

use anyhow::Context as _;
use serde_json::Value;

use crate::bed::uplink_addresses;
use crate::netns::Netns;
use crate::node::{Node, NodeAddrs};

/// Flannel's VXLAN device name, VNI and UDP port (the Linux kernel's legacy port,
/// which Flannel keeps by default).
pub const VXLAN_DEVICE: &str = "flannel.1";
pub const VXLAN_VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;

/// Joins `a` and `b`: uplink, flannel.1 on both, then each one's routes, neighbour
/// and FDB entries for the other's subnet; hosts beyond node 1 (external hosts) are
/// routed from node 2 through node 1's IP.
pub fn join(a: &Node, b: &Node) -> anyhow::Result<()> {
    a.netns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        b.netns.name(),
    ])?;
    for node in [a, b] {
        uplink_addresses(&node.netns, node.addrs)?;
        vxlan_device(&node.netns, node.addrs)?;
    }
    let mac_a = link_mac(&a.netns, VXLAN_DEVICE)?;
    let mac_b = link_mac(&b.netns, VXLAN_DEVICE)?;
    lease(&a.netns, b.addrs, &mac_b)?;
    lease(&b.netns, a.addrs, &mac_a)?;
    let node1 = a.addrs;
    b.netns.ip(&[
        "route",
        "add",
        "198.19.1.0/24",
        "via",
        &node1.node_ip().to_string(),
        "dev",
        "eth0",
    ])?;
    b.netns.ip(&[
        "-6",
        "route",
        "add",
        "fd00:19:1::/64",
        "via",
        &node1.node_ip6().to_string(),
        "dev",
        "eth0",
    ])?;
    Ok(())
}

/// `flannel.1` as flanneld creates it on `node`.
fn vxlan_device(node: &Netns, addrs: NodeAddrs) -> anyhow::Result<()> {
    node.ip(&[
        "link",
        "add",
        VXLAN_DEVICE,
        "type",
        "vxlan",
        "id",
        &VXLAN_VNI.to_string(),
        "dstport",
        &VXLAN_PORT.to_string(),
        "local",
        &addrs.node_ip().to_string(),
        "dev",
        "eth0",
        "nolearning",
    ])?;
    node.ip(&[
        "addr",
        "add",
        &format!("{}/32", addrs.subnet_v4()),
        "dev",
        VXLAN_DEVICE,
    ])?;
    node.ip(&[
        "addr",
        "add",
        &format!("{}/128", addrs.subnet_v6()),
        "dev",
        VXLAN_DEVICE,
        "nodad",
    ])?;
    node.ip(&["link", "set", VXLAN_DEVICE, "up"])?;
    Ok(())
}

/// What flanneld writes on `node` for the lease of the node `other` whose flannel.1
/// has `mac`: route, neighbour and FDB entry (IPv4 and IPv6 subnets).
fn lease(node: &Netns, other: NodeAddrs, mac: &str) -> anyhow::Result<()> {
    let gw4 = other.subnet_v4().to_string();
    let gw6 = other.subnet_v6().to_string();
    node.ip(&[
        "neigh",
        "add",
        &gw4,
        "lladdr",
        mac,
        "dev",
        VXLAN_DEVICE,
        "nud",
        "permanent",
    ])?;
    node.ip(&[
        "-6",
        "neigh",
        "add",
        &gw6,
        "lladdr",
        mac,
        "dev",
        VXLAN_DEVICE,
        "nud",
        "permanent",
    ])?;
    crate::netns::run(node.command("bridge").args([
        "fdb",
        "append",
        mac,
        "dev",
        VXLAN_DEVICE,
        "dst",
        &other.node_ip().to_string(),
        "self",
        "permanent",
    ]))?;
    node.ip(&[
        "route",
        "add",
        &format!("{gw4}/24"),
        "via",
        &gw4,
        "dev",
        VXLAN_DEVICE,
        "onlink",
    ])?;
    node.ip(&[
        "-6",
        "route",
        "add",
        &format!("{gw6}/64"),
        "via",
        &gw6,
        "dev",
        VXLAN_DEVICE,
        "onlink",
    ])?;
    Ok(())
}

/// A link's MAC address (`ip -j link show`).
pub fn link_mac(node: &Netns, link: &str) -> anyhow::Result<String> {
    let out = node.ip(&["-j", "link", "show", "dev", link])?;
    let json: Value = serde_json::from_str(&out).context("ip -j link show")?;
    json.get(0)
        .and_then(|l| l.get("address"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("{link} in {} has no MAC address: {out}", node.name()))
}
