//! The measured cluster: a seeded `netfence::scenario` of the requested size, plus the
//! bench's own namespace `bench` with two local pods, `client` (198.18.0.10) and
//! `server` (198.18.0.11), and two policies that isolate both: the server accepts the
//! client on TCP 5201 (iperf3 and the connection tests) and UDP 7000, the client may
//! send only there. Every measured packet goes through a policy lookup on both hooks.
//! A Service `server` on ClusterIP 198.19.200.1:80 fronts the server's TCP port, so
//! the client's egress allows the ClusterIP too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use netfence::compile::compile;
use netfence::dataplane::sync::Contents;
use netfence::image::Image;
use netfence::model::{
    ContainerPort, LabelSelector, Labels, Namespace, Peer, Pod, PodPhase, Policy, Port, PortSpec,
    Protocol, Rule, Service, ServicePort, State,
};
use netfence::scenario::{self, Params};

pub const NODE: &str = "node1";
pub const NAMESPACE: &str = "bench";
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
pub const CLIENT_HOST: u8 = 10;
pub const SERVER_HOST: u8 = 11;
/// TCP port of iperf3 and the connection tests.
pub const TCP_PORT: u16 = 5201;
/// UDP port of the request/response and propagation probes.
pub const UDP_PORT: u16 = 7000;
/// The server's Service: this ClusterIP on `SERVICE_PORT` → the server's TCP port.
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
pub const SERVICE_PORT: u16 = 80;
/// A local pod of a typical node (kubelet's default limit is 110).
pub const LOCAL_PODS: usize = 100;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn app(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: labels(&[("app", name)]),
        match_expressions: Vec::new(),
    }
}

fn ports(udp: bool) -> Vec<PortSpec> {
    let mut out = vec![PortSpec {
        protocol: Protocol::Tcp,
        port: Some(Port::Number(TCP_PORT)),
        end_port: None,
    }];
    if udp {
        out.push(PortSpec {
            protocol: Protocol::Udp,
            port: Some(Port::Number(UDP_PORT)),
            end_port: None,
        });
    }
    out
}

fn pod(name: &str, ip: Ipv4Addr) -> Pod {
    Pod {
        namespace: NAMESPACE.to_owned(),
        name: name.to_owned(),
        labels: labels(&[("app", name)]),
        node_name: Some(NODE.to_owned()),
        ips: vec![IpAddr::V4(ip)],
        host_network: false,
        phase: PodPhase::Running,
        ports: vec![ContainerPort {
            name: Some("iperf".to_owned()),
            port: TCP_PORT,
            protocol: Protocol::Tcp,
        }],
    }
}

/// The server's ingress policy: from the client on TCP 5201 (and UDP 7000 if `udp`).
pub fn server_policy(udp: bool) -> Policy {
    Policy {
        namespace: NAMESPACE.to_owned(),
        name: "server-ingress".to_owned(),
        pod_selector: app("server"),
        isolates_ingress: true,
        isolates_egress: false,
        ingress: vec![Rule {
            peers: vec![Peer::Pods {
                namespace_selector: None,
                pod_selector: Some(app("client")),
            }],
            ports: ports(udp),
        }],
        egress: Vec::new(),
        audit: false,
    }
}

/// The client's egress policy: to the server on TCP 5201 and UDP 7000.
pub fn client_policy() -> Policy {
    Policy {
        namespace: NAMESPACE.to_owned(),
        name: "client-egress".to_owned(),
        pod_selector: app("client"),
        isolates_ingress: false,
        isolates_egress: true,
        ingress: Vec::new(),
        egress: vec![Rule {
            peers: vec![Peer::Pods {
                namespace_selector: None,
                pod_selector: Some(app("server")),
            }],
            ports: ports(true),
        }],
        audit: false,
    }
}

/// The scenario parameters of one size.
pub fn params(pods: usize, policies: usize) -> Params {
    Params::new(pods, policies, LOCAL_PODS, NODE)
}

/// The generated cluster plus the bench namespace, pods and policies.
pub fn state(pods: usize, policies: usize) -> State {
    let mut state = scenario::generate(&params(pods, policies));
    let mut ns_labels = labels(&[]);
    ns_labels.insert(
        "kubernetes.io/metadata.name".to_owned(),
        NAMESPACE.to_owned(),
    );
    state.namespaces.insert(
        NAMESPACE.to_owned(),
        Namespace {
            name: NAMESPACE.to_owned(),
            labels: ns_labels,
        },
    );
    state.pods.push(pod("client", CLIENT));
    state.pods.push(pod("server", SERVER));
    state
        .pods
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    state.services.push(Service {
        namespace: NAMESPACE.to_owned(),
        name: "server".to_owned(),
        cluster_ips: vec![IpAddr::V4(SERVICE_VIP)],
        ports: vec![ServicePort {
            name: None,
            protocol: Protocol::Tcp,
            port: SERVICE_PORT,
            target_port: Port::Name("iperf".to_owned()),
        }],
        selector: Some(labels(&[("app", "server")])),
    });
    state.policies.push(server_policy(true));
    state.policies.push(client_policy());
    state
        .policies
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    state
}

/// The ifindex `BPF_PROG_TEST_RUN` gives a crafted frame's skb (loopback).
pub const TEST_RUN_IFINDEX: u32 = 1;

/// The image of this node and the map contents it gives, every endpoint bound to
/// the test run's port (unbound endpoints fail closed).
pub fn image(state: &State) -> (Image, Contents) {
    let image = compile(state, Some(NODE));
    let bindings: BTreeMap<_, _> = image
        .endpoints
        .keys()
        .map(|addr| (*addr, TEST_RUN_IFINDEX))
        .collect();
    let contents = Contents::from_image(&image, &bindings);
    (image, contents)
}

/// A generated pod that no bench policy allows (the denied peer of new flows).
pub fn intruder() -> IpAddr {
    scenario::pod_ip(0)
}
