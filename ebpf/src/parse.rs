//! Packet parsing: Ethernet (one VLAN tag), IPv4, IPv6 with its extension headers,
//! and the first bytes of TCP, UDP, SCTP, ICMP and ICMPv6, into one `Packet` both
//! families share (addresses IPv4-mapped). The fixed headers are read field by field
//! through `header::read` (in place where they lie in the skb's linear data, else
//! through `bpf_skb_load_bytes`); IPv6 extension headers and ICMP quotes through
//! `TcContext::load`; a failed read is a truncated packet.

use aya_ebpf::programs::TcContext;
use netfence_common::{
    Addr, CtKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason, v4_mapped,
};

use crate::header::{Header, load, read};
use crate::zero::{self, Zeroable};

const ETH_HLEN: usize = 14;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;

const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked before giving up (`DropUnsupported`).
const IPV6_MAX_EXT_HEADERS: usize = 6;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Where the packet stands with respect to IP fragmentation.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram (0: a zeroed `Packet`'s).
    None = 0,
    /// Offset 0 with more fragments to come: carries the L4 header.
    First,
    /// Offset ≠ 0: no L4 header; follows the first fragment's verdict.
    NonFirst,
}

/// One parsed packet. Fields the packet does not have stay 0. 8-byte aligned, so
/// that `Packet::empty` and the addresses are written a word at a time.
#[derive(Clone, Copy)]
#[repr(align(8))]
pub struct Packet {
    pub src: Addr,
    pub dst: Addr,
    /// Offset of the L4 header from the start of the frame (meaningless for non-first
    /// fragments, which carry none).
    pub l4_offset: u32,
    /// End of the IP datagram in the frame (anything after it is link padding).
    pub l4_end: u32,
    /// Fragment identification (IPv4: 16 bits, IPv6: 32 bits).
    pub frag_id: u32,
    /// The protocol every fragment of the datagram names (IPv4: the header's; IPv6:
    /// the fragment header's next header), for the FRAGMENTS key.
    pub frag_protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP/ICMPv6 echo identifier (the conntrack "port" of a ping).
    pub echo_id: u16,
    /// Length of the IP datagram (header included): `l4_end` minus the IP header's
    /// offset (bounds ICMP errors).
    pub ip_len: u16,
    /// Offset of the ARP or IP header in the frame (after the VLAN tag, if any).
    pub l3_offset: u16,
    /// IP protocol of the L4 header (after IPv6 extension headers).
    pub protocol: u8,
    /// IPv6 hop limit (neighbour discovery checks it); IPv4 TTL.
    pub hop_limit: u8,
    /// The Ethernet destination is a group address (broadcast or multicast).
    pub l2_group: bool,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub is_ipv6: bool,
    pub is_echo: bool,
    pub fragment: Fragment,
}

// SAFETY: every field is an integer, a byte array, a bool or `Fragment` (whose 0 is
// `None`): all-zero bytes are a valid `Packet`.
unsafe impl Zeroable for Packet {}

impl Packet {
    /// `slot` as a packet with every field 0 (`Fragment::None`, no flags), for
    /// `parse` to fill.
    #[inline(always)]
    pub fn empty(slot: &mut core::mem::MaybeUninit<Self>) -> &mut Self {
        zero::fill(slot)
    }

    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        self.protocol == PROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// ICMP in IPv4 or ICMPv6 in IPv6. The other family's ICMP number is just an IP
    /// protocol without ports (no type, no echo, no error, no neighbour discovery):
    /// no host stack would take it as ICMP.
    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        is_icmp_of(self.protocol, self.is_ipv6)
    }

    /// An ICMP error that quotes another packet: IPv4 destination unreachable (3), time
    /// exceeded (11), parameter problem (12); ICMPv6 types 1–4.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.is_icmp()
            && if self.is_ipv6 {
                matches!(self.icmp_type, 1..=4)
            } else {
                matches!(self.icmp_type, 3 | 11 | 12)
            }
    }

    /// ICMPv6 neighbour discovery (133–137), MLD (130–132) and MLDv2 reports (143).
    #[inline(always)]
    pub fn is_neighbour_discovery(&self) -> bool {
        self.is_ipv6 && self.protocol == PROTO_ICMPV6 && matches!(self.icmp_type, 130..=137 | 143)
    }

    /// A packet for a group rather than one host: a broadcast or multicast Ethernet
    /// destination, an IP multicast destination, or IPv4's limited broadcast.
    #[inline(always)]
    pub fn is_group(&self) -> bool {
        self.l2_group || is_multicast(&self.dst) || self.dst == v4_mapped([255, 255, 255, 255])
    }
}

/// `protocol` is the ICMP of its IP family.
#[inline(always)]
fn is_icmp_of(protocol: u8, ipv6: bool) -> bool {
    if ipv6 {
        protocol == PROTO_ICMPV6
    } else {
        protocol == PROTO_ICMP
    }
}

/// IPv4 224.0.0.0/4 (IPv4-mapped) or IPv6 ff00::/8.
#[inline(always)]
pub fn is_multicast(addr: &Addr) -> bool {
    addr[0] == 0xff || (is_v4_mapped(addr) && addr[12] & 0xf0 == 0xe0)
}

/// IPv6 fe80::/10 or IPv4 169.254.0.0/16 (IPv4-mapped): an address of the link, which
/// belongs to the pod behind the port it is seen on (it is no cluster address).
#[inline(always)]
pub fn is_link_local(addr: &Addr) -> bool {
    (addr[0] == 0xfe && addr[1] & 0xc0 == 0x80)
        || (is_v4_mapped(addr) && addr[12] == 169 && addr[13] == 254)
}

/// `::` (the source of duplicate address detection).
#[inline(always)]
pub fn is_unspecified(addr: &Addr) -> bool {
    *addr == [0; 16]
}

/// `v4_mapped`, written as two words: the ten zero bytes of the const fn's array
/// literal would be a `memset` (see `zero`).
#[inline(always)]
pub fn mapped(octets: [u8; 4]) -> Addr {
    let low = u64::from_ne_bytes([0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]);
    let mut addr = [0; 16];
    addr[..8].copy_from_slice(&0u64.to_ne_bytes());
    addr[8..].copy_from_slice(&low.to_ne_bytes());
    addr
}

#[inline(always)]
fn is_v4_mapped(addr: &Addr) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

/// The Ethernet header: the destination's group bit and the EtherType.
struct EthHeader {
    group: bool,
    ethertype: u16,
}

impl Header for EthHeader {
    const SIZE: usize = ETH_HLEN;

    #[inline(always)]
    unsafe fn decode(at: usize) -> Self {
        Self {
            group: load!(u8, at, 0) & 1 != 0,
            ethertype: u16::from_be(load!(u16, at, 12)),
        }
    }
}

/// A big-endian u16 (the EtherType behind a VLAN tag).
struct Be16(u16);

impl Header for Be16 {
    const SIZE: usize = 2;

    #[inline(always)]
    unsafe fn decode(at: usize) -> Self {
        Self(u16::from_be(load!(u16, at, 0)))
    }
}

/// Parses `ctx` into `pkt`. `Ok` means an IP packet to judge; `Err(reason)` means
/// parsing alone decided, except `AllowArp`, which means an ARP frame
/// (`pkt.l3_offset` points at it) for the caller to judge; `DropLinkLayer`,
/// `DropMalformed` and `DropUnsupported` drop.
/// `pkt` keeps what was parsed before a failure (for the drop event).
// Inline in `run`: a BPF-to-BPF call costs about as much as a map lookup (bench
// section 1b), and every packet parses.
#[inline(always)]
pub fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<(), Reason> {
    // Fails closed: a frame too short for an Ethernet header is malformed.
    let eth = read::<EthHeader>(ctx, 0)?;
    let mut ethertype = eth.ethertype;
    pkt.l2_group = eth.group;
    let mut l3 = ETH_HLEN;
    // One 802.1Q / 802.1ad tag still in the frame (the kernel usually moves the outer
    // tag to skb metadata before TC; what remains in the data is parsed) is skipped and
    // the inner frame judged. A second tag fails closed (`DropUnsupported`): treating a
    // stacked tag as non-IP would let any IP packet through behind it.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = read::<Be16>(ctx, ETH_HLEN + VLAN_HLEN - 2)?.0;
        l3 += VLAN_HLEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err(Reason::DropUnsupported);
        }
    }
    pkt.l3_offset = l3 as u16;
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3, pkt)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3, pkt)?,
        // ARP is judged by the caller (`link::arp`): pods need it to reach anything.
        ETH_P_ARP => return Err(Reason::AllowArp),
        // Fails closed: no other link-layer protocol is any pod's business, and an
        // EtherType netfence does not parse would carry anything past policy.
        _ => return Err(Reason::DropLinkLayer),
    }
    if pkt.fragment == Fragment::NonFirst {
        return Ok(());
    }
    parse_l4(ctx, pkt)
}

/// The fields of the fixed IPv4 header netfence reads.
struct Ipv4Header {
    version_ihl: u8,
    total_len: u16,
    id: u16,
    frag: u16,
    ttl: u8,
    protocol: u8,
    src: [u8; 4],
    dst: [u8; 4],
}

impl Header for Ipv4Header {
    const SIZE: usize = 20;

    #[inline(always)]
    unsafe fn decode(at: usize) -> Self {
        Self {
            version_ihl: load!(u8, at, 0),
            total_len: u16::from_be(load!(u16, at, 2)),
            id: u16::from_be(load!(u16, at, 4)),
            frag: u16::from_be(load!(u16, at, 6)),
            ttl: load!(u8, at, 8),
            protocol: load!(u8, at, 9),
            src: load!(u32, at, 12).to_ne_bytes(),
            dst: load!(u32, at, 16).to_ne_bytes(),
        }
    }
}

/// IPv4: version, IHL ≥ 5, total length covering the header and inside the frame.
/// Any violation fails closed (`DropMalformed`): a header the kernel would reject is
/// no flow to allow, and one it would accept differently must not be guessed at.
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, l3: usize, pkt: &mut Packet) -> Result<(), Reason> {
    let ip = read::<Ipv4Header>(ctx, l3)?;
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    let total_len = usize::from(ip.total_len);
    if ip.version_ihl >> 4 != 4
        || header_len < 20
        || total_len < header_len
        || l3 + total_len > ctx.len() as usize
    {
        return Err(Reason::DropMalformed);
    }
    pkt.src = mapped(ip.src);
    pkt.dst = mapped(ip.dst);
    pkt.protocol = ip.protocol;
    pkt.frag_protocol = ip.protocol;
    pkt.hop_limit = ip.ttl;
    pkt.ip_len = total_len as u16;
    let frag = ip.frag;
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    pkt.frag_id = u32::from(ip.id);
    pkt.fragment = if offset != 0 {
        Fragment::NonFirst
    } else if more_fragments {
        Fragment::First
    } else {
        Fragment::None
    };
    pkt.l4_offset = (l3 + header_len) as u32;
    pkt.ip_end_check(l3 + total_len)
}

/// The fields of the fixed IPv6 header netfence reads (not the class and flow label).
struct Ipv6Header {
    /// The first byte: version and the class's high bits.
    version_class: u8,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: Addr,
    dst: Addr,
}

/// The address in the 16 bytes of `high` and `low` (frame byte order).
#[inline(always)]
fn addr_of(high: u64, low: u64) -> Addr {
    let mut addr = [0; 16];
    addr[..8].copy_from_slice(&high.to_ne_bytes());
    addr[8..].copy_from_slice(&low.to_ne_bytes());
    addr
}

impl Header for Ipv6Header {
    const SIZE: usize = IPV6_HLEN;

    #[inline(always)]
    unsafe fn decode(at: usize) -> Self {
        Self {
            version_class: load!(u8, at, 0),
            payload_len: u16::from_be(load!(u16, at, 4)),
            next_header: load!(u8, at, 6),
            hop_limit: load!(u8, at, 7),
            src: addr_of(load!(u64, at, 8), load!(u64, at, 16)),
            dst: addr_of(load!(u64, at, 24), load!(u64, at, 32)),
        }
    }
}

/// IPv6 and its extension header chain: hop-by-hop, routing, destination options and
/// AH are skipped; the fragment header records the fragment; at most
/// `IPV6_MAX_EXT_HEADERS` are walked (a longer chain fails closed with
/// `DropUnsupported`: the L4 header behind it cannot be checked).
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, l3: usize, pkt: &mut Packet) -> Result<(), Reason> {
    let ip = read::<Ipv6Header>(ctx, l3)?;
    // A jumbogram (payload length 0 with a hop-by-hop jumbo option) cannot cross a
    // veth with a normal MTU; it is treated as an empty payload and fails closed below.
    let end = l3 + IPV6_HLEN + usize::from(ip.payload_len);
    if ip.version_class >> 4 != 6 || end > ctx.len() as usize {
        return Err(Reason::DropMalformed);
    }
    pkt.is_ipv6 = true;
    pkt.src = ip.src;
    pkt.dst = ip.dst;
    pkt.hop_limit = ip.hop_limit;
    // Saturates: an IPv6 datagram can be 40 bytes longer than u16 holds.
    pkt.ip_len = (end - l3).min(usize::from(u16::MAX)) as u16;
    let mut next = ip.next_header;
    let mut offset = l3 + IPV6_HLEN;
    let mut seen_fragment = false;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        // Every extension header is at least 8 bytes, inside the payload length.
        let is_extension = matches!(
            next,
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
        );
        if is_extension && offset + 8 > end {
            return Err(Reason::DropMalformed);
        }
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let hdr = ctx
                    .load::<[u8; 2]>(offset)
                    .map_err(|_| Reason::DropMalformed)?;
                next = hdr[0];
                offset += (usize::from(hdr[1]) + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let hdr = ctx
                    .load::<[u8; 2]>(offset)
                    .map_err(|_| Reason::DropMalformed)?;
                next = hdr[0];
                offset += (usize::from(hdr[1]) + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                // At most one fragment header (RFC 8200 4.1, 4.5): a second one would
                // make the datagram's identity ambiguous. Fails closed.
                if seen_fragment {
                    return Err(Reason::DropMalformed);
                }
                seen_fragment = true;
                let hdr = ctx
                    .load::<[u8; 8]>(offset)
                    .map_err(|_| Reason::DropMalformed)?;
                next = hdr[0];
                pkt.frag_protocol = next;
                offset += 8;
                let frag = u16::from_be_bytes([hdr[2], hdr[3]]);
                pkt.frag_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                if frag >> 3 != 0 {
                    pkt.fragment = Fragment::NonFirst;
                    pkt.protocol = next;
                    return Ok(());
                }
                if frag & 1 != 0 {
                    pkt.fragment = Fragment::First;
                }
            }
            _ => {
                pkt.protocol = next;
                pkt.l4_offset = offset as u32;
                return pkt.ip_end_check(end);
            }
        }
        if offset > end {
            return Err(Reason::DropMalformed);
        }
    }
    // Still an extension header after the walk: either a longer chain than netfence
    // walks, or an upper protocol number that happens to be one of them.
    match next {
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT => {
            Err(Reason::DropUnsupported)
        }
        _ => {
            pkt.protocol = next;
            pkt.l4_offset = offset as u32;
            pkt.ip_end_check(end)
        }
    }
}

impl Packet {
    /// Remembers where the IP datagram ends, so L4 reads never run into frame padding;
    /// an L4 offset past it (header lengths larger than the datagram) is malformed.
    #[inline(always)]
    fn ip_end_check(&mut self, end: usize) -> Result<(), Reason> {
        if (self.l4_offset as usize) > end {
            return Err(Reason::DropMalformed);
        }
        self.l4_end = end as u32;
        Ok(())
    }
}

/// The ports of TCP, UDP and SCTP: the header's first 4 bytes.
struct Ports {
    src: u16,
    dst: u16,
}

impl Header for Ports {
    const SIZE: usize = 4;

    #[inline(always)]
    unsafe fn decode(at: usize) -> Self {
        Self {
            src: u16::from_be(load!(u16, at, 0)),
            dst: u16::from_be(load!(u16, at, 2)),
        }
    }
}

/// The TCP header up to its flags byte.
struct TcpHeader {
    ports: Ports,
    flags: u8,
}

impl Header for TcpHeader {
    const SIZE: usize = 14;

    #[inline(always)]
    unsafe fn decode(at: usize) -> Self {
        Self {
            // SAFETY: the ports are the first 4 of these 14 bytes.
            ports: unsafe { Ports::decode(at) },
            flags: load!(u8, at, 13),
        }
    }
}

/// The first 8 bytes of ICMP / ICMPv6: the type and, for an echo, the identifier.
struct IcmpHeader {
    icmp_type: u8,
    echo_id: u16,
}

impl Header for IcmpHeader {
    const SIZE: usize = 8;

    #[inline(always)]
    unsafe fn decode(at: usize) -> Self {
        Self {
            icmp_type: load!(u8, at, 0),
            echo_id: u16::from_be(load!(u16, at, 4)),
        }
    }
}

/// Reads the L4 header's ports, flags and ICMP type. A header cut short by the frame
/// or by the IP length fails closed (`DropMalformed`): without ports the flow cannot be
/// checked. No-next-header (59) and unknown protocols have no ports (0), and only rules
/// without ports can allow them.
#[inline(always)]
fn parse_l4(ctx: &TcContext, pkt: &mut Packet) -> Result<(), Reason> {
    let l4 = pkt.l4_offset as usize;
    let end = pkt.l4_end as usize;
    match pkt.protocol {
        PROTO_TCP => {
            if l4 + 20 > end {
                return Err(Reason::DropMalformed);
            }
            let hdr = read::<TcpHeader>(ctx, l4)?;
            pkt.src_port = hdr.ports.src;
            pkt.dst_port = hdr.ports.dst;
            pkt.tcp_flags = hdr.flags;
        }
        // SCTP: the ports are the first 4 bytes of the 12-byte common header.
        PROTO_UDP | PROTO_SCTP => {
            let len = if pkt.protocol == PROTO_UDP { 8 } else { 12 };
            if l4 + len > end {
                return Err(Reason::DropMalformed);
            }
            let ports = read::<Ports>(ctx, l4)?;
            pkt.src_port = ports.src;
            pkt.dst_port = ports.dst;
        }
        PROTO_ICMP | PROTO_ICMPV6 if pkt.is_icmp() => {
            if l4 + 8 > end {
                return Err(Reason::DropMalformed);
            }
            let hdr = read::<IcmpHeader>(ctx, l4)?;
            pkt.icmp_type = hdr.icmp_type;
            pkt.is_echo = if pkt.protocol == PROTO_ICMP {
                hdr.icmp_type == ICMP_ECHO_REQUEST || hdr.icmp_type == ICMP_ECHO_REPLY
            } else {
                hdr.icmp_type == ICMPV6_ECHO_REQUEST || hdr.icmp_type == ICMPV6_ECHO_REPLY
            };
            if pkt.is_echo {
                pkt.echo_id = hdr.echo_id;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Fills `key` (all but `ifindex`) with the flow of the packet the ICMP error `pkt`
/// quotes (its IP header and first 8 L4 bytes). That packet travelled the other way:
/// `local_is_src` says whether the pod is its source (at `to_pod`: the pod sent it)
/// or its destination (at `from_pod`). An ICMP echo gives (identifier, 0) as ports.
///
/// `None` when the quote is cut short or malformed: the error is then judged as a
/// plain ICMP packet (fails closed unless a rule without ports allows it). IPv6 quotes
/// are not walked through extension headers: a quoted extension header is taken as a
/// portless protocol, which no conntrack entry of a TCP/UDP/SCTP flow matches.
/// Fields are loaded one by one, straight into the key, to keep the stack small.
#[inline(always)]
pub fn quoted(ctx: &TcContext, pkt: &Packet, local_is_src: bool, key: &mut CtKey) -> Option<()> {
    let inner = pkt.l4_offset as usize + 8;
    let (src, dst) = if local_is_src {
        (&mut key.local, &mut key.remote)
    } else {
        (&mut key.remote, &mut key.local)
    };
    let inner_l4 = if pkt.is_ipv6 {
        let first = ctx.load::<u8>(inner).ok()?;
        if first >> 4 != 6 {
            return None;
        }
        key.protocol = ctx.load::<u8>(inner + 6).ok()?;
        *src = ctx.load::<[u8; 16]>(inner + 8).ok()?;
        *dst = ctx.load::<[u8; 16]>(inner + 24).ok()?;
        inner + IPV6_HLEN
    } else {
        let version_ihl = ctx.load::<u8>(inner).ok()?;
        let header_len = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || header_len < 20 {
            return None;
        }
        key.protocol = ctx.load::<u8>(inner + 9).ok()?;
        *src = mapped(ctx.load::<[u8; 4]>(inner + 12).ok()?);
        *dst = mapped(ctx.load::<[u8; 4]>(inner + 16).ok()?);
        inner + header_len
    };
    // The quote ends where the error's IP datagram does: bytes behind it are frame
    // padding, not part of anything the error says.
    if inner_l4 + 8 > pkt.l4_end as usize {
        return None;
    }
    let l4 = ctx.load::<[u8; 8]>(inner_l4).ok()?;
    let is_echo = is_icmp_of(key.protocol, pkt.is_ipv6)
        && if pkt.is_ipv6 {
            l4[0] == ICMPV6_ECHO_REQUEST || l4[0] == ICMPV6_ECHO_REPLY
        } else {
            l4[0] == ICMP_ECHO_REQUEST || l4[0] == ICMP_ECHO_REPLY
        };
    if is_echo {
        key.local_port = u16::from_be_bytes([l4[4], l4[5]]);
        key.remote_port = 0;
    } else if matches!(key.protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        let src_port = u16::from_be_bytes([l4[0], l4[1]]);
        let dst_port = u16::from_be_bytes([l4[2], l4[3]]);
        (key.local_port, key.remote_port) = if local_is_src {
            (src_port, dst_port)
        } else {
            (dst_port, src_port)
        };
    }
    // Anything else has no ports: it relates to a portless flow (ports 0 in its key).
    Some(())
}
