//! The validated cluster snapshot that `compile` reads: slim, typed copies of the
//! Namespaces, Pods and NetworkPolicies a source delivered. Every value here has
//! already passed validation (CIDRs parsed, ports in range, selectors well formed, the
//! API server's defaults applied), so compilation cannot fail.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

/// A label map, shared: cloning it (a pod's labels into an identity's description,
/// a state into a compile) copies a pointer, and a source can intern identical maps
/// (the pods of one ReplicaSet carry the same labels) so they are stored once.
/// Reads go through `Deref` to the map; writes copy it first when it is shared.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Arc<BTreeMap<String, String>>);

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        Arc::make_mut(&mut self.0).insert(key, value)
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        Arc::make_mut(&mut self.0).remove(key)
    }

    /// True when both share one map (interned).
    pub fn shares(&self, other: &Labels) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for Labels {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Labels(Arc::new(map))
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Self {
        Labels(Arc::new(BTreeMap::from(pairs)))
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Labels(Arc::new(iter.into_iter().collect()))
    }
}

/// Stores each distinct label map once: [`LabelInterner::intern`] returns the map
/// already held when an equal one is, so every pod with those labels shares it.
/// Maps no pod holds any more are dropped by [`LabelInterner::intern`] itself, once
/// the set has doubled since the last sweep (amortized O(1) per call).
#[derive(Debug, Default)]
pub struct LabelInterner {
    held: std::collections::HashSet<Labels>,
    swept_at: usize,
}

impl LabelInterner {
    pub fn intern(&mut self, labels: Labels) -> Labels {
        if let Some(held) = self.held.get(&labels) {
            return held.clone();
        }
        self.held.insert(labels.clone());
        if self.held.len() > 2 * self.swept_at.max(1024) {
            // Held only here: no value carries it any more.
            self.held.retain(|l| Arc::strong_count(&l.0) > 1);
            self.swept_at = self.held.len();
        }
        labels
    }

    /// Distinct maps held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The process's label maps, each distinct one stored once: every validated object's
/// labels and selectors go through [`intern`], so the pods of a ReplicaSet (and the
/// policies and Services that name the same labels) share one map, whichever source
/// read them. (A two-entry `BTreeMap` allocates a whole node, over 500 bytes.)
static INTERNED: std::sync::Mutex<Option<LabelInterner>> = std::sync::Mutex::new(None);

/// `labels`, or the equal map already held (see [`INTERNED`]).
pub fn intern(labels: Labels) -> Labels {
    match INTERNED.lock() {
        Ok(mut interner) => interner.get_or_insert_with(Default::default).intern(labels),
        // A panic while interning left the set as it was: share nothing more.
        Err(_) => labels,
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

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

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// Empty: every peer (the `from`/`to` field absent or empty).
    pub peers: Vec<Peer>,
    /// Empty: every port and protocol (the `ports` field absent or empty).
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PortSpec {
    /// Defaults to TCP.
    pub protocol: Protocol,
    /// `None`: every port of `protocol`.
    pub port: Option<Port>,
    /// Inclusive end of a range starting at a numeric `port` (`endPort`).
    pub end_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Port {
    Number(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

/// The annotation that puts one NetworkPolicy in audit mode (`audit`) or, explicitly,
/// in enforce mode (`enforce`).
pub const MODE_ANNOTATION: &str = "netfence.io/mode";

/// A Service (`v1`), reduced to what fronts pods: its cluster IPs and ports.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SlicePort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (an absent condition counts as ready, as the API says).
    pub ready: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(app: &str) -> Labels {
        Labels::from([("app".to_owned(), app.to_owned())])
    }

    #[test]
    fn interned_equal_maps_are_one_map_and_unheld_ones_are_swept() {
        let mut interner = LabelInterner::default();
        let first = interner.intern(labels("web"));
        let second = interner.intern(labels("web"));
        assert!(first.shares(&second));
        assert_eq!(interner.len(), 1);
        // Maps nobody holds any more go once the set has doubled past its floor.
        for i in 0..3000 {
            drop(interner.intern(labels(&format!("gone-{i}"))));
        }
        assert!(interner.len() < 2100, "swept: {}", interner.len());
        assert!(interner.intern(labels("web")).shares(&first));
    }

    #[test]
    fn a_write_to_a_shared_map_copies_it() {
        let mut interner = LabelInterner::default();
        let kept = interner.intern(labels("web"));
        let mut changed = interner.intern(labels("web"));
        changed.insert("tier".to_owned(), "db".to_owned());
        assert_eq!(kept.len(), 1);
        assert_eq!(changed.len(), 2);
        assert!(!kept.shares(&changed));
    }
}
