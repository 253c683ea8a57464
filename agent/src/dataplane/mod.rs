//! The kernel side, seen from userspace: load the TC programs (`loader`), find and
//! follow the interfaces to enforce on and bind pod addresses to them (`links`),
//! attach to them (`attach`), make the maps equal to the compiled image (`sync`),
//! purge the conntrack entries of addresses that changed pod (`owners`), and read
//! verdict events (`events`).

pub mod attach;
pub mod events;
pub mod flowlog;
pub mod last_sync;
pub mod links;
pub mod loader;
pub mod owners;
pub mod pin;
pub mod sync;

/// The compiled TC programs (the `netfence-ebpf` crate, built by `build.rs`).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netfence-ebpf"));

#[cfg(test)]
#[path = "object_tests.rs"]
mod object_tests;
