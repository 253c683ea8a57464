//! `/metrics` over HTTP from a running agent: after an allowed and a denied
//! connection, the per-reason packet counters and the per-rule allow counter show
//! them, with their stable names. Needs root (a test node).

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
    bed.node()
        .run(|| {
            let mut stream = TcpStream::connect("127.0.0.1:19896").unwrap();
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
