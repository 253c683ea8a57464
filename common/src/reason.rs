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
    /// Not IPv4/IPv6 (ARP and other link-layer traffic).
    AllowNonIp = 3,
    /// ICMPv6 neighbour discovery and multicast listener messages.
    AllowNeighbourDiscovery = 4,
    /// A packet to an address that is no local endpoint (broadcast, multicast, or a
    /// pod netfence does not know yet): not ours to judge.
    AllowUnknownDestination = 5,
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
    /// A packet for a pod, on another pod's port (e.g. a flooded frame).
    DropWrongPort = 19,
    /// A non-first fragment with no allowed first fragment.
    DropFragment = 20,
    /// Unsupported IPv6 extension header chain (too long to walk).
    DropUnsupported = 21,
    /// A packet of an established flow that the current policy no longer allows
    /// (`--existing-flows=cut`, re-checked after a policy change): its conntrack
    /// entry is deleted.
    DropPolicyChanged = 22,
}

/// Number of COUNTERS slots (highest code + 1).
pub const REASON_SLOTS: u32 = 32;

/// The COUNTERS slot that is no `Reason`: events the TC programs could not send
/// because the EVENTS ring buffer was full (the verdict itself is unaffected).
pub const COUNTER_EVENTS_LOST: u32 = REASON_SLOTS - 1;

impl Reason {
    pub const ALL: [Reason; 16] = [
        Reason::AllowEstablished,
        Reason::AllowPolicy,
        Reason::AllowNotIsolated,
        Reason::AllowNonIp,
        Reason::AllowNeighbourDiscovery,
        Reason::AllowUnknownDestination,
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
            Reason::AllowNonIp => "non_ip",
            Reason::AllowNeighbourDiscovery => "neighbour_discovery",
            Reason::AllowUnknownDestination => "unknown_destination",
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
        }
    }
}

const _: () = assert!(Reason::DropPolicyChanged.code() < COUNTER_EVENTS_LOST);
