//! The incremental engine: the image of one node, kept up to date as the state
//! changes, with work that follows what changed. After any sequence of updates its
//! image equals [`compile_node`](super::compile_node) of the last state (a property
//! test holds it to that, `tests/engine_props.rs`).
//!
//! What it keeps between updates, and when each part is recomputed:
//! - **identities** (the IDENTITIES trie, what each identity stands for, the pods
//!   behind it): updated per changed pod — its old and new addresses are re-described
//!   (owner pod, label group, covering ipBlocks) and only identities whose membership
//!   changes are created or released. Rebuilt from scratch when what every prefix's
//!   description depends on changes: the set of ipBlocks rules name, the ClusterIPs,
//!   whether some egress rule names a port (pod groups then include named ports), or
//!   a pod address that is also a ClusterIP or an ipBlock prefix.
//! - **rule ids**: recomputed when a policy changes.
//! - **Service frontends**: recomputed when a Service or EndpointSlice changes (or a
//!   pod, while some Service without slices selects its backends by labels); a
//!   frontend whose backend address changed identity is re-resolved alone.
//! - **the node's part** (its endpoints, their endpoint policies and POLICY entries):
//!   recomputed at every update from the local pods alone; its cost follows the local
//!   pods and the rules that decide them, not the cluster.
//!
//! Identity ids are hashes of what they stand for (see `ids`); a from-scratch compile
//! probes past collisions in sorted order, the engine in the order identities appear,
//! so the two agree exactly unless two live descriptions hash alike (then the colliding
//! ids may be swapped; every verdict is the same).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use netfence_common::{DIR_EGRESS, IDENTITY_HOST, IDENTITY_WORLD};

use super::announced::{Announced, fill_state};
use super::identity::{Block, Covering, Description, Identities, PodGroup, blocks_of};
use super::ids::{IdAllocator, reserved_identity};
use super::rules::{RuleRef, any_named_port, rule_ids};
use super::services::{Frontend, frontends, service_frontends, vips};
use super::{
    NodeContext, ResolvedFrontend, Shared, add_node_inputs, frontends_by_backend, host_addresses,
    local_part, with_node_rules,
};
use crate::image::{IdentityInfo, Image, RuleInfo, canonical_addr};
use crate::model::{EndpointSlice, Pod, State};

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// The identities were rebuilt from scratch (see the module doc for when).
    pub rebuilt: bool,
    /// Pods whose identity-relevant fields changed.
    pub pods_changed: usize,
    /// Identities created, released or renamed.
    pub identities_touched: usize,
}

/// The incremental engine of one node.
#[derive(Debug, Default)]
pub struct Engine {
    node: Node,
    /// The last state, with the announced pods filled in.
    state: Arc<State>,
    cluster: Option<Cluster>,
    image: Image,
}

/// The cluster-wide part, kept between updates.
#[derive(Debug, Default)]
struct Cluster {
    /// What every prefix's description depends on.
    blocks: BTreeSet<Block>,
    vips: BTreeMap<IpAddr, String>,
    by_named_ports: bool,
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
    rule_ids: BTreeMap<RuleRef, u32>,
    rule_infos: BTreeMap<u32, RuleInfo>,
    frontends: Vec<Frontend>,
    resolved: Vec<ResolvedFrontend>,
    by_backend: BTreeMap<u32, BTreeSet<usize>>,
    /// `ns/name` of each Service → its frontends' places (consecutive).
    ranges: BTreeMap<String, std::ops::Range<usize>>,
    /// Backend address → the frontends listing it.
    frontends_of: BTreeMap<IpAddr, BTreeSet<usize>>,
    /// Some Service without slices picks its backends by labels: pods change them.
    selector_backends: bool,
    /// The node's addresses that are `IDENTITY_HOST`.
    host: Vec<IpAddr>,
    /// The node's live pods, by (namespace, name).
    local: BTreeSet<(String, String)>,
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
        if node != self.node {
            self.node = node;
            // Host addresses resolve differently: re-resolve everything once.
            self.cluster = None;
        }
    }

    /// Brings the image to `state` with `announced`. The engine keeps `state` (shared,
    /// not copied) to find what the next update changes.
    pub fn update(&mut self, state: Arc<State>, announced: &[Announced]) -> Work {
        let filled = match &self.node.name {
            Some(node) => match fill_state(&state, node, announced) {
                Cow::Owned(filled) => Arc::new(filled),
                Cow::Borrowed(_) => state,
            },
            None => state,
        };
        let mut work = Work::default();
        // What every prefix's description depends on, read again only when policies
        // or Services changed.
        let policies_same = filled.policies == self.state.policies;
        let services_same = filled.services == self.state.services;
        let keys = || {
            (
                blocks_of(&filled),
                vips(&filled),
                any_named_port(&filled, DIR_EGRESS),
            )
        };
        let reusable = self.cluster.as_ref().is_some_and(|c| {
            (policies_same && services_same) || {
                let (blocks, vips, by_named_ports) = keys();
                c.blocks == blocks && c.vips == vips && c.by_named_ports == by_named_ports
            }
        });
        let mut changed_addresses: BTreeSet<IpAddr> = BTreeSet::new();
        let mut touched: BTreeSet<u32> = BTreeSet::new();
        // The pod diff needs both states sorted by (namespace, name), as `State` asks.
        let changed = if reusable {
            changed_pods(&self.state.pods, &filled.pods)
        } else {
            None
        };
        let mut rebuild = changed.is_none();
        let mut local_changes: Vec<&Pod> = Vec::new();
        if let (Some(changed), Some(cluster)) = (changed, self.cluster.as_mut()) {
            work.pods_changed = changed.len();
            local_changes.extend(changed.iter().filter_map(|(old, new)| old.or(*new)));
            for (old, new) in changed {
                match cluster.update_pod(old, new, &filled, &mut changed_addresses, &mut touched) {
                    Ok(()) => {}
                    Err(Rebuild) => {
                        rebuild = true;
                        break;
                    }
                }
            }
        }
        if rebuild {
            let (blocks, vips, by_named_ports) = keys();
            self.cluster = Some(Cluster::build(&filled, blocks, vips, by_named_ports));
            work.rebuilt = true;
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return work;
        };
        work.identities_touched = touched.len();
        let policies_changed = rebuild || !policies_same;
        if policies_changed {
            (cluster.rule_ids, cluster.rule_infos) = rule_ids(&filled);
        }
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
        }
        let host_changed = host != cluster.host;
        cluster.host = host;
        if policies_changed || host_changed {
            self.image.rules =
                with_node_rules(cluster.rule_infos.clone(), !cluster.host.is_empty());
        }

        let all_frontends =
            rebuild || !services_same || (cluster.selector_backends && work.pods_changed > 0);
        if all_frontends {
            cluster.set_frontends(
                frontends(&filled, &cluster.vips),
                &self.image.identities,
                &filled,
            );
        } else {
            if filled.endpoint_slices != self.state.endpoint_slices {
                let services =
                    sliced_services(&self.state.endpoint_slices, &filled.endpoint_slices);
                if !cluster.refresh_services(&services, &filled, &self.image.identities) {
                    cluster.set_frontends(
                        frontends(&filled, &cluster.vips),
                        &self.image.identities,
                        &filled,
                    );
                }
            }
            cluster.reresolve(&changed_addresses, &self.image.identities);
        }

        if rebuild {
            cluster.local = filled
                .pods
                .iter()
                .filter(|pod| is_local(pod, self.node.name.as_deref()))
                .map(|pod| (pod.namespace.clone(), pod.name.clone()))
                .collect();
        } else {
            for pod in &local_changes {
                let key = (pod.namespace.clone(), pod.name.clone());
                cluster.local.remove(&key);
                if let Ok(index) = find_pod(&filled, &key.0, &key.1)
                    && is_local(&filled.pods[index], self.node.name.as_deref())
                {
                    cluster.local.insert(key);
                }
            }
        }
        let local = cluster.local.iter().filter_map(|(namespace, name)| {
            find_pod(&filled, namespace, name)
                .ok()
                .map(|i| &filled.pods[i])
        });
        let local = local_part(
            &filled,
            local,
            &Shared {
                identities: &cluster.identities,
                rule_ids: &cluster.rule_ids,
                frontends: &cluster.resolved,
                by_backend: &cluster.by_backend,
                host: !cluster.host.is_empty(),
            },
        );
        self.image.endpoints = local.endpoints;
        self.image.policy = local.policy;
        self.image.endpoint_policies = local.endpoint_policies;
        add_node_inputs(&mut self.image, announced, self.node.audit_all);
        self.state = filled;
        work
    }
}

/// The pods that differ between two states sorted by (namespace, name): (old, new),
/// either absent for an added or deleted pod. `None` when either is not sorted.
fn changed_pods<'a>(
    old: &'a [Pod],
    new: &'a [Pod],
) -> Option<Vec<(Option<&'a Pod>, Option<&'a Pod>)>> {
    let key = |p: &'a Pod| (p.namespace.as_str(), p.name.as_str());
    let sorted = |pods: &'a [Pod], k: usize| k == 0 || key(&pods[k - 1]) < key(&pods[k]);
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        if (i < old.len() && !sorted(old, i)) || (j < new.len() && !sorted(new, j)) {
            return None;
        }
        let order = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push((old.get(i), None));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push((None, new.get(j)));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if old[i] != new[j] {
                    out.push((old.get(i), new.get(j)));
                }
                i += 1;
                j += 1;
            }
        }
    }
    Some(out)
}

/// The Services (namespace, name) whose EndpointSlices differ between two lists sorted
/// by (namespace, name): added, deleted or changed slices, under their old and new
/// `kubernetes.io/service-name`.
fn sliced_services(old: &[EndpointSlice], new: &[EndpointSlice]) -> BTreeSet<(String, String)> {
    let key = |s: &EndpointSlice| (s.namespace.clone(), s.name.clone());
    let old: BTreeMap<_, &EndpointSlice> = old.iter().map(|s| (key(s), s)).collect();
    let new: BTreeMap<_, &EndpointSlice> = new.iter().map(|s| (key(s), s)).collect();
    let mut out = BTreeSet::new();
    for (k, slice) in &old {
        if new.get(k) != Some(slice)
            && let Some(service) = &slice.service
        {
            out.insert((slice.namespace.clone(), service.clone()));
        }
    }
    for (k, slice) in &new {
        if old.get(k) != Some(slice)
            && let Some(service) = &slice.service
        {
            out.insert((slice.namespace.clone(), service.clone()));
        }
    }
    out
}

/// True when some Service without slices picks its backends by labels.
fn selector_backends(state: &State) -> bool {
    let sliced: BTreeSet<(&str, &str)> = state
        .endpoint_slices
        .iter()
        .filter_map(|s| {
            s.service
                .as_deref()
                .map(|name| (s.namespace.as_str(), name))
        })
        .collect();
    state
        .services
        .iter()
        .any(|s| s.selector.is_some() && !sliced.contains(&(s.namespace.as_str(), s.name.as_str())))
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

impl Cluster {
    fn build(
        state: &State,
        blocks: BTreeSet<Block>,
        vips: BTreeMap<IpAddr, String>,
        by_named_ports: bool,
    ) -> Self {
        let identities = Identities::build(state, &blocks, by_named_ports, &vips);
        let mut cluster = Cluster {
            covering: Covering::new(&blocks),
            block_prefixes: blocks
                .iter()
                .flat_map(|b| std::iter::once(b.cidr).chain(b.except.iter().copied()))
                .collect(),
            blocks,
            vips,
            by_named_ports,
            ..Cluster::default()
        };
        for pod in state.pods.iter().filter(|p| p.is_live_endpoint()) {
            for ip in live_addresses(Some(pod)) {
                // In state order: the first claimant owns the address, as in a build.
                cluster
                    .claims
                    .entry(ip)
                    .or_default()
                    .push((pod.namespace.clone(), pod.name.clone()));
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
        cluster
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
        let key = old.or(new).map(|p| (p.namespace.clone(), p.name.clone()));
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
    fn set_frontends(
        &mut self,
        frontends: Vec<Frontend>,
        trie: &BTreeMap<IpNet, u32>,
        state: &State,
    ) {
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
        self.selector_backends = selector_backends(state);
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
            let slices: Vec<&EndpointSlice> = state
                .endpoint_slices
                .iter()
                .filter(|s| {
                    s.namespace == *namespace && s.service.as_deref() == Some(name.as_str())
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
        self.selector_backends = selector_backends(state);
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
