//! Attacks 2, 6 and 9: what a flow lets through. A forged ICMP error quoting an
//! allowed flow reaches only that flow's remote end, and only short; a pod given a
//! deleted pod's address inherits none of its flows; an allowed packet goes on to the
//! next TC filter on the veth (TCX_NEXT), a denied one does not.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;

use netfence_testbed::forge::{ETH_P_IPV4, IPPROTO_ICMP, contains, ethernet, icmp4, udp4};
use netfence_testbed::raw::{RawLink, datagrams, mac, udp_socket};
use netfence_testbed::{cluster_yaml, namespace_spec, pod_spec};

use super::netns::{Attach, DENY, PodNs, Verdicts, bed, start};
use super::{Burst, DRAIN, SETTLE, TIMES, ingress_from, marker, policy, udp_burst_from_port};

/// a may send only UDP to b:53.
const A_TO_B_DNS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-to-b-dns
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: a
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector:
        matchLabels:
          app: b
    ports:
    - port: 53
      protocol: UDP
";

const FLOW_PORT: u16 = 40000;

/// ICMP port-unreachable from `a` to `outer` (at `outer_mac`), quoting a datagram
/// `quoted_src`:53 → a:40000 with `payload` bytes (starting with `tag`).
fn icmp_error(
    a: &PodNs,
    outer: Ipv4Addr,
    outer_mac: [u8; 6],
    quoted_src: Ipv4Addr,
    payload: usize,
    tag: &[u8],
) -> Vec<u8> {
    let mut data = tag.to_vec();
    data.resize(payload.max(tag.len()), b'x');
    let quote = udp4(
        SocketAddrV4::new(quoted_src, 53),
        SocketAddrV4::new(a.v4, FLOW_PORT),
        &data,
    );
    let packet = icmp4(a.v4, outer, 3, 3, [0; 4], &quote);
    ethernet(
        outer_mac,
        mac(&a.netns, "eth0").unwrap(),
        ETH_P_IPV4,
        &packet,
    )
}

#[test]
fn a_forged_icmp_error_reaches_only_the_quoted_flows_remote_end() {
    let mut bed = bed();
    bed.namespace("x", &[]);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let w = bed.pod("x", "w", &[("app", "w")], 12, &[]).unwrap();
    bed.write_cluster().unwrap();
    policy(&bed, "a.yaml", A_TO_B_DNS);
    let (b_mac, w_mac) = (
        mac(&b.netns, "eth0").unwrap(),
        mac(&w.netns, "eth0").unwrap(),
    );
    // (outer destination, its MAC, payload bytes of the quote), in report order: the
    // issue's 1,270-byte frame to W, a short one to W, a long one to B, the legit one.
    let cases = [
        (&w, w_mac, 1200),
        (&w, w_mac, 32),
        (&b, b_mac, 1200),
        (&b, b_mac, 32),
    ];
    let attack = |round: &str| -> Vec<usize> {
        let tag = marker(round);
        let sender = RawLink::open(&a.netns, "eth0").unwrap();
        let captures = [
            RawLink::open(&w.netns, "eth0").unwrap(),
            RawLink::open(&b.netns, "eth0").unwrap(),
        ];
        for (n, (to, to_mac, payload)) in cases.iter().enumerate() {
            let tag = [&tag[..], &[b'0' + u8::try_from(n).unwrap()]].concat();
            sender
                .send_times(&icmp_error(&a, to.v4, *to_mac, b.v4, *payload, &tag), TIMES)
                .unwrap();
        }
        std::thread::sleep(SETTLE);
        let [at_w, at_b] = captures.map(|c| c.capture(DRAIN).unwrap());
        cases
            .iter()
            .enumerate()
            .map(|(n, (to, _, _))| {
                let tag = [&tag[..], &[b'0' + u8::try_from(n).unwrap()]].concat();
                let frames = if to.name == "b" { &at_b } else { &at_w };
                frames
                    .iter()
                    .filter(|f| f.get(23) == Some(&IPPROTO_ICMP) && contains(f, &tag))
                    .count()
            })
            .collect()
    };
    assert_eq!(
        attack("icmp-control"),
        [TIMES; 4],
        "without the agent every forged error arrives"
    );

    let _agent = start(&bed, Attach::Auto);
    Verdicts::new().udp(&a, &w, 53, DENY).check();
    let flow = udp_burst_from_port(&a, FLOW_PORT, &b, 53);
    assert_eq!(
        flow,
        Burst {
            arrived: TIMES,
            answered: TIMES
        },
        "a's allowed flow a:40000 → b:53"
    );
    assert_eq!(
        attack("icmp"),
        [0, 0, 0, TIMES],
        "errors quoting b:53 → a:40000: to w (1,200 and 32 bytes), to b (1,200), to b (32 bytes: related)"
    );
}

#[test]
fn a_pod_given_a_deleted_pods_address_inherits_none_of_its_flows() {
    let mut bed = bed();
    let ns = [namespace_spec("x", &[])];
    bed.namespace("x", &[]);
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let p = bed.pod("x", "p", &[("app", "p")], 20, &[]).unwrap();
    let b_spec = pod_spec("x", "b", &[("app", "b")], 11, &[]);
    let p_spec = pod_spec("x", "p", &[("app", "p")], 20, &[]);
    bed.write_manifest(
        "cluster.yaml",
        &cluster_yaml(&ns, &[b_spec.clone(), p_spec]),
    )
    .unwrap();
    policy(&bed, "b.yaml", &ingress_from("b", "p", &[9000]));
    let mut agent = start(&bed, Attach::Auto);
    let allowed = Burst {
        arrived: TIMES,
        answered: TIMES,
    };
    assert_eq!(
        udp_burst_from_port(&p, 45000, &b, 9000),
        allowed,
        "p's allowed flow p:45000 → b:9000"
    );

    // p goes (CNI DEL, its namespace deleted); q gets its address, and the cluster
    // state says so in one change.
    drop(p);
    let q = bed.pod("x", "q", &[("app", "q")], 20, &[]).unwrap();
    let generation = agent.generation();
    let q_spec = pod_spec("x", "q", &[("app", "q")], 20, &[]);
    bed.write_manifest("cluster.yaml", &cluster_yaml(&ns, &[b_spec, q_spec]))
        .unwrap();
    super::wait_for_manifests_sync(&mut agent, generation);
    let denied = Burst {
        arrived: 0,
        answered: 0,
    };
    assert_eq!(
        udp_burst_from_port(&q, 45001, &b, 9000),
        denied,
        "q is not admitted by b"
    );
    assert_eq!(
        udp_burst_from_port(&q, 45000, &b, 9000),
        denied,
        "q from p's address and port 45000"
    );

    assert!(agent.stop().unwrap().success());
    assert_eq!(
        udp_burst_from_port(&q, 45000, &b, 9000),
        allowed,
        "without the agent (control)"
    );
}

/// The u32 filters this test puts after the agent on a pod veth's ingress, by pref:
/// UDP to port 9100, UDP to 9101; each mirrors to a spare veth so its action counts.
const FILTERS: [(u16, u16); 2] = [(10, 9100), (20, 9101)];
const MIRROR: &str = "nfmirror0";

fn tc(bed: &super::netns::TestBed, args: &[&str]) -> String {
    let out = Command::new("tc")
        .args(["-n", bed.node().name()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Packets the filter `pref` on `dev`'s ingress has passed to its action.
fn filter_packets(bed: &super::netns::TestBed, dev: &str, pref: u16) -> u64 {
    let out = tc(
        bed,
        &[
            "-s",
            "filter",
            "show",
            "dev",
            dev,
            "ingress",
            "pref",
            &pref.to_string(),
        ],
    );
    // "Sent <bytes> bytes <packets> pkt": the first action's statistics.
    let sent = out
        .split("Sent ")
        .nth(1)
        .unwrap_or_else(|| panic!("no action statistics: {out}"));
    match sent.split_whitespace().collect::<Vec<_>>()[..] {
        [_, "bytes", packets, "pkt", ..] => {
            packets.parse().unwrap_or_else(|e| panic!("{e}: {out}"))
        }
        _ => panic!("unexpected statistics: {out}"),
    }
}

#[test]
fn allowed_packets_reach_the_next_tc_filter_and_denied_ones_do_not() {
    let mut bed = bed();
    bed.namespace("x", &[]);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let c = bed.pod("x", "c", &[("app", "c")], 12, &[]).unwrap();
    bed.write_cluster().unwrap();
    // a may send to b only.
    policy(
        &bed,
        "a.yaml",
        &A_TO_B_DNS.replace("    ports:\n    - port: 53\n      protocol: UDP\n", ""),
    );
    let node = bed.node();
    node.ip(&[
        "link",
        "add",
        MIRROR,
        "type",
        "veth",
        "peer",
        "name",
        "nfmirror1",
    ])
    .unwrap();
    node.ip(&["link", "set", MIRROR, "up"]).unwrap();
    node.ip(&["link", "set", "nfmirror1", "up"]).unwrap();
    let dev = a.host_if.as_str();
    tc(&bed, &["qdisc", "add", "dev", dev, "clsact"]);
    for (pref, port) in FILTERS {
        let (pref, port) = (pref.to_string(), port.to_string());
        tc(
            &bed,
            &[
                "filter", "add", "dev", dev, "ingress", "pref", &pref, "protocol", "ip", "u32",
                "match", "ip", "protocol", "17", "0xff", "match", "ip", "dport", &port, "0xffff",
                "action", "mirred", "egress", "mirror", "dev", MIRROR,
            ],
        );
    }
    // Datagrams a → b:9100 and a → c:9101: (arrived at b, at c, filter 10 delta,
    // filter 20 delta).
    let round = |round: &str| -> [u64; 4] {
        let tag = marker(round);
        let before = FILTERS.map(|(pref, _)| filter_packets(&bed, dev, pref));
        let servers = [(&b, 9100), (&c, 9101)].map(|(to, port)| {
            (
                udp_socket(&to.netns, SocketAddr::new(to.ip4(), port)).unwrap(),
                to,
                port,
            )
        });
        let client = udp_socket(&a.netns, SocketAddr::new(a.ip4(), 0)).unwrap();
        for (_, to, port) in &servers {
            for _ in 0..TIMES {
                client
                    .send_to(&tag, SocketAddr::new(to.ip4(), *port))
                    .unwrap();
            }
        }
        std::thread::sleep(SETTLE);
        let arrived = servers.map(|(s, _, _)| {
            datagrams(&s, DRAIN)
                .unwrap()
                .iter()
                .filter(|(d, _)| *d == tag)
                .count() as u64
        });
        let after = FILTERS.map(|(pref, _)| filter_packets(&bed, dev, pref));
        [
            arrived[0],
            arrived[1],
            after[0] - before[0],
            after[1] - before[1],
        ]
    };
    let times = TIMES as u64;
    assert_eq!(
        round("tcx-control"),
        [times; 4],
        "without the agent: both flows arrive and both filters count them"
    );

    let _agent = start(&bed, Attach::Tcx);
    Verdicts::new().udp(&a, &c, 9000, DENY).check();
    assert_eq!(
        round("tcx"),
        [times, 0, times, 0],
        "allowed a → b:9100 arrives and reaches the filter after the agent; denied a → c:9101 neither"
    );
}
