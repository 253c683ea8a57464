//! Sync: turn (what the maps hold, what they should hold) into an ordered list of map
//! operations, and apply it through a `MapBackend`.
//!
//! Order (no packet sees a rule disappear before its replacement exists):
//! 1. new rule counters, then new and changed POLICY entries;
//! 2. new and changed IDENTITIES prefixes;
//! 3. new and changed ENDPOINTS — this is where an endpoint switches to a new endpoint
//!    policy, in one map write, after every entry of that policy is in place
//!    (endpoint-policy ids are content hashes, so a changed policy is a new id) —
//!    then new and changed PORTS (the same values, keyed by the bound interface:
//!    they judge the pod's broadcast, multicast and link-local traffic, so they too
//!    switch only once the policy is complete);
//! 4. removed ENDPOINTS and removed PORTS, then removed IDENTITIES prefixes, then
//!    removed POLICY entries, then removed rule counters.
//!
//! A failed operation is reported and leaves that entry as it was; `Live` records only
//! what was applied, so the next sync retries the rest.
//!
//! Map full, per map (the failed writes are counted in
//! `netfence_sync_failed_writes_total`, logged, and retried by every later sync):
//! - POLICY: the endpoint still switches to its new endpoint policy, whose missing
//!   entries are missing *allows*: the pod fails closed (see
//!   [`SyncReport::incomplete_policies`]); the old policy's entries are removed.
//! - ENDPOINTS (a new pod): the pod has no entry and fails closed both ways:
//!   `from_pod` drops its packets as spoofed, `to_pod` drops packets to it as not
//!   for that port (an unknown destination, `wrong_port`). Its PORTS entry is still
//!   written (it is derived from the image, not from what was written), so its
//!   broadcast, multicast and link-local traffic is judged by its policy.
//! - PORTS: holds at most one entry per bound endpoint, so it cannot fill before
//!   ENDPOINTS (`MAX_PORTS` = `MAX_ENDPOINTS`). A missing entry fails closed: the
//!   veth's broadcast, multicast and link-local traffic drops as `unbound`.
//! - IDENTITIES: the prefix's addresses would resolve to the longest written prefix
//!   containing it (or world); POLICY entries that would then allow them wrongly are
//!   withheld until the prefix is written (fail closed, see [`sync`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netfence_common::EndpointValue;

use crate::image::{Image, Patch, PolicyEntry};

/// The exact contents of the maps the agent manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub identities: BTreeMap<IpNet, u32>,
    pub endpoints: BTreeMap<IpAddr, EndpointValue>,
    /// PORTS: bound host interface → the endpoint bound to it ([`ports_of`]).
    pub ports: BTreeMap<u32, EndpointValue>,
    pub policy: BTreeMap<PolicyEntry, u32>,
    pub rules: BTreeSet<u32>,
}

/// Endpoints with different endpoint policies or flags bound to one interface: PORTS
/// can hold one, and holds `kept`'s (the lowest address). A sign of a binding
/// conflict (two pods' addresses behind one veth), reported by the agent at every
/// sync. Identities may differ without a conflict: a dual-stack pod's two addresses
/// can fall in different ipBlock regions, and the identity only names the pod in
/// events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConflict {
    pub ifindex: u32,
    /// The address whose value PORTS holds.
    pub kept: IpAddr,
    /// The other addresses bound there whose values differ from `kept`'s.
    pub others: Vec<IpAddr>,
}

impl std::fmt::Display for PortConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interface {} has endpoints of different pods or policies bound to it: {} (its broadcast, multicast and link-local traffic is judged as {}'s) and {:?}",
            self.ifindex, self.kept, self.kept, self.others
        )
    }
}

/// PORTS for `endpoints`: each bound interface (ifindex ≠ 0) → the value of the
/// lowest address bound to it (a dual-stack pod's addresses carry the same policy
/// and flags; IPv4 sorts first, so its identity is the one reported).
pub fn ports_of(endpoints: &BTreeMap<IpAddr, EndpointValue>) -> BTreeMap<u32, EndpointValue> {
    let mut ports = BTreeMap::new();
    // Ascending addresses: the first one seen per interface is the lowest.
    for value in endpoints.values().filter(|v| v.ifindex != 0) {
        ports.entry(value.ifindex).or_insert(*value);
    }
    ports
}

/// The interfaces whose bound endpoints disagree on what PORTS decides with (the
/// endpoint policy and flags).
pub fn port_conflicts(endpoints: &BTreeMap<IpAddr, EndpointValue>) -> Vec<PortConflict> {
    let mut by_port: BTreeMap<u32, Vec<(IpAddr, &EndpointValue)>> = BTreeMap::new();
    for (addr, value) in endpoints.iter().filter(|(_, v)| v.ifindex != 0) {
        by_port
            .entry(value.ifindex)
            .or_default()
            .push((*addr, value));
    }
    by_port
        .into_iter()
        .filter_map(|(ifindex, bound)| {
            let (kept, value) = *bound.first()?;
            let others: Vec<IpAddr> = bound
                .iter()
                .filter(|(_, v)| (v.policy, v.flags) != (value.policy, value.flags))
                .map(|(a, _)| *a)
                .collect();
            (!others.is_empty()).then_some(PortConflict {
                ifindex,
                kept,
                others,
            })
        })
        .collect()
}

/// `--mode`: what the node does with a new flow no rule allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop it, unless every policy isolating the pod in that direction is annotated
    /// `netfence.io/mode: audit` (then that direction is audited).
    #[default]
    Enforce,
    /// Audit every isolated direction of every pod: count, report (`audit`) and pass.
    Audit,
}

impl Contents {
    /// What the maps should hold for `image`, with pod addresses bound to their host
    /// interfaces where known (`bindings`: address → ifindex). The endpoint flags are
    /// the image's ([`crate::image::Endpoint::flags`]; the engine applies `--mode
    /// audit`). PORTS follows from the bound endpoints ([`ports_of`]; see
    /// [`port_conflicts`]).
    /// The rule counters are those of the rules POLICY entries name (the programs
    /// count only those), not every rule of the cluster.
    pub fn from_image(image: &Image, bindings: &BTreeMap<IpAddr, u32>) -> Self {
        let mut contents = Self {
            identities: image.identities.clone(),
            ..Self::default()
        };
        contents.set_local(image, bindings);
        contents
    }

    /// Recomputes the node-local maps (ENDPOINTS, PORTS, POLICY, the rule counters)
    /// from `image` and `bindings`, as [`Contents::from_image`] does.
    pub fn set_local(&mut self, image: &Image, bindings: &BTreeMap<IpAddr, u32>) {
        self.endpoints = image
            .endpoints
            .iter()
            .map(|(addr, endpoint)| {
                let value = EndpointValue {
                    policy: endpoint.policy,
                    flags: endpoint.flags(),
                    ifindex: bindings.get(addr).copied().unwrap_or(0),
                    identity: endpoint.identity,
                };
                (*addr, value)
            })
            .collect();
        self.ports = ports_of(&self.endpoints);
        self.policy.clone_from(&image.policy);
        self.rules = self.policy.values().copied().collect();
    }

    /// Takes the cluster-wide changes of `patch` (IDENTITIES prefixes) and names them
    /// in `scope`; the node-local maps follow at the next [`Contents::set_local`].
    pub fn patch(&mut self, patch: &Patch, scope: &mut Scope) {
        for (net, id) in &patch.identities {
            match id {
                Some(id) => self.identities.insert(*net, *id),
                None => self.identities.remove(net),
            };
            scope.prefix(*net);
        }
    }
}

/// Which entries of the one cluster-wide map (IDENTITIES) may differ between what
/// the maps hold and the target: a sync compares only those, so its work follows the
/// change, not the cluster. The node-local maps (ENDPOINTS, PORTS, POLICY and the
/// rule counters of its entries) are always compared whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything (a new image, a restart).
    All,
    Prefixes(BTreeSet<IpNet>),
}

impl Default for Scope {
    fn default() -> Self {
        Scope::Prefixes(BTreeSet::new())
    }
}

impl Scope {
    /// Adds a prefix that may differ.
    pub fn prefix(&mut self, net: IpNet) {
        if let Scope::Prefixes(prefixes) = self {
            prefixes.insert(net);
        }
    }

    /// The scope of what a sync failed to write: the next sync retries it.
    pub fn of_failures(report: &SyncReport) -> Scope {
        let mut scope = Scope::default();
        for (op, _) in &report.failed {
            if let MapOp::PutIdentity(net, _) | MapOp::DeleteIdentity(net) = op {
                scope.prefix(*net);
            }
        }
        scope
    }
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutRule(u32),
    PutPolicy(PolicyEntry, u32),
    PutIdentity(IpNet, u32),
    PutEndpoint(IpAddr, EndpointValue),
    PutPort(u32, EndpointValue),
    DeleteEndpoint(IpAddr),
    DeletePort(u32),
    DeleteIdentity(IpNet),
    DeletePolicy(PolicyEntry),
    DeleteRule(u32),
}

/// The operations that turn `live` into `target`, in the safe order above.
pub fn plan(live: &Contents, target: &Contents) -> Vec<MapOp> {
    plan_in(live, target, &Scope::All)
}

/// [`plan`] where only the entries `scope` names may differ in the cluster-wide
/// maps.
pub fn plan_in(live: &Contents, target: &Contents, scope: &Scope) -> Vec<MapOp> {
    let (identities, removed_identities) = match scope {
        Scope::All => (
            changed(&live.identities, &target.identities).collect::<Vec<_>>(),
            removed(&live.identities, &target.identities).collect::<Vec<_>>(),
        ),
        Scope::Prefixes(prefixes) => (
            changed_in(&live.identities, &target.identities, prefixes).collect(),
            removed_in(&live.identities, &target.identities, prefixes).collect(),
        ),
    };
    let mut ops = Vec::new();
    ops.extend(
        target
            .rules
            .difference(&live.rules)
            .map(|r| MapOp::PutRule(*r)),
    );
    ops.extend(changed(&live.policy, &target.policy).map(|(k, v)| MapOp::PutPolicy(*k, *v)));
    ops.extend((identities.into_iter()).map(|(k, v)| MapOp::PutIdentity(*k, *v)));
    ops.extend(
        changed(&live.endpoints, &target.endpoints).map(|(k, v)| MapOp::PutEndpoint(*k, *v)),
    );
    ops.extend(changed(&live.ports, &target.ports).map(|(k, v)| MapOp::PutPort(*k, *v)));
    ops.extend(removed(&live.endpoints, &target.endpoints).map(|k| MapOp::DeleteEndpoint(*k)));
    ops.extend(removed(&live.ports, &target.ports).map(|k| MapOp::DeletePort(*k)));
    ops.extend(
        removed_identities
            .into_iter()
            .map(|k| MapOp::DeleteIdentity(*k)),
    );
    ops.extend(removed(&live.policy, &target.policy).map(|k| MapOp::DeletePolicy(*k)));
    ops.extend(
        live.rules
            .difference(&target.rules)
            .map(|r| MapOp::DeleteRule(*r)),
    );
    ops
}

/// [`changed`] of the `keys` alone.
fn changed_in<'a, K: Ord, V: PartialEq>(
    live: &'a BTreeMap<K, V>,
    target: &'a BTreeMap<K, V>,
    keys: &'a BTreeSet<K>,
) -> impl Iterator<Item = (&'a K, &'a V)> {
    keys.iter()
        .filter_map(move |k| target.get_key_value(k))
        .filter(move |(k, v)| live.get(k) != Some(v))
}

/// [`removed`] of the `keys` alone.
fn removed_in<'a, K: Ord, V>(
    live: &'a BTreeMap<K, V>,
    target: &'a BTreeMap<K, V>,
    keys: &'a BTreeSet<K>,
) -> impl Iterator<Item = &'a K> {
    keys.iter()
        .filter(move |k| live.contains_key(k) && !target.contains_key(k))
}

fn changed<'a, K: Ord, V: PartialEq>(
    live: &'a BTreeMap<K, V>,
    target: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (&'a K, &'a V)> {
    target.iter().filter(move |(k, v)| live.get(k) != Some(v))
}

fn removed<'a, K: Ord, V>(
    live: &'a BTreeMap<K, V>,
    target: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = &'a K> {
    live.keys().filter(move |k| !target.contains_key(k))
}

/// Where map operations go: the real BPF maps, or a plain map in tests.
pub trait MapBackend {
    type Error: std::error::Error;
    fn apply(&mut self, op: &MapOp) -> Result<(), Self::Error>;
}

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub applied: usize,
    /// Operations that failed, with the error text; they are retried next sync.
    pub failed: Vec<(MapOp, String)>,
    /// POLICY entries kept out of the maps because an identity prefix they would
    /// wrongly cover is not written (see [`sync`]); written by a later sync.
    pub withheld: Vec<PolicyEntry>,
    /// Applied writes to ENDPOINTS, PORTS, IDENTITIES or POLICY (rule counters excluded):
    /// what a packet's verdict depends on. Non-zero: the agent bumps the policy
    /// generation after the sync (`--existing-flows=cut` re-checks established flows).
    pub verdict_writes: usize,
}

impl SyncReport {
    /// Endpoint policies some of whose POLICY entries failed to write (map full).
    /// Their endpoints still switch to them: POLICY entries only ever allow, so a
    /// policy with entries missing allows a subset of what it should — the endpoint
    /// fails closed (new flows the missing entries would allow are dropped, flows
    /// conntrack already tracks go on) until a later sync writes the rest. Keeping
    /// the previous policy instead could keep allowing what the new one denies.
    pub fn incomplete_policies(&self) -> BTreeSet<u32> {
        self.failed
            .iter()
            .filter_map(|(op, _)| match op {
                MapOp::PutPolicy(entry, _) => Some(entry.policy),
                _ => None,
            })
            .collect()
    }
}

/// Applies `plan(live, target)` and records in `live` what was applied.
///
/// Identity guard (IDENTITIES full must not fail open): until a new or changed
/// prefix is written, its addresses resolve to a *fallback* identity (the prefix's
/// old identity, or the longest written prefix containing it, or world). A POLICY
/// entry allowing that fallback would then allow those addresses even where the
/// target allows their real identity nothing (an `except`, a pod inside an allowed
/// ipBlock). Such entries are written only after the prefix is, and when the prefix
/// write fails they are removed (withheld) until a later sync writes it: the
/// affected endpoints drop that peer's new flows instead.
pub fn sync<B: MapBackend>(backend: &mut B, live: &mut Contents, target: &Contents) -> SyncReport {
    sync_in(backend, live, target, &Scope::All)
}

/// [`sync`] where only the entries `scope` names may differ in the cluster-wide maps
/// (see [`plan_in`]).
pub fn sync_in<B: MapBackend>(
    backend: &mut B,
    live: &mut Contents,
    target: &Contents,
    scope: &Scope,
) -> SyncReport {
    let mut report = SyncReport::default();
    let pending = pending_fallbacks(live, target, scope);
    // The prefixes whose pending write `entry` would wrongly cover.
    let exposes = |entry: &PolicyEntry| -> Vec<IpNet> {
        pending.get(&entry.peer).map_or_else(Vec::new, |prefixes| {
            prefixes
                .iter()
                .filter(|(_, id)| {
                    !target.policy.contains_key(&PolicyEntry {
                        peer: *id,
                        ..*entry
                    })
                })
                .map(|(net, _)| *net)
                .collect()
        })
    };
    let written =
        |live: &Contents, net: &IpNet| live.identities.get(net) == target.identities.get(net);
    let mut deferred = Vec::new();
    let mut guarded = pending.is_empty();
    for op in plan_in(live, target, scope) {
        if !guarded
            && !matches!(
                op,
                MapOp::PutRule(_) | MapOp::PutPolicy(..) | MapOp::PutIdentity(..)
            )
        {
            guarded = true;
            guard(
                backend,
                live,
                &mut report,
                std::mem::take(&mut deferred),
                &exposes,
                &written,
            );
        }
        if let MapOp::PutPolicy(entry, _) = &op
            && !guarded
            && !exposes(entry).is_empty()
        {
            deferred.push(op);
            continue;
        }
        if let MapOp::DeletePolicy(entry) = &op
            && !live.policy.contains_key(entry)
        {
            continue; // withheld by the guard already
        }
        apply(backend, live, &mut report, op);
    }
    if !guarded {
        guard(backend, live, &mut report, deferred, &exposes, &written);
    }
    report
}

fn apply<B: MapBackend>(backend: &mut B, live: &mut Contents, report: &mut SyncReport, op: MapOp) {
    match backend.apply(&op) {
        Ok(()) => {
            record(live, &op);
            report.applied += 1;
            if !matches!(op, MapOp::PutRule(_) | MapOp::DeleteRule(_)) {
                report.verdict_writes += 1;
            }
        }
        Err(error) => report.failed.push((op, error.to_string())),
    }
}

/// After the identity writes: applies the deferred entries whose prefixes are now
/// written, withholds the others, and removes live entries that still expose an
/// unwritten prefix.
fn guard<B: MapBackend>(
    backend: &mut B,
    live: &mut Contents,
    report: &mut SyncReport,
    deferred: Vec<MapOp>,
    exposes: &dyn Fn(&PolicyEntry) -> Vec<IpNet>,
    written: &dyn Fn(&Contents, &IpNet) -> bool,
) {
    let unsafe_now =
        |live: &Contents, entry: &PolicyEntry| exposes(entry).iter().any(|net| !written(live, net));
    for op in deferred {
        if let MapOp::PutPolicy(entry, _) = &op
            && unsafe_now(live, entry)
        {
            report.withheld.push(*entry);
            continue;
        }
        apply(backend, live, report, op);
    }
    let exposed: Vec<PolicyEntry> = live
        .policy
        .keys()
        .filter(|e| unsafe_now(live, e))
        .copied()
        .collect();
    for entry in exposed {
        report.withheld.push(entry);
        apply(backend, live, report, MapOp::DeletePolicy(entry));
    }
}

/// Identity writes the maps lack, by the identity their addresses resolve to until
/// written: fallback → [(prefix, target identity)].
fn pending_fallbacks(
    live: &Contents,
    target: &Contents,
    scope: &Scope,
) -> BTreeMap<u32, Vec<(IpNet, u32)>> {
    let mut out: BTreeMap<u32, Vec<(IpNet, u32)>> = BTreeMap::new();
    let writes: Vec<(&IpNet, &u32)> = match scope {
        Scope::All => changed(&live.identities, &target.identities).collect(),
        Scope::Prefixes(prefixes) => {
            changed_in(&live.identities, &target.identities, prefixes).collect()
        }
    };
    for (net, id) in writes {
        // The longest written prefix containing `net`: at most 128 lookups.
        let fallback = live.identities.get(net).copied().unwrap_or_else(|| {
            std::iter::successors(net.supernet(), IpNet::supernet)
                .find_map(|prefix| live.identities.get(&prefix).copied())
                .unwrap_or(netfence_common::IDENTITY_WORLD)
        });
        out.entry(fallback).or_default().push((*net, *id));
    }
    out
}

fn record(live: &mut Contents, op: &MapOp) {
    match op {
        MapOp::PutRule(r) => {
            live.rules.insert(*r);
        }
        MapOp::PutPolicy(k, v) => {
            live.policy.insert(*k, *v);
        }
        MapOp::PutIdentity(k, v) => {
            live.identities.insert(*k, *v);
        }
        MapOp::PutEndpoint(k, v) => {
            live.endpoints.insert(*k, *v);
        }
        MapOp::PutPort(k, v) => {
            live.ports.insert(*k, *v);
        }
        MapOp::DeleteEndpoint(k) => {
            live.endpoints.remove(k);
        }
        MapOp::DeletePort(k) => {
            live.ports.remove(k);
        }
        MapOp::DeleteIdentity(k) => {
            live.identities.remove(k);
        }
        MapOp::DeletePolicy(k) => {
            live.policy.remove(k);
        }
        MapOp::DeleteRule(r) => {
            live.rules.remove(r);
        }
    }
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
