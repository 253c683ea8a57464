//! The arm64 kernel half of `cargo xtask test --target aarch64`: Debian's arm64 kernel
//! (downloaded with apt for the arm64 architecture, only `vmlinuz` kept) booted in
//! `qemu-system-aarch64 -M virt -cpu max` (TCG) with an initramfs of the static init
//! of `xtask/guest/init.rs`, the cross-built kernel test binaries (stripped) and the
//! arm64 glibc they need. The serial console is echoed and read: each binary's libtest
//! summary, its exit status, `bpf_jit_enable` and the JIT images of both TC programs.
//! The run is bounded: QEMU is killed (by its handle) past the deadline.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::cpio::Cpio;
use super::{TRIPLE, Tally, rustup_run};
use crate::cmd::{repo_root, run};

/// Debian's meta package of the arm64 kernel booted: it depends on the current
/// `linux-image-6.12.N+deb12-arm64`, whose `vmlinuz` is an uncompressed arm64 Image
/// (no EFI zboot) that QEMU boots directly.
const KERNEL_META: &str = "linux-image-6.12-arm64";
/// Debian's arm64 glibc (`libc6:arm64`, what an arm64 node runs), copied into the
/// initramfs.
const ARM64_LIB: &str = "/lib/aarch64-linux-gnu";
const GUEST_PREFIX: &str = "netfence-guest: ";

/// The directory of the VM's downloads and build products.
pub fn work_dir() -> PathBuf {
    repo_root().join("target").join("aarch64-vm")
}

/// The arm64 kernel image, downloaded once per kernel version.
pub fn kernel() -> anyhow::Result<PathBuf> {
    let dir = work_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let package = current_kernel_package()?;
    let release = package.trim_start_matches("linux-image-");
    let image = dir.join(format!("vmlinuz-{release}"));
    if image.exists() {
        println!("ok: arm64 kernel {} present", image.display());
        return Ok(image);
    }
    println!("downloading: {package}:arm64 (only its vmlinuz is kept)");
    run(Command::new("apt-get")
        .args([
            "-o",
            "APT::Sandbox::User=root",
            "download",
            &format!("{package}:arm64"),
        ])
        .current_dir(&dir)
        .stdin(Stdio::null()))?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                dir.display()
            )
        })?;
    let mut unpack = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("starting dpkg-deb")?;
    let tar_in = unpack.stdout.take().context("dpkg-deb has no stdout")?;
    let member = format!("./boot/vmlinuz-{release}");
    run(Command::new("tar")
        .args(["-x", "--strip-components=2", "-C"])
        .arg(&dir)
        .arg(&member)
        .stdin(tar_in))?;
    let status = unpack.wait()?;
    std::fs::remove_file(&deb)?;
    if !status.success() || !image.exists() {
        bail!("{member} not found in {} ({status})", deb.display());
    }
    Ok(image)
}

/// `linux-image-6.12.N+deb12-arm64`, the package `KERNEL_META` depends on now.
fn current_kernel_package() -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", &format!("{KERNEL_META}:arm64")])
        .stdin(Stdio::null())
        .output()
        .context("running apt-cache depends")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .map(|dep| dep.trim_end_matches(":arm64").to_owned())
        .find(|dep| dep.starts_with("linux-image-"))
        .with_context(|| format!("apt-cache depends {KERNEL_META}:arm64 named no kernel: {text}"))
}

/// Builds the static init of `xtask/guest/init.rs` for aarch64.
fn init() -> anyhow::Result<PathBuf> {
    let source = repo_root().join("xtask").join("guest").join("init.rs");
    let out = work_dir().join("init");
    run(rustup_run("rustc")
        .args(["--edition", "2024", "-O", "--target", TRIPLE])
        .args([
            "-C",
            "linker=aarch64-linux-gnu-gcc",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["-C", "strip=symbols", "-o"])
        .arg(&out)
        .arg(&source))?;
    Ok(out)
}

/// The shared libraries `binary` needs (its `NEEDED` entries), by file name.
fn needed(binary: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("aarch64-linux-gnu-readelf")
        .arg("-d")
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .context("running aarch64-linux-gnu-readelf")?;
    if !out.status.success() {
        bail!("readelf -d {} failed", binary.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| line.split('[').nth(1)?.split(']').next().map(str::to_owned))
        .collect())
}

/// Writes the initramfs: `/init`, `/tests/NAME` for each test binary (stripped), and
/// the glibc they need under `/lib/aarch64-linux-gnu` (the loader under `/lib`).
pub fn initramfs(tests: &[(String, PathBuf)]) -> anyhow::Result<PathBuf> {
    let dir = work_dir();
    let init = init()?;
    let path = dir.join("initramfs.cpio");
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut cpio = Cpio::new(std::io::BufWriter::new(file));
    for d in [
        "dev",
        "proc",
        "sys",
        "tmp",
        "tests",
        "lib",
        "lib/aarch64-linux-gnu",
    ] {
        cpio.dir(d)?;
    }
    cpio.file("init", 0o755, &std::fs::read(&init)?)?;
    let mut libs: Vec<String> = Vec::new();
    for (name, binary) in tests {
        let stripped = dir.join(name);
        run(Command::new("aarch64-linux-gnu-strip")
            .arg("-o")
            .arg(&stripped)
            .arg(binary))?;
        cpio.file(&format!("tests/{name}"), 0o755, &std::fs::read(&stripped)?)?;
        std::fs::remove_file(&stripped)?;
        libs.extend(needed(binary)?);
    }
    // The libraries' own needs (libc needs the loader, libm libc, …).
    let mut i = 0;
    while let Some(lib) = libs.get(i).cloned() {
        for dep in needed(&Path::new(ARM64_LIB).join(&lib))? {
            if !libs.contains(&dep) {
                libs.push(dep);
            }
        }
        i += 1;
    }
    libs.sort();
    libs.dedup();
    for lib in &libs {
        let data = std::fs::read(Path::new(ARM64_LIB).join(lib))
            .with_context(|| format!("{lib} from {ARM64_LIB} (libc6:arm64)"))?;
        let at = if lib.starts_with("ld-linux") {
            format!("lib/{lib}")
        } else {
            format!("lib/aarch64-linux-gnu/{lib}")
        };
        cpio.file(&at, 0o755, &data)?;
    }
    println!(
        "initramfs: init, {} test binaries, {}",
        tests.len(),
        libs.join(" ")
    );
    cpio.finish()?;
    Ok(path)
}

/// What the guest reported.
#[derive(Debug, Default)]
pub struct Report {
    pub tally: Tally,
    pub kernel: String,
    pub jit_enable: String,
    /// The TC programs seen as JIT images, space-separated.
    pub jit_images: String,
    /// `(binary, exit line)` for each binary run.
    pub exits: Vec<(String, String)>,
    pub guest_secs: String,
}

impl Report {
    fn read(&mut self, line: &str) {
        self.tally.read(line);
        let Some(said) = line.split_once(GUEST_PREFIX).map(|(_, said)| said.trim()) else {
            return;
        };
        if let Some(rest) = said.strip_prefix("kernel ") {
            self.kernel = rest.to_owned();
        } else if let Some(rest) = said.strip_prefix("bpf_jit_enable ") {
            self.jit_enable = rest.to_owned();
        } else if let Some(rest) = said.strip_prefix("jit images seen: ") {
            self.jit_images = rest.trim_matches(['[', ']']).to_owned();
        } else if let Some(rest) = said.strip_prefix("exit ") {
            let name = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            self.exits.push((name, rest.to_owned()));
        } else if let Some(rest) = said.strip_prefix("done in ") {
            self.guest_secs = rest.to_owned();
        }
    }
}

/// Boots `kernel` with `initrd` and reads the console until QEMU exits or `timeout`.
pub fn boot(kernel: &Path, initrd: &Path, timeout: Duration) -> anyhow::Result<Report> {
    let mut qemu = Command::new("qemu-system-aarch64");
    qemu.args(["-M", "virt", "-cpu", "max", "-smp", "2", "-m", "1536"])
        .args(["-nographic", "-nic", "none", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyAMA0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    println!("booting: {qemu:?}");
    let mut child = qemu.spawn().context("starting qemu-system-aarch64")?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut report = Report::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                println!("{line}");
                report.read(&line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the arm64 VM did not power off within {} s: killed",
                    timeout.as_secs()
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let _ = reader.join();
    let status = child.wait()?;
    if !status.success() {
        bail!("qemu-system-aarch64 exited with {status}");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_report_reads_the_guest_lines_and_libtest_summaries() {
        let mut report = Report::default();
        for line in [
            "[   13.08] random kernel line",
            "netfence-guest: kernel 6.12.117+deb12-arm64 aarch64 cpus 2",
            "netfence-guest: bpf_jit_enable 1",
            "netfence-guest: run kernel_tables",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 85.23s",
            "netfence-guest: exit kernel_tables 0 in 85.6 s",
            "netfence-guest: jit images seen: [netfence_from_pod netfence_to_pod]",
            "netfence-guest: done in 1125.7 s",
        ] {
            report.read(line);
        }
        assert_eq!(report.kernel, "6.12.117+deb12-arm64 aarch64 cpus 2");
        assert_eq!(report.jit_enable, "1");
        assert_eq!(report.jit_images, "netfence_from_pod netfence_to_pod");
        assert_eq!(
            report.exits,
            vec![(
                "kernel_tables".to_owned(),
                "kernel_tables 0 in 85.6 s".to_owned()
            )]
        );
        assert_eq!(report.guest_secs, "1125.7 s");
        assert_eq!((report.tally.binaries, report.tally.passed), (1, 4));
    }
}
