//! Live mode: `--kubeconfig` lists Namespaces, Pods, NetworkPolicies, Services and
//! EndpointSlices once from the test API server (no watch request) and answers
//! `explain` (to pods and to a Service), `policies` and `compile` from them, exactly
//! as from the same objects in a file; an object the API source cannot convert is fatal (exit 2, naming the
//! resource, object and field) unless `--keep-going`; an unreachable server exits 2.

use serde_json::{Value, json};

use super::apiserver::{
    ApiServer, ENDPOINT_SLICES, NAMESPACES, PODS, POLICIES, RESOURCES, SERVICES,
};
use super::files::{Run, netfence};

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "x", "labels": {"app": name}},
           "spec": {"containers": [{"name": "c", "image": "nginx",
                    "ports": [{"name": "http", "containerPort": 80}]}]},
           "status": {"phase": "Running", "podIP": ip}})
}

fn policy() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "a-from-b", "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"app": "a"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}],
                                 "ports": [{"port": "http"}]}]}})
}

/// Service x/web (ClusterIP 10.96.0.10, port 80 to `http`) backed by x/a.
fn service() -> [(&'static str, Value); 2] {
    [
        (
            SERVICES,
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "x"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "a"},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}}),
        ),
        (
            ENDPOINT_SLICES,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["198.18.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
        ),
    ]
}

/// Runs the binary off the runtime's threads (the server answers meanwhile).
async fn run(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        netfence(&args, "")
    })
    .await
    .unwrap()
}

fn args(kubeconfig: &std::path::Path, rest: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
    args.insert(1, "--kubeconfig".to_owned());
    args.insert(2, kubeconfig.display().to_string());
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mode_lists_once_and_answers_as_from_files() {
    let server = ApiServer::start().await;
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
    let mut objects = vec![
        (NAMESPACES, namespace),
        (PODS, pod("a", "198.18.0.1")),
        (PODS, pod("b", "198.18.0.2")),
        (PODS, pod("c", "198.18.0.3")),
        (POLICIES, policy()),
    ];
    objects.extend(service());
    // The same objects as a file.
    let mut yaml = String::new();
    for (resource, object) in objects {
        yaml.push_str(&format!(
            "---\n{}",
            serde_yaml_ng::to_string(&object).unwrap()
        ));
        server.apply(resource, object);
    }
    let dir = tempfile::Builder::new().prefix("nfl").tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path());

    let allowed = run(args(
        &kubeconfig,
        &["explain", "--from", "x/b", "--to", "x/a", "--port", "80"],
    ))
    .await;
    assert_eq!(
        (allowed.code, allowed.stderr.as_str()),
        (0, ""),
        "{}",
        allowed.stdout
    );
    let denied = run(args(
        &kubeconfig,
        &["explain", "--from", "x/c", "--to", "x/a", "--port", "80"],
    ))
    .await;
    assert_eq!(denied.code, 1, "{}", denied.stderr);
    assert_eq!(
        denied.stdout,
        "TCP 198.18.0.3 (x/c) -> 198.18.0.1 (x/a) port 80: DENIED
  egress at x/c: not isolated (no policy selects it for egress): allowed
  ingress at x/a: isolated by x/a-from-b; no rule allows it: DENIED
    x/a-from-b ingress[0]: peer not matched
"
    );
    // The same answers as from the same objects in a file.
    let matrix = run(args(
        &kubeconfig,
        &["explain", "--matrix", "--port", "80", "-o", "json"],
    ))
    .await;
    assert_eq!(matrix.code, 0, "{}", matrix.stderr);
    let from_file = netfence(
        &[
            "explain", "-f", "-", "--matrix", "--port", "80", "-o", "json",
        ],
        &yaml,
    );
    assert_eq!(matrix.stdout, from_file.stdout);
    let policies = run(args(&kubeconfig, &["policies", "x/a", "-o", "json"])).await;
    let from_file = netfence(&["policies", "x/a", "-f", "-", "-o", "json"], &yaml);
    assert_eq!(policies.code, 0, "{}", policies.stderr);
    assert_eq!(policies.stdout, from_file.stdout);
    let compiled = run(args(&kubeconfig, &["compile", "-o", "json"])).await;
    assert_eq!(compiled.code, 0, "{}", compiled.stderr);
    let from_file = netfence(&["compile", "-f", "-", "-o", "json"], &yaml);
    assert_eq!(compiled.stdout, from_file.stdout);
    assert!(
        compiled.stdout.contains("\"service\": \"x/web\""),
        "{}",
        compiled.stdout
    );
    // Services and EndpointSlices: the ClusterIP resolves to its backend's rule.
    let to_service = [
        "explain",
        "--from",
        "x/b",
        "--to",
        "svc/x/web",
        "--port",
        "80",
    ];
    let live = run(args(&kubeconfig, &to_service)).await;
    assert_eq!(live.code, 0, "{}", live.stderr);
    let from_file = netfence(
        &[&to_service[..1], &["-f", "-"], &to_service[1..]].concat(),
        &yaml,
    );
    assert_eq!(live.stdout, from_file.stdout);
    assert!(
        live.stdout
            .starts_with("TCP 198.18.0.2 (x/b) -> 10.96.0.10 (Service x/web) port 80: ALLOWED\n"),
        "{}",
        live.stdout
    );

    // Read-only and once: list requests only, each resource listed once per run.
    let requests = server.requests();
    assert!(requests.iter().all(|r| !r.is_watch()), "{requests:?}");
    for resource in RESOURCES {
        let lists = requests.iter().filter(|r| r.path == resource).count();
        assert_eq!(lists, 6, "{resource}: one list per run: {requests:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_does_not_convert_or_no_server_exits_2() {
    let server = ApiServer::start().await;
    server.apply(PODS, pod("a", "198.18.0.1"));
    server.apply(PODS, pod("b", "not-an-ip"));
    let dir = tempfile::Builder::new().prefix("nfl").tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path());
    let bad = run(args(&kubeconfig, &["explain", "--matrix", "--port", "80"])).await;
    assert_eq!(bad.code, 2);
    assert_eq!(bad.stdout, "");
    assert!(
        bad.stderr
            .starts_with("netfence: error: /api/v1/pods: Pod x/b: status.podIP: "),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains(&format!(
            "netfence: error: 1 problem(s) in the objects listed through {}; fix them, or give --keep-going",
            kubeconfig.display()
        )),
        "{}",
        bad.stderr
    );
    let kept = run(args(
        &kubeconfig,
        &[
            "explain",
            "--matrix",
            "--port",
            "80",
            "--keep-going",
            "-o",
            "json",
        ],
    ))
    .await;
    assert_eq!(kept.code, 0, "{}", kept.stderr);
    assert_eq!(
        kept.stdout,
        "{\"port\":80,\"protocol\":\"TCP\",\"pods\":[\"x/a\"],\"allowed\":[[true]]}\n"
    );
    assert!(
        kept.stderr
            .starts_with("netfence: skipped: /api/v1/pods: Pod x/b: status.podIP: "),
        "{}",
        kept.stderr
    );

    // Nothing listens: exit 2 naming the resource.
    let addr = server.addr;
    drop(server);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(&kubeconfig)
        .unwrap()
        .replace(&addr.to_string(), &closed.local_addr().unwrap().to_string());
    drop(closed);
    std::fs::write(&kubeconfig, text).unwrap();
    let down = run(args(&kubeconfig, &["compile"])).await;
    assert_eq!(down.code, 2);
    assert_eq!(down.stdout, "");
    assert!(
        down.stderr
            .starts_with("netfence: error: /api/v1/namespaces: cannot list: "),
        "{}",
        down.stderr
    );
    // A kubeconfig that is not there.
    let missing = run(args(&dir.path().join("nope"), &["compile"])).await;
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.starts_with(&format!(
            "netfence: error: {}: cannot read the kubeconfig",
            dir.path().join("nope").display()
        )),
        "{}",
        missing.stderr
    );
}
