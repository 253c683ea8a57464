//! `cargo xtask`: developer tasks. `setup` installs the toolchain, `test` runs the
//! build, lints and every test (CI runs this), `demo` runs the NetworkPolicy example of
//! `deploy/examples/` in network namespaces and prints what passes and what is dropped,
//! `fuzz` runs the datapath's differential fuzz for millions of frames.

mod bench;
mod cmd;
mod demo;
mod fuzz;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "netfence developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what this Debian machine lacks to build and test (idempotent).
    Setup,
    /// Setup, build, clippy, then every unit, integration and packet test (needs root).
    Test,
    /// Build, then run the benchmarks and print their table (needs root); JSON goes to
    /// target/bench/bench.json.
    Bench {
        /// Small sizes, debug build: seconds (CI runs this so the bench cannot rot).
        #[arg(long)]
        quick: bool,
    },
    /// The datapath's differential fuzz, long: release build, millions of random
    /// frames through the TC programs and the spec model (needs root).
    Fuzz {
        /// How many frames.
        #[arg(long, default_value_t = fuzz::DEFAULT_FRAMES)]
        frames: u64,
        /// The generator's seed (default: the clock's, printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Setup, build, then run the example of deploy/examples in network namespaces and
    /// print which probes pass (needs root).
    Demo {
        /// Print the example's cluster.yaml (Namespace and Pods) and exit.
        #[arg(long)]
        print_cluster: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Test => test::test(),
        Task::Bench { quick } => bench::bench(quick),
        Task::Fuzz { frames, seed } => fuzz::fuzz(frames, seed),
        Task::Demo { print_cluster } => demo::demo(print_cluster),
    }
}
