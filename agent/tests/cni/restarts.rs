//! The pending-pod and conflist cases that span an agent restart or a Flannel
//! restart (part of the `cni` test binary).

use super::*;

/// Datagrams sent every millisecond from one pod to another's UDP port, counted on
/// both ends, until [`Blast::finish`].
struct Blast {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<u64>,
    receiver: std::thread::JoinHandle<u64>,
}

impl Blast {
    fn start(from: &netns::PodNs, to: &netns::PodNs, port: u16) -> Blast {
        use std::net::{SocketAddr, UdpSocket};
        use std::sync::atomic::Ordering;
        let target = SocketAddr::new(to.ip4(), port);
        let rx = to
            .netns
            .run(|| netfence_testbed::bind_retrying(|| UdpSocket::bind(target)))
            .unwrap()
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let tx = from
            .netns
            .run(|| UdpSocket::bind((from.ip4(), 0)))
            .unwrap()
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut sent = 0;
            while !stopping.load(Ordering::Relaxed) {
                if tx.send_to(b"nfh5", target).is_ok() {
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        });
        let stopping = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut received = 0;
            let mut buf = [0u8; 16];
            // Until stopped, then until 50 ms pass without a datagram (bounded: the
            // sender has stopped).
            loop {
                match rx.recv_from(&mut buf) {
                    Ok(_) => received += 1,
                    Err(_) if stopping.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            received
        });
        Blast {
            stop,
            sender,
            receiver,
        }
    }

    /// Stops; returns (sent, received).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (self.sender.join().unwrap(), self.receiver.join().unwrap())
    }
}

#[test]
fn a_pending_pod_stays_denied_both_ways_across_an_agent_restart() {
    use netfence::cni::persist;
    use netns::{Bpffs, start_pinned};
    netfence_testbed::require_root().unwrap();
    let plugins = plugin_dir();
    let mut bed = bed("nfh5a");
    bed.namespace("x", &[]);
    let srv = bed.pod("x", "srv", &[("app", "srv")], 10, &[]).unwrap();
    let peer = bed.pod("x", "peer", &[("app", "peer")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    // Pins on a BPF file system of the test's own; enforcement kept on exit.
    let bpffs = Bpffs::mount("nfh5a");
    let pin_dir = bpffs.pin_dir();
    let socket = bed.scratch("cni.sock");
    let log = bed.scratch("agent-nfh5a.log");
    let extra = ["--cni-socket".as_ref(), socket.as_os_str()];
    let agent = start_pinned(&bed, &pin_dir, &log, &extra);
    bed.chain_plugin(&plugin_entry(&socket, true), &plugins)
        .unwrap();

    // ADD of a pod the state does not have: deny-all, saved beside the socket.
    let new = bed.pod("x", "new", &[("app", "client")], 12, &[]).unwrap();
    assert!(
        agent
            .log()
            .lines()
            .any(|l| l.contains("cni: programmed") && l.contains("DefaultDeny")),
        "{}",
        agent.log()
    );
    let file = persist::path_for(&socket);
    let saved = persist::load(&file).unwrap();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let entry = &saved[0];
    assert_eq!(
        (entry.namespace.as_deref(), entry.pod.as_deref()),
        (Some("x"), Some("new"))
    );
    assert_eq!(entry.ips, [new.ip4(), new.ip6()]);
    assert_eq!(
        (entry.netns.as_str(), entry.ifname.as_str()),
        (format!("/run/netns/{}", new.netns.name()).as_str(), "eth0")
    );
    assert!(entry.netns_seen, "the agent sees the pod's namespace");
    assert_eq!(
        entry.host_interfaces,
        ["cni0".to_owned(), new.host_if.clone()],
        "the bridge result's host interfaces"
    );
    assert!(
        !tcp_connects(&new.netns, &srv.netns, srv.ip4(), 80).unwrap(),
        "new → srv before the restart"
    );
    assert!(
        !tcp_connects(&peer.netns, &new.netns, new.ip4(), 8080).unwrap(),
        "peer → new before the restart"
    );

    // SIGKILL, and a new agent on the same pins and socket, while both directions
    // send a datagram every millisecond; kept on for two ticks of the new agent (its
    // stale-namespace sweep runs on each).
    let outbound = Blast::start(&new, &srv, 9000);
    let inbound = Blast::start(&peer, &new, 9001);
    std::thread::sleep(Duration::from_millis(200));
    let killed_at = Instant::now();
    agent.kill().unwrap();
    let mut agent = start_pinned(&bed, &pin_dir, &log, &extra);
    let restart = killed_at.elapsed();
    std::thread::sleep(Duration::from_millis(2500));
    let (out_sent, out_received) = outbound.finish();
    let (in_sent, in_received) = inbound.finish();
    println!(
        "measured: SIGKILL to the new agent's ready {} ms; new → srv {out_sent} datagrams sent, {out_received} received; \
         peer → new {in_sent} sent, {in_received} received (from 200 ms before the kill to 2.5 s after ready)",
        restart.as_millis()
    );
    assert!(
        out_sent > 100 && in_sent > 100,
        "the blasts ran: {out_sent} {in_sent}"
    );
    assert_eq!(
        (out_received, in_received),
        (0, 0),
        "a datagram passed across the restart:\n{}",
        agent.log()
    );
    let text = agent.log();
    assert!(text.contains("restart=true"), "{text}");
    assert!(text.contains("cni: 1 pending pods restored"), "{text}");
    let first_sync = text
        .lines()
        .find(|l| l.contains("synced generation=1"))
        .unwrap_or_default();
    assert!(
        first_sync.contains("writes=0"),
        "the first sync keeps the pinned deny-all endpoint: {first_sync}"
    );
    assert!(
        !tcp_connects(&new.netns, &srv.netns, srv.ip4(), 80).unwrap(),
        "new → srv after the restart"
    );
    assert!(
        !tcp_connects(&peer.netns, &new.netns, new.ip4(), 8080).unwrap(),
        "peer → new after the restart"
    );

    // The pod appears in the manifests with its policy (egress to srv on TCP 80 and
    // UDP 9000; ingress not isolated): the new agent applies it.
    bed.write_manifest("policy.yaml", NEW_POD_EGRESS).unwrap();
    bed.write_cluster().unwrap();
    assert!(
        connects_within(10, &new, &srv, 80),
        "new → srv:80 once its policy exists:\n{}",
        agent.log()
    );
    assert!(
        !tcp_connects(&new.netns, &srv.netns, srv.ip4(), 81).unwrap(),
        "new → srv:81 is not allowed"
    );
    assert!(
        tcp_connects(&peer.netns, &new.netns, new.ip4(), 8080).unwrap(),
        "new's ingress is not isolated"
    );
    let outbound = Blast::start(&new, &srv, 9000);
    std::thread::sleep(Duration::from_millis(300));
    let (sent, received) = outbound.finish();
    assert!(
        received > 0,
        "new → srv UDP 9000 allowed: {sent} sent, none received"
    );

    // A pending pod torn down without a DEL (its namespace removed, as a runtime
    // removes a sandbox's): a tick of the agent forgets it, and its deny-all endpoint.
    let generation = agent.generation();
    let lost = bed.pod("x", "lost", &[("app", "lost")], 13, &[]).unwrap();
    agent.wait_for_sync_after(generation).unwrap();
    wait_for_endpoints(&agent, 8);
    assert_eq!(persist::load(&file).unwrap().len(), 2);
    let removed_at = Instant::now();
    let status = Process::new("ip")
        .args(["netns", "delete", lost.netns.name()])
        .status()
        .unwrap();
    assert!(status.success());
    agent
        .wait_for_line(&["gone without a DEL", "x/lost"])
        .unwrap();
    println!(
        "measured: pending pod's namespace removed to forgotten {} ms",
        removed_at.elapsed().as_millis()
    );
    wait_for_endpoints(&agent, 6);
    let left: Vec<String> = persist::load(&file)
        .unwrap()
        .into_iter()
        .filter_map(|e| e.pod)
        .collect();
    assert_eq!(left, ["new"]);
    drop(lost); // DEL of a pod already forgotten (the testbed reports the missing namespace)

    // DEL forgets it, and the file goes with the last pending pod.
    drop(new);
    agent
        .wait_for_line(&["cni: DEL", "x/new", "pending=true"])
        .unwrap();
    assert!(
        !file.exists(),
        "nothing pending: {} removed",
        file.display()
    );
    assert!(agent.stop().unwrap().success());
}

#[test]
fn the_agent_puts_its_entry_back_when_flannel_rewrites_the_conflist() {
    netfence_testbed::require_root().unwrap();
    let bed = bed("nfh5b");
    let conf = bed.scratch("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    let flannel = conf.join("10-flannel.conflist");
    let other = conf.join("99-other.conflist");
    let other_text =
        r#"{"name":"other","cniVersion":"1.0.0","plugins":[{"type":"bridge","bridge":"br9"}]}"#;
    std::fs::write(&flannel, FLANNEL_CONFLIST).unwrap();
    std::fs::write(&other, other_text).unwrap();
    let socket = bed.scratch("cni.sock");
    let mut agent = Agent::start_with(
        netfence_bin(),
        bed.node(),
        NODE_NAME,
        &bed.manifests(),
        &[],
        Attach::Auto,
        bed.scratch("agent-nfh5b.log"),
        &[
            "--detach-on-exit".as_ref(),
            "--cni-socket".as_ref(),
            socket.as_os_str(),
            "--cni-conf-dir".as_ref(),
            conf.as_os_str(),
            "--cni-timeout-seconds".as_ref(),
            "7".as_ref(),
        ],
    )
    .unwrap_or_else(|error| panic!("starting netfence: {error:#}"));
    let restored = format!("netfence-cni entry restored in {}", flannel.display());
    // At start (no init container ran here): added, with the agent's settings.
    agent.wait_for_line(&["WARN", &restored]).unwrap();
    let want = json!({"type": "netfence-cni", "socketPath": socket.to_string_lossy(), "timeoutSeconds": 7, "failClosed": true});
    let chained = |path: &Path| -> Option<Value> {
        let conf: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        conf["plugins"]
            .as_array()?
            .last()
            .filter(|p| p["type"] == "netfence-cni")
            .cloned()
    };
    assert_eq!(chained(&flannel), Some(want.clone()));

    // Flannel restarts: its install-cni copies its conflist over ours, in place.
    let rewritten_at = Instant::now();
    std::fs::write(&flannel, FLANNEL_CONFLIST).unwrap();
    let deadline = rewritten_at + Duration::from_secs(10);
    while chained(&flannel).is_none() {
        assert!(
            Instant::now() < deadline,
            "the entry never came back:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "measured: conflist rewritten without the entry to the entry back {} ms",
        rewritten_at.elapsed().as_millis()
    );
    assert_eq!(chained(&flannel), Some(want));
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&restored))
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no second warning:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let types: Vec<String> = serde_json::from_str::<Value>(
        &std::fs::read_to_string(&flannel).unwrap(),
    )
    .unwrap()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["flannel", "portmap", "netfence-cni"],
        "added once, last"
    );
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        other_text,
        "not Flannel's: untouched"
    );

    // Stopped, the agent puts nothing back: uninstall removes the entry for good.
    assert!(agent.stop().unwrap().success());
    let out = Process::new(netfence_bin())
        .args(["uninstall", "--pin-dir"])
        .arg(bed.scratch("no-pins"))
        .arg("--cni-conf-dir")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Value = serde_json::from_str(&std::fs::read_to_string(&flannel).unwrap()).unwrap();
    assert_eq!(
        left,
        serde_json::from_str::<Value>(FLANNEL_CONFLIST).unwrap()
    );
    assert_eq!(std::fs::read_to_string(&other).unwrap(), other_text);
}
