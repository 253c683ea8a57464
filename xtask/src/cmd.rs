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

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` at the root).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

/// The kubectl plugin: `kubectl-netfence` in `dir`, a relative symlink to the
/// `netfence` binary beside it, so that with `dir` on PATH `kubectl netfence ...`
/// runs netfence. Idempotent: a link already right is kept, another link is
/// replaced, anything else of that name is left alone (an error).
pub fn link_kubectl_plugin(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    const PLUGIN: &str = "kubectl-netfence";
    const TARGET: &str = "netfence";
    let link = dir.join(PLUGIN);
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if std::fs::read_link(&link)? == std::path::Path::new(TARGET) {
                return Ok(link);
            }
            std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a link: move it away, then run this again",
            link.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("reading {}", link.display())),
    }
    std::os::unix::fs::symlink(TARGET, &link)
        .with_context(|| format!("linking {} -> {TARGET}", link.display()))?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubectl_plugin_link_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("xtask-plugin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("kubectl-netfence");
        let _ = std::fs::remove_file(&link);
        assert_eq!(link_kubectl_plugin(&dir).unwrap(), link);
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            std::path::Path::new("netfence")
        );
        // Again: nothing changes.
        link_kubectl_plugin(&dir).unwrap();
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            std::path::Path::new("netfence")
        );
        // A stale link is replaced.
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("/elsewhere/netfence", &link).unwrap();
        link_kubectl_plugin(&dir).unwrap();
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            std::path::Path::new("netfence")
        );
        // A file of that name is not overwritten.
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, "mine").unwrap();
        assert!(link_kubectl_plugin(&dir).is_err());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "mine");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
