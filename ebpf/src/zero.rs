//! Zero-filled values without `memset`. LLVM turns the zeroing of more than a few
//! bytes (a `Packet` to fill, a key's padding, the ten zero bytes of an IPv4-mapped
//! address) into a call to `memset`, which the BPF target takes from compiler-builtins:
//! a BPF-to-BPF call of a loop storing one byte per iteration. Five of them ran for
//! every established packet, about 100 iterations, the largest part of its cost (bench
//! section 1b). `zeroed` stores whole words instead, volatile so that LLVM cannot
//! merge them back into a `memset`.

/// A type for which all-zero bytes are a valid value, at least 4-byte aligned and a
/// multiple of 4 bytes long (checked at compile time by `zeroed`).
///
/// # Safety
/// All-zero bytes must be a valid value of the type.
pub unsafe trait Zeroable: Sized {}

/// Fills `slot` with zeros, one word at a time (8 bytes when `T` is 8-byte aligned,
/// else 4), and returns it initialised. In place: a zeroed value returned by value
/// would be copied into its place, and that copy of known zeros is a `memset` again.
#[inline(always)]
pub fn fill<T: Zeroable>(value: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const {
        assert!(core::mem::align_of::<T>() >= 4 && core::mem::size_of::<T>() % 4 == 0);
    }
    if core::mem::align_of::<T>() >= 8 && core::mem::size_of::<T>() % 8 == 0 {
        let words = value.as_mut_ptr().cast::<u64>();
        for i in 0..core::mem::size_of::<T>() / 8 {
            // SAFETY: word `i` lies inside `value`, which is 8-byte aligned.
            unsafe { words.add(i).write_volatile(0) };
        }
    } else {
        let words = value.as_mut_ptr().cast::<u32>();
        for i in 0..core::mem::size_of::<T>() / 4 {
            // SAFETY: word `i` lies inside `value`, which is 4-byte aligned.
            unsafe { words.add(i).write_volatile(0) };
        }
    }
    // SAFETY: every byte was written with zero, a valid `T` (`Zeroable`).
    unsafe { value.assume_init_mut() }
}

// SAFETY: byte arrays and integers only (explicit padding fields).
unsafe impl Zeroable for netfence_common::CtKey {}
// SAFETY: as above.
unsafe impl Zeroable for netfence_common::FragKey {}
