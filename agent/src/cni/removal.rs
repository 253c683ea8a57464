//! Safe removal: what a stopping agent does to the fail-closed `netfence-cni` entry.
//!
//! Two mechanisms, one for each way the agent goes:
//!
//! 1. **SIGTERM: uninstall or restart?** With `--daemonset NAMESPACE/NAME`, the
//!    stopping agent asks the API server ([`ask`], at most [`ASK_TIMEOUT`]) whether
//!    its DaemonSet, or its namespace, is being deleted ([`decide`]). `kubectl delete
//!    -k deploy/` deletes the DaemonSet (404, or a deletionTimestamp with foreground
//!    deletion), the namespace (a deletionTimestamp) and the RBAC objects (401/403:
//!    the agent's ServiceAccount or its binding is gone, which no restart does): an
//!    **uninstall**. The agent then takes its entry out of every conflist in
//!    `--cni-conf-dir`, marks its lease uninstalled (expired), detaches and removes
//!    its pinned state. A DaemonSet that exists and is not being deleted is a
//!    **restart** (rollout, upgrade, eviction, node shutdown): the entry stays, the
//!    lease runs `--cni-lease-seconds` on, and new pods wait for the next agent. An
//!    API server that does not answer decides nothing: as a restart, with the lease.
//! 2. **The lease** ([`netfence_cni::lease`]): while the agent runs it renews a lease
//!    beside its socket every [`RENEW_EVERY`]; the plugin fails closed only while the
//!    lease is fresh (or absent). So a node whose agent went without saying why
//!    (SIGKILL, a crash loop, a node where the API was unreachable at the uninstall)
//!    starts pods again once the lease has run out, with a warning per pod in the
//!    runtime's log; a restart within the lease leaves no new pod unprotected.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netfence_cni::lease::{self, LEASE_VERSION, Lease, LeaseState};

use super::install::write_atomically;
use crate::cli::RunArgs;
use crate::source::kube::Connection;

/// How long a stopping agent waits for the API server's answers in all (the
/// DaemonSet's termination grace period is 10 s).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a running agent rewrites its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// The default of `--cni-lease-seconds`: longer than a rollout's gap between the old
/// agent's exit and the new one's start (image pull included), shorter than an
/// operator's patience with a node that starts no pods.
pub const DEFAULT_LEASE_SECONDS: u32 = 300;

/// `--daemonset NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSetRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for DaemonSetRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(DaemonSetRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
        }
    }
}

impl std::fmt::Display for DaemonSetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What one GET found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The object exists; `deleting` when it has a deletionTimestamp.
    Found {
        deleting: bool,
    },
    NotFound,
    /// 401 or 403: the agent's credentials or their binding are gone.
    Denied(u16),
    /// No answer, or another error.
    Failed(String),
}

/// Why the agent stops, as far as it can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    Uninstall(String),
    Restart(String),
    Unknown(String),
}

/// Decides from the GET of the DaemonSet and (asked only when that did not decide)
/// of its namespace. `readable_at_start`: the agent could read its DaemonSet when it
/// started; only then is a refusal now (401/403) access revoked by an uninstall, and
/// not RBAC that never granted it (which would take every restart for an uninstall).
pub fn decide(
    daemonset: &DaemonSetRef,
    found: &Lookup,
    namespace: Option<&Lookup>,
    readable_at_start: bool,
) -> Stop {
    let ds = format!("DaemonSet {daemonset}");
    let ns = format!("namespace {}", daemonset.namespace);
    let denied = |what: &str, code: u16| {
        if readable_at_start {
            Stop::Uninstall(format!(
                "reading {what} is refused ({code}): the agent's ServiceAccount or its RBAC binding was deleted, as an uninstall does"
            ))
        } else {
            Stop::Unknown(format!(
                "reading {what} is refused ({code}), and the DaemonSet was not readable at start either: grant get on it (deploy/rbac.yaml, Role netfence-removal)"
            ))
        }
    };
    match found {
        Lookup::NotFound => return Stop::Uninstall(format!("{ds} is deleted")),
        Lookup::Found { deleting: true } => {
            return Stop::Uninstall(format!("{ds} is being deleted"));
        }
        Lookup::Denied(code) => return denied(&ds, *code),
        Lookup::Failed(error) => {
            return Stop::Unknown(format!("cannot read {ds}: {error}"));
        }
        Lookup::Found { deleting: false } => {}
    }
    match namespace {
        Some(Lookup::Found { deleting: false }) => {
            Stop::Restart(format!("{ds} exists and is not being deleted"))
        }
        Some(Lookup::Found { deleting: true } | Lookup::NotFound) => {
            Stop::Uninstall(format!("{ns} is being deleted"))
        }
        Some(Lookup::Denied(code)) => denied(&ns, *code),
        Some(Lookup::Failed(error)) => Stop::Unknown(format!("cannot read {ns}: {error}")),
        None => Stop::Unknown(format!("{ns} was not read")),
    }
}

fn lookup<K>(result: Result<Option<K>, kube::Error>) -> Lookup
where
    K: kube::Resource,
{
    match result {
        Ok(Some(object)) => Lookup::Found {
            deleting: object.meta().deletion_timestamp.is_some(),
        },
        Ok(None) => Lookup::NotFound,
        Err(kube::Error::Api(status)) if matches!(status.code, 401 | 403) => {
            Lookup::Denied(status.code)
        }
        Err(error) => Lookup::Failed(error.to_string()),
    }
}

/// The GET of the DaemonSet alone (at most [`ASK_TIMEOUT`]): at start, whether the
/// agent may read it.
pub async fn lookup_daemonset(daemonset: &DaemonSetRef, connection: &Connection) -> Lookup {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let asked = async {
        let client = crate::source::kube::client(connection)
            .await
            .map_err(|e| e.to_string())?;
        let sets = kube::Api::<DaemonSet>::namespaced(client, &daemonset.namespace);
        Ok::<_, String>(lookup(sets.get_opt(&daemonset.name).await))
    };
    match tokio::time::timeout(ASK_TIMEOUT, asked).await {
        Ok(Ok(found)) => found,
        Ok(Err(error)) => Lookup::Failed(format!("no API client: {error}")),
        Err(_) => Lookup::Failed(format!("no answer within {} s", ASK_TIMEOUT.as_secs())),
    }
}

/// Asks the API server through `connection` (at most [`ASK_TIMEOUT`] in all).
pub async fn ask(
    daemonset: &DaemonSetRef,
    connection: &Connection,
    readable_at_start: bool,
) -> Stop {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::Namespace;
    let asked = async {
        let client = crate::source::kube::client(connection)
            .await
            .map_err(|e| e.to_string())?;
        let sets = kube::Api::<DaemonSet>::namespaced(client.clone(), &daemonset.namespace);
        let found = lookup(sets.get_opt(&daemonset.name).await);
        let namespace = if found == (Lookup::Found { deleting: false }) {
            let namespaces = kube::Api::<Namespace>::all(client);
            Some(lookup(namespaces.get_opt(&daemonset.namespace).await))
        } else {
            None
        };
        Ok::<_, String>(decide(
            daemonset,
            &found,
            namespace.as_ref(),
            readable_at_start,
        ))
    };
    match tokio::time::timeout(ASK_TIMEOUT, asked).await {
        Ok(Ok(stop)) => stop,
        Ok(Err(error)) => Stop::Unknown(format!("no API client: {error}")),
        Err(_) => Stop::Unknown(format!(
            "the API server did not answer within {} s",
            ASK_TIMEOUT.as_secs()
        )),
    }
}

/// What the GET of the DaemonSet found at start, filled in by a task.
pub type StartRead = Arc<Mutex<Option<Lookup>>>;

/// The API connection `--daemonset` is asked through: `--daemonset-kubeconfig`, else
/// `--kubeconfig`, else the in-cluster service account.
pub fn connection(args: &RunArgs) -> Connection {
    match (&args.cni.removal.daemonset_kubeconfig, &args.kubeconfig) {
        (Some(path), _) | (None, Some(path)) => Connection::Kubeconfig(path.clone()),
        (None, None) => Connection::InCluster,
    }
}

/// With `--daemonset`: reads the DaemonSet once in a task (the run loop does not
/// wait) and logs whether the agent may read it. Must run inside a tokio runtime.
pub fn read_at_start(args: &RunArgs) -> Option<StartRead> {
    let daemonset = args.cni.removal.daemonset.clone()?;
    let slot: StartRead = Arc::default();
    let filled = slot.clone();
    let connection = connection(args);
    tokio::spawn(async move {
        let found = lookup_daemonset(&daemonset, &connection).await;
        match &found {
            Lookup::Found { .. } => tracing::info!(
                "safe removal: DaemonSet {daemonset} is readable (on SIGTERM it tells an uninstall from a restart)"
            ),
            Lookup::Denied(code) => tracing::error!(
                "safe removal: reading DaemonSet {daemonset} is refused ({code}): grant get on it (deploy/rbac.yaml, Role netfence-removal); until then a stop is taken for a restart and netfence-cni is left to the lease"
            ),
            Lookup::NotFound => tracing::warn!(
                "safe removal: DaemonSet {daemonset} does not exist: --daemonset must name the DaemonSet this agent runs in (a stop now is taken for an uninstall)"
            ),
            Lookup::Failed(error) => {
                tracing::warn!("safe removal: reading DaemonSet {daemonset} at start: {error}")
            }
        }
        if let Ok(mut slot) = filled.lock() {
            *slot = Some(found);
        }
    });
    Some(slot)
}

/// True when the read at start found the DaemonSet.
pub fn readable_at_start(read: Option<&StartRead>) -> bool {
    read.is_some_and(|slot| {
        slot.lock()
            .is_ok_and(|found| matches!(*found, Some(Lookup::Found { .. })))
    })
}

/// On SIGTERM/SIGINT: asks whether netfence is being uninstalled (`--daemonset`).
/// An uninstall takes netfence-cni out of every conflist in `--cni-conf-dir`
/// (first: no runtime may wait for an agent that is going), expires the lease and
/// removes the pending pods' file; the caller then removes the pinned state. A
/// restart (or an unknown reason) leaves the entry and runs the lease on. Returns
/// why it is an uninstall.
pub async fn on_stop(
    args: &RunArgs,
    lease: Option<&mut LeaseWriter>,
    pending_file: Option<&Path>,
    readable_at_start: bool,
) -> Option<String> {
    let stop = match &args.cni.removal.daemonset {
        None => Stop::Unknown("no --daemonset to ask about".to_owned()),
        Some(daemonset) => ask(daemonset, &connection(args), readable_at_start).await,
    };
    let lease_seconds = args.cni.removal.lease_seconds;
    let (state, uninstall) = match stop {
        Stop::Uninstall(why) => {
            tracing::warn!("netfence is being uninstalled from this node: {why}");
            if let Some(dir) = &args.cni.conf_dir {
                match super::install::remove_from_conflists(dir) {
                    Ok(files) if files.is_empty() => {
                        tracing::info!(dir = %dir.display(), "netfence-cni: in no conflist");
                    }
                    Ok(files) => {
                        for file in files {
                            tracing::info!(file = %file.display(), "netfence-cni removed from {}", file.display());
                        }
                    }
                    Err(error) => tracing::error!(
                        "netfence-cni: removing the entry: {error} (new pods pass once the lease written now has expired)"
                    ),
                }
            }
            if let Some(file) = pending_file {
                let _ = std::fs::remove_file(file);
            }
            (LeaseState::Uninstalled, Some(why))
        }
        Stop::Restart(why) => {
            tracing::info!(
                "restart, not an uninstall ({why}): netfence-cni stays chained; new pods wait for the next agent for up to {lease_seconds} s"
            );
            (LeaseState::Restarting, None)
        }
        Stop::Unknown(why) => {
            tracing::info!(
                "stopping without knowing whether netfence is being uninstalled ({why}): netfence-cni stays chained; new pods wait for an agent for up to {lease_seconds} s, then start with a warning"
            );
            (LeaseState::Stopped, None)
        }
    };
    if let Some(lease) = lease
        && let Err(error) = lease.write(state)
    {
        tracing::error!(path = %lease.path().display(), "cni: writing the lease: {error}");
    }
    uninstall
}

/// The agent's side of the lease file.
#[derive(Debug)]
pub struct LeaseWriter {
    path: PathBuf,
    seconds: u32,
    written: Option<Instant>,
}

impl LeaseWriter {
    /// The lease of the agent serving `socket`, `seconds` long.
    pub fn new(socket: &Path, seconds: u32) -> Self {
        Self {
            path: lease::path_for(socket),
            seconds,
            written: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a running lease if none was written in the last [`RENEW_EVERY`].
    pub fn renew(&mut self) -> std::io::Result<()> {
        if self.written.is_some_and(|at| at.elapsed() < RENEW_EVERY) {
            return Ok(());
        }
        self.write(LeaseState::Running)
    }

    /// Writes the lease with `state`: `seconds` from now, or expired for
    /// [`LeaseState::Uninstalled`].
    pub fn write(&mut self, state: LeaseState) -> std::io::Result<()> {
        let now = lease::now_unix();
        let expires_unix = match state {
            LeaseState::Uninstalled => now,
            _ => now + u64::from(self.seconds),
        };
        let record = Lease {
            version: LEASE_VERSION,
            state,
            pid: std::process::id(),
            written_unix: now,
            expires_unix,
        };
        let mut text = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        text.push(b'\n');
        write_atomically(&self.path, &text, 0o644).map_err(|e| match e {
            super::install::InstallError::Io { error, .. } => error,
            other => std::io::Error::other(other.to_string()),
        })?;
        self.written = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> DaemonSetRef {
        "netfence-system/netfence".parse().unwrap()
    }

    #[test]
    fn daemonset_ref_is_namespace_slash_name() {
        assert_eq!(
            ds(),
            DaemonSetRef {
                namespace: "netfence-system".to_owned(),
                name: "netfence".to_owned()
            }
        );
        assert_eq!(ds().to_string(), "netfence-system/netfence");
        for bad in ["netfence", "/netfence", "ns/", "a/b/c", ""] {
            assert_eq!(
                bad.parse::<DaemonSetRef>(),
                Err(format!("{bad:?} is not NAMESPACE/NAME"))
            );
        }
    }

    #[test]
    fn deletion_of_the_daemonset_its_namespace_or_its_access_is_an_uninstall() {
        let live = Lookup::Found { deleting: false };
        let table = [
            (
                Lookup::NotFound,
                None,
                Stop::Uninstall("DaemonSet netfence-system/netfence is deleted".to_owned()),
            ),
            (
                Lookup::Found { deleting: true },
                None,
                Stop::Uninstall(
                    "DaemonSet netfence-system/netfence is being deleted".to_owned(),
                ),
            ),
            (
                Lookup::Denied(403),
                None,
                Stop::Uninstall("reading DaemonSet netfence-system/netfence is refused (403): the agent's ServiceAccount or its RBAC binding was deleted, as an uninstall does".to_owned()),
            ),
            (
                live.clone(),
                Some(Lookup::Found { deleting: true }),
                Stop::Uninstall("namespace netfence-system is being deleted".to_owned()),
            ),
            (
                live.clone(),
                Some(Lookup::Denied(401)),
                Stop::Uninstall("reading namespace netfence-system is refused (401): the agent's ServiceAccount or its RBAC binding was deleted, as an uninstall does".to_owned()),
            ),
            (
                live.clone(),
                Some(live.clone()),
                Stop::Restart(
                    "DaemonSet netfence-system/netfence exists and is not being deleted"
                        .to_owned(),
                ),
            ),
            (
                Lookup::Failed("connection refused".to_owned()),
                None,
                Stop::Unknown(
                    "cannot read DaemonSet netfence-system/netfence: connection refused"
                        .to_owned(),
                ),
            ),
            (
                live.clone(),
                Some(Lookup::Failed("timeout".to_owned())),
                Stop::Unknown("cannot read namespace netfence-system: timeout".to_owned()),
            ),
        ];
        for (found, namespace, want) in table {
            assert_eq!(
                decide(&ds(), &found, namespace.as_ref(), true),
                want,
                "{found:?} {namespace:?}"
            );
        }
        // Refused now and at start: RBAC that never granted it, not an uninstall.
        assert_eq!(
            decide(&ds(), &Lookup::Denied(403), None, false),
            Stop::Unknown("reading DaemonSet netfence-system/netfence is refused (403), and the DaemonSet was not readable at start either: grant get on it (deploy/rbac.yaml, Role netfence-removal)".to_owned())
        );
        assert_eq!(
            decide(&ds(), &Lookup::NotFound, None, false),
            Stop::Uninstall("DaemonSet netfence-system/netfence is deleted".to_owned()),
            "a deleted DaemonSet is an uninstall whatever the start saw"
        );
    }

    #[test]
    fn the_lease_runs_its_length_from_each_write_and_an_uninstall_expires_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        let mut writer = LeaseWriter::new(&socket, 300);
        assert_eq!(writer.path(), dir.path().join("cni.lease.json"));
        writer.renew().unwrap();
        let read = || -> Lease {
            serde_json::from_slice(&std::fs::read(dir.path().join("cni.lease.json")).unwrap())
                .unwrap()
        };
        let first = read();
        assert_eq!(first.state, LeaseState::Running);
        assert_eq!(first.expires_unix - first.written_unix, 300);
        assert_eq!(first.pid, std::process::id());
        writer.write(LeaseState::Restarting).unwrap();
        assert_eq!(read().state, LeaseState::Restarting);
        // Renewed at most every RENEW_EVERY: a renew right after a write keeps it.
        writer.renew().unwrap();
        assert_eq!(read().state, LeaseState::Restarting);
        writer.write(LeaseState::Uninstalled).unwrap();
        let last = read();
        assert_eq!(last.expires_unix, last.written_unix);
        assert!(matches!(
            lease::standing(&dir.path().join("cni.lease.json"), last.written_unix),
            lease::Standing::Expired(ref m) if m.starts_with("netfence was uninstalled from this node")
        ));
    }
}
