//! A userspace model of the TC programs' verdicts, written from the issue-13 datapath
//! spec (`docs/verdicts.md`, steps 1–9) and the ABI in `common`, never from
//! `ebpf/src`: the differential fuzz (`kernel_fuzz.rs`) runs the same frames through
//! both, so every disagreement is a bug on one side. It parses raw frame bytes itself
//! and judges them against a fixed map state ([`World`]); besides the reason it
//! predicts what the frame does to CONNTRACK and FRAGMENTS.

use std::collections::HashMap;

use super::model_parse::{
    ETH_ARP, ETH_IPV4, ETH_IPV6, ETH_QINQ, ETH_VLAN, Fragment, Ip, L4, TCP_ACK, TCP_FIN, TCP_RST,
    TCP_SYN, addr_at, be16, is_broadcast, is_icmp_error, is_link_local, is_multicast, parse_l4,
    parse_quote, parse_v4, parse_v6,
};
use netfence_common::{
    Addr, CT_ORIGIN_LOCAL, CT_ORIGIN_REMOTE, CT_STATE_CLOSING, CtKey, CtValue,
    DEFAULT_CT_OTHER_TIMEOUT_NS, DEFAULT_CT_TCP_TIMEOUT_NS, DEFAULT_CT_UNREPLIED_TIMEOUT_NS,
    DIR_EGRESS, DIR_INGRESS, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_ISOLATED_EGRESS,
    EP_ISOLATED_INGRESS, EndpointValue, FragKey, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD,
    PROTO_ANY, PROTO_GRE, PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6_IN_IP, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, Reason, UDP_PORT_VXLAN_IANA, UDP_PORT_VXLAN_LINUX, v4_mapped,
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
    Create {
        key: CtKey,
        origin: u8,
        rules: [u32; 4],
        n_rules: usize,
    },
    /// An existing entry passed the packet: its `replied` and `state` afterwards.
    Touch {
        key: CtKey,
        replied: u8,
        state: u8,
    },
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
        Self {
            reason,
            ct: CtEffect::None,
            first_fragment: None,
        }
    }
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
        self.flows
            .iter()
            .find(|f| f.key == *key)
            .filter(|f| alive(f))
    }

    /// The longest-prefix POLICY hit of one lookup.
    fn lookup(
        &self,
        policy: u32,
        peer: u32,
        direction: u8,
        protocol: u8,
        port: u16,
    ) -> Option<u32> {
        self.rules
            .iter()
            .filter(|r| {
                r.policy == policy
                    && r.peer == peer
                    && r.direction == direction
                    && r.protocol == protocol
            })
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
        let first_fragment = match ip.fragment {
            Fragment::First(id, protocol) => Some(FragKey {
                src: ip.src,
                dst: ip.dst,
                ifindex: HERE,
                id,
                protocol,
                _pad: [0; 3],
            }),
            _ => None,
        };
        // 3. Neighbour discovery and MLD (IPv6 only); in a first fragment never (RFC
        // 6980: docs/verdicts.md), whose verdict is recorded like any first fragment's.
        if ip.v6
            && ip.protocol == PROTO_ICMPV6
            && !matches!(ip.fragment, Fragment::Later(..))
            && let Some(kind @ (130..=137 | 143)) = l4.icmp_type
        {
            let reason = if first_fragment.is_some() {
                Reason::DropNeighbourDiscovery
            } else {
                self.neighbour(hook, &ip, kind)
            };
            return Ok(Verdict {
                reason,
                ct: CtEffect::None,
                first_fragment,
            });
        }
        // 4. Later fragments follow the first.
        if let Fragment::Later(id, protocol) = ip.fragment {
            let key = FragKey {
                src: ip.src,
                dst: ip.dst,
                ifindex: HERE,
                id,
                protocol,
                _pad: [0; 3],
            };
            return Err(if self.fragments.get(&key) == Some(&true) {
                Reason::AllowFragment
            } else {
                Reason::DropFragment
            });
        }
        let mut verdict = self.flow_verdict(hook, frame, &ip, &l4);
        verdict.first_fragment = first_fragment;
        Ok(verdict)
    }

    fn arp(&self, hook: Hook, frame: &[u8], arp: &[u8]) -> Reason {
        // Cut short: malformed at both hooks (docs/verdicts.md).
        if arp.len() < 28 {
            return Reason::DropMalformed;
        }
        if hook == Hook::ToPod {
            return Reason::AllowArp;
        }
        let sender = [arp[14], arp[15], arp[16], arp[17]];
        let ok = be16(arp, 0) == 1
            && be16(arp, 2) == ETH_IPV4
            && arp[4] == 6
            && arp[5] == 4
            && matches!(be16(arp, 6), 1 | 2)
            && arp[8..14] == frame[6..12]
            && (sender == [0; 4] || self.bound_here(&v4_mapped(sender)));
        if ok {
            Reason::AllowArp
        } else {
            Reason::DropArpSpoofed
        }
    }

    fn neighbour(&self, hook: Hook, ip: &Ip<'_>, kind: u8) -> Reason {
        let mld = matches!(kind, 130..=132 | 143);
        // MLD is judged alike at both hooks (docs/verdicts.md).
        let ok = match hook {
            _ if mld => {
                ip.hop_limit == 1
                    && ip.l4.len() <= 512
                    && (is_link_local(&ip.src) || ip.src == [0; 16])
                    && is_multicast(&ip.dst)
            }
            Hook::ToPod => ip.hop_limit == 255,
            Hook::FromPod if matches!(kind, 134 | 137) => false,
            Hook::FromPod => {
                let source = is_link_local(&ip.src)
                    || (kind == 135 && ip.src == [0; 16])
                    || self.bound_here(&ip.src);
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
        if ok {
            Reason::AllowNeighbourDiscovery
        } else {
            Reason::DropNeighbourDiscovery
        }
    }

    /// Steps 5–9 for a packet that is no ND and no later fragment.
    fn flow_verdict(&self, hook: Hook, frame: &[u8], ip: &Ip<'_>, l4: &L4) -> Verdict {
        let from_pod = hook == Hook::FromPod;
        let (local, remote) = if from_pod {
            (ip.src, ip.dst)
        } else {
            (ip.dst, ip.src)
        };
        let error = l4.icmp_type.is_some_and(|t| is_icmp_error(ip.v6, t));
        // 5. Conntrack.
        if error {
            if self.related(hook, ip, local, remote) {
                return Verdict::only(Reason::AllowRelatedIcmp);
            }
        } else {
            let pure_syn =
                ip.protocol == PROTO_TCP && l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            let key = ct_key(local, remote, flow_ports(l4, from_pod), ip.protocol);
            if !pure_syn && let Some(flow) = self.flow(&key) {
                let reply = flow.value.origin
                    == if from_pod {
                        CT_ORIGIN_REMOTE
                    } else {
                        CT_ORIGIN_LOCAL
                    };
                let closing = ip.protocol == PROTO_TCP && l4.tcp_flags & (TCP_FIN | TCP_RST) != 0;
                return Verdict {
                    reason: Reason::AllowEstablished,
                    ct: CtEffect::Touch {
                        key,
                        replied: if reply { 1 } else { flow.value.replied },
                        state: if closing {
                            CT_STATE_CLOSING
                        } else {
                            flow.value.state
                        },
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
                || (ip.protocol == PROTO_UDP
                    && matches!(l4.dst_port, UDP_PORT_VXLAN_LINUX | UDP_PORT_VXLAN_IANA)))
        {
            return Verdict::only(Reason::DropTunnel);
        }
        let (isolated, audit, direction, origin) = if from_pod {
            (
                EP_ISOLATED_EGRESS,
                EP_AUDIT_EGRESS,
                DIR_EGRESS,
                CT_ORIGIN_LOCAL,
            )
        } else {
            (
                EP_ISOLATED_INGRESS,
                EP_AUDIT_INGRESS,
                DIR_INGRESS,
                CT_ORIGIN_REMOTE,
            )
        };
        let key = ct_key(local, remote, flow_ports(l4, from_pod), ip.protocol);
        let create = |rules: [u32; 4], n_rules| {
            if error || group {
                CtEffect::None
            } else {
                CtEffect::Create {
                    key,
                    origin,
                    rules,
                    n_rules,
                }
            }
        };
        // 7. Not isolated.
        if endpoint.flags & isolated == 0 {
            return Verdict {
                reason: Reason::AllowNotIsolated,
                ct: create([0; 4], 1),
                first_fragment: None,
            };
        }
        // 8–9. Peer identity and the four policy lookups.
        let peer = self.identity(&remote);
        let port = if matches!(ip.protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
            l4.dst_port
        } else {
            0
        };
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
            Verdict {
                reason: Reason::AllowPolicy,
                ct: create(hits, n),
                first_fragment: None,
            }
        } else if endpoint.flags & audit != 0 {
            Verdict {
                reason: Reason::AuditPolicy,
                ct: create([0; 4], 1),
                first_fragment: None,
            }
        } else {
            Verdict::only(Reason::DropPolicy)
        }
    }

    fn local_endpoint(
        &self,
        hook: Hook,
        local: Addr,
        group: bool,
    ) -> Result<EndpointValue, Reason> {
        let by_port = (hook == Hook::FromPod && is_link_local(&local))
            || (hook == Hook::ToPod && (group || is_link_local(&local)));
        if by_port {
            return self.ports.get(&HERE).copied().ok_or(Reason::DropUnbound);
        }
        let missing = if hook == Hook::FromPod {
            Reason::DropSpoofed
        } else {
            Reason::DropWrongPort
        };
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
        let Some(quote) = ip.l4.get(8..) else {
            return false;
        };
        let Some(q) = parse_quote(ip.v6, quote) else {
            return false;
        };
        let from_pod = hook == Hook::FromPod;
        // The quoted packet went the other way: from the pod at to_pod, to it at from_pod.
        let (q_local, q_remote) = if from_pod {
            (q.dst, q.src)
        } else {
            (q.src, q.dst)
        };
        if q_local != local {
            return false;
        }
        // From a pod, the error goes to the quoted flow's remote side; to a pod it may
        // come from anyone (routers report PMTU: docs/verdicts.md).
        if from_pod && remote != q_remote {
            return false;
        }
        let key = ct_key(local, q_remote, flow_ports(&q.l4, !from_pod), q.protocol);
        self.flow(&key).is_some()
    }
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
        if v.state == CT_STATE_CLOSING || v.replied == 0 {
            DEFAULT_CT_OTHER_TIMEOUT_NS
        } else {
            DEFAULT_CT_TCP_TIMEOUT_NS
        }
    } else if v.replied != 0 {
        DEFAULT_CT_OTHER_TIMEOUT_NS
    } else {
        DEFAULT_CT_UNREPLIED_TIMEOUT_NS
    };
    flow.age_ns < timeout
}
