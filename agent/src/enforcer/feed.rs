//! Where `netfence run` gets its cluster state from, behind one interface: a channel
//! that says "something changed", a `load` that returns the objects changed since the
//! last one (or `None` while the source is not ready yet), and a `snapshot` of every
//! object for a policy engine that starts anew. Two sources: a manifest directory
//! (watched with inotify; always ready) and the Kubernetes API (kube-rs reflectors;
//! ready after the first complete list of every kind).

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::sync::mpsc::Receiver;

use crate::cli::RunArgs;
use crate::source::kube::{self as kube_source, Connection, KubeSource};
use crate::source::{Batch, Change, ManifestDir, Watcher};

/// The health endpoint's address when watching the Kubernetes API and none is given.
pub const DEFAULT_HEALTH_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9896);

/// A source of cluster state for the run loop.
pub trait Source: Send {
    /// The changes since the last call, with the problems found meanwhile, or `None`
    /// while the source cannot give a complete state yet.
    fn load(&mut self) -> Option<Batch>;
    /// Every object (each kind relisted), once the source is ready.
    fn snapshot(&self) -> Vec<Change>;
    /// The source in log lines ("manifests", "kubernetes").
    fn name(&self) -> &'static str;
    /// What an input unit is called in log lines ("manifest", "object").
    fn noun(&self) -> &'static str;
    /// While `load` returns `None`: what it waits for.
    fn waiting_for(&self) -> String;
    /// Errors of the source's own machinery so far (watch failures), cumulative.
    fn errors(&self) -> u64 {
        0
    }
}

/// A manifest directory and its watcher.
struct Manifests {
    dir: ManifestDir,
    _watcher: Watcher,
}

impl Source for Manifests {
    fn load(&mut self) -> Option<Batch> {
        Some(self.dir.reload())
    }

    fn snapshot(&self) -> Vec<Change> {
        self.dir.snapshot()
    }

    fn name(&self) -> &'static str {
        "manifests"
    }

    fn noun(&self) -> &'static str {
        "manifest"
    }

    fn waiting_for(&self) -> String {
        String::new()
    }
}

impl Source for KubeSource {
    fn load(&mut self) -> Option<Batch> {
        KubeSource::load(self)
    }

    fn snapshot(&self) -> Vec<Change> {
        KubeSource::snapshot(self)
    }

    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn noun(&self) -> &'static str {
        "object"
    }

    fn waiting_for(&self) -> String {
        format!(
            "waiting for the first complete list of {}",
            self.waiting_for().join(", ")
        )
    }

    fn errors(&self) -> u64 {
        self.stats().watch_errors
    }
}

/// The source `args` ask for, its change channel, and the health address to serve.
pub struct Opened {
    pub source: Box<dyn Source>,
    pub changes: Receiver<()>,
    pub health_addr: Option<SocketAddr>,
    /// For the log: `manifests DIR`, `kubeconfig FILE`, `in-cluster`.
    pub description: String,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("health_addr", &self.health_addr)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// Opens `--manifests DIR`, or the Kubernetes API through `--kubeconfig FILE` or, with
/// neither, the in-cluster service account.
pub async fn open(args: &RunArgs) -> anyhow::Result<Opened> {
    if let Some(dir) = &args.manifests {
        let (watcher, changes) =
            crate::source::watch(dir).with_context(|| format!("watching {}", dir.display()))?;
        return Ok(Opened {
            source: Box::new(Manifests {
                dir: ManifestDir::for_engine(dir),
                _watcher: watcher,
            }),
            changes,
            health_addr: args.health_addr,
            description: format!("manifests {}", dir.display()),
        });
    }
    let connection = match &args.kubeconfig {
        Some(path) => Connection::Kubeconfig(path.clone()),
        None => Connection::InCluster,
    };
    let description = match &connection {
        Connection::Kubeconfig(path) => format!("kubeconfig {}", path.display()),
        Connection::InCluster => "in-cluster".to_owned(),
    };
    let client = kube_source::client(&connection).await?;
    let (source, changes) = KubeSource::start(&client);
    Ok(Opened {
        source: Box::new(source),
        changes,
        health_addr: Some(args.health_addr.unwrap_or(DEFAULT_HEALTH_ADDR)),
        description,
    })
}
