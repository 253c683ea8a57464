//! The policy decision for the first packet of a flow: the peer's identity, then at
//! most four POLICY lookups in a fixed order. No loop over rules or pods.

use netfence_common::{IDENTITY_ANY, PROTO_ANY, PolicyKey};

use crate::maps;

/// The identity of the remote address (`IDENTITY_WORLD` when no prefix covers it).
#[inline(always)]
pub fn peer_identity(remote: &netfence_common::Addr) -> u32 {
    maps::identity(remote)
}

/// The rule allowing a new flow, or `None` (the caller drops: fails closed, the
/// endpoint is isolated in this direction and nothing allows the flow).
///
/// Precedence, first hit allows (each lookup is the longest POLICY prefix match over
/// all 96 key bits, so a port range stored as port prefixes matches here):
/// 1. (policy, peer, direction, protocol, port): a rule naming this peer and port;
/// 2. (policy, IDENTITY_ANY, direction, protocol, port): any peer, this port;
/// 3. (policy, peer, direction, PROTO_ANY, 0): this peer, a rule without ports;
/// 4. (policy, IDENTITY_ANY, direction, PROTO_ANY, 0): any peer, no ports.
///
/// `port` is the destination port of the new connection. Flows without ports
/// (`has_ports` false: ICMP, ICMPv6) skip 1 and 2: only a rule without ports allows them.
#[inline(always)]
pub fn allowing_rule(
    policy: u32,
    peer: u32,
    direction: u8,
    protocol: u8,
    port: u16,
    has_ports: bool,
) -> Option<u32> {
    if has_ports {
        if let Some(hit) = maps::policy(PolicyKey::new(policy, peer, direction, protocol, port)) {
            return Some(hit.rule);
        }
        if let Some(hit) = maps::policy(PolicyKey::new(
            policy,
            IDENTITY_ANY,
            direction,
            protocol,
            port,
        )) {
            return Some(hit.rule);
        }
    }
    if let Some(hit) = maps::policy(PolicyKey::new(policy, peer, direction, PROTO_ANY, 0)) {
        return Some(hit.rule);
    }
    maps::policy(PolicyKey::new(
        policy,
        IDENTITY_ANY,
        direction,
        PROTO_ANY,
        0,
    ))
    .map(|hit| hit.rule)
}
