//! `explain` and `compile` on bad input, end to end through the binary: exit 0
//! allowed, 1 denied, 2 bad input (`--matrix`: 0 when printed); broken YAML, a file
//! that cannot be read (not UTF-8), an invalid object (an unknown field), a duplicate
//! object, a missing directory, an unknown pod and a port out of range are fatal with
//! the file, object and field on stderr and nothing on stdout, unless `--keep-going`
//! reports them, skips what they name and answers from the rest (a missing directory
//! stays fatal).

use std::path::Path;
use std::process::Command;

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";

/// Pods x/a, x/b and x/c; a policy lets only b into a on TCP 80.
const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c, image: nginx}]}\nstatus: {phase: Running, podIP: 198.18.0.1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}}\nspec: {containers: [{name: c, image: nginx}]}\nstatus: {phase: Running, podIP: 198.18.0.2}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x, labels: {app: c}}\nspec: {containers: [{name: c, image: nginx}]}\nstatus: {phase: Running, podIP: 198.18.0.3}\n";
const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: b}}\n    ports: [{port: 80}]\n";

/// What a run printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn netfence(dir: &Path, command: &str, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_netfence"))
        .arg(command)
        .arg("--manifests")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A manifest directory holding the good cluster plus `extra` files.
fn cluster(extra: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("nfx").tempdir().unwrap();
    let files: [(&str, &[u8]); 3] = [
        ("ns.yaml", NAMESPACE.as_bytes()),
        ("pods.yaml", PODS.as_bytes()),
        ("policy.yaml", POLICY.as_bytes()),
    ];
    for (name, text) in files.iter().chain(extra) {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

const B_TO_A: [&str; 6] = ["--from", "x/b", "--to", "x/a", "--port", "80"];
const C_TO_A: [&str; 6] = ["--from", "x/c", "--to", "x/a", "--port", "80"];

#[test]
fn verdicts_exit_0_allowed_1_denied_and_the_matrix_0() {
    let dir = cluster(&[]);
    let allowed = netfence(dir.path(), "explain", &B_TO_A);
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert!(
        allowed
            .stdout
            .starts_with("TCP 198.18.0.2 (x/b) -> 198.18.0.1 (x/a) port 80: ALLOWED\n"),
        "{}",
        allowed.stdout
    );
    assert_eq!(allowed.stderr, "");
    let denied = netfence(dir.path(), "explain", &C_TO_A);
    assert_eq!(denied.code, 1, "{}", denied.stderr);
    assert!(
        denied
            .stdout
            .starts_with("TCP 198.18.0.3 (x/c) -> 198.18.0.1 (x/a) port 80: DENIED\n"),
        "{}",
        denied.stdout
    );
    assert_eq!(denied.stderr, "");
    let json = netfence(
        dir.path(),
        "explain",
        &[&C_TO_A[..], &["-o", "json"]].concat(),
    );
    assert_eq!(json.code, 1);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["connections"][0]["allowed"], false);
    let matrix = netfence(
        dir.path(),
        "explain",
        &["--matrix", "--port", "80", "-o", "json"],
    );
    assert_eq!(matrix.code, 0, "{}", matrix.stderr);
    assert_eq!(
        matrix.stdout.trim(),
        r#"{"port":80,"protocol":"TCP","pods":["x/a","x/b","x/c"],"allowed":[[true,true,true],[true,true,true],[false,true,true]]}"#
    );
}

/// A typo (`form` for `from`) that, accepted, would let everyone into x/a.
const POLICY_TYPO: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: typo, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: c}}\n  ingress:\n  - form:\n    - podSelector: {matchLabels: {app: b}}\n";
const BROKEN: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x\n";
/// x/b again, in a file that sorts after `pods.yaml`.
const DUPLICATE: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: c}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 198.18.0.9}\n";

#[test]
fn bad_input_exits_2_naming_file_object_and_field_unless_keep_going() {
    // (extra file, its content, what stderr says about it)
    #[rustfmt::skip]
    let table: [(&str, &[u8], &str); 4] = [
        ("typo.yaml", POLICY_TYPO.as_bytes(),
         "typo.yaml: NetworkPolicy x/typo: spec.ingress[0].form: unknown field: not in the schema of this kind (kubectl apply --validate=strict rejects it)"),
        ("broken.yaml", BROKEN.as_bytes(), "broken.yaml: did not find expected ',' or '}' at line 4 column 1"),
        ("z-dup.yaml", DUPLICATE.as_bytes(), "z-dup.yaml: Pod x/b: duplicate; the one in "),
        ("latin1.yaml", b"metadata: {name: caf\xe9}\n", "latin1.yaml: cannot read: stream did not contain valid UTF-8"),
    ];
    for (name, text, message) in table {
        let dir = cluster(&[(name, text)]);
        for args in [&B_TO_A[..], &["--matrix", "--port", "80"]] {
            let run = netfence(dir.path(), "explain", args);
            assert_eq!(run.code, 2, "{name} {args:?}: {}", run.stderr);
            assert_eq!(run.stdout, "", "{name}: no answer on bad input");
            assert!(
                run.stderr.contains(&format!(
                    "netfence: error: {}",
                    dir.path().join(name).display()
                )) && run.stderr.contains(message),
                "{name}: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains("1 problem(s) in the manifests in ")
                    && run
                        .stderr
                        .contains("give --keep-going to skip what they name"),
                "{}",
                run.stderr
            );
        }
        let run = netfence(
            dir.path(),
            "explain",
            &[&B_TO_A[..], &["--keep-going"]].concat(),
        );
        assert_eq!(run.code, 0, "{name}: allowed: {}", run.stderr);
        assert!(run.stdout.contains(": ALLOWED\n"), "{}", run.stdout);
        assert!(
            run.stderr.contains("netfence: skipped: ") && run.stderr.contains(message),
            "{name}: {}",
            run.stderr
        );
    }
}

#[test]
fn keep_going_skips_the_bad_object_and_the_exit_code_follows_the_verdict() {
    // The duplicate x/b (labelled app=c) is skipped: the first x/b, allowed, answers.
    let dir = cluster(&[("z-dup.yaml", DUPLICATE.as_bytes())]);
    let run = netfence(
        dir.path(),
        "explain",
        &[&B_TO_A[..], &["--keep-going", "-o", "json"]].concat(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(value["connections"][0]["src"], "198.18.0.2");
    // The policy with `form` is skipped, not read as "allow from everyone": x/c stays
    // unisolated, and c -> a is still denied by a-from-b.
    let dir = cluster(&[("typo.yaml", POLICY_TYPO.as_bytes())]);
    let run = netfence(
        dir.path(),
        "explain",
        &[&C_TO_A[..], &["--keep-going"]].concat(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.contains(": DENIED\n"), "{}", run.stdout);
}

#[test]
fn missing_directory_unknown_pod_and_ports_out_of_range_exit_2() {
    let dir = cluster(&[]);
    let missing = dir.path().join("nope");
    for args in [
        &B_TO_A[..],
        &[&B_TO_A[..], &["--keep-going"]].concat(),
        &["--matrix", "--port", "80", "--keep-going"],
    ] {
        let run = netfence(&missing, "explain", args);
        assert_eq!(run.code, 2, "{args:?}");
        assert_eq!(run.stdout, "", "no empty matrix");
        assert!(
            run.stderr.starts_with(&format!(
                "netfence: error: {}: cannot list the manifest directory: No such file or directory",
                missing.display()
            )),
            "{}",
            run.stderr
        );
    }
    #[rustfmt::skip]
    let table: [(&[&str], &str); 5] = [
        (&["--from", "x/nope", "--to", "x/a", "--port", "80"], "netfence: error: no pod x/nope in the manifests\n"),
        (&["--from", "x/b", "--to", "x/a"], "netfence: error: --port is required for TCP\n"),
        (&["--from", "x/b", "--to", "x/a", "--port", "0"], "invalid value '0' for '--port <PORT>': 0 is not in 1..=65535"),
        (&["--matrix", "--port", "0"], "invalid value '0' for '--port <PORT>': 0 is not in 1..=65535"),
        (&["--from", "x/b", "--to", "x/a", "--port", "65536"], "invalid value '65536' for '--port <PORT>': 65536 is not in 1..=65535"),
    ];
    for (args, message) in table {
        let run = netfence(dir.path(), "explain", args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout, "");
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn compile_exits_2_on_bad_input_unless_keep_going() {
    let good = cluster(&[]);
    let run = netfence(good.path(), "compile", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("3 endpoints, "), "{}", run.stdout);

    let bad = cluster(&[("typo.yaml", POLICY_TYPO.as_bytes())]);
    let message = format!(
        "{}: NetworkPolicy x/typo: spec.ingress[0].form: unknown field",
        bad.path().join("typo.yaml").display()
    );
    let run = netfence(bad.path(), "compile", &["-o", "json"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains(&format!("netfence: error: {message}")),
        "{}",
        run.stderr
    );
    let run = netfence(bad.path(), "compile", &["--keep-going"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("3 endpoints, "), "{}", run.stdout);
    assert!(
        run.stderr
            .contains(&format!("netfence: skipped: {message}")),
        "{}",
        run.stderr
    );
    let run = netfence(&bad.path().join("nope"), "compile", &["--keep-going"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("cannot list the manifest directory"),
        "{}",
        run.stderr
    );
}
