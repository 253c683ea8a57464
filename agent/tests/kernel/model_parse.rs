//! The fuzz model's frame parsing (`model.rs` judges): byte readers, address classes,
//! IPv4 and IPv6 headers with the extension-header walk and fragments, the L4 facts
//! a verdict needs, and the packet an ICMP error quotes. Written from the issue-13
//! spec and the RFCs, not from `ebpf/src`.

use netfence_common::{
    Addr, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason, v4_mapped,
};

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn addr_at(b: &[u8], at: usize) -> Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

pub fn v4_at(b: &[u8], at: usize) -> Addr {
    v4_mapped([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn is_mapped(a: &Addr) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

/// fe80::/10, or 169.254.0.0/16 in its mapped form.
pub fn is_link_local(a: &Addr) -> bool {
    (a[0] == 0xfe && a[1] & 0xc0 == 0x80) || (is_mapped(a) && a[12] == 169 && a[13] == 254)
}

/// ff00::/8, or 224.0.0.0/4 in its mapped form.
pub fn is_multicast(a: &Addr) -> bool {
    a[0] == 0xff || (is_mapped(a) && a[12] & 0xf0 == 0xe0)
}

pub fn is_broadcast(a: &Addr) -> bool {
    is_mapped(a) && a[12..] == [255; 4]
}

/// Where a frame's fragment header or flags put it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    No,
    /// Identification and the protocol the fragment header names (what later
    /// fragments carry too, so their records meet).
    First(u32, u8),
    /// Identification and the protocol the fragment carries.
    Later(u32, u8),
}

/// A parsed IP packet.
pub struct Ip<'a> {
    pub v6: bool,
    pub src: Addr,
    pub dst: Addr,
    pub hop_limit: u8,
    /// The whole packet's length by its header.
    pub length: usize,
    /// The final protocol (after extension headers).
    pub protocol: u8,
    pub fragment: Fragment,
    /// The L4 bytes, bounded by the header's length.
    pub l4: &'a [u8],
}

/// L4 facts the verdict needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct L4 {
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP echo request/reply: identifier (the local port of the flow).
    pub echo_id: Option<u16>,
    pub tcp_flags: u8,
    pub icmp_type: Option<u8>,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_VLAN: u16 = 0x8100;
pub const ETH_QINQ: u16 = 0x88a8;

/// IPv6 extension headers walked: hop-by-hop, routing, fragment, destination
/// options, authentication.
pub fn is_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

/// At most this many extension headers are walked; one more is unsupported.
pub const MAX_EXT: usize = 6;

pub fn parse_v4(b: &[u8]) -> Result<Ip<'_>, Reason> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return Err(Reason::DropMalformed);
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let length = usize::from(be16(b, 2));
    if ihl < 20 || length < ihl || length > b.len() {
        return Err(Reason::DropMalformed);
    }
    let field = be16(b, 6);
    let (more, offset) = (field & 0x2000 != 0, field & 0x1fff);
    let id = u32::from(be16(b, 4));
    let fragment = match (offset, more) {
        (0, false) => Fragment::No,
        (0, true) => Fragment::First(id, b[9]),
        _ => Fragment::Later(id, b[9]),
    };
    Ok(Ip {
        v6: false,
        src: v4_at(b, 12),
        dst: v4_at(b, 16),
        hop_limit: b[8],
        length,
        protocol: b[9],
        fragment,
        l4: &b[ihl..length],
    })
}

pub fn parse_v6(b: &[u8]) -> Result<Ip<'_>, Reason> {
    if b.len() < 40 || b[0] >> 4 != 6 {
        return Err(Reason::DropMalformed);
    }
    let length = 40 + usize::from(be16(b, 4));
    if length > b.len() {
        return Err(Reason::DropMalformed);
    }
    let payload = &b[40..length];
    let (mut next, mut at, mut walked) = (b[6], 0usize, 0usize);
    let mut fragment = Fragment::No;
    let mut seen_fragment = false;
    while is_ext(next) {
        if walked == MAX_EXT {
            return Err(Reason::DropUnsupported);
        }
        walked += 1;
        let h = payload
            .get(at..)
            .filter(|h| h.len() >= 8)
            .ok_or(Reason::DropMalformed)?;
        let len = match next {
            // A second fragment header: malformed (RFC 8200 4.1).
            44 if fragment != Fragment::No || seen_fragment => return Err(Reason::DropMalformed),
            44 => {
                seen_fragment = true;
                let (offset, more) = (be16(h, 2) >> 3, h[3] & 1 != 0);
                let id = be32(h, 4);
                if offset != 0 {
                    fragment = Fragment::Later(id, h[0]);
                    next = h[0];
                    at += 8;
                    break;
                }
                // An atomic fragment (offset 0, no more) is a whole packet.
                if more {
                    fragment = Fragment::First(id, h[0]);
                }
                8
            }
            51 => (usize::from(h[1]) + 2) * 4,
            _ => (usize::from(h[1]) + 1) * 8,
        };
        if at + len > payload.len() {
            return Err(Reason::DropMalformed);
        }
        next = h[0];
        at += len;
    }
    Ok(Ip {
        v6: true,
        src: addr_at(b, 8),
        dst: addr_at(b, 24),
        hop_limit: b[7],
        length,
        protocol: next,
        fragment,
        l4: &payload[at.min(payload.len())..],
    })
}

/// Whether `ip` carries ICMP of its own family (ICMP in IPv4, ICMPv6 in IPv6).
pub fn is_icmp(v6: bool, protocol: u8) -> bool {
    (!v6 && protocol == PROTO_ICMP) || (v6 && protocol == PROTO_ICMPV6)
}

pub fn is_echo(v6: bool, kind: u8) -> bool {
    if v6 {
        matches!(kind, 128 | 129)
    } else {
        matches!(kind, 0 | 8)
    }
}

pub fn is_icmp_error(v6: bool, kind: u8) -> bool {
    if v6 {
        (1..=4).contains(&kind)
    } else {
        matches!(kind, 3 | 11 | 12)
    }
}

/// The L4 header of a packet that is no later fragment.
pub fn parse_l4(v6: bool, protocol: u8, l4: &[u8]) -> Result<L4, Reason> {
    let need = match protocol {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_SCTP => 12,
        // ICMP of the packet's own family; the other family's number is a plain
        // portless protocol (docs/verdicts.md).
        p if is_icmp(v6, p) => 8,
        _ => 0,
    };
    if l4.len() < need {
        return Err(Reason::DropMalformed);
    }
    let mut out = L4::default();
    match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            out.src_port = be16(l4, 0);
            out.dst_port = be16(l4, 2);
            if protocol == PROTO_TCP {
                out.tcp_flags = l4[13];
            }
        }
        p if is_icmp(v6, p) => {
            out.icmp_type = Some(l4[0]);
            if is_echo(v6, l4[0]) {
                out.echo_id = Some(be16(l4, 4));
            }
        }
        _ => {}
    }
    Ok(out)
}

/// The quoted packet inside an ICMP error.
pub struct Quote {
    pub src: Addr,
    pub dst: Addr,
    pub protocol: u8,
    pub l4: L4,
}

/// At least the quoted IP header and 8 bytes of its L4 header, or no relation.
pub fn parse_quote(v6: bool, q: &[u8]) -> Option<Quote> {
    let (src, dst, protocol, l4) = if v6 {
        if q.len() < 48 || q[0] >> 4 != 6 {
            return None;
        }
        (addr_at(q, 8), addr_at(q, 24), q[6], &q[40..])
    } else {
        let ihl = usize::from(*q.first()? & 0x0f) * 4;
        if q.len() < 20 || q[0] >> 4 != 4 || ihl < 20 || q.len() < ihl + 8 {
            return None;
        }
        (v4_at(q, 12), v4_at(q, 16), q[9], &q[ihl..])
    };
    let mut out = L4::default();
    match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            out.src_port = be16(l4, 0);
            out.dst_port = be16(l4, 2);
        }
        p if is_icmp(v6, p) && is_echo(v6, l4[0]) => out.echo_id = Some(be16(l4, 4)),
        _ => {}
    }
    Some(Quote {
        src,
        dst,
        protocol,
        l4: out,
    })
}
