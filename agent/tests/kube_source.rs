//! The Kubernetes API source against a test API server over real HTTP: the real
//! `kube::Client` (through a generated kubeconfig) and kube-runtime watchers, each
//! scenario asserting verdicts of the image compiled from what the source loads.
//! Also: the store's memory per 10,000 pods, measured with a counting allocator.
//! Services, EndpointSlices and the policy mode annotation: `kube_source/services.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod apiserver;
mod netns;
#[path = "kube_source/services.rs"]
mod services;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use apiserver::{ApiServer, NAMESPACES, PODS, POLICIES};
use netfence::compile::compile;
use netfence::compile::engine::{Engine, Node};
use netfence::image::{Image, Packet};
use netfence::source::Load;
use netfence::source::kube::{self as kube_source, Connection, KubeSource};
use netfence_testbed::kube_agent::KubeAgent;
use serde_json::{Value, json};

const NODE: &str = "nf6-node";
use apiserver::TIMEOUT;

/// A server, the source watching it, a policy engine fed the source's changes, and
/// the kubeconfig's directory.
struct Fixture {
    server: ApiServer,
    source: KubeSource,
    engine: Engine,
    changes: tokio::sync::mpsc::Receiver<()>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A server holding `objects` (resource, object), and a source started on it.
    async fn start(objects: Vec<(&'static str, Value)>) -> Fixture {
        let server = ApiServer::start().await;
        for (resource, object) in objects {
            server.apply(resource, object);
        }
        Fixture::watch(server).await
    }

    async fn watch(server: ApiServer) -> Fixture {
        let dir = tempfile::Builder::new().prefix("nf6-").tempdir().unwrap();
        let connection = Connection::Kubeconfig(server.kubeconfig(dir.path()));
        let client = kube_source::client(&connection).await.unwrap();
        let (source, changes) = KubeSource::start(&client);
        Fixture {
            server,
            source,
            engine: Engine::new(Node {
                name: Some(NODE.to_owned()),
                ..Node::default()
            }),
            changes,
            _dir: dir,
        }
    }

    /// The source's next batch applied to the engine: the state the engine holds
    /// then (which must be the state a snapshot of the source gives a new engine),
    /// with the batch's problems. `None` while the source is not ready.
    fn load(&mut self) -> Option<Load> {
        let batch = self.source.load()?;
        self.engine.apply(batch.changes, &[]);
        let mut fresh = Engine::default();
        fresh.apply(self.source.snapshot(), &[]);
        assert_eq!(
            fresh.state(),
            self.engine.state(),
            "the changes fed and a snapshot give the same state"
        );
        Some(Load {
            state: (**self.engine.state()).clone(),
            errors: batch.errors,
            warnings: batch.warnings,
        })
    }

    /// Waits until the source is ready and `done` holds for its load and compiled
    /// image; returns both.
    async fn until(&mut self, what: &str, done: impl Fn(&Load, &Image) -> bool) -> (Load, Image) {
        let start = Instant::now();
        let mut problems = (Vec::new(), Vec::new());
        loop {
            if let Some(mut load) = self.load() {
                // Problems are handed out once; keep them all for the caller.
                problems.0.append(&mut load.errors);
                problems.1.append(&mut load.warnings);
                let image = compile(&load.state, Some(NODE));
                let load = Load {
                    state: load.state,
                    errors: std::mem::take(&mut problems.0),
                    warnings: std::mem::take(&mut problems.1),
                };
                if done(&load, &image) {
                    return (load, image);
                }
                problems = (load.errors, load.warnings);
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out waiting for {what}; ready: {}, stats: {:?}",
                self.source.is_ready(),
                self.source.stats()
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), self.changes.recv()).await;
        }
    }
}

fn namespace(name: &str, labels: Value) -> (&'static str, Value) {
    (
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": labels,
                            "managedFields": [{"manager": "kubectl", "operation": "Update"}]}}),
    )
}

fn pod(namespace: &str, name: &str, labels: Value, ip: &str, node: &str) -> (&'static str, Value) {
    (
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "labels": labels,
                            "annotations": {"note": "dropped on arrival"}},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                        "ports": [{"containerPort": 80, "name": "http"}]}]},
               "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
    )
}

/// A policy selecting `app=web` pods, allowing TCP 80 from pods matching `from`
/// (a `NetworkPolicyPeer`).
fn allow_web_from(namespace: &str, name: &str, from: Value) -> (&'static str, Value) {
    (
        POLICIES,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": name, "namespace": namespace},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                        "ingress": [{"from": [from], "ports": [{"port": 80}]}]}}),
    )
}

fn allowed(image: &Image, from: &str, to: &str) -> bool {
    image
        .lookup(&Packet {
            src: from.parse::<IpAddr>().unwrap(),
            dst: to.parse::<IpAddr>().unwrap(),
            protocol: netfence_common::PROTO_TCP,
            src_port: 40000,
            dst_port: 80,
        })
        .allowed()
}

const WEB: &str = "198.18.6.10";
const API: &str = "198.18.6.11";
const OTHER: &str = "198.18.6.12";
const REMOTE: &str = "198.18.7.10";

/// prod/web (app=web), prod/api (app=api), prod/other (app=other) on this node, and
/// dev/remote (app=api) on another node.
fn cluster() -> Vec<(&'static str, Value)> {
    vec![
        namespace("prod", json!({"team": "a"})),
        namespace("dev", json!({"team": "b"})),
        pod("prod", "web", json!({"app": "web"}), WEB, NODE),
        pod("prod", "api", json!({"app": "api"}), API, NODE),
        pod("prod", "other", json!({"app": "other"}), OTHER, NODE),
        pod(
            "dev",
            "remote",
            json!({"app": "api"}),
            REMOTE,
            "nf6-elsewhere",
        ),
    ]
}

fn list_requests(server: &ApiServer, resource: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.path == resource && !r.is_watch())
        .count()
}

#[tokio::test]
async fn policy_added_changed_and_deleted() {
    let mut f = Fixture::start(cluster()).await;
    let (load, image) = f.until("the first state", |_, _| true).await;
    assert_eq!(load.state.pods.len(), 4);
    assert_eq!(load.state.namespaces.len(), 2);
    // Only pods on this node are endpoints; the remote pod is a peer identity.
    let mut endpoints: Vec<String> = image.endpoints.values().map(|e| e.pod.clone()).collect();
    endpoints.sort();
    assert_eq!(endpoints, ["api", "other", "web"]);
    assert!(allowed(&image, OTHER, WEB), "no policy: all allowed");

    let (resource, policy) = allow_web_from(
        "prod",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "api"}}}),
    );
    f.server.apply(resource, policy);
    let (_, image) = f
        .until("the policy", |_, image| !allowed(image, OTHER, WEB))
        .await;
    assert!(allowed(&image, API, WEB));
    assert!(
        !allowed(&image, REMOTE, WEB),
        "podSelector alone: the policy's namespace only"
    );

    let (resource, changed) = allow_web_from(
        "prod",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "other"}}}),
    );
    f.server.apply(resource, changed);
    let (_, image) = f
        .until("the changed policy", |_, image| allowed(image, OTHER, WEB))
        .await;
    assert!(!allowed(&image, API, WEB));

    f.server.delete(POLICIES, "prod", "web");
    let (_, image) = f
        .until("the deletion", |load, _| load.state.policies.is_empty())
        .await;
    assert!(
        allowed(&image, API, WEB) && allowed(&image, OTHER, WEB) && allowed(&image, REMOTE, WEB)
    );
    // Namespaces are watched metadata-only.
    let namespace_requests: Vec<_> = f
        .server
        .requests()
        .into_iter()
        .filter(|r| r.path == NAMESPACES)
        .collect();
    assert!(!namespace_requests.is_empty());
    for request in namespace_requests {
        assert!(
            request.accept.contains("as=PartialObjectMetadata"),
            "{request:?}"
        );
    }
}

#[tokio::test]
async fn pod_label_and_namespace_label_changes() {
    let mut objects = cluster();
    objects.push(allow_web_from(
        "prod",
        "web",
        json!({"podSelector": {"matchLabels": {"role": "client"}}}),
    ));
    objects.push(allow_web_from(
        "prod",
        "from-team",
        json!({"namespaceSelector": {"matchLabels": {"team": "a"}}}),
    ));
    // Replace the web policy's second copy: one allows role=client in prod, one allows
    // every pod of team=a namespaces.
    let mut f = Fixture::start(objects).await;
    let (_, image) = f
        .until("the policies", |load, _| load.state.policies.len() == 2)
        .await;
    assert!(allowed(&image, API, WEB), "prod is team=a");
    assert!(!allowed(&image, REMOTE, WEB), "dev is team=b");

    // Namespace label: dev joins team a.
    let (resource, dev) = namespace("dev", json!({"team": "a"}));
    f.server.apply(resource, dev);
    f.until("dev in team a", |_, image| allowed(image, REMOTE, WEB))
        .await;

    // Pod label: prod leaves team a; then only role=client pods of prod pass.
    let (resource, prod) = namespace("prod", json!({"team": "z"}));
    f.server.apply(resource, prod);
    let (_, image) = f
        .until("prod out of team a", |_, image| !allowed(image, API, WEB))
        .await;
    assert!(allowed(&image, REMOTE, WEB));
    let (resource, api) = pod(
        "prod",
        "api",
        json!({"app": "api", "role": "client"}),
        API,
        NODE,
    );
    f.server.apply(resource, api);
    let (_, image) = f
        .until("api labelled role=client", |_, image| {
            allowed(image, API, WEB)
        })
        .await;
    assert!(!allowed(&image, OTHER, WEB));
}

#[tokio::test]
async fn pod_ip_reused_by_another_pod() {
    let mut objects = cluster();
    objects.push(allow_web_from(
        "prod",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "api"}}}),
    ));
    let mut f = Fixture::start(objects).await;
    let (_, image) = f
        .until("the policy", |_, image| !allowed(image, OTHER, WEB))
        .await;
    assert!(allowed(&image, API, WEB));

    // The api pod finishes; a new pod (app=other) gets its IP before the old one is
    // deleted. The finished pod no longer owns the address.
    let (resource, mut done) = pod("prod", "api", json!({"app": "api"}), API, NODE);
    done["status"]["phase"] = json!("Succeeded");
    f.server.apply(resource, done);
    let (resource, newcomer) = pod("prod", "newcomer", json!({"app": "other"}), API, NODE);
    f.server.apply(resource, newcomer);
    let (_, image) = f
        .until("the newcomer owning the IP", |_, image| {
            !allowed(image, API, WEB)
        })
        .await;
    assert_eq!(
        image.endpoints[&API.parse::<IpAddr>().unwrap()].pod,
        "newcomer"
    );

    f.server.delete(PODS, "prod", "api");
    let (load, image) = f
        .until("the old pod gone", |load, _| load.state.pods.len() == 4)
        .await;
    assert!(!allowed(&image, API, WEB));
    assert!(load.state.pods.iter().any(|p| p.name == "newcomer"));
}

#[tokio::test]
async fn dropped_watch_resumes_from_its_resource_version() {
    let mut f = Fixture::start(cluster()).await;
    f.until("the first state", |_, _| true).await;
    wait_for(|| f.server.open_watches(POLICIES) == 1, "a policy watch").await;
    f.server.bookmark(POLICIES);
    f.server.drop_watches(POLICIES);
    // A change made while the watch is down arrives through the resumed watch.
    let (resource, policy) = allow_web_from(
        "prod",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "api"}}}),
    );
    f.server.apply(resource, policy);
    let (_, image) = f
        .until("the policy after the drop", |_, image| {
            !allowed(image, OTHER, WEB)
        })
        .await;
    assert!(allowed(&image, API, WEB));
    assert_eq!(
        list_requests(&f.server, POLICIES),
        1,
        "resumed, not relisted"
    );
    let watches: Vec<_> = f
        .server
        .requests()
        .into_iter()
        .filter(|r| r.path == POLICIES && r.is_watch())
        .collect();
    assert!(watches.len() >= 2, "{watches:?}");
    assert!(watches.iter().all(|w| {
        w.query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true")
    }));
}

#[tokio::test]
async fn gone_relists_without_disturbing_enforcement() {
    let mut objects = cluster();
    objects.push(allow_web_from(
        "prod",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "api"}}}),
    ));
    let mut f = Fixture::start(objects).await;
    f.until("the policy", |_, image| !allowed(image, OTHER, WEB))
        .await;
    wait_for(|| f.server.open_watches(POLICIES) == 1, "a policy watch").await;

    // 410 Gone, and the relist fails for a while: the last complete state stays.
    f.server.fail_lists(POLICIES, true);
    f.server.expire(POLICIES);
    wait_for(
        || list_requests(&f.server, POLICIES) >= 2,
        "a relist attempt",
    )
    .await;
    let load = f.load().expect("still ready");
    let image = compile(&load.state, Some(NODE));
    assert_eq!(load.state.policies.len(), 1);
    assert!(allowed(&image, API, WEB) && !allowed(&image, OTHER, WEB));

    // Changed while the client could not list: only the relist brings it.
    let (resource, changed) = allow_web_from(
        "prod",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "other"}}}),
    );
    f.server.apply(resource, changed);
    f.server.fail_lists(POLICIES, false);
    let (_, image) = f
        .until("the relisted policy", |_, image| allowed(image, OTHER, WEB))
        .await;
    assert!(!allowed(&image, API, WEB));
    // The 410 (list failures are retried inside the client first).
    assert!(f.source.stats().watch_errors >= 1, "{:?}", f.source.stats());
}

#[tokio::test]
async fn malformed_objects_are_reported_and_skipped() {
    let mut objects = cluster();
    let (_, mut undecodable) = pod(
        "prod",
        "undecodable",
        json!({"app": "api"}),
        "198.18.6.20",
        NODE,
    );
    undecodable["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("eighty");
    objects.push((PODS, undecodable));
    objects.push(pod(
        "prod",
        "bad-ip",
        json!({"app": "api"}),
        "198.18.6.300",
        NODE,
    ));
    objects.push(allow_web_from(
        "prod",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "api"}}}),
    ));
    let mut f = Fixture::start(objects).await;
    let (load, image) = f
        .until("the first state", |load, _| load.errors.len() == 2)
        .await;
    let errors: Vec<String> = load.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "/api/v1/pods: Pod prod/bad-ip: status.podIPs[0].ip: \"198.18.6.300\": must be a valid IP address",
            "/api/v1/pods: Pod prod/undecodable: spec.containers[0].ports[0].containerPort: invalid type: string \"eighty\", expected i32",
        ]
    );
    assert_eq!(load.state.pods.len(), 4, "the good pods are all there");
    assert!(allowed(&image, API, WEB) && !allowed(&image, OTHER, WEB));
    assert_eq!(f.source.stats().invalid_objects, 2);

    // A good pod turning bad keeps its last good version.
    let (resource, mut broken) = pod("prod", "api", json!({"app": "api"}), API, NODE);
    broken["spec"]["containers"][0]["ports"][0]["protocol"] = json!("tcp");
    while f.changes.try_recv().is_ok() {}
    f.server.apply(resource, broken);
    // The store does not change, but the run loop is told to load (and so to report).
    let signal = tokio::time::timeout(TIMEOUT, f.changes.recv()).await;
    assert_eq!(signal, Ok(Some(())));
    let (load, image) = f
        .until("the broken update", |load, _| !load.errors.is_empty())
        .await;
    assert_eq!(
        load.errors[0].to_string(),
        "/api/v1/pods: Pod prod/api: spec.containers[0].ports[0].protocol: unsupported value \"tcp\": supported values: \"TCP\", \"UDP\", \"SCTP\""
    );
    assert!(
        allowed(&image, API, WEB),
        "the last good api pod is still enforced"
    );
    assert_eq!(f.source.stats().invalid_objects, 3);
}

#[tokio::test]
async fn not_ready_until_every_kind_is_listed() {
    let server = ApiServer::start().await;
    for (resource, object) in cluster() {
        server.apply(resource, object);
    }
    server.fail_lists(PODS, true);
    let mut f = Fixture::watch(server).await;
    wait_for(
        || f.server.open_watches(NAMESPACES) == 1 && f.server.open_watches(POLICIES) == 1,
        "namespaces and policies listed and watched",
    )
    .await;
    wait_for(|| list_requests(&f.server, PODS) >= 2, "a retried pod list").await;
    assert!(f.source.load().is_none(), "not ready without pods");
    assert_eq!(f.source.waiting_for(), ["Pod"]);

    f.server.fail_lists(PODS, false);
    let (load, image) = f.until("ready", |_, _| true).await;
    assert_eq!(load.state.pods.len(), 4);
    assert_eq!(image.endpoints.len(), 3);
    assert!(f.source.waiting_for().is_empty());
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET over a fresh connection; returns (status line, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test]
async fn health_endpoints_over_http() {
    use netfence::telemetry::{self, Health, Telemetry};
    let health = std::sync::Arc::new(Health::new());
    health.beat();
    let telemetry = Telemetry {
        health: health.clone(),
    };
    let (addr, _task) = telemetry::serve("127.0.0.1:0".parse().unwrap(), telemetry)
        .await
        .unwrap();
    assert_eq!(
        http_get(addr, "/healthz").await,
        ("HTTP/1.1 200 OK".into(), "ok\n".into())
    );
    health.set_waiting("waiting for the first complete list of Pod");
    assert_eq!(
        http_get(addr, "/readyz").await,
        (
            "HTTP/1.1 503 Service Unavailable".into(),
            "not ready: waiting for the first complete list of Pod\n".into()
        )
    );
    health.set_ready();
    assert_eq!(
        http_get(addr, "/readyz").await,
        ("HTTP/1.1 200 OK".into(), "ready\n".into())
    );
    assert_eq!(http_get(addr, "/nope").await.0, "HTTP/1.1 404 Not Found");
}

// ---------------------------------------------------------------------------------
// In network namespaces: the real agent, watching the test API server.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_verdicts_follow_the_api_server() {
    let mut bed = netns::bed();
    bed.namespace("prod", &[("team", "a")]);
    let web = bed
        .pod("prod", "web", &[("app", "web")], 10, &[("http", 80)])
        .unwrap();
    let client = bed
        .pod("prod", "client", &[("app", "client")], 11, &[])
        .unwrap();
    let other = bed
        .pod("prod", "other", &[("app", "other")], 12, &[])
        .unwrap();
    // The server listens on the node namespace's loopback, where the agent runs.
    let listener = bed
        .node()
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let server = ApiServer::start_with(listener);
    // The bed's cluster as `kubectl get -o yaml` prints it, served by the API server.
    let cluster: serde_yaml_ng::Value = serde_yaml_ng::from_str(&bed.cluster_yaml()).unwrap();
    let cluster = serde_json::to_value(cluster).unwrap();
    for item in cluster["items"].as_array().unwrap() {
        let resource = if item["kind"] == "Namespace" {
            NAMESPACES
        } else {
            PODS
        };
        server.apply(resource, item.clone());
    }
    let dir = tempfile::Builder::new().prefix("nf6-").tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path());
    let log = dir.path().join("agent.log");
    let agent = tokio::task::block_in_place(|| {
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_netfence"));
        KubeAgent::start(binary, bed.node(), &kubeconfig, log, &[], TIMEOUT).unwrap()
    });
    assert!(agent.log().contains("source=kubeconfig"), "{}", agent.log());
    tokio::task::block_in_place(|| {
        netns::Verdicts::new()
            .tcp(&client, &web, 80, netns::ALLOW)
            .tcp(&other, &web, 80, netns::ALLOW)
            .check();
    });

    let generation = agent.generation();
    let (resource, policy) = allow_web_from(
        "prod",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "client"}}}),
    );
    server.apply(resource, policy);
    tokio::task::block_in_place(|| {
        agent.wait_sync_after(generation, TIMEOUT).unwrap();
        netns::Verdicts::new()
            .tcp(&client, &web, 80, netns::ALLOW)
            .tcp(&other, &web, 80, netns::DENY)
            .check();
    });

    // A label change on the API server moves `other` into the allowed set.
    let generation = agent.generation();
    let mut relabelled = cluster["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "other")
        .unwrap()
        .clone();
    relabelled["metadata"]["labels"] = json!({"app": "client"});
    server.apply(PODS, relabelled);
    tokio::task::block_in_place(|| {
        agent.wait_sync_after(generation, TIMEOUT).unwrap();
        netns::Verdicts::new()
            .tcp(&other, &web, 80, netns::ALLOW)
            .check();
    });

    let generation = agent.generation();
    server.delete(POLICIES, "prod", "web");
    tokio::task::block_in_place(|| {
        agent.wait_sync_after(generation, TIMEOUT).unwrap();
        netns::Verdicts::new()
            .tcp(&client, &web, 80, netns::ALLOW)
            .tcp(&other, &web, 80, netns::ALLOW)
            .check();
    });
    drop(agent);
}

// ---------------------------------------------------------------------------------
// Memory: live heap bytes held by the pod store, per 10,000 pods.

/// Counts live heap bytes allocated by the current thread while enabled.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = LIVE.try_with(|live| live.set(live.get() + delta));
        }
    });
}

// SAFETY: forwards to the system allocator; the bookkeeping allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(isize::try_from(layout.size()).unwrap_or(isize::MAX));
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-isize::try_from(layout.size()).unwrap_or(isize::MAX));
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn store_memory_per_10k_pods() {
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use netfence::source::kube::Slim as _;

    const PODS_N: usize = 10_000;
    // Pods as a real API server sends them: managed fields, annotations, owner
    // references, two containers with env and probes, status conditions.
    let raw = |i: usize| -> kube::api::DynamicObject {
        serde_json::from_value(apiserver::realistic_pod(i)).unwrap()
    };
    let json_bytes = serde_json::to_vec(&raw(1234)).unwrap().len();

    let (store, mut writer) =
        reflector::store::<netfence::source::kube::Stored<netfence::model::Pod>>();
    COUNTING.with(|c| c.set(true));
    let before = LIVE.with(Cell::get);
    writer.apply_watcher_event(&Event::Init);
    // Each raw object is built and dropped inside the counted region: what stays
    // counted is what the store keeps.
    for i in 0..PODS_N {
        let converted =
            netfence::source::kube::Stored::<netfence::model::Pod>::convert(raw(i), "/api/v1/pods");
        assert!(converted.errors.is_empty(), "{:?}", converted.errors);
        writer.apply_watcher_event(&Event::InitApply(converted.value.unwrap()));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let after = LIVE.with(Cell::get);
    COUNTING.with(|c| c.set(false));
    assert_eq!(store.len(), PODS_N);
    let kept = after - before;
    let per_pod = kept / isize::try_from(PODS_N).unwrap();
    println!(
        "pod store: {} bytes per 10,000 pods ({} bytes per pod; the same pods as JSON: {} bytes per pod)",
        per_pod * 10_000,
        per_pod,
        json_bytes
    );
    assert!(per_pod > 100, "implausibly small: {per_pod}");
    assert!(
        per_pod < 2_000,
        "the store keeps too much per pod: {per_pod} bytes"
    );
}
