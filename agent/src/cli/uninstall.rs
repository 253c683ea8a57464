//! `netfence uninstall`: detach and remove everything netfence pinned under
//! `--pin-dir`. Unlinking a pinned TCX link releases it (detaching the program) once
//! no process holds it; unlinking a pinned map frees it once no program uses it. Run
//! it after stopping the agent: a running agent holds its links open.
//!
//! With `--cni-conf-dir` / `--cni-bin-dir` it also reverses `netfence cni-install`:
//! the netfence-cni entry leaves every conflist (first, so no runtime calls a plugin
//! that is gone), then the binary goes.

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
