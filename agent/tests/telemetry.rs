//! `/metrics` over HTTP from a running agent: after an allowed and a denied
//! connection, the per-reason packet counters and the per-rule allow counter show
//! them, with their stable names. The agent's own log: a port scan gives at most
//! `--event-log-lines` drop lines and one summary with the counts; colour only on a
//! terminal; `--log-format json`. Needs root (a test node).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is a test failure"
)]

mod netns;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use netfence_testbed::{NODE_NAME, tcp_connects};
use netns::{Agent, Attach, B_FROM_A, TestBed, abc_pods, bed, netfence_bin};

fn get(bed: &TestBed, path: &str) -> String {
    get_on(bed, 19896, path)
}

fn get_on(bed: &TestBed, port: u16, path: &str) -> String {
    bed.node()
        .run(|| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap()
}

/// The value of the sample line starting with `prefix` (0 when absent).
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn metrics_count_packets_by_reason_and_allows_by_rule() {
    let mut bed = bed();
    let [a, b, c] = abc_pods(&mut bed, B_FROM_A);
    let log = bed.scratch("agent-telemetry.log");
    let _agent = Agent::start_with(
        netfence_bin(),
        bed.node(),
        NODE_NAME,
        &bed.manifests(),
        &[],
        Attach::Auto,
        log,
        &[
            "--detach-on-exit".as_ref(),
            "--health-addr".as_ref(),
            "127.0.0.1:19896".as_ref(),
        ],
    )
    .unwrap();
    assert!(tcp_connects(&a.netns, &b.netns, b.ip4(), 80).unwrap());
    assert!(tcp_connects(&a.netns, &b.netns, b.ip4(), 81).unwrap());
    assert!(!tcp_connects(&c.netns, &b.netns, b.ip4(), 80).unwrap());

    // Kernel counters are read every second.
    let rule = "netfence_rule_allows_total{namespace=\"x\",policy=\"b-from-a\",direction=\"ingress\",rule=\"0\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    let response = loop {
        let response = get(&bed, "/metrics");
        if sample(&response, rule) >= 2.0 || Instant::now() > deadline {
            break response;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("application/openmetrics-text"),
        "{response}"
    );
    assert_eq!(
        sample(&response, rule),
        2.0,
        "two allowed new flows by rule 0: {response}"
    );
    // The denied SYN and its retransmissions.
    assert!(
        sample(&response, "netfence_packets_total{reason=\"policy_deny\"}") >= 1.0,
        "{response}"
    );
    assert!(
        sample(&response, "netfence_packets_total{reason=\"policy_allow\"}") >= 2.0,
        "{response}"
    );
    assert_eq!(
        sample(&response, "netfence_map_entries{map=\"endpoints\"}"),
        6.0,
        "3 pods x 2 families"
    );
    assert!(
        sample(&response, "netfence_sync_duration_seconds_count") >= 1.0,
        "{response}"
    );
    assert!(
        sample(&response, "netfence_compile_duration_seconds_count") >= 1.0,
        "{response}"
    );
    assert_eq!(sample(&response, "netfence_invalid_objects"), 0.0);
    assert!(get(&bed, "/readyz").starts_with("HTTP/1.1 200 OK"));

    // Conntrack is counted every 5 s: every new flow leaves an entry at each veth it
    // passed: the two allowed connections at a's and at b's, the denied one at c's
    // (its SYN left c; b's ingress dropped it; its retransmissions share the entry).
    let conntrack = "netfence_map_entries{map=\"conntrack\"}";
    let deadline = Instant::now() + Duration::from_secs(12);
    let (counted, text) = loop {
        let text = get(&bed, "/metrics");
        let counted = sample(&text, conntrack);
        if counted >= 5.0 || Instant::now() > deadline {
            break (counted, text);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(counted, 5.0, "2 at a's veth, 2 at b's, 1 at c's");
    // The same walk counts them per local pod (the pod side of each entry).
    for (pod, entries) in [("a", 2.0), ("b", 2.0), ("c", 1.0)] {
        let series = format!("netfence_conntrack_entries{{namespace=\"x\",pod=\"{pod}\"}}");
        assert_eq!(sample(&text, &series), entries, "{series} in:\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            "netfence_conntrack_entries{namespace=\"\",pod=\"unknown\"}"
        ),
        0.0,
        "every entry belongs to a local pod"
    );
    assert_eq!(
        sample(
            &get(&bed, "/metrics"),
            "netfence_map_capacity{map=\"conntrack\"}"
        ),
        f64::from(netfence_common::MAX_CONNTRACK)
    );
}

#[test]
fn a_port_scan_gives_a_few_drop_lines_and_one_summary_with_the_counts() {
    let mut bed = bed();
    let [_a, b, c] = abc_pods(&mut bed, B_FROM_A);
    let log = bed.scratch("agent-scan.log");
    let agent = Agent::start_with(
        netfence_bin(),
        bed.node(),
        NODE_NAME,
        &bed.manifests(),
        &[],
        Attach::Auto,
        log,
        &[
            "--detach-on-exit".as_ref(),
            "--event-log-lines".as_ref(),
            "5".as_ref(),
            "--health-addr".as_ref(),
            "127.0.0.1:19897".as_ref(),
        ],
    )
    .unwrap();
    // c scans b: one datagram to each of 300 UDP ports, each a new denied flow.
    let target = b.ip4();
    c.netns
        .run(|| {
            let socket = std::net::UdpSocket::bind((c.ip4(), 0)).unwrap();
            for port in 20_000..20_300u16 {
                socket.send_to(b"scan", (target, port)).unwrap();
            }
        })
        .unwrap();
    let group = format!(
        "x drop ingress UDP {} (x/c) -> {} (x/b) reason=policy_deny",
        c.ip4(),
        b.ip4()
    );
    let deadline = Instant::now() + Duration::from_secs(25);
    let summary = loop {
        let text = agent.log();
        if let Some(line) = text.lines().find(|l| l.contains(&group)) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no summary:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = agent.log();
    let single = text
        .lines()
        .filter(|l| l.contains("drop ingress UDP") && l.contains("ifindex="))
        .count();
    assert!(single <= 5, "{single} single lines:\n{text}");
    assert!(
        summary.contains("flow events in the last 10 s not logged one by one"),
        "{summary}"
    );
    let held: u64 = summary
        .split(&group)
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no count before the group: {summary}"));
    assert!(
        held + single as u64 >= 300,
        "every datagram counted: {held} held + {single} shown: {summary}"
    );
    // The counts are in the metrics too.
    let metrics = get_on(&bed, 19897, "/metrics");
    assert!(
        sample(&metrics, "netfence_packets_total{reason=\"policy_deny\"}") >= 300.0,
        "{metrics}"
    );
}

/// `netfence run` under `setpriv` without CAP_NET_ADMIN: it logs the runtime line,
/// then exits 1 (nothing is loaded). `wrap` runs it through `script` (a terminal).
fn failing_run(extra: &[&str], terminal: bool) -> String {
    let mut argv = vec![
        "setpriv".to_owned(),
        "--bounding-set=-net_admin".to_owned(),
        netfence_bin().display().to_string(),
    ];
    argv.extend(extra.iter().map(|a| (*a).to_owned()));
    argv.extend(
        [
            "run",
            "--node-name",
            "n",
            "--manifests",
            "/nonexistent/nft-log",
            "--cni-socket",
            "",
        ]
        .map(str::to_owned),
    );
    let output = if terminal {
        let line = argv
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ");
        std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    } else {
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    assert!(
        text.contains("missing capabilities: CAP_NET_ADMIN"),
        "{text}"
    );
    text
}

#[test]
fn logs_are_coloured_only_on_a_terminal_and_json_when_asked() {
    netfence_testbed::require_root().unwrap();
    let piped = failing_run(&[], false);
    assert!(piped.contains("runtime: effective capabilities"), "{piped}");
    assert!(!piped.contains('\u{1b}'), "ANSI codes in a pipe: {piped:?}");
    let terminal = failing_run(&[], true);
    assert!(
        terminal.contains("\u{1b}["),
        "no colour on a terminal: {terminal:?}"
    );
    let json = failing_run(&["--log-format", "json"], false);
    let line = json
        .lines()
        .find(|l| l.contains("runtime: effective capabilities"))
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(value["level"], "INFO");
    assert_eq!(
        value["fields"]["message"],
        "runtime: effective capabilities and seccomp mode (/proc/self/status)"
    );
    assert!(value["fields"]["cap_eff"].is_string(), "{value}");
}
