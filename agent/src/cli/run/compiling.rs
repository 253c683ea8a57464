//! The policy engine off the run loop: a compile runs on tokio's blocking pool while
//! the loop goes on serving netlink events, CNI calls and ticks (health, metrics and
//! drop events have tasks of their own). At most one compile runs at a time; changes
//! that arrive meanwhile are coalesced into one more compile of the latest state,
//! started when the running one is applied.
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
use crate::compile::{NodeContext, compile_node};
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
    /// Pending addresses no pod of the state carries: denied both ways.
    pub denied: usize,
    pub elapsed: Duration,
}

/// Compiles `input` (runs on a blocking thread).
pub(super) fn compile(input: Input) -> Compiled {
    let started = Instant::now();
    let state = input.pending.fill_state(&input.state, &input.node);
    let context = NodeContext {
        name: Some(&input.node),
        addresses: &input.addresses,
        allow_node: input.allow_node,
    };
    let mut image = compile_node(&state, &context);
    let denied = input.pending.merge_into(&mut image);
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
        elapsed: started.elapsed(),
    }
}

/// The running compile, and the cause of the next one when changes came meanwhile.
#[derive(Debug, Default)]
pub(super) struct Compiler {
    running: Option<JoinHandle<Compiled>>,
    queued: Option<&'static str>,
}

impl Compiler {
    /// Starts compiling `input()` now, or, while a compile runs, remembers to compile
    /// again once it is applied (the input is taken then: the latest state).
    pub(super) fn request(&mut self, cause: &'static str, input: impl FnOnce(&'static str) -> Input) {
        if self.running.is_some() {
            self.queued.get_or_insert(cause);
            return;
        }
        let input = input(cause);
        self.running = Some(tokio::task::spawn_blocking(move || compile(input)));
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
        result
    }
}
