//! `netfence uninstall`: detach and remove everything netfence pinned under
//! `--pin-dir`. Unlinking a pinned TCX link releases it (detaching the program) once
//! no process holds it; unlinking a pinned map frees it once no program uses it. Run
//! it after stopping the agent: a running agent holds its links open.
//!
//! With `--cni-conf-dir` / `--cni-bin-dir` it also reverses `netfence cni-install`:
//! the netfence-cni entry leaves every conflist (first, so no runtime calls a plugin
//! that is gone), then the binary goes.
//!
//! The files the agent keeps under `/run/netfence` go too: the last-sync record of
//! `--pin-dir`, and beside `--cni-socket` the pending-pods file, the lease and a stale
//! socket (left alone, with a message, while an agent still serves that socket); the
//! directory itself when nothing else is left in it.

use std::path::Path;
use std::process::ExitCode;

use super::UninstallArgs;
use crate::dataplane::pin::PinDir;

/// What an uninstall removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub links: usize,
    pub map_layouts: usize,
}

pub fn run(args: &UninstallArgs) -> anyhow::Result<ExitCode> {
    if args.cni_conf_dir.is_some() || args.cni_bin_dir.is_some() {
        let removed = crate::cni::command::uninstall(
            args.cni_conf_dir.as_deref(),
            args.cni_bin_dir.as_deref(),
        )?;
        for path in &removed.conflists {
            println!("netfence-cni: removed from {}", path.display());
        }
        if let Some(dir) = &args.cni_bin_dir {
            let what = if removed.binary {
                "removed from"
            } else {
                "not present in"
            };
            println!("netfence-cni: binary {what} {}", dir.display());
        }
        if args.cni_conf_dir.is_some() && removed.conflists.is_empty() {
            println!("netfence-cni: in no conflist");
        }
    }
    for line in remove_state_files(&args.pin_dir, &args.cni_socket) {
        println!("{line}");
    }
    match uninstall(&args.pin_dir)? {
        None => println!(
            "nothing to uninstall: {} is not a pin directory on a BPF file system",
            args.pin_dir.display()
        ),
        Some(removed) => println!(
            "uninstalled: {} pinned links detached, {} map layouts removed, {} deleted",
            removed.links,
            removed.map_layouts,
            args.pin_dir.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes every pin under `dir`, links first (so no program is left running on a
/// map that is going away), then maps, then the directory. `None` when `dir` is not
/// a pin directory.
pub fn uninstall(dir: &Path) -> anyhow::Result<Option<Removed>> {
    let Some(pins) = PinDir::existing(dir) else {
        return Ok(None);
    };
    let mut removed = Removed::default();
    for (_, _, path) in pins.links() {
        std::fs::remove_file(&path)
            .map_err(|e| anyhow::anyhow!("removing {}: {e}", path.display()))?;
        removed.links += 1;
    }
    let layouts: Vec<_> = std::fs::read_dir(pins.maps_dir())
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    for layout in layouts {
        PinDir::remove_tree(&layout)
            .map_err(|e| anyhow::anyhow!("removing {}: {e}", layout.display()))?;
        removed.map_layouts += 1;
    }
    PinDir::remove_tree(dir).map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
    Ok(Some(removed))
}

/// Removes the agent's files under `/run/netfence` for `pin_dir` and `socket`; one
/// line per file removed (or left).
pub fn remove_state_files(pin_dir: &Path, socket: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut remove = |path: &Path, what: &str| match std::fs::remove_file(path) {
        Ok(()) => lines.push(format!("removed {what} {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => lines.push(format!(
            "could not remove {what} {}: {error}",
            path.display()
        )),
    };
    let record = crate::dataplane::last_sync::path_for(pin_dir);
    remove(&record, "the last-sync record");
    let serving = std::os::unix::net::UnixStream::connect(socket).is_ok();
    if serving {
        lines.push(format!(
            "an agent still serves {}: its pending pods and lease are left (stop the agent first)",
            socket.display()
        ));
    } else {
        remove(&crate::cni::persist::path_for(socket), "the pending pods");
        remove(&netfence_cni::lease::path_for(socket), "the lease");
        remove(socket, "the stale socket");
    }
    let mut dirs = vec![record.parent().map(Path::to_owned)];
    if !serving {
        dirs.push(socket.parent().map(Path::to_owned));
    }
    for dir in dirs.into_iter().flatten() {
        // Only when empty: other pin directories' records, or other files, stay.
        if std::fs::remove_dir(&dir).is_ok() {
            lines.push(format!("removed {}", dir.display()));
        }
    }
    lines
}
