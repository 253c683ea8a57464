//! The one decision both TC programs share: parse, conntrack, endpoint, policy, then
//! count, report and act. `from_pod` and `to_pod` are wrappers that only fix the
//! direction. The verdict is a `Reason`; the action is derived from it in one place
//! (`finish`), so a computed drop can never return `TC_ACT_OK`.
//!
//! Per packet, in this order (the first step that decides, decides):
//!  1. Ethernet: non-IP (ARP, ...) passes (`AllowNonIp`); one VLAN tag is skipped, a
//!     second one drops (`DropUnsupported`).
//!  2. IPv4 / IPv6 (extension headers walked, at most 6, else `DropUnsupported`) and
//!     L4 (TCP, UDP, SCTP ports; ICMP/ICMPv6 type and echo identifier). Truncated or
//!     malformed headers drop (`DropMalformed`).
//!  3. ICMPv6 neighbour discovery and MLD pass (`AllowNeighbourDiscovery`) before any
//!     endpoint check: they use link-local and unspecified sources.
//!  4. A non-first fragment follows its first fragment's recorded verdict
//!     (`AllowFragment` / `DropFragment`); first fragments record theirs in `finish`.
//!  5. Conntrack, one lookup: a live entry of this flow at this hook passes
//!     (`AllowEstablished`). A TCP SYN without ACK skips it and is always re-checked.
//!     ICMP errors instead look up the flow they quote (`AllowRelatedIcmp`).
//!     With `--existing-flows=cut` (a load-time constant; `keep` prunes this), an
//!     entry of an older policy generation than SETTINGS' (one array lookup) is
//!     re-checked: steps 6–9 run for it as for a new flow, but in the direction that
//!     opened it (`CtValue.origin`) and on its server port. Allowed: re-stamped with
//!     the current generation, passes (`AllowEstablished`). Denied: the entry is
//!     deleted and the packet dropped (`DropPolicyChanged`), or in audit mode passes
//!     re-stamped (`AuditPolicy`).
//!  6. Endpoint of the local address: `from_pod` with an unknown or foreign source
//!     drops (`DropSpoofed`); `to_pod` for an unknown destination passes
//!     (`AllowUnknownDestination`), for another port's pod drops (`DropWrongPort`).
//!  7. Not isolated in this direction: passes (`AllowNotIsolated`), with a conntrack
//!     entry (so the replies pass if the other way is isolated, now or later).
//!  8. Peer identity: IDENTITIES longest prefix of the remote address, else world.
//!  9. Policy: four lookups in `policy::allowing_rule`'s order; a hit passes
//!     (`AllowPolicy`, rule counted, conntrack entry), a miss drops (`DropPolicy`) —
//!     unless the endpoint audits this direction (`EP_AUDIT_*`): then it passes
//!     (`AuditPolicy`) with a conntrack entry like an allow, so the flow is reported
//!     once and its replies pass.
//! 10. Every verdict is counted in COUNTERS; every drop and audit (and, with
//!     EVENT_ALLOWS, every policy allow) is sent to EVENTS.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use netfence_common::{
    CT_ORIGIN_LOCAL, CT_ORIGIN_REMOTE, DIR_EGRESS, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_ISOLATED_EGRESS,
    EP_ISOLATED_INGRESS, CtKey, Event, FragKey, FragValue, Reason, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DROP,
};

use crate::parse::{self, Fragment, Packet};
use crate::{conntrack, maps, policy};

/// A first fragment's record is trusted this long (the longer of the IPv4 and IPv6
/// reassembly timeouts, 30 s and 60 s); older records are stale (an IPv4 id reused).
const FRAGMENT_TIMEOUT_NS: u64 = 60_000_000_000;

/// What the core decided, with what the event reports.
#[derive(Clone, Copy)]
struct Verdict {
    reason: Reason,
    /// Endpoint policy of the local pod, 0 when unknown.
    policy: u32,
    /// Rule that allowed, 0 otherwise.
    rule: u32,
    /// The policy direction that decided (the event's): the hook's, or for a
    /// re-checked flow the direction that opened it.
    direction: u8,
}

impl Verdict {
    #[inline(always)]
    const fn of(reason: Reason, direction: u8) -> Self {
        Self { reason, policy: 0, rule: 0, direction }
    }
}

/// Runs one packet through the shared core and returns the TC action.
#[inline(always)]
pub fn run(ctx: &TcContext, direction: u8) -> i32 {
    // SAFETY: `skb` is the context pointer the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut pkt = Packet::EMPTY;
    let verdict = match parse::parse(ctx, &mut pkt) {
        Err(reason) => Verdict::of(reason, direction),
        Ok(()) => {
            let verdict = decide(ctx, &pkt, direction, ifindex);
            if pkt.fragment == Fragment::First {
                record_first_fragment(&pkt, ifindex, &verdict);
            }
            verdict
        }
    };
    finish(&pkt, ifindex, &verdict)
}

/// Steps 3–5 for a parsed IP packet; `judge` does 6–9.
// A BPF-to-BPF call, not inlined: its stack frame is separate from its siblings',
// which keeps every call chain under the 512-byte stack limit (inlined, the whole
// program needed 624 bytes).
#[inline(never)]
fn decide(ctx: &TcContext, pkt: &Packet, direction: u8, ifindex: u32) -> Verdict {
    // 3. Fails open for ND/MLD only: without them no IPv6 address resolves, and they
    //    never leave the link (hop limit 255 / link-local scope).
    if pkt.is_neighbour_discovery() {
        return Verdict::of(Reason::AllowNeighbourDiscovery, direction);
    }

    // 4. A non-first fragment has no ports to judge: it passes only behind a first
    //    fragment that passed here (fails closed otherwise).
    if pkt.fragment == Fragment::NonFirst {
        return match maps::fragment(&fragment_key(pkt, ifindex)) {
            Some(first)
                if first.allowed != 0 && maps::now_ns().saturating_sub(first.last_seen_ns) <= FRAGMENT_TIMEOUT_NS =>
            {
                Verdict { reason: Reason::AllowFragment, policy: 0, rule: first.rule, direction }
            }
            _ => Verdict::of(Reason::DropFragment, direction),
        };
    }

    // 5. Conntrack first. ICMP errors are no flow of their own: they pass only through
    //    the flow they quote, or as ICMP through policy, and never create an entry.
    let key = conntrack::flow_key(pkt, direction, ifindex);
    let icmp_error = pkt.is_icmp_error();
    // A stale entry to re-check (`cut` only).
    let mut stale: Option<conntrack::Hit> = None;
    if icmp_error {
        if let Some(rule) = conntrack::related(ctx, pkt, direction, ifindex) {
            return Verdict { reason: Reason::AllowRelatedIcmp, policy: 0, rule, direction };
        }
    } else if !pkt.is_tcp_syn()
        && let Some(hit) = conntrack::established(pkt, &key)
    {
        if !maps::cut_existing_flows() {
            return Verdict { reason: Reason::AllowEstablished, policy: 0, rule: hit.rule, direction };
        }
        let current = maps::generation();
        if hit.generation == current {
            return Verdict { reason: Reason::AllowEstablished, policy: 0, rule: hit.rule, direction };
        }
        stale = Some(conntrack::Hit { current, ..hit });
    }
    judge(pkt, &key, direction, stale.as_ref())
}

/// Steps 6–9: the endpoint, identity and policy decision, for a new flow (`stale`
/// `None`) or a stale entry's re-check.
// A BPF-to-BPF call, not inlined: its frame is a sibling of `related`'s, not added to
// it, which keeps every call chain under the 512-byte stack limit.
#[inline(never)]
fn judge(pkt: &Packet, key: &CtKey, direction: u8, stale: Option<&conntrack::Hit>) -> Verdict {
    let icmp_error = pkt.is_icmp_error();

    // 6. The local endpoint (for a re-check too: a pod gone since is judged as a new
    //    packet of it would be).
    let egress = direction == DIR_EGRESS;
    let local = if egress { &pkt.src } else { &pkt.dst };
    let Some(endpoint) = maps::endpoint(local) else {
        return Verdict::of(
            if egress {
                // Fails closed: a source that is no pod netfence knows (spoofed, or a pod
                // not synced yet) is not let out of a veth netfence enforces on.
                Reason::DropSpoofed
            } else {
                Reason::DropWrongPort
            },
            direction,
        );
    };
    if endpoint.ifindex != 0 && endpoint.ifindex != key.ifindex {
        // Fails closed: the pod's address on another pod's port. From a pod it is a
        // spoofed source; to a pod it is a frame flooded to the wrong port.
        let reason = if egress { Reason::DropSpoofed } else { Reason::DropWrongPort };
        return Verdict { reason, policy: endpoint.policy, rule: 0, direction };
    }

    // The policy question: a new flow's is this hook's direction and the packet's
    // destination port; a re-checked flow's is the direction and port it opened with.
    let (policy_direction, port) = match stale {
        Some(hit) => (hit.origin_direction(), hit.policy_port(key)),
        None => (direction, pkt.dst_port),
    };
    let policy_egress = policy_direction == DIR_EGRESS;

    // 7. Not isolated in this direction: passes without a policy lookup.
    let (this_way, audit, origin) = if policy_egress {
        (EP_ISOLATED_EGRESS, EP_AUDIT_EGRESS, CT_ORIGIN_LOCAL)
    } else {
        (EP_ISOLATED_INGRESS, EP_AUDIT_INGRESS, CT_ORIGIN_REMOTE)
    };
    if endpoint.flags & this_way == 0 {
        if let Some(hit) = stale {
            hit.restamp(0);
            return Verdict { reason: Reason::AllowEstablished, policy: endpoint.policy, rule: 0, direction };
        }
        // An entry even when isolated in neither direction: a policy that isolates
        // the pod later must not turn this flow's replies into new traffic
        // (`--existing-flows=keep` keeps it), and the flow's next packets cost one
        // lookup instead of a conntrack miss plus the endpoint lookup.
        if !icmp_error {
            conntrack::create(pkt, key, origin, 0);
        }
        return Verdict { reason: Reason::AllowNotIsolated, policy: endpoint.policy, rule: 0, direction };
    }

    // 8. Who the remote side is.
    let remote = if egress { &pkt.dst } else { &pkt.src };
    let peer = policy::peer_identity(remote);

    // 9. Policy, on the destination port of the new connection (the remote port from
    //    the pod, the local port to it: both are the packet's destination port), or
    //    a re-checked flow's server port.
    let policy = endpoint.policy;
    match policy::allowing_rule(policy, peer, policy_direction, pkt.protocol, port, !pkt.is_icmp()) {
        Some(rule) => {
            if let Some(hit) = stale {
                hit.restamp(rule);
                return Verdict { reason: Reason::AllowEstablished, policy, rule, direction };
            }
            maps::count_rule(rule);
            if !icmp_error {
                conntrack::create(pkt, key, origin, rule);
            }
            Verdict { reason: Reason::AllowPolicy, policy, rule, direction }
        }
        // Audit mode: no rule allows it, and it passes, reported. The entry makes its
        // replies pass and keeps its next packets from being reported again.
        None if endpoint.flags & audit != 0 => {
            match stale {
                Some(hit) => hit.restamp(0),
                None if !icmp_error => conntrack::create(pkt, key, origin, 0),
                None => {}
            }
            Verdict { reason: Reason::AuditPolicy, policy, rule: 0, direction: policy_direction }
        }
        // Fails closed: isolated, and no rule allows it (any more: the entry goes, so
        // the rest of the flow drops here too, and a reconnect meets policy).
        None => {
            if stale.is_some() {
                maps::conntrack_delete(key);
                return Verdict { reason: Reason::DropPolicyChanged, policy, rule: 0, direction: policy_direction };
            }
            Verdict { reason: Reason::DropPolicy, policy, rule: 0, direction }
        }
    }
}

#[inline(always)]
fn fragment_key(pkt: &Packet, ifindex: u32) -> FragKey {
    FragKey { src: pkt.src, dst: pkt.dst, ifindex, id: pkt.frag_id, protocol: pkt.frag_protocol, _pad: [0; 3] }
}

/// Step 4's other half: a first fragment records its verdict, whichever step decided.
#[inline(always)]
fn record_first_fragment(pkt: &Packet, ifindex: u32, verdict: &Verdict) {
    let value = FragValue {
        last_seen_ns: maps::now_ns(),
        allowed: u32::from(!verdict.reason.is_drop()),
        rule: verdict.rule,
    };
    maps::fragment_put(&fragment_key(pkt, ifindex), &value);
}

/// Step 10: count, report, act. The action comes from the reason alone.
// A BPF-to-BPF call, not inlined: its stack frame is separate from its siblings',
// which keeps every call chain under the 512-byte stack limit (inlined, the whole
// program needed 624 bytes).
#[inline(never)]
fn finish(pkt: &Packet, ifindex: u32, verdict: &Verdict) -> i32 {
    maps::count(verdict.reason);
    let drop = verdict.reason.is_drop();
    let audit = verdict.reason == Reason::AuditPolicy;
    if drop || audit || (verdict.reason == Reason::AllowPolicy && maps::event_allows()) {
        maps::emit(&Event {
            src: pkt.src,
            dst: pkt.dst,
            ifindex,
            reason: verdict.reason.code(),
            policy: verdict.policy,
            rule: verdict.rule,
            src_port: pkt.src_port,
            dst_port: pkt.dst_port,
            protocol: pkt.protocol,
            direction: verdict.direction,
            verdict: if drop {
                VERDICT_DROP
            } else if audit {
                VERDICT_AUDIT
            } else {
                VERDICT_ALLOW
            },
            _pad: 0,
        });
    }
    if drop { TC_ACT_SHOT } else { TC_ACT_OK }
}
