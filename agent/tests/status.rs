//! `netfence status` against a running agent with pinned state, then after SIGTERM:
//! attachments with interface names, map fill, counters that grow with traffic, the
//! last-sync record and whether its agent runs, the flags the agent enforces with
//! and the pinned policy generation. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is a test failure"
)]

mod netns;

use std::path::Path;

use netfence_testbed::tcp_connects;
use netns::{B_FROM_A, Bpffs, TestBed, abc_pods, bed, netfence_bin, start_pinned};
use serde_json::Value;

fn status_json(bed: &TestBed, pin_dir: &Path) -> Value {
    let out = bed
        .node()
        .command(&netfence_bin().to_string_lossy())
        .args(["status", "-o", "json", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status -o json is not JSON ({e}): {stdout}"))
}

fn fill(status: &Value, map: &str) -> (u64, u64) {
    let entry = status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == map)
        .unwrap_or_else(|| panic!("no map {map} in {status}"));
    (
        entry["entries"].as_u64().unwrap(),
        entry["capacity"].as_u64().unwrap(),
    )
}

fn attached(status: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = status["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["interface"].as_str().unwrap_or("<gone>").to_owned(),
                a["program"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The first flow log line that `matches`, waiting up to 3 s for the event.
fn flow_line(path: &Path, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if let Some(line) = lines.into_iter().find(|l| matches(l)) {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no matching flow log line in {}: {text}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn status_reports_attachments_fill_counters_and_the_agent_across_sigterm() {
    let mut bed = bed();
    let [a, b, c] = abc_pods(&mut bed, B_FROM_A);
    let bpffs = Bpffs::mount("status");
    let pin_dir = bpffs.pin_dir();

    let before = status_json(&bed, &pin_dir);
    assert_eq!(before["pinned"], false, "{before}");
    assert_eq!(before["agent_running"], false, "{before}");

    let log = bed.scratch("agent-status.log");
    let flows = bed.scratch("flows.json");
    let agent = start_pinned(
        &bed,
        &pin_dir,
        &log,
        &["--flow-log".as_ref(), flows.as_os_str()],
    );

    let running = status_json(&bed, &pin_dir);
    assert_eq!(running["pinned"], true, "{running}");
    assert_eq!(running["maps_pinned"], true, "{running}");
    assert_eq!(running["agent_running"], true, "{running}");
    let mut expected: Vec<(String, String)> = [&a, &b, &c]
        .iter()
        .flat_map(|pod| {
            ["from_pod", "to_pod"].map(|program| (pod.host_if.clone(), program.to_owned()))
        })
        .collect();
    expected.sort();
    assert_eq!(attached(&running), expected, "{running}");
    let (endpoints, capacity) = fill(&running, "ENDPOINTS");
    assert_eq!(
        endpoints, 6,
        "one endpoint per pod address (IPv4 and IPv6): {running}"
    );
    assert_eq!(capacity, u64::from(netfence_common::MAX_ENDPOINTS));
    assert_eq!(
        fill(&running, "PORTS"),
        (3, u64::from(netfence_common::MAX_PORTS)),
        "one bound endpoint per pod veth: {running}"
    );
    assert!(fill(&running, "POLICY").0 > 0, "{running}");
    assert!(fill(&running, "IDENTITIES").0 > 0, "{running}");
    let sync = &running["last_sync"];
    assert!(sync["generation"].as_u64().unwrap() >= 1, "{running}");
    assert_eq!(sync["endpoints"], 6, "{running}");
    assert_eq!(sync["failed_writes"], 0, "{running}");
    let drops_before = running["counters"]["policy_deny"].as_u64().unwrap();
    let allows_before = running["counters"]["policy_allow"].as_u64().unwrap();

    assert!(
        !tcp_connects(&c.netns, &b.netns, b.ip4(), 81).unwrap(),
        "c is denied"
    );
    assert!(
        tcp_connects(&a.netns, &b.netns, b.ip4(), 82).unwrap(),
        "a is allowed"
    );
    let drop_line = flow_line(&flows, |line| {
        line["verdict"] == "drop" && line["dst"]["port"] == 81
    });
    assert_eq!(drop_line["reason"], "policy_deny", "{drop_line}");
    assert_eq!(drop_line["direction"], "ingress", "{drop_line}");
    assert_eq!(drop_line["protocol"], "TCP", "{drop_line}");
    assert_eq!(
        drop_line["src"]["pod"], "c",
        "the source pod is named: {drop_line}"
    );
    assert_eq!(drop_line["dst"]["namespace"], "x", "{drop_line}");
    assert_eq!(drop_line["dst"]["pod"], "b", "{drop_line}");
    assert_eq!(
        drop_line["isolated_by"],
        serde_json::json!(["x/b-from-a"]),
        "{drop_line}"
    );
    let after = status_json(&bed, &pin_dir);
    assert!(
        after["counters"]["policy_deny"].as_u64().unwrap() > drops_before,
        "the denied SYN is counted: {after}"
    );
    assert!(
        after["counters"]["policy_allow"].as_u64().unwrap() > allows_before,
        "the allowed SYN is counted: {after}"
    );
    assert!(
        fill(&after, "CONNTRACK").0 >= 1,
        "the allowed connection is tracked: {after}"
    );

    assert!(agent.stop().unwrap().success());
    let stopped = status_json(&bed, &pin_dir);
    assert_eq!(stopped["agent_running"], false, "{stopped}");
    assert_eq!(
        attached(&stopped),
        expected,
        "SIGTERM keeps enforcement: {stopped}"
    );
    assert!(
        !tcp_connects(&c.netns, &b.netns, b.ip4(), 83).unwrap(),
        "still denied after SIGTERM"
    );

    let text = bed
        .node()
        .command(&netfence_bin().to_string_lossy())
        .args(["status", "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("agent: not running (last pid"), "{text}");
    assert!(text.contains("attached (6 links"), "{text}");
}

fn status_text(bed: &TestBed, pin_dir: &Path) -> String {
    let out = bed
        .node()
        .command(&netfence_bin().to_string_lossy())
        .args(["status", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Everything the ingress of x/b allows: nothing (`ingress: []`).
const LOCKDOWN: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-from-a
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  policyTypes: [Ingress]
  ingress: []
";

#[test]
fn status_shows_the_flags_and_the_pinned_policy_generation_after_the_agent_stopped() {
    let mut bed =
        TestBed::new("nfh6").unwrap_or_else(|e| panic!("setting up the test node: {e:#}"));
    let [_a, b, c] = abc_pods(&mut bed, B_FROM_A);
    let bpffs = Bpffs::mount("nfh6-status");
    let pin_dir = bpffs.pin_dir();
    let log = bed.scratch("agent-nfh6.log");
    let mut agent = start_pinned(
        &bed,
        &pin_dir,
        &log,
        &[
            "--mode=audit".as_ref(),
            "--existing-flows=cut".as_ref(),
            "--allow-node=false".as_ref(),
        ],
    );

    let running = status_json(&bed, &pin_dir);
    assert_eq!(
        (
            &running["mode"],
            &running["existing_flows"],
            &running["allow_node"]
        ),
        (
            &Value::from("audit"),
            &Value::from("cut"),
            &Value::from(false)
        ),
        "{running}"
    );
    assert_eq!(running["last_sync"]["mode"], "audit", "{running}");
    assert_eq!(running["last_sync"]["existing_flows"], "cut", "{running}");
    assert_eq!(running["last_sync"]["allow_node"], false, "{running}");
    let first = running["policy_generation"].as_u64().unwrap();
    assert!(
        first >= 1,
        "the first sync wrote entries and bumped it: {running}"
    );
    let audited_before = running["counters"]["policy_audit"].as_u64().unwrap();

    // x/c is not allowed into x/b: audit mode lets it pass and counts it.
    assert!(
        tcp_connects(&c.netns, &b.netns, b.ip4(), 81).unwrap(),
        "audit mode passes what the policy would deny"
    );
    let audited = status_json(&bed, &pin_dir);
    assert!(
        audited["counters"]["policy_audit"].as_u64().unwrap() > audited_before,
        "the would-be drop is counted as policy_audit: {audited}"
    );
    assert_eq!(
        audited["counters"]["policy_deny"], 0,
        "audit mode drops nothing: {audited}"
    );
    assert_eq!(
        audited["counters"]["policy_changed_deny"], 0,
        "listed, and nothing re-checked was dropped: {audited}"
    );

    // A policy change bumps the pinned generation.
    let syncs = agent.generation();
    bed.write_manifest("policy.yaml", LOCKDOWN).unwrap();
    agent.wait_for_sync_after(syncs).unwrap();
    let changed = status_json(&bed, &pin_dir);
    let generation = changed["policy_generation"].as_u64().unwrap();
    assert!(generation > first, "{first} -> {changed}");

    assert!(agent.stop().unwrap().success());
    let stopped = status_json(&bed, &pin_dir);
    assert_eq!(stopped["agent_running"], false, "{stopped}");
    assert_eq!(
        stopped["policy_generation"].as_u64(),
        Some(generation),
        "read from the pinned SETTINGS map, not from the agent: {stopped}"
    );
    assert_eq!(stopped["mode"], "audit", "{stopped}");
    let pid = stopped["last_sync"]["pid"].as_u64().unwrap();
    let text = status_text(&bed, &pin_dir);
    let lines: Vec<&str> = text.lines().collect();
    let agent_line = format!("agent: not running (last pid {pid})");
    assert_eq!(
        lines[..2],
        [
            agent_line.as_str(),
            "enforcing with: --mode=audit --existing-flows=cut --allow-node=false"
        ],
        "{text}"
    );
    let generation_line = format!("policy generation: {generation}");
    assert!(lines.contains(&generation_line.as_str()), "{text}");
    for counter in ["policy_audit", "policy_changed_deny"] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(counter)),
            "{counter} in {text}"
        );
    }
}
