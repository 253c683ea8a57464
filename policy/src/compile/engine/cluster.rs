//! The cluster-wide part of the engine, kept between updates: the identities and
//! what they depend on, the rule ids, the Service frontends, the node's local pods.

// The engine's own parts share its imports.
use super::*;

/// The cluster-wide part, kept between updates.
#[derive(Debug, Default)]
pub(super) struct Cluster {
    /// What every prefix's description depends on.
    pub(super) blocks: BTreeSet<Block>,
    /// Mentions of each ipBlock by the effective rules of all policies (`blocks` is
    /// its key set).
    pub(super) block_mentions: BTreeMap<Block, usize>,
    pub(super) vips: BTreeMap<IpAddr, String>,
    pub(super) by_named_ports: bool,
    /// Policies with an effective egress rule naming a port (`by_named_ports`: some).
    pub(super) named_port_policies: usize,
    pub(super) covering: Covering,
    /// Every cidr and except of `blocks` (a pod address among them: rebuild).
    pub(super) block_prefixes: BTreeSet<IpNet>,
    /// `trie` holds the identities without the node's addresses.
    pub(super) identities: Identities,
    /// Live pods claiming each (canonical) address; the first owns it.
    /// (Sorted by (namespace, name): a vector, as an address has one claimant but
    /// for a conflict.)
    pub(super) claims: BTreeMap<IpAddr, Vec<(String, String)>>,
    /// Description hash → the identities described so (one, but for collisions):
    /// finds a description's identity without a second copy of every description.
    pub(super) by_hash: BTreeMap<u32, Vec<u32>>,
    /// Prefixes per identity.
    pub(super) prefixes: BTreeMap<u32, usize>,
    /// Addresses per (identity, owner pod `ns/name`): `identities.pods` holds a pod
    /// while this is non-zero.
    pub(super) owners: BTreeMap<(u32, String), usize>,
    /// The owner (`ns/name`) each described address was described for.
    pub(super) owner_of_ip: BTreeMap<IpAddr, String>,
    pub(super) allocator: Option<IdAllocator>,
    pub(super) rules: Rules,
    pub(super) frontends: Vec<Frontend>,
    pub(super) resolved: Vec<ResolvedFrontend>,
    pub(super) by_backend: BTreeMap<u32, BTreeSet<usize>>,
    /// `ns/name` of each Service → its frontends' places (consecutive).
    pub(super) ranges: BTreeMap<String, std::ops::Range<usize>>,
    /// Backend address → the frontends listing it.
    pub(super) frontends_of: BTreeMap<IpAddr, BTreeSet<usize>>,
    /// (namespace, Service name) → the names of the EndpointSlices labelled for it.
    pub(super) slices_of: BTreeMap<(String, String), BTreeSet<String>>,
    /// The Services with a selector and no EndpointSlice: they pick their backends
    /// by labels, so pods change them.
    pub(super) unsliced_selectors: BTreeSet<(String, String)>,
    /// The node's addresses that are `IDENTITY_HOST`.
    pub(super) host: Vec<IpAddr>,
    /// The node's live pods, by (namespace, name).
    pub(super) local: BTreeSet<(String, String)>,
}

/// A pod address that needs a rebuild to re-describe.
pub(super) struct Rebuild;

impl Cluster {
    /// The cluster-wide part of `state` from scratch, and what each rule id stands
    /// for.
    pub(super) fn build(state: &State) -> (Self, BTreeMap<u32, RuleInfo>) {
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
                // One claimant but for a conflict: no spare capacity.
                (cluster.claims.entry(ip))
                    .or_insert_with(|| Vec::with_capacity(1))
                    .push(key_of(pod));
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
    pub(super) fn keep_descriptions(&mut self, delta: &Delta, state: &State) -> bool {
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
    pub(super) fn note_selector(&mut self, key: &(String, String), state: &State) {
        let service = get_sorted(&state.services, (&key.0, &key.1));
        let by_labels =
            service.is_some_and(|s| s.selector.is_some()) && !self.slices_of.contains_key(key);
        if by_labels {
            self.unsliced_selectors.insert(key.clone());
        } else {
            self.unsliced_selectors.remove(key);
        }
    }

    /// Re-describes the addresses of one changed pod. `Err` when one of them needs a
    /// rebuild (it is also a ClusterIP or an ipBlock prefix).
    pub(super) fn update_pod(
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
            let claims = (self.claims.entry(*ip)).or_insert_with(|| Vec::with_capacity(1));
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
    pub(super) fn redescribe(
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
                    let pod = get_sorted(&state.pods, (ns, name))?;
                    Some((pod, format!("{ns}/{name}")))
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
    pub(super) fn acquire(&mut self, description: Description, touched: &mut BTreeSet<u32>) -> u32 {
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
    pub(super) fn release(&mut self, id: u32, touched: &mut BTreeSet<u32>) {
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

    pub(super) fn add_owner(&mut self, id: u32, name: &str, touched: &mut BTreeSet<u32>) {
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

    pub(super) fn drop_owner(&mut self, id: u32, name: &str, touched: &mut BTreeSet<u32>) {
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
    pub(super) fn info(&self, id: u32) -> Option<IdentityInfo> {
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
    pub(super) fn set_frontends(&mut self, frontends: Vec<Frontend>, trie: &BTreeMap<IpNet, u32>) {
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
    pub(super) fn refresh_services(
        &mut self,
        services: &BTreeSet<(String, String)>,
        state: &State,
        trie: &BTreeMap<IpNet, u32>,
    ) -> bool {
        for (namespace, name) in services {
            let Some(service) = get_sorted(&state.services, (namespace, name)) else {
                continue; // slices of no Service
            };
            let slices: Vec<&EndpointSlice> =
                (self.slices_of.get(&(namespace.clone(), name.clone())))
                    .into_iter()
                    .flatten()
                    .filter_map(|slice| get_sorted(&state.endpoint_slices, (namespace, slice)))
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
    pub(super) fn resolve(&mut self, i: usize, trie: &BTreeMap<IpNet, u32>) {
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
    pub(super) fn reresolve(&mut self, addresses: &BTreeSet<IpAddr>, trie: &BTreeMap<IpNet, u32>) {
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
