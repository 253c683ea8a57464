//! Forged frames, built byte by byte as a hostile pod (root with NET_RAW in its own
//! namespace) builds them: Ethernet, ARP, IPv4, IPv6, UDP, ICMP and ICMPv6 with their
//! checksums, and VXLAN encapsulation. Pure functions; [`crate::raw`] sends and
//! captures them inside a namespace.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

/// EtherTypes the tests use.
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// IEEE 802 "local experimental" EtherType 1: no protocol any stack speaks.
pub const ETH_P_EXPERIMENTAL: u16 = 0x88b5;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// ARP operations.
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// ICMPv6 neighbour discovery types.
pub const ND_ROUTER_ADVERT: u8 = 134;
pub const ND_NEIGHBOUR_SOLICIT: u8 = 135;

/// An Ethernet address.
pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> anyhow::Result<Mac> {
    let mut mac = [0; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .ok_or_else(|| anyhow::anyhow!("MAC {text:?} has fewer than 6 bytes"))?;
        *byte = u8::from_str_radix(part, 16)
            .map_err(|e| anyhow::anyhow!("MAC {text:?}: byte {part:?}: {e}"))?;
    }
    if parts.next().is_some() {
        anyhow::bail!("MAC {text:?} has more than 6 bytes");
    }
    Ok(mac)
}

pub fn format_mac(mac: Mac) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// An Ethernet II frame (no FCS: the NIC, here the veth, has none).
pub fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An ARP packet for IPv4 over Ethernet (28 bytes).
pub fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut packet = Vec::with_capacity(28);
    packet.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    packet.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
    packet.extend_from_slice(&[6, 4]);
    packet.extend_from_slice(&op.to_be_bytes());
    packet.extend_from_slice(&sha);
    packet.extend_from_slice(&spa.octets());
    packet.extend_from_slice(&tha);
    packet.extend_from_slice(&tpa.octets());
    packet
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for byte in parts.iter().flat_map(|p| p.iter().copied()) {
        match odd.take() {
            None => odd = Some(byte),
            Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let folded = sum as u16;
    !folded
}

fn len16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

/// An IPv4 packet (header without options, TTL 64, DF set) around `payload`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(20 + payload.len());
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&len16(20 + payload.len()).to_be_bytes());
    packet.extend_from_slice(&[0x4e, 0x46, 0x40, 0, 64, protocol, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    let sum = checksum(&[&packet]);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// An IPv4 UDP datagram from `src` to `dst` (checksummed).
pub fn udp4(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut udp = udp_header(src.port(), dst.port(), payload);
    let pseudo = pseudo_v4(*src.ip(), *dst.ip(), IPPROTO_UDP, udp.len());
    let sum = match checksum(&[&pseudo, &udp]) {
        0 => 0xffff,
        sum => sum,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    ipv4(*src.ip(), *dst.ip(), IPPROTO_UDP, &udp)
}

fn udp_header(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&len16(8 + payload.len()).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    udp
}

fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&len16(len).to_be_bytes());
    pseudo
}

/// An ICMP message in IPv4: type, code, the 4 header bytes after the checksum
/// (`rest`: unused for destination-unreachable), then `body` (for an error: the quoted
/// packet).
pub fn icmp4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(body);
    let sum = checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4(src, dst, IPPROTO_ICMP, &icmp)
}

/// An IPv6 packet (no extension headers) around `payload`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(40 + payload.len());
    packet.extend_from_slice(&[0x60, 0, 0, 0]);
    packet.extend_from_slice(&len16(payload.len()).to_be_bytes());
    packet.extend_from_slice(&[next, hop_limit]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(payload);
    packet
}

/// An ICMPv6 message in IPv6: type, code, checksum, then `body` (for neighbour
/// discovery: the 4 reserved/flag bytes, the target and the options).
pub fn icmp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    icmp_type: u8,
    code: u8,
    body: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(body);
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::try_from(icmp.len()).unwrap_or(u32::MAX).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
    let sum = checksum(&[&pseudo, &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv6(src, dst, IPPROTO_ICMPV6, hop_limit, &icmp)
}

/// The Ethernet address an IPv6 multicast group maps to (`33:33` + its last 4 bytes).
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast group of `addr` (`ff02::1:ffXX:XXXX`).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// A VXLAN packet (RFC 7348: flags with the VNI-valid bit, 24-bit VNI) carrying
/// `frame`: the UDP payload a VTEP decapsulates.
pub fn vxlan(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(8 + frame.len());
    packet.extend_from_slice(&[0x08, 0, 0, 0]);
    packet.extend_from_slice(&(vni << 8).to_be_bytes());
    packet.extend_from_slice(frame);
    packet
}

/// Whether `needle` occurs in `haystack` (a frame carries the test's marker).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        let packet = udp4(
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 40000),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 53),
            b"marker",
        );
        assert_eq!(checksum(&[&packet[..20]]), 0, "header");
        let pseudo = pseudo_v4(
            Ipv4Addr::new(198, 18, 0, 10),
            Ipv4Addr::new(198, 18, 0, 11),
            IPPROTO_UDP,
            packet.len() - 20,
        );
        assert_eq!(
            checksum(&[&pseudo, &packet[20..]]),
            0,
            "UDP with pseudo header"
        );
        assert_eq!(u16::from_be_bytes([packet[2], packet[3]]), 34);
    }

    #[test]
    fn icmp6_checksum_covers_the_pseudo_header() {
        let src: Ipv6Addr = "fe80::1".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let dst: Ipv6Addr = "ff02::1".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let packet = icmp6(src, dst, 255, ND_ROUTER_ADVERT, 0, &[0; 12]);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&16u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
        assert_eq!(checksum(&[&pseudo, &packet[40..]]), 0);
        assert_eq!(packet[7], 255, "hop limit");
    }

    #[test]
    fn macs_groups_and_vxlan() {
        assert_eq!(
            parse_mac("02:00:5e:10:00:ff").ok(),
            Some([2, 0, 0x5e, 0x10, 0, 0xff])
        );
        assert!(parse_mac("02:00").is_err());
        assert_eq!(format_mac([2, 0, 0x5e, 0x10, 0, 0xff]), "02:00:5e:10:00:ff");
        let addr: Ipv6Addr = "fd00:18::1234:5678".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        assert_eq!(solicited_node(addr).to_string(), "ff02::1:ff34:5678");
        assert_eq!(
            ipv6_multicast_mac(solicited_node(addr)),
            [0x33, 0x33, 0xff, 0x34, 0x56, 0x78]
        );
        assert_eq!(vxlan(1, b"x"), [8, 0, 0, 0, 0, 0, 1, 0, b'x']);
        assert_eq!(
            arp(
                ARP_REPLY,
                [1; 6],
                Ipv4Addr::new(1, 2, 3, 4),
                [2; 6],
                Ipv4Addr::new(5, 6, 7, 8)
            )
            .len(),
            28
        );
    }
}
