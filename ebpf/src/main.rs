//! netfence TC programs: `netfence_from_pod` at TC ingress of a pod's host-side veth
//! (packets from the pod: its egress policy) and `netfence_to_pod` at TC egress of it
//! (packets to the pod: its ingress policy). Both are thin wrappers over one core
//! (`verdict`); maps live in `maps`, parsing in `parse` (header field loads in
//! `header`), flows in `conntrack`, the policy lookup order in `policy`, zeroing
//! without `memset` in `zero`.
#![no_std]
#![no_main]
// Inline BPF assembly (`header::load!`: one load as wide as a header field).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod conntrack;
mod header;
mod link;
mod maps;
mod parse;
mod policy;
mod verdict;
mod zero;

use aya_ebpf::{macros::classifier, programs::TcContext};
use netfence_common::{DIR_EGRESS, DIR_INGRESS};

/// Packets leaving the pod: judged by its egress policy; the local endpoint is the
/// source address.
#[classifier]
pub fn netfence_from_pod(ctx: TcContext) -> i32 {
    verdict::run(&ctx, DIR_EGRESS)
}

/// Packets entering the pod: judged by its ingress policy; the local endpoint is the
/// destination address.
#[classifier]
pub fn netfence_to_pod(ctx: TcContext) -> i32 {
    verdict::run(&ctx, DIR_INGRESS)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
