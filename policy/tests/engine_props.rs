//! The incremental engine equals a compile from scratch: random sequences of changes
//! (pods added, deleted, relabelled, readdressed, moved between nodes, finished;
//! namespaces relabelled; policies added, changed and deleted, with and without
//! ipBlocks and named ports; Services and EndpointSlices added, changed and deleted;
//! pods announced by the CNI plugin and forgotten), and after every step the engine's
//! image must equal `compile_node` of the state it was given. Each step reaches the
//! engine one of three ways: the whole new state (`Engine::update`), the objects that
//! changed (`Engine::apply`, at times with one put twice), or a kind relisted.
//!
//! `NETFENCE_ENGINE_SEQUENCES` sets the number of sequences (default 10,000) and
//! `NETFENCE_ENGINE_SEED` the first seed; a failure names the seed and step.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use netfence_policy::change::{self, Change, Object};
use netfence_policy::compile::announced::Announced;
use netfence_policy::compile::compile_node;
use netfence_policy::compile::engine::{Engine, Node};
use netfence_policy::error::Kind;
use netfence_policy::image::{Image, canonical_addr};
use netfence_policy::model::{
    ContainerPort, EndpointSlice, LabelSelector, Labels, Namespace, Operator, Peer, Pod, PodPhase,
    Policy, Port, PortSpec, Protocol, Requirement, Rule, Service, ServicePort, SliceEndpoint,
    SlicePort, State,
};
use netfence_policy::scenario::Rng;

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const NODES: [&str; 2] = ["node-1", "node-2"];
const STEPS: usize = 12;

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

fn chance(rng: &mut Rng, percent: usize) -> bool {
    rng.below(100) < percent
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod_labels(rng: &mut Rng) -> Labels {
    let mut pairs = vec![("app", *pick(rng, &["web", "db", "api"]))];
    if chance(rng, 50) {
        pairs.push(("tier", *pick(rng, &["1", "2"])));
    }
    labels(&pairs)
}

fn address(rng: &mut Rng) -> IpAddr {
    // A small pool, so addresses are shared, reused and fall inside ipBlocks.
    if chance(rng, 20) {
        format!("fd00::{}", 1 + rng.below(4))
            .parse()
            .expect("an address")
    } else {
        format!("198.18.0.{}", 1 + rng.below(12))
            .parse()
            .expect("an address")
    }
}

fn pod(rng: &mut Rng) -> Pod {
    let ips = if chance(rng, 10) {
        Vec::new()
    } else {
        vec![address(rng)]
    };
    let mut ports = vec![ContainerPort {
        name: Some("http".to_owned()),
        port: *pick(rng, &[80, 8080]),
        protocol: Protocol::Tcp,
    }];
    if chance(rng, 30) {
        ports.clear();
    }
    Pod {
        namespace: (*pick(rng, &NAMESPACES)).to_owned(),
        name: format!("p{}", rng.below(8)),
        labels: pod_labels(rng),
        node_name: if chance(rng, 5) {
            None
        } else {
            Some((*pick(rng, &NODES)).to_owned())
        },
        ips,
        host_network: chance(rng, 5),
        phase: *pick(
            rng,
            &[
                PodPhase::Running,
                PodPhase::Running,
                PodPhase::Running,
                PodPhase::Pending,
                PodPhase::Succeeded,
            ],
        ),
        ports,
    }
}

fn selector(rng: &mut Rng) -> LabelSelector {
    match rng.below(4) {
        0 => LabelSelector::default(),
        1 => LabelSelector {
            match_labels: labels(&[("app", *pick(rng, &["web", "db", "api"]))]),
            match_expressions: Vec::new(),
        },
        2 => LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: "tier".to_owned(),
                operator: *pick(rng, &[Operator::Exists, Operator::DoesNotExist]),
                values: Vec::new(),
            }],
        },
        _ => LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: "app".to_owned(),
                operator: *pick(rng, &[Operator::In, Operator::NotIn]),
                values: vec![(*pick(rng, &["web", "db"])).to_owned()],
            }],
        },
    }
}

fn peer(rng: &mut Rng) -> Peer {
    match rng.below(5) {
        0 => Peer::IpBlock {
            cidr: (*pick(
                rng,
                &["198.18.0.0/28", "198.18.0.0/24", "fd00::/120", "0.0.0.0/0"],
            ))
            .parse()
            .expect("a cidr"),
            except: if chance(rng, 50) {
                vec!["198.18.0.4/30".parse::<IpNet>().expect("a cidr")]
            } else {
                Vec::new()
            },
        },
        1 => Peer::Pods {
            namespace_selector: Some(LabelSelector {
                match_labels: if chance(rng, 50) {
                    labels(&[("team", *pick(rng, &["x", "y"]))])
                } else {
                    labels(&[("kubernetes.io/metadata.name", *pick(rng, &NAMESPACES))])
                },
                match_expressions: Vec::new(),
            }),
            pod_selector: chance(rng, 50).then(|| selector(rng)),
        },
        _ => Peer::Pods {
            namespace_selector: None,
            pod_selector: Some(selector(rng)),
        },
    }
}

fn rule(rng: &mut Rng) -> Rule {
    let peers = (0..rng.below(3)).map(|_| peer(rng)).collect();
    let ports = (0..rng.below(3))
        .map(|_| PortSpec {
            protocol: *pick(rng, &[Protocol::Tcp, Protocol::Udp]),
            port: match rng.below(4) {
                0 => None,
                1 => Some(Port::Name("http".to_owned())),
                _ => Some(Port::Number(*pick(rng, &[80, 443, 8080]))),
            },
            end_port: None,
        })
        .collect();
    Rule { peers, ports }
}

fn policy(rng: &mut Rng) -> Policy {
    let isolates_egress = chance(rng, 50);
    Policy {
        namespace: (*pick(rng, &NAMESPACES)).to_owned(),
        name: format!("np{}", rng.below(5)),
        pod_selector: selector(rng),
        isolates_ingress: !isolates_egress || chance(rng, 50),
        isolates_egress,
        ingress: (0..rng.below(3)).map(|_| rule(rng)).collect(),
        egress: (0..rng.below(3)).map(|_| rule(rng)).collect(),
        audit: chance(rng, 10),
    }
}

fn service(rng: &mut Rng) -> Service {
    let k = rng.below(3);
    Service {
        namespace: (*pick(rng, &NAMESPACES)).to_owned(),
        name: format!("s{k}"),
        cluster_ips: vec![
            format!("198.19.0.{}", 1 + rng.below(3))
                .parse()
                .expect("an address"),
        ],
        ports: vec![ServicePort {
            name: None,
            protocol: Protocol::Tcp,
            port: 80,
            target_port: if chance(rng, 50) {
                Port::Name("http".to_owned())
            } else {
                Port::Number(8080)
            },
        }],
        selector: chance(rng, 40).then(|| labels(&[("app", *pick(rng, &["web", "db"]))])),
    }
}

fn slice(rng: &mut Rng, state: &State) -> Option<EndpointSlice> {
    let service = pick(rng, &state.services).clone();
    Some(EndpointSlice {
        namespace: service.namespace.clone(),
        name: format!("{}-x{}", service.name, rng.below(2)),
        service: Some(service.name),
        ports: vec![SlicePort {
            name: None,
            protocol: Protocol::Tcp,
            port: 8080,
        }],
        endpoints: (0..rng.below(3))
            .map(|_| SliceEndpoint {
                addresses: vec![address(rng)],
                ready: chance(rng, 80),
            })
            .collect(),
    })
}

/// Replaces or inserts `item` by (namespace, name), keeping `items` sorted.
fn upsert<T>(items: &mut Vec<T>, item: T, key: impl Fn(&T) -> (String, String)) {
    let k = key(&item);
    match items.binary_search_by(|x| key(x).cmp(&k)) {
        Ok(i) => items[i] = item,
        Err(i) => items.insert(i, item),
    }
}

fn remove_one<T>(rng: &mut Rng, items: &mut Vec<T>) {
    if !items.is_empty() {
        let i = rng.below(items.len());
        items.remove(i);
    }
}

fn pod_key(p: &Pod) -> (String, String) {
    (p.namespace.clone(), p.name.clone())
}

/// One random change to `state` (or to the announced pods).
fn change(rng: &mut Rng, state: &mut State, announced: &mut Vec<Announced>) {
    match rng.below(24) {
        0..=4 => upsert(&mut state.pods, pod(rng), pod_key),
        5 | 6 => remove_one(rng, &mut state.pods),
        7 | 8 => {
            // Relabel or readdress an existing pod.
            if !state.pods.is_empty() {
                let i = rng.below(state.pods.len());
                if chance(rng, 50) {
                    state.pods[i].labels = pod_labels(rng);
                } else {
                    state.pods[i].ips = vec![address(rng)];
                }
            }
        }
        9 => {
            if !state.pods.is_empty() {
                let i = rng.below(state.pods.len());
                state.pods[i].phase = *pick(rng, &[PodPhase::Running, PodPhase::Failed]);
                state.pods[i].node_name = Some((*pick(rng, &NODES)).to_owned());
            }
        }
        10 => {
            let name = (*pick(rng, &NAMESPACES)).to_owned();
            let mut labels = labels(&[("team", *pick(rng, &["x", "y"]))]);
            labels.insert("kubernetes.io/metadata.name".to_owned(), name.clone());
            state
                .namespaces
                .insert(name.clone(), Namespace { name, labels });
        }
        11..=13 => upsert(&mut state.policies, policy(rng), |p| {
            (p.namespace.clone(), p.name.clone())
        }),
        14 => remove_one(rng, &mut state.policies),
        15 => upsert(&mut state.services, service(rng), |s| {
            (s.namespace.clone(), s.name.clone())
        }),
        16 => remove_one(rng, &mut state.services),
        17 | 18 => {
            if !state.services.is_empty()
                && let Some(slice) = slice(rng, state)
            {
                upsert(&mut state.endpoint_slices, slice, |s| {
                    (s.namespace.clone(), s.name.clone())
                });
            }
        }
        19 => remove_one(rng, &mut state.endpoint_slices),
        20 | 21 => {
            // netfence-cni announces a pod, named (often one the state knows, at times
            // one still without an address) or not.
            let named = chance(rng, 60).then(|| {
                let waiting: Vec<&Pod> = state.pods.iter().filter(|p| p.ips.is_empty()).collect();
                if !waiting.is_empty() && chance(rng, 50) {
                    let waiting_pod = pick(rng, &waiting);
                    pod_key(waiting_pod)
                } else {
                    (
                        (*pick(rng, &NAMESPACES)).to_owned(),
                        format!("p{}", rng.below(8)),
                    )
                }
            });
            let (namespace, name) = named
                .clone()
                .unwrap_or_else(|| ("cni".to_owned(), format!("c{}", rng.below(4))));
            announced.push(Announced {
                pod: named,
                namespace,
                name,
                ips: vec![address(rng)],
            });
        }
        _ => remove_one(rng, announced),
    }
}

#[test]
fn the_engine_equals_a_compile_from_scratch_after_every_change() {
    let sequences: u64 = std::env::var("NETFENCE_ENGINE_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let first: u64 = std::env::var("NETFENCE_ENGINE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rebuilt = 0usize;
    let mut incremental = 0usize;
    for seed in first..first + sequences {
        let mut rng = Rng::new(seed);
        let node = Node {
            name: Some("node-1".to_owned()),
            addresses: vec![
                "198.18.0.200".parse().expect("an address"),
                "198.18.0.3".parse().expect("an address"),
            ],
            allow_node: chance(&mut rng, 70),
            audit_all: chance(&mut rng, 10),
        };
        let mut engine = Engine::new(node);
        let mut state = State::default();
        let mut announced: Vec<Announced> = Vec::new();
        // What a user of the engine keeps from its patches and changed addresses.
        let mut mirror = Image::default();
        let mut owners: BTreeMap<IpAddr, (String, String)> = BTreeMap::new();
        for step in 0..STEPS {
            let before = state.clone();
            change(&mut rng, &mut state, &mut announced);
            let way = rng.below(10);
            let work = match way {
                // A whole new state, compared.
                0..=2 => engine.update(std::sync::Arc::new(state.clone()), &announced),
                // Per-object changes, as a watch delivers them; sometimes an object
                // put twice (the same version again), sometimes a kind relisted.
                _ => {
                    let mut changes = change::between(&before, &state);
                    if way == 9 {
                        let kind = *pick(&mut rng, &Kind::ALL);
                        let mut listed: Vec<_> = change::objects_of(&state)
                            .into_iter()
                            .filter(|o| o.kind() == kind)
                            .collect();
                        // In any order, as a reflector store lists (hash order).
                        for i in (1..listed.len()).rev() {
                            listed.swap(i, rng.below(i + 1));
                        }
                        changes.retain(|c| !matches!(c, Change::Put(o) if o.kind() == kind));
                        changes.push(Change::Relist(kind, listed));
                    } else if way == 8
                        && let Some(again) = changes.first().cloned()
                    {
                        changes.push(again);
                    }
                    engine.apply(changes, &announced)
                }
            };
            if work.rebuilt {
                rebuilt += 1;
                mirror = engine.image().clone();
                owners = reference_owners(engine.state(), engine.image());
            } else {
                incremental += 1;
                engine.patch(&work.changed).apply_to(&mut mirror);
                for addr in &work.changed.addresses {
                    match engine.owner_of(*addr) {
                        Some((namespace, pod)) => {
                            owners.insert(*addr, (namespace.to_owned(), pod.to_owned()))
                        }
                        None => owners.remove(addr),
                    };
                }
            }
            assert!(
                &mirror == engine.image(),
                "seed {seed}, step {step} (way {way}, {work:?}): the previous image patched differs from the engine's"
            );
            assert_eq!(
                owners,
                reference_owners(engine.state(), engine.image()),
                "seed {seed}, step {step} (way {way}, {work:?}): owners kept from the changed addresses"
            );
            let expected = compile_node(&state, &engine.context(&announced));
            if engine.image() != &expected {
                let image = engine.image();
                let differ: BTreeMap<&str, bool> = [
                    ("identities", image.identities != expected.identities),
                    ("endpoints", image.endpoints != expected.endpoints),
                    ("policy", image.policy != expected.policy),
                    ("rules", image.rules != expected.rules),
                    (
                        "identity_info",
                        image.identity_info != expected.identity_info,
                    ),
                    (
                        "endpoint_policies",
                        image.endpoint_policies != expected.endpoint_policies,
                    ),
                ]
                .into_iter()
                .collect();
                panic!(
                    "seed {seed}, step {step} (way {way}, {work:?}): the engine's image differs from a compile from scratch in {differ:?}\nstate: {state:#?}\nengine: {image:#?}\nfrom scratch: {expected:#?}"
                );
            }
        }
    }
    println!(
        "{sequences} sequences of {STEPS} changes: {incremental} incremental updates, {rebuilt} rebuilds"
    );
    assert!(
        incremental > rebuilt,
        "the sequences exercise the incremental path: {incremental} vs {rebuilt}"
    );
}

/// Every address's owner pod, from scratch: the local endpoint's, else the first live
/// pod (by namespace and name) that has it.
fn reference_owners(state: &State, image: &Image) -> BTreeMap<IpAddr, (String, String)> {
    let mut out = BTreeMap::new();
    for pod in state.pods.iter().filter(|p| p.is_live_endpoint()) {
        for ip in &pod.ips {
            out.entry(canonical_addr(*ip))
                .or_insert_with(|| (pod.namespace.clone(), pod.name.clone()));
        }
    }
    for (addr, endpoint) in &image.endpoints {
        out.insert(*addr, (endpoint.namespace.clone(), endpoint.pod.clone()));
    }
    out
}

/// A client on node-1 whose egress allows pods labelled `app: web` on 8080, and the
/// Service `web` (VIP 198.19.0.1:80 → 8080) whose slice lists `backend` (198.18.0.5,
/// on node-2, labelled web, as is `other`).
fn client_and_web() -> State {
    let pod = |name: &str, app: &str, ip: &str, node: &str| Pod {
        namespace: "a".to_owned(),
        name: name.to_owned(),
        labels: labels(&[("app", app)]),
        node_name: Some(node.to_owned()),
        ips: vec![self::ip(ip)],
        host_network: false,
        phase: PodPhase::Running,
        ports: Vec::new(),
    };
    State {
        // `other` keeps the web identity alive when `backend` leaves it.
        pods: vec![
            pod("backend", "web", "198.18.0.5", "node-2"),
            pod("client", "client", "198.18.0.6", "node-1"),
            pod("other", "web", "198.18.0.7", "node-2"),
        ],
        policies: vec![Policy {
            namespace: "a".to_owned(),
            name: "client-egress".to_owned(),
            pod_selector: LabelSelector {
                match_labels: labels(&[("app", "client")]),
                match_expressions: Vec::new(),
            },
            isolates_ingress: false,
            isolates_egress: true,
            ingress: Vec::new(),
            egress: vec![Rule {
                peers: vec![Peer::Pods {
                    namespace_selector: None,
                    pod_selector: Some(LabelSelector {
                        match_labels: labels(&[("app", "web")]),
                        match_expressions: Vec::new(),
                    }),
                }],
                ports: vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(Port::Number(8080)),
                    end_port: None,
                }],
            }],
            audit: false,
        }],
        services: vec![Service {
            namespace: "a".to_owned(),
            name: "web".to_owned(),
            cluster_ips: vec![ip("198.19.0.1")],
            ports: vec![ServicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 80,
                target_port: Port::Number(8080),
            }],
            selector: None,
        }],
        endpoint_slices: vec![EndpointSlice {
            namespace: "a".to_owned(),
            name: "web-1".to_owned(),
            service: Some("web".to_owned()),
            ports: vec![SlicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            endpoints: vec![SliceEndpoint {
                addresses: vec![ip("198.18.0.5")],
                ready: true,
            }],
        }],
        ..State::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// The POLICY entries allowing web's VIP on port 80.
fn vip_entries(image: &netfence_policy::image::Image) -> usize {
    let vip = image.identity_of(ip("198.19.0.1"));
    image
        .policy
        .keys()
        .filter(|e| e.peer == vip && e.port == 80)
        .count()
}

/// A Service backend that changes identity (relabelled, no Service or slice change)
/// moves the VIP entry of a pod whose egress allows one label and not the other.
#[test]
fn a_relabelled_backend_moves_the_service_entry_it_decides() {
    let mut state = client_and_web();
    let mut engine = Engine::new(Node {
        name: Some("node-1".to_owned()),
        ..Node::default()
    });
    engine.update(std::sync::Arc::new(state.clone()), &[]);
    assert_eq!(
        vip_entries(engine.image()),
        1,
        "the client may reach web's VIP"
    );
    state.pods[0].labels = labels(&[("app", "db")]);
    let work = engine.update(std::sync::Arc::new(state.clone()), &[]);
    assert!(!work.rebuilt, "{work:?}");
    assert_eq!(work.pods_changed, 1);
    assert_eq!(engine.image(), &compile_node(&state, &engine.context(&[])));
    assert_eq!(
        vip_entries(engine.image()),
        0,
        "its only backend is no web pod any more"
    );
    state.pods[0].labels = labels(&[("app", "web")]);
    engine.update(std::sync::Arc::new(state.clone()), &[]);
    assert_eq!(engine.image(), &compile_node(&state, &engine.context(&[])));
    assert_eq!(vip_entries(engine.image()), 1);
}

/// A Service whose last EndpointSlice is deleted picks its backends by labels again:
/// a pod relabelled into its selector afterwards (no Service or slice change) becomes
/// a backend the client's egress allows.
#[test]
fn a_service_that_loses_its_slices_follows_its_selector() {
    let mut state = client_and_web();
    state.services[0].selector = Some(labels(&[("app", "web")]));
    state.pods.retain(|p| p.name != "other");
    state.pods[0].labels = labels(&[("app", "db")]);
    // The slice lists an address no pod has.
    state.endpoint_slices[0].endpoints[0].addresses = vec![ip("198.18.0.9")];
    let mut engine = Engine::new(Node {
        name: Some("node-1".to_owned()),
        ..Node::default()
    });
    engine.update(std::sync::Arc::new(state.clone()), &[]);
    assert_eq!(vip_entries(engine.image()), 0, "no backend is a web pod");
    let slice = state.endpoint_slices.remove(0);
    let key = Object::EndpointSlice(slice).key();
    engine.apply(vec![Change::Delete(key)], &[]);
    assert_eq!(engine.image(), &compile_node(&state, &engine.context(&[])));
    assert_eq!(vip_entries(engine.image()), 0, "no pod is labelled web yet");
    state.pods[0].labels = labels(&[("app", "web")]);
    let work = engine.apply(vec![Change::Put(Object::Pod(state.pods[0].clone()))], &[]);
    assert!(!work.rebuilt, "{work:?}");
    assert_eq!(engine.image(), &compile_node(&state, &engine.context(&[])));
    assert_eq!(
        vip_entries(engine.image()),
        1,
        "the relabelled pod is a backend by the selector"
    );
}
