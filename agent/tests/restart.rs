//! Restart without a gap: with maps and TCX links pinned on a BPF file system the test
//! mounts, the agent is SIGKILLed and restarted (then restarted again across a map
//! layout change) while an allowed TCP flow exchanges a message every 10 ms and a
//! denied pod keeps probing. The flow must never stall longer than the restart and
//! the denied probe must never get through. Then SIGTERM keeps enforcement in place,
//! and `netfence uninstall` removes it. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is a test failure"
)]

mod netns;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netfence_testbed::{bind_retrying, tcp_connects};
use netns::{Agent, B_FROM_A, Bpffs, PodNs, TestBed, abc_pods, bed, netfence_bin, start_pinned};

/// An echo flow: the client sends 8 bytes every 10 ms and waits for them back,
/// recording the longest time between two completed round trips.
struct Flow {
    stop: Arc<AtomicBool>,
    client: std::thread::JoinHandle<Result<Duration, String>>,
}

impl Flow {
    fn start(from: &PodNs, to: &PodNs, port: u16) -> Flow {
        let target = SocketAddr::new(to.ip4(), port);
        let listener = to
            .netns
            .run(|| bind_retrying(|| TcpListener::bind(target)))
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 8];
                while stream.read_exact(&mut buf).is_ok() && stream.write_all(&buf).is_ok() {}
            }
        });
        let stream = from
            .netns
            .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))
            .unwrap()
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let client = std::thread::spawn(move || {
            let mut stream = stream;
            let mut last = Instant::now();
            let mut longest = Duration::ZERO;
            let mut buf = [0u8; 8];
            let mut n: u64 = 0;
            while !stopping.load(Ordering::Relaxed) {
                n += 1;
                stream
                    .write_all(&n.to_be_bytes())
                    .map_err(|e| format!("write {n}: {e}"))?;
                stream
                    .read_exact(&mut buf)
                    .map_err(|e| format!("read {n}: {e}"))?;
                if buf != n.to_be_bytes() {
                    return Err(format!("echo {n} came back as {buf:?}"));
                }
                longest = longest.max(last.elapsed());
                last = Instant::now();
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(longest)
        });
        Flow { stop, client }
    }

    /// Stops the flow; returns the longest gap between two round trips.
    fn finish(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.client
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("the allowed flow broke: {e}"))
    }
}

fn start(bed: &TestBed, pin_dir: &Path, log: &Path) -> Agent {
    start_pinned(bed, pin_dir, log, &[])
}

fn denied(c: &PodNs, b: &PodNs, port: u16) {
    assert!(
        !tcp_connects(&c.netns, &b.netns, b.ip4(), port).unwrap(),
        "c reached b: the denied probe got through"
    );
}

#[test]
fn sigkill_restart_and_layout_switch_keep_the_flow_and_the_deny() {
    let mut bed = bed();
    let [a, b, c] = abc_pods(&mut bed, B_FROM_A);
    let bpffs = Bpffs::mount("restart");
    let pin_dir = bpffs.pin_dir();
    let log = bed.scratch("agent-restart.log");

    let agent = start(&bed, &pin_dir, &log);
    denied(&c, &b, 81);
    assert!(
        tcp_connects(&a.netns, &b.netns, b.ip4(), 82).unwrap(),
        "a reaches b"
    );
    let flow = Flow::start(&a, &b, 7000);
    std::thread::sleep(Duration::from_millis(200));

    // 1. SIGKILL: the pinned links keep enforcing with nobody running.
    let killed_at = Instant::now();
    agent.kill().unwrap();
    denied(&c, &b, 83);
    let agent = start(&bed, &pin_dir, &log);
    let restart1 = killed_at.elapsed();
    let text = agent.log();
    assert!(
        text.contains("restart=true"),
        "the restart found its pinned maps: {text}"
    );
    assert!(
        text.contains("adopted=3"),
        "all three veths adopted: {text}"
    );
    let first_sync = text
        .lines()
        .find(|l| l.contains("synced generation=1"))
        .unwrap_or_default();
    assert!(
        first_sync.contains("writes=0"),
        "the first sync after a restart is a diff (nothing changed): {first_sync}"
    );
    denied(&c, &b, 84);

    // 2. Another layout pinned (an older agent): new maps, programs switched atomically.
    let killed_at = Instant::now();
    agent.kill().unwrap();
    let maps = pin_dir.join("maps");
    let own = std::fs::read_dir(&maps)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::rename(&own, maps.join("00000000")).unwrap();
    let agent = start(&bed, &pin_dir, &log);
    let restart2 = killed_at.elapsed();
    let text = agent.log();
    assert!(text.contains("maps pinned with another layout"), "{text}");
    assert!(text.contains("removed maps of the old layout"), "{text}");
    assert!(
        own.join("ENDPOINTS").exists(),
        "this build's maps are pinned again"
    );
    assert!(!maps.join("00000000").exists(), "the old layout is gone");
    denied(&c, &b, 85);
    std::thread::sleep(Duration::from_millis(200));

    let longest = flow.finish();
    eprintln!(
        "restart 1 took {restart1:?}, restart 2 {restart2:?}; longest stall of the flow: {longest:?}"
    );
    assert!(
        longest < restart1.min(restart2),
        "the flow stalled {longest:?}, longer than a restart ({restart1:?}, {restart2:?})"
    );
    assert!(
        longest < Duration::from_millis(500),
        "the flow stalled {longest:?}"
    );

    // 3. SIGTERM keeps enforcement; uninstall removes it.
    assert!(agent.stop().unwrap().success());
    denied(&c, &b, 86);
    let out = bed
        .node()
        .command(&netfence_bin().to_string_lossy())
        .args(["uninstall", "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "uninstall: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("6 pinned links detached, 1 map layouts removed"),
        "{stdout}"
    );
    assert!(!pin_dir.exists(), "the pin directory is gone");
    assert!(
        tcp_connects(&c.netns, &b.netns, b.ip4(), 87).unwrap(),
        "after uninstall nothing is enforced"
    );
}
