//! Pods the CNI plugin announced (an ADD) before, or without, the cluster state
//! naming them with an address: an input of the compile like the state itself.
//!
//! - A pod the state knows by name (on this node, no address yet: the usual order on
//!   a cluster, where the kubelet reports the address only after the ADD) gets the
//!   announced addresses, so it is compiled with its real policy at once and other
//!   pods' policies see its identity ([`fill_state`]).
//! - Every other announced address becomes an endpoint isolated in both directions
//!   with endpoint policy 0, which has no POLICY entries: everything it sends or
//!   receives (new flows) is dropped until the pod appears in the state
//!   ([`announce`]). `announce` is also the engine's incremental step for one more
//!   such announcement: applied to a compiled image it gives what a compile with that
//!   announcement gives.

use std::borrow::Cow;
use std::net::IpAddr;

use netfence_common::IDENTITY_WORLD;

use crate::change::find_sorted;
use crate::image::{Endpoint, Image};
use crate::model::{Pod, PodPhase, State};

/// One announced container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    /// The pod the plugin named (namespace, name), when it could.
    pub pod: Option<(String, String)>,
    /// The names its deny-all endpoint carries: the pod's, or the plugin's stand-in.
    pub namespace: String,
    pub name: String,
    /// Canonical addresses.
    pub ips: Vec<IpAddr>,
}

/// True when `pod` takes the addresses an announcement naming it gives: it is
/// scheduled to `node`, has no address yet, is not host-network and has not
/// terminated.
pub(crate) fn takes_addresses(pod: &Pod, node: &str) -> bool {
    pod.node_name.as_deref() == Some(node)
        && pod.ips.is_empty()
        && !pod.host_network
        && !matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed)
}

/// The index in `state.pods` (sorted by namespace and name) of the pod `announced`
/// names, when it takes the addresses (see [`takes_addresses`]).
fn fillable(announced: &Announced, state: &State, node: &str) -> Option<usize> {
    let (namespace, name) = announced.pod.as_ref()?;
    let index = find_sorted(&state.pods, (namespace, name)).ok()?;
    takes_addresses(&state.pods[index], node).then_some(index)
}

/// True when [`fill_state`] gives `announced`'s addresses to a pod of `state`: the
/// pod is compiled with its real policy, not deny-all.
pub fn names_pod(announced: &Announced, state: &State, node: &str) -> bool {
    fillable(announced, state, node).is_some()
}

/// `state` with the announced addresses on the pods they name (see [`fillable`]).
/// Borrowed when no pod changes.
pub fn fill_state<'a>(state: &'a State, node: &str, announced: &[Announced]) -> Cow<'a, State> {
    let mut state = Cow::Borrowed(state);
    for one in announced {
        if let Some(index) = fillable(one, &state, node)
            && let Some(pod) = state.to_mut().pods.get_mut(index)
        {
            pod.ips.clone_from(&one.ips);
        }
    }
    state
}

/// [`fill_state`] of one pod: gives `pod` the addresses of the announcements naming
/// it, in order, while it takes them. True when one did.
pub(crate) fn fill_pod(pod: &mut Pod, node: &str, announced: &[Announced]) -> bool {
    let mut filled = false;
    for one in announced {
        let names = one
            .pod
            .as_ref()
            .is_some_and(|(namespace, name)| *namespace == pod.namespace && *name == pod.name);
        if names && takes_addresses(pod, node) {
            pod.ips.clone_from(&one.ips);
            filled = true;
        }
    }
    filled
}

/// Adds a deny-all endpoint for every announced address `image` has no local
/// endpoint for, audited both ways when the node audits (`--mode audit`). Returns how
/// many it added.
pub fn announce(image: &mut Image, announced: &[Announced], audit_all: bool) -> usize {
    let mut added = 0;
    for one in announced {
        for ip in &one.ips {
            if image.endpoints.contains_key(ip) {
                continue;
            }
            let mut endpoint = deny_all(&one.namespace, &one.name);
            endpoint.audit_ingress = audit_all;
            endpoint.audit_egress = audit_all;
            image.endpoints.insert(*ip, endpoint);
            added += 1;
        }
    }
    added
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

/// True for the endpoints [`announce`] adds: compile gives policy 0 only to
/// endpoints isolated in no direction.
pub fn is_deny_all(endpoint: &Endpoint) -> bool {
    endpoint.policy == 0 && endpoint.isolated_ingress && endpoint.isolated_egress
}
