//! `netfence explain`: the verdict, the isolating policies and the allowing rule for
//! one connection, and the pod-pair matrix (its JSON contract and text grid), checked
//! against `Image::lookup` on the table-test cluster and end to end on the demo example;
//! `--mode audit` (audited verdicts, `A` cells and the additive `audited` matrix), and
//! a Service ClusterIP as the destination (the Service named, the backend rule that
//! allows the VIP, no ingress check at the VIP); exit codes and bad input, with
//! `compile`'s.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod apiserver;
#[path = "explain/audit.rs"]
mod audit;
mod common_state;
#[path = "explain/exit_codes.rs"]
mod exit_codes;
#[path = "explain/files.rs"]
mod files;
#[path = "explain/formats.rs"]
mod formats;
#[path = "explain/live.rs"]
mod live;
#[path = "explain/policies.rs"]
mod policies;
#[path = "explain/service.rs"]
mod service;
#[path = "explain/whatif.rs"]
mod whatif;
#[path = "explain/why.rs"]
mod why;

use std::path::PathBuf;
use std::process::Command;

use common_state::*;
use netfence::cli::explain::{ExplainError, explain, matrix};
use netfence::cli::{ExplainProtocol, Family};
use netfence::model::{PodPhase, Protocol};
use netfence_common::PROTO_TCP;

fn cluster() -> (netfence::model::State, netfence::image::Image) {
    let x_a = policy("x", "a-ingress")
        .select(sel(&[("pod", "a")]))
        .ingress(rule(
            vec![pods(None, Some(sel(&[("pod", "c")])))],
            vec![port(Protocol::Tcp, 81)],
        ))
        .ingress(rule(vec![pods(None, Some(sel(&[("pod", "b")])))], vec![]))
        .build();
    let y_a = policy("y", "a-egress")
        .select(sel(&[("pod", "a")]))
        .types(&["Egress"])
        .egress(rule(
            vec![pods(Some(sel(&[("ns", "z")])), None)],
            vec![port(Protocol::Tcp, 80)],
        ))
        .build();
    let mut host = running_pod("z", "host", &[], &["198.18.9.1"]);
    host.host_network = true;
    let mut v6_only = running_pod("z", "six", &[], &["fd00::9:9"]);
    v6_only.phase = PodPhase::Running;
    compiled(xyz().policies([x_a, y_a]).pod_with(host).pod_with(v6_only))
}

#[test]
fn explain_names_the_isolating_policies_and_the_allowing_rule() {
    let (state, image) = cluster();
    let e = explain(&state, &image, "x/b", "x/a", ExplainProtocol::Tcp, 80, None).unwrap();
    assert!(e.allowed());
    assert_eq!(e.connections.len(), 2, "IPv4 and IPv6");
    for c in &e.connections {
        assert_eq!(c.egress.verdict, "not_isolated");
        assert_eq!(c.ingress.verdict, "allowed");
        assert_eq!(c.ingress.isolated_by, vec!["x/a-ingress".to_owned()]);
        assert_eq!(c.ingress.rule.as_deref(), Some("x/a-ingress ingress[1]"));
        let info = &image.rules[&c.ingress.rule_id.unwrap()];
        assert_eq!((info.policy.as_str(), info.index), ("a-ingress", 1));
    }
    let text = e.text();
    assert!(
        text.contains("TCP 198.18.1.2 (x/b) -> 198.18.1.1 (x/a) port 80: ALLOWED"),
        "{text}"
    );
    assert!(
        text.contains("ingress at x/a: isolated by x/a-ingress; allowed by x/a-ingress ingress[1]"),
        "{text}"
    );

    // Port 81 from x/c: rule 0. Port 80 from x/c: no rule.
    let e = explain(
        &state,
        &image,
        "x/c",
        "x/a",
        ExplainProtocol::Tcp,
        81,
        Some(Family::Ipv4),
    )
    .unwrap();
    assert_eq!(e.connections.len(), 1);
    assert_eq!(
        e.connections[0].ingress.rule.as_deref(),
        Some("x/a-ingress ingress[0]")
    );
    let e = explain(
        &state,
        &image,
        "x/c",
        "x/a",
        ExplainProtocol::Tcp,
        80,
        Some(Family::Ipv6),
    )
    .unwrap();
    assert!(!e.allowed());
    assert_eq!(e.connections[0].ingress.verdict, "denied");
    assert_eq!(e.connections[0].ingress.rule, None);
    assert!(
        e.text()
            .contains("ingress at x/a: isolated by x/a-ingress; no rule allows it: DENIED")
    );

    // Egress: y/a may reach z on 80 only; the source's policy is named.
    let e = explain(&state, &image, "y/a", "x/b", ExplainProtocol::Tcp, 80, None).unwrap();
    assert!(!e.allowed());
    assert_eq!(e.connections[0].egress.verdict, "denied");
    assert_eq!(
        e.connections[0].egress.isolated_by,
        vec!["y/a-egress".to_owned()]
    );
    assert_eq!(e.connections[0].ingress.verdict, "not_isolated");
    let e = explain(&state, &image, "y/a", "z/b", ExplainProtocol::Tcp, 80, None).unwrap();
    assert_eq!(
        e.connections[0].egress.rule.as_deref(),
        Some("y/a-egress egress[0]")
    );
    // ICMP has no port: only a rule without ports allows it.
    let e = explain(&state, &image, "x/b", "x/a", ExplainProtocol::Icmp, 0, None).unwrap();
    assert!(e.allowed());
    let e = explain(&state, &image, "x/c", "x/a", ExplainProtocol::Icmp, 0, None).unwrap();
    assert!(!e.allowed());
}

#[test]
fn explain_takes_addresses_and_reports_bad_targets() {
    let (state, image) = cluster();
    let e = explain(
        &state,
        &image,
        "198.19.0.5",
        "x/a",
        ExplainProtocol::Tcp,
        80,
        None,
    )
    .unwrap();
    assert!(!e.allowed());
    assert_eq!(e.connections.len(), 1);
    assert_eq!(e.connections[0].egress.verdict, "not_local");
    assert_eq!(e.connections[0].egress.endpoint, None);
    // A pod's address names the pod.
    let e = explain(
        &state,
        &image,
        "198.18.1.2",
        "fd00::1:1",
        ExplainProtocol::Tcp,
        80,
        None,
    );
    assert_eq!(
        e.unwrap_err(),
        ExplainError::NoCommonFamily {
            from: "198.18.1.2".into(),
            to: "fd00::1:1".into()
        }
    );
    let e = explain(
        &state,
        &image,
        "198.18.1.2",
        "198.18.1.1",
        ExplainProtocol::Tcp,
        80,
        None,
    )
    .unwrap();
    assert_eq!(e.connections[0].egress.endpoint.as_deref(), Some("x/b"));
    assert!(e.allowed());
    assert_eq!(
        explain(
            &state,
            &image,
            "x/zz",
            "x/a",
            ExplainProtocol::Tcp,
            80,
            None
        )
        .unwrap_err(),
        ExplainError::NoSuchPod("x/zz".into())
    );
    assert_eq!(
        explain(
            &state,
            &image,
            "nonsense",
            "x/a",
            ExplainProtocol::Tcp,
            80,
            None
        )
        .unwrap_err(),
        ExplainError::BadTarget("nonsense".into())
    );
    assert_eq!(
        explain(
            &state,
            &image,
            "z/host",
            "x/a",
            ExplainProtocol::Tcp,
            80,
            None
        )
        .unwrap_err(),
        ExplainError::NotAnEndpoint("z/host".into())
    );
    // A pod to itself stays on its loopback.
    let e = explain(&state, &image, "x/a", "x/a", ExplainProtocol::Tcp, 80, None).unwrap();
    assert!(e.allowed());
    assert_eq!(e.connections[0].ingress.verdict, "loopback");
}

#[test]
fn matrix_equals_lookup_for_every_pair() {
    let (state, image) = cluster();
    let m = matrix(&state, &image, ExplainProtocol::Tcp, 80, None);
    let mut expected_pods: Vec<String> = XYZ_PODS.iter().map(|p| (*p).to_owned()).collect();
    expected_pods.push("z/six".into());
    assert_eq!(
        m.pods, expected_pods,
        "sorted by namespace then name; hostNetwork pods left out"
    );
    for (i, from) in m.pods.iter().enumerate() {
        for (j, to) in m.pods.iter().enumerate() {
            let expected = if i == j {
                true
            } else if from == "z/six" || to == "z/six" {
                // IPv6 only: IPv6 when the other end has it too.
                let other = if from == "z/six" { to } else { from };
                let other = pod_addr(&state, other, true);
                let six = ip("fd00::9:9");
                let (src, dst) = if from == "z/six" {
                    (six, other)
                } else {
                    (other, six)
                };
                image.lookup(&packet(src, dst, PROTO_TCP, 80)).allowed()
            } else {
                v4(&image, &state, from, to, PROTO_TCP, 80)
            };
            assert_eq!(m.allowed[i][j], expected, "{from} -> {to}");
        }
    }
    // x/a admits only x/b on 80; y/a reaches only z.
    let row = |pod: &str| m.pods.iter().position(|p| p == pod).unwrap();
    let col_x_a: Vec<bool> = m.allowed.iter().map(|r| r[row("x/a")]).collect();
    assert_eq!(
        col_x_a.iter().filter(|a| **a).count(),
        2,
        "x/a itself and x/b"
    );
    let y_a = &m.allowed[row("y/a")];
    assert_eq!(
        y_a.iter().filter(|a| **a).count(),
        5,
        "y/a itself and the four z pods"
    );
    let text = m.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], format!("-\t{}", m.pods.join("\t")));
    assert_eq!(lines[2].split('\t').nth(1), Some("."), "x/a to itself");
    assert_eq!(
        lines[2 + row("x/c")].split('\t').nth(1),
        Some("X"),
        "x/c to x/a"
    );
}

/// `netfence explain --manifests deploy/examples ARGS`: exit code, stdout, stderr.
fn netfence(args: &[&str]) -> (i32, String, String) {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let out = Command::new(env!("CARGO_BIN_EXE_netfence"))
        .arg("explain")
        .arg("--manifests")
        .arg(&examples)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn command_line_matrix_and_explain_on_the_demo_example() {
    let (code, json, err) = netfence(&["--matrix", "--port", "3306", "-o", "json"]);
    assert_eq!(code, 0, "a matrix is a table, not a verdict: {err}");
    assert_eq!(
        json.trim(),
        r#"{"port":3306,"protocol":"TCP","pods":["prod/api","prod/db","prod/web"],"allowed":[[true,true,true],[false,true,false],[false,false,true]]}"#
    );
    let (code, text, _) = netfence(&["--matrix", "--port", "5000"]);
    assert_eq!(code, 0);
    assert_eq!(
        text.lines().skip(1).collect::<Vec<_>>(),
        [
            "-\tprod/api\tprod/db\tprod/web",
            "prod/api\t.\tX\t.",
            "prod/db\tX\t.\tX",
            "prod/web\t.\tX\t."
        ]
    );
    let (code, json, err) = netfence(&[
        "--from", "prod/web", "--to", "prod/api", "--port", "5000", "-o", "json",
    ]);
    assert_eq!(code, 0, "allowed: {err}");
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["connections"][0]["allowed"], true);
    assert_eq!(value["connections"][0]["family"], "IPv4");
    assert_eq!(
        value["connections"][0]["ingress"]["rule"],
        "prod/api-allow-web ingress[0]"
    );
    assert_eq!(value["connections"][1]["family"], "IPv6");
    let (code, text, _) = netfence(&["--from", "prod/db", "--to", "198.18.0.201", "--port", "873"]);
    assert_eq!(code, 1, "denied");
    assert!(
        text.contains(
            "egress at prod/db: isolated by prod/db-allow-api-backup; no rule allows it: DENIED"
        ),
        "{text}"
    );
    let (code, _, err) = netfence(&["--from", "prod/nope", "--to", "prod/db", "--port", "1"]);
    assert_eq!(code, 2, "bad input");
    assert!(err.contains("no pod prod/nope in the manifests"), "{err}");
    let (code, _, err) = netfence(&["--from", "prod/web", "--to", "prod/db"]);
    assert_eq!(code, 2, "bad input");
    assert!(err.contains("--port is required for TCP"), "{err}");
}
