//! Packet tests: real TCP, UDP and ICMP between pod namespaces on a test node, with the
//! real `netfence run` enforcing the manifests. Each test builds its own node (names
//! `nft<pid>x<n>-*`, so tests run in parallel) and asserts every verdict it expects.
//! They need root (namespaces, BPF); without it they fail with a message saying so.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is a test failure"
)]

mod netns;

use netns::{ALLOW, Attach, DENY, TestBed, Verdicts, bed, start};

/// Namespaces `x` (team=x) and `y` (team=y).
fn two_namespaces(bed: &mut TestBed) {
    bed.namespace("x", &[("team", "x")]);
    bed.namespace("y", &[("team", "y")]);
}

fn policy(bed: &TestBed, file: &str, yaml: &str) {
    bed.write_manifest(file, yaml).unwrap();
}

/// A policy isolating `app=<app>` pods of namespace x for ingress with no rule.
fn deny_ingress(app: &str) -> String {
    netns::deny_all(app, "[Ingress]")
}

#[test]
fn no_policy_allows_tcp_udp_and_icmp() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("y", "b", &[("app", "b")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    let agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&a, &b, 80, ALLOW)
        .tcp(&b, &a, 443, ALLOW)
        .udp(&a, &b, 53, ALLOW)
        .ping(&a, &b, ALLOW)
        .tcp6(&a, &b, 80, ALLOW)
        .ping6(&b, &a, ALLOW)
        .check();
    let log = agent.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("drop") && l.contains("198.18.0.")),
        "no packet may be dropped:\n{log}"
    );
}

#[test]
fn default_deny_ingress_drops_new_flows_to_the_pod_only() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    policy(&bed, "deny.yaml", &deny_ingress("b"));
    let mut agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&a, &b, 80, DENY)
        .udp(&a, &b, 53, DENY)
        .ping(&a, &b, DENY)
        // b's egress is not isolated, and the replies to b pass.
        .tcp(&b, &a, 80, ALLOW)
        .udp(&b, &a, 53, ALLOW)
        .check();
    let line = agent.wait_for_line(&["drop", "198.18.0.11"]).unwrap();
    assert!(
        line.contains("198.18.0.10"),
        "the drop line names the source: {line}"
    );
}

#[test]
fn ingress_from_pod_selector() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let c = bed.pod("x", "c", &[("app", "c")], 12, &[]).unwrap();
    let ya = bed.pod("y", "ya", &[("app", "a")], 13, &[]).unwrap();
    bed.write_cluster().unwrap();
    policy(
        &bed,
        "from-a.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-from-a
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: a
",
    );
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&a, &b, 80, ALLOW)
        .udp(&a, &b, 5353, ALLOW)
        .ping(&a, &b, ALLOW)
        .tcp(&c, &b, 80, DENY)
        // A podSelector alone means the policy's own namespace: y/ya is not selected.
        .tcp(&ya, &b, 80, DENY)
        .check();
}

#[test]
fn ingress_from_namespace_selector() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let c = bed.pod("y", "c", &[("app", "c")], 12, &[]).unwrap();
    bed.write_cluster().unwrap();
    policy(
        &bed,
        "from-y.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-from-team-y
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  policyTypes:
  - Ingress
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - key: team
          operator: In
          values: [y]
",
    );
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&c, &b, 80, ALLOW)
        .tcp(&a, &b, 80, DENY)
        .check();
}

#[test]
fn peers_and_within_one_element_or_across_elements() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let and = bed.pod("x", "and", &[("app", "and")], 20, &[]).unwrap();
    let or = bed.pod("x", "or", &[("app", "or")], 21, &[]).unwrap();
    let x_client = bed.pod("x", "xcl", &[("role", "client")], 10, &[]).unwrap();
    let x_other = bed.pod("x", "xot", &[("role", "other")], 11, &[]).unwrap();
    let y_client = bed.pod("y", "ycl", &[("role", "client")], 12, &[]).unwrap();
    let y_other = bed.pod("y", "yot", &[("role", "other")], 13, &[]).unwrap();
    bed.write_cluster().unwrap();
    policy(
        &bed,
        "and-or.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: and
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: and
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          team: y
      podSelector:
        matchLabels:
          role: client
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: or
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: or
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          team: y
    - podSelector:
        matchLabels:
          role: client
",
    );
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&y_client, &and, 80, ALLOW)
        .tcp(&y_other, &and, 80, DENY)
        .tcp(&x_client, &and, 80, DENY)
        .tcp(&x_other, &and, 80, DENY)
        .tcp(&y_client, &or, 80, ALLOW)
        .tcp(&y_other, &or, 80, ALLOW)
        .tcp(&x_client, &or, 80, ALLOW)
        .tcp(&x_other, &or, 80, DENY)
        .check();
}

#[test]
fn ingress_from_ip_block_with_except() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let inside = bed.external("in", 100).unwrap();
    let excepted = bed.external("ex", 101).unwrap();
    bed.write_cluster().unwrap();
    policy(
        &bed,
        "ipblock.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-from-block
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  ingress:
  - from:
    - ipBlock:
        cidr: 198.19.1.96/27
        except:
        - 198.19.1.101/32
",
    );
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&inside, &b, 80, ALLOW)
        .udp(&inside, &b, 53, ALLOW)
        .tcp(&excepted, &b, 80, DENY)
        // Pod a (198.18.0.10) is outside the block.
        .tcp(&a, &b, 80, DENY)
        .check();
}

#[test]
fn egress_deny_drops_new_flows_from_the_pod_only() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    policy(
        &bed,
        "egress.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-no-egress
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: a
  policyTypes:
  - Egress
",
    );
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&a, &b, 80, DENY)
        .udp(&a, &b, 53, DENY)
        .ping(&a, &b, DENY)
        .tcp6(&a, &b, 80, DENY)
        // a's ingress is open, and its replies leave despite the egress policy.
        .tcp(&b, &a, 80, ALLOW)
        .udp(&b, &a, 53, ALLOW)
        .check();
}

#[test]
fn port_specific_allow() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed
        .pod("x", "b", &[("app", "b")], 11, &[("http", 8080)])
        .unwrap();
    bed.write_cluster().unwrap();
    policy(
        &bed,
        "ports.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-http
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  ingress:
  - from:
    - podSelector: {}
    ports:
    - port: 8080
    - protocol: UDP
      port: 5353
",
    );
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&a, &b, 8080, ALLOW)
        .tcp(&a, &b, 8081, DENY)
        .udp(&a, &b, 5353, ALLOW)
        // The first port defaults to TCP: UDP 8080 is not allowed.
        .udp(&a, &b, 8080, DENY)
        // A rule with ports does not allow ICMP.
        .ping(&a, &b, DENY)
        .check();
}

#[test]
fn replies_pass_while_the_reverse_direction_is_denied() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    // a is isolated for ingress only: its own connections' replies must still reach it.
    policy(&bed, "deny-a.yaml", &deny_ingress("a"));
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&a, &b, 80, ALLOW)
        .udp(&a, &b, 53, ALLOW)
        .ping(&a, &b, ALLOW)
        .tcp(&b, &a, 80, DENY)
        .udp(&b, &a, 53, DENY)
        .ping(&b, &a, DENY)
        .check();
}

#[test]
fn policy_edited_while_running_takes_effect() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    let mut agent = start(&bed, Attach::Auto);
    Verdicts::new().tcp(&a, &b, 80, ALLOW).check();

    let generation = agent.generation();
    policy(&bed, "b.yaml", &deny_ingress("b"));
    let generation = agent.wait_for_sync_after(generation).unwrap();
    Verdicts::new().tcp(&a, &b, 80, DENY).check();

    let allow_a = deny_ingress("b")
        + "  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: a\n";
    policy(&bed, "b.yaml", &allow_a);
    let generation = agent.wait_for_sync_after(generation).unwrap();
    Verdicts::new()
        .tcp(&a, &b, 80, ALLOW)
        .tcp(&b, &a, 80, ALLOW)
        .check();

    bed.remove_manifest("b.yaml").unwrap();
    agent.wait_for_sync_after(generation).unwrap();
    Verdicts::new().udp(&a, &b, 53, ALLOW).check();
}

#[test]
fn malformed_manifest_is_reported_and_the_last_good_enforcement_stays() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let c = bed.pod("x", "c", &[("app", "c")], 12, &[]).unwrap();
    bed.write_cluster().unwrap();
    let allow_a = deny_ingress("b")
        + "  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: a\n";
    policy(&bed, "b.yaml", &allow_a);
    let mut agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&a, &b, 80, ALLOW)
        .tcp(&c, &b, 80, DENY)
        .check();

    policy(
        &bed,
        "broken.yaml",
        "kind: NetworkPolicy\nmetadata: {name: [unclosed\n",
    );
    agent.wait_for_line(&["broken.yaml"]).unwrap();
    policy(
        &bed,
        "invalid.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: broken-block
  namespace: x
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock:
        cidr: 198.18.0.300/24
",
    );
    let line = agent.wait_for_line(&["invalid.yaml"]).unwrap();
    assert!(
        line.contains("broken-block") && line.contains("cidr") && line.contains("198.18.0.300/24"),
        "the error names the object, the field and the value: {line}"
    );
    assert_eq!(
        agent.log().matches("panicked").count(),
        0,
        "the agent must not panic"
    );
    // The good policy is still enforced, the bad one (which would isolate a and c) is not.
    Verdicts::new()
        .tcp(&a, &b, 80, ALLOW)
        .tcp(&c, &b, 80, DENY)
        .tcp(&b, &c, 80, ALLOW)
        .check();
}

#[test]
fn spoofed_source_addresses_are_dropped() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let c = bed.pod("x", "c", &[("app", "c")], 12, &[]).unwrap();
    bed.write_cluster().unwrap();
    // b's policy admits the whole subnet: only anti-spoofing can drop a's forgeries.
    policy(
        &bed,
        "b.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-from-subnet
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  ingress:
  - from:
    - ipBlock:
        cidr: 198.18.0.0/24
",
    );
    let _agent = start(&bed, Attach::Auto);
    // An address in no manifest, and pod c's address, both put on a's own eth0.
    a.netns
        .ip(&["addr", "add", "198.18.0.99/32", "dev", "eth0"])
        .unwrap();
    a.netns
        .ip(&["addr", "add", "198.18.0.12/32", "dev", "eth0"])
        .unwrap();
    // Give the agent time to re-read interface addresses (it refreshes every second):
    // what a pod configures on itself must not make a forged address its own.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let udp_from = |from: &netns::PodNs, source: &str| {
        let source = source.parse().unwrap();
        netfence_testbed::udp_from_address(&from.netns, source, &b.netns, b.ip4(), 53)
            .unwrap()
            .request_arrived
    };
    Verdicts::new()
        .observed(
            "UDP a → b from a's own 198.18.0.10",
            ALLOW,
            udp_from(&a, "198.18.0.10"),
        )
        .observed(
            "UDP a → b from 198.18.0.99 (nobody's)",
            DENY,
            udp_from(&a, "198.18.0.99"),
        )
        .observed(
            "UDP a → b from 198.18.0.12 (c's)",
            DENY,
            udp_from(&a, "198.18.0.12"),
        )
        .observed(
            "UDP c → b from c's own 198.18.0.12",
            ALLOW,
            udp_from(&c, "198.18.0.12"),
        )
        .check();
}

#[test]
fn ipv6_allow_and_deny() {
    let mut bed = bed();
    two_namespaces(&mut bed);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let c = bed.pod("x", "c", &[("app", "c")], 12, &[]).unwrap();
    bed.write_cluster().unwrap();
    let allow_a = deny_ingress("b")
        + "  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: a\n";
    policy(&bed, "b.yaml", &allow_a);
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp6(&a, &b, 80, ALLOW)
        .ping6(&a, &b, ALLOW)
        .tcp6(&c, &b, 80, DENY)
        .ping6(&c, &b, DENY)
        .check();
}

#[test]
fn tcx_and_clsact_enforce_and_detach_on_sigterm() {
    for attach in [Attach::Tcx, Attach::Clsact] {
        let mut bed = bed();
        two_namespaces(&mut bed);
        let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
        let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
        bed.write_cluster().unwrap();
        policy(&bed, "deny.yaml", &deny_ingress("b"));
        let agent = start(&bed, attach);
        if attach == Attach::Clsact {
            for direction in ["ingress", "egress"] {
                let filters = bed
                    .node()
                    .command("tc")
                    .args(["filter", "show", "dev", &b.host_if, direction])
                    .output()
                    .unwrap();
                let filters = String::from_utf8_lossy(&filters.stdout);
                assert!(
                    filters.contains("direct-action"),
                    "{attach:?}: no TC filter on {} {direction}: {filters}",
                    b.host_if
                );
            }
        }
        Verdicts::new()
            .tcp(&a, &b, 80, DENY)
            .tcp(&b, &a, 80, ALLOW)
            .check();
        let status = agent.stop().unwrap();
        assert!(
            status.success(),
            "{attach:?}: netfence exits 0 on SIGTERM, got {status}"
        );
        // Detached: nothing is enforced any more.
        Verdicts::new().tcp(&a, &b, 80, ALLOW).check();
    }
}

/// The probes themselves, without an agent: open traffic is seen as allowed, and
/// traffic to an address nobody holds (or that is blackholed) is seen as denied.
#[test]
fn harness_probes_report_both_verdicts() {
    let mut bed = bed();
    let a = bed.pod("x", "a", &[], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[], 11, &[]).unwrap();
    Verdicts::new()
        .tcp(&a, &b, 80, ALLOW)
        .udp(&a, &b, 53, ALLOW)
        .ping(&a, &b, ALLOW)
        .tcp6(&a, &b, 80, ALLOW)
        .ping6(&a, &b, ALLOW)
        .check();
    for rule in [["ip", "-4"], ["ip", "-6"]] {
        b.netns
            .command(rule[0])
            .args([
                rule[1],
                "route",
                "add",
                "blackhole",
                "default",
                "table",
                "100",
            ])
            .status()
            .unwrap();
    }
    // Replies from b go nowhere: b answers through table 100 for everything.
    b.netns
        .ip(&["rule", "add", "from", "all", "lookup", "100", "pref", "10"])
        .unwrap();
    b.netns
        .ip(&[
            "-6", "rule", "add", "from", "all", "lookup", "100", "pref", "10",
        ])
        .unwrap();
    let udp = netfence_testbed::udp_exchange(&a.netns, &b.netns, b.ip4(), 53).unwrap();
    Verdicts::new()
        .tcp(&a, &b, 80, DENY)
        .ping(&a, &b, DENY)
        .tcp6(&a, &b, 80, DENY)
        .observed("UDP a → b request", ALLOW, udp.request_arrived)
        .observed("UDP a → b reply", DENY, udp.reply_arrived)
        .check();
}
