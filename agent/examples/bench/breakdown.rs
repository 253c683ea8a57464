//! Section 1b: where an established packet's time goes. The real object is loaded six
//! times, each with a different `BENCH_STAGE` (a frozen load-time global: the verifier
//! removes every stage after the cut-off, as it prunes `cut` in `keep` mode), so each
//! variant is the production program with the later stages removed:
//!
//! | stage | runs |
//! |---|---|
//! | 1 | the program's entry (context, ifindex) |
//! | 2 | + parse: Ethernet, IPv4, TCP |
//! | 3 | + the conntrack key |
//! | 4 | + the CONNTRACK lookup (hash of the 44-byte key) |
//! | 5 | + the established check: clock read, liveness, refresh, reply mark |
//! | 0 | + finish: the verdict counter, events check, the action (the whole program) |
//!
//! Each variant runs the established ACK of the section's flow at both hooks through
//! the same `BPF_PROG_TEST_RUN` + bpf_stats harness as section 1, beside the empty
//! program; a stage's cost is its row minus the row before.

use anyhow::{Context as _, bail};
use aya::maps::HashMap;
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use netfence::dataplane::EBPF_OBJECT;
use netfence::dataplane::loader::endpoint_key;
use netfence_common::{
    CT_ORIGIN_LOCAL, CT_STATE_OPEN, CtKey, CtValue, EndpointValue, PROTO_TCP, global, map, program,
};
use serde_json::json;

use crate::frame::{TCP_ACK, packet, tcp};
use crate::report::{Report, Section, f1};
use crate::{floor, scene};

const STAGES: [(u32, &str); 6] = [
    (1, "entry"),
    (2, "+ parse"),
    (3, "+ conntrack key"),
    (4, "+ conntrack lookup"),
    (5, "+ clock, liveness, refresh"),
    (0, "+ counter, action (whole program)"),
];

/// One variant: the object loaded with `stage`, the client's endpoint and the flow's
/// conntrack entry in its maps.
/// `quick`: small maps (faster to create; the full run keeps the agent's sizes, whose
/// cache behaviour the lookup figures include).
fn variant(stage: u32, quick: bool) -> anyhow::Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader.override_global(global::BENCH_STAGE, &stage, true);
    if quick {
        loader
            .map_max_entries(map::CONNTRACK, 1024)
            .map_max_entries(map::FRAGMENTS, 256)
            .map_max_entries(map::RULE_HITS, 1024);
    }
    let mut ebpf = loader.load(EBPF_OBJECT).context("loading the TC object")?;
    for name in [program::FROM_POD, program::TO_POD] {
        let prog: &mut SchedClassifier =
            ebpf.program_mut(name).context("no program")?.try_into()?;
        prog.load()
            .with_context(|| format!("loading {name} with BENCH_STAGE={stage}"))?;
    }
    let client = std::net::IpAddr::V4(scene::CLIENT);
    let server = std::net::IpAddr::V4(scene::SERVER);
    let mut endpoints: HashMap<_, _, EndpointValue> =
        HashMap::try_from(ebpf.map_mut(map::ENDPOINTS).context("no ENDPOINTS")?)?;
    endpoints.insert(
        endpoint_key(&client),
        EndpointValue {
            policy: 1,
            flags: 0,
            ifindex: scene::TEST_RUN_IFINDEX,
            identity: 0,
        },
        0,
    )?;
    let mut conntrack: HashMap<_, CtKey, CtValue> =
        HashMap::try_from(ebpf.map_mut(map::CONNTRACK).context("no CONNTRACK")?)?;
    let key = CtKey {
        local: endpoint_key(&client).addr,
        remote: endpoint_key(&server).addr,
        ifindex: scene::TEST_RUN_IFINDEX,
        local_port: 40000,
        remote_port: scene::TCP_PORT,
        protocol: PROTO_TCP,
        _pad: [0; 3],
    };
    // An answered open flow, seen "now" far in the future: never idle, never refreshed
    // (the refresh store is at most once a second in the real path as well).
    let value = CtValue {
        last_seen_ns: u64::MAX / 2,
        rule: 0,
        origin: CT_ORIGIN_LOCAL,
        state: CT_STATE_OPEN,
        replied: 1,
        _pad: 0,
        generation: 0,
        _pad2: 0,
    };
    conntrack.insert(key, value, 0)?;
    Ok(ebpf)
}

/// ns per run (BPF stats) of `frame` through `name`, `repeat` times after a warm-up.
fn measure(ebpf: &Ebpf, name: &str, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let prog: &SchedClassifier = ebpf.program(name).context("no program")?.try_into()?;
    let run = |repeat| {
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
    };
    run(repeat / 10)?;
    let before = prog.info()?;
    let result = run(repeat)?;
    let after = prog.info()?;
    if result.return_value == 2 {
        bail!("{name}: the established ACK was dropped");
    }
    let runs = after.run_count().saturating_sub(before.run_count());
    if runs < u64::from(repeat) {
        bail!("{name}: BPF stats counted {runs} runs of {repeat}");
    }
    Ok(after
        .run_time()
        .saturating_sub(before.run_time())
        .as_nanos() as f64
        / runs as f64)
}

/// Needs BPF statistics on (section 1's guard) while it runs.
/// `repeat`: runs per cell, as section 1's.
pub fn run(quick: bool, repeat: u32, report: &mut Report) -> anyhow::Result<()> {
    let client = std::net::IpAddr::V4(scene::CLIENT);
    let server = std::net::IpAddr::V4(scene::SERVER);
    let to_pod = packet(server, client, &tcp(scene::TCP_PORT, 40000, TCP_ACK));
    let from_pod = packet(client, server, &tcp(40000, scene::TCP_PORT, TCP_ACK));
    let empty = floor::Empty::load()?;
    let mut section = Section::new(
        "established_breakdown",
        "1b. Where an established packet's time goes (ns per packet, BPF run_time_ns / run_cnt)",
        &[
            "stage",
            "to_pod",
            "Δ to_pod",
            "from_pod",
            "Δ from_pod",
            "empty prog",
        ],
    );
    section.method(format!(
        "the production object loaded once per BENCH_STAGE (later stages pruned by the verifier), {repeat} runs of the"
    ));
    section.method("established ACK of 198.18.0.10:40000 ↔ 198.18.0.11:5201 per cell; Δ = this row minus the row before;");
    section.method("empty prog measured right after each row; (N×) = ratio to it.");
    let mut rows = Vec::new();
    let mut previous: Option<(f64, f64)> = None;
    for (stage, label) in STAGES {
        let ebpf = variant(stage, quick)?;
        let to = measure(&ebpf, program::TO_POD, &to_pod, repeat)?;
        let from = measure(&ebpf, program::FROM_POD, &from_pod, repeat)?;
        let (floor_ns, _) = empty.measure(&to_pod, repeat)?;
        let delta = |now: f64, before: Option<f64>| {
            before.map_or("-".to_owned(), |b| format!("{:+.1}", now - b))
        };
        section.row(vec![
            label.to_owned(),
            format!("{} ({:.1}×)", f1(to), to / floor_ns),
            delta(to, previous.map(|p| p.0)),
            format!("{} ({:.1}×)", f1(from), from / floor_ns),
            delta(from, previous.map(|p| p.1)),
            f1(floor_ns),
        ]);
        rows.push(json!({ "stage": stage, "label": label, "to_pod_ns": to, "from_pod_ns": from, "empty_ns": floor_ns }));
        previous = Some((to, from));
    }
    section.json = json!(rows);
    report.sections.push(section);
    Ok(())
}
