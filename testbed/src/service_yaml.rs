//! Services (v1, type ClusterIP) and EndpointSlices (discovery.k8s.io/v1) written as
//! `kubectl get -o yaml` prints them: full objects, keys in kubectl's (alphabetical)
//! order, server fields included (`uid`, `resourceVersion`, `clusterIPs`,
//! `ipFamilies`, the slice's `kubernetes.io/service-name` and managed-by labels).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::kube_proxy::Protocol;
use crate::manifest::{CREATED, scalar, uid, write_labels};

/// A Service port's `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One entry of a Service's `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortSpec {
    pub name: String,
    pub port: u16,
    pub target_port: TargetPort,
    pub protocol: Protocol,
}

/// A ClusterIP Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: IpAddr,
    pub ports: Vec<ServicePortSpec>,
    pub selector: Vec<(String, String)>,
}

/// One endpoint of a slice: a pod's address, readiness, node and pod name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub address: IpAddr,
    pub ready: bool,
    pub node_name: String,
    pub pod: String,
}

/// An EndpointSlice of a Service (one address family).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSliceSpec {
    pub namespace: String,
    /// The slice's own name (`<service>-<suffix>` as the controller names them).
    pub name: String,
    pub service: String,
    pub endpoints: Vec<SliceEndpoint>,
    /// Port name (the Service port's), number (the resolved target port), protocol.
    pub ports: Vec<(String, u16, Protocol)>,
    /// `IPv6` when true, else `IPv4`.
    pub ipv6: bool,
}

/// The Service as one YAML document.
pub fn service_yaml(svc: &ServiceSpec) -> String {
    let mut out = String::from("apiVersion: v1\nkind: Service\nmetadata:\n");
    let _ = writeln!(out, "  creationTimestamp: \"{CREATED}\"");
    let _ = writeln!(out, "  name: {}", scalar(&svc.name));
    let _ = writeln!(out, "  namespace: {}", scalar(&svc.namespace));
    out.push_str("  resourceVersion: \"2001\"\n");
    let _ = writeln!(
        out,
        "  uid: {}",
        uid(&["Service", &svc.namespace, &svc.name])
    );
    out.push_str("spec:\n");
    let _ = writeln!(out, "  clusterIP: {}", svc.cluster_ip);
    let _ = writeln!(out, "  clusterIPs:\n  - {}", svc.cluster_ip);
    out.push_str("  internalTrafficPolicy: Cluster\n");
    let family = if svc.cluster_ip.is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
    };
    let _ = writeln!(out, "  ipFamilies:\n  - {family}");
    out.push_str("  ipFamilyPolicy: SingleStack\n");
    if !svc.ports.is_empty() {
        out.push_str("  ports:\n");
        for port in &svc.ports {
            let _ = writeln!(out, "  - name: {}", scalar(&port.name));
            let _ = writeln!(out, "    port: {}", port.port);
            let _ = writeln!(out, "    protocol: {}", port.protocol.k8s());
            match &port.target_port {
                TargetPort::Number(n) => {
                    let _ = writeln!(out, "    targetPort: {n}");
                }
                TargetPort::Name(name) => {
                    let _ = writeln!(out, "    targetPort: {}", scalar(name));
                }
            }
        }
    }
    if !svc.selector.is_empty() {
        let mut selector = svc.selector.clone();
        selector.sort();
        out.push_str("  selector:\n");
        for (k, v) in &selector {
            let _ = writeln!(out, "    {}: {}", scalar(k), scalar(v));
        }
    }
    out.push_str("  sessionAffinity: None\n  type: ClusterIP\nstatus:\n  loadBalancer: {}\n");
    out
}

/// The EndpointSlice as one YAML document.
pub fn endpoint_slice_yaml(slice: &EndpointSliceSpec) -> String {
    let family = if slice.ipv6 { "IPv6" } else { "IPv4" };
    let mut out = format!("addressType: {family}\napiVersion: discovery.k8s.io/v1\n");
    if slice.endpoints.is_empty() {
        out.push_str("endpoints: []\n");
    } else {
        out.push_str("endpoints:\n");
        for ep in &slice.endpoints {
            let _ = writeln!(out, "- addresses:\n  - {}", ep.address);
            let _ = writeln!(
                out,
                "  conditions:\n    ready: {}\n    serving: {}\n    terminating: false",
                ep.ready, ep.ready
            );
            let _ = writeln!(out, "  nodeName: {}", scalar(&ep.node_name));
            let _ = writeln!(
                out,
                "  targetRef:\n    kind: Pod\n    name: {}\n    namespace: {}\n    uid: {}",
                scalar(&ep.pod),
                scalar(&slice.namespace),
                uid(&["Pod", &slice.namespace, &ep.pod])
            );
        }
    }
    out.push_str("kind: EndpointSlice\nmetadata:\n");
    let _ = writeln!(out, "  creationTimestamp: \"{CREATED}\"");
    let _ = writeln!(out, "  generateName: {}-", scalar(&slice.service));
    out.push_str("  generation: 1\n");
    let mut labels = out_labels(slice);
    labels.sort();
    let mut meta = String::new();
    write_labels(&mut meta, &labels);
    // write_labels indents for list items (4 spaces); a lone object uses 2.
    for line in meta.lines() {
        let _ = writeln!(out, "{}", line.strip_prefix("  ").unwrap_or(line));
    }
    let _ = writeln!(out, "  name: {}", scalar(&slice.name));
    let _ = writeln!(out, "  namespace: {}", scalar(&slice.namespace));
    let _ = writeln!(
        out,
        "  ownerReferences:\n  - apiVersion: v1\n    blockOwnerDeletion: true\n    controller: true\n    kind: Service\n    name: {}\n    uid: {}",
        scalar(&slice.service),
        uid(&["Service", &slice.namespace, &slice.service])
    );
    out.push_str("  resourceVersion: \"3001\"\n");
    let _ = writeln!(
        out,
        "  uid: {}",
        uid(&["EndpointSlice", &slice.namespace, &slice.name])
    );
    if slice.ports.is_empty() {
        out.push_str("ports: []\n");
    } else {
        out.push_str("ports:\n");
        for (name, port, protocol) in &slice.ports {
            let _ = writeln!(
                out,
                "- name: {}\n  port: {port}\n  protocol: {}",
                scalar(name),
                protocol.k8s()
            );
        }
    }
    out
}

fn out_labels(slice: &EndpointSliceSpec) -> Vec<(String, String)> {
    vec![
        (
            "endpointslice.kubernetes.io/managed-by".into(),
            "endpointslice-controller.k8s.io".into(),
        ),
        ("kubernetes.io/service-name".into(), slice.service.clone()),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test inputs are literals")]
mod tests {
    use super::*;

    #[test]
    fn service_reads_like_kubectl() {
        let yaml = service_yaml(&ServiceSpec {
            namespace: "prod".into(),
            name: "web".into(),
            cluster_ip: "198.19.128.10".parse().unwrap(),
            ports: vec![
                ServicePortSpec {
                    name: "http".into(),
                    port: 80,
                    target_port: TargetPort::Name("http".into()),
                    protocol: Protocol::Tcp,
                },
                ServicePortSpec {
                    name: "dns".into(),
                    port: 53,
                    target_port: TargetPort::Number(5353),
                    protocol: Protocol::Udp,
                },
            ],
            selector: vec![("app".into(), "web".into())],
        });
        for expected in [
            "apiVersion: v1\nkind: Service\nmetadata:\n",
            "spec:\n  clusterIP: 198.19.128.10\n  clusterIPs:\n  - 198.19.128.10\n",
            "  ipFamilies:\n  - IPv4\n",
            "  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: http\n",
            "  - name: dns\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n",
            "  selector:\n    app: web\n",
            "  type: ClusterIP\n",
        ] {
            assert!(yaml.contains(expected), "missing {expected:?} in:\n{yaml}");
        }
    }

    #[test]
    fn endpoint_slice_reads_like_kubectl() {
        let yaml = endpoint_slice_yaml(&EndpointSliceSpec {
            namespace: "prod".into(),
            name: "web-x7k2p".into(),
            service: "web".into(),
            endpoints: vec![SliceEndpoint {
                address: "198.18.1.11".parse().unwrap(),
                ready: true,
                node_name: "node2".into(),
                pod: "web-1".into(),
            }],
            ports: vec![("http".into(), 8080, Protocol::Tcp)],
            ipv6: false,
        });
        for expected in [
            "addressType: IPv4\napiVersion: discovery.k8s.io/v1\nendpoints:\n- addresses:\n  - 198.18.1.11\n  conditions:\n    ready: true\n",
            "  nodeName: node2\n",
            "kind: EndpointSlice\nmetadata:\n",
            "  labels:\n    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n    kubernetes.io/service-name: web\n  name: web-x7k2p\n  namespace: prod\n",
            "ports:\n- name: http\n  port: 8080\n  protocol: TCP\n",
        ] {
            assert!(yaml.contains(expected), "missing {expected:?} in:\n{yaml}");
        }
    }
}
