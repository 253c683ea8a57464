//! Deterministic, seeded cluster scenarios of any size (`model::State`), for the
//! benchmarks (`cargo xtask bench`) and scale tests: the same seed and sizes always give
//! the same state, so compile times, entry counts and map sizes compare across runs.
//!
//! Shape (chosen to look like a real cluster, not a worst case):
//! - `pods / 50` namespaces (at least one) `ns-NNNN`, labelled `team: tK` (10 teams);
//! - pod `i` lives in namespace `i % namespaces`, labels `app: aK` (10 apps per
//!   namespace) and `tier: web|api|db`, container ports `http: 80` and `metrics: 9090`,
//!   IPv4 `198.18.1.0 + i` (so `198.18.0.0/24` stays free for real test namespaces)
//!   up to 198.18.255.255, IPv6 `fd00:0:1::i` beyond;
//!   the first `local_pods` pods run on `node`, the others on 20 other nodes;
//! - policy `j` lives in namespace `j % namespaces` and selects one app there; it
//!   allows ingress from another app of its namespace on TCP 80, 443 and one port of
//!   8000–8099, and (one in three) from the `tier: web` pods of one named namespace on
//!   the named port `http`; one in four also isolates egress (UDP 53 and TCP 5432 to one
//!   app of its namespace); one in ten allows ingress from an ipBlock in 198.19.0.0/16
//!   with an except;
//! - one Service per (namespace, app), `<app>` on ClusterIP 198.19.128.0 + k, ports
//!   `http` 80 → targetPort `http` and `pg` 5432 → 5432 (what the egress rules allow),
//!   with one EndpointSlice listing its pods (ready), as the EndpointSlice controller
//!   would.
//!
//! No I/O, no clock: a splitmix64 generator seeded from `seed` decides every choice.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::model::{
    ContainerPort, EndpointSlice, LabelInterner, LabelSelector, Labels, Namespace, Peer, Pod,
    PodPhase, Policy, Port, PortSpec, Protocol, Rule, Service, ServicePort, SliceEndpoint,
    SlicePort, State,
};

/// Pods per generated namespace.
pub const PODS_PER_NAMESPACE: usize = 50;
/// Distinct `app` label values per namespace.
pub const APPS: usize = 10;
const TEAMS: usize = 10;
const OTHER_NODES: usize = 20;
const TIERS: [&str; 3] = ["web", "api", "db"];

/// The sizes and seed of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub pods: usize,
    pub policies: usize,
    /// How many of the pods run on `node` (the first ones); the rest are peers only.
    pub local_pods: usize,
    pub node: String,
    pub seed: u64,
}

impl Params {
    pub fn new(pods: usize, policies: usize, local_pods: usize, node: &str) -> Self {
        Self {
            pods,
            policies,
            local_pods: local_pods.min(pods),
            node: node.to_owned(),
            seed: 0x6e66_6265_6e63_6801,
        }
    }

    /// Number of generated namespaces.
    pub fn namespaces(&self) -> usize {
        (self.pods / PODS_PER_NAMESPACE).max(1)
    }
}

/// splitmix64: tiny, fast, and good enough to spread choices evenly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        // The modulo bias is irrelevant at these sizes.
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// The name of generated namespace `k`.
pub fn namespace_name(k: usize) -> String {
    format!("ns-{k:04}")
}

/// The name of generated pod `i`.
pub fn pod_name(i: usize) -> String {
    format!("p-{i:05}")
}

/// Pods with an IPv4 address: `198.18.1.0 + i` fills 198.18.0.0/16 (the ClusterIPs
/// and ipBlocks live in 198.19.0.0/16); the pods beyond it get IPv6 addresses.
pub const IPV4_PODS: usize = 65_280;

/// The address of generated pod `i`: `198.18.1.0 + i`, or `fd00:0:1::i` from
/// [`IPV4_PODS`] on (so no pod address is a ClusterIP, as on a real cluster).
pub fn pod_ip(i: usize) -> IpAddr {
    if i < IPV4_PODS {
        let base = u32::from(Ipv4Addr::new(198, 18, 1, 0));
        IpAddr::V4(Ipv4Addr::from(base + i as u32))
    } else {
        let base = u128::from(std::net::Ipv6Addr::new(0xfd00, 0, 1, 0, 0, 0, 0, 0));
        IpAddr::V6(std::net::Ipv6Addr::from(base + i as u128))
    }
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn match_labels(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

fn number(protocol: Protocol, port: u16) -> PortSpec {
    PortSpec {
        protocol,
        port: Some(Port::Number(port)),
        end_port: None,
    }
}

/// The pod labels of generated pod `i`.
pub fn pod_labels(params: &Params, i: usize) -> Labels {
    let namespaces = params.namespaces();
    labels(&[
        ("app", format!("a{}", (i / namespaces) % APPS)),
        ("tier", TIERS[i % TIERS.len()].to_owned()),
    ])
}

/// Generates the scenario. Pods are sorted by (namespace, name), policies likewise, as
/// `State` requires.
pub fn generate(params: &Params) -> State {
    let namespaces_n = params.namespaces();
    let mut rng = Rng::new(params.seed);
    let namespaces: BTreeMap<String, Namespace> = (0..namespaces_n)
        .map(|k| {
            let name = namespace_name(k);
            let mut labels = labels(&[("team", format!("t{}", k % TEAMS))]);
            labels.insert("kubernetes.io/metadata.name".to_owned(), name.clone());
            (name.clone(), Namespace { name, labels })
        })
        .collect();
    // Equal label maps stored once, as the Kubernetes API source interns them.
    let mut interner = LabelInterner::default();
    let mut pods: Vec<Pod> = (0..params.pods)
        .map(|i| Pod {
            namespace: namespace_name(i % namespaces_n),
            name: pod_name(i),
            labels: interner.intern(pod_labels(params, i)),
            node_name: Some(if i < params.local_pods {
                params.node.clone()
            } else {
                format!("node-{}", i % OTHER_NODES + 2)
            }),
            ips: vec![pod_ip(i)],
            host_network: false,
            phase: PodPhase::Running,
            ports: vec![
                ContainerPort {
                    name: Some("http".to_owned()),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: Some("metrics".to_owned()),
                    port: 9090,
                    protocol: Protocol::Tcp,
                },
            ],
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut policies: Vec<Policy> = (0..params.policies)
        .map(|j| policy(&mut rng, namespaces_n, j))
        .collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let (services, endpoint_slices) = services_of(&pods);
    State {
        namespaces,
        pods,
        policies,
        services,
        endpoint_slices,
    }
}

/// One Service per (namespace, app) with its EndpointSlice, sorted by (namespace,
/// name). ClusterIPs count up from 198.19.128.0.
fn services_of(pods: &[Pod]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut apps: BTreeMap<(&str, &str), Vec<IpAddr>> = BTreeMap::new();
    for pod in pods {
        if let Some(app) = pod.labels.get("app") {
            apps.entry((pod.namespace.as_str(), app.as_str()))
                .or_default()
                .extend(pod.ips.iter().copied());
        }
    }
    let base = u32::from(Ipv4Addr::new(198, 19, 128, 0));
    let mut services = Vec::with_capacity(apps.len());
    let mut slices = Vec::with_capacity(apps.len());
    for (k, ((namespace, app), addresses)) in apps.into_iter().enumerate() {
        services.push(Service {
            namespace: namespace.to_owned(),
            name: app.to_owned(),
            cluster_ips: vec![IpAddr::V4(Ipv4Addr::from(base.wrapping_add(k as u32)))],
            ports: vec![
                ServicePort {
                    name: Some("http".to_owned()),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: Port::Name("http".to_owned()),
                },
                ServicePort {
                    name: Some("pg".to_owned()),
                    protocol: Protocol::Tcp,
                    port: 5432,
                    target_port: Port::Number(5432),
                },
            ],
            selector: Some(labels(&[("app", app.to_owned())])),
        });
        slices.push(EndpointSlice {
            namespace: namespace.to_owned(),
            name: format!("{app}-gen"),
            service: Some(app.to_owned()),
            ports: vec![
                SlicePort {
                    name: Some("http".to_owned()),
                    protocol: Protocol::Tcp,
                    port: 80,
                },
                SlicePort {
                    name: Some("pg".to_owned()),
                    protocol: Protocol::Tcp,
                    port: 5432,
                },
            ],
            endpoints: addresses
                .into_iter()
                .map(|address| SliceEndpoint {
                    addresses: vec![address],
                    ready: true,
                })
                .collect(),
        });
    }
    (services, slices)
}

fn app(rng: &mut Rng) -> (&'static str, String) {
    ("app", format!("a{}", rng.below(APPS)))
}

fn policy(rng: &mut Rng, namespaces_n: usize, j: usize) -> Policy {
    let namespace = namespace_name(j % namespaces_n);
    let mut ingress = vec![Rule {
        peers: vec![Peer::Pods {
            namespace_selector: None,
            pod_selector: Some(match_labels(&[app(rng)])),
        }],
        ports: vec![
            number(Protocol::Tcp, 80),
            number(Protocol::Tcp, 443),
            number(Protocol::Tcp, 8000 + rng.below(100) as u16),
        ],
    }];
    if rng.one_in(3) {
        let other = namespace_name(rng.below(namespaces_n));
        ingress.push(Rule {
            peers: vec![Peer::Pods {
                namespace_selector: Some(match_labels(&[("kubernetes.io/metadata.name", other)])),
                pod_selector: Some(match_labels(&[("tier", "web".to_owned())])),
            }],
            ports: vec![PortSpec {
                protocol: Protocol::Tcp,
                port: Some(Port::Name("http".to_owned())),
                end_port: None,
            }],
        });
    }
    if rng.one_in(10) {
        let third = rng.below(256) as u8;
        let cidr = Ipv4Net::new(Ipv4Addr::new(198, 19, third, 0), 24).unwrap_or_default();
        let except = Ipv4Net::new(Ipv4Addr::new(198, 19, third, 128), 28).unwrap_or_default();
        ingress.push(Rule {
            peers: vec![Peer::IpBlock {
                cidr: IpNet::V4(cidr),
                except: vec![IpNet::V4(except)],
            }],
            ports: vec![number(Protocol::Tcp, 443)],
        });
    }
    let egress = if rng.one_in(4) {
        vec![Rule {
            peers: vec![Peer::Pods {
                namespace_selector: None,
                pod_selector: Some(match_labels(&[app(rng)])),
            }],
            ports: vec![number(Protocol::Udp, 53), number(Protocol::Tcp, 5432)],
        }]
    } else {
        Vec::new()
    };
    Policy {
        namespace,
        name: format!("np-{j:05}"),
        pod_selector: match_labels(&[app(rng)]),
        isolates_ingress: true,
        isolates_egress: !egress.is_empty(),
        ingress,
        egress,
        audit: false,
    }
}

/// The one-pod change of the incremental benchmark: generated pod `i` moves to another
/// `app` label (the next one), as `kubectl label --overwrite` would do. Returns false
/// if there is no such pod.
pub fn relabel_pod(state: &mut State, params: &Params, i: usize) -> bool {
    let name = pod_name(i);
    let namespace = namespace_name(i % params.namespaces());
    let Some(pod) = state
        .pods
        .iter_mut()
        .find(|p| p.name == name && p.namespace == namespace)
    else {
        return false;
    };
    let next = (i / params.namespaces() + 1) % APPS;
    pod.labels.insert("app".to_owned(), format!("a{next}"));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_state_other_seed_other_policies() {
        let params = Params::new(300, 40, 30, "node1");
        assert_eq!(generate(&params), generate(&params));
        let other = Params {
            seed: 7,
            ..params.clone()
        };
        assert_ne!(generate(&params).policies, generate(&other).policies);
    }

    #[test]
    fn sizes_and_placement_follow_the_params() {
        let params = Params::new(300, 40, 30, "node1");
        let state = generate(&params);
        assert_eq!(state.namespaces.len(), 6);
        assert_eq!(state.pods.len(), 300);
        assert_eq!(state.policies.len(), 40);
        let local = state
            .pods
            .iter()
            .filter(|p| p.node_name.as_deref() == Some("node1"))
            .count();
        assert_eq!(local, 30);
        let mut ips: Vec<_> = state.pods.iter().flat_map(|p| p.ips.clone()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 300, "pod IPs are unique");
        assert!(
            state
                .pods
                .windows(2)
                .all(|w| (&w[0].namespace, &w[0].name) < (&w[1].namespace, &w[1].name))
        );
    }

    #[test]
    fn relabel_changes_exactly_one_pod() {
        let params = Params::new(100, 10, 10, "node1");
        let before = generate(&params);
        let mut after = before.clone();
        assert!(relabel_pod(&mut after, &params, 3));
        let changed = before
            .pods
            .iter()
            .zip(&after.pods)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, 1);
        assert!(!relabel_pod(&mut after, &params, 100));
    }
}
