//! Spawning tools from xtask: rustup's cargo (the one xtask runs under, not Debian's
//! `/usr/bin/cargo`), a PATH with `~/.cargo/bin` first, and no stdin.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// `~/.cargo/bin` (or `$CARGO_HOME/bin`): rustup's proxies and bpf-linker live there.
fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// PATH with the cargo bin directory first: the Debian rust packages put cargo and
/// rustc 1.96 in /usr/bin, which must not shadow rustup's toolchain.
pub fn tool_path() -> OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let first = cargo_bin_dir();
    let rest = std::env::split_paths(&current).filter(|dir| Some(dir) != first.as_ref());
    std::env::join_paths(first.clone().into_iter().chain(rest)).unwrap_or(current)
}

/// The cargo that started xtask (`CARGO`), falling back to `cargo` on the tool PATH.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.env("PATH", tool_path()).stdin(Stdio::null());
    cmd
}

/// Runs a command with inherited output; an error names the command and its status.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// The repository root (the parent of the xtask crate).
pub fn repo_root() -> PathBuf {
    let xtask = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_owned()
}
