//! Packet tests of issue 13, "a hostile pod gets nothing policy does not allow": each
//! attack of the table replayed with real (often forged) packets from pod
//! namespaces in the Flannel-shaped lab. Every test has three parts: a control
//! without the agent showing the forged traffic IS delivered (so the test can fail),
//! a check that the agent enforces at the time (an ordinary denied probe is denied),
//! and the attack with the agent running, asserting exact counts of what arrived.
//! A pod here is what the threat model says: root in its own network namespace with
//! NET_RAW and NET_ADMIN there (raw `AF_PACKET` sends, its own addresses and ARP).
//! Needs root; names `nft<pid>x<n>-*` (or the test's own prefix).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod netns;

#[path = "packet_attacks/flows.rs"]
mod flows;
#[path = "packet_attacks/identity.rs"]
mod identity;
#[path = "packet_attacks/link.rs"]
mod link;
#[path = "packet_attacks/neighbours.rs"]
mod neighbours;
#[path = "packet_attacks/tunnel.rs"]
mod tunnel;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netfence_testbed::raw::{datagrams, udp_socket};
use netns::{PodNs, TestBed};

/// How long forged frames may take to arrive once sent: veths deliver in well under a
/// millisecond; this leaves room for a loaded machine. Counts are read after it.
const SETTLE: Duration = Duration::from_millis(300);
/// How long a count reads what has queued (after [`SETTLE`]).
const DRAIN: Duration = Duration::from_millis(60);
/// Frames or datagrams of each kind an attack sends.
const TIMES: usize = 4;

/// A payload marker unique to this process and `tag`, so a capture counts only the
/// test's own frames.
fn marker(tag: &str) -> Vec<u8> {
    format!("netfence-attack-{tag}-{}-", std::process::id()).into_bytes()
}

fn policy(bed: &TestBed, file: &str, yaml: &str) {
    bed.write_manifest(file, yaml).unwrap();
}

/// Pods `app=<app>` of namespace x admit only `app=<from>` on the UDP `ports`.
fn ingress_from(app: &str, from: &str, ports: &[u16]) -> String {
    let ports: String = ports
        .iter()
        .map(|p| format!("    - port: {p}\n      protocol: UDP\n"))
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {app}-from-{from}
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: {app}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: {from}
    ports:
{ports}"
    )
}

/// What a burst of UDP datagrams saw: how many reached the server, how many of its
/// answers came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Burst {
    arrived: usize,
    answered: usize,
}

/// Sends [`TIMES`] datagrams from a socket bound to `source` in `from` to `to`'s
/// socket bound to `dst`, which answers each one it receives.
fn udp_burst(from: &PodNs, source: SocketAddr, to: &PodNs, dst: SocketAddr) -> Burst {
    let tag = marker("burst");
    let server = udp_socket(&to.netns, dst).unwrap();
    let client = udp_socket(&from.netns, source).unwrap();
    for _ in 0..TIMES {
        client.send_to(&tag, dst).unwrap();
    }
    std::thread::sleep(SETTLE);
    let got = datagrams(&server, DRAIN).unwrap();
    let ours: Vec<_> = got.iter().filter(|(d, _)| *d == tag).collect();
    for (_, sender) in &ours {
        // A reply that cannot be sent (no route) is a reply that did not arrive.
        let _sent = server.send_to(b"reply", *sender);
    }
    std::thread::sleep(SETTLE);
    let answered = datagrams(&client, DRAIN)
        .unwrap()
        .iter()
        .filter(|(d, from)| d == b"reply" && *from == dst)
        .count();
    Burst {
        arrived: ours.len(),
        answered,
    }
}

/// After [`SETTLE`], how many datagrams carrying exactly `tag` each of `servers` has
/// received.
fn tagged_counts(servers: &[std::net::UdpSocket], tag: &[u8]) -> Vec<usize> {
    std::thread::sleep(SETTLE);
    servers
        .iter()
        .map(|s| {
            datagrams(s, DRAIN)
                .unwrap()
                .iter()
                .filter(|(d, _)| d == tag)
                .count()
        })
        .collect()
}

/// [`udp_burst`] from `from`'s own IPv4 address and port `sport` (0: any).
fn udp_burst_from_port(from: &PodNs, sport: u16, to: &PodNs, port: u16) -> Burst {
    udp_burst(
        from,
        SocketAddr::new(from.ip4(), sport),
        to,
        SocketAddr::new(to.ip4(), port),
    )
}

/// A source address `ip` (which the caller put on `from`'s interface) and any port.
fn any_port(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 0)
}

/// Waits until the agent has synced a change of the manifests read after generation
/// `after` (an interface sync may come first: a new pod's veth appears before the
/// manifest naming it is written).
fn wait_for_manifests_sync(agent: &mut netns::Agent, after: u64) {
    let synced_manifests = |log: &str| {
        log.lines().any(|line| {
            line.contains("cause=\"manifests\"")
                && line
                    .split("synced generation=")
                    .nth(1)
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|digits| digits.parse::<u64>().ok())
                    .is_some_and(|generation| generation > after)
        })
    };
    let mut seen = after;
    for _ in 0..20 {
        if synced_manifests(&agent.log()) {
            return;
        }
        seen = agent.wait_for_sync_after(seen).unwrap();
    }
    assert!(
        synced_manifests(&agent.log()),
        "no manifests sync after generation {after}:\n{}",
        agent.log()
    );
}
