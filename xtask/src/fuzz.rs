//! `cargo xtask fuzz`: the long run of the datapath's differential fuzz
//! (`agent/tests/kernel_fuzz.rs`): the same test `cargo xtask test` runs with 50,000
//! frames, built in release mode and run with millions (needs root). It prints the
//! seed, frames/s and the reason histogram; a disagreement fails it with the frames.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::cmd::{cargo, run};

/// Frames of the long run unless `--frames` says otherwise.
pub const DEFAULT_FRAMES: u64 = 5_000_000;

pub fn fuzz(frames: u64, seed: Option<u64>) -> anyhow::Result<()> {
    // A fresh seed each run explores new frames; it is printed, so a failure replays
    // with `--seed`.
    let seed = seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    println!("xtask fuzz: {frames} frames, seed {seed}");
    run(cargo()
        .args([
            "test",
            "--release",
            "-p",
            "netfence",
            "--test",
            "kernel_fuzz",
            "--",
            "--nocapture",
        ])
        .env("NFC_FUZZ_FRAMES", frames.to_string())
        .env("NFC_FUZZ_SEED", seed.to_string()))
}
