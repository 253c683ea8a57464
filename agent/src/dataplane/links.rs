//! Interfaces, seen through rtnetlink: which ones exist in the agent's network
//! namespace, which ones netfence should manage (`--interfaces` globs, `--bridge`
//! ports), change notifications, and the addresses on the far end of a veth.
//!
//! [`bind`] decides which host-side interface each pod address belongs to (the
//! anti-spoofing and port checks of the TC programs): from the CNI ADD records first
//! (netfence-cni's, then the container runtime's result cache: the cluster's word,
//! the pod's IPs and its host veth), and only for
//! addresses no record names from what the pods show — the far end's addresses,
//! read by an RTM_GETADDR dump with `IFA_TARGET_NETNSID` without entering the peer's
//! network namespace (Linux ≥ 4.20, strict checking on) — and then only on an
//! interface not known to be another pod's, and only when exactly one is left.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::TryStreamExt as _;
use globset::{Glob, GlobSet, GlobSetBuilder};
use netlink_packet_route::address::{AddressAttribute, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::Handle;

use super::owners::Owner;

/// Errors talking to rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("rtnetlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("rtnetlink request: {0}")]
    Request(#[from] rtnetlink::Error),
    #[error("invalid interface glob {glob:?}: {source}")]
    Glob {
        glob: String,
        source: globset::Error,
    },
}

/// One interface of the agent's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    /// Bridge (or other controller) it is enslaved to.
    pub controller: Option<u32>,
    /// For a veth whose peer lives in another namespace: that namespace's id here.
    pub peer_netns: Option<i32>,
    /// Index of the peer interface (in `peer_netns`).
    pub peer_index: Option<u32>,
}

/// Which interfaces netfence attaches to.
#[derive(Clone, Debug)]
pub struct Selection {
    globs: GlobSet,
    bridge: Option<String>,
}

impl Selection {
    pub fn new(globs: &[String], bridge: Option<String>) -> Result<Self, LinkError> {
        let mut builder = GlobSetBuilder::new();
        for glob in globs {
            let parsed = Glob::new(glob).map_err(|source| LinkError::Glob {
                glob: glob.clone(),
                source,
            })?;
            builder.add(parsed);
        }
        let globs = builder.build().map_err(|source| LinkError::Glob {
            glob: globs.join(","),
            source,
        })?;
        Ok(Self { globs, bridge })
    }

    /// The managed interfaces among `all`: names matching a glob, and every port of the
    /// bridge. The bridge itself and loopback are never managed.
    pub fn managed<'a>(&self, all: &'a [Interface]) -> Vec<&'a Interface> {
        let bridge_index = self
            .bridge
            .as_ref()
            .and_then(|name| all.iter().find(|i| &i.name == name).map(|i| i.index));
        all.iter()
            .filter(|i| i.name != "lo" && Some(&i.name) != self.bridge.as_ref())
            .filter(|i| {
                self.globs.is_match(&i.name)
                    || (bridge_index.is_some() && i.controller == bridge_index)
            })
            .collect()
    }
}

/// A rtnetlink connection for requests (strict checking, needed for target-netnsid dumps).
pub fn connect() -> Result<Handle, LinkError> {
    let (connection, handle, _) = rtnetlink::new_connection_with_strict_check()?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A receiver that yields whenever a link appears, changes or goes away.
pub fn subscribe() -> Result<tokio::sync::mpsc::Receiver<()>, LinkError> {
    use futures::StreamExt as _;
    let (connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])?;
    tokio::spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            // A full channel already holds a pending notification: nothing is lost.
            if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                break;
            }
        }
    });
    Ok(rx)
}

/// Every interface of this namespace.
pub async fn list(handle: &Handle) -> Result<Vec<Interface>, LinkError> {
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    while let Some(message) = links.try_next().await? {
        if let Some(interface) = interface_of(&message) {
            out.push(interface);
        }
    }
    out.sort_by_key(|i| i.index);
    Ok(out)
}

fn interface_of(message: &LinkMessage) -> Option<Interface> {
    let mut name = None;
    let mut controller = None;
    let mut peer_netns = None;
    let mut peer_index = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Controller(c) => controller = Some(*c),
            LinkAttribute::LinkNetNsId(id) => peer_netns = Some(*id),
            LinkAttribute::Link(l) => peer_index = Some(*l),
            _ => {}
        }
    }
    Some(Interface {
        index: message.header.index,
        name: name?,
        controller,
        peer_netns,
        peer_index,
    })
}

/// The addresses (global and site scope, both families) configured on a veth's peer,
/// in the peer's namespace. Empty when the interface has no peer in another namespace.
pub async fn peer_addresses(
    handle: &Handle,
    interface: &Interface,
) -> Result<Vec<IpAddr>, LinkError> {
    let (Some(netns), Some(peer)) = (interface.peer_netns, interface.peer_index) else {
        return Ok(Vec::new());
    };
    let mut request = handle.address().get();
    request
        .message_mut()
        .attributes
        .push(AddressAttribute::TargetNetNsId(netns));
    let mut addresses = request.execute();
    let mut out = Vec::new();
    while let Some(message) = addresses.try_next().await? {
        if message.header.index != peer
            || !matches!(
                message.header.scope,
                AddressScope::Universe | AddressScope::Site
            )
        {
            continue;
        }
        out.extend(message_address(&message));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The node's own addresses: global and site scope, both families, on every interface
/// of the agent's namespace (loopback's are host scope and left out).
pub async fn node_addresses(handle: &Handle) -> Result<Vec<IpAddr>, LinkError> {
    let mut addresses = handle.address().get().execute();
    let mut out = Vec::new();
    while let Some(message) = addresses.try_next().await? {
        if matches!(
            message.header.scope,
            AddressScope::Universe | AddressScope::Site
        ) {
            out.extend(message_address(&message));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// An address message's own address (`IFA_LOCAL`, else `IFA_ADDRESS`).
fn message_address(message: &netlink_packet_route::address::AddressMessage) -> Option<IpAddr> {
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    local.or(address)
}

/// One managed interface's peer-address read: `None` when it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRead {
    pub index: u32,
    pub name: String,
    pub addresses: Option<Vec<IpAddr>>,
}

/// Reads the peer addresses of every managed interface; the failures are also
/// described in the returned messages.
pub async fn peer_reads(handle: &Handle, managed: &[&Interface]) -> (Vec<PeerRead>, Vec<String>) {
    let mut reads = Vec::new();
    let mut problems = Vec::new();
    for interface in managed {
        let addresses = match peer_addresses(handle, interface).await {
            Ok(addresses) => Some(addresses),
            Err(error) => {
                problems.push(format!(
                    "cannot read the addresses behind {} (its previous bindings are kept): {error}",
                    interface.name
                ));
                None
            }
        };
        reads.push(PeerRead {
            index: interface.index,
            name: interface.name.clone(),
            addresses,
        });
    }
    (reads, problems)
}

/// A pod the netfence-cni plugin announced (ADD, kept until DEL), or an ADD result of
/// the runtime's CNI cache: its addresses and the host-side interfaces of its CNI
/// result (the veth, and the bridge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniRecord {
    /// The pod (as its deny-all endpoint names it while the state lacks it).
    pub owner: Owner,
    pub ips: Vec<IpAddr>,
    pub host_interfaces: Vec<String>,
}

/// The bindings [`bind`] chose, and what it could not decide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bound {
    /// Address → host interface index.
    pub bindings: BTreeMap<IpAddr, u32>,
    pub problems: Vec<BindProblem>,
}

/// An address [`bind`] found claimed by more than its owner, or could not bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindProblem {
    /// `address` belongs to `owner` and is bound to `bound`; the pods behind `others`
    /// show it too (a pod put an address that is not its own on its interface).
    ClaimedElsewhere {
        address: IpAddr,
        owner: Option<Owner>,
        bound: String,
        others: Vec<String>,
    },
    /// `address` is shown behind `interfaces` and no CNI record, and no other
    /// address, tells which one is its pod's: unbound (its endpoint fails closed
    /// both ways) while contested. Also an address shown only behind interfaces
    /// that are another pod's.
    Contested {
        address: IpAddr,
        owner: Option<Owner>,
        interfaces: Vec<String>,
    },
    /// A CNI record names `address`, but not exactly one of its host interfaces is
    /// managed here (`named`): unbound, and no other interface may take it.
    NoHostInterface {
        address: IpAddr,
        owner: Owner,
        named: Vec<String>,
    },
}

fn pod_name(owner: Option<&Owner>) -> String {
    owner.map_or_else(
        || "no pod".to_owned(),
        |o| format!("{}/{}", o.namespace, o.pod),
    )
}

impl std::fmt::Display for BindProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClaimedElsewhere {
                address,
                owner,
                bound,
                others,
            } => write!(
                f,
                "address {address} belongs to {} and is bound to {bound}, but is also shown behind {}: ignored there",
                pod_name(owner.as_ref()),
                others.join(", ")
            ),
            Self::Contested {
                address,
                owner,
                interfaces,
            } => write!(
                f,
                "address {address} ({}) is shown behind {} and nothing tells which is its pod's: not bound (its endpoint drops both ways) while contested",
                pod_name(owner.as_ref()),
                interfaces.join(", ")
            ),
            Self::NoHostInterface {
                address,
                owner,
                named,
            } => write!(
                f,
                "address {address} belongs to {} (CNI ADD), whose host interfaces {named:?} are not exactly one managed interface: not bound (its endpoint drops both ways)",
                pod_name(Some(owner))
            ),
        }
    }
}

/// Binds pod addresses to host interfaces, from the cluster first:
///
/// 1. A CNI record binds each of its addresses to the one managed interface among
///    its host interfaces, whoever else shows the address (none or several managed:
///    the address stays unbound, and no other interface takes it). That interface
///    is then known to be the record's pod's.
/// 2. An address no CNI record names binds to the interface whose peer shows it,
///    among those not known to be another pod's — only when exactly one is left.
///    An interface is known to be pod P's when a CNI record says so, or when it
///    alone shows an address `owners` (the cluster state) gives P. An address shown
///    behind several interfaces that nothing tells apart is unbound while contested.
///    There is no first-claimer stickiness: a pod that adds another pod's address to
///    itself never keeps its binding once that pod's veth shows it, and does not get
///    it at all while the interface shows one of its own addresses.
///
/// An interface whose peer read failed counts as still showing the addresses
/// `previous` bound to it (a failed read does not unbind a pod).
pub fn bind(
    previous: &BTreeMap<IpAddr, u32>,
    cni: &[CniRecord],
    reads: &[PeerRead],
    owners: &BTreeMap<IpAddr, Owner>,
) -> Bound {
    let mut shown: BTreeMap<IpAddr, Vec<&PeerRead>> = BTreeMap::new();
    for read in reads {
        let kept: Vec<IpAddr>;
        let addresses = match &read.addresses {
            Some(addresses) => addresses,
            None => {
                kept = previous
                    .iter()
                    .filter(|(_, i)| **i == read.index)
                    .map(|(a, _)| *a)
                    .collect();
                &kept
            }
        };
        for address in addresses {
            let behind = shown.entry(*address).or_default();
            if !behind.iter().any(|r| r.index == read.index) {
                behind.push(read);
            }
        }
    }
    let others_showing = |address: &IpAddr, bound: u32| -> Vec<String> {
        shown
            .get(address)
            .into_iter()
            .flatten()
            .filter(|r| r.index != bound)
            .map(|r| r.name.clone())
            .collect()
    };
    let mut out = Bound::default();
    // Interface → the pods it is known to belong to.
    let mut pods_of: BTreeMap<u32, BTreeSet<&Owner>> = BTreeMap::new();
    let mut claimed = BTreeSet::new();
    for record in cni.iter().filter(|r| !r.host_interfaces.is_empty()) {
        let host: Vec<&PeerRead> = reads
            .iter()
            .filter(|r| record.host_interfaces.contains(&r.name))
            .collect();
        if let [only] = host[..] {
            pods_of.entry(only.index).or_default().insert(&record.owner);
        }
        for address in &record.ips {
            if !claimed.insert(*address) {
                continue; // one record per address (`Pending::add`); the first wins
            }
            let [only] = host[..] else {
                out.problems.push(BindProblem::NoHostInterface {
                    address: *address,
                    owner: record.owner.clone(),
                    named: record.host_interfaces.clone(),
                });
                continue;
            };
            out.bindings.insert(*address, only.index);
            let others = others_showing(address, only.index);
            if !others.is_empty() {
                out.problems.push(BindProblem::ClaimedElsewhere {
                    address: *address,
                    owner: Some(record.owner.clone()),
                    bound: only.name.clone(),
                    others,
                });
            }
        }
    }
    let unclaimed: Vec<(&IpAddr, &Vec<&PeerRead>)> = shown
        .iter()
        .filter(|(a, _)| !claimed.contains(*a))
        .collect();
    for (address, behind) in &unclaimed {
        if let ([only], Some(owner)) = (&behind[..], owners.get(*address)) {
            pods_of.entry(only.index).or_default().insert(owner);
        }
    }
    for (address, behind) in unclaimed {
        let owner = owners.get(address);
        let theirs: Vec<&PeerRead> = behind
            .iter()
            .filter(|r| {
                owner.is_none_or(|owner| {
                    pods_of
                        .get(&r.index)
                        .is_none_or(|pods| pods.iter().all(|p| *p == owner))
                })
            })
            .copied()
            .collect();
        match theirs[..] {
            [only] => {
                out.bindings.insert(*address, only.index);
                let others = others_showing(address, only.index);
                if !others.is_empty() {
                    out.problems.push(BindProblem::ClaimedElsewhere {
                        address: *address,
                        owner: owner.cloned(),
                        bound: only.name.clone(),
                        others,
                    });
                }
            }
            _ => out.problems.push(BindProblem::Contested {
                address: *address,
                owner: owner.cloned(),
                interfaces: behind.iter().map(|r| r.name.clone()).collect(),
            }),
        }
    }
    out
}

#[cfg(test)]
#[path = "links_tests.rs"]
mod bind_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(index: u32, name: &str, controller: Option<u32>) -> Interface {
        Interface {
            index,
            name: name.to_owned(),
            controller,
            peer_netns: None,
            peer_index: None,
        }
    }

    #[test]
    fn selection_takes_globs_and_bridge_ports_but_never_the_bridge_or_lo() {
        let all = vec![
            iface(1, "lo", None),
            iface(2, "cni0", None),
            iface(3, "veth1234", Some(2)),
            iface(4, "veth9999", None),
            iface(5, "eth0", None),
            iface(6, "nfp-a", None),
        ];
        let selection =
            Selection::new(&["nfp-*".to_owned()], Some("cni0".to_owned())).expect("valid glob");
        let names: Vec<_> = selection
            .managed(&all)
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, vec!["veth1234", "nfp-a"]);

        let only_glob =
            Selection::new(&["veth*".to_owned(), "lo".to_owned()], None).expect("valid");
        let names: Vec<_> = only_glob
            .managed(&all)
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, vec!["veth1234", "veth9999"]);
    }

    #[test]
    fn invalid_glob_names_the_glob() {
        let error = Selection::new(&["veth[".to_owned()], None).expect_err("invalid glob");
        assert!(error.to_string().contains("veth["), "{error}");
    }
}
