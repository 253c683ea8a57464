//! Packet tests of the agent following a changing node: a pod whose veth and Pod
//! object appear after the agent is ready is enforced, a pod that goes away is
//! forgotten, and policy edits under a constant stream of new flows lose none. Names `nft<pid>x<n>-*`, like the other packet tests; needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is a test failure"
)]

mod netns;

use netns::{ALLOW, Attach, DENY, Verdicts, bed, start};

#[test]
fn a_pod_that_appears_later_is_enforced_and_a_gone_one_forgotten() {
    let mut bed = bed();
    bed.namespace("x", &[("team", "x")]);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    bed.write_cluster().unwrap();
    bed.write_manifest(
        "deny-c.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-c
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: c
  policyTypes: [Ingress]
",
    )
    .unwrap();
    let mut agent = start(&bed, Attach::Auto);
    assert!(
        agent.log().contains("endpoints=2"),
        "only pod a (IPv4 + IPv6) is known at start:\n{}",
        agent.log()
    );

    // Pod c arrives the way a CNI adds one: its veth first, then its Pod object.
    let c = bed.pod("x", "c", &[("app", "c")], 12, &[]).unwrap();
    agent.wait_for_line(&["attached", &c.host_if]).unwrap();
    bed.write_cluster().unwrap();
    agent.wait_for_line(&["synced", "endpoints=4"]).unwrap();

    // c's ingress is enforced on the veth that appeared after start; c's own
    // connections (c is not isolated for egress) and their replies pass.
    Verdicts::new()
        .tcp(&a, &c, 80, DENY)
        .ping(&a, &c, DENY)
        .tcp(&c, &a, 80, ALLOW)
        .tcp6(&a, &c, 80, DENY)
        .check();
    let drop_line = agent
        .wait_for_line(&["drop", "198.18.0.12", "x/c"])
        .unwrap();
    assert!(drop_line.contains("policy_deny"), "{drop_line}");

    // c goes away: its veth disappears with its namespace and the agent forgets it.
    let host_if = c.host_if.clone();
    drop(c);
    let forgotten = agent.wait_for_line(&["forgotten", &host_if]).unwrap();
    assert!(forgotten.contains("interface gone"), "{forgotten}");

    // The agent still exits cleanly, detaching from a's veth, the only one left.
    let log_before_stop = agent.log();
    let status = agent.stop().unwrap();
    assert!(
        status.success(),
        "netfence exited with {status}\n{log_before_stop}"
    );
}

/// A policy for b admitting UDP 7000 from app=a; `variant` 1 also admits c's address
/// on another port, so the two variants compile to different endpoint policies and
/// every edit switches b to a new one.
fn b_admits_a(variant: u8) -> String {
    let extra = if variant == 1 {
        "  - from:
    - ipBlock:
        cidr: 198.18.0.12/32
    ports:
    - port: 9999
      protocol: UDP
"
    } else {
        ""
    };
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-admits-a
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
    ports:
    - port: 7000
      protocol: UDP
{extra}"
    )
}

#[test]
fn policy_changes_under_constant_new_flows_lose_no_allowed_packet() {
    use netfence_testbed::udp_exchange;
    use std::time::{Duration, Instant};

    let mut bed = bed();
    bed.namespace("x", &[("team", "x")]);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let c = bed.pod("x", "c", &[("app", "c")], 12, &[]).unwrap();
    bed.write_cluster().unwrap();
    bed.write_manifest("b.yaml", &b_admits_a(0)).unwrap();
    let agent = start(&bed, Attach::Auto);

    // Every probe is a new flow (a fresh socket, so a fresh source port): each one is
    // judged by policy, so a transient drop during a switch would lose one.
    let (mut allowed, mut lost, mut denied_passed) = (0u32, Vec::new(), 0u32);
    for change in 0..8u8 {
        let before = agent.generation();
        bed.write_manifest("b.yaml", &b_admits_a((change + 1) % 2))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut after_sync = 0;
        // Probe through the edit, the sync and a few probes past it (bounded).
        for _ in 0..2_000 {
            let outcome = udp_exchange(&a.netns, &b.netns, b.ip4(), 7000).unwrap();
            allowed += 1;
            if !(outcome.request_arrived && outcome.reply_arrived) {
                lost.push((change, outcome));
            }
            if agent.generation() > before {
                after_sync += 1;
            }
            if after_sync >= 5 || Instant::now() > deadline {
                break;
            }
        }
        assert!(
            agent.generation() > before,
            "edit {change} was never synced:\n{}",
            agent.log()
        );
        if udp_exchange(&c.netns, &b.netns, b.ip4(), 7000)
            .unwrap()
            .request_arrived
        {
            denied_passed += 1;
        }
    }
    assert!(allowed >= 8 * 6, "too few probes ran: {allowed}");
    assert!(
        lost.is_empty(),
        "{} of {allowed} allowed new flows lost: {lost:?}",
        lost.len()
    );
    assert_eq!(
        denied_passed, 0,
        "c's new flows to b must stay denied through every switch"
    );
    assert!(
        !agent
            .log()
            .lines()
            .any(|l| l.contains("drop") && l.contains("198.18.0.10")),
        "no drop of a's traffic may be logged:\n{}",
        agent.log()
    );
}
