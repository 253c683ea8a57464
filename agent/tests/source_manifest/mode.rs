//! The per-policy annotation `netfence.io/mode`: `audit`, `enforce`, absent, and an
//! invalid value (reported with its field; the policy's last good version stays).

use netfence::model::MODE_ANNOTATION;
use netfence::source::ManifestDir;

use super::{messages, parse, policy_named, tempdir, write};

/// A policy `p` in `x` isolating `app=a` for ingress, with `annotations` (YAML flow
/// mapping, or empty for none).
fn annotated(annotations: &str) -> String {
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!(", annotations: {annotations}")
    };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x{annotations}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  ingress:\n  - ports: [{{port: 80}}]\n"
    )
}

#[test]
fn mode_annotation_audit_enforce_and_absent() {
    assert_eq!(MODE_ANNOTATION, "netfence.io/mode");
    // (annotations, audit)
    let table = [
        ("{netfence.io/mode: audit}", true),
        ("{netfence.io/mode: enforce}", false),
        ("", false),
        // Other annotations do not matter.
        ("{example.com/mode: audit, note: x}", false),
        ("{netfence.io/mode: audit, note: x}", true),
    ];
    for (annotations, audit) in table {
        let load = parse(&annotated(annotations));
        assert!(
            load.errors.is_empty(),
            "{annotations}: {:?}",
            messages(&load.errors)
        );
        let policy = policy_named(&load.state, "p");
        assert_eq!(policy.audit, audit, "{annotations}");
        // The rest of the policy does not depend on the mode.
        assert!(
            policy.isolates_ingress && !policy.isolates_egress,
            "{annotations}"
        );
        assert_eq!(policy.ingress.len(), 1, "{annotations}");
    }
}

#[test]
fn invalid_mode_annotation_is_an_error_naming_the_field() {
    for value in ["Audit", "\"\"", "dry-run", "ENFORCE", "\"audit \""] {
        let load = parse(&annotated(&format!("{{netfence.io/mode: {value}}}")));
        assert_eq!(
            messages(&load.errors),
            [
                "nfs.yaml: NetworkPolicy x/p: metadata.annotations[netfence.io/mode]: must be \"audit\" or \"enforce\""
            ],
            "{value}"
        );
        assert!(
            load.state.policies.is_empty(),
            "{value}: an invalid policy is skipped"
        );
    }
}

#[test]
fn invalid_mode_keeps_the_last_good_policy_and_switching_mode_is_seen() {
    let dir = tempdir();
    write(
        dir.path(),
        "p.yaml",
        &annotated("{netfence.io/mode: audit}"),
    );
    let mut source = ManifestDir::new(dir.path());
    let first = source.load();
    assert!(first.errors.is_empty(), "{:?}", messages(&first.errors));
    assert!(policy_named(&first.state, "p").audit);

    write(
        dir.path(),
        "p.yaml",
        &annotated("{netfence.io/mode: enforced}"),
    );
    let second = source.load();
    let file = dir.path().join("p.yaml").display().to_string();
    assert_eq!(
        messages(&second.errors),
        [format!(
            "{file}: NetworkPolicy x/p: metadata.annotations[netfence.io/mode]: must be \"audit\" or \"enforce\""
        )]
    );
    assert_eq!(second.state, first.state, "the audit version stays");

    write(
        dir.path(),
        "p.yaml",
        &annotated("{netfence.io/mode: enforce}"),
    );
    let third = source.load();
    assert!(third.errors.is_empty(), "{:?}", messages(&third.errors));
    assert!(!policy_named(&third.state, "p").audit);

    write(dir.path(), "p.yaml", &annotated(""));
    let fourth = source.load();
    assert!(!policy_named(&fourth.state, "p").audit);
    assert_eq!(fourth.state, third.state);
}
