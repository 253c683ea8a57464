//! NetworkPolicy ports → POLICY key port matches: numeric ports, `endPort` ranges as a
//! minimal set of aligned port prefixes, protocol-only specs, and named ports resolved
//! against one pod's container ports.

use crate::model::{ContainerPort, Port, PortSpec, Protocol, Rule};

/// One protocol and port prefix of a POLICY key: `port_bits` 16 = exactly `port`,
/// 0 = every port of `protocol`. `port` has its low `16 - port_bits` bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMatch {
    pub protocol: u8,
    pub port: u16,
    pub port_bits: u8,
}

impl PortMatch {
    /// A rule without ports: every protocol, every port (ICMP included).
    pub const ANY: PortMatch = PortMatch {
        protocol: netfence_common::PROTO_ANY,
        port: 0,
        port_bits: 0,
    };
}

/// A pod's named container ports, sorted: `(name, protocol, port)`. Part of identity
/// and endpoint-policy keys when policies name ports, so it has a canonical form.
pub type NamedPorts = Vec<(String, Protocol, u16)>;

/// The named ports a pod declares, in canonical order.
pub fn named_ports(ports: &[ContainerPort]) -> NamedPorts {
    let mut named: NamedPorts = ports
        .iter()
        .filter_map(|p| {
            p.name
                .as_ref()
                .map(|name| (name.clone(), p.protocol, p.port))
        })
        .collect();
    named.sort();
    named.dedup();
    named
}

/// True when any port of `rule` is a named port.
pub fn rule_uses_named_port(rule: &Rule) -> bool {
    rule.ports
        .iter()
        .any(|spec| matches!(spec.port, Some(Port::Name(_))))
}

/// The port matches of one port spec. A named port is looked up (by name and
/// protocol) in `named`, the named ports of the pod the port belongs to: the
/// destination pod of the connection. `None` (no pod, e.g. an address outside the
/// cluster) or a name the pod does not declare gives no match: it allows nothing.
pub fn spec_matches(spec: &PortSpec, named: Option<&NamedPorts>) -> Vec<PortMatch> {
    let protocol = spec.protocol.number();
    match &spec.port {
        None => vec![PortMatch {
            protocol,
            port: 0,
            port_bits: 0,
        }],
        Some(Port::Number(port)) => match spec.end_port {
            Some(end) if end > *port => range_prefixes(*port, end)
                .into_iter()
                .map(|(port, port_bits)| PortMatch {
                    protocol,
                    port,
                    port_bits,
                })
                .collect(),
            _ => vec![PortMatch {
                protocol,
                port: *port,
                port_bits: 16,
            }],
        },
        Some(Port::Name(name)) => named
            .into_iter()
            .flatten()
            .filter(|(n, p, _)| n == name && *p == spec.protocol)
            .map(|(_, _, port)| PortMatch {
                protocol,
                port: *port,
                port_bits: 16,
            })
            .collect(),
    }
}

/// The minimal list of aligned prefixes `(port, port_bits)` whose union is exactly
/// `[first, last]` (inclusive). Empty when `first > last`.
pub fn range_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut prefixes = Vec::new();
    let mut start = u32::from(first);
    let end = u32::from(last);
    while start <= end {
        // Largest block 2^k aligned at `start` that stays inside the range.
        let mut k = if start == 0 {
            16
        } else {
            start.trailing_zeros().min(16)
        };
        while start + (1 << k) - 1 > end {
            k -= 1;
        }
        // `start` <= 65535 and `k` <= 16, so both fit.
        prefixes.push((start as u16, (16 - k) as u8));
        start += 1 << k;
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(prefixes: &[(u16, u8)]) -> Vec<u32> {
        let mut ports: Vec<u32> = prefixes
            .iter()
            .flat_map(|(port, bits)| {
                let size = 1u32 << (16 - u32::from(*bits));
                u32::from(*port)..u32::from(*port) + size
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn ranges_become_minimal_aligned_prefixes() {
        assert_eq!(range_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(range_prefixes(1024, 2047), vec![(1024, 6)]);
        assert_eq!(range_prefixes(80, 81), vec![(80, 15)]);
        assert_eq!(range_prefixes(81, 82), vec![(81, 16), (82, 16)]);
        assert_eq!(
            range_prefixes(32000, 32768),
            vec![(32000, 8), (32256, 7), (32768, 16)]
        );
        assert!(range_prefixes(10, 9).is_empty());
        for (first, last) in [
            (1, 65535),
            (80, 443),
            (32000, 32768),
            (65535, 65535),
            (7, 9),
        ] {
            let ports = covered(&range_prefixes(first, last));
            assert_eq!(
                ports,
                (u32::from(first)..=u32::from(last)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn named_ports_resolve_by_name_and_protocol() {
        let named = named_ports(&[
            ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            ContainerPort {
                name: Some("dns".into()),
                port: 53,
                protocol: Protocol::Udp,
            },
            ContainerPort {
                name: None,
                port: 9090,
                protocol: Protocol::Tcp,
            },
        ]);
        let spec = |name: &str, protocol| PortSpec {
            protocol,
            port: Some(Port::Name(name.into())),
            end_port: None,
        };
        assert_eq!(
            spec_matches(&spec("http", Protocol::Tcp), Some(&named)),
            vec![PortMatch {
                protocol: 6,
                port: 8080,
                port_bits: 16
            }]
        );
        assert!(spec_matches(&spec("http", Protocol::Udp), Some(&named)).is_empty());
        assert!(spec_matches(&spec("dns", Protocol::Tcp), Some(&named)).is_empty());
        assert!(spec_matches(&spec("http", Protocol::Tcp), None).is_empty());
    }
}
