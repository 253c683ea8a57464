//! Interfaces, seen through rtnetlink: which ones exist in the agent's network
//! namespace, which ones netfence should manage (`--interfaces` globs, `--bridge`
//! ports), change notifications, and the addresses on the far end of a veth.
//!
//! The far end's addresses bind a pod IP to its host-side interface (anti-spoofing):
//! an RTM_GETADDR dump with `IFA_TARGET_NETNSID` reads the addresses of the peer's
//! network namespace without entering it (Linux ≥ 4.20, strict checking on).

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt as _;
use globset::{Glob, GlobSet, GlobSetBuilder};
use netlink_packet_route::address::{AddressAttribute, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::Handle;

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
pub async fn peer_addresses(handle: &Handle, interface: &Interface) -> Result<Vec<IpAddr>, LinkError> {
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
            || !matches!(message.header.scope, AddressScope::Universe | AddressScope::Site)
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
        if matches!(message.header.scope, AddressScope::Universe | AddressScope::Site) {
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

/// Pod address → the host-side interfaces whose peer carries it, for every managed
/// interface whose peer addresses could be read, and the interfaces that could not.
pub async fn candidates(
    handle: &Handle,
    managed: &[&Interface],
) -> (BTreeMap<IpAddr, Vec<u32>>, Vec<String>) {
    let mut seen: BTreeMap<IpAddr, Vec<u32>> = BTreeMap::new();
    let mut problems = Vec::new();
    for interface in managed {
        match peer_addresses(handle, interface).await {
            Ok(addresses) => {
                for address in addresses {
                    seen.entry(address).or_default().push(interface.index);
                }
            }
            Err(error) => problems.push(format!(
                "cannot read the addresses behind {}: {error}",
                interface.name
            )),
        }
    }
    (seen, problems)
}

/// Binds each address to one interface. Bindings are sticky: an address stays bound
/// to the interface it was first seen behind for as long as that interface still
/// carries it, so a pod that puts another pod's address on itself does not take it
/// over (nor unbind it). An address that appears behind several interfaces at once
/// with no earlier binding is left unbound and reported: there is no telling which
/// pod owns it.
pub fn bind(
    previous: &BTreeMap<IpAddr, u32>,
    candidates: &BTreeMap<IpAddr, Vec<u32>>,
) -> (BTreeMap<IpAddr, u32>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (address, indexes) in candidates {
        match (previous.get(address), &indexes[..]) {
            (Some(kept), _) if indexes.contains(kept) => {
                out.insert(*address, *kept);
                if indexes.len() > 1 {
                    problems.push(format!(
                        "address {address} also appears behind interfaces {indexes:?}; it stays bound to {kept}"
                    ));
                }
            }
            (_, [only]) => {
                out.insert(*address, *only);
            }
            _ => problems.push(format!(
                "address {address} is behind several interfaces ({indexes:?}); not bound"
            )),
        }
    }
    (out, problems)
}

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
        let selection = Selection::new(&["nfp-*".to_owned()], Some("cni0".to_owned()))
            .expect("valid glob");
        let names: Vec<_> = selection.managed(&all).iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["veth1234", "nfp-a"]);

        let only_glob = Selection::new(&["veth*".to_owned(), "lo".to_owned()], None).expect("valid");
        let names: Vec<_> = only_glob.managed(&all).iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["veth1234", "veth9999"]);
    }

    #[test]
    fn bindings_are_sticky_against_an_address_claimed_by_a_second_interface() {
        let a: IpAddr = "198.18.0.10".parse().expect("ip");
        let c: IpAddr = "198.18.0.12".parse().expect("ip");
        let first = BTreeMap::from([(a, vec![3]), (c, vec![5])]);
        let (bound, problems) = bind(&BTreeMap::new(), &first);
        assert_eq!(bound, BTreeMap::from([(a, 3), (c, 5)]));
        assert!(problems.is_empty());

        // Pod behind interface 3 adds c's address to itself: c stays bound to 5.
        let claimed = BTreeMap::from([(a, vec![3]), (c, vec![3, 5])]);
        let (bound, problems) = bind(&bound, &claimed);
        assert_eq!(bound, BTreeMap::from([(a, 3), (c, 5)]));
        assert_eq!(problems.len(), 1, "{problems:?}");

        // c's interface goes away: the address moves to the one interface left.
        let moved = BTreeMap::from([(a, vec![3]), (c, vec![3])]);
        let (bound, _) = bind(&bound, &moved);
        assert_eq!(bound, BTreeMap::from([(a, 3), (c, 3)]));
    }

    #[test]
    fn an_address_seen_twice_with_no_history_is_not_bound() {
        let c: IpAddr = "198.18.0.12".parse().expect("ip");
        let (bound, problems) = bind(&BTreeMap::new(), &BTreeMap::from([(c, vec![3, 5])]));
        assert!(bound.is_empty());
        assert!(problems[0].contains("not bound"), "{problems:?}");
    }

    #[test]
    fn invalid_glob_names_the_glob() {
        let error = Selection::new(&["veth[".to_owned()], None).expect_err("invalid glob");
        assert!(error.to_string().contains("veth["), "{error}");
    }
}
