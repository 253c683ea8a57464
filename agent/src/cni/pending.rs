//! Pods the CNI plugin announced (ADD) and has not removed (DEL): the pending set the
//! agent keeps (and saves across restarts), handed to the policy engine as its
//! `announced` input. What the engine makes of it — a pod the state names gets the
//! announced addresses and its real policy, any other address a deny-all endpoint —
//! is `netfence_policy::compile::announced`.
//!
//! Then [`programmed`] says when an ADD may be answered: every address is in the live
//! ENDPOINTS map as the image wants it, bound to an interface the programs are
//! attached to.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netfence_cni::protocol::{Enforcement, Request};
use netfence_common::EndpointValue;
pub use netfence_policy::compile::announced::{self, Announced, deny_all, is_deny_all, names_pod};

use crate::image::{Image, canonical_addr};

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

    /// What the policy engine reads of this container (see [`Pending::announced`]).
    pub fn announced(&self) -> Announced {
        let (namespace, name) = self.names();
        Announced {
            pod: self.namespace.clone().zip(self.pod.clone()),
            namespace,
            name,
            ips: self.ips.clone(),
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
        self.by_container
            .insert(endpoint.container_id.clone(), endpoint);
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
        let gone: Vec<PendingEndpoint> = gone
            .iter()
            .filter_map(|id| self.by_container.remove(id))
            .collect();
        changed |= !gone.is_empty();
        (gone, changed)
    }

    /// `state` with the plugin's addresses on the pods it names that are scheduled
    /// to `node`, have no address yet, are not host-network and have not terminated.
    /// Borrowed when no pod changes.
    /// What the policy engine reads of the pending set: each container's pod (if
    /// named), the names of its deny-all endpoint, and its addresses.
    pub fn announced(&self) -> Vec<Announced> {
        self.by_container
            .values()
            .map(PendingEndpoint::announced)
            .collect()
    }

    /// Adds the deny-all endpoints of the pending addresses `image` has no endpoint
    /// for ([`announced::announce`]); returns how many.
    pub fn merge_into(&self, image: &mut Image, audit_all: bool) -> usize {
        announced::announce(image, &self.announced(), audit_all)
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
        if value.policy != wanted.policy || value.flags != wanted.flags() {
            return Err(format!("{ip}'s endpoint entry is not the compiled one yet"));
        }
        if value.ifindex == 0 {
            return Err(format!(
                "{ip} is not bound to an interface yet (not seen behind a managed interface)"
            ));
        }
        if !attached(value.ifindex) {
            return Err(format!(
                "{ip}'s interface (index {}) is not attached yet",
                value.ifindex
            ));
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
