//! Validation and conversion of Services (`v1`) and EndpointSlices
//! (`discovery.k8s.io/v1`) into `model::Service` and `model::EndpointSlice`: the cluster
//! IPs and ports that put a VIP in front of pods, and the backends behind it. Checked as
//! the API server checks these fields, with its defaults (type ClusterIP, protocol TCP,
//! targetPort = port, an absent `ready` condition = ready). Shared by both sources.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names;
use super::{self as validate, Checker};
use crate::model::{EndpointSlice, Port, Service, ServicePort, SliceEndpoint, SlicePort};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `clusterIP: None`: a headless Service.
const HEADLESS: &str = "None";

pub fn service(cx: &mut Checker<'_>, svc: &core::Service) -> Option<Service> {
    let name = validate::name(cx, &svc.metadata, names::dns1035_label);
    let namespace = validate::namespace_field(cx, &svc.metadata);
    cx.labels("metadata.labels", svc.metadata.labels.as_ref());
    let default_spec = core::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);
    let external_name = match spec.type_.as_deref() {
        None | Some("" | "ClusterIP" | "NodePort" | "LoadBalancer") => false,
        Some("ExternalName") => true,
        Some(other) => {
            cx.error(
                "spec.type",
                format!(
                    "unsupported value {other:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
                ),
            );
            false
        }
    };
    let (cluster_ips, headless) = cluster_ips(cx, spec, external_name);
    // An empty selector is no selector: the endpoints controller ignores both.
    let selector = spec
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|s| cx.labels("spec.selector", Some(s)));
    let listed = spec.ports.as_deref().unwrap_or_default();
    if listed.is_empty() && !headless && !external_name {
        cx.error("spec.ports", "required");
    }
    let mut ports = Vec::new();
    let mut port_names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in listed.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let before = cx.errors.len();
        let port_name = port.name.clone().filter(|n| !n.is_empty());
        match &port_name {
            None if listed.len() > 1 => cx.error(
                &format!("{field}.name"),
                "required when the Service has more than one port",
            ),
            None => {}
            Some(port_name) => {
                cx.check(&format!("{field}.name"), names::dns1123_label(port_name));
                if !port_names.insert(port_name.clone()) {
                    cx.error(
                        &format!("{field}.name"),
                        format!("duplicate value {port_name:?}"),
                    );
                }
            }
        }
        let number = validate::port_number(cx, &format!("{field}.port"), port.port);
        // The API server defaults an empty protocol to TCP.
        let protocol = validate::protocol(
            cx,
            &format!("{field}.protocol"),
            port.protocol.as_deref().filter(|p| !p.is_empty()),
        );
        let target_port = target_port(cx, &format!("{field}.targetPort"), port, number);
        if let (Some(number), Some(protocol)) = (number, protocol)
            && !numbers.insert((number, protocol))
        {
            cx.error(
                &field,
                format!("duplicate value {number}/{}", protocol.as_str()),
            );
        }
        if cx.errors.len() == before
            && let (Some(port), Some(protocol), Some(target_port)) = (number, protocol, target_port)
        {
            ports.push(ServicePort {
                name: port_name,
                protocol,
                port,
                target_port,
            });
        }
    }
    validate::finish(
        cx,
        Service {
            namespace,
            name,
            cluster_ips,
            ports,
            selector,
        },
    )
}

/// `targetPort`: a number or an IANA service name (a container port's name); absent,
/// 0 or empty means `port`, as the API server's defaulting sets it.
fn target_port(
    cx: &mut Checker<'_>,
    field: &str,
    port: &core::ServicePort,
    number: Option<u16>,
) -> Option<Port> {
    match &port.target_port {
        None | Some(IntOrString::Int(0)) => number.map(Port::Number),
        Some(IntOrString::String(name)) if name.is_empty() => number.map(Port::Number),
        Some(IntOrString::Int(target)) => {
            validate::port_number(cx, field, *target).map(Port::Number)
        }
        Some(IntOrString::String(name)) => {
            let problem = names::iana_svc_name(name);
            let valid = problem.is_none();
            cx.check(field, problem);
            valid.then(|| Port::Name(name.clone()))
        }
    }
}

/// The VIPs: `spec.clusterIPs` when given (its first value must equal `clusterIP` when
/// both are set), else `spec.clusterIP`; at most one per family. `None` (headless),
/// absent or empty (not allocated) and ExternalName give no VIP. Returns the IPs and
/// whether the Service is headless.
fn cluster_ips(
    cx: &mut Checker<'_>,
    spec: &core::ServiceSpec,
    external_name: bool,
) -> (Vec<IpAddr>, bool) {
    let single = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    let list = spec.cluster_ips.as_deref().unwrap_or_default();
    if external_name {
        if !list.is_empty() {
            cx.error(
                "spec.clusterIPs",
                "may not be set for ExternalName services",
            );
        } else if single.is_some() {
            cx.error("spec.clusterIP", "may not be set for ExternalName services");
        }
        return (Vec::new(), false);
    }
    if let (Some(single), Some(first)) = (single, list.first())
        && single != first
    {
        cx.error(
            "spec.clusterIPs[0]",
            format!("{first:?}: must be the same as spec.clusterIP {single:?}"),
        );
    }
    let entries: Vec<(String, &str)> = if list.is_empty() {
        single
            .map(|ip| vec![("spec.clusterIP".to_owned(), ip)])
            .unwrap_or_default()
    } else {
        list.iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect()
    };
    let headless = entries.first().is_some_and(|(_, ip)| *ip == HEADLESS);
    let mut ips: Vec<IpAddr> = Vec::new();
    for (i, (field, text)) in entries.iter().enumerate() {
        if i == 0 && headless {
            continue;
        }
        if headless {
            cx.error(
                field,
                format!("{text:?}: must be the only value when the first is \"None\" (headless)"),
            );
            continue;
        }
        if *text == HEADLESS {
            cx.error(
                field,
                "\"None\": only the first value may be \"None\" (headless)",
            );
            continue;
        }
        match text.parse::<IpAddr>() {
            Ok(ip) if ips.iter().any(|seen| seen.is_ipv4() == ip.is_ipv4()) => cx.error(
                field,
                format!("{text:?}: may specify no more than one IP for each IP family"),
            ),
            Ok(ip) => ips.push(ip),
            Err(_) => cx.error(field, format!("{text:?}: must be a valid IP address")),
        }
    }
    (ips, headless)
}

/// An FQDN slice: accepted by the API, but its addresses are names, which no packet
/// carries. Sources drop such a slice without an error.
pub fn is_fqdn(slice: &discovery::EndpointSlice) -> bool {
    slice.address_type == "FQDN"
}

pub fn endpoint_slice(
    cx: &mut Checker<'_>,
    slice: &discovery::EndpointSlice,
) -> Option<EndpointSlice> {
    let name = validate::name(cx, &slice.metadata, names::dns1123_subdomain);
    let namespace = validate::namespace_field(cx, &slice.metadata);
    let labels = cx.labels("metadata.labels", slice.metadata.labels.as_ref());
    let service = labels
        .get(SERVICE_NAME_LABEL)
        .filter(|s| !s.is_empty())
        .cloned();
    // Some(true): IPv4, Some(false): IPv6, None: unknown (reported).
    let v4 = match slice.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        "" => {
            cx.error("addressType", "required");
            None
        }
        other => {
            cx.error(
                "addressType",
                format!(
                    "unsupported value {other:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""
                ),
            );
            None
        }
    };
    let mut endpoints = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}].addresses");
        if endpoint.addresses.is_empty() {
            cx.error(&field, "must contain at least 1 address");
        }
        let mut addresses = Vec::new();
        for (j, text) in endpoint.addresses.iter().enumerate() {
            let Some(v4) = v4 else { continue };
            match text.parse::<IpAddr>() {
                Ok(ip) if ip.is_ipv4() == v4 => addresses.push(ip),
                _ => cx.error(
                    &format!("{field}[{j}]"),
                    format!(
                        "{text:?}: must be a valid {} address",
                        if v4 { "IPv4" } else { "IPv6" }
                    ),
                ),
            }
        }
        // The API: "nil should be interpreted as ready".
        let ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        addresses.shrink_to_fit();
        endpoints.push(SliceEndpoint { addresses, ready });
    }
    endpoints.shrink_to_fit();
    let ports = slice_ports(cx, slice.ports.as_deref().unwrap_or_default());
    validate::finish(
        cx,
        EndpointSlice {
            namespace,
            name,
            service,
            ports,
            endpoints,
        },
    )
}

fn slice_ports(cx: &mut Checker<'_>, listed: &[discovery::EndpointPort]) -> Vec<SlicePort> {
    let mut ports = Vec::new();
    let mut port_names = BTreeSet::new();
    for (i, port) in listed.iter().enumerate() {
        let field = format!("ports[{i}]");
        let before = cx.errors.len();
        let port_name = port.name.clone().filter(|n| !n.is_empty());
        if let Some(port_name) = &port_name {
            cx.check(&format!("{field}.name"), names::dns1123_label(port_name));
        }
        // Unnamed counts as the name "" here: one unnamed port at most.
        if !port_names.insert(port_name.clone().unwrap_or_default()) {
            cx.error(
                &format!("{field}.name"),
                format!(
                    "duplicate value {:?}",
                    port_name.clone().unwrap_or_default()
                ),
            );
        }
        let protocol =
            validate::protocol(cx, &format!("{field}.protocol"), port.protocol.as_deref());
        let number = match port.port {
            Some(number) => validate::port_number(cx, &format!("{field}.port"), number),
            None => {
                cx.warn(
                    &format!("{field}.port"),
                    "not set (\"all ports\" in the API): netfence ignores this port",
                );
                None
            }
        };
        if cx.errors.len() == before
            && let (Some(port), Some(protocol)) = (number, protocol)
        {
            ports.push(SlicePort {
                name: port_name,
                protocol,
                port,
            });
        }
    }
    ports
}
