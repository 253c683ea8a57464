//! Sync: turn (what the maps hold, what they should hold) into an ordered list of map
//! operations, and apply it through a `MapBackend`.
//!
//! Order (no packet sees a rule disappear before its replacement exists):
//! 1. new rule counters, then new and changed POLICY entries;
//! 2. new and changed IDENTITIES prefixes;
//! 3. new and changed ENDPOINTS — this is where an endpoint switches to a new endpoint
//!    policy, in one map write, after every entry of that policy is in place
//!    (endpoint-policy ids are content hashes, so a changed policy is a new id);
//! 4. removed ENDPOINTS, then removed IDENTITIES prefixes, then removed POLICY entries,
//!    then removed rule counters.
//!
//! A failed operation is reported and leaves that entry as it was; `Live` records only
//! what was applied, so the next sync retries the rest.
//!
//! Map full, per map (the failed writes are counted in
//! `netfence_sync_failed_writes_total`, logged, and retried by every later sync):
//! - POLICY: the endpoint still switches to its new endpoint policy, whose missing
//!   entries are missing *allows*: the pod fails closed (see
//!   [`SyncReport::incomplete_policies`]); the old policy's entries are removed.
//! - ENDPOINTS (a new pod): the pod has no entry; `from_pod` drops its packets as
//!   spoofed, `to_pod` passes packets to it as an unknown destination.
//! - IDENTITIES: the prefix's addresses would resolve to the longest written prefix
//!   containing it (or world); POLICY entries that would then allow them wrongly are
//!   withheld until the prefix is written (fail closed, see [`sync`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netfence_common::{EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EndpointValue};

use crate::image::{Image, PolicyEntry};

/// The exact contents of the maps the agent manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub identities: BTreeMap<IpNet, u32>,
    pub endpoints: BTreeMap<IpAddr, EndpointValue>,
    pub policy: BTreeMap<PolicyEntry, u32>,
    pub rules: BTreeSet<u32>,
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
    /// interfaces where known (`bindings`: address → ifindex), in enforce mode.
    pub fn from_image(image: &Image, bindings: &BTreeMap<IpAddr, u32>) -> Self {
        Self::from_image_in(image, bindings, Mode::Enforce)
    }

    /// As [`Contents::from_image`], in `mode`: in `Mode::Audit` every isolated
    /// direction carries its audit flag too, so the kernel has one audit mechanism
    /// (the endpoint flags) for the node-wide mode and the per-policy annotation.
    pub fn from_image_in(image: &Image, bindings: &BTreeMap<IpAddr, u32>, mode: Mode) -> Self {
        let all = mode == Mode::Audit;
        let endpoints = image
            .endpoints
            .iter()
            .map(|(addr, endpoint)| {
                let mut flags = 0;
                if endpoint.isolated_ingress {
                    flags |= EP_ISOLATED_INGRESS;
                    if endpoint.audit_ingress || all {
                        flags |= EP_AUDIT_INGRESS;
                    }
                }
                if endpoint.isolated_egress {
                    flags |= EP_ISOLATED_EGRESS;
                    if endpoint.audit_egress || all {
                        flags |= EP_AUDIT_EGRESS;
                    }
                }
                let value = EndpointValue {
                    policy: endpoint.policy,
                    flags,
                    ifindex: bindings.get(addr).copied().unwrap_or(0),
                    identity: endpoint.identity,
                };
                (*addr, value)
            })
            .collect();
        Self {
            identities: image.identities.clone(),
            endpoints,
            policy: image.policy.clone(),
            rules: image.rules.keys().copied().collect(),
        }
    }
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutRule(u32),
    PutPolicy(PolicyEntry, u32),
    PutIdentity(IpNet, u32),
    PutEndpoint(IpAddr, EndpointValue),
    DeleteEndpoint(IpAddr),
    DeleteIdentity(IpNet),
    DeletePolicy(PolicyEntry),
    DeleteRule(u32),
}

/// The operations that turn `live` into `target`, in the safe order above.
pub fn plan(live: &Contents, target: &Contents) -> Vec<MapOp> {
    let mut ops = Vec::new();
    ops.extend(target.rules.difference(&live.rules).map(|r| MapOp::PutRule(*r)));
    ops.extend(changed(&live.policy, &target.policy).map(|(k, v)| MapOp::PutPolicy(*k, *v)));
    ops.extend(changed(&live.identities, &target.identities).map(|(k, v)| MapOp::PutIdentity(*k, *v)));
    ops.extend(changed(&live.endpoints, &target.endpoints).map(|(k, v)| MapOp::PutEndpoint(*k, *v)));
    ops.extend(removed(&live.endpoints, &target.endpoints).map(|k| MapOp::DeleteEndpoint(*k)));
    ops.extend(removed(&live.identities, &target.identities).map(|k| MapOp::DeleteIdentity(*k)));
    ops.extend(removed(&live.policy, &target.policy).map(|k| MapOp::DeletePolicy(*k)));
    ops.extend(live.rules.difference(&target.rules).map(|r| MapOp::DeleteRule(*r)));
    ops
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
    /// Applied writes to ENDPOINTS, IDENTITIES or POLICY (rule counters excluded):
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
    let mut report = SyncReport::default();
    let pending = pending_fallbacks(live, target);
    // The prefixes whose pending write `entry` would wrongly cover.
    let exposes = |entry: &PolicyEntry| -> Vec<IpNet> {
        pending.get(&entry.peer).map_or_else(Vec::new, |prefixes| {
            prefixes
                .iter()
                .filter(|(_, id)| !target.policy.contains_key(&PolicyEntry { peer: *id, ..*entry }))
                .map(|(net, _)| *net)
                .collect()
        })
    };
    let written = |live: &Contents, net: &IpNet| live.identities.get(net) == target.identities.get(net);
    let mut deferred = Vec::new();
    let mut guarded = pending.is_empty();
    for op in plan(live, target) {
        if !guarded && !matches!(op, MapOp::PutRule(_) | MapOp::PutPolicy(..) | MapOp::PutIdentity(..)) {
            guarded = true;
            guard(backend, live, &mut report, std::mem::take(&mut deferred), &exposes, &written);
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
    let unsafe_now = |live: &Contents, entry: &PolicyEntry| exposes(entry).iter().any(|net| !written(live, net));
    for op in deferred {
        if let MapOp::PutPolicy(entry, _) = &op
            && unsafe_now(live, entry)
        {
            report.withheld.push(*entry);
            continue;
        }
        apply(backend, live, report, op);
    }
    let exposed: Vec<PolicyEntry> = live.policy.keys().filter(|e| unsafe_now(live, e)).copied().collect();
    for entry in exposed {
        report.withheld.push(entry);
        apply(backend, live, report, MapOp::DeletePolicy(entry));
    }
}

/// Identity writes the maps lack, by the identity their addresses resolve to until
/// written: fallback → [(prefix, target identity)].
fn pending_fallbacks(live: &Contents, target: &Contents) -> BTreeMap<u32, Vec<(IpNet, u32)>> {
    let mut out: BTreeMap<u32, Vec<(IpNet, u32)>> = BTreeMap::new();
    for (net, id) in changed(&live.identities, &target.identities) {
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
        MapOp::DeleteEndpoint(k) => {
            live.endpoints.remove(k);
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
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// The fake backend: applies to a `Contents`, and fails on chosen operations.
    #[derive(Default)]
    struct Fake {
        maps: Contents,
        fail_on: Option<MapOp>,
        log: Vec<MapOp>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("map full")]
    struct Full;

    impl MapBackend for Fake {
        type Error = Full;
        fn apply(&mut self, op: &MapOp) -> Result<(), Full> {
            if self.fail_on.as_ref() == Some(op) {
                return Err(Full);
            }
            self.log.push(op.clone());
            record(&mut self.maps, op);
            Ok(())
        }
    }

    fn entry(policy: u32, peer: u32, port: u16) -> PolicyEntry {
        PolicyEntry {
            policy,
            peer,
            direction: netfence_common::DIR_INGRESS,
            protocol: netfence_common::PROTO_TCP,
            port,
            port_bits: 16,
        }
    }

    fn endpoint(policy: u32) -> EndpointValue {
        EndpointValue {
            policy,
            flags: EP_ISOLATED_INGRESS,
            ifindex: 0,
            identity: 20,
        }
    }

    fn pod(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
    }

    fn contents(policy_id: u32, peer: u32) -> Contents {
        let mut c = Contents::default();
        c.rules.insert(7);
        c.policy.insert(entry(policy_id, peer, 80), 7);
        c.identities.insert(IpNet::from(pod(3)), peer);
        c.endpoints.insert(pod(2), endpoint(policy_id));
        c
    }

    #[test]
    fn first_sync_writes_everything_in_dependency_order() {
        let target = contents(100, 30);
        let ops = plan(&Contents::default(), &target);
        assert_eq!(
            ops,
            vec![
                MapOp::PutRule(7),
                MapOp::PutPolicy(entry(100, 30, 80), 7),
                MapOp::PutIdentity(IpNet::from(pod(3)), 30),
                MapOp::PutEndpoint(pod(2), endpoint(100)),
            ]
        );
    }

    #[test]
    fn unchanged_image_writes_nothing() {
        let target = contents(100, 30);
        assert!(plan(&target, &target).is_empty());
    }

    #[test]
    fn policy_switch_adds_new_entries_before_the_endpoint_flip_and_deletes_after() {
        let old = contents(100, 30);
        let new = contents(200, 30);
        let ops = plan(&old, &new);
        let put_new = ops.iter().position(|o| *o == MapOp::PutPolicy(entry(200, 30, 80), 7));
        let flip = ops.iter().position(|o| *o == MapOp::PutEndpoint(pod(2), endpoint(200)));
        let del_old = ops.iter().position(|o| *o == MapOp::DeletePolicy(entry(100, 30, 80)));
        let (put_new, flip, del_old) = (put_new.expect("put"), flip.expect("flip"), del_old.expect("del"));
        assert!(put_new < flip && flip < del_old, "{ops:?}");
        assert_eq!(ops.len(), 3, "rule and identity unchanged: {ops:?}");
    }

    #[test]
    fn removed_pod_is_deleted_endpoint_first() {
        let old = contents(100, 30);
        let new = Contents::default();
        let ops = plan(&old, &new);
        assert_eq!(ops.first(), Some(&MapOp::DeleteEndpoint(pod(2))));
        assert_eq!(ops.last(), Some(&MapOp::DeleteRule(7)));
        assert_eq!(ops.len(), 4);
    }

    #[test]
    fn failed_operation_is_reported_and_retried_next_sync() {
        let target = contents(100, 30);
        let mut backend = Fake {
            fail_on: Some(MapOp::PutIdentity(IpNet::from(pod(3)), 30)),
            ..Fake::default()
        };
        let mut live = Contents::default();
        let report = sync(&mut backend, &mut live, &target);
        assert_eq!(report.applied, 3);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].1, "map full");
        assert!(!live.identities.contains_key(&IpNet::from(pod(3))));

        backend.fail_on = None;
        let report = sync(&mut backend, &mut live, &target);
        assert_eq!(report.applied, 1, "only the failed write is retried");
        assert!(report.failed.is_empty());
        assert_eq!(live, target);
        assert_eq!(backend.maps, target);
    }

    #[test]
    fn a_policy_whose_entries_do_not_all_fit_fails_closed_and_is_completed_by_a_retry() {
        // Before: the endpoint is not isolated. After: isolated by policy 200, which
        // allows ports 80 and 443 from identity 30; the port-443 entry does not fit.
        let mut old = contents(100, 30);
        old.endpoints.insert(pod(2), EndpointValue { flags: 0, ..endpoint(100) });
        let mut new = contents(200, 30);
        new.policy.insert(entry(200, 30, 443), 7);
        let mut backend = Fake {
            maps: old.clone(),
            fail_on: Some(MapOp::PutPolicy(entry(200, 30, 443), 7)),
            ..Fake::default()
        };
        let mut live = old.clone();
        let report = sync(&mut backend, &mut live, &new);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.incomplete_policies(), BTreeSet::from([200]));
        assert_eq!(
            backend.maps.endpoints[&pod(2)],
            endpoint(200),
            "the endpoint is isolated by its new policy, not left open"
        );
        let enforced: Vec<_> = backend.maps.policy.keys().filter(|e| e.policy == 200).collect();
        assert_eq!(enforced, vec![&entry(200, 30, 80)], "a subset of the new allows");
        assert!(
            backend.maps.policy.keys().all(|e| new.policy.contains_key(e)),
            "no entry of the old policy is left to allow what the new one does not"
        );
        assert_eq!(live, backend.maps, "live records exactly what the maps hold");

        backend.fail_on = None;
        let report = sync(&mut backend, &mut live, &new);
        assert_eq!(report.applied, 1, "only the missing entry is written");
        assert!(report.incomplete_policies().is_empty());
        assert_eq!(backend.maps, new);
    }

    /// Policy 100 allows ipBlock 198.18.0.0/15 (identity 40) except 198.18.0.3/32
    /// (identity 50, allowed nothing), and the except's prefix does not fit.
    #[test]
    fn an_unwritten_except_prefix_withholds_the_block_allow_instead_of_failing_open() {
        let block: IpNet = "198.18.0.0/15".parse().unwrap();
        let except = IpNet::from(pod(3));
        let mut old = Contents::default();
        old.identities.insert(block, 40);
        old.policy.insert(entry(100, 40, 80), 7);
        old.rules.insert(7);
        old.endpoints.insert(pod(2), endpoint(100));
        let mut new = old.clone();
        new.identities.insert(except, 50);
        let mut backend = Fake {
            maps: old.clone(),
            fail_on: Some(MapOp::PutIdentity(except, 50)),
            ..Fake::default()
        };
        let mut live = old.clone();
        let report = sync(&mut backend, &mut live, &new);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.withheld, vec![entry(100, 40, 80)]);
        assert!(
            !backend.maps.policy.contains_key(&entry(100, 40, 80)),
            "198.18.0.3 would resolve to the block's identity: its allow is removed"
        );
        assert_eq!(live, backend.maps);

        let report = sync(&mut backend, &mut live, &new);
        assert_eq!(report.withheld, vec![entry(100, 40, 80)], "still withheld, never re-put first");
        assert!(!backend.log.contains(&MapOp::PutPolicy(entry(100, 40, 80), 7)));

        backend.fail_on = None;
        let report = sync(&mut backend, &mut live, &new);
        assert!(report.withheld.is_empty() && report.failed.is_empty());
        let identity = backend.log.iter().position(|o| *o == MapOp::PutIdentity(except, 50));
        let allow = backend.log.iter().position(|o| *o == MapOp::PutPolicy(entry(100, 40, 80), 7));
        assert!(identity.unwrap() < allow.unwrap(), "the prefix first, then the allow");
        assert_eq!(backend.maps, new);
    }

    #[test]
    fn an_unwritten_prefix_whose_identity_is_allowed_alike_withholds_nothing() {
        let block: IpNet = "198.18.0.0/15".parse().unwrap();
        let mut old = Contents::default();
        old.identities.insert(block, 40);
        old.policy.insert(entry(100, 40, 80), 7);
        let mut new = old.clone();
        new.identities.insert(IpNet::from(pod(3)), 50);
        new.policy.insert(entry(100, 50, 80), 7);
        let mut backend = Fake {
            maps: old.clone(),
            fail_on: Some(MapOp::PutIdentity(IpNet::from(pod(3)), 50)),
            ..Fake::default()
        };
        let mut live = old;
        let report = sync(&mut backend, &mut live, &new);
        assert!(report.withheld.is_empty(), "{report:?}");
        assert!(backend.maps.policy.contains_key(&entry(100, 40, 80)));
        assert!(backend.maps.policy.contains_key(&entry(100, 50, 80)));
    }

    #[test]
    fn only_failed_policy_writes_make_a_policy_incomplete() {
        let report = SyncReport {
            applied: 0,
            failed: vec![
                (MapOp::PutIdentity(IpNet::from(pod(3)), 30), "full".into()),
                (MapOp::PutEndpoint(pod(2), endpoint(5)), "full".into()),
                (MapOp::PutPolicy(entry(9, 30, 80), 7), "full".into()),
                (MapOp::PutPolicy(entry(9, 30, 81), 7), "full".into()),
            ],
            withheld: Vec::new(),
            verdict_writes: 0,
        };
        assert_eq!(report.incomplete_policies(), BTreeSet::from([9]));
    }

    #[test]
    fn audit_flags_come_from_the_image_or_the_node_mode_and_only_where_isolated() {
        let mut image = Image::default();
        let endpoint = crate::image::Endpoint {
            namespace: "x".into(),
            pod: "a".into(),
            policy: 5,
            isolated_ingress: true,
            isolated_egress: false,
            audit_ingress: true,
            audit_egress: false,
            identity: 40,
        };
        image.endpoints.insert(pod(2), endpoint.clone());
        image.endpoints.insert(pod(3), crate::image::Endpoint { audit_ingress: false, isolated_egress: true, ..endpoint });
        let flags = |mode| {
            let c = Contents::from_image_in(&image, &BTreeMap::new(), mode);
            (c.endpoints[&pod(2)].flags, c.endpoints[&pod(3)].flags)
        };
        assert_eq!(
            flags(Mode::Enforce),
            (EP_ISOLATED_INGRESS | EP_AUDIT_INGRESS, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS)
        );
        assert_eq!(
            flags(Mode::Audit),
            (
                EP_ISOLATED_INGRESS | EP_AUDIT_INGRESS,
                EP_ISOLATED_INGRESS | EP_AUDIT_INGRESS | EP_ISOLATED_EGRESS | EP_AUDIT_EGRESS
            ),
            "audit mode audits every isolated direction, and no direction that is not isolated"
        );
    }

    #[test]
    fn only_writes_a_verdict_depends_on_count_as_verdict_writes() {
        let mut backend = Fake::default();
        let mut live = Contents::default();
        let target = contents(100, 30);
        let report = sync(&mut backend, &mut live, &target);
        assert_eq!((report.applied, report.verdict_writes), (4, 3), "the rule counter is no verdict write");
        let report = sync(&mut backend, &mut live, &target);
        assert_eq!((report.applied, report.verdict_writes), (0, 0), "a no-op sync bumps nothing");
    }

    #[test]
    fn bindings_fill_the_endpoint_ifindex() {
        let mut image = Image::default();
        image.endpoints.insert(
            pod(2),
            crate::image::Endpoint {
                namespace: "x".into(),
                pod: "a".into(),
                policy: 5,
                isolated_ingress: true,
                isolated_egress: true,
                audit_ingress: false,
                audit_egress: false,
                identity: 40,
            },
        );
        let bindings = BTreeMap::from([(pod(2), 17)]);
        let contents = Contents::from_image(&image, &bindings);
        assert_eq!(
            contents.endpoints[&pod(2)],
            EndpointValue {
                policy: 5,
                flags: EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS,
                ifindex: 17,
                identity: 40
            }
        );
        let unbound = Contents::from_image(&image, &BTreeMap::new());
        assert_eq!(unbound.endpoints[&pod(2)].ifindex, 0);
    }
}
