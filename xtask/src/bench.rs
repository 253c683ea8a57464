//! `cargo xtask bench`: builds the bench binary (`agent/examples/bench/`) and the agent,
//! then runs the benchmarks (root): per-packet kernel cost, nftables comparison,
//! throughput, compile time and memory, propagation and map memory. The table goes to
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

/// Section keys the bench's JSON must hold.
const SECTIONS: [&str; 6] = [
    "per_packet",
    "nftables",
    "throughput",
    "compile",
    "propagation",
    "map_memory",
];

fn target_dir() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || xtask.parent().unwrap_or(xtask).join("target"),
        PathBuf::from,
    )
}

/// `kernel_only`: sections 1, 1b and 6 only (`--only kernel`: the TC programs' cost
/// through BPF_PROG_TEST_RUN, no traffic, compile or propagation sections).
pub fn bench(quick: bool, kernel_only: bool) -> anyhow::Result<()> {
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
    cmd.arg("--netfence")
        .arg(target.join(profile).join("netfence"))
        .arg("--out")
        .arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    if kernel_only {
        cmd.args(["--only", "kernel"]);
    }
    run(&mut cmd)?;
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let sections: &[&str] = if kernel_only {
        &KERNEL_SECTIONS
    } else {
        &SECTIONS
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
