//! Service VIPs in the lab: a kube-proxy-like DNAT in a node namespace, in the shape
//! of kube-proxy's nftables mode. One table (`ip kube-proxy-lab`) holds a verdict map
//! `service-ips` keyed `ipv4_addr . inet_proto . inet_service` (ClusterIP, protocol,
//! port) whose elements jump to one chain per service port; that chain DNATs to
//! `numgen random mod N map { i : backend IP . targetPort }`. The `services` chain is
//! called from the nat prerouting hook (pods' traffic) and the nat output hook
//! (the node's own), both at priority dstnat (-100; nft 1.0.6 names it only for
//! prerouting). Installing replaces the whole table in
//! one nft transaction, so changed endpoints replace a service's chain atomically and
//! established flows keep their conntrack NAT.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::Stdio;

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// The nftables table the lab's kube-proxy owns in each node namespace.
pub const TABLE: &str = "kube-proxy-lab";
/// ClusterIPs: inside 198.18.0.0/15, used by no node, pod or external host.
pub const SERVICE_CIDR: &str = "198.19.128.0/17";

/// A Service port's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// As Kubernetes spells it (`TCP`).
    pub fn k8s(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// As nftables spells it (`tcp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One ClusterIP:port and the backends (pod IP, target port) kube-proxy spreads it
/// over. No backends: the VIP is left out (kube-proxy would reject; here it goes
/// unanswered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub backends: Vec<(Ipv4Addr, u16)>,
}

/// The nft script that (re)creates the table for `vips`: an empty table is added
/// first so the delete always finds one, then the whole table is defined.
pub fn ruleset(vips: &[Vip]) -> String {
    let mut out = format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    out.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n");
    let live: Vec<&Vip> = vips.iter().filter(|v| !v.backends.is_empty()).collect();
    if !live.is_empty() {
        let elements: Vec<String> = live
            .iter()
            .map(|v| {
                format!(
                    "{} . {} . {} : goto {}",
                    v.cluster_ip,
                    v.protocol.nft(),
                    v.port,
                    chain_name(v)
                )
            })
            .collect();
        let _ = writeln!(out, "    elements = {{ {} }}", elements.join(", "));
    }
    out.push_str("  }\n");
    out.push_str(
        "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n",
    );
    out.push_str(
        "  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n",
    );
    out.push_str(
        "  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n",
    );
    for v in live {
        let targets: Vec<String> = v
            .backends
            .iter()
            .enumerate()
            .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
            .collect();
        let _ = writeln!(
            out,
            "  chain {} {{\n    meta l4proto {} dnat ip to numgen random mod {} map {{ {} }}\n  }}",
            chain_name(v),
            v.protocol.nft(),
            v.backends.len(),
            targets.join(", ")
        );
    }
    out.push_str("}\n");
    out
}

/// `service-<clusterIP>-<proto>-<port>` (kube-proxy names them by service and port
/// name; the VIP is what the lab has).
fn chain_name(v: &Vip) -> String {
    format!(
        "service-{}-{}-{}",
        v.cluster_ip.to_string().replace('.', "_"),
        v.protocol.nft(),
        v.port
    )
}

/// Installs (or replaces) the lab's kube-proxy table in `node` for `vips`, and the
/// node's route to the Service range (a real node's default route; node-originated
/// packets need one before the output hook DNATs them).
pub fn install(node: &Netns, vips: &[Vip]) -> anyhow::Result<()> {
    for v in vips {
        if v.backends.len() > 1024 {
            bail!(
                "service {}:{} has more than 1024 backends",
                v.cluster_ip,
                v.port
            );
        }
    }
    node.ip(&["route", "replace", SERVICE_CIDR, "dev", "eth0"])?;
    let script = ruleset(vips);
    let mut child = node
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nft")?;
    child
        .stdin
        .take()
        .context("no stdin pipe to nft")?
        .write_all(script.as_bytes())
        .context("writing the ruleset to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft -f in {} failed ({}): {}\nruleset:\n{script}",
            node.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_has_kube_proxys_shape() {
        let vips = [
            Vip {
                cluster_ip: Ipv4Addr::new(198, 19, 128, 10),
                port: 80,
                protocol: Protocol::Tcp,
                backends: vec![
                    (Ipv4Addr::new(198, 18, 0, 10), 8080),
                    (Ipv4Addr::new(198, 18, 1, 11), 8080),
                ],
            },
            Vip {
                cluster_ip: Ipv4Addr::new(198, 19, 128, 53),
                port: 53,
                protocol: Protocol::Udp,
                backends: vec![],
            },
        ];
        let rules = ruleset(&vips);
        for expected in [
            "type ipv4_addr . inet_proto . inet_service : verdict",
            "elements = { 198.19.128.10 . tcp . 80 : goto service-198_19_128_10-tcp-80 }",
            "ip daddr . meta l4proto . th dport vmap @service-ips",
            "type nat hook prerouting priority dstnat;",
            "type nat hook output priority -100;",
            "meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 198.18.0.10 . 8080, 1 : 198.18.1.11 . 8080 }",
        ] {
            assert!(
                rules.contains(expected),
                "missing {expected:?} in:\n{rules}"
            );
        }
        assert!(
            !rules.contains("198.19.128.53"),
            "no backends, no element:\n{rules}"
        );
        assert!(rules.starts_with("table ip kube-proxy-lab {}\ndelete table ip kube-proxy-lab\n"));
    }
}
