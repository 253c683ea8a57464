//! NetworkPolicy rules → POLICY entries: rule ids, peer expansion to identities, and
//! the entries of one endpoint policy (the policies that select a group of endpoints).

use std::collections::{BTreeMap, BTreeSet};

use netfence_common::{DIR_EGRESS, DIR_INGRESS, IDENTITY_ANY};

use super::identity::{Block, Identities};
use super::ids::{Fnv, IdAllocator, reserved_rule};
use super::ports::{NamedPorts, PortMatch, rule_uses_named_port, spec_matches};
use super::selector::{NamespaceLabels, matches};
use crate::image::RuleInfo;
use crate::model::{Peer, Policy, Port, Rule, State};

/// A rule's place: (policy index in `state.policies`, direction, rule index).
pub type RuleRef = (usize, u8, usize);

/// The rules of a policy in a direction it isolates (rules of a direction the policy
/// does not isolate have no effect).
pub fn effective_rules(policy: &Policy, direction: u8) -> &[Rule] {
    match direction {
        DIR_INGRESS if policy.isolates_ingress => &policy.ingress,
        DIR_EGRESS if policy.isolates_egress => &policy.egress,
        _ => &[],
    }
}

fn direction_name(direction: u8) -> &'static str {
    if direction == DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

/// The id of each effective rule, by place: what [`RuleRef`] `(p, direction, index)`
/// is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleIds(pub(crate) Vec<[Vec<u32>; 2]>);

impl RuleIds {
    pub fn get(&self, (p, direction, index): RuleRef) -> Option<u32> {
        let ids = self.0.get(p)?;
        ids[direction_slot(direction)].get(index).copied()
    }
}

/// Where a direction's ids sit in a policy's pair.
pub(crate) fn direction_slot(direction: u8) -> usize {
    usize::from(direction == DIR_EGRESS)
}

/// What a rule's id is the hash of: `ns/name/direction/index`.
pub(crate) fn rule_text(policy: &Policy, direction: u8, index: usize) -> String {
    format!(
        "{}/{}/{}/{index}",
        policy.namespace,
        policy.name,
        direction_name(direction)
    )
}

/// The hash a rule's id starts from (never 0 after probing: see `ids`).
pub(crate) fn rule_hash(text: &str) -> u32 {
    Fnv::default().str(text).finish()
}

/// What explain and events show of a rule.
pub(crate) fn rule_info(policy: &Policy, direction: u8, index: usize) -> RuleInfo {
    RuleInfo {
        namespace: policy.namespace.clone(),
        policy: policy.name.clone(),
        direction,
        index,
    }
}

/// Rule ids: a hash of [`rule_text`] (never 0), for every effective rule.
pub fn rule_ids(state: &State) -> (RuleIds, BTreeMap<u32, RuleInfo>) {
    let mut described: BTreeMap<String, RuleRef> = BTreeMap::new();
    for (p, policy) in state.policies.iter().enumerate() {
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            for index in 0..effective_rules(policy, direction).len() {
                described.insert(rule_text(policy, direction, index), (p, direction, index));
            }
        }
    }
    let mut allocator = IdAllocator::new(reserved_rule);
    let ids = allocator.allocate_all(described.keys().cloned(), |text| rule_hash(text));
    let mut by_ref = RuleIds(
        state
            .policies
            .iter()
            .map(|policy| {
                [DIR_INGRESS, DIR_EGRESS].map(|d| vec![0; effective_rules(policy, d).len()])
            })
            .collect(),
    );
    let mut infos = BTreeMap::new();
    for (text, id) in ids {
        let Some(&(p, direction, index)) = described.get(&text) else {
            continue;
        };
        by_ref.0[p][direction_slot(direction)][index] = id;
        infos.insert(id, rule_info(&state.policies[p], direction, index));
    }
    (by_ref, infos)
}

/// The peers of a rule: every identity (`IDENTITY_ANY`), or a set of identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    Any,
    Some(BTreeSet<u32>),
}

/// Expands the peers of a rule of `policy` into identities.
pub fn expand_peers(
    rule: &Rule,
    policy: &Policy,
    identities: &Identities,
    namespaces: &NamespaceLabels,
) -> Peers {
    if rule.peers.is_empty() {
        return Peers::Any;
    }
    let mut set = BTreeSet::new();
    for peer in &rule.peers {
        match peer {
            Peer::Pods {
                namespace_selector,
                pod_selector,
            } => {
                let selected: Vec<&String> = match namespace_selector {
                    None => identities
                        .by_namespace
                        .get_key_value(&policy.namespace)
                        .map(|(namespace, _)| namespace)
                        .into_iter()
                        .collect(),
                    Some(selector) => match namespaces.candidates(selector) {
                        Some(candidates) => candidates
                            .into_iter()
                            .filter_map(|namespace| {
                                identities.by_namespace.get_key_value(namespace)
                            })
                            .map(|(namespace, _)| namespace)
                            .filter(|namespace| namespaces.matches(selector, namespace))
                            .collect(),
                        None => identities
                            .by_namespace
                            .keys()
                            .filter(|namespace| namespaces.matches(selector, namespace))
                            .collect(),
                    },
                };
                for namespace in selected {
                    for id in &identities.by_namespace[namespace] {
                        let Some(group) =
                            identities.described.get(id).and_then(|d| d.group.as_ref())
                        else {
                            continue;
                        };
                        if pod_selector
                            .as_ref()
                            .is_none_or(|selector| matches(selector, &group.labels))
                        {
                            set.insert(*id);
                        }
                    }
                }
            }
            Peer::IpBlock { cidr, except } => {
                if let Some(ids) = identities.by_block.get(&Block::new(cidr, except)) {
                    set.extend(ids.iter().copied());
                }
            }
        }
    }
    Peers::Some(set)
}

/// The expanded peers of the effective rules of some policies, computed once per
/// compile.
pub type ExpandedPeers = BTreeMap<RuleRef, Peers>;

/// Expands the effective rules of the policies `needed` (indices into
/// `state.policies`): the policies deciding some local endpoint. Rules of policies
/// that select no local pod never reach this node's maps.
pub fn expand_needed(
    state: &State,
    needed: &BTreeSet<usize>,
    identities: &Identities,
    namespaces: &NamespaceLabels,
) -> ExpandedPeers {
    let mut all = BTreeMap::new();
    for &p in needed {
        let policy = &state.policies[p];
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            for (index, rule) in effective_rules(policy, direction).iter().enumerate() {
                all.insert(
                    (p, direction, index),
                    expand_peers(rule, policy, identities, namespaces),
                );
            }
        }
    }
    all
}

/// One POLICY entry without its endpoint-policy id: (peer, direction, port match).
pub type EntryKey = (u32, u8, PortMatch);

/// The entries of an endpoint policy: the effective rules of `selecting` (policy
/// indices, in order) for an endpoint whose own named ports are `named` (ingress named
/// ports resolve against it). When two rules give one key, the first keeps it.
pub fn endpoint_entries(
    state: &State,
    selecting: &[usize],
    named: &NamedPorts,
    identities: &Identities,
    peers: &ExpandedPeers,
    rule_ids: &RuleIds,
) -> BTreeMap<EntryKey, u32> {
    let mut entries = BTreeMap::new();
    for &p in selecting {
        let policy = &state.policies[p];
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            for (index, rule) in effective_rules(policy, direction).iter().enumerate() {
                let key = (p, direction, index);
                let (Some(rule_peers), Some(rule_id)) = (peers.get(&key), rule_ids.get(key)) else {
                    continue;
                };
                for (peer, port) in rule_entries(rule, direction, rule_peers, named, identities) {
                    entries.entry((peer, direction, port)).or_insert(rule_id);
                }
            }
        }
    }
    entries
}

/// (peer, port match) pairs one rule allows at an endpoint with named ports `named`.
fn rule_entries(
    rule: &Rule,
    direction: u8,
    peers: &Peers,
    named: &NamedPorts,
    identities: &Identities,
) -> BTreeSet<(u32, PortMatch)> {
    let peer_ids: Vec<u32> = match peers {
        Peers::Any => vec![IDENTITY_ANY],
        Peers::Some(set) => set.iter().copied().collect(),
    };
    let mut out = BTreeSet::new();
    if rule.ports.is_empty() {
        out.extend(peer_ids.iter().map(|peer| (*peer, PortMatch::ANY)));
        return out;
    }
    for spec in &rule.ports {
        let egress_named = direction == DIR_EGRESS && matches!(spec.port, Some(Port::Name(_)));
        if !egress_named {
            // Numeric ports, protocol-only, and ingress named ports (the endpoint is
            // the destination pod).
            let ports = spec_matches(spec, Some(named));
            out.extend(
                peer_ids
                    .iter()
                    .flat_map(|peer| ports.iter().map(move |port| (*peer, *port))),
            );
            continue;
        }
        // Egress named port: resolved against each destination pod; a peer that is no
        // pod (an address outside the cluster) has no named ports.
        let candidates: Box<dyn Iterator<Item = &u32>> = match peers {
            Peers::Any => Box::new(identities.described.keys()),
            Peers::Some(set) => Box::new(set.iter()),
        };
        for id in candidates {
            let Some(group) = identities.described.get(id).and_then(|d| d.group.as_ref()) else {
                continue;
            };
            for port in spec_matches(spec, group.named_ports.as_ref()) {
                out.insert((*id, port));
            }
        }
    }
    out
}

/// True when some effective rule in `direction` of any policy names a port.
pub fn any_named_port(state: &State, direction: u8) -> bool {
    state
        .policies
        .iter()
        .any(|policy| uses_named_port(policy, direction))
}

/// True when some effective rule of `policy` in `direction` names a port.
pub fn uses_named_port(policy: &Policy, direction: u8) -> bool {
    effective_rules(policy, direction)
        .iter()
        .any(rule_uses_named_port)
}

/// True when some effective ingress rule of the policies `selecting` names a port.
pub fn selecting_uses_named_port(state: &State, selecting: &[usize]) -> bool {
    selecting.iter().any(|&p| {
        effective_rules(&state.policies[p], DIR_INGRESS)
            .iter()
            .any(rule_uses_named_port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortSpec, Protocol};

    #[test]
    fn rule_without_ports_allows_every_protocol() {
        let rule = Rule {
            peers: vec![],
            ports: vec![],
        };
        let out = rule_entries(
            &rule,
            DIR_INGRESS,
            &Peers::Any,
            &NamedPorts::new(),
            &Identities::default(),
        );
        assert_eq!(out, BTreeSet::from([(IDENTITY_ANY, PortMatch::ANY)]));
        let rule = Rule {
            peers: vec![],
            ports: vec![PortSpec {
                protocol: Protocol::Udp,
                port: Some(Port::Number(53)),
                end_port: None,
            }],
        };
        let out = rule_entries(
            &rule,
            DIR_EGRESS,
            &Peers::Some(BTreeSet::from([20])),
            &NamedPorts::new(),
            &Identities::default(),
        );
        assert_eq!(
            out,
            BTreeSet::from([(
                20,
                PortMatch {
                    protocol: 17,
                    port: 53,
                    port_bits: 16
                }
            )])
        );
    }
}
