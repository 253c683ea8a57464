//! Section 5: propagation, at cluster sizes. The real `netfence run` enforces a
//! manifest directory on a testbed node: two real pods (client and server) and a
//! generated cluster of the size measured as its backdrop (`backdrop`: a file per
//! namespace, 110 of its pods on this node). The server's NetworkPolicy file is
//! rewritten (atomically, as an editor or a GitOps sync would) to alternately deny
//! and allow UDP 7000 from the client, while the client probes continuously with new
//! flows (each probe from a source port no earlier probe used: a reused 5-tuple whose
//! conntrack entry still lives would pass as established whatever the policy). The figure is the time
//! from the rename to the send of the first probe that gets the new verdict
//! (allowed: the echo came back within 5 ms; denied: it did not), confirmed by the
//! two probes after it. Per size also: the agent's cold start to `netfence: ready`,
//! its peak RSS (`VmHWM`, the whole process) and its CPU time per change.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use netfence_testbed::{Agent, Attach, PodNs, TestBed};
use serde_json::json;

use netfence::scenario;

use crate::report::{Report, Section, f1, int, quantile, status_kib};
use crate::{Args, backdrop, progress, scene};

/// A probe without an echo after this long is a dropped one...
const REPLY_WAIT: Duration = Duration::from_millis(5);
/// ...and a probe confirming a drop waits this long (a busy machine can delay an
/// echo past `REPLY_WAIT`; a late echo is no drop).
const CONFIRM_WAIT: Duration = Duration::from_millis(50);
/// Consecutive probes that must agree before a verdict counts (a busy machine can
/// delay one echo past `REPLY_WAIT`).
const CONFIRM: usize = 3;
/// Bound on the wait for one change to show.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn policy_yaml(allow_udp: bool) -> String {
    let udp = if allow_udp {
        format!("    - protocol: UDP\n      port: {}\n", scene::UDP_PORT)
    } else {
        String::new()
    };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: server-ingress\n  namespace: {}\n\
         spec:\n  podSelector:\n    matchLabels:\n      app: server\n  policyTypes:\n  - Ingress\n  ingress:\n  - from:\n\
         \x20   - podSelector:\n        matchLabels:\n          app: client\n    ports:\n    - protocol: TCP\n      port: {}\n{udp}",
        scene::NAMESPACE,
        scene::TCP_PORT
    )
}

/// The next probe's source port: probes count up through 20,000–59,999, so no probe
/// reuses the 5-tuple of an earlier one whose conntrack entry still lives (a kernel
/// ephemeral port can, and then the probe is no new flow: it passes as established).
static NEXT_PORT: AtomicU16 = AtomicU16::new(FIRST_PORT);
const FIRST_PORT: u16 = 20_000;
const PORTS: u16 = 40_000;

/// A UDP socket on the next unused probe port.
fn fresh_socket() -> anyhow::Result<UdpSocket> {
    for _ in 0..PORTS {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST_PORT + n.wrapping_sub(FIRST_PORT) % PORTS;
        match UdpSocket::bind(("0.0.0.0", port)) {
            Ok(socket) => return Ok(socket),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(error) => return Err(error.into()),
        }
    }
    bail!("no free probe port in {FIRST_PORT}..{}", FIRST_PORT + PORTS)
}

/// One probe from a fresh socket (a new flow): whether the echo came back within
/// `wait`.
fn probe(target: SocketAddr, wait: Duration) -> anyhow::Result<bool> {
    let socket = fresh_socket()?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(wait))?;
    socket.send(b"probe")?;
    let mut buf = [0u8; 16];
    Ok(socket.recv(&mut buf).is_ok())
}

/// Probes from inside the client namespace until the verdict is `allowed`; returns the
/// send time of the first such probe, measured from `t0`.
fn until_verdict(
    client: &PodNs,
    target: SocketAddr,
    allowed: bool,
    t0: Instant,
) -> anyhow::Result<Duration> {
    client.netns.run(|| {
        let mut first: Option<Instant> = None;
        let mut agreeing = 0;
        while t0.elapsed() < CHANGE_TIMEOUT {
            let sent = Instant::now();
            // Confirming a drop waits longer than looking for one.
            let wait = if first.is_some() && !allowed {
                CONFIRM_WAIT
            } else {
                REPLY_WAIT
            };
            if probe(target, wait)? == allowed {
                first.get_or_insert(sent);
                agreeing += 1;
                if let Some(first) = first
                    && agreeing >= CONFIRM
                {
                    return Ok(first.saturating_duration_since(t0));
                }
            } else {
                first = None;
                agreeing = 0;
            }
        }
        bail!(
            "no probe was {} within {CHANGE_TIMEOUT:?} of the change",
            if allowed { "allowed" } else { "denied" }
        )
    })?
}

/// Alternately denies and allows UDP 7000 `changes` times; (allowed after, ms) each.
/// Each change waits for the agent's sync of it before the next, so no two overlap.
fn flip(
    bed: &TestBed,
    agent: &mut Agent,
    client: &PodNs,
    target: SocketAddr,
    changes: usize,
) -> anyhow::Result<Vec<(bool, f64)>> {
    until_verdict(client, target, true, Instant::now())
        .context("the initial policy allows UDP 7000")?;
    let mut samples = Vec::new();
    for i in 0..changes {
        let allow = i % 2 == 1;
        let generation = agent.generation();
        bed.write_manifest("server-ingress.yaml", &policy_yaml(allow))?;
        let t0 = Instant::now();
        let took = until_verdict(client, target, allow, t0)?;
        agent.wait_for_sync_after(generation)?;
        samples.push((allow, took.as_secs_f64() * 1e3));
    }
    Ok(samples)
}

/// What one size gave.
struct Measured {
    pods: usize,
    files: usize,
    ready_ms: f64,
    samples: Vec<(bool, f64)>,
    peak_rss_kib: u64,
    rss_kib: u64,
    cpu_ms_per_change: f64,
}

/// User plus system CPU time of process `pid`, in ms.
pub fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the command.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) * 1e3 / hz.max(1.0)
}

fn measure(args: &Args, pods: usize, changes: usize) -> anyhow::Result<Measured> {
    progress(&format!(
        "propagation: netfence run on a testbed node with {pods} generated pods, {changes} policy changes"
    ));
    let mut bed = TestBed::new("nf5")?;
    bed.namespace(scene::NAMESPACE, &[]);
    let client = bed.pod(
        scene::NAMESPACE,
        "client",
        &[("app", "client")],
        scene::CLIENT_HOST,
        &[("iperf", scene::TCP_PORT)],
    )?;
    let server = bed.pod(
        scene::NAMESPACE,
        "server",
        &[("app", "server")],
        scene::SERVER_HOST,
        &[("iperf", scene::TCP_PORT)],
    )?;
    bed.write_cluster()?;
    bed.write_manifest("server-ingress.yaml", &policy_yaml(true))?;
    let files = if pods > 0 {
        let state = scenario::generate(&scene::params(pods, pods / 15));
        backdrop::write(&bed.manifests(), &state)?
    } else {
        0
    };
    let started = Instant::now();
    let mut agent = bed.start_agent(&args.netfence, Attach::Auto)?;
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    let pid = agent.pid().context("the agent's pid")?;
    let cpu_before = cpu_ms(pid);
    let target = SocketAddr::new(server.ip4(), scene::UDP_PORT);
    let echo = server.netns.run(|| UdpSocket::bind(target))??;
    echo.set_read_timeout(Some(Duration::from_millis(50)))?;
    let done = AtomicBool::new(false);
    let samples = std::thread::scope(|scope| -> anyhow::Result<Vec<(bool, f64)>> {
        scope.spawn(|| {
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Relaxed) {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
        });
        let result = flip(&bed, &mut agent, &client, target, changes);
        done.store(true, Ordering::Relaxed);
        result
    })
    .with_context(|| {
        let log = agent.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("the agent's last log lines:\n{}", tail.join("\n"))
    })?;
    let cpu_ms_per_change = (cpu_ms(pid) - cpu_before) / changes.max(1) as f64;
    Ok(Measured {
        pods,
        files,
        ready_ms,
        samples,
        peak_rss_kib: status_kib(&pid.to_string(), "VmHWM"),
        rss_kib: status_kib(&pid.to_string(), "VmRSS"),
        cpu_ms_per_change,
    })
}

pub fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let changes = if args.quick { 6 } else { 40 };
    let sizes: &[usize] = if let Some(sizes) = &args.propagation_sizes {
        sizes
    } else if args.quick {
        &[0, 1_000]
    } else {
        &[0, 10_000, 50_000, 150_000]
    };
    let mut s = Section::new(
        "propagation",
        "5. Propagation at cluster sizes: policy file changed → first new-flow packet with the new verdict (ms); the agent's start, memory and CPU",
        &["backdrop pods", "change", "n", "p50", "p99", "max", "agent"],
    );
    s.method("the real `netfence run` (manifest watch, 100 ms quiet debounce, engine update, sync) on a testbed node, the");
    s.method("generated cluster beside the two real pods (a JSON file per namespace, one policy per 15 pods, 110 pods local);");
    s.method("probes: UDP from an unused source port every ≤5 ms; a verdict counts when 3 probes in a row agree, timed from the");
    s.method("first of them; resolution ≈ 5 ms for denials, < 0.1 ms for allows. agent: cold start to `netfence: ready`, peak");
    s.method("and current RSS of the whole process, its CPU time per change (ticks included).");
    let mut json_rows = Vec::new();
    for &pods in sizes {
        let m = measure(args, pods, changes)?;
        let all: Vec<f64> = m.samples.iter().map(|(_, ms)| *ms).collect();
        let of = |allow: bool| -> Vec<f64> {
            (m.samples.iter())
                .filter(|(a, _)| *a == allow)
                .map(|(_, ms)| *ms)
                .collect()
        };
        let agent = format!(
            "ready {} s, peak RSS {} MiB (now {}), CPU {} ms/change",
            f1(m.ready_ms / 1e3),
            f1(m.peak_rss_kib as f64 / 1024.0),
            f1(m.rss_kib as f64 / 1024.0),
            f1(m.cpu_ms_per_change)
        );
        for (name, values) in [
            ("tighten (allow → deny)", of(false)),
            ("loosen (deny → allow)", of(true)),
            ("all", all.clone()),
        ] {
            let max = values.iter().copied().fold(0.0, f64::max);
            s.row(vec![
                int(m.pods),
                name.into(),
                values.len().to_string(),
                f1(quantile(&values, 0.5)),
                f1(quantile(&values, 0.99)),
                f1(max),
                if name == "all" {
                    agent.clone()
                } else {
                    String::new()
                },
            ]);
        }
        json_rows.push(json!({
            "pods": m.pods, "files": m.files, "changes": changes, "ready_ms": m.ready_ms,
            "peak_rss_kib": m.peak_rss_kib, "rss_kib": m.rss_kib, "cpu_ms_per_change": m.cpu_ms_per_change,
            "samples_ms": m.samples.iter().map(|(allow, ms)| json!({ "allow": allow, "ms": ms })).collect::<Vec<_>>(),
            "p50_ms": quantile(&all, 0.5), "p99_ms": quantile(&all, 0.99),
        }));
    }
    s.json = serde_json::Value::Array(json_rows);
    report.sections.push(s);
    Ok(())
}
