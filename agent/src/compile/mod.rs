//! Pure compilation of a `State` into an `Image`: all NetworkPolicy semantics live here.
//!
//! `compile` reads no clock, does no I/O and iterates only ordered maps, so the same
//! state always gives the same image. Steps:
//!
//! 1. `identity`: the ipBlocks rules name and every live pod IP become the IDENTITIES
//!    trie; an identity is (pod group, set of ipBlocks containing the region).
//! 2. `rules`: each effective rule gets a stable id and its peers expand to identities
//!    (pod selectors over pod identities, ipBlocks over every identity inside them).
//! 3. Local endpoints are grouped by the policies that select them (and by their own
//!    named ports when an ingress rule of those policies names a port); each group's
//!    entries form one endpoint policy, numbered by a hash of its content, so a changed
//!    policy gives a new id and endpoints switch to it in one write.
//!
//! Ids are stable: see `ids`.

pub mod identity;
pub mod ids;
pub mod ports;
pub mod rules;
pub mod selector;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netfence_common::{DIR_EGRESS, IDENTITY_WORLD};

use self::identity::{Identities, blocks_of, live_pods};
use self::ids::{Fnv, IdAllocator, reserved_zero};
use self::ports::{NamedPorts, named_ports};
use self::rules::{
    EntryKey, any_named_port, endpoint_entries, expand_all, rule_ids, selecting_uses_named_port,
};
use self::selector::{NamespaceLabels, matches};
use crate::image::{Endpoint, EndpointPolicyInfo, Image, PolicyEntry, canonical_addr};
use crate::model::{Pod, Policy, State};

/// Compiles `state` into the map contents of one node.
///
/// `node`: `Some(name)` → only live pods with `spec.nodeName == name` become
/// endpoints; `None` → every live pod is an endpoint (used by `explain`, the matrix
/// and tests). Identities always cover every live pod of the cluster.
pub fn compile(state: &State, node: Option<&str>) -> Image {
    let namespaces = NamespaceLabels::new(state);
    let identities = Identities::build(state, &blocks_of(state), any_named_port(state, DIR_EGRESS));
    let (rule_ids, rule_infos) = rule_ids(state);
    let peers = expand_all(state, &identities, &namespaces);

    // Local endpoints, grouped by what decides their entries.
    let mut groups: BTreeMap<GroupKey, Vec<(IpAddr, &Pod)>> = BTreeMap::new();
    let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
    let local =
        live_pods(state).filter(|pod| node.is_none_or(|n| pod.node_name.as_deref() == Some(n)));
    for pod in local {
        let selecting: Vec<usize> = state
            .policies
            .iter()
            .enumerate()
            .filter(|(_, policy)| selects(policy, pod))
            .map(|(p, _)| p)
            .collect();
        let named = if selecting_uses_named_port(state, &selecting) {
            named_ports(&pod.ports)
        } else {
            Vec::new()
        };
        let members = groups.entry((selecting, named)).or_default();
        for ip in &pod.ips {
            let ip = canonical_addr(*ip);
            // The first live pod claiming an address keeps it.
            if seen.insert(ip) {
                members.push((ip, pod));
            }
        }
    }

    // The content of every isolated group's endpoint policy.
    let mut contents: BTreeMap<&GroupKey, Content> = BTreeMap::new();
    for key in groups.keys() {
        let (selecting, named) = key;
        if selecting.is_empty() {
            continue;
        }
        let names = |isolates: fn(&Policy) -> bool| -> Vec<String> {
            selecting
                .iter()
                .map(|&p| &state.policies[p])
                .filter(|policy| isolates(policy))
                .map(|policy| format!("{}/{}", policy.namespace, policy.name))
                .collect()
        };
        let entries = endpoint_entries(state, selecting, named, &identities, &peers, &rule_ids);
        let content = Content {
            ingress: names(|p| p.isolates_ingress),
            egress: names(|p| p.isolates_egress),
            entries: entries.into_iter().collect(),
        };
        contents.insert(key, content);
    }
    let mut allocator = IdAllocator::new(reserved_zero);
    let policy_ids = allocator.allocate_all(contents.values().cloned(), Content::hash);

    let mut image = Image {
        identities: identities.trie.clone(),
        rules: rule_infos,
        identity_info: identities.info(),
        ..Image::default()
    };
    for (content, id) in &policy_ids {
        for ((peer, direction, port), rule) in &content.entries {
            let entry = PolicyEntry {
                policy: *id,
                peer: *peer,
                direction: *direction,
                protocol: port.protocol,
                port: port.port,
                port_bits: port.port_bits,
            };
            image.policy.insert(entry, *rule);
        }
        image.endpoint_policies.insert(
            *id,
            EndpointPolicyInfo {
                ingress: content.ingress.clone(),
                egress: content.egress.clone(),
            },
        );
    }
    for (key, members) in &groups {
        let content = contents.get(key);
        let policy = content
            .and_then(|c| policy_ids.get(c))
            .copied()
            .unwrap_or(0);
        for (ip, pod) in members {
            let endpoint = Endpoint {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                policy,
                isolated_ingress: content.is_some_and(|c| !c.ingress.is_empty()),
                isolated_egress: content.is_some_and(|c| !c.egress.is_empty()),
                audit_ingress: false,
                audit_egress: false,
                identity: identities
                    .of_pod_ip
                    .get(ip)
                    .copied()
                    .unwrap_or(IDENTITY_WORLD),
            };
            image.endpoints.insert(*ip, endpoint);
        }
    }
    image
}

/// What decides an endpoint's entries: the indices of the policies selecting it, and
/// its own named ports when one of their ingress rules names a port (else empty).
type GroupKey = (Vec<usize>, NamedPorts);

/// True when `policy` selects `pod` and isolates it in some direction.
fn selects(policy: &Policy, pod: &Pod) -> bool {
    (policy.isolates_ingress || policy.isolates_egress)
        && policy.namespace == pod.namespace
        && matches(&policy.pod_selector, &pod.labels)
}

/// What an endpoint policy id is a hash of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Content {
    /// `ns/name` of the selecting policies that isolate for ingress / egress.
    ingress: Vec<String>,
    egress: Vec<String>,
    /// Entries (peer, direction, port match) → rule id.
    entries: Vec<(EntryKey, u32)>,
}

impl Content {
    fn hash(&self) -> u32 {
        let mut h = Fnv::default();
        h.str("ingress");
        for name in &self.ingress {
            h.str(name);
        }
        h.str("egress");
        for name in &self.egress {
            h.str(name);
        }
        for ((peer, direction, port), rule) in &self.entries {
            h.u32(*peer)
                .bytes(&[*direction, port.protocol, port.port_bits])
                .bytes(&port.port.to_be_bytes())
                .u32(*rule);
        }
        h.finish()
    }
}

/// `policyTypes` after the API server's defaulting, as `(isolates_ingress,
/// isolates_egress)`: the listed types when the list is non-empty; otherwise Ingress,
/// plus Egress when `spec.egress` has at least one rule (`egress: []` alone does not
/// isolate egress).
pub fn defaulted_policy_types<S: AsRef<str>>(
    policy_types: Option<&[S]>,
    egress_rules: usize,
) -> (bool, bool) {
    match policy_types {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t.as_ref() == "Ingress"),
            types.iter().any(|t| t.as_ref() == "Egress"),
        ),
        _ => (true, egress_rules > 0),
    }
}
