//! Unit tests of sync: plan order, failures and retries, the identity guard, audit flags
//! and verdict writes, over a fake map backend.

use super::*;
use netfence_common::{EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS};
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
    let put_new = ops
        .iter()
        .position(|o| *o == MapOp::PutPolicy(entry(200, 30, 80), 7));
    let flip = ops
        .iter()
        .position(|o| *o == MapOp::PutEndpoint(pod(2), endpoint(200)));
    let del_old = ops
        .iter()
        .position(|o| *o == MapOp::DeletePolicy(entry(100, 30, 80)));
    let (put_new, flip, del_old) = (
        put_new.expect("put"),
        flip.expect("flip"),
        del_old.expect("del"),
    );
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
    old.endpoints.insert(
        pod(2),
        EndpointValue {
            flags: 0,
            ..endpoint(100)
        },
    );
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
    let enforced: Vec<_> = backend
        .maps
        .policy
        .keys()
        .filter(|e| e.policy == 200)
        .collect();
    assert_eq!(
        enforced,
        vec![&entry(200, 30, 80)],
        "a subset of the new allows"
    );
    assert!(
        backend
            .maps
            .policy
            .keys()
            .all(|e| new.policy.contains_key(e)),
        "no entry of the old policy is left to allow what the new one does not"
    );
    assert_eq!(
        live, backend.maps,
        "live records exactly what the maps hold"
    );

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
    assert_eq!(
        report.withheld,
        vec![entry(100, 40, 80)],
        "still withheld, never re-put first"
    );
    assert!(
        !backend
            .log
            .contains(&MapOp::PutPolicy(entry(100, 40, 80), 7))
    );

    backend.fail_on = None;
    let report = sync(&mut backend, &mut live, &new);
    assert!(report.withheld.is_empty() && report.failed.is_empty());
    let identity = backend
        .log
        .iter()
        .position(|o| *o == MapOp::PutIdentity(except, 50));
    let allow = backend
        .log
        .iter()
        .position(|o| *o == MapOp::PutPolicy(entry(100, 40, 80), 7));
    assert!(
        identity.unwrap() < allow.unwrap(),
        "the prefix first, then the allow"
    );
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
    image.endpoints.insert(
        pod(3),
        crate::image::Endpoint {
            audit_ingress: false,
            isolated_egress: true,
            ..endpoint
        },
    );
    let flags = |mode| {
        let mut image = image.clone();
        if mode == Mode::Audit {
            crate::compile::audit_all(&mut image);
        }
        let c = Contents::from_image(&image, &BTreeMap::new());
        (c.endpoints[&pod(2)].flags, c.endpoints[&pod(3)].flags)
    };
    assert_eq!(
        flags(Mode::Enforce),
        (
            EP_ISOLATED_INGRESS | EP_AUDIT_INGRESS,
            EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS
        )
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
    assert_eq!(
        (report.applied, report.verdict_writes),
        (4, 3),
        "the rule counter is no verdict write"
    );
    let report = sync(&mut backend, &mut live, &target);
    assert_eq!(
        (report.applied, report.verdict_writes),
        (0, 0),
        "a no-op sync bumps nothing"
    );
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

fn bound(policy: u32, ifindex: u32) -> EndpointValue {
    EndpointValue {
        ifindex,
        ..endpoint(policy)
    }
}

fn pod6(last: u16) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last))
}

#[test]
fn ports_hold_the_bound_endpoint_of_each_interface() {
    // A dual-stack pod on 17, a pod on 18, an unbound address: two ports.
    let endpoints = BTreeMap::from([
        (pod(2), bound(100, 17)),
        (pod6(2), bound(100, 17)),
        (pod(3), bound(200, 18)),
        (pod(4), bound(300, 0)),
    ]);
    assert_eq!(
        ports_of(&endpoints),
        BTreeMap::from([(17, bound(100, 17)), (18, bound(200, 18))])
    );
    assert!(
        port_conflicts(&endpoints).is_empty(),
        "one value per interface"
    );
}

#[test]
fn different_endpoints_on_one_interface_keep_the_lowest_address_and_say_so() {
    let endpoints = BTreeMap::from([
        (pod6(9), bound(300, 17)),
        (pod(5), bound(200, 17)),
        (pod(2), bound(100, 17)),
        (
            pod(3),
            EndpointValue {
                identity: 21,
                ..bound(100, 17)
            },
        ),
    ]);
    assert_eq!(ports_of(&endpoints), BTreeMap::from([(17, bound(100, 17))]));
    let conflicts = port_conflicts(&endpoints);
    assert_eq!(
        conflicts,
        vec![PortConflict {
            ifindex: 17,
            kept: pod(2),
            others: vec![pod(5), pod6(9)]
        }],
        "pod(3) has the kept policy and flags (another identity) and is no conflict"
    );
    let text = conflicts[0].to_string();
    assert!(
        text.contains("interface 17") && text.contains("198.18.0.2") && text.contains("fd00::9"),
        "{text}"
    );
}

#[test]
fn ports_are_written_after_endpoints_and_removed_with_them_before_policy() {
    let mut old = contents(100, 30);
    old.endpoints.insert(pod(2), bound(100, 17));
    old.ports = ports_of(&old.endpoints);
    // The pod moves to interface 18 with a new policy; another pod appears on 19.
    let mut new = contents(200, 30);
    new.endpoints.insert(pod(2), bound(200, 18));
    new.endpoints.insert(pod(4), bound(200, 19));
    new.ports = ports_of(&new.endpoints);
    let ops = plan(&old, &new);
    assert_eq!(
        ops,
        vec![
            MapOp::PutPolicy(entry(200, 30, 80), 7),
            MapOp::PutEndpoint(pod(2), bound(200, 18)),
            MapOp::PutEndpoint(pod(4), bound(200, 19)),
            MapOp::PutPort(18, bound(200, 18)),
            MapOp::PutPort(19, bound(200, 19)),
            MapOp::DeletePort(17),
            MapOp::DeletePolicy(entry(100, 30, 80)),
        ]
    );
    // Going away: the endpoint and its port before the policy they name.
    let ops = plan(&new, &Contents::default());
    let last_port = ops
        .iter()
        .rposition(|o| matches!(o, MapOp::DeletePort(_)))
        .expect("ports deleted");
    let first_policy = ops
        .iter()
        .position(|o| matches!(o, MapOp::DeletePolicy(_)))
        .expect("policy deleted");
    assert!(last_port < first_policy, "{ops:?}");
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, MapOp::DeletePort(_)))
            .count(),
        2
    );
}

#[test]
fn port_writes_are_verdict_writes_and_read_back_into_live() {
    let mut image = Image::default();
    image.endpoints.insert(
        pod(2),
        crate::image::Endpoint {
            namespace: "x".into(),
            pod: "a".into(),
            policy: 0,
            isolated_ingress: false,
            isolated_egress: false,
            audit_ingress: false,
            audit_egress: false,
            identity: 40,
        },
    );
    let unbound = Contents::from_image(&image, &BTreeMap::new());
    let bound_now = Contents::from_image(&image, &BTreeMap::from([(pod(2), 17)]));
    let mut backend = Fake::default();
    let mut live = Contents::default();
    sync(&mut backend, &mut live, &unbound);
    assert!(live.ports.is_empty(), "an unbound endpoint has no port");
    let report = sync(&mut backend, &mut live, &bound_now);
    assert_eq!(
        (report.applied, report.verdict_writes),
        (2, 2),
        "endpoint and port: {:?}",
        backend.log
    );
    assert_eq!(live, bound_now);
    assert_eq!(backend.maps, bound_now);
}

#[test]
fn a_scoped_sync_compares_only_the_named_prefixes_and_retries_failures() {
    let old = contents(100, 20);
    let mut live = old.clone();
    let mut fake = Fake {
        maps: old.clone(),
        ..Fake::default()
    };
    // Two prefixes change, but the scope names one: the other's difference is not
    // looked at.
    let named = IpNet::from(pod(5));
    let unnamed = IpNet::from(pod(6));
    let mut target = old.clone();
    target.identities.insert(named, 21);
    target.identities.insert(unnamed, 22);
    let mut scope = Scope::default();
    scope.prefix(named);
    assert_eq!(
        plan_in(&live, &target, &scope),
        vec![MapOp::PutIdentity(named, 21)]
    );
    // The node-local maps and the rule counters are compared whole, scope or not.
    target.endpoints.insert(pod(9), endpoint(100));
    target.rules.insert(8);
    let ops = plan_in(&live, &target, &scope);
    assert!(
        ops.contains(&MapOp::PutEndpoint(pod(9), endpoint(100))),
        "{ops:?}"
    );
    assert!(ops.contains(&MapOp::PutRule(8)), "{ops:?}");
    // A failed write in scope is named in the next scope.
    fake.fail_on = Some(MapOp::PutIdentity(named, 21));
    let report = sync_in(&mut fake, &mut live, &target, &scope);
    assert_eq!(report.failed.len(), 1);
    let retry = Scope::of_failures(&report);
    assert_eq!(retry, Scope::Prefixes(BTreeSet::from([named])));
    fake.fail_on = None;
    let report = sync_in(&mut fake, &mut live, &target, &retry);
    assert_eq!(report.applied, 1);
    assert_eq!(live.identities.get(&named), Some(&21));
    assert_eq!(fake.maps, live);
    // With every prefix in scope, a scoped plan is the whole plan.
    let all = Scope::Prefixes(
        (target.identities.keys().chain(live.identities.keys()))
            .copied()
            .collect(),
    );
    assert_eq!(plan_in(&live, &target, &all), plan(&live, &target));
}

#[test]
fn rule_counters_are_the_rules_policy_entries_name() {
    use crate::image::RuleInfo;
    let mut image = Image::default();
    let info = RuleInfo {
        namespace: "x".to_owned(),
        policy: "p".to_owned(),
        direction: netfence_common::DIR_INGRESS,
        index: 0,
    };
    // Rules of the whole cluster, two of them in this node's entries.
    for rule in [7, 8, 9] {
        image.rules.insert(rule, info.clone());
    }
    image.policy.insert(entry(100, 20, 80), 7);
    image.policy.insert(entry(100, 21, 80), 9);
    let contents = Contents::from_image(&image, &BTreeMap::new());
    assert_eq!(contents.rules, BTreeSet::from([7, 9]));
}

#[test]
fn contents_patched_equal_contents_of_the_patched_image() {
    use crate::image::{Endpoint, Patch, RuleInfo};
    let mut image = Image::default();
    image.identities.insert(IpNet::from(pod(3)), 20);
    image.identities.insert(IpNet::from(pod(4)), 21);
    image.rules.insert(
        7,
        RuleInfo {
            namespace: "x".to_owned(),
            policy: "p".to_owned(),
            direction: netfence_common::DIR_INGRESS,
            index: 0,
        },
    );
    let bindings = BTreeMap::from([(pod(3), 11)]);
    let mut contents = Contents::from_image(&image, &bindings);
    let endpoint = Endpoint {
        namespace: "x".to_owned(),
        pod: "a".to_owned(),
        policy: 100,
        isolated_ingress: true,
        isolated_egress: false,
        audit_ingress: false,
        audit_egress: false,
        identity: 20,
    };
    let patch = Patch {
        endpoints: BTreeMap::from([(pod(3), endpoint)]),
        policy: BTreeMap::from([(entry(100, 21, 80), 7)]),
        identities: vec![(IpNet::from(pod(4)), None), (IpNet::from(pod(5)), Some(22))],
        rules: vec![(7, None)],
        ..Patch::default()
    };
    let mut scope = Scope::default();
    contents.patch(&patch, &mut scope);
    patch.apply_to(&mut image);
    contents.set_local(&image, &bindings);
    assert_eq!(contents, Contents::from_image(&image, &bindings));
    assert_eq!(
        scope,
        Scope::Prefixes(BTreeSet::from([IpNet::from(pod(4)), IpNet::from(pod(5))]))
    );
}
