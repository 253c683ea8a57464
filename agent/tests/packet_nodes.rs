//! NetworkPolicy across two Flannel nodes (root): pods on `node1` and `node2`, each
//! node's `cni0` made by the CNI bridge plugin, the nodes joined by `flannel.1`
//! (VXLAN), one real agent per node reading the same manifests. Real TCP and UDP
//! probes between pods on different nodes assert ingress, egress, selectors, ipBlocks
//! and replies.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod netns;

use netns::{ALLOW, Agent, Attach, DENY, TestBed, Verdicts, start_on, two_nodes};

fn policy(bed: &TestBed, file: &str, yaml: &str) {
    bed.write_manifest(file, yaml).unwrap();
}

/// Both nodes' agents, started after the manifests are written.
fn agents(bed: &TestBed) -> [Agent; 2] {
    [
        start_on(bed, 1, Attach::Auto),
        start_on(bed, 2, Attach::Auto),
    ]
}

#[test]
fn ingress_and_egress_between_pods_on_different_nodes() {
    let mut bed = two_nodes();
    bed.namespace("x", &[]);
    let a = bed.pod_on(1, "x", "a", &[("app", "a")], 10, &[]).unwrap();
    let c = bed.pod_on(1, "x", "c", &[("app", "c")], 12, &[]).unwrap();
    let b = bed.pod_on(2, "x", "b", &[("app", "b")], 11, &[]).unwrap();
    let d = bed.pod_on(2, "x", "d", &[("app", "d")], 13, &[]).unwrap();
    bed.write_cluster().unwrap();
    // b (node2) admits a (node1) on TCP 80 only; a (node1) may only reach b on TCP 80
    // and UDP 53 (its egress is judged on node1, b's ingress on node2).
    policy(
        &bed,
        "policies.yaml",
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
    ports:
    - port: 80
    - port: 53
      protocol: UDP
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-to-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: a
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector:
        matchLabels:
          app: b
",
    );
    let _agents = agents(&bed);
    Verdicts::new()
        .tcp(&a, &b, 80, ALLOW)
        .tcp6(&a, &b, 80, ALLOW)
        .udp(&a, &b, 53, ALLOW)
        // b's ingress on node2: another port, another pod on node1 or on node2.
        .tcp(&a, &b, 81, DENY)
        .tcp(&c, &b, 80, DENY)
        .tcp6(&c, &b, 80, DENY)
        .tcp(&d, &b, 80, DENY)
        // a's egress on node1: only b, so d (node2) and c (node1) are denied.
        .tcp(&a, &d, 80, DENY)
        .udp(&a, &d, 53, DENY)
        .tcp(&a, &c, 80, DENY)
        // Not isolated: d (node2) reaches a and c (node1).
        .tcp(&d, &a, 80, ALLOW)
        .tcp(&d, &c, 80, ALLOW)
        .check();
}

#[test]
fn namespace_and_pod_selector_across_nodes() {
    let mut bed = two_nodes();
    bed.namespace("prod", &[("team", "shop")]);
    bed.namespace("dev", &[("team", "lab")]);
    let server = bed
        .pod_on(2, "prod", "server", &[("app", "db")], 20, &[])
        .unwrap();
    let client = bed
        .pod_on(1, "prod", "client", &[("role", "client")], 10, &[])
        .unwrap();
    let other = bed
        .pod_on(1, "prod", "other", &[("role", "batch")], 11, &[])
        .unwrap();
    let dev = bed
        .pod_on(1, "dev", "devcl", &[("role", "client")], 12, &[])
        .unwrap();
    let near = bed
        .pod_on(2, "dev", "near", &[("role", "client")], 21, &[])
        .unwrap();
    bed.write_cluster().unwrap();
    // One peer with both selectors: pods labelled role=client in namespaces labelled
    // team=shop (and only those).
    policy(
        &bed,
        "db.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-shop-clients
  namespace: prod
spec:
  podSelector:
    matchLabels:
      app: db
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          team: shop
      podSelector:
        matchLabels:
          role: client
",
    );
    let _agents = agents(&bed);
    Verdicts::new()
        .tcp(&client, &server, 5432, ALLOW)
        .udp(&client, &server, 5432, ALLOW)
        .tcp6(&client, &server, 5432, ALLOW)
        .tcp(&other, &server, 5432, DENY)
        .tcp(&dev, &server, 5432, DENY)
        .udp(&dev, &server, 5432, DENY)
        .tcp(&near, &server, 5432, DENY)
        .check();
}

#[test]
fn ip_block_across_nodes_and_from_beyond_the_node() {
    let mut bed = two_nodes();
    bed.namespace("x", &[]);
    let b = bed.pod_on(2, "x", "b", &[("app", "b")], 11, &[]).unwrap();
    let a = bed.pod_on(1, "x", "a", &[("app", "a")], 10, &[]).unwrap();
    let c = bed.pod_on(1, "x", "c", &[("app", "c")], 12, &[]).unwrap();
    let d = bed.pod_on(2, "x", "d", &[("app", "d")], 13, &[]).unwrap();
    let outside = bed.external("out", 100).unwrap();
    let other = bed.external("oth", 200).unwrap();
    bed.write_cluster().unwrap();
    // node1's pod subnet except c, and one /27 of hosts beyond node1.
    policy(
        &bed,
        "b.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-from-blocks
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  ingress:
  - from:
    - ipBlock:
        cidr: 198.18.0.0/24
        except:
        - 198.18.0.12/32
    - ipBlock:
        cidr: 198.19.1.96/27
",
    );
    let _agents = agents(&bed);
    Verdicts::new()
        .tcp(&a, &b, 80, ALLOW)
        .udp(&a, &b, 53, ALLOW)
        .tcp(&c, &b, 80, DENY)
        // d is on b's own node, outside node1's subnet.
        .tcp(&d, &b, 80, DENY)
        // Hosts beyond node1 reach b through node1 and flannel.1.
        .tcp(&outside, &b, 80, ALLOW)
        .tcp(&other, &b, 80, DENY)
        .check();
}

#[test]
fn replies_cross_nodes_while_the_reverse_direction_is_denied() {
    let mut bed = two_nodes();
    bed.namespace("x", &[]);
    let a = bed.pod_on(1, "x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod_on(2, "x", "b", &[("app", "b")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    // a (node1) may open flows to b (node2): b admits them and a sends them. Nothing
    // else: a admits nothing, b sends nothing. Replies must pass both ways regardless.
    policy(
        &bed,
        "policies.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-client-only
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: a
  policyTypes: [Ingress, Egress]
  egress:
  - to:
    - podSelector:
        matchLabels:
          app: b
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-server-only
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: a
",
    );
    let _agents = agents(&bed);
    Verdicts::new()
        .tcp(&a, &b, 80, ALLOW)
        .tcp6(&a, &b, 80, ALLOW)
        .udp(&a, &b, 53, ALLOW)
        .ping(&a, &b, ALLOW)
        .tcp(&b, &a, 80, DENY)
        .tcp6(&b, &a, 80, DENY)
        .udp(&b, &a, 53, DENY)
        .ping(&b, &a, DENY)
        .check();
}
