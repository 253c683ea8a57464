//! Builds the TC programs (the `netfence-ebpf` crate) for the BPF target with aya-build;
//! the agent embeds the object from `OUT_DIR`.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent has no parent directory"))?
        .join("ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // aya-build passes `-Z build-std=core` only on a nightly channel or with
    // RUSTC_BOOTSTRAP=1. The BPF build uses Debian's stable toolchain (`debian-web`,
    // linked by `cargo xtask setup`), so set it here, scoped to this build script
    // rather than to every host crate.
    // SAFETY: build scripts are single-threaded; nothing else reads the environment.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: "netfence-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom("debian-web"),
    )
}
