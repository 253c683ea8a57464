//! Sections 2 and 3: real traffic between two pod namespaces on one node bridge (the
//! testbed), with no enforcement, with netfence (this process loads the programs,
//! syncs the compiled image with the agent's sync and attaches both programs to both
//! pod veths by TCX), and with the naive nftables ruleset of `nft`. Workloads, all
//! client 198.18.0.10 → server 198.18.0.11, bounded by count and by timeouts:
//! - CRR: many short TCP connections (connect, 1-byte request, 1-byte reply, close):
//!   every connection is a new flow, about 9 packets, each crossing two hooks;
//! - RR: UDP request/reply on one flow (established path after the first packet);
//! - iperf3 TCP throughput.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aya::programs::TcAttachType;
use netfence::dataplane::loader::{Datapath, LoadOptions, classifier};
use netfence::dataplane::sync::{Contents, sync};
use netfence_common::program;
use netfence_testbed::{Netns, PodNs, TestBed};
use serde_json::{Value, json};

use crate::report::{Report, Section, f1, f2, int, quantile};
use crate::{Args, nft, progress, scene};

const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Latency samples of one configuration, in µs.
#[derive(Debug, Default)]
struct Samples {
    crr: Vec<f64>,
    rr: Vec<f64>,
    iperf_gbps: Option<f64>,
}

struct Sizes {
    pods: usize,
    policies: &'static [usize],
    /// The policy count of section 3.
    throughput_at: usize,
    connections: usize,
    round_trips: usize,
    iperf_seconds: u32,
    nft_cap: usize,
}

/// The programs attached to both pod veths; detached when dropped (the links belong to
/// the loaded programs).
struct Netfence {
    _datapath: Datapath,
}

impl Netfence {
    /// Enforces `state` on `ports`: each interface with the pod address behind it.
    fn enforce(
        node: &Netns,
        state: &netfence::model::State,
        ports: &[(&str, Ipv4Addr)],
    ) -> anyhow::Result<Self> {
        let (image, _) = scene::image(state);
        let bound: anyhow::Result<BTreeMap<IpAddr, u32>> = node.run(|| {
            ports
                .iter()
                .map(|(iface, addr)| {
                    let name = std::ffi::CString::new(*iface)?;
                    // SAFETY: a valid NUL-terminated name; no other precondition.
                    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
                    anyhow::ensure!(index != 0, "no interface {iface}");
                    Ok((IpAddr::V4(*addr), index))
                })
                .collect()
        })?;
        let target = Contents::from_image(&image, &bound?);
        let ifaces: Vec<&str> = ports.iter().map(|(iface, _)| *iface).collect();
        let mut datapath = Datapath::load(&LoadOptions::default())?;
        let mut live = Contents::default();
        let synced = sync(&mut datapath.maps, &mut live, &target);
        if let Some((op, error)) = synced.failed.first() {
            bail!("sync failed: {op:?}: {error}");
        }
        let attached: anyhow::Result<()> = node.run(|| {
            for iface in &ifaces {
                for (name, hook) in [
                    (program::FROM_POD, TcAttachType::Ingress),
                    (program::TO_POD, TcAttachType::Egress),
                ] {
                    classifier(&mut datapath.ebpf, name)?
                        .attach(iface, hook)
                        .with_context(|| format!("attaching {name} to {iface}"))?;
                }
            }
            Ok(())
        })?;
        attached?;
        Ok(Self {
            _datapath: datapath,
        })
    }
}

/// The nftables ruleset loaded in the node namespace; removed when dropped.
struct Nftables<'a> {
    node: &'a Netns,
}

impl<'a> Nftables<'a> {
    fn enforce(node: &'a Netns, ruleset: &nft::Ruleset) -> anyhow::Result<Self> {
        let file = std::env::temp_dir().join(format!("nf5-{}.nft", std::process::id()));
        std::fs::write(&file, &ruleset.text)?;
        let guard = Self { node };
        sysctl(node, "1")?;
        let status = node.command("nft").arg("-f").arg(&file).status();
        let _ = std::fs::remove_file(&file);
        if !status.is_ok_and(|s| s.success()) {
            bail!("nft -f failed for a ruleset of {} rules", ruleset.rules);
        }
        Ok(guard)
    }
}

impl Drop for Nftables<'_> {
    fn drop(&mut self) {
        let _ = self
            .node
            .command("nft")
            .args(["delete", "table", "inet", nft::TABLE])
            .stderr(Stdio::null())
            .status();
        let _ = sysctl(self.node, "0");
    }
}

fn sysctl(node: &Netns, value: &str) -> anyhow::Result<()> {
    let status = node
        .command("sysctl")
        .args([
            "-q",
            "-w",
            &format!("net.bridge.bridge-nf-call-iptables={value}"),
        ])
        .status()?;
    if !status.success() {
        bail!(
            "sysctl net.bridge.bridge-nf-call-iptables={value} failed in {}",
            node.name()
        );
    }
    Ok(())
}

/// `count` short TCP connections; µs per connection.
fn crr(client: &PodNs, server: &PodNs, count: usize) -> anyhow::Result<Vec<f64>> {
    let target = SocketAddr::new(server.ip4(), scene::TCP_PORT);
    let listener = server.netns.run(|| TcpListener::bind(target))??;
    listener.set_nonblocking(true)?;
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                        let mut byte = [0u8; 1];
                        if stream.read_exact(&mut byte).is_ok() {
                            let _ = stream.write_all(&byte);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(20)),
                }
            }
        });
        let result = client.netns.run(|| -> anyhow::Result<Vec<f64>> {
            let mut out = Vec::with_capacity(count);
            for i in 0..count {
                let start = Instant::now();
                let mut stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)
                    .with_context(|| format!("connection {i} to {target}"))?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.write_all(b"x")?;
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte)?;
                drop(stream);
                out.push(start.elapsed().as_secs_f64() * 1e6);
            }
            Ok(out)
        });
        done.store(true, Ordering::Relaxed);
        result?
    })
}

/// `count` UDP round trips on one flow; µs each.
fn rr(client: &PodNs, server: &PodNs, count: usize) -> anyhow::Result<Vec<f64>> {
    let target = SocketAddr::new(server.ip4(), scene::UDP_PORT);
    let echo = server.netns.run(|| UdpSocket::bind(target))??;
    echo.set_read_timeout(Some(Duration::from_millis(50)))?;
    let socket = client.netns.run(|| UdpSocket::bind("0.0.0.0:0"))??;
    socket.connect(target)?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Relaxed) {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
        });
        let result = round_trips(&socket, count);
        done.store(true, Ordering::Relaxed);
        result
    })
}

fn round_trips(socket: &UdpSocket, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(count);
    let mut buf = [0u8; 64];
    for i in 0..count {
        let start = Instant::now();
        socket.send(&(i as u64).to_be_bytes())?;
        socket
            .recv(&mut buf)
            .with_context(|| format!("UDP round trip {i}"))?;
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// An iperf3 server, killed when dropped.
struct Iperf(Child);

impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// iperf3 TCP throughput client → server for `seconds`, in Gbit/s.
fn iperf(client: &PodNs, server: &PodNs, seconds: u32) -> anyhow::Result<f64> {
    let ip = server.ip4().to_string();
    let port = scene::TCP_PORT.to_string();
    let _server = Iperf(
        server
            .netns
            .command("iperf3")
            .args(["-s", "-1", "-B", &ip, "-p", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    for _ in 0..50 {
        let out = client
            .netns
            .command("timeout")
            .args([
                &(seconds + 10).to_string(),
                "iperf3",
                "-c",
                &ip,
                "-p",
                &port,
                "-J",
            ])
            .args(["-t", &seconds.to_string()])
            .output()
            .context("running iperf3 -c")?;
        let parsed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = parsed["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        // The server is not listening yet.
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 did not complete a run in 50 attempts")
}

fn workload(
    client: &PodNs,
    server: &PodNs,
    sizes: &Sizes,
    with_iperf: bool,
) -> anyhow::Result<Samples> {
    Ok(Samples {
        crr: crr(client, server, sizes.connections)?,
        rr: rr(client, server, sizes.round_trips)?,
        iperf_gbps: if with_iperf {
            Some(iperf(client, server, sizes.iperf_seconds)?)
        } else {
            None
        },
    })
}

pub fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let sizes = if args.quick {
        Sizes {
            pods: 100,
            policies: &[100],
            throughput_at: 100,
            connections: 200,
            round_trips: 500,
            iperf_seconds: 1,
            nft_cap: 300_000,
        }
    } else {
        Sizes {
            pods: 1_000,
            policies: &[0, 100, 1_000, 10_000],
            throughput_at: 1_000,
            connections: 2_000,
            round_trips: 5_000,
            iperf_seconds: 5,
            nft_cap: 300_000,
        }
    };
    progress("traffic: node namespace, client and server pods");
    let mut bed = TestBed::new("nf5")?;
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
    let ports = [
        (client.host_if.as_str(), scene::CLIENT),
        (server.host_if.as_str(), scene::SERVER),
    ];
    // Warm up ARP and the listener paths once.
    crr(&client, &server, 5)?;
    let mut s2 = Section::new(
        "nftables",
        "2. netfence vs naive nftables, real traffic (median µs per transaction)",
        &[
            "policies",
            "nft rules",
            "CRR none",
            "CRR netfence",
            "CRR nft",
            "RR none",
            "RR netfence",
            "RR nft",
            "CRR overhead nft/netfence",
            "RR overhead nft/netfence",
        ],
    );
    s2.method(format!(
        "{} pods ({} local); CRR = {} short TCP connections (new flow each, ~9 packets × 2 hooks), RR = {} UDP",
        int(sizes.pods),
        scene::LOCAL_PODS,
        int(sizes.connections),
        int(sizes.round_trips)
    ));
    s2.method("round trips on one flow (established). nft's per-packet cost is not exposed like BPF stats, so both");
    s2.method(
        "enforcers are compared by their added latency over no enforcement on the same path:",
    );
    s2.method("overhead = median(enforced) − median(none); nft includes br_netfilter + conntrack, which it needs.");
    let mut s3 = Section::new(
        "throughput",
        "3. Throughput and connection latency: no program vs netfence",
        &[
            "metric",
            "none",
            "netfence",
            "netfence/none",
            "nft",
            "nft/none",
        ],
    );
    let mut rows = Vec::new();
    for &policies in sizes.policies {
        let state = scene::state(sizes.pods, policies);
        let with_iperf = policies == sizes.throughput_at;
        progress(&format!("traffic: {policies} policies, no enforcement"));
        let none = workload(&client, &server, &sizes, with_iperf)?;
        progress(&format!("traffic: {policies} policies, netfence"));
        let ours = {
            let _enforced = Netfence::enforce(bed.node(), &state, &ports)?;
            workload(&client, &server, &sizes, with_iperf)?
        };
        let ruleset = nft::ruleset(&state, scene::NODE, sizes.nft_cap);
        progress(&format!(
            "traffic: {policies} policies, nftables ({} rules)",
            ruleset.rules
        ));
        let theirs = {
            let _enforced = Nftables::enforce(bed.node(), &ruleset)?;
            workload(&client, &server, &sizes, with_iperf)?
        };
        let med = |v: &[f64]| quantile(v, 0.5);
        let over = |x: &[f64], base: &[f64]| med(x) - med(base);
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                f2(a / b)
            } else {
                "n/a (≤0)".to_owned()
            }
        };
        s2.row(vec![
            int(policies),
            if ruleset.pairs > ruleset.rules {
                format!("{} (cap; {} pairs)", int(ruleset.rules), int(ruleset.pairs))
            } else {
                int(ruleset.rules)
            },
            f1(med(&none.crr)),
            f1(med(&ours.crr)),
            f1(med(&theirs.crr)),
            f1(med(&none.rr)),
            f1(med(&ours.rr)),
            f1(med(&theirs.rr)),
            ratio(over(&theirs.crr, &none.crr), over(&ours.crr, &none.crr)),
            ratio(over(&theirs.rr, &none.rr), over(&ours.rr, &none.rr)),
        ]);
        let summary = |s: &Samples| {
            json!({
                "crr_us": { "p50": quantile(&s.crr, 0.5), "p99": quantile(&s.crr, 0.99), "n": s.crr.len() },
                "rr_us": { "p50": quantile(&s.rr, 0.5), "p99": quantile(&s.rr, 0.99), "n": s.rr.len() },
                "iperf_gbps": s.iperf_gbps,
            })
        };
        rows.push(json!({
            "policies": policies, "pods": sizes.pods, "nft_rules": ruleset.rules, "nft_pairs": ruleset.pairs,
            "none": summary(&none), "netfence": summary(&ours), "nftables": summary(&theirs),
        }));
        if with_iperf {
            throughput(&mut s3, &sizes, policies, &none, &ours, &theirs);
        }
    }
    s2.json = json!(rows);
    s3.json = rows
        .iter()
        .find(|r| r["policies"] == json!(sizes.throughput_at))
        .cloned()
        .unwrap_or(Value::Null);
    report.sections.push(s2);
    report.sections.push(s3);
    Ok(())
}

fn throughput(
    s3: &mut Section,
    sizes: &Sizes,
    policies: usize,
    none: &Samples,
    ours: &Samples,
    theirs: &Samples,
) {
    s3.method(format!(
        "{} pods, {} policies; iperf3 -t {} (one TCP stream) client → server through the bridge; latency = CRR",
        int(sizes.pods),
        int(policies),
        sizes.iperf_seconds
    ));
    s3.method(format!(
        "samples ({} new connections each).",
        int(sizes.connections)
    ));
    let gbps = |s: &Samples| s.iperf_gbps.unwrap_or(f64::NAN);
    s3.row(vec![
        "TCP throughput (Gbit/s)".into(),
        f2(gbps(none)),
        f2(gbps(ours)),
        f2(gbps(ours) / gbps(none)),
        f2(gbps(theirs)),
        f2(gbps(theirs) / gbps(none)),
    ]);
    for (name, q) in [("connection p50 (µs)", 0.5), ("connection p99 (µs)", 0.99)] {
        let (a, b, c) = (
            quantile(&none.crr, q),
            quantile(&ours.crr, q),
            quantile(&theirs.crr, q),
        );
        s3.row(vec![name.into(), f1(a), f1(b), f2(b / a), f1(c), f2(c / a)]);
    }
}
