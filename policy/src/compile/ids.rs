//! Stable numeric ids: identities, endpoint policies and rules are numbered by a hash
//! of a canonical description of what they stand for, so that an unchanged thing keeps
//! its id across compiles and the sync layer writes only what really changed.
//!
//! The hash is 32-bit FNV-1a. Reserved values are skipped and collisions are resolved
//! by probing upwards; descriptions are allocated in sorted order, so the probing is
//! deterministic for a given set of descriptions.

use std::collections::{BTreeMap, BTreeSet};

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// 32-bit FNV-1a over a sequence of byte strings; each piece is terminated by a 0xff
/// byte (never valid in UTF-8), so `["ab", "c"]` and `["a", "bc"]` differ.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u32);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET)
    }
}

impl Fnv {
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for byte in bytes.iter().chain(std::iter::once(&0xff)) {
            self.0 ^= u32::from(*byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub fn finish(&self) -> u32 {
        self.0
    }
}

/// Hands out ids for descriptions `D`: the hash of the description, moved up past
/// reserved values and ids already taken.
#[derive(Debug)]
pub struct IdAllocator {
    reserved: fn(u32) -> bool,
    taken: BTreeSet<u32>,
}

impl IdAllocator {
    /// `reserved(id)` is true for ids that must never be handed out.
    pub fn new(reserved: fn(u32) -> bool) -> Self {
        IdAllocator {
            reserved,
            taken: BTreeSet::new(),
        }
    }

    /// The id for a description whose hash is `hash`. Call in a deterministic order.
    pub fn allocate(&mut self, hash: u32) -> u32 {
        let mut id = hash;
        while (self.reserved)(id) || self.taken.contains(&id) {
            id = id.wrapping_add(1);
        }
        self.taken.insert(id);
        id
    }

    /// Marks `id` taken (an id handed out by another allocator).
    pub fn take(&mut self, id: u32) {
        self.taken.insert(id);
    }

    /// Gives `id` back (its description is gone).
    pub fn free(&mut self, id: u32) {
        self.taken.remove(&id);
    }

    /// Allocates ids for every description (sorted, so the result depends only on the
    /// set of descriptions), with `hash` giving each one's hash.
    pub fn allocate_all<D: Ord + Clone>(
        &mut self,
        descriptions: impl IntoIterator<Item = D>,
        hash: impl Fn(&D) -> u32,
    ) -> BTreeMap<D, u32> {
        let sorted: BTreeSet<D> = descriptions.into_iter().collect();
        sorted
            .into_iter()
            .map(|d| {
                let id = self.allocate(hash(&d));
                (d, id)
            })
            .collect()
    }
}

/// Identities: below `IDENTITY_FIRST_COMPILED` and `IDENTITY_ANY` are reserved.
pub fn reserved_identity(id: u32) -> bool {
    id < netfence_common::IDENTITY_FIRST_COMPILED || id == netfence_common::IDENTITY_ANY
}

/// Endpoint policies and rules: 0 means "none" (not isolated / no rule).
pub fn reserved_zero(id: u32) -> bool {
    id == 0
}

/// The rule id counted for node traffic (`--allow-node`) an ingress-isolated pod
/// receives from its node's addresses.
pub const RULE_NODE_INGRESS: u32 = 1;
/// The rule id counted for traffic an egress-isolated pod sends to its node.
pub const RULE_NODE_EGRESS: u32 = 2;

/// Rules: 0 means "no rule"; `RULE_NODE_*` are the node-traffic rules.
pub fn reserved_rule(id: u32) -> bool {
    id <= RULE_NODE_EGRESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors_without_terminator() {
        // Reference FNV-1a of "a" is 0xe40c292c; with our terminator byte it differs,
        // so check the raw loop against the reference on the bare bytes.
        let mut h = FNV_OFFSET;
        for b in b"a" {
            h ^= u32::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        assert_eq!(h, 0xe40c_292c);
        assert_ne!(
            Fnv::default().str("ab").str("c").finish(),
            Fnv::default().str("a").str("bc").finish()
        );
    }

    #[test]
    fn allocator_skips_reserved_and_taken() {
        let mut ids = IdAllocator::new(reserved_identity);
        assert_eq!(ids.allocate(3), 16);
        assert_eq!(ids.allocate(16), 17);
        assert_eq!(ids.allocate(u32::MAX), 18);
        let mut rules = IdAllocator::new(reserved_zero);
        assert_eq!(rules.allocate(0), 1);
        assert_eq!(rules.allocate(u32::MAX), u32::MAX);
        assert_eq!(rules.allocate(u32::MAX), 2);
    }
}
