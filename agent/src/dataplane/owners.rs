//! Who owns each pod address, cluster-wide, and which addresses changed owner
//! between two compiles: their CONNTRACK entries are purged before the sync that
//! programs the new owner, so no flow of a pod that went (or lost its address)
//! carries over to the pod that gets the address next (a pod's entries name its
//! address as `local` at its own veth and as `remote` at its peers' veths).
//!
//! The owner is the pod by namespace and name: the local endpoints of the image
//! (which include the deny-all endpoints of pods only the CNI plugin announced) and
//! every live pod of the state (remote pods too). Identity is left out on purpose: a
//! label change gives a pod a new identity without making it another pod, and its
//! connections stay (`--existing-flows` decides what a policy change does to them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::image::{Image, canonical_addr};
use crate::model::State;

/// The pod an address belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub namespace: String,
    pub pod: String,
}

/// Address → owner for every live pod address of `state` (the first pod in state
/// order when two claim one), then the local endpoints of `image` over them (the
/// compile's choice on this node).
pub fn owners(state: &State, image: &Image) -> BTreeMap<IpAddr, Owner> {
    let mut out = BTreeMap::new();
    for pod in state.pods.iter().filter(|p| p.is_live_endpoint()) {
        for ip in &pod.ips {
            out.entry(canonical_addr(*ip)).or_insert_with(|| Owner {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
            });
        }
    }
    for (addr, endpoint) in &image.endpoints {
        out.insert(
            *addr,
            Owner {
                namespace: endpoint.namespace.clone(),
                pod: endpoint.pod.clone(),
            },
        );
    }
    out
}

/// Addresses whose owner in `previous` is gone or another pod in `next`: the
/// addresses to purge from CONNTRACK. An address that had no owner (a new pod's, or
/// one that was world) keeps its entries.
pub fn moved(
    previous: &BTreeMap<IpAddr, Owner>,
    next: &BTreeMap<IpAddr, Owner>,
) -> BTreeSet<IpAddr> {
    previous
        .iter()
        .filter(|(addr, owner)| next.get(*addr) != Some(*owner))
        .map(|(addr, _)| *addr)
        .collect()
}

/// Brings `owners` to the owners `changed` gives (address → its owner now, `None`:
/// none) and returns the addresses [`moved`] would: those whose owner went or is
/// another pod now.
pub fn update(
    owners: &mut BTreeMap<IpAddr, Owner>,
    changed: Vec<(IpAddr, Option<Owner>)>,
) -> BTreeSet<IpAddr> {
    let mut moved = BTreeSet::new();
    for (addr, owner) in changed {
        let previous = match &owner {
            Some(owner) => owners.insert(addr, owner.clone()),
            None => owners.remove(&addr),
        };
        if previous.is_some() && previous != owner {
            moved.insert(addr);
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Pod, PodPhase};

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn pod(namespace: &str, name: &str, ips: &[&str], phase: PodPhase) -> Pod {
        Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels: Default::default(),
            node_name: Some("n1".to_owned()),
            ips: ips.iter().map(|a| ip(a)).collect(),
            host_network: false,
            phase,
            ports: Vec::new(),
        }
    }

    fn owner(namespace: &str, pod: &str) -> Owner {
        Owner {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
        }
    }

    #[test]
    fn owners_are_live_pods_everywhere_and_the_local_endpoints_over_them() {
        let state = State {
            pods: vec![
                pod("x", "a", &["198.18.0.2", "fd00::2"], PodPhase::Running),
                pod("x", "done", &["198.18.0.3"], PodPhase::Succeeded),
                pod("y", "remote", &["::ffff:198.18.1.4"], PodPhase::Running),
            ],
            ..State::default()
        };
        let mut image = Image::default();
        image
            .endpoints
            .insert(ip("198.18.0.9"), crate::cni::pending::deny_all("cni", "c1"));
        let got = owners(&state, &image);
        assert_eq!(
            got,
            BTreeMap::from([
                (ip("198.18.0.2"), owner("x", "a")),
                (ip("fd00::2"), owner("x", "a")),
                (ip("198.18.1.4"), owner("y", "remote")),
                (ip("198.18.0.9"), owner("cni", "c1")),
            ]),
            "a terminated pod owns nothing; v4-mapped is IPv4"
        );
    }

    #[test]
    fn addresses_that_vanish_or_change_pod_are_purged_and_nothing_else() {
        let before = BTreeMap::from([
            (ip("198.18.0.2"), owner("x", "p")), // P deleted, Q gets its address
            (ip("198.18.0.3"), owner("x", "gone")), // deleted, address free
            (ip("198.18.0.4"), owner("x", "stays")), // unchanged
            (ip("198.18.1.5"), owner("y", "remote")), // a remote pod replaced by one of another namespace
            (ip("fd00::6"), owner("cni", "c1")),      // the CNI's deny-all becomes the named pod
        ]);
        let after = BTreeMap::from([
            (ip("198.18.0.2"), owner("x", "q")),
            (ip("198.18.0.4"), owner("x", "stays")),
            (ip("198.18.0.7"), owner("x", "new")), // a new address keeps what it had
            (ip("198.18.1.5"), owner("z", "remote")),
            (ip("fd00::6"), owner("x", "named")),
        ]);
        assert_eq!(
            moved(&before, &after),
            BTreeSet::from([
                ip("198.18.0.2"),
                ip("198.18.0.3"),
                ip("198.18.1.5"),
                ip("fd00::6")
            ])
        );
        assert!(moved(&after, &after).is_empty());
        assert!(
            moved(&BTreeMap::new(), &after).is_empty(),
            "the first compile purges nothing"
        );
    }

    #[test]
    fn an_update_of_the_changed_addresses_purges_what_moved_would() {
        let before = BTreeMap::from([
            (ip("198.18.0.2"), owner("x", "p")),
            (ip("198.18.0.3"), owner("x", "gone")),
            (ip("198.18.0.4"), owner("x", "stays")),
        ]);
        let changed = vec![
            (ip("198.18.0.2"), Some(owner("x", "q"))),
            (ip("198.18.0.3"), None),
            (ip("198.18.0.4"), Some(owner("x", "stays"))), // named, unchanged
            (ip("198.18.0.7"), Some(owner("x", "new"))),
            (ip("198.18.0.8"), None), // named, never owned
        ];
        let mut owners = before.clone();
        let purged = update(&mut owners, changed);
        let after = BTreeMap::from([
            (ip("198.18.0.2"), owner("x", "q")),
            (ip("198.18.0.4"), owner("x", "stays")),
            (ip("198.18.0.7"), owner("x", "new")),
        ]);
        assert_eq!(owners, after);
        assert_eq!(purged, moved(&before, &after));
        assert_eq!(purged, BTreeSet::from([ip("198.18.0.2"), ip("198.18.0.3")]));
    }
}
