//! `netfence policies NS/POD`: which NetworkPolicies select a pod, per direction,
//! each rule's peers and ports as written, and which of the pod's container ports
//! each ingress rule opens (named ports resolved against the pod's own ports, with
//! the engine's [`spec_matches`]). Computed from the model with the engine's
//! selector semantics; the rule ids are the compiled image's.

use std::fmt::Write as _;
use std::process::ExitCode;

use netfence_policy::compile::ports::{PortMatch, named_ports, spec_matches};
use netfence_policy::compile::selector;
use serde::Serialize;

use super::output::{Format, columns};
use super::{PoliciesArgs, input};
use crate::image::Image;
use crate::model::{
    ContainerPort, LabelSelector, Operator, Peer, Pod, Policy, Port, PortSpec, Rule, State,
};

/// Why `policies` cannot answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoliciesError {
    #[error("{0:?}: expected NAMESPACE/POD")]
    BadPod(String),
    #[error("no pod {0} in the manifests")]
    NoSuchPod(String),
}

/// A container port, as policies name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpenPort {
    pub protocol: &'static str,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One rule of a selecting policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleSummary {
    /// `ns/policy direction[index]`.
    pub rule: String,
    /// The compiled rule id (the RULE_HITS key); `None` when the pod has no address
    /// (nothing is compiled for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<u32>,
    /// The peers as written (`everyone` for no `from`/`to`).
    pub peers: Vec<String>,
    /// The ports as written (`any` for no `ports`).
    pub ports: Vec<String>,
    /// Ingress: the pod's container ports this rule opens (named ports resolved).
    /// Egress: empty (an egress rule's ports are the destination's).
    pub opens: Vec<OpenPort>,
}

/// One policy selecting the pod in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Selecting {
    /// `ns/name`.
    pub policy: String,
    /// Annotated `netfence.io/mode: audit`.
    pub audit: bool,
    /// Its rules in this direction; none: the policy only isolates (denies all).
    pub rules: Vec<RuleSummary>,
}

/// What the policies do to one direction of the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectionPolicies {
    /// Some policy selects the pod for this direction.
    pub isolated: bool,
    pub policies: Vec<Selecting>,
    /// Ingress: the container ports some rule opens (to some peer); every port when
    /// not isolated. Egress: empty.
    pub open: Vec<OpenPort>,
    /// Ingress: the container ports no rule opens.
    pub closed: Vec<OpenPort>,
}

/// The answer to `policies NS/POD`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodPolicies {
    /// `ns/name`.
    pub pod: String,
    pub ips: Vec<std::net::IpAddr>,
    /// The pod has an address of its own that policy applies to; false for a
    /// hostNetwork pod, one with no IP yet, or one that has terminated (the policies
    /// below select it but nothing is enforced for it).
    pub enforced: bool,
    pub ingress: DirectionPolicies,
    pub egress: DirectionPolicies,
}

/// A label selector as `kubectl get -l` spells it; `all` when empty.
pub fn selector_text(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = (selector.match_labels.iter())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in &selector.match_expressions {
        parts.push(match r.operator {
            Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
            Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
            Operator::Exists => r.key.clone(),
            Operator::DoesNotExist => format!("!{}", r.key),
        });
    }
    if parts.is_empty() {
        "all".to_owned()
    } else {
        parts.join(",")
    }
}

/// A peer as written: `pods app=b in x`, `pods all in namespaces team=y`,
/// `198.18.0.0/15 except 198.18.1.0/24`.
pub fn peer_text(peer: &Peer, policy_namespace: &str) -> String {
    match peer {
        Peer::Pods {
            namespace_selector,
            pod_selector,
        } => {
            let pods = pod_selector
                .as_ref()
                .map_or("all".to_owned(), selector_text);
            match namespace_selector {
                None => format!("pods {pods} in {policy_namespace}"),
                Some(ns) => format!("pods {pods} in namespaces {}", selector_text(ns)),
            }
        }
        Peer::IpBlock { cidr, except } if except.is_empty() => cidr.to_string(),
        Peer::IpBlock { cidr, except } => {
            let except: Vec<String> = except.iter().map(ToString::to_string).collect();
            format!("{cidr} except {}", except.join(","))
        }
    }
}

/// A port spec as written: `TCP 80`, `TCP 8000-8099`, `TCP http`, `UDP` (every port).
pub fn port_text(spec: &PortSpec) -> String {
    let protocol = spec.protocol.as_str();
    match (&spec.port, spec.end_port) {
        (None, _) => format!("{protocol} (every port)"),
        (Some(Port::Number(port)), Some(end)) if end > *port => format!("{protocol} {port}-{end}"),
        (Some(Port::Number(port)), _) => format!("{protocol} {port}"),
        (Some(Port::Name(name)), _) => format!("{protocol} {name}"),
    }
}

/// True when a port match covers `protocol`/`port`.
pub fn covers(m: &PortMatch, protocol: u8, port: u16) -> bool {
    if *m == PortMatch::ANY {
        return true;
    }
    let shift = 16 - u32::from(m.port_bits);
    m.protocol == protocol
        && (shift >= 16 || u32::from(m.port) >> shift == u32::from(port) >> shift)
}

/// True when `rule`'s ports let `protocol`/`port` through to a pod with `dst_ports`
/// (its named ports resolve there; `None`: the destination is no pod).
pub fn rule_port_matches(
    rule: &Rule,
    dst_ports: Option<&[ContainerPort]>,
    protocol: u8,
    port: u16,
) -> bool {
    if rule.ports.is_empty() {
        return true;
    }
    let named = dst_ports.map(named_ports);
    (rule.ports.iter())
        .flat_map(|spec| spec_matches(spec, named.as_ref()))
        .any(|m| covers(&m, protocol, port))
}

fn open_port(port: &ContainerPort) -> OpenPort {
    OpenPort {
        protocol: port.protocol.as_str(),
        port: port.port,
        name: port.name.clone(),
    }
}

/// The pod's container ports, sorted and without repeats.
fn container_ports(pod: &Pod) -> Vec<&ContainerPort> {
    let mut ports: Vec<&ContainerPort> = pod.ports.iter().collect();
    ports.sort_by_key(|p| (p.protocol, p.port, p.name.clone()));
    ports.dedup();
    ports
}

/// The rule id the image gave `policy`'s rule `index` in `direction`.
fn rule_id(image: &Image, policy: &Policy, direction: u8, index: usize) -> Option<u32> {
    (image.rules.iter())
        .find(|(_, info)| {
            info.namespace == policy.namespace
                && info.policy == policy.name
                && info.direction == direction
                && info.index == index
        })
        .map(|(id, _)| *id)
}

/// The policies of the pod's namespace that select it, in (namespace, name) order.
pub fn selecting<'s>(state: &'s State, pod: &Pod) -> Vec<&'s Policy> {
    (state.policies.iter())
        .filter(|p| p.namespace == pod.namespace && selector::matches(&p.pod_selector, &pod.labels))
        .collect()
}

fn direction(image: &Image, pod: &Pod, policies: &[&Policy], ingress: bool) -> DirectionPolicies {
    let dir = if ingress {
        netfence_common::DIR_INGRESS
    } else {
        netfence_common::DIR_EGRESS
    };
    let isolating: Vec<&&Policy> = (policies.iter())
        .filter(|p| {
            if ingress {
                p.isolates_ingress
            } else {
                p.isolates_egress
            }
        })
        .collect();
    let ports = container_ports(pod);
    let mut open_any = vec![false; ports.len()];
    let selecting = (isolating.iter())
        .map(|policy| {
            let rules = if ingress {
                &policy.ingress
            } else {
                &policy.egress
            };
            let rules = (rules.iter().enumerate())
                .map(|(index, rule)| {
                    let opens = if ingress {
                        (ports.iter().enumerate())
                            .filter(|(_, p)| {
                                rule_port_matches(
                                    rule,
                                    Some(&pod.ports),
                                    p.protocol.number(),
                                    p.port,
                                )
                            })
                            .map(|(i, p)| {
                                open_any[i] = true;
                                open_port(p)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let peers = if rule.peers.is_empty() {
                        vec!["everyone".to_owned()]
                    } else {
                        (rule.peers.iter())
                            .map(|peer| peer_text(peer, &policy.namespace))
                            .collect()
                    };
                    let written = if rule.ports.is_empty() {
                        vec!["any".to_owned()]
                    } else {
                        rule.ports.iter().map(port_text).collect()
                    };
                    RuleSummary {
                        rule: format!(
                            "{}/{} {}[{index}]",
                            policy.namespace,
                            policy.name,
                            super::output::direction_name(dir)
                        ),
                        rule_id: rule_id(image, policy, dir, index),
                        peers,
                        ports: written,
                        opens,
                    }
                })
                .collect();
            Selecting {
                policy: format!("{}/{}", policy.namespace, policy.name),
                audit: policy.audit,
                rules,
            }
        })
        .collect();
    let isolated = !isolating.is_empty();
    let (open, closed) = if !ingress {
        (Vec::new(), Vec::new())
    } else if !isolated {
        (ports.iter().map(|p| open_port(p)).collect(), Vec::new())
    } else {
        let (open, closed): (Vec<_>, Vec<_>) =
            ports.iter().zip(&open_any).partition(|(_, open)| **open);
        (
            open.into_iter().map(|(p, _)| open_port(p)).collect(),
            closed.into_iter().map(|(p, _)| open_port(p)).collect(),
        )
    };
    DirectionPolicies {
        isolated,
        policies: selecting,
        open,
        closed,
    }
}

/// What selects `target` (`NS/POD`) and what it opens.
pub fn policies(state: &State, image: &Image, target: &str) -> Result<PodPolicies, PoliciesError> {
    let Some((namespace, name)) = target.split_once('/') else {
        return Err(PoliciesError::BadPod(target.to_owned()));
    };
    let pod = (state.pods.iter())
        .find(|p| p.namespace == namespace && p.name == name)
        .ok_or_else(|| PoliciesError::NoSuchPod(target.to_owned()))?;
    let selecting = selecting(state, pod);
    Ok(PodPolicies {
        pod: target.to_owned(),
        ips: pod.ips.clone(),
        enforced: pod.is_live_endpoint(),
        ingress: direction(image, pod, &selecting, true),
        egress: direction(image, pod, &selecting, false),
    })
}

fn ports_text(ports: &[OpenPort]) -> String {
    if ports.is_empty() {
        return "-".to_owned();
    }
    let ports: Vec<String> = (ports.iter())
        .map(|p| match &p.name {
            Some(name) => format!("{} {} ({name})", p.protocol, p.port),
            None => format!("{} {}", p.protocol, p.port),
        })
        .collect();
    ports.join(", ")
}

impl PodPolicies {
    /// Aligned columns, one row per rule; `wide` adds the rule ids.
    pub fn text(&self, wide: bool) -> String {
        let mut header = vec!["DIRECTION", "POLICY", "RULE", "PEERS", "PORTS", "OPENS"];
        if wide {
            header.insert(3, "RULE-ID");
        }
        let mut rows = vec![header.into_iter().map(str::to_owned).collect::<Vec<_>>()];
        for (name, d) in [("ingress", &self.ingress), ("egress", &self.egress)] {
            if !d.isolated {
                let mut row = vec![name, "-", "-", "everyone", "any", "not isolated"];
                if wide {
                    row.insert(3, "-");
                }
                rows.push(row.into_iter().map(str::to_owned).collect());
            }
            for s in &d.policies {
                let policy = if s.audit {
                    format!("{} (audit)", s.policy)
                } else {
                    s.policy.clone()
                };
                if s.rules.is_empty() {
                    let mut row = vec![name.to_owned(), policy.clone(), "-".to_owned()];
                    if wide {
                        row.push("-".to_owned());
                    }
                    row.extend([
                        "nobody (no rules)".to_owned(),
                        "-".to_owned(),
                        "-".to_owned(),
                    ]);
                    rows.push(row);
                }
                for r in &s.rules {
                    let index = r.rule.rsplit_once(' ').map_or("", |(_, i)| i).to_owned();
                    let mut row = vec![name.to_owned(), policy.clone(), index];
                    if wide {
                        row.push(r.rule_id.map_or("-".to_owned(), |id| id.to_string()));
                    }
                    let opens = if name == "ingress" {
                        ports_text(&r.opens)
                    } else {
                        "-".to_owned()
                    };
                    row.extend([r.peers.join("; "), r.ports.join(", "), opens]);
                    rows.push(row);
                }
            }
        }
        let ips: Vec<String> = self.ips.iter().map(ToString::to_string).collect();
        let mut out = format!(
            "pod {} ({})\n",
            self.pod,
            if ips.is_empty() {
                "no IP".to_owned()
            } else {
                ips.join(", ")
            }
        );
        if !self.enforced {
            out.push_str(
                "not enforced: hostNetwork, no IP yet, or terminated: no policy applies to its traffic\n",
            );
        }
        out.push_str(&columns(&rows));
        let _ = writeln!(
            out,
            "ingress container ports open: {}; closed: {}",
            ports_text(&self.ingress.open),
            ports_text(&self.ingress.closed)
        );
        out
    }
}

/// Runs `netfence policies`: exit 0 with the answer, 2 on bad input or an unknown pod.
pub fn run(args: &PoliciesArgs) -> anyhow::Result<ExitCode> {
    Ok(answer(args).unwrap_or_else(|error| {
        eprintln!("netfence: error: {error:#}");
        input::bad_input()
    }))
}

fn answer(args: &PoliciesArgs) -> anyhow::Result<ExitCode> {
    let state = input::load(&args.input, args.keep_going)?;
    let image = crate::compile::compile(&state, None);
    let answer = policies(&state, &image, &args.pod)?;
    match args.output.document(&answer)? {
        Some(document) => print!("{document}"),
        None => print!("{}", answer.text(args.output == Format::Wide)),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::model::Protocol;

    fn spec(protocol: Protocol, port: Option<Port>, end_port: Option<u16>) -> PortSpec {
        PortSpec {
            protocol,
            port,
            end_port,
        }
    }

    #[test]
    fn port_specs_cover_numbers_ranges_and_named_ports_of_the_destination() {
        let named = [ContainerPort {
            name: Some("http".to_owned()),
            port: 8080,
            protocol: Protocol::Tcp,
        }];
        let rule = |ports| Rule {
            peers: Vec::new(),
            ports,
        };
        let tcp = netfence_common::PROTO_TCP;
        let udp = netfence_common::PROTO_UDP;
        #[rustfmt::skip]
        let table: [(Vec<PortSpec>, u8, u16, bool); 9] = [
            (vec![], udp, 53, true),
            (vec![spec(Protocol::Tcp, Some(Port::Number(80)), None)], tcp, 80, true),
            (vec![spec(Protocol::Tcp, Some(Port::Number(80)), None)], tcp, 81, false),
            (vec![spec(Protocol::Tcp, Some(Port::Number(80)), None)], udp, 80, false),
            (vec![spec(Protocol::Tcp, Some(Port::Number(8000)), Some(8099))], tcp, 8080, true),
            (vec![spec(Protocol::Tcp, Some(Port::Number(8000)), Some(8099))], tcp, 8100, false),
            (vec![spec(Protocol::Tcp, Some(Port::Name("http".to_owned())), None)], tcp, 8080, true),
            (vec![spec(Protocol::Tcp, Some(Port::Name("http".to_owned())), None)], tcp, 80, false),
            (vec![spec(Protocol::Udp, None, None)], udp, 9, true),
        ];
        for (ports, protocol, port, expected) in table {
            let r = rule(ports);
            assert_eq!(
                rule_port_matches(&r, Some(&named), protocol, port),
                expected,
                "{:?} {protocol}/{port}",
                r.ports
            );
        }
        // A named port resolves against the destination: no pod, no match.
        let r = rule(vec![spec(
            Protocol::Tcp,
            Some(Port::Name("http".to_owned())),
            None,
        )]);
        assert!(!rule_port_matches(&r, None, tcp, 8080));
    }

    #[test]
    fn selectors_peers_and_ports_read_as_written() {
        let mut selector = LabelSelector::default();
        assert_eq!(selector_text(&selector), "all");
        selector
            .match_labels
            .insert("app".to_owned(), "web".to_owned());
        selector.match_expressions.push(crate::model::Requirement {
            key: "tier".to_owned(),
            operator: Operator::NotIn,
            values: vec!["db".to_owned(), "cache".to_owned()],
        });
        assert_eq!(selector_text(&selector), "app=web,tier notin (db,cache)");
        let peer = Peer::Pods {
            namespace_selector: None,
            pod_selector: Some(selector.clone()),
        };
        assert_eq!(
            peer_text(&peer, "x"),
            "pods app=web,tier notin (db,cache) in x"
        );
        let peer = Peer::IpBlock {
            cidr: "198.18.0.0/15".parse().unwrap(),
            except: vec!["198.18.1.0/24".parse().unwrap()],
        };
        assert_eq!(peer_text(&peer, "x"), "198.18.0.0/15 except 198.18.1.0/24");
        assert_eq!(
            port_text(&spec(Protocol::Udp, None, None)),
            "UDP (every port)"
        );
        assert_eq!(
            port_text(&spec(Protocol::Tcp, Some(Port::Number(8000)), Some(8099))),
            "TCP 8000-8099"
        );
    }
}
