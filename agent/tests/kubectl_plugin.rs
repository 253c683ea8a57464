//! `kubectl netfence ...`: kubectl runs `kubectl-netfence` from PATH (a link to the
//! netfence binary, which `cargo xtask build` makes) with the arguments after the
//! plugin name. Through such a link netfence answers exactly as under its own name
//! (stdout, stderr, exit code), except that usage and help name `kubectl netfence`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory holding `kubectl-netfence` -> the netfence binary.
fn plugin_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("kubectl-netfence");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_netfence"), &link).unwrap();
    (dir, link)
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

/// (exit code, stdout, stderr).
fn output(command: &mut Command, args: &[&str]) -> (i32, String, String) {
    let out = command.args(args).env("NO_COLOR", "1").output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn through_a_kubectl_netfence_link_netfence_answers_the_same() {
    let (dir, link) = plugin_dir();
    let manifests = examples();
    let manifests = manifests.to_str().unwrap();
    let cases: [(&[&str], i32); 5] = [
        // Denied, allowed, a matrix, bad input, the version.
        (
            &[
                "explain",
                "--manifests",
                manifests,
                "--from",
                "prod/web",
                "--to",
                "prod/db",
                "--port",
                "3306",
            ],
            1,
        ),
        (
            &[
                "explain",
                "--manifests",
                manifests,
                "--from",
                "prod/api",
                "--to",
                "prod/db",
                "--port",
                "3306",
                "-o",
                "json",
            ],
            0,
        ),
        (
            &[
                "explain",
                "--manifests",
                manifests,
                "--matrix",
                "--port",
                "5000",
            ],
            0,
        ),
        (&["policies", "prod/nope", "--manifests", manifests], 2),
        (&["--version"], 0),
    ];
    for (args, code) in cases {
        let direct = output(&mut Command::new(env!("CARGO_BIN_EXE_netfence")), args);
        assert_eq!(direct.0, code, "{args:?}: {}", direct.2);
        assert!(
            !direct.1.is_empty() || !direct.2.is_empty(),
            "{args:?} printed something"
        );
        // As kubectl runs it: the link's path as argv[0].
        assert_eq!(output(&mut Command::new(&link), args), direct, "{args:?}");
        // Found on PATH by its name, as a shell would.
        let by_name = output(
            Command::new("kubectl-netfence").env("PATH", dir.path()),
            args,
        );
        assert_eq!(by_name, direct, "{args:?}");
    }
}

#[test]
fn as_a_kubectl_plugin_usage_and_help_name_kubectl_netfence() {
    let (_dir, link) = plugin_dir();
    let direct = output(
        &mut Command::new(env!("CARGO_BIN_EXE_netfence")),
        &["explain", "--help"],
    );
    let plugin = output(&mut Command::new(&link), &["explain", "--help"]);
    assert_eq!((plugin.0, direct.0), (0, 0));
    assert!(
        direct.1.contains("Usage: netfence explain "),
        "{}",
        direct.1
    );
    assert!(
        plugin.1.contains("Usage: kubectl netfence explain "),
        "{}",
        plugin.1
    );
    assert_eq!(plugin.1.replace("kubectl netfence", "netfence"), direct.1);

    // A usage error: exit 2 either way, the usage line naming what was typed.
    let direct = output(
        &mut Command::new(env!("CARGO_BIN_EXE_netfence")),
        &["explain", "--bogus"],
    );
    let plugin = output(&mut Command::new(&link), &["explain", "--bogus"]);
    assert_eq!((plugin.0, direct.0), (2, 2));
    assert!(
        plugin.2.contains("Usage: kubectl netfence explain"),
        "{}",
        plugin.2
    );
    assert_eq!(plugin.2.replace("kubectl netfence", "netfence"), direct.2);

    // Under any other name, clap's default: usage names the binary as invoked.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("nf");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_netfence"), &other).unwrap();
    let renamed = output(&mut Command::new(&other), &["explain", "--help"]);
    assert!(renamed.1.contains("Usage: nf explain "), "{}", renamed.1);
}
