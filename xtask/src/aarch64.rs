//! aarch64 nodes: `cargo xtask build --target aarch64` cross-builds the release agent
//! and `netfence-cni` for aarch64-unknown-linux-gnu with the `debian-web` toolchain
//! (Debian's rustc 1.96, whose arm64 std is `libstd-rust-web-dev:arm64`; rustup's
//! stable has none and cannot download it here), linked by Debian's cross gcc (see
//! `.cargo/config.toml`). The BPF object is the same `bpfel` build either way: the
//! agent's build script runs on the host. `cargo xtask test --target aarch64` runs the
//! unit and no-root tests under qemu-user, then the kernel tests (verifier, JIT and
//! `BPF_PROG_TEST_RUN`) on Debian's arm64 kernel in qemu-system-aarch64 (`vm`).

mod cpio;
mod vm;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cmd::{repo_root, run, tool_path};
use crate::setup::{LINKED_TOOLCHAIN, setup_aarch64};
use crate::test::timed;

pub const TRIPLE: &str = "aarch64-unknown-linux-gnu";

/// The agent's test binaries that need neither root nor a BPF-capable kernel: they
/// run under qemu-user (which has no bpf(2)), with the unit tests of both crates.
const USER_TESTS: &[&str] = &[
    "compile_props",
    "compile_table",
    "compile_table_blocks",
    "compile_table_ports",
    "compile_table_services",
    "deploy_manifests",
    "explain",
    "helm_chart",
    "kube_source",
    "semantics_k8s",
    "source_manifest",
];

/// Tests of those binaries that cannot run under qemu-user, and why.
const USER_SKIPPED: &[(&str, &str)] = &[
    (
        "command_line_matrix_and_explain_on_the_demo_example",
        EXECS_THE_BINARY,
    ),
    (
        "audit::command_line_mode_audit_on_the_demo_example",
        EXECS_THE_BINARY,
    ),
    (
        "service::command_line_explain_to_a_service",
        EXECS_THE_BINARY,
    ),
    (
        "exit_codes::bad_input_exits_2_naming_file_object_and_field_unless_keep_going",
        EXECS_THE_BINARY,
    ),
    (
        "exit_codes::compile_exits_2_on_bad_input_unless_keep_going",
        EXECS_THE_BINARY,
    ),
    (
        "exit_codes::keep_going_skips_the_bad_object_and_the_exit_code_follows_the_verdict",
        EXECS_THE_BINARY,
    ),
    (
        "exit_codes::missing_directory_unknown_pod_and_ports_out_of_range_exit_2",
        EXECS_THE_BINARY,
    ),
    (
        "exit_codes::verdicts_exit_0_allowed_1_denied_and_the_matrix_0",
        EXECS_THE_BINARY,
    ),
    (
        "files::a_file_stdin_and_a_directory_give_the_manifest_directory_s_verdicts",
        EXECS_THE_BINARY,
    ),
    (
        "files::a_missing_path_stdin_twice_and_no_input_exit_2_even_with_keep_going",
        EXECS_THE_BINARY,
    ),
    (
        "files::bad_files_exit_2_naming_file_object_and_field",
        EXECS_THE_BINARY,
    ),
    (
        "files::files_add_up_in_order_and_r_recurses_into_subdirectories",
        EXECS_THE_BINARY,
    ),
    (
        "formats::compile_json_and_yaml_name_directions_and_protocols",
        EXECS_THE_BINARY,
    ),
    (
        "formats::compile_text_names_policies_and_wide_adds_ids",
        EXECS_THE_BINARY,
    ),
    (
        "formats::explain_yaml_wide_and_matrix_yaml",
        EXECS_THE_BINARY,
    ),
    (
        "live::an_object_that_does_not_convert_or_no_server_exits_2",
        EXECS_THE_BINARY,
    ),
    (
        "live::live_mode_lists_once_and_answers_as_from_files",
        EXECS_THE_BINARY,
    ),
    (
        "policies::a_host_network_pod_is_said_to_be_unenforced",
        EXECS_THE_BINARY,
    ),
    (
        "policies::an_unknown_pod_or_bad_input_exits_2",
        EXECS_THE_BINARY,
    ),
    (
        "policies::text_lists_each_selecting_policy_s_rules_and_the_ports_they_open",
        EXECS_THE_BINARY,
    ),
    (
        "policies::wide_adds_rule_ids_and_json_and_yaml_use_names",
        EXECS_THE_BINARY,
    ),
    (
        "whatif::bad_with_input_and_with_without_matrix_exit_2",
        EXECS_THE_BINARY,
    ),
    (
        "whatif::only_the_pairs_that_change_are_printed",
        EXECS_THE_BINARY,
    ),
    (
        "why::a_denied_connection_names_the_half_of_each_rule_that_did_not_match",
        EXECS_THE_BINARY,
    ),
    (
        "packet_verdicts_follow_the_api_server",
        "a packet test in network namespaces with the real agent (root, bpf(2), which \
         qemu-user does not emulate)",
    ),
];

/// qemu-user runs only the process it starts (no binfmt_misc here): a child `netfence`
/// (aarch64) cannot execute. What they check end to end (`netfence explain`'s output)
/// is the code the unit tests run.
const EXECS_THE_BINARY: &str =
    "runs the aarch64 `netfence` as a child, which qemu-user cannot exec";

/// The kernel tests run on the arm64 kernel: `BPF_PROG_TEST_RUN` on the real programs.
const KERNEL_TESTS: &[&str] = &["kernel_hostile", "kernel_tables", "kernel_verdicts"];

/// How long the arm64 VM may take, boot to power-off: 8.5 min on a quiet 2-core
/// machine, 19 min on a busy one.
const VM_TIMEOUT: Duration = Duration::from_secs(1800);

/// `rustup run debian-web PROGRAM`, with the tool PATH and no stdin.
pub fn rustup_run(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", LINKED_TOOLCHAIN, program])
        .env("PATH", tool_path())
        .stdin(Stdio::null());
    cmd
}

fn cross_cargo(subcommand: &str) -> Command {
    let mut cmd = rustup_run("cargo");
    cmd.args([subcommand, "--locked", "--target", TRIPLE])
        .current_dir(repo_root());
    cmd
}

/// `cargo xtask build --target aarch64`.
pub fn build() -> anyhow::Result<()> {
    timed("setup --aarch64", setup_aarch64)?;
    timed(
        "cargo build --release --target aarch64-unknown-linux-gnu",
        || run(cross_cargo("build").args(["--release", "-p", "netfence", "-p", "netfence-cni"])),
    )?;
    let dir = repo_root().join("target").join(TRIPLE).join("release");
    for name in ["netfence", "netfence-cni"] {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if elf_machine(&bytes, 0) != Some(EM_AARCH64) {
            bail!("{} is not an aarch64 ELF", path.display());
        }
        let bpf = if embeds_bpf_object(&bytes) {
            ", embeds the BPF object"
        } else {
            ""
        };
        println!(
            "built: {} (aarch64, {} bytes{bpf})",
            path.display(),
            bytes.len()
        );
    }
    let agent = std::fs::read(dir.join("netfence"))?;
    if !embeds_bpf_object(&agent) {
        bail!("the aarch64 agent embeds no BPF ELF object");
    }
    crate::print_plugin(&crate::cmd::link_kubectl_plugin(&dir)?);
    Ok(())
}

const EM_AARCH64: u16 = 183;
const EM_BPF: u16 = 247;

/// The `e_machine` of the little-endian ELF header at `at`, if there is one.
fn elf_machine(bytes: &[u8], at: usize) -> Option<u16> {
    let header = bytes.get(at..at + 20)?;
    (header.starts_with(b"\x7fELF\x02\x01")).then(|| u16::from_le_bytes([header[18], header[19]]))
}

/// Whether a 64-bit little-endian BPF ELF (`bpfel`) is embedded in `bytes`.
fn embeds_bpf_object(bytes: &[u8]) -> bool {
    bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"\x7fELF")
        .any(|(at, _)| elf_machine(bytes, at) == Some(EM_BPF))
}

/// libtest's summaries, added up over test binaries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub binaries: u32,
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    pub filtered: u32,
}

impl Tally {
    /// Counts one line if it is libtest's `test result: …` summary.
    pub fn read(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        // `ok. 87 passed; 0 failed; 0 ignored; 0 measured; 3 filtered out; finished …`
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let Some((count, what)) = words
                .windows(2)
                .find_map(|w| Some((w[0].parse::<u32>().ok()?, w[1])))
            else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                "filtered" => self.filtered += count,
                _ => {}
            }
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} ignored, {} filtered out in {} test binaries",
            self.passed, self.failed, self.ignored, self.filtered, self.binaries
        )
    }
}

/// Runs `cmd`, echoing its stdout and adding up the libtest summaries in it.
fn run_tallied(cmd: &mut Command) -> anyhow::Result<Tally> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let mut tally = Tally::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            tally.read(&line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{shown} failed: {status} ({tally})");
    }
    Ok(tally)
}

/// The test executables of `tests` (test targets of the agent), cross-built.
fn kernel_test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut cmd = cross_cargo("test");
    cmd.args([
        "-p",
        "netfence",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for test in KERNEL_TESTS {
        cmd.args(["--test", test]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("cross-building the kernel tests failed: {}", out.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        if let Some(executable) = message["executable"].as_str()
            && KERNEL_TESTS.contains(&name)
        {
            found.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    found.sort();
    if found.len() != KERNEL_TESTS.len() {
        bail!("expected the executables of {KERNEL_TESTS:?}, cargo reported {found:?}");
    }
    Ok(found)
}

/// One half of `cargo xtask test --target aarch64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The unit and no-root tests under qemu-user.
    User,
    /// The kernel tests on Debian's arm64 kernel in qemu-system-aarch64.
    Kernel,
}

/// `cargo xtask test --target aarch64 [--only PART]`.
pub fn test(only: Option<Part>) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    timed("setup --aarch64", setup_aarch64)?;
    if only != Some(Part::Kernel) {
        let user = timed("aarch64 unit and no-root tests under qemu-user", user_tests)?;
        println!("aarch64 qemu-user: {user}");
    }
    if only != Some(Part::User) {
        kernel_tests()?;
    }
    println!(
        "xtask test --target aarch64: all passed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn user_tests() -> anyhow::Result<Tally> {
    let mut user = Tally::default();
    let mut agent = cross_cargo("test");
    agent.args(["-p", "netfence", "--lib", "--bins"]);
    for test in USER_TESTS {
        agent.args(["--test", test]);
    }
    agent.args(["--", "--exact"]);
    for (test, why) in USER_SKIPPED {
        agent.args(["--skip", test]);
        println!("skipped under qemu-user: {test}: {why}");
    }
    let agent = run_tallied(&mut agent)?;
    let cni = run_tallied(cross_cargo("test").args(["-p", "netfence-cni", "--lib", "--bins"]))?;
    for t in [agent, cni] {
        user.binaries += t.binaries;
        user.passed += t.passed;
        user.failed += t.failed;
        user.ignored += t.ignored;
        user.filtered += t.filtered;
    }
    Ok(user)
}

fn kernel_tests() -> anyhow::Result<()> {
    let report = timed(
        "aarch64 kernel tests on an arm64 kernel (qemu-system-aarch64)",
        || {
            let tests = kernel_test_binaries()?;
            let kernel = vm::kernel()?;
            let initrd = vm::initramfs(&tests)?;
            let boot = std::time::Instant::now();
            let report = vm::boot(&kernel, &initrd, VM_TIMEOUT)?;
            println!(
                "arm64 VM: boot to power-off in {:.1} s",
                boot.elapsed().as_secs_f64()
            );
            check(&report)?;
            Ok(report)
        },
    )?;
    println!(
        "arm64 kernel {}: bpf_jit_enable {}, JIT images [{}], {}; guest ran them in {}",
        report.kernel, report.jit_enable, report.jit_images, report.tally, report.guest_secs
    );
    Ok(())
}

fn check(report: &vm::Report) -> anyhow::Result<()> {
    for test in KERNEL_TESTS {
        match report.exits.iter().find(|(name, _)| name == test) {
            Some((_, exit)) if exit.split_whitespace().nth(1) == Some("0") => {}
            Some((_, exit)) => bail!("arm64 VM: {exit}"),
            None => bail!("arm64 VM: {test} never reported its exit"),
        }
    }
    if report.tally.binaries != u32::try_from(KERNEL_TESTS.len())? || report.tally.failed != 0 {
        bail!("arm64 VM: {}", report.tally);
    }
    if report.jit_enable != "1" {
        bail!(
            "arm64 VM: net.core.bpf_jit_enable is {:?}, not 1",
            report.jit_enable
        );
    }
    for program in ["netfence_from_pod", "netfence_to_pod"] {
        if !report
            .jit_images
            .split_whitespace()
            .any(|seen| seen == program)
        {
            bail!("arm64 VM: no JIT image of {program} seen in /proc/kallsyms");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_adds_up_libtest_summaries_and_ignores_other_lines() {
        let mut tally = Tally::default();
        for line in [
            "test result: ok. 87 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.26s",
            "test result: FAILED. 7 passed; 3 failed; 1 ignored; 0 measured; 2 filtered out; finished in 2.25s",
            "test passed_things ... ok",
            "netfence-guest: exit kernel_tables 0 in 85.6 s",
        ] {
            tally.read(line);
        }
        let want = Tally {
            binaries: 2,
            passed: 94,
            failed: 3,
            ignored: 1,
            filtered: 2,
        };
        assert_eq!(tally, want);
        assert_eq!(
            want.to_string(),
            "94 passed, 3 failed, 1 ignored, 2 filtered out in 2 test binaries"
        );
    }

    #[test]
    fn only_a_bpf_elf_counts_as_the_embedded_object() {
        let mut host = b"\x7fELF\x02\x01\x01".to_vec();
        host.resize(18, 0);
        host.extend_from_slice(&EM_AARCH64.to_le_bytes());
        assert_eq!(elf_machine(&host, 0), Some(EM_AARCH64));
        assert!(!embeds_bpf_object(&host));
        let mut bpf = b"\x7fELF\x02\x01\x01".to_vec();
        bpf.resize(18, 0);
        bpf.extend_from_slice(&EM_BPF.to_le_bytes());
        host.extend_from_slice(b"padding");
        host.extend_from_slice(&bpf);
        assert!(embeds_bpf_object(&host));
    }
}
