//! Table tests, one per semantic bullet of issue 4 that the `compile_table*` files do
//! not already cover, written from the networking.k8s.io/v1 API reference and the
//! upstream e2e netpol expectations (`test/e2e/network/netpol/network_policy.go`),
//! over the x, y, z × a, b, c cluster, through `compile` and `Image::lookup`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common_state;

use common_state::*;
use netfence::model::{Operator, PodPhase, Protocol};
use netfence_common::{IDENTITY_WORLD, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// Upstream "should allow ingress access on one named port": a named port a pod does
/// not declare allows nothing on that pod, while pods that declare it are reachable on
/// their own number for it.
#[test]
fn named_port_a_pod_does_not_declare_allows_nothing_there() {
    let p = policy("x", "named")
        .ingress(rule(vec![], vec![named(Protocol::Tcp, "web")]))
        .build();
    let mut state = xyz().policy(p).build();
    // x/a serves "web" on 8080, x/b on 9090, x/c has a UDP "web" only.
    for pod in &mut state.pods {
        match (pod.namespace.as_str(), pod.name.as_str()) {
            ("x", "a") => pod.ports.push(container_port("web", Protocol::Tcp, 8080)),
            ("x", "b") => pod.ports.push(container_port("web", Protocol::Tcp, 9090)),
            ("x", "c") => pod.ports.push(container_port("web", Protocol::Udp, 8080)),
            _ => {}
        }
    }
    let image = netfence::compile::compile(&state, None);
    let to = |pod: &str, port: u16| v4(&image, &state, "y/a", pod, PROTO_TCP, port);
    assert!(to("x/a", 8080));
    assert!(!to("x/a", 9090));
    assert!(to("x/b", 9090));
    assert!(!to("x/b", 8080));
    // x/c's "web" is UDP: the TCP named port resolves to nothing there.
    assert!(!to("x/c", 8080));
    assert!(!v4(&image, &state, "y/a", "x/c", PROTO_UDP, 8080));
    // Pods outside x are not selected.
    assert!(to("y/b", 1234));
}

/// endPort over SCTP and UDP, and a protocol-only SCTP rule.
#[test]
fn end_port_and_protocol_only_over_sctp_and_udp() {
    let p = policy("x", "ranges")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![],
            vec![
                port_range(Protocol::Sctp, 80, 81),
                port_range(Protocol::Udp, 1000, 1003),
            ],
        ))
        .ingress(rule(
            vec![pods(None, Some(sel(&[("pod", "b")])))],
            vec![proto_only(Protocol::Sctp)],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    let to_a =
        |from: &str, protocol: u8, port: u16| v4(&image, &state, from, "x/a", protocol, port);
    for (protocol, port, allowed) in [
        (PROTO_SCTP, 79, false),
        (PROTO_SCTP, 80, true),
        (PROTO_SCTP, 81, true),
        (PROTO_SCTP, 82, false),
        (PROTO_TCP, 80, false),
        (PROTO_UDP, 80, false),
        (PROTO_UDP, 999, false),
        (PROTO_UDP, 1000, true),
        (PROTO_UDP, 1003, true),
        (PROTO_UDP, 1004, false),
    ] {
        assert_eq!(
            to_a("y/c", protocol, port),
            allowed,
            "y/c {protocol}/{port}"
        );
    }
    // x/b may use any SCTP port, nothing else beyond the ranges.
    assert!(to_a("x/b", PROTO_SCTP, 5000));
    assert!(!to_a("x/b", PROTO_TCP, 5000));
    assert!(!to_a("x/b", PROTO_ICMP, 0));
}

/// A dual-stack pod is one identity per address; an IPv6 ipBlock with an except
/// carves a hole that IPv4 rules never see.
#[test]
fn ipv6_block_with_except_over_dual_stack_pods() {
    // fd00::1:0/112 holds x's pods; the except removes x/b (fd00::1:2).
    let p = policy("y", "v6")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![ip_block("fd00::1:0/112", &["fd00::1:2/128"])],
            vec![],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("", "y/a", false)
        .expect("x/a", "y/a", true)
        .expect("x/c", "y/a", true)
        .check_families(&image, &state, PROTO_TCP, 80, &[true]);
    // Over IPv4 the v6 block allows nothing.
    all_pods(true)
        .expect("", "y/a", false)
        .check_families(&image, &state, PROTO_TCP, 80, &[false]);
    assert_eq!(
        image.identity_of(ip("fd00::1:2")),
        image.endpoints[&ip("fd00::1:2")].identity
    );
    let y_a = pod_addr(&state, "y/a", true);
    assert!(
        image
            .lookup(&packet(ip("fd00::1:ff"), y_a, PROTO_TCP, 80))
            .allowed()
    );
    assert!(
        !image
            .lookup(&packet(ip("fd00::2:ff"), y_a, PROTO_TCP, 80))
            .allowed()
    );
}

/// Peers with only one selector, `podSelector: {}` and `namespaceSelector: {}`.
#[test]
fn peers_with_one_selector_and_empty_selectors() {
    let only_ns = policy("x", "only-ns")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(Some(sel(&[("ns", "y")])), None)], vec![]))
        .build();
    let only_pod = policy("x", "only-pod")
        .select(sel(&[("pod", "b")]))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "c")])))], vec![]))
        .build();
    let empty_pod = policy("x", "empty-pod")
        .select(sel(&[("pod", "c")]))
        .ingress(rule(vec![pods(None, Some(sel(&[])))], vec![]))
        .build();
    let (state, image) = compiled(xyz().policies([only_ns, only_pod, empty_pod]));
    all_pods(true)
        // namespaceSelector alone: every pod of y.
        .expect("", "x/a", false)
        .expect("y", "x/a", true)
        // podSelector alone: pods of the policy's own namespace.
        .expect("", "x/b", false)
        .expect("x/c", "x/b", true)
        // podSelector {}: every pod of x.
        .expect("", "x/c", false)
        .expect("x", "x/c", true)
        .check(&image, &state, PROTO_TCP, 80);

    let all_ns = policy("x", "all-ns")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![pods(Some(sel(&[])), Some(sel(&[("pod", "b")])))],
            vec![],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(all_ns));
    all_pods(true)
        .expect("", "x/a", false)
        .expect("x/b", "x/a", true)
        .expect("y/b", "x/a", true)
        .expect("z/b", "x/a", true)
        .check(&image, &state, PROTO_TCP, 80);
}

/// Every operator, on pod and namespace selectors, including the
/// `kubernetes.io/metadata.name` label the API server puts on every namespace.
#[test]
fn every_operator_and_the_namespace_name_label() {
    let cases = [
        (expr("ns", Operator::In, &["y", "z"]), vec!["y", "z"]),
        (expr("ns", Operator::NotIn, &["y"]), vec!["x", "z"]),
        (expr("ns", Operator::Exists, &[]), vec!["x", "y", "z"]),
        (expr("ns", Operator::DoesNotExist, &[]), vec![]),
        (
            expr("kubernetes.io/metadata.name", Operator::In, &["z"]),
            vec!["z"],
        ),
        (sel(&[("kubernetes.io/metadata.name", "y")]), vec!["y"]),
    ];
    for (selector, namespaces) in cases {
        let p = policy("x", "ops")
            .select(sel(&[("pod", "a")]))
            .ingress(rule(
                vec![pods(
                    Some(selector.clone()),
                    Some(expr("pod", Operator::NotIn, &["c"])),
                )],
                vec![],
            ))
            .build();
        let (state, image) = compiled(xyz().policy(p));
        let mut expected = all_pods(true).expect("", "x/a", false);
        for ns in &namespaces {
            expected = expected
                .expect(ns, "x/a", true)
                .expect(&format!("{ns}/c"), "x/a", false);
        }
        expected.check(&image, &state, PROTO_TCP, 80);
    }
    // DoesNotExist on pods: only pods without the key; Exists on a key no pod has.
    let p = policy("x", "pod-ops")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![pods(None, Some(expr("pod", Operator::DoesNotExist, &[])))],
            vec![],
        ))
        .ingress(rule(
            vec![pods(None, Some(expr("missing", Operator::Exists, &[])))],
            vec![],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("", "x/a", false)
        .check(&image, &state, PROTO_TCP, 80);
}

/// `ingress: []` / absent with policyTypes, `ingress: [{}]`, egress-only and
/// ingress-only policies, and `egress: []` without policyTypes (no egress isolation).
#[test]
fn empty_and_absent_rule_lists_with_and_without_policy_types() {
    // policyTypes [Ingress, Egress] and no rules at all: deny both ways.
    let p = policy("x", "deny-both")
        .select(sel(&[("pod", "a")]))
        .types(&["Ingress", "Egress"])
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("", "x/a", false)
        .expect("x/a", "", false)
        .check(&image, &state, PROTO_TCP, 80);

    // Egress only, with an allow-all egress rule: ingress stays open.
    let p = policy("x", "egress-all")
        .select(sel(&[("pod", "a")]))
        .types(&["Egress"])
        .egress(allow_all())
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true).check(&image, &state, PROTO_TCP, 80);
    assert!(image.endpoints[&pod_addr(&state, "x/a", false)].isolated_egress);
    assert!(!image.endpoints[&pod_addr(&state, "x/a", false)].isolated_ingress);

    // Egress only, no rule: x/a may open nothing, but anyone may reach x/a.
    let p = policy("x", "egress-none")
        .select(sel(&[("pod", "a")]))
        .types(&["Egress"])
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("x/a", "", false)
        .check(&image, &state, PROTO_TCP, 80);

    // No policyTypes, `egress: []` (no egress rule): Ingress only, so egress is open.
    let p = policy("x", "defaulted")
        .select(sel(&[("pod", "a")]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("", "x/a", false)
        .check(&image, &state, PROTO_TCP, 80);

    // No policyTypes and an egress rule: both isolated; `ingress: [{}]` allows all in.
    let p = policy("x", "both")
        .select(sel(&[("pod", "a")]))
        .ingress(allow_all())
        .egress(rule(vec![pods(Some(sel(&[("ns", "y")])), None)], vec![]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("x/a", "", false)
        .expect("x/a", "y", true)
        .check(&image, &state, PROTO_TCP, 80);
}

/// Label changes on pods and namespaces change verdicts on the next compile.
#[test]
fn label_changes_on_pods_and_namespaces_change_verdicts() {
    let p = policy("x", "from-team-blue")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![pods(
                Some(sel(&[("team", "blue")])),
                Some(sel(&[("role", "client")])),
            )],
            vec![],
        ))
        .build();
    let (mut state, image) = compiled(xyz().policy(p));
    assert!(!v4(&image, &state, "y/b", "x/a", PROTO_TCP, 80));

    state
        .namespaces
        .get_mut("y")
        .unwrap()
        .labels
        .insert("team".into(), "blue".into());
    let image = netfence::compile::compile(&state, None);
    assert!(
        !v4(&image, &state, "y/b", "x/a", PROTO_TCP, 80),
        "namespace matches, pod not yet"
    );

    let y_b = state
        .pods
        .iter_mut()
        .find(|p| p.namespace == "y" && p.name == "b")
        .unwrap();
    y_b.labels.insert("role".into(), "client".into());
    let image = netfence::compile::compile(&state, None);
    assert!(v4(&image, &state, "y/b", "x/a", PROTO_TCP, 80));
    assert!(!v4(&image, &state, "y/c", "x/a", PROTO_TCP, 80));

    state.namespaces.get_mut("y").unwrap().labels.remove("team");
    let image = netfence::compile::compile(&state, None);
    assert!(
        !v4(&image, &state, "y/b", "x/a", PROTO_TCP, 80),
        "namespace label removed"
    );

    // The pod's own labels decide whether a policy selects it.
    let x_a = state
        .pods
        .iter_mut()
        .find(|p| p.namespace == "x" && p.name == "a")
        .unwrap();
    x_a.labels.insert("pod".into(), "renamed".into());
    let image = netfence::compile::compile(&state, None);
    assert!(
        v4(&image, &state, "y/b", "x/a", PROTO_TCP, 80),
        "x/a is no longer selected"
    );
}

/// Pods that are not endpoints: hostNetwork (never selected, its address is the
/// node's), no IP yet, and Succeeded/Failed (their IP may be reused: no identity).
#[test]
fn pods_that_are_not_endpoints() {
    let mut host = running_pod("y", "host", &[("pod", "a")], &["198.18.9.1"]);
    host.host_network = true;
    let mut pending = running_pod("y", "pending", &[("pod", "a")], &[]);
    pending.phase = PodPhase::Pending;
    let mut done = running_pod("y", "done", &[("pod", "a")], &["198.18.9.2"]);
    done.phase = PodPhase::Succeeded;
    let mut failed = running_pod("y", "failed", &[("pod", "a")], &["198.18.9.3"]);
    failed.phase = PodPhase::Failed;
    let deny_y = policy("y", "deny-all")
        .types(&["Ingress", "Egress"])
        .build();
    let allow_pod_a = policy("x", "from-pod-a")
        .select(sel(&[("pod", "b")]))
        .ingress(rule(
            vec![pods(Some(sel(&[])), Some(sel(&[("pod", "a")])))],
            vec![],
        ))
        .build();
    let builder = xyz()
        .pod_with(host)
        .pod_with(pending)
        .pod_with(done)
        .pod_with(failed)
        .policies([deny_y, allow_pod_a]);
    let (state, image) = compiled(builder);
    for addr in ["198.18.9.1", "198.18.9.2", "198.18.9.3"] {
        let addr = ip(addr);
        assert!(
            !image.endpoints.contains_key(&addr),
            "{addr} is no endpoint"
        );
        assert_eq!(
            image.identity_of(addr),
            IDENTITY_WORLD,
            "{addr} has no identity"
        );
        // Not selected by x's `pod: a` peer, although the labels match.
        let x_b = pod_addr(&state, "x/b", false);
        assert!(
            !image.lookup(&packet(addr, x_b, PROTO_TCP, 80)).allowed(),
            "{addr} -> x/b"
        );
        // Nothing isolates traffic to them (the deny-all of y does not select them).
        let x_c = pod_addr(&state, "x/c", false);
        assert!(
            image.lookup(&packet(x_c, addr, PROTO_TCP, 80)).allowed(),
            "x/c -> {addr}"
        );
    }
    assert!(
        image
            .identity_info
            .values()
            .all(|i| i.pods.iter().all(|p| p.starts_with("x/")
                || p.starts_with("z/")
                || ["y/a", "y/b", "y/c"].contains(&p.as_str())))
    );
    assert_eq!(image.endpoints.len(), 18);
}

/// ICMP and ICMPv6 reach an isolated pod only through a rule without ports.
#[test]
fn icmp_needs_a_rule_without_ports_in_both_families() {
    let ported = policy("x", "ported")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![], vec![tcp(80), proto_only(Protocol::Udp)]))
        .build();
    let open_to_b = policy("x", "open-to-b")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![]))
        .build();
    let (state, image) = compiled(xyz().policies([ported, open_to_b]));
    for (from, allowed) in [("x/b", true), ("x/c", false), ("y/b", false)] {
        assert_eq!(
            probe(&image, &state, from, "x/a", PROTO_ICMP, 0, false),
            allowed,
            "{from} ICMP"
        );
        assert_eq!(
            probe(&image, &state, from, "x/a", PROTO_ICMPV6, 0, true),
            allowed,
            "{from} ICMPv6"
        );
        assert!(
            probe(&image, &state, from, "x/a", PROTO_TCP, 80, true),
            "{from} TCP 80"
        );
    }
}

/// A pod whose IPv4 address is inside an ipBlock but whose IPv6 address is not: the
/// block decides per address, and so per family.
#[test]
fn ip_block_decides_per_address_of_a_dual_stack_pod() {
    let p = policy("x", "v4-only-block")
        .select(sel(&[("pod", "a")]))
        .types(&["Egress"])
        .egress(rule(vec![ip_block("198.18.2.0/24", &[])], vec![tcp(80)]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true)
        .expect("x/a", "", false)
        .expect("x/a", "y", true)
        .check_families(&image, &state, PROTO_TCP, 80, &[false]);
    all_pods(true)
        .expect("x/a", "", false)
        .check_families(&image, &state, PROTO_TCP, 80, &[true]);
}
