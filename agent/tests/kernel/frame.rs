//! A tiny builder of Ethernet frames for the kernel-verdict tests: IPv4 and IPv6
//! (with extension headers and fragments), TCP, UDP, SCTP, ICMP and ICMPv6. Checksums
//! stay zero: the TC programs never check them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// IPv6 extension header numbers.
pub const EXT_HOP: u8 = 0;
pub const EXT_DEST: u8 = 60;

/// An L4 header and its IP protocol number.
#[derive(Clone, Debug)]
pub struct L4 {
    pub protocol: u8,
    pub bytes: Vec<u8>,
}

pub fn tcp(src_port: u16, dst_port: u16, flags: u8) -> L4 {
    let mut b = vec![0u8; 20];
    b[0..2].copy_from_slice(&src_port.to_be_bytes());
    b[2..4].copy_from_slice(&dst_port.to_be_bytes());
    b[12] = 5 << 4;
    b[13] = flags;
    L4 {
        protocol: 6,
        bytes: b,
    }
}

pub fn udp(src_port: u16, dst_port: u16) -> L4 {
    let mut b = vec![0u8; 16];
    b[0..2].copy_from_slice(&src_port.to_be_bytes());
    b[2..4].copy_from_slice(&dst_port.to_be_bytes());
    b[4..6].copy_from_slice(&16u16.to_be_bytes());
    L4 {
        protocol: 17,
        bytes: b,
    }
}

pub fn sctp(src_port: u16, dst_port: u16) -> L4 {
    let mut b = vec![0u8; 12];
    b[0..2].copy_from_slice(&src_port.to_be_bytes());
    b[2..4].copy_from_slice(&dst_port.to_be_bytes());
    L4 {
        protocol: 132,
        bytes: b,
    }
}

/// ICMP (`v6` false) or ICMPv6 header with an echo identifier in bytes 4–5, followed by
/// `payload` (for errors: the quoted packet).
pub fn icmp(v6: bool, kind: u8, code: u8, id: u16, payload: &[u8]) -> L4 {
    let mut b = vec![kind, code, 0, 0];
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&[0, 1]);
    b.extend_from_slice(payload);
    L4 {
        protocol: if v6 { 58 } else { 1 },
        bytes: b,
    }
}

/// Raw bytes as the L4 part (e.g. a truncated header).
pub fn raw(protocol: u8, bytes: &[u8]) -> L4 {
    L4 {
        protocol,
        bytes: bytes.to_vec(),
    }
}

/// IPv4 fragment fields: identification, more-fragments flag, offset in 8-byte units.
#[derive(Clone, Copy, Debug, Default)]
pub struct Frag {
    pub id: u32,
    pub more: bool,
    pub offset: u16,
}

/// An IP packet (no Ethernet header) carrying `l4`.
pub fn ip(src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s, d, l4, None),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d, l4, &[], None),
        _ => panic!("mixed address families"),
    }
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4, frag: Option<Frag>) -> Vec<u8> {
    let total = 20 + l4.bytes.len();
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    if let Some(f) = frag {
        h[4..6].copy_from_slice(&u16::try_from(f.id).unwrap().to_be_bytes());
        let field = (if f.more { 0x2000 } else { 0 }) | (f.offset & 0x1fff);
        h[6..8].copy_from_slice(&field.to_be_bytes());
    }
    h[8] = 64;
    h[9] = l4.protocol;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h.extend_from_slice(&l4.bytes);
    h
}

/// IPv6 with the extension headers `ext` (numbers; each 8 bytes long) before an
/// optional fragment header and then `l4`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, l4: &L4, ext: &[u8], frag: Option<Frag>) -> Vec<u8> {
    let mut chain: Vec<u8> = ext.to_vec();
    if frag.is_some() {
        chain.push(44);
    }
    let mut payload = Vec::new();
    for (i, _) in chain.iter().enumerate() {
        let next = chain.get(i + 1).copied().unwrap_or(l4.protocol);
        if chain[i] == 44 {
            let f = frag.unwrap_or_default();
            let field = (f.offset << 3) | u16::from(f.more);
            payload.extend_from_slice(&[next, 0]);
            payload.extend_from_slice(&field.to_be_bytes());
            payload.extend_from_slice(&f.id.to_be_bytes());
        } else {
            // Length 0: 8 bytes, padded with a PadN option.
            payload.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
    }
    payload.extend_from_slice(&l4.bytes);
    let first = chain.first().copied().unwrap_or(l4.protocol);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    h.push(first);
    h.push(64);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&payload);
    h
}

/// An Ethernet frame around an IP packet (ethertype from its version nibble).
pub fn eth(ip_packet: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if ip_packet.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    eth_with(ethertype, ip_packet)
}

/// An Ethernet frame with an explicit ethertype.
pub fn eth_with(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ETH_SRC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An Ethernet frame with VLAN tags (TPIDs given) in front of the IP packet.
pub fn eth_vlan(tpids: &[u16], ip_packet: &[u8]) -> Vec<u8> {
    let inner: u16 = if ip_packet.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for tpid in tpids {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&[0, 10]); // VLAN id 10
    }
    f.extend_from_slice(&inner.to_be_bytes());
    f.extend_from_slice(ip_packet);
    f
}

/// A whole frame: `src` to `dst` carrying `l4`.
pub fn packet(src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
    eth(&ip(src, dst, l4))
}

/// The source MAC of every frame these builders make.
pub const ETH_SRC: [u8; 6] = [0x02, 0x02, 0, 0, 0, 0x01];
/// Ethernet broadcast.
pub const ETH_BROADCAST: [u8; 6] = [0xff; 6];

/// An ARP request from 198.18.0.10 (the frame's own MAC) for 198.18.0.20.
pub fn arp() -> Vec<u8> {
    arp_with(
        1,
        ETH_SRC,
        Ipv4Addr::new(198, 18, 0, 10),
        Ipv4Addr::new(198, 18, 0, 20),
    )
}

/// An Ethernet/IPv4 ARP message (`op` 1 request, 2 reply) from the builders' source
/// MAC, with sender hardware address `sender_mac` and the given addresses.
pub fn arp_with(op: u16, sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut body = vec![0, 1, 8, 0, 6, 4];
    body.extend_from_slice(&op.to_be_bytes());
    body.extend_from_slice(&sender_mac);
    body.extend_from_slice(&sender.octets());
    body.extend_from_slice(&[0; 6]);
    body.extend_from_slice(&target.octets());
    eth_with(0x0806, &body)
}

/// `frame` with its Ethernet destination replaced.
pub fn to_mac(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&mac);
    frame
}

/// An untagged IPv6 frame with its hop limit replaced.
pub fn hop_limit(mut frame: Vec<u8>, hops: u8) -> Vec<u8> {
    frame[14 + 7] = hops;
    frame
}
