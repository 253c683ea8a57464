//! Validation and conversion of decoded Kubernetes objects (k8s-openapi types) into the
//! `model` snapshot types, checking what the API server checks for the fields netfence
//! uses and applying its defaults (protocol TCP, policyTypes, the namespace name label).
//! Every problem is reported with its field path; an object with any problem is
//! rejected as a whole.

pub mod names;
pub mod services;

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::SourceError;
use crate::model::{
    ContainerPort, LabelSelector, Labels, MODE_ANNOTATION, Namespace, Operator, Peer, Pod,
    PodPhase, Policy, Port, PortSpec, Protocol, Requirement, Rule,
};

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Collects the problems of one object.
#[derive(Debug)]
pub struct Checker<'a> {
    file: &'a str,
    object: String,
    pub errors: Vec<SourceError>,
    pub warnings: Vec<SourceError>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a str, object: String) -> Self {
        Checker {
            file,
            object,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn problem(&self, field: &str, message: String) -> SourceError {
        SourceError::Invalid {
            file: self.file.to_owned(),
            object: self.object.clone(),
            field: field.to_owned(),
            message,
        }
    }

    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(self.problem(field, message.into()));
    }

    pub(super) fn warn(&mut self, field: &str, message: impl Into<String>) {
        self.warnings.push(self.problem(field, message.into()));
    }

    pub(super) fn check(&mut self, field: &str, problem: Option<String>) {
        if let Some(message) = problem {
            self.error(field, message);
        }
    }

    pub(super) fn labels(
        &mut self,
        field: &str,
        labels: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Labels {
        let labels = crate::model::intern(Labels::from(labels.cloned().unwrap_or_default()));
        for (key, value) in &labels {
            self.check(
                field,
                names::qualified_name(key).map(|p| format!("key {p}")),
            );
            self.check(&format!("{field}[{key}]"), names::label_value(value));
        }
        labels
    }
}

/// `metadata.name`, required and checked with `syntax`.
pub(super) fn name(
    cx: &mut Checker<'_>,
    meta: &meta::ObjectMeta,
    syntax: fn(&str) -> Option<String>,
) -> String {
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        cx.error("metadata.name", "required");
    } else {
        cx.check("metadata.name", syntax(&name));
    }
    name
}

/// `metadata.namespace`, defaulting to `default` as kubectl does.
pub fn namespace_of(meta: &meta::ObjectMeta) -> String {
    match meta.namespace.as_deref() {
        None | Some("") => "default".to_owned(),
        Some(namespace) => namespace.to_owned(),
    }
}

pub(super) fn namespace_field(cx: &mut Checker<'_>, meta: &meta::ObjectMeta) -> String {
    let namespace = namespace_of(meta);
    cx.check("metadata.namespace", names::dns1123_label(&namespace));
    namespace
}

pub(super) fn finish<T>(cx: &Checker<'_>, value: T) -> Option<T> {
    cx.errors.is_empty().then_some(value)
}

pub fn namespace(cx: &mut Checker<'_>, ns: &core::Namespace) -> Option<Namespace> {
    let name = name(cx, &ns.metadata, names::dns1123_label);
    let mut labels = cx.labels("metadata.labels", ns.metadata.labels.as_ref());
    match labels.get(NAMESPACE_NAME_LABEL) {
        Some(value) if *value != name => {
            cx.warn(
                "metadata.labels",
                format!(
                    "{NAMESPACE_NAME_LABEL}={value:?} replaced by {name:?}, as the API server does"
                ),
            );
            labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        }
        Some(_) => {}
        None => {
            labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        }
    }
    finish(cx, Namespace { name, labels })
}

pub fn pod(cx: &mut Checker<'_>, pod: &core::Pod) -> Option<Pod> {
    let name = name(cx, &pod.metadata, names::dns1123_subdomain);
    let namespace = namespace_field(cx, &pod.metadata);
    let labels = cx.labels("metadata.labels", pod.metadata.labels.as_ref());
    let spec = pod.spec.as_ref();
    let node_name = spec
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mut ports = Vec::new();
    let mut port_names = BTreeSet::new();
    for (c, container) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{c}].ports[{p}]");
            if let Some(port) = container_port(cx, &field, port) {
                if let Some(port_name) = &port.name
                    && !port_names.insert(port_name.clone())
                {
                    cx.error(
                        &format!("{field}.name"),
                        format!("duplicate value {port_name:?}"),
                    );
                }
                ports.push(port);
            }
        }
    }
    ports.sort();
    // Stored for the pod's life: no spare capacity (a pushed vector holds four).
    ports.shrink_to_fit();
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        // What the API server sets on create, before the kubelet reports.
        None | Some("") => PodPhase::Pending,
        Some("Pending") => PodPhase::Pending,
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some("Unknown") => PodPhase::Unknown,
        Some(other) => {
            cx.error(
                "status.phase",
                format!("unsupported value {other:?}: supported values: \"Pending\", \"Running\", \"Succeeded\", \"Failed\", \"Unknown\""),
            );
            PodPhase::Unknown
        }
    };
    let ips = status.map(|s| pod_ips(cx, s)).unwrap_or_default();
    finish(
        cx,
        Pod {
            namespace,
            name,
            labels,
            node_name,
            ips,
            host_network,
            phase,
            ports,
        },
    )
}

fn container_port(
    cx: &mut Checker<'_>,
    field: &str,
    port: &core::ContainerPort,
) -> Option<ContainerPort> {
    let before = cx.errors.len();
    let number = port_number(cx, &format!("{field}.containerPort"), port.container_port);
    let name = port.name.clone().filter(|n| !n.is_empty());
    if let Some(name) = &name {
        cx.check(&format!("{field}.name"), names::iana_svc_name(name));
    }
    let protocol = protocol(cx, &format!("{field}.protocol"), port.protocol.as_deref());
    (cx.errors.len() == before).then_some(ContainerPort {
        name,
        port: number?,
        protocol: protocol?,
    })
}

/// `status.podIPs` when present, else `status.podIP`; at most one per family.
fn pod_ips(cx: &mut Checker<'_>, status: &core::PodStatus) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let listed: Vec<(String, &str)> = match status.pod_ips.as_deref() {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("status.podIPs[{i}].ip"), ip.ip.as_str()))
            .collect(),
        _ => status
            .pod_ip
            .as_deref()
            .filter(|ip| !ip.is_empty())
            .map(|ip| vec![("status.podIP".to_owned(), ip)])
            .unwrap_or_default(),
    };
    for (field, text) in listed {
        match text.parse::<IpAddr>() {
            Ok(ip) if ips.iter().any(|seen| seen.is_ipv4() == ip.is_ipv4()) => {
                cx.error(
                    &field,
                    format!("{text:?}: may specify no more than one IP for each IP family"),
                );
            }
            Ok(ip) => ips.push(ip),
            Err(_) => cx.error(&field, format!("{text:?}: must be a valid IP address")),
        }
    }
    ips.shrink_to_fit();
    ips
}

pub(super) fn port_number(cx: &mut Checker<'_>, field: &str, value: i32) -> Option<u16> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Some(port),
        _ => {
            cx.error(
                field,
                format!("{value}: must be between 1 and 65535, inclusive"),
            );
            None
        }
    }
}

pub(super) fn protocol(cx: &mut Checker<'_>, field: &str, value: Option<&str>) -> Option<Protocol> {
    match value {
        None => Some(Protocol::Tcp),
        Some(text) => {
            let parsed = Protocol::parse(text);
            if parsed.is_none() {
                cx.error(
                    field,
                    format!(
                        "unsupported value {text:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
                    ),
                );
            }
            parsed
        }
    }
}

pub fn policy(cx: &mut Checker<'_>, np: &net::NetworkPolicy) -> Option<Policy> {
    let name = name(cx, &np.metadata, names::dns1123_subdomain);
    let namespace = namespace_field(cx, &np.metadata);
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector =
        selector(cx, "spec.podSelector", spec.pod_selector.as_ref()).unwrap_or_default();
    let ingress: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(
                cx,
                &format!("spec.ingress[{i}]"),
                "from",
                r.from.as_deref(),
                r.ports.as_deref(),
            )
        })
        .collect();
    let egress: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(
                cx,
                &format!("spec.egress[{i}]"),
                "to",
                r.to.as_deref(),
                r.ports.as_deref(),
            )
        })
        .collect();
    if let Some(types) = spec.policy_types.as_deref() {
        if types.len() > 2 {
            cx.error(
                "spec.policyTypes",
                "may not specify more than two policyTypes",
            );
        }
        for (i, t) in types.iter().enumerate() {
            if t != "Ingress" && t != "Egress" {
                cx.error(
                    &format!("spec.policyTypes[{i}]"),
                    format!("unsupported value {t:?}: supported values: \"Ingress\", \"Egress\""),
                );
            }
        }
    }
    let (isolates_ingress, isolates_egress) =
        defaulted_policy_types(spec.policy_types.as_deref(), egress.len());
    let audit = audit_mode(cx, &np.metadata);
    finish(
        cx,
        Policy {
            namespace,
            name,
            pod_selector,
            isolates_ingress,
            isolates_egress,
            ingress,
            egress,
            audit,
        },
    )
}

/// The annotation `netfence.io/mode`: `audit` puts the policy in audit mode, `enforce`
/// (or no annotation) keeps it enforcing. Any other value is an error: guessing would
/// either enforce a policy its author meant to try, or open what they meant to close.
fn audit_mode(cx: &mut Checker<'_>, meta: &meta::ObjectMeta) -> bool {
    match meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(MODE_ANNOTATION))
        .map(String::as_str)
    {
        None | Some("enforce") => false,
        Some("audit") => true,
        Some(_) => {
            cx.error(
                &format!("metadata.annotations[{MODE_ANNOTATION}]"),
                "must be \"audit\" or \"enforce\"",
            );
            false
        }
    }
}

fn rule(
    cx: &mut Checker<'_>,
    field: &str,
    peers_name: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
) -> Rule {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| peer(cx, &format!("{field}.{peers_name}[{i}]"), p))
        .collect();
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| policy_port(cx, &format!("{field}.ports[{i}]"), p))
        .collect();
    Rule { peers, ports }
}

fn peer(cx: &mut Checker<'_>, field: &str, peer: &net::NetworkPolicyPeer) -> Option<Peer> {
    let selectors =
        usize::from(peer.pod_selector.is_some()) + usize::from(peer.namespace_selector.is_some());
    match (&peer.ip_block, selectors) {
        (None, 0) => {
            cx.error(
                field,
                "must specify a peer: podSelector, namespaceSelector or ipBlock",
            );
            None
        }
        (Some(_), 1..) => {
            cx.error(field, "may not specify both ipBlock and another peer");
            None
        }
        (Some(block), _) => ip_block(cx, &format!("{field}.ipBlock"), block),
        (None, _) => {
            let namespace_selector = selector(
                cx,
                &format!("{field}.namespaceSelector"),
                peer.namespace_selector.as_ref(),
            );
            let pod_selector = selector(
                cx,
                &format!("{field}.podSelector"),
                peer.pod_selector.as_ref(),
            );
            Some(Peer::Pods {
                namespace_selector,
                pod_selector,
            })
        }
    }
}

/// Parses a CIDR. The API server accepts host bits set (and ipBlock matching uses the
/// network), so such a value is truncated with a warning.
fn cidr(cx: &mut Checker<'_>, field: &str, text: &str) -> Option<IpNet> {
    match text.parse::<IpNet>() {
        Ok(net) => {
            let trunc = net.trunc();
            if trunc != net {
                cx.warn(
                    field,
                    format!("{text:?} has host bits set; used as {trunc}"),
                );
            }
            Some(trunc)
        }
        Err(_) => {
            cx.error(
                field,
                format!(
                    "{text:?}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
                ),
            );
            None
        }
    }
}

fn ip_block(cx: &mut Checker<'_>, field: &str, block: &net::IPBlock) -> Option<Peer> {
    let cidr_field = format!("{field}.cidr");
    if block.cidr.is_empty() {
        cx.error(&cidr_field, "required");
        return None;
    }
    let outer = cidr(cx, &cidr_field, &block.cidr);
    let mut except = Vec::new();
    for (i, text) in block.except.iter().flatten().enumerate() {
        let except_field = format!("{field}.except[{i}]");
        let Some(inner) = cidr(cx, &except_field, text) else {
            continue;
        };
        if let Some(outer) = outer {
            let inside = match (outer, inner) {
                (IpNet::V4(o), IpNet::V4(n)) => {
                    o.contains(&n.network()) && n.prefix_len() > o.prefix_len()
                }
                (IpNet::V6(o), IpNet::V6(n)) => {
                    o.contains(&n.network()) && n.prefix_len() > o.prefix_len()
                }
                _ => false,
            };
            if inside {
                except.push(inner);
            } else {
                cx.error(
                    &except_field,
                    format!("{text:?}: must be a strict subset of `cidr` {outer}"),
                );
            }
        }
    }
    except.sort();
    except.dedup();
    outer.map(|cidr| Peer::IpBlock { cidr, except })
}

fn policy_port(
    cx: &mut Checker<'_>,
    field: &str,
    port: &net::NetworkPolicyPort,
) -> Option<PortSpec> {
    let before = cx.errors.len();
    let protocol = protocol(cx, &format!("{field}.protocol"), port.protocol.as_deref());
    let number = match &port.port {
        None => None,
        Some(IntOrString::Int(n)) => {
            port_number(cx, &format!("{field}.port"), *n).map(Port::Number)
        }
        Some(IntOrString::String(name)) => {
            cx.check(&format!("{field}.port"), names::iana_svc_name(name));
            Some(Port::Name(name.clone()))
        }
    };
    let end_port = match (port.end_port, &port.port) {
        (None, _) => None,
        (Some(_), None) => {
            cx.error(
                &format!("{field}.port"),
                "must be specified when endPort is specified",
            );
            None
        }
        (Some(_), Some(IntOrString::String(_))) => {
            cx.error(
                &format!("{field}.endPort"),
                "may not be specified when `port` is non-numeric",
            );
            None
        }
        (Some(end), Some(IntOrString::Int(start))) => {
            let end_port = port_number(cx, &format!("{field}.endPort"), end);
            if end < *start {
                cx.error(
                    &format!("{field}.endPort"),
                    format!("{end}: must be greater than or equal to `port` {start}"),
                );
            }
            end_port
        }
    };
    (cx.errors.len() == before).then_some(PortSpec {
        protocol: protocol?,
        port: number,
        end_port,
    })
}

fn selector(
    cx: &mut Checker<'_>,
    field: &str,
    selector: Option<&meta::LabelSelector>,
) -> Option<LabelSelector> {
    let selector = selector?;
    let match_labels = cx.labels(
        &format!("{field}.matchLabels"),
        selector.match_labels.as_ref(),
    );
    let mut match_expressions = Vec::new();
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{field}.matchExpressions[{i}]");
        cx.check(&format!("{field}.key"), names::qualified_name(&expr.key));
        let values = expr.values.clone().unwrap_or_default();
        let operator = match expr.operator.as_str() {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            other => {
                cx.error(
                    &format!("{field}.operator"),
                    format!(
                        "{other:?}: not a valid selector operator (In, NotIn, Exists, DoesNotExist)"
                    ),
                );
                None
            }
        };
        match operator {
            Some(Operator::In | Operator::NotIn) if values.is_empty() => {
                cx.error(
                    &format!("{field}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                );
            }
            Some(Operator::Exists | Operator::DoesNotExist) if !values.is_empty() => {
                cx.error(
                    &format!("{field}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                );
            }
            _ => {}
        }
        for (j, value) in values.iter().enumerate() {
            cx.check(&format!("{field}.values[{j}]"), names::label_value(value));
        }
        if let Some(operator) = operator {
            let mut values = values;
            values.sort();
            values.dedup();
            match_expressions.push(Requirement {
                key: expr.key.clone(),
                operator,
                values,
            });
        }
    }
    Some(LabelSelector {
        match_labels,
        match_expressions,
    })
}

/// `policyTypes` after the API server's defaulting, as `(isolates_ingress,
/// isolates_egress)`: the listed types when the list is non-empty; otherwise Ingress,
/// plus Egress when `spec.egress` has at least one rule (`egress: []` alone does not
/// isolate egress).
pub fn defaulted_policy_types<S: AsRef<str>>(
    policy_types: Option<&[S]>,
    egress_rules: usize,
) -> (bool, bool) {
    match policy_types {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t.as_ref() == "Ingress"),
            types.iter().any(|t| t.as_ref() == "Egress"),
        ),
        _ => (true, egress_rules > 0),
    }
}
