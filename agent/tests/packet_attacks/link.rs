//! Attacks 1 and 3: traffic no unicast policy names. Multicast and broadcast UDP are
//! judged against each receiving pod's ingress policy (a deny-all pod gets none, a
//! non-isolated pod and one that admits the sender get all), and frames of an
//! EtherType that is neither ARP, IPv4 nor IPv6 never cross between pods.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};

use netfence_testbed::forge::{BROADCAST, ETH_P_EXPERIMENTAL, contains, ethernet};
use netfence_testbed::raw::{RawLink, datagrams, ifindex, mac, udp_socket};

use super::netns::deny_all;
use super::netns::{Attach, DENY, PodNs, Verdicts, bed, start};
use super::{DRAIN, SETTLE, TIMES, ingress_from, marker, policy};

const PORT4: u16 = 9400;
const PORT6: u16 = 9406;
const GROUP4: Ipv4Addr = Ipv4Addr::new(239, 1, 2, 3);
/// ff02::1:3 (LLMNR's group), which the receivers join.
const GROUP6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 3);

/// The destinations of attack 1, in the order counts are reported.
const KINDS: [&str; 5] = [
    "224.0.0.1",
    "239.1.2.3",
    "198.18.0.255",
    "ff02::1",
    "ff02::1:3",
];

/// A pod listening on `0.0.0.0:PORT4` and `[::]:PORT6`, joined to 239.1.2.3 and
/// ff02::1:3 on its eth0.
struct Receiver<'a> {
    pod: &'a PodNs,
    v4: UdpSocket,
    v6: UdpSocket,
}

impl<'a> Receiver<'a> {
    fn join(pod: &'a PodNs) -> Receiver<'a> {
        let v4 = udp_socket(
            &pod.netns,
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), PORT4),
        )
        .unwrap();
        v4.join_multicast_v4(&GROUP4, &pod.v4).unwrap();
        let v6 = udp_socket(
            &pod.netns,
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), PORT6),
        )
        .unwrap();
        v6.join_multicast_v6(&GROUP6, ifindex(&pod.netns, "eth0").unwrap())
            .unwrap();
        Receiver { pod, v4, v6 }
    }

    /// Datagrams of this round (`tag`) received per kind, in [`KINDS`] order.
    fn counts(&self, tag: &[u8]) -> [usize; 5] {
        let mut counts = [0; 5];
        for socket in [&self.v4, &self.v6] {
            for (payload, _) in datagrams(socket, DRAIN).unwrap() {
                if let Some((&kind, prefix)) = payload.split_last()
                    && prefix == tag
                    && let Some(count) = counts.get_mut(usize::from(kind))
                {
                    *count += 1;
                }
            }
        }
        counts
    }
}

/// Pod `from` sends [`TIMES`] datagrams to each of [`KINDS`] (IPv4 from its own
/// address with SO_BROADCAST, IPv6 from its global address out of eth0), each payload
/// `tag` + the kind's index.
fn send_groups(from: &PodNs, tag: &[u8]) {
    let v4 = udp_socket(&from.netns, SocketAddr::new(from.ip4(), 0)).unwrap();
    v4.set_broadcast(true).unwrap();
    let v6 = udp_socket(&from.netns, SocketAddr::new(from.ip6(), 0)).unwrap();
    let eth0 = ifindex(&from.netns, "eth0").unwrap();
    for (kind, dst) in KINDS.iter().enumerate() {
        let ip: IpAddr = dst.parse().unwrap();
        let (socket, target) = match ip {
            IpAddr::V4(_) => (&v4, SocketAddr::new(ip, PORT4)),
            IpAddr::V6(ip) => (&v6, SocketAddr::V6(SocketAddrV6::new(ip, PORT6, 0, eth0))),
        };
        let mut payload = tag.to_vec();
        payload.push(u8::try_from(kind).unwrap());
        for _ in 0..TIMES {
            socket
                .send_to(&payload, target)
                .unwrap_or_else(|e| panic!("{} sending to {target}: {e}", from.name));
        }
    }
}

/// One round: `from` sends to every group, each receiver's counts are read.
fn round(from: &PodNs, receivers: &[Receiver<'_>], round: &str) -> Vec<(String, [usize; 5])> {
    let tag = marker(round);
    send_groups(from, &tag);
    std::thread::sleep(SETTLE);
    receivers
        .iter()
        .map(|r| (r.pod.name.clone(), r.counts(&tag)))
        .collect()
}

#[test]
fn multicast_and_broadcast_follow_the_receivers_ingress_policy() {
    let mut bed = bed();
    bed.namespace("x", &[]);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let v = bed.pod("x", "v", &[("app", "v")], 11, &[]).unwrap();
    let n = bed.pod("x", "n", &[("app", "n")], 12, &[]).unwrap();
    let p = bed.pod("x", "p", &[("app", "p")], 13, &[]).unwrap();
    bed.write_cluster().unwrap();
    // v admits nothing; p admits a on both UDP ports; n is not isolated.
    policy(&bed, "v.yaml", &deny_all("v", "[Ingress]"));
    policy(&bed, "p.yaml", &ingress_from("p", "a", &[PORT4, PORT6]));
    let receivers = [Receiver::join(&v), Receiver::join(&n), Receiver::join(&p)];
    let all = [TIMES; 5];

    let without = round(&a, &receivers, "groups-control");
    assert_eq!(
        without,
        [("v".into(), all), ("n".into(), all), ("p".into(), all)],
        "without the agent every receiver gets every datagram ({KINDS:?})"
    );

    let _agent = start(&bed, Attach::Auto);
    // Unicast to v on another port (the receivers hold PORT4 and PORT6).
    Verdicts::new().udp(&a, &v, PORT4 + 1, DENY).check();
    let with = round(&a, &receivers, "groups");
    assert_eq!(
        with,
        [("v".into(), [0; 5]), ("n".into(), all), ("p".into(), all)],
        "with the agent: deny-all v gets none, n (not isolated) and p (admits a) get all ({KINDS:?})"
    );
}

#[test]
fn unknown_ethertype_frames_do_not_cross_between_pods() {
    let mut bed = bed();
    bed.namespace("x", &[]);
    let d1 = bed.pod("x", "d1", &[("app", "d")], 10, &[]).unwrap();
    let d2 = bed.pod("x", "d2", &[("app", "d")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    policy(&bed, "d.yaml", &deny_all("d", "[Ingress, Egress]"));
    let (src, dst) = (
        mac(&d1.netns, "eth0").unwrap(),
        mac(&d2.netns, "eth0").unwrap(),
    );
    let attack = |round: &str| -> usize {
        let tag = marker(round);
        let mut payload = tag.clone();
        payload.resize(64, 0);
        let sender = RawLink::open(&d1.netns, "eth0").unwrap();
        let capture = RawLink::open(&d2.netns, "eth0").unwrap();
        for to in [dst, BROADCAST] {
            sender
                .send_times(&ethernet(to, src, ETH_P_EXPERIMENTAL, &payload), TIMES)
                .unwrap();
        }
        std::thread::sleep(SETTLE);
        capture
            .count(DRAIN, |f| {
                f.get(12..14) == Some(&ETH_P_EXPERIMENTAL.to_be_bytes()[..]) && contains(f, &tag)
            })
            .unwrap()
    };
    assert_eq!(
        attack("ethertype-control"),
        2 * TIMES,
        "without the agent: unicast and broadcast"
    );
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new().udp(&d1, &d2, 9000, DENY).check();
    assert_eq!(
        attack("ethertype"),
        0,
        "EtherType 0x88b5 frames, unicast and broadcast"
    );
}
