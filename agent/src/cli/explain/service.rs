//! `explain` with a Service as the destination: `svc/NS/NAME` resolved to its
//! ClusterIPs, a ClusterIP named by its Service (the compiled image's
//! `identity_info[..].service`), and which backend's egress rule allows the VIP (the
//! compiler gives the VIP:port the rule that allows the first backend it fronts, in
//! address order: `compile::services`).

use std::fmt::Write as _;
use std::net::IpAddr;

use netfence_common::DIR_EGRESS;
use serde::Serialize;

use super::{Connection, ExplainError, Target};
use crate::compile::services::{frontends, vips};
use crate::image::{Image, canonical_addr};
use crate::model::State;

/// A Service ClusterIP at the far end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePeer {
    /// `ns/name` of the Service.
    pub name: String,
    /// The ClusterIP.
    pub vip: IpAddr,
    /// Whether the protocol and port are a port of the Service.
    pub service_port: bool,
    /// The backend whose egress rule allows the VIP, when the source's egress is
    /// isolated and a rule allows a backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
}

/// One backend of a Service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub addr: IpAddr,
    /// `ns/name` of the pod with that address, if any.
    pub pod: Option<String>,
    /// The target port on the backend.
    pub port: u16,
}

/// `NS/NAME` when `text` is `svc/NS/NAME` (`svc/NAME` alone is a pod of namespace
/// `svc`).
pub fn named(text: &str) -> Option<&str> {
    text.strip_prefix("svc/").filter(|rest| rest.contains('/'))
}

/// The Service whose ClusterIP `addr` is, by the image's identity of the address.
pub fn of_vip(image: &Image, addr: IpAddr) -> Option<String> {
    image
        .identity_info
        .get(&image.identity_of(addr))
        .and_then(|info| info.service.clone())
}

/// `svc/NS/NAME` (`name` = `NS/NAME`): the Service's first ClusterIP of each family.
pub fn resolve(state: &State, text: &str, name: &str) -> Result<Target, ExplainError> {
    let (namespace, service_name) = name
        .split_once('/')
        .ok_or_else(|| ExplainError::BadTarget(text.to_owned()))?;
    let service = state
        .services
        .iter()
        .find(|s| s.namespace == namespace && s.name == service_name)
        .ok_or_else(|| ExplainError::NoSuchService(name.to_owned()))?;
    let ips: Vec<IpAddr> = service
        .cluster_ips
        .iter()
        .map(|ip| canonical_addr(*ip))
        .collect();
    let addrs: Vec<IpAddr> = [false, true]
        .into_iter()
        .filter_map(|v6| ips.iter().copied().find(|ip| ip.is_ipv6() == v6))
        .collect();
    if addrs.is_empty() {
        return Err(ExplainError::NoClusterIp(name.to_owned()));
    }
    Ok(Target {
        addrs,
        pod: None,
        service: Some(name.to_owned()),
    })
}

/// The Service side of `c` when its destination is a ClusterIP: the Service, and when
/// the source's egress rule allows the VIP, the backend that rule allows (the one
/// the compiler took the VIP entry's rule from).
pub fn peer(
    state: &State,
    image: &Image,
    c: &Connection,
    protocol: u8,
    port: u16,
) -> Option<ServicePeer> {
    let name = of_vip(image, c.dst)?;
    let frontend = frontends(state, &vips(state))
        .into_iter()
        .find(|f| f.vip == c.dst && f.protocol.number() == protocol && f.port == port);
    let source = image.endpoints.get(&c.src);
    let backend = match (&frontend, source, c.egress.rule_id) {
        (Some(frontend), Some(source), Some(rule)) => {
            frontend.backends.iter().find_map(|(addr, target)| {
                let peer = image.identity_of(*addr);
                (image.policy_lookup(source.policy, peer, DIR_EGRESS, protocol, *target)
                    == Some(rule))
                .then(|| Backend {
                    addr: *addr,
                    pod: image
                        .endpoints
                        .get(addr)
                        .map(|e| format!("{}/{}", e.namespace, e.pod)),
                    port: *target,
                })
            })
        }
        _ => None,
    };
    Some(ServicePeer {
        name,
        vip: c.dst,
        service_port: frontend.is_some(),
        backend,
    })
}

/// The lines that follow the egress check of a connection to a ClusterIP: which
/// backend's rule allows the VIP (or why none does), and that the VIP has no ingress
/// check of its own.
pub fn text(out: &mut String, c: &Connection, service: &ServicePeer, protocol: &str, port: u16) {
    let name = &service.name;
    let _ = match (c.egress.verdict, &service.backend) {
        ("allowed", Some(backend)) => {
            let pod = backend
                .pod
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            writeln!(
                out,
                "    for Service {name}: {} allows its backend {}{pod} on port {}",
                c.egress.rule.as_deref().unwrap_or("the rule"),
                backend.addr,
                backend.port
            )
        }
        ("allowed", None) => writeln!(
            out,
            "    for Service {name}: {} allows the ClusterIP itself (no backend needed)",
            c.egress.rule.as_deref().unwrap_or("the rule")
        ),
        ("denied" | "audited", _) if !service.service_port => {
            let what = if port == 0 {
                protocol.to_owned()
            } else {
                format!("{protocol} port {port}")
            };
            writeln!(
                out,
                "    for Service {name}: {what} is no port of the Service"
            )
        }
        ("denied" | "audited", _) => writeln!(
            out,
            "    for Service {name}: no egress rule allows any of its backends behind {protocol} port {port}"
        ),
        _ => Ok(()),
    };
    let _ = writeln!(
        out,
        "  ingress: {} is the ClusterIP of Service {name}, not a local endpoint: no ingress check at the VIP; after the DNAT the backend's own ingress policy decides (explain --to the backend pod)",
        service.vip
    );
}
