//! The manifest-directory source: parsing (multi-document YAML, JSON, Lists, kubectl
//! output), the API server's validation and defaults, last-good bookkeeping across
//! reloads, and the directory watch. Submodules: the policy mode annotation, Services
//! and EndpointSlices, strict (unknown) fields.

#![allow(
    clippy::unwrap_used,
    reason = "tests: a failed setup step fails the test"
)]

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use netfence::model::{
    ContainerPort, LabelSelector, Operator, Peer, PodPhase, Policy, Port, PortSpec, Protocol,
    Requirement, Rule, State,
};
use netfence::source::{self, Load, ManifestDir, SourceError};

#[path = "source_manifest/mode.rs"]
mod mode;
#[path = "source_manifest/services.rs"]
mod services;
#[path = "source_manifest/strict.rs"]
mod strict;

fn parse(text: &str) -> Load {
    source::state_from_str("nfs.yaml", text)
}

fn messages(errors: &[SourceError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

fn labels(pairs: &[(&str, &str)]) -> netfence::model::Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("nfs").tempdir().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn policy_named<'a>(state: &'a State, name: &str) -> &'a Policy {
    state
        .policies
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no policy {name}"))
}

/// A NetworkPolicy `p` in namespace `x` with the given spec (YAML, indented 2).
fn np(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\nspec:\n{spec}"
    )
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nfs");

#[test]
fn kubectl_fixtures_load_into_state() {
    let dir = tempdir();
    for name in ["pods-list.yaml", "policy.json", "namespaces.yaml"] {
        std::fs::copy(Path::new(FIXTURES).join(name), dir.path().join(name)).unwrap();
    }
    let load = ManifestDir::new(dir.path()).load();
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    assert!(load.warnings.is_empty(), "{:?}", messages(&load.warnings));

    let state = load.state;
    assert_eq!(
        state.namespaces.keys().collect::<Vec<_>>(),
        ["kube-system", "prod"]
    );
    // The API server's label, added where the manifest lacks it.
    assert_eq!(
        state.namespaces["prod"].labels,
        labels(&[("kubernetes.io/metadata.name", "prod"), ("team", "shop")])
    );

    let names: Vec<String> = state
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    assert_eq!(
        names,
        [
            "kube-system/kube-proxy-8hz4k",
            "prod/migrate-5k2lp",
            "prod/web-7d4b9c8f6-x2x9q"
        ]
    );
    let proxy = &state.pods[0];
    assert!(proxy.host_network);
    assert!(!proxy.is_live_endpoint());
    let migrate = &state.pods[1];
    assert_eq!(migrate.phase, PodPhase::Succeeded);
    assert_eq!(migrate.ips, [ip("198.18.2.9")]);
    assert!(!migrate.is_live_endpoint());
    let web = &state.pods[2];
    assert_eq!(
        web.labels,
        labels(&[("app", "web"), ("pod-template-hash", "7d4b9c8f6")])
    );
    assert_eq!(web.node_name.as_deref(), Some("node-a"));
    assert_eq!(web.phase, PodPhase::Running);
    assert_eq!(
        web.ips,
        [ip("198.18.1.5"), ip("fd00:10:244:1::5")],
        "dual stack from podIPs"
    );
    assert_eq!(
        web.ports,
        [
            ContainerPort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp
            },
            ContainerPort {
                name: Some("metrics".into()),
                port: 9113,
                protocol: Protocol::Tcp
            },
        ]
    );
    assert!(web.is_live_endpoint());

    assert_eq!(state.policies.len(), 1);
    assert_eq!(
        state.policies[0],
        Policy {
            namespace: "prod".into(),
            name: "db-from-api".into(),
            pod_selector: LabelSelector {
                match_labels: labels(&[("app", "db")]),
                match_expressions: vec![]
            },
            isolates_ingress: true,
            isolates_egress: true,
            ingress: vec![Rule {
                peers: vec![Peer::Pods {
                    namespace_selector: Some(LabelSelector {
                        match_labels: labels(&[("kubernetes.io/metadata.name", "prod")]),
                        match_expressions: vec![],
                    }),
                    pod_selector: Some(LabelSelector {
                        match_labels: netfence::model::Labels::new(),
                        match_expressions: vec![Requirement {
                            key: "app".into(),
                            operator: Operator::In,
                            values: vec!["api".into(), "worker".into()],
                        }],
                    }),
                }],
                ports: vec![
                    PortSpec {
                        protocol: Protocol::Tcp,
                        port: Some(Port::Number(3306)),
                        end_port: None
                    },
                    PortSpec {
                        protocol: Protocol::Tcp,
                        port: Some(Port::Name("metrics".into())),
                        end_port: None
                    },
                ],
            }],
            egress: vec![Rule {
                peers: vec![Peer::IpBlock {
                    cidr: "198.19.0.0/16".parse().unwrap(),
                    except: vec!["198.19.7.0/24".parse().unwrap()]
                }],
                ports: vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port: Some(Port::Number(9000)),
                    end_port: Some(9100)
                }],
            }],
            audit: false,
        }
    );
}

#[test]
fn multi_document_yaml_with_ignored_kinds_and_empty_documents() {
    let load = parse(
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n---\n# only a comment\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n---\n\
         apiVersion: v1\nkind: Node\nmetadata:\n  name: n\n---\n\
         apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: calico\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: z\nspec:\n  containers: [{name: c}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: b\nspec:\n  containers: [{name: c}]\nstatus:\n  podIP: 198.18.0.3\n---\n",
    );
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    let pods: Vec<(&str, &str)> = load
        .state
        .pods
        .iter()
        .map(|p| (p.namespace.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(
        pods,
        [("b", "a"), ("default", "z")],
        "sorted by (namespace, name); namespace defaults to default"
    );
    assert_eq!(
        load.state.pods[1].phase,
        PodPhase::Pending,
        "no status: Pending"
    );
    assert!(load.state.pods[1].ips.is_empty());
    assert_eq!(load.state.pods[0].ips, [ip("198.18.0.3")]);
    assert!(
        load.state.policies.is_empty(),
        "Calico's NetworkPolicy is another API"
    );
    assert_eq!(load.state.namespaces.len(), 1);
}

#[test]
fn json_stream_and_typed_list_items_without_kind() {
    let text = r#"{"apiVersion": "v1", "kind": "PodList", "items": [
        {"metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}},
         "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 53, "protocol": "UDP", "name": "dns"}]}]},
         "status": {"podIP": "198.18.0.1", "podIPs": [{"ip": "198.18.0.9"}]}}]}
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList", "items": [
         {"metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}}]}"#;
    let load = source::state_from_str("nfs.json", text);
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    let pod = &load.state.pods[0];
    assert_eq!(
        pod.ips,
        [ip("198.18.0.9")],
        "podIPs takes precedence over podIP"
    );
    assert_eq!(
        pod.ports,
        [ContainerPort {
            name: Some("dns".into()),
            port: 53,
            protocol: Protocol::Udp
        }]
    );
    let deny = policy_named(&load.state, "deny");
    assert!(deny.isolates_ingress && !deny.isolates_egress);
    assert!(deny.ingress.is_empty() && deny.pod_selector == LabelSelector::default());
}

#[test]
fn port_protocol_defaults_to_tcp_and_empty_lists_mean_all() {
    let load = parse(&np(
        "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 80\n    - {}\n  - from: []\n    ports: []\n",
    ));
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    let policy = policy_named(&load.state, "p");
    assert_eq!(
        policy.ingress[0].ports,
        [
            PortSpec {
                protocol: Protocol::Tcp,
                port: Some(Port::Number(80)),
                end_port: None
            },
            PortSpec {
                protocol: Protocol::Tcp,
                port: None,
                end_port: None
            },
        ]
    );
    assert_eq!(
        policy.ingress[1],
        Rule {
            peers: vec![],
            ports: vec![]
        }
    );
}

#[test]
fn policy_types_defaulting_table() {
    // (spec, isolates ingress, isolates egress, ingress rules, egress rules)
    let table: &[(&str, bool, bool, usize, usize)] = &[
        ("  podSelector: {}\n", true, false, 0, 0),
        ("  podSelector: {}\n  ingress: [{}]\n", true, false, 1, 0),
        ("  podSelector: {}\n  egress: [{}]\n", true, true, 0, 1),
        (
            "  podSelector: {}\n  ingress: [{}]\n  egress: []\n",
            true,
            false,
            1,
            0,
        ),
        ("  podSelector: {}\n  egress: []\n", true, false, 0, 0),
        (
            "  podSelector: {}\n  policyTypes: []\n  egress: [{}]\n",
            true,
            true,
            0,
            1,
        ),
        (
            "  podSelector: {}\n  policyTypes: [Egress]\n",
            false,
            true,
            0,
            0,
        ),
        (
            "  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n",
            false,
            true,
            1,
            0,
        ),
        (
            "  podSelector: {}\n  policyTypes: [Ingress]\n  egress: [{}]\n",
            true,
            false,
            0,
            1,
        ),
        (
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
            true,
            true,
            0,
            0,
        ),
    ];
    for (spec, ingress, egress, n_in, n_out) in table {
        let load = parse(&np(spec));
        assert!(
            load.errors.is_empty(),
            "{spec}: {:?}",
            messages(&load.errors)
        );
        let p = policy_named(&load.state, "p");
        assert_eq!(
            (
                p.isolates_ingress,
                p.isolates_egress,
                p.ingress.len(),
                p.egress.len()
            ),
            (*ingress, *egress, *n_in, *n_out),
            "{spec}"
        );
    }
}

#[test]
fn validation_errors_name_file_object_and_field() {
    let from = |peer: &str| {
        np(&format!(
            "  podSelector: {{}}\n  ingress:\n  - from:\n    - podSelector: {{}}\n    - {peer}\n"
        ))
    };
    let port = |port: &str| {
        np(&format!(
            "  podSelector: {{}}\n  egress:\n  - ports:\n    - {port}\n"
        ))
    };
    let sel = |expr: &str| {
        np(&format!(
            "  podSelector:\n    matchExpressions:\n    - {expr}\n"
        ))
    };
    // (manifest, expected error, exactly)
    let table: Vec<(String, &str)> = vec![
        (from("ipBlock: {cidr: 10.0.0.0/33}"), "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[1].ipBlock.cidr: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"),
        (from("ipBlock: {cidr: 10.0.0.1}"), "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[1].ipBlock.cidr: \"10.0.0.1\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"),
        (from("ipBlock: {cidr: \"\"}"), "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[1].ipBlock.cidr: required"),
        (from("ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}"), "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[1].ipBlock.except[0]: \"11.0.0.0/16\": must be a strict subset of `cidr` 10.0.0.0/8"),
        (from("ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}"), "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[1].ipBlock.except[0]: \"10.0.0.0/8\": must be a strict subset of `cidr` 10.0.0.0/8"),
        (from("ipBlock: {cidr: 10.0.0.0/8, except: [\"fd00::/64\"]}"), "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[1].ipBlock.except[0]: \"fd00::/64\": must be a strict subset of `cidr` 10.0.0.0/8"),
        (from("ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/99]}"), "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[1].ipBlock.except[0]: \"10.1.0.0/99\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"),
        (from("{}"), "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[1]: must specify a peer: podSelector, namespaceSelector or ipBlock"),
        (from("{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}"), "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[1]: may not specify both ipBlock and another peer"),
        (port("port: 0"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].port: 0: must be between 1 and 65535, inclusive"),
        (port("port: 65536"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].port: 65536: must be between 1 and 65535, inclusive"),
        (port("{port: 80, endPort: 79}"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].endPort: 79: must be greater than or equal to `port` 80"),
        (port("{port: 80, endPort: 70000}"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].endPort: 70000: must be between 1 and 65535, inclusive"),
        (port("{endPort: 90}"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].port: must be specified when endPort is specified"),
        (port("{port: http, endPort: 90}"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].endPort: may not be specified when `port` is non-numeric"),
        (port("port: Http"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].port: \"Http\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"),
        (port("port: \"8080\""), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].port: \"8080\": must contain at least one letter (a-z)"),
        (port("port: web--api"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].port: \"web--api\": must not contain consecutive hyphens"),
        (port("port: -web"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].port: \"-web\": must not begin or end with a hyphen"),
        (port("port: a-very-long-port-name"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].port: \"a-very-long-port-name\": must be no more than 15 characters"),
        (port("protocol: tcp"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].protocol: unsupported value \"tcp\": supported values: \"TCP\", \"UDP\", \"SCTP\""),
        (port("protocol: ICMP"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].protocol: unsupported value \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\""),
        (sel("{key: app, operator: Equals, values: [a]}"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchExpressions[0].operator: \"Equals\": not a valid selector operator (In, NotIn, Exists, DoesNotExist)"),
        (sel("{key: app, operator: In}"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'"),
        (sel("{key: app, operator: NotIn, values: []}"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'"),
        (sel("{key: app, operator: Exists, values: [a]}"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchExpressions[0].values: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"),
        (sel("{key: app, operator: In, values: [\"a b\"]}"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchExpressions[0].values[0]: \"a b\": a valid label value must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
        (sel("{key: \"-app\", operator: Exists}"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchExpressions[0].key: \"-app\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
        (sel("{key: \"Example.com/app\", operator: Exists}"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchExpressions[0].key: \"Example.com/app\": prefix part \"Example.com\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        (sel("{key: a/b/c, operator: Exists}"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchExpressions[0].key: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"),
        (np(&format!("  podSelector:\n    matchLabels:\n      {}: x\n", "k".repeat(64))), "name part must be no more than 63 characters"),
        (np("  podSelector:\n    matchLabels:\n      app: \"-x\"\n"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchLabels[app]: \"-x\": a valid label value must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
        (np("  podSelector: {}\n  policyTypes: [Ingress, egress]\n"), "nfs.yaml: NetworkPolicy x/p: spec.policyTypes[1]: unsupported value \"egress\": supported values: \"Ingress\", \"Egress\""),
        (np("  podSelector: {}\n  policyTypes: [Ingress, Egress, Ingress]\n"), "nfs.yaml: NetworkPolicy x/p: spec.policyTypes: may not specify more than two policyTypes"),
        // What k8s-openapi's decoding rejects by itself, with the field path found by serde_path_to_error.
        (port("port: [80]"), "nfs.yaml: NetworkPolicy x/p: spec.egress[0].ports[0].port: invalid type: sequence, expected IntOrString"),
        // k8s-openapi fills a missing required string with "", which validation then rejects.
        (sel("{operator: Exists}"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchExpressions[0].key: \"\": name part must be non-empty"),
        (sel("{key: app}"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchExpressions[0].operator: \"\": not a valid selector operator (In, NotIn, Exists, DoesNotExist)"),
        (from("ipBlock: {except: [10.0.0.0/8]}"), "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[1].ipBlock.cidr: required"),
        (np("  podSelector:\n    matchLabels:\n      version: 1.0\n"), "nfs.yaml: NetworkPolicy x/p: spec.podSelector.matchLabels.version: invalid type: floating point `1.0`, expected a string"),
        // Pods.
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 198.18.0.300}\n".into(),
         "nfs.yaml: Pod x/a: status.podIP: \"198.18.0.300\": must be a valid IP address"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIPs: [{ip: 198.18.0.3}, {ip: \"fd00::zz\"}]}\n".into(),
         "nfs.yaml: Pod x/a: status.podIPs[1].ip: \"fd00::zz\": must be a valid IP address"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIPs: [{ip: 198.18.0.3}, {ip: 198.18.0.4}]}\n".into(),
         "nfs.yaml: Pod x/a: status.podIPs[1].ip: \"198.18.0.4\": may specify no more than one IP for each IP family"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 0}]}]}\n".into(),
         "nfs.yaml: Pod x/a: spec.containers[0].ports[0].containerPort: 0: must be between 1 and 65535, inclusive"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, name: HTTP}]}]}\n".into(),
         "nfs.yaml: Pod x/a: spec.containers[0].ports[0].name: \"HTTP\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protocol: Tcp}]}]}\n".into(),
         "nfs.yaml: Pod x/a: spec.containers[0].ports[0].protocol: unsupported value \"Tcp\": supported values: \"TCP\", \"UDP\", \"SCTP\""),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, name: web}]}, {name: d, ports: [{containerPort: 81, name: web}]}]}\n".into(),
         "nfs.yaml: Pod x/a: spec.containers[1].ports[0].name: duplicate value \"web\""),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {phase: Runing}\n".into(),
         "nfs.yaml: Pod x/a: status.phase: unsupported value \"Runing\": supported values: \"Pending\", \"Running\", \"Succeeded\", \"Failed\", \"Unknown\""),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: \"80\"}]}]}\n".into(),
         "nfs.yaml: Pod x/a: spec.containers[0].ports[0].containerPort: invalid type: string \"80\", expected i32"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {startTime: yesterday}\n".into(),
         "nfs.yaml: Pod x/a: status.startTime: failed to parse four digit integer as year: invalid digit, expected 0-9 but got y"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: A_1, namespace: x}\nspec: {containers: [{name: c}]}\n".into(),
         "nfs.yaml: Pod x/A_1: metadata.name: \"A_1\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\nspec: {containers: [{name: c}]}\n".into(),
         "nfs.yaml: Pod (document 1): metadata.name: required"),
        ("apiVersion: v1\nkind: Namespace\nmetadata: {name: Prod}\n".into(),
         "nfs.yaml: Namespace Prod: metadata.name: \"Prod\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"),
        // Kinds that look like ours.
        ("apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: p}\n".into(),
         "nfs.yaml: NetworkPolicy default/p: apiVersion: \"v1\": NetworkPolicy is served as \"networking.k8s.io/v1\""),
        ("apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}\n".into(),
         "nfs.yaml: NetworkPolicy default/p: apiVersion: \"extensions/v1beta1\": NetworkPolicy is served as \"networking.k8s.io/v1\""),
        ("apiVersion: networking.k8s.io/v1\nkind: Networkpolicy\nmetadata: {name: p}\n".into(),
         "nfs.yaml: Networkpolicy default/p: kind: \"Networkpolicy\" is not a kind; did you mean \"NetworkPolicy\"?"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicies\nmetadata: {name: p}\n".into(),
         "nfs.yaml: NetworkPolicies default/p: kind: \"NetworkPolicies\" is not a kind; did you mean \"NetworkPolicy\"?"),
        ("apiVersion: v1\nkind: Pods\nmetadata: {name: p}\n".into(),
         "nfs.yaml: Pods default/p: kind: \"Pods\" is not a kind; did you mean \"Pod\"?"),
        ("apiVersion: v1\nkind: Namespce\nmetadata: {name: p}\n".into(),
         "nfs.yaml: Namespce p: kind: \"Namespce\" is not a kind; did you mean \"Namespace\"?"),
        ("apiVersion: v1\nmetadata: {name: p}\n".into(), "nfs.yaml: document 1: kind: required"),
        ("- just\n- a list\n".into(), "nfs.yaml: document 1: (document): expected a Kubernetes object (a mapping)"),
        ("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a}\n  spec: {containers: [{name: c}]}\n- apiVersion: v1\n  kind: Pod\n  metadata: {labels: {a: b}}\n".into(),
         "nfs.yaml: Pod (document 1, items[1]): metadata.name: required"),
    ];
    for (manifest, expected) in &table {
        let load = parse(manifest);
        let got = messages(&load.errors);
        assert!(
            got.iter()
                .any(|m| m == expected
                    || (!expected.starts_with("nfs.yaml") && m.contains(expected))),
            "manifest:\n{manifest}\nexpected: {expected}\ngot: {got:#?}"
        );
        assert!(
            load.state.policies.is_empty() && load.state.namespaces.is_empty(),
            "{manifest}: the invalid object is skipped"
        );
        assert!(
            load.state
                .pods
                .iter()
                .all(|p| p.name == "a" && p.namespace == "default"),
            "{manifest}"
        );
    }
}

#[test]
fn cidr_host_bits_are_truncated_with_a_warning() {
    let load = parse(&np(
        "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 198.18.1.7/24, except: [\"198.18.1.130/25\"]}\n",
    ));
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    assert_eq!(
        messages(&load.warnings),
        [
            "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[0].ipBlock.cidr: \"198.18.1.7/24\" has host bits set; used as 198.18.1.0/24",
            "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].from[0].ipBlock.except[0]: \"198.18.1.130/25\" has host bits set; used as 198.18.1.128/25",
        ]
    );
    assert_eq!(
        policy_named(&load.state, "p").ingress[0].peers,
        [Peer::IpBlock {
            cidr: "198.18.1.0/24".parse().unwrap(),
            except: vec!["198.18.1.128/25".parse().unwrap()]
        }]
    );
}

#[test]
fn namespace_name_label_is_set_like_the_api_server() {
    let load = parse(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {kubernetes.io/metadata.name: b}\n",
    );
    assert!(load.errors.is_empty());
    assert_eq!(
        load.state.namespaces["a"].labels,
        labels(&[("kubernetes.io/metadata.name", "a")])
    );
    assert_eq!(
        messages(&load.warnings),
        [
            "nfs.yaml: Namespace a: metadata.labels: kubernetes.io/metadata.name=\"b\" replaced by \"a\", as the API server does"
        ]
    );
}

#[test]
fn yaml_syntax_error_names_line_and_column() {
    let load = parse("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n   namespace: x\n");
    assert_eq!(load.errors.len(), 1);
    match &load.errors[0] {
        SourceError::Syntax {
            file,
            line,
            column,
            message,
        } => {
            assert_eq!(
                (file.as_str(), *line, *column),
                ("nfs.yaml", 5, 13),
                "{message}"
            );
            assert!(message.contains("line 5 column 13"), "{message}");
        }
        other => panic!("expected a syntax error, got {other}"),
    }
    let json = source::state_from_str("nfs.json", "{\"kind\": \"Pod\",\n \"apiVersion\": }");
    assert_eq!(
        messages(&json.errors),
        ["nfs.json: invalid JSON: expected value at line 2 column 16"]
    );
}

const POD_A: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 198.18.0.1}\n";
const POLICY_OK: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - ports: [{port: 80}]\n";
const POLICY_BAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - ports: [{port: 80, protocol: HTTP}]\n";

#[test]
fn last_good_policy_kept_when_an_edit_makes_it_invalid() {
    let dir = tempdir();
    write(dir.path(), "pods.yaml", POD_A);
    write(dir.path(), "policy.yaml", POLICY_OK);
    let mut source = ManifestDir::new(dir.path());
    let first = source.load();
    assert!(first.errors.is_empty(), "{:?}", messages(&first.errors));

    write(dir.path(), "policy.yaml", POLICY_BAD);
    let second = source.load();
    let file = dir.path().join("policy.yaml").display().to_string();
    assert_eq!(
        messages(&second.errors),
        [format!(
            "{file}: NetworkPolicy x/p: spec.ingress[0].ports[0].protocol: unsupported value \"HTTP\": supported values: \"TCP\", \"UDP\", \"SCTP\""
        )]
    );
    assert_eq!(second.state, first.state, "the old version stays enforced");

    // Still invalid on the next reload: still the old version.
    assert_eq!(source.load().state, first.state);

    // A new invalid object with no previous version is skipped.
    write(
        dir.path(),
        "more.yaml",
        &POLICY_BAD.replace("name: p,", "name: q,"),
    );
    let third = source.load();
    assert_eq!(third.errors.len(), 2);
    assert_eq!(
        third
            .state
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["p"]
    );
}

#[test]
fn broken_yaml_keeps_the_files_objects() {
    let dir = tempdir();
    write(dir.path(), "all.yaml", &format!("{POD_A}---\n{POLICY_OK}"));
    write(
        dir.path(),
        "other.yaml",
        &POD_A.replace("name: a,", "name: b,"),
    );
    let mut source = ManifestDir::new(dir.path());
    let first = source.load();
    assert!(first.errors.is_empty());
    assert_eq!(first.state.pods.len(), 2);
    assert_eq!(first.state.policies.len(), 1);

    // The policy deleted and the pod broken in the same edit: the file is not YAML,
    // so nothing of it changes, while the other file still updates.
    write(
        dir.path(),
        "all.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a\n",
    );
    std::fs::remove_file(dir.path().join("other.yaml")).unwrap();
    let second = source.load();
    assert_eq!(second.errors.len(), 1);
    let message = second.errors[0].to_string();
    assert!(
        message.starts_with(&format!("{}: ", dir.path().join("all.yaml").display())),
        "{message}"
    );
    assert!(message.contains("line 4 column 1"), "{message}");
    assert_eq!(
        second
            .state
            .pods
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(second.state.policies, first.state.policies);

    // Fixed, without the policy: now it is gone.
    write(dir.path(), "all.yaml", POD_A);
    let third = source.load();
    assert!(third.errors.is_empty());
    assert!(third.state.policies.is_empty());
    assert_eq!(third.state.pods.len(), 1);
}

#[test]
fn removed_objects_and_files_are_gone() {
    let dir = tempdir();
    write(dir.path(), "a.yaml", &format!("{POD_A}---\n{POLICY_OK}"));
    let mut source = ManifestDir::new(dir.path());
    assert_eq!(source.load().state.policies.len(), 1);
    write(dir.path(), "a.yaml", POD_A);
    let load = source.load();
    assert!(load.errors.is_empty());
    assert!(load.state.policies.is_empty());
    // Gone means forgotten: an invalid version coming back has nothing to fall back to.
    write(dir.path(), "a.yaml", &format!("{POD_A}---\n{POLICY_BAD}"));
    let load = source.load();
    assert_eq!(load.errors.len(), 1);
    assert!(load.state.policies.is_empty());
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    assert_eq!(source.load().state, State::default());
}

#[test]
fn duplicates_keep_the_first_by_file_name() {
    let dir = tempdir();
    write(
        dir.path(),
        "b.yaml",
        &POLICY_OK.replace("port: 80", "port: 81"),
    );
    write(dir.path(), "a.yaml", POLICY_OK);
    let load = ManifestDir::new(dir.path()).load();
    assert_eq!(
        messages(&load.errors),
        [format!(
            "{}: NetworkPolicy x/p: duplicate; the one in {} is kept",
            dir.path().join("b.yaml").display(),
            dir.path().join("a.yaml").display()
        )]
    );
    assert_eq!(
        load.state.policies[0].ingress[0].ports[0].port,
        Some(Port::Number(80))
    );
}

#[test]
fn only_manifest_files_directly_in_the_directory_are_read() {
    let dir = tempdir();
    for name in [
        "b.yml",
        "a.json",
        "c.yaml",
        ".hidden.yaml",
        ".#c.yaml",
        "c.yaml~",
        "#c.yaml#",
        "c.yaml.swp",
        "notes.txt",
    ] {
        write(dir.path(), name, "x");
    }
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("c.yaml"), dir.path().join("d.yaml")).unwrap();
    assert_eq!(
        source::manifest_files(dir.path()).unwrap(),
        ["a.json", "b.yml", "c.yaml", "d.yaml"]
    );
}

#[test]
fn unreadable_directory_keeps_everything() {
    let dir = tempdir();
    write(dir.path(), "a.yaml", POD_A);
    let mut source = ManifestDir::new(dir.path().join("m"));
    std::fs::create_dir(dir.path().join("m")).unwrap();
    write(&dir.path().join("m"), "a.yaml", POD_A);
    let first = source.load();
    assert_eq!(first.state.pods.len(), 1);
    std::fs::rename(dir.path().join("m"), dir.path().join("m.old")).unwrap();
    let second = source.load();
    assert_eq!(second.errors.len(), 1);
    assert!(
        second.errors[0]
            .to_string()
            .contains("cannot list the manifest directory"),
        "{}",
        second.errors[0]
    );
    assert_eq!(second.state, first.state);
}

async fn signalled(rx: &mut tokio::sync::mpsc::Receiver<()>) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv()).await,
        Ok(Some(()))
    )
}

#[tokio::test]
async fn watch_signals_a_change_and_reload_sees_it() {
    let dir = tempdir();
    write(dir.path(), "pods.yaml", POD_A);
    let mut source = ManifestDir::new(dir.path());
    assert_eq!(source.load().state.policies.len(), 0);
    let (_watcher, mut changes) = source::watch(dir.path()).unwrap();

    write(dir.path(), "policy.yaml", POLICY_OK);
    assert!(
        signalled(&mut changes).await,
        "no signal within 2 s after writing a file"
    );
    assert_eq!(source.load().state.policies.len(), 1);

    // An editor that writes a temporary file and renames it over the original.
    write(
        dir.path(),
        ".policy.yaml.tmp",
        &POLICY_OK.replace("port: 80", "port: 443"),
    );
    std::fs::rename(
        dir.path().join(".policy.yaml.tmp"),
        dir.path().join("policy.yaml"),
    )
    .unwrap();
    assert!(
        signalled(&mut changes).await,
        "no signal after a rename over the file"
    );
    let load = source.load();
    assert_eq!(
        load.state.policies[0].ingress[0].ports[0].port,
        Some(Port::Number(443))
    );

    // Reading the directory (opens, reads) is not a change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while changes.try_recv().is_ok() {}
    source.load();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), changes.recv())
            .await
            .is_err(),
        "a load alone must not signal a change"
    );
}

#[tokio::test]
async fn watch_follows_a_replaced_directory() {
    let parent = tempdir();
    let dir = parent.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "pods.yaml", POD_A);
    let mut source = ManifestDir::new(&dir);
    let (watcher, mut changes) = source::watch(&dir).unwrap();

    let staged = parent.path().join("manifests.new");
    std::fs::create_dir(&staged).unwrap();
    write(&staged, "pods.yaml", POD_A);
    write(&staged, "policy.yaml", POLICY_OK);
    std::fs::rename(&dir, parent.path().join("manifests.old")).unwrap();
    std::fs::rename(&staged, &dir).unwrap();
    assert!(
        signalled(&mut changes).await,
        "no signal after the directory was replaced"
    );
    assert_eq!(source.load().state.policies.len(), 1);

    // The new directory is watched too.
    std::fs::remove_file(dir.join("policy.yaml")).unwrap();
    assert!(
        signalled(&mut changes).await,
        "no signal for a change inside the new directory"
    );
    assert_eq!(source.load().state.policies.len(), 0);

    // Dropping the guard stops watching and closes the channel.
    drop(watcher);
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        while changes.recv().await.is_some() {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the channel did not close after the watcher was dropped"
    );
}
