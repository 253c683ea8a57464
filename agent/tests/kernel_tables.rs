//! The semantics tables through the real TC programs: each scenario compiles a
//! cluster (the x, y, z × a, b, c pods of the table tests, plus addresses outside the
//! cluster), syncs the image into a private copy of the maps with the agent's own
//! `dataplane::sync`, then runs a crafted first packet for every (source, destination,
//! protocol, port) row through `BPF_PROG_TEST_RUN`: `from_pod` at the source (its
//! egress) and `to_pod` at the destination (its ingress). Each hook's action must equal
//! `Image::lookup`'s verdict for that direction, and the verdict counters must move by
//! exactly the expected amounts. The documented rule for malformed packets (a truncated
//! L4 header drops with `malformed` before any endpoint or policy step, whatever the
//! policy) is checked on a sample of the same rows. Needs root (CAP_BPF).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed setup step is a failed test"
)]

mod common_state;
mod kernel;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common_state::*;
use kernel::frame::{self, L4, TCP_ACK, TCP_SYN, icmp, sctp, tcp, udp};
use kernel::{FROM_POD, Kernel, TC_ACT_SHOT, TC_ACT_UNSPEC, TO_POD};
use netfence::dataplane::sync::Contents;
use netfence::image::{DirectionVerdict, Image, Packet};
use netfence::model::{Protocol, State};
use netfence_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason};

/// Addresses outside the cluster that the scenarios' ipBlocks cut through.
const EXTERNAL: [&str; 4] = ["198.18.200.9", "198.19.0.5", "fd00::1:ff", "fd01::5"];

/// One scenario's datapath and what it has run so far.
struct Table {
    kernel: Kernel,
    image: Image,
    /// Source port / echo id of the next probe: every probe is a new flow.
    next_port: u16,
    expected: BTreeMap<Reason, u64>,
    before: Vec<u64>,
    rows: usize,
    wrong: Vec<String>,
}

fn l4(protocol: u8, v6: bool, src_port: u16, dst_port: u16) -> L4 {
    match protocol {
        PROTO_TCP => tcp(src_port, dst_port, TCP_SYN),
        PROTO_UDP => udp(src_port, dst_port),
        PROTO_SCTP => sctp(src_port, dst_port),
        _ => icmp(v6, if v6 { 128 } else { 8 }, 0, src_port, &[]),
    }
}

/// The same L4 header cut short (TCP 8 of 20 bytes, UDP 4 of 8, SCTP 8 of 12, ICMP
/// 4 of 8), inside a consistent IP datagram.
fn truncated(protocol: u8, v6: bool, src_port: u16, dst_port: u16) -> L4 {
    let whole = l4(protocol, v6, src_port, dst_port);
    let keep = match protocol {
        PROTO_TCP | PROTO_SCTP => 8,
        _ => 4,
    };
    frame::raw(whole.protocol, &whole.bytes[..keep])
}

fn expectation(verdict: DirectionVerdict, hook: &str) -> Option<(u32, Reason)> {
    match verdict {
        // `from_pod` never sees a packet from an address that is no local pod (it
        // would be spoofed); `to_pod` passes packets for addresses it does not know.
        DirectionVerdict::NotLocal if hook == FROM_POD => None,
        DirectionVerdict::NotLocal => Some((TC_ACT_SHOT, Reason::DropWrongPort)),
        DirectionVerdict::NotIsolated => Some((TC_ACT_UNSPEC, Reason::AllowNotIsolated)),
        DirectionVerdict::Allowed { .. } => Some((TC_ACT_UNSPEC, Reason::AllowPolicy)),
        DirectionVerdict::Denied => Some((TC_ACT_SHOT, Reason::DropPolicy)),
        DirectionVerdict::Audited => Some((TC_ACT_UNSPEC, Reason::AuditPolicy)),
    }
}

impl Table {
    fn new(state: &State) -> Table {
        let image = netfence::compile::compile(state, None);
        let mut kernel = Kernel::load();
        kernel.sync_image(&mut Contents::default(), &image);
        let before = kernel.counters();
        Table {
            kernel,
            image,
            next_port: 1024,
            expected: BTreeMap::new(),
            before,
            rows: 0,
            wrong: Vec::new(),
        }
    }

    fn port(&mut self) -> u16 {
        self.next_port += 1;
        self.next_port
    }

    fn run(&mut self, hook: &'static str, frame: &[u8], want: (u32, Reason), what: &str) {
        let got = self.kernel.run(hook, frame);
        if got != want.0 {
            self.wrong.push(format!(
                "{what} at {hook}: expected action {} ({}), got {got}",
                want.0,
                want.1.name()
            ));
        }
        *self.expected.entry(want.1).or_default() += 1;
    }

    /// One row: the first packet of a new connection, at both hooks.
    fn row(&mut self, src: IpAddr, dst: IpAddr, protocol: u8, port: u16) {
        let v6 = src.is_ipv6();
        let protocol = match protocol {
            PROTO_ICMP | PROTO_ICMPV6 if v6 => PROTO_ICMPV6,
            PROTO_ICMP | PROTO_ICMPV6 => PROTO_ICMP,
            other => other,
        };
        let dst_port = if matches!(protocol, PROTO_ICMP | PROTO_ICMPV6) {
            0
        } else {
            port
        };
        let src_port = self.port();
        let verdict = self.image.lookup(&Packet {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
        });
        let frame = frame::packet(src, dst, &l4(protocol, v6, src_port, dst_port));
        let what = format!("{src} -> {dst} proto {protocol} port {dst_port} ({verdict:?})");
        if let Some(want) = expectation(verdict.egress, FROM_POD) {
            self.run(FROM_POD, &frame, want, &what);
        }
        if let Some(want) = expectation(verdict.ingress, TO_POD) {
            self.run(TO_POD, &frame, want, &what);
        }
        self.rows += 1;
    }

    /// The same row with its L4 header cut short: dropped as malformed at both hooks.
    fn malformed_row(&mut self, src: IpAddr, dst: IpAddr, protocol: u8, port: u16) {
        let v6 = src.is_ipv6();
        let protocol = if protocol == PROTO_ICMP && v6 {
            PROTO_ICMPV6
        } else {
            protocol
        };
        let src_port = self.port();
        let frame = frame::packet(src, dst, &truncated(protocol, v6, src_port, port));
        let what = format!("truncated {src} -> {dst} proto {protocol} port {port}");
        for hook in [FROM_POD, TO_POD] {
            self.run(hook, &frame, (TC_ACT_SHOT, Reason::DropMalformed), &what);
        }
    }

    /// Every ordered pair of `addrs` of one family, with every probe.
    fn all_rows(&mut self, addrs: &[IpAddr], probes: &[(u8, u16)]) {
        for src in addrs {
            for dst in addrs
                .iter()
                .filter(|d| d.is_ipv4() == src.is_ipv4() && *d != src)
            {
                for (protocol, port) in probes {
                    self.row(*src, *dst, *protocol, *port);
                }
            }
        }
    }

    /// Asserts every action, then the counter deltas against the expected reasons.
    fn check(mut self) -> usize {
        assert!(
            self.wrong.is_empty(),
            "{} of {} rows differ:\n{}",
            self.wrong.len(),
            self.rows,
            self.wrong.join("\n")
        );
        let after = self.kernel.counters();
        let mut got = BTreeMap::new();
        for reason in Reason::ALL {
            let delta = after[reason.code() as usize] - self.before[reason.code() as usize];
            if delta > 0 {
                got.insert(reason, delta);
            }
        }
        assert_eq!(got, self.expected, "verdict counters");
        eprintln!("{} rows, kernel verdicts: {got:?}", self.rows);
        let _ = self.kernel.events();
        self.rows
    }
}

/// Every pod address of `state` and the outside addresses.
fn addresses(state: &State) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = state
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    all.extend(EXTERNAL.iter().map(|a| ip(a)));
    all
}

const BASIC_PROBES: [(u8, u16); 7] = [
    (PROTO_TCP, 80),
    (PROTO_TCP, 81),
    (PROTO_UDP, 80),
    (PROTO_UDP, 53),
    (PROTO_SCTP, 80),
    (PROTO_SCTP, 81),
    (PROTO_ICMP, 0),
];

fn run_scenario(state: &State, probes: &[(u8, u16)]) -> usize {
    let mut table = Table::new(state);
    let addrs = addresses(state);
    table.all_rows(&addrs, probes);
    for reason in [
        Reason::AllowPolicy,
        Reason::AllowNotIsolated,
        Reason::DropPolicy,
        Reason::DropWrongPort,
    ] {
        assert!(
            table.expected.contains_key(&reason),
            "the scenario exercises {}",
            reason.name()
        );
    }
    // The malformed rule on the rows from and to x/a, whatever their verdict.
    let x_a: Vec<IpAddr> = find_pod(state, "x/a").ips.clone();
    for a in &x_a {
        for other in addrs
            .iter()
            .filter(|o| o.is_ipv4() == a.is_ipv4() && *o != a)
        {
            for (protocol, port) in [
                (PROTO_TCP, 80),
                (PROTO_UDP, 53),
                (PROTO_SCTP, 80),
                (PROTO_ICMP, 0),
            ] {
                table.malformed_row(*a, *other, protocol, port);
                table.malformed_row(*other, *a, protocol, port);
            }
        }
    }
    table.check()
}

/// Ports: named (per destination pod), endPort over TCP/UDP/SCTP, protocol-only SCTP.
#[test]
fn ports_named_ranges_and_sctp() {
    let named_rule = policy("x", "named")
        .ingress(rule(vec![], vec![named(Protocol::Tcp, "serve-81-tcp")]))
        .build();
    let ranges = policy("y", "ranges")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![],
            vec![
                port_range(Protocol::Sctp, 80, 81),
                port_range(Protocol::Udp, 52, 80),
            ],
        ))
        .ingress(rule(
            vec![pods(None, Some(sel(&[("pod", "b")])))],
            vec![proto_only(Protocol::Sctp)],
        ))
        .build();
    let egress_named = policy("z", "egress-named")
        .select(sel(&[("pod", "c")]))
        .types(&["Egress"])
        .egress(rule(
            vec![pods(Some(sel(&[])), None)],
            vec![named(Protocol::Sctp, "serve-80-sctp")],
        ))
        .build();
    let mut state = xyz().policies([named_rule, ranges, egress_named]).build();
    // x/b does not declare serve-81-tcp.
    for pod in state
        .pods
        .iter_mut()
        .filter(|p| p.namespace == "x" && p.name == "b")
    {
        pod.ports
            .retain(|p| p.name.as_deref() != Some("serve-81-tcp"));
    }
    let probes = [
        BASIC_PROBES.as_slice(),
        &[
            (PROTO_UDP, 51),
            (PROTO_UDP, 81),
            (PROTO_SCTP, 82),
            (PROTO_SCTP, 9000),
        ],
    ]
    .concat();
    let rows = run_scenario(&state, &probes);
    assert!(rows > 2000, "{rows} rows");
}

/// ipBlocks with excepts over pod IPs, both families; egress to outside addresses.
#[test]
fn ip_blocks_with_excepts_over_pods_in_both_families() {
    let v4 = policy("x", "v4-block")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![ip_block(
                "198.18.0.0/16",
                &["198.18.2.0/24", "198.18.3.3/32"],
            )],
            vec![],
        ))
        .build();
    let v6 = policy("y", "v6-block")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![ip_block("fd00::1:0/112", &["fd00::1:2/128"])],
            vec![port(Protocol::Tcp, 80)],
        ))
        .build();
    let egress = policy("z", "egress-out")
        .select(sel(&[("pod", "b")]))
        .egress(rule(
            vec![ip_block("198.19.0.0/16", &[]), ip_block("fd01::/16", &[])],
            vec![],
        ))
        .egress(rule(
            vec![ip_block("0.0.0.0/0", &["198.18.1.0/24"])],
            vec![port(Protocol::Udp, 53)],
        ))
        .build();
    let state = xyz().policies([v4, v6, egress]).build();
    run_scenario(&state, &BASIC_PROBES);
}

/// Selectors (one or both, empty, expressions), policyTypes forms, deny-all both
/// ways, and ICMP only through rules without ports.
#[test]
fn selectors_policy_types_and_icmp() {
    use netfence::model::Operator;
    let deny_both = policy("x", "deny-both")
        .select(sel(&[("pod", "a")]))
        .types(&["Ingress", "Egress"])
        .build();
    let only_ns = policy("x", "only-ns")
        .select(sel(&[("pod", "b")]))
        .ingress(rule(
            vec![pods(Some(expr("ns", Operator::NotIn, &["z"])), None)],
            vec![port(Protocol::Tcp, 80)],
        ))
        .ingress(rule(vec![pods(None, Some(sel(&[])))], vec![]))
        .build();
    let egress_only = policy("y", "egress-only")
        .select(expr("pod", Operator::In, &["b", "c"]))
        .types(&["Egress"])
        .egress(rule(
            vec![pods(
                Some(sel(&[("kubernetes.io/metadata.name", "z")])),
                Some(expr("pod", Operator::Exists, &[])),
            )],
            vec![],
        ))
        .build();
    let allow_all = policy("z", "allow-all").ingress(allow_all()).build();
    let state = xyz()
        .policies([deny_both, only_ns, egress_only, allow_all])
        .build();
    run_scenario(&state, &BASIC_PROBES);
}

/// ICMP errors about an allowed flow pass to an isolated pod that no ICMP rule
/// allows (path MTU discovery); the same error about an unknown flow is plain ICMP.
#[test]
fn icmp_errors_of_allowed_flows_pass_with_a_compiled_image() {
    let p = policy("x", "tcp-only")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(vec![], vec![port(Protocol::Tcp, 80)]))
        .build();
    let state = xyz().policy(p).build();
    let mut table = Table::new(&state);
    let (x_a, y_b, router) = (
        pod_addr(&state, "x/a", false),
        pod_addr(&state, "y/b", false),
        ip("198.19.0.1"),
    );
    table.row(y_b, x_a, PROTO_TCP, 80);
    let flow_port = table.next_port;
    table.row(router, x_a, PROTO_ICMP, 0);
    assert_eq!(
        table
            .image
            .lookup(&packet(router, x_a, PROTO_ICMP, 0))
            .ingress,
        DirectionVerdict::Denied
    );
    // A router on the path reports "fragmentation needed" for x/a's reply segment.
    let reply = frame::ip(x_a, y_b, &tcp(80, flow_port, TCP_ACK));
    let error = frame::packet(router, x_a, &icmp(false, 3, 4, 0, &reply[..28]));
    table.run(
        TO_POD,
        &error,
        (TC_ACT_UNSPEC, Reason::AllowRelatedIcmp),
        "frag needed for an allowed flow",
    );
    let unknown = frame::ip(x_a, y_b, &tcp(81, 999, TCP_ACK));
    let error = frame::packet(router, x_a, &icmp(false, 3, 4, 0, &unknown[..28]));
    table.run(
        TO_POD,
        &error,
        (TC_ACT_SHOT, Reason::DropPolicy),
        "frag needed for an unknown flow",
    );
    table.check();
}
