//! The compiled image: the exact contents every BPF map should hold, plus the
//! metadata that explains them (which policy and rule an entry came from). `lookup`
//! mirrors the kernel's lookup so that semantics can be tested without root.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

/// Everything the maps should hold for one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Image {
    /// IDENTITIES: address prefix → identity. Pod IPs are /32 or /128.
    pub identities: BTreeMap<IpNet, u32>,
    /// ENDPOINTS: local pod address → endpoint (ifindex is filled in by the dataplane).
    pub endpoints: BTreeMap<IpAddr, Endpoint>,
    /// POLICY entries.
    #[serde(serialize_with = "serialize_policy")]
    pub policy: BTreeMap<PolicyEntry, u32>,
    /// Rule id → where it came from. Ids are stable for an unchanged rule.
    pub rules: BTreeMap<u32, RuleInfo>,
    /// Identity → what it stands for.
    pub identity_info: BTreeMap<u32, IdentityInfo>,
    /// Endpoint policy id → the policies that select its endpoints.
    pub endpoint_policies: BTreeMap<u32, EndpointPolicyInfo>,
}

/// A local pod address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub namespace: String,
    pub pod: String,
    /// Endpoint policy id (0 when isolated in no direction).
    pub policy: u32,
    pub isolated_ingress: bool,
    pub isolated_egress: bool,
    /// Isolated for ingress only by policies in audit mode: a packet no rule allows
    /// passes and is reported as `audit` instead of dropped.
    pub audit_ingress: bool,
    /// The same for egress.
    pub audit_egress: bool,
    /// The pod's own identity.
    pub identity: u32,
}

impl Endpoint {
    /// The ENDPOINTS value's flags (`EP_*`): the one place they are encoded.
    pub fn flags(&self) -> u32 {
        use netfence_common::{
            EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS,
        };
        let mut flags = 0;
        if self.isolated_ingress {
            flags |= EP_ISOLATED_INGRESS;
            if self.audit_ingress {
                flags |= EP_AUDIT_INGRESS;
            }
        }
        if self.isolated_egress {
            flags |= EP_ISOLATED_EGRESS;
            if self.audit_egress {
                flags |= EP_AUDIT_EGRESS;
            }
        }
        flags
    }
}

/// One POLICY key. `port_bits` is the prefix length of `port`: 0 = any port, 16 = one
/// port; the kernel key's prefix length is `POLICY_PREFIX_ANY_PORT + port_bits`.
/// `protocol` is `PROTO_ANY` (with `port_bits` 0) for a rule without ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PolicyEntry {
    pub policy: u32,
    pub peer: u32,
    pub direction: u8,
    pub protocol: u8,
    pub port: u16,
    pub port_bits: u8,
}

/// Where a rule id came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleInfo {
    pub namespace: String,
    pub policy: String,
    /// `DIR_INGRESS` or `DIR_EGRESS`.
    pub direction: u8,
    /// Index in `spec.ingress` / `spec.egress`.
    pub index: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdentityInfo {
    /// `ns/pod` names sharing this identity (empty for address-only identities).
    pub pods: Vec<String>,
    /// ipBlocks (`cidr` with excepts, as written) that contain this identity.
    pub ip_blocks: Vec<String>,
    /// `ns/name` of the Service when this identity is a ClusterIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointPolicyInfo {
    /// `ns/name` of the policies that isolate for ingress.
    pub ingress: Vec<String>,
    /// `ns/name` of the policies that isolate for egress.
    pub egress: Vec<String>,
}

fn serialize_policy<S: serde::Serializer>(
    policy: &BTreeMap<PolicyEntry, u32>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq as _;
    #[derive(Serialize)]
    struct Row<'a> {
        #[serde(flatten)]
        key: &'a PolicyEntry,
        rule: u32,
    }
    let mut seq = serializer.serialize_seq(Some(policy.len()))?;
    for (key, rule) in policy {
        seq.serialize_element(&Row { key, rule: *rule })?;
    }
    seq.end()
}

// ---------------------------------------------------------------------------------
// The userspace mirror of the kernel lookup.

/// An address as the datapath keys it: an IPv4-mapped IPv6 address is its IPv4
/// address (the kernel stores both forms as the same 16 bytes).
pub fn canonical_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    }
}

/// The first packet of a new connection, as the TC programs see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (`PROTO_*`).
    pub protocol: u8,
    pub src_port: u16,
    /// The port policy matches: always the destination port of the new connection.
    pub dst_port: u16,
}

/// The verdict of one direction's check, at one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum DirectionVerdict {
    /// The address is no endpoint of this image: its own node judges it.
    NotLocal,
    /// The endpoint is not isolated in this direction: no policy lookup.
    NotIsolated,
    /// A policy entry allows it.
    Allowed { rule: u32 },
    /// The endpoint is isolated and no entry allows it.
    Denied,
    /// No entry allows it, but the endpoint audits this direction (every policy
    /// isolating it there is `netfence.io/mode: audit`): it passes, reported `audit`.
    Audited,
}

impl DirectionVerdict {
    /// True unless the check drops the packet.
    pub fn passes(&self) -> bool {
        !matches!(self, DirectionVerdict::Denied)
    }
}

/// The verdict for a new connection: the source's egress check and the destination's
/// ingress check, both of which must pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Verdict {
    /// At the source endpoint.
    pub egress: DirectionVerdict,
    /// At the destination endpoint.
    pub ingress: DirectionVerdict,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.passes() && self.ingress.passes()
    }
}

impl Image {
    /// The verdict the TC programs give the first packet of a new connection.
    pub fn lookup(&self, packet: &Packet) -> Verdict {
        let src = canonical_addr(packet.src);
        let dst = canonical_addr(packet.dst);
        Verdict {
            egress: self.check(src, dst, netfence_common::DIR_EGRESS, packet),
            ingress: self.check(dst, src, netfence_common::DIR_INGRESS, packet),
        }
    }

    /// One direction at endpoint `local`, talking to `remote`.
    fn check(
        &self,
        local: IpAddr,
        remote: IpAddr,
        direction: u8,
        packet: &Packet,
    ) -> DirectionVerdict {
        let Some(endpoint) = self.endpoints.get(&local) else {
            return DirectionVerdict::NotLocal;
        };
        let (isolated, audit) = if direction == netfence_common::DIR_INGRESS {
            (endpoint.isolated_ingress, endpoint.audit_ingress)
        } else {
            (endpoint.isolated_egress, endpoint.audit_egress)
        };
        if !isolated {
            return DirectionVerdict::NotIsolated;
        }
        let peer = self.identity_of(remote);
        match self.policy_lookup(
            endpoint.policy,
            peer,
            direction,
            packet.protocol,
            packet.dst_port,
        ) {
            Some(rule) => DirectionVerdict::Allowed { rule },
            None if audit => DirectionVerdict::Audited,
            None => DirectionVerdict::Denied,
        }
    }

    /// The kernel's policy lookups for endpoint policy `policy` in `direction`, in
    /// the order of [`lookup_in_order`]; the first hit allows.
    pub fn policy_lookup(
        &self,
        policy: u32,
        peer: u32,
        direction: u8,
        protocol: u8,
        port: u16,
    ) -> Option<u32> {
        lookup_in_order(peer, protocol, port, |peer, protocol, port, port_bits| {
            let key = PolicyEntry {
                policy,
                peer,
                direction,
                protocol,
                port,
                port_bits,
            };
            self.policy.get(&key).copied()
        })
    }

    /// The identity the IDENTITIES trie gives `addr` (`IDENTITY_WORLD` on a miss): the
    /// longest prefix wins, in the kernel's IPv4-mapped address space (an IPv6 prefix
    /// covering `::ffff:0:0/96` also covers IPv4 addresses).
    pub fn identity_of(&self, addr: IpAddr) -> u32 {
        identity_in(&self.identities, addr)
    }
}

/// The kernel's policy lookups for one endpoint policy and direction, in order; the
/// first hit allows. `get(peer, protocol, port, port_bits)` reads one POLICY key.
/// 1. (peer, protocol, port), longest port prefix;
/// 2. (IDENTITY_ANY, protocol, port), longest port prefix;
/// 3. (peer, PROTO_ANY, any port);
/// 4. (IDENTITY_ANY, PROTO_ANY, any port).
///
/// ICMP and ICMPv6 have no ports and skip 1 and 2: only a rule without ports allows
/// them.
pub fn lookup_in_order(
    peer: u32,
    protocol: u8,
    port: u16,
    get: impl Fn(u32, u8, u16, u8) -> Option<u32>,
) -> Option<u32> {
    use netfence_common::{IDENTITY_ANY, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6};
    let with_ports = protocol != PROTO_ICMP && protocol != PROTO_ICMPV6;
    let port_lookup = |peer: u32| {
        (0..=16u8).rev().find_map(|port_bits| {
            let mask = if port_bits == 0 {
                0
            } else {
                u16::MAX << (16 - port_bits)
            };
            get(peer, protocol, port & mask, port_bits)
        })
    };
    let any_port = |peer: u32| get(peer, PROTO_ANY, 0, 0);
    let ported = if with_ports {
        port_lookup(peer).or_else(|| port_lookup(IDENTITY_ANY))
    } else {
        None
    };
    ported
        .or_else(|| any_port(peer))
        .or_else(|| any_port(IDENTITY_ANY))
}

/// The identity an IDENTITIES trie gives `addr` (`IDENTITY_WORLD` on a miss): the
/// longest prefix wins, in the kernel's IPv4-mapped address space (an IPv6 prefix
/// covering `::ffff:0:0/96` also covers IPv4 addresses).
pub fn identity_in(identities: &BTreeMap<IpNet, u32>, addr: IpAddr) -> u32 {
    use ipnet::{Ipv4Net, Ipv6Net};
    let found = match canonical_addr(addr) {
        IpAddr::V4(v4) => (0..=32u8)
            .rev()
            .find_map(|len| {
                let net = Ipv4Net::new(v4, len).ok()?.trunc();
                identities.get(&IpNet::V4(net)).copied()
            })
            .or_else(|| {
                let mapped = v4.to_ipv6_mapped();
                (0..=96u8).rev().find_map(|len| {
                    let net = Ipv6Net::new(mapped, len).ok()?.trunc();
                    identities.get(&IpNet::V6(net)).copied()
                })
            }),
        IpAddr::V6(v6) => (0..=128u8).rev().find_map(|len| {
            let net = Ipv6Net::new(v6, len).ok()?.trunc();
            identities.get(&IpNet::V6(net)).copied()
        }),
    };
    found.unwrap_or(netfence_common::IDENTITY_WORLD)
}

/// What one update of the incremental engine changed in its image, to bring a copy
/// of the previous image to the new one without copying the cluster-wide maps: the
/// node-local maps whole (they follow the node's pods and are recomputed at every
/// update), and only the changed entries of the cluster-wide ones (IDENTITIES, rule
/// and identity metadata).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Patch {
    pub endpoints: BTreeMap<IpAddr, Endpoint>,
    pub policy: BTreeMap<PolicyEntry, u32>,
    pub endpoint_policies: BTreeMap<u32, EndpointPolicyInfo>,
    /// Changed prefixes and their identity (`None`: removed).
    pub identities: Vec<(IpNet, Option<u32>)>,
    /// Changed identities and what they stand for (`None`: released).
    pub identity_info: Vec<(u32, Option<IdentityInfo>)>,
    /// Changed rules and where they came from (`None`: gone).
    pub rules: Vec<(u32, Option<RuleInfo>)>,
}

impl Patch {
    /// Brings `image`, the image before the update, to the image after it.
    pub fn apply_to(self, image: &mut Image) {
        fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, changes: Vec<(K, Option<V>)>) {
            for (key, value) in changes {
                match value {
                    Some(value) => map.insert(key, value),
                    None => map.remove(&key),
                };
            }
        }
        image.endpoints = self.endpoints;
        image.policy = self.policy;
        image.endpoint_policies = self.endpoint_policies;
        put(&mut image.identities, self.identities);
        put(&mut image.identity_info, self.identity_info);
        put(&mut image.rules, self.rules);
    }
}
