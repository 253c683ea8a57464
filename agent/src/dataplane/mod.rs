//! The kernel side, seen from userspace: load the TC programs, attach them, sync maps,
//! read events.

/// The compiled TC programs (the `netfence-ebpf` crate, built by `build.rs`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netfence-ebpf"));
