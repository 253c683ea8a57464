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
    "kube_source",
    "semantics_k8s",
    "source_manifest",
];

/// The kernel tests run on the arm64 kernel: `BPF_PROG_TEST_RUN` on the real programs.
const KERNEL_TESTS: &[&str] = &["kernel_hostile", "kernel_tables", "kernel_verdicts"];

/// How long the arm64 VM may take, boot to power-off (it takes about N s here).
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
    cmd.args([subcommand, "--locked", "--target", TRIPLE]).current_dir(repo_root());
    cmd
}

/// `cargo xtask build --target aarch64`.
pub fn build() -> anyhow::Result<()> {
    timed("setup --aarch64", setup_aarch64)?;
    timed("cargo build --release --target aarch64-unknown-linux-gnu", || {
        run(cross_cargo("build").args(["--release", "-p", "netfence", "-p", "netfence-cni"]))
    })?;
    let dir = repo_root().join("target").join(TRIPLE).join("release");
    for name in ["netfence", "netfence-cni"] {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if elf_machine(&bytes, 0) != Some(EM_AARCH64) {
            bail!("{} is not an aarch64 ELF", path.display());
        }
        let bpf = if embeds_bpf_object(&bytes) { ", embeds the BPF object" } else { "" };
        println!("built: {} (aarch64, {} bytes{bpf})", path.display(), bytes.len());
    }
    let agent = std::fs::read(dir.join("netfence"))?;
    if !embeds_bpf_object(&agent) {
        bail!("the aarch64 agent embeds no BPF ELF object");
    }
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
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub binaries: u32,
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
}

impl Tally {
    /// Counts one line if it is libtest's `test result: …` summary.
    pub fn read(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u32>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} ignored in {} test binaries",
            self.passed, self.failed, self.ignored, self.binaries
        )
    }
}

/// Runs `cmd`, echoing its stdout and adding up the libtest summaries in it.
fn run_tallied(cmd: &mut Command) -> anyhow::Result<Tally> {
    let shown = format!("{cmd:?}");
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("starting {shown}"))?;
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
    cmd.args(["-p", "netfence", "--no-run", "--message-format=json-render-diagnostics"]);
    for test in KERNEL_TESTS {
        cmd.args(["--test", test]);
    }
    let out = cmd.stderr(Stdio::inherit()).output().context("cargo test --no-run")?;
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

/// `cargo xtask test --target aarch64`.
pub fn test() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    timed("setup --aarch64", setup_aarch64)?;
    let mut user = Tally::default();
    timed("aarch64 unit and no-root tests under qemu-user", || {
        let mut agent = cross_cargo("test");
        agent.args(["-p", "netfence", "--lib", "--bins"]);
        for test in USER_TESTS {
            agent.args(["--test", test]);
        }
        let agent = run_tallied(&mut agent)?;
        let cni = run_tallied(cross_cargo("test").args(["-p", "netfence-cni", "--lib", "--bins"]))?;
        for t in [agent, cni] {
            user.binaries += t.binaries;
            user.passed += t.passed;
            user.failed += t.failed;
            user.ignored += t.ignored;
        }
        Ok(())
    })?;
    println!("aarch64 qemu-user: {user}");
    let report = timed("aarch64 kernel tests on an arm64 kernel (qemu-system-aarch64)", || {
        let tests = kernel_test_binaries()?;
        let kernel = vm::kernel()?;
        let initrd = vm::initramfs(&tests)?;
        let boot = std::time::Instant::now();
        let report = vm::boot(&kernel, &initrd, VM_TIMEOUT)?;
        println!("arm64 VM: boot to power-off in {:.1} s", boot.elapsed().as_secs_f64());
        check(&report)?;
        Ok(report)
    })?;
    println!("aarch64 qemu-user: {user}");
    println!(
        "arm64 kernel {}: bpf_jit_enable {}, JIT images [{}], {}; guest ran them in {}",
        report.kernel, report.jit_enable, report.jit_images, report.tally, report.guest_secs
    );
    println!("xtask test --target aarch64: all passed in {:.1} s", start.elapsed().as_secs_f64());
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
        bail!("arm64 VM: net.core.bpf_jit_enable is {:?}, not 1", report.jit_enable);
    }
    for program in ["netfence_from_pod", "netfence_to_pod"] {
        if !report.jit_images.split_whitespace().any(|seen| seen == program) {
            bail!("arm64 VM: no JIT image of {program} seen in /proc/kallsyms");
        }
    }
    Ok(())
}
