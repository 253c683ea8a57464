//! A test Kubernetes API server: the list/watch protocol over real HTTP/1.1 on a TCP
//! socket, for Namespaces, Pods, NetworkPolicies, Services and EndpointSlices, so that the agent's real
//! `kube::Client` and kube-runtime watchers can be pointed at it through a generated
//! kubeconfig. It serves lists with a resourceVersion, watch streams (chunked) of
//! ADDED/MODIFIED/DELETED/BOOKMARK events replayed from any resourceVersion still in
//! its history, and lets a test expire history (an ERROR 410 Gone event, and 410 for
//! older watches), drop every open watch connection, fail lists, and store objects the
//! agent cannot decode. Every request is logged for assertions.
//!
//! In the testbed so that the bench's watch-load section drives the real agent with it
//! too; the tests' `KubeAgent` (agent/tests/apiserver) starts the agent on it.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test server")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The resources, by URL path (`list_kind` gives each one's list kind).
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const PODS: &str = "/api/v1/pods";
pub const POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
pub const SERVICES: &str = "/api/v1/services";
pub const ENDPOINT_SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const RESOURCES: [&str; 5] = [NAMESPACES, PODS, POLICIES, SERVICES, ENDPOINT_SLICES];

/// How long a test waits for the agent or the source.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub accept: String,
}

impl Request {
    pub fn is_watch(&self) -> bool {
        self.query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
    }
}

enum Message {
    Line(String),
    Close,
}

#[derive(Default)]
struct Inner {
    /// The last resourceVersion handed out (global, like etcd's revision).
    revision: u64,
    /// Per resource: objects by (namespace, name).
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    /// Per resource: (revision, event type, object) of every change.
    history: BTreeMap<&'static str, Vec<(u64, &'static str, Value)>>,
    /// Per resource: watches from a revision below this get 410 Gone.
    compacted: BTreeMap<&'static str, u64>,
    /// Per resource: lists fail with 503 while set.
    failing_lists: BTreeMap<&'static str, bool>,
    watches: Vec<(&'static str, mpsc::UnboundedSender<Message>)>,
    requests: Vec<Request>,
    /// Canned answers (status, body) by path, for objects outside the five resources.
    answers: BTreeMap<String, (u16, Value)>,
}

/// A running server; stops when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn resource_of(path: &str) -> Option<&'static str> {
    RESOURCES.into_iter().find(|r| *r == path)
}

fn key_of(object: &Value) -> (String, String) {
    let text = |field: &str| {
        object["metadata"][field]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (text("namespace"), text("name"))
}

impl ApiServer {
    /// Listens on 127.0.0.1 (any port).
    pub async fn start() -> ApiServer {
        ApiServer::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> ApiServer {
        ApiServer::listen(TcpListener::bind(addr).await.unwrap())
    }

    /// Serves on a listener created elsewhere (e.g. inside a node's network namespace,
    /// where an agent running there can reach it on its loopback).
    pub fn start_with(listener: std::net::TcpListener) -> ApiServer {
        listener.set_nonblocking(true).unwrap();
        ApiServer::listen(TcpListener::from_std(listener).unwrap())
    }

    fn listen(listener: TcpListener) -> ApiServer {
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Mutex::new(Inner {
            revision: 100,
            ..Inner::default()
        }));
        let shared = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        ApiServer { addr, inner, task }
    }

    /// Writes a kubeconfig pointing at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: nf6\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: nf6\n  context:\n    cluster: nf6\n    user: nf6\n\
             current-context: nf6\nusers:\n- name: nf6\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Creates or replaces an object (ADDED or MODIFIED), stamping its resourceVersion.
    pub fn apply(&self, resource: &'static str, mut object: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner.revision += 1;
        let revision = inner.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        let key = key_of(&object);
        let objects = inner.objects.entry(resource).or_default();
        let kind = if objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        record(&mut inner, resource, revision, kind, object);
    }

    /// Stores `objects` as they are at the start, with no watch history (a list
    /// returns them; no watch replays them): a large cluster loaded at once, before
    /// any client lists.
    pub fn seed(&self, resource: &'static str, objects: impl IntoIterator<Item = Value>) {
        let mut inner = self.inner.lock().unwrap();
        inner.revision += 1;
        let revision = inner.revision.to_string();
        let stored = inner.objects.entry(resource).or_default();
        for mut object in objects {
            object["metadata"]["resourceVersion"] = json!(revision);
            stored.insert(key_of(&object), object);
        }
    }

    /// Answers every request for `path` with `code` and `body` from now on: an object
    /// outside the five resources (the agent's own DaemonSet and namespace, read when
    /// it stops), or a refusal (401, 403).
    pub fn answer(&self, path: &str, code: u16, body: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner.answers.insert(path.to_owned(), (code, body));
    }

    /// Deletes an object (DELETED, carrying its last body).
    pub fn delete(&self, resource: &'static str, namespace: &str, name: &str) {
        let mut inner = self.inner.lock().unwrap();
        let key = (namespace.to_owned(), name.to_owned());
        let Some(mut object) = inner.objects.entry(resource).or_default().remove(&key) else {
            panic!("delete: no {resource} {namespace}/{name}");
        };
        inner.revision += 1;
        let revision = inner.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        record(&mut inner, resource, revision, "DELETED", object);
    }

    /// Forgets the history of `resource`: open watches get an ERROR 410 Gone event, and
    /// any later watch from an older resourceVersion gets one too (the client must
    /// relist).
    pub fn expire(&self, resource: &'static str) {
        let mut inner = self.inner.lock().unwrap();
        let revision = inner.revision;
        inner.compacted.insert(resource, revision);
        inner.history.entry(resource).or_default().clear();
        let line = gone_line();
        for (r, watch) in &inner.watches {
            if *r == resource {
                let _ = watch.send(Message::Line(line.clone()));
                let _ = watch.send(Message::Close);
            }
        }
    }

    /// Closes every open watch connection of `resource` abruptly (no final chunk).
    pub fn drop_watches(&self, resource: &'static str) {
        let inner = self.inner.lock().unwrap();
        for (r, watch) in &inner.watches {
            if *r == resource {
                let _ = watch.send(Message::Close);
            }
        }
    }

    /// Sends a BOOKMARK with the current revision on every open watch of `resource`.
    pub fn bookmark(&self, resource: &'static str) {
        let inner = self.inner.lock().unwrap();
        let line = bookmark_line(resource, inner.revision);
        for (r, watch) in &inner.watches {
            if *r == resource {
                let _ = watch.send(Message::Line(line.clone()));
            }
        }
    }

    /// While set, lists of `resource` fail with 503.
    pub fn fail_lists(&self, resource: &'static str, failing: bool) {
        self.inner
            .lock()
            .unwrap()
            .failing_lists
            .insert(resource, failing);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The open watches of `resource`.
    pub fn open_watches(&self, resource: &'static str) -> usize {
        let mut inner = self.inner.lock().unwrap();
        inner.watches.retain(|(_, w)| !w.is_closed());
        inner.watches.iter().filter(|(r, _)| *r == resource).count()
    }
}

fn record(
    inner: &mut Inner,
    resource: &'static str,
    revision: u64,
    kind: &'static str,
    object: Value,
) {
    let line = json!({"type": kind, "object": object}).to_string();
    inner
        .history
        .entry(resource)
        .or_default()
        .push((revision, kind, object));
    inner
        .watches
        .retain(|(r, watch)| *r != resource || watch.send(Message::Line(line.clone())).is_ok());
}

fn gone_line() -> String {
    json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410
    }})
    .to_string()
}

fn bookmark_line(resource: &str, revision: u64) -> String {
    let (api_version, kind) = list_kind(resource);
    json!({"type": "BOOKMARK", "object": {
        "kind": kind.trim_end_matches("List"), "apiVersion": api_version,
        "metadata": {"resourceVersion": revision.to_string()}
    }})
    .to_string()
}

fn list_kind(resource: &str) -> (&'static str, &'static str) {
    match resource {
        NAMESPACES => ("v1", "NamespaceList"),
        PODS => ("v1", "PodList"),
        SERVICES => ("v1", "ServiceList"),
        ENDPOINT_SLICES => ("discovery.k8s.io/v1", "EndpointSliceList"),
        _ => ("networking.k8s.io/v1", "NetworkPolicyList"),
    }
}

async fn serve(stream: TcpStream, inner: Arc<Mutex<Inner>>) {
    let mut stream = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => head.push(line.trim_end().to_owned()),
        }
    }
    let Some((path, query)) = head
        .first()
        .and_then(|l| l.split(' ').nth(1))
        .map(|target| target.split_once('?').unwrap_or((target, "")))
    else {
        return;
    };
    let query: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2C", ",")))
        .collect();
    let accept = head
        .iter()
        .find_map(|h| {
            h.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("accept"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let request = Request {
        path: path.to_owned(),
        query,
        accept,
    };
    let answer = {
        let mut inner = inner.lock().unwrap();
        inner.requests.push(request.clone());
        inner.answers.get(&request.path).cloned()
    };
    let mut stream = stream.into_inner();
    if let Some((code, body)) = answer {
        respond(&mut stream, code, &body.to_string()).await;
        return;
    }
    let Some(resource) = resource_of(&request.path) else {
        let body = status_body(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        respond(&mut stream, 404, &body).await;
        return;
    };
    if request.is_watch() {
        watch(stream, &inner, resource, &request).await;
    } else {
        list(&mut stream, &inner, resource, &request).await;
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
    .to_string()
}

async fn respond(stream: &mut TcpStream, code: u16, body: &str) {
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let text = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A list, paged as the API server pages it when the client sends `limit` (kube-rs
/// watchers ask for 500): `continue` carries the offset of the next page. (Unlike
/// the API server's, pages are not one snapshot: objects changed between pages show
/// their new version.)
async fn list(
    stream: &mut TcpStream,
    inner: &Mutex<Inner>,
    resource: &'static str,
    request: &Request,
) {
    let limit: Option<usize> = (request.query.get("limit"))
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0);
    let from: usize = (request.query.get("continue"))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = {
        let inner = inner.lock().unwrap();
        if inner.failing_lists.get(resource).copied().unwrap_or(false) {
            None
        } else {
            let (api_version, kind) = list_kind(resource);
            let all = inner.objects.get(resource);
            let total = all.map_or(0, BTreeMap::len);
            let end = limit.map_or(total, |l| from.saturating_add(l).min(total));
            let items: Vec<&Value> = all
                .map(|o| {
                    o.values()
                        .skip(from)
                        .take(end.saturating_sub(from))
                        .collect()
                })
                .unwrap_or_default();
            let mut metadata = json!({"resourceVersion": inner.revision.to_string()});
            if end < total {
                metadata["continue"] = json!(end.to_string());
                metadata["remainingItemCount"] = json!(total - end);
            }
            Some(
                json!({"kind": kind, "apiVersion": api_version, "metadata": metadata,
                       "items": items})
                .to_string(),
            )
        }
    };
    match body {
        Some(body) => respond(stream, 200, &body).await,
        None => {
            let body = status_body(503, "ServiceUnavailable", "lists are failing (test)");
            respond(stream, 503, &body).await;
        }
    }
}

async fn watch(
    mut stream: TcpStream,
    inner: &Mutex<Inner>,
    resource: &'static str,
    request: &Request,
) {
    let from: u64 = request
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut inner = inner.lock().unwrap();
        if from < inner.compacted.get(resource).copied().unwrap_or(0) {
            let _ = tx.send(Message::Line(gone_line()));
            let _ = tx.send(Message::Close);
        } else {
            if request
                .query
                .get("allowWatchBookmarks")
                .is_some_and(|b| b == "true")
            {
                let _ = tx.send(Message::Line(bookmark_line(resource, inner.revision)));
            }
            for (revision, kind, object) in inner.history.get(resource).into_iter().flatten() {
                if *revision > from {
                    let line = json!({"type": kind, "object": object}).to_string();
                    let _ = tx.send(Message::Line(line));
                }
            }
            inner.watches.push((resource, tx));
        }
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    while let Some(message) = rx.recv().await {
        match message {
            Message::Line(line) => {
                let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            // Abrupt: no terminating chunk, the connection just goes away.
            Message::Close => return,
        }
    }
}

/// A pod as a real API server sends it (managed fields, annotations, owner reference,
/// two containers with env and probes, status conditions); pod `i` of 50 namespaces,
/// 200 label groups and 100 nodes, with a unique IPv4 address.
pub fn realistic_pod(i: usize) -> Value {
    json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("app-{:05}-7d9c8b6f5-x2k4q", i), "namespace": format!("team-{}", i % 50),
                "uid": "0b6c3c5e-6a7f-4d0e-9b1a-1f2e3d4c5b6a", "resourceVersion": "123456789",
                "labels": {"app": format!("app-{}", i % 200), "pod-template-hash": "7d9c8b6f5", "tier": "backend"},
                "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z", "prometheus.io/scrape": "true"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-7d9c8b6f5", "uid": "1", "controller": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:containers": {}}}},
                                  {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "subresource": "status",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}, "f:podIP": {}}}}]
            },
            "spec": {"nodeName": format!("node-{}", i % 100), "serviceAccountName": "default",
                     "containers": [
                        {"name": "app", "image": "registry.example/app:1.2.3", "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "metrics"}],
                         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                         "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}, "resources": {"limits": {"memory": "256Mi"}}},
                        {"name": "sidecar", "image": "registry.example/sidecar:4.5", "ports": [{"containerPort": 15000}]}]},
            "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                       "podIPs": [{"ip": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)}],
                       "hostIP": "192.168.0.1", "startTime": "2026-01-01T00:00:00Z",
                       "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}
    })
}
