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
    /// The pod's own identity.
    pub identity: u32,
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
