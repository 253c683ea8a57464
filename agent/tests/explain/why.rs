//! Why a denied connection is denied: per isolating policy, per rule, whether the
//! peer or the port did not match, in text and JSON, end to end; and checked against
//! `Image::lookup` on every pod pair of a cluster with named ports, port ranges,
//! ipBlocks with excepts and namespace selectors: a denied direction has no rule
//! whose peer and port both match, and the rule that allows an allowed direction
//! matches both.

use netfence::cli::ExplainProtocol;
use netfence::cli::explain::explain;
use netfence::cli::explain::why::why;
use netfence::model::{Operator, Protocol};
use netfence_common::PROTO_TCP;

use super::common_state::*;
use super::files::{CLUSTER, netfence};

#[test]
fn a_denied_connection_names_the_half_of_each_rule_that_did_not_match() {
    let deny_all = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}}\n";
    let input = format!("{CLUSTER}{deny_all}");
    let run = netfence(
        &[
            "explain", "-f", "-", "--from", "x/c", "--to", "x/a", "--port", "80",
        ],
        &input,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "TCP 198.18.0.3 (x/c) -> 198.18.0.1 (x/a) port 80: DENIED
  egress at x/c: not isolated (no policy selects it for egress): allowed
  ingress at x/a: isolated by x/a-from-b, x/deny-all; no rule allows it: DENIED
    x/a-from-b ingress[0]: peer not matched
    x/deny-all: no ingress rules (allows nothing)
"
    );
    let run = netfence(
        &[
            "explain",
            "-f",
            "-",
            "--from",
            "x/b",
            "--to",
            "x/a",
            "--port",
            "53",
            "--protocol",
            "udp",
            "-o",
            "json",
        ],
        &input,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let connection = &value["connections"][0];
    assert_eq!(connection["egress"].get("why"), None, "not denied: no why");
    assert_eq!(
        connection["ingress"]["why"],
        serde_json::json!([
            {"policy": "x/a-from-b", "rules": [{"rule": "x/a-from-b ingress[0]", "peer_matched": true, "port_matched": false, "reason": "port not matched"}]},
            {"policy": "x/deny-all", "rules": []}
        ])
    );
    // Allowed: no why at all.
    let run = netfence(
        &[
            "explain", "-f", "-", "--from", "x/b", "--to", "x/a", "--port", "80", "-o", "json",
        ],
        CLUSTER,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.contains("\"why\""), "{}", run.stdout);
}

fn rich_cluster() -> (netfence::model::State, netfence::image::Image) {
    let x_a = policy("x", "a-in")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![pods(Some(sel(&[("ns", "y")])), Some(sel(&[("pod", "b")])))],
            vec![
                named(Protocol::Tcp, "serve-80-tcp"),
                port_range(Protocol::Udp, 80, 81),
            ],
        ))
        .ingress(rule(
            vec![ip_block("198.18.0.0/15", &["198.18.3.0/24"])],
            vec![tcp(81)],
        ))
        .build();
    let y_all = policy("y", "egress")
        .select(expr("pod", Operator::NotIn, &["c"]))
        .types(&["Egress"])
        .egress(rule(vec![pods(None, None)], vec![]))
        .egress(rule(
            vec![pods(
                Some(expr("ns", Operator::In, &["x", "z"])),
                Some(sel(&[("pod", "a")])),
            )],
            vec![named(Protocol::Tcp, "serve-81-tcp")],
        ))
        .build();
    let z_deny = policy("z", "deny").select(sel(&[])).build();
    compiled(xyz().policies([x_a, y_all, z_deny]))
}

#[test]
fn why_agrees_with_the_lookup_on_every_pair() {
    let (state, image) = rich_cluster();
    let mut denied = 0;
    let mut allowed_by_rule = 0;
    for from in XYZ_PODS {
        for to in XYZ_PODS {
            for (protocol, port) in [
                (ExplainProtocol::Tcp, 80),
                (ExplainProtocol::Tcp, 81),
                (ExplainProtocol::Udp, 81),
                (ExplainProtocol::Sctp, 80),
            ] {
                let e = explain(&state, &image, from, to, protocol, port, None).unwrap();
                for c in &e.connections {
                    for (check, ingress) in [(&c.egress, false), (&c.ingress, true)] {
                        let number = match protocol {
                            ExplainProtocol::Tcp => PROTO_TCP,
                            ExplainProtocol::Udp => netfence_common::PROTO_UDP,
                            _ => netfence_common::PROTO_SCTP,
                        };
                        let why = why(
                            &state,
                            &check.isolated_by,
                            ingress,
                            c.src,
                            c.dst,
                            number,
                            port,
                        );
                        let matched: Vec<&str> = why
                            .iter()
                            .flat_map(|p| &p.rules)
                            .filter(|r| r.reason == "matched")
                            .map(|r| r.rule.as_str())
                            .collect();
                        let at = format!("{from} -> {to} {protocol:?}/{port} {}", c.dst);
                        match check.verdict {
                            "denied" => {
                                denied += 1;
                                assert!(matched.is_empty(), "{at}: {matched:?}");
                                assert_eq!(check.why, why, "{at}");
                            }
                            "allowed" => {
                                allowed_by_rule += 1;
                                let rule = check.rule.as_deref().unwrap();
                                assert!(matched.contains(&rule), "{at}: {rule} not in {matched:?}");
                                assert!(check.why.is_empty(), "{at}");
                            }
                            _ => assert!(check.why.is_empty(), "{at}"),
                        }
                    }
                }
            }
        }
    }
    // Directions checked (IPv4 and IPv6 of each pair): both outcomes, often.
    assert_eq!((denied, allowed_by_rule), (335, 49));
}
