//! The run loop's side of deny-until-ready: what an ADD, DEL or CHECK from the
//! `netfence-cni` plugin does to the `Enforcer`, and when an ADD is answered.
//!
//! ADD records the pod as pending, recompiles (the pod gets its real policy if the
//! state names it, else deny-all both ways: [`crate::cni::pending`]), syncs, then
//! reconciles interfaces (attaching to the pod's new veth and binding its address).
//! The answer waits until [`programmed`] holds for every address: after each
//! reconcile (netlink events, the 1 s tick) waiting ADDs are re-checked. Before the
//! agent's first complete state nothing is compiled; the ADD waits for it.

use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use netfence_cni::protocol::{Command, Enforcement, Response};
use tokio::sync::oneshot;

use super::Enforcer;
use crate::cni::pending::programmed;
use crate::cni::{CniCall, CniServer, Pending, PendingEndpoint};

/// The pending endpoints and the ADDs waiting for them.
#[derive(Debug, Default)]
pub(super) struct CniEndpoints {
    pub(super) pending: Pending,
    waiters: Vec<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    container_id: String,
    pod: String,
    ips: Vec<IpAddr>,
    reply: oneshot::Sender<Response>,
    started: Instant,
}

/// Listens on `--cni-socket` unless it is empty. A failure is logged, not fatal:
/// enforcement does not depend on the plugin (with the plugin's `failClosed`, new
/// pods then wait, and their runtime retries).
pub(super) fn listen(socket: &str) -> Option<CniServer> {
    if socket.is_empty() {
        tracing::info!("CNI socket disabled (--cni-socket ''): new pods do not wait for enforcement");
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
        let endpoint = PendingEndpoint::from_request(&request);
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
                for stale in self.cni.pending.add(endpoint.clone()) {
                    tracing::info!(container = %stale, "cni: dropped a pending container whose address was reused (its DEL was missed)");
                }
                self.cni.waiters.push(Waiter {
                    container_id: request.container_id,
                    pod,
                    ips: endpoint.ips,
                    reply,
                    started: Instant::now(),
                });
                if ready {
                    self.recompile("cni");
                    self.reconcile_interfaces().await;
                    self.answer_cni_waiters();
                }
            }
            Command::Del => {
                let removed = self.cni.pending.remove(&request.container_id).is_some();
                self.cni.waiters.retain(|w| w.container_id != request.container_id);
                tracing::info!(container = %request.container_id, %pod, pending = removed, "cni: DEL");
                if removed && ready {
                    self.recompile("cni");
                }
                let message = if removed { "forgotten" } else { "not pending (nothing to forget)" };
                let _ = reply.send(Response::ok(None, message));
            }
            Command::Check => {
                let answer = if ready {
                    match self.cni_programmed(&endpoint.ips) {
                        Ok(enforcement) => Response::ok(Some(enforcement), format!("{pod} is enforced")),
                        Err(missing) => Response::error(format!("{pod} is not enforced: {missing}")),
                    }
                } else {
                    Response::error("the agent has no complete state yet")
                };
                let _ = reply.send(answer);
            }
        }
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
