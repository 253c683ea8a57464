//! Table tests of NetworkPolicy semantics through `compile` and `Image::lookup`, in the
//! style of the upstream e2e "netpol" matrix (namespaces x, y, z × pods a, b, c) and of
//! kube-network-policies: each test states policies, probes every pair (IPv4 and IPv6)
//! and asserts the verdicts and the shape of the image.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common_state;

use common_state::*;
use netfence::compile::compile;
use netfence::image::DirectionVerdict;
use netfence::model::{LabelSelector, Operator, PodPhase};
use netfence::source::validate::defaulted_policy_types;
use netfence_common::{IDENTITY_WORLD, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

#[test]
fn no_policy_allows_everything() {
    let (state, image) = compiled(xyz());
    let r = all_pods(true);
    assert_eq!(r.check(&image, &state, PROTO_TCP, 80), 144);
    r.check(&image, &state, PROTO_UDP, 81);
    r.check_families(&image, &state, PROTO_ICMP, 0, &[false]);
    // Nine label groups, one identity each (both addresses of a pod share it).
    assert_eq!(image.identity_info.len(), 9);
    assert_eq!(image.identities.len(), 18);
    assert_eq!(image.endpoints.len(), 18);
    assert!(
        image
            .endpoints
            .values()
            .all(|e| e.policy == 0 && !e.isolated_ingress && !e.isolated_egress)
    );
    assert!(image.policy.is_empty() && image.endpoint_policies.is_empty());
    let a = pod_addr(&state, "x/a", false);
    assert_eq!(
        image
            .lookup(&packet(a, pod_addr(&state, "y/b", false), PROTO_TCP, 80))
            .egress,
        DirectionVerdict::NotIsolated
    );
}

#[test]
fn default_deny_ingress() {
    let p = policy("x", "deny-ingress").types(&["Ingress"]).build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("", "x", false)
        .check(&image, &state, PROTO_TCP, 80);
    all_pods(true)
        .expect("", "x", false)
        .check(&image, &state, PROTO_UDP, 80);
    assert_eq!(image.endpoint_policies.len(), 1);
    assert!(
        image.policy.is_empty(),
        "a policy without rules has no entries"
    );
    let x_a = &image.endpoints[&pod_addr(&state, "x/a", false)];
    assert!(x_a.isolated_ingress && !x_a.isolated_egress && x_a.policy != 0);
    assert_eq!(
        image.endpoints.values().filter(|e| e.policy != 0).count(),
        6
    );
}

#[test]
fn default_deny_egress() {
    let p = policy("x", "deny-egress").types(&["Egress"]).build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("x", "", false)
        .check(&image, &state, PROTO_TCP, 80);
    let verdict = image.lookup(&packet(
        pod_addr(&state, "x/a", false),
        ip("198.19.0.1"),
        PROTO_TCP,
        443,
    ));
    assert_eq!(verdict.egress, DirectionVerdict::Denied);
    assert_eq!(verdict.ingress, DirectionVerdict::NotLocal);
}

#[test]
fn allow_from_pod_selector_in_own_namespace() {
    let p = policy("x", "allow-b")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("", "x/a", false)
        .expect("x/b", "x/a", true)
        .check(&image, &state, PROTO_TCP, 80);
    // The peer set is the one identity of x/b: one entry.
    assert_eq!(image.policy.len(), 1);
    let entry = image.policy.keys().next().unwrap();
    assert_eq!(
        entry.peer,
        image.endpoints[&pod_addr(&state, "x/b", false)].identity
    );
    assert_eq!((entry.protocol, entry.port_bits), (0, 0));
}

#[test]
fn allow_from_namespace_selector() {
    let p = policy("x", "allow-y")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(Some(sel(&[("ns", "y")])), None)], vec![]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("", "x/a", false)
        .expect("y", "x/a", true)
        .check(&image, &state, PROTO_TCP, 80);
}

#[test]
fn selectors_in_one_peer_are_anded() {
    let p = policy("x", "and")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![pods(Some(sel(&[("ns", "y")])), Some(sel(&[("pod", "b")])))],
            vec![],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("", "x/a", false)
        .expect("y/b", "x/a", true)
        .check(&image, &state, PROTO_TCP, 80);
}

#[test]
fn separate_peers_are_ored() {
    let p = policy("x", "or")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![
                pods(Some(sel(&[("ns", "y")])), None),
                pods(None, Some(sel(&[("pod", "b")]))),
            ],
            vec![],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("", "x/a", false)
        .expect("y", "x/a", true)
        .expect("x/b", "x/a", true)
        .check(&image, &state, PROTO_TCP, 80);
}

#[test]
fn empty_namespace_selector_means_every_namespace() {
    let b_anywhere = policy("x", "b-anywhere")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![pods(
                Some(LabelSelector::default()),
                Some(sel(&[("pod", "b")])),
            )],
            vec![],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(b_anywhere));
    all_pods(true)
        .expect("", "x/a", false)
        .expect("x/b", "x/a", true)
        .expect("y/b", "x/a", true)
        .expect("z/b", "x/a", true)
        .check(&image, &state, PROTO_TCP, 80);

    let everyone = policy("x", "everyone")
        .ingress(rule(
            vec![pods(Some(LabelSelector::default()), None)],
            vec![],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(everyone));
    all_pods(true).check(&image, &state, PROTO_TCP, 80);
    // ...but not an address outside the cluster.
    let outside = image.lookup(&packet(
        ip("198.19.0.1"),
        pod_addr(&state, "x/a", false),
        PROTO_TCP,
        80,
    ));
    assert_eq!(outside.ingress, DirectionVerdict::Denied);
}

#[test]
fn match_expressions_select_pods_and_namespaces() {
    let p = policy("x", "exprs")
        .select(expr("pod", Operator::In, &["a", "b"]))
        .ingress(rule(
            vec![pods(
                Some(expr("ns", Operator::NotIn, &["y"])),
                Some(expr("pod", Operator::Exists, &[])),
            )],
            vec![],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("", "x/a", false)
        .expect("", "x/b", false)
        .expect("x", "x/a", true)
        .expect("z", "x/a", true)
        .expect("x", "x/b", true)
        .expect("z", "x/b", true)
        .check(&image, &state, PROTO_TCP, 80);
}

#[test]
fn ingress_empty_rule_allows_all_and_policies_add_up() {
    let deny = policy("x", "deny").types(&["Ingress"]).build();
    let allow = policy("x", "allow-all")
        .select(sel(&[("pod", "a")]))
        .ingress(allow_all())
        .build();
    let (state, image) = compiled(xyz().policy(deny).policy(allow));
    all_pods(true)
        .expect("", "x", false)
        .expect("", "x/a", true)
        .check(&image, &state, PROTO_TCP, 80);
    assert!(
        image
            .lookup(&packet(
                ip("198.19.0.1"),
                pod_addr(&state, "x/a", false),
                PROTO_UDP,
                5
            ))
            .allowed()
    );
    // x/a is selected by {deny, allow-all}, x/b and x/c by {deny}: two endpoint policies.
    assert_eq!(image.endpoint_policies.len(), 2);
    let x_a = &image.endpoints[&pod_addr(&state, "x/a", false)];
    assert_eq!(
        image.endpoint_policies[&x_a.policy].ingress,
        vec!["x/allow-all".to_owned(), "x/deny".to_owned()]
    );
    assert_eq!(
        image.endpoints[&pod_addr(&state, "x/b", false)].policy,
        image.endpoints[&pod_addr(&state, "x/c", false)].policy
    );
}

#[test]
fn several_policies_add_up_with_their_own_rules() {
    let from_b = policy("x", "from-b")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![pods(None, Some(sel(&[("pod", "b")])))],
            vec![tcp(80)],
        ))
        .build();
    let from_y = policy("x", "from-y")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![pods(Some(sel(&[("ns", "y")])), None)],
            vec![tcp(80)],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(from_b).policy(from_y));
    all_pods(true)
        .expect("", "x/a", false)
        .expect("x/b", "x/a", true)
        .expect("y", "x/a", true)
        .check(&image, &state, PROTO_TCP, 80);
    let verdict = image.lookup(&packet(
        pod_addr(&state, "y/c", false),
        pod_addr(&state, "x/a", false),
        PROTO_TCP,
        80,
    ));
    let DirectionVerdict::Allowed { rule } = verdict.ingress else {
        panic!("{verdict:?}")
    };
    assert_eq!(
        (image.rules[&rule].policy.as_str(), image.rules[&rule].index),
        ("from-y", 0)
    );
    assert_eq!(image.rules.len(), 2);
}

#[test]
fn source_egress_and_destination_ingress_are_both_required() {
    let egress = policy("x", "a-to-b")
        .select(sel(&[("pod", "a")]))
        .egress(rule(
            vec![pods(None, Some(sel(&[("pod", "b")])))],
            vec![tcp(80)],
        ))
        .types(&["Egress"])
        .build();
    let ingress = policy("x", "b-from-c")
        .select(sel(&[("pod", "b")]))
        .ingress(rule(
            vec![pods(None, Some(sel(&[("pod", "c")])))],
            vec![tcp(80)],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(egress).policy(ingress));
    all_pods(true)
        .expect("x/a", "", false)
        .expect("", "x/b", false)
        .expect("x/c", "x/b", true)
        .check(&image, &state, PROTO_TCP, 80);
    let verdict = image.lookup(&packet(
        pod_addr(&state, "x/a", false),
        pod_addr(&state, "x/b", false),
        PROTO_TCP,
        80,
    ));
    assert!(matches!(verdict.egress, DirectionVerdict::Allowed { .. }));
    assert_eq!(verdict.ingress, DirectionVerdict::Denied);
    assert!(!verdict.allowed());
}

#[test]
fn policy_types_defaulting() {
    assert_eq!(defaulted_policy_types::<&str>(None, 0), (true, false));
    assert_eq!(defaulted_policy_types::<&str>(None, 1), (true, true));
    assert_eq!(defaulted_policy_types::<&str>(Some(&[]), 2), (true, true));
    assert_eq!(defaulted_policy_types(Some(&["Egress"]), 0), (false, true));
    assert_eq!(
        defaulted_policy_types(Some(&["Ingress", "Egress"]), 0),
        (true, true)
    );

    // Egress rules and no policyTypes: isolated both ways (no ingress rules: deny all in).
    let with_egress = policy("x", "eg")
        .select(sel(&[("pod", "a")]))
        .egress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![]))
        .build();
    assert!(with_egress.isolates_ingress && with_egress.isolates_egress);
    let (state, image) = compiled(xyz().policy(with_egress));
    all_pods(true)
        .expect("x/a", "", false)
        .expect("x/a", "x/b", true)
        .expect("", "x/a", false)
        .check(&image, &state, PROTO_TCP, 80);

    // `egress: []` alone does not isolate egress.
    let empty_egress = policy("x", "no-eg").select(sel(&[("pod", "a")])).build();
    assert!(empty_egress.isolates_ingress && !empty_egress.isolates_egress);
    let (state, image) = compiled(xyz().policy(empty_egress));
    all_pods(true)
        .expect("", "x/a", false)
        .check(&image, &state, PROTO_TCP, 80);
    assert!(!image.endpoints[&pod_addr(&state, "x/a", false)].isolated_egress);
}

#[test]
fn terminated_and_host_network_pods() {
    let mut done = running_pod("x", "done", &[("pod", "b")], &["198.18.1.50"]);
    done.phase = PodPhase::Succeeded;
    let mut failed = running_pod("x", "failed", &[("pod", "b")], &["198.18.1.51"]);
    failed.phase = PodPhase::Failed;
    let mut host = running_pod("x", "host", &[("pod", "b")], &["198.18.9.1"]);
    host.host_network = true;
    let p = policy("x", "from-b")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![]))
        .build();
    let (state, image) = compiled(
        xyz()
            .pod_with(done)
            .pod_with(failed)
            .pod_with(host)
            .policy(p),
    );
    for addr in ["198.18.1.50", "198.18.1.51", "198.18.9.1"] {
        assert_eq!(image.identity_of(ip(addr)), IDENTITY_WORLD, "{addr}");
        assert!(!image.endpoints.contains_key(&ip(addr)), "{addr}");
        let verdict = image.lookup(&packet(
            ip(addr),
            pod_addr(&state, "x/a", false),
            PROTO_TCP,
            80,
        ));
        assert_eq!(
            (verdict.egress, verdict.ingress),
            (DirectionVerdict::NotLocal, DirectionVerdict::Denied)
        );
    }
    assert!(v4(&image, &state, "x/b", "x/a", PROTO_TCP, 80));
    assert_eq!(image.endpoints.len(), 18);
    assert_eq!(image.identity_info.len(), 9);
}

#[test]
fn a_terminated_pods_reused_ip_belongs_to_the_live_pod() {
    let mut old = running_pod("x", "aaa-old", &[("pod", "c")], &["198.18.1.2"]);
    old.phase = PodPhase::Succeeded;
    let p = policy("x", "from-b")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![]))
        .build();
    let (state, image) = compiled(xyz().pod_with(old).policy(p));
    assert!(v4(&image, &state, "x/b", "x/a", PROTO_TCP, 80));
    assert_eq!(image.endpoints[&ip("198.18.1.2")].pod, "b");
}

#[test]
fn same_labels_share_identity_and_endpoint_policy() {
    let builder = StateBuilder::new()
        .namespace("x", &[("ns", "x")])
        .pod("x", "web-1", &[("app", "web")], &["198.18.1.1"])
        .pod("x", "web-2", &[("app", "web")], &["198.18.1.2"])
        .pod("x", "web-3", &[("app", "web")], &["198.18.1.3"])
        .pod("x", "db", &[("app", "db")], &["198.18.1.4"])
        .pod("y", "web-1", &[("app", "web")], &["198.18.2.1"])
        .policy(
            policy("x", "db-from-web")
                .select(sel(&[("app", "db")]))
                .ingress(rule(
                    vec![pods(None, Some(sel(&[("app", "web")])))],
                    vec![tcp(5432)],
                ))
                .build(),
        )
        .policy(
            policy("x", "web-deny")
                .select(sel(&[("app", "web")]))
                .types(&["Ingress"])
                .build(),
        );
    let (_state, image) = compiled(builder);
    // x/web-*, x/db and y/web-1 (namespace y has no Namespace object).
    assert_eq!(image.identity_info.len(), 3);
    let web = image.identity_of(ip("198.18.1.1"));
    assert_eq!(
        image.identity_info[&web].pods,
        vec!["x/web-1", "x/web-2", "x/web-3"]
    );
    assert_eq!(image.endpoint_policies.len(), 2);
    // One entry, not one per web pod.
    assert_eq!(image.policy.len(), 1);
    assert!(
        image
            .lookup(&packet(ip("198.18.1.3"), ip("198.18.1.4"), PROTO_TCP, 5432))
            .allowed()
    );
    assert!(
        !image
            .lookup(&packet(ip("198.18.2.1"), ip("198.18.1.4"), PROTO_TCP, 5432))
            .allowed()
    );
    assert!(
        !image
            .lookup(&packet(ip("198.18.1.4"), ip("198.18.1.3"), PROTO_TCP, 80))
            .allowed()
    );
}

#[test]
fn namespace_without_object_is_selected_by_its_name_label() {
    let builder = StateBuilder::new()
        .pod("w", "a", &[("pod", "a")], &["198.18.4.1"])
        .pod("v", "a", &[("pod", "a")], &["198.18.5.1"])
        .pod("x", "a", &[("pod", "a")], &["198.18.1.1"])
        .policy(
            policy("x", "from-w")
                .ingress(rule(
                    vec![pods(
                        Some(sel(&[("kubernetes.io/metadata.name", "w")])),
                        None,
                    )],
                    vec![],
                ))
                .build(),
        );
    let (state, image) = compiled(builder);
    assert!(v4(&image, &state, "w/a", "x/a", PROTO_TCP, 80));
    assert!(!v4(&image, &state, "v/a", "x/a", PROTO_TCP, 80));
}

#[test]
fn node_filter_keeps_remote_identities() {
    let mut remote = running_pod("x", "remote", &[("pod", "b")], &["198.18.7.1"]);
    remote.node_name = Some("node-2".to_owned());
    let p = policy("x", "from-b")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![]))
        .build();
    let state = xyz().pod_with(remote).policy(p).build();
    let local = compile(&state, Some(NODE));
    assert_eq!(local.endpoints.len(), 18);
    assert!(!local.endpoints.contains_key(&ip("198.18.7.1")));
    assert_eq!(
        local.identity_of(ip("198.18.7.1")),
        local.identity_of(pod_addr(&state, "x/b", false))
    );
    assert!(
        local
            .lookup(&packet(
                ip("198.18.7.1"),
                pod_addr(&state, "x/a", false),
                PROTO_TCP,
                80
            ))
            .allowed()
    );
    let other = compile(&state, Some("node-2"));
    assert_eq!(other.endpoints.len(), 1);
    assert_eq!(other.identities, local.identities);
    assert_eq!(compile(&state, Some("node-3")).endpoints.len(), 0);
}

#[test]
fn entries_follow_label_groups_not_pods() {
    let mut builder = StateBuilder::new().namespace("x", &[("ns", "x")]);
    for i in 0..400u32 {
        let app = ["web", "api", "db", "cache"][(i % 4) as usize];
        let addr = format!("198.18.{}.{}", 10 + i / 200, 1 + i % 200);
        builder = builder.pod(
            "x",
            &format!("{app}-{i}"),
            &[("app", app)],
            &[addr.as_str()],
        );
    }
    let builder = builder
        .policy(
            policy("x", "db")
                .select(sel(&[("app", "db")]))
                .ingress(rule(
                    vec![pods(
                        None,
                        Some(expr("app", Operator::In, &["api", "cache"])),
                    )],
                    vec![tcp(5432)],
                ))
                .build(),
        )
        .policy(
            policy("x", "api")
                .select(sel(&[("app", "api")]))
                .ingress(rule(
                    vec![pods(None, Some(sel(&[("app", "web")])))],
                    vec![tcp(8080)],
                ))
                .build(),
        );
    let (_state, image) = compiled(builder);
    assert_eq!(image.identity_info.len(), 4);
    assert_eq!(image.identities.len(), 400);
    assert_eq!(image.endpoint_policies.len(), 2);
    // db: from api and cache on 5432 (2 entries); api: from web on 8080 (1 entry).
    assert_eq!(image.policy.len(), 3);
    assert!(
        image
            .lookup(&packet(
                ip("198.18.10.2"),
                ip("198.18.10.3"),
                PROTO_TCP,
                5432
            ))
            .allowed()
    );
    assert!(
        !image
            .lookup(&packet(
                ip("198.18.10.1"),
                ip("198.18.10.3"),
                PROTO_TCP,
                5432
            ))
            .allowed()
    );
}
