//! The netfence benchmark binary, run by `cargo xtask bench` (needs root): per-packet
//! kernel cost, nftables comparison, throughput and latency, compile time and memory,
//! propagation, and map memory. Prints a table and writes JSON (`--out`).
//!
//! Modules: `scene` (the measured cluster: a seeded scenario plus the bench's own
//! client/server pods), `kernel` (sections 1 and 6, `BPF_PROG_TEST_RUN` and BPF run-time
//! stats), `traffic` (sections 2 and 3, real traffic between namespaces, nftables),
//! `scale` (section 4, in a child process for its peak RSS), `propagation` (section 5,
//! the real `netfence run` over a manifest directory), `report` (table and JSON).

mod backdrop;
mod breakdown;
mod floor;
mod kernel;
mod nft;
mod propagation;
mod report;
mod scale;
mod scene;
mod traffic;
mod watchload;

#[allow(
    dead_code,
    clippy::unwrap_used,
    reason = "the kernel tests' frame builder, shared as is; the bench uses a part of it"
)]
#[path = "../../tests/kernel/frame.rs"]
mod frame;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;

use crate::report::Report;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "netfence benchmarks (root)")]
pub struct Args {
    /// Small sizes and few repetitions: seconds, for CI.
    #[arg(long)]
    pub quick: bool,
    /// The `netfence` binary (for the propagation section).
    #[arg(long)]
    pub netfence: PathBuf,
    /// Where to write the JSON results.
    #[arg(long)]
    pub out: PathBuf,
    /// Only these sections: `kernel` runs sections 1, 1b and 6 (the TC programs' cost
    /// and map memory: BPF_PROG_TEST_RUN, no namespaces or traffic), `traffic` sections
    /// 2 and 3 (real traffic between namespaces: nftables, throughput, latency),
    /// `scale` sections 4, 5 and 7 (the engine per change at cluster sizes,
    /// propagation with the real agent at cluster sizes, and the watch load on the
    /// test API server), `watch` section 7 alone.
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Runs per cell of sections 1 and 1b (default 20,000 with `--quick`, else
    /// 200,000): more runs, steadier figures on a busy machine.
    #[arg(long)]
    pub repeat: Option<u32>,
    /// Section 5 at these cluster sizes (generated pods beside the two real ones)
    /// instead of the defaults, and no section 4.
    #[arg(long, value_delimiter = ',')]
    pub propagation_sizes: Option<Vec<usize>>,
    /// Internal: run the compile measurement of section 4 and print it as JSON.
    #[arg(long, num_args = 3, value_names = ["PODS", "POLICIES", "LOCAL"], hide = true)]
    pub compile_child: Option<Vec<usize>>,
}

/// A subset of the sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// Sections 1, 1b and 6.
    Kernel,
    /// Sections 2 and 3.
    Traffic,
    /// Sections 4, 5 and 7.
    Scale,
    /// Section 7.
    Watch,
}

/// Prints a progress line (stderr, so the table on stdout stays clean).
pub fn progress(what: &str) {
    eprintln!("bench: {what}");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(sizes) = &args.compile_child {
        return scale::child(sizes);
    }
    netfence_testbed::require_root()?;
    let start = Instant::now();
    let mut report = Report::new(args.quick);
    report.machine();
    let runs = |section: Only| args.only.is_none_or(|only| only == section);
    if runs(Only::Kernel) {
        kernel::run(&args, &mut report).context("section 1/6: per-packet kernel cost")?;
    }
    if runs(Only::Traffic) {
        traffic::run(&args, &mut report).context("sections 2/3: traffic")?;
    }
    if runs(Only::Scale) {
        if args.propagation_sizes.is_none() {
            scale::run(&args, &mut report).context("section 4: compile and memory")?;
        }
        propagation::run(&args, &mut report).context("section 5: propagation")?;
    }
    if runs(Only::Scale) && args.propagation_sizes.is_none() || args.only == Some(Only::Watch) {
        watchload::run(&args, &mut report).context("section 7: watch load")?;
    }
    report.finish(start.elapsed());
    report.print();
    report.write(&args.out)?;
    Ok(())
}
