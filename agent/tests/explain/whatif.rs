//! `explain --matrix --with FILE`: only the pod pairs whose verdict changes when the
//! given objects are added or replace the ones read (same kind, namespace, name),
//! in text, JSON and YAML; the same -f semantics for --with (stdin, bad input exits
//! 2 naming the file), and --with without --matrix exits 2.

use super::files::{CLUSTER, netfence, tree};

/// a-from-b now lets c (not b) into x/a on `http`; a new pod x/d.
const CHANGE: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: c}}
    ports: [{port: http}]
";
const POD_D: &str = "---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: x, labels: {app: d}}
spec: {containers: [{name: c, image: nginx}]}
status: {phase: Running, podIP: 198.18.0.4}
";

const MATRIX: [&str; 4] = ["--matrix", "--port", "80", "--with"];

#[test]
fn only_the_pairs_that_change_are_printed() {
    let dir = tree(&[("cluster.yaml", CLUSTER), ("change.yaml", CHANGE)]);
    let base = dir.path().join("cluster.yaml");
    let change = dir.path().join("change.yaml");
    let (base, change) = (base.to_str().unwrap(), change.to_str().unwrap());
    let run = netfence(
        &[&["explain", "-f", base], &MATRIX[..], &[change]].concat(),
        "",
    );
    assert_eq!((run.code, run.stderr.as_str()), (0, ""));
    assert_eq!(
        run.stdout,
        "TCP/80: 2 pair(s) change
FROM  TO   BEFORE   AFTER
x/b   x/a  allowed  denied
x/c   x/a  denied   allowed
"
    );
    // Added objects: a new pod is absent before.
    let run = netfence(
        &[&["explain", "-f", base], &MATRIX[..], &["-", "-o", "json"]].concat(),
        &format!("{CHANGE}{POD_D}"),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (value["port"].as_u64(), value["protocol"].as_str()),
        (Some(80), Some("TCP"))
    );
    let changes: Vec<String> = value["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!("{} {} {} {}", c["from"], c["to"], c["before"], c["after"]).replace('"', "")
        })
        .collect();
    assert_eq!(
        changes,
        [
            "x/a x/d absent allowed",
            "x/b x/a allowed denied",
            "x/b x/d absent allowed",
            "x/c x/a denied allowed",
            "x/c x/d absent allowed",
            "x/d x/a absent denied",
            "x/d x/b absent allowed",
            "x/d x/c absent allowed",
            "x/d x/d absent allowed",
        ]
    );
    // The same objects again: nothing changes.
    let run = netfence(
        &[&["explain", "-f", base], &MATRIX[..], &[base, "-o", "yaml"]].concat(),
        "",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "port: 80\nprotocol: TCP\nchanges: []\n");
    let run = netfence(
        &[&["explain", "-f", base], &MATRIX[..], &[base]].concat(),
        "",
    );
    assert_eq!(run.stdout, "TCP/80: no pair changes\n");
}

#[test]
fn bad_with_input_and_with_without_matrix_exit_2() {
    let dir = tree(&[("cluster.yaml", CLUSTER)]);
    let base = dir.path().join("cluster.yaml");
    let base = base.to_str().unwrap();
    let run = netfence(
        &[&["explain", "-f", base], &MATRIX[..], &["-"]].concat(),
        &CHANGE.replace("ingress:", "ingres:"),
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with(
            "netfence: error: <stdin>: NetworkPolicy x/a-from-b: spec.ingres: unknown field"
        ),
        "{}",
        run.stderr
    );
    let run = netfence(
        &[&["explain", "-f", "-"], &MATRIX[..], &["-"]].concat(),
        CLUSTER,
    );
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr,
        "netfence: error: \"-\": stdin can be read only once\n"
    );
    let run = netfence(
        &[
            "explain", "-f", base, "--from", "x/b", "--to", "x/a", "--port", "80", "--with", base,
        ],
        "",
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "netfence: error: --with compares matrices: give --matrix\n"
    );
}
