//! Why a direction denies: for each policy isolating the checking pod, each of its
//! rules in that direction, whether the peer or the port did not match. The verdict
//! itself always comes from `Image::lookup`; this reads the model with the engine's
//! own selector and port semantics (`compile::selector`, `compile::ports`) to say
//! which half of each rule failed. A peer is matched by address: a pod selector
//! matches the live pod owning the address, an ipBlock the address itself.

use std::fmt::Write as _;
use std::net::IpAddr;

use netfence_policy::compile::selector::{self, NamespaceLabels};
use serde::Serialize;

use crate::cli::policies::rule_port_matches;
use crate::image::canonical_addr;
use crate::model::{Peer, Pod, Policy, State};

/// One rule of an isolating policy, and which half of it did not match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleWhy {
    /// `ns/policy direction[index]`.
    pub rule: String,
    pub peer_matched: bool,
    pub port_matched: bool,
    /// `peer not matched`, `port not matched`, `peer and port not matched`, or
    /// `matched`.
    pub reason: &'static str,
}

/// One isolating policy and its rules in the direction checked. No rules: the
/// policy allows nothing in this direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyWhy {
    /// `ns/name`.
    pub policy: String,
    pub rules: Vec<RuleWhy>,
}

/// The live pod owning `addr`.
fn pod_at(state: &State, addr: IpAddr) -> Option<&Pod> {
    (state.pods.iter())
        .filter(|p| p.is_live_endpoint())
        .find(|p| p.ips.iter().any(|ip| canonical_addr(*ip) == addr))
}

fn peer_matches(
    namespaces: &NamespaceLabels<'_>,
    policy: &Policy,
    peer: &Peer,
    addr: IpAddr,
    pod: Option<&Pod>,
) -> bool {
    match peer {
        Peer::Pods {
            namespace_selector,
            pod_selector,
        } => pod.is_some_and(|pod| {
            let namespace = match namespace_selector {
                None => pod.namespace == policy.namespace,
                Some(selector) => namespaces.matches(selector, &pod.namespace),
            };
            namespace
                && pod_selector
                    .as_ref()
                    .is_none_or(|s| selector::matches(s, &pod.labels))
        }),
        Peer::IpBlock { cidr, except } => {
            cidr.contains(&addr) && !except.iter().any(|net| net.contains(&addr))
        }
    }
}

/// Per policy in `isolated_by` (`ns/name`), per rule in `direction` (ingress: the
/// peer is `src`; egress: `dst`), whether peer and port match `protocol`/`port` (the
/// port's names resolve against the pod at `dst`).
pub fn why(
    state: &State,
    isolated_by: &[String],
    ingress: bool,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    port: u16,
) -> Vec<PolicyWhy> {
    let namespaces = NamespaceLabels::new(state);
    let peer_addr = if ingress { src } else { dst };
    let peer_pod = pod_at(state, peer_addr);
    let dst_ports = pod_at(state, dst).map(|p| p.ports.as_slice());
    let direction = if ingress { "ingress" } else { "egress" };
    (isolated_by.iter())
        .filter_map(|name| {
            let (namespace, name) = name.split_once('/')?;
            state
                .policies
                .iter()
                .find(|p| p.namespace == namespace && p.name == name)
        })
        .map(|policy| {
            let rules = if ingress {
                &policy.ingress
            } else {
                &policy.egress
            };
            let rules = (rules.iter().enumerate())
                .map(|(index, rule)| {
                    let peer_matched = rule.peers.is_empty()
                        || (rule.peers.iter()).any(|peer| {
                            peer_matches(&namespaces, policy, peer, peer_addr, peer_pod)
                        });
                    let port_matched = rule_port_matches(rule, dst_ports, protocol, port);
                    let reason = match (peer_matched, port_matched) {
                        (true, true) => "matched",
                        (false, true) => "peer not matched",
                        (true, false) => "port not matched",
                        (false, false) => "peer and port not matched",
                    };
                    RuleWhy {
                        rule: format!("{}/{} {direction}[{index}]", policy.namespace, policy.name),
                        peer_matched,
                        port_matched,
                        reason,
                    }
                })
                .collect();
            PolicyWhy {
                policy: format!("{}/{}", policy.namespace, policy.name),
                rules,
            }
        })
        .collect()
}

/// The why lines under a denied direction.
pub fn text(out: &mut String, direction: &str, why: &[PolicyWhy]) {
    for policy in why {
        if policy.rules.is_empty() {
            let _ = writeln!(
                out,
                "    {}: no {direction} rules (allows nothing)",
                policy.policy
            );
        }
        for rule in &policy.rules {
            let _ = writeln!(out, "    {}: {}", rule.rule, rule.reason);
        }
    }
}
