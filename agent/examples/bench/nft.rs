//! The naive nftables enforcer of section 2, the way iptables-based NetworkPolicy
//! enforcers work: every policy rule is expanded to one nft rule per allowed (local
//! pod, peer address, port), in linear chains, behind an `established,related` accept.
//! Bridged IPv4 traffic reaches the `inet` forward hook through br_netfilter
//! (`net.bridge.bridge-nf-call-iptables=1` in the node namespace).
//!
//! ```text
//! forward: ct state established,related accept; jump egress; jump ingress
//! egress:  ip saddr LOCAL [ip daddr PEER] [tcp dport P] return   (one per pair)
//!          ip saddr ISOLATED-EGRESS-POD drop                       (one per pod)
//! ingress: ip daddr LOCAL [ip saddr PEER] [tcp dport P] accept   (one per pair)
//!          ip daddr ISOLATED-INGRESS-POD drop
//! ```
//! The bench's own rules (namespace `bench`) are put in the middle of their chain:
//! the average position of one pod's rules in a linear list.

use std::fmt::Write as _;
use std::net::IpAddr;

use netfence::compile::selector::matches;
use netfence::model::{Peer, Pod, Policy, Port, PortSpec, Rule, State};

use crate::scene;

/// The table name (unique to the bench, in the bench's own node namespace).
pub const TABLE: &str = "nf5bench";

/// A generated ruleset.
#[derive(Debug)]
pub struct Ruleset {
    pub text: String,
    /// Rules in the egress and ingress chains.
    pub rules: usize,
    /// Pairs the policies expand to (more than `rules` when capped).
    pub pairs: usize,
}

fn ipv4(pod: &Pod) -> Option<IpAddr> {
    pod.ips.iter().copied().find(IpAddr::is_ipv4)
}

/// The peers of one rule as nft address matches (`field` is `saddr` or `daddr`); one
/// empty string for "every peer".
fn peer_matches(state: &State, policy: &Policy, rule: &Rule, field: &str) -> Vec<String> {
    if rule.peers.is_empty() {
        return vec![String::new()];
    }
    let mut out = Vec::new();
    for peer in &rule.peers {
        match peer {
            Peer::Pods {
                namespace_selector,
                pod_selector,
            } => {
                for pod in &state.pods {
                    let ns_ok = match namespace_selector {
                        None => pod.namespace == policy.namespace,
                        Some(sel) => state
                            .namespaces
                            .get(&pod.namespace)
                            .is_some_and(|ns| matches(sel, &ns.labels)),
                    };
                    let pod_ok = pod_selector
                        .as_ref()
                        .is_none_or(|sel| matches(sel, &pod.labels));
                    if ns_ok
                        && pod_ok
                        && let Some(ip) = ipv4(pod)
                    {
                        out.push(format!("ip {field} {ip} "));
                    }
                }
            }
            Peer::IpBlock { cidr, except } => {
                let mut m = format!("ip {field} {cidr} ");
                for e in except {
                    let _ = write!(m, "ip {field} != {e} ");
                }
                out.push(m);
            }
        }
    }
    out
}

/// The port matches of one rule against destination pod `dst` (named ports resolve
/// there); one empty string for "every port".
fn port_matches(ports: &[PortSpec], dst: Option<&Pod>) -> Vec<String> {
    if ports.is_empty() {
        return vec![String::new()];
    }
    let mut out = Vec::new();
    for spec in ports {
        let proto = spec.protocol.as_str().to_ascii_lowercase();
        match (&spec.port, spec.end_port) {
            (None, _) => out.push(format!("meta l4proto {proto} ")),
            (Some(Port::Number(p)), None) => out.push(format!("{proto} dport {p} ")),
            (Some(Port::Number(p)), Some(end)) => out.push(format!("{proto} dport {p}-{end} ")),
            (Some(Port::Name(name)), _) => {
                let resolved = dst.into_iter().flat_map(|pod| &pod.ports).find(|cp| {
                    cp.name.as_deref() == Some(name.as_str()) && cp.protocol == spec.protocol
                });
                if let Some(cp) = resolved {
                    out.push(format!("{proto} dport {} ", cp.port));
                }
            }
        }
    }
    out
}

/// Compiles `state` for `node` into the naive ruleset, keeping at most `cap` rules
/// besides the bench's own.
pub fn ruleset(state: &State, node: &str, cap: usize) -> Ruleset {
    let local: Vec<&Pod> = state
        .pods
        .iter()
        .filter(|p| p.node_name.as_deref() == Some(node) && p.is_live_endpoint())
        .collect();
    let mut chains: [(Vec<String>, Vec<String>); 2] = Default::default(); // egress, ingress: (others, bench)
    let mut isolated: [Vec<IpAddr>; 2] = Default::default();
    let mut pairs = 0usize;
    for policy in &state.policies {
        let selected: Vec<&&Pod> = local
            .iter()
            .filter(|p| p.namespace == policy.namespace && matches(&policy.pod_selector, &p.labels))
            .collect();
        let bench = policy.namespace == scene::NAMESPACE;
        for pod in &selected {
            let Some(ip) = ipv4(pod) else { continue };
            for (dir, on, rules, field, own, verdict, remote_dst) in [
                (
                    0,
                    policy.isolates_egress,
                    &policy.egress,
                    "daddr",
                    "saddr",
                    "return",
                    true,
                ),
                (
                    1,
                    policy.isolates_ingress,
                    &policy.ingress,
                    "saddr",
                    "daddr",
                    "accept",
                    false,
                ),
            ] {
                if !on {
                    continue;
                }
                if !isolated[dir].contains(&ip) {
                    isolated[dir].push(ip);
                }
                for rule in rules {
                    // Named ports resolve on the destination: the pod itself for
                    // ingress; for egress the peer, approximated by numeric ports only.
                    let dst = if remote_dst { None } else { Some(**pod) };
                    let ports = port_matches(&rule.ports, dst);
                    for peer in peer_matches(state, policy, rule, field) {
                        for port in &ports {
                            pairs += 1;
                            let line = format!("ip {own} {ip} {peer}{port}{verdict}");
                            let (others, own_rules) = &mut chains[dir];
                            if bench {
                                own_rules.push(line);
                            } else if others.len() < cap {
                                others.push(line);
                            }
                        }
                    }
                }
            }
        }
    }
    let mut text = format!(
        "table inet {TABLE} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
         ct state established,related accept\n    jump egress\n    jump ingress\n  }}\n"
    );
    let mut rules = 0;
    for (dir, name, own) in [(0, "egress", "saddr"), (1, "ingress", "daddr")] {
        let (others, bench) = &chains[dir];
        let middle = others.len() / 2;
        let _ = writeln!(text, "  chain {name} {{");
        for line in others[..middle]
            .iter()
            .chain(bench)
            .chain(&others[middle..])
        {
            let _ = writeln!(text, "    {line}");
            rules += 1;
        }
        for ip in &isolated[dir] {
            let _ = writeln!(text, "    ip {own} {ip} drop");
            rules += 1;
        }
        text.push_str("  }\n");
    }
    text.push_str("}\n");
    Ruleset { text, rules, pairs }
}
