//! `cargo xtask test`: what CI runs. Setup, then build, clippy with warnings denied,
//! then every test of the default members (unit, integration, and the privileged
//! packet tests in network namespaces, which need root).

use crate::cmd::{cargo, run};
use crate::setup::setup;

pub fn test() -> anyhow::Result<()> {
    setup()?;
    run(cargo().arg("build"))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // `cargo test` (the default members: everything but the BPF-only crate, which has
    // no tests) shares the agent's build-script configuration with `cargo build`, so
    // the BPF object is built once for both; `--workspace` would build it again.
    run(cargo().arg("test"))?;
    Ok(())
}
