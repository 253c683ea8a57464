//! Table tests of NetworkPolicy semantics through `compile` and `Image::lookup`, in the
//! style of the upstream e2e "netpol" matrix (namespaces x, y, z × pods a, b, c) and of
//! kube-network-policies: each test states policies, probes every pair (IPv4 and IPv6)
//! and asserts the verdicts and the shape of the image.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common_state;

use common_state::*;
use netfence::compile::{compile, defaulted_policy_types};
use netfence::image::{DirectionVerdict, Image};
use netfence::model::{LabelSelector, Operator, PodPhase, Protocol, State};
use netfence_common::{IDENTITY_ANY, IDENTITY_WORLD, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

fn compiled(builder: StateBuilder) -> (State, Image) {
    let state = builder.build();
    let image = compile(&state, None);
    (state, image)
}

fn all_pods(allowed: bool) -> Reachability {
    Reachability::new(&XYZ_PODS, allowed)
}

/// A new connection from `from` (pod or address) to `to` over IPv4.
fn v4(image: &Image, state: &State, from: &str, to: &str, protocol: u8, port: u16) -> bool {
    probe(image, state, from, to, protocol, port, false)
}

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
    assert!(image.endpoints.values().all(|e| e.policy == 0 && !e.isolated_ingress && !e.isolated_egress));
    assert!(image.policy.is_empty() && image.endpoint_policies.is_empty());
    let a = pod_addr(&state, "x/a", false);
    assert_eq!(image.lookup(&packet(a, pod_addr(&state, "y/b", false), PROTO_TCP, 80)).egress, DirectionVerdict::NotIsolated);
}

#[test]
fn default_deny_ingress() {
    let p = policy("x", "deny-ingress").types(&["Ingress"]).build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true).expect("", "x", false).check(&image, &state, PROTO_TCP, 80);
    all_pods(true).expect("", "x", false).check(&image, &state, PROTO_UDP, 80);
    assert_eq!(image.endpoint_policies.len(), 1);
    assert!(image.policy.is_empty(), "a policy without rules has no entries");
    let x_a = &image.endpoints[&pod_addr(&state, "x/a", false)];
    assert!(x_a.isolated_ingress && !x_a.isolated_egress && x_a.policy != 0);
    assert_eq!(image.endpoints.values().filter(|e| e.policy != 0).count(), 6);
}

#[test]
fn default_deny_egress() {
    let p = policy("x", "deny-egress").types(&["Egress"]).build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true).expect("x", "", false).check(&image, &state, PROTO_TCP, 80);
    let verdict = image.lookup(&packet(pod_addr(&state, "x/a", false), ip("198.19.0.1"), PROTO_TCP, 443));
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
    all_pods(true).expect("", "x/a", false).expect("x/b", "x/a", true).check(&image, &state, PROTO_TCP, 80);
    // The peer set is the one identity of x/b: one entry.
    assert_eq!(image.policy.len(), 1);
    let entry = image.policy.keys().next().unwrap();
    assert_eq!(entry.peer, image.endpoints[&pod_addr(&state, "x/b", false)].identity);
    assert_eq!((entry.protocol, entry.port_bits), (0, 0));
}

#[test]
fn allow_from_namespace_selector() {
    let p = policy("x", "allow-y")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(Some(sel(&[("ns", "y")])), None)], vec![]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true).expect("", "x/a", false).expect("y", "x/a", true).check(&image, &state, PROTO_TCP, 80);
}

#[test]
fn selectors_in_one_peer_are_anded() {
    let p = policy("x", "and")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(Some(sel(&[("ns", "y")])), Some(sel(&[("pod", "b")])))], vec![]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true).expect("", "x/a", false).expect("y/b", "x/a", true).check(&image, &state, PROTO_TCP, 80);
}

#[test]
fn separate_peers_are_ored() {
    let p = policy("x", "or")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(Some(sel(&[("ns", "y")])), None), pods(None, Some(sel(&[("pod", "b")])))], vec![]))
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
        .ingress(rule(vec![pods(Some(LabelSelector::default()), Some(sel(&[("pod", "b")])))], vec![]))
        .build();
    let (state, image) = compiled(xyz().policy(b_anywhere));
    all_pods(true)
        .expect("", "x/a", false)
        .expect("x/b", "x/a", true)
        .expect("y/b", "x/a", true)
        .expect("z/b", "x/a", true)
        .check(&image, &state, PROTO_TCP, 80);

    let everyone = policy("x", "everyone").ingress(rule(vec![pods(Some(LabelSelector::default()), None)], vec![])).build();
    let (state, image) = compiled(xyz().policy(everyone));
    all_pods(true).check(&image, &state, PROTO_TCP, 80);
    // ...but not an address outside the cluster.
    let outside = image.lookup(&packet(ip("198.19.0.1"), pod_addr(&state, "x/a", false), PROTO_TCP, 80));
    assert_eq!(outside.ingress, DirectionVerdict::Denied);
}

#[test]
fn match_expressions_select_pods_and_namespaces() {
    let p = policy("x", "exprs")
        .select(expr("pod", Operator::In, &["a", "b"]))
        .ingress(rule(vec![pods(Some(expr("ns", Operator::NotIn, &["y"])), Some(expr("pod", Operator::Exists, &[])))], vec![]))
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
fn ip_block_with_except_covers_pod_ips() {
    let p = policy("x", "block")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![ip_block("198.18.0.0/16", &["198.18.2.0/24"])], vec![]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    // IPv4: x and z pods are inside the block, y's are excepted.
    all_pods(true).expect("", "x/a", false).expect("x", "x/a", true).expect("z", "x/a", true).check_families(
        &image,
        &state,
        PROTO_TCP,
        80,
        &[false],
    );
    // IPv6 addresses are in no IPv4 block.
    all_pods(true).expect("", "x/a", false).check_families(&image, &state, PROTO_TCP, 80, &[true]);
    let x_a = pod_addr(&state, "x/a", false);
    assert!(image.lookup(&packet(ip("198.18.200.9"), x_a, PROTO_TCP, 80)).allowed());
    assert!(!image.lookup(&packet(ip("198.18.2.200"), x_a, PROTO_TCP, 80)).allowed());
    assert!(!image.lookup(&packet(ip("198.19.0.1"), x_a, PROTO_TCP, 80)).allowed());
    assert_eq!(image.identity_of(ip("198.18.2.200")), IDENTITY_WORLD);
    // Identities: x and z pods split by family (the v4 address is in the block, the v6
    // one is not): 12; y pods keep one each: 3; the block's own region: 1.
    assert_eq!(image.identity_info.len(), 16);
    // Trie: 18 pod addresses, the cidr, and the except written as world.
    assert_eq!(image.identities.len(), 20);
    assert_eq!(image.identities[&net("198.18.2.0/24")], IDENTITY_WORLD);
    // The rule expands to the 6 in-block pod identities and the region: 7 entries.
    assert_eq!(image.policy.len(), 7);
}

#[test]
fn ipv6_ip_block_and_ipv6_only_pod() {
    let p = policy("x", "v6-block")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![ip_block("fd00::2:0/112", &["fd00::2:2/128"])], vec![]))
        .build();
    let v6_only = running_pod("x", "v6", &[("pod", "v6")], &["fd00::1:99"]);
    let (state, image) = compiled(xyz().pod_with(v6_only).policy(p));
    assert!(probe(&image, &state, "y/a", "x/a", PROTO_TCP, 80, true));
    assert!(!probe(&image, &state, "y/b", "x/a", PROTO_TCP, 80, true));
    assert!(probe(&image, &state, "y/c", "x/a", PROTO_TCP, 80, true));
    assert!(!probe(&image, &state, "y/a", "x/a", PROTO_TCP, 80, false));
    assert!(!probe(&image, &state, "x/v6", "x/a", PROTO_TCP, 80, true));
    assert!(probe(&image, &state, "x/a", "x/v6", PROTO_TCP, 80, true));
    assert!(image.endpoints.contains_key(&ip("fd00::1:99")));
}

#[test]
fn ports_protocols_and_tcp_default() {
    let p = policy("x", "tcp-80")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![], vec![tcp(80)]))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    all_pods(true).check(&image, &state, PROTO_TCP, 80);
    all_pods(true).expect("", "x/a", false).check(&image, &state, PROTO_TCP, 81);
    all_pods(true).expect("", "x/a", false).check(&image, &state, PROTO_UDP, 80);
    all_pods(true).expect("", "x/a", false).check(&image, &state, PROTO_SCTP, 80);
    assert_eq!(image.policy.len(), 1);
    let entry = image.policy.keys().next().unwrap();
    assert_eq!((entry.peer, entry.protocol, entry.port, entry.port_bits), (IDENTITY_ANY, PROTO_TCP, 80, 16));
}

#[test]
fn udp_rule_does_not_allow_tcp() {
    let p = policy("x", "udp-53").select(sel(&[("pod", "a")])).ingress(rule(vec![], vec![udp(53)])).build();
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
    for (port, allowed) in [(31999, false), (32000, true), (32001, true), (32511, true), (32767, true), (32768, true), (32769, false), (80, false)] {
        assert_eq!(v4(&image, &state, "y/a", "x/a", PROTO_TCP, port), allowed, "port {port}");
        assert!(!v4(&image, &state, "y/a", "x/a", PROTO_UDP, port), "udp port {port}");
    }
    // [32000, 32768] = 32000/8 ∪ 32256/7 ∪ 32768/16: one entry each.
    let prefixes: Vec<(u16, u8)> = image.policy.keys().map(|e| (e.port, e.port_bits)).collect();
    assert_eq!(prefixes, vec![(32000, 8), (32256, 7), (32768, 16)]);
}

#[test]
fn protocol_only_allows_every_port_of_that_protocol() {
    let p = policy("x", "udp-any").select(sel(&[("pod", "a")])).ingress(rule(vec![], vec![proto_only(Protocol::Udp)])).build();
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
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![tcp(80)]))
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
fn ingress_empty_rule_allows_all_and_policies_add_up() {
    let deny = policy("x", "deny").types(&["Ingress"]).build();
    let allow = policy("x", "allow-all").select(sel(&[("pod", "a")])).ingress(allow_all()).build();
    let (state, image) = compiled(xyz().policy(deny).policy(allow));
    all_pods(true).expect("", "x", false).expect("", "x/a", true).check(&image, &state, PROTO_TCP, 80);
    assert!(image.lookup(&packet(ip("198.19.0.1"), pod_addr(&state, "x/a", false), PROTO_UDP, 5)).allowed());
    // x/a is selected by {deny, allow-all}, x/b and x/c by {deny}: two endpoint policies.
    assert_eq!(image.endpoint_policies.len(), 2);
    let x_a = &image.endpoints[&pod_addr(&state, "x/a", false)];
    assert_eq!(image.endpoint_policies[&x_a.policy].ingress, vec!["x/allow-all".to_owned(), "x/deny".to_owned()]);
    assert_eq!(image.endpoints[&pod_addr(&state, "x/b", false)].policy, image.endpoints[&pod_addr(&state, "x/c", false)].policy);
}

#[test]
fn several_policies_add_up_with_their_own_rules() {
    let from_b = policy("x", "from-b")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![tcp(80)]))
        .build();
    let from_y = policy("x", "from-y")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![pods(Some(sel(&[("ns", "y")])), None)], vec![tcp(80)]))
        .build();
    let (state, image) = compiled(xyz().policy(from_b).policy(from_y));
    all_pods(true).expect("", "x/a", false).expect("x/b", "x/a", true).expect("y", "x/a", true).check(
        &image,
        &state,
        PROTO_TCP,
        80,
    );
    let verdict = image.lookup(&packet(pod_addr(&state, "y/c", false), pod_addr(&state, "x/a", false), PROTO_TCP, 80));
    let DirectionVerdict::Allowed { rule } = verdict.ingress else { panic!("{verdict:?}") };
    assert_eq!((image.rules[&rule].policy.as_str(), image.rules[&rule].index), ("from-y", 0));
    assert_eq!(image.rules.len(), 2);
}

#[test]
fn source_egress_and_destination_ingress_are_both_required() {
    let egress = policy("x", "a-to-b")
        .select(sel(&[("pod", "a")]))
        .egress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![tcp(80)]))
        .types(&["Egress"])
        .build();
    let ingress = policy("x", "b-from-c")
        .select(sel(&[("pod", "b")]))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "c")])))], vec![tcp(80)]))
        .build();
    let (state, image) = compiled(xyz().policy(egress).policy(ingress));
    all_pods(true)
        .expect("x/a", "", false)
        .expect("", "x/b", false)
        .expect("x/c", "x/b", true)
        .check(&image, &state, PROTO_TCP, 80);
    let verdict = image.lookup(&packet(pod_addr(&state, "x/a", false), pod_addr(&state, "x/b", false), PROTO_TCP, 80));
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
    assert_eq!(defaulted_policy_types(Some(&["Ingress", "Egress"]), 0), (true, true));

    // Egress rules and no policyTypes: isolated both ways (no ingress rules: deny all in).
    let with_egress = policy("x", "eg").select(sel(&[("pod", "a")])).egress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![])).build();
    assert!(with_egress.isolates_ingress && with_egress.isolates_egress);
    let (state, image) = compiled(xyz().policy(with_egress));
    all_pods(true).expect("x/a", "", false).expect("x/a", "x/b", true).expect("", "x/a", false).check(&image, &state, PROTO_TCP, 80);

    // `egress: []` alone does not isolate egress.
    let empty_egress = policy("x", "no-eg").select(sel(&[("pod", "a")])).build();
    assert!(empty_egress.isolates_ingress && !empty_egress.isolates_egress);
    let (state, image) = compiled(xyz().policy(empty_egress));
    all_pods(true).expect("", "x/a", false).check(&image, &state, PROTO_TCP, 80);
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
    let (state, image) = compiled(xyz().pod_with(done).pod_with(failed).pod_with(host).policy(p));
    for addr in ["198.18.1.50", "198.18.1.51", "198.18.9.1"] {
        assert_eq!(image.identity_of(ip(addr)), IDENTITY_WORLD, "{addr}");
        assert!(!image.endpoints.contains_key(&ip(addr)), "{addr}");
        let verdict = image.lookup(&packet(ip(addr), pod_addr(&state, "x/a", false), PROTO_TCP, 80));
        assert_eq!((verdict.egress, verdict.ingress), (DirectionVerdict::NotLocal, DirectionVerdict::Denied));
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
                .ingress(rule(vec![pods(None, Some(sel(&[("app", "web")])))], vec![tcp(5432)]))
                .build(),
        )
        .policy(policy("x", "web-deny").select(sel(&[("app", "web")])).types(&["Ingress"]).build());
    let (_state, image) = compiled(builder);
    // x/web-*, x/db and y/web-1 (namespace y has no Namespace object).
    assert_eq!(image.identity_info.len(), 3);
    let web = image.identity_of(ip("198.18.1.1"));
    assert_eq!(image.identity_info[&web].pods, vec!["x/web-1", "x/web-2", "x/web-3"]);
    assert_eq!(image.endpoint_policies.len(), 2);
    // One entry, not one per web pod.
    assert_eq!(image.policy.len(), 1);
    assert!(image.lookup(&packet(ip("198.18.1.3"), ip("198.18.1.4"), PROTO_TCP, 5432)).allowed());
    assert!(!image.lookup(&packet(ip("198.18.2.1"), ip("198.18.1.4"), PROTO_TCP, 5432)).allowed());
    assert!(!image.lookup(&packet(ip("198.18.1.4"), ip("198.18.1.3"), PROTO_TCP, 80)).allowed());
}

#[test]
fn namespace_without_object_is_selected_by_its_name_label() {
    let builder = StateBuilder::new()
        .pod("w", "a", &[("pod", "a")], &["198.18.4.1"])
        .pod("v", "a", &[("pod", "a")], &["198.18.5.1"])
        .pod("x", "a", &[("pod", "a")], &["198.18.1.1"])
        .policy(
            policy("x", "from-w")
                .ingress(rule(vec![pods(Some(sel(&[("kubernetes.io/metadata.name", "w")])), None)], vec![]))
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
    assert_eq!(local.identity_of(ip("198.18.7.1")), local.identity_of(pod_addr(&state, "x/b", false)));
    assert!(local.lookup(&packet(ip("198.18.7.1"), pod_addr(&state, "x/a", false), PROTO_TCP, 80)).allowed());
    let other = compile(&state, Some("node-2"));
    assert_eq!(other.endpoints.len(), 1);
    assert_eq!(other.identities, local.identities);
    assert_eq!(compile(&state, Some("node-3")).endpoints.len(), 0);
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
        .ingress(rule(vec![], vec![named(Protocol::Tcp, "serve-80-tcp"), named(Protocol::Udp, "serve-81-udp")]))
        .build();
    let (state, image) = compiled(xyz().pod_with(d).pod_with(e).pod_with(f).policy(p).policy(upstream));
    assert!(v4(&image, &state, "x/a", "z/d", PROTO_TCP, 8080));
    assert!(!v4(&image, &state, "x/a", "z/d", PROTO_TCP, 9090));
    assert!(v4(&image, &state, "x/a", "z/e", PROTO_TCP, 9090));
    assert!(!v4(&image, &state, "x/a", "z/e", PROTO_TCP, 8080));
    assert!(!v4(&image, &state, "x/a", "z/f", PROTO_TCP, 8080), "a name the pod does not declare allows nothing");
    // Same policies, different mappings: three endpoint policies for d, e, f.
    let policy_of = |pod: &str| image.endpoints[&pod_addr(&state, pod, false)].policy;
    assert_ne!(policy_of("z/d"), policy_of("z/e"));
    assert_ne!(policy_of("z/d"), policy_of("z/f"));
    // Same labels, and no egress rule names a port: one identity for the three.
    assert_eq!(image.identity_of(ip("198.18.3.4")), image.identity_of(ip("198.18.3.5")));
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
        .egress(rule(vec![pods(Some(LabelSelector::default()), Some(sel(&[("app", "web")])))], vec![named(Protocol::Tcp, "http")]))
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
    assert_ne!(image.identity_of(ip("198.18.3.4")), image.identity_of(ip("198.18.3.5")));
    // No `to`: every pod declaring the name, on its port; nothing outside the cluster.
    // (x/a is egress-isolated by `to-web`, whose peers are not in this table.)
    all_pods(true).expect("x/a", "", false).check(&image, &state, PROTO_TCP, 81);
    all_pods(true).expect("x/a", "", false).expect("x/b", "", false).check(&image, &state, PROTO_TCP, 80);
    assert!(!v4(&image, &state, "x/b", "z/d", PROTO_TCP, 8080));
    let out = image.lookup(&packet(pod_addr(&state, "x/b", false), ip("198.19.0.1"), PROTO_TCP, 81));
    assert_eq!(out.egress, DirectionVerdict::Denied);
}

#[test]
fn egress_to_ip_block_outside_the_cluster() {
    let p = policy("x", "to-backup")
        .select(sel(&[("pod", "a")]))
        .egress(rule(vec![ip_block("198.19.0.0/24", &["198.19.0.128/25"])], vec![tcp(443)]))
        .types(&["Egress"])
        .build();
    let (state, image) = compiled(xyz().policy(p));
    let a = pod_addr(&state, "x/a", false);
    assert!(image.lookup(&packet(a, ip("198.19.0.1"), PROTO_TCP, 443)).allowed());
    assert!(!image.lookup(&packet(a, ip("198.19.0.200"), PROTO_TCP, 443)).allowed());
    assert!(!image.lookup(&packet(a, ip("198.19.0.1"), PROTO_TCP, 80)).allowed());
    assert!(!image.lookup(&packet(a, ip("198.19.1.1"), PROTO_TCP, 443)).allowed());
    all_pods(true).expect("x/a", "", false).check(&image, &state, PROTO_TCP, 443);
    // One region identity, no pod inside: 9 pod identities + 1.
    assert_eq!(image.identity_info.len(), 10);
}

#[test]
fn overlapping_blocks_from_different_policies() {
    let wide = policy("x", "wide")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![ip_block("198.18.0.0/15", &["198.18.1.0/24"])], vec![tcp(80)]))
        .build();
    let narrow = policy("x", "narrow")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![ip_block("198.18.1.0/25", &[])], vec![tcp(81)]))
        .build();
    let (state, image) = compiled(xyz().policy(wide).policy(narrow));
    let a = pod_addr(&state, "x/a", false);
    let from = |src: &str, port| image.lookup(&packet(ip(src), a, PROTO_TCP, port)).allowed();
    assert!(from("198.19.5.5", 80) && !from("198.19.5.5", 81));
    assert!(!from("198.18.1.200", 80) && !from("198.18.1.200", 81));
    assert!(!from("198.18.1.100", 80) && from("198.18.1.100", 81));
    assert!(v4(&image, &state, "y/a", "x/a", PROTO_TCP, 80));
    assert!(!v4(&image, &state, "x/b", "x/a", PROTO_TCP, 80));
    assert!(v4(&image, &state, "x/b", "x/a", PROTO_TCP, 81));
}
