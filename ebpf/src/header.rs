//! Header fields read from the frame with one load as wide as the field. A header is
//! read in place where it lies in the skb's linear data (a bounds check against
//! `data_end`, no helper call), else copied to the stack by `bpf_skb_load_bytes`
//! (which also reads non-linear skbs) and read there; a failed read is a truncated
//! packet.
//!
//! Why not `read_unaligned` of a byte struct: LLVM's BPF backend assumes nothing
//! about a packet pointer's alignment and splits every multi-byte read into byte
//! loads, then copies the bytes through the stack (the program's largest cost on the
//! established path, bench section 1b). Here each field is one load of its width
//! (`load!`, an inline `*(uN *)(ptr + off)`), which the verifier allows at any packet
//! offset on the architectures netfence runs on (x86-64 and arm64 have efficient
//! unaligned access, so the verifier enforces no packet alignment unless a program
//! asks for `BPF_F_STRICT_ALIGNMENT`, which netfence does not). On the stack copy
//! (8-byte aligned) every field netfence reads lies at an offset aligned to its
//! width, as the verifier requires there.

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use netfence_common::Reason;

/// Offsets past this are read through the helper only (a bound the verifier needs for
/// in-place reads; every header netfence reads on the fast path lies well within it).
const MAX_DIRECT_OFFSET: usize = 0x3fff;

/// The largest header `read` copies (the fixed IPv6 header).
const MAX_HEADER: usize = 40;

/// A header decoded field by field from `SIZE` bytes of the frame.
pub trait Header: Sized {
    /// Bytes the header covers (all must lie in the frame).
    const SIZE: usize;

    /// Reads the fields from `at .. at + SIZE`, each with `load!`.
    ///
    /// # Safety
    /// `at .. at + SIZE` is readable: checked packet data, or the stack copy, 8-byte
    /// aligned, with every field at an offset aligned to its width.
    unsafe fn decode(at: usize) -> Self;
}

/// One load of a `$ty` (`u8`, `u16`, `u32`, `u64`) at `$at + $off`, in the frame's byte
/// order (`from_be` for a big-endian number, `to_ne_bytes` for bytes). The caller
/// guarantees the bytes are readable (`Header::decode`'s contract).
macro_rules! load {
    ($ty:ident, $at:expr, $off:expr) => {{
        #[cfg(target_arch = "bpf")]
        {
            let value: u64;
            // SAFETY: the caller's contract: `$at + $off .. + size_of::<$ty>()` is
            // readable (packet data checked against `data_end`, or the stack copy).
            unsafe {
                core::arch::asm!(
                    concat!("{value} = *(", stringify!($ty), " *)({at} + {off})"),
                    value = lateout(reg) value,
                    at = in(reg) $at,
                    off = const $off,
                    options(pure, readonly, nostack),
                );
            }
            value as $ty
        }
        #[cfg(not(target_arch = "bpf"))]
        {
            // SAFETY: as above (host builds only type-check this crate).
            unsafe { (($at + $off) as *const $ty).read_unaligned() }
        }
    }};
}
pub(crate) use load;

/// 8-byte aligned room for a header copied by the helper.
#[repr(C, align(8))]
struct Copy([u8; MAX_HEADER]);

/// The header `H` at `offset` of the frame: in place when it lies in the linear data,
/// else through `bpf_skb_load_bytes`; fails closed (`DropMalformed`) past the frame's
/// end.
#[inline(always)]
pub fn read<H: Header>(ctx: &TcContext, offset: usize) -> Result<H, Reason> {
    const { assert!(H::SIZE <= MAX_HEADER) };
    if offset <= MAX_DIRECT_OFFSET {
        let at = ctx.data() + offset;
        if at + H::SIZE <= ctx.data_end() {
            // SAFETY: `at .. at + SIZE` is inside the skb's linear data (checked
            // against `data_end` just above).
            return Ok(unsafe { H::decode(at) });
        }
    }
    let mut copy = core::mem::MaybeUninit::<Copy>::uninit();
    // SAFETY: the helper writes at most SIZE bytes into `copy`, which holds
    // MAX_HEADER ≥ SIZE.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            copy.as_mut_ptr().cast(),
            H::SIZE as u32,
        )
    };
    if loaded != 0 {
        return Err(Reason::DropMalformed);
    }
    // SAFETY: the helper filled the first SIZE bytes of the 8-byte aligned copy.
    Ok(unsafe { H::decode(copy.as_ptr() as usize) })
}
