//! Section 5: propagation. The real `netfence run` enforces a manifest directory on a
//! testbed node; the server's NetworkPolicy file is rewritten (atomically, as an editor
//! or a GitOps sync would) to alternately deny and allow UDP 7000 from the client,
//! while the client probes continuously with new flows (a fresh socket, so a fresh
//! source port, per probe). The figure is the time from the rename to the send of the
//! first probe that gets the new verdict (allowed: the echo came back within 5 ms;
//! denied: it did not), confirmed by the two probes after it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use netfence_testbed::{Attach, PodNs, TestBed};
use serde_json::json;

use crate::report::{Report, Section, f1, quantile};
use crate::{Args, progress, scene};

/// A probe without an echo after this long is a dropped one.
const REPLY_WAIT: Duration = Duration::from_millis(5);
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

/// One probe from a fresh socket: whether the echo came back.
fn probe(target: SocketAddr) -> anyhow::Result<bool> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(REPLY_WAIT))?;
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
            if probe(target)? == allowed {
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
fn flip(
    bed: &TestBed,
    client: &PodNs,
    target: SocketAddr,
    changes: usize,
) -> anyhow::Result<Vec<(bool, f64)>> {
    until_verdict(client, target, true, Instant::now())
        .context("the initial policy allows UDP 7000")?;
    let mut samples = Vec::new();
    for i in 0..changes {
        let allow = i % 2 == 1;
        bed.write_manifest("server-ingress.yaml", &policy_yaml(allow))?;
        let t0 = Instant::now();
        let took = until_verdict(client, target, allow, t0)?;
        samples.push((allow, took.as_secs_f64() * 1e3));
    }
    Ok(samples)
}

pub fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let changes = if args.quick { 6 } else { 60 };
    progress(&format!(
        "propagation: netfence run on a testbed node, {changes} policy changes"
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
    let _agent = bed.start_agent(&args.netfence, Attach::Auto)?;
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
        let result = flip(&bed, &client, target, changes);
        done.store(true, Ordering::Relaxed);
        result
    })?;
    let all: Vec<f64> = samples.iter().map(|(_, ms)| *ms).collect();
    let of = |allow: bool| -> Vec<f64> {
        samples
            .iter()
            .filter(|(a, _)| *a == allow)
            .map(|(_, ms)| *ms)
            .collect()
    };
    let mut s = Section::new(
        "propagation",
        "5. Propagation: policy file changed → first new-flow packet with the new verdict (ms)",
        &["change", "n", "p50", "p99", "max"],
    );
    s.method("the real `netfence run` (manifest watch, 100 ms quiet debounce, compile, sync) on a testbed node;");
    s.method("probes: UDP from a fresh source port every ≤5 ms; a verdict counts when 3 probes in a row agree,");
    s.method("timed from the first of them; resolution ≈ 5 ms for denials, < 0.1 ms for allows.");
    for (name, values) in [
        ("tighten (allow → deny)", of(false)),
        ("loosen (deny → allow)", of(true)),
        ("all", all.clone()),
    ] {
        let max = values.iter().copied().fold(0.0, f64::max);
        s.row(vec![
            name.into(),
            values.len().to_string(),
            f1(quantile(&values, 0.5)),
            f1(quantile(&values, 0.99)),
            f1(max),
        ]);
    }
    s.json = json!({
        "changes": changes,
        "samples_ms": samples.iter().map(|(allow, ms)| json!({ "allow": allow, "ms": ms })).collect::<Vec<_>>(),
        "p50_ms": quantile(&all, 0.5), "p99_ms": quantile(&all, 0.99),
    });
    report.sections.push(s);
    Ok(())
}
