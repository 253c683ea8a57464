//! Packet tests of the edges of enforcement, with the real agent on a test node:
//! established flows across a tightening policy (`--existing-flows cut` stops them,
//! `keep` lets them run, an unrelated allowed flow is untouched; also flows opened
//! before their pods were isolated at all), and audit mode (the
//! node-wide `--mode audit` and the per-policy `netfence.io/mode` annotation: what
//! would drop passes, and the flow log and metrics say `audit`). Names `nfh2<pid>x<n>-*`;
//! needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod netns;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netfence_testbed::{NODE_NAME, POD_INTERFACES, bind_retrying, tcp_connects};
use netns::{Agent, Attach, PodNs, TestBed, abc_pods, netfence_bin};

/// The client's pace: one line every this long over one connection.
const PACE: Duration = Duration::from_millis(100);
/// A line whose echo has not come back after this long: the flow stopped.
const ECHO_TIMEOUT: Duration = Duration::from_millis(1000);
/// At most this many rounds per stream (a minute at the pace): every wait is bounded.
const MAX_ROUNDS: usize = 600;

/// A long-lived TCP flow: a client in one pod sends a numbered line every `PACE`
/// over a single connection, a server in another echoes it. Each round's send time
/// and outcome is recorded; the first unanswered line ends the client.
struct Stream {
    stop: Arc<AtomicBool>,
    rounds: Arc<Mutex<Vec<(Instant, bool)>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Stream {
    fn open(from: &PodNs, to: &PodNs, port: u16) -> Stream {
        let target = SocketAddr::new(to.ip4(), port);
        let listener = to
            .netns
            .run(|| bind_retrying(|| TcpListener::bind(target)))
            .unwrap()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let server_stop = stop.clone();
        let server = std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            drop(listener);
            conn.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut writer = conn.try_clone().unwrap();
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            while !server_stop.load(Ordering::Relaxed) {
                match reader.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) if line.ends_with('\n') => {
                        if writer.write_all(line.as_bytes()).is_err() {
                            return;
                        }
                        line.clear();
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        });
        let conn = from
            .netns
            .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))
            .unwrap()
            .unwrap_or_else(|e| panic!("connecting {} to {target}: {e}", from.name));
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let (client_stop, client_rounds) = (stop.clone(), rounds.clone());
        let client = std::thread::spawn(move || {
            conn.set_read_timeout(Some(ECHO_TIMEOUT)).unwrap();
            let mut writer = conn.try_clone().unwrap();
            let mut reader = BufReader::new(conn);
            for n in 0..MAX_ROUNDS {
                if client_stop.load(Ordering::Relaxed) {
                    return;
                }
                let sent = Instant::now();
                let expected = format!("{n}\n");
                let mut echo = String::new();
                let ok = writer.write_all(expected.as_bytes()).is_ok()
                    && reader.read_line(&mut echo).is_ok()
                    && echo == expected;
                client_rounds.lock().unwrap().push((sent, ok));
                if !ok {
                    return;
                }
                std::thread::sleep(PACE.saturating_sub(sent.elapsed()));
            }
        });
        Stream {
            stop,
            rounds,
            threads: vec![server, client],
        }
    }

    /// Answered rounds sent at or after `since`.
    fn answered_since(&self, since: Instant) -> usize {
        self.rounds
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, ok)| *ok && *t >= since)
            .count()
    }

    /// The send time of the first unanswered line.
    fn stopped_at(&self) -> Option<Instant> {
        self.rounds
            .lock()
            .unwrap()
            .iter()
            .find(|(_, ok)| !ok)
            .map(|(t, _)| *t)
    }

    /// Polls (bounded by `limit`) until `done` holds.
    fn wait(&self, limit: Duration, done: impl Fn(&Stream) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        done(self)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// b admits app=a on TCP 7000 (unless `tight`) and app=c on TCP 7001.
fn b_policy(tight: bool) -> String {
    let a_rule = "  - from:
    - podSelector:
        matchLabels:
          app: a
    ports:
    - port: 7000
";
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-ingress
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  policyTypes: [Ingress]
  ingress:
{}  - from:
    - podSelector:
        matchLabels:
          app: c
    ports:
    - port: 7001
",
        if tight { "" } else { a_rule }
    )
}

struct Node {
    bed: TestBed,
    a: PodNs,
    b: PodNs,
    c: PodNs,
}

fn node(policy: &str) -> Node {
    let mut bed =
        TestBed::new("nfh2").unwrap_or_else(|e| panic!("setting up the test node: {e:#}"));
    let [a, b, c] = abc_pods(&mut bed, policy);
    Node { bed, a, b, c }
}

fn agent(bed: &TestBed, log: &str, extra: &[&str]) -> Agent {
    let mut args: Vec<&std::ffi::OsStr> = vec!["--detach-on-exit".as_ref()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    Agent::start_with(
        netfence_bin(),
        bed.node(),
        NODE_NAME,
        &bed.manifests(),
        &[POD_INTERFACES],
        Attach::Auto,
        bed.scratch(log),
        &args,
    )
    .unwrap_or_else(|e| panic!("starting netfence: {e:#}"))
}

/// Streams a→b:7000 and c→b:7001 running, then b's policy tightened to drop a's.
/// Returns the streams, the instant of the manifest write and of the logged sync.
fn tighten_under_streams(node: &Node, agent: &mut Agent) -> (Stream, Stream, Instant, Instant) {
    let doomed = Stream::open(&node.a, &node.b, 7000);
    let other = Stream::open(&node.c, &node.b, 7001);
    let started = Instant::now();
    assert!(
        doomed.wait(Duration::from_secs(5), |s| s.answered_since(started) >= 3)
            && other.wait(Duration::from_secs(5), |s| s.answered_since(started) >= 3),
        "both flows run before the change"
    );
    let generation = agent.generation();
    let written = Instant::now();
    node.bed
        .write_manifest("policy.yaml", &b_policy(true))
        .unwrap();
    agent.wait_for_sync_after(generation).unwrap();
    (doomed, other, written, Instant::now())
}

#[test]
fn cut_stops_an_established_flow_the_new_policy_denies_and_leaves_allowed_ones() {
    let node = node(&b_policy(false));
    let mut agent = agent(&node.bed, "agent-cut.log", &["--existing-flows", "cut"]);
    let (doomed, other, written, synced) = tighten_under_streams(&node, &mut agent);
    assert!(
        doomed.wait(Duration::from_secs(10), |s| s.stopped_at().is_some()),
        "with cut, a→b:7000 stops within 10 s of the change; rounds answered since: {}\n{}",
        doomed.answered_since(written),
        agent.log()
    );
    let stopped = doomed.stopped_at().unwrap();
    eprintln!(
        "cut: the flow's first unanswered line was sent {} ms after the manifest write (sync logged after {} ms)",
        stopped.saturating_duration_since(written).as_millis(),
        synced.saturating_duration_since(written).as_millis()
    );
    // The still-allowed flow crossed the same change and keeps going.
    let after = Instant::now();
    assert!(
        other.wait(Duration::from_secs(5), |s| s.answered_since(after) >= 10),
        "c→b:7001 keeps flowing"
    );
    assert_eq!(other.stopped_at(), None, "c→b:7001 never missed a line");
    // The cut flow's conntrack entry is gone: a reconnect meets the new policy too.
    assert!(!tcp_connects(&node.a.netns, &node.b.netns, node.b.ip4(), 7000).unwrap());
    let a_ip = node.a.ip4().to_string();
    let line = agent
        .wait_for_line(&["drop", "reason=policy_changed_deny", &a_ip])
        .unwrap();
    assert!(line.contains("isolated_by=x/b-ingress"), "{line}");
}

#[test]
fn keep_lets_an_established_flow_run_across_a_tightening_change() {
    let node = node(&b_policy(false));
    let mut agent = agent(&node.bed, "agent-keep.log", &["--existing-flows", "keep"]);
    let (kept, other, _, synced) = tighten_under_streams(&node, &mut agent);
    assert!(
        kept.wait(Duration::from_secs(5), |s| s.answered_since(synced) >= 20),
        "with keep, a→b:7000 keeps flowing after the sync"
    );
    assert_eq!(kept.stopped_at(), None);
    assert!(other.answered_since(synced) >= 10 && other.stopped_at().is_none());
    // New connections do meet the new policy.
    assert!(!tcp_connects(&node.a.netns, &node.b.netns, node.b.ip4(), 7000).unwrap());
    assert!(!agent.log().contains("policy_changed_deny"));
}

/// A policy that selects no pod: a and b start isolated in neither direction.
const NOBODY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: nobody
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: nobody
";

/// a's egress and b's ingress both isolated, nothing allowed.
const LOCKDOWN_A_AND_B: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-egress
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: a
  policyTypes: [Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-ingress
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  policyTypes: [Ingress]
";

/// A flow a→b:7000 opened while neither pod was isolated, then both isolated with
/// nothing allowed: `keep` lets it run, `cut` stops it. Returns whether it still ran
/// 20 rounds after the sync (or stopped), with the agent.
fn isolate_under_stream(mode: &str) -> (bool, Agent, Node) {
    let node = node(NOBODY);
    let mut agent = agent(
        &node.bed,
        &format!("agent-isolate-{mode}.log"),
        &["--existing-flows", mode],
    );
    let flow = Stream::open(&node.a, &node.b, 7000);
    let started = Instant::now();
    assert!(
        flow.wait(Duration::from_secs(5), |s| s.answered_since(started) >= 3),
        "the flow runs before the change"
    );
    let generation = agent.generation();
    node.bed
        .write_manifest("policy.yaml", LOCKDOWN_A_AND_B)
        .unwrap();
    agent.wait_for_sync_after(generation).unwrap();
    let synced = Instant::now();
    let ran = flow.wait(Duration::from_secs(5), |s| {
        s.answered_since(synced) >= 20 || s.stopped_at().is_some()
    }) && flow.stopped_at().is_none();
    // New connections meet the new policy either way.
    assert!(!tcp_connects(&node.a.netns, &node.b.netns, node.b.ip4(), 7000).unwrap());
    drop(flow);
    (ran, agent, node)
}

#[test]
fn keep_lets_a_flow_run_when_its_pods_become_isolated() {
    let (ran, agent, _node) = isolate_under_stream("keep");
    assert!(
        ran,
        "with keep, the flow opened before isolation keeps flowing\n{}",
        agent.log()
    );
}

#[test]
fn cut_stops_a_flow_when_its_pods_become_isolated() {
    let (ran, mut agent, node) = isolate_under_stream("cut");
    assert!(!ran, "with cut, the flow stops");
    let a_ip = node.a.ip4().to_string();
    let line = agent
        .wait_for_line(&["drop", "reason=policy_changed_deny", &a_ip])
        .unwrap();
    assert!(line.contains("isolated_by=x/"), "{line}");
}

/// b isolated for ingress, nothing allowed; `annotation` sets `netfence.io/mode`.
fn b_lockdown(annotation: Option<&str>) -> String {
    let annotations = annotation.map_or_else(String::new, |mode| {
        format!("  annotations:\n    netfence.io/mode: {mode}\n")
    });
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-lockdown
  namespace: x
{annotations}spec:
  podSelector:
    matchLabels:
      app: b
  policyTypes: [Ingress]
"
    )
}

/// The flow log's JSON lines so far.
fn flow_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (bounded) for a flow-log line to b:`port` with `verdict`.
fn wait_flow(path: &std::path::Path, verdict: &str, port: u16) -> serde_json::Value {
    for _ in 0..100 {
        if let Some(line) = flow_lines(path)
            .into_iter()
            .find(|l| l["verdict"] == verdict && l["dst"]["port"] == port && l["dst"]["pod"] == "b")
        {
            return line;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "no {verdict} line to b:{port} in the flow log: {:?}",
        flow_lines(path)
    );
}

fn get_metrics(bed: &TestBed) -> String {
    bed.node()
        .run(|| {
            let mut stream = TcpStream::connect("127.0.0.1:19897").unwrap();
            write!(
                stream,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap()
}

fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn node_audit_mode_passes_what_policy_would_drop_and_reports_it() {
    let node = node(&b_lockdown(None));
    let flows = node.bed.scratch("flows-audit.jsonl");
    let flows_arg = flows.to_str().unwrap().to_owned();
    let _agent = agent(
        &node.bed,
        "agent-audit.log",
        &[
            "--mode",
            "audit",
            "--flow-log",
            &flows_arg,
            "--health-addr",
            "127.0.0.1:19897",
        ],
    );
    assert!(
        tcp_connects(&node.a.netns, &node.b.netns, node.b.ip4(), 80).unwrap(),
        "audit mode passes it"
    );
    let line = wait_flow(&flows, "audit", 80);
    assert_eq!(line["reason"], "policy_audit", "{line}");
    assert_eq!(line["direction"], "ingress", "{line}");
    assert_eq!(
        line["isolated_by"],
        serde_json::json!(["x/b-lockdown"]),
        "{line}"
    );
    assert_eq!(line["src"]["pod"], "a", "{line}");
    assert_eq!(
        flow_lines(&flows)
            .iter()
            .filter(|l| l["dst"]["port"] == 80)
            .count(),
        1,
        "one line per flow: the rest of it is established"
    );
    // Kernel counters reach /metrics within a few ticks.
    let mut text = String::new();
    for _ in 0..50 {
        text = get_metrics(&node.bed);
        if sample(&text, "netfence_policy_denials_total{verdict=\"audit\"}") >= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        sample(&text, "netfence_packets_total{reason=\"policy_audit\"}") >= 1,
        "{text}"
    );
    assert!(
        sample(&text, "netfence_policy_denials_total{verdict=\"audit\"}") >= 1,
        "{text}"
    );
    assert_eq!(
        sample(&text, "netfence_policy_denials_total{verdict=\"drop\"}"),
        0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "netfence_packets_total{reason=\"policy_deny\"}"),
        0,
        "{text}"
    );
}

#[test]
fn audit_annotation_passes_and_logs_then_enforce_drops() {
    let node = node(&b_lockdown(Some("audit")));
    let flows = node.bed.scratch("flows-annotation.jsonl");
    let flows_arg = flows.to_str().unwrap().to_owned();
    let mut agent = agent(
        &node.bed,
        "agent-annotation.log",
        &["--flow-log", &flows_arg],
    );
    assert!(
        tcp_connects(&node.a.netns, &node.b.netns, node.b.ip4(), 80).unwrap(),
        "audited policy passes it"
    );
    let line = wait_flow(&flows, "audit", 80);
    assert_eq!(
        (line["reason"].as_str(), line["isolated_by"][0].as_str()),
        (Some("policy_audit"), Some("x/b-lockdown"))
    );

    let generation = agent.generation();
    node.bed
        .write_manifest("policy.yaml", &b_lockdown(Some("enforce")))
        .unwrap();
    agent.wait_for_sync_after(generation).unwrap();
    assert!(
        !tcp_connects(&node.a.netns, &node.b.netns, node.b.ip4(), 81).unwrap(),
        "enforced now"
    );
    let line = wait_flow(&flows, "drop", 81);
    assert_eq!(
        (line["reason"].as_str(), line["isolated_by"][0].as_str()),
        (Some("policy_deny"), Some("x/b-lockdown"))
    );
}
