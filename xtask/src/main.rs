//! `cargo xtask`: developer tasks. `setup` installs the toolchain, `test` runs the
//! build, lints and every test (CI runs this), `demo` runs the NetworkPolicy example of
//! `deploy/examples/` in network namespaces and prints what passes and what is dropped,
//! `fuzz` runs the datapath's differential fuzz for millions of frames. `build` makes
//! the release binaries; `--target aarch64` cross-builds and tests for aarch64 nodes.
//! `image` writes the agent's OCI image (no base image) and loads it into podman.

mod aarch64;
mod bench;
mod cmd;
mod demo;
mod fuzz;
mod image;
mod setup;
mod test;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "netfence developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what this Debian machine lacks to build and test (idempotent).
    Setup {
        /// Also what the aarch64 cross build and its emulated tests need.
        #[arg(long)]
        aarch64: bool,
    },
    /// Setup, build, clippy, then every unit, integration and packet test (needs root).
    /// With `--target aarch64`: the unit and no-root tests cross-built and run under
    /// qemu-user, then the kernel tests on Debian's arm64 kernel in qemu-system-aarch64.
    Test {
        #[arg(long, value_enum)]
        target: Option<Target>,
        /// With `--target aarch64`: only this half (qemu-user tests or the arm64 VM).
        #[arg(long, value_enum, requires = "target")]
        only: Option<aarch64::Part>,
    },
    /// Release build of the agent and netfence-cni, in target/release, or cross-built
    /// in target/aarch64-unknown-linux-gnu/release with `--target aarch64`; beside
    /// them `kubectl-netfence`, a link to netfence (the kubectl plugin).
    Build {
        #[arg(long, value_enum)]
        target: Option<Target>,
    },
    /// Release build, then the agent's OCI image: the binaries, the dynamic loader and
    /// the libraries they load, nothing else (no base image is downloaded). Written to
    /// target/image/netfence-VERSION-ARCH.oci.tar and, when podman is installed,
    /// loaded into its local storage as localhost/netfence:VERSION.
    Image {
        /// The debug build (debug info stripped) instead of the release build.
        #[arg(long)]
        debug: bool,
        /// Where to write the archive.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
        /// Do not load it into podman.
        #[arg(long)]
        no_load: bool,
    },
    /// Build, then run the benchmarks and print their table (needs root); JSON goes to
    /// target/bench/bench.json.
    Bench {
        /// Small sizes, debug build: seconds (CI runs this so the bench cannot rot).
        #[arg(long)]
        quick: bool,
        /// Only these sections (`kernel`: 1, 1b and 6, the TC programs' own cost
        /// through BPF_PROG_TEST_RUN; `traffic`: 2 and 3, real traffic; `scale`: 4
        /// and 5, the engine and the real agent at cluster sizes).
        #[arg(long, value_enum)]
        only: Option<BenchOnly>,
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

/// A target other than this machine's.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Target {
    /// aarch64-unknown-linux-gnu (arm64 nodes).
    Aarch64,
}

/// Sections of `cargo xtask bench --only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BenchOnly {
    /// Sections 1, 1b and 6: per-packet cost of the TC programs and map memory.
    Kernel,
    /// Sections 2 and 3: nftables comparison, throughput and latency on real traffic.
    Traffic,
    /// Sections 4, 5 and 7: the engine per change, propagation with the real agent at
    /// cluster sizes up to 150,000 pods, and the watch load on the test API server.
    Scale,
    /// Section 7: 100 pod changes per second for 60 s from the test API server at
    /// 150,000 pods, each timed to its map write.
    Watch,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup { aarch64: false } => setup::setup(),
        Task::Setup { aarch64: true } => setup::setup_aarch64(),
        Task::Test { target: None, .. } => test::test(),
        Task::Test {
            target: Some(Target::Aarch64),
            only,
        } => aarch64::test(only),
        Task::Build { target: None } => {
            cmd::run(cmd::cargo().args([
                "build",
                "--release",
                "--locked",
                "-p",
                "netfence",
                "-p",
                "netfence-cni",
            ]))?;
            print_plugin(&cmd::link_kubectl_plugin(
                &cmd::target_dir().join("release"),
            )?);
            Ok(())
        }
        Task::Build {
            target: Some(Target::Aarch64),
        } => aarch64::build(),
        Task::Bench { quick, only } => bench::bench(
            quick,
            only.map(|only| match only {
                BenchOnly::Kernel => "kernel",
                BenchOnly::Traffic => "traffic",
                BenchOnly::Scale => "scale",
                BenchOnly::Watch => "watch",
            }),
        ),
        Task::Image {
            debug,
            out,
            no_load,
        } => image::image(
            if debug {
                image::Profile::Debug
            } else {
                image::Profile::Release
            },
            out,
            !no_load,
        ),
        Task::Fuzz { frames, seed } => fuzz::fuzz(frames, seed),
        Task::Demo { print_cluster } => demo::demo(print_cluster),
    }
}

/// Where the kubectl plugin link is, and how to use it.
fn print_plugin(link: &std::path::Path) {
    let dir = link.parent().unwrap_or(link).display();
    println!(
        "kubectl plugin: {} -> netfence (with {dir} on PATH: `kubectl netfence explain ...`)",
        link.display()
    );
}
