//! The policy engine off the run loop: an update of the incremental engine
//! (`compile::engine`) runs on tokio's blocking pool while the loop goes on serving
//! netlink events, CNI calls and ticks (health, metrics and drop events have tasks of
//! their own). At most one runs at a time (the engine moves into the job and back);
//! changes that arrive meanwhile are coalesced into one more update to the latest
//! state, started when the running one is applied. An update that panics loses the
//! engine: the next one starts from an empty engine (a full build).
//!
//! A job gets everything that decides the image (the state, the node's name and
//! addresses, `--allow-node`, the pending CNI pods) by value, and hands back the image
//! with what the loop derives from it before syncing: the names for drop events and
//! the flow log, and the owner of every pod address (for the conntrack purge).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};

use crate::cni::Pending;
use crate::cni::pending::is_deny_all;
use crate::compile::engine::{Engine, Node, Work};
use crate::dataplane::events::{self, Names};
use crate::dataplane::flowlog::FlowContext;
use crate::dataplane::owners::{self, Owner};
use crate::image::Image;
use crate::model::State;

/// What one compile reads.
#[derive(Debug)]
pub(super) struct Input {
    pub state: Arc<State>,
    pub node: String,
    pub addresses: Vec<IpAddr>,
    pub allow_node: bool,
    /// `--mode audit`.
    pub audit_all: bool,
    /// Pods the CNI plugin announced: their addresses go on the pods the state names
    /// without one; the others become deny-all endpoints.
    pub pending: Pending,
    /// A flow log reads the flow context: build it.
    pub flow_log: bool,
    /// Why (for the log line of the sync that follows).
    pub cause: &'static str,
}

/// What one compile gives back.
#[derive(Debug)]
pub(super) struct Compiled {
    pub cause: &'static str,
    pub image: Image,
    pub names: Names,
    pub flow_context: Option<FlowContext>,
    pub owners: BTreeMap<IpAddr, Owner>,
    /// Endpoints denied both ways (pending addresses no pod of the state carries).
    pub denied: usize,
    /// What the engine's update did.
    pub work: Work,
    pub elapsed: Duration,
}

/// Brings `engine` to `input` (runs on a blocking thread).
pub(super) fn compile(engine: &mut Engine, input: Input) -> Compiled {
    let started = Instant::now();
    let announced = input.pending.announced();
    engine.set_node(Node {
        name: Some(input.node.clone()),
        addresses: input.addresses.clone(),
        allow_node: input.allow_node,
        audit_all: input.audit_all,
    });
    let work = engine.update(input.state.clone(), &announced);
    let image = engine.image().clone();
    // The flow context and the owners name pods by the state the engine compiled.
    let state = engine.state().clone();
    let denied = image.endpoints.values().filter(|e| is_deny_all(e)).count();
    let names = events::names(&image);
    let flow_context = input.flow_log.then(|| FlowContext::new(&state, &image));
    let owners = owners::owners(&state, &image);
    Compiled {
        cause: input.cause,
        image,
        names,
        flow_context,
        owners,
        denied,
        work,
        elapsed: started.elapsed(),
    }
}

/// The engine (here between updates), the running update (which holds it), and the
/// cause of the next one when changes came meanwhile.
#[derive(Debug, Default)]
pub(super) struct Compiler {
    engine: Option<Engine>,
    running: Option<JoinHandle<(Engine, Compiled)>>,
    queued: Option<&'static str>,
}

impl Compiler {
    /// Starts compiling `input()` now, or, while a compile runs, remembers to compile
    /// again once it is applied (the input is taken then: the latest state).
    pub(super) fn request(
        &mut self,
        cause: &'static str,
        input: impl FnOnce(&'static str) -> Input,
    ) {
        if self.running.is_some() {
            self.queued.get_or_insert(cause);
            return;
        }
        let input = input(cause);
        let mut engine = self.engine.take().unwrap_or_default();
        self.running = Some(tokio::task::spawn_blocking(move || {
            let compiled = compile(&mut engine, input);
            (engine, compiled)
        }));
    }

    /// The cause of a compile requested while one ran (taken: the caller requests it).
    pub(super) fn take_queued(&mut self) -> Option<&'static str> {
        self.queued.take()
    }

    /// Waits for the running compile; pending forever when none runs (a `select!`
    /// branch). Cancel-safe: the task keeps running if another branch wins.
    pub(super) async fn finished(&mut self) -> Result<Compiled, JoinError> {
        let Some(running) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let result = running.await;
        self.running = None;
        result.map(|(engine, compiled)| {
            self.engine = Some(engine);
            compiled
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::PendingEndpoint;
    use crate::scenario::{self, Params};

    fn input(state: &Arc<State>, cause: &'static str) -> Input {
        Input {
            state: state.clone(),
            node: "node-1".to_owned(),
            addresses: Vec::new(),
            allow_node: true,
            audit_all: false,
            pending: Pending::default(),
            flow_log: true,
            cause,
        }
    }

    #[tokio::test]
    async fn requests_during_a_compile_are_coalesced_into_one_more() {
        let state = Arc::new(scenario::generate(&Params::new(2_000, 130, 20, "node-1")));
        let mut compiler = Compiler::default();
        let mut inputs = 0;
        compiler.request("manifests", |cause| {
            inputs += 1;
            input(&state, cause)
        });
        // While it runs: two more requests, neither starts a compile.
        compiler.request("cni", |cause| {
            inputs += 1;
            input(&state, cause)
        });
        compiler.request("node addresses", |cause| {
            inputs += 1;
            input(&state, cause)
        });
        assert_eq!(inputs, 1, "only the first request builds an input");
        let first = compiler.finished().await.expect("the compile task");
        assert_eq!(first.cause, "manifests");
        assert_eq!(first.image.endpoints.len(), 20);
        assert!(first.flow_context.is_some());
        assert_eq!(first.names, events::names(&first.image));
        assert_eq!(
            compiler.take_queued(),
            Some("cni"),
            "the first queued cause names the coalesced compile"
        );
        assert_eq!(compiler.take_queued(), None);
    }

    #[test]
    fn a_job_fills_named_pending_pods_and_denies_the_others() {
        let mut state = scenario::generate(&Params::new(100, 7, 3, "node-1"));
        // A local pod the kubelet has not reported an address for yet.
        let named = state
            .pods
            .iter_mut()
            .find(|p| p.node_name.as_deref() == Some("node-1"))
            .expect("a local pod");
        named.ips.clear();
        let (namespace, name) = (named.namespace.clone(), named.name.clone());
        let mut pending = Pending::default();
        let endpoint = |id: &str, ip: &str, pod: Option<(&str, &str)>| PendingEndpoint {
            container_id: id.to_owned(),
            netns: String::new(),
            ifname: "eth0".to_owned(),
            ips: vec![ip.parse().expect("an address")],
            namespace: pod.map(|p| p.0.to_owned()),
            pod: pod.map(|p| p.1.to_owned()),
            host_interfaces: Vec::new(),
            added_unix: 0,
            netns_seen: false,
        };
        pending.add(endpoint("named", "198.18.0.10", Some((&namespace, &name))));
        pending.add(endpoint("unknown", "198.18.0.11", None));
        let state = Arc::new(state);
        let compiled = compile(
            &mut Engine::default(),
            Input {
                pending,
                ..input(&state, "cni")
            },
        );
        let named = &compiled.image.endpoints[&"198.18.0.10".parse().expect("an address")];
        assert_eq!(
            (named.namespace.as_str(), named.pod.as_str()),
            (namespace.as_str(), name.as_str())
        );
        assert_ne!(
            named.identity,
            netfence_common::IDENTITY_WORLD,
            "compiled as the pod, with its identity"
        );
        let unknown = &compiled.image.endpoints[&"198.18.0.11".parse().expect("an address")];
        assert!(
            unknown.isolated_ingress && unknown.isolated_egress && unknown.policy == 0,
            "deny-all: {unknown:?}"
        );
        assert_eq!(compiled.denied, 1);
    }
}
