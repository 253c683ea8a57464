//! The Kubernetes API source: kube-rs watchers and reflector stores for Namespaces
//! (metadata-only requests), Pods, NetworkPolicies, Services and EndpointSlices
//! (`discovery.k8s.io/v1`), each object slimmed on arrival to the `model` value the
//! compiler reads. Every event that changes a store queues one change (an object put
//! or deleted, a kind relisted) and marks the source dirty; after a short quiet
//! period one `()` goes to the run loop, which takes the queued changes with
//! [`KubeSource::load`] and hands them to the policy engine: a change costs work
//! that follows the object, not the cluster. The stores stay the whole truth
//! ([`KubeSource::snapshot`] relists every kind from them, for an engine that starts
//! anew), so the outcome is still level-triggered.
//!
//! Readiness: `load` returns `None` until every kind has been listed completely once;
//! from then on it always returns a batch. A relist (410 Gone, expired
//! resourceVersion) fills a new buffer and swaps it in at the end, so enforcement is
//! never computed from a half-listed kind.

mod convert;
mod reflect;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use kube::Resource as _;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;

pub use convert::{Slim, Stored};

use super::{Batch, Change, Kind, SourceError};
use crate::model;

/// The resources the agent watches, as (API group, resource): the single list that
/// the watchers below are built from and that `deploy/`'s ClusterRole must grant
/// get/list/watch on (a test checks it), nothing more.
pub const WATCHED: [(&str, &str); 5] = [
    (
        <core::Namespace as k8s_openapi::Resource>::GROUP,
        <core::Namespace as k8s_openapi::Resource>::URL_PATH_SEGMENT,
    ),
    (
        <core::Pod as k8s_openapi::Resource>::GROUP,
        <core::Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT,
    ),
    (
        <net::NetworkPolicy as k8s_openapi::Resource>::GROUP,
        <net::NetworkPolicy as k8s_openapi::Resource>::URL_PATH_SEGMENT,
    ),
    (
        <core::Service as k8s_openapi::Resource>::GROUP,
        <core::Service as k8s_openapi::Resource>::URL_PATH_SEGMENT,
    ),
    (
        <discovery::EndpointSlice as k8s_openapi::Resource>::GROUP,
        <discovery::EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT,
    ),
];

/// The verbs the agent uses on every watched resource.
pub const VERBS: [&str; 3] = ["get", "list", "watch"];

/// A change is signalled once no further event came for this long...
const QUIET: Duration = Duration::from_millis(50);
/// ...or at the latest this long after the first event of a burst. Under a steady
/// stream (no quiet gap) this is the lag: with 1 s, 100 pod changes per second
/// reached the maps 520 ms late at p50 and 1,010 ms at p99 (bench section 7). The
/// engine takes a batch in work that follows its changes and coalesces what comes
/// during an update, so a short bound costs a few small updates per second.
const MAX_DELAY: Duration = Duration::from_millis(200);

/// How to reach the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`/`_PORT`, the mounted token
    /// and CA).
    InCluster,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{path}: cannot read the kubeconfig: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no in-cluster configuration (give --kubeconfig FILE or --manifests DIR outside a cluster): {0}"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Builds a client. Nothing is contacted yet: connection problems show up as watch
/// errors, retried with backoff, while the source stays not ready.
pub async fn client(connection: &Connection) -> Result<kube::Client, KubeError> {
    let config = match connection {
        Connection::Kubeconfig(path) => {
            let error = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(error)?
        }
        Connection::InCluster => kube::Config::incluster().map_err(KubeError::InCluster)?,
    };
    kube::Client::try_from(config).map_err(KubeError::Client)
}

/// What the watch tasks share with the source.
#[derive(Debug, Default)]
struct Shared {
    /// Per `Kind` (as index): the first complete list has arrived.
    listed: [AtomicBool; Kind::ALL.len()],
    /// Objects that failed to decode or validate (each arrival counts).
    invalid_objects: AtomicU64,
    /// Watch, list and connection errors (each retried with backoff).
    watch_errors: AtomicU64,
    /// Problems not yet handed out by `load`.
    problems: Mutex<(Vec<SourceError>, Vec<SourceError>)>,
    /// Changes not yet handed out by `load`, in the order the stores took them.
    changes: Mutex<Vec<Change>>,
    dirty: Notify,
}

impl Shared {
    fn mark_dirty(&self) {
        self.dirty.notify_one();
    }

    fn push(&self, change: Change) {
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
        }
        self.mark_dirty();
    }

    fn report(&self, errors: Vec<SourceError>, warnings: Vec<SourceError>) {
        if errors.is_empty() && warnings.is_empty() {
            return;
        }
        if let Ok(mut problems) = self.problems.lock() {
            problems.0.extend(errors);
            problems.1.extend(warnings);
        }
        // An invalid update changes no store (the last good version stays), but the
        // run loop reports problems when it loads: let it load.
        self.mark_dirty();
    }
}

/// Counters of the source, for logs and (later) metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub invalid_objects: u64,
    pub watch_errors: u64,
    pub namespaces: usize,
    pub pods: usize,
    pub policies: usize,
    pub services: usize,
    pub endpoint_slices: usize,
}

/// The running watchers and their stores. Dropping it stops the watchers.
#[derive(Debug)]
pub struct KubeSource {
    namespaces: Store<Stored<model::Namespace>>,
    pods: Store<Stored<model::Pod>>,
    policies: Store<Stored<model::Policy>>,
    services: Store<Stored<model::Service>>,
    endpoint_slices: Store<Stored<model::EndpointSlice>>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Starts watching through `client`. The receiver gets `()` after changes
    /// (debounced); it closes when the source is dropped.
    pub fn start(client: &kube::Client) -> (KubeSource, tokio::sync::mpsc::Receiver<()>) {
        let shared = Arc::new(Shared::default());
        let config = watcher::Config::default();
        let mut tasks = Vec::new();

        // Metadata only (labels are all the compiler reads of a namespace).
        let api = Api::<PartialObjectMeta<core::Namespace>>::all(client.clone());
        let origin = core::Namespace::url_path(&(), None);
        let (namespaces, writer) = reflector::store();
        let stream = watcher::watcher(api, config.clone());
        tasks.push(tokio::spawn(reflect::run::<Stored<model::Namespace>, _>(
            stream,
            writer,
            shared.clone(),
            origin,
        )));

        let resource = ApiResource::erase::<core::Pod>(&());
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let origin = core::Pod::url_path(&(), None);
        let (pods, writer) = reflector::store();
        let stream = watcher::watcher(api, config.clone());
        tasks.push(tokio::spawn(reflect::run::<Stored<model::Pod>, _>(
            stream,
            writer,
            shared.clone(),
            origin,
        )));

        let resource = ApiResource::erase::<net::NetworkPolicy>(&());
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let origin = net::NetworkPolicy::url_path(&(), None);
        let (policies, writer) = reflector::store();
        let stream = watcher::watcher(api, config.clone());
        tasks.push(tokio::spawn(reflect::run::<Stored<model::Policy>, _>(
            stream,
            writer,
            shared.clone(),
            origin,
        )));

        let resource = ApiResource::erase::<core::Service>(&());
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let origin = core::Service::url_path(&(), None);
        let (services, writer) = reflector::store();
        let stream = watcher::watcher(api, config.clone());
        tasks.push(tokio::spawn(reflect::run::<Stored<model::Service>, _>(
            stream,
            writer,
            shared.clone(),
            origin,
        )));

        let resource = ApiResource::erase::<discovery::EndpointSlice>(&());
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let origin = discovery::EndpointSlice::url_path(&(), None);
        let (endpoint_slices, writer) = reflector::store();
        let stream = watcher::watcher(api, config);
        tasks.push(tokio::spawn(
            reflect::run::<Stored<model::EndpointSlice>, _>(stream, writer, shared.clone(), origin),
        ));

        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tasks.push(tokio::spawn(debounce(shared.clone(), tx)));
        let source = KubeSource {
            namespaces,
            pods,
            policies,
            services,
            endpoint_slices,
            shared,
            tasks,
        };
        (source, rx)
    }

    /// True once every kind has been listed completely once.
    pub fn is_ready(&self) -> bool {
        self.shared.listed.iter().all(|l| l.load(Ordering::SeqCst))
    }

    /// The changes since the last call (from the first complete list of every kind
    /// on, at the first call), with the problems found meanwhile; `None` while not
    /// ready (the caller keeps enforcing what it has).
    pub fn load(&mut self) -> Option<Batch> {
        if !self.is_ready() {
            return None;
        }
        let (errors, warnings) = match self.shared.problems.lock() {
            Ok(mut problems) => std::mem::take(&mut *problems),
            Err(_) => (Vec::new(), Vec::new()),
        };
        let changes = match self.shared.changes.lock() {
            Ok(mut changes) => std::mem::take(&mut *changes),
            Err(_) => Vec::new(),
        };
        Some(Batch {
            changes,
            errors,
            warnings,
        })
    }

    /// Every kind relisted from the stores: what an engine starting anew takes.
    pub fn snapshot(&self) -> Vec<Change> {
        vec![
            Change::Relist(Kind::Namespace, reflect::objects(&self.namespaces)),
            Change::Relist(Kind::Pod, reflect::objects(&self.pods)),
            Change::Relist(Kind::NetworkPolicy, reflect::objects(&self.policies)),
            Change::Relist(Kind::Service, reflect::objects(&self.services)),
            Change::Relist(Kind::EndpointSlice, reflect::objects(&self.endpoint_slices)),
        ]
    }

    pub fn stats(&self) -> Stats {
        Stats {
            invalid_objects: self.shared.invalid_objects.load(Ordering::Relaxed),
            watch_errors: self.shared.watch_errors.load(Ordering::Relaxed),
            namespaces: self.namespaces.len(),
            pods: self.pods.len(),
            policies: self.policies.len(),
            services: self.services.len(),
            endpoint_slices: self.endpoint_slices.len(),
        }
    }

    /// Which kinds have not been listed completely yet, for "not ready" messages.
    pub fn waiting_for(&self) -> Vec<&'static str> {
        Kind::ALL
            .into_iter()
            .filter(|kind| !self.shared.listed[*kind as usize].load(Ordering::SeqCst))
            .map(Kind::as_str)
            .collect()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Turns bursts of `mark_dirty` into one `()`: after QUIET without a new mark, or
/// MAX_DELAY after the first.
async fn debounce(shared: Arc<Shared>, tx: tokio::sync::mpsc::Sender<()>) {
    loop {
        shared.dirty.notified().await;
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            let until = deadline.min(tokio::time::Instant::now() + QUIET);
            if tokio::time::timeout_at(until, shared.dirty.notified())
                .await
                .is_err()
                || tokio::time::Instant::now() >= deadline
            {
                break;
            }
        }
        match tx.try_send(()) {
            // Full: a signal is pending already; the load it causes reads everything.
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Closed(())) => return,
        }
    }
}
