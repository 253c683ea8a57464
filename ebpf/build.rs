//! Code generation of the TC programs happens in bpf-linker; tell it the kernels
//! netfence runs on (x86_64 and arm64, whose verifiers and JITs allow misaligned packet
//! access: CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS) may be given word loads at any
//! offset, so header fields are read with one load each instead of byte by byte.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
    }
}
