//! `cargo xtask bench`: builds the bench binary (`agent/examples/bench/`) and the agent,
//! then runs the benchmarks (root): per-packet kernel cost, nftables comparison,
//! throughput, compile time and memory, propagation, map memory and the watch load. The table goes to
//! stdout, JSON to `target/bench/bench.json`. `--quick` uses small sizes and the debug
//! build (seconds; `cargo xtask test` runs it so the bench cannot rot, asserting only
//! that it ran and produced every section, never a timing).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::cmd::{cargo, run};
use crate::setup::setup;

/// Section keys of `--only kernel` (the per-packet cost and map memory).
const KERNEL_SECTIONS: [&str; 2] = ["per_packet", "map_memory"];

/// Section keys of `--only traffic` (nftables comparison, throughput and latency).
const TRAFFIC_SECTIONS: [&str; 2] = ["nftables", "throughput"];

/// Section keys of `--only scale` (the engine per change, propagation at sizes, the
/// watch load on the test API server).
const SCALE_SECTIONS: [&str; 3] = ["compile", "propagation", "watch_load"];

/// Section keys of `--only watch`.
const WATCH_SECTIONS: [&str; 1] = ["watch_load"];

/// Section keys the bench's JSON must hold.
const SECTIONS: [&str; 7] = [
    "per_packet",
    "nftables",
    "throughput",
    "compile",
    "propagation",
    "map_memory",
    "watch_load",
];

fn target_dir() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || xtask.parent().unwrap_or(xtask).join("target"),
        PathBuf::from,
    )
}

/// `only`: `kernel` (sections 1, 1b and 6: the TC programs' cost through
/// BPF_PROG_TEST_RUN), `traffic` (sections 2 and 3: real traffic) or `scale`
/// (sections 4 and 5: the engine and the real agent at cluster sizes), passed to the
/// bench binary's `--only`; `None` runs every section.
pub fn bench(quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    let start = Instant::now();
    if !quick {
        setup()?;
    }
    let profile = if quick { "debug" } else { "release" };
    let mut build = cargo();
    build.args([
        "build",
        "-p",
        "netfence",
        "--bin",
        "netfence",
        "--example",
        "bench",
    ]);
    if !quick {
        build.arg("--release");
    }
    run(&mut build)?;
    let target = target_dir();
    let out = target.join("bench").join(if quick {
        "bench-quick.json"
    } else {
        "bench.json"
    });
    let _ = std::fs::remove_file(&out);
    let mut cmd = std::process::Command::new(target.join(profile).join("examples/bench"));
    // Section 5 starts agents on clusters of up to 150,000 pods.
    cmd.env("NETFENCE_READY_TIMEOUT_S", "300");
    cmd.arg("--netfence")
        .arg(target.join(profile).join("netfence"))
        .arg("--out")
        .arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(only) = only {
        cmd.args(["--only", only]);
    }
    run(&mut cmd)?;
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let sections: &[&str] = match only {
        Some("kernel") => &KERNEL_SECTIONS,
        Some("traffic") => &TRAFFIC_SECTIONS,
        Some("scale") => &SCALE_SECTIONS,
        Some("watch") => &WATCH_SECTIONS,
        Some(other) => bail!("no bench section group {other:?}"),
        None => &SECTIONS,
    };
    let missing: Vec<&str> = sections
        .iter()
        .filter(|key| !text.contains(&format!("\"{key}\": {{")))
        .copied()
        .collect();
    if !missing.is_empty() {
        bail!("{} lacks sections {missing:?}", out.display());
    }
    println!(
        "xtask bench: {} sections in {:.1} s",
        sections.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
