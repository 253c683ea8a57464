//! `-f FILE` (repeatable, `-` for stdin, `-R` into subdirectories) on `explain` and
//! `compile`, end to end through the binary: the same objects and verdicts as the
//! manifest directory, the same strict errors naming file, object and field, a
//! duplicate across files naming both, and what is fatal even with `--keep-going`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// Namespace x; pods x/a, x/b, x/c; a policy lets only b into a on TCP 80.
pub const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]}]}\nstatus: {phase: Running, podIP: 198.18.0.1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}}\nspec: {containers: [{name: c, image: nginx}]}\nstatus: {phase: Running, podIP: 198.18.0.2}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x, labels: {app: c}}\nspec: {containers: [{name: c, image: nginx}]}\nstatus: {phase: Running, podIP: 198.18.0.3}\n---\n\
apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: b}}\n    ports: [{port: http}]\n";

/// What a run printed and how it exited.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `netfence ARGS` with `stdin` on its standard input.
pub fn netfence(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_netfence"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A temporary directory holding `files` (paths may name subdirectories).
pub fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("nff").tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

const B_TO_A: [&str; 6] = ["--from", "x/b", "--to", "x/a", "--port", "80"];
const C_TO_A: [&str; 6] = ["--from", "x/c", "--to", "x/a", "--port", "80"];

#[test]
fn a_file_stdin_and_a_directory_give_the_manifest_directory_s_verdicts() {
    let dir = tree(&[("all.yaml", CLUSTER)]);
    let file = dir.path().join("all.yaml");
    let from_dir = netfence(
        &[&["explain", "--manifests", s(dir.path())], &B_TO_A[..]].concat(),
        "",
    );
    assert_eq!(from_dir.code, 0, "{}", from_dir.stderr);
    for input in [
        vec!["-f", s(&file)],
        vec!["-f", "-"],
        vec!["--filename", s(dir.path())],
    ] {
        let allowed = netfence(&[&["explain"], &input[..], &B_TO_A[..]].concat(), CLUSTER);
        assert_eq!(allowed.code, 0, "{input:?}: {}", allowed.stderr);
        assert_eq!(allowed.stdout, from_dir.stdout, "{input:?}");
        assert_eq!(allowed.stderr, "");
        let denied = netfence(&[&["explain"], &input[..], &C_TO_A[..]].concat(), CLUSTER);
        assert_eq!(denied.code, 1, "{input:?}: {}", denied.stderr);
        assert!(
            denied
                .stdout
                .starts_with("TCP 198.18.0.3 (x/c) -> 198.18.0.1 (x/a) port 80: DENIED\n"),
            "{}",
            denied.stdout
        );
        let compiled = netfence(&[&["compile"], &input[..]].concat(), CLUSTER);
        assert_eq!(compiled.code, 0, "{}", compiled.stderr);
        assert!(
            compiled.stdout.starts_with("3 endpoints, "),
            "{}",
            compiled.stdout
        );
    }
}

#[test]
fn files_add_up_in_order_and_r_recurses_into_subdirectories() {
    let (namespace_and_pods, policy) = CLUSTER.split_at(CLUSTER.rfind("---\n").unwrap());
    let dir = tree(&[
        ("top.yaml", namespace_and_pods),
        ("sub/policy.yml", policy),
        ("sub/notes.txt", "not a manifest"),
        (".hidden/policy.yaml", "kind: Broken"),
    ]);
    // Without -R the policy in sub/ is not read: nothing isolates x/a.
    let flat = netfence(
        &[&["explain", "-f", s(dir.path())], &C_TO_A[..]].concat(),
        "",
    );
    assert_eq!(
        (flat.code, flat.stderr.as_str()),
        (0, ""),
        "{}",
        flat.stdout
    );
    let deep = netfence(
        &[&["explain", "-R", "-f", s(dir.path())], &C_TO_A[..]].concat(),
        "",
    );
    assert_eq!(
        (deep.code, deep.stderr.as_str()),
        (1, ""),
        "{}",
        deep.stdout
    );
    // Two -f: a file by name (any extension), then stdin.
    let named = dir.path().join("sub/notes.txt");
    std::fs::write(&named, &policy[4..]).unwrap();
    let run = netfence(
        &[
            &[
                "explain",
                "-f",
                s(&dir.path().join("top.yaml")),
                "-f",
                s(&named),
            ],
            &C_TO_A[..],
        ]
        .concat(),
        "",
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let run = netfence(
        &[
            &["explain", "-f", s(&dir.path().join("top.yaml")), "-f", "-"],
            &C_TO_A[..],
        ]
        .concat(),
        policy,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
}

#[test]
fn bad_files_exit_2_naming_file_object_and_field() {
    let typo = CLUSTER.replace("  - from:", "  - form:");
    let dir = tree(&[("typo.yaml", &typo), ("good.yaml", CLUSTER)]);
    let typo_path = dir.path().join("typo.yaml");
    let field = "NetworkPolicy x/a-from-b: spec.ingress[0].form: unknown field: not in the schema of this kind (kubectl apply --validate=strict rejects it)";
    let run = netfence(
        &[&["explain", "-f", s(&typo_path)], &B_TO_A[..]].concat(),
        "",
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        format!(
            "netfence: error: {}: {field}\nnetfence: error: 1 problem(s) in the manifests in {}; fix them, or give --keep-going to skip what they name\n",
            typo_path.display(),
            typo_path.display()
        )
    );
    let run = netfence(&[&["explain", "-f", "-"], &B_TO_A[..]].concat(), &typo);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with(&format!("netfence: error: <stdin>: {field}\n")),
        "{}",
        run.stderr
    );
    // The same objects in two files: the second is a duplicate naming the first.
    let good = dir.path().join("good.yaml");
    let run = netfence(&["compile", "-f", s(&good), "-f", "-"], CLUSTER);
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with(&format!(
            "netfence: error: <stdin>: Namespace x: duplicate; the one in {} is kept\n",
            good.display()
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("5 problem(s) in the manifests in "),
        "{}",
        run.stderr
    );
    // --keep-going: the duplicates are skipped, the first file answers.
    let run = netfence(
        &["compile", "--keep-going", "-f", s(&good), "-f", "-"],
        CLUSTER,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("3 endpoints, "), "{}", run.stdout);
    assert_eq!(
        run.stderr.matches("netfence: skipped: <stdin>: ").count(),
        5
    );
}

#[test]
fn a_missing_path_stdin_twice_and_no_input_exit_2_even_with_keep_going() {
    let dir = tree(&[("good.yaml", CLUSTER)]);
    let missing = dir.path().join("nope.yaml");
    let run = netfence(
        &[&["explain", "--keep-going", "-f", s(&missing)], &B_TO_A[..]].concat(),
        "",
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        format!(
            "netfence: error: {}: cannot read: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    let run = netfence(&["compile", "-f", "-", "-f", "-"], CLUSTER);
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr,
        "netfence: error: \"-\": stdin can be read only once\n"
    );
    let run = netfence(&[&["explain"], &B_TO_A[..]].concat(), "");
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with("netfence: error: no input: give --manifests DIR"),
        "{}",
        run.stderr
    );
    let run = netfence(&["compile"], "");
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with("netfence: error: no input: give --manifests DIR"),
        "{}",
        run.stderr
    );
}
