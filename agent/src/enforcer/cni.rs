//! The run loop's side of deny-until-ready: what an ADD, DEL or CHECK from the
//! `netfence-cni` plugin does to the `Enforcer`, and when an ADD is answered.
//!
//! ADD records the pod as pending. A pod the state names gets its real policy from a
//! compile (on the blocking pool; the ADD is answered after that compile is synced);
//! any other is programmed deny-all both ways at once, with one sync and no compile
//! ([`crate::cni::pending`]). Then the loop reconciles interfaces (attaching to the pod's new veth and binding its address).
//! The answer waits until [`programmed`] holds for every address: after each
//! reconcile (netlink events, the 1 s tick) waiting ADDs are re-checked. Before the
//! agent's first complete state nothing is compiled; the ADD waits for it.
//!
//! The pending set survives restarts: it is saved beside the socket on every change
//! ([`crate::cni::persist`]) and read back before the first sync. Every tick, entries
//! whose network namespace is gone are dropped (a DEL that never came), and with
//! `--cni-conf-dir` the plugin's conflist entry is re-ensured ([`crate::cni::keep`]).
//! The runtime's own record of ADDs (`--cni-cache-dir`, [`crate::cni::cache`]) is
//! read with every interface reconcile, beside the pending set.
//!
//! Safe removal ([`crate::cni::removal`]): the agent renews its lease beside the
//! socket every few seconds while it runs; on SIGTERM ([`Enforcer::cni_stop`]) it
//! asks whether netfence is being uninstalled (its DaemonSet or namespace deleted):
//! then the conflist entry goes and the lease expires; otherwise the lease runs on
//! for the next agent.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use netfence_cni::protocol::{Command, Enforcement, Response};
use tokio::sync::oneshot;

use super::Enforcer;
use super::compiling::OwnerUpdate;
use crate::cli::RunArgs;
use crate::cni::install::plugin_entry;
use crate::cni::keep::{Check, ConflistKeeper, Ensured};
use crate::cni::pending::{NetnsView, look_at_netns, programmed};
use crate::cni::removal::{self, LeaseWriter, StartRead};
use crate::cni::{CniCall, CniServer, Pending, PendingEndpoint, persist};
use crate::dataplane::last_sync::now_unix;
use crate::dataplane::owners::Owner;
use crate::dataplane::sync::Mode;
use crate::source::{Change, Kind, Object};

/// The pending endpoints and the ADDs waiting for them.
#[derive(Debug, Default)]
pub(super) struct CniEndpoints {
    pub(super) pending: Pending,
    waiters: Vec<Waiter>,
    /// Where `pending` is saved (beside `--cni-socket`; none without a socket).
    file: Option<PathBuf>,
    /// `--cni-conf-dir`.
    keeper: Option<ConflistKeeper>,
    /// `--cni-cache-dir` (empty: disabled), read with every interface reconcile.
    pub(super) cache_dir: PathBuf,
    /// Listing `cache_dir` failed last time (warned once).
    pub(super) cache_failing: bool,
    /// The lease beside the socket (none without a socket), and whether its last
    /// write failed (warned once).
    lease: Option<LeaseWriter>,
    lease_failing: bool,
    /// With `--daemonset`: what the GET of the DaemonSet found at start (filled by a
    /// task), so that a refusal at SIGTERM counts as revoked access only if it was
    /// readable before.
    daemonset_at_start: Option<StartRead>,
}

#[derive(Debug)]
struct Waiter {
    container_id: String,
    pod: String,
    ips: Vec<IpAddr>,
    reply: oneshot::Sender<Response>,
    started: Instant,
}

impl CniEndpoints {
    /// Reads the pending endpoints a previous agent saved (dropping those whose
    /// network namespace is gone) and, with `--cni-conf-dir`, ensures the conflist
    /// entry once. Runs before the first sync, which then keeps their endpoints.
    pub(super) fn open(args: &RunArgs) -> Self {
        let mut cni = Self {
            cache_dir: PathBuf::from(&args.cni.cache_dir),
            ..Self::default()
        };
        if args.cni.cache_dir.is_empty() {
            tracing::info!(
                "CNI result cache disabled (--cni-cache-dir ''): pods ADDed before netfence-cni are bound from what they show"
            );
        }
        if !args.cni_socket.is_empty() {
            let file = persist::path_for(Path::new(&args.cni_socket));
            match persist::load(&file) {
                Ok(endpoints) if !endpoints.is_empty() => {
                    let count = endpoints.len();
                    for endpoint in endpoints {
                        cni.pending.add(endpoint);
                    }
                    let (gone, _) = cni.pending.sweep(look_at_netns);
                    tracing::info!(
                        file = %file.display(),
                        restored = cni.pending.len(),
                        gone = gone.len(),
                        "cni: {} pending pods restored (deny-all until they appear in the state); {} gone (network namespace removed)",
                        cni.pending.len(),
                        gone.len()
                    );
                    for endpoint in &gone {
                        log_gone(endpoint);
                    }
                    if cni.pending.len() != count {
                        save(&file, &cni.pending);
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::error!(
                    "cni: {error}; starting with no pending pods (it is rewritten on the next ADD or DEL)"
                ),
            }
            cni.file = Some(file);
            cni.lease = Some(LeaseWriter::new(
                Path::new(&args.cni_socket),
                args.cni.removal.lease_seconds,
            ));
            cni.renew_lease();
        }
        cni.daemonset_at_start = removal::read_at_start(args);
        if let Some(dir) = &args.cni.conf_dir {
            if args.cni_socket.is_empty() {
                tracing::error!(dir = %dir.display(), "--cni-conf-dir without a CNI socket (--cni-socket ''): the conflist is left alone");
            } else {
                let entry = plugin_entry(
                    Path::new(&args.cni_socket),
                    args.cni.timeout_seconds,
                    args.cni.fail_closed,
                );
                let mut keeper = ConflistKeeper::new(dir.clone(), entry);
                let check = keeper.check();
                log_check(keeper.dir(), check, true);
                cni.keeper = Some(keeper);
            }
        }
        cni
    }
}

impl CniEndpoints {
    /// Renews the lease (at most every few seconds); a failure is warned once.
    fn renew_lease(&mut self) {
        let Some(lease) = &mut self.lease else { return };
        match lease.renew() {
            Ok(()) => self.lease_failing = false,
            Err(error) if !self.lease_failing => {
                self.lease_failing = true;
                tracing::warn!(
                    path = %lease.path().display(),
                    "cni: writing the lease (without it netfence-cni fails closed only until the last lease written expires): {error}"
                );
            }
            Err(_) => {}
        }
    }
}

fn save(file: &Path, pending: &Pending) {
    if let Err(error) = persist::save(file, pending.iter()) {
        tracing::error!(
            "cni: {error} (a restart before the next save forgets the pending pods' deny-all)"
        );
    }
}

fn log_gone(endpoint: &PendingEndpoint) {
    let (namespace, pod) = endpoint.names();
    tracing::info!(
        container = %endpoint.container_id,
        pod = %format!("{namespace}/{pod}"),
        netns = %endpoint.netns,
        "cni: pending pod gone without a DEL (its network namespace no longer exists); forgotten"
    );
}

fn log_check(dir: &Path, check: Check, first: bool) {
    match check {
        Check::Unchanged => {}
        Check::Ensured(Ensured::Chained(path)) if first => {
            tracing::info!(file = %path.display(), "netfence-cni chained in {}", path.display());
        }
        Check::Ensured(Ensured::Chained(_)) => {}
        Check::Ensured(Ensured::Restored(path)) => {
            tracing::warn!(file = %path.display(), "netfence-cni entry restored in {}", path.display());
        }
        Check::Ensured(Ensured::Updated(path)) => {
            tracing::info!(file = %path.display(), "netfence-cni entry updated in {} (its settings differed)", path.display());
        }
        Check::Failed {
            message,
            repeated: false,
        } => {
            tracing::warn!(dir = %dir.display(), "netfence-cni not chained (retried every second): {message}");
        }
        Check::Failed {
            message,
            repeated: true,
        } => tracing::debug!("netfence-cni not chained: {message}"),
    }
}

/// Listens on `--cni-socket` unless it is empty. A failure is logged, not fatal:
/// enforcement does not depend on the plugin (with the plugin's `failClosed`, new
/// pods then wait, and their runtime retries).
pub(super) fn listen(socket: &str) -> Option<CniServer> {
    if socket.is_empty() {
        tracing::info!(
            "CNI socket disabled (--cni-socket ''): new pods do not wait for enforcement"
        );
        return None;
    }
    match CniServer::listen(Path::new(socket)) {
        Ok(server) => {
            tracing::info!(socket, "serving the netfence-cni plugin");
            Some(server)
        }
        Err(error) => {
            tracing::error!("CNI socket: {error}");
            None
        }
    }
}

impl Enforcer {
    /// Handles one plugin request. `ready`: the first complete state is enforced.
    pub(super) async fn cni_call(&mut self, call: CniCall, ready: bool) {
        let CniCall { request, reply } = call;
        let mut endpoint = PendingEndpoint::from_request(&request, now_unix());
        let (namespace, pod) = endpoint.names();
        let pod = format!("{namespace}/{pod}");
        match request.command {
            Command::Add => {
                if endpoint.ips.is_empty() {
                    let _ = reply.send(Response::error("ADD names no address"));
                    return;
                }
                tracing::info!(
                    container = %request.container_id,
                    %pod,
                    ips = ?endpoint.ips,
                    host_interfaces = ?endpoint.host_interfaces,
                    "cni: ADD"
                );
                match look_at_netns(&endpoint.netns) {
                    NetnsView::Present => endpoint.netns_seen = true,
                    NetnsView::Gone | NetnsView::Unseen => tracing::warn!(
                        container = %request.container_id,
                        %pod,
                        netns = %endpoint.netns,
                        "cni: the pod's network namespace is not visible to the agent: if its DEL is missed, its deny-all endpoint stays until its address is reused (mount the host's /run/netns)"
                    ),
                }
                for stale in self.cni.pending.add(endpoint.clone()) {
                    tracing::info!(container = %stale, "cni: dropped a pending container whose address was reused (its DEL was missed)");
                }
                self.save_pending();
                // A pod the engine knows, or one whose change is still queued for it
                // (the kubelet runs the ADD right after the pod is bound: its watch
                // event may not have reached the engine yet), is compiled with its
                // policy. While an update holds the engine, the next update decides:
                // it fills a named pod or denies the address.
                let announced = endpoint.announced();
                let named = self
                    .compiler
                    .takes_announced(&announced)
                    .is_none_or(|takes| takes || queues_pod(&self.queued, announced.pod.as_ref()));
                self.cni.waiters.push(Waiter {
                    container_id: request.container_id,
                    pod,
                    ips: endpoint.ips,
                    reply,
                    started: Instant::now(),
                });
                if ready {
                    if named {
                        // Compiled with its real policy; answered once that is synced.
                        self.recompile("cni");
                    } else {
                        self.program_pending();
                    }
                    self.reconcile_interfaces().await;
                    self.answer_cni_waiters();
                }
            }
            Command::Del => {
                let removed = self.cni.pending.remove(&request.container_id).is_some();
                self.cni
                    .waiters
                    .retain(|w| w.container_id != request.container_id);
                tracing::info!(container = %request.container_id, %pod, pending = removed, "cni: DEL");
                if removed {
                    self.save_pending();
                }
                if removed && ready {
                    self.recompile("cni");
                }
                let message = if removed {
                    "forgotten"
                } else {
                    "not pending (nothing to forget)"
                };
                let _ = reply.send(Response::ok(None, message));
            }
            Command::Check => {
                let answer = if ready {
                    match self.cni_programmed(&endpoint.ips) {
                        Ok(enforcement) => {
                            Response::ok(Some(enforcement), format!("{pod} is enforced"))
                        }
                        Err(missing) => {
                            Response::error(format!("{pod} is not enforced: {missing}"))
                        }
                    }
                } else {
                    Response::error("the agent has no complete state yet")
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// Programs the pending pods no endpoint of the current image carries (deny-all
    /// both ways, as the next compile makes them) and syncs, without a compile: an
    /// ADD for a pod the state does not name yet costs one merge and one sync.
    fn program_pending(&mut self) {
        let before: BTreeSet<IpAddr> = self.image.endpoints.keys().copied().collect();
        let denied = self
            .cni
            .pending
            .merge_into(&mut self.image, self.mode == Mode::Audit);
        if denied == 0 {
            return;
        }
        tracing::info!(
            addresses = denied,
            "cni: pods not in the state yet are denied both ways"
        );
        let _ = self
            .names
            .send(std::sync::Arc::new(crate::dataplane::events::names(
                &self.image,
            )));
        // The merged endpoints own their addresses now.
        let owners = (self.image.endpoints.iter())
            .filter(|(addr, _)| !before.contains(addr))
            .map(|(addr, endpoint)| {
                let owner = Owner {
                    namespace: endpoint.namespace.clone(),
                    pod: endpoint.pod.clone(),
                };
                (*addr, Some(owner))
            })
            .collect();
        self.purge_moved(OwnerUpdate::Changed(owners));
        self.sync("cni");
    }

    fn save_pending(&self) {
        if let Some(file) = &self.cni.file {
            save(file, &self.cni.pending);
        }
    }

    /// Every tick: forgets pending pods whose network namespace is gone (a missed
    /// DEL), recompiling if ready; re-ensures the conflist entry (`--cni-conf-dir`).
    pub(super) fn cni_tick(&mut self, ready: bool) {
        self.cni.renew_lease();
        if let Some(keeper) = &mut self.cni.keeper {
            let check = keeper.check();
            log_check(keeper.dir(), check, false);
        }
        if self.cni.pending.is_empty() {
            return;
        }
        let (gone, changed) = self.cni.pending.sweep(look_at_netns);
        for endpoint in &gone {
            log_gone(endpoint);
        }
        self.cni
            .waiters
            .retain(|w| !gone.iter().any(|e| e.container_id == w.container_id));
        if changed {
            self.save_pending();
        }
        if !gone.is_empty() && ready {
            self.recompile("cni");
        }
    }

    /// On SIGTERM/SIGINT: [`removal::on_stop`] (uninstall or restart?). Returns why
    /// it is an uninstall; the caller then removes the pinned state.
    pub(super) async fn cni_stop(&mut self, args: &RunArgs) -> Option<String> {
        // No more ticks: the keeper would put the entry back.
        self.cni.keeper = None;
        let readable = removal::readable_at_start(self.cni.daemonset_at_start.as_ref());
        removal::on_stop(
            args,
            self.cni.lease.as_mut(),
            self.cni.file.as_deref(),
            readable,
        )
        .await
    }

    fn cni_programmed(&self, ips: &[IpAddr]) -> Result<Enforcement, String> {
        programmed(ips, &self.image, &self.live.endpoints, |index| {
            self.attachments.is_attached(index)
        })
    }

    /// Answers every waiting ADD whose endpoint is now programmed and attached, and
    /// forgets those whose plugin gave up.
    pub(super) fn answer_cni_waiters(&mut self) {
        if self.cni.waiters.is_empty() {
            return;
        }
        for waiter in std::mem::take(&mut self.cni.waiters) {
            if waiter.reply.is_closed() {
                tracing::warn!(
                    container = %waiter.container_id,
                    pod = %waiter.pod,
                    "cni: the plugin gave up before the endpoint was programmed: {}",
                    self.cni_programmed(&waiter.ips).err().unwrap_or_default()
                );
                continue;
            }
            match self.cni_programmed(&waiter.ips) {
                Ok(enforcement) => {
                    let elapsed = waiter.started.elapsed();
                    let how = match enforcement {
                        Enforcement::Policy => "its policy",
                        Enforcement::DefaultDeny => "deny-all until it appears in the state",
                    };
                    tracing::info!(
                        container = %waiter.container_id,
                        pod = %waiter.pod,
                        ?enforcement,
                        ms = elapsed.as_millis(),
                        "cni: programmed"
                    );
                    let message = format!(
                        "{} programmed and attached with {how} ({} ms)",
                        waiter.pod,
                        elapsed.as_millis()
                    );
                    let _ = waiter.reply.send(Response::ok(Some(enforcement), message));
                }
                Err(missing) => {
                    tracing::debug!(pod = %waiter.pod, "cni: waiting: {missing}");
                    self.cni.waiters.push(waiter);
                }
            }
        }
    }
}

/// True when a change that may put pod `(namespace, name)` (a put of it, or every pod
/// relisted) waits in `queued` for the engine.
fn queues_pod(queued: &[Change], pod: Option<&(String, String)>) -> bool {
    let Some((namespace, name)) = pod else {
        return false;
    };
    queued.iter().any(|change| match change {
        Change::Put(Object::Pod(p)) => p.namespace == *namespace && p.name == *name,
        Change::Relist(Kind::Pod, _) => true,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Namespace, Pod, PodPhase};

    fn pod(namespace: &str, name: &str) -> Pod {
        Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels: Default::default(),
            node_name: Some("node-1".to_owned()),
            ips: Vec::new(),
            host_network: false,
            phase: PodPhase::Pending,
            ports: Vec::new(),
        }
    }

    #[test]
    fn a_queued_put_or_pod_relist_counts_as_the_named_pod_and_nothing_else_does() {
        let key = ("x".to_owned(), "web".to_owned());
        let other = Change::Put(Object::Pod(pod("x", "db")));
        let namespace = Change::Put(Object::Namespace(Namespace {
            name: "x".to_owned(),
            labels: Default::default(),
        }));
        let deleted = Change::Delete(Object::Pod(pod("x", "web")).key());
        assert!(!queues_pod(
            &[other.clone(), namespace.clone(), deleted],
            Some(&key)
        ));
        assert!(queues_pod(
            &[other.clone(), Change::Put(Object::Pod(pod("x", "web")))],
            Some(&key)
        ));
        assert!(queues_pod(
            &[namespace, Change::Relist(Kind::Pod, Vec::new())],
            Some(&key)
        ));
        assert!(
            !queues_pod(&[Change::Put(Object::Pod(pod("x", "web")))], None),
            "an announcement naming no pod"
        );
        assert!(!queues_pod(&[], Some(&key)));
    }
}
