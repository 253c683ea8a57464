//! `cargo xtask test`: what CI runs. Setup, then build, clippy with warnings denied,
//! then every test of the default members (unit, integration, and the privileged
//! packet tests in network namespaces, which need root). Each step prints its
//! wall-clock time.

use std::time::Instant;

use crate::cmd::{cargo, run};
use crate::setup::setup;

pub fn test() -> anyhow::Result<()> {
    let start = Instant::now();
    timed("setup", setup)?;
    timed("cargo build", || run(cargo().arg("build")))?;
    // Clippy makes its own cold BPF build (about 30 s), affordable within CI's budget.
    // It covers the default members: the BPF-only crate cannot be checked for the host
    // (a `no_std` binary without a host panic handler), and Debian's toolchain that
    // builds it for the BPF target ships no clippy.
    timed("cargo clippy", || {
        run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))
    })?;
    // `cargo test` (the default members: everything but the BPF-only crate, which has
    // no tests) shares the agent's build-script configuration with `cargo build`, so
    // the BPF object is built once for both; `--workspace` would build it again.
    // Four tests at a time although there are two cores: each packet test owns its
    // namespaces and spends most of its time waiting out probes of dropped packets
    // (15 packet tests: 60 s with 2 threads, 30 s with 4, stable under load).
    let threads = std::env::var("RUST_TEST_THREADS").unwrap_or_else(|_| "4".into());
    timed("cargo test", || {
        run(cargo().arg("test").env("RUST_TEST_THREADS", &threads))
    })?;
    // The bench at small sizes, on the debug build: only that it runs and prints every
    // section (no timing is asserted), so the bench code cannot rot.
    timed("cargo xtask bench --quick", || {
        crate::bench::bench(true, None)
    })?;
    println!(
        "xtask test: all passed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn timed<T>(step: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    let result = f();
    let verdict = if result.is_ok() { "done" } else { "FAILED" };
    println!(
        "xtask test: {verdict}: {step} ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    result
}
