//! Section 7: a sustained watch load. The real `netfence run --kubeconfig` on a
//! testbed node, pointed at the test API server (`netfence_testbed::apiserver`)
//! holding a generated cluster; then remote pods are relabelled at a steady rate
//! (each a MODIFIED watch event that moves the pod to another identity), and each
//! change is timed from the moment the server takes it to the moment the pod's
//! address has its new identity in the pinned IDENTITIES map. Also the agent's CPU
//! over the load, in cores.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Map, MapData};
use netfence::dataplane::loader::identity_key;
use netfence::dataplane::pin::PinDir;
use netfence::scenario;
use netfence_common::{IdentityKey, map};
use netfence_testbed::TestBed;
use netfence_testbed::apiserver::{
    ApiServer, ENDPOINT_SLICES, NAMESPACES, PODS, POLICIES, SERVICES,
};
use netfence_testbed::kube_agent::KubeAgent;
use serde_json::{Value, json};

use crate::propagation::cpu_ms;
use crate::report::{Report, Section, f1, f2, int, quantile, status_kib};
use crate::{Args, backdrop, progress, scene};

/// Pod relabels per second.
const RATE: u32 = 100;
/// How long a change may take to reach the map before it counts as missed.
const MISSED_AFTER: Duration = Duration::from_secs(10);

/// The API resource an object of `kind` is served under.
fn resource_of(kind: &str) -> Option<&'static str> {
    match kind {
        "Namespace" => Some(NAMESPACES),
        "Pod" => Some(PODS),
        "NetworkPolicy" => Some(POLICIES),
        "Service" => Some(SERVICES),
        "EndpointSlice" => Some(ENDPOINT_SLICES),
        _ => None,
    }
}

/// A BPF file system on a fresh directory for the agent's pins; on drop the pins are
/// uninstalled and it is unmounted.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount() -> anyhow::Result<Bpffs> {
        let dir = std::env::temp_dir().join(format!("nf7-bpf-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()?;
        if !status.success() {
            let _ = std::fs::remove_dir(&dir);
            bail!("mount -t bpf on {}: {status}", dir.display());
        }
        Ok(Bpffs(dir))
    }

    fn pin_dir(&self) -> PathBuf {
        self.0.join("netfence")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = netfence::cli::uninstall::uninstall(&self.pin_dir());
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The pinned IDENTITIES map, read by address.
struct Identities(LpmTrie<MapData, IdentityKey, u32>);

impl Identities {
    fn open(pin_dir: &Path) -> anyhow::Result<Identities> {
        let pins = PinDir::existing(pin_dir).context("the agent's pin directory")?;
        let data = MapData::from_pin(pins.map_path(map::IDENTITIES))?;
        let trie = LpmTrie::try_from(Map::from_map_data(data)?)?;
        Ok(Identities(trie))
    }

    fn of(&self, addr: IpAddr) -> Option<u32> {
        self.0.get(&identity_key(&addr.into()), 0).ok()
    }
}

/// One relabel in flight: its address, the identity it had, when the server took it.
struct Pending {
    addr: IpAddr,
    old: Option<u32>,
    sent: Instant,
}

struct Measured {
    pods: usize,
    ready_ms: f64,
    sent: usize,
    lags_ms: Vec<f64>,
    missed: usize,
    window_ms: f64,
    cpu_ms: f64,
    peak_rss_kib: u64,
}

fn measure(args: &Args, pods: usize, seconds: u32) -> anyhow::Result<Measured> {
    progress(&format!(
        "watch load: netfence run --kubeconfig with {pods} pods on the test API server, {RATE} relabels/s for {seconds} s"
    ));
    let state = scenario::generate(&scene::params(pods, pods / 15));
    let bed = TestBed::new("nf7")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    // The server listens on the node namespace's loopback, where the agent runs.
    let listener = bed
        .node()
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))??;
    let server = ApiServer::start_with(listener);
    let mut by_resource: std::collections::BTreeMap<&'static str, Vec<Value>> =
        std::collections::BTreeMap::new();
    for object in backdrop::objects(&state) {
        if let Some(resource) = object["kind"].as_str().and_then(resource_of) {
            by_resource.entry(resource).or_default().push(object);
        }
    }
    // The remote pods to relabel, spread over the cluster (each once).
    let events = (RATE * seconds) as usize;
    let remote: Vec<Value> = (by_resource.get(PODS).into_iter().flatten())
        .filter(|p| p["spec"]["nodeName"] != json!(scene::NODE))
        .cloned()
        .collect();
    if remote.is_empty() {
        bail!("no remote pods to relabel");
    }
    let step = (remote.len() / events).max(1);
    let relabels: Vec<(IpAddr, Value)> = (0..events)
        .filter_map(|k| {
            let mut pod = remote.get((k * step) % remote.len())?.clone();
            let addr: IpAddr = pod["status"]["podIP"].as_str()?.parse().ok()?;
            let app = pod["metadata"]["labels"]["app"].as_str()?.to_owned();
            pod["metadata"]["labels"]["app"] = json!(format!("{app}-moved-{k}"));
            Some((addr, pod))
        })
        .collect();
    for (resource, objects) in by_resource {
        server.seed(resource, objects);
    }
    drop(state);

    let bpffs = Bpffs::mount()?;
    // Removed when dropped, also on an early return.
    let dir = tempfile::Builder::new().prefix("nf7-").tempdir()?;
    let kubeconfig = server.kubeconfig(dir.path());
    let started = Instant::now();
    let pin_dir = bpffs.pin_dir();
    let socket = dir.path().join("cni.sock");
    let extra: [&std::ffi::OsStr; 7] = [
        "--detach-on-exit".as_ref(),
        "--pin-dir".as_ref(),
        pin_dir.as_os_str(),
        "--cni-socket".as_ref(),
        socket.as_os_str(),
        "--cni-cache-dir".as_ref(),
        "".as_ref(),
    ];
    let ready = std::env::var("NETFENCE_READY_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let agent = KubeAgent::start(
        &args.netfence,
        bed.node(),
        &kubeconfig,
        dir.path().join("agent.log"),
        &extra,
        ready,
    )?;
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    let identities = Identities::open(&bpffs.pin_dir())?;

    let pending: Mutex<Vec<Pending>> = Mutex::new(Vec::new());
    let lags: Mutex<Vec<f64>> = Mutex::new(Vec::new());
    let sending = AtomicBool::new(true);
    let cpu_before = cpu_ms(agent.pid());
    let window = Instant::now();
    std::thread::scope(|scope| {
        // The poller: every in-flight address, about every millisecond, until its
        // identity moved (or it is given up on).
        scope.spawn(|| {
            loop {
                let done = !sending.load(Ordering::Relaxed);
                let mut waiting = pending
                    .lock()
                    .map(|mut p| std::mem::take(&mut *p))
                    .unwrap_or_default();
                waiting.retain(|p| {
                    let moved = identities.of(p.addr) != p.old;
                    if moved && let Ok(mut lags) = lags.lock() {
                        lags.push(p.sent.elapsed().as_secs_f64() * 1e3);
                    }
                    !moved && p.sent.elapsed() < MISSED_AFTER
                });
                let left = waiting.len();
                if let Ok(mut p) = pending.lock() {
                    p.extend(waiting);
                }
                if done && left == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let interval = Duration::from_secs(1) / RATE;
        for (k, (addr, pod)) in relabels.iter().enumerate() {
            let due = window + interval * u32::try_from(k).unwrap_or(u32::MAX);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let old = identities.of(*addr);
            server.apply(PODS, pod.clone());
            if let Ok(mut p) = pending.lock() {
                p.push(Pending {
                    addr: *addr,
                    old,
                    sent: Instant::now(),
                });
            }
        }
        sending.store(false, Ordering::Relaxed);
    });
    let window_ms = window.elapsed().as_secs_f64() * 1e3;
    let cpu = cpu_ms(agent.pid()) - cpu_before;
    let lags_ms = lags.into_inner().unwrap_or_default();
    let sent = relabels.len();
    let peak_rss_kib = status_kib(&agent.pid().to_string(), "VmHWM");
    drop(agent);
    Ok(Measured {
        pods,
        ready_ms,
        sent,
        missed: sent - lags_ms.len(),
        lags_ms,
        window_ms,
        cpu_ms: cpu,
        peak_rss_kib,
    })
}

pub fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let (pods, seconds) = if args.quick {
        (1_000, 3)
    } else {
        (150_000, 60)
    };
    let mut s = Section::new(
        "watch_load",
        "7. Watch load: remote pods relabelled on the API server at a steady rate → the pod's new identity in IDENTITIES (ms)",
        &[
            "cluster pods",
            "events",
            "seen",
            "p50",
            "p99",
            "max",
            "agent",
        ],
    );
    s.method("the real `netfence run --kubeconfig` on a testbed node; the test API server (list/watch over HTTP, in the");
    s.method(format!("node's namespace) holds the generated cluster (one policy per 15 pods); {RATE} MODIFIED pod events per second,"));
    s.method("each a remote pod given a new label value (a new identity); timed from the server taking the change to the pod's");
    s.method("address holding another identity in the pinned IDENTITIES map (polled every ~1 ms). agent: CPU over the load");
    s.method(format!(
        "window in cores, peak RSS; `seen` < events: changes not in the map within {} s.",
        MISSED_AFTER.as_secs()
    ));
    let m = measure(args, pods, seconds)?;
    let max = m.lags_ms.iter().copied().fold(0.0, f64::max);
    let cores = m.cpu_ms / m.window_ms.max(1.0);
    s.row(vec![
        int(m.pods),
        int(m.sent),
        int(m.lags_ms.len()),
        f1(quantile(&m.lags_ms, 0.5)),
        f1(quantile(&m.lags_ms, 0.99)),
        f1(max),
        format!(
            "ready {} s, CPU {} cores over {} s, peak RSS {} MiB",
            f1(m.ready_ms / 1e3),
            f2(cores),
            f1(m.window_ms / 1e3),
            f1(m.peak_rss_kib as f64 / 1024.0)
        ),
    ]);
    s.json = json!({
        "pods": m.pods, "rate_per_s": RATE, "seconds": seconds, "events": m.sent,
        "seen": m.lags_ms.len(), "missed": m.missed, "ready_ms": m.ready_ms,
        "p50_ms": quantile(&m.lags_ms, 0.5), "p99_ms": quantile(&m.lags_ms, 0.99), "max_ms": max,
        "agent_cpu_ms": m.cpu_ms, "window_ms": m.window_ms, "agent_cores": cores,
        "peak_rss_kib": m.peak_rss_kib,
    });
    report.sections.push(s);
    Ok(())
}
