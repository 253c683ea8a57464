//! Unit tests of the flow log: the JSON shape, naming, and the rate limiter.

use std::sync::Mutex;
use std::time::Duration;

use netfence_common::{DIR_INGRESS, PROTO_TCP, VERDICT_DROP, v4_mapped};

use super::*;

fn context() -> FlowContext {
    let mut context = FlowContext::default();
    context
        .pods
        .insert(IpAddr::from([198, 18, 0, 2]), ("x".into(), "a".into()));
    context
        .pods
        .insert(IpAddr::from([198, 18, 0, 3]), ("prod".into(), "db".into()));
    context.rules.insert(
        77,
        RuleInfo {
            namespace: "prod".into(),
            policy: "db-from-api".into(),
            direction: DIR_INGRESS,
            index: 1,
        },
    );
    context.endpoint_policies.insert(
        9,
        EndpointPolicyInfo {
            ingress: vec!["prod/db-from-api".into(), "prod/deny-all".into()],
            egress: vec![],
        },
    );
    context
}

fn event(verdict: u8, reason: Reason, rule: u32) -> Event {
    Event {
        src: v4_mapped([198, 18, 0, 2]),
        dst: v4_mapped([198, 18, 0, 3]),
        ifindex: 7,
        reason: reason.code(),
        policy: 9,
        rule,
        src_port: 40000,
        dst_port: 3306,
        protocol: PROTO_TCP,
        direction: DIR_INGRESS,
        verdict,
        _pad: 0,
    }
}

#[test]
fn a_policy_drop_is_one_json_object_with_names_and_the_isolating_policies() {
    let line = record(
        &event(VERDICT_DROP, Reason::DropPolicy, 0),
        &context(),
        "T".into(),
        0,
        None,
    );
    assert_eq!(
        serde_json::to_value(&line).unwrap(),
        serde_json::json!({
            "time": "T",
            "verdict": "drop",
            "reason": "policy_deny",
            "direction": "ingress",
            "protocol": "TCP",
            "src": {"ip": "198.18.0.2", "port": 40000, "namespace": "x", "pod": "a"},
            "dst": {"ip": "198.18.0.3", "port": 3306, "namespace": "prod", "pod": "db"},
            "ifindex": 7,
            "isolated_by": ["prod/db-from-api", "prod/deny-all"],
            "suppressed_before": 0
        })
    );
}

#[test]
fn an_audited_flow_and_a_cut_flow_name_the_policies_that_deny_them() {
    let audit = record(
        &event(netfence_common::VERDICT_AUDIT, Reason::AuditPolicy, 0),
        &context(),
        "T".into(),
        0,
        None,
    );
    assert_eq!((audit.verdict, audit.reason), ("audit", "policy_audit"));
    assert_eq!(
        audit.isolated_by,
        vec!["prod/db-from-api".to_owned(), "prod/deny-all".to_owned()]
    );
    let cut = record(
        &event(VERDICT_DROP, Reason::DropPolicyChanged, 0),
        &context(),
        "T".into(),
        0,
        None,
    );
    assert_eq!((cut.verdict, cut.reason), ("drop", "policy_changed_deny"));
    assert_eq!(cut.isolated_by.len(), 2);
}

#[test]
fn an_allowed_flow_names_its_rule_and_unknown_peers_have_no_names() {
    let mut e = event(netfence_common::VERDICT_ALLOW, Reason::AllowPolicy, 77);
    e.src = v4_mapped([203, 0, 113, 9]);
    let json = serde_json::to_value(record(&e, &context(), "T".into(), 3, None)).unwrap();
    assert_eq!(json["verdict"], "allow");
    assert_eq!(json["reason"], "policy_allow");
    assert_eq!(
        json["rule"],
        serde_json::json!({"policy": "prod/db-from-api", "direction": "ingress", "index": 1})
    );
    assert_eq!(
        json["src"],
        serde_json::json!({"ip": "203.0.113.9", "port": 40000})
    );
    assert!(json.get("isolated_by").is_none(), "{json}");
    assert_eq!(json["suppressed_before"], 3);
}

#[test]
fn icmp_has_no_ports() {
    let mut e = event(VERDICT_DROP, Reason::DropSpoofed, 0);
    e.protocol = PROTO_ICMP;
    let json = serde_json::to_value(record(&e, &context(), "T".into(), 0, None)).unwrap();
    assert_eq!(json["protocol"], "ICMP");
    assert!(
        json["src"].get("port").is_none() && json["dst"].get("port").is_none(),
        "{json}"
    );
    assert!(
        json.get("isolated_by").is_none(),
        "only policy drops name policies: {json}"
    );
}

#[test]
fn the_bucket_passes_a_burst_of_rate_then_refills_at_rate() {
    let start = Instant::now();
    let mut bucket = TokenBucket::new(10, start);
    let passed = (0..25).filter(|_| bucket.take(start)).count();
    assert_eq!(passed, 10, "a full bucket holds one second");
    assert!(
        !bucket.take(start + Duration::from_millis(50)),
        "half a token after 50 ms"
    );
    assert!(
        bucket.take(start + Duration::from_millis(100)),
        "one token after 100 ms"
    );
    let later = start + Duration::from_secs(60);
    let passed = (0..25).filter(|_| bucket.take(later)).count();
    assert_eq!(passed, 10, "never more than one second's burst");
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_flood_writes_the_burst_counts_the_rest_and_reports_them_on_the_next_line() {
    let out = Shared::default();
    let metrics = Arc::new(Metrics::new());
    let mut log = FlowLog::to_writer(Box::new(out.clone()), 5, Some(metrics.clone()));
    let context = context();
    let now = Instant::now();
    let drop = event(VERDICT_DROP, Reason::DropPolicy, 0);
    for _ in 0..1000 {
        log.log(&drop, &context, None, now).unwrap();
    }
    assert_eq!(log.suppressed, 995);
    log.log(&drop, &context, None, now + Duration::from_secs(1))
        .unwrap();
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert!(lines[..5].iter().all(|l| l["suppressed_before"] == 0));
    assert_eq!(lines[5]["suppressed_before"], 995);
    let metrics = metrics.encode();
    assert!(
        metrics.contains("netfence_flow_log_suppressed_total 995"),
        "{metrics}"
    );
}

#[test]
fn rfc3339_dates() {
    assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(951_782_400 + 3661, 5), "2000-02-29T01:01:01.005Z");
    assert_eq!(rfc3339(1_700_000_000, 999), "2023-11-14T22:13:20.999Z");
}

#[test]
fn targets_parse() {
    assert_eq!("stdout".parse::<Target>().unwrap(), Target::Stdout);
    assert_eq!(
        "/var/log/f.json".parse::<Target>().unwrap(),
        Target::File("/var/log/f.json".into())
    );
}

#[test]
fn a_drop_of_a_pending_cni_pod_names_it_from_the_cni_request_and_says_why() {
    // The pod is not in the state (so not in the context): the name comes from the
    // CNI request, through the announced endpoint.
    let mut e = event(VERDICT_DROP, Reason::DropPolicy, 0);
    e.dst = v4_mapped([198, 18, 0, 77]);
    let json = serde_json::to_value(record(&e, &context(), "T".into(), 0, Some("x/new"))).unwrap();
    assert_eq!(json["why"], "pod not yet programmed: deny until ready");
    assert_eq!(
        (
            json["dst"]["namespace"].as_str(),
            json["dst"]["pod"].as_str()
        ),
        (Some("x"), Some("new"))
    );
    let plain = serde_json::to_value(record(&e, &context(), "T".into(), 0, None)).unwrap();
    assert!(plain.get("why").is_none(), "{plain}");
    assert!(plain["dst"].get("pod").is_none(), "{plain}");
}
