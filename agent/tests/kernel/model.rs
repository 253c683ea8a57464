//! A userspace model of the TC programs' verdicts, written from the issue-13 datapath
//! spec (`/work/spec-13.md`, steps 1–9) and the ABI in `common`, never from
//! `ebpf/src`: the differential fuzz (`kernel_fuzz.rs`) runs the same frames through
//! both, so every disagreement is a bug on one side. It parses raw frame bytes itself
//! and judges them against a fixed map state ([`World`]); besides the reason it
//! predicts what the frame does to CONNTRACK and FRAGMENTS.

use std::collections::HashMap;

use netfence_common::{
    Addr, CT_ORIGIN_LOCAL, CT_ORIGIN_REMOTE, CT_STATE_CLOSING, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS,
    DEFAULT_CT_OTHER_TIMEOUT_NS, DEFAULT_CT_TCP_TIMEOUT_NS, DEFAULT_CT_UNREPLIED_TIMEOUT_NS, EP_AUDIT_EGRESS,
    EP_AUDIT_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EndpointValue, FragKey, IDENTITY_ANY,
    IDENTITY_HOST, IDENTITY_WORLD, PROTO_ANY, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP,
    PROTO_IPV6_IN_IP, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason, UDP_PORT_VXLAN_IANA, UDP_PORT_VXLAN_LINUX,
    v4_mapped,
};

/// The interface every test run's skb is on (loopback).
pub const HERE: u32 = 1;

/// The two programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// TC ingress of the pod's veth: packets from the pod, its egress policy.
    FromPod,
    /// TC egress: packets to the pod, its ingress policy.
    ToPod,
}

/// One POLICY entry: `port_bits` of `port` matched (0: any port).
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub policy: u32,
    pub peer: u32,
    pub direction: u8,
    pub protocol: u8,
    pub port: u16,
    pub port_bits: u8,
    pub rule: u32,
}

/// A pre-created conntrack entry and how long ago it last saw a packet.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub key: CtKey,
    pub value: CtValue,
    pub age_ns: u64,
}

/// The fixed map state of a fuzz run.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub endpoints: HashMap<Addr, EndpointValue>,
    pub ports: HashMap<u32, EndpointValue>,
    /// (prefix address, prefix length in 16-byte form, identity).
    pub identities: Vec<(Addr, u32, u32)>,
    pub rules: Vec<Rule>,
    pub flows: Vec<Flow>,
    /// First-fragment records: key → allowed.
    pub fragments: HashMap<FragKey, bool>,
}

/// What the model expects a frame to leave in CONNTRACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtEffect {
    None,
    /// A new entry: key, origin, and the rules that may be stamped (policy hits; 0
    /// when not isolated or audited).
    Create { key: CtKey, origin: u8, rules: [u32; 4], n_rules: usize },
    /// An existing entry passed the packet: its `replied` and `state` afterwards.
    Touch { key: CtKey, replied: u8, state: u8 },
}

/// The model's verdict on one frame.
#[derive(Clone, Copy, Debug)]
pub struct Verdict {
    pub reason: Reason,
    pub ct: CtEffect,
    /// A first fragment: the FRAGMENTS key its verdict is recorded under.
    pub first_fragment: Option<FragKey>,
}

impl Verdict {
    fn only(reason: Reason) -> Self {
        Self { reason, ct: CtEffect::None, first_fragment: None }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn addr_at(b: &[u8], at: usize) -> Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

fn v4_at(b: &[u8], at: usize) -> Addr {
    v4_mapped([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn is_mapped(a: &Addr) -> bool {
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

fn is_broadcast(a: &Addr) -> bool {
    is_mapped(a) && a[12..] == [255; 4]
}

/// Where a frame's fragment header or flags put it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    No,
    /// Identification and the protocol the fragment header names (what later
    /// fragments carry too, so their records meet).
    First(u32, u8),
    /// Identification and the protocol the fragment carries.
    Later(u32, u8),
}

/// A parsed IP packet.
struct Ip<'a> {
    v6: bool,
    src: Addr,
    dst: Addr,
    hop_limit: u8,
    /// The whole packet's length by its header.
    length: usize,
    /// The final protocol (after extension headers).
    protocol: u8,
    fragment: Fragment,
    /// The L4 bytes, bounded by the header's length.
    l4: &'a [u8],
}

/// L4 facts the verdict needs.
#[derive(Clone, Copy, Debug, Default)]
struct L4 {
    src_port: u16,
    dst_port: u16,
    /// ICMP echo request/reply: identifier (the local port of the flow).
    echo_id: Option<u16>,
    tcp_flags: u8,
    icmp_type: Option<u8>,
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;

/// IPv6 extension headers walked: hop-by-hop, routing, fragment, destination
/// options, authentication.
fn is_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

/// At most this many extension headers are walked; one more is unsupported.
pub const MAX_EXT: usize = 6;

fn parse_v4(b: &[u8]) -> Result<Ip<'_>, Reason> {
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

fn parse_v6(b: &[u8]) -> Result<Ip<'_>, Reason> {
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
    while is_ext(next) {
        if walked == MAX_EXT {
            return Err(Reason::DropUnsupported);
        }
        walked += 1;
        let h = payload.get(at..).filter(|h| h.len() >= 8).ok_or(Reason::DropMalformed)?;
        let len = match next {
            44 => {
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
fn is_icmp(v6: bool, protocol: u8) -> bool {
    (!v6 && protocol == PROTO_ICMP) || (v6 && protocol == PROTO_ICMPV6)
}

fn is_echo(v6: bool, kind: u8) -> bool {
    if v6 { matches!(kind, 128 | 129) } else { matches!(kind, 0 | 8) }
}

fn is_icmp_error(v6: bool, kind: u8) -> bool {
    if v6 { (1..=4).contains(&kind) } else { matches!(kind, 3 | 11 | 12) }
}

/// The L4 header of a packet that is no later fragment.
fn parse_l4(v6: bool, protocol: u8, l4: &[u8]) -> Result<L4, Reason> {
    let need = match protocol {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_SCTP => 12,
        // ICMP and ICMPv6 headers are checked whatever the family carrying them.
        PROTO_ICMP | PROTO_ICMPV6 => 8,
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

/// Ports of a flow key seen from the local side: `local_is_src` says which end is the pod.
fn flow_ports(l4: &L4, local_is_src: bool) -> (u16, u16) {
    if let Some(id) = l4.echo_id {
        (id, 0)
    } else if local_is_src {
        (l4.src_port, l4.dst_port)
    } else {
        (l4.dst_port, l4.src_port)
    }
}

fn ct_key(local: Addr, remote: Addr, ports: (u16, u16), protocol: u8) -> CtKey {
    CtKey {
        local,
        remote,
        ifindex: HERE,
        local_port: ports.0,
        remote_port: ports.1,
        protocol,
        _pad: [0; 3],
    }
}

impl World {
    fn identity(&self, addr: &Addr) -> u32 {
        let mut best: Option<(u32, u32)> = None;
        for &(prefix, bits, id) in &self.identities {
            if prefix_match(&prefix, addr, bits) && best.is_none_or(|(b, _)| bits > b) {
                best = Some((bits, id));
            }
        }
        best.map_or(IDENTITY_WORLD, |(_, id)| id)
    }

    fn bound_here(&self, addr: &Addr) -> bool {
        self.endpoints.get(addr).is_some_and(|e| e.ifindex == HERE)
    }

    fn flow(&self, key: &CtKey) -> Option<&Flow> {
        self.flows.iter().find(|f| f.key == *key).filter(|f| alive(f))
    }

    /// The longest-prefix POLICY hit of one lookup.
    fn lookup(&self, policy: u32, peer: u32, direction: u8, protocol: u8, port: u16) -> Option<u32> {
        self.rules
            .iter()
            .filter(|r| r.policy == policy && r.peer == peer && r.direction == direction && r.protocol == protocol)
            .filter(|r| {
                let bits = u32::from(r.port_bits);
                bits == 0 || (u32::from(r.port) >> (16 - bits)) == (u32::from(port) >> (16 - bits))
            })
            .max_by_key(|r| r.port_bits)
            .map(|r| r.rule)
    }

    /// The frame's verdict at `hook`.
    pub fn judge(&self, hook: Hook, frame: &[u8]) -> Verdict {
        match self.judge_inner(hook, frame) {
            Ok(v) => v,
            Err(reason) => Verdict::only(reason),
        }
    }

    fn judge_inner(&self, hook: Hook, frame: &[u8]) -> Result<Verdict, Reason> {
        // 1. Ethernet, one VLAN tag.
        if frame.len() < 14 {
            return Err(Reason::DropMalformed);
        }
        let mut ethertype = be16(frame, 12);
        let mut l3 = 14;
        if matches!(ethertype, ETH_VLAN | ETH_QINQ) {
            if frame.len() < 18 {
                return Err(Reason::DropMalformed);
            }
            ethertype = be16(frame, 16);
            l3 = 18;
            if matches!(ethertype, ETH_VLAN | ETH_QINQ) {
                return Err(Reason::DropUnsupported);
            }
        }
        let body = &frame[l3..];
        let ip = match ethertype {
            ETH_ARP => return Err(self.arp(hook, frame, body)),
            ETH_IPV4 => parse_v4(body)?,
            ETH_IPV6 => parse_v6(body)?,
            _ => return Err(Reason::DropLinkLayer),
        };
        // 2. L4, except for a later fragment (it carries none).
        let l4 = match ip.fragment {
            Fragment::Later(..) => L4::default(),
            _ => parse_l4(ip.v6, ip.protocol, ip.l4)?,
        };
        // 3. Neighbour discovery and MLD.
        if ip.v6
            && ip.protocol == PROTO_ICMPV6
            && ip.fragment == Fragment::No
            && let Some(kind @ (130..=137 | 143)) = l4.icmp_type
        {
            return Err(self.neighbour(hook, &ip, kind));
        }
        // 4. Later fragments follow the first.
        if let Fragment::Later(id, protocol) = ip.fragment {
            let key = FragKey { src: ip.src, dst: ip.dst, ifindex: HERE, id, protocol, _pad: [0; 3] };
            return Err(if self.fragments.get(&key) == Some(&true) {
                Reason::AllowFragment
            } else {
                Reason::DropFragment
            });
        }
        let first_fragment = match ip.fragment {
            Fragment::First(id, protocol) => {
                Some(FragKey { src: ip.src, dst: ip.dst, ifindex: HERE, id, protocol, _pad: [0; 3] })
            }
            _ => None,
        };
        let mut verdict = self.flow_verdict(hook, frame, &ip, &l4);
        verdict.first_fragment = first_fragment;
        Ok(verdict)
    }

    fn arp(&self, hook: Hook, frame: &[u8], arp: &[u8]) -> Reason {
        if hook == Hook::ToPod {
            return Reason::AllowArp;
        }
        if arp.len() < 28 {
            return Reason::DropMalformed;
        }
        let sender = [arp[14], arp[15], arp[16], arp[17]];
        let ok = be16(arp, 0) == 1
            && be16(arp, 2) == ETH_IPV4
            && arp[4] == 6
            && arp[5] == 4
            && matches!(be16(arp, 6), 1 | 2)
            && arp[8..14] == frame[6..12]
            && (sender == [0; 4] || self.bound_here(&v4_mapped(sender)));
        if ok { Reason::AllowArp } else { Reason::DropArpSpoofed }
    }

    fn neighbour(&self, hook: Hook, ip: &Ip<'_>, kind: u8) -> Reason {
        let mld = matches!(kind, 130..=132 | 143);
        let ok = match hook {
            Hook::ToPod => ip.hop_limit == if mld { 1 } else { 255 },
            Hook::FromPod if mld => {
                ip.hop_limit == 1
                    && ip.l4.len() <= 512
                    && (is_link_local(&ip.src) || ip.src == [0; 16])
                    && is_multicast(&ip.dst)
            }
            Hook::FromPod if matches!(kind, 134 | 137) => false,
            Hook::FromPod => {
                let source = is_link_local(&ip.src) || (kind == 135 && ip.src == [0; 16]) || self.bound_here(&ip.src);
                let target = kind != 136
                    || (ip.l4.len() >= 24 && {
                        let target = addr_at(ip.l4, 8);
                        is_link_local(&target) || self.bound_here(&target)
                    });
                let destination = is_multicast(&ip.dst)
                    || is_link_local(&ip.dst)
                    || self.endpoints.contains_key(&ip.dst)
                    || self.identity(&ip.dst) == IDENTITY_HOST;
                ip.hop_limit == 255 && ip.l4.len() <= 128 && source && target && destination
            }
        };
        if ok { Reason::AllowNeighbourDiscovery } else { Reason::DropNeighbourDiscovery }
    }

    /// Steps 5–9 for a packet that is no ND and no later fragment.
    fn flow_verdict(&self, hook: Hook, frame: &[u8], ip: &Ip<'_>, l4: &L4) -> Verdict {
        let from_pod = hook == Hook::FromPod;
        let (local, remote) = if from_pod { (ip.src, ip.dst) } else { (ip.dst, ip.src) };
        let error = l4.icmp_type.is_some_and(|t| is_icmp_error(ip.v6, t));
        // 5. Conntrack.
        if error {
            if self.related(hook, ip, local, remote) {
                return Verdict::only(Reason::AllowRelatedIcmp);
            }
        } else {
            let pure_syn = ip.protocol == PROTO_TCP && l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            let key = ct_key(local, remote, flow_ports(l4, from_pod), ip.protocol);
            if !pure_syn && let Some(flow) = self.flow(&key) {
                let reply = flow.value.origin == if from_pod { CT_ORIGIN_REMOTE } else { CT_ORIGIN_LOCAL };
                let closing = ip.protocol == PROTO_TCP && l4.tcp_flags & (TCP_FIN | TCP_RST) != 0;
                return Verdict {
                    reason: Reason::AllowEstablished,
                    ct: CtEffect::Touch {
                        key,
                        replied: if reply { 1 } else { flow.value.replied },
                        state: if closing { CT_STATE_CLOSING } else { flow.value.state },
                    },
                    first_fragment: None,
                };
            }
        }
        // 6. The local endpoint.
        let group = frame[0] & 1 != 0 || is_multicast(&ip.dst) || is_broadcast(&ip.dst);
        let endpoint = match self.local_endpoint(hook, local, group) {
            Ok(e) => e,
            Err(reason) => return Verdict::only(reason),
        };
        if from_pod
            && (matches!(ip.protocol, PROTO_IPIP | PROTO_IPV6_IN_IP | PROTO_GRE)
                || (ip.protocol == PROTO_UDP && matches!(l4.dst_port, UDP_PORT_VXLAN_LINUX | UDP_PORT_VXLAN_IANA)))
        {
            return Verdict::only(Reason::DropTunnel);
        }
        let (isolated, audit, direction, origin) = if from_pod {
            (EP_ISOLATED_EGRESS, EP_AUDIT_EGRESS, DIR_EGRESS, CT_ORIGIN_LOCAL)
        } else {
            (EP_ISOLATED_INGRESS, EP_AUDIT_INGRESS, DIR_INGRESS, CT_ORIGIN_REMOTE)
        };
        let key = ct_key(local, remote, flow_ports(l4, from_pod), ip.protocol);
        let create = |rules: [u32; 4], n_rules| {
            if error || group { CtEffect::None } else { CtEffect::Create { key, origin, rules, n_rules } }
        };
        // 7. Not isolated.
        if endpoint.flags & isolated == 0 {
            return Verdict { reason: Reason::AllowNotIsolated, ct: create([0; 4], 1), first_fragment: None };
        }
        // 8–9. Peer identity and the four policy lookups.
        let peer = self.identity(&remote);
        let port = if matches!(ip.protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP) { l4.dst_port } else { 0 };
        let mut hits = [0u32; 4];
        let mut n = 0;
        for peer in [peer, IDENTITY_ANY] {
            for (protocol, port) in [(ip.protocol, port), (PROTO_ANY, 0)] {
                if let Some(rule) = self.lookup(endpoint.policy, peer, direction, protocol, port)
                    && !hits[..n].contains(&rule)
                {
                    hits[n] = rule;
                    n += 1;
                }
            }
        }
        if n > 0 {
            Verdict { reason: Reason::AllowPolicy, ct: create(hits, n), first_fragment: None }
        } else if endpoint.flags & audit != 0 {
            Verdict { reason: Reason::AuditPolicy, ct: create([0; 4], 1), first_fragment: None }
        } else {
            Verdict::only(Reason::DropPolicy)
        }
    }

    fn local_endpoint(&self, hook: Hook, local: Addr, group: bool) -> Result<EndpointValue, Reason> {
        let by_port = (hook == Hook::FromPod && is_link_local(&local))
            || (hook == Hook::ToPod && (group || is_link_local(&local)));
        if by_port {
            return self.ports.get(&HERE).copied().ok_or(Reason::DropUnbound);
        }
        let missing = if hook == Hook::FromPod { Reason::DropSpoofed } else { Reason::DropWrongPort };
        match self.endpoints.get(&local) {
            None => Err(missing),
            Some(e) if e.ifindex == 0 => Err(Reason::DropUnbound),
            Some(e) if e.ifindex != HERE => Err(missing),
            Some(e) => Ok(*e),
        }
    }

    /// Step 5's ICMP-error relation, (a)–(d).
    fn related(&self, hook: Hook, ip: &Ip<'_>, local: Addr, remote: Addr) -> bool {
        let limit = if ip.v6 { 1280 } else { 576 };
        if ip.length > limit {
            return false;
        }
        let Some(quote) = ip.l4.get(8..) else { return false };
        let Some(q) = parse_quote(ip.v6, quote) else { return false };
        let from_pod = hook == Hook::FromPod;
        // The quoted packet went the other way: from the pod at to_pod, to it at from_pod.
        let (q_local, q_remote) = if from_pod { (q.dst, q.src) } else { (q.src, q.dst) };
        if q_local != local {
            return false;
        }
        if remote != q_remote && !(hook == Hook::ToPod && self.identity(&remote) == IDENTITY_HOST) {
            return false;
        }
        let key = ct_key(local, q_remote, flow_ports(&q.l4, !from_pod), q.protocol);
        self.flow(&key).is_some()
    }
}

/// The quoted packet inside an ICMP error.
struct Quote {
    src: Addr,
    dst: Addr,
    protocol: u8,
    l4: L4,
}

/// At least the quoted IP header and 8 bytes of its L4 header, or no relation.
fn parse_quote(v6: bool, q: &[u8]) -> Option<Quote> {
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
    Some(Quote { src, dst, protocol, l4: out })
}

fn prefix_match(prefix: &Addr, addr: &Addr, bits: u32) -> bool {
    let whole = (bits / 8) as usize;
    let rest = bits % 8;
    prefix[..whole] == addr[..whole]
        && (rest == 0 || (prefix[whole] ^ addr[whole]) & (0xffu8 << (8 - rest)) == 0)
}

/// Whether a conntrack entry of that age is still valid (spec step 5, liveness).
pub fn alive(flow: &Flow) -> bool {
    let v = &flow.value;
    let timeout = if flow.key.protocol == PROTO_TCP {
        if v.state == CT_STATE_CLOSING || v.replied == 0 { DEFAULT_CT_OTHER_TIMEOUT_NS } else { DEFAULT_CT_TCP_TIMEOUT_NS }
    } else if v.replied != 0 {
        DEFAULT_CT_OTHER_TIMEOUT_NS
    } else {
        DEFAULT_CT_UNREPLIED_TIMEOUT_NS
    };
    flow.age_ns < timeout
}
