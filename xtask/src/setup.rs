//! `cargo xtask setup`: installs what a Debian 12 machine lacks to build and test
//! netfence (Debian packages, the `debian-web` linked toolchain that builds the BPF
//! object, bpf-linker). Every step checks first, so a second run installs nothing and
//! takes seconds. The facts behind each step are in `shared/TOOLCHAIN.md`.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::cmd::{cargo, run, tool_path};

/// Debian packages the build and the tests need, and why.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "Rust 1.96 with LLVM 22: the `debian-web` toolchain for the BPF build",
    ),
    ("cargo-web", "cargo of the `debian-web` toolchain"),
    (
        "rust-web-src",
        "std source, for `-Z build-std=core` on the BPF target",
    ),
    ("llvm-22-dev", "libLLVM 22, linked by bpf-linker"),
    ("iproute2", "`ip netns`, veth, bridge; `tc` for clsact"),
    (
        "iputils-ping",
        "ICMP probes in the packet tests and the demo",
    ),
    ("coreutils", "`timeout` around every probe command"),
    ("bpftool", "inspecting loaded programs and maps"),
    (
        "nftables",
        "node-side NAT and filtering in multi-node tests and benches",
    ),
    ("iperf3", "throughput benches"),
    (
        "containernetworking-plugins",
        "the real CNI bridge/host-local plugins",
    ),
    (
        "podman",
        "`cargo xtask image` loads the agent's image into it; the image's lab test runs it \
         as the DaemonSet does (crun, conmon and containers-common come with it)",
    ),
];

/// Debian packages of the aarch64 cross build and its tests (`--aarch64`), and why.
/// The `:arm64` ones need `dpkg --add-architecture arm64` first.
const AARCH64_PACKAGES: &[(&str, &str)] = &[
    (
        "libstd-rust-web-dev:arm64",
        "the aarch64 std of the `debian-web` toolchain (rustup cannot download targets)",
    ),
    (
        "gcc-aarch64-linux-gnu",
        "the aarch64 linker and C compiler (ring)",
    ),
    ("libc6-dev-arm64-cross", "the aarch64 glibc to link against"),
    (
        "libc6:arm64",
        "the arm64 glibc that qemu-user and the test VM load the binaries with",
    ),
    (
        "qemu-user-static",
        "runs the aarch64 unit and no-root tests",
    ),
    (
        "qemu-system-arm",
        "qemu-system-aarch64: boots Debian's arm64 kernel for the kernel-verdict tests",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
pub const LINKED_TOOLCHAIN: &str = "debian-web";

/// Runs every step, installing only what is missing.
pub fn setup() -> anyhow::Result<()> {
    check_platform()?;
    install_packages(PACKAGES)?;
    link_toolchain()?;
    install_bpf_linker()?;
    Ok(())
}

/// What the aarch64 cross build and its tests add to [`setup`]: the arm64 dpkg
/// architecture, the arm64 std of `debian-web`, the cross gcc and glibc, QEMU.
pub fn setup_aarch64() -> anyhow::Result<()> {
    setup()?;
    add_arm64_architecture()?;
    install_packages(AARCH64_PACKAGES)
}

fn add_arm64_architecture() -> anyhow::Result<()> {
    let out = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .stdin(Stdio::null())
        .output()
        .context("running dpkg --print-foreign-architectures")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|arch| arch.trim() == "arm64")
    {
        println!("ok: dpkg architecture arm64 added");
        return Ok(());
    }
    println!("installing: dpkg --add-architecture arm64 (for libstd-rust-web-dev:arm64)");
    // The package lists of the new architecture come with the `apt-get update` that
    // `install_packages` runs before installing what is missing.
    run(Command::new("dpkg").args(["--add-architecture", "arm64"]))
}

fn check_platform() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "cargo xtask setup must run as root (euid is {euid}): it installs Debian packages, \
             and the tests create network namespaces and load BPF programs"
        );
    }
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "this machine is not Debian-like (/etc/debian_version is missing); setup knows how \
             to install the toolchain only with apt (Debian 12 bookworm, with bookworm-security)"
        );
    }
    Ok(())
}

fn package_installed(name: &str) -> anyhow::Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .stdin(Stdio::null())
        .output()
        .context("running dpkg-query")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn install_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for (name, why) in packages {
        if package_installed(name)? {
            println!("ok: package {name} present");
        } else {
            println!("installing: package {name} ({why})");
            missing.push(*name);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    run(apt().arg("update")).context("apt-get update")?;
    run(apt()
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))
    .with_context(|| format!("apt-get install {}", missing.join(" ")))?;
    for name in &missing {
        if !package_installed(name)? {
            bail!("apt-get reported success but package {name} is still not installed");
        }
    }
    Ok(())
}

fn apt() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

fn link_toolchain() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .env("PATH", tool_path())
        .stdin(Stdio::null())
        .output()
        .context("running `rustup toolchain list` (is rustup installed and on PATH?)")?;
    if !out.status.success() {
        bail!(
            "`rustup toolchain list` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some(LINKED_TOOLCHAIN));
    if listed {
        println!("ok: rustup toolchain {LINKED_TOOLCHAIN} linked");
        return Ok(());
    }
    println!("installing: rustup toolchain link {LINKED_TOOLCHAIN} /usr");
    run(Command::new("rustup")
        .args(["toolchain", "link", LINKED_TOOLCHAIN, "/usr"])
        .env("PATH", tool_path()))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let found = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", tool_path())
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    match found {
        Some(version) if version == wanted => {
            println!("ok: {wanted} present");
            return Ok(());
        }
        Some(version) => println!("installing: {wanted} (found {version})"),
        None => println!("installing: {wanted} (not found)"),
    }
    // Without LLVM_PREFIX, bpf-linker's build finds /usr/bin/llvm-config (LLVM 14)
    // and links fail later with "unable to find library -lLLVM".
    run(cargo()
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent image builds the BPF object with the same toolchain as this setup:
    /// the Dockerfile cannot be built here (no base images), so at least it cannot
    /// drift from what is tested.
    #[test]
    fn dockerfile_installs_the_bpf_toolchain_of_setup() {
        let path = crate::cmd::repo_root().join("Dockerfile");
        let dockerfile = std::fs::read_to_string(&path).unwrap_or_default();
        for package in ["rustc-web", "cargo-web", "rust-web-src", "llvm-22-dev"] {
            assert!(PACKAGES.iter().any(|(p, _)| *p == package));
            assert!(
                dockerfile.contains(package),
                "{} lacks {package}",
                path.display()
            );
        }
        assert!(dockerfile.contains(&format!("ARG BPF_LINKER_VERSION={BPF_LINKER_VERSION}")));
        assert!(dockerfile.contains(&format!("rustup toolchain link {LINKED_TOOLCHAIN} /usr")));
        assert!(dockerfile.contains("LLVM_PREFIX=/usr/lib/llvm-22"));
        assert!(dockerfile.contains("--features llvm-22"));
        assert!(
            !dockerfile.contains("curl"),
            "no installer downloads during the build"
        );
        // The linux/arm64 cross build installs what `setup --aarch64` installs to build
        // (QEMU and libc6:arm64 only run the tests).
        for package in [
            "libstd-rust-web-dev:arm64",
            "gcc-aarch64-linux-gnu",
            "libc6-dev-arm64-cross",
        ] {
            assert!(AARCH64_PACKAGES.iter().any(|(p, _)| *p == package));
            assert!(
                dockerfile.contains(package),
                "{} lacks {package}",
                path.display()
            );
        }
        assert!(dockerfile.contains("dpkg --add-architecture arm64"));
        assert!(dockerfile.contains("--target aarch64-unknown-linux-gnu"));
    }
}
