//! `explain --to` a Service: `svc/NS/NAME` or a ClusterIP, the Service named, the
//! backend rule that allows the VIP, and no ingress check at the VIP.

use std::path::PathBuf;
use std::process::Command;

use netfence::cli::explain::{ExplainError, explain, explain_with};
use netfence::cli::{ExplainProtocol, Family};
use netfence::dataplane::sync::Mode;
use netfence::model::Protocol;

use super::audit::probe;
use super::common_state::*;

const WEB_VIP: &str = "198.19.200.1";

/// x/a may send only to z/b on TCP 80. z/web (WEB_VIP:8080 → 80) fronts z/b, z/other
/// (198.19.200.2:8080 → 80) z/c, z/dual (198.19.200.3 and fd00::c8:3, 8080 → 80)
/// z/b in both families; z/headless has no ClusterIP.
fn services() -> (netfence::model::State, netfence::image::Image) {
    let to_z_b = policy("x", "to-z-b")
        .select(sel(&[("pod", "a")]))
        .egress(rule(
            vec![pods(Some(sel(&[("ns", "z")])), Some(sel(&[("pod", "b")])))],
            vec![tcp(80)],
        ))
        .types(&["Egress"])
        .build();
    let http = || vec![service_port(None, Protocol::Tcp, 8080, "80")];
    compiled(
        xyz()
            .policy(to_z_b)
            .service(service(
                "z",
                "web",
                &[WEB_VIP],
                Some(&[("pod", "b")]),
                http(),
            ))
            .service(service(
                "z",
                "other",
                &["198.19.200.2"],
                Some(&[("pod", "c")]),
                http(),
            ))
            .service(service(
                "z",
                "dual",
                &["198.19.200.3", "fd00::c8:3", "198.19.200.4"],
                Some(&[("pod", "b")]),
                http(),
            ))
            .service(service("z", "headless", &[], Some(&[("pod", "b")]), http())),
    )
}

#[test]
fn explain_to_a_service_names_it_and_the_backend_rule_that_allows_the_vip() {
    let (state, image) = services();
    let e = explain(
        &state,
        &image,
        "x/a",
        "svc/z/web",
        ExplainProtocol::Tcp,
        8080,
        None,
    )
    .unwrap();
    assert!(e.allowed());
    assert_eq!(e.connections.len(), 1, "z/web has an IPv4 ClusterIP only");
    let c = &e.connections[0];
    let rule_id = c.egress.rule_id.unwrap();
    assert_eq!(c.egress.rule.as_deref(), Some("x/to-z-b egress[0]"));
    let service = c.service.as_ref().unwrap();
    assert_eq!(
        (service.name.as_str(), service.vip, service.service_port),
        ("z/web", ip(WEB_VIP), true)
    );
    let backend = service.backend.as_ref().unwrap();
    assert_eq!(
        (backend.addr, backend.pod.as_deref(), backend.port),
        (ip("198.18.3.2"), Some("z/b"), 80)
    );
    let expected = [
        "TCP 198.18.1.1 (x/a) -> 198.19.200.1 (Service z/web) port 8080: ALLOWED".to_owned(),
        format!("  egress at x/a: isolated by x/to-z-b; allowed by x/to-z-b egress[0] (rule id {rule_id})"),
        "    for Service z/web: x/to-z-b egress[0] allows its backend 198.18.3.2 (z/b) on port 80".to_owned(),
        "  ingress: 198.19.200.1 is the ClusterIP of Service z/web, not a local endpoint: no ingress check at the VIP; after the DNAT the backend's own ingress policy decides (explain --to the backend pod)".to_owned(),
    ];
    assert_eq!(e.text().lines().collect::<Vec<_>>(), expected);
    // The ClusterIP literal is the same question.
    let literal = explain(
        &state,
        &image,
        "x/a",
        WEB_VIP,
        ExplainProtocol::Tcp,
        8080,
        None,
    )
    .unwrap();
    assert_eq!(literal.text(), e.text());
    let json = serde_json::to_value(&literal).unwrap();
    assert_eq!(json["connections"][0]["service"]["name"], "z/web");
    assert_eq!(json["connections"][0]["service"]["backend"]["pod"], "z/b");
    assert_eq!(json["connections"][0]["ingress"]["verdict"], "not_local");

    // A backend no rule allows; a port the Service does not have.
    let e = explain(
        &state,
        &image,
        "x/a",
        "svc/z/other",
        ExplainProtocol::Tcp,
        8080,
        None,
    )
    .unwrap();
    assert!(!e.allowed());
    let lines: Vec<String> = e.text().lines().map(str::to_owned).collect();
    assert_eq!(
        lines[1..3],
        [
            "  egress at x/a: isolated by x/to-z-b; no rule allows it: DENIED",
            "    for Service z/other: no egress rule allows any of its backends behind TCP port 8080",
        ]
    );
    let e = explain(
        &state,
        &image,
        "x/a",
        "svc/z/web",
        ExplainProtocol::Tcp,
        8081,
        None,
    )
    .unwrap();
    assert!(!e.allowed());
    assert_eq!(
        e.text().lines().nth(2),
        Some("    for Service z/web: TCP port 8081 is no port of the Service")
    );
    // Not egress-isolated: allowed, no rule to name; audit mode: audited, said why.
    let e = explain(
        &state,
        &image,
        "y/a",
        "svc/z/other",
        ExplainProtocol::Tcp,
        8080,
        None,
    )
    .unwrap();
    assert_eq!(
        e.text().lines().collect::<Vec<_>>()[..3],
        [
            "TCP 198.18.2.1 (y/a) -> 198.19.200.2 (Service z/other) port 8080: ALLOWED",
            "  egress at y/a: not isolated (no policy selects it for egress): allowed",
            "  ingress: 198.19.200.2 is the ClusterIP of Service z/other, not a local endpoint: no ingress check at the VIP; after the DNAT the backend's own ingress policy decides (explain --to the backend pod)",
        ]
    );
    let e = explain_with(
        &state,
        &image,
        "x/a",
        "svc/z/other",
        &probe(8080, None, Mode::Audit),
    )
    .unwrap();
    assert!(e.allowed() && e.connections[0].audited);
    assert_eq!(e.connections[0].egress.verdict, "audited");
    assert_eq!(
        e.text().lines().nth(3),
        Some(
            "    for Service z/other: no egress rule allows any of its backends behind TCP port 8080"
        )
    );
}

#[test]
fn a_service_resolves_to_its_first_cluster_ip_of_each_family() {
    let (state, image) = services();
    let e = explain(
        &state,
        &image,
        "x/a",
        "svc/z/dual",
        ExplainProtocol::Tcp,
        8080,
        None,
    )
    .unwrap();
    let vips: Vec<_> = e.connections.iter().map(|c| (c.dst, c.allowed)).collect();
    assert_eq!(vips, [(ip("198.19.200.3"), true), (ip("fd00::c8:3"), true)]);
    let v6 = e.connections[1].service.as_ref().unwrap();
    assert_eq!(
        v6.backend.as_ref().map(|b| (b.addr, b.port)),
        Some((ip("fd00::3:2"), 80))
    );
    let e = explain(
        &state,
        &image,
        "x/a",
        "svc/z/dual",
        ExplainProtocol::Tcp,
        8080,
        Some(Family::Ipv6),
    )
    .unwrap();
    assert_eq!(e.connections.len(), 1);
    assert_eq!(
        e.text().lines().next(),
        Some("TCP fd00::1:1 (x/a) -> fd00::c8:3 (Service z/dual) port 8080: ALLOWED")
    );
    let err = |from: &str, to: &str, family| {
        explain(&state, &image, from, to, ExplainProtocol::Tcp, 8080, family).unwrap_err()
    };
    assert_eq!(
        err("x/a", "svc/z/nope", None),
        ExplainError::NoSuchService("z/nope".into())
    );
    assert_eq!(
        err("x/a", "svc/z/headless", None),
        ExplainError::NoClusterIp("z/headless".into())
    );
    assert_eq!(
        err("svc/z/web", "x/a", None),
        ExplainError::ServiceAsSource("svc/z/web".into())
    );
    assert_eq!(
        err("x/a", "svc/z/web", Some(Family::Ipv6)),
        ExplainError::NoCommonFamily {
            from: "x/a".into(),
            to: "svc/z/web".into()
        }
    );
    assert_eq!(
        ExplainError::NoClusterIp("z/headless".into()).to_string(),
        "Service z/headless has no ClusterIP (headless or ExternalName): connections go to its pods directly; explain --to one of them"
    );
    assert_eq!(
        ExplainError::ServiceAsSource("svc/z/web".into()).to_string(),
        "--from svc/z/web: a Service is only a destination (its ClusterIP sends nothing); explain from a pod"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The example's Service prod/api moved to another ClusterIP and to port 80 (backends
/// on 5000), edited in place: a second Service prod/api in another file would be a
/// duplicate (bad input).
fn move_api_service(cluster: &std::path::Path) {
    let text = std::fs::read_to_string(cluster).unwrap();
    let edits = [
        (
            "  clusterIP: 198.19.128.11\n  clusterIPs:\n  - 198.19.128.11\n",
            "  clusterIP: 198.19.200.50\n  clusterIPs:\n  - 198.19.200.50\n",
        ),
        (
            "  - name: api\n    port: 5000\n    protocol: TCP\n    targetPort: 5000\n",
            "  - name: api\n    port: 80\n    protocol: TCP\n    targetPort: 5000\n",
        ),
    ];
    let mut text = text;
    for (from, to) in edits {
        assert_eq!(text.matches(from).count(), 1, "{from}");
        text = text.replace(from, to);
    }
    std::fs::write(cluster, text).unwrap();
}

#[test]
fn command_line_explain_to_a_service() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("nfh6-examples");
    copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples"),
        &manifests,
    );
    move_api_service(&manifests.join("cluster.yaml"));
    // `netfence explain` with `args`, expected to exit `code` (0 allowed, 1 denied).
    let run = |code: i32, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_netfence"))
            .arg("explain")
            .arg("--manifests")
            .arg(&manifests)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    // db may open connections only to the backup server: not to api's ClusterIP.
    let text = run(
        1,
        &["--from", "prod/db", "--to", "svc/prod/api", "--port", "80"],
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "TCP 198.18.0.12 (prod/db) -> 198.19.200.50 (Service prod/api) port 80: DENIED",
            "  egress at prod/db: isolated by prod/db-allow-api-backup; no rule allows it: DENIED",
            "    for Service prod/api: no egress rule allows any of its backends behind TCP port 80",
            "  ingress: 198.19.200.50 is the ClusterIP of Service prod/api, not a local endpoint: no ingress check at the VIP; after the DNAT the backend's own ingress policy decides (explain --to the backend pod)",
        ]
    );
    let json: serde_json::Value = serde_json::from_str(&run(
        0,
        &[
            "--from",
            "prod/web",
            "--to",
            "198.19.200.50",
            "--port",
            "80",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    let c = &json["connections"][0];
    assert_eq!(
        (&c["allowed"], &c["egress"]["verdict"]),
        (&true.into(), &"not_isolated".into())
    );
    assert_eq!(c["service"]["name"], "prod/api");
    assert_eq!(c["service"]["service_port"], true);
}
