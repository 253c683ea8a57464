//! Conntrack: the flow key as seen from the hook's local endpoint, the established
//! check (one lookup, refresh at most once a second, TCP close tracking, the first
//! reply marks the entry answered), entry creation for new flows (stamped with the
//! policy generation), the re-stamp or removal of a re-checked stale entry
//! (`--existing-flows=cut`), and the relation of ICMP errors to the flow they quote.
//!
//! Timeouts follow nf_conntrack's shape, so one pod opening flows nobody answers
//! cannot keep them for hours: an answered open TCP flow lives `CT_TCP_TIMEOUT_NS`
//! idle; a closing or unanswered TCP flow (SYN_SENT) `CT_OTHER_TIMEOUT_NS`; an
//! answered UDP/SCTP/ICMP flow `CT_OTHER_TIMEOUT_NS`; an unanswered one
//! `CT_UNREPLIED_TIMEOUT_NS`. The table is one node-wide LRU: when it is full the
//! least recently used entry goes, which fails closed (an evicted flow's next packet
//! meets policy again; a reply into an isolated direction then drops).

use aya_ebpf::programs::TcContext;
use netfence_common::{
    CT_ORIGIN_LOCAL, CT_STATE_CLOSING, CT_STATE_OPEN, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS,
    PROTO_TCP,
};

use crate::maps;
use crate::parse::{self, Packet, TCP_FIN, TCP_RST};
use crate::zero;

/// `last_seen_ns` is rewritten only when older than this: an established flow costs
/// one lookup and at most one store a second, not one per packet.
const REFRESH_NS: u64 = 1_000_000_000;

/// The longest ICMP error that relates to a flow, whole IP packet: IPv4 routers quote
/// at most 576 bytes in all (RFC 1812 4.3.2.3), IPv6 nodes at most the minimum MTU
/// (RFC 4443 2.4 (c)).
const ICMP_ERROR_MAX_V4: u16 = 576;
const ICMP_ERROR_MAX_V6: u16 = 1280;

/// The key of `pkt`'s flow at this hook: `local` is the pod's side (the source for
/// `from_pod`, the destination for `to_pod`), so both directions meet on one key.
/// ICMP echo: the identifier is the local port, the remote port 0, so that a request
/// and its reply meet; other ICMP has ports 0.
#[inline(always)]
pub fn flow_key(pkt: &Packet, direction: u8, ifindex: u32) -> CtKey {
    let egress = direction == DIR_EGRESS;
    let (local, remote) = if egress {
        (pkt.src, pkt.dst)
    } else {
        (pkt.dst, pkt.src)
    };
    let (local_port, remote_port) = if pkt.is_icmp() {
        (pkt.echo_id, 0)
    } else if egress {
        (pkt.src_port, pkt.dst_port)
    } else {
        (pkt.dst_port, pkt.src_port)
    };
    CtKey {
        local,
        remote,
        ifindex,
        local_port,
        remote_port,
        protocol: pkt.protocol,
        // Not `[0; 3]`: a repeat expression is a `memset` (see `zero`).
        _pad: [0, 0, 0],
    }
}

/// Whether an entry is still valid at `now` (the timeouts in the module doc): the
/// 5-tuple of a closed connection stops passing non-SYN packets soon after its
/// close, and an unanswered flow soon after its last packet.
#[inline(always)]
fn live(entry: &CtValue, protocol: u8, now: u64) -> bool {
    let answered = entry.replied != 0;
    let timeout = if protocol == PROTO_TCP {
        if entry.state == CT_STATE_OPEN && answered {
            maps::ct_tcp_timeout_ns()
        } else {
            maps::ct_other_timeout_ns()
        }
    } else if answered {
        maps::ct_other_timeout_ns()
    } else {
        maps::ct_unreplied_timeout_ns()
    };
    now.saturating_sub(entry.last_seen_ns) <= timeout
}

/// Whether a packet at this hook travels against the flow's opening direction (a
/// reply): at `to_pod` for a flow the pod opened, at `from_pod` for one opened to it.
#[inline(always)]
fn is_reply(entry: &CtValue, direction: u8) -> bool {
    (direction == DIR_EGRESS) != (entry.origin == CT_ORIGIN_LOCAL)
}

/// A live conntrack entry, as the established check found it.
#[derive(Clone, Copy)]
pub struct Hit {
    /// The map value, for a re-check to re-stamp in place.
    pub entry: *mut CtValue,
    pub rule: u32,
    /// The entry's generation.
    pub generation: u32,
    /// The current generation, read before a re-check's lookups (the stamp it gives:
    /// a bump during the re-check leaves the entry stale, to be re-checked again).
    pub current: u32,
    pub origin: u8,
}

impl Hit {
    /// The policy direction that opened the flow: egress when the local pod did.
    #[inline(always)]
    pub fn origin_direction(&self) -> u8 {
        if self.origin == CT_ORIGIN_LOCAL {
            DIR_EGRESS
        } else {
            DIR_INGRESS
        }
    }

    /// The port policy matched when the flow opened: the server side's, the remote
    /// port of a flow the pod opened, the pod's own port of one opened to it.
    #[inline(always)]
    pub fn policy_port(&self, key: &CtKey) -> u16 {
        if self.origin == CT_ORIGIN_LOCAL {
            key.remote_port
        } else {
            key.local_port
        }
    }

    /// Marks a re-checked entry as valid in the current generation, allowed by `rule`.
    #[inline(always)]
    pub fn restamp(&self, rule: u32) {
        // SAFETY: a valid pointer into the map's value (map values stay valid for the
        // program's run); a concurrent writer can only store equally valid values.
        unsafe {
            (*self.entry).generation = self.current;
            (*self.entry).rule = rule;
        }
    }
}

/// The live entry for `key`, after refreshing it (and marking it answered when `pkt`
/// is a reply); `None` on a miss or an expired entry (the packet then goes through
/// policy, which may replace the entry).
#[inline(always)]
pub fn established(pkt: &Packet, key: &CtKey, direction: u8) -> Option<Hit> {
    let ptr = maps::conntrack(key)?;
    // SAFETY: a valid pointer into the map's value; a concurrent update from another
    // CPU can only interleave whole-field writes of equally valid values.
    let entry = unsafe { &mut *ptr };
    let now = maps::now_ns();
    if !live(entry, key.protocol, now) {
        return None;
    }
    if entry.replied == 0 && is_reply(entry, direction) {
        entry.replied = 1;
        entry.last_seen_ns = now;
    }
    if key.protocol == PROTO_TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        if entry.state != CT_STATE_CLOSING {
            entry.state = CT_STATE_CLOSING;
            entry.last_seen_ns = now;
        }
    } else if now.saturating_sub(entry.last_seen_ns) > REFRESH_NS {
        entry.last_seen_ns = now;
    }
    Some(Hit {
        entry: ptr,
        rule: entry.rule,
        generation: entry.generation,
        current: 0,
        origin: entry.origin,
    })
}

/// Records a new flow allowed at this hook (`origin`: `CT_ORIGIN_LOCAL` from the pod,
/// `CT_ORIGIN_REMOTE` to it; `rule` 0 when the direction was not isolated or the flow
/// was audited), stamped with `generation`, which the caller read before its policy
/// lookups (a sync finishing in between leaves the entry stale, so `cut` re-checks it).
#[inline(always)]
pub fn create(pkt: &Packet, key: &CtKey, origin: u8, rule: u32, generation: u32) {
    let closing = pkt.protocol == PROTO_TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let value = CtValue {
        last_seen_ns: maps::now_ns(),
        rule,
        origin,
        state: if closing {
            CT_STATE_CLOSING
        } else {
            CT_STATE_OPEN
        },
        replied: 0,
        _pad: 0,
        generation,
        _pad2: 0,
    };
    maps::conntrack_put(key, &value);
}

/// The rule of the live flow the ICMP error `pkt` is about, if any. The quoted packet
/// travelled the other way: at `from_pod` the pod reports on a packet it received
/// (the quote's destination is the pod), at `to_pod` the pod receives a report on a
/// packet it sent (the quote's source is the pod). As nf_conntrack checks:
/// - the quote's pod side must be the hook's local address, so an error cannot borrow
///   another endpoint's flow;
/// - the error goes to the sender of the packet it quotes: at `to_pod` that is the
///   pod (the check above); at `from_pod` the error's destination must be the quoted
///   flow's remote, so a pod cannot address an "error" about its allowed flow to
///   anyone else (an egress tunnel). The error's source is not checked: any router
///   on the path may report (path MTU discovery), as nf_conntrack accepts;
/// - an error is at most `ICMP_ERROR_MAX_V4`/`_V6` bytes (what RFC 1812 / RFC 4443
///   let a router quote), so it cannot carry a payload of its own.
#[inline(always)]
pub fn related(ctx: &TcContext, pkt: &Packet, direction: u8, ifindex: u32) -> Option<u32> {
    let found = related_flow(ctx, pkt, direction, ifindex);
    (found & RELATED != 0).then_some(found as u32)
}

/// `related`'s answer as one scalar (`RELATED | rule`, or 0): a BPF-to-BPF call that
/// returns an aggregate may leave a stack pointer in r0, which the verifier refuses
/// ("cannot return stack pointer to the caller").
const RELATED: u64 = 1 << 32;

// A BPF-to-BPF call, not inlined: its stack frame is separate from its siblings',
// which keeps every call chain under the 512-byte stack limit.
#[inline(never)]
fn related_flow(ctx: &TcContext, pkt: &Packet, direction: u8, ifindex: u32) -> u64 {
    related_in(ctx, pkt, direction, ifindex).map_or(0, |rule| RELATED | u64::from(rule))
}

#[inline(always)]
fn related_in(ctx: &TcContext, pkt: &Packet, direction: u8, ifindex: u32) -> Option<u32> {
    let egress = direction == DIR_EGRESS;
    if pkt.ip_len
        > if pkt.is_ipv6 {
            ICMP_ERROR_MAX_V6
        } else {
            ICMP_ERROR_MAX_V4
        }
    {
        return None;
    }
    let mut slot = core::mem::MaybeUninit::uninit();
    let key = zero::fill::<CtKey>(&mut slot);
    key.ifindex = ifindex;
    parse::quoted(ctx, pkt, !egress, key)?;
    let (outer_local, outer_remote) = if egress {
        (&pkt.src, &pkt.dst)
    } else {
        (&pkt.dst, &pkt.src)
    };
    if key.local != *outer_local {
        return None;
    }
    if egress && key.remote != *outer_remote {
        return None;
    }
    let entry = maps::conntrack(key)?;
    // SAFETY: a valid pointer into the map's value, read only.
    let entry = unsafe { &*entry };
    live(entry, key.protocol, maps::now_ns()).then_some(entry.rule)
}
