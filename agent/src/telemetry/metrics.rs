//! Prometheus metrics (`/metrics`, OpenMetrics text through `prometheus-client`).
//! Names are stable and carry their unit; labels are low-cardinality (reason, map,
//! policy rule, and for conntrack occupancy the node's own pods), never per flow.
//!
//! Kernel counters (COUNTERS per reason, RULE_HITS per rule) are cumulative in pinned
//! maps; the run loop reads them every tick and adds the increase to the Prometheus
//! counters (a decrease — new maps after a layout change — restarts the baseline).
//! Conntrack entries are counted by a walk of the LRU map (O(entries) syscalls), so
//! not on scrape: the run loop walks it every few seconds and sets the total
//! (`netfence_map_entries{map="conntrack"}`) and the count per local pod
//! (`netfence_conntrack_entries{namespace,pod}`: one series per pod of this node that
//! has entries, plus `{namespace="",pod="unknown"}` for entries of no local endpoint).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::image::{Endpoint, RuleInfo};

type Labels = Vec<(&'static str, String)>;

/// Every metric the agent exports, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    packets: Family<Labels, Counter>,
    policy_denials: Family<Labels, Counter>,
    rule_allows: Family<Labels, Counter>,
    map_entries: Family<Labels, Gauge>,
    conntrack_entries: Family<Labels, Gauge>,
    compile: Histogram,
    sync: Histogram,
    sync_failed_writes: Counter,
    invalid_objects: Gauge,
    syncs: Counter,
    flow_log_suppressed: Counter,
    source_errors: Counter,
    /// Last kernel values seen, to turn cumulative readings into increments.
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    reasons: BTreeMap<u32, u64>,
    rules: BTreeMap<u32, u64>,
    /// The label sets of `conntrack_entries` set last (pods gone are removed).
    conntrack_pods: BTreeSet<Labels>,
}

/// The `pod` label of conntrack entries whose local address is no local endpoint
/// (with an empty `namespace`, which no Kubernetes namespace has).
pub const UNKNOWN_POD: &str = "unknown";

/// Conntrack entries per (namespace, pod) of the local endpoints, from entries per
/// local address; addresses that are no endpoint count under `("", UNKNOWN_POD)`.
pub fn conntrack_by_pod(
    by_local: &BTreeMap<IpAddr, usize>,
    endpoints: &BTreeMap<IpAddr, Endpoint>,
) -> BTreeMap<(String, String), usize> {
    let mut out: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (addr, entries) in by_local {
        let key = endpoints.get(addr).map_or_else(
            || (String::new(), UNKNOWN_POD.to_owned()),
            |e| (e.namespace.clone(), e.pod.clone()),
        );
        *out.entry(key).or_default() += entries;
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("netfence");
        let packets = Family::<Labels, Counter>::default();
        registry.register(
            "packets",
            "Packets seen by the TC programs, by verdict reason",
            packets.clone(),
        );
        let policy_denials = Family::<Labels, Counter>::default();
        registry.register(
            "policy_denials",
            "Flows policy denies, by what happened to them: verdict=\"drop\" (enforced: new flows, and with --existing-flows=cut established flows a policy change denies) or verdict=\"audit\" (audit mode: passed)",
            policy_denials.clone(),
        );
        let rule_allows = Family::<Labels, Counter>::default();
        registry.register(
            "rule_allows",
            "New flows allowed, by policy rule (namespace, policy, direction, rule index)",
            rule_allows.clone(),
        );
        let map_entries = Family::<Labels, Gauge>::default();
        registry.register(
            "map_entries",
            "Entries the agent keeps in each map",
            map_entries.clone(),
        );
        let conntrack_entries = Family::<Labels, Gauge>::default();
        registry.register(
            "conntrack_entries",
            "Conntrack entries per local pod (the pod side of the flow at its veth); namespace=\"\",pod=\"unknown\": entries of no local endpoint",
            conntrack_entries.clone(),
        );
        let map_capacity = Family::<Labels, Gauge>::default();
        registry.register(
            "map_capacity",
            "Capacity of each map (entries)",
            map_capacity.clone(),
        );
        for (map, capacity) in [
            ("endpoints", netfence_common::MAX_ENDPOINTS),
            ("ports", netfence_common::MAX_PORTS),
            ("identities", netfence_common::MAX_IDENTITY_PREFIXES),
            ("policy", netfence_common::MAX_POLICY_ENTRIES),
            ("rules", netfence_common::MAX_RULES),
            ("conntrack", netfence_common::MAX_CONNTRACK),
        ] {
            map_capacity
                .get_or_create(&vec![("map", map.to_owned())])
                .set(i64::from(capacity));
        }
        let compile = Histogram::new(exponential_buckets(0.0005, 4.0, 10));
        registry.register_with_unit(
            "compile_duration",
            "Time to compile the cluster state into map contents",
            Unit::Seconds,
            compile.clone(),
        );
        let sync = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        registry.register_with_unit(
            "sync_duration",
            "Time to write the difference into the BPF maps",
            Unit::Seconds,
            sync.clone(),
        );
        let sync_failed_writes = Counter::default();
        registry.register(
            "sync_failed_writes",
            "Map writes that failed (map full or kernel error); retried on the next sync",
            sync_failed_writes.clone(),
        );
        let syncs = Counter::default();
        registry.register("syncs", "Syncs of the maps", syncs.clone());
        let invalid_objects = Gauge::default();
        registry.register(
            "invalid_objects",
            "Objects of the source skipped as invalid in the current state",
            invalid_objects.clone(),
        );
        let source_errors = Counter::default();
        registry.register(
            "source_errors",
            "Errors of the source's watches (each retried with backoff)",
            source_errors.clone(),
        );
        let flow_log_suppressed = Counter::default();
        registry.register(
            "flow_log_suppressed",
            "Flow log events dropped by the rate limit (--flow-log-rate)",
            flow_log_suppressed.clone(),
        );
        Self {
            registry,
            packets,
            policy_denials,
            rule_allows,
            map_entries,
            conntrack_entries,
            compile,
            sync,
            sync_failed_writes,
            invalid_objects,
            syncs,
            flow_log_suppressed,
            source_errors,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn observe_compile(&self, took: Duration) {
        self.compile.observe(took.as_secs_f64());
    }

    pub fn observe_sync(&self, took: Duration, failed_writes: usize) {
        self.sync.observe(took.as_secs_f64());
        self.syncs.inc();
        self.sync_failed_writes
            .inc_by(u64::try_from(failed_writes).unwrap_or(u64::MAX));
    }

    /// Raises the source-error counter to the source's cumulative `total`.
    pub fn set_source_errors(&self, total: u64) {
        let seen = self.source_errors.get();
        if total > seen {
            self.source_errors.inc_by(total - seen);
        }
    }

    pub fn add_flow_log_suppressed(&self, events: u64) {
        self.flow_log_suppressed.inc_by(events);
    }

    pub fn set_invalid_objects(&self, count: usize) {
        self.invalid_objects
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Entries per map (`endpoints`, `ports`, `identities`, `policy`, `rules`,
    /// `conntrack`).
    pub fn set_map_entries(&self, map: &'static str, entries: usize) {
        self.map_entries
            .get_or_create(&vec![("map", map.to_owned())])
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Sets the conntrack entries per local pod ([`conntrack_by_pod`]) and removes
    /// the series of pods that have none any more.
    pub fn set_conntrack_by_pod(&self, by_pod: &BTreeMap<(String, String), usize>) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let mut now = BTreeSet::new();
        for ((namespace, pod), entries) in by_pod {
            let labels = vec![("namespace", namespace.clone()), ("pod", pod.clone())];
            self.conntrack_entries
                .get_or_create(&labels)
                .set(i64::try_from(*entries).unwrap_or(i64::MAX));
            now.insert(labels);
        }
        for stale in seen.conntrack_pods.difference(&now) {
            self.conntrack_entries.remove(stale);
        }
        seen.conntrack_pods = now;
    }

    /// Cumulative kernel counters per reason code.
    pub fn update_packets(&self, counters: &[(u32, u64)]) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        for (code, total) in counters {
            let Some(reason) = netfence_common::Reason::from_code(*code) else {
                continue;
            };
            let before = seen.reasons.insert(*code, *total).unwrap_or(0);
            let increase = if *total >= before {
                total - before
            } else {
                *total
            };
            self.packets
                .get_or_create(&vec![("reason", reason.name().to_owned())])
                .inc_by(increase);
            let denial = match reason {
                netfence_common::Reason::DropPolicy
                | netfence_common::Reason::DropPolicyChanged => Some("drop"),
                netfence_common::Reason::AuditPolicy => Some("audit"),
                _ => None,
            };
            if let Some(verdict) = denial {
                self.policy_denials
                    .get_or_create(&vec![("verdict", verdict.to_owned())])
                    .inc_by(increase);
            }
        }
    }

    /// Cumulative allow hits per rule id, labelled through the image's rule table.
    pub fn update_rules(&self, hits: &[(u32, u64)], rules: &BTreeMap<u32, RuleInfo>) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        for (rule, total) in hits {
            let Some(info) = rules.get(rule) else {
                continue;
            };
            let before = seen.rules.insert(*rule, *total).unwrap_or(0);
            let increase = if *total >= before {
                total - before
            } else {
                *total
            };
            let direction = if info.direction == netfence_common::DIR_EGRESS {
                "egress"
            } else {
                "ingress"
            };
            self.rule_allows
                .get_or_create(&vec![
                    ("namespace", info.namespace.clone()),
                    ("policy", info.policy.clone()),
                    ("direction", direction.to_owned()),
                    ("rule", info.index.to_string()),
                ])
                .inc_by(increase);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_errors_follow_the_source_total() {
        let metrics = Metrics::new();
        metrics.set_source_errors(3);
        metrics.set_source_errors(3);
        metrics.set_source_errors(5);
        assert!(
            metrics.encode().contains("netfence_source_errors_total 5"),
            "{}",
            metrics.encode()
        );
    }

    #[test]
    fn audited_and_enforced_denials_are_told_apart() {
        use netfence_common::Reason;
        let metrics = Metrics::new();
        metrics.update_packets(&[
            (Reason::DropPolicy.code(), 3),
            (Reason::DropPolicyChanged.code(), 2),
            (Reason::AuditPolicy.code(), 4),
            (Reason::AllowPolicy.code(), 9),
        ]);
        let text = metrics.encode();
        for line in [
            "netfence_policy_denials_total{verdict=\"drop\"} 5",
            "netfence_policy_denials_total{verdict=\"audit\"} 4",
            "netfence_packets_total{reason=\"policy_audit\"} 4",
            "netfence_packets_total{reason=\"policy_changed_deny\"} 2",
            "netfence_packets_total{reason=\"policy_deny\"} 3",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn kernel_totals_become_increments_with_stable_names() {
        let metrics = Metrics::new();
        let allow = netfence_common::Reason::ALL[0];
        metrics.update_packets(&[(allow.code(), 5)]);
        metrics.update_packets(&[(allow.code(), 8)]);
        let rules = BTreeMap::from([(
            7,
            RuleInfo {
                namespace: "x".into(),
                policy: "p".into(),
                direction: netfence_common::DIR_INGRESS,
                index: 0,
            },
        )]);
        metrics.update_rules(&[(7, 3)], &rules);
        metrics.update_rules(&[(7, 4), (9, 100)], &rules);
        metrics.observe_sync(Duration::from_millis(2), 1);
        metrics.set_map_entries("endpoints", 6);
        let text = metrics.encode();
        let line = format!("netfence_packets_total{{reason=\"{}\"}} 8", allow.name());
        assert!(text.contains(&line), "{line} in:\n{text}");
        assert!(
            text.contains("netfence_rule_allows_total{namespace=\"x\",policy=\"p\",direction=\"ingress\",rule=\"0\"} 4"),
            "{text}"
        );
        assert!(
            !text.contains("rule=\"9\""),
            "rules unknown to the image are not exported"
        );
        assert!(
            text.contains("netfence_sync_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("netfence_sync_failed_writes_total 1"),
            "{text}"
        );
        assert!(
            text.contains("netfence_map_entries{map=\"endpoints\"} 6"),
            "{text}"
        );
        assert!(
            text.contains("netfence_map_capacity{map=\"conntrack\"} 262144"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE netfence_compile_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("netfence_map_capacity{map=\"ports\"} 16384"),
            "{text}"
        );
    }

    #[test]
    fn conntrack_entries_are_counted_per_local_pod_and_gone_pods_disappear() {
        let endpoint = |namespace: &str, pod: &str| crate::cni::pending::deny_all(namespace, pod);
        let ip = |text: &str| -> IpAddr { text.parse().expect("an address") };
        let endpoints = BTreeMap::from([
            (ip("198.18.0.2"), endpoint("x", "a")),
            (ip("fd00::2"), endpoint("x", "a")),
            (ip("198.18.0.3"), endpoint("y", "b")),
        ]);
        let by_local = BTreeMap::from([
            (ip("198.18.0.2"), 3),
            (ip("fd00::2"), 2),
            (ip("198.18.0.3"), 1),
            (ip("198.18.9.9"), 4),
            (ip("fd00::99"), 1),
        ]);
        let by_pod = conntrack_by_pod(&by_local, &endpoints);
        assert_eq!(
            by_pod,
            BTreeMap::from([
                (("x".to_owned(), "a".to_owned()), 5),
                (("y".to_owned(), "b".to_owned()), 1),
                ((String::new(), UNKNOWN_POD.to_owned()), 5),
            ]),
            "a dual-stack pod's addresses add up; what is no local endpoint is unknown"
        );
        let metrics = Metrics::new();
        metrics.set_conntrack_by_pod(&by_pod);
        let text = metrics.encode();
        for line in [
            "netfence_conntrack_entries{namespace=\"x\",pod=\"a\"} 5",
            "netfence_conntrack_entries{namespace=\"y\",pod=\"b\"} 1",
            "netfence_conntrack_entries{namespace=\"\",pod=\"unknown\"} 5",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        // b's entries are gone: its series goes, a's is updated.
        metrics.set_conntrack_by_pod(&BTreeMap::from([(("x".to_owned(), "a".to_owned()), 1)]));
        let text = metrics.encode();
        assert!(
            text.contains("netfence_conntrack_entries{namespace=\"x\",pod=\"a\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("pod=\"b\"") && !text.contains("{namespace=\"\",pod=\"unknown\"}"),
            "{text}"
        );
    }
}
