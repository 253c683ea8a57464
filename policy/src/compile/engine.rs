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
use crate::change::{Change, Keyed, Object, changed, delete_sorted, put_sorted};
use crate::error::Kind;
use crate::image::{IdentityInfo, Image, Patch, RuleInfo, canonical_addr};
use crate::model::{EndpointSlice, Pod, Policy, Service, State};

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

/// Old and new version of every object one update changes (at most one pair per
/// object; either absent for an added or deleted one).
#[derive(Debug, Default)]
struct Delta {
    pods: Vec<(Option<Pod>, Option<Pod>)>,
    policies: Vec<(Option<Policy>, Option<Policy>)>,
    services: Vec<(Option<Service>, Option<Service>)>,
    slices: Vec<(Option<EndpointSlice>, Option<EndpointSlice>)>,
}

/// Per-object changes being collected, by key: the first old and the last new
/// version.
type Pairs<T> = BTreeMap<(String, String), (Option<T>, Option<T>)>;

/// [`Delta`] while changes are applied.
#[derive(Debug, Default)]
struct Collecting {
    pods: Pairs<Pod>,
    policies: Pairs<Policy>,
    services: Pairs<Service>,
    slices: Pairs<EndpointSlice>,
}

impl Collecting {
    fn finish(self) -> Delta {
        fn differing<T: PartialEq>(pairs: Pairs<T>) -> Vec<(Option<T>, Option<T>)> {
            pairs
                .into_values()
                .filter(|(old, new)| old != new)
                .collect()
        }
        Delta {
            pods: differing(self.pods),
            policies: differing(self.policies),
            services: differing(self.services),
            slices: differing(self.slices),
        }
    }
}

/// Records that the object `new` or `old` names went from `old` to `new`.
fn record<T: Keyed>(pairs: &mut Pairs<T>, old: Option<T>, new: Option<T>) {
    let Some((namespace, name)) = new.as_ref().or(old.as_ref()).map(Keyed::key) else {
        return;
    };
    let key = (namespace.to_owned(), name.to_owned());
    pairs.entry(key).or_insert_with(|| (old, None)).1 = new;
}

/// The pairs of [`changed`], owned.
fn owned<T: Clone>(pairs: Vec<(Option<&T>, Option<&T>)>) -> Vec<(Option<T>, Option<T>)> {
    pairs
        .into_iter()
        .map(|(old, new)| (old.cloned(), new.cloned()))
        .collect()
}

/// A pod's key.
fn key_of(pod: &Pod) -> (String, String) {
    (pod.namespace.clone(), pod.name.clone())
}

/// The cluster-wide part, kept between updates.
#[derive(Debug, Default)]
struct Cluster {
    /// What every prefix's description depends on.
    blocks: BTreeSet<Block>,
    /// Mentions of each ipBlock by the effective rules of all policies (`blocks` is
    /// its key set).
    block_mentions: BTreeMap<Block, usize>,
    vips: BTreeMap<IpAddr, String>,
    by_named_ports: bool,
    /// Policies with an effective egress rule naming a port (`by_named_ports`: some).
    named_port_policies: usize,
    covering: Covering,
    /// Every cidr and except of `blocks` (a pod address among them: rebuild).
    block_prefixes: BTreeSet<IpNet>,
    /// `trie` holds the identities without the node's addresses.
    identities: Identities,
    /// Live pods claiming each (canonical) address; the first owns it.
    /// (Sorted by (namespace, name): a vector, as an address has one claimant but
    /// for a conflict.)
    claims: BTreeMap<IpAddr, Vec<(String, String)>>,
    /// Description hash → the identities described so (one, but for collisions):
    /// finds a description's identity without a second copy of every description.
    by_hash: BTreeMap<u32, Vec<u32>>,
    /// Prefixes per identity.
    prefixes: BTreeMap<u32, usize>,
    /// Addresses per (identity, owner pod `ns/name`): `identities.pods` holds a pod
    /// while this is non-zero.
    owners: BTreeMap<(u32, String), usize>,
    /// The owner (`ns/name`) each described address was described for.
    owner_of_ip: BTreeMap<IpAddr, String>,
    allocator: Option<IdAllocator>,
    rules: Rules,
    frontends: Vec<Frontend>,
    resolved: Vec<ResolvedFrontend>,
    by_backend: BTreeMap<u32, BTreeSet<usize>>,
    /// `ns/name` of each Service → its frontends' places (consecutive).
    ranges: BTreeMap<String, std::ops::Range<usize>>,
    /// Backend address → the frontends listing it.
    frontends_of: BTreeMap<IpAddr, BTreeSet<usize>>,
    /// (namespace, Service name) → the names of the EndpointSlices labelled for it.
    slices_of: BTreeMap<(String, String), BTreeSet<String>>,
    /// The Services with a selector and no EndpointSlice: they pick their backends
    /// by labels, so pods change them.
    unsliced_selectors: BTreeSet<(String, String)>,
    /// The node's addresses that are `IDENTITY_HOST`.
    host: Vec<IpAddr>,
    /// The node's live pods, by (namespace, name).
    local: BTreeSet<(String, String)>,
}

/// The ids of every effective rule, kept per policy.
#[derive(Debug)]
struct Rules {
    /// By (namespace, name), in the state's order.
    of_policy: BTreeMap<(String, String), [Vec<u32>; 2]>,
    /// The same ids by place, as the local part reads them.
    ids: RuleIds,
    allocator: IdAllocator,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            of_policy: BTreeMap::new(),
            ids: RuleIds::default(),
            allocator: IdAllocator::new(reserved_rule),
        }
    }
}

impl Rules {
    /// The ids a compile gives the rules of `state`, and what each id stands for.
    fn build(state: &State) -> (Rules, BTreeMap<u32, RuleInfo>) {
        let (ids, infos) = rule_ids(state);
        let mut allocator = IdAllocator::new(reserved_rule);
        for id in infos.keys() {
            allocator.take(*id);
        }
        let of_policy = state
            .policies
            .iter()
            .zip(&ids.0)
            .map(|(policy, ids)| ((policy.namespace.clone(), policy.name.clone()), ids.clone()))
            .collect();
        let rules = Rules {
            of_policy,
            ids,
            allocator,
        };
        (rules, infos)
    }

    /// Frees the ids of the old versions of `changed` and gives the new versions'
    /// rules ids, keeping `infos` (the image's rules) in step.
    fn update(
        &mut self,
        changed: &[(Option<Policy>, Option<Policy>)],
        infos: &mut BTreeMap<u32, RuleInfo>,
        ids_changed: &mut BTreeSet<u32>,
    ) {
        for old in changed.iter().filter_map(|(old, _)| old.as_ref()) {
            let key = (old.namespace.clone(), old.name.clone());
            for id in self.of_policy.remove(&key).into_iter().flatten().flatten() {
                self.allocator.free(id);
                infos.remove(&id);
                ids_changed.insert(id);
            }
        }
        for new in changed.iter().filter_map(|(_, new)| new.as_ref()) {
            let ids = [DIR_INGRESS, DIR_EGRESS].map(|direction| {
                (0..effective_rules(new, direction).len())
                    .map(|index| {
                        let text = rule_text(new, direction, index);
                        let id = self.allocator.allocate(rule_hash(&text));
                        infos.insert(id, rule_info(new, direction, index));
                        ids_changed.insert(id);
                        id
                    })
                    .collect()
            });
            self.of_policy
                .insert((new.namespace.clone(), new.name.clone()), ids);
        }
        // Both are sorted by (namespace, name) and hold the same policies.
        self.ids = RuleIds(self.of_policy.values().cloned().collect());
    }
}

/// A pod address that needs a rebuild to re-describe.
struct Rebuild;

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
        let mut collecting = Collecting::default();
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

    fn apply_one(
        &mut self,
        state: &mut State,
        change: Change,
        announced: &[Announced],
        c: &mut Collecting,
    ) {
        match change {
            Change::Put(Object::Namespace(namespace)) => {
                state.namespaces.insert(namespace.name.clone(), namespace);
            }
            Change::Put(Object::Pod(mut pod)) => {
                let key = key_of(&pod);
                let filled = (self.node.name.as_deref())
                    .is_some_and(|node| fill_pod(&mut pod, node, announced));
                if filled {
                    self.filled.insert(key);
                } else {
                    self.filled.remove(&key);
                }
                let old = put_sorted(&mut state.pods, pod.clone());
                record(&mut c.pods, old, Some(pod));
            }
            Change::Put(Object::Policy(policy)) => {
                let old = put_sorted(&mut state.policies, policy.clone());
                record(&mut c.policies, old, Some(policy));
            }
            Change::Put(Object::Service(service)) => {
                let old = put_sorted(&mut state.services, service.clone());
                record(&mut c.services, old, Some(service));
            }
            Change::Put(Object::EndpointSlice(slice)) => {
                let old = put_sorted(&mut state.endpoint_slices, slice.clone());
                record(&mut c.slices, old, Some(slice));
            }
            Change::Delete(key) => {
                let at = (key.namespace.as_str(), key.name.as_str());
                match key.kind {
                    Kind::Namespace => {
                        state.namespaces.remove(&key.name);
                    }
                    Kind::Pod => {
                        let old = delete_sorted(&mut state.pods, at);
                        self.filled
                            .remove(&(key.namespace.clone(), key.name.clone()));
                        record(&mut c.pods, old, None);
                    }
                    Kind::NetworkPolicy => {
                        let old = delete_sorted(&mut state.policies, at);
                        record(&mut c.policies, old, None);
                    }
                    Kind::Service => {
                        let old = delete_sorted(&mut state.services, at);
                        record(&mut c.services, old, None);
                    }
                    Kind::EndpointSlice => {
                        let old = delete_sorted(&mut state.endpoint_slices, at);
                        record(&mut c.slices, old, None);
                    }
                }
            }
            Change::Relist(kind, objects) => {
                let objects: Vec<Object> =
                    objects.into_iter().filter(|o| o.kind() == kind).collect();
                let listed: BTreeSet<crate::error::ObjectKey> =
                    objects.iter().map(Object::key).collect();
                let present = keys_of(state, kind);
                for key in present.into_iter().filter(|k| !listed.contains(k)) {
                    self.apply_one(state, Change::Delete(key), announced, c);
                }
                for object in objects {
                    self.apply_one(state, Change::Put(object), announced, c);
                }
            }
        }
    }

    /// Fills the pods that the announcements, old or new, name again from `announced`.
    fn refill(&mut self, state: &mut State, announced: &[Announced], c: &mut Collecting) {
        let Some(node) = self.node.name.clone() else {
            return;
        };
        if announced == self.announced.as_slice() {
            return;
        }
        let named: BTreeSet<(String, String)> = (self.announced.iter().chain(announced))
            .filter_map(|one| one.pod.clone())
            .collect();
        for key in named {
            let Ok(at) = find_pod(state, &key.0, &key.1) else {
                continue;
            };
            let mut pod = state.pods[at].clone();
            if self.filled.remove(&key) {
                // The source's version: an announcement gave its addresses.
                pod.ips.clear();
            }
            if fill_pod(&mut pod, &node, announced) {
                self.filled.insert(key);
            }
            if pod != state.pods[at] {
                let old = std::mem::replace(&mut state.pods[at], pod.clone());
                record(&mut c.pods, Some(old), Some(pod));
            }
        }
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

/// The keys of the objects of `kind` in `state`.
fn keys_of(state: &State, kind: Kind) -> Vec<crate::error::ObjectKey> {
    fn of<T: Keyed>(items: &[T], kind: Kind) -> Vec<crate::error::ObjectKey> {
        items
            .iter()
            .map(|item| crate::error::ObjectKey {
                kind,
                namespace: item.key().0.to_owned(),
                name: item.key().1.to_owned(),
            })
            .collect()
    }
    match kind {
        Kind::Namespace => state
            .namespaces
            .keys()
            .map(|name| crate::error::ObjectKey {
                kind,
                namespace: String::new(),
                name: name.clone(),
            })
            .collect(),
        Kind::Pod => of(&state.pods, kind),
        Kind::NetworkPolicy => of(&state.policies, kind),
        Kind::Service => of(&state.services, kind),
        Kind::EndpointSlice => of(&state.endpoint_slices, kind),
    }
}

/// A live pod of node `node` (every live pod without a node name).
fn is_local(pod: &Pod, node: Option<&str>) -> bool {
    pod.is_live_endpoint() && node.is_none_or(|n| pod.node_name.as_deref() == Some(n))
}

/// The index of pod `namespace/name` in a state sorted by (namespace, name).
fn find_pod(state: &State, namespace: &str, name: &str) -> Result<usize, usize> {
    state
        .pods
        .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
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

impl Cluster {
    /// The cluster-wide part of `state` from scratch, and what each rule id stands
    /// for.
    fn build(state: &State) -> (Self, BTreeMap<u32, RuleInfo>) {
        let mut block_mentions: BTreeMap<Block, usize> = BTreeMap::new();
        for block in state.policies.iter().flat_map(policy_blocks) {
            *block_mentions.entry(block).or_default() += 1;
        }
        let blocks: BTreeSet<Block> = block_mentions.keys().cloned().collect();
        let named_port_policies = (state.policies.iter())
            .filter(|policy| uses_named_port(policy, DIR_EGRESS))
            .count();
        let by_named_ports = named_port_policies > 0;
        let vips = vips(state);
        let identities = Identities::build(state, &blocks, by_named_ports, &vips);
        let (rules, infos) = Rules::build(state);
        let mut cluster = Cluster {
            covering: Covering::new(&blocks),
            block_prefixes: blocks
                .iter()
                .flat_map(|b| std::iter::once(b.cidr).chain(b.except.iter().copied()))
                .collect(),
            blocks,
            block_mentions,
            vips,
            by_named_ports,
            named_port_policies,
            rules,
            ..Cluster::default()
        };
        for pod in state.pods.iter().filter(|p| p.is_live_endpoint()) {
            for ip in live_addresses(Some(pod)) {
                // In state order: the first claimant owns the address, as in a build.
                cluster.claims.entry(ip).or_default().push(key_of(pod));
            }
        }
        let mut allocator = IdAllocator::new(reserved_identity);
        for (id, description) in &identities.described {
            allocator.take(*id);
            cluster
                .by_hash
                .entry(description.hash())
                .or_default()
                .push(*id);
        }
        for id in identities.trie.values().filter(|id| **id != IDENTITY_WORLD) {
            *cluster.prefixes.entry(*id).or_default() += 1;
        }
        for (ip, id) in &identities.of_pod_ip {
            if let Some((namespace, name)) = cluster.claims.get(ip).and_then(|c| c.first()) {
                let name = format!("{namespace}/{name}");
                *cluster.owners.entry((*id, name.clone())).or_default() += 1;
                cluster.owner_of_ip.insert(*ip, name);
            }
        }
        cluster.allocator = Some(allocator);
        cluster.identities = identities;
        for slice in &state.endpoint_slices {
            if let Some(service) = &slice.service {
                cluster
                    .slices_of
                    .entry((slice.namespace.clone(), service.clone()))
                    .or_default()
                    .insert(slice.name.clone());
            }
        }
        for service in &state.services {
            cluster.note_selector(&(service.namespace.clone(), service.name.clone()), state);
        }
        (cluster, infos)
    }

    /// Counts the ipBlocks and named ports of the changed policies, and reads the
    /// ClusterIPs again when a changed Service's changed: true when what every
    /// prefix's description depends on stays (the set of ipBlocks, the ClusterIPs,
    /// whether pod groups include named ports).
    fn keep_descriptions(&mut self, delta: &Delta, state: &State) -> bool {
        let mut same = true;
        for (old, new) in &delta.policies {
            for policy in old.iter() {
                for block in policy_blocks(policy) {
                    if let Some(count) = self.block_mentions.get_mut(&block) {
                        *count -= 1;
                        if *count == 0 {
                            self.block_mentions.remove(&block);
                            same = false;
                        }
                    }
                }
                self.named_port_policies -= usize::from(uses_named_port(policy, DIR_EGRESS));
            }
            for policy in new.iter() {
                for block in policy_blocks(policy) {
                    let count = self.block_mentions.entry(block).or_default();
                    *count += 1;
                    same &= *count > 1;
                }
                self.named_port_policies += usize::from(uses_named_port(policy, DIR_EGRESS));
            }
        }
        // A block mentioned anew and one no longer mentioned: the set may be the same.
        if !same {
            same = self.block_mentions.len() == self.blocks.len()
                && self.block_mentions.keys().eq(self.blocks.iter());
        }
        same &= (self.named_port_policies > 0) == self.by_named_ports;
        let vips_may_change = (delta.services.iter())
            .any(|(old, new)| cluster_ips(old.as_ref()) != cluster_ips(new.as_ref()));
        same && !(vips_may_change && vips(state) != self.vips)
    }

    /// Notes whether Service `key` of `state` picks its backends by labels (it has a
    /// selector and no EndpointSlice).
    fn note_selector(&mut self, key: &(String, String), state: &State) {
        let service = state.services.binary_search_by(|s| {
            (s.namespace.as_str(), s.name.as_str()).cmp(&(key.0.as_str(), key.1.as_str()))
        });
        let by_labels = service.is_ok_and(|at| state.services[at].selector.is_some())
            && !self.slices_of.contains_key(key);
        if by_labels {
            self.unsliced_selectors.insert(key.clone());
        } else {
            self.unsliced_selectors.remove(key);
        }
    }

    /// Re-describes the addresses of one changed pod. `Err` when one of them needs a
    /// rebuild (it is also a ClusterIP or an ipBlock prefix).
    fn update_pod(
        &mut self,
        old: Option<&Pod>,
        new: Option<&Pod>,
        state: &State,
        changed: &mut BTreeSet<IpAddr>,
        touched: &mut BTreeSet<u32>,
    ) -> Result<(), Rebuild> {
        let key = old.or(new).map(key_of);
        let Some(key) = key else { return Ok(()) };
        let (before, after) = (live_addresses(old), live_addresses(new));
        let addresses: BTreeSet<IpAddr> = before.iter().chain(&after).copied().collect();
        if addresses
            .iter()
            .any(|a| self.vips.contains_key(a) || self.block_prefixes.contains(&IpNet::from(*a)))
        {
            return Err(Rebuild);
        }
        for ip in &before {
            if let Some(claims) = self.claims.get_mut(ip) {
                claims.retain(|claimant| *claimant != key);
                if claims.is_empty() {
                    self.claims.remove(ip);
                }
            }
        }
        for ip in &after {
            let claims = self.claims.entry(*ip).or_default();
            if let Err(at) = claims.binary_search(&key) {
                claims.insert(at, key.clone());
            }
        }
        for ip in addresses {
            self.redescribe(ip, state, changed, touched);
        }
        Ok(())
    }

    /// Brings the prefix of address `ip` to what its current owner makes it.
    fn redescribe(
        &mut self,
        ip: IpAddr,
        state: &State,
        changed: &mut BTreeSet<IpAddr>,
        touched: &mut BTreeSet<u32>,
    ) {
        let net = IpNet::from(ip);
        let owner: Option<(&Pod, String)> =
            self.claims
                .get(&ip)
                .and_then(|c| c.first())
                .and_then(|(ns, name)| {
                    let index = state
                        .pods
                        .binary_search_by(|p| {
                            (p.namespace.as_str(), p.name.as_str())
                                .cmp(&(ns.as_str(), name.as_str()))
                        })
                        .ok()?;
                    Some((&state.pods[index], format!("{ns}/{name}")))
                });
        // Release what the address held.
        if let Some(id) = self.identities.of_pod_ip.remove(&ip) {
            if let Some(name) = self.owner_of_ip.remove(&ip) {
                self.drop_owner(id, &name, touched);
            }
            self.release(id, touched);
            self.identities.trie.remove(&net);
        }
        // Take what it holds now.
        if let Some((pod, name)) = owner {
            let description = Description {
                group: Some(PodGroup::of(pod, self.by_named_ports)),
                service: None,
                blocks: self.covering.of(&net),
            };
            let id = self.acquire(description, touched);
            self.identities.trie.insert(net, id);
            self.identities.of_pod_ip.insert(ip, id);
            self.add_owner(id, &name, touched);
            self.owner_of_ip.insert(ip, name);
        }
        changed.insert(ip);
    }

    /// The identity of `description`, created if new; counts one more prefix.
    fn acquire(&mut self, description: Description, touched: &mut BTreeSet<u32>) -> u32 {
        let hash = description.hash();
        let known = self.by_hash.get(&hash).and_then(|ids| {
            ids.iter()
                .copied()
                .find(|id| self.identities.described.get(id) == Some(&description))
        });
        let id = match known {
            Some(id) => id,
            None => {
                let allocator = self
                    .allocator
                    .get_or_insert_with(|| IdAllocator::new(reserved_identity));
                let id = allocator.allocate(hash);
                if let Some(group) = &description.group {
                    self.identities
                        .by_namespace
                        .entry(group.namespace.clone())
                        .or_default()
                        .insert(id);
                }
                for block in &description.blocks {
                    self.identities
                        .by_block
                        .entry(block.clone())
                        .or_default()
                        .insert(id);
                }
                self.identities.described.insert(id, description);
                self.by_hash.entry(hash).or_default().push(id);
                touched.insert(id);
                id
            }
        };
        *self.prefixes.entry(id).or_default() += 1;
        id
    }

    /// Counts one prefix less for `id`; forgets the identity at none.
    fn release(&mut self, id: u32, touched: &mut BTreeSet<u32>) {
        let Some(count) = self.prefixes.get_mut(&id) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.prefixes.remove(&id);
        touched.insert(id);
        let Some(description) = self.identities.described.remove(&id) else {
            return;
        };
        if let Some(group) = &description.group
            && let Some(ids) = self.identities.by_namespace.get_mut(&group.namespace)
        {
            ids.remove(&id);
            if ids.is_empty() {
                self.identities.by_namespace.remove(&group.namespace);
            }
        }
        for block in &description.blocks {
            if let Some(ids) = self.identities.by_block.get_mut(block) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.identities.by_block.remove(block);
                }
            }
        }
        let hash = description.hash();
        if let Some(ids) = self.by_hash.get_mut(&hash) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_hash.remove(&hash);
            }
        }
        if let Some(allocator) = self.allocator.as_mut() {
            allocator.free(id);
        }
    }

    fn add_owner(&mut self, id: u32, name: &str, touched: &mut BTreeSet<u32>) {
        let count = self.owners.entry((id, name.to_owned())).or_default();
        *count += 1;
        if *count == 1 {
            let pods = self.identities.pods.entry(id).or_default();
            if let Err(at) = pods.binary_search_by(|p| p.as_str().cmp(name)) {
                pods.insert(at, name.to_owned());
            }
            touched.insert(id);
        }
    }

    fn drop_owner(&mut self, id: u32, name: &str, touched: &mut BTreeSet<u32>) {
        let key = (id, name.to_owned());
        let Some(count) = self.owners.get_mut(&key) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.owners.remove(&key);
        touched.insert(id);
        if let Some(pods) = self.identities.pods.get_mut(&id) {
            pods.retain(|p| p != name);
            if pods.is_empty() {
                self.identities.pods.remove(&id);
            }
        }
    }

    /// The IDENTITIES metadata of one identity (`None`: it is gone).
    fn info(&self, id: u32) -> Option<IdentityInfo> {
        let description = self.identities.described.get(&id)?;
        Some(IdentityInfo {
            pods: self
                .identities
                .pods
                .get(&id)
                .map(|p| p.to_vec())
                .unwrap_or_default(),
            ip_blocks: description.blocks.iter().map(Block::text).collect(),
            service: description.service.clone(),
        })
    }

    /// Takes a new list of frontends and resolves every one against `trie`.
    fn set_frontends(&mut self, frontends: Vec<Frontend>, trie: &BTreeMap<IpNet, u32>) {
        self.resolved = frontends
            .iter()
            .map(|f| ResolvedFrontend::new(f, trie))
            .collect();
        self.by_backend = frontends_by_backend(&self.resolved);
        self.frontends_of.clear();
        for (i, frontend) in frontends.iter().enumerate() {
            for (addr, _) in &frontend.backends {
                self.frontends_of.entry(*addr).or_default().insert(i);
            }
        }
        self.ranges.clear();
        for (i, frontend) in frontends.iter().enumerate() {
            let range = self.ranges.entry(frontend.service.clone()).or_insert(i..i);
            range.end = i + 1;
        }
        self.frontends = frontends;
    }

    /// Recomputes the frontends of `services` (their slices changed, the Services did
    /// not: each keeps its place and count). False when a count changed after all (the
    /// caller recomputes every frontend).
    fn refresh_services(
        &mut self,
        services: &BTreeSet<(String, String)>,
        state: &State,
        trie: &BTreeMap<IpNet, u32>,
    ) -> bool {
        for (namespace, name) in services {
            let Ok(index) = state.services.binary_search_by(|s| {
                (s.namespace.as_str(), s.name.as_str()).cmp(&(namespace.as_str(), name.as_str()))
            }) else {
                continue; // slices of no Service
            };
            let service = &state.services[index];
            let slices: Vec<&EndpointSlice> =
                (self.slices_of.get(&(namespace.clone(), name.clone())))
                    .into_iter()
                    .flatten()
                    .filter_map(|slice| {
                        let at = state
                            .endpoint_slices
                            .binary_search_by(|s| {
                                (s.namespace.as_str(), s.name.as_str())
                                    .cmp(&(namespace.as_str(), slice.as_str()))
                            })
                            .ok()?;
                        Some(&state.endpoint_slices[at])
                    })
                    .collect();
            let pods: Vec<&Pod> = if slices.is_empty() {
                let start = state.pods.partition_point(|p| p.namespace < *namespace);
                state.pods[start..]
                    .iter()
                    .take_while(|p| p.namespace == *namespace)
                    .filter(|p| p.is_live_endpoint())
                    .collect()
            } else {
                Vec::new()
            };
            let fresh = service_frontends(service, &slices, &pods, &self.vips);
            let range = self
                .ranges
                .get(&format!("{namespace}/{name}"))
                .cloned()
                .unwrap_or(0..0);
            if fresh.len() != range.len() {
                return false;
            }
            for (i, frontend) in range.zip(fresh) {
                for (addr, _) in &self.frontends[i].backends {
                    if let Some(list) = self.frontends_of.get_mut(addr) {
                        list.remove(&i);
                        if list.is_empty() {
                            self.frontends_of.remove(addr);
                        }
                    }
                }
                for (addr, _) in &frontend.backends {
                    self.frontends_of.entry(*addr).or_default().insert(i);
                }
                self.frontends[i] = frontend;
                self.resolve(i, trie);
            }
        }
        true
    }

    /// Resolves frontend `i` again, moving it in `by_backend`.
    fn resolve(&mut self, i: usize, trie: &BTreeMap<IpNet, u32>) {
        let fresh = ResolvedFrontend::new(&self.frontends[i], trie);
        let old = std::mem::replace(&mut self.resolved[i], fresh);
        for (peer, _) in &old.backends {
            if let Some(list) = self.by_backend.get_mut(peer) {
                list.remove(&i);
                if list.is_empty() {
                    self.by_backend.remove(peer);
                }
            }
        }
        for (peer, _) in &self.resolved[i].backends {
            self.by_backend.entry(*peer).or_default().insert(i);
        }
    }

    /// Re-resolves the frontends with a backend among `addresses`.
    fn reresolve(&mut self, addresses: &BTreeSet<IpAddr>, trie: &BTreeMap<IpNet, u32>) {
        let stale: BTreeSet<usize> = addresses
            .iter()
            .filter_map(|a| self.frontends_of.get(a))
            .flatten()
            .copied()
            .collect();
        for i in stale {
            self.resolve(i, trie);
        }
    }
}
