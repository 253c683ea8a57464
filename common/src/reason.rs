//! The one table of verdict reasons, shared by the TC programs (counter index, event
//! field) and the agent (metric labels, flow log, status).

/// Why a packet passed or was dropped. The value is the COUNTERS index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A packet of a flow conntrack already allowed (either direction).
    AllowEstablished = 0,
    /// First packet of a flow, allowed by a policy rule.
    AllowPolicy = 1,
    /// The local endpoint is not isolated in this direction.
    AllowNotIsolated = 2,
    /// ARP: from a pod only with a sender address bound to its port and a sender
    /// hardware address equal to the frame's source.
    AllowArp = 3,
    /// ICMPv6 neighbour discovery and multicast listener messages that stay on the
    /// link (validated source, hop limit, length and target from a pod).
    AllowNeighbourDiscovery = 4,
    /// A non-first fragment whose first fragment was allowed.
    AllowFragment = 6,
    /// ICMP error about a flow conntrack allowed.
    AllowRelatedIcmp = 7,
    /// First packet of a flow that no rule allows, at an endpoint whose direction is
    /// in audit mode (`--mode audit` or `netfence.io/mode: audit`): it passes and is
    /// reported (`VERDICT_AUDIT`); also a re-checked established flow (`cut`) the
    /// current policy would deny in audit mode.
    AuditPolicy = 8,

    /// First packet of a flow that no rule allows.
    DropPolicy = 16,
    /// Source address is not one of the sending pod's addresses.
    DropSpoofed = 17,
    /// Truncated or malformed IP/L4 header.
    DropMalformed = 18,
    /// A unicast packet to a port for an address that is not the pod's behind it (a
    /// flooded frame, another pod's or an unknown address).
    DropWrongPort = 19,
    /// A non-first fragment with no allowed first fragment.
    DropFragment = 20,
    /// Unsupported IPv6 extension header chain (too long to walk).
    DropUnsupported = 21,
    /// A packet of an established flow that the current policy no longer allows
    /// (`--existing-flows=cut`, re-checked after a policy change): its conntrack
    /// entry is deleted.
    DropPolicyChanged = 22,
    /// An EtherType other than ARP, IPv4 and IPv6.
    DropLinkLayer = 23,
    /// ARP from a pod claiming an address not bound to its port, a hardware address
    /// not its frame's source, or malformed.
    DropArpSpoofed = 24,
    /// Neighbour discovery or MLD a pod may not send: router advertisements and
    /// redirects, a wrong hop limit, oversized, a forged source or target, or a
    /// destination off the link.
    DropNeighbourDiscovery = 25,
    /// A tunnel packet from a pod (VXLAN UDP 8472/4789, IP-in-IP, IPv6-in-IPv4, GRE):
    /// what a node decapsulates carries any inner source.
    DropTunnel = 26,
    /// The endpoint (or the port, for broadcast, multicast and link-local traffic)
    /// has no bound interface yet: fails closed both ways.
    DropUnbound = 27,
}

/// Number of COUNTERS slots (highest code + 1).
pub const REASON_SLOTS: u32 = 32;

/// The COUNTERS slot that is no `Reason`: events the TC programs could not send
/// because the EVENTS ring buffer was full (the verdict itself is unaffected).
pub const COUNTER_EVENTS_LOST: u32 = REASON_SLOTS - 1;

impl Reason {
    pub const ALL: [Reason; 20] = [
        Reason::AllowEstablished,
        Reason::AllowPolicy,
        Reason::AllowNotIsolated,
        Reason::AllowArp,
        Reason::AllowNeighbourDiscovery,
        Reason::AllowFragment,
        Reason::AllowRelatedIcmp,
        Reason::AuditPolicy,
        Reason::DropPolicy,
        Reason::DropSpoofed,
        Reason::DropMalformed,
        Reason::DropWrongPort,
        Reason::DropFragment,
        Reason::DropUnsupported,
        Reason::DropPolicyChanged,
        Reason::DropLinkLayer,
        Reason::DropArpSpoofed,
        Reason::DropNeighbourDiscovery,
        Reason::DropTunnel,
        Reason::DropUnbound,
    ];

    #[inline(always)]
    pub const fn code(self) -> u32 {
        self as u32
    }

    pub const fn is_drop(self) -> bool {
        self.code() >= 16
    }

    pub fn from_code(code: u32) -> Option<Reason> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// Stable snake_case name, used in metrics, the flow log and `status`.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::AllowEstablished => "established",
            Reason::AllowPolicy => "policy_allow",
            Reason::AllowNotIsolated => "not_isolated",
            Reason::AllowArp => "arp",
            Reason::AllowNeighbourDiscovery => "neighbour_discovery",
            Reason::AllowFragment => "fragment_allow",
            Reason::AllowRelatedIcmp => "related_icmp",
            Reason::AuditPolicy => "policy_audit",
            Reason::DropPolicy => "policy_deny",
            Reason::DropSpoofed => "spoofed_source",
            Reason::DropMalformed => "malformed",
            Reason::DropWrongPort => "wrong_port",
            Reason::DropFragment => "fragment_drop",
            Reason::DropUnsupported => "unsupported",
            Reason::DropPolicyChanged => "policy_changed_deny",
            Reason::DropLinkLayer => "link_layer",
            Reason::DropArpSpoofed => "arp_spoofed",
            Reason::DropNeighbourDiscovery => "neighbour_discovery_forbidden",
            Reason::DropTunnel => "tunnel",
            Reason::DropUnbound => "unbound",
        }
    }
}

const _: () = assert!(Reason::DropUnbound.code() < COUNTER_EVENTS_LOST);
