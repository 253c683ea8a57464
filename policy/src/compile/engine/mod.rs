//! The incremental engine: the image of one node, kept up to date as the state
//! changes, with work that follows what changed. After any sequence of updates its
//! image equals [`compile_node`](super::compile_node) of the last state (a property
//! test holds it to that, `tests/engine_props.rs`).
//!
//! Two ways in: [`Engine::apply`] takes changes object by object (what a watch
//! delivers) and edits the state it keeps in place, so one change costs neither a
//! copy nor a comparison of the cluster; [`Engine::update`] takes a whole new state
//! and finds the changed objects by comparing it with the last one. Both hand the
//! same per-object changes (old and new version of each) to one step.
//!
//! What it keeps between updates, and when each part is recomputed:
//! - **identities** (the IDENTITIES trie, what each identity stands for, the pods
//!   behind it): updated per changed pod — its old and new addresses are re-described
//!   (owner pod, label group, covering ipBlocks) and only identities whose membership
//!   changes are created or released. Rebuilt from scratch when what every prefix's
//!   description depends on changes: the set of ipBlocks rules name (counted per
//!   mention, so a changed policy costs its own rules), the ClusterIPs (read again
//!   only when a changed Service's ClusterIPs did), whether some egress rule names a
//!   port (pod groups then include named ports), or a pod address that is also a
//!   ClusterIP or an ipBlock prefix.
//! - **rule ids**: per changed policy (its old ids freed, its new rules given ids).
//! - **Service frontends**: recomputed when a Service changes (or a pod, while some
//!   Service without slices selects its backends by labels); per Service when only
//!   its EndpointSlices changed; a frontend whose backend address changed identity is
//!   re-resolved alone.
//! - **the node's part** (its endpoints, their endpoint policies and POLICY entries):
//!   recomputed at every update from the local pods alone; its cost follows the local
//!   pods and the rules that decide them, not the cluster.
//!
//! Identity and rule ids are hashes of what they stand for (see `ids`); a from-scratch
//! compile probes past collisions in sorted order, the engine in the order they
//! appear, so the two agree exactly unless two live descriptions hash alike (then the
//! colliding ids may be swapped; every verdict is the same).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use netfence_common::{DIR_EGRESS, DIR_INGRESS, IDENTITY_HOST, IDENTITY_WORLD};

use super::announced::{Announced, fill_pod, fill_state, names_pod, takes_addresses};
use super::identity::{Block, Covering, Description, Identities, PodGroup, policy_blocks};
use super::ids::{IdAllocator, reserved_identity, reserved_rule};
use super::rules::{
    RuleIds, effective_rules, rule_hash, rule_ids, rule_info, rule_text, uses_named_port,
};
use super::services::{Frontend, frontends, service_frontends, vips};
use super::{
    NodeContext, ResolvedFrontend, Shared, add_node_inputs, frontends_by_backend, host_addresses,
    local_part, node_rules, with_node_rules,
};
use crate::change::{
    Change, Keyed, Object, changed, delete_sorted, find_sorted, get_sorted, put_sorted,
};
use crate::error::Kind;
use crate::image::{IdentityInfo, Image, Patch, RuleInfo, canonical_addr};
use crate::model::{EndpointSlice, Pod, Policy, Service, State};

mod changes;
mod cluster;
mod rules;

use self::changes::{Collecting, Delta, owned};
use self::cluster::Cluster;
use self::rules::Rules;

/// What the engine knows about the node beyond the cluster state (an owned
/// [`NodeContext`] without the announced pods, which come with each update).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub allow_node: bool,
    pub audit_all: bool,
}

/// What one update did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// The identities were rebuilt from scratch (see the module doc for when).
    pub rebuilt: bool,
    /// Pods whose identity-relevant fields changed.
    pub pods_changed: usize,
    /// Identities created, released or renamed.
    pub identities_touched: usize,
    /// What changed in the image's cluster-wide part (meaningless after a rebuild:
    /// anything may have).
    pub changed: Changed,
}

/// The cluster-wide entries of the image one update changed (the node-local maps
/// are recomputed at every update), and the addresses whose owner pod may have
/// changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// IDENTITIES prefixes.
    pub prefixes: BTreeSet<IpNet>,
    /// Identities whose description (`identity_info`) changed.
    pub identities: BTreeSet<u32>,
    /// Rule ids given or freed.
    pub rules: BTreeSet<u32>,
    /// Addresses of changed pods and of local endpoints added, removed or renamed:
    /// the only ones whose [`Engine::owner_of`] may differ from before the update.
    pub addresses: BTreeSet<IpAddr>,
}

/// The incremental engine of one node.
#[derive(Debug, Default)]
pub struct Engine {
    node: Node,
    /// The last state, with the announced pods filled in.
    state: Arc<State>,
    /// The pods of `state` whose addresses an announcement gave (the source's
    /// version has none).
    filled: BTreeSet<(String, String)>,
    /// The announcements `state` was filled from.
    announced: Vec<Announced>,
    cluster: Option<Cluster>,
    image: Image,
}

/// A pod's key.
fn key_of(pod: &Pod) -> (String, String) {
    (pod.namespace.clone(), pod.name.clone())
}

impl Engine {
    pub fn new(node: Node) -> Self {
        Engine {
            node,
            ..Engine::default()
        }
    }

    /// The image of the last update.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The state of the last update, with the announced pods filled in (what the
    /// image was compiled from).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The node's context as [`compile_node`](super::compile_node) takes it.
    pub fn context<'a>(&'a self, announced: &'a [Announced]) -> NodeContext<'a> {
        NodeContext {
            name: self.node.name.as_deref(),
            addresses: &self.node.addresses,
            allow_node: self.node.allow_node,
            audit_all: self.node.audit_all,
            announced,
        }
    }

    /// Changes the node's context (addresses re-read, say); takes effect at the next
    /// update, which then recomputes what the node's addresses decide.
    pub fn set_node(&mut self, mut node: Node) {
        node.addresses.sort_unstable();
        node.addresses.dedup();
        if node == self.node {
            return;
        }
        if node.name != self.node.name {
            // Announcements fill only the pods of the named node: take them back.
            let state = Arc::make_mut(&mut self.state);
            for (namespace, name) in std::mem::take(&mut self.filled) {
                if let Ok(at) = find_pod(state, &namespace, &name) {
                    state.pods[at].ips.clear();
                }
            }
            self.announced.clear();
        }
        self.node = node;
        // Host addresses resolve differently: re-resolve everything once.
        self.cluster = None;
    }

    /// Brings the image to `state` with `announced`. The engine keeps `state` (shared,
    /// not copied) and compares the next one with it to find what changed.
    pub fn update(&mut self, state: Arc<State>, announced: &[Announced]) -> Work {
        let mut filled = BTreeSet::new();
        let state = match &self.node.name {
            Some(node) => {
                for one in announced {
                    if let Some((namespace, name)) = &one.pod
                        && names_pod(one, &state, node)
                    {
                        filled.insert((namespace.clone(), name.clone()));
                    }
                }
                match fill_state(&state, node, announced) {
                    std::borrow::Cow::Owned(filled) => Arc::new(filled),
                    std::borrow::Cow::Borrowed(_) => state,
                }
            }
            None => state,
        };
        let delta = self.cluster.as_ref().and_then(|_| {
            let old = &self.state;
            Some(Delta {
                pods: owned(changed(&old.pods, &state.pods)?),
                policies: owned(changed(&old.policies, &state.policies)?),
                services: owned(changed(&old.services, &state.services)?),
                slices: owned(changed(&old.endpoint_slices, &state.endpoint_slices)?),
            })
        });
        self.state = state;
        self.filled = filled;
        self.announced = announced.to_vec();
        self.advance(delta, announced)
    }

    /// Applies `changes`, in order, to the state the engine keeps, then brings the
    /// image to it with `announced`. An object changed twice counts once (its first
    /// old and last new version).
    pub fn apply(&mut self, changes: Vec<Change>, announced: &[Announced]) -> Work {
        let mut collecting = Collecting {
            off: self.cluster.is_none(),
            ..Collecting::default()
        };
        let mut state = std::mem::take(&mut self.state);
        {
            // Copies the state only if someone else holds it.
            let edit = Arc::make_mut(&mut state);
            for change in changes {
                self.apply_one(edit, change, announced, &mut collecting);
            }
            self.refill(edit, announced, &mut collecting);
        }
        self.state = state;
        self.announced = announced.to_vec();
        let delta = self.cluster.as_ref().map(|_| collecting.finish());
        self.advance(delta, announced)
    }

    /// Brings the image to `self.state` given what changed since the last update
    /// (`None`: unknown, rebuild).
    fn advance(&mut self, delta: Option<Delta>, announced: &[Announced]) -> Work {
        let state = self.state.clone();
        let mut work = Work::default();
        let mut changed_addresses: BTreeSet<IpAddr> = BTreeSet::new();
        let mut touched: BTreeSet<u32> = BTreeSet::new();
        let delta = match (delta, self.cluster.as_mut()) {
            (Some(delta), Some(cluster)) => {
                work.pods_changed = delta.pods.len();
                let reusable = cluster.keep_descriptions(&delta, &state)
                    && delta.pods.iter().all(|(old, new)| {
                        cluster
                            .update_pod(
                                old.as_ref(),
                                new.as_ref(),
                                &state,
                                &mut changed_addresses,
                                &mut touched,
                            )
                            .is_ok()
                    });
                reusable.then_some(delta)
            }
            _ => None,
        };
        let rebuild = delta.is_none();
        let mut fresh_rules = BTreeMap::new();
        if rebuild {
            let (cluster, rules) = Cluster::build(&state);
            self.cluster = Some(cluster);
            fresh_rules = rules;
            work.rebuilt = true;
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return work;
        };
        work.identities_touched = touched.len();
        let delta = delta.unwrap_or_default();
        let context = NodeContext {
            name: self.node.name.as_deref(),
            addresses: &self.node.addresses,
            allow_node: self.node.allow_node,
            audit_all: self.node.audit_all,
            announced,
        };
        let host = host_addresses(&context, &cluster.vips, &cluster.identities.of_pod_ip);
        if rebuild {
            self.image.identities = cluster.identities.trie.clone();
            for addr in &host {
                self.image
                    .identities
                    .insert(IpNet::from(*addr), IDENTITY_HOST);
            }
            self.image.identity_info = cluster.identities.info();
            self.image.rules = with_node_rules(std::mem::take(&mut fresh_rules), !host.is_empty());
        } else {
            let mut nets: BTreeSet<IpNet> =
                changed_addresses.iter().map(|a| IpNet::from(*a)).collect();
            nets.extend(cluster.host.iter().chain(&host).map(|a| IpNet::from(*a)));
            for net in &nets {
                let id = if host.contains(&net.addr()) {
                    Some(IDENTITY_HOST)
                } else {
                    cluster.identities.trie.get(net).copied()
                };
                match id {
                    Some(id) => self.image.identities.insert(*net, id),
                    None => self.image.identities.remove(net),
                };
            }
            changed_addresses.extend(cluster.host.iter().chain(&host).copied());
            for id in &touched {
                match cluster.info(*id) {
                    Some(info) => self.image.identity_info.insert(*id, info),
                    None => self.image.identity_info.remove(id),
                };
            }
            if !delta.policies.is_empty() {
                cluster.rules.update(
                    &delta.policies,
                    &mut self.image.rules,
                    &mut work.changed.rules,
                );
            }
            if host.is_empty() != cluster.host.is_empty() {
                for (id, info) in node_rules() {
                    if host.is_empty() {
                        self.image.rules.remove(&id);
                    } else {
                        self.image.rules.insert(id, info);
                    }
                    work.changed.rules.insert(id);
                }
            }
            work.changed.prefixes = nets;
            work.changed.identities = touched;
        }
        cluster.host = host;

        // Services.
        let mut sliced: BTreeSet<(String, String)> = BTreeSet::new();
        for (old, new) in &delta.slices {
            for (slice, present) in [(old, false), (new, true)] {
                let Some(slice) = slice else { continue };
                let Some(service) = &slice.service else {
                    continue;
                };
                let key = (slice.namespace.clone(), service.clone());
                let names = cluster.slices_of.entry(key.clone()).or_default();
                if present {
                    names.insert(slice.name.clone());
                } else {
                    names.remove(&slice.name);
                }
                if names.is_empty() {
                    cluster.slices_of.remove(&key);
                }
                sliced.insert(key);
            }
        }
        let services: BTreeSet<(String, String)> = delta
            .services
            .iter()
            .filter_map(|(old, new)| old.as_ref().or(new.as_ref()))
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .chain(sliced.iter().cloned())
            .collect();
        for key in &services {
            cluster.note_selector(key, &state);
        }
        let all_frontends = rebuild
            || !delta.services.is_empty()
            || (!cluster.unsliced_selectors.is_empty() && !delta.pods.is_empty());
        if all_frontends {
            cluster.set_frontends(frontends(&state, &cluster.vips), &self.image.identities);
        } else {
            if !sliced.is_empty()
                && !cluster.refresh_services(&sliced, &state, &self.image.identities)
            {
                cluster.set_frontends(frontends(&state, &cluster.vips), &self.image.identities);
            }
            cluster.reresolve(&changed_addresses, &self.image.identities);
        }

        // The node's part.
        if rebuild {
            cluster.local = state
                .pods
                .iter()
                .filter(|pod| is_local(pod, self.node.name.as_deref()))
                .map(key_of)
                .collect();
        } else {
            for pod in delta
                .pods
                .iter()
                .filter_map(|(old, new)| old.as_ref().or(new.as_ref()))
            {
                let key = key_of(pod);
                cluster.local.remove(&key);
                if let Ok(index) = find_pod(&state, &key.0, &key.1)
                    && is_local(&state.pods[index], self.node.name.as_deref())
                {
                    cluster.local.insert(key);
                }
            }
        }
        let local = cluster.local.iter().filter_map(|(namespace, name)| {
            find_pod(&state, namespace, name)
                .ok()
                .map(|i| &state.pods[i])
        });
        let local = local_part(
            &state,
            local,
            &Shared {
                identities: &cluster.identities,
                rule_ids: &cluster.rules.ids,
                frontends: &cluster.resolved,
                by_backend: &cluster.by_backend,
                host: !cluster.host.is_empty(),
            },
        );
        let previous = std::mem::replace(&mut self.image.endpoints, local.endpoints);
        self.image.policy = local.policy;
        self.image.endpoint_policies = local.endpoint_policies;
        add_node_inputs(&mut self.image, announced, self.node.audit_all);
        // Local endpoints added, removed or given to another pod.
        let owner = |e: &crate::image::Endpoint| (e.namespace.clone(), e.pod.clone());
        for (addr, endpoint) in &previous {
            if self.image.endpoints.get(addr).map(owner) != Some(owner(endpoint)) {
                changed_addresses.insert(*addr);
            }
        }
        for addr in self.image.endpoints.keys() {
            if !previous.contains_key(addr) {
                changed_addresses.insert(*addr);
            }
        }
        work.changed.addresses = changed_addresses;
        work
    }

    /// What `changed` (of the last update, unless it rebuilt) changed in the image.
    pub fn patch(&self, changed: &Changed) -> Patch {
        fn entries<K: Ord + Copy, V: Clone>(
            keys: &BTreeSet<K>,
            map: &BTreeMap<K, V>,
        ) -> Vec<(K, Option<V>)> {
            keys.iter().map(|k| (*k, map.get(k).cloned())).collect()
        }
        let image = &self.image;
        Patch {
            endpoints: image.endpoints.clone(),
            policy: image.policy.clone(),
            endpoint_policies: image.endpoint_policies.clone(),
            identities: entries(&changed.prefixes, &image.identities),
            identity_info: entries(&changed.identities, &image.identity_info),
            rules: entries(&changed.rules, &image.rules),
        }
    }

    /// The pod that owns address `addr`: the local endpoint's, else the first live
    /// pod (by namespace and name) that has it.
    pub fn owner_of(&self, addr: IpAddr) -> Option<(&str, &str)> {
        let addr = canonical_addr(addr);
        if let Some(endpoint) = self.image.endpoints.get(&addr) {
            return Some((&endpoint.namespace, &endpoint.pod));
        }
        let (namespace, name) = self.cluster.as_ref()?.claims.get(&addr)?.first()?;
        Some((namespace, name))
    }

    /// True when the pod `announced` names takes its addresses at the next update:
    /// the state names it on this node, without an address of its own (as
    /// [`names_pod`] says of the source's state; the engine's state has the addresses
    /// of earlier announcements filled in).
    pub fn takes_announced(&self, announced: &Announced) -> bool {
        let (Some(node), Some((namespace, name))) = (self.node.name.as_deref(), &announced.pod)
        else {
            return false;
        };
        let Ok(at) = find_pod(&self.state, namespace, name) else {
            return false;
        };
        let filled = self.filled.contains(&(namespace.clone(), name.clone()));
        let mut pod = self.state.pods[at].clone();
        if filled {
            pod.ips.clear();
        }
        takes_addresses(&pod, node)
    }
}

/// A live pod of node `node` (every live pod without a node name).
fn is_local(pod: &Pod, node: Option<&str>) -> bool {
    pod.is_live_endpoint() && node.is_none_or(|n| pod.node_name.as_deref() == Some(n))
}

/// The index of pod `namespace/name` in a state sorted by (namespace, name).
fn find_pod(state: &State, namespace: &str, name: &str) -> Result<usize, usize> {
    find_sorted(&state.pods, (namespace, name))
}

/// A pod's canonical addresses while it is a live endpoint.
fn live_addresses(pod: Option<&Pod>) -> Vec<IpAddr> {
    pod.filter(|pod| pod.is_live_endpoint())
        .map(|pod| pod.ips.iter().map(|ip| canonical_addr(*ip)).collect())
        .unwrap_or_default()
}

/// A Service's ClusterIPs (none when absent).
fn cluster_ips(service: Option<&Service>) -> &[IpAddr] {
    service.map_or(&[], |s| s.cluster_ips.as_slice())
}
