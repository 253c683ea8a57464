//! Deny-until-ready with the real plugins, invoked as a container runtime invokes them
//! (testbed's libcni-like runner: CNI_COMMAND, CNI_NETNS, CNI_IFNAME, CNI_CONTAINERID,
//! CNI_PATH, the config on stdin, `prevResult` chained): Debian's `bridge` +
//! `host-local` on `cni0`, then `netfence-cni`, against a running `netfence run`
//! (packet tests, need root); the agent down with `failClosed` true and false; a
//! pending pod across a SIGKILL restart on pinned maps, and one whose namespace goes
//! without a DEL; `run --cni-conf-dir` putting the entry back after Flannel rewrites
//! its conflist; and `netfence cni-install` / `uninstall` on a CNI directory, with the
//! DaemonSet's init container (no root); safe removal: an uninstall (the DaemonSet
//! deleted) against a restart, and the lease (`cni/removal.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

#[path = "cni/restarts.rs"]
mod restarts;

#[path = "cni/removal.rs"]
mod removal;

mod netns;

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use netfence_testbed::{NODE_NAME, tcp_connects};
use netns::{Agent, Attach, TestBed, netfence_bin, plugin_dir};
use serde_json::{Value, json};

/// A plugin directory whose `netfence-cni` runs the real one and appends
/// `COMMAND start_ns end_ns exit_status` to `times` beside it.
fn timing_wrapper(bed: &TestBed, plugins: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = bed.scratch("timed-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "#!/bin/sh\nstart=$(date +%s%N)\n'{}'\nrc=$?\necho \"$CNI_COMMAND $start $(date +%s%N) $rc\" >> '{}'\nexit $rc\n",
        plugins.join("netfence-cni").display(),
        dir.join("times").display()
    );
    let path = dir.join("netfence-cni");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn bed(prefix: &str) -> TestBed {
    TestBed::new(prefix).unwrap_or_else(|error| panic!("setting up the test node: {error:#}"))
}

fn plugin_entry(socket: &Path, fail_closed: bool) -> Value {
    json!({
        "type": "netfence-cni",
        "socketPath": socket.to_string_lossy(),
        "timeoutSeconds": 20,
        "failClosed": fail_closed,
    })
}

/// The agent with its CNI socket (and a flow log) in the bed's own directory.
fn start_agent(bed: &TestBed, socket: &Path, flows: &Path) -> Agent {
    Agent::start_with(
        netfence_bin(),
        bed.node(),
        NODE_NAME,
        &bed.manifests(),
        &[],
        Attach::Auto,
        bed.scratch("agent-cni.log"),
        &[
            "--detach-on-exit".as_ref(),
            "--cni-socket".as_ref(),
            socket.as_os_str(),
            "--flow-log".as_ref(),
            flows.as_os_str(),
        ],
    )
    .unwrap_or_else(|error| panic!("starting netfence: {error:#}"))
}

/// Flow log lines (JSON) so far.
fn flow_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The first flow log line matching, waiting up to 3 s for the event.
fn flow_line(path: &Path, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(line) = flow_lines(path).into_iter().find(|l| matches(l)) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no matching flow log line: {:?}",
            flow_lines(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The live endpoint count of the last sync the agent logged.
fn last_endpoints(agent: &Agent) -> u64 {
    let log = agent.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("synced generation="))
        .expect("a sync line");
    let count = line
        .split("endpoints=")
        .nth(1)
        .expect("endpoints= in the sync line");
    count
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits (bounded) until the agent's last sync reports `want` live endpoints.
fn wait_for_endpoints(agent: &Agent, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while last_endpoints(agent) != want {
        assert!(
            Instant::now() < deadline,
            "endpoints never {want}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects `tries` times at most until one passes (a policy change is applied by
/// the agent's next reload); true if one did.
fn connects_within(tries: usize, from: &netns::PodNs, to: &netns::PodNs, port: u16) -> bool {
    (0..tries).any(|_| tcp_connects(&from.netns, &to.netns, to.ip4(), port).unwrap())
}

/// Flannel's own conflist as its install-cni writes it.
const FLANNEL_CONFLIST: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

const NEW_POD_EGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: new-to-srv
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: client
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector:
        matchLabels:
          app: srv
    ports:
    - port: 80
    - port: 9000
      protocol: UDP
";

#[test]
fn a_new_pod_is_denied_until_its_policy_exists_and_del_forgets_it() {
    netfence_testbed::require_root().unwrap();
    let plugins = plugin_dir();
    let mut bed = bed("nfh3a");
    bed.namespace("x", &[]);
    let srv = bed.pod("x", "srv", &[("app", "srv")], 10, &[]).unwrap();
    let started = Instant::now();
    let peer = bed.pod("x", "peer", &[("app", "peer")], 11, &[]).unwrap();
    let baseline = started.elapsed();
    bed.write_cluster().unwrap();
    let socket = bed.scratch("cni.sock");
    let flows = bed.scratch("flows.json");
    let mut agent = start_agent(&bed, &socket, &flows);
    assert_eq!(last_endpoints(&agent), 4, "two dual-stack pods");
    // From now on the runtime chains netfence-cni after bridge + host-local (through
    // a wrapper that records when each invocation starts and returns).
    let timed = timing_wrapper(&bed, &plugins);
    bed.chain_plugin(&plugin_entry(&socket, true), &timed)
        .unwrap();

    // ADD of a pod the agent's state does not have (the usual order on a cluster).
    let started = Instant::now();
    let new = bed.pod("x", "new", &[("app", "client")], 12, &[]).unwrap();
    let add_took = started.elapsed();
    // ADD returned only after the agent answered: the answer is already logged.
    let log = agent.log();
    let programmed = log
        .lines()
        .find(|l| l.contains("cni: programmed") && l.contains("x/new"))
        .unwrap_or_else(|| panic!("ADD returned before the agent confirmed:\n{log}"));
    assert!(programmed.contains("DefaultDeny"), "{programmed}");
    let agent_ms = programmed
        .split("ms=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("?");
    // The pod's ADD includes the bed's echo to each gateway after CNI (1 s timeout
    // each): denied for the new pod, answered for the others.
    println!(
        "measured: pod creation with netfence-cni {} ms (its gateway echoes are dropped), without {} ms; \
         agent ADD-to-programmed {agent_ms} ms",
        add_took.as_millis(),
        baseline.as_millis()
    );
    let times = std::fs::read_to_string(timed.join("times")).unwrap();
    let add = times
        .lines()
        .find(|l| l.starts_with("ADD "))
        .expect("the wrapper ran for ADD");
    let fields: Vec<u128> = add
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(fields[2], 0, "netfence-cni ADD exit status: {add}");
    println!(
        "measured: netfence-cni ADD start to return {} ms",
        (fields[1] - fields[0]) / 1_000_000
    );
    wait_for_endpoints(&agent, 6);

    // Every packet the new pod sends is dropped by its deny-all endpoint, from the
    // first one on (the first ones are its own: neighbour and gateway traffic right
    // after ADD), and nothing gets in either.
    let new_ips = [new.ip4().to_string(), new.ip6().to_string()];
    let from_new = |l: &Value| new_ips.iter().any(|ip| l["src"]["ip"] == ip.as_str());
    // Its ARP before the ADD programmed its address is spoofed (no address of its
    // own yet); its first IP packet meets the deny-all endpoint.
    let first = flow_line(&flows, from_new);
    assert_eq!(first["verdict"].as_str(), Some("drop"), "{first}");
    let first_ip = flow_line(&flows, |l| from_new(l) && l["reason"] != "arp_spoofed");
    assert_eq!(
        (first_ip["verdict"].as_str(), first_ip["reason"].as_str()),
        (Some("drop"), Some("policy_deny")),
        "{first_ip}"
    );
    // Named from the CNI request (the state does not have the pod yet), and why.
    assert_eq!(
        (
            first_ip["src"]["namespace"].as_str(),
            first_ip["src"]["pod"].as_str(),
            first_ip["why"].as_str()
        ),
        (
            Some("x"),
            Some("new"),
            Some("pod not yet programmed: deny until ready")
        ),
        "{first_ip}"
    );
    assert!(
        !tcp_connects(&new.netns, &srv.netns, srv.ip4(), 80).unwrap(),
        "new → srv:80 before its policy"
    );
    let syn = flow_line(&flows, |l| l["verdict"] == "drop" && l["dst"]["port"] == 80);
    assert_eq!(
        (syn["reason"].as_str(), syn["direction"].as_str()),
        (Some("policy_deny"), Some("egress")),
        "{syn}"
    );
    let before_policy = flow_lines(&flows);
    let sent: Vec<&Value> = before_policy.iter().filter(|l| from_new(l)).collect();
    assert!(
        sent.iter().all(|l| l["verdict"] == "drop"),
        "a packet of the new pod passed: {sent:?}"
    );
    println!(
        "measured: {} flow events from the new pod before its policy, all drops",
        sent.len()
    );
    assert!(
        !tcp_connects(&peer.netns, &new.netns, new.ip4(), 8080).unwrap(),
        "peer → new before its policy"
    );
    let inbound = flow_line(&flows, |l| {
        l["verdict"] == "drop" && l["dst"]["port"] == 8080
    });
    assert_eq!(
        (inbound["reason"].as_str(), inbound["direction"].as_str()),
        (Some("policy_deny"), Some("ingress"))
    );
    // The bed's other pods are untouched.
    assert!(
        tcp_connects(&peer.netns, &srv.netns, srv.ip4(), 80).unwrap(),
        "peer → srv"
    );

    // The pod appears in the manifests with a policy allowing new → srv:80 (egress
    // only): its real endpoint replaces the deny-all one.
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
    // Programmed now: a plain policy drop, isolated by its policy, no "why".
    let by_policy = flow_line(&flows, |l| l["verdict"] == "drop" && l["dst"]["port"] == 81);
    assert!(by_policy.get("why").is_none(), "{by_policy}");
    assert_eq!(
        by_policy["isolated_by"],
        json!(["x/new-to-srv"]),
        "{by_policy}"
    );
    assert!(
        tcp_connects(&peer.netns, &new.netns, new.ip4(), 8080).unwrap(),
        "new's ingress is not isolated"
    );
    assert_eq!(last_endpoints(&agent), 6);

    // DEL of a pending pod the state never had removes its endpoint.
    let generation = agent.generation();
    let tmp = bed.pod("x", "tmp", &[("app", "tmp")], 13, &[]).unwrap();
    agent.wait_for_sync_after(generation).unwrap();
    wait_for_endpoints(&agent, 8);
    drop(tmp); // CNI DEL through the conflist, netfence-cni included
    agent
        .wait_for_line(&["cni: DEL", "x/tmp", "pending=true"])
        .unwrap();
    wait_for_endpoints(&agent, 6);
    // DEL of the pod the state has: the pending entry goes, the endpoint stays (the
    // state still lists the pod, as the API server does until it is deleted).
    drop(new);
    agent
        .wait_for_line(&["cni: DEL", "x/new", "pending=true"])
        .unwrap();
    assert!(
        tcp_connects(&peer.netns, &srv.netns, srv.ip4(), 80).unwrap(),
        "peer → srv after the DELs"
    );
    assert!(agent.stop().unwrap().success());
}

#[test]
fn agent_down_fails_add_closed_and_passes_it_open() {
    netfence_testbed::require_root().unwrap();
    let plugins = plugin_dir();

    // failClosed (the default): no agent listens, ADD fails with a CNI error.
    let mut closed = bed("nfh3b");
    closed.namespace("x", &[]);
    let socket = closed.scratch("cni.sock");
    closed
        .chain_plugin(&plugin_entry(&socket, true), &plugins)
        .unwrap();
    let error = closed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("CNI plugin netfence-cni ADD failed (exit status: 1)"),
        "{text}"
    );
    assert!(
        text.contains("CNI error 11: netfence agent did not confirm ADD for x/a (netfence agent unreachable at "),
        "{text}"
    );
    assert!(text.contains(&socket.display().to_string()), "{text}");

    // failClosed false: ADD passes (a warning on stderr), the pod has its network.
    let mut open = bed("nfh3c");
    open.namespace("x", &[]);
    let socket = open.scratch("cni.sock");
    open.chain_plugin(&plugin_entry(&socket, false), &plugins)
        .unwrap();
    let a = open.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = open.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    assert!(
        tcp_connects(&a.netns, &b.netns, b.ip4(), 80).unwrap(),
        "fail-open pods talk (no agent)"
    );
}

#[test]
fn cni_install_and_uninstall_edit_the_flannel_conflist_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, conf) = (
        dir.path().join("opt/cni/bin"),
        dir.path().join("etc/cni/net.d"),
    );
    std::fs::create_dir_all(&conf).unwrap();
    let flannel = FLANNEL_CONFLIST;
    std::fs::write(conf.join("10-flannel.conflist"), flannel).unwrap();
    let plugin = dir.path().join("netfence-cni");
    std::fs::write(&plugin, b"plugin bytes").unwrap();
    let install = || {
        let out = Process::new(netfence_bin())
            .args(["cni-install", "--bin-dir"])
            .arg(&bin)
            .arg("--conf-dir")
            .arg(&conf)
            .arg("--plugin")
            .arg(&plugin)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = install();
    assert!(
        first.contains("binary installed") && first.contains("now chains netfence-cni last"),
        "{first}"
    );
    let second = install();
    assert!(
        second.contains("already current") && second.contains("already chains netfence-cni"),
        "{second}"
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(conf.join("10-flannel.conflist")).unwrap())
            .unwrap();
    let types: Vec<&str> = written["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["flannel", "portmap", "netfence-cni"]);
    assert_eq!(
        written["plugins"][2]["socketPath"],
        "/run/netfence/cni.sock"
    );
    assert_eq!(written["plugins"][2]["failClosed"], true);
    assert_eq!(
        std::fs::read(bin.join("netfence-cni")).unwrap(),
        b"plugin bytes"
    );

    // What a stopped agent left under its state directory: the last-sync record of
    // its pin directory (in /run/netfence: root only), and beside its socket the
    // pending pods, the lease and the socket file.
    let pins = dir.path().join("no-pins");
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let socket = run_dir.join("cni.sock");
    let leftovers = [
        netfence::cni::persist::path_for(&socket),
        netfence_cni::lease::path_for(&socket),
        socket.clone(),
    ];
    for file in &leftovers {
        std::fs::write(file, b"{}").unwrap();
    }
    let record = netfence::dataplane::last_sync::path_for(&pins);
    let record_written = record
        .parent()
        .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
        && std::fs::write(&record, b"{}").is_ok();
    let uninstall = || {
        let out = Process::new(netfence_bin())
            .args(["uninstall", "--pin-dir"])
            .arg(&pins)
            .arg("--cni-conf-dir")
            .arg(&conf)
            .arg("--cni-bin-dir")
            .arg(&bin)
            .arg("--cni-socket")
            .arg(&socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let removed = uninstall();
    assert!(
        removed.contains("netfence-cni: removed from") && removed.contains("binary removed from"),
        "{removed}"
    );
    for (file, what) in leftovers
        .iter()
        .zip(["the pending pods", "the lease", "the stale socket"])
    {
        assert!(!file.exists(), "{} left", file.display());
        assert!(
            removed.contains(&format!("removed {what} {}", file.display())),
            "{removed}"
        );
    }
    assert!(
        !run_dir.exists(),
        "the emptied state directory goes: {removed}"
    );
    if record_written {
        assert!(!record.exists(), "last-sync record left: {removed}");
        assert!(
            removed.contains(&format!(
                "removed the last-sync record {}",
                record.display()
            )),
            "{removed}"
        );
    } else {
        println!("not root: the last-sync record in /run/netfence was not tried");
    }
    let restored: Value =
        serde_json::from_str(&std::fs::read_to_string(conf.join("10-flannel.conflist")).unwrap())
            .unwrap();
    assert_eq!(restored, serde_json::from_str::<Value>(flannel).unwrap());
    assert!(!bin.join("netfence-cni").exists());
    let again = uninstall();
    assert!(
        again.contains("netfence-cni: in no conflist") && again.contains("binary not present in"),
        "{again}"
    );
}

#[test]
fn daemonset_init_container_installs_the_plugin_for_the_agents_socket() {
    use clap::Parser as _;
    use netfence::cli::{Cli, Command};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let set: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let spec = &set["spec"]["template"]["spec"];
    let init = &spec["initContainers"][0];
    assert_eq!(
        init["image"], spec["containers"][0]["image"],
        "same image as the agent"
    );
    let argv = |c: &Value| -> Vec<String> {
        std::iter::once("netfence".to_owned())
            .chain(
                c["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned()),
            )
            .collect()
    };
    let Command::CniInstall(install) = Cli::try_parse_from(argv(init)).unwrap().command else {
        panic!("the init container does not run cni-install");
    };
    let mut agent_argv = argv(&spec["containers"][0]);
    agent_argv.extend(["--node-name".to_owned(), "n".to_owned()]);
    let Command::Run(run) = Cli::try_parse_from(agent_argv).unwrap().command else {
        panic!("the agent does not run `run`");
    };
    assert_eq!(
        install.socket_path,
        PathBuf::from(&run.cni_socket),
        "the plugin calls the agent's socket"
    );
    assert!(install.fail_closed);
    // The agent keeps the same entry chained in the same host directory.
    use netfence::cni::install::plugin_entry as entry;
    assert_eq!(
        entry(
            Path::new(&run.cni_socket),
            run.cni.timeout_seconds,
            run.cni.fail_closed
        ),
        entry(
            &install.socket_path,
            install.timeout_seconds,
            install.fail_closed
        )
    );
    let keep_dir = run
        .cni
        .conf_dir
        .clone()
        .expect("the agent runs with --cni-conf-dir");
    let agent_mount = |mount: &Path| -> String {
        let mounts = spec["containers"][0]["volumeMounts"].as_array().unwrap();
        let name = mounts
            .iter()
            .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == mount)
            .unwrap()["name"]
            .clone();
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        volume["hostPath"]["path"].as_str().unwrap().to_owned()
    };
    assert_eq!(agent_mount(&keep_dir), "/etc/cni/net.d");
    // The host directories, mounted where the arguments say.
    let host_path = |mount: &Path| -> String {
        let mounts = init["volumeMounts"].as_array().unwrap();
        let name = mounts
            .iter()
            .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == mount)
            .unwrap()["name"]
            .clone();
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        volume["hostPath"]["path"].as_str().unwrap().to_owned()
    };
    assert_eq!(host_path(&install.bin_dir), "/opt/cni/bin");
    assert_eq!(host_path(&install.conf_dir), "/etc/cni/net.d");
    // The agent's socket directory is a host path too (the plugin runs on the host).
    let run_dir = Path::new(&run.cni_socket)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let agent_mounts = spec["containers"][0]["volumeMounts"].as_array().unwrap();
    let run_mount = agent_mounts
        .iter()
        .find(|m| m["mountPath"] == run_dir.as_str())
        .expect("socket dir mounted");
    let run_volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == run_mount["name"])
        .unwrap();
    assert_eq!(run_volume["hostPath"]["path"], run_dir.as_str());
    // No capability: root writes the root-owned host directories as their owner.
    let security = &init["securityContext"];
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert!(security["capabilities"].get("add").is_none());
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
}
