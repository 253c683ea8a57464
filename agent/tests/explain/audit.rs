//! `explain --mode audit`: every isolated direction audited, as `netfence run --mode
//! audit` programs it; the matrix's `A` cells and its additive `audited` key.

use netfence::cli::explain::{Probe, explain, explain_with, matrix, matrix_with};
use netfence::cli::{ExplainProtocol, Family};
use netfence::dataplane::sync::Mode;

use super::{cluster, netfence};

pub fn probe(port: u16, family: Option<Family>, mode: Mode) -> Probe {
    Probe {
        protocol: ExplainProtocol::Tcp,
        port,
        family,
        mode,
    }
}

#[test]
fn mode_audit_audits_every_isolated_direction() {
    let (state, image) = cluster();
    let enforce = explain(
        &state,
        &image,
        "x/c",
        "x/a",
        ExplainProtocol::Tcp,
        80,
        Some(Family::Ipv4),
    )
    .unwrap();
    assert!(!enforce.allowed());
    let e = explain_with(
        &state,
        &image,
        "x/c",
        "x/a",
        &probe(80, Some(Family::Ipv4), Mode::Audit),
    )
    .unwrap();
    assert!(e.allowed(), "audit passes what enforce denies");
    let c = &e.connections[0];
    assert_eq!(
        (c.allowed, c.audited, c.ingress.verdict, c.egress.verdict),
        (true, true, "audited", "not_isolated")
    );
    assert_eq!(
        e.text().lines().collect::<Vec<_>>(),
        [
            "mode audit: every isolated direction is audited (as netfence run --mode audit): what no rule allows passes, reported as audit",
            "TCP 198.18.1.3 (x/c) -> 198.18.1.1 (x/a) port 80: ALLOWED (audit: would be denied)",
            "  egress at x/c: not isolated (no policy selects it for egress): allowed",
            "  ingress at x/a: isolated by x/a-ingress; no rule allows it: passes (audit, --mode audit: would be denied by x/a-ingress)",
            "    x/a-ingress ingress[0]: port not matched",
            "    x/a-ingress ingress[1]: peer not matched",
        ]
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["mode"], "audit");
    assert_eq!(json["connections"][0]["allowed"], true);
    assert_eq!(json["connections"][0]["audited"], true);
    assert_eq!(json["connections"][0]["ingress"]["verdict"], "audited");
    // What a rule allows stays allowed, not audited.
    let e = explain_with(
        &state,
        &image,
        "x/b",
        "x/a",
        &probe(80, Some(Family::Ipv4), Mode::Audit),
    )
    .unwrap();
    assert_eq!(
        (e.connections[0].allowed, e.connections[0].audited),
        (true, false)
    );
    assert_eq!(
        e.connections[0].ingress.rule.as_deref(),
        Some("x/a-ingress ingress[1]")
    );
    let json = serde_json::to_value(&enforce).unwrap();
    assert_eq!(
        (&json["mode"], &json["connections"][0]["audited"]),
        (&"enforce".into(), &false.into())
    );
}

#[test]
fn matrix_in_mode_audit_marks_would_be_denied_cells() {
    let (state, image) = cluster();
    let enforce = matrix(&state, &image, ExplainProtocol::Tcp, 80, None);
    assert_eq!(
        enforce.audited, None,
        "no audit: the contract's four keys only"
    );
    let audit = matrix_with(&state, &image, &probe(80, None, Mode::Audit));
    assert_eq!(audit.pods, enforce.pods);
    let audited = audit.audited.clone().unwrap();
    for (i, from) in audit.pods.iter().enumerate() {
        for (j, to) in audit.pods.iter().enumerate() {
            assert!(
                audit.allowed[i][j],
                "{from} -> {to}: everything passes in audit mode"
            );
            assert_eq!(
                audited[i][j], !enforce.allowed[i][j],
                "{from} -> {to}: audited exactly where enforce denies"
            );
        }
    }
    let json = serde_json::to_value(&enforce).unwrap();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["allowed", "pods", "port", "protocol"]);
    let json = serde_json::to_value(&audit).unwrap();
    assert!(
        json["allowed"][0]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a.is_boolean())
    );
    assert!(
        json["audited"][0]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a.is_boolean())
    );
    let text = audit.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "TCP/80: rows = from, columns = to; . allowed, X denied, A audited (passes; enforcing, it would be denied) (a pod to itself: loopback, always allowed)"
    );
    let row = |pod: &str| audit.pods.iter().position(|p| p == pod).unwrap();
    let cell = |from: &str, to: &str| lines[2 + row(from)].split('\t').nth(1 + row(to)).unwrap();
    assert_eq!(cell("x/c", "x/a"), "A", "x/a admits only x/b on 80");
    assert_eq!(cell("x/b", "x/a"), ".", "allowed by a rule");
    assert_eq!(cell("y/a", "x/b"), "A", "y/a may reach only z");
    assert!(
        !text.contains("\tX"),
        "nothing is denied in audit mode: {text}"
    );
}

#[test]
fn command_line_mode_audit_on_the_demo_example() {
    let (code, json, err) = netfence(&[
        "--matrix", "--port", "3306", "--mode", "audit", "-o", "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json.trim(),
        r#"{"port":3306,"protocol":"TCP","pods":["prod/api","prod/db","prod/web"],"allowed":[[true,true,true],[true,true,true],[true,true,true]],"audited":[[false,false,false],[true,false,true],[true,true,false]]}"#
    );
    let (code, text, _) = netfence(&["--matrix", "--port", "5000", "--mode", "audit"]);
    assert_eq!(code, 0);
    assert_eq!(
        text.lines().skip(1).collect::<Vec<_>>(),
        [
            "-\tprod/api\tprod/db\tprod/web",
            "prod/api\t.\tA\t.",
            "prod/db\tA\t.\tA",
            "prod/web\t.\tA\t."
        ]
    );
    let (code, text, err) = netfence(&[
        "--from",
        "prod/db",
        "--to",
        "198.18.0.201",
        "--port",
        "873",
        "--mode",
        "audit",
    ]);
    assert_eq!(code, 0, "audited: it passes: {err}");
    assert!(
        text.contains(
            "egress at prod/db: isolated by prod/db-allow-api-backup; no rule allows it: passes (audit, --mode audit: would be denied by prod/db-allow-api-backup)"
        ),
        "{text}"
    );
    let (code, _, err) = netfence(&["--matrix", "--port", "80", "--mode", "permissive"]);
    assert_eq!(code, 2, "a usage error");
    assert!(
        err.contains("invalid value 'permissive' for '--mode <MODE>'"),
        "{err}"
    );
}
