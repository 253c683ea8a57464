//! The validated cluster snapshot that `compile` reads: slim, typed copies of the
//! Namespaces, Pods and NetworkPolicies a source delivered. Every value here has
//! already passed validation (CIDRs parsed, ports in range, selectors well formed, the
//! API server's defaults applied), so compilation cannot fail.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

pub type Labels = BTreeMap<String, String>;

/// Everything compile needs. Sources build it; it is cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct State {
    /// By name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Sorted by (namespace, name).
    pub pods: Vec<Pod>,
    /// Sorted by (namespace, name).
    pub policies: Vec<Policy>,
    /// Sorted by (namespace, name).
    pub services: Vec<Service>,
    /// Sorted by (namespace, name).
    pub endpoint_slices: Vec<EndpointSlice>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    /// Includes `kubernetes.io/metadata.name`, which the API server always sets; a
    /// source adds it when a manifest lacks it.
    pub labels: Labels,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node_name: Option<String>,
    /// `status.podIPs` (or `status.podIP`), at most one per family; empty while the
    /// pod has none.
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`: such a pod has the node's IP and is never an endpoint.
    pub host_network: bool,
    pub phase: PodPhase,
    /// Container ports, for named ports.
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// A pod whose IP may carry its traffic: not host-network, has an IP, and has not
    /// terminated (a Succeeded/Failed pod's IP may already belong to another pod).
    pub fn is_live_endpoint(&self) -> bool {
        !self.host_network
            && !self.ips.is_empty()
            && !matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => netfence_common::PROTO_TCP,
            Protocol::Udp => netfence_common::PROTO_UDP,
            Protocol::Sctp => netfence_common::PROTO_SCTP,
        }
    }

    /// The Kubernetes spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the Kubernetes spelling (exact, upper case, as the API server requires).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// A label selector (`metav1.LabelSelector`). An empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Non-empty for In/NotIn, empty for Exists/DoesNotExist (validated).
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// `policyTypes` after the API server's defaulting: Ingress always unless given,
    /// Egress when given or when `spec.egress` has at least one rule.
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    /// Ingress rules (meaningful only when `isolates_ingress`).
    pub ingress: Vec<Rule>,
    /// Egress rules (meaningful only when `isolates_egress`).
    pub egress: Vec<Rule>,
    /// The annotation `netfence.io/mode: audit`: what this policy would drop is
    /// counted and logged as `audit` and passes (`enforce`, or no annotation: false).
    pub audit: bool,
}

/// One ingress or egress rule: traffic from/to any of `peers` on any of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Empty: every peer (the `from`/`to` field absent or empty).
    pub peers: Vec<Peer>,
    /// Empty: every port and protocol (the `ports` field absent or empty).
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Peer {
    /// Pods chosen by selectors. `namespace_selector: None` means the policy's own
    /// namespace; `pod_selector: None` means every pod of the selected namespaces.
    Pods {
        namespace_selector: Option<LabelSelector>,
        pod_selector: Option<LabelSelector>,
    },
    /// Addresses in `cidr` but in none of `except` (each inside `cidr`, validated).
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    /// Defaults to TCP.
    pub protocol: Protocol,
    /// `None`: every port of `protocol`.
    pub port: Option<Port>,
    /// Inclusive end of a range starting at a numeric `port` (`endPort`).
    pub end_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Port {
    Number(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

/// The annotation that puts one NetworkPolicy in audit mode (`audit`) or, explicitly,
/// in enforce mode (`enforce`).
pub const MODE_ANNOTATION: &str = "netfence.io/mode";

/// A Service (`v1`), reduced to what fronts pods: its cluster IPs and ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `spec.clusterIPs` (or `spec.clusterIP`), at most one per family; empty for a
    /// headless (`None`) or ExternalName Service, which has no VIP.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `spec.selector`; `None` when absent (endpoints are then managed by hand).
    pub selector: Option<Labels>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// Required (and unique) when the Service has more than one port.
    pub name: Option<String>,
    pub protocol: Protocol,
    /// The port on the cluster IP.
    pub port: u16,
    /// `targetPort` (defaults to `port`).
    pub target_port: Port,
}

/// An EndpointSlice (`discovery.k8s.io/v1`): the backends of one Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The label `kubernetes.io/service-name`; `None` when absent (such a slice
    /// belongs to no Service).
    pub service: Option<String>,
    /// Resolved ports; a Service port matches the slice port of the same name (both
    /// absent for an unnamed single port).
    pub ports: Vec<SlicePort>,
    /// IPv4 and IPv6 endpoints (FQDN slices are dropped by the source).
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlicePort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (an absent condition counts as ready, as the API says).
    pub ready: bool,
}
