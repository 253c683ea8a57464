//! Sections 1 and 6: the TC programs' own cost per packet, and the maps' memory, over
//! the size sweep. Each size loads a fresh datapath (programs and maps, not attached),
//! syncs the compiled image of a generated cluster into it with the agent's own sync,
//! and runs crafted frames through `BPF_PROG_TEST_RUN` with `repeat`, reading the
//! programs' `run_time_ns / run_cnt` (BPF_ENABLE_STATS) around each batch. The verdict
//! counter of the expected path must move by exactly `repeat`, so every figure is known
//! to measure the path it names. Each row also measures an empty classifier through the
//! same harness (`floor`) and gives every figure as a ratio to it.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, bail};
use aya::maps::MapInfo;
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use netfence::dataplane::loader::{Datapath, LoadOptions};
use netfence::dataplane::sync::{Contents, sync};
use netfence_common::{Reason, map, program};
use serde_json::json;

use crate::frame::{TCP_ACK, TCP_SYN, packet, tcp};
use crate::report::{Report, Section, f1, int};
use crate::{Args, breakdown, floor, progress, scene};

/// One measured path.
struct Case {
    key: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    reason: Reason,
    /// A frame run once before the batch (creates the conntrack entry).
    prime: Option<Vec<u8>>,
}

fn cases() -> Vec<Case> {
    let client = std::net::IpAddr::V4(scene::CLIENT);
    let server = std::net::IpAddr::V4(scene::SERVER);
    let syn = packet(client, server, &tcp(40000, scene::TCP_PORT, TCP_SYN));
    let ack = packet(client, server, &tcp(40000, scene::TCP_PORT, TCP_ACK));
    vec![
        Case {
            key: "established_to_pod",
            program: program::TO_POD,
            frame: ack.clone(),
            reason: Reason::AllowEstablished,
            prime: Some(syn.clone()),
        },
        Case {
            key: "established_from_pod",
            program: program::FROM_POD,
            frame: ack,
            reason: Reason::AllowEstablished,
            prime: Some(syn.clone()),
        },
        Case {
            key: "new_syn_allow_to_pod",
            program: program::TO_POD,
            frame: syn.clone(),
            reason: Reason::AllowPolicy,
            prime: None,
        },
        Case {
            key: "new_syn_allow_from_pod",
            program: program::FROM_POD,
            frame: syn,
            reason: Reason::AllowPolicy,
            prime: None,
        },
        Case {
            key: "new_syn_vip_from_pod",
            program: program::FROM_POD,
            frame: packet(
                client,
                std::net::IpAddr::V4(scene::SERVICE_VIP),
                &tcp(40001, scene::SERVICE_PORT, TCP_SYN),
            ),
            reason: Reason::AllowPolicy,
            prime: None,
        },
        Case {
            key: "new_deny_to_pod",
            program: program::TO_POD,
            frame: packet(
                scene::intruder(),
                server,
                &tcp(40000, scene::TCP_PORT, TCP_SYN),
            ),
            reason: Reason::DropPolicy,
            prime: None,
        },
    ]
}

/// Turns on BPF run-time statistics for as long as the returned guard lives.
fn enable_stats() -> anyhow::Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("BPF_ENABLE_STATS (BPF_STATS_RUN_TIME); needs CAP_SYS_ADMIN and kernel 5.8+")
}

fn classifier<'a>(datapath: &'a Datapath, name: &str) -> anyhow::Result<&'a SchedClassifier> {
    let program = datapath
        .ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?;
    Ok(program.try_into()?)
}

fn counter(datapath: &Datapath, reason: Reason) -> anyhow::Result<u64> {
    let all = datapath.maps.counters()?;
    Ok(all
        .iter()
        .find(|(code, _)| *code == reason.code())
        .map_or(0, |(_, n)| *n))
}

/// Runs `case` `repeat` times; returns (ns per run from BPF stats, ns per run from
/// the test run's own timer).
fn measure(datapath: &Datapath, case: &Case, repeat: u32) -> anyhow::Result<(f64, f64)> {
    let prog = classifier(datapath, case.program)?;
    if let Some(prime) = &case.prime {
        prog.test_run(TestRunOptions {
            data_in: Some(prime),
            ..TestRunOptions::new()
        })?;
    }
    // Warm-up batch (caches, branch predictors), not measured.
    prog.test_run(TestRunOptions {
        data_in: Some(&case.frame),
        repeat: repeat / 10,
        ..TestRunOptions::new()
    })?;
    let counted_before = counter(datapath, case.reason)?;
    let before = prog.info()?;
    let result = prog.test_run(TestRunOptions {
        data_in: Some(&case.frame),
        repeat,
        ..TestRunOptions::new()
    })?;
    let after = prog.info()?;
    let counted = counter(datapath, case.reason)? - counted_before;
    // TC_ACT_SHOT for a drop; TC_ACT_UNSPEC (-1, TCX_NEXT) for an allow.
    let expected_action = if case.reason.is_drop() { 2 } else { u32::MAX };
    if result.return_value != expected_action || counted != u64::from(repeat) {
        bail!(
            "{}: expected {} x{repeat} (action {expected_action}), got action {} and {counted} counted",
            case.key,
            case.reason.name(),
            result.return_value
        );
    }
    let runs = after.run_count().saturating_sub(before.run_count());
    if runs < u64::from(repeat) {
        bail!(
            "{}: BPF stats counted {runs} runs of {repeat}; are run-time stats on?",
            case.key
        );
    }
    let time = after.run_time().saturating_sub(before.run_time());
    Ok((
        time.as_nanos() as f64 / runs as f64,
        result.duration.as_nanos() as f64,
    ))
}

/// `memlock` of every map of the loaded programs, by map name, from the kernel's own
/// accounting (`/proc/self/fdinfo` of the map fd: the map's memory usage).
pub fn map_memory(datapath: &Datapath) -> anyhow::Result<Vec<(String, u64)>> {
    let info = classifier(datapath, program::TO_POD)?.info()?;
    let ids = info.map_ids()?.unwrap_or_default();
    let mut out = Vec::new();
    for id in ids {
        let map = MapInfo::from_id(id)?;
        let name = map.name_as_str().unwrap_or("?").to_owned();
        let fd = map.fd()?;
        let raw = fd.as_fd().as_raw_fd();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))?;
        let memlock = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .with_context(|| format!("no memlock in the fdinfo of map {name}"))?;
        out.push((name, memlock));
    }
    out.sort();
    Ok(out)
}

pub fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let (pod_sizes, policy_sizes, repeat): (&[usize], &[usize], u32) = if args.quick {
        (&[100], &[0, 100], 20_000)
    } else {
        (&[100, 1_000, 10_000], &[0, 100, 1_000, 10_000], 200_000)
    };
    let repeat = args.repeat.unwrap_or(repeat);
    let _stats = enable_stats()?;
    let empty = floor::Empty::load()?;
    let mut s1 = Section::new(
        "per_packet",
        "1. Per-packet cost of the TC programs (ns per packet, BPF run_time_ns / run_cnt)",
        &[
            "policies",
            "pods",
            "POLICY entries",
            "empty prog",
            "est. to_pod",
            "est. from_pod",
            "new SYN to_pod",
            "new SYN from_pod",
            "SYN to VIP from_pod",
            "new deny to_pod",
        ],
    );
    s1.method(format!(
        "BPF_PROG_TEST_RUN, {repeat} runs per cell, crafted IPv4 TCP frames client 198.18.0.10 → server 198.18.0.11:5201;"
    ));
    s1.method("est. = ACK of a flow whose conntrack entry exists (one lookup); new SYN = a pure SYN, which always");
    s1.method("goes through endpoint, identity and policy lookups (allowed, refreshes its entry); new deny = SYN from a");
    s1.method("peer no rule allows (all four policy lookups miss, drop counted, event sent; denies never create entries);");
    s1.method("SYN to VIP = the client's SYN to the server's Service ClusterIP:80 (before kube-proxy's DNAT), allowed");
    s1.method(
        "through the VIP's own identity and exact-port entry: the same lookups as to the pod.",
    );
    s1.method(format!(
        "policies = generated NetworkPolicies (+2 of the bench), pods = generated pods, {} of them local.",
        scene::LOCAL_PODS
    ));
    s1.method("empty prog = `r0 = 0; exit` loaded as a classifier, run on the same SYN frame the same way: the harness's own");
    s1.method("cost (test-run loop, statistics clock reads); (N×) after each figure = that figure / empty prog, same row.");
    let mut s6 = Section::new(
        "map_memory",
        "6. BPF map memory (KiB, kernel memlock accounting of each map)",
        &[
            "policies",
            "pods",
            "ENDPOINTS",
            "IDENTITIES",
            "POLICY",
            "RULE_HITS",
            "other maps",
            "B/pod (IDENT.)",
            "B/policy (POLICY)",
        ],
    );
    s6.method("memlock of each map from /proc/self/fdinfo after the sync; ENDPOINTS, RULE_HITS, CONNTRACK and FRAGMENTS are");
    s6.method("preallocated hashes (fixed size), IDENTITIES and POLICY are LPM tries that grow per entry.");
    let mut rows1 = Vec::new();
    let mut rows6 = Vec::new();
    for &pods in pod_sizes {
        for &policies in policy_sizes {
            progress(&format!(
                "per-packet cost: {pods} pods × {policies} policies (compile, load, sync)"
            ));
            let state = scene::state(pods, policies);
            let (image, target) = scene::image(&state);
            let mut datapath = Datapath::load(&LoadOptions::default())?;
            let mut live = Contents::default();
            let synced = sync(&mut datapath.maps, &mut live, &target);
            if let Some((op, error)) = synced.failed.first() {
                bail!("sync of {pods} pods × {policies} policies failed: {op:?}: {error}");
            }
            let mut cells = json!({
                "pods": pods, "policies": policies, "local_pods": scene::LOCAL_PODS,
                "policy_entries": image.policy.len(), "identity_prefixes": image.identities.len(),
                "endpoints": image.endpoints.len(), "map_writes": synced.applied,
            });
            let (floor_ns, floor_test_run_ns) = empty.measure(&cases()[2].frame, repeat)?;
            cells["empty"] = json!({ "bpf_stats_ns": floor_ns, "test_run_ns": floor_test_run_ns });
            let mut row = vec![
                int(policies),
                int(pods),
                int(image.policy.len()),
                f1(floor_ns),
            ];
            for case in cases() {
                let (stats_ns, test_run_ns) = measure(&datapath, &case, repeat)?;
                let ratio = stats_ns / floor_ns;
                cells[case.key] = json!({ "bpf_stats_ns": stats_ns, "test_run_ns": test_run_ns, "ratio_to_empty": ratio });
                row.push(format!("{} ({ratio:.1}×)", f1(stats_ns)));
            }
            rows1.push(cells);
            s1.row(row);
            let memory = map_memory(&datapath)?;
            let get = |name: &str| {
                memory
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0, |(_, b)| *b)
            };
            let ours = [map::ENDPOINTS, map::IDENTITIES, map::POLICY, map::RULE_HITS];
            let other: u64 = memory
                .iter()
                .filter(|(n, _)| !ours.contains(&n.as_str()))
                .map(|(_, b)| *b)
                .sum();
            let kib = |b: u64| f1(b as f64 / 1024.0);
            let per_policy = if policies == 0 {
                "-".to_owned()
            } else {
                f1(get(map::POLICY) as f64 / (policies + 2) as f64)
            };
            s6.row(vec![
                int(policies),
                int(pods),
                kib(get(map::ENDPOINTS)),
                kib(get(map::IDENTITIES)),
                kib(get(map::POLICY)),
                kib(get(map::RULE_HITS)),
                kib(other),
                f1(get(map::IDENTITIES) as f64 / (pods + 2) as f64),
                per_policy,
            ]);
            rows6.push(json!({
                "pods": pods, "policies": policies,
                "bytes": memory.iter().map(|(n, b)| (n.clone(), json!(b))).collect::<serde_json::Map<_, _>>(),
            }));
        }
    }
    flatness(&mut s1, &rows1);
    s1.json = json!(rows1);
    s6.json = json!(rows6);
    s6.note("B/pod divides the IDENTITIES trie by every pod of the cluster (each pod IP is one prefix); ENDPOINTS holds");
    s6.note("only local pods but is preallocated, so its marginal cost per pod is zero up to 16,384 local addresses;");
    s6.note("RULE_HITS is a preallocated per-CPU hash (65,536 rules), so B/policy counts the POLICY trie only.");
    report.sections.push(s1);
    progress("per-packet cost: the established path, stage by stage");
    breakdown::run(args.quick, repeat, report)?;
    report.sections.push(s6);
    Ok(())
}

/// Notes the spread (max / min) of each measured path across the sizes.
fn flatness(section: &mut Section, rows: &[serde_json::Value]) {
    for case in cases() {
        let values: Vec<f64> = rows
            .iter()
            .filter_map(|r| r[case.key]["bpf_stats_ns"].as_f64())
            .collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        let ratios: Vec<f64> = rows
            .iter()
            .filter_map(|r| r[case.key]["ratio_to_empty"].as_f64())
            .collect();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(0.0, f64::max);
        section.note(format!(
            "{}: {:.1}–{:.1} ns across sizes, max/min {:.2}; {:.1}–{:.1}× the empty program",
            case.key,
            min,
            max,
            max / min,
            low,
            high
        ));
    }
}
