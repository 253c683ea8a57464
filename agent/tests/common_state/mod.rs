//! Shared test builders for `model::State`: namespaces, pods, policies and rules in a
//! few words, the upstream e2e "x, y, z × a, b, c" cluster, and a reachability table
//! checked through the compiled image's `lookup`. Any test crate can `mod common_state;`.
#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the builders"
)]
#![allow(
    clippy::expect_used,
    reason = "test builders panic on malformed literals"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use netfence::image::{Image, Packet};
use netfence::model::{
    ContainerPort, EndpointSlice, LabelSelector, Labels, Namespace, Operator, Peer, Pod, PodPhase,
    Policy, Port, PortSpec, Protocol, Requirement, Rule, Service, ServicePort, SliceEndpoint,
    SlicePort, State,
};
use netfence::source::validate::defaulted_policy_types;

pub const NODE: &str = "node-1";

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `matchLabels` only.
pub fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: vec![],
    }
}

/// One matchExpression.
pub fn expr(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: Labels::new(),
        match_expressions: vec![Requirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }],
    }
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("bad CIDR {s}: {e}"))
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

/// A `from`/`to` element with selectors.
pub fn pods(
    namespace_selector: Option<LabelSelector>,
    pod_selector: Option<LabelSelector>,
) -> Peer {
    Peer::Pods {
        namespace_selector,
        pod_selector,
    }
}

pub fn ip_block(cidr: &str, except: &[&str]) -> Peer {
    Peer::IpBlock {
        cidr: net(cidr),
        except: except.iter().map(|e| net(e)).collect(),
    }
}

pub fn port(protocol: Protocol, number: u16) -> PortSpec {
    PortSpec {
        protocol,
        port: Some(Port::Number(number)),
        end_port: None,
    }
}

pub fn tcp(number: u16) -> PortSpec {
    port(Protocol::Tcp, number)
}

pub fn udp(number: u16) -> PortSpec {
    port(Protocol::Udp, number)
}

pub fn port_range(protocol: Protocol, first: u16, last: u16) -> PortSpec {
    PortSpec {
        protocol,
        port: Some(Port::Number(first)),
        end_port: Some(last),
    }
}

pub fn named(protocol: Protocol, name: &str) -> PortSpec {
    PortSpec {
        protocol,
        port: Some(Port::Name(name.to_owned())),
        end_port: None,
    }
}

/// `protocol` with no port: every port of it.
pub fn proto_only(protocol: Protocol) -> PortSpec {
    PortSpec {
        protocol,
        port: None,
        end_port: None,
    }
}

pub fn rule(peers: Vec<Peer>, ports: Vec<PortSpec>) -> Rule {
    Rule { peers, ports }
}

/// `{}`: every peer, every port.
pub fn allow_all() -> Rule {
    rule(vec![], vec![])
}

/// A NetworkPolicy under construction; `build` applies the API server's policyTypes
/// defaulting unless `types` set them.
#[derive(Debug)]
pub struct PolicyBuilder {
    policy: Policy,
    types: Option<Vec<&'static str>>,
}

pub fn policy(namespace: &str, name: &str) -> PolicyBuilder {
    PolicyBuilder {
        policy: Policy {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            pod_selector: LabelSelector::default(),
            isolates_ingress: false,
            isolates_egress: false,
            ingress: vec![],
            egress: vec![],
            audit: false,
        },
        types: None,
    }
}

impl PolicyBuilder {
    pub fn select(mut self, selector: LabelSelector) -> Self {
        self.policy.pod_selector = selector;
        self
    }

    pub fn ingress(mut self, rule: Rule) -> Self {
        self.policy.ingress.push(rule);
        self
    }

    pub fn egress(mut self, rule: Rule) -> Self {
        self.policy.egress.push(rule);
        self
    }

    /// Annotated `netfence.io/mode: audit`.
    pub fn audit(mut self) -> Self {
        self.policy.audit = true;
        self
    }

    /// Explicit `policyTypes`.
    pub fn types(mut self, types: &[&'static str]) -> Self {
        self.types = Some(types.to_vec());
        self
    }

    pub fn build(mut self) -> Policy {
        let (ingress, egress) =
            defaulted_policy_types(self.types.as_deref(), self.policy.egress.len());
        self.policy.isolates_ingress = ingress;
        self.policy.isolates_egress = egress;
        self.policy
    }
}

/// A `State` under construction.
#[derive(Debug, Default)]
pub struct StateBuilder {
    state: State,
}

impl StateBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A namespace; `kubernetes.io/metadata.name` is added as the API server does.
    pub fn namespace(mut self, name: &str, pairs: &[(&str, &str)]) -> Self {
        let mut labels = labels(pairs);
        labels.insert("kubernetes.io/metadata.name".to_owned(), name.to_owned());
        self.state.namespaces.insert(
            name.to_owned(),
            Namespace {
                name: name.to_owned(),
                labels,
            },
        );
        self
    }

    /// A running pod on `NODE` with the given addresses.
    pub fn pod(self, namespace: &str, name: &str, pairs: &[(&str, &str)], ips: &[&str]) -> Self {
        self.pod_with(running_pod(namespace, name, pairs, ips))
    }

    pub fn pod_with(mut self, pod: Pod) -> Self {
        self.state.pods.push(pod);
        self
    }

    pub fn policy(mut self, policy: Policy) -> Self {
        self.state.policies.push(policy);
        self
    }

    pub fn policies(mut self, policies: impl IntoIterator<Item = Policy>) -> Self {
        self.state.policies.extend(policies);
        self
    }

    pub fn service(mut self, service: Service) -> Self {
        self.state.services.push(service);
        self
    }

    pub fn slice(mut self, slice: EndpointSlice) -> Self {
        self.state.endpoint_slices.push(slice);
        self
    }

    /// The state, with pods and policies sorted as sources deliver them.
    pub fn build(mut self) -> State {
        self.state
            .pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.state
            .policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.state
            .services
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.state
            .endpoint_slices
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.state
    }
}

/// A ClusterIP Service with a selector (`None`: endpoints managed by hand).
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ips: &[&str],
    selector: Option<&[(&str, &str)]>,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        cluster_ips: cluster_ips.iter().map(|s| ip(s)).collect(),
        ports,
        selector: selector.map(labels),
    }
}

/// A Service port `port` → `target` (a number or a container port name).
pub fn service_port(
    name: Option<&str>,
    protocol: Protocol,
    port: u16,
    target: &str,
) -> ServicePort {
    ServicePort {
        name: name.map(str::to_owned),
        protocol,
        port,
        target_port: target
            .parse()
            .map_or_else(|_| Port::Name(target.to_owned()), Port::Number),
    }
}

/// An EndpointSlice of Service `service`: `endpoints` are (address, ready).
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    ports: &[(Option<&str>, Protocol, u16)],
    endpoints: &[(&str, bool)],
) -> EndpointSlice {
    EndpointSlice {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        service: Some(service.to_owned()),
        ports: ports
            .iter()
            .map(|(name, protocol, port)| SlicePort {
                name: name.map(str::to_owned),
                protocol: *protocol,
                port: *port,
            })
            .collect(),
        endpoints: endpoints
            .iter()
            .map(|(address, ready)| SliceEndpoint {
                addresses: vec![ip(address)],
                ready: *ready,
            })
            .collect(),
    }
}

pub fn running_pod(namespace: &str, name: &str, pairs: &[(&str, &str)], ips: &[&str]) -> Pod {
    Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: labels(pairs),
        node_name: Some(NODE.to_owned()),
        ips: ips.iter().map(|s| ip(s)).collect(),
        host_network: false,
        phase: PodPhase::Running,
        ports: vec![],
    }
}

pub fn container_port(name: &str, protocol: Protocol, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        port,
        protocol,
    }
}

/// The upstream e2e cluster: namespaces x, y, z (label `ns=<name>`), each with pods
/// a, b, c (label `pod=<name>`), at 198.18.<1|2|3>.<1|2|3> and fd00::<1|2|3>:<1|2|3>.
/// Pods serve TCP/UDP/SCTP 80 and 81 named `serve-80-tcp` etc., as upstream's do.
pub fn xyz() -> StateBuilder {
    let mut builder = StateBuilder::new();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        builder = builder.namespace(ns, &[("ns", ns)]);
        for (p, pod) in ["a", "b", "c"].iter().enumerate() {
            let v4 = format!("198.18.{}.{}", n + 1, p + 1);
            let v6 = format!("fd00::{}:{}", n + 1, p + 1);
            let mut pod = running_pod(ns, pod, &[("pod", pod)], &[v4.as_str(), v6.as_str()]);
            for (protocol, text) in [
                (Protocol::Tcp, "tcp"),
                (Protocol::Udp, "udp"),
                (Protocol::Sctp, "sctp"),
            ] {
                for number in [80, 81] {
                    pod.ports.push(container_port(
                        &format!("serve-{number}-{text}"),
                        protocol,
                        number,
                    ));
                }
            }
            builder = builder.pod_with(pod);
        }
    }
    builder
}

pub const XYZ_PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

/// The pod `ns/name`.
pub fn find_pod<'a>(state: &'a State, pod: &str) -> &'a Pod {
    state
        .pods
        .iter()
        .find(|p| format!("{}/{}", p.namespace, p.name) == pod)
        .unwrap_or_else(|| panic!("no pod {pod}"))
}

/// The pod's address of the given family (`v6`), or its first address.
pub fn pod_addr(state: &State, pod: &str, v6: bool) -> IpAddr {
    let pod = find_pod(state, pod);
    pod.ips
        .iter()
        .copied()
        .find(|a| a.is_ipv6() == v6)
        .unwrap_or_else(|| panic!("{} has no such address", pod.name))
}

pub fn packet(src: IpAddr, dst: IpAddr, protocol: u8, dst_port: u16) -> Packet {
    Packet {
        src,
        dst,
        protocol,
        src_port: 40_000,
        dst_port,
    }
}

/// A new connection from pod to pod over IPv4 (or IPv6), through `image.lookup`.
pub fn probe(
    image: &Image,
    state: &State,
    from: &str,
    to: &str,
    protocol: u8,
    port: u16,
    v6: bool,
) -> bool {
    let packet = packet(
        pod_addr(state, from, v6),
        pod_addr(state, to, v6),
        protocol,
        port,
    );
    image.lookup(&packet).allowed()
}

/// The state and its image compiled for every node (`compile(&state, None)`).
pub fn compiled(builder: StateBuilder) -> (State, Image) {
    let state = builder.build();
    let image = netfence::compile::compile(&state, None);
    (state, image)
}

/// A reachability table over the x, y, z × a, b, c pods.
pub fn all_pods(allowed: bool) -> Reachability {
    Reachability::new(&XYZ_PODS, allowed)
}

/// A new connection from pod `from` to pod `to` over IPv4.
pub fn v4(image: &Image, state: &State, from: &str, to: &str, protocol: u8, port: u16) -> bool {
    probe(image, state, from, to, protocol, port, false)
}

/// Expected reachability between pods, in the style of upstream's `Reachability`:
/// start from one value, then override by filters. A filter is `""` (every pod), a
/// namespace (`"x"`) or a pod (`"x/a"`).
#[derive(Debug, Clone)]
pub struct Reachability {
    pods: Vec<String>,
    expected: BTreeMap<(String, String), bool>,
}

fn filter_matches(filter: &str, pod: &str) -> bool {
    filter.is_empty() || filter == pod || pod.split('/').next() == Some(filter)
}

impl Reachability {
    pub fn new(pods: &[&str], allowed: bool) -> Self {
        let pods: Vec<String> = pods.iter().map(|p| (*p).to_owned()).collect();
        let mut expected = BTreeMap::new();
        for from in &pods {
            for to in &pods {
                expected.insert((from.clone(), to.clone()), allowed);
            }
        }
        Reachability { pods, expected }
    }

    /// Every pair (from matching `from`, to matching `to`) is `allowed`.
    pub fn expect(mut self, from: &str, to: &str, allowed: bool) -> Self {
        for ((f, t), value) in &mut self.expected {
            if filter_matches(from, f) && filter_matches(to, t) {
                *value = allowed;
            }
        }
        self
    }

    /// Compares every pair (except a pod with itself: loopback never reaches the
    /// pod's veth) through the image, over IPv4 and IPv6. Returns the number of probes;
    /// panics with the grids on a mismatch.
    pub fn check(&self, image: &Image, state: &State, protocol: u8, port: u16) -> usize {
        self.check_families(image, state, protocol, port, &[false, true])
    }

    /// As `check`, over the given families (`true` = IPv6).
    pub fn check_families(
        &self,
        image: &Image,
        state: &State,
        protocol: u8,
        port: u16,
        families: &[bool],
    ) -> usize {
        let mut probes = 0;
        let mut wrong = Vec::new();
        let mut grid = String::new();
        for &v6 in families {
            let _ = writeln!(
                grid,
                "{} port {port} protocol {protocol} (expected/observed):",
                if v6 { "IPv6" } else { "IPv4" }
            );
            for from in &self.pods {
                let _ = write!(grid, "{from:>5} ");
                for to in &self.pods {
                    if from == to {
                        grid.push_str(" -- ");
                        continue;
                    }
                    let expected = self.expected[&(from.clone(), to.clone())];
                    let observed = probe(image, state, from, to, protocol, port, v6);
                    probes += 1;
                    let mark = |b: bool| if b { '.' } else { 'X' };
                    let _ = write!(grid, " {}{} ", mark(expected), mark(observed));
                    if expected != observed {
                        wrong.push(format!(
                            "{from} -> {to} ({}): expected {expected}",
                            if v6 { "v6" } else { "v4" }
                        ));
                    }
                }
                grid.push('\n');
            }
        }
        assert!(
            wrong.is_empty(),
            "reachability mismatch:\n{}\n{grid}",
            wrong.join("\n")
        );
        probes
    }
}
