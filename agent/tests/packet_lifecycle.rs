//! Packet tests of the agent following a changing node: a pod whose veth and Pod
//! object appear after the agent is ready is enforced, and a pod that goes away is
//! forgotten. Names `nft<pid>x<n>-*`, like the other packet tests; needs root.

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
    let drop_line = agent.wait_for_line(&["drop", "198.18.0.12", "x/c"]).unwrap();
    assert!(drop_line.contains("policy_deny"), "{drop_line}");

    // c goes away: its veth disappears with its namespace and the agent forgets it.
    let host_if = c.host_if.clone();
    drop(c);
    let forgotten = agent.wait_for_line(&["forgotten", &host_if]).unwrap();
    assert!(forgotten.contains("interface gone"), "{forgotten}");

    // The agent still exits cleanly, detaching from a's veth, the only one left.
    let log_before_stop = agent.log();
    let status = agent.stop().unwrap();
    assert!(status.success(), "netfence exited with {status}\n{log_before_stop}");
}
