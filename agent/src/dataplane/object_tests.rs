//! Checks of the embedded BPF object itself (no root, no kernel): what its code may
//! not call.

use super::EBPF_OBJECT;

/// ELF section types and flags this walk reads.
const SHT_SYMTAB: u32 = 2;
const SHT_REL: u32 = 9;
const SHF_EXECINSTR: usize = 0x4;

fn u16_at(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> usize {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default()) as usize
}

/// The NUL-terminated name at `at` of a string table.
fn name_at(bytes: &[u8], at: usize) -> &str {
    let end = bytes[at..]
        .iter()
        .position(|&b| b == 0)
        .map_or(bytes.len(), |n| at + n);
    std::str::from_utf8(&bytes[at..end]).unwrap_or("?")
}

/// One section header.
struct Section {
    name: usize,
    kind: u32,
    flags: usize,
    offset: usize,
    size: usize,
    link: usize,
    info: usize,
}

fn section(elf: &[u8], index: usize) -> Section {
    let at = u64_at(elf, 0x28) + index * u16_at(elf, 0x3a);
    Section {
        name: u32_at(elf, at) as usize,
        kind: u32_at(elf, at + 4),
        flags: u64_at(elf, at + 8),
        offset: u64_at(elf, at + 0x18),
        size: u64_at(elf, at + 0x20),
        link: u32_at(elf, at + 0x28) as usize,
        info: u32_at(elf, at + 0x2c) as usize,
    }
}

/// Every (code section, symbol) pair a relocation of the object's code names: a call
/// or a map reference (debug and BTF sections are left out).
fn code_relocations(elf: &[u8]) -> Vec<(String, String)> {
    let names = section(elf, u16_at(elf, 0x3e)).offset;
    let mut out = Vec::new();
    for index in 0..u16_at(elf, 0x3c) {
        let rel = section(elf, index);
        let target = section(elf, rel.info);
        if rel.kind != SHT_REL || target.flags & SHF_EXECINSTR == 0 {
            continue;
        }
        let symbols = section(elf, rel.link);
        assert_eq!(
            symbols.kind, SHT_SYMTAB,
            "relocations against a symbol table"
        );
        let strings = section(elf, symbols.link).offset;
        for entry in (rel.offset..rel.offset + rel.size).step_by(16) {
            let symbol = u64_at(elf, entry + 8) >> 32;
            let symbol_name = u32_at(elf, symbols.offset + symbol * 24) as usize;
            out.push((
                name_at(elf, names + target.name).to_owned(),
                name_at(elf, strings + symbol_name).to_owned(),
            ));
        }
    }
    out
}

/// LLVM turns the zeroing of more than a few bytes into a call of compiler-builtins'
/// `memset`, a BPF-to-BPF call storing one byte per iteration: it once made up about a
/// third of an established packet's cost. The programs zero through `ebpf/src/zero.rs`
/// instead; this fails when a struct literal with zero fields or a `[0; N]` brings the
/// call back.
#[test]
fn the_programs_call_no_memset() {
    assert_eq!(
        &EBPF_OBJECT[..4],
        b"\x7fELF",
        "the embedded object is an ELF file"
    );
    assert_eq!(EBPF_OBJECT[4], 2, "a 64-bit ELF file");
    assert_eq!(EBPF_OBJECT[5], 1, "a little-endian ELF file (bpfel)");
    let relocations = code_relocations(EBPF_OBJECT);
    assert!(
        relocations.iter().any(|(_, symbol)| symbol == "CONNTRACK"),
        "the walk finds the programs' map relocations: {relocations:?}"
    );
    let memset: Vec<_> = relocations
        .iter()
        .filter(|(_, symbol)| symbol == "memset")
        .collect();
    assert!(
        memset.is_empty(),
        "calls of memset in the BPF object (see ebpf/src/zero.rs): {memset:?}"
    );
}
