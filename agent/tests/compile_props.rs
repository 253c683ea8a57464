//! Property tests: `compile` + `Image::lookup` against a naive reference evaluator
//! written straight from the networking.k8s.io/v1 API reference, over random small
//! clusters (2–3 namespaces with and without Namespace objects, ≤ 8 pods that are
//! IPv4, IPv6, dual-stack or address-less, running, pending, terminated or
//! hostNetwork, with TCP/UDP/SCTP named ports; ≤ 4 policies with every policyTypes
//! form, every selector operator, empty and absent selectors, ipBlocks with excepts in
//! both families, numeric, named, endPort and protocol-only ports over TCP, UDP and
//! SCTP); plus determinism and id stability.
//!
//! Cases run by default (CI): 10,000 clusters with 8 random connections each
//! (`random_connections_match_reference_evaluator`, `NFC_PROP_CONNECTION_CASES`), and
//! 128 clusters each for the three exhaustive properties (`NFC_PROP_CASES`), the first
//! of which probes every address pair with every probe.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common_state;

use std::net::IpAddr;

use common_state::{ip, ip_block, named, packet, port, port_range, proto_only};
use netfence::compile::compile;
use netfence::model::{
    ContainerPort, LabelSelector, Labels, Namespace, Operator, Peer, Pod, PodPhase, Policy, Port,
    PortSpec, Protocol, Requirement, Rule, State,
};
use netfence::source::validate::defaulted_policy_types;
use netfence_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------
// The reference evaluator: no identities, no prefixes, no grouping — every policy,
// every rule, every peer, for one connection.

fn ref_selector(selector: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().all(|r| {
        let value = labels.get(&r.key);
        match r.operator {
            Operator::In => value.is_some_and(|v| r.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    });
    labels_ok && exprs_ok
}

fn ref_namespace_labels(state: &State, namespace: &str) -> Labels {
    state
        .namespaces
        .get(namespace)
        .map(|n| n.labels.clone())
        .unwrap_or_else(|| {
            Labels::from([(
                "kubernetes.io/metadata.name".to_owned(),
                namespace.to_owned(),
            )])
        })
}

/// The live pod that owns `addr` (the first in order), if any.
fn ref_pod_at(state: &State, addr: IpAddr) -> Option<&Pod> {
    state.pods.iter().find(|p| {
        !p.host_network
            && !matches!(p.phase, PodPhase::Succeeded | PodPhase::Failed)
            && p.ips.contains(&addr)
    })
}

fn ref_peer(state: &State, policy: &Policy, peer: &Peer, addr: IpAddr) -> bool {
    match peer {
        Peer::Pods {
            namespace_selector,
            pod_selector,
        } => {
            let Some(pod) = ref_pod_at(state, addr) else {
                return false;
            };
            let namespace_ok = match namespace_selector {
                None => pod.namespace == policy.namespace,
                Some(selector) => {
                    ref_selector(selector, &ref_namespace_labels(state, &pod.namespace))
                }
            };
            namespace_ok
                && pod_selector
                    .as_ref()
                    .is_none_or(|s| ref_selector(s, &pod.labels))
        }
        Peer::IpBlock { cidr, except } => {
            cidr.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
        }
    }
}

/// Does `spec` match a connection to `dst_pod` (named ports resolve against it)?
fn ref_port(spec: &PortSpec, dst_pod: Option<&Pod>, protocol: u8, dst_port: u16) -> bool {
    if spec.protocol.number() != protocol {
        return false;
    }
    match &spec.port {
        None => true,
        Some(Port::Number(first)) => match spec.end_port {
            Some(last) => (*first..=last).contains(&dst_port),
            None => dst_port == *first,
        },
        Some(Port::Name(name)) => dst_pod.is_some_and(|pod| {
            pod.ports.iter().any(|p| {
                p.name.as_deref() == Some(name) && p.protocol == spec.protocol && p.port == dst_port
            })
        }),
    }
}

/// Is the connection allowed at `local` in one direction (`ingress`), `remote` being
/// the other end?
fn ref_direction(
    state: &State,
    local: &Pod,
    ingress: bool,
    remote: IpAddr,
    dst: IpAddr,
    protocol: u8,
    dst_port: u16,
) -> bool {
    let selecting: Vec<&Policy> = state
        .policies
        .iter()
        .filter(|p| p.namespace == local.namespace && ref_selector(&p.pod_selector, &local.labels))
        .filter(|p| {
            if ingress {
                p.isolates_ingress
            } else {
                p.isolates_egress
            }
        })
        .collect();
    if selecting.is_empty() {
        return true;
    }
    let dst_pod = ref_pod_at(state, dst);
    selecting.iter().any(|policy| {
        let rules = if ingress {
            &policy.ingress
        } else {
            &policy.egress
        };
        rules.iter().any(|rule| {
            let peer_ok = rule.peers.is_empty()
                || rule
                    .peers
                    .iter()
                    .any(|peer| ref_peer(state, policy, peer, remote));
            let port_ok = rule.ports.is_empty()
                || rule
                    .ports
                    .iter()
                    .any(|s| ref_port(s, dst_pod, protocol, dst_port));
            peer_ok && port_ok
        })
    })
}

fn ref_allowed(state: &State, src: IpAddr, dst: IpAddr, protocol: u8, dst_port: u16) -> bool {
    let egress = ref_pod_at(state, src)
        .is_none_or(|pod| ref_direction(state, pod, false, dst, dst, protocol, dst_port));
    let ingress = ref_pod_at(state, dst)
        .is_none_or(|pod| ref_direction(state, pod, true, src, dst, protocol, dst_port));
    egress && ingress
}

// ---------------------------------------------------------------------------------
// Random clusters.

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const VALUES: [&str; 2] = ["a", "b"];
const EXTERNAL: [&str; 6] = [
    "198.19.0.5",
    "198.19.1.5",
    "198.20.0.1",
    "198.18.0.9",
    "fd00::ff",
    "fd01::1",
];
const PROBES: [(u8, u16); 11] = [
    (PROTO_TCP, 80),
    (PROTO_SCTP, 9000),
    (PROTO_SCTP, 9011),
    (PROTO_TCP, 81),
    (PROTO_TCP, 8050),
    (PROTO_TCP, 8080),
    (PROTO_UDP, 53),
    (PROTO_UDP, 80),
    (PROTO_SCTP, 80),
    (PROTO_ICMP, 0),
    (PROTO_ICMPV6, 0),
];

fn block(i: usize) -> Peer {
    match i {
        0 => ip_block("198.18.0.0/29", &["198.18.0.2/31"]),
        1 => ip_block("198.18.0.4/30", &[]),
        2 => ip_block("0.0.0.0/0", &["198.18.0.0/29"]),
        3 => ip_block("fd00::/125", &["fd00::4/126"]),
        4 => ip_block("::/0", &[]),
        5 => ip_block("fd00::/64", &["fd00::/126", "fd00::8/125"]),
        _ => ip_block("198.19.0.0/16", &["198.19.1.0/24"]),
    }
}

fn port_spec(i: usize) -> PortSpec {
    match i {
        0 => port(Protocol::Tcp, 80),
        1 => port(Protocol::Udp, 53),
        2 => port_range(Protocol::Tcp, 79, 81),
        3 => port_range(Protocol::Tcp, 8000, 8100),
        4 => proto_only(Protocol::Udp),
        5 => named(Protocol::Tcp, "http"),
        6 => named(Protocol::Udp, "dns"),
        7 => named(Protocol::Sctp, "assoc"),
        8 => port_range(Protocol::Sctp, 8990, 9010),
        9 => port_range(Protocol::Udp, 50, 53),
        10 => proto_only(Protocol::Sctp),
        _ => port(Protocol::Sctp, 80),
    }
}

fn container_ports(mask: usize) -> Vec<ContainerPort> {
    let all = [
        ("http", Protocol::Tcp, 80),
        ("http", Protocol::Tcp, 8080),
        ("dns", Protocol::Udp, 53),
        ("assoc", Protocol::Sctp, 9000),
    ];
    // At most one "http": bit 0 → 80, else bit 1 → 8080.
    all.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0 && !(*i == 1 && mask & 1 != 0))
        .map(|(_, (name, protocol, port))| ContainerPort {
            name: Some((*name).to_owned()),
            port: *port,
            protocol: *protocol,
        })
        .collect()
}

/// Labels over keys `keys`, each absent or one of `VALUES` (index 2 = absent).
fn labels_of(keys: &[&str], choice: &[usize]) -> Labels {
    keys.iter()
        .zip(choice)
        .filter(|(_, c)| **c < VALUES.len())
        .map(|(k, c)| ((*k).to_owned(), VALUES[*c].to_owned()))
        .collect()
}

fn requirement(keys: &'static [&'static str]) -> impl Strategy<Value = Requirement> {
    (0..keys.len(), 0..4usize, 1..4usize).prop_map(move |(k, op, mask)| {
        let operator = [
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ][op];
        let values = if op < 2 {
            VALUES
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, v)| (*v).to_owned())
                .collect()
        } else {
            vec![]
        };
        Requirement {
            key: keys[k].to_owned(),
            operator,
            values,
        }
    })
}

fn pod_selector() -> impl Strategy<Value = LabelSelector> {
    static KEYS: [&str; 2] = ["app", "tier"];
    (
        prop::collection::vec(0..4usize, 2),
        prop::collection::vec(requirement(&KEYS), 0..2),
    )
        .prop_map(|(choice, exprs)| {
            // 2 and 3 mean "not in matchLabels", to keep selectors broad.
            LabelSelector {
                match_labels: labels_of(&KEYS, &choice),
                match_expressions: exprs,
            }
        })
}

fn namespace_selector() -> impl Strategy<Value = LabelSelector> {
    static KEYS: [&str; 1] = ["team"];
    (
        0..4usize,
        0..4usize,
        prop::collection::vec(requirement(&KEYS), 0..2),
    )
        .prop_map(|(ns, team, exprs)| {
            let mut match_labels = labels_of(&["team"], &[team]);
            if let Some(name) = NAMESPACES.get(ns) {
                match_labels.insert("ns".to_owned(), (*name).to_owned());
            }
            LabelSelector {
                match_labels,
                match_expressions: exprs,
            }
        })
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        3 => (prop::option::of(namespace_selector()), prop::option::of(pod_selector()))
            .prop_map(|(namespace_selector, pod_selector)| Peer::Pods { namespace_selector, pod_selector }),
        2 => (0..7usize).prop_map(block),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(peer(), 0..3),
        prop::collection::vec((0..12usize).prop_map(port_spec), 0..3),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn policy_strategy() -> impl Strategy<Value = (usize, LabelSelector, usize, Vec<Rule>, Vec<Rule>)> {
    (
        0..3usize,
        pod_selector(),
        0..4usize,
        prop::collection::vec(rule(), 0..3),
        prop::collection::vec(rule(), 0..3),
    )
}

fn pod_strategy() -> impl Strategy<Value = (usize, Vec<usize>, usize, bool, usize, usize, usize)> {
    // (namespace, label choice, phase, host network, families, named ports, node)
    (
        0..3usize,
        prop::collection::vec(0..3usize, 2),
        0..8usize,
        prop::bool::weighted(0.1),
        0..5usize,
        0..16usize,
        0..2usize,
    )
}

fn state_strategy() -> impl Strategy<Value = State> {
    (
        2..=3usize,
        prop::collection::vec(0..3usize, 3),
        prop::collection::vec(prop::bool::weighted(0.85), 3),
        prop::collection::vec(pod_strategy(), 1..=8),
        prop::collection::vec(policy_strategy(), 0..=4),
    )
        .prop_map(|(namespace_count, teams, has_object, pods, policies)| {
            let mut state = State::default();
            for n in 0..namespace_count {
                if has_object[n] {
                    let mut labels = labels_of(&["team"], &[teams[n]]);
                    labels.insert("ns".to_owned(), NAMESPACES[n].to_owned());
                    labels.insert(
                        "kubernetes.io/metadata.name".to_owned(),
                        NAMESPACES[n].to_owned(),
                    );
                    state.namespaces.insert(
                        NAMESPACES[n].to_owned(),
                        Namespace {
                            name: NAMESPACES[n].to_owned(),
                            labels,
                        },
                    );
                }
            }
            for (i, (ns, choice, phase, host_network, families, ports, node)) in
                pods.into_iter().enumerate()
            {
                let mut ips = Vec::new();
                // 0: IPv4, 1: IPv6, 2 and 3: both, 4: no address yet.
                if families != 1 && families != 4 {
                    ips.push(ip(&format!("198.18.0.{}", i + 1)));
                }
                if families != 0 && families != 4 {
                    ips.push(ip(&format!("fd00::{}", i + 1)));
                }
                let phase = match phase {
                    5 => PodPhase::Succeeded,
                    6 => PodPhase::Failed,
                    7 => PodPhase::Pending,
                    _ => PodPhase::Running,
                };
                state.pods.push(Pod {
                    namespace: NAMESPACES[ns % namespace_count].to_owned(),
                    name: format!("p{i}"),
                    labels: labels_of(&["app", "tier"], &choice),
                    node_name: Some(format!("node-{node}")),
                    ips,
                    host_network,
                    phase,
                    ports: container_ports(ports),
                });
            }
            for (i, (ns, pod_selector, types, ingress, egress)) in policies.into_iter().enumerate()
            {
                let listed: &[&str] = match types {
                    0 => &[],
                    1 => &["Ingress"],
                    2 => &["Egress"],
                    _ => &["Ingress", "Egress"],
                };
                let (isolates_ingress, isolates_egress) =
                    defaulted_policy_types(Some(listed), egress.len());
                state.policies.push(Policy {
                    namespace: NAMESPACES[ns % namespace_count].to_owned(),
                    name: format!("np{i}"),
                    pod_selector,
                    isolates_ingress,
                    isolates_egress,
                    ingress,
                    egress,
                    audit: false,
                });
            }
            state
                .pods
                .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            state
                .policies
                .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            state
        })
}

/// Every address worth probing: every pod's (live or not) and a few outside ones.
fn addresses(state: &State) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = state
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    all.extend(EXTERNAL.iter().map(|a| ip(a)));
    all
}

fn cases() -> u32 {
    std::env::var("NFC_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

fn connection_cases() -> u32 {
    std::env::var("NFC_PROP_CONNECTION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Ports near every boundary the generated rules use, and any port at all.
fn port_number() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => prop::sample::select(vec![
            1, 49, 50, 53, 54, 79, 80, 81, 82, 7999, 8000, 8050, 8080, 8100, 8101, 8989, 8990,
            9000, 9010, 9011, 65535,
        ]),
        1 => any::<u16>(),
    ]
}

/// A random connection: source and destination (indices into `addresses`, the
/// destination taken among the source's family), protocol (TCP, UDP, SCTP, ICMP or
/// ICMPv6 by family) and destination port.
fn connection() -> impl Strategy<Value = (prop::sample::Index, prop::sample::Index, usize, u16)> {
    (
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        0..4usize,
        port_number(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: connection_cases(), ..ProptestConfig::default() })]

    /// 10,000 random clusters (by default), 8 random connections each.
    #[test]
    fn random_connections_match_reference_evaluator(
        state in state_strategy(),
        connections in prop::collection::vec(connection(), 8),
    ) {
        let image = compile(&state, None);
        let addrs = addresses(&state);
        for (src, dst, protocol, port) in connections {
            let src = *src.get(&addrs);
            let same: Vec<IpAddr> = addrs.iter().copied().filter(|a| a.is_ipv4() == src.is_ipv4()).collect();
            let dst = *dst.get(&same);
            let (protocol, port) = match protocol {
                0 => (PROTO_TCP, port),
                1 => (PROTO_UDP, port),
                2 => (PROTO_SCTP, port),
                _ if src.is_ipv4() => (PROTO_ICMP, 0),
                _ => (PROTO_ICMPV6, 0),
            };
            let expected = ref_allowed(&state, src, dst, protocol, port);
            let verdict = image.lookup(&packet(src, dst, protocol, port));
            prop_assert_eq!(
                verdict.allowed(), expected,
                "{} -> {} proto {} port {}: {:?}\nstate: {:#?}\nimage: {:#?}",
                src, dst, protocol, port, verdict, state, image
            );
        }
    }
}

proptest! {
    // 128 cases by default (about a second); `NFC_PROP_CASES=N` for a longer hunt.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn lookup_matches_reference_evaluator(state in state_strategy()) {
        let image = compile(&state, None);
        let addrs = addresses(&state);
        let mut checked = 0usize;
        for src in &addrs {
            for dst in addrs.iter().filter(|d| d.is_ipv4() == src.is_ipv4()) {
                for (protocol, dst_port) in PROBES {
                    let expected = ref_allowed(&state, *src, *dst, protocol, dst_port);
                    let verdict = image.lookup(&packet(*src, *dst, protocol, dst_port));
                    prop_assert_eq!(
                        verdict.allowed(), expected,
                        "{} -> {} proto {} port {}: {:?}\nstate: {:#?}\nimage: {:#?}",
                        src, dst, protocol, dst_port, verdict, state, image
                    );
                    checked += 1;
                }
            }
        }
        prop_assert!(checked >= PROBES.len() * EXTERNAL.len());
    }

    #[test]
    fn compile_is_deterministic_and_node_images_agree(state in state_strategy()) {
        let image = compile(&state, None);
        prop_assert_eq!(&image, &compile(&state, None));
        for node in ["node-0", "node-1"] {
            let local = compile(&state, Some(node));
            prop_assert_eq!(&local.identities, &image.identities);
            prop_assert_eq!(&local.rules, &image.rules);
            for (addr, endpoint) in &local.endpoints {
                // Content-hashed endpoint policy ids: the same on every node.
                prop_assert_eq!(Some(endpoint), image.endpoints.get(addr));
            }
            for (entry, rule) in &local.policy {
                prop_assert_eq!(Some(rule), image.policy.get(entry));
            }
        }
    }

    #[test]
    fn ids_are_stable_when_an_unrelated_pod_is_added(state in state_strategy()) {
        let before = compile(&state, None);
        let mut grown = state.clone();
        grown.pods.push(common_state::running_pod("zz-unrelated", "new", &[("other", "label")], &["198.18.0.100"]));
        let after = compile(&grown, None);
        for (prefix, id) in &before.identities {
            prop_assert_eq!(Some(id), after.identities.get(prefix), "prefix {}", prefix);
        }
        prop_assert_eq!(&before.rules, &after.rules);
        let new_identity = after.identity_of(ip("198.18.0.100"));
        if !after.policy.keys().any(|e| e.peer == new_identity) {
            // The new pod is no peer of any rule: nothing else may change.
            prop_assert_eq!(&before.policy, &after.policy);
            for (addr, endpoint) in &before.endpoints {
                prop_assert_eq!(Some(endpoint), after.endpoints.get(addr));
            }
        }
        prop_assert!(after.endpoints.contains_key(&ip("198.18.0.100")));
    }
}
