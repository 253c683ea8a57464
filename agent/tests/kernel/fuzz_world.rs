//! The differential fuzz's fixed map state: endpoints bound here (ifindex 1, the test
//! run's), elsewhere (7) and nowhere (0) with varied isolation and audit flags, the
//! port binding, identities (the node's included), POLICY rules, and pre-created
//! conntrack entries and fragment records of every liveness class, so established,
//! expired, related-ICMP and fragment paths are reachable. [`pools`] hands the
//! generator the same addresses, ports and flows.

use netfence_common::{
    Addr, CT_ORIGIN_LOCAL, CT_ORIGIN_REMOTE, CT_STATE_CLOSING, CT_STATE_OPEN, CtKey, CtValue,
    DIR_EGRESS, DIR_INGRESS, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_ISOLATED_EGRESS,
    EP_ISOLATED_INGRESS, EndpointValue, FragKey, IDENTITY_ANY, IDENTITY_HOST, PROTO_ANY,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, V4_MAPPED_PREFIX_BITS, v4_mapped,
};

use super::fuzz_gen::{Pools, Tuple};
use super::model::{Flow, HERE, Rule, World};

/// Another pod's veth.
pub const ELSEWHERE: u32 = 7;

const BOTH: u32 = EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS;

fn v4(last: u8) -> Addr {
    v4_mapped([198, 18, 0, last])
}

fn v6(last: u8) -> Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = last;
    a
}

/// Pods: (last octet, endpoint policy, flags, ifindex, identity).
const PODS: [(u8, u32, u32, u32, u32); 6] = [
    (10, 7, BOTH, HERE, 100),                    // A: isolated both ways
    (11, 11, 0, HERE, 110),                      // B: not isolated
    (12, 8, BOTH | EP_AUDIT_INGRESS, HERE, 120), // C: ingress audited
    (13, 10, EP_ISOLATED_EGRESS | EP_AUDIT_EGRESS, HERE, 130), // F: egress only, audited
    (20, 9, BOTH, ELSEWHERE, 200),               // D: another veth's
    (21, 9, BOTH, 0, 210),                       // E: unbound
];
const A: u8 = 10;
const C: u8 = 12;
const E: u8 = 21;
const D: u8 = 20;
/// A remote pod (identity 300), the node (IDENTITY_HOST).
const R: u8 = 30;
const NODE: u8 = 1;

const SECOND: u64 = 1_000_000_000;

fn endpoint(policy: u32, flags: u32, ifindex: u32, identity: u32) -> EndpointValue {
    EndpointValue {
        policy,
        flags,
        ifindex,
        identity,
    }
}

/// The map state. `with_port`: PORTS[1] holds pod A (else the port is unbound).
pub fn world(with_port: bool) -> World {
    let mut w = World::default();
    for (last, policy, flags, ifindex, identity) in PODS {
        let value = endpoint(policy, flags, ifindex, identity);
        w.endpoints.insert(v4(last), value);
        w.endpoints.insert(v6(last), value);
        w.identities.push((v4(last), 128, identity));
        w.identities.push((v6(last), 128, identity));
    }
    if with_port {
        w.ports.insert(HERE, endpoint(7, BOTH, HERE, 100));
    }
    w.ports.insert(ELSEWHERE, endpoint(9, BOTH, ELSEWHERE, 200));
    w.identities.extend([
        (v4(0), V4_MAPPED_PREFIX_BITS + 15, 50),
        (v4_mapped([198, 18, 1, 0]), V4_MAPPED_PREFIX_BITS + 24, 400),
        (v4(R), 128, 300),
        (v4(NODE), 128, IDENTITY_HOST),
        (v6(0), 8, 50),
        (v6(R), 128, 300),
        (v6(NODE), 128, IDENTITY_HOST),
    ]);
    let rule = |policy, peer, direction, protocol, port, port_bits, rule| Rule {
        policy,
        peer,
        direction,
        protocol,
        port,
        port_bits,
        rule,
    };
    w.rules = vec![
        rule(7, 300, DIR_INGRESS, PROTO_TCP, 80, 16, 11),
        rule(7, IDENTITY_ANY, DIR_INGRESS, PROTO_UDP, 53, 16, 12),
        rule(7, 200, DIR_EGRESS, PROTO_TCP, 8080, 13, 13),
        rule(7, 300, DIR_EGRESS, PROTO_ANY, 0, 0, 14),
        rule(7, IDENTITY_HOST, DIR_INGRESS, PROTO_ANY, 0, 0, 15),
        rule(7, 50, DIR_INGRESS, PROTO_SCTP, 5000, 16, 16),
        rule(7, 400, DIR_EGRESS, PROTO_UDP, 0, 0, 17),
        rule(8, 300, DIR_INGRESS, PROTO_UDP, 0, 0, 21),
        rule(8, IDENTITY_ANY, DIR_EGRESS, PROTO_TCP, 443, 16, 22),
        rule(8, 100, DIR_INGRESS, PROTO_TCP, 80, 16, 23),
        rule(10, 300, DIR_EGRESS, PROTO_UDP, 53, 16, 31),
    ];
    w.flows = flows();
    for (src, dst, id, protocol, allowed) in fragment_records() {
        w.fragments.insert(
            FragKey {
                src,
                dst,
                ifindex: HERE,
                id,
                protocol,
                _pad: [0; 3],
            },
            allowed,
        );
    }
    w
}

/// Pre-created flows: (local, remote, local port, remote port, protocol, origin,
/// replied, state, age, ifindex).
#[allow(clippy::type_complexity, reason = "a table")]
const FLOWS: [(Addr, Addr, u16, u16, u8, u8, u8, u8, u64, u32); 15] = {
    const L: u8 = CT_ORIGIN_LOCAL;
    const RM: u8 = CT_ORIGIN_REMOTE;
    const O: u8 = CT_STATE_OPEN;
    [
        (V4[0], V4[1], 80, 40000, PROTO_TCP, RM, 1, O, 0, HERE),
        (V4[0], V4[2], 5000, 53, PROTO_UDP, L, 0, O, 0, HERE),
        (
            V4[0],
            V4[1],
            5001,
            53,
            PROTO_UDP,
            L,
            0,
            O,
            60 * SECOND,
            HERE,
        ), // expired: unreplied
        (
            V4[0],
            V4[1],
            5002,
            53,
            PROTO_UDP,
            L,
            1,
            O,
            60 * SECOND,
            HERE,
        ), // alive: replied
        (
            V4[0],
            V4[1],
            40001,
            443,
            PROTO_TCP,
            L,
            0,
            O,
            200 * SECOND,
            HERE,
        ), // expired: SYN sent
        (
            V4[0],
            V4[1],
            40002,
            443,
            PROTO_TCP,
            L,
            1,
            O,
            200 * SECOND,
            HERE,
        ), // alive: open
        (
            V4[0],
            V4[1],
            40003,
            443,
            PROTO_TCP,
            L,
            1,
            CT_STATE_CLOSING,
            200 * SECOND,
            HERE,
        ), // expired
        (V4[0], V4[1], 77, 0, PROTO_ICMP, L, 0, O, 0, HERE),
        (V6[0], V6[1], 5000, 53, PROTO_UDP, L, 1, O, 0, HERE),
        (V6[0], V6[1], 80, 40000, PROTO_TCP, RM, 1, O, 0, HERE),
        (V4[0], V4[1], 6000, 53, PROTO_UDP, L, 1, O, 0, ELSEWHERE), // another hook's
        (V4[3], V4[1], 40000, 443, PROTO_TCP, L, 0, O, 0, HERE),    // C, unreplied
        (V4[4], V4[1], 5000, 53, PROTO_UDP, L, 1, O, 0, HERE),      // E, unbound
        (V6[0], V6[1], 99, 0, PROTO_ICMPV6, L, 0, O, 0, HERE),
        (V4[5], V4[6], 7000, 7001, PROTO_UDP, RM, 0, O, 0, HERE), // B from the node
    ]
};

/// A, R, D, C, E, B, node.
const V4: [Addr; 7] = [
    v4_mapped([198, 18, 0, A]),
    v4_mapped([198, 18, 0, R]),
    v4_mapped([198, 18, 0, D]),
    v4_mapped([198, 18, 0, C]),
    v4_mapped([198, 18, 0, E]),
    v4_mapped([198, 18, 0, 11]),
    v4_mapped([198, 18, 0, NODE]),
];
const V6: [Addr; 2] = [
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, A],
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, R],
];

fn flows() -> Vec<Flow> {
    FLOWS
        .iter()
        .map(
            |&(
                local,
                remote,
                local_port,
                remote_port,
                protocol,
                origin,
                replied,
                state,
                age_ns,
                ifindex,
            )| Flow {
                key: CtKey {
                    local,
                    remote,
                    ifindex,
                    local_port,
                    remote_port,
                    protocol,
                    _pad: [0; 3],
                },
                value: CtValue {
                    last_seen_ns: 0,
                    rule: 0,
                    origin,
                    state,
                    replied,
                    _pad: 0,
                    generation: 0,
                    _pad2: 0,
                },
                age_ns,
            },
        )
        .collect()
}

/// First-fragment records: (src, dst, id, protocol, allowed).
fn fragment_records() -> [(Addr, Addr, u32, u8, bool); 5] {
    [
        (V4[1], V4[0], 0x1111, PROTO_UDP, true),
        (V4[0], V4[1], 0x2222, PROTO_UDP, false),
        (V4[0], V4[1], 0x1111, PROTO_TCP, true),
        (V6[1], V6[0], 0xdead_beef, PROTO_UDP, true),
        (V6[0], V6[1], 7, PROTO_UDP, true),
    ]
}

/// What the generator draws from.
pub fn pools() -> Pools {
    let mut v4s: Vec<[u8; 4]> = PODS.iter().map(|p| [198, 18, 0, p.0]).collect();
    v4s.extend([
        [198, 18, 0, R],
        [198, 18, 0, NODE],
        [198, 18, 1, 5],
        [198, 19, 9, 9],
        [169, 254, 1, 1],
        [224, 0, 0, 1],
        [239, 1, 2, 3],
        [255, 255, 255, 255],
        [0, 0, 0, 0],
        [198, 18, 0, 255],
    ]);
    let mut v6s: Vec<Addr> = PODS.iter().map(|p| v6(p.0)).collect();
    let parse = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    v6s.extend([v6(R), v6(NODE), v6(R), v6(A)]);
    v6s.extend(
        [
            "fe80::1",
            "fe80::abcd",
            "febf::1",
            "ff02::1",
            "ff02::1:ff00:10",
            "ff05::2",
            "::",
            "::ffff:198.18.0.10",
            "::ffff:169.254.1.1",
            "fd01::9",
        ]
        .map(parse),
    );
    let mut tuples: Vec<Tuple> = flows()
        .iter()
        .map(|f| Tuple {
            src: f.key.local,
            dst: f.key.remote,
            protocol: f.key.protocol,
            src_port: f.key.local_port,
            dst_port: f.key.remote_port,
            frag_id: None,
        })
        .collect();
    tuples.extend(
        fragment_records()
            .iter()
            .map(|&(src, dst, id, protocol, _)| Tuple {
                src,
                dst,
                protocol,
                src_port: 1000,
                dst_port: 53,
                frag_id: Some(id),
            }),
    );
    let t = |src, dst, protocol, src_port, dst_port| Tuple {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
        frag_id: None,
    };
    tuples.extend([
        t(v4(R), v4(A), PROTO_TCP, 40000, 80),
        t(v4(A), v4(D), PROTO_TCP, 40000, 8083),
        t(v4(NODE), v4(A), PROTO_UDP, 9, 9),
        t(v4(C), v4(R), PROTO_TCP, 40000, 443),
        t(v4(13), v4(R), PROTO_UDP, 5000, 53),
        t(v4(A), v4(NODE), PROTO_UDP, 5000, 8472),
        t(v6(R), v6(C), PROTO_UDP, 5000, 5001),
        t(v6(A), v6(NODE), PROTO_UDP, 5000, 4789),
        t(v6(A), v6(R), PROTO_ICMPV6, 5, 0),
    ]);
    Pools {
        v4: v4s,
        v6: v6s,
        ports: vec![
            53, 80, 443, 5000, 5001, 5002, 6000, 7000, 7001, 8080, 8087, 8088, 8472, 4789, 40000,
            40001, 40002, 40003, 22,
        ],
        echo_ids: vec![77, 99, 1, 1234],
        frag_ids: vec![0x1111, 0x2222, 0xdead_beef, 7, 0x4444],
        tuples,
        host4: v4(NODE),
        host6: v6(NODE),
    }
}
