//! netfence TC programs (being written; see issue 3).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

#[classifier]
pub fn netfence_from_pod(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[classifier]
pub fn netfence_to_pod(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
