//! The one decision both TC programs share: parse, conntrack, endpoint, policy, then
//! count, report and act. `from_pod` and `to_pod` are wrappers that only fix the
//! direction. The verdict is a `Reason`; the action is derived from it in one place
//! (`finish`), so a computed drop can never pass.
//!
//! # Threat model
//!
//! Every pod is root in its own network namespace with NET_RAW and NET_ADMIN there: it
//! forges any frame and puts any address on its interface. `from_pod` therefore trusts
//! nothing in a frame but the port it arrived on (`skb->ifindex`), and which addresses
//! belong to which port comes from the agent (ENDPOINTS, PORTS: the cluster's pod IPs
//! and the CNI ADD results), never from the pod. `to_pod` hands a pod only what its
//! ingress policy allows, whoever sent it.
//!
//! # Per packet, in this order (the first step that decides, decides)
//!
//! (`docs/verdicts.md` states the same rules as a checklist; the differential fuzz
//! holds this code and an independent model of that page to the same verdicts.)
//!
//!  1. Ethernet: one VLAN tag is skipped, a second one drops (`DropUnsupported`).
//!     ARP is judged in `link::arp` (`AllowArp` / `DropArpSpoofed`); IPv4 and IPv6 go
//!     on; every other EtherType drops (`DropLinkLayer`).
//!  2. IPv4 / IPv6 (extension headers walked, at most 6, else `DropUnsupported`) and
//!     L4 (TCP, UDP, SCTP ports; ICMP in IPv4 and ICMPv6 in IPv6: type and echo
//!     identifier; the other family's ICMP number is a portless protocol). Truncated
//!     or malformed headers, and headers past the IP length, drop (`DropMalformed`).
//!  3. ICMPv6 neighbour discovery and MLD (in IPv6 only) are judged in
//!     `link::neighbour_discovery` (`AllowNeighbourDiscovery` /
//!     `DropNeighbourDiscovery`); a fragmented one drops (RFC 6980).
//!  4. A non-first fragment follows its first fragment's recorded verdict
//!     (`AllowFragment` / `DropFragment`); first fragments record theirs in `run`.
//!  5. Conntrack, one lookup: a live entry of this flow at this hook passes
//!     (`AllowEstablished`); a reply marks it answered. A TCP SYN without ACK skips it
//!     and is always re-checked. ICMP errors instead look up the flow they quote
//!     (`AllowRelatedIcmp`, see `conntrack::related`), else go on as plain ICMP.
//!     With `--existing-flows=cut` (a load-time constant; `keep` prunes this), an
//!     entry of an older policy generation than SETTINGS' is re-checked: steps 6–9
//!     run for it as for a new flow, but in the direction that opened it
//!     (`CtValue.origin`) and on its server port. Allowed: re-stamped, passes
//!     (`AllowEstablished`). Denied: the entry is deleted and the packet dropped
//!     (`DropPolicyChanged`), or in audit mode passes re-stamped (`AuditPolicy`).
//!  6. The local endpoint, bound to this port:
//!     - `from_pod`: a link-local source is the pod's behind this port (PORTS);
//!       otherwise the source's ENDPOINTS entry must be bound to this port: unknown
//!       or another port's drops (`DropSpoofed`), unbound drops (`DropUnbound`).
//!     - `to_pod`: a group destination (broadcast or multicast, by Ethernet or IP
//!       address) or a link-local one is for the pod behind this port (PORTS, judged
//!       by its ingress policy, no conntrack entry for a group); otherwise the
//!       destination's ENDPOINTS entry must be bound to this port: unknown or another
//!       port's drops (`DropWrongPort`, e.g. a flooded frame), unbound drops
//!       (`DropUnbound`). A port without a PORTS entry drops what needs it
//!       (`DropUnbound`).
//!     - Tunnels: from a pod, IP-in-IP, IPv6-in-IP, GRE and UDP to the VXLAN ports
//!       8472/4789 drop (`DropTunnel`), whatever policy and `--allow-node` say: what a
//!       node decapsulates carries any inner source.
//!  7. Not isolated in this direction: passes (`AllowNotIsolated`), with a conntrack
//!     entry (so the replies pass if the other way is isolated, now or later) unless
//!     it is an ICMP error or goes to a group (no flow: replies come from unicast
//!     addresses).
//!  8. Peer identity: IDENTITIES longest prefix of the remote address, else world.
//!  9. Policy: the generation is read, then four lookups in `policy::allowing_rule`'s
//!     order; a hit passes (`AllowPolicy`, rule counted, conntrack entry stamped with
//!     that generation), a miss drops (`DropPolicy`) — unless the endpoint audits this
//!     direction (`EP_AUDIT_*`): then it passes (`AuditPolicy`) with a conntrack entry
//!     like an allow, so the flow is reported once and its replies pass.
//! 10. Every verdict is counted in COUNTERS; every drop and audit (and, with
//!     EVENT_ALLOWS, every policy allow) is sent to EVENTS. An allow returns
//!     `TC_ACT_UNSPEC` (= `TCX_NEXT`): later TCX programs and clsact filters on the
//!     port still see the packet; a drop returns `TC_ACT_SHOT`.
//!
//! # Every path that passes a packet without a policy lookup, and why it is safe
//!
//! - **ARP** (`AllowArp`). To a pod: it comes from the node or from a pod whose own
//!   ARP passed the check below. From a pod: only a well-formed Ethernet/IPv4 request
//!   or reply whose sender hardware address is the frame's source and whose sender
//!   address is bound to this port (or 0.0.0.0, a probe): a pod can announce only
//!   itself, never the gateway or another pod. ARP carries no payload beyond its
//!   fixed fields and is not routed.
//! - **Neighbour discovery and MLD** (`AllowNeighbourDiscovery`). From a pod: no RA,
//!   no Redirect; RS/NS/NA with hop limit 255, at most 128 bytes, the pod's own
//!   source (link-local, bound here, or `::` for DAD), an NA only for the pod's own
//!   target, to a destination on the link (multicast, link-local, a local pod or the
//!   node), so it can neither claim another pod's address nor leave the link. MLD,
//!   either way: hop limit 1, at most 512 bytes, link-local (or `::`) source,
//!   multicast destination, as RFC 3810 lets a listener accept. To a pod:
//!   NS/NA/RS/RA/Redirect only with hop limit 255, i.e. never routed here. IPv4
//!   carrying protocol 58 is no ND: it meets policy as a portless protocol. Residual: colluding pods on one node can signal each
//!   other through these bounded fields (as through ARP timing); no data reaches a
//!   socket that is not raw.
//! - **Established flows** (`AllowEstablished`). An entry exists only for a flow a
//!   previous packet was allowed to open at this hook (steps 7 and 9), keyed by this
//!   port's ifindex and the pod-side address bound to it, so a forged packet can only
//!   match a flow of its own pod. A pure SYN never rides an entry. Entries of an
//!   address whose pod went or changed are removed by the agent before the address's
//!   new owner is programmed, so a reused IP does not inherit them.
//! - **Related ICMP errors** (`AllowRelatedIcmp`). Only when the quote names a live
//!   flow of this pod at this hook, the error goes to the quoted packet's sender (from
//!   a pod: that flow's remote side), and it is no longer than a router's quote (576
//!   bytes IPv4, 1,280 IPv6): no tunnel to a third address and little room beyond the
//!   quote. Its source is not checked (routers on the path report PMTU), as in
//!   nf_conntrack: whoever knows a pod's flow 5-tuple can send it such errors.
//! - **Fragments** (`AllowFragment`). A non-first fragment passes only behind a first
//!   fragment with the same addresses, id and protocol on the same port that passed,
//!   within the reassembly timeout.
//! - **Not isolated** (`AllowNotIsolated`). No policy selects the pod in this
//!   direction: Kubernetes allows everything there; the endpoint (and so the
//!   address binding) was still checked.
//! - **Audit** (`AuditPolicy`). The operator asked to observe instead of enforce
//!   (`--mode audit`, `netfence.io/mode: audit`); the flow is reported.
//!
//! Nothing else passes: unknown EtherTypes, unknown or foreign addresses, unbound
//! endpoints, broadcast and multicast to isolated pods, link-local traffic of isolated
//! pods and tunnels to the node all drop.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use netfence_common::{
    CT_ORIGIN_LOCAL, CT_ORIGIN_REMOTE, CtKey, DIR_EGRESS, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS,
    EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EndpointValue, Event, FragKey, FragValue, PROTO_GRE,
    PROTO_IPIP, PROTO_IPV6_IN_IP, PROTO_UDP, Reason, UDP_PORT_VXLAN_IANA, UDP_PORT_VXLAN_LINUX,
    VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DROP,
};

use crate::parse::{self, Fragment, Packet, is_link_local};
use crate::zero::{self, Zeroable};
use crate::{conntrack, link, maps, policy};

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

// SAFETY: integers and a `Reason` (repr(u32), 0 is `AllowEstablished`): all-zero
// bytes are a valid `Verdict`.
unsafe impl Zeroable for Verdict {}

impl Verdict {
    #[inline(always)]
    const fn of(reason: Reason, direction: u8) -> Self {
        Self {
            reason,
            policy: 0,
            rule: 0,
            direction,
        }
    }
}

/// Runs one packet through the shared core and returns the TC action.
#[inline(always)]
pub fn run(ctx: &TcContext, direction: u8) -> i32 {
    // SAFETY: `skb` is the context pointer the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let stage = maps::bench_stage();
    if stage == 1 {
        return TC_ACT_UNSPEC;
    }
    // Zeroed in place (`zero`): a `Packet` or `Verdict` literal here was a `memset`.
    let mut pkt_slot = MaybeUninit::uninit();
    let pkt = Packet::empty(&mut pkt_slot);
    let parsed = parse::parse(ctx, pkt);
    if stage == 2 {
        return TC_ACT_UNSPEC;
    }
    let mut verdict_slot = MaybeUninit::uninit();
    let verdict = zero::fill::<Verdict>(&mut verdict_slot);
    verdict.reason = Reason::DropMalformed;
    verdict.direction = direction;
    verdict.reason = match parsed {
        Err(Reason::AllowArp) => link::arp(ctx, pkt, direction, ifindex),
        Err(reason) => reason,
        Ok(()) => {
            // Step 5's ICMP errors first, in a BPF-to-BPF call (`related_flow`) whose
            // frame is not added to the inlined rest of step 5–9's, which keeps every
            // call chain under the 512-byte stack limit. (An ICMP error is neither ND
            // nor a non-first fragment, so steps 3 and 4 cannot decide it first.)
            let related = if pkt.is_icmp_error() {
                conntrack::related(ctx, pkt, direction, ifindex)
            } else {
                None
            };
            let reason = match related {
                Some(rule) => {
                    verdict.rule = rule;
                    Reason::AllowRelatedIcmp
                }
                None if pkt.is_neighbour_discovery() || pkt.fragment == Fragment::NonFirst => {
                    link_or_fragment(ctx, pkt, direction, ifindex, verdict)
                }
                None => flow(pkt, direction, ifindex, verdict),
            };
            verdict.reason = reason;
            if pkt.fragment == Fragment::First {
                record_first_fragment(pkt, ifindex, verdict);
            }
            reason
        }
    };
    if stage != 0 {
        return TC_ACT_UNSPEC;
    }
    finish(pkt, ifindex, verdict)
}

/// Writes a verdict's policy, rule and direction into `out` and returns its reason.
/// The BPF-to-BPF calls of this module return their verdicts this way: a call that
/// returns an aggregate can leave a stack pointer in r0, which the verifier refuses
/// ("cannot return stack pointer to the caller"), and one copy of the verdict (the
/// caller's) keeps the stack small.
#[inline(always)]
fn give(out: &mut Verdict, verdict: Verdict) -> Reason {
    out.policy = verdict.policy;
    out.rule = verdict.rule;
    out.direction = verdict.direction;
    verdict.reason
}

/// Steps 3–4 for a parsed IP packet that is ND/MLD or a non-first fragment, into
/// `out` (see `give`).
// A BPF-to-BPF call, not inlined: its stack frame is not added to `run`'s (which holds
// steps 5–9 inline), which keeps every call chain under the 512-byte stack limit.
#[inline(never)]
fn link_or_fragment(
    ctx: &TcContext,
    pkt: &Packet,
    direction: u8,
    ifindex: u32,
    out: &mut Verdict,
) -> Reason {
    // 3. ND/MLD pass without policy only as validated link traffic (without them no
    //    IPv6 address resolves); fragmented, they fail closed (RFC 6980).
    if pkt.is_neighbour_discovery() {
        let reason = if pkt.fragment == Fragment::None {
            link::neighbour_discovery(ctx, pkt, direction, ifindex)
        } else {
            Reason::DropNeighbourDiscovery
        };
        return give(out, Verdict::of(reason, direction));
    }

    // 4. A non-first fragment has no ports to judge: it passes only behind a first
    //    fragment that passed here (fails closed otherwise).
    if pkt.fragment == Fragment::NonFirst {
        let verdict = match maps::fragment(&fragment_key(pkt, ifindex)) {
            Some(first)
                if first.allowed != 0
                    && maps::now_ns().saturating_sub(first.last_seen_ns) <= FRAGMENT_TIMEOUT_NS =>
            {
                Verdict {
                    reason: Reason::AllowFragment,
                    policy: 0,
                    rule: first.rule,
                    direction,
                }
            }
            _ => Verdict::of(Reason::DropFragment, direction),
        };
        give(out, verdict)
    } else {
        // Not reached: `run` calls this for ND and non-first fragments only (fails
        // closed if it were).
        give(out, Verdict::of(Reason::DropMalformed, direction))
    }
}

/// Step 5 for any other parsed IP packet, into `out` (see `give`); `judge` does 6–9.
/// Inline in `run`, so that an established packet makes no BPF-to-BPF call after
/// `parse` (each costs about as much as a map lookup; bench section 1b). `stage` is
/// the bench's cut-off (`maps::bench_stage`; 0 in an agent).
#[inline(always)]
fn flow(pkt: &Packet, direction: u8, ifindex: u32, out: &mut Verdict) -> Reason {
    let stage = maps::bench_stage();
    // 5. Conntrack first. ICMP errors are no flow of their own: they pass only through
    //    the flow they quote, or as ICMP through policy, and never create an entry.
    let key = conntrack::flow_key(pkt, direction, ifindex);
    match stage {
        3 => return give(out, Verdict::of(Reason::AllowEstablished, direction)),
        4 => {
            let found = maps::conntrack(&key).is_some();
            let reason = if found {
                Reason::AllowEstablished
            } else {
                Reason::DropPolicy
            };
            return give(out, Verdict::of(reason, direction));
        }
        _ => {}
    }
    // A stale entry to re-check (`cut` only). An ICMP error that relates to no flow
    // (see `run`) is judged as plain ICMP.
    let mut stale: Option<conntrack::Hit> = None;
    if !pkt.is_icmp_error()
        && !pkt.is_tcp_syn()
        && let Some(hit) = conntrack::established(pkt, &key, direction)
    {
        if stage == 5 {
            return give(out, Verdict::of(Reason::AllowEstablished, direction));
        }
        if !maps::cut_existing_flows() {
            return give(
                out,
                Verdict {
                    reason: Reason::AllowEstablished,
                    policy: 0,
                    rule: hit.rule,
                    direction,
                },
            );
        }
        let current = maps::generation();
        if hit.generation == current {
            return give(
                out,
                Verdict {
                    reason: Reason::AllowEstablished,
                    policy: 0,
                    rule: hit.rule,
                    direction,
                },
            );
        }
        stale = Some(conntrack::Hit { current, ..hit });
    }
    judge(pkt, &key, direction, stale.as_ref(), out)
}

/// Step 6's endpoint: the one this packet's pod-side address belongs to, bound to this
/// port, or the drop that fails closed. `group`: `pkt.is_group()`.
#[inline(always)]
fn local_endpoint(
    pkt: &Packet,
    egress: bool,
    group: bool,
    ifindex: u32,
) -> Result<EndpointValue, Reason> {
    let local = if egress { &pkt.src } else { &pkt.dst };
    // Link-local addresses and, to a pod, groups are no cluster address: they belong
    // to the pod behind this port.
    if is_link_local(local) || (!egress && group) {
        return maps::port(ifindex).ok_or(Reason::DropUnbound);
    }
    // Fails closed: from a pod, a source that is no pod netfence knows, or another
    // pod's, is spoofed; to a pod, an address that is not its own is a flooded frame
    // or a forged destination; an endpoint not bound to a port yet is neither's.
    let foreign = if egress {
        Reason::DropSpoofed
    } else {
        Reason::DropWrongPort
    };
    let endpoint = maps::endpoint(local).ok_or(foreign)?;
    if endpoint.ifindex == 0 {
        return Err(Reason::DropUnbound);
    }
    if endpoint.ifindex != ifindex {
        return Err(foreign);
    }
    Ok(endpoint)
}

/// A tunnel packet: what a node decapsulates carries any inner source.
#[inline(always)]
fn is_tunnel(pkt: &Packet) -> bool {
    matches!(pkt.protocol, PROTO_IPIP | PROTO_IPV6_IN_IP | PROTO_GRE)
        || (pkt.protocol == PROTO_UDP
            && matches!(pkt.dst_port, UDP_PORT_VXLAN_LINUX | UDP_PORT_VXLAN_IANA))
}

/// Steps 6–9 (`decide_new`) into `out` (see `give`).
// Inline in `run` (a BPF-to-BPF call costs about as much as a map lookup): `run`'s
// frame is then 272 bytes, and with `related_flow`'s 160 the deepest chain stays under
// the 512-byte stack limit.
#[inline(always)]
fn judge(
    pkt: &Packet,
    key: &CtKey,
    direction: u8,
    stale: Option<&conntrack::Hit>,
    out: &mut Verdict,
) -> Reason {
    give(out, decide_new(pkt, key, direction, stale))
}

/// Steps 6–9: the endpoint, identity and policy decision, for a new flow (`stale`
/// `None`) or a stale entry's re-check.
#[inline(always)]
fn decide_new(pkt: &Packet, key: &CtKey, direction: u8, stale: Option<&conntrack::Hit>) -> Verdict {
    // 6. The local endpoint (for a re-check too: a pod gone since is judged as a new
    //    packet of it would be).
    let egress = direction == DIR_EGRESS;
    let group = pkt.is_group();
    let endpoint = match local_endpoint(pkt, egress, group, key.ifindex) {
        Ok(endpoint) => endpoint,
        Err(reason) => return Verdict::of(reason, direction),
    };
    if egress && is_tunnel(pkt) {
        return Verdict {
            reason: Reason::DropTunnel,
            policy: endpoint.policy,
            rule: 0,
            direction,
        };
    }
    // Entries for flows only: an ICMP error belongs to the flow it quotes, and a group
    // packet (either way) is no flow: its replies come from unicast addresses.
    let track = !pkt.is_icmp_error() && !group;

    // The policy question: a new flow's is this hook's direction and the packet's
    // destination port; a re-checked flow's is the direction and port it opened with.
    let (policy_direction, port) = match stale {
        Some(hit) => (hit.origin_direction(), hit.policy_port(key)),
        None => (direction, pkt.dst_port),
    };
    let policy_egress = policy_direction == DIR_EGRESS;
    // Read before the lookups: a sync finishing during them leaves the new entry
    // stamped with the older generation, so `cut` re-checks it.
    let generation = maps::generation();

    // 7. Not isolated in this direction: passes without a policy lookup.
    let (this_way, audit, origin) = if policy_egress {
        (EP_ISOLATED_EGRESS, EP_AUDIT_EGRESS, CT_ORIGIN_LOCAL)
    } else {
        (EP_ISOLATED_INGRESS, EP_AUDIT_INGRESS, CT_ORIGIN_REMOTE)
    };
    if endpoint.flags & this_way == 0 {
        if let Some(hit) = stale {
            hit.restamp(0);
            return Verdict {
                reason: Reason::AllowEstablished,
                policy: endpoint.policy,
                rule: 0,
                direction,
            };
        }
        // An entry even when isolated in neither direction: a policy that isolates
        // the pod later must not turn this flow's replies into new traffic
        // (`--existing-flows=keep` keeps it), and the flow's next packets cost one
        // lookup instead of a conntrack miss plus the endpoint lookup.
        if track {
            conntrack::create(pkt, key, origin, 0, generation);
        }
        return Verdict {
            reason: Reason::AllowNotIsolated,
            policy: endpoint.policy,
            rule: 0,
            direction,
        };
    }

    // 8. Who the remote side is.
    let remote = if egress { &pkt.dst } else { &pkt.src };
    let peer = policy::peer_identity(remote);

    // 9. Policy, on the destination port of the new connection (the remote port from
    //    the pod, the local port to it: both are the packet's destination port), or
    //    a re-checked flow's server port.
    let policy = endpoint.policy;
    match policy::allowing_rule(
        policy,
        peer,
        policy_direction,
        pkt.protocol,
        port,
        !pkt.is_icmp(),
    ) {
        Some(rule) => {
            if let Some(hit) = stale {
                hit.restamp(rule);
                return Verdict {
                    reason: Reason::AllowEstablished,
                    policy,
                    rule,
                    direction,
                };
            }
            maps::count_rule(rule);
            if track {
                conntrack::create(pkt, key, origin, rule, generation);
            }
            Verdict {
                reason: Reason::AllowPolicy,
                policy,
                rule,
                direction,
            }
        }
        // Audit mode: no rule allows it, and it passes, reported. The entry makes its
        // replies pass and keeps its next packets from being reported again.
        None if endpoint.flags & audit != 0 => {
            match stale {
                Some(hit) => hit.restamp(0),
                None if track => conntrack::create(pkt, key, origin, 0, generation),
                None => {}
            }
            Verdict {
                reason: Reason::AuditPolicy,
                policy,
                rule: 0,
                direction: policy_direction,
            }
        }
        // Fails closed: isolated, and no rule allows it (any more: the entry goes, so
        // the rest of the flow drops here too, and a reconnect meets policy).
        None => {
            if stale.is_some() {
                maps::conntrack_delete(key);
                return Verdict {
                    reason: Reason::DropPolicyChanged,
                    policy,
                    rule: 0,
                    direction: policy_direction,
                };
            }
            Verdict {
                reason: Reason::DropPolicy,
                policy,
                rule: 0,
                direction,
            }
        }
    }
}

#[inline(always)]
fn fragment_key(pkt: &Packet, ifindex: u32) -> FragKey {
    FragKey {
        src: pkt.src,
        dst: pkt.dst,
        ifindex,
        id: pkt.frag_id,
        protocol: pkt.frag_protocol,
        _pad: [0, 0, 0],
    }
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
#[inline(always)]
fn finish(pkt: &Packet, ifindex: u32, verdict: &Verdict) -> i32 {
    maps::count(verdict.reason);
    let drop = verdict.reason.is_drop();
    let audit = verdict.reason == Reason::AuditPolicy;
    if drop || audit || (verdict.reason == Reason::AllowPolicy && maps::event_allows()) {
        report(pkt, ifindex, verdict);
    }
    // An allow is TCX_NEXT / TC_ACT_UNSPEC: netfence only removes packets, and what
    // it lets through still meets every later program and filter on the port.
    if drop { TC_ACT_SHOT } else { TC_ACT_UNSPEC }
}

/// Step 10's event, for a drop, an audit or (with EVENT_ALLOWS) a policy allow.
// A BPF-to-BPF call, not inlined: the event's stack frame is separate from its
// siblings', which keeps every call chain under the 512-byte stack limit; the count
// and the action stay inline, so an established packet makes no call here.
#[inline(never)]
fn report(pkt: &Packet, ifindex: u32, verdict: &Verdict) {
    let drop = verdict.reason.is_drop();
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
        } else if verdict.reason == Reason::AuditPolicy {
            VERDICT_AUDIT
        } else {
            VERDICT_ALLOW
        },
        _pad: 0,
    });
}
