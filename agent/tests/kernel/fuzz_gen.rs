//! The differential fuzz's frame generator: a seeded splitmix64 stream turned into
//! frames that reach every step of the datapath (all EtherTypes, ARP, VLAN tags, IPv4
//! options and bad headers, IPv6 extension chains, fragments, TCP/UDP/SCTP/ICMP,
//! ICMP errors quoting known and random flows, ND/MLD), then sometimes truncated or
//! mutated. Addresses, ports and ids come from small pools that match the fuzz's map
//! state ([`Pools`]), so random frames hit its endpoints, rules and flows.

use netfence_common::Addr;

/// The generator's random stream: the scenario generator's splitmix64
/// (`netfence::scenario::Rng`), with the draws the frame builders need.
#[derive(Clone, Debug)]
pub struct Rng(netfence::scenario::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(netfence::scenario::Rng::new(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Values the generator draws from, chosen to match the map state.
#[derive(Clone, Debug, Default)]
pub struct Pools {
    /// IPv4 addresses (octets).
    pub v4: Vec<[u8; 4]>,
    /// IPv6 addresses, including link-local, multicast, :: and v4-mapped ones.
    pub v6: Vec<Addr>,
    pub ports: Vec<u16>,
    /// ICMP echo identifiers.
    pub echo_ids: Vec<u16>,
    /// Fragment identifications.
    pub frag_ids: Vec<u32>,
    /// Flows the map state knows (pre-created entries, rules, fragment records):
    /// generated packets follow them (either way) and errors quote them.
    pub tuples: Vec<Tuple>,
    pub host4: Addr,
    pub host6: Addr,
}

/// A 5-tuple (ICMP echo: the identifier as `src_port`), and for a fragment record its
/// identification.
#[derive(Clone, Copy, Debug)]
pub struct Tuple {
    pub src: Addr,
    pub dst: Addr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub frag_id: Option<u32>,
}

impl Pools {
    /// The node's address (IDENTITY_HOST) of a family.
    pub fn host(&self, v6: bool) -> Addr {
        if v6 { self.host6 } else { self.host4 }
    }
}

impl Tuple {
    pub fn v6(&self) -> bool {
        self.src[..12] != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
    }

    fn reversed(self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ..self
        }
    }
}

/// The pod's MAC: the Ethernet source of every frame (ARP checks it).
pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MACS: [[u8; 6]; 5] = [
    [0x02, 0, 0, 0, 0, 0x02],
    [0xff; 6],
    [0x33, 0x33, 0, 0, 0, 0x01],
    [0x01, 0, 0x5e, 0, 0, 0x01],
    [0x02, 0, 0, 0, 0, 0x09],
];

/// TCP flag combinations worth trying (SYN, SYN-ACK, ACK, FIN, RST, none, random).
const TCP_FLAGS: [u8; 8] = [0x02, 0x12, 0x10, 0x11, 0x04, 0x00, 0x03, 0x14];

/// One generated frame, as bytes.
pub fn frame(rng: &mut Rng, pools: &Pools) -> Vec<u8> {
    let mut f = match rng.below(100) {
        0..=7 => arp(rng, pools),
        8..=13 => other_ethertype(rng),
        14..=51 => {
            let packet = ipv4(rng, pools);
            l2(rng, 0x0800, &packet)
        }
        _ => {
            let packet = ipv6(rng, pools);
            l2(rng, 0x86dd, &packet)
        }
    };
    if rng.chance(1, 4) {
        mutate(rng, &mut f);
    }
    f
}

/// An Ethernet header (random destination class, the pod's source), with 0–2 VLAN
/// tags now and then.
fn l2(rng: &mut Rng, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 22);
    let dst = if rng.chance(2, 3) {
        MACS[0]
    } else {
        rng.pick(&MACS)
    };
    f.extend_from_slice(&dst);
    f.extend_from_slice(&POD_MAC);
    let tags = match rng.below(20) {
        0..=1 => 1,
        2 => 2,
        _ => 0,
    };
    for _ in 0..tags {
        let tpid: u16 = rng.pick(&[0x8100, 0x88a8]);
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&[0, 10]);
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn other_ethertype(rng: &mut Rng) -> Vec<u8> {
    let ethertype = match rng.below(4) {
        0 => 0x88b5,
        1 => rng.pick(&[0x8847, 0x88cc, 0x8035, 0x0842, 0x86dd, 0x0800, 0x0806]),
        2 => rng.u16() & 0x05ff, // an 802.3 length field
        _ => rng.u16(),
    };
    let len = rng.below(60);
    let body = rng.bytes(len);
    l2(rng, ethertype, &body)
}

fn arp(rng: &mut Rng, pools: &Pools) -> Vec<u8> {
    let mut b = vec![0, 1, 8, 0, 6, 4, 0, 1];
    if rng.chance(1, 6) {
        let at = rng.below(8);
        b[at] = rng.byte();
    }
    b[7] = rng.pick(&[1, 2, 1, 2, 3, 0]);
    let sender_mac = if rng.chance(5, 6) {
        POD_MAC
    } else {
        rng.pick(&MACS)
    };
    b.extend_from_slice(&sender_mac);
    let sender = if rng.chance(1, 5) {
        [0; 4]
    } else {
        rng.pick(&pools.v4)
    };
    b.extend_from_slice(&sender);
    b.extend_from_slice(&[0; 6]);
    b.extend_from_slice(&rng.pick(&pools.v4));
    if rng.chance(1, 6) {
        b.truncate(rng.below(28));
    }
    l2(rng, 0x0806, &b)
}

/// What an IP packet carries, before its IP header is built.
struct Content {
    src: Addr,
    dst: Addr,
    protocol: u8,
    body: Vec<u8>,
    /// Fragment identification to use (a known record's), if any.
    frag_id: Option<u32>,
}

fn content(rng: &mut Rng, pools: &Pools, v6: bool) -> Content {
    let family: Vec<Tuple> = pools
        .tuples
        .iter()
        .copied()
        .filter(|t| t.v6() == v6)
        .collect();
    match rng.below(10) {
        0..=3 if !family.is_empty() => {
            let t = rng.pick(&family);
            let t = if rng.chance(1, 2) { t.reversed() } else { t };
            let body = l4_of(rng, v6, t.protocol, t.src_port, t.dst_port);
            Content {
                src: t.src,
                dst: t.dst,
                protocol: t.protocol,
                body,
                frag_id: t.frag_id,
            }
        }
        4..=5 => icmp_error(rng, pools, v6),
        _ => {
            let (src, dst) = (address(rng, pools, v6), address(rng, pools, v6));
            let port = |rng: &mut Rng| {
                if rng.chance(4, 5) {
                    rng.pick(&pools.ports)
                } else {
                    rng.u16()
                }
            };
            let (sp, dp) = (port(rng), port(rng));
            let (protocol, body) = match rng.below(20) {
                0..=4 => (6, l4_of(rng, v6, 6, sp, dp)),
                5..=8 => (17, l4_of(rng, v6, 17, sp, dp)),
                9 => (132, l4_of(rng, v6, 132, sp, dp)),
                10..=14 => icmp(rng, pools, v6),
                // The other family's ICMP (ICMPv6 in IPv4, ICMP in IPv6): no ND, no errors.
                15 => icmp(rng, pools, !v6),
                16 => (rng.pick(&[4, 41, 47]), rng.bytes(20)),
                _ => {
                    let len = rng.below(24);
                    (rng.byte(), rng.bytes(len))
                }
            };
            Content {
                src,
                dst,
                protocol,
                body,
                frag_id: None,
            }
        }
    }
}

fn address(rng: &mut Rng, pools: &Pools, v6: bool) -> Addr {
    if v6 {
        rng.pick(&pools.v6)
    } else {
        netfence_common::v4_mapped(rng.pick(&pools.v4))
    }
}

/// An L4 header of `protocol` with these ports (ICMP: an echo with `src_port` as id).
fn l4_of(rng: &mut Rng, v6: bool, protocol: u8, src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&src_port.to_be_bytes());
    b.extend_from_slice(&dst_port.to_be_bytes());
    match protocol {
        6 => {
            b.extend_from_slice(&[0; 16]);
            b[12] = 5 << 4;
            b[13] = if rng.chance(1, 8) {
                rng.byte()
            } else {
                rng.pick(&TCP_FLAGS)
            };
        }
        17 => b.extend_from_slice(&[0, 16, 0, 0, 0, 0, 0, 0]),
        132 => b.extend_from_slice(&[0; 8]),
        1 | 58 => {
            let kind = match (v6, rng.chance(1, 2)) {
                (false, true) => 8,
                (false, false) => 0,
                (true, true) => 128,
                (true, false) => 129,
            };
            b = vec![kind, 0, 0, 0];
            b.extend_from_slice(&src_port.to_be_bytes());
            b.extend_from_slice(&[0, 1]);
        }
        _ => {}
    }
    b
}

fn icmp(rng: &mut Rng, pools: &Pools, v6: bool) -> (u8, Vec<u8>) {
    let protocol = if v6 { 58 } else { 1 };
    let kind = match (v6, rng.below(10)) {
        (false, 0..=5) => rng.pick(&[8, 0, 13, 14]),
        (true, 0..=2) => rng.pick(&[128, 129]),
        (true, 3..=8) => rng.pick(&[130, 131, 132, 133, 134, 135, 136, 137, 143]),
        _ => rng.byte(),
    };
    let mut b = vec![kind, 0, 0, 0];
    let id = rng.pick(&pools.echo_ids);
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&[0, 1]);
    match kind {
        135..=137 => {
            // Target address, then options.
            let target = rng.pick(&pools.v6);
            b.extend_from_slice(&target);
            let opts = rng.pick(&[0, 8, 8, 16, 112, 1000]);
            b.extend(std::iter::repeat_n(0u8, opts));
        }
        130..=134 | 143 => {
            let len = rng.pick(&[0, 16, 16, 100, 504, 520]);
            b.extend(std::iter::repeat_n(0u8, len));
        }
        _ => {
            let len = rng.below(16);
            b.extend_from_slice(&rng.bytes(len));
        }
    }
    if rng.chance(1, 10) {
        b.truncate(rng.below(b.len() + 1));
    }
    (protocol, b)
}

/// An ICMP error quoting a known flow (either way) or a random packet, cut or padded
/// now and then, mostly sent by the quoted packet's destination back to its source.
fn icmp_error(rng: &mut Rng, pools: &Pools, v6: bool) -> Content {
    let family: Vec<Tuple> = pools
        .tuples
        .iter()
        .copied()
        .filter(|t| t.v6() == v6)
        .collect();
    let t = if !family.is_empty() && rng.chance(3, 4) {
        rng.pick(&family)
    } else {
        let port = |rng: &mut Rng| rng.pick(&pools.ports);
        Tuple {
            src: address(rng, pools, v6),
            dst: address(rng, pools, v6),
            protocol: rng.pick(&[6, 17, 132, if v6 { 58 } else { 1 }, 47]),
            src_port: port(rng),
            dst_port: port(rng),
            frag_id: None,
        }
    };
    let t = if rng.chance(1, 2) { t.reversed() } else { t };
    let inner = l4_of(rng, v6, t.protocol, t.src_port, t.dst_port);
    let mut quote = ip_header(v6, t.src, t.dst, t.protocol, &inner, 64);
    match rng.below(8) {
        0 => quote.truncate(rng.below(quote.len() + 1)),
        1 => quote.extend(std::iter::repeat_n(0u8, rng.pick(&[400, 500, 1200, 1300]))),
        _ => {}
    }
    let (src, dst) = match rng.below(8) {
        0 => (address(rng, pools, v6), t.src),
        1 => (pools.host(v6), t.src),
        2 => (address(rng, pools, v6), address(rng, pools, v6)),
        _ => (t.dst, t.src),
    };
    let kind = if v6 {
        rng.pick(&[1, 2, 3, 4])
    } else {
        rng.pick(&[3, 11, 12])
    };
    let mut body = vec![kind, rng.below(4) as u8, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&quote);
    Content {
        src,
        dst,
        protocol: if v6 { 58 } else { 1 },
        body,
        frag_id: None,
    }
}

fn ip_header(v6: bool, src: Addr, dst: Addr, protocol: u8, body: &[u8], hop: u8) -> Vec<u8> {
    if v6 {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(&[protocol, hop]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(body);
        h
    } else {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, hop, protocol, 0, 0];
        h.extend_from_slice(&src[12..]);
        h.extend_from_slice(&dst[12..]);
        let total = (h.len() + body.len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(body);
        h
    }
}

fn ipv4(rng: &mut Rng, pools: &Pools) -> Vec<u8> {
    let c = content(rng, pools, false);
    let options = if rng.chance(1, 6) {
        rng.below(11) * 4
    } else {
        0
    };
    let mut h = vec![0x45 + (options / 4) as u8, 0, 0, 0];
    let id = c.frag_id.unwrap_or_else(|| rng.pick(&pools.frag_ids)) as u16;
    h.extend_from_slice(&id.to_be_bytes());
    let field: u16 = match (c.frag_id.is_some(), rng.below(12)) {
        (true, 0..=7) => 185 | if rng.chance(1, 2) { 0x2000 } else { 0 }, // a later fragment
        (true, _) | (false, 0) => 0x2000,                                 // a first fragment
        (false, 1) => rng.pick(&[1, 2, 185]) | rng.pick(&[0, 0x2000]),
        (false, 2) => 0x4000, // don't fragment
        _ => 0,
    };
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&[rng.pick(&[64, 1, 255]), c.protocol, 0, 0]);
    h.extend_from_slice(&c.src[12..]);
    h.extend_from_slice(&c.dst[12..]);
    for i in 0..options {
        h.push(if i == 0 {
            rng.pick(&[1, 0, 7, 68, 148])
        } else {
            rng.byte()
        });
    }
    let mut total = h.len() + c.body.len();
    h.extend_from_slice(&c.body);
    match rng.below(16) {
        0 => h[0] = 0x40 | (rng.byte() & 0x0f), // any IHL
        1 => total = rng.below(total + 40),     // any total length
        2 => h[0] = (rng.byte() & 0xf0) | 5,    // any version
        3 => h.extend(std::iter::repeat_n(0u8, rng.below(600))), // padding after the datagram
        _ => {}
    }
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h
}

fn ipv6(rng: &mut Rng, pools: &Pools) -> Vec<u8> {
    let c = content(rng, pools, true);
    // Extension chain: 0–8 headers, each of any walkable kind and a few lengths; a
    // known fragment record's packet always has a fragment header.
    let n = match rng.below(10) {
        0..=5 => 0,
        6..=8 => rng.below(4),
        _ => rng.below(9),
    };
    let mut kinds: Vec<u8> = (0..n).map(|_| rng.pick(&[0, 43, 60, 60, 44, 51])).collect();
    // At most one fragment header (RFC 8200 4.1): which of two would name the
    // datagram is no question the spec answers.
    while kinds.iter().filter(|&&k| k == 44).count() > 1 {
        let at = kinds.iter().rposition(|&k| k == 44).unwrap_or(0);
        kinds.remove(at);
    }
    if c.frag_id.is_some() && !kinds.contains(&44) {
        let at = rng.below(kinds.len() + 1);
        kinds.insert(at, 44);
    }
    let mut payload = Vec::new();
    for (i, &kind) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(c.protocol);
        match kind {
            44 => {
                let id = c.frag_id.unwrap_or_else(|| rng.pick(&pools.frag_ids));
                let offset: u16 = if rng.chance(1, 2) {
                    0
                } else {
                    rng.pick(&[1, 2, 100])
                };
                let more = u16::from(rng.chance(3, 4));
                payload.extend_from_slice(&[next, 0]);
                payload.extend_from_slice(&((offset << 3) | more).to_be_bytes());
                payload.extend_from_slice(&id.to_be_bytes());
            }
            51 => {
                let units = rng.pick(&[1u8, 2, 4]);
                payload.extend_from_slice(&[next, units]);
                payload.extend(std::iter::repeat_n(0u8, usize::from(units) * 4 + 6));
            }
            _ => {
                let units = rng.pick(&[0u8, 0, 1, 3]);
                payload.extend_from_slice(&[next, units, 1, 4]);
                payload.extend(std::iter::repeat_n(0u8, usize::from(units) * 8 + 4));
            }
        }
    }
    payload.extend_from_slice(&c.body);
    let first = kinds.first().copied().unwrap_or(c.protocol);
    let hop = rng.pick(&[255, 255, 1, 1, 64, 254, 0]);
    let mut h = ip_header(true, c.src, c.dst, first, &payload, hop);
    match rng.below(16) {
        0 => {
            let len = rng.below(payload.len() + 40) as u16;
            h[4..6].copy_from_slice(&len.to_be_bytes());
        }
        1 => h[0] = rng.byte(),
        2 => h.extend(std::iter::repeat_n(0u8, rng.below(600))),
        _ => {}
    }
    h
}

/// Truncation, a flipped or set byte, or junk appended (the frame keeps its 14-byte
/// Ethernet header, the least `BPF_PROG_TEST_RUN` takes).
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..=rng.below(3) {
        match rng.below(4) {
            0 if f.len() > 14 => {
                let len = 14 + rng.below(f.len() - 14);
                f.truncate(len);
            }
            1 if f.len() > 12 => {
                let at = 12 + rng.below(f.len() - 12);
                f[at] ^= 1 << rng.below(8);
            }
            2 if f.len() > 12 => {
                let at = 12 + rng.below(f.len() - 12);
                f[at] = rng.pick(&[0, 1, 0x45, 0x60, 0xff, 6, 17, 58, 44, 255]);
            }
            _ => {
                let n = rng.below(16);
                f.extend_from_slice(&rng.bytes(n));
            }
        }
    }
}
