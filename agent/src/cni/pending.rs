//! Pods the CNI plugin announced (ADD) and has not removed (DEL), and what the run
//! loop does with them around `compile`:
//!
//! - before: a pod the state knows by name (on this node, no address yet: the usual
//!   order on a cluster, where the kubelet reports the address only after ADD) gets
//!   the plugin's addresses, so it is compiled with its real policy at once, and
//!   other pods' policies see its identity;
//! - after: every pending address that is still no local endpoint of the image
//!   becomes one isolated in both directions with endpoint policy 0, which has no
//!   POLICY entries: everything it sends or receives (new flows) is dropped until
//!   the pod appears in the state.
//!
//! Then [`programmed`] says when an ADD may be answered: every address is in the live
//! ENDPOINTS map as the image wants it, bound to an interface the programs are
//! attached to.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use netfence_cni::protocol::{Enforcement, Request};
use netfence_common::{EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EndpointValue, IDENTITY_WORLD};

use crate::image::{Endpoint, Image, canonical_addr};
use crate::model::{PodPhase, State};

/// The index in `state.pods` of the pod `endpoint` names, when it is scheduled to
/// `node`, has no address yet, is not host-network and has not terminated.
fn fillable(endpoint: &PendingEndpoint, state: &State, node: &str) -> Option<usize> {
    let (Some(namespace), Some(name)) = (&endpoint.namespace, &endpoint.pod) else {
        return None;
    };
    state.pods.iter().position(|pod| {
        pod.namespace == *namespace
            && pod.name == *name
            && pod.node_name.as_deref() == Some(node)
            && pod.ips.is_empty()
            && !pod.host_network
            && !matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed)
    })
}

/// Names used for a pending endpoint whose pod the plugin could not name.
pub const UNNAMED_NAMESPACE: &str = "cni";

/// One container the plugin announced. Serialized as it is kept across agent
/// restarts ([`crate::cni::persist`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingEndpoint {
    pub container_id: String,
    /// `CNI_NETNS` as the runtime gave it (host path).
    #[serde(default)]
    pub netns: String,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: String,
    /// Canonical (IPv4-mapped IPv6 as IPv4), sorted, deduplicated.
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub host_interfaces: Vec<String>,
    /// When the ADD arrived, seconds since the Unix epoch.
    #[serde(default)]
    pub added_unix: u64,
    /// The agent has seen `netns` (a pod's namespace, not its own): once the path is
    /// gone, the pod is gone even if its DEL never came ([`Pending::sweep`]). False
    /// while the agent cannot see the path: such an entry stays until its DEL.
    #[serde(default)]
    pub netns_seen: bool,
}

impl PendingEndpoint {
    /// The request's container, added at `added_unix`, its netns not seen yet.
    pub fn from_request(request: &Request, added_unix: u64) -> Self {
        let mut ips: Vec<IpAddr> = request.ips.iter().map(|ip| canonical_addr(*ip)).collect();
        ips.sort();
        ips.dedup();
        Self {
            container_id: request.container_id.clone(),
            netns: request.netns.clone(),
            ifname: request.ifname.clone(),
            ips,
            namespace: request.pod_namespace.clone(),
            pod: request.pod_name.clone(),
            host_interfaces: request.host_interfaces.clone(),
            added_unix,
            netns_seen: false,
        }
    }

    /// `ns/name`, or `cni/<container id>` for logs and the endpoint's names.
    pub fn names(&self) -> (String, String) {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(pod)) => (ns.clone(), pod.clone()),
            _ => (UNNAMED_NAMESPACE.to_owned(), self.container_id.clone()),
        }
    }
}

/// The pending endpoints, by container id.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    by_container: BTreeMap<String, PendingEndpoint>,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.by_container.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_container.is_empty()
    }

    pub fn get(&self, container_id: &str) -> Option<&PendingEndpoint> {
        self.by_container.get(container_id)
    }

    /// Records (or replaces) a container. An address can belong to one container
    /// only: another pending container holding one of its addresses lost it (its DEL
    /// was missed and the address was reused) and is dropped; its ids are returned.
    pub fn add(&mut self, endpoint: PendingEndpoint) -> Vec<String> {
        let stale: Vec<String> = self
            .by_container
            .values()
            .filter(|other| other.container_id != endpoint.container_id)
            .filter(|other| other.ips.iter().any(|ip| endpoint.ips.contains(ip)))
            .map(|other| other.container_id.clone())
            .collect();
        for id in &stale {
            self.by_container.remove(id);
        }
        self.by_container.insert(endpoint.container_id.clone(), endpoint);
        stale
    }

    pub fn remove(&mut self, container_id: &str) -> Option<PendingEndpoint> {
        self.by_container.remove(container_id)
    }

    /// Every pending container, by container id.
    pub fn iter(&self) -> impl Iterator<Item = &PendingEndpoint> {
        self.by_container.values()
    }

    /// Looks at every container's network namespace path through `look`: an entry
    /// whose path was seen and is now [`NetnsView::Gone`] is dropped (the pod is gone
    /// without a DEL: the runtime removes the namespace with the sandbox); one seen
    /// for the first time is marked seen. Returns the dropped entries and whether any
    /// entry changed (dropped or marked).
    pub fn sweep(&mut self, look: impl Fn(&str) -> NetnsView) -> (Vec<PendingEndpoint>, bool) {
        let mut gone = Vec::new();
        let mut changed = false;
        for endpoint in self.by_container.values_mut() {
            match look(&endpoint.netns) {
                NetnsView::Present if !endpoint.netns_seen => {
                    endpoint.netns_seen = true;
                    changed = true;
                }
                NetnsView::Gone if endpoint.netns_seen => gone.push(endpoint.container_id.clone()),
                NetnsView::Present | NetnsView::Gone | NetnsView::Unseen => {}
            }
        }
        let gone: Vec<PendingEndpoint> = gone.iter().filter_map(|id| self.by_container.remove(id)).collect();
        changed |= !gone.is_empty();
        (gone, changed)
    }

    /// `state` with the plugin's addresses on the pods it names that are scheduled
    /// to `node`, have no address yet, are not host-network and have not terminated.
    /// Borrowed when no pod changes.
    pub fn fill_state<'a>(&self, state: &'a State, node: &str) -> Cow<'a, State> {
        let mut state = Cow::Borrowed(state);
        for endpoint in self.by_container.values() {
            if let Some(index) = fillable(endpoint, &state, node)
                && let Some(pod) = state.to_mut().pods.get_mut(index)
            {
                pod.ips.clone_from(&endpoint.ips);
            }
        }
        state
    }

    /// True when [`Pending::fill_state`] gives `endpoint`'s addresses to a pod of
    /// `state`: the pod is compiled with its real policy, not deny-all.
    pub fn names_pod(endpoint: &PendingEndpoint, state: &State, node: &str) -> bool {
        fillable(endpoint, state, node).is_some()
    }

    /// Adds a deny-all endpoint for every pending address `image` has no local
    /// endpoint for. Returns how many it added.
    pub fn merge_into(&self, image: &mut Image) -> usize {
        let mut added = 0;
        for endpoint in self.by_container.values() {
            let (namespace, pod) = endpoint.names();
            for ip in &endpoint.ips {
                if image.endpoints.contains_key(ip) {
                    continue;
                }
                image.endpoints.insert(*ip, deny_all(&namespace, &pod));
                added += 1;
            }
        }
        added
    }
}

/// What the agent sees at a pod's network namespace path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsView {
    /// The path exists and is not the agent's own network namespace.
    Present,
    /// Nothing at the path.
    Gone,
    /// No path, or one that resolves to the agent's own network namespace (a
    /// `/proc/PID/ns/net` of another PID namespace names some process of the agent's):
    /// it says nothing about the pod.
    Unseen,
}

/// Looks at `path` from this process: [`NetnsView`]. An error other than "not
/// found" (permissions) is `Unseen`: an entry is never dropped on a doubt.
pub fn look_at_netns(path: &str) -> NetnsView {
    use std::os::unix::fs::MetadataExt as _;
    if path.is_empty() {
        return NetnsView::Unseen;
    }
    match std::fs::metadata(path) {
        Ok(meta) => {
            let own = std::fs::metadata("/proc/self/ns/net").ok();
            if own.is_some_and(|own| own.dev() == meta.dev() && own.ino() == meta.ino()) {
                NetnsView::Unseen
            } else {
                NetnsView::Present
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => NetnsView::Gone,
        Err(_) => NetnsView::Unseen,
    }
}

/// An endpoint isolated both ways under endpoint policy 0 (which has no entries).
pub fn deny_all(namespace: &str, pod: &str) -> Endpoint {
    Endpoint {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        policy: 0,
        isolated_ingress: true,
        isolated_egress: true,
        audit_ingress: false,
        audit_egress: false,
        identity: IDENTITY_WORLD,
    }
}

/// True for the endpoints [`Pending::merge_into`] adds: compile gives policy 0 only
/// to endpoints isolated in no direction.
pub fn is_deny_all(endpoint: &Endpoint) -> bool {
    endpoint.policy == 0 && endpoint.isolated_ingress && endpoint.isolated_egress
}

/// Whether every address in `ips` is enforced now: in the live ENDPOINTS map with
/// the image's policy and flags, bound to an interface, and that interface attached.
/// `Ok` says how (deny-all if any address is); `Err` says what is missing.
pub fn programmed(
    ips: &[IpAddr],
    image: &Image,
    live: &BTreeMap<IpAddr, EndpointValue>,
    attached: impl Fn(u32) -> bool,
) -> Result<Enforcement, String> {
    if ips.is_empty() {
        return Err("the request names no address".to_owned());
    }
    let mut enforcement = Enforcement::Policy;
    for ip in ips.iter().map(|ip| canonical_addr(*ip)) {
        let Some(wanted) = image.endpoints.get(&ip) else {
            return Err(format!("{ip} is no endpoint of this node's image"));
        };
        let Some(value) = live.get(&ip) else {
            return Err(format!("{ip} is not in the endpoint map yet"));
        };
        let mut flags = 0;
        if wanted.isolated_ingress {
            flags |= EP_ISOLATED_INGRESS;
        }
        if wanted.isolated_egress {
            flags |= EP_ISOLATED_EGRESS;
        }
        if value.policy != wanted.policy || value.flags & (EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS) != flags {
            return Err(format!("{ip}'s endpoint entry is not the compiled one yet"));
        }
        if value.ifindex == 0 {
            return Err(format!(
                "{ip} is not bound to an interface yet (not seen behind a managed interface)"
            ));
        }
        if !attached(value.ifindex) {
            return Err(format!("{ip}'s interface (index {}) is not attached yet", value.ifindex));
        }
        if is_deny_all(wanted) {
            enforcement = Enforcement::DefaultDeny;
        }
    }
    Ok(enforcement)
}

#[cfg(test)]
#[path = "pending_tests.rs"]
mod tests;
