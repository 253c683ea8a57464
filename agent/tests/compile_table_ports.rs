//! Table tests of NetworkPolicy ports through `compile` and `Image::lookup` (the x, y,
//! z × a, b, c cluster of `compile_table`): numeric ports and protocols, endPort
//! ranges, protocol-only ports, ICMP, and named ports resolved per pod.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common_state;

use common_state::*;
use netfence::image::DirectionVerdict;
use netfence::model::{LabelSelector, Protocol};
use netfence_common::{IDENTITY_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

#[test]
fn ports_protocols_and_tcp_default() {
    let p = policy("x", "tcp-80")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![], vec![tcp(80)]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true).check(&image, &state, PROTO_TCP, 80);
    all_pods(true)
        .expect("", "x/a", false)
        .check(&image, &state, PROTO_TCP, 81);
    all_pods(true)
        .expect("", "x/a", false)
        .check(&image, &state, PROTO_UDP, 80);
    all_pods(true)
        .expect("", "x/a", false)
        .check(&image, &state, PROTO_SCTP, 80);
    assert_eq!(image.policy.len(), 1);
    let entry = image.policy.keys().next().unwrap();
    assert_eq!(
        (entry.peer, entry.protocol, entry.port, entry.port_bits),
        (IDENTITY_ANY, PROTO_TCP, 80, 16)
    );
}

#[test]
fn udp_rule_does_not_allow_tcp() {
    let p = policy("x", "udp-53")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![], vec![udp(53)]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    assert!(v4(&image, &state, "y/a", "x/a", PROTO_UDP, 53));
    assert!(!v4(&image, &state, "y/a", "x/a", PROTO_TCP, 53));
    assert!(!v4(&image, &state, "y/a", "x/a", PROTO_UDP, 54));
}

#[test]
fn end_port_range_boundaries() {
    let p = policy("x", "range")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![], vec![port_range(Protocol::Tcp, 32000, 32768)]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    for (port, allowed) in [
        (31999, false),
        (32000, true),
        (32001, true),
        (32511, true),
        (32767, true),
        (32768, true),
        (32769, false),
        (80, false),
    ] {
        assert_eq!(
            v4(&image, &state, "y/a", "x/a", PROTO_TCP, port),
            allowed,
            "port {port}"
        );
        assert!(
            !v4(&image, &state, "y/a", "x/a", PROTO_UDP, port),
            "udp port {port}"
        );
    }
    // [32000, 32768] = 32000/8 ∪ 32256/7 ∪ 32768/16: one entry each.
    let prefixes: Vec<(u16, u8)> = image.policy.keys().map(|e| (e.port, e.port_bits)).collect();
    assert_eq!(prefixes, vec![(32000, 8), (32256, 7), (32768, 16)]);
}

#[test]
fn protocol_only_allows_every_port_of_that_protocol() {
    let p = policy("x", "udp-any")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![], vec![proto_only(Protocol::Udp)]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    for port in [1, 53, 65535] {
        assert!(v4(&image, &state, "y/a", "x/a", PROTO_UDP, port));
        assert!(!v4(&image, &state, "y/a", "x/a", PROTO_TCP, port));
    }
    assert!(!v4(&image, &state, "y/a", "x/a", PROTO_ICMP, 0));
    let entry = image.policy.keys().next().unwrap();
    assert_eq!((entry.protocol, entry.port_bits), (PROTO_UDP, 0));
}

#[test]
fn icmp_is_allowed_only_by_a_rule_without_ports() {
    let p = policy("x", "icmp")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![pods(None, Some(sel(&[("pod", "b")])))],
            vec![tcp(80)],
        ))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "c")])))], vec![]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    assert!(!probe(&image, &state, "x/b", "x/a", PROTO_ICMP, 0, false));
    assert!(!probe(&image, &state, "x/b", "x/a", PROTO_ICMPV6, 0, true));
    assert!(probe(&image, &state, "x/b", "x/a", PROTO_TCP, 80, false));
    assert!(probe(&image, &state, "x/c", "x/a", PROTO_ICMP, 0, false));
    assert!(probe(&image, &state, "x/c", "x/a", PROTO_ICMPV6, 0, true));
    assert!(probe(&image, &state, "x/c", "x/a", PROTO_TCP, 9999, false));
    assert!(!probe(&image, &state, "y/c", "x/a", PROTO_ICMP, 0, false));
}

#[test]
fn ingress_named_ports_resolve_per_destination_pod() {
    let mut d = running_pod("z", "d", &[("app", "web")], &["198.18.3.4"]);
    d.ports = vec![container_port("http", Protocol::Tcp, 8080)];
    let mut e = running_pod("z", "e", &[("app", "web")], &["198.18.3.5"]);
    e.ports = vec![container_port("http", Protocol::Tcp, 9090)];
    let f = running_pod("z", "f", &[("app", "web")], &["198.18.3.6"]);
    let p = policy("z", "web-http")
        .select(sel(&[("app", "web")]))
        .ingress(rule(vec![], vec![named(Protocol::Tcp, "http")]))
        .build();
    let upstream = policy("x", "serve-80")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![],
            vec![
                named(Protocol::Tcp, "serve-80-tcp"),
                named(Protocol::Udp, "serve-81-udp"),
            ],
        ))
        .build();
    let (state, image) = compiled(
        xyz()
            .pod_with(d)
            .pod_with(e)
            .pod_with(f)
            .policy(p)
            .policy(upstream),
    );
    assert!(v4(&image, &state, "x/a", "z/d", PROTO_TCP, 8080));
    assert!(!v4(&image, &state, "x/a", "z/d", PROTO_TCP, 9090));
    assert!(v4(&image, &state, "x/a", "z/e", PROTO_TCP, 9090));
    assert!(!v4(&image, &state, "x/a", "z/e", PROTO_TCP, 8080));
    assert!(
        !v4(&image, &state, "x/a", "z/f", PROTO_TCP, 8080),
        "a name the pod does not declare allows nothing"
    );
    // Same policies, different mappings: three endpoint policies for d, e, f.
    let policy_of = |pod: &str| image.endpoints[&pod_addr(&state, pod, false)].policy;
    assert_ne!(policy_of("z/d"), policy_of("z/e"));
    assert_ne!(policy_of("z/d"), policy_of("z/f"));
    // Same labels, and no egress rule names a port: one identity for the three.
    assert_eq!(
        image.identity_of(ip("198.18.3.4")),
        image.identity_of(ip("198.18.3.5"))
    );
    assert!(probe(&image, &state, "y/b", "x/a", PROTO_TCP, 80, true));
    assert!(!probe(&image, &state, "y/b", "x/a", PROTO_TCP, 81, true));
    assert!(probe(&image, &state, "y/b", "x/a", PROTO_UDP, 81, false));
    assert!(!probe(&image, &state, "y/b", "x/a", PROTO_UDP, 80, false));
}

#[test]
fn egress_named_ports_resolve_per_peer_pod() {
    let mut d = running_pod("z", "d", &[("app", "web")], &["198.18.3.4"]);
    d.ports = vec![container_port("http", Protocol::Tcp, 8080)];
    let mut e = running_pod("z", "e", &[("app", "web")], &["198.18.3.5"]);
    e.ports = vec![container_port("http", Protocol::Tcp, 9090)];
    let to_web = policy("x", "to-web")
        .select(sel(&[("pod", "a")]))
        .egress(rule(
            vec![pods(
                Some(LabelSelector::default()),
                Some(sel(&[("app", "web")])),
            )],
            vec![named(Protocol::Tcp, "http")],
        ))
        .types(&["Egress"])
        .build();
    let to_any = policy("x", "to-any")
        .select(sel(&[("pod", "b")]))
        .egress(rule(vec![], vec![named(Protocol::Tcp, "serve-81-tcp")]))
        .types(&["Egress"])
        .build();
    let (state, image) = compiled(xyz().pod_with(d).pod_with(e).policy(to_web).policy(to_any));
    assert!(v4(&image, &state, "x/a", "z/d", PROTO_TCP, 8080));
    assert!(!v4(&image, &state, "x/a", "z/d", PROTO_TCP, 9090));
    assert!(v4(&image, &state, "x/a", "z/e", PROTO_TCP, 9090));
    assert!(!v4(&image, &state, "x/a", "y/a", PROTO_TCP, 80));
    // Peer identities split by their named ports now.
    assert_ne!(
        image.identity_of(ip("198.18.3.4")),
        image.identity_of(ip("198.18.3.5"))
    );
    // No `to`: every pod declaring the name, on its port; nothing outside the cluster.
    // (x/a is egress-isolated by `to-web`, whose peers are not in this table.)
    all_pods(true)
        .expect("x/a", "", false)
        .check(&image, &state, PROTO_TCP, 81);
    all_pods(true)
        .expect("x/a", "", false)
        .expect("x/b", "", false)
        .check(&image, &state, PROTO_TCP, 80);
    assert!(!v4(&image, &state, "x/b", "z/d", PROTO_TCP, 8080));
    let out = image.lookup(&packet(
        pod_addr(&state, "x/b", false),
        ip("198.19.0.1"),
        PROTO_TCP,
        81,
    ));
    assert_eq!(out.egress, DirectionVerdict::Denied);
}
