//! `netfence policies NS/POD`: the policies selecting a pod per direction, each
//! rule's peers and ports as written, the container ports each ingress rule opens
//! (named ports resolved), in aligned text, wide (rule ids), JSON and YAML; exit 2
//! for an unknown pod or bad input.

use super::files::{CLUSTER, netfence};

/// An audit-mode egress policy on every pod of x, and a deny-all ingress on x/a.
const MORE: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-egress, namespace: x, annotations: {netfence.io/mode: audit}}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {team: y}}
      podSelector: {matchExpressions: [{key: app, operator: In, values: [db, cache]}]}
    - ipBlock: {cidr: 198.18.0.0/15, except: [198.18.1.0/24]}
    ports: [{port: 5432}, {protocol: UDP, port: 8000, endPort: 8099}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
";

fn input() -> String {
    format!("{CLUSTER}{MORE}")
}

#[test]
fn text_lists_each_selecting_policy_s_rules_and_the_ports_they_open() {
    let run = netfence(&["policies", "x/a", "-f", "-"], &input());
    assert_eq!((run.code, run.stderr.as_str()), (0, ""));
    assert_eq!(
        run.stdout,
        "pod x/a (198.18.0.1)
DIRECTION  POLICY              RULE        PEERS                                                                            PORTS                    OPENS
ingress    x/a-from-b          ingress[0]  pods app=b in x                                                                  TCP http                 TCP 80 (http)
ingress    x/deny-all          -           nobody (no rules)                                                                -                        -
egress     x/a-egress (audit)  egress[0]   pods app in (cache,db) in namespaces team=y; 198.18.0.0/15 except 198.18.1.0/24  TCP 5432, UDP 8000-8099  -
ingress container ports open: TCP 80 (http); closed: UDP 53 (dns)
"
    );
    // Without the policies: not isolated, every port open.
    let run = netfence(
        &["policies", "x/a", "-f", "-"],
        CLUSTER.split("---\napiVersion: networking").next().unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "pod x/a (198.18.0.1)
DIRECTION  POLICY  RULE  PEERS     PORTS  OPENS
ingress    -       -     everyone  any    not isolated
egress     -       -     everyone  any    not isolated
ingress container ports open: TCP 80 (http), UDP 53 (dns); closed: -
"
    );
}

#[test]
fn wide_adds_rule_ids_and_json_and_yaml_use_names() {
    let wide = netfence(&["policies", "x/a", "-f", "-", "-o", "wide"], &input());
    assert_eq!(wide.code, 0, "{}", wide.stderr);
    let header = wide.stdout.lines().nth(1).unwrap();
    assert!(
        header.starts_with("DIRECTION  POLICY              RULE        RULE-ID     PEERS"),
        "{header}"
    );
    let json = netfence(&["policies", "x/a", "-f", "-", "-o", "json"], &input());
    assert_eq!(json.code, 0, "{}", json.stderr);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let id = value["ingress"]["policies"][0]["rules"][0]["rule_id"]
        .as_u64()
        .unwrap();
    assert!(
        wide.stdout.contains(&format!("ingress[0]  {id}  ")),
        "{}",
        wide.stdout
    );
    assert_eq!(value["pod"], "x/a");
    assert_eq!(value["ingress"]["isolated"], true);
    assert_eq!(
        value["ingress"]["open"],
        serde_json::json!([{"protocol": "TCP", "port": 80, "name": "http"}])
    );
    assert_eq!(
        value["ingress"]["closed"],
        serde_json::json!([{"protocol": "UDP", "port": 53, "name": "dns"}])
    );
    assert_eq!(value["ingress"]["policies"][1]["policy"], "x/deny-all");
    assert_eq!(
        value["ingress"]["policies"][1]["rules"],
        serde_json::json!([])
    );
    assert_eq!(value["egress"]["policies"][0]["audit"], true);
    assert_eq!(
        value["egress"]["policies"][0]["rules"][0]["ports"],
        serde_json::json!(["TCP 5432", "UDP 8000-8099"])
    );
    let yaml = netfence(&["policies", "x/b", "-f", "-", "-o", "yaml"], &input());
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    assert!(
        yaml.stdout.starts_with(
            "pod: x/b\nips:\n- 198.18.0.2\nenforced: true\ningress:\n  isolated: false\n  policies: []\n  open: []\n  closed: []\negress:\n  isolated: true\n  policies:\n  - policy: x/a-egress\n    audit: true\n"
        ),
        "{}",
        yaml.stdout
    );
}

#[test]
fn a_host_network_pod_is_said_to_be_unenforced() {
    let host = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: x, labels: {app: a}}\nspec: {hostNetwork: true, containers: [{name: c, image: nginx}]}\nstatus: {phase: Running, podIP: 198.18.9.9}\n";
    let run = netfence(&["policies", "x/h", "-f", "-"], &format!("{CLUSTER}{host}"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "pod x/h (198.18.9.9)
not enforced: hostNetwork, no IP yet, or terminated: no policy applies to its traffic
DIRECTION  POLICY      RULE        PEERS            PORTS     OPENS
ingress    x/a-from-b  ingress[0]  pods app=b in x  TCP http  -
egress     -           -           everyone         any       not isolated
ingress container ports open: -; closed: -
"
    );
    let run = netfence(&["policies", "x/a", "-f", "-", "-o", "json"], CLUSTER);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(value["enforced"], true);
}

#[test]
fn an_unknown_pod_or_bad_input_exits_2() {
    let run = netfence(&["policies", "x/nope", "-f", "-"], &input());
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "netfence: error: no pod x/nope in the manifests\n"
    );
    let run = netfence(&["policies", "nope", "-f", "-"], &input());
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr,
        "netfence: error: \"nope\": expected NAMESPACE/POD\n"
    );
    let run = netfence(
        &["policies", "x/a", "-f", "-"],
        &input().replace("podSelector: {}", "podSelectr: {}"),
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with(
            "netfence: error: <stdin>: NetworkPolicy x/a-egress: spec.podSelectr: unknown field"
        ),
        "{}",
        run.stderr
    );
}
