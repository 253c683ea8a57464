//! What a pod may say on its link: ARP (steps 1) and ICMPv6 neighbour discovery and
//! MLD (step 3 of `verdict`). Both pass without a policy lookup, so everything a pod
//! sends of them is checked here against the port's bindings: a pod speaks only for
//! the addresses bound to its own port, never as a router, and nothing it sends this
//! way leaves the link or carries more than the protocol needs.

use aya_ebpf::programs::TcContext;
use netfence_common::{Addr, DIR_EGRESS, IDENTITY_HOST, Reason};

use crate::maps;
use crate::parse::{Packet, is_link_local, is_multicast, is_unspecified, mapped};

const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_PTYPE_IPV4: u16 = 0x0800;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

const ND_ROUTER_SOLICIT: u8 = 133;
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOUR_SOLICIT: u8 = 135;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;

/// The longest RS/NS/NA a pod may send (ICMPv6 bytes): the 24-byte message with a
/// link-layer address and a nonce option is 40; anything much longer is a payload.
const ND_MAX_LEN: u32 = 128;
/// The longest MLD message a pod may send: an MLDv2 report of a couple dozen groups.
const MLD_MAX_LEN: u32 = 512;

/// The ARP header for Ethernet + IPv4 (28 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct ArpIpv4 {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    op: [u8; 2],
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
    target_mac: [u8; 6],
    target_ip: [u8; 4],
}

/// Whether `addr` is an endpoint bound to this port (`ifindex`, never 0).
#[inline(always)]
fn bound_here(addr: &Addr, ifindex: u32) -> bool {
    maps::endpoint(addr).is_some_and(|e| e.ifindex != 0 && e.ifindex == ifindex)
}

/// ARP at either hook (step 1). To a pod it passes: it comes from the node or from a
/// pod whose ARP this check passed. From a pod it passes only as a well-formed
/// Ethernet/IPv4 request or reply whose sender hardware address is the frame's source
/// and whose sender address is bound to this port, or 0.0.0.0 (an RFC 5227 probe,
/// which updates no neighbour cache). Anything else fails closed (`DropArpSpoofed`):
/// it would poison a neighbour's cache (claim the gateway or another pod).
/// `pkt.src`/`pkt.dst` get the sender and target addresses, for the event.
// A BPF-to-BPF call: its frame is not added to the IP path's.
#[inline(never)]
pub fn arp(ctx: &TcContext, pkt: &mut Packet, direction: u8, ifindex: u32) -> Reason {
    let Ok(arp) = ctx.load::<ArpIpv4>(usize::from(pkt.l3_offset)) else {
        return Reason::DropMalformed;
    };
    pkt.src = mapped(arp.sender_ip);
    pkt.dst = mapped(arp.target_ip);
    if direction != DIR_EGRESS {
        return Reason::AllowArp;
    }
    let Ok(frame_source) = ctx.load::<[u8; 6]>(6) else {
        return Reason::DropMalformed;
    };
    let op = u16::from_be_bytes(arp.op);
    let well_formed = u16::from_be_bytes(arp.htype) == ARP_HTYPE_ETHERNET
        && u16::from_be_bytes(arp.ptype) == ARP_PTYPE_IPV4
        && arp.hlen == 6
        && arp.plen == 4
        && (op == ARP_REQUEST || op == ARP_REPLY);
    let own = arp.sender_ip == [0; 4] || bound_here(&pkt.src, ifindex);
    if well_formed && arp.sender_mac == frame_source && own {
        Reason::AllowArp
    } else {
        Reason::DropArpSpoofed
    }
}

/// Neighbour discovery and MLD (step 3), for a parsed ICMPv6 packet whose type is one
/// of them. They pass without policy only as link traffic:
/// - MLD, either way: hop limit 1, at most `MLD_MAX_LEN` bytes, a link-local or `::`
///   source and a multicast destination;
/// - to a pod: NS/NA/RS/RA/Redirect with hop limit 255 (a routed copy has a lower
///   one: it did not come from the link);
/// - from a pod: never RA or Redirect (a pod is no router); RS/NS/NA with hop limit
///   255, at most `ND_MAX_LEN` bytes, a source that is the pod's (link-local, bound
///   to this port, or `::` for a DAD solicitation), for NA a target that is the
///   pod's, and a destination on the link (multicast, link-local, a local pod, or
///   the node).
///
/// Anything else fails closed (`DropNeighbourDiscovery`).
// A BPF-to-BPF call: its frame is not added to the IP path's.
#[inline(never)]
pub fn neighbour_discovery(ctx: &TcContext, pkt: &Packet, direction: u8, ifindex: u32) -> Reason {
    let nd = matches!(pkt.icmp_type, ND_ROUTER_SOLICIT..=ND_REDIRECT);
    let valid = if !nd {
        // MLD either way: what RFC 3810 lets a listener accept (a link-local or `::`
        // source, hop limit 1), to a group, bounded.
        pkt.hop_limit == 1
            && message_len(pkt) <= MLD_MAX_LEN
            && (is_link_local(&pkt.src) || is_unspecified(&pkt.src))
            && is_multicast(&pkt.dst)
    } else if direction != DIR_EGRESS {
        pkt.hop_limit == 255
    } else {
        nd_from_pod(ctx, pkt, ifindex)
    };
    if valid {
        Reason::AllowNeighbourDiscovery
    } else {
        Reason::DropNeighbourDiscovery
    }
}

/// ICMPv6 bytes of the message (the IPv6 payload after extension headers).
#[inline(always)]
fn message_len(pkt: &Packet) -> u32 {
    pkt.l4_end.saturating_sub(pkt.l4_offset)
}

/// RS, NS or NA from a pod (see `neighbour_discovery`).
#[inline(always)]
fn nd_from_pod(ctx: &TcContext, pkt: &Packet, ifindex: u32) -> bool {
    if pkt.icmp_type == ND_ROUTER_ADVERT || pkt.icmp_type == ND_REDIRECT {
        return false;
    }
    if pkt.hop_limit != 255 || message_len(pkt) > ND_MAX_LEN {
        return false;
    }
    let source_ok = is_link_local(&pkt.src)
        || (is_unspecified(&pkt.src) && pkt.icmp_type == ND_NEIGHBOUR_SOLICIT)
        || bound_here(&pkt.src, ifindex);
    if !source_ok {
        return false;
    }
    if pkt.icmp_type == ND_NEIGHBOUR_ADVERT {
        // The advertised address: ICMPv6 bytes 8..24. A truncated NA fails closed.
        let Ok(target) = ctx.load::<Addr>(pkt.l4_offset as usize + 8) else {
            return false;
        };
        if message_len(pkt) < 24 || !(is_link_local(&target) || bound_here(&target, ifindex)) {
            return false;
        }
    }
    // On the link: nothing routable may leave this way (a hop-limit-255 NS to a far
    // address would be forwarded by the node).
    is_multicast(&pkt.dst)
        || is_link_local(&pkt.dst)
        || maps::endpoint(&pkt.dst).is_some()
        || maps::identity(&pkt.dst) == IDENTITY_HOST
}
