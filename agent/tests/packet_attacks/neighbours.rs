//! Attacks 4 and 7: the neighbours of a pod. Gratuitous ARP claiming the gateway does
//! not poison a neighbour pod's table (nor divert its traffic to the attacker);
//! traffic to a pod's fe80:: address is judged by that pod's ingress policy; neighbour
//! solicitations with a forged source and a 1 KB payload, and router advertisements,
//! from a pod reach no one.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use netfence_testbed::NODE_IP;
use netfence_testbed::forge::{
    ARP_REPLY, ARP_REQUEST, BROADCAST, ETH_P_ARP, ETH_P_IPV6, ND_NEIGHBOUR_SOLICIT,
    ND_ROUTER_ADVERT, arp, contains, ethernet, format_mac, icmp6, ipv6_multicast_mac,
    solicited_node,
};
use netfence_testbed::raw::{RawLink, ifindex, link_local, mac, neighbour, udp_socket};

use super::netns::deny_all;
use super::netns::{Attach, DENY, PodNs, Verdicts, bed, start};
use super::{DRAIN, SETTLE, TIMES, marker, policy, tagged_counts};

/// Node 1's `cni0`, the pods' default gateway.
const GATEWAY: std::net::Ipv4Addr = netfence_testbed::NODE_V4;

/// Pod `attacker` says, [`TIMES`] times each, "the gateway is at my MAC": as a
/// gratuitous ARP request (broadcast) and as a gratuitous reply to `victim`'s MAC.
fn claim_gateway(attacker: &PodNs, victim: &PodNs) {
    let own = mac(&attacker.netns, "eth0").unwrap();
    let victim_mac = mac(&victim.netns, "eth0").unwrap();
    let link = RawLink::open(&attacker.netns, "eth0").unwrap();
    let request = arp(ARP_REQUEST, own, GATEWAY, [0; 6], GATEWAY);
    let reply = arp(ARP_REPLY, own, GATEWAY, own, GATEWAY);
    link.send_times(&ethernet(BROADCAST, own, ETH_P_ARP, &request), TIMES)
        .unwrap();
    link.send_times(&ethernet(victim_mac, own, ETH_P_ARP, &reply), TIMES)
        .unwrap();
    std::thread::sleep(SETTLE);
}

/// `victim` sends [`TIMES`] datagrams to the node IP (off its subnet: through the
/// gateway); returns how many of them reached `attacker`'s eth0.
fn diverted(victim: &PodNs, attacker: &PodNs, round: &str) -> usize {
    let tag = marker(round);
    let capture = RawLink::open(&attacker.netns, "eth0").unwrap();
    let socket = udp_socket(&victim.netns, SocketAddr::new(victim.ip4(), 0)).unwrap();
    for _ in 0..TIMES {
        socket
            .send_to(&tag, SocketAddr::new(IpAddr::V4(NODE_IP), 9))
            .unwrap();
    }
    std::thread::sleep(SETTLE);
    let source = victim.v4.octets();
    capture
        .count(DRAIN, |f| {
            f.get(26..30) == Some(&source[..]) && contains(f, &tag)
        })
        .unwrap()
}

#[test]
fn gratuitous_arp_cannot_take_the_gateway_of_a_neighbour_pod() {
    let mut bed = bed();
    bed.namespace("x", &[]);
    let attacker = bed.pod("x", "atk", &[("app", "atk")], 10, &[]).unwrap();
    let victim = bed.pod("x", "vic", &[("app", "vic")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    policy(&bed, "atk.yaml", &deny_all("atk", "[Ingress]"));
    // cni0 takes the lowest port MAC until set: read it after the last pod, and
    // start the victim's entry from it (as its first packet to the gateway would).
    let gateway = mac(bed.node(), "cni0").unwrap();
    let attacker_mac = mac(&attacker.netns, "eth0").unwrap();
    let reset = || {
        let gw = GATEWAY.to_string();
        let lladdr = format_mac(gateway);
        victim
            .netns
            .ip(&[
                "neigh", "replace", &gw, "lladdr", &lladdr, "dev", "eth0", "nud", "stale",
            ])
            .unwrap();
    };
    let entry = || neighbour(&victim.netns, "eth0", IpAddr::V4(GATEWAY)).unwrap();
    reset();

    claim_gateway(&attacker, &victim);
    assert_eq!(
        entry(),
        Some(attacker_mac),
        "without the agent the victim's gateway entry is poisoned"
    );
    assert_eq!(
        diverted(&victim, &attacker, "arp-control"),
        TIMES,
        "and its gateway-bound traffic diverted"
    );

    reset();
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new().udp(&victim, &attacker, 9000, DENY).check();
    claim_gateway(&attacker, &victim);
    let poisoned = (entry(), diverted(&victim, &attacker, "arp"));
    assert_eq!(
        poisoned,
        (Some(gateway), 0),
        "the victim's gateway entry keeps cni0's MAC (the attacker's is {attacker_mac:?}) and the attacker \
         receives none of the victim's traffic"
    );
}

const PORT: u16 = 9700;

/// A neighbour solicitation for `target` with a 1 KB option (an experimental type,
/// RFC 4727, carrying `tag`), hop limit 255, from `src` to `dst`.
fn solicitation(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, tag: &[u8]) -> Vec<u8> {
    let mut body = vec![0; 4];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&option(tag, 128));
    icmp6(src, dst, 255, ND_NEIGHBOUR_SOLICIT, 0, &body)
}

/// A router advertisement (router lifetime 0: not a default router) carrying `tag`.
fn advertisement(src: Ipv6Addr, tag: &[u8]) -> Vec<u8> {
    let mut body = vec![64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&option(tag, 8));
    icmp6(src, ALL_NODES, 255, ND_ROUTER_ADVERT, 0, &body)
}

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// An ND option of type 253 (experimental) `units` × 8 bytes long starting with `tag`.
fn option(tag: &[u8], units: u8) -> Vec<u8> {
    let mut option = vec![253, units];
    option.extend_from_slice(tag);
    option.resize(usize::from(units) * 8, 0);
    option
}

/// UDP datagrams from `from`, from a socket bound to `source` (its link-local or its
/// global address), to each pod's link-local address (`fe80::…%eth0`): how many
/// arrived at each.
fn to_link_local(
    from: &PodNs,
    source: Ipv6Addr,
    to: &[(&PodNs, Ipv6Addr)],
    round: &str,
) -> Vec<usize> {
    let tag = marker(round);
    let servers: Vec<_> = to
        .iter()
        .map(|(pod, _)| {
            udp_socket(
                &pod.netns,
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), PORT),
            )
            .unwrap()
        })
        .collect();
    let eth0 = ifindex(&from.netns, "eth0").unwrap();
    let scope = if source.is_unicast_link_local() {
        eth0
    } else {
        0
    };
    let bind = SocketAddr::V6(SocketAddrV6::new(source, 0, 0, scope));
    let client = udp_socket(&from.netns, bind).unwrap();
    for (_, ll) in to {
        for _ in 0..TIMES {
            client
                .send_to(&tag, SocketAddrV6::new(*ll, PORT, 0, eth0))
                .unwrap();
        }
    }
    tagged_counts(&servers, &tag)
}

#[test]
fn link_local_traffic_and_neighbour_discovery_from_a_pod() {
    let mut bed = bed();
    bed.namespace("x", &[]);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let v = bed.pod("x", "v", &[("app", "v")], 11, &[]).unwrap();
    let n = bed.pod("x", "n", &[("app", "n")], 12, &[]).unwrap();
    bed.write_cluster().unwrap();
    policy(&bed, "v.yaml", &deny_all("v", "[Ingress]"));
    let (a_ll, v_ll, n_ll) = (
        link_local(&a.netns, "eth0").unwrap(),
        link_local(&v.netns, "eth0").unwrap(),
        link_local(&n.netns, "eth0").unwrap(),
    );
    let (a_mac, v_mac) = (
        mac(&a.netns, "eth0").unwrap(),
        mac(&v.netns, "eth0").unwrap(),
    );
    let forged = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x99);
    // Attack 7y: what a forges, in the order counts are reported.
    let frames = |tag: &[u8]| -> Vec<Vec<u8>> {
        let group = solicited_node(v.v6);
        vec![
            // Another pod's (n's) global address as source, to v's address.
            ethernet(
                v_mac,
                a_mac,
                ETH_P_IPV6,
                &solicitation(n.v6, v.v6, v.v6, &[tag, b"ns-pod"].concat()),
            ),
            // An address no one has, to v's solicited-node group.
            ethernet(
                ipv6_multicast_mac(group),
                a_mac,
                ETH_P_IPV6,
                &solicitation(forged, group, v.v6, &[tag, b"ns-any"].concat()),
            ),
            ethernet(
                ipv6_multicast_mac(ALL_NODES),
                a_mac,
                ETH_P_IPV6,
                &advertisement(a_ll, &[tag, b"ra"].concat()),
            ),
        ]
    };
    let neighbour_discovery = |round: &str| -> Vec<usize> {
        let tag = marker(round);
        let sender = RawLink::open(&a.netns, "eth0").unwrap();
        let capture = RawLink::open(&v.netns, "eth0").unwrap();
        for frame in frames(&tag) {
            sender.send_times(&frame, TIMES).unwrap();
        }
        std::thread::sleep(SETTLE);
        let frames = capture.capture(DRAIN).unwrap();
        [&b"ns-pod"[..], b"ns-any", b"ra"]
            .iter()
            .map(|kind| {
                frames
                    .iter()
                    .filter(|f| contains(f, &[&tag[..], kind].concat()))
                    .count()
            })
            .collect()
    };
    let targets = [(&v, v_ll), (&n, n_ll)];
    // Counts in report order: UDP from a's link-local address to v's and n's fe80::,
    // the same from a's global address, then the forged NS ×2 and the RA at v.
    let round = |round: &str| -> Vec<usize> {
        let mut counts = to_link_local(&a, a_ll, &targets, &format!("{round}-ll"));
        counts.extend(to_link_local(
            &a,
            a.v6,
            &targets,
            &format!("{round}-global"),
        ));
        counts.extend(neighbour_discovery(&format!("{round}-nd")));
        counts
    };
    assert_eq!(
        round("control"),
        [TIMES; 7],
        "without the agent everything arrives"
    );

    let _agent = start(&bed, Attach::Auto);
    Verdicts::new().udp(&a, &v, PORT, DENY).check();
    assert_eq!(
        round("attack"),
        [0, TIMES, 0, TIMES, 0, 0, 0],
        "to fe80:: of v (ingress deny-all) and of n (not isolated) from a's fe80:: and from its global \
         address; NS from another pod's address, NS from an unassigned address, RA"
    );
}
