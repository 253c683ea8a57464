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
//! 4. Node traffic and Service VIPs (`NodeContext`, `services`): with `allow_node`,
//!    the node's own addresses get `IDENTITY_HOST` and every isolated endpoint policy
//!    allows it both ways; an egress-isolated endpoint policy allows a ClusterIP:port
//!    when it allows one of the backends behind it on the target port.
//!
//! 5. Pods netfence-cni announced (`announced`) are filled into the state or become
//!    deny-all endpoints, and `--mode audit` audits every isolated direction
//!    (`audit_all`): both are inputs, nothing edits the image afterwards.
//!
//! Steps 1, 2 and 4 are the cluster-wide part, the same on every node; 3 is
//! `local_part`, the node's own. The incremental engine (`engine`) keeps the
//! cluster-wide part between changes and calls the same `local_part`.
//!
//! Audit (`netfence.io/mode: audit`): a direction is audited when every policy that
//! isolates the endpoint in it is an audit policy; its entries are those policies'
//! rules and a miss passes as `audit`. Otherwise only enforcing policies count in that
//! direction and audit policies have no effect there: they could only add allows.
//!
//! Ids are stable: see `ids`.

pub mod announced;
pub mod engine;
pub mod identity;
pub mod ids;
pub mod ports;
pub mod rules;
pub mod selector;
pub mod services;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netfence_common::{DIR_EGRESS, DIR_INGRESS, IDENTITY_HOST, IDENTITY_WORLD};

use self::announced::{Announced, announce, fill_state};
use self::identity::{Identities, blocks_of, live_pods};
use self::ids::{Fnv, IdAllocator, RULE_NODE_EGRESS, RULE_NODE_INGRESS, reserved_zero};
use self::ports::{NamedPorts, PortMatch, named_ports};
use self::rules::{
    EntryKey, RuleIds, any_named_port, endpoint_entries, expand_needed, rule_ids,
    selecting_uses_named_port,
};
use self::selector::{NamespaceLabels, matches};
use self::services::{Frontend, frontends, vips};
use crate::image::{
    Endpoint, EndpointPolicyInfo, Image, PolicyEntry, RuleInfo, canonical_addr, identity_in,
    lookup_in_order,
};
use crate::model::{Pod, Policy, State};

/// What compile needs to know about the node beyond the cluster state.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeContext<'a> {
    /// `Some(name)` → only live pods with `spec.nodeName == name` become endpoints;
    /// `None` → every live pod is an endpoint (`explain`, the matrix, tests).
    pub name: Option<&'a str>,
    /// The node's own addresses (the agent's network namespace).
    pub addresses: &'a [IpAddr],
    /// Traffic between a local pod and `addresses` passes whatever the policy
    /// (kubelet probes, hostNetwork pods on this node).
    pub allow_node: bool,
    /// `--mode audit`: every isolated direction of every endpoint is audited (see
    /// [`audit_all`]).
    pub audit_all: bool,
    /// Pods the CNI plugin announced on this node (see [`announced`]).
    pub announced: &'a [Announced],
}

/// Compiles `state` into the map contents of node `node` (see [`NodeContext::name`]),
/// without node addresses. Identities always cover every live pod of the cluster.
pub fn compile(state: &State, node: Option<&str>) -> Image {
    compile_node(
        state,
        &NodeContext {
            name: node,
            addresses: &[],
            allow_node: true,
            audit_all: false,
            announced: &[],
        },
    )
}

/// Compiles `state` into the map contents of one node.
pub fn compile_node(state: &State, context: &NodeContext<'_>) -> Image {
    let state = match context.name {
        Some(node) => fill_state(state, node, context.announced),
        None => Cow::Borrowed(state),
    };
    let mut image = compile_filled(&state, context);
    add_node_inputs(&mut image, context.announced, context.audit_all);
    image
}

/// What the node adds to a compiled image, last: deny-all endpoints for the announced
/// pods no endpoint carries, then `--mode audit`.
pub(crate) fn add_node_inputs(image: &mut Image, announced: &[Announced], audit: bool) {
    announce(image, announced, audit);
    if audit {
        audit_all(image);
    }
}

/// Audits every isolated direction of every endpoint of `image`: what `--mode audit`
/// makes of a compiled image (a miss passes as `audit` instead of dropping).
pub fn audit_all(image: &mut Image) {
    for endpoint in image.endpoints.values_mut() {
        endpoint.audit_ingress |= endpoint.isolated_ingress;
        endpoint.audit_egress |= endpoint.isolated_egress;
    }
}

/// [`compile_node`] of a state the announced pods are filled into.
fn compile_filled(state: &State, context: &NodeContext<'_>) -> Image {
    let vips = vips(state);
    let mut identities = Identities::build(
        state,
        &blocks_of(state),
        any_named_port(state, DIR_EGRESS),
        &vips,
    );
    let (rule_ids, rule_infos) = rule_ids(state);
    let host = host_addresses(context, &vips, &identities.of_pod_ip);
    let mut trie = std::mem::take(&mut identities.trie);
    for addr in &host {
        trie.insert(IpNet::from(*addr), IDENTITY_HOST);
    }
    let frontends: Vec<ResolvedFrontend> = frontends(state, &vips)
        .iter()
        .map(|f| ResolvedFrontend::new(f, &trie))
        .collect();
    let by_backend = frontends_by_backend(&frontends);
    let local = live_pods(state).filter(|pod| {
        context
            .name
            .is_none_or(|n| pod.node_name.as_deref() == Some(n))
    });
    let local = local_part(
        state,
        local,
        &Shared {
            identities: &identities,
            rule_ids: &rule_ids,
            frontends: &frontends,
            by_backend: &by_backend,
            host: !host.is_empty(),
        },
    );
    Image {
        identities: trie,
        rules: with_node_rules(rule_infos, !host.is_empty()),
        identity_info: identities.info(),
        endpoints: local.endpoints,
        policy: local.policy,
        endpoint_policies: local.endpoint_policies,
    }
}

/// The node's own addresses that resolve to `IDENTITY_HOST`: with `allow_node`, every
/// one but loopback, a ClusterIP on a node interface (kube-proxy's IPVS mode puts them
/// there: it stays a VIP) and a pod's address (it stays the pod's).
pub(crate) fn host_addresses(
    context: &NodeContext<'_>,
    vips: &BTreeMap<IpAddr, String>,
    pod_ips: &BTreeMap<IpAddr, u32>,
) -> Vec<IpAddr> {
    let mut host: Vec<IpAddr> = context
        .addresses
        .iter()
        .map(|a| canonical_addr(*a))
        .filter(|a| {
            context.allow_node
                && !a.is_loopback()
                && !vips.contains_key(a)
                && !pod_ips.contains_key(a)
        })
        .collect();
    host.sort_unstable();
    host.dedup();
    host
}

/// `rules` with the node-traffic rules when some node address is `IDENTITY_HOST`.
pub(crate) fn with_node_rules(
    mut rules: BTreeMap<u32, RuleInfo>,
    host: bool,
) -> BTreeMap<u32, RuleInfo> {
    if host {
        rules.extend(node_rules());
    }
    rules
}

/// The rules of node traffic (`--allow-node`), both directions.
pub(crate) fn node_rules() -> [(u32, RuleInfo); 2] {
    [
        (RULE_NODE_INGRESS, DIR_INGRESS),
        (RULE_NODE_EGRESS, DIR_EGRESS),
    ]
    .map(|(id, direction)| {
        (
            id,
            RuleInfo {
                namespace: String::new(),
                policy: "(allow-node)".to_owned(),
                direction,
                index: 0,
            },
        )
    })
}

/// What the local part of a compile reads of the cluster-wide part.
pub(crate) struct Shared<'a> {
    pub identities: &'a Identities,
    pub rule_ids: &'a RuleIds,
    pub frontends: &'a [ResolvedFrontend],
    pub by_backend: &'a BTreeMap<u32, BTreeSet<usize>>,
    /// Some node address is `IDENTITY_HOST` (`--allow-node`).
    pub host: bool,
}

/// The node's own part of an image: its endpoints and their endpoint policies.
#[derive(Debug, Default)]
pub(crate) struct Local {
    pub endpoints: BTreeMap<IpAddr, Endpoint>,
    pub policy: BTreeMap<PolicyEntry, u32>,
    pub endpoint_policies: BTreeMap<u32, EndpointPolicyInfo>,
}

/// The endpoints of the live pods `local` and the endpoint policies they get.
pub(crate) fn local_part<'s>(
    state: &'s State,
    local: impl Iterator<Item = &'s Pod>,
    shared: &Shared<'_>,
) -> Local {
    let identities = shared.identities;
    let namespaces = NamespaceLabels::new(state);
    // Local endpoints, grouped by what decides their entries.
    let mut groups: BTreeMap<GroupKey, Vec<(IpAddr, &Pod)>> = BTreeMap::new();
    let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
    for pod in local {
        // A pod is selected only by policies of its own namespace: a run of the
        // policies, which are sorted by (namespace, name).
        let namespace = pod.namespace.as_str();
        let first = (state.policies).partition_point(|p| p.namespace.as_str() < namespace);
        let end =
            first + state.policies[first..].partition_point(|p| p.namespace.as_str() == namespace);
        let selecting: Vec<usize> = (first..end)
            .filter(|&p| selects(&state.policies[p], pod))
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

    // Only the rules of policies that decide some local endpoint are expanded.
    let mut deciding_of: BTreeMap<(&GroupKey, u8), (Vec<usize>, bool)> = BTreeMap::new();
    for key in groups.keys().filter(|(selecting, _)| !selecting.is_empty()) {
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            if let Some(deciding) = deciding_policies(state, &key.0, direction) {
                deciding_of.insert((key, direction), deciding);
            }
        }
    }
    let needed: BTreeSet<usize> = deciding_of
        .values()
        .flat_map(|(d, _)| d.iter().copied())
        .collect();
    let peers = expand_needed(state, &needed, identities, &namespaces);

    // The content of every isolated group's endpoint policy.
    let mut contents: BTreeMap<&GroupKey, Content> = BTreeMap::new();
    for key in groups.keys() {
        let (selecting, named) = key;
        if selecting.is_empty() {
            continue;
        }
        let mut content = Content::default();
        let mut entries: BTreeMap<EntryKey, u32> = BTreeMap::new();
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            let Some((deciding, audit)) = deciding_of.get(&(key, direction)) else {
                continue;
            };
            let (deciding, audit) = (deciding.as_slice(), *audit);
            let names = deciding
                .iter()
                .map(|&p| format!("{}/{}", state.policies[p].namespace, state.policies[p].name))
                .collect();
            let own = endpoint_entries(state, deciding, named, identities, &peers, shared.rule_ids);
            entries.extend(own.into_iter().filter(|((_, d, _), _)| *d == direction));
            if direction == DIR_INGRESS {
                content.ingress = names;
                content.audit_ingress = audit;
            } else {
                content.egress = names;
                content.audit_egress = audit;
            }
        }
        if !content.egress.is_empty() {
            add_frontends(&mut entries, shared.frontends, shared.by_backend);
        }
        if shared.host {
            if !content.ingress.is_empty() {
                entries.insert(
                    (IDENTITY_HOST, DIR_INGRESS, PortMatch::ANY),
                    RULE_NODE_INGRESS,
                );
            }
            if !content.egress.is_empty() {
                entries.insert(
                    (IDENTITY_HOST, DIR_EGRESS, PortMatch::ANY),
                    RULE_NODE_EGRESS,
                );
            }
        }
        content.entries = entries.into_iter().collect();
        contents.insert(key, content);
    }
    let mut allocator = IdAllocator::new(reserved_zero);
    let policy_ids = allocator.allocate_all(contents.values().cloned(), Content::hash);

    let mut local = Local::default();
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
            local.policy.insert(entry, *rule);
        }
        local.endpoint_policies.insert(
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
                audit_ingress: content.is_some_and(|c| c.audit_ingress),
                audit_egress: content.is_some_and(|c| c.audit_egress),
                identity: identities
                    .of_pod_ip
                    .get(ip)
                    .copied()
                    .unwrap_or(IDENTITY_WORLD),
            };
            local.endpoints.insert(*ip, endpoint);
        }
    }
    local
}

/// What decides an endpoint's entries: the indices of the policies selecting it, and
/// its own named ports when one of their ingress rules names a port (else empty).
type GroupKey = (Vec<usize>, NamedPorts);

/// The policies whose rules decide `direction` for endpoints selected by `selecting`,
/// and whether that direction is audited; `None` when none isolates it. Enforcing
/// policies decide when there is one; otherwise the (audit) policies isolating it.
fn deciding_policies(
    state: &State,
    selecting: &[usize],
    direction: u8,
) -> Option<(Vec<usize>, bool)> {
    let isolates = |policy: &Policy| {
        if direction == DIR_INGRESS {
            policy.isolates_ingress
        } else {
            policy.isolates_egress
        }
    };
    let isolating: Vec<usize> = selecting
        .iter()
        .copied()
        .filter(|&p| isolates(&state.policies[p]))
        .collect();
    if isolating.is_empty() {
        return None;
    }
    let enforcing: Vec<usize> = isolating
        .iter()
        .copied()
        .filter(|&p| !state.policies[p].audit)
        .collect();
    Some(if enforcing.is_empty() {
        (isolating, true)
    } else {
        (enforcing, false)
    })
}

/// A frontend with its VIP and backends resolved to identities (once per compile).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResolvedFrontend {
    vip: u32,
    protocol: u8,
    port: u16,
    /// (backend identity, target port).
    backends: Vec<(u32, u16)>,
}

impl ResolvedFrontend {
    pub(crate) fn new(frontend: &Frontend, trie: &BTreeMap<IpNet, u32>) -> Self {
        let mut backends: Vec<(u32, u16)> = frontend
            .backends
            .iter()
            .map(|(addr, port)| (identity_in(trie, *addr), *port))
            .collect();
        backends.sort_unstable();
        backends.dedup();
        ResolvedFrontend {
            vip: identity_in(trie, frontend.vip),
            protocol: frontend.protocol.number(),
            port: frontend.port,
            backends,
        }
    }
}

/// Frontend indices by backend identity.
pub(crate) fn frontends_by_backend(
    frontends: &[ResolvedFrontend],
) -> BTreeMap<u32, BTreeSet<usize>> {
    let mut by_backend: BTreeMap<u32, BTreeSet<usize>> = BTreeMap::new();
    for (i, frontend) in frontends.iter().enumerate() {
        for (peer, _) in &frontend.backends {
            by_backend.entry(*peer).or_default().insert(i);
        }
    }
    by_backend
}

/// Adds to an egress-isolated endpoint policy's `entries` every VIP:port whose
/// backends it allows (one is enough: kube-proxy picks among them), with the rule
/// that allows the first such backend. The VIP's own identity is unique to it, so
/// these exact-port entries allow nothing else. Only frontends with a backend whose
/// identity some egress entry names are looked at (every frontend when an
/// `IDENTITY_ANY` entry exists): `by_backend` is [`frontends_by_backend`].
fn add_frontends(
    entries: &mut BTreeMap<EntryKey, u32>,
    frontends: &[ResolvedFrontend],
    by_backend: &BTreeMap<u32, BTreeSet<usize>>,
) {
    let peers: BTreeSet<u32> = entries
        .keys()
        .filter(|(_, direction, _)| *direction == DIR_EGRESS)
        .map(|(peer, _, _)| *peer)
        .collect();
    let any = peers.contains(&netfence_common::IDENTITY_ANY);
    let candidates: BTreeSet<usize> = if any {
        (0..frontends.len()).collect()
    } else {
        peers
            .iter()
            .filter_map(|peer| by_backend.get(peer))
            .flatten()
            .copied()
            .collect()
    };
    for frontend in candidates.into_iter().map(|i| &frontends[i]) {
        let allowing = frontend
            .backends
            .iter()
            .filter(|(peer, _)| any || peers.contains(peer))
            .find_map(|(peer, port)| {
                lookup_in_order(
                    *peer,
                    frontend.protocol,
                    *port,
                    |peer, protocol, port, port_bits| {
                        let key = (
                            peer,
                            DIR_EGRESS,
                            PortMatch {
                                protocol,
                                port,
                                port_bits,
                            },
                        );
                        entries.get(&key).copied()
                    },
                )
            });
        if let Some(rule) = allowing {
            let key = (
                frontend.vip,
                DIR_EGRESS,
                PortMatch {
                    protocol: frontend.protocol,
                    port: frontend.port,
                    port_bits: 16,
                },
            );
            entries.entry(key).or_insert(rule);
        }
    }
}

/// True when `policy` selects `pod` and isolates it in some direction.
fn selects(policy: &Policy, pod: &Pod) -> bool {
    (policy.isolates_ingress || policy.isolates_egress)
        && policy.namespace == pod.namespace
        && matches(&policy.pod_selector, &pod.labels)
}

/// What an endpoint policy id is a hash of.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Content {
    /// `ns/name` of the policies whose rules decide ingress / egress (empty: not
    /// isolated in that direction).
    ingress: Vec<String>,
    egress: Vec<String>,
    /// The direction is decided by audit policies.
    audit_ingress: bool,
    audit_egress: bool,
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
        if self.audit_ingress {
            h.str("audit-ingress");
        }
        if self.audit_egress {
            h.str("audit-egress");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{self, Params};

    fn context<'a>(audit_all: bool, announced: &'a [Announced]) -> NodeContext<'a> {
        NodeContext {
            name: Some("node-1"),
            addresses: &[],
            allow_node: true,
            audit_all,
            announced,
        }
    }

    #[test]
    fn audit_mode_audits_every_isolated_direction_and_nothing_else() {
        let state = scenario::generate(&Params::new(500, 40, 30, "node-1"));
        let enforcing = compile_node(&state, &context(false, &[]));
        let audited = compile_node(&state, &context(true, &[]));
        assert_eq!(enforcing.policy, audited.policy);
        assert!(
            enforcing
                .endpoints
                .values()
                .any(|e| e.isolated_ingress && !e.audit_ingress)
        );
        for (addr, endpoint) in &audited.endpoints {
            let plain = &enforcing.endpoints[addr];
            assert_eq!(endpoint.audit_ingress, plain.isolated_ingress, "{addr}");
            assert_eq!(endpoint.audit_egress, plain.isolated_egress, "{addr}");
            assert_eq!(
                endpoint.flags()
                    & !(netfence_common::EP_AUDIT_INGRESS | netfence_common::EP_AUDIT_EGRESS),
                plain.flags()
            );
        }
    }

    #[test]
    fn announced_pods_are_filled_in_or_denied_and_audited_in_audit_mode() {
        let mut state = scenario::generate(&Params::new(200, 14, 5, "node-1"));
        let pod = state
            .pods
            .iter_mut()
            .find(|p| p.node_name.as_deref() == Some("node-1"))
            .expect("a local pod");
        pod.ips.clear();
        let announced = [
            Announced {
                pod: Some((pod.namespace.clone(), pod.name.clone())),
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                ips: vec!["198.18.0.20".parse().expect("an address")],
            },
            Announced {
                pod: None,
                namespace: "cni".to_owned(),
                name: "c1".to_owned(),
                ips: vec!["198.18.0.21".parse().expect("an address")],
            },
        ];
        let image = compile_node(&state, &context(true, &announced));
        let filled = &image.endpoints[&"198.18.0.20".parse().expect("an address")];
        assert!(!announced::is_deny_all(filled), "{filled:?}");
        assert_ne!(filled.identity, IDENTITY_WORLD);
        let denied = &image.endpoints[&"198.18.0.21".parse().expect("an address")];
        assert!(announced::is_deny_all(denied));
        assert!(
            denied.audit_ingress && denied.audit_egress,
            "audit mode audits deny-all endpoints too"
        );
        // Applied to an image, `announce` is what the compile with that announcement gives.
        let mut without = compile_node(&state, &context(true, &announced[..1]));
        assert_eq!(announce(&mut without, &announced[1..], true), 1);
        assert_eq!(without, image);
    }
}
