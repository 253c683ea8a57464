//! Strict fields, as `kubectl apply --validate=strict`: a field that is not in the
//! kind's schema, at any depth and whatever its value, rejects the object with the
//! file, the object and the field path; `kubectl get -o yaml` output and a policy
//! using every field are accepted; YAML merge keys are applied, as kubectl does; a
//! List's own fields are strict too; through `ManifestDir` an unknown field keeps the
//! last good version like any invalid object. Also: objects named by a wrong
//! apiVersion or a misspelt kind carry their namespace.

use std::path::Path;

use netfence::model::LabelSelector;
use netfence::source::ManifestDir;

use super::{labels, messages, np, parse, tempdir, write};

/// The message every unknown field carries after its path.
const UNKNOWN: &str =
    "unknown field: not in the schema of this kind (kubectl apply --validate=strict rejects it)";

fn pod(body: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x}}\n{body}")
}

#[test]
fn unknown_fields_reject_the_object_naming_the_field_path() {
    #[rustfmt::skip]
    let table: Vec<(String, &str)> = vec![
        // `form` for `from`: without strictness, "allow from everyone".
        (np("  podSelector: {}\n  ingress:\n  - form:\n    - podSelector: {matchLabels: {app: b}}\n"),
         "NetworkPolicy x/p: spec.ingress[0].form"),
        // An unknown field with no value is unknown all the same.
        (np("  podSelector: {}\n  ingress:\n  - form:\n"), "NetworkPolicy x/p: spec.ingress[0].form"),
        // `ingres` and `policyType`: without strictness, deny-all.
        (np("  podSelector: {}\n  ingres:\n  - {}\n"), "NetworkPolicy x/p: spec.ingres"),
        (np("  podSelector: {}\n  policyType: [Egress]\n"), "NetworkPolicy x/p: spec.policyType"),
        (np("  podSelecter: {matchLabels: {app: a}}\n"), "NetworkPolicy x/p: spec.podSelecter"),
        (np("  podSelector: {}\n  ingress:\n  - from:\n    - {namespaceSelector: {}, podSelecter: {}}\n"),
         "NetworkPolicy x/p: spec.ingress[0].from[0].podSelecter"),
        (np("  podSelector: {}\n  ingress:\n  - from:\n    - {podSelector: {}, namespaceSelecter: {}}\n"),
         "NetworkPolicy x/p: spec.ingress[0].from[0].namespaceSelecter"),
        (np("  podSelector:\n    matchLabel: {app: a}\n"), "NetworkPolicy x/p: spec.podSelector.matchLabel"),
        (np("  podSelector:\n    matchExpressions: [{key: app, operator: Exists, operater: Exists}]\n"),
         "NetworkPolicy x/p: spec.podSelector.matchExpressions[0].operater"),
        (np("  podSelector: {}\n  egress:\n  - to:\n    - ipblock: {cidr: 10.0.0.0/8}\n"),
         "NetworkPolicy x/p: spec.egress[0].to[0].ipblock"),
        (np("  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8, exept: [10.1.0.0/16]}\n"),
         "NetworkPolicy x/p: spec.egress[0].to[0].ipBlock.exept"),
        (np("  podSelector: {}\n  ingress:\n  - ports: [{port: 80, endport: 90}]\n"),
         "NetworkPolicy x/p: spec.ingress[0].ports[0].endport"),
        (np("  podSelector: {}\n  egress:\n  - ports: [{port: 53, protocl: UDP}]\n"),
         "NetworkPolicy x/p: spec.egress[0].ports[0].protocl"),
        (format!("{}extra: 1\n", np("  podSelector: {}\n")), "NetworkPolicy x/p: extra"),
        (np("  podSelector: {}\n").replace("namespace: x", "namespace: x\n  label: {a: b}"),
         "NetworkPolicy x/p: metadata.label"),
        // Pods: a container port's typo, a status typo (`podIp`: a pod without an IP).
        (pod("spec: {containers: [{name: c, image: nginx, ports: [{containerPort: 80, protocl: UDP}]}]}\n"),
         "Pod x/a: spec.containers[0].ports[0].protocl"),
        (pod("spec: {containers: [{name: c}]}\nstatus: {podIp: 198.18.0.1}\n"), "Pod x/a: status.podIp"),
        (pod("spec: {containers: [{name: c}], hostnetwork: true}\n"), "Pod x/a: spec.hostnetwork"),
        ("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\nspec: {finalizer: [kubernetes]}\n".into(),
         "Namespace x: spec.finalizer"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec: {clusterIp: 10.96.0.1, ports: [{port: 80}]}\n".into(),
         "Service x/s: spec.clusterIp"),
        ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, namespace: x}\naddressType: IPv4\nendpoints: [{addresses: [198.18.0.1], condition: {ready: true}}]\n".into(),
         "EndpointSlice x/e: endpoints[0].condition"),
        // Unknown fields of an FQDN slice (ignored as an object) are still reported.
        ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, namespace: x}\naddressType: FQDN\nendpoints: [{addresses: [db.example.com]}]\nport: [{port: 1}]\n".into(),
         "EndpointSlice x/e: port"),
        // An item of a List.
        (format!("apiVersion: v1\nkind: List\nitems:\n- {}", pod("spec: {containers: [{name: c, imagee: nginx}]}\n").replace('\n', "\n  ")),
         "Pod x/a: spec.containers[0].imagee"),
    ];
    for (manifest, expected) in &table {
        let load = parse(manifest);
        let got = messages(&load.errors);
        // The unknown field first; what validation then finds missing (a peer left
        // empty by `ipblock`) may follow, on the same object.
        assert_eq!(
            got.first(),
            Some(&format!("nfs.yaml: {expected}: {UNKNOWN}")),
            "manifest:\n{manifest}\ngot: {got:#?}"
        );
        let object = expected.split(": ").next().unwrap();
        assert!(
            got[1..]
                .iter()
                .all(|m| m.starts_with(&format!("nfs.yaml: {object}: "))
                    && !m.contains("unknown field")),
            "manifest:\n{manifest}\ngot: {got:#?}"
        );
        let state = &load.state;
        assert!(
            state.pods.is_empty()
                && state.policies.is_empty()
                && state.namespaces.is_empty()
                && state.services.is_empty()
                && state.endpoint_slices.is_empty(),
            "{manifest}: the object is skipped: {state:?}"
        );
    }
}

#[test]
fn unknown_fields_of_a_list_are_reported_and_its_items_still_read() {
    let item = pod("spec: {containers: [{name: c}]}\n").replace('\n', "\n  ");
    let load = parse(&format!(
        "apiVersion: v1\nkind: List\nmetadata: {{resourceVersion: \"\"}}\nitem: []\nitems:\n- {item}"
    ));
    assert_eq!(
        messages(&load.errors),
        [format!("nfs.yaml: List (document 1): item: {UNKNOWN}")]
    );
    assert_eq!(
        load.state.pods.len(),
        1,
        "the items are objects of their own"
    );
    let load = parse("apiVersion: v1\nkind: PodList\nitem:\n- metadata: {name: a}\n");
    assert_eq!(
        messages(&load.errors),
        [format!("nfs.yaml: List (document 1): item: {UNKNOWN}")],
        "`item:` for `items:` would drop every pod silently"
    );
}

#[test]
fn yaml_merge_keys_are_applied_as_kubectl_does() {
    let load = parse(&np(
        "  podSelector:\n    <<: {matchLabels: &app {app: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: *app}\n",
    ));
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    let policy = &load.state.policies[0];
    let app_a = LabelSelector {
        match_labels: labels(&[("app", "a")]),
        match_expressions: Vec::new(),
    };
    assert_eq!(policy.pod_selector, app_a, "merged, not dropped (all pods)");
    assert_eq!(policy.ingress[0].peers.len(), 1);
    let load = parse(&np("  podSelector:\n    <<: 5\n"));
    assert_eq!(load.errors.len(), 1, "{:?}", messages(&load.errors));
    assert!(
        load.errors[0]
            .to_string()
            .starts_with("nfs.yaml: document 1: merge key `<<`: "),
        "{}",
        load.errors[0]
    );
}

#[test]
fn every_unknown_field_of_an_object_is_reported_with_its_other_errors() {
    let load = parse(&np(
        "  podSelector: {}\n  ingres: []\n  ingress:\n  - ports: [{port: 80, protocol: HTTP, endport: 81}]\n",
    ));
    assert_eq!(
        messages(&load.errors),
        [
            format!("nfs.yaml: NetworkPolicy x/p: spec.ingres: {UNKNOWN}"),
            format!("nfs.yaml: NetworkPolicy x/p: spec.ingress[0].ports[0].endport: {UNKNOWN}"),
            "nfs.yaml: NetworkPolicy x/p: spec.ingress[0].ports[0].protocol: unsupported value \"HTTP\": supported values: \"TCP\", \"UDP\", \"SCTP\"".to_owned(),
        ]
    );
    assert!(load.state.policies.is_empty());
}

#[test]
fn kubectl_output_and_every_valid_field_are_accepted() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/strict/accepted.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let load = parse(&text);
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    assert!(load.warnings.is_empty(), "{:?}", messages(&load.warnings));
    let state = load.state;
    assert_eq!(state.namespaces.keys().collect::<Vec<_>>(), ["shop"]);
    assert_eq!(state.pods.len(), 1);
    assert_eq!(state.pods[0].ips.len(), 2, "status.podIPs read");
    assert_eq!(state.policies.len(), 1);
    let policy = &state.policies[0];
    assert_eq!((policy.ingress.len(), policy.egress.len()), (1, 2));
    assert_eq!(policy.ingress[0].peers.len(), 2);
    assert_eq!(policy.ingress[0].ports.len(), 2);
}

const GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: b}}\n";

#[test]
fn an_unknown_field_keeps_the_last_good_version() {
    let dir = tempdir();
    write(dir.path(), "policy.yaml", GOOD);
    let mut source = ManifestDir::new(dir.path());
    let first = source.load();
    assert!(first.errors.is_empty(), "{:?}", messages(&first.errors));
    assert_eq!(first.state.policies[0].ingress[0].peers.len(), 1);

    // `from` typed `form`: were it accepted, the rule would allow every source.
    write(dir.path(), "policy.yaml", &GOOD.replace("from:", "form:"));
    let second = source.load();
    let file = dir.path().join("policy.yaml").display().to_string();
    assert_eq!(
        messages(&second.errors),
        [format!(
            "{file}: NetworkPolicy x/p: spec.ingress[0].form: {UNKNOWN}"
        )]
    );
    assert_eq!(second.state, first.state, "the good version stays");

    // A new object with an unknown field and no good version is skipped.
    write(
        dir.path(),
        "more.yaml",
        &GOOD
            .replace("name: p,", "name: q,")
            .replace("ingress:", "ingres:"),
    );
    let third = source.load();
    assert_eq!(third.errors.len(), 2, "{:?}", messages(&third.errors));
    assert_eq!(third.state, first.state);

    // Fixed: the new version is enforced.
    write(dir.path(), "policy.yaml", &GOOD.replace("app: b", "app: c"));
    std::fs::remove_file(dir.path().join("more.yaml")).unwrap();
    let fourth = source.load();
    assert!(fourth.errors.is_empty(), "{:?}", messages(&fourth.errors));
    assert_ne!(fourth.state, first.state);
}

#[test]
fn wrong_version_and_misspelt_kind_name_the_namespace() {
    let load = parse(
        "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n---\n\
         apiVersion: v1\nkind: Pods\nmetadata: {name: a, namespace: y}\n---\n\
         apiVersion: v1\nkind: Namespaces\nmetadata: {name: z}\n",
    );
    assert_eq!(
        messages(&load.errors),
        [
            "nfs.yaml: NetworkPolicy x/p: apiVersion: \"extensions/v1beta1\": NetworkPolicy is served as \"networking.k8s.io/v1\"",
            "nfs.yaml: Pods y/a: kind: \"Pods\" is not a kind; did you mean \"Pod\"?",
            "nfs.yaml: Namespaces z: kind: \"Namespaces\" is not a kind; did you mean \"Namespace\"?",
        ]
    );
}
