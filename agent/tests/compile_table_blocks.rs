//! Table tests of ipBlock peers through `compile` and `Image::lookup` (the x, y, z ×
//! a, b, c cluster of `compile_table`): excepts, blocks covering pod IPs, IPv6, and
//! overlapping blocks of different policies, with the identities they produce.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common_state;

use common_state::*;
use netfence_common::{IDENTITY_WORLD, PROTO_TCP};

#[test]
fn ip_block_with_except_covers_pod_ips() {
    let p = policy("x", "block")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![ip_block("198.18.0.0/16", &["198.18.2.0/24"])],
            vec![],
        ))
        .build();
    let (state, image) = compiled(xyz().policy(p));
    // IPv4: x and z pods are inside the block, y's are excepted.
    all_pods(true)
        .expect("", "x/a", false)
        .expect("x", "x/a", true)
        .expect("z", "x/a", true)
        .check_families(&image, &state, PROTO_TCP, 80, &[false]);
    // IPv6 addresses are in no IPv4 block.
    all_pods(true)
        .expect("", "x/a", false)
        .check_families(&image, &state, PROTO_TCP, 80, &[true]);
    let x_a = pod_addr(&state, "x/a", false);
    assert!(
        image
            .lookup(&packet(ip("198.18.200.9"), x_a, PROTO_TCP, 80))
            .allowed()
    );
    assert!(
        !image
            .lookup(&packet(ip("198.18.2.200"), x_a, PROTO_TCP, 80))
            .allowed()
    );
    assert!(
        !image
            .lookup(&packet(ip("198.19.0.1"), x_a, PROTO_TCP, 80))
            .allowed()
    );
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
        .ingress(rule(
            vec![ip_block("fd00::2:0/112", &["fd00::2:2/128"])],
            vec![],
        ))
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
fn egress_to_ip_block_outside_the_cluster() {
    let p = policy("x", "to-backup")
        .select(sel(&[("pod", "a")]))
        .egress(rule(
            vec![ip_block("198.19.0.0/24", &["198.19.0.128/25"])],
            vec![tcp(443)],
        ))
        .types(&["Egress"])
        .build();
    let (state, image) = compiled(xyz().policy(p));
    let a = pod_addr(&state, "x/a", false);
    assert!(
        image
            .lookup(&packet(a, ip("198.19.0.1"), PROTO_TCP, 443))
            .allowed()
    );
    assert!(
        !image
            .lookup(&packet(a, ip("198.19.0.200"), PROTO_TCP, 443))
            .allowed()
    );
    assert!(
        !image
            .lookup(&packet(a, ip("198.19.0.1"), PROTO_TCP, 80))
            .allowed()
    );
    assert!(
        !image
            .lookup(&packet(a, ip("198.19.1.1"), PROTO_TCP, 443))
            .allowed()
    );
    all_pods(true)
        .expect("x/a", "", false)
        .check(&image, &state, PROTO_TCP, 443);
    // One region identity, no pod inside: 9 pod identities + 1.
    assert_eq!(image.identity_info.len(), 10);
}

#[test]
fn overlapping_blocks_from_different_policies() {
    let wide = policy("x", "wide")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![ip_block("198.18.0.0/15", &["198.18.1.0/24"])],
            vec![tcp(80)],
        ))
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
