//! The enforcer behind `netfence run` (the CLI only wires its arguments here):
//! enforce on this node. One task owns the loaded programs and reacts to these:
//! a source change (the changed objects are queued for the policy engine, whose
//! update runs on the blocking pool: `compiling`; changes during an update are
//! handed to one more), a finished update (purge the conntrack entries of addresses
//! whose pod went or changed, sync), an interface
//! change or a periodic tick (forget gone interfaces, rebind pod addresses and sync
//! them, then attach to new interfaces: `interfaces`), and a signal (exit; pinned
//! links stay attached unless `--detach-on-exit`).
//!
//! Restart without a gap: maps and TCX links are pinned under `--pin-dir`. A new agent
//! loads its programs on the pinned maps (conntrack and counters included), reads
//! the maps back so its first sync writes only the difference, and swaps its
//! programs into the pinned links atomically. Until its first sync the previous
//! agent's programs keep enforcing the previous policy on the same maps. Nothing is
//! detached on the way.
//!
//! Nothing is attached before the source is ready (the Kubernetes API source: every
//! kind listed completely once): the first packet a program sees meets a complete
//! policy. `netfence: ready` is logged, and `/readyz` turns ready, after that first
//! sync and attach.

mod cni;
pub mod compiling;
mod feed;
mod interfaces;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use self::compiling::{Compiled, Compiler, ImageUpdate, Input, OwnerUpdate};
use crate::cli::RunArgs;
use crate::dataplane::attach::Attachments;
use crate::dataplane::events::{self, Names};
use crate::dataplane::flowlog::{FlowContext, FlowLog};
use crate::dataplane::last_sync::{self, LastSync};
use crate::dataplane::links::{self, Interface, Selection};
use crate::dataplane::loader::{Datapath, LoadOptions, Maps};
use crate::dataplane::owners::{self, Owner};
use crate::dataplane::pin::PinDir;
use crate::dataplane::sync::{self, Contents};
use crate::image::Image;
use crate::source::{Batch, Change};
use crate::telemetry::{self, Health, Metrics, Telemetry};

pub use feed::{DEFAULT_HEALTH_ADDR, Source};

/// How often interfaces are re-listed and bindings refreshed without a netlink event
/// (a pod's address appears in its namespace after its veth does).
const TICK: Duration = Duration::from_secs(1);

/// The bridge attached to when neither `--bridge` nor `--interfaces` is given.
const DEFAULT_BRIDGE: &str = "cni0";

/// Conntrack entries are counted every this many ticks (a walk of the map's keys).
const CONNTRACK_SAMPLE_TICKS: u64 = 5;

/// Everything `run` keeps between events.
struct Enforcer {
    node: String,
    /// Where the cluster's objects come from.
    source: Box<dyn Source>,
    /// Changes from the source not handed to the engine yet.
    queued: Vec<Change>,
    /// The compile running on the blocking pool, and whether another is due.
    compiler: Compiler,
    /// The node's own addresses (`--allow-node`), re-read with the interfaces.
    node_addresses: Vec<IpAddr>,
    allow_node: bool,
    datapath: Datapath,
    attachments: Attachments,
    selection: Selection,
    handle: rtnetlink::Handle,
    image: Image,
    bindings: BTreeMap<IpAddr, u32>,
    /// The binding problems found last (each is logged as a warning once).
    bind_problems: BTreeSet<String>,
    /// Who owned each pod address at the last compile: addresses that change owner
    /// have their conntrack entries purged. `None` before the first compile has
    /// succeeded (the first is a whole build, which gives every owner): until then
    /// there is no image to sync either.
    owners: Option<BTreeMap<IpAddr, Owner>>,
    live: Contents,
    /// What the maps should hold (the node-local maps are recomputed at each sync),
    /// and which cluster-wide entries may differ from `live`.
    target: Contents,
    scope: sync::Scope,
    generation: u64,
    names: tokio::sync::watch::Sender<Arc<Names>>,
    /// Names for the flow log (sent only while a flow log reads them).
    flow_context: tokio::sync::watch::Sender<Arc<FlowContext>>,
    pins: PinDir,
    /// Map directories of another layout, removed once the links are switched.
    old_layouts: Vec<std::path::PathBuf>,
    metrics: Arc<Metrics>,
    /// `--mode`.
    mode: crate::dataplane::sync::Mode,
    /// `--existing-flows` (for the last-sync record; the programs got it at load).
    existing_flows: crate::dataplane::loader::ExistingFlows,
    /// Pods the CNI plugin announced, and the ADDs waiting for their enforcement.
    cni: cni::CniEndpoints,
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Capabilities and bpf(2) first: a clear error instead of an EPERM from the loader.
    crate::runtime::check().map_err(anyhow::Error::msg)?;
    // Flannel's bridge unless told otherwise.
    let bridge = args.bridge.clone().or_else(|| {
        args.interfaces
            .is_empty()
            .then(|| DEFAULT_BRIDGE.to_owned())
    });
    let selection = Selection::new(&args.interfaces, bridge)?;
    let options = LoadOptions {
        ct_tcp_timeout_ns: args.ct_tcp_timeout.saturating_mul(1_000_000_000),
        ct_other_timeout_ns: args.ct_other_timeout.saturating_mul(1_000_000_000),
        ct_unreplied_timeout_ns: args.ct_unreplied_timeout.saturating_mul(1_000_000_000),
        event_allows: args.log_allows,
        existing_flows: args.existing_flows,
    };
    let pins = PinDir::prepare(&args.pin_dir)?;
    let old_layouts = pins.other_layouts();
    let restart = pins.has_own_layout();
    let mut datapath = Datapath::load_pinned(&options, &pins)?;
    let live = datapath
        .maps
        .read_live()
        .context("reading the pinned maps back")?;
    tracing::info!(
        pin_dir = %pins.root().display(),
        layout = %crate::dataplane::pin::layout(),
        restart,
        endpoints = live.endpoints.len(),
        identities = live.identities.len(),
        policy_entries = live.policy.len(),
        links = pins.links().len(),
        "pinned state"
    );
    if !old_layouts.is_empty() {
        tracing::warn!(
            old = ?old_layouts,
            "maps pinned with another layout: filling new maps, then switching the programs on the pinned links"
        );
    }
    let ring = datapath
        .events
        .take()
        .context("event ring buffer already taken")?;
    let (names, names_rx) = tokio::sync::watch::channel(Arc::new(Names::new()));
    let metrics = Arc::new(Metrics::new());
    let (flow_context, flow_context_rx) =
        tokio::sync::watch::channel(Arc::new(FlowContext::default()));
    let flows = match &args.flow_log {
        Some(target) => {
            let log = FlowLog::open(target, args.flow_log_rate, Some(metrics.clone()))
                .with_context(|| format!("opening the flow log {target:?}"))?;
            Some((log, flow_context_rx))
        }
        None => {
            // No reader: reloads then skip building the flow context.
            drop(flow_context_rx);
            None
        }
    };
    let limiter = crate::telemetry::eventlog::EventLimiter::new(args.event_log_lines);
    let event_reader = tokio::spawn(events::read(ring, names_rx, flows, limiter));

    let feed::Opened {
        source,
        mut changes,
        health_addr,
        description,
    } = feed::open(&args).await?;
    tracing::info!(source = %description, "source");
    let health = Arc::new(Health::new());
    health.beat();
    let _health_server = match health_addr {
        Some(addr) => {
            let telemetry = Telemetry {
                health: health.clone(),
            };
            let (bound, task) =
                telemetry::serve_with_metrics(addr, telemetry, Some(metrics.clone())).await?;
            tracing::info!(%bound, "telemetry endpoints /healthz, /readyz and /metrics");
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let handle = links::connect()?;
    let mut link_changes = links::subscribe()?;
    let attachments = Attachments::pinned(args.attach, pins.clone());
    if !attachments.survives_exit() && !args.detach_on_exit {
        tracing::warn!(
            "clsact filters cannot be pinned: they are detached on exit, and a restart re-attaches them"
        );
    }
    tracing::info!(mode = ?attachments.mode(), "attach mode");

    let node_addresses = links::node_addresses(&handle).await.unwrap_or_else(|error| {
        tracing::error!("listing the node's addresses (node traffic is judged as world until they are read): {error}");
        Vec::new()
    });
    tracing::info!(allow_node = args.allow_node, addresses = ?node_addresses, "node addresses");
    let mut enforcer = Enforcer {
        node: args.node_name.clone(),
        source,
        queued: Vec::new(),
        compiler: Compiler::default(),
        node_addresses,
        allow_node: args.allow_node,
        datapath,
        attachments,
        selection,
        handle,
        image: Image::default(),
        // After a restart, the pinned endpoints' interfaces: the first sync then keeps
        // them (no window without anti-spoofing), and `links::bind` keeps those of an
        // interface whose peer cannot be read.
        bindings: live
            .endpoints
            .iter()
            .filter(|(_, value)| value.ifindex != 0)
            .map(|(addr, value)| (*addr, value.ifindex))
            .collect(),
        bind_problems: BTreeSet::new(),
        owners: None,
        live,
        target: Contents::default(),
        scope: sync::Scope::All,
        generation: 0,
        names,
        flow_context,
        pins,
        old_layouts,
        metrics,
        mode: args.mode,
        existing_flows: args.existing_flows,
        // Pending CNI pods a previous agent saved: kept by the first sync.
        cni: cni::CniEndpoints::open(&args),
    };
    let mut ready = false;
    match enforcer.source.load() {
        Some(batch) => enforcer.start(batch, &health, &mut ready).await,
        None => {
            let waiting = enforcer.source.waiting_for();
            tracing::info!("not ready: {waiting}");
            health.set_waiting(waiting);
        }
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(TICK);
    let mut cni_server = cni::listen(&args.cni_socket);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            compiled = enforcer.compiler.finished() => enforcer.compiled(compiled),
            change = changes.recv() => match change {
                Some(()) => match enforcer.source.load() {
                    Some(batch) if ready => enforcer.reload(batch),
                    Some(batch) => enforcer.start(batch, &health, &mut ready).await,
                    None => health.set_waiting(enforcer.source.waiting_for()),
                },
                None => anyhow::bail!("the source's change channel closed"),
            },
            change = link_changes.recv() => match change {
                // Nothing is attached before the first complete state.
                Some(()) if ready => enforcer.reconcile_interfaces().await,
                Some(()) => {}
                None => anyhow::bail!("the netlink link monitor stopped"),
            },
            call = crate::cni::server::next_call(&mut cni_server) => match call {
                Some(call) => enforcer.cni_call(call, ready).await,
                None => {
                    tracing::error!("the CNI socket's accept task stopped: not serving the plugin any more");
                    cni_server = None;
                }
            },
            _ = tick.tick() => if ready {
                enforcer.cni_tick(true);
                enforcer.reconcile_interfaces().await;
                enforcer.refresh_metrics();
                enforcer.metrics.set_source_errors(enforcer.source.errors());
                ticks += 1;
                if ticks % CONNTRACK_SAMPLE_TICKS == 1 {
                    enforcer.refresh_conntrack_metric();
                }
            } else {
                enforcer.cni_tick(false);
                health.set_waiting(enforcer.source.waiting_for());
                enforcer.metrics.set_source_errors(enforcer.source.errors());
            },
        }
        health.beat();
    }
    event_reader.abort();
    // Plugin calls from here on find no agent (and a lease that still holds).
    drop(cni_server);
    // An uninstall (the DaemonSet is being deleted) takes everything away; a restart
    // leaves it for the next agent.
    let uninstall = enforcer.cni_stop(&args).await;
    if uninstall.is_some() || args.detach_on_exit || !enforcer.attachments.survives_exit() {
        let detached = enforcer.attachments.detach_all(&mut enforcer.datapath.ebpf);
        // Nothing the last-sync record describes is enforced any more.
        let record = last_sync::path_for(enforcer.pins.root());
        if std::fs::remove_file(&record).is_ok()
            && let Some(dir) = record.parent()
        {
            let _ = std::fs::remove_dir(dir); // only if no other agent's record is there
        }
        tracing::info!(interfaces = detached, "detached; exiting");
        if let Some(why) = &uninstall {
            let root = enforcer.pins.root().to_owned();
            match crate::cli::uninstall::uninstall(&root) {
                Ok(_) => {
                    tracing::info!(pin_dir = %root.display(), "netfence: uninstalled from this node ({why}); pinned state removed")
                }
                Err(error) => {
                    tracing::error!(pin_dir = %root.display(), "netfence: uninstalling: {error:#}")
                }
            }
        }
    } else {
        let kept = enforcer.attachments.release(&mut enforcer.datapath.ebpf);
        tracing::info!(
            interfaces = kept,
            pin_dir = %enforcer.pins.root().display(),
            "exiting; enforcement stays attached (pinned) until the next agent adopts it"
        );
    }
    enforcer.log_counters();
    Ok(ExitCode::SUCCESS)
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Enforcer {
    /// The first complete state: compile, bindings, then maps, then attach, so the
    /// first packet a program sees (also one swapped into a pinned link, on maps a
    /// layout change left empty) meets the policy and its pod's binding. Then ready.
    async fn start(&mut self, batch: Batch, health: &Health, ready: &mut bool) {
        let cause = self.accept(batch);
        self.recompile(cause);
        let compiled = self.compiler.finished().await;
        self.take_compiled(compiled);
        // Bindings use the owners the compile found; node addresses read anew
        // decide the image: compile again when they changed.
        if let Some(all) = self.list_interfaces().await {
            let managed: Vec<&Interface> = self.selection.managed(&all);
            if self.rebind(&managed).await.node_changed {
                self.recompile("node addresses");
                let compiled = self.compiler.finished().await;
                self.take_compiled(compiled);
            }
        }
        self.sync(cause);
        self.reconcile_interfaces().await;
        let adopted = self
            .attachments
            .indexes()
            .filter(|i| self.attachments.adopted(*i))
            .count();
        let pruned = self.attachments.prune_pins();
        for dir in std::mem::take(&mut self.old_layouts) {
            match PinDir::remove_tree(&dir) {
                Ok(()) => tracing::info!(dir = %dir.display(), "removed maps of the old layout"),
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), "removing maps of the old layout: {error}")
                }
            }
        }
        *ready = true;
        health.set_ready();
        tracing::info!(
            node = %self.node,
            adopted,
            stale_pins_removed = pruned,
            interfaces = self.attachments.indexes().count(),
            endpoints = self.image.endpoints.len(),
            generation = self.generation,
            "netfence: ready"
        );
    }

    /// Hands the source's changes to the engine, which syncs when done. Invalid
    /// objects are reported; their last good version (or nothing) stays enforced.
    fn reload(&mut self, batch: Batch) {
        let cause = self.accept(batch);
        self.recompile(cause);
    }

    /// Queues the source's changes for the engine (reporting its invalid objects)
    /// without compiling; returns the cause to compile them with.
    fn accept(&mut self, batch: Batch) -> &'static str {
        let noun = self.source.noun();
        for error in &batch.errors {
            tracing::error!("invalid {noun}, skipped (last good version kept): {error}");
        }
        for warning in &batch.warnings {
            tracing::warn!("{noun} accepted with a change: {warning}");
        }
        self.metrics.set_invalid_objects(batch.errors.len());
        self.queued.extend(batch.changes);
        self.source.name()
    }

    /// Updates the engine with the queued changes for this node on the blocking pool
    /// (or, while an update runs, once it is applied); the result is synced by
    /// [`Self::compiled`]. The first engine takes every change queued since the source
    /// started; one that starts anew after an update panicked gets a snapshot.
    fn recompile(&mut self, cause: &'static str) {
        let (source, queued) = (&self.source, &mut self.queued);
        let (node, addresses) = (&self.node, &self.node_addresses);
        let (allow_node, pending) = (self.allow_node, &self.cni.pending);
        let audit_all = self.mode == sync::Mode::Audit;
        let flow_log = self.flow_context.receiver_count() > 0;
        self.compiler.request(cause, |cause, feed| Input {
            changes: match feed {
                compiling::Feed::Snapshot => {
                    // Every object: what was queued is in the snapshot.
                    queued.clear();
                    source.snapshot()
                }
                compiling::Feed::Changes | compiling::Feed::First => std::mem::take(queued),
            },
            node: node.clone(),
            addresses: addresses.clone(),
            allow_node,
            audit_all,
            pending: pending.clone(),
            flow_log,
            cause,
        });
    }

    /// A compile finished: purge, sync, answer the ADDs it programmed, and start the
    /// compile changes asked for meanwhile. A compile that panicked leaves the last
    /// good enforcement in place.
    fn compiled(&mut self, result: Result<Compiled, tokio::task::JoinError>) {
        if let Some(cause) = self.take_compiled(result) {
            self.sync(cause);
        }
        if let Some(cause) = self.compiler.take_queued() {
            self.recompile(cause);
        }
        self.answer_cni_waiters();
    }

    /// Takes a finished compile's image and purges the conntrack entries of moved
    /// addresses, without syncing; returns the compile's cause (`None` when it
    /// failed).
    fn take_compiled(
        &mut self,
        result: Result<Compiled, tokio::task::JoinError>,
    ) -> Option<&'static str> {
        match result {
            Ok(compiled) => Some(self.apply(compiled)),
            Err(error) => {
                tracing::error!(
                    "the compile task failed; the last good enforcement stays, and the next compile starts anew: {error}"
                );
                None
            }
        }
    }

    fn apply(&mut self, compiled: Compiled) -> &'static str {
        let Compiled {
            cause,
            image,
            mut names,
            flow_context,
            owners,
            denied,
            work,
            changes,
            elapsed,
        } = compiled;
        tracing::debug!(
            changes,
            rebuilt = work.rebuilt,
            pods_changed = work.pods_changed,
            identities_touched = work.identities_touched,
            ms = elapsed.as_millis(),
            "engine update"
        );
        match image {
            ImageUpdate::Whole(image) => {
                self.target = Contents::from_image(&image, &self.bindings);
                self.scope = sync::Scope::All;
                self.image = image;
            }
            ImageUpdate::Patch(patch) => {
                self.target.patch(&patch, &mut self.scope);
                patch.apply_to(&mut self.image);
            }
        }
        // ADDs programmed while the compile ran went into the image it replaces:
        // keep them (the merge the compile made, with the newer pending set).
        let later = self
            .cni
            .pending
            .merge_into(&mut self.image, self.mode == sync::Mode::Audit);
        if later > 0 {
            names = events::names(&self.image);
        }
        let denied = denied + later;
        if denied > 0 {
            tracing::info!(
                addresses = denied,
                "cni: pods not in the state yet are denied both ways"
            );
        }
        self.metrics.observe_compile(elapsed);
        let _ = self.names.send(Arc::new(names));
        if let Some(context) = flow_context {
            let _ = self.flow_context.send(Arc::new(context));
        }
        self.purge_moved(owners);
        cause
    }

    /// Deletes the conntrack entries of every address whose owner pod went or
    /// changed since the last compile, before the sync programs the new owner: no
    /// flow of the old pod carries over to the new one. One walk for all of them.
    fn purge_moved(&mut self, update: OwnerUpdate) {
        let moved = match (update, self.owners.as_mut()) {
            (OwnerUpdate::All(next), previous) => {
                let moved = previous
                    .map(|previous| owners::moved(previous, &next))
                    .unwrap_or_default();
                self.owners = Some(next);
                moved
            }
            (OwnerUpdate::Changed(changed), Some(owners)) => owners::update(owners, changed),
            (OwnerUpdate::Changed(_), None) => {
                // Only a whole build gives the first owners.
                tracing::error!("owners changed before any were known; purging nothing");
                BTreeSet::new()
            }
        };
        if moved.is_empty() {
            return;
        }
        match Maps::purge_conntrack(&mut self.datapath.ebpf, &moved) {
            Ok(entries) => tracing::info!(
                addresses = moved.len(),
                entries,
                "conntrack: purged the entries of addresses whose pod went or changed: {moved:?}"
            ),
            Err(error) => tracing::error!(
                addresses = ?moved,
                "conntrack: purging the entries of addresses whose pod went or changed (their flows may carry over to the address's next pod until they idle out): {error}"
            ),
        }
    }

    fn sync(&mut self, cause: &str) {
        if self.owners.is_none() {
            tracing::warn!(
                cause,
                "no compile has succeeded yet: the maps keep what they hold"
            );
            return;
        }
        self.target.set_local(&self.image, &self.bindings);
        for conflict in sync::port_conflicts(&self.target.endpoints) {
            tracing::warn!("{conflict}");
        }
        let started = std::time::Instant::now();
        let report = sync::sync_in(
            &mut self.datapath.maps,
            &mut self.live,
            &self.target,
            &self.scope,
        );
        // What failed is retried by the next sync.
        self.scope = sync::Scope::of_failures(&report);
        // The sync's last write: flows are re-checked (`--existing-flows=cut`) only
        // against a complete new policy. A no-op sync keeps the generation.
        if report.verdict_writes > 0 {
            match self.datapath.maps.bump_generation() {
                Ok(generation) => tracing::debug!(generation, "policy generation"),
                Err(error) => tracing::error!(
                    "bumping the policy generation (established flows are not re-checked for this change): {error}"
                ),
            }
        }
        self.metrics
            .observe_sync(started.elapsed(), report.failed.len());
        self.metrics
            .set_map_entries("endpoints", self.live.endpoints.len());
        self.metrics.set_map_entries("ports", self.live.ports.len());
        self.metrics
            .set_map_entries("identities", self.live.identities.len());
        self.metrics
            .set_map_entries("policy", self.live.policy.len());
        self.metrics.set_map_entries("rules", self.live.rules.len());
        for (op, error) in &report.failed {
            tracing::error!("map write failed, will retry: {op:?}: {error}");
        }
        if !report.withheld.is_empty() {
            tracing::error!(
                entries = report.withheld.len(),
                "policy entries withheld: an identity prefix they would wrongly cover is not written (map full); the pods they allow fail closed for those peers until a retry writes it"
            );
        }
        let incomplete = report.incomplete_policies();
        for endpoint in self
            .image
            .endpoints
            .values()
            .filter(|e| incomplete.contains(&e.policy))
        {
            tracing::error!(
                namespace = %endpoint.namespace,
                pod = %endpoint.pod,
                policy = endpoint.policy,
                "policy entries missing (map full): this pod fails closed, new flows its missing rules allow are dropped until a retry writes them"
            );
        }
        self.generation += 1;
        tracing::info!(
            generation = self.generation,
            cause,
            writes = report.applied,
            failed = report.failed.len(),
            endpoints = self.live.endpoints.len(),
            identities = self.live.identities.len(),
            policy_entries = self.live.policy.len(),
            "synced generation={}",
            self.generation
        );
        self.record_sync(cause, &report);
    }

    /// Writes the last-sync record `netfence status` reads (a failure is logged: it
    /// costs the operator a status line, not enforcement).
    fn record_sync(&self, cause: &str, report: &sync::SyncReport) {
        let record = LastSync {
            pin_dir: self.pins.root().to_owned(),
            pid: std::process::id(),
            generation: self.generation,
            unix_time: last_sync::now_unix(),
            cause: cause.to_owned(),
            writes: report.applied,
            failed_writes: report.failed.len(),
            endpoints: self.live.endpoints.len(),
            identities: self.live.identities.len(),
            policy_entries: self.live.policy.len(),
            rules: self.live.rules.len(),
            mode: Some(self.mode),
            existing_flows: Some(self.existing_flows),
            allow_node: Some(self.allow_node),
        };
        let path = last_sync::path_for(self.pins.root());
        if let Err(error) = last_sync::write(&path, &record) {
            tracing::warn!(path = %path.display(), "writing the last-sync record: {error}");
        }
    }

    /// Reads the kernel counters into the metrics (every tick: one lookup per reason
    /// and one walk of RULE_HITS, bounded by the number of rules).
    fn refresh_metrics(&self) {
        match self.datapath.maps.counters() {
            Ok(counters) => self.metrics.update_packets(&counters),
            Err(error) => tracing::debug!("reading counters: {error}"),
        }
        match self.datapath.maps.rule_hits() {
            Ok(hits) => self.metrics.update_rules(&hits, &self.image.rules),
            Err(error) => tracing::debug!("reading rule hits: {error}"),
        }
    }

    /// Counts the live conntrack entries into the metrics: the total, and per local
    /// pod (one walk).
    fn refresh_conntrack_metric(&self) {
        match Maps::conntrack_by_local(&self.datapath.ebpf) {
            Ok(by_local) => {
                self.metrics
                    .set_map_entries("conntrack", by_local.values().sum());
                let by_pod =
                    crate::telemetry::metrics::conntrack_by_pod(&by_local, &self.image.endpoints);
                self.metrics.set_conntrack_by_pod(&by_pod);
            }
            Err(error) => tracing::debug!("counting conntrack entries: {error}"),
        }
    }

    fn log_counters(&self) {
        match self.datapath.maps.counters() {
            Ok(counters) => {
                let text: Vec<String> = counters
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .filter_map(|(code, n)| {
                        netfence_common::Reason::from_code(*code)
                            .map(|r| format!("{}={n}", r.name()))
                    })
                    .collect();
                tracing::info!("counters: {}", text.join(" "));
            }
            Err(error) => tracing::warn!("reading counters: {error}"),
        }
    }
}
