//! Unit tests of `explain` on hand-built images: audited directions (per policy and
//! node-wide), and that `--mode audit` sets the same endpoint flags `netfence run
//! --mode audit` writes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::dataplane::sync::Contents;
use crate::image::{Endpoint, EndpointPolicyInfo};

/// b (198.18.0.11) is isolated for ingress by `x/b-lockdown` alone, in audit mode
/// when `audit`; a (198.18.0.10) is isolated for egress by `x/a-out`, enforcing.
fn image(audit: bool) -> Image {
    let mut image = Image::default();
    image.endpoints.insert(
        IpAddr::from([198, 18, 0, 11]),
        Endpoint {
            namespace: "x".into(),
            pod: "b".into(),
            policy: 9,
            isolated_ingress: true,
            isolated_egress: false,
            audit_ingress: audit,
            audit_egress: false,
            identity: 20,
        },
    );
    image.endpoints.insert(
        IpAddr::from([198, 18, 0, 10]),
        Endpoint {
            namespace: "x".into(),
            pod: "a".into(),
            policy: 10,
            isolated_ingress: false,
            isolated_egress: true,
            audit_ingress: false,
            audit_egress: false,
            identity: 21,
        },
    );
    image.endpoint_policies = BTreeMap::from([
        (
            9,
            EndpointPolicyInfo {
                ingress: vec!["x/b-lockdown".into()],
                egress: Vec::new(),
            },
        ),
        (
            10,
            EndpointPolicyInfo {
                ingress: Vec::new(),
                egress: vec!["x/a-out".into()],
            },
        ),
    ]);
    image
}

const A: [u8; 4] = [198, 18, 0, 10];
const B: [u8; 4] = [198, 18, 0, 11];

#[test]
fn an_audited_direction_passes_and_names_the_policy_that_would_deny() {
    let image = image(true);
    let c = connection(
        &image,
        IpAddr::from([198, 18, 0, 12]),
        IpAddr::from(B),
        ExplainProtocol::Tcp,
        80,
    );
    assert!(c.allowed && c.audited, "audit passes");
    assert_eq!(
        (c.ingress.verdict, c.ingress.isolated_by.clone()),
        ("audited", vec!["x/b-lockdown".to_owned()])
    );
    let text = Explanation {
        from: "x/c".into(),
        to: "x/b".into(),
        protocol: "TCP",
        port: 80,
        mode: Mode::Enforce,
        connections: vec![c],
    }
    .text();
    assert!(
        text.contains(": ALLOWED (audit: would be denied)"),
        "{text}"
    );
    assert!(
        text.contains("passes (audit: would be denied by x/b-lockdown)"),
        "{text}"
    );
}

#[test]
fn mode_audit_sets_the_endpoint_flags_run_writes() {
    let enforcing = image(false);
    let audited = in_mode(&enforcing, Mode::Audit);
    let none = BTreeMap::new();
    // What `run --mode audit` compiles and writes.
    let mut compiled = enforcing.clone();
    crate::compile::audit_all(&mut compiled);
    assert_eq!(
        Contents::from_image(&audited, &none).endpoints,
        Contents::from_image(&compiled, &none).endpoints
    );
    assert!(matches!(
        in_mode(&enforcing, Mode::Enforce),
        std::borrow::Cow::Borrowed(_)
    ));
    // A direction that is not isolated is not audited: nothing to audit.
    assert!(!audited.endpoints[&IpAddr::from(A)].audit_ingress);
}

#[test]
fn mode_audit_audits_every_isolated_direction_and_says_so() {
    let image = image(false);
    let probe = |mode| Probe {
        protocol: ExplainProtocol::Tcp,
        port: 80,
        family: None,
        mode,
    };
    let enforce = connection(
        &in_mode(&image, Mode::Enforce),
        IpAddr::from(A),
        IpAddr::from(B),
        ExplainProtocol::Tcp,
        80,
    );
    assert_eq!(
        (
            enforce.allowed,
            enforce.audited,
            enforce.egress.verdict,
            enforce.ingress.verdict
        ),
        (false, false, "denied", "denied")
    );
    let audit = connection(
        &in_mode(&image, Mode::Audit),
        IpAddr::from(A),
        IpAddr::from(B),
        ExplainProtocol::Tcp,
        80,
    );
    assert_eq!(
        (
            audit.allowed,
            audit.audited,
            audit.egress.verdict,
            audit.ingress.verdict
        ),
        (true, true, "audited", "audited")
    );
    let text = Explanation {
        from: "x/a".into(),
        to: "x/b".into(),
        protocol: "TCP",
        port: 80,
        mode: probe(Mode::Audit).mode,
        connections: vec![audit],
    }
    .text();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "mode audit: every isolated direction is audited (as netfence run --mode audit): what no rule allows passes, reported as audit",
            "TCP 198.18.0.10 (x/a) -> 198.18.0.11 (x/b) port 80: ALLOWED (audit: would be denied)",
            "  egress at x/a: isolated by x/a-out; no rule allows it: passes (audit, --mode audit: would be denied by x/a-out)",
            "  ingress at x/b: isolated by x/b-lockdown; no rule allows it: passes (audit, --mode audit: would be denied by x/b-lockdown)",
        ]
    );
}
