//! Kernel verdicts: the real TC programs, loaded (not attached) with their own maps,
//! run on crafted frames through `BPF_PROG_TEST_RUN`. Every case asserts the TC action
//! and that exactly the expected verdict counter moved by one; flows also assert the
//! conntrack, fragment and event records they leave. Needs root (CAP_BPF).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed setup step is a failed test"
)]

mod kernel;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kernel::frame::{self, Frag, TCP_ACK, TCP_FIN, TCP_SYN, icmp, packet, sctp, tcp, udp};
use kernel::{FROM_POD, Kernel, Options, TEST_RUN_IFINDEX, TO_POD, addr16, entry};
use netfence_common::{
    CT_ORIGIN_LOCAL, CT_ORIGIN_REMOTE, CT_STATE_CLOSING, CT_STATE_OPEN, DIR_EGRESS, DIR_INGRESS,
    EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IDENTITY_ANY,
    PROTO_ANY, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason, VERDICT_ALLOW, VERDICT_AUDIT,
    VERDICT_DROP,
};

const POD: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 30));
const WORLD: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 9, 9));
const POD6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10));
const PEER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x20));
const OTHER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x30));

/// Endpoint policy of `POD`, identities of `PEER` and `OTHER`.
const POLICY: u32 = 7;
const ID_PEER: u32 = 100;
const ID_OTHER: u32 = 200;
const BOTH: u32 = EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS;

/// A datapath where `POD` (and `POD6`) has endpoint policy `POLICY` with `flags`, and
/// `PEER`/`OTHER` (and their IPv6 twins) have identities.
fn node(flags: u32) -> Kernel {
    node_with(flags, Options::default())
}

fn node_with(flags: u32, options: Options) -> Kernel {
    let mut k = Kernel::load_with(options);
    k.endpoint(POD, POLICY, flags, TEST_RUN_IFINDEX);
    k.endpoint(POD6, POLICY, flags, TEST_RUN_IFINDEX);
    k.port(TEST_RUN_IFINDEX, POLICY, flags);
    k.identity("198.18.0.20/32", ID_PEER);
    k.identity("198.18.0.30/32", ID_OTHER);
    k.identity("fd00::20/128", ID_PEER);
    k.identity("fd00::30/128", ID_OTHER);
    k
}

#[test]
fn arp_for_its_own_address_passes_both_ways() {
    let mut k = node(BOTH);
    k.pass(FROM_POD, &frame::arp(), Reason::AllowArp);
    k.pass(TO_POD, &frame::arp(), Reason::AllowArp);
}

#[test]
fn truncated_or_malformed_ip_headers_drop() {
    let mut k = node(BOTH);
    let whole = frame::ip(PEER, POD, &tcp(40000, 80, TCP_SYN));
    // IPv4 header cut at 10 bytes. BPF_PROG_TEST_RUN itself refuses (EINVAL) an
    // untagged IPv4/IPv6 frame shorter than the fixed IP header, so the cut header
    // rides behind a VLAN tag, which the program skips before parsing IP.
    k.drop(
        TO_POD,
        &frame::eth_vlan(&[0x8100], &whole[..10]),
        Reason::DropMalformed,
    );
    // Total length beyond the frame.
    k.drop(TO_POD, &frame::eth(&whole[..30]), Reason::DropMalformed);
    // IHL 4 (16 bytes): no valid IPv4 header.
    let mut bad_ihl = whole.clone();
    bad_ihl[0] = 0x44;
    k.drop(TO_POD, &frame::eth(&bad_ihl), Reason::DropMalformed);
    // A TCP header cut short inside a consistent IP datagram.
    let short = frame::ip(
        PEER,
        POD,
        &frame::raw(PROTO_TCP, &[0x9c, 0x40, 0, 80, 0, 0, 0, 0]),
    );
    k.drop(TO_POD, &frame::eth(&short), Reason::DropMalformed);
    // IPv6 header cut at 30 bytes.
    let whole6 = frame::ip(PEER6, POD6, &tcp(40000, 80, TCP_SYN));
    k.drop(
        TO_POD,
        &frame::eth_vlan(&[0x8100], &whole6[..30]),
        Reason::DropMalformed,
    );
    // IPv6 UDP header cut short.
    let short6 = frame::ip(PEER6, POD6, &frame::raw(PROTO_UDP, &[0x9c, 0x40, 0, 53]));
    k.drop(FROM_POD, &frame::eth(&short6), Reason::DropMalformed);
    let events = k.events();
    assert_eq!(events.len(), 6, "one drop event per malformed packet");
    assert!(
        events
            .iter()
            .all(|e| e.reason == Reason::DropMalformed.code() && e.verdict == VERDICT_DROP)
    );
}

#[test]
fn unknown_source_from_pod_is_spoofed() {
    let mut k = node(0);
    let spoofed = packet(OTHER, PEER, &tcp(40000, 80, TCP_SYN));
    k.drop(FROM_POD, &spoofed, Reason::DropSpoofed);
    let events = k.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].src, events[0].reason),
        (addr16(OTHER), Reason::DropSpoofed.code())
    );
    // The same address to a pod no endpoint knows: not ours to judge.
    k.drop(
        TO_POD,
        &packet(PEER, OTHER, &tcp(40000, 80, TCP_SYN)),
        Reason::DropWrongPort,
    );
}

#[test]
fn endpoint_bound_to_another_port_is_spoofed_or_wrong_port() {
    let mut k = Kernel::load();
    // The test run's skb is on ifindex 1; the endpoint says its port is 4242.
    k.endpoint(POD, POLICY, 0, 4242);
    k.drop(
        FROM_POD,
        &packet(POD, PEER, &udp(5000, 53)),
        Reason::DropSpoofed,
    );
    k.drop(
        TO_POD,
        &packet(PEER, POD, &udp(53, 5000)),
        Reason::DropWrongPort,
    );
    // Bound to the port the packet is on: judged normally.
    k.endpoint(POD, POLICY, 0, TEST_RUN_IFINDEX);
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &udp(5000, 53)),
        Reason::AllowNotIsolated,
    );
    // Another flow (the reply of the first would be established).
    k.pass(
        TO_POD,
        &packet(PEER, POD, &udp(5001, 54)),
        Reason::AllowNotIsolated,
    );
    k.pass(
        TO_POD,
        &packet(PEER, POD, &udp(53, 5000)),
        Reason::AllowEstablished,
    );
}

#[test]
fn not_isolated_passes_without_policy_and_tracks_the_flow() {
    let mut k = node(0);
    // A rule that would allow it: never consulted, so its hit counter stays 0.
    k.allow(entry(POLICY, ID_PEER, DIR_EGRESS, PROTO_TCP, 80, 16), 11);
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowNotIsolated,
    );
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 81, TCP_SYN)),
        Reason::AllowNotIsolated,
    );
    assert_eq!(k.rule_hits(11), 0);
    // Isolated in neither direction, the flows are still tracked: a policy that
    // isolates the pod later keeps their replies passing (`--existing-flows=keep`).
    assert_eq!(k.conntrack().len(), 2, "one entry per new flow");
    assert!(k.events().is_empty());
}

#[test]
fn not_isolated_direction_creates_entry_for_the_isolated_one() {
    // Isolated for ingress only: its egress flows pass and their replies pass ingress.
    let mut k = node(EP_ISOLATED_INGRESS);
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(40000, 443, TCP_SYN)),
        Reason::AllowNotIsolated,
    );
    let ct = k.conntrack();
    assert_eq!(ct.len(), 1);
    let (key, value) = ct[0];
    assert_eq!(
        (key.local, key.remote, key.local_port, key.remote_port),
        (addr16(POD), addr16(PEER), 40000, 443)
    );
    assert_eq!((key.ifindex, key.protocol), (TEST_RUN_IFINDEX, PROTO_TCP));
    assert_eq!(
        (value.origin, value.rule, value.state),
        (CT_ORIGIN_LOCAL, 0, CT_STATE_OPEN)
    );
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(443, 40000, TCP_SYN | TCP_ACK)),
        Reason::AllowEstablished,
    );
    // A new connection from the peer is still denied.
    k.drop(
        TO_POD,
        &packet(PEER, POD, &tcp(443, 40001, TCP_SYN)),
        Reason::DropPolicy,
    );
}

#[test]
fn isolated_without_rule_drops_with_event() {
    let mut k = node(BOTH);
    k.drop(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::DropPolicy,
    );
    let events = k.events();
    assert_eq!(events.len(), 1);
    let e = events[0];
    assert_eq!(
        (e.src, e.dst, e.src_port, e.dst_port),
        (addr16(PEER), addr16(POD), 40000, 80)
    );
    assert_eq!(
        (e.protocol, e.direction, e.verdict),
        (PROTO_TCP, DIR_INGRESS, VERDICT_DROP)
    );
    assert_eq!(
        (e.reason, e.policy, e.rule, e.ifindex),
        (Reason::DropPolicy.code(), POLICY, 0, TEST_RUN_IFINDEX)
    );
    assert!(k.conntrack().is_empty());
}

#[test]
fn allow_by_exact_peer_and_port() {
    let mut k = node(BOTH);
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16), 21);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    assert_eq!(k.rule_hits(21), 1);
    let ct = k.conntrack();
    assert_eq!(ct.len(), 1);
    let (key, value) = ct[0];
    assert_eq!(
        (key.local, key.remote, key.local_port, key.remote_port),
        (addr16(POD), addr16(PEER), 80, 40000)
    );
    assert_eq!((value.origin, value.rule), (CT_ORIGIN_REMOTE, 21));
    k.drop(
        TO_POD,
        &packet(OTHER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::DropPolicy,
    );
    k.drop(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 81, TCP_SYN)),
        Reason::DropPolicy,
    );
    k.drop(
        TO_POD,
        &packet(PEER, POD, &udp(40000, 80)),
        Reason::DropPolicy,
    );
    // The rule is for ingress: egress to the peer's port 80 is not allowed by it.
    k.drop(
        FROM_POD,
        &packet(POD, PEER, &tcp(40000, 80, TCP_SYN)),
        Reason::DropPolicy,
    );
    assert_eq!(k.rule_hits(21), 1);
}

#[test]
fn allow_by_any_identity_covers_world() {
    let mut k = node(BOTH);
    k.allow(
        entry(POLICY, IDENTITY_ANY, DIR_EGRESS, PROTO_TCP, 443, 16),
        22,
    );
    k.pass(
        FROM_POD,
        &packet(POD, WORLD, &tcp(40000, 443, TCP_SYN)),
        Reason::AllowPolicy,
    );
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(40001, 443, TCP_SYN)),
        Reason::AllowPolicy,
    );
    k.drop(
        FROM_POD,
        &packet(POD, WORLD, &tcp(40002, 444, TCP_SYN)),
        Reason::DropPolicy,
    );
    assert_eq!(k.rule_hits(22), 2);
}

#[test]
fn port_range_prefix_covers_exactly_its_ports() {
    let mut k = node(BOTH);
    // 8080/13: 8080–8087.
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 8080, 13), 23);
    for port in [8080, 8083, 8087] {
        k.pass(
            TO_POD,
            &packet(PEER, POD, &tcp(40000, port, TCP_SYN)),
            Reason::AllowPolicy,
        );
    }
    for port in [8079, 8088] {
        k.drop(
            TO_POD,
            &packet(PEER, POD, &tcp(40000, port, TCP_SYN)),
            Reason::DropPolicy,
        );
    }
    assert_eq!(k.rule_hits(23), 3);
}

#[test]
fn protocol_only_rule_allows_every_port_of_that_protocol() {
    let mut k = node(BOTH);
    k.allow(entry(POLICY, ID_PEER, DIR_EGRESS, PROTO_UDP, 0, 0), 24);
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &udp(5000, 53)),
        Reason::AllowPolicy,
    );
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &udp(5000, 65535)),
        Reason::AllowPolicy,
    );
    k.drop(
        FROM_POD,
        &packet(POD, PEER, &tcp(5000, 53, TCP_SYN)),
        Reason::DropPolicy,
    );
    k.drop(
        FROM_POD,
        &packet(POD, OTHER, &udp(5000, 53)),
        Reason::DropPolicy,
    );
}

#[test]
fn icmp_only_by_rule_without_ports() {
    let mut k = node(BOTH);
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16), 25);
    let ping = packet(PEER, POD, &icmp(false, 8, 0, 77, &[]));
    k.drop(TO_POD, &ping, Reason::DropPolicy);
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_ANY, 0, 0), 26);
    k.pass(TO_POD, &ping, Reason::AllowPolicy);
    assert_eq!((k.rule_hits(25), k.rule_hits(26)), (0, 1));
    // The echo identifier is the local port: the reply meets the request's entry.
    let (key, _) = k.conntrack()[0];
    assert_eq!(
        (key.protocol, key.local_port, key.remote_port),
        (PROTO_ICMP, 77, 0)
    );
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &icmp(false, 0, 0, 77, &[])),
        Reason::AllowEstablished,
    );
    // A no-ports rule allows TCP too (any protocol, any port).
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 22, TCP_SYN)),
        Reason::AllowPolicy,
    );
}

#[test]
fn ipv6_port_rules_and_extension_headers() {
    let mut k = node(BOTH);
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16), 27);
    k.pass(
        TO_POD,
        &packet(PEER6, POD6, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    k.drop(
        TO_POD,
        &packet(OTHER6, POD6, &tcp(40000, 80, TCP_SYN)),
        Reason::DropPolicy,
    );
    k.drop(
        TO_POD,
        &packet(PEER6, POD6, &tcp(40000, 81, TCP_SYN)),
        Reason::DropPolicy,
    );
    // Hop-by-hop and destination options are walked to the TCP header.
    let (IpAddr::V6(peer), IpAddr::V6(pod)) = (PEER6, POD6) else {
        unreachable!()
    };
    let ext = frame::ipv6(
        peer,
        pod,
        &tcp(40001, 80, TCP_SYN),
        &[frame::EXT_HOP, frame::EXT_DEST],
        None,
    );
    k.pass(TO_POD, &frame::eth(&ext), Reason::AllowPolicy);
    let ext_denied = frame::ipv6(
        peer,
        pod,
        &tcp(40001, 81, TCP_SYN),
        &[frame::EXT_HOP, frame::EXT_DEST],
        None,
    );
    k.drop(TO_POD, &frame::eth(&ext_denied), Reason::DropPolicy);
    // A chain longer than the walk: unsupported.
    let long = frame::ipv6(
        peer,
        pod,
        &tcp(40001, 80, TCP_SYN),
        &[frame::EXT_DEST; 7],
        None,
    );
    k.drop(TO_POD, &frame::eth(&long), Reason::DropUnsupported);
    assert_eq!(k.rule_hits(27), 2);
}

#[test]
fn ipv6_unknown_source_and_world_egress() {
    let mut k = node(EP_ISOLATED_EGRESS);
    k.drop(
        FROM_POD,
        &packet(OTHER6, PEER6, &udp(5000, 53)),
        Reason::DropSpoofed,
    );
    k.allow(
        entry(POLICY, IDENTITY_ANY, DIR_EGRESS, PROTO_UDP, 53, 16),
        28,
    );
    k.pass(
        FROM_POD,
        &packet(POD6, PEER6, &udp(5000, 53)),
        Reason::AllowPolicy,
    );
    k.pass(
        TO_POD,
        &packet(PEER6, POD6, &udp(53, 5000)),
        Reason::AllowEstablished,
    );
}

#[test]
fn established_reply_passes_through_the_other_program() {
    let mut k = node(BOTH);
    // Ingress allows the peer on 80; egress has no rule at all.
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16), 29);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(80, 40000, TCP_SYN | TCP_ACK)),
        Reason::AllowEstablished,
    );
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_ACK)),
        Reason::AllowEstablished,
    );
    // Egress is still closed to anything else.
    k.drop(
        FROM_POD,
        &packet(POD, PEER, &tcp(80, 40001, TCP_SYN | TCP_ACK)),
        Reason::DropPolicy,
    );
    k.drop(
        FROM_POD,
        &packet(POD, OTHER, &tcp(80, 40000, TCP_SYN | TCP_ACK)),
        Reason::DropPolicy,
    );
    assert_eq!(k.rule_hits(29), 1, "only the first packet consults policy");
}

#[test]
fn pure_syn_is_rechecked_despite_conntrack() {
    let mut k = node(BOTH);
    let rule = entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16);
    k.allow(rule, 30);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    k.disallow(rule);
    k.drop(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::DropPolicy,
    );
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_ACK)),
        Reason::AllowEstablished,
    );
    // FIN moves the entry to closing; the close's last packets still pass.
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_FIN | TCP_ACK)),
        Reason::AllowEstablished,
    );
    assert_eq!(k.conntrack()[0].1.state, CT_STATE_CLOSING);
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(80, 40000, TCP_FIN | TCP_ACK)),
        Reason::AllowEstablished,
    );
}

#[test]
fn expired_entry_goes_back_to_policy() {
    let mut k = node_with(
        BOTH,
        Options {
            ct_other_timeout_ns: 1,
            ct_unreplied_timeout_ns: 1,
            ..Options::default()
        },
    );
    k.allow(entry(POLICY, ID_PEER, DIR_EGRESS, PROTO_UDP, 53, 16), 31);
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &udp(5000, 53)),
        Reason::AllowPolicy,
    );
    // Beyond a tick of the coarse clock the programs read.
    std::thread::sleep(std::time::Duration::from_millis(50));
    // The reply's entry expired (1 ns timeout), and ingress has no rule.
    k.drop(
        TO_POD,
        &packet(PEER, POD, &udp(53, 5000)),
        Reason::DropPolicy,
    );
    // The original direction is allowed again by policy, which renews the entry.
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &udp(5000, 53)),
        Reason::AllowPolicy,
    );
}

#[test]
fn non_first_fragments_follow_the_first() {
    let mut k = node(BOTH);
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_UDP, 5353, 16), 32);
    let (IpAddr::V4(peer), IpAddr::V4(pod)) = (PEER, POD) else {
        unreachable!()
    };
    let first = |id, port| {
        frame::eth(&frame::ipv4(
            peer,
            pod,
            &udp(1000, port),
            Some(Frag {
                id,
                more: true,
                offset: 0,
            }),
        ))
    };
    let rest = |id| {
        frame::eth(&frame::ipv4(
            peer,
            pod,
            &frame::raw(PROTO_UDP, &[0; 16]),
            Some(Frag {
                id,
                more: false,
                offset: 2,
            }),
        ))
    };
    k.pass(TO_POD, &first(0x1111, 5353), Reason::AllowPolicy);
    k.pass(TO_POD, &rest(0x1111), Reason::AllowFragment);
    k.drop(TO_POD, &first(0x2222, 5354), Reason::DropPolicy);
    k.drop(TO_POD, &rest(0x2222), Reason::DropFragment);
    k.drop(TO_POD, &rest(0x3333), Reason::DropFragment);
    let mut frags: Vec<(u32, u32)> = k
        .fragments()
        .iter()
        .map(|(key, v)| (key.id, v.allowed))
        .collect();
    frags.sort_unstable();
    assert_eq!(frags, vec![(0x1111, 1), (0x2222, 0)]);
    // A first fragment allowed through conntrack records an allow too.
    k.pass(TO_POD, &first(0x4444, 5353), Reason::AllowEstablished);
    k.pass(TO_POD, &rest(0x4444), Reason::AllowFragment);
}

#[test]
fn ipv6_fragments_follow_the_first() {
    let mut k = node(BOTH);
    k.allow(entry(POLICY, ID_PEER, DIR_EGRESS, PROTO_UDP, 5353, 16), 33);
    let (IpAddr::V6(peer), IpAddr::V6(pod)) = (PEER6, POD6) else {
        unreachable!()
    };
    let first = |id, port| {
        frame::eth(&frame::ipv6(
            pod,
            peer,
            &udp(1000, port),
            &[],
            Some(Frag {
                id,
                more: true,
                offset: 0,
            }),
        ))
    };
    let rest = |id| {
        frame::eth(&frame::ipv6(
            pod,
            peer,
            &frame::raw(PROTO_UDP, &[0; 16]),
            &[],
            Some(Frag {
                id,
                more: false,
                offset: 2,
            }),
        ))
    };
    k.pass(FROM_POD, &first(0xdead_beef, 5353), Reason::AllowPolicy);
    k.pass(FROM_POD, &rest(0xdead_beef), Reason::AllowFragment);
    k.drop(FROM_POD, &first(7, 5354), Reason::DropPolicy);
    k.drop(FROM_POD, &rest(7), Reason::DropFragment);
    // The same id on the other hook's direction (src/dst swapped) is another datagram.
    k.drop(
        TO_POD,
        &frame::eth(&frame::ipv6(
            peer,
            pod,
            &frame::raw(PROTO_UDP, &[0; 16]),
            &[],
            Some(Frag {
                id: 0xdead_beef,
                more: false,
                offset: 2,
            }),
        )),
        Reason::DropFragment,
    );
}

#[test]
fn sctp_port_rule() {
    let mut k = node(BOTH);
    k.allow(
        entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_SCTP, 5000, 16),
        34,
    );
    k.pass(
        TO_POD,
        &packet(PEER, POD, &sctp(6000, 5000)),
        Reason::AllowPolicy,
    );
    k.drop(
        TO_POD,
        &packet(PEER, POD, &sctp(6000, 5001)),
        Reason::DropPolicy,
    );
    k.drop(
        TO_POD,
        &packet(PEER, POD, &tcp(6000, 5000, TCP_SYN)),
        Reason::DropPolicy,
    );
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &sctp(5000, 6000)),
        Reason::AllowEstablished,
    );
    k.drop(
        TO_POD,
        &frame::eth(&frame::ip(
            PEER,
            POD,
            &frame::raw(PROTO_SCTP, &[0x17, 0x70, 0x13, 0x88, 0, 0, 0, 0]),
        )),
        Reason::DropMalformed,
    );
}

#[test]
fn icmp_errors_relate_to_their_flow() {
    let mut k = node(BOTH);
    k.allow(entry(POLICY, ID_PEER, DIR_EGRESS, PROTO_UDP, 53, 16), 35);
    let query = frame::ip(POD, PEER, &udp(5000, 53));
    k.pass(FROM_POD, &frame::eth(&query), Reason::AllowPolicy);
    // Port unreachable quoting the query, sent back to the pod by the peer.
    let unreachable = |quote: &[u8]| packet(PEER, POD, &icmp(false, 3, 3, 0, &quote[..28]));
    k.pass(TO_POD, &unreachable(&query), Reason::AllowRelatedIcmp);
    // Quoting a flow conntrack does not know: plain ICMP, which no rule allows.
    let unknown = frame::ip(POD, PEER, &udp(5001, 53));
    k.drop(TO_POD, &unreachable(&unknown), Reason::DropPolicy);
    // Quoting another pod's flow: no relation, whatever conntrack holds.
    let foreign = frame::ip(OTHER, PEER, &udp(5000, 53));
    k.drop(TO_POD, &unreachable(&foreign), Reason::DropPolicy);
    // IPv6 packet too big for an allowed flow, quoted whole.
    let query6 = frame::ip(POD6, PEER6, &udp(5000, 53));
    k.allow(entry(POLICY, ID_PEER, DIR_EGRESS, PROTO_UDP, 53, 16), 35);
    k.pass(FROM_POD, &frame::eth(&query6), Reason::AllowPolicy);
    k.pass(
        TO_POD,
        &packet(PEER6, POD6, &icmp(true, 2, 0, 0, &query6)),
        Reason::AllowRelatedIcmp,
    );
    // The pod reporting an error about a packet it received on an allowed flow.
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16), 36);
    let syn = frame::ip(PEER, POD, &tcp(40000, 80, TCP_SYN));
    k.pass(TO_POD, &frame::eth(&syn), Reason::AllowPolicy);
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &icmp(false, 3, 1, 0, &syn[..28])),
        Reason::AllowRelatedIcmp,
    );
    assert!(
        k.conntrack()
            .iter()
            .all(|(key, _)| key.protocol != PROTO_ICMP),
        "ICMP errors create no conntrack entry"
    );
}

#[test]
fn vlan_one_tag_parsed_two_tags_dropped() {
    let mut k = node(BOTH);
    let ip = frame::ip(OTHER, PEER, &udp(5000, 53));
    // One tag: the IP packet behind it is judged (here: an unknown source).
    k.drop(
        FROM_POD,
        &frame::eth_vlan(&[0x8100], &ip),
        Reason::DropSpoofed,
    );
    k.drop(
        FROM_POD,
        &frame::eth_vlan(&[0x88a8, 0x8100], &ip),
        Reason::DropUnsupported,
    );
    k.allow(entry(POLICY, ID_PEER, DIR_EGRESS, PROTO_UDP, 53, 16), 37);
    k.pass(
        FROM_POD,
        &frame::eth_vlan(&[0x8100], &frame::ip(POD, PEER, &udp(5000, 53))),
        Reason::AllowPolicy,
    );
}

#[test]
fn allow_events_only_when_asked() {
    let mut k = node_with(
        BOTH,
        Options {
            event_allows: true,
            ..Options::default()
        },
    );
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16), 38);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_ACK)),
        Reason::AllowEstablished,
    );
    let events = k.events();
    assert_eq!(
        events.len(),
        1,
        "one event for the new flow, none for established packets"
    );
    assert_eq!(
        (events[0].verdict, events[0].reason, events[0].rule),
        (VERDICT_ALLOW, Reason::AllowPolicy.code(), 38)
    );
    // Without the flag, allows send nothing.
    let mut quiet = node(BOTH);
    quiet.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16), 38);
    quiet.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    assert!(quiet.events().is_empty());
}

// ---------------------------------------------------------------------------------
// Audit mode (endpoint flags EP_AUDIT_*) and existing flows (`--existing-flows`).

const CUT: Options = Options {
    ct_other_timeout_ns: netfence_common::DEFAULT_CT_OTHER_TIMEOUT_NS,
    ct_unreplied_timeout_ns: netfence_common::DEFAULT_CT_UNREPLIED_TIMEOUT_NS,
    event_allows: false,
    cut_existing_flows: true,
};

#[test]
fn audited_miss_passes_once_with_an_audit_event_and_its_replies_pass() {
    let mut k = node(BOTH | EP_AUDIT_INGRESS);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AuditPolicy,
    );
    let events = k.events();
    assert_eq!(events.len(), 1);
    let e = events[0];
    assert_eq!(
        (e.verdict, e.reason, e.policy, e.rule),
        (VERDICT_AUDIT, Reason::AuditPolicy.code(), POLICY, 0)
    );
    assert_eq!(
        (e.direction, e.src, e.dst_port),
        (DIR_INGRESS, addr16(PEER), 80)
    );
    let ct = k.conntrack();
    assert_eq!(
        ct.len(),
        1,
        "an audited flow gets an entry like an allowed one"
    );
    assert_eq!((ct[0].1.origin, ct[0].1.rule), (CT_ORIGIN_REMOTE, 0));
    // The rest of the flow, both ways, is established: reported once.
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(80, 40000, TCP_SYN | TCP_ACK)),
        Reason::AllowEstablished,
    );
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_ACK)),
        Reason::AllowEstablished,
    );
    assert!(k.events().is_empty());
}

#[test]
fn audited_endpoint_allows_normally_and_its_enforced_direction_still_drops() {
    let mut k = node(BOTH | EP_AUDIT_INGRESS);
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16), 41);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    assert_eq!(k.rule_hits(41), 1);
    assert!(k.events().is_empty(), "an allowed flow is no audit");
    // Egress is isolated and not audited: enforced.
    k.drop(
        FROM_POD,
        &packet(POD, PEER, &tcp(40000, 80, TCP_SYN)),
        Reason::DropPolicy,
    );
    assert_eq!(k.events()[0].verdict, VERDICT_DROP);
    // An audit flag without isolation changes nothing: not isolated passes.
    let mut open = node(EP_AUDIT_EGRESS);
    open.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowNotIsolated,
    );
    assert!(open.events().is_empty());
}

#[test]
fn new_entries_carry_the_current_generation() {
    let mut k = node(BOTH);
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16), 42);
    k.set_generation(7);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    assert_eq!(k.conntrack()[0].1.generation, 7);
}

#[test]
fn keep_lets_a_stale_entry_pass_whatever_the_policy_now_says() {
    let mut k = node(BOTH);
    let rule = entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16);
    k.allow(rule, 43);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    k.disallow(rule);
    k.set_generation(1);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_ACK)),
        Reason::AllowEstablished,
    );
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(80, 40000, TCP_ACK)),
        Reason::AllowEstablished,
    );
    assert_eq!(
        k.conntrack()[0].1.generation,
        0,
        "keep never re-checks, so never re-stamps"
    );
}

#[test]
fn cut_rechecks_a_stale_entry_once_and_restamps_it_when_still_allowed() {
    let mut k = node_with(BOTH, CUT);
    k.allow(entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16), 44);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    k.set_generation(1);
    // The opening direction's packet, then (stale again) a reply through the other
    // hook: both re-checked against the ingress rule on the server port 80.
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_ACK)),
        Reason::AllowEstablished,
    );
    assert_eq!(
        (k.conntrack()[0].1.generation, k.conntrack()[0].1.rule),
        (1, 44)
    );
    k.set_generation(2);
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(80, 40000, TCP_ACK)),
        Reason::AllowEstablished,
    );
    assert_eq!(k.conntrack()[0].1.generation, 2);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_ACK)),
        Reason::AllowEstablished,
    );
    assert_eq!(k.rule_hits(44), 1, "a re-check is no new flow");
    assert!(k.events().is_empty());
}

#[test]
fn cut_drops_a_stale_flow_the_new_policy_denies_and_forgets_it() {
    let mut k = node_with(BOTH, CUT);
    let rule = entry(POLICY, ID_PEER, DIR_INGRESS, PROTO_TCP, 80, 16);
    k.allow(rule, 45);
    k.allow(entry(POLICY, ID_PEER, DIR_EGRESS, PROTO_UDP, 53, 16), 46);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_SYN)),
        Reason::AllowPolicy,
    );
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &udp(5000, 53)),
        Reason::AllowPolicy,
    );
    k.disallow(rule);
    k.set_generation(1);
    // The reply of the TCP flow, at the other hook, is re-checked in the flow's own
    // (ingress) direction: denied now.
    k.drop(
        FROM_POD,
        &packet(POD, PEER, &tcp(80, 40000, TCP_ACK)),
        Reason::DropPolicyChanged,
    );
    let events = k.events();
    assert_eq!(events.len(), 1);
    let e = events[0];
    assert_eq!(
        (e.verdict, e.reason, e.policy, e.direction),
        (
            VERDICT_DROP,
            Reason::DropPolicyChanged.code(),
            POLICY,
            DIR_INGRESS
        )
    );
    let ct = k.conntrack();
    assert_eq!(ct.len(), 1, "the TCP entry is gone: {ct:?}");
    assert_eq!(ct[0].0.protocol, PROTO_UDP);
    // Without its entry the flow meets policy as a new one: dropped either way.
    k.drop(
        TO_POD,
        &packet(PEER, POD, &tcp(40000, 80, TCP_ACK)),
        Reason::DropPolicy,
    );
    // The unrelated UDP flow, still allowed, passes its re-check.
    k.pass(
        TO_POD,
        &packet(PEER, POD, &udp(53, 5000)),
        Reason::AllowEstablished,
    );
    assert_eq!(k.conntrack()[0].1.generation, 1);
}

#[test]
fn cut_rechecks_not_isolated_flows_and_audit_applies_to_the_recheck() {
    // Ingress isolated only: the pod's egress flow passes not isolated, with an entry.
    let mut k = node_with(EP_ISOLATED_INGRESS, CUT);
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(40000, 443, TCP_SYN)),
        Reason::AllowNotIsolated,
    );
    k.set_generation(1);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(443, 40000, TCP_SYN | TCP_ACK)),
        Reason::AllowEstablished,
    );
    // Egress becomes isolated in audit mode, nothing allows 443: audited once, passes.
    k.endpoint(POD, POLICY, BOTH | EP_AUDIT_EGRESS, TEST_RUN_IFINDEX);
    k.set_generation(2);
    k.pass(
        TO_POD,
        &packet(PEER, POD, &tcp(443, 40000, TCP_ACK)),
        Reason::AuditPolicy,
    );
    let events = k.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].verdict, events[0].direction, events[0].reason),
        (VERDICT_AUDIT, DIR_EGRESS, Reason::AuditPolicy.code())
    );
    k.pass(
        FROM_POD,
        &packet(POD, PEER, &tcp(40000, 443, TCP_ACK)),
        Reason::AllowEstablished,
    );
    assert_eq!(k.conntrack()[0].1.generation, 2);
    // Enforced: the same flow is cut on its next packet.
    k.endpoint(POD, POLICY, BOTH, TEST_RUN_IFINDEX);
    k.set_generation(3);
    k.drop(
        FROM_POD,
        &packet(POD, PEER, &tcp(40000, 443, TCP_ACK)),
        Reason::DropPolicyChanged,
    );
    assert!(k.conntrack().is_empty());
}

#[test]
fn keep_mode_programs_carry_no_recheck_code() {
    // `EXISTING_FLOWS_CUT` is a frozen load-time constant: with keep, the verifier
    // removes the re-check, so an established packet costs exactly what it did.
    let keep = Kernel::load();
    let cut = Kernel::load_with(CUT);
    for name in [FROM_POD, TO_POD] {
        let (keep, cut) = (keep.xlated_bytes(name) / 8, cut.xlated_bytes(name) / 8);
        eprintln!("{name}: {keep} xlated insns with keep, {cut} with cut");
        assert!(keep < cut, "{name}: keep {keep} insns, cut {cut}");
    }
}
