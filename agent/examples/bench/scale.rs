//! Section 4: a full compile of a large generated cluster (time and peak RSS), the
//! incremental engine's work per kind of one-object change, and the map writes
//! `sync::plan` derives from each. The measurement runs in a child process (this binary
//! with `--compile-child`), so its peak RSS (`VmHWM`) is the compile's alone.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

use netfence::cni::Pending;
use netfence::compile::compile;
use netfence::compile::engine::Engine;
use netfence::dataplane::sync::{Contents, MapOp, Scope, plan, plan_in};
use netfence::enforcer::compiling::{self, ImageUpdate, Input};
use netfence::model::State;
use netfence::scenario::{self, Params};
use netfence::source::Change;
use netfence_policy::change;
use serde_json::{Value, json};

use crate::report::{Report, Section, f1, f2, int, quantile, status_kib};
use crate::{Args, progress, scene};

fn kinds(ops: &[MapOp]) -> Value {
    let mut out = serde_json::Map::new();
    for op in ops {
        let kind = match op {
            MapOp::PutRule(_) => "put_rule",
            MapOp::PutPolicy(..) => "put_policy",
            MapOp::PutIdentity(..) => "put_identity",
            MapOp::PutEndpoint(..) => "put_endpoint",
            MapOp::PutPort(..) => "put_port",
            MapOp::DeleteEndpoint(_) => "delete_endpoint",
            MapOp::DeletePort(_) => "delete_port",
            MapOp::DeleteIdentity(_) => "delete_identity",
            MapOp::DeletePolicy(_) => "delete_policy",
            MapOp::DeleteRule(_) => "delete_rule",
        };
        let n = out.get(kind).and_then(Value::as_u64).unwrap_or(0);
        out.insert(kind.to_owned(), json!(n + 1));
    }
    Value::Object(out)
}

/// The child: generate, compile, relabel one pod, recompile, plan; print JSON.
pub fn child(sizes: &[usize]) -> anyhow::Result<()> {
    let [pods, policies, local] = sizes else {
        bail!("--compile-child takes PODS POLICIES LOCAL");
    };
    let params = Params::new(*pods, *policies, *local, scene::NODE);
    let start = Instant::now();
    let state = scenario::generate(&params);
    let generate_ms = start.elapsed().as_secs_f64() * 1e3;
    let rss_state_kib = status_kib("self", "VmRSS");
    let start = Instant::now();
    let image = compile(&state, Some(scene::NODE));
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let peak_kib = status_kib("self", "VmHWM");
    let live = Contents::from_image(&image, &Default::default());
    let full_writes = plan(&Contents::default(), &live).len();
    let mut changes = Vec::new();
    // A local pod and a remote one: the one-label change of each.
    for (what, index) in [("local pod", 0), ("remote pod", pods.saturating_sub(1))] {
        let mut changed = state.clone();
        if !scenario::relabel_pod(&mut changed, &params, index) {
            bail!("no generated pod {index}");
        }
        let start = Instant::now();
        let new_image = compile(&changed, Some(scene::NODE));
        let target = Contents::from_image(&new_image, &Default::default());
        let ops = plan(&live, &target);
        let ms = start.elapsed().as_secs_f64() * 1e3;
        changes.push(json!({ "what": what, "recompile_and_plan_ms": ms, "writes": ops.len(), "by_kind": kinds(&ops) }));
    }
    let samples = if *pods >= 100_000 { 7 } else { 11 };
    let engine = engine_changes(&state, &params, samples)?;
    let out = json!({
        "engine": engine, "peak_rss_with_engine_kib": status_kib("self", "VmHWM"),
        "pods": pods, "policies": policies, "local_pods": local,
        "generate_ms": generate_ms, "compile_ms": compile_ms,
        "rss_after_generate_kib": rss_state_kib, "peak_rss_kib": peak_kib,
        "policy_entries": image.policy.len(), "identity_prefixes": image.identities.len(),
        "endpoints": image.endpoints.len(), "rules": image.rules.len(),
        "full_sync_writes": full_writes, "changes": changes,
    });
    println!("{out}");
    Ok(())
}

/// The incremental engine on the same state, fed as `netfence run` feeds it: its
/// first update (a full build), then each kind of one-object change applied and
/// undone `samples` times, as the changes a watch delivers. Two times per change: the
/// engine's update alone, and the agent's whole path to the map writes (the compile
/// job — update, image patch, owners of the changed addresses, event names — then
/// the target contents patched and the scoped sync plan); writes = that plan.
fn engine_changes(state: &State, params: &Params, samples: usize) -> anyhow::Result<Value> {
    let mut engine = Engine::default();
    let input = |changes: Vec<Change>, pending: Pending| Input {
        changes,
        node: scene::NODE.to_owned(),
        addresses: Vec::new(),
        allow_node: true,
        audit_all: false,
        pending,
        flow_log: false,
        cause: "bench",
    };
    let start = Instant::now();
    let first = compiling::compile(
        &mut engine,
        input(
            change::between(&State::default(), state),
            Pending::default(),
        ),
    );
    let first_ms = start.elapsed().as_secs_f64() * 1e3;
    // The state and the engine with its image, the agent's copy of the image and
    // the target contents: what `run` holds, less the source's stores.
    let ImageUpdate::Whole(mut image) = first.image else {
        bail!("the engine's first update is not a whole image");
    };
    let mut target = Contents::from_image(&image, &Default::default());
    let rss_engine_kib = status_kib("self", "VmRSS");
    if image != compile(state, Some(scene::NODE)) {
        bail!("the engine's first image differs from compile's");
    }
    let pods = params.pods;
    type Edit<'a> = Box<dyn Fn(&mut State) + 'a>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "relabel a local pod",
            Box::new(|s: &mut State| {
                scenario::relabel_pod(s, params, 0);
            }),
        ),
        (
            "relabel a remote pod",
            Box::new(move |s: &mut State| {
                scenario::relabel_pod(s, params, pods - 1);
            }),
        ),
        (
            "add a remote pod",
            Box::new(|s: &mut State| {
                let mut pod = s.pods[s.pods.len() - 1].clone();
                pod.name.push_str("-new");
                pod.ips = vec![std::net::IpAddr::from([198, 19, 255, 1])];
                let at = s
                    .pods
                    .partition_point(|p| (&p.namespace, &p.name) < (&pod.namespace, &pod.name));
                s.pods.insert(at, pod);
            }),
        ),
        (
            "delete a remote pod",
            Box::new(|s: &mut State| {
                s.pods.pop();
            }),
        ),
        (
            "relabel a namespace",
            Box::new(|s: &mut State| {
                if let Some(namespace) = s.namespaces.values_mut().next() {
                    namespace
                        .labels
                        .insert("team".to_owned(), "t-other".to_owned());
                }
            }),
        ),
        (
            "add a policy",
            Box::new(|s: &mut State| {
                let mut policy = s.policies[0].clone();
                policy.name.push_str("-new");
                let at = s.policies.partition_point(|p| {
                    (&p.namespace, &p.name) < (&policy.namespace, &policy.name)
                });
                s.policies.insert(at, policy);
            }),
        ),
        (
            "change a policy",
            Box::new(|s: &mut State| {
                if let Some(rule) = s.policies[0].ingress.first_mut() {
                    rule.ports.truncate(1);
                }
            }),
        ),
        (
            "delete a policy",
            Box::new(|s: &mut State| {
                s.policies.remove(0);
            }),
        ),
        (
            "change an EndpointSlice",
            Box::new(|s: &mut State| {
                s.endpoint_slices[0].endpoints.pop();
            }),
        ),
    ];
    // One step of the agent's path: the compile job, then the target contents
    // brought along and the sync plan. Returns (engine ms, whole ms, writes, rebuilt).
    let mut step = |changes: Vec<Change>, pending: Pending| {
        // What the maps hold before (copied untimed: the agent keeps it).
        let live = target.clone();
        let start = Instant::now();
        let compiled = compiling::compile(&mut engine, input(changes, pending));
        let mut scope = Scope::default();
        match compiled.image {
            ImageUpdate::Whole(whole) => {
                target = Contents::from_image(&whole, &Default::default());
                scope = Scope::All;
                image = whole;
            }
            ImageUpdate::Patch(patch) => {
                target.patch(&patch, &mut scope);
                patch.apply_to(&mut image);
            }
        }
        target.set_local(&image, &Default::default());
        let writes = plan_in(&live, &target, &scope).len();
        let whole = start.elapsed().as_secs_f64() * 1e3;
        (
            compiled.elapsed.as_secs_f64() * 1e3,
            whole,
            writes,
            compiled.work.rebuilt,
        )
    };
    let mut out = Vec::new();
    for (what, edit) in &edits {
        let mut changed = state.clone();
        edit(&mut changed);
        let (forth, back) = (
            change::between(state, &changed),
            change::between(&changed, state),
        );
        let (mut engine_ms, mut whole_ms) = (Vec::new(), Vec::new());
        let (mut writes, mut rebuilt) = (0, false);
        for _ in 0..samples {
            let (e, w, n, r) = step(forth.clone(), Pending::default());
            engine_ms.push(e);
            whole_ms.push(w);
            writes = n;
            rebuilt |= r;
            step(back.clone(), Pending::default());
        }
        out.push(json!({
            "what": what, "changes": forth.len(),
            "p50_ms": quantile(&engine_ms, 0.5), "p99_ms": quantile(&engine_ms, 0.99),
            "to_sync_p50_ms": quantile(&whole_ms, 0.5), "to_sync_p99_ms": quantile(&whole_ms, 0.99),
            "writes": writes, "rebuilt": rebuilt,
        }));
    }
    // A CNI ADD of a pod the state does not name yet: a deny-all endpoint, in an
    // update of its own (the agent programs it without one, by a merge).
    let mut pending = Pending::default();
    pending.add(netfence::cni::PendingEndpoint {
        container_id: "c1".to_owned(),
        netns: String::new(),
        ifname: "eth0".to_owned(),
        ips: vec![std::net::IpAddr::from([198, 18, 0, 250])],
        namespace: None,
        pod: None,
        host_interfaces: Vec::new(),
        added_unix: 0,
        netns_seen: false,
    });
    let (mut engine_ms, mut whole_ms) = (Vec::new(), Vec::new());
    let mut writes = 0;
    for _ in 0..samples {
        let (e, w, n, _) = step(Vec::new(), pending.clone());
        engine_ms.push(e);
        whole_ms.push(w);
        writes = n;
        step(Vec::new(), Pending::default());
    }
    out.push(
        json!({ "what": "CNI ADD (pod not in the state yet)", "changes": 0,
        "p50_ms": quantile(&engine_ms, 0.5), "p99_ms": quantile(&engine_ms, 0.99),
        "to_sync_p50_ms": quantile(&whole_ms, 0.5), "to_sync_p99_ms": quantile(&whole_ms, 0.99),
        "writes": writes, "rebuilt": false }),
    );
    Ok(
        json!({ "first_update_ms": first_ms, "rss_state_and_engine_kib": rss_engine_kib, "samples": samples, "changes": out }),
    )
}

/// The cluster sizes measured: Kubernetes' published limit (150,000 pods) and two
/// steps below it, with one policy per 15 pods; `--quick` runs one small size.
fn sizes(quick: bool) -> Vec<(usize, usize)> {
    if quick {
        vec![(1_000, 67)]
    } else {
        [10_000, 50_000, 150_000]
            .into_iter()
            .map(|pods| (pods, pods / 15))
            .collect()
    }
}

/// Runs the compile child at one size and parses its JSON line.
fn measure(args: &Args, pods: usize, policies: usize, local: usize) -> anyhow::Result<Value> {
    progress(&format!(
        "compile: {pods} pods × {policies} policies in a child process"
    ));
    let exe = std::env::current_exe()?;
    let out = Command::new(&exe)
        .arg("--compile-child")
        .args([pods, policies, local].map(|n| n.to_string()))
        .arg("--netfence")
        .arg(&args.netfence)
        .arg("--out")
        .arg(&args.out)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "compile child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next_back().unwrap_or_default())
        .with_context(|| format!("parsing the compile child's output: {text}"))
}

pub fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let local = scene::LOCAL_PODS;
    let sizes = sizes(args.quick);
    let mut s = Section::new(
        "compile",
        "4. Compile, the incremental engine and memory, per cluster size (full compile; engine work per kind of change)",
        &[
            "pods × policies",
            "step",
            "time (ms)",
            "map writes",
            "detail",
        ],
    );
    s.method(format!(
        "seeded scenario ({local} local pods, one policy per 15 pods, one Service per app); compile(&State, Some(node)) timed in a child process per size;"
    ));
    s.method("map writes = sync::plan(live, target).len(), the exact list the agent would apply; peak RSS is the child's VmHWM (state and compile).");
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let count = |v: &Value| v.as_u64().unwrap_or(0) as usize;
    let mut all = Vec::new();
    for (pods, policies) in sizes {
        let data = measure(args, pods, policies, local)?;
        let size = format!("{} × {}", int(pods), int(policies));
        s.row(vec![
            size.clone(),
            "generate state".into(),
            f1(num(&data["generate_ms"])),
            "-".into(),
            format!(
                "RSS after: {} MiB",
                f1(num(&data["rss_after_generate_kib"]) / 1024.0)
            ),
        ]);
        s.row(vec![
            size.clone(),
            "full compile".into(),
            f1(num(&data["compile_ms"])),
            int(count(&data["full_sync_writes"])),
            format!(
                "peak RSS {} MiB; {} POLICY entries, {} prefixes, {} endpoints",
                f1(num(&data["peak_rss_kib"]) / 1024.0),
                int(count(&data["policy_entries"])),
                int(count(&data["identity_prefixes"])),
                int(count(&data["endpoints"]))
            ),
        ]);
        s.row(vec![
            size.clone(),
            "engine: first update".into(),
            f1(num(&data["engine"]["first_update_ms"])),
            "-".into(),
            format!(
                "RSS of state + engine {} MiB (peak of the run {} MiB)",
                f1(num(&data["engine"]["rss_state_and_engine_kib"]) / 1024.0),
                f1(num(&data["peak_rss_with_engine_kib"]) / 1024.0)
            ),
        ]);
        for change in data["engine"]["changes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            s.row(vec![
                size.clone(),
                format!("engine: {}", change["what"].as_str().unwrap_or("?")),
                format!(
                    "{} / {} (to sync {} / {})",
                    f2(num(&change["p50_ms"])),
                    f2(num(&change["p99_ms"])),
                    f2(num(&change["to_sync_p50_ms"])),
                    f2(num(&change["to_sync_p99_ms"]))
                ),
                int(count(&change["writes"])),
                if change["rebuilt"].as_bool().unwrap_or(false) {
                    "identities rebuilt".into()
                } else {
                    "incremental".into()
                },
            ]);
        }
        for change in data["changes"].as_array().cloned().unwrap_or_default() {
            s.row(vec![
                size.clone(),
                format!(
                    "full recompile: relabel one {}",
                    change["what"].as_str().unwrap_or("?")
                ),
                f1(num(&change["recompile_and_plan_ms"])),
                int(count(&change["writes"])),
                change["by_kind"].to_string(),
            ]);
        }
        all.push(data);
    }
    s.note("engine rows: p50 / p99 ms of the engine's update for one change fed as a watch delivers it (applied and undone");
    s.note("repeatedly), and in brackets of the agent's whole path to the map writes (compile job, image patch, owners, names,");
    s.note("target contents, scoped sync plan); its map writes; whether it rebuilt the identities. Full recompile rows:");
    s.note("compile() from scratch plus plan, as before the engine.");
    s.json = Value::Array(all);
    report.sections.push(s);
    Ok(())
}
