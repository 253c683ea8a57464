//! The ABI between the netfence TC programs and the agent: map names, `#[repr(C)]`
//! keys and values, verdict reasons and tunables. Both sides compile this file, so a
//! layout can never disagree; every type carries a size assertion.
//!
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so
//! one LPM trie and one conntrack table serve both families. Multi-byte fields of LPM
//! keys are big-endian byte arrays, because the trie matches bits from the first byte.
#![no_std]

pub mod reason;

pub use reason::Reason;

/// Map names, as the agent finds them in the loaded object.
pub mod map {
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const IDENTITIES: &str = "IDENTITIES";
    pub const POLICY: &str = "POLICY";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const RULE_HITS: &str = "RULE_HITS";
    pub const EVENTS: &str = "EVENTS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const PORTS: &str = "PORTS";
}

/// Program names (the function names in the eBPF crate).
pub mod program {
    /// TC ingress of the host-side veth: packets leaving the pod (its egress policy).
    pub const FROM_POD: &str = "netfence_from_pod";
    /// TC egress of the host-side veth: packets entering the pod (its ingress policy).
    pub const TO_POD: &str = "netfence_to_pod";
}

/// Global tunables, set by the agent at load time (`EbpfLoader::set_global`).
pub mod global {
    /// Nanoseconds an idle TCP conntrack entry stays valid (`u64`).
    pub const CT_TCP_TIMEOUT_NS: &str = "CT_TCP_TIMEOUT_NS";
    /// Nanoseconds an idle UDP/SCTP/ICMP conntrack entry stays valid (`u64`).
    pub const CT_OTHER_TIMEOUT_NS: &str = "CT_OTHER_TIMEOUT_NS";
    /// Non-zero: also send an event for every allowed new flow (`u32`).
    pub const EVENT_ALLOWS: &str = "EVENT_ALLOWS";
    /// Non-zero: `--existing-flows=cut`: a packet of an established flow whose
    /// conntrack entry is of an older generation than `Settings::generation` is
    /// re-checked against the current policy (`u32`). Zero (`keep`): established flows
    /// pass until they close; the verifier prunes the re-check, so it costs nothing.
    pub const EXISTING_FLOWS_CUT: &str = "EXISTING_FLOWS_CUT";
    /// Nanoseconds an idle UDP/SCTP/ICMP conntrack entry that has seen no reply stays
    /// valid (`u64`; nf_conntrack's unreplied UDP timeout is the model). An unreplied
    /// TCP entry (SYN sent, nothing back) uses `CT_OTHER_TIMEOUT_NS`, as SYN_SENT.
    pub const CT_UNREPLIED_TIMEOUT_NS: &str = "CT_UNREPLIED_TIMEOUT_NS";
    /// The bench only (`u32`): non-zero makes the programs stop after one stage of
    /// the established path and pass, so the bench can measure each stage's cost:
    /// 1 on entry, 2 after parsing, 3 after building the conntrack key, 4 after the
    /// conntrack lookup, 5 after the established check (clock read, liveness,
    /// refresh). 0 (every agent) runs the whole program; the verifier prunes the
    /// cut-offs, so they cost nothing.
    pub const BENCH_STAGE: &str = "BENCH_STAGE";
}

/// Map capacities. The agent refuses an image that does not fit.
pub const MAX_ENDPOINTS: u32 = 16_384;
/// One entry per bound host-side interface.
pub const MAX_PORTS: u32 = 16_384;
pub const MAX_IDENTITY_PREFIXES: u32 = 262_144;
pub const MAX_POLICY_ENTRIES: u32 = 524_288;
pub const MAX_CONNTRACK: u32 = 262_144;
pub const MAX_FRAGMENTS: u32 = 8_192;
pub const MAX_RULES: u32 = 65_536;
/// Ring buffer for events, in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Default conntrack timeouts.
pub const DEFAULT_CT_TCP_TIMEOUT_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const DEFAULT_CT_OTHER_TIMEOUT_NS: u64 = 120 * 1_000_000_000;
pub const DEFAULT_CT_UNREPLIED_TIMEOUT_NS: u64 = 30 * 1_000_000_000;

/// Traffic direction, seen from the local endpoint (pod).
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// IP protocol numbers the datapath knows.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// The name of an IP protocol the datapath knows, as policies and flow logs spell it
/// (`TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`); `None` for any other number (each user
/// spells those its own way).
pub const fn protocol_name(protocol: u8) -> Option<&'static str> {
    match protocol {
        PROTO_TCP => Some("TCP"),
        PROTO_UDP => Some("UDP"),
        PROTO_SCTP => Some("SCTP"),
        PROTO_ICMP => Some("ICMP"),
        PROTO_ICMPV6 => Some("ICMPv6"),
        _ => None,
    }
}
/// Tunnel protocols a pod may never send (`Reason::DropTunnel`): what a node
/// decapsulates carries any inner source. IP-in-IP, IPv6-in-IPv4, GRE.
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6_IN_IP: u8 = 41;
pub const PROTO_GRE: u8 = 47;
/// UDP ports of VXLAN: Linux's default (Flannel's) and IANA's.
pub const UDP_PORT_VXLAN_LINUX: u16 = 8472;
pub const UDP_PORT_VXLAN_IANA: u16 = 4789;

/// Reserved identities. Compiled identities are never one of these.
/// `IDENTITY_WORLD`: an address covered by no pod and no ipBlock (also an LPM miss).
pub const IDENTITY_WORLD: u32 = 0;
/// `IDENTITY_HOST`: the node's own addresses (reserved for node-traffic rules).
pub const IDENTITY_HOST: u32 = 1;
/// `IDENTITY_ANY`: a policy key peer that matches every identity, world included.
pub const IDENTITY_ANY: u32 = u32::MAX;
/// The first identity the compiler may hand out.
pub const IDENTITY_FIRST_COMPILED: u32 = 16;

/// A 16-byte address, IPv4 stored IPv4-mapped.
pub type Addr = [u8; 16];

/// The IPv4-mapped form of an IPv4 address given in network byte order.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Bits an IPv4 prefix length gains in the IPv4-mapped form.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

// ---------------------------------------------------------------------------------
// ENDPOINTS: HashMap<EndpointKey, EndpointValue>, one entry per local pod IP.

/// Endpoint flag: the pod is isolated for ingress (a policy selects it for Ingress).
pub const EP_ISOLATED_INGRESS: u32 = 1 << 0;
/// Endpoint flag: the pod is isolated for egress.
pub const EP_ISOLATED_EGRESS: u32 = 1 << 1;
/// Endpoint flag: ingress is in audit mode: a new flow no rule allows passes, counted
/// (`Reason::AuditPolicy`) and reported (`VERDICT_AUDIT`) instead of dropped. Only
/// meaningful with `EP_ISOLATED_INGRESS`.
pub const EP_AUDIT_INGRESS: u32 = 1 << 2;
/// Endpoint flag: egress is in audit mode (as `EP_AUDIT_INGRESS`).
pub const EP_AUDIT_EGRESS: u32 = 1 << 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub addr: Addr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    /// Endpoint policy: the first field of every POLICY key for this pod.
    pub policy: u32,
    /// `EP_*` flags.
    pub flags: u32,
    /// Host-side interface of the pod, or 0 while unbound. Packets from this address
    /// on another interface are spoofed, packets to it on another interface are not
    /// for that port, and an unbound endpoint fails closed both ways
    /// (`Reason::DropUnbound`).
    pub ifindex: u32,
    /// The pod's own identity (reported in events).
    pub identity: u32,
}

// ---------------------------------------------------------------------------------
// PORTS: HashMap<u32, EndpointValue>: host-side interface index → the endpoint bound
// to it (the same value as that pod's ENDPOINTS entries; a dual-stack pod has one).
// It judges what has no unicast pod address of its own: broadcast and multicast to
// the pod (its ingress policy), and its link-local addresses (fe80::/10,
// 169.254.0.0/16) both ways. No entry: the port has no bound endpoint, and such
// packets drop (`Reason::DropUnbound`).

// ---------------------------------------------------------------------------------
// IDENTITIES: LpmTrie<IdentityKey, u32> (aya's `Key { prefix_len, data }` wraps it).

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    pub addr: Addr,
}

// ---------------------------------------------------------------------------------
// POLICY: LpmTrie<PolicyKey, PolicyValue>.
//
// Bits, in order: policy (32) | peer identity (32) | direction (8) | protocol (8) | port (16).
// Every field but the port is always matched exactly, so a prefix length is between
// `POLICY_PREFIX_ANY_PORT` (any port) and `POLICY_PREFIX_FULL` (one port); a port
// range is a set of port prefixes in between.

pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
pub const POLICY_PREFIX_FULL: u32 = 96;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub policy: [u8; 4],
    pub peer: [u8; 4],
    pub direction: u8,
    pub protocol: u8,
    pub port: [u8; 2],
}

impl PolicyKey {
    #[inline(always)]
    pub const fn new(policy: u32, peer: u32, direction: u8, protocol: u8, port: u16) -> Self {
        Self {
            policy: policy.to_be_bytes(),
            peer: peer.to_be_bytes(),
            direction,
            protocol,
            port: port.to_be_bytes(),
        }
    }
}

/// Policy value flag: reserved for audit mode (the rule would drop, but passes).
pub const POLICY_FLAG_AUDIT: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// The rule that allows (index into RULE_HITS, reported in events).
    pub rule: u32,
    pub flags: u32,
}

// ---------------------------------------------------------------------------------
// CONNTRACK: LruHashMap<CtKey, CtValue>.
//
// The key is the flow as seen from the local endpoint of the hook, so both directions
// of a flow at one veth give the same key without sorting: `local` is the pod's side.
// `ifindex` keeps the two hooks a same-node pod-to-pod packet crosses apart.

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub local: Addr,
    pub remote: Addr,
    pub ifindex: u32,
    /// Ports for TCP/UDP/SCTP; for ICMP echo the identifier in `local_port`, 0 remote.
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Who opened the flow: the local pod (egress) or the remote peer (ingress).
pub const CT_ORIGIN_LOCAL: u8 = 1;
pub const CT_ORIGIN_REMOTE: u8 = 2;
/// TCP entry states. A closed entry still passes the last packets of the close; a new
/// SYN always goes back through policy.
pub const CT_STATE_OPEN: u8 = 0;
pub const CT_STATE_CLOSING: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// `bpf_ktime_get_ns` of the last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
    /// Rule that allowed the flow (0: the direction was not isolated).
    pub rule: u32,
    pub origin: u8,
    pub state: u8,
    /// 1 once a packet of the other direction than `origin`'s passed (the flow was
    /// answered); until then the entry has the short unreplied timeouts.
    pub replied: u8,
    pub _pad: u8,
    /// `Settings::generation` when the entry was created or last re-checked. With
    /// `EXISTING_FLOWS_CUT`, an entry of another generation is re-checked against the
    /// current policy on its next packet.
    pub generation: u32,
    pub _pad2: u32,
}

// ---------------------------------------------------------------------------------
// SETTINGS: Array<Settings> of one element (index 0), written by the agent at run
// time (unlike the load-time globals, it changes while the programs run).

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Settings {
    /// The current policy generation: the agent increments it after every sync that
    /// changed ENDPOINTS, IDENTITIES or POLICY, as that sync's last write. Conntrack
    /// entries carry the generation they were created or last re-checked in.
    pub generation: u32,
    pub _pad: u32,
}

// ---------------------------------------------------------------------------------
// FRAGMENTS: LruHashMap<FragKey, FragValue>: verdict of a first fragment, for the
// non-first fragments that follow it (they carry no ports).

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    pub ifindex: u32,
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragValue {
    pub last_seen_ns: u64,
    /// 1: the first fragment passed; 0: it was dropped.
    pub allowed: u32,
    pub rule: u32,
}

// ---------------------------------------------------------------------------------
// COUNTERS: PerCpuArray<u64> indexed by `Reason`. RULE_HITS: PerCpuHashMap<u32, u64>
// keyed by rule id; the agent creates the entries, the program only increments.

// ---------------------------------------------------------------------------------
// EVENTS: RingBuf of `Event`.

pub const VERDICT_DROP: u8 = 0;
pub const VERDICT_ALLOW: u8 = 1;
/// A new flow (or a re-checked established one) that policy in audit mode would
/// drop: it passed. `policy` names the endpoint policy whose policies would deny it.
pub const VERDICT_AUDIT: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    pub src: Addr,
    pub dst: Addr,
    pub ifindex: u32,
    /// A `Reason` code.
    pub reason: u32,
    /// Endpoint policy of the local pod (0 if none).
    pub policy: u32,
    /// Rule that allowed (0 for drops).
    pub rule: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// The policy direction that decided (`DIR_*`): the hook's, except when an
    /// established flow is re-checked (`--existing-flows=cut`) on a reply packet: then
    /// the direction that opened the flow.
    pub direction: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<EndpointKey>() == 16);
const _: () = assert!(core::mem::size_of::<EndpointValue>() == 16);
const _: () = assert!(core::mem::size_of::<IdentityKey>() == 16);
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);
const _: () = assert!(core::mem::size_of::<CtValue>() == 24);
const _: () = assert!(core::mem::size_of::<Settings>() == 8);
const _: () = assert!(core::mem::size_of::<FragKey>() == 44);
const _: () = assert!(core::mem::size_of::<FragValue>() == 16);
const _: () = assert!(core::mem::size_of::<Event>() == 56);

#[cfg(feature = "user")]
mod user {
    // SAFETY: every type is `#[repr(C)]`, `Copy`, has no padding the compiler adds
    // (explicit `_pad` fields, checked by the size assertions) and is valid for any
    // bit pattern.
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::EndpointValue {}
    unsafe impl aya::Pod for super::IdentityKey {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragValue {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Settings {}
}
