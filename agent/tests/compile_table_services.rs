//! Table tests of traffic that is not plain pod-to-pod, through `compile_node` and
//! `Image::lookup`: Service ClusterIPs (egress to a VIP follows the backends it fronts),
//! the node's own addresses (`--allow-node`), and audit-mode policies (which directions
//! they decide, and that an enforcing policy always wins).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common_state;

use common_state::*;
use netfence::compile::{NodeContext, compile_node};
use netfence::image::{DirectionVerdict, Image};
use netfence::model::{Protocol, State};
use netfence_common::{DIR_EGRESS, DIR_INGRESS, IDENTITY_HOST, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

const WEB_VIP: &str = "198.19.200.1";
const OTHER_VIP: &str = "198.19.200.2";
const DNS_VIP: &str = "198.19.200.10";
const NODE_ADDR: &str = "198.18.0.254";

/// x/a may send only to z/b on TCP 80 (and, through `extra`, more).
fn x_a_egress_to_z_b() -> netfence::model::Policy {
    policy("x", "to-z-b")
        .select(sel(&[("pod", "a")]))
        .egress(rule(
            vec![pods(Some(sel(&[("ns", "z")])), Some(sel(&[("pod", "b")])))],
            vec![tcp(80)],
        ))
        .types(&["Egress"])
        .build()
}

/// Service z/web on `WEB_VIP`:8080 → `target`, selecting `pod=<backend>`; z/other on
/// `OTHER_VIP`:8080 → 80 selecting pod=c.
fn with_services(builder: StateBuilder, backend: &str, target: &str) -> StateBuilder {
    builder
        .service(service(
            "z",
            "web",
            &[WEB_VIP],
            Some(&[("pod", backend)]),
            vec![service_port(Some("http"), Protocol::Tcp, 8080, target)],
        ))
        .service(service(
            "z",
            "other",
            &[OTHER_VIP],
            Some(&[("pod", "c")]),
            vec![service_port(None, Protocol::Tcp, 8080, "80")],
        ))
}

fn to_vip(image: &Image, state: &State, from: &str, vip: &str, protocol: u8, port: u16) -> bool {
    let src = pod_addr(state, from, false);
    image
        .lookup(&packet(src, ip(vip), protocol, port))
        .allowed()
}

#[test]
fn egress_to_a_vip_follows_its_backends() {
    let (state, image) = compiled(with_services(xyz().policy(x_a_egress_to_z_b()), "b", "80"));
    // (from, vip, port, allowed)
    let table = [
        ("x/a", WEB_VIP, 8080, true),    // fronts z/b:80, which the rule allows
        ("x/a", WEB_VIP, 80, false),     // the VIP on the target port is no Service port
        ("x/a", WEB_VIP, 8081, false),   // another port of the VIP
        ("x/a", OTHER_VIP, 8080, false), // fronts z/c, not allowed
        ("y/a", OTHER_VIP, 8080, true),  // y/a is not egress-isolated
    ];
    for (from, vip, port, allowed) in table {
        assert_eq!(
            to_vip(&image, &state, from, vip, PROTO_TCP, port),
            allowed,
            "{from} -> {vip}:{port}"
        );
    }
    // The VIP entry counts under the rule that allows the backend.
    let x_a = pod_addr(&state, "x/a", false);
    let verdict = image.lookup(&packet(x_a, ip(WEB_VIP), PROTO_TCP, 8080));
    let rule = match verdict.egress {
        DirectionVerdict::Allowed { rule } => rule,
        other => panic!("expected an allow, got {other:?}"),
    };
    let info = &image.rules[&rule];
    assert_eq!(
        (info.policy.as_str(), info.direction, info.index),
        ("to-z-b", DIR_EGRESS, 0)
    );
    // The VIP has an identity of its own, described as the Service.
    let vip_identity = image.identity_of(ip(WEB_VIP));
    assert_eq!(
        image.identity_info[&vip_identity].service.as_deref(),
        Some("z/web")
    );
    assert!(image.identity_info[&vip_identity].pods.is_empty());
}

#[test]
fn named_target_port_resolves_per_backend_pod() {
    // targetPort `serve-80-tcp` is 80 on every xyz pod.
    let (state, image) = compiled(with_services(
        xyz().policy(x_a_egress_to_z_b()),
        "b",
        "serve-80-tcp",
    ));
    assert!(to_vip(&image, &state, "x/a", WEB_VIP, PROTO_TCP, 8080));
    // `serve-81-tcp` resolves to 81, which the rule does not allow.
    let (state, image) = compiled(with_services(
        xyz().policy(x_a_egress_to_z_b()),
        "b",
        "serve-81-tcp",
    ));
    assert!(!to_vip(&image, &state, "x/a", WEB_VIP, PROTO_TCP, 8080));
    // A name no backend declares gives no backend.
    let (state, image) = compiled(with_services(
        xyz().policy(x_a_egress_to_z_b()),
        "b",
        "nope",
    ));
    assert!(!to_vip(&image, &state, "x/a", WEB_VIP, PROTO_TCP, 8080));
}

#[test]
fn endpoint_slices_decide_the_backends_and_their_changes() {
    let slice = |endpoints: &[(&str, bool)]| {
        endpoint_slice(
            "z",
            "web-abc",
            "web",
            &[(Some("http"), Protocol::Tcp, 80)],
            endpoints,
        )
    };
    // The selector picks z/b, but the slice (what kube-proxy uses) lists only z/c.
    let base = || with_services(xyz().policy(x_a_egress_to_z_b()), "b", "80");
    let (state, image) = compiled(base().slice(slice(&[("198.18.3.3", true)])));
    assert!(!to_vip(&image, &state, "x/a", WEB_VIP, PROTO_TCP, 8080));
    // Endpoints change: z/b joins, ready.
    let (state, image2) =
        compiled(base().slice(slice(&[("198.18.3.3", true), ("198.18.3.2", true)])));
    assert!(to_vip(&image2, &state, "x/a", WEB_VIP, PROTO_TCP, 8080));
    let x_a = pod_addr(&state, "x/a", false);
    assert_ne!(
        image.endpoints[&x_a].policy, image2.endpoints[&x_a].policy,
        "an endpoints change switches the endpoint policy in one write"
    );
    // A not-ready endpoint is no backend.
    let (state, image) = compiled(base().slice(slice(&[("198.18.3.2", false)])));
    assert!(!to_vip(&image, &state, "x/a", WEB_VIP, PROTO_TCP, 8080));
    // The slice port of another name does not serve port `http`.
    let other_port = endpoint_slice(
        "z",
        "web-abc",
        "web",
        &[(Some("admin"), Protocol::Tcp, 80)],
        &[("198.18.3.2", true)],
    );
    let (state, image) = compiled(base().slice(other_port));
    assert!(!to_vip(&image, &state, "x/a", WEB_VIP, PROTO_TCP, 8080));
}

#[test]
fn dns_rule_allows_kube_dns_vip_on_udp_and_tcp_53() {
    let dns = policy("x", "allow-dns")
        .select(sel(&[]))
        .egress(rule(
            vec![pods(
                Some(sel(&[("kubernetes.io/metadata.name", "kube-system")])),
                Some(sel(&[("k8s-app", "kube-dns")])),
            )],
            vec![udp(53), tcp(53)],
        ))
        .types(&["Egress"])
        .build();
    let builder = xyz()
        .namespace("kube-system", &[])
        .pod(
            "kube-system",
            "coredns-1",
            &[("k8s-app", "kube-dns")],
            &["198.18.9.10"],
        )
        .policy(dns)
        .service(service(
            "kube-system",
            "kube-dns",
            &[DNS_VIP],
            Some(&[("k8s-app", "kube-dns")]),
            vec![
                service_port(Some("dns"), Protocol::Udp, 53, "53"),
                service_port(Some("dns-tcp"), Protocol::Tcp, 53, "53"),
            ],
        ));
    let (state, image) = compiled(builder);
    for (protocol, port, allowed) in [
        (PROTO_UDP, 53, true),
        (PROTO_TCP, 53, true),
        (PROTO_UDP, 54, false),
        (PROTO_ICMP, 0, false),
    ] {
        assert_eq!(
            to_vip(&image, &state, "x/b", DNS_VIP, protocol, port),
            allowed,
            "proto {protocol} port {port}"
        );
    }
    // The rule allows nothing else: x/b to another pod is denied.
    assert!(!v4(&image, &state, "x/b", "y/a", PROTO_UDP, 53));
}

#[test]
fn ip_block_covering_a_vip_matches_it() {
    // Implementation-defined upstream; here a VIP is an address like any other for
    // ipBlocks (an `except` can carve it out).
    let p = policy("x", "to-block")
        .select(sel(&[("pod", "a")]))
        .egress(rule(
            vec![ip_block("198.19.200.0/24", &[OTHER_VIP_32])],
            vec![],
        ))
        .types(&["Egress"])
        .build();
    let (state, image) = compiled(with_services(xyz().policy(p), "b", "80"));
    assert!(to_vip(&image, &state, "x/a", WEB_VIP, PROTO_TCP, 8080));
    assert!(to_vip(&image, &state, "x/a", WEB_VIP, PROTO_UDP, 9));
    assert!(!to_vip(&image, &state, "x/a", OTHER_VIP, PROTO_TCP, 8080));
}

const OTHER_VIP_32: &str = "198.19.200.2/32";

fn compiled_on_node(state: &State, addresses: &[&str], allow_node: bool) -> Image {
    let addresses: Vec<_> = addresses.iter().map(|a| ip(a)).collect();
    compile_node(
        state,
        &NodeContext {
            name: None,
            addresses: &addresses,
            allow_node,
            audit_all: false,
            announced: &[],
        },
    )
}

#[test]
fn node_addresses_pass_both_ways_unless_allow_node_is_false() {
    let deny_all = policy("x", "deny-all")
        .select(sel(&[]))
        .types(&["Ingress", "Egress"])
        .build();
    let state = xyz().policy(deny_all).build();
    let x_a = pod_addr(&state, "x/a", false);
    let node = ip(NODE_ADDR);
    let node_v6 = ip("fd00::ff:1");

    let image = compiled_on_node(&state, &[NODE_ADDR, "fd00::ff:1", "127.0.0.1"], true);
    assert_eq!(image.identity_of(node), IDENTITY_HOST);
    assert_eq!(image.identity_of(node_v6), IDENTITY_HOST);
    // Loopback never reaches a veth and gets no entry.
    assert!(!image.identities.contains_key(&net("127.0.0.1/32")));
    // (src, dst, protocol, port, allowed): a kubelet probe, ping, the pod calling the
    // node, and a pod-to-pod connection that stays denied.
    let table = [
        (node, x_a, PROTO_TCP, 8080, true),
        (node, x_a, PROTO_ICMP, 0, true),
        (x_a, node, PROTO_UDP, 53, true),
        (node_v6, pod_addr(&state, "x/a", true), PROTO_TCP, 80, true),
        (pod_addr(&state, "y/a", false), x_a, PROTO_TCP, 80, false),
    ];
    for (src, dst, protocol, port, allowed) in table {
        assert_eq!(
            image.lookup(&packet(src, dst, protocol, port)).allowed(),
            allowed,
            "{src} -> {dst} proto {protocol} port {port}"
        );
    }
    let verdict = image.lookup(&packet(node, x_a, PROTO_TCP, 8080));
    let DirectionVerdict::Allowed { rule } = verdict.ingress else {
        panic!("expected an allow, got {verdict:?}");
    };
    assert_eq!(image.rules[&rule].policy, "(allow-node)");
    assert_eq!(image.rules[&rule].direction, DIR_INGRESS);

    // --allow-node=false: the node is an address like any other.
    let image = compiled_on_node(&state, &[NODE_ADDR], false);
    assert_ne!(image.identity_of(node), IDENTITY_HOST);
    assert!(!image.lookup(&packet(node, x_a, PROTO_TCP, 8080)).allowed());
    assert!(!image.lookup(&packet(x_a, node, PROTO_UDP, 53)).allowed());
    assert!(image.rules.values().all(|r| r.policy != "(allow-node)"));
}

#[test]
fn node_address_that_is_a_vip_or_a_pod_keeps_its_identity() {
    // kube-proxy's IPVS mode puts every ClusterIP on a node interface (kube-ipvs0):
    // those stay VIPs, or every pod could reach every Service through "node" traffic.
    let state = with_services(xyz().policy(x_a_egress_to_z_b()), "c", "80").build();
    let image = compiled_on_node(&state, &[NODE_ADDR, WEB_VIP, "198.18.1.2"], true);
    assert_eq!(image.identity_of(ip(NODE_ADDR)), IDENTITY_HOST);
    assert_ne!(image.identity_of(ip(WEB_VIP)), IDENTITY_HOST);
    assert_ne!(image.identity_of(ip("198.18.1.2")), IDENTITY_HOST);
    assert!(!to_vip(&image, &state, "x/a", WEB_VIP, PROTO_TCP, 8080));
}

#[test]
fn audit_policies_decide_a_direction_only_when_no_enforcing_policy_does() {
    let audit_only_b = policy("x", "audit-from-b")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![]))
        .audit()
        .build();
    let enforce_from_c = policy("x", "enforce-from-c")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "c")])))], vec![]))
        .build();
    let endpoint_policy = |image: &Image, state: &State| {
        let x_a = pod_addr(state, "x/a", false);
        image.endpoints[&x_a].clone()
    };
    let allowed_by_entries = |image: &Image, state: &State, from: &str| {
        let ep = endpoint_policy(image, state);
        let peer = image.identity_of(pod_addr(state, from, false));
        image
            .policy_lookup(ep.policy, peer, DIR_INGRESS, PROTO_TCP, 80)
            .is_some()
    };

    // Audit policy alone: ingress is audited, decided by its rules.
    let (state, image) = compiled(xyz().policy(audit_only_b.clone()));
    let ep = endpoint_policy(&image, &state);
    assert!(ep.isolated_ingress && ep.audit_ingress);
    assert!(!ep.isolated_egress && !ep.audit_egress);
    assert!(allowed_by_entries(&image, &state, "x/b"));
    assert!(!allowed_by_entries(&image, &state, "x/c"));
    assert_eq!(
        image.endpoint_policies[&ep.policy].ingress,
        vec!["x/audit-from-b".to_owned()]
    );

    // With an enforcing policy too: enforced, and only the enforcing policy's rules
    // count (the audit policy's allow of x/b has no effect).
    let (state, image) = compiled(
        xyz()
            .policy(audit_only_b.clone())
            .policy(enforce_from_c.clone()),
    );
    let ep = endpoint_policy(&image, &state);
    assert!(ep.isolated_ingress && !ep.audit_ingress);
    assert!(!allowed_by_entries(&image, &state, "x/b"));
    assert!(allowed_by_entries(&image, &state, "x/c"));
    assert_eq!(
        image.endpoint_policies[&ep.policy].ingress,
        vec!["x/enforce-from-c".to_owned()]
    );

    // An audit policy on egress and an enforcing one on ingress: each direction on its own.
    let audit_egress = policy("x", "audit-egress")
        .select(sel(&[("pod", "a")]))
        .egress(rule(vec![], vec![udp(53)]))
        .types(&["Egress"])
        .audit()
        .build();
    let (state, image) = compiled(xyz().policy(audit_egress).policy(enforce_from_c));
    let ep = endpoint_policy(&image, &state);
    assert!(ep.isolated_ingress && !ep.audit_ingress);
    assert!(ep.isolated_egress && ep.audit_egress);

    // The same policy without the annotation: enforced, another endpoint policy id.
    let (state, enforced) = compiled(xyz().policy({
        let mut p = audit_only_b;
        p.audit = false;
        p
    }));
    let ep2 = endpoint_policy(&enforced, &state);
    assert!(ep2.isolated_ingress && !ep2.audit_ingress);
    let (_, audited) = compiled(
        xyz().policy(
            policy("x", "audit-from-b")
                .select(sel(&[("pod", "a")]))
                .ingress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![]))
                .audit()
                .build(),
        ),
    );
    assert_ne!(ep2.policy, endpoint_policy(&audited, &state).policy);
}
