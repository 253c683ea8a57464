//! Service VIPs → the backends behind each VIP:port, for egress entries.
//!
//! At a pod's veth a packet to a Service still carries the ClusterIP: kube-proxy (or
//! any DNAT on the node) translates it after the TC hook. So an egress rule that
//! allows a Service's backend on its target port must also allow the VIP on the
//! Service port, or the connection never reaches the DNAT. `frontends` lists, for every
//! ClusterIP and Service port, the backends (address, target port) it may be
//! translated to: the ready endpoints of the Service's EndpointSlices; when the
//! Service has a selector but no EndpointSlice at all (a manifest directory written
//! by hand), the live pods the selector picks, as the EndpointSlice controller would.
//!
//! The reply comes back from the VIP (the DNAT is undone on the node) and matches the
//! conntrack entry the first packet created; the backend's own ingress check sees the
//! client's address (pod → ClusterIP traffic is not SNATed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::image::canonical_addr;
use crate::model::{EndpointSlice, Pod, Port, Protocol, Service, ServicePort, State};

/// One VIP:port of a Service and where it may lead.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Frontend {
    /// `ns/name` of the Service.
    pub service: String,
    /// The ClusterIP (canonical form).
    pub vip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    /// (backend address, target port), of the VIP's family.
    pub backends: BTreeSet<(IpAddr, u16)>,
}

/// Every ClusterIP of every Service, by canonical address → `ns/name`. When two
/// Services claim one address (an invalid cluster), the first in (namespace, name)
/// order keeps it.
pub fn vips(state: &State) -> BTreeMap<IpAddr, String> {
    let mut vips = BTreeMap::new();
    for service in &state.services {
        for ip in &service.cluster_ips {
            vips.entry(canonical_addr(*ip))
                .or_insert_with(|| format!("{}/{}", service.namespace, service.name));
        }
    }
    vips
}

/// The frontends of every Service with a ClusterIP. `owners` is [`vips`] of `state`
/// (the Service that keeps each ClusterIP).
pub fn frontends(state: &State, owners: &BTreeMap<IpAddr, String>) -> Vec<Frontend> {
    // EndpointSlices by (namespace, Service name).
    let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in &state.endpoint_slices {
        if let Some(service) = &slice.service {
            slices
                .entry((slice.namespace.as_str(), service.as_str()))
                .or_default()
                .push(slice);
        }
    }
    // Live pods by namespace, for Services without slices.
    let mut pods_in: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in state.pods.iter().filter(|pod| pod.is_live_endpoint()) {
        pods_in.entry(pod.namespace.as_str()).or_default().push(pod);
    }
    let mut out = Vec::new();
    for service in &state.services {
        let own = slices
            .get(&(service.namespace.as_str(), service.name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        let candidates = pods_in
            .get(service.namespace.as_str())
            .map_or(&[][..], Vec::as_slice);
        out.extend(service_frontends(service, own, candidates, owners));
    }
    out
}

/// The frontends of one Service: every (ClusterIP it keeps, port), with the backends
/// its `slices` list, or (none at all) the live `pods` of its namespace its selector
/// picks.
pub fn service_frontends(
    service: &Service,
    slices: &[&EndpointSlice],
    pods: &[&Pod],
    owners: &BTreeMap<IpAddr, String>,
) -> Vec<Frontend> {
    let name = format!("{}/{}", service.namespace, service.name);
    let mut out = Vec::new();
    for port in &service.ports {
        let backends = backends(pods, service, slices, port);
        for vip in &service.cluster_ips {
            let vip = canonical_addr(*vip);
            if owners.get(&vip) != Some(&name) {
                continue;
            }
            out.push(Frontend {
                service: name.clone(),
                vip,
                protocol: port.protocol,
                port: port.port,
                backends: backends
                    .iter()
                    .filter(|(addr, _)| addr.is_ipv4() == vip.is_ipv4())
                    .copied()
                    .collect(),
            });
        }
    }
    out
}

/// The (address, target port) pairs behind one Service port, both families, from the
/// Service's own `slices`.
fn backends(
    pods: &[&Pod],
    service: &Service,
    slices: &[&EndpointSlice],
    port: &ServicePort,
) -> BTreeSet<(IpAddr, u16)> {
    if slices.is_empty() {
        return selected_pods(pods, service, port);
    }
    let mut out = BTreeSet::new();
    for slice in slices {
        // The slice port of the same name carries the resolved target port.
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
            out.extend(
                endpoint
                    .addresses
                    .iter()
                    .map(|a| (canonical_addr(*a), target.port)),
            );
        }
    }
    out
}

/// What the EndpointSlice controller would list: the live pods of the Service's
/// namespace (`pods`) its selector matches, at the target port (a named target port resolved against
/// each pod's container ports; a pod without that name is no backend).
fn selected_pods(pods: &[&Pod], service: &Service, port: &ServicePort) -> BTreeSet<(IpAddr, u16)> {
    let Some(selector) = &service.selector else {
        return BTreeSet::new();
    };
    let mut out = BTreeSet::new();
    let pods = pods
        .iter()
        .filter(|pod| selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)));
    for pod in pods {
        let target = match &port.target_port {
            Port::Number(n) => Some(*n),
            Port::Name(name) => pod
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == port.protocol)
                .map(|p| p.port),
        };
        if let Some(target) = target {
            out.extend(pod.ips.iter().map(|ip| (canonical_addr(*ip), target)));
        }
    }
    out
}
