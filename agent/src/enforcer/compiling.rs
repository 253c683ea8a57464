//! The policy engine off the run loop: an update of the incremental engine
//! (`compile::engine`) runs on tokio's blocking pool while the loop goes on serving
//! netlink events, CNI calls and ticks (health, metrics and drop events have tasks of
//! their own). At most one runs at a time (the engine moves into the job and back);
//! changes that arrive meanwhile are queued by the loop and handed to one more
//! update, started when the running one is applied. An update that panics loses the
//! engine: the next one starts from an empty engine, fed a snapshot of the source
//! (a full build).
//!
//! A job gets everything that decides the image (the changed objects, the node's name
//! and addresses, `--allow-node`, the pending CNI pods) by value, and hands back what
//! changed: the image's node-local part and the changed entries of the rest (the
//! whole image only after a build from scratch), the owners of the addresses that may
//! have changed pods (for the conntrack purge), and the names for drop events and the
//! flow log. Nothing in a job walks the cluster unless the engine rebuilt.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};

use crate::cni::Pending;
use crate::cni::pending::is_deny_all;
use crate::compile::announced::Announced;
use crate::compile::engine::{Engine, Node, Work};
use crate::dataplane::events::{self, Names};
use crate::dataplane::flowlog::FlowContext;
use crate::dataplane::owners::{self, Owner};
use crate::image::{Image, Patch};
use crate::source::Change;

/// What one compile reads.
#[derive(Debug)]
pub struct Input {
    /// The objects changed since the last update (every object, relisted, for an
    /// engine that starts anew).
    pub changes: Vec<Change>,
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

/// The new image, whole or as a patch of the last one.
#[derive(Debug)]
pub enum ImageUpdate {
    /// After a build from scratch.
    Whole(Image),
    Patch(Patch),
}

/// The owner pods of addresses, all or the ones that may have changed.
#[derive(Debug)]
pub enum OwnerUpdate {
    /// Every address's owner (after a build from scratch).
    All(BTreeMap<IpAddr, Owner>),
    /// The addresses whose owner may have changed, with their owner now (`None`:
    /// none).
    Changed(Vec<(IpAddr, Option<Owner>)>),
}

/// What one compile gives back.
#[derive(Debug)]
pub struct Compiled {
    pub cause: &'static str,
    pub image: ImageUpdate,
    pub names: Names,
    pub flow_context: Option<FlowContext>,
    pub owners: OwnerUpdate,
    /// Endpoints denied both ways (pending addresses no pod of the state carries).
    pub denied: usize,
    /// What the engine's update did.
    pub work: Work,
    /// The changes it took.
    pub changes: usize,
    pub elapsed: Duration,
}

/// Brings `engine` to `input` (runs on a blocking thread).
pub fn compile(engine: &mut Engine, input: Input) -> Compiled {
    let started = Instant::now();
    let announced = input.pending.announced();
    engine.set_node(Node {
        name: Some(input.node.clone()),
        addresses: input.addresses.clone(),
        allow_node: input.allow_node,
        audit_all: input.audit_all,
    });
    let changes = input.changes.len();
    let work = engine.apply(input.changes, &announced);
    let image = engine.image();
    let denied = image.endpoints.values().filter(|e| is_deny_all(e)).count();
    let names = events::names(image);
    // The flow log names remote pods too: a walk of every pod, only when one reads it.
    let flow_context = input
        .flow_log
        .then(|| FlowContext::new(engine.state(), image));
    let (image, owners) = if work.rebuilt {
        (
            ImageUpdate::Whole(image.clone()),
            OwnerUpdate::All(owners::owners(engine.state(), image)),
        )
    } else {
        let owners = (work.changed.addresses.iter())
            .map(|addr| {
                let owner = engine.owner_of(*addr).map(|(namespace, pod)| Owner {
                    namespace: namespace.to_owned(),
                    pod: pod.to_owned(),
                });
                (*addr, owner)
            })
            .collect();
        (
            ImageUpdate::Patch(engine.patch(&work.changed)),
            OwnerUpdate::Changed(owners),
        )
    };
    Compiled {
        cause: input.cause,
        image,
        names,
        flow_context,
        owners,
        denied,
        work,
        changes,
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
    /// An update panicked: the engine it held is gone.
    lost: bool,
}

/// What the next update must be fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Feed {
    /// The changes since the last update: the engine is kept.
    Changes,
    /// Every change since the source started (all still queued): the first engine.
    /// No snapshot is taken, so the start holds no second copy of the cluster.
    First,
    /// A snapshot of the source: a new engine after an update lost the last one.
    Snapshot,
}

impl Compiler {
    /// Starts compiling `input(cause, feed)` now, or, while a compile runs,
    /// remembers to compile again once it is applied (the input is taken then: the
    /// changes queued until then). `feed`: what the input must hold (every object
    /// when the engine starts anew: the first compile, or after one panicked).
    pub(super) fn request(
        &mut self,
        cause: &'static str,
        input: impl FnOnce(&'static str, Feed) -> Input,
    ) {
        if self.running.is_some() {
            self.queued.get_or_insert(cause);
            return;
        }
        let feed = match (&self.engine, self.lost) {
            (Some(_), _) => Feed::Changes,
            (None, false) => Feed::First,
            (None, true) => Feed::Snapshot,
        };
        let input = input(cause, feed);
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

    /// Whether the pod `announced` names takes its addresses at the next compile
    /// ([`Engine::takes_announced`]); `None` while a compile holds the engine or
    /// before the first.
    pub(super) fn takes_announced(&self, announced: &Announced) -> Option<bool> {
        self.engine.as_ref().map(|e| e.takes_announced(announced))
    }

    /// Waits for the running compile; pending forever when none runs (a `select!`
    /// branch). Cancel-safe: the task keeps running if another branch wins.
    pub(super) async fn finished(&mut self) -> Result<Compiled, JoinError> {
        let Some(running) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let result = running.await;
        self.running = None;
        self.lost |= result.is_err();
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
    use crate::model::State;
    use crate::scenario::{self, Params};

    /// Every object of `state`, put.
    fn input(state: &State, cause: &'static str) -> Input {
        Input {
            changes: netfence_policy::change::between(&State::default(), state),
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
        let state = scenario::generate(&Params::new(2_000, 130, 20, "node-1"));
        let mut compiler = Compiler::default();
        let mut inputs = 0;
        compiler.request("manifests", |cause, feed| {
            assert_eq!(feed, Feed::First, "the first compile builds a new engine");
            inputs += 1;
            input(&state, cause)
        });
        // While it runs: two more requests, neither starts a compile.
        compiler.request("cni", |cause, _| {
            inputs += 1;
            input(&state, cause)
        });
        compiler.request("node addresses", |cause, _| {
            inputs += 1;
            input(&state, cause)
        });
        assert_eq!(inputs, 1, "only the first request builds an input");
        let first = compiler.finished().await.expect("the compile task");
        assert_eq!(first.cause, "manifests");
        let ImageUpdate::Whole(image) = &first.image else {
            panic!("the first compile gives the whole image");
        };
        assert_eq!(image.endpoints.len(), 20);
        assert!(first.flow_context.is_some());
        assert_eq!(first.names, events::names(image));
        assert_eq!(
            compiler.take_queued(),
            Some("cni"),
            "the first queued cause names the coalesced compile"
        );
        assert_eq!(compiler.take_queued(), None);
    }

    #[tokio::test]
    async fn the_first_engine_takes_the_queue_and_one_after_a_panic_a_snapshot() {
        let state = scenario::generate(&Params::new(50, 4, 2, "node-1"));
        let mut compiler = Compiler::default();
        let mut feeds = Vec::new();
        let mut request = |compiler: &mut Compiler| {
            compiler.request("manifests", |cause, feed| {
                feeds.push(feed);
                input(&state, cause)
            })
        };
        request(&mut compiler);
        compiler.finished().await.expect("the first compile");
        request(&mut compiler);
        compiler.finished().await.expect("an update");
        // An update that panics takes the engine with it.
        let engine = compiler.engine.take();
        compiler.running = Some(tokio::task::spawn_blocking(|| panic!("an engine bug")));
        assert!(compiler.finished().await.is_err());
        drop(engine);
        request(&mut compiler);
        compiler
            .finished()
            .await
            .expect("a compile from a snapshot");
        request(&mut compiler);
        assert_eq!(
            feeds,
            [Feed::First, Feed::Changes, Feed::Snapshot, Feed::Changes]
        );
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
        let compiled = compile(
            &mut Engine::default(),
            Input {
                pending,
                ..input(&state, "cni")
            },
        );
        let ImageUpdate::Whole(image) = &compiled.image else {
            panic!("a new engine gives the whole image");
        };
        let named = &image.endpoints[&"198.18.0.10".parse().expect("an address")];
        assert_eq!(
            (named.namespace.as_str(), named.pod.as_str()),
            (namespace.as_str(), name.as_str())
        );
        assert_ne!(
            named.identity,
            netfence_common::IDENTITY_WORLD,
            "compiled as the pod, with its identity"
        );
        let unknown = &image.endpoints[&"198.18.0.11".parse().expect("an address")];
        assert!(
            unknown.isolated_ingress && unknown.isolated_egress && unknown.policy == 0,
            "deny-all: {unknown:?}"
        );
        assert_eq!(compiled.denied, 1);
    }

    #[test]
    fn a_later_job_gives_a_patch_and_the_owners_that_changed() {
        let state = scenario::generate(&Params::new(300, 20, 5, "node-1"));
        let mut engine = Engine::default();
        let first = compile(&mut engine, input(&state, "manifests"));
        let ImageUpdate::Whole(mut image) = first.image else {
            panic!("a new engine gives the whole image");
        };
        let OwnerUpdate::All(mut owners) = first.owners else {
            panic!("a new engine gives every owner");
        };
        assert_eq!(owners, owners::owners(engine.state(), &image));
        // A remote pod goes.
        let gone = state
            .pods
            .iter()
            .rev()
            .find(|p| p.node_name.as_deref() != Some("node-1") && p.is_live_endpoint())
            .expect("a remote pod");
        let address = gone.ips[0];
        let key = crate::source::Object::Pod(gone.clone()).key();
        let second = compile(
            &mut engine,
            Input {
                changes: vec![Change::Delete(key)],
                ..input(&State::default(), "manifests")
            },
        );
        assert!(!second.work.rebuilt, "{:?}", second.work);
        assert_eq!(second.changes, 1);
        let ImageUpdate::Patch(patch) = second.image else {
            panic!("a later update gives a patch");
        };
        assert!(
            patch
                .identities
                .contains(&(ipnet::IpNet::from(address), None)),
            "the pod's prefix is removed: {:?}",
            patch.identities
        );
        patch.apply_to(&mut image);
        assert_eq!(&image, engine.image());
        let OwnerUpdate::Changed(changed) = second.owners else {
            panic!("a later update gives the changed owners");
        };
        assert_eq!(changed, vec![(address, None)]);
        owners.remove(&address);
        assert_eq!(owners, owners::owners(engine.state(), engine.image()));
    }
}
