//! Identities: the IDENTITIES trie (address prefix → identity) and what each identity
//! stands for.
//!
//! The trie holds every live pod IP (/32, /128), every ipBlock cidr and every except.
//! Prefixes are nested or disjoint, so for an address `a` whose most specific prefix
//! in the set is `X`, "`a` is in ipBlock `B`" equals "`X` ⊆ cidr(B) and `X` ⊄ every
//! except of B": membership of every block is constant over the part of `X` the
//! trie resolves to `X`. An identity is therefore (pod group of `X` if `X` is a pod IP,
//! set of ipBlocks containing `X`); a rule naming an ipBlock expands to every identity
//! whose set contains it, pod identities included, and overlapping blocks need no
//! special case. A region with no pod and no block is `IDENTITY_WORLD`; such a prefix
//! is written (with value 0) only when a shorter prefix would otherwise give it a
//! block's identity, e.g. an except inside its cidr.
//!
//! The kernel stores IPv4 IPv4-mapped in one trie. An IPv6 prefix that covers
//! `::ffff:0:0/96` (such as `::/0`) would then cover every IPv4 address, so when one
//! exists `0.0.0.0/0` joins the set and IPv4 addresses resolve to IPv4 prefixes only.
//! IPv6 prefixes inside `::ffff:0:0/96` are left out (an ipBlock written in
//! IPv4-mapped form matches no traffic).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netfence_common::IDENTITY_WORLD;

use super::ids::{Fnv, IdAllocator, reserved_identity};
use super::ports::{NamedPorts, named_ports};
use crate::image::{IdentityInfo, canonical_addr};
use crate::model::{Labels, Peer, Pod, Policy, State};

/// Pods that are indistinguishable to every policy: same namespace, same labels, and
/// (when some egress rule names a port) the same named container ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodGroup {
    pub namespace: String,
    pub labels: Labels,
    /// `Some` only when some policy resolves named ports against peer pods.
    pub named_ports: Option<NamedPorts>,
}

impl PodGroup {
    /// The group of `pod`; `by_named_ports`: some policy resolves named ports
    /// against peer pods.
    pub fn of(pod: &Pod, by_named_ports: bool) -> PodGroup {
        PodGroup {
            namespace: pod.namespace.clone(),
            labels: pod.labels.clone(),
            named_ports: by_named_ports.then(|| named_ports(&pod.ports)),
        }
    }
}

/// An ipBlock in canonical form (network addresses, sorted excepts).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl Block {
    pub fn new(cidr: &IpNet, except: &[IpNet]) -> Block {
        let mut except: Vec<IpNet> = except.iter().map(IpNet::trunc).collect();
        except.sort();
        except.dedup();
        Block {
            cidr: cidr.trunc(),
            except,
        }
    }

    /// True when the whole of prefix `net` lies in this block.
    fn covers(&self, net: &IpNet) -> bool {
        self.cidr.contains(net) && !self.except.iter().any(|e| e.contains(net))
    }

    /// As written: `10.0.0.0/8` or `10.0.0.0/8 except 10.1.0.0/16,10.2.0.0/16`.
    pub fn text(&self) -> String {
        if self.except.is_empty() {
            return self.cidr.to_string();
        }
        let except: Vec<String> = self.except.iter().map(ToString::to_string).collect();
        format!("{} except {}", self.cidr, except.join(","))
    }
}

/// What one identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Description {
    pub group: Option<PodGroup>,
    /// `ns/name` of the Service whose ClusterIP this region is (a /32 or /128 that is
    /// no pod's address).
    pub service: Option<String>,
    /// Blocks containing the region.
    pub blocks: BTreeSet<Block>,
}

impl Description {
    pub fn hash(&self) -> u32 {
        let mut h = Fnv::default();
        match &self.group {
            Some(group) => {
                h.str("pod").str(&group.namespace);
                for (key, value) in &group.labels {
                    h.str(key).str(value);
                }
                if let Some(named) = &group.named_ports {
                    h.str("named-ports");
                    for (name, protocol, port) in named {
                        h.str(name).str(protocol.as_str()).u32(u32::from(*port));
                    }
                }
            }
            None => {
                h.str("net");
            }
        }
        if let Some(service) = &self.service {
            h.str("service").str(service);
        }
        h.str("blocks");
        for block in &self.blocks {
            h.str(&block.text());
        }
        h.finish()
    }
}

/// The identities of one compile.
#[derive(Debug, Default)]
pub struct Identities {
    /// IDENTITIES contents.
    pub trie: BTreeMap<IpNet, u32>,
    /// Every compiled identity (never `IDENTITY_WORLD`).
    pub described: BTreeMap<u32, Description>,
    /// `ns/pod` of the pods of each pod identity.
    /// (Sorted, unique: a vector, as most identities hold one or two pods.)
    pub pods: BTreeMap<u32, Vec<String>>,
    /// Identity of every live pod address (canonical form).
    pub of_pod_ip: BTreeMap<IpAddr, u32>,
    /// Pod identities by namespace: what a pod selector is evaluated over, so a
    /// rule's expansion costs the size of the namespaces it names, not the cluster.
    pub by_namespace: BTreeMap<String, BTreeSet<u32>>,
    /// The identities inside each block (pod identities included).
    pub by_block: BTreeMap<Block, BTreeSet<u32>>,
}

impl Identities {
    /// Builds the identities of `state`. `blocks` are the ipBlocks rules name;
    /// `group_by_named_ports` splits pod groups by their named container ports; `vips`
    /// (canonical ClusterIP → `ns/name`) each get an identity of their own (a pod's
    /// address is never a VIP: the pod wins).
    pub fn build(
        state: &State,
        blocks: &BTreeSet<Block>,
        group_by_named_ports: bool,
        vips: &BTreeMap<IpAddr, String>,
    ) -> Identities {
        // Pod IPs, first live pod wins when two claim one address.
        let mut pod_of_ip: BTreeMap<IpAddr, &Pod> = BTreeMap::new();
        for pod in live_pods(state) {
            for ip in &pod.ips {
                pod_of_ip.entry(canonical_addr(*ip)).or_insert(pod);
            }
        }

        let mut prefixes: BTreeSet<IpNet> = pod_of_ip.keys().map(|ip| IpNet::from(*ip)).collect();
        prefixes.extend(vips.keys().map(|ip| IpNet::from(*ip)));
        for block in blocks {
            prefixes.insert(block.cidr);
            prefixes.extend(block.except.iter().copied());
        }
        prefixes.retain(|net| !inside_v4_mapped(net));
        if prefixes.iter().any(covers_v4_mapped) {
            prefixes.insert(IpNet::V4(Ipv4Net::default()));
        }

        // The description of every prefix's region.
        let group_of = |pod: &Pod| PodGroup::of(pod, group_by_named_ports);
        let covering = Covering::new(blocks);
        let regions: BTreeMap<IpNet, Description> = prefixes
            .iter()
            .map(|net| {
                let is_host = net.prefix_len() == net.max_prefix_len();
                let group = if is_host {
                    pod_of_ip.get(&net.addr()).map(|pod| group_of(pod))
                } else {
                    None
                };
                let service = match (is_host, &group) {
                    (true, None) => vips.get(&net.addr()).cloned(),
                    _ => None,
                };
                (
                    *net,
                    Description {
                        group,
                        service,
                        blocks: covering.of(net),
                    },
                )
            })
            .collect();

        let mut allocator = IdAllocator::new(reserved_identity);
        let ids = allocator.allocate_all(
            regions
                .values()
                .filter(|d| d.group.is_some() || d.service.is_some() || !d.blocks.is_empty())
                .cloned(),
            Description::hash,
        );
        let id_of = |d: &Description| ids.get(d).copied().unwrap_or(IDENTITY_WORLD);

        let mut identities = Identities::default();
        for (description, id) in &ids {
            if let Some(group) = &description.group {
                identities
                    .by_namespace
                    .entry(group.namespace.clone())
                    .or_default()
                    .insert(*id);
            }
            for block in &description.blocks {
                identities
                    .by_block
                    .entry(block.clone())
                    .or_default()
                    .insert(*id);
            }
            identities.described.insert(*id, description.clone());
        }
        // Only non-host prefixes can contain another prefix.
        let containers: Vec<(&IpNet, u32)> = regions
            .iter()
            .filter(|(net, _)| net.prefix_len() < net.max_prefix_len())
            .map(|(n, d)| (n, id_of(d)))
            .collect();
        for (net, description) in &regions {
            let id = id_of(description);
            if id == IDENTITY_WORLD {
                // Written only to override a shorter, non-world prefix.
                let parent = containers
                    .iter()
                    .filter(|(other, _)| *other != net && mapped_contains(other, net))
                    .max_by_key(|(other, _)| mapped(other).1);
                if parent.is_none_or(|(_, parent_id)| *parent_id == IDENTITY_WORLD) {
                    continue;
                }
            }
            identities.trie.insert(*net, id);
        }
        for (ip, pod) in &pod_of_ip {
            if let Some(id) = identities.trie.get(&IpNet::from(*ip)) {
                identities.of_pod_ip.insert(*ip, *id);
                identities
                    .pods
                    .entry(*id)
                    .or_default()
                    .push(format!("{}/{}", pod.namespace, pod.name));
            }
        }
        for pods in identities.pods.values_mut() {
            pods.sort_unstable();
            pods.dedup();
        }
        identities
    }

    /// The IDENTITIES metadata of the image.
    pub fn info(&self) -> BTreeMap<u32, IdentityInfo> {
        self.described
            .iter()
            .map(|(id, description)| {
                let info = IdentityInfo {
                    pods: self.pods.get(id).map(|p| p.to_vec()).unwrap_or_default(),
                    ip_blocks: description.blocks.iter().map(Block::text).collect(),
                    service: description.service.clone(),
                };
                (*id, info)
            })
            .collect()
    }
}

/// The blocks containing a prefix, found by looking the prefix up truncated to each
/// length a block's cidr has (a handful), not by testing every block.
#[derive(Debug, Default)]
pub struct Covering {
    /// Block cidr → the blocks with that cidr.
    by_cidr: BTreeMap<IpNet, Vec<Block>>,
    /// The distinct cidr prefix lengths, per family (IPv4, IPv6).
    lengths: [BTreeSet<u8>; 2],
}

impl Covering {
    pub fn new(blocks: &BTreeSet<Block>) -> Self {
        let mut by_cidr: BTreeMap<IpNet, Vec<Block>> = BTreeMap::new();
        let mut lengths = [BTreeSet::new(), BTreeSet::new()];
        for block in blocks {
            by_cidr.entry(block.cidr).or_default().push(block.clone());
            lengths[usize::from(matches!(block.cidr, IpNet::V6(_)))]
                .insert(block.cidr.prefix_len());
        }
        Covering { by_cidr, lengths }
    }

    /// Every block containing the whole of `net` (same family).
    pub fn of(&self, net: &IpNet) -> BTreeSet<Block> {
        let family = usize::from(matches!(net, IpNet::V6(_)));
        self.lengths[family]
            .iter()
            .take_while(|len| **len <= net.prefix_len())
            .filter_map(|len| {
                let cidr = match net {
                    IpNet::V4(v4) => Ipv4Net::new(v4.addr(), *len)
                        .ok()
                        .map(|n| IpNet::V4(n.trunc())),
                    IpNet::V6(v6) => Ipv6Net::new(v6.addr(), *len)
                        .ok()
                        .map(|n| IpNet::V6(n.trunc())),
                }?;
                self.by_cidr.get(&cidr)
            })
            .flatten()
            .filter(|block| block.covers(net))
            .cloned()
            .collect()
    }
}

/// Pods that have an identity: live, with an address, not host-network.
pub fn live_pods(state: &State) -> impl Iterator<Item = &Pod> {
    state.pods.iter().filter(|pod| pod.is_live_endpoint())
}

/// Every ipBlock named by a rule of a direction its policy isolates.
pub fn blocks_of(state: &State) -> BTreeSet<Block> {
    state.policies.iter().flat_map(policy_blocks).collect()
}

/// The ipBlocks the effective rules of one policy name (once per mention).
pub fn policy_blocks(policy: &Policy) -> impl Iterator<Item = Block> + '_ {
    let ingress = policy.ingress.iter().filter(|_| policy.isolates_ingress);
    let egress = policy.egress.iter().filter(|_| policy.isolates_egress);
    ingress
        .chain(egress)
        .flat_map(|rule| &rule.peers)
        .filter_map(|peer| match peer {
            Peer::IpBlock { cidr, except } => Some(Block::new(cidr, except)),
            Peer::Pods { .. } => None,
        })
}

const V4_MAPPED: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0);

/// A prefix as the kernel trie sees it: 128-bit address and prefix length.
fn mapped(net: &IpNet) -> (u128, u8) {
    match net {
        IpNet::V4(v4) => (
            u128::from(V4_MAPPED) | u128::from(u32::from(v4.network())),
            v4.prefix_len() + netfence_common::V4_MAPPED_PREFIX_BITS as u8,
        ),
        IpNet::V6(v6) => (u128::from(v6.network()), v6.prefix_len()),
    }
}

/// Prefix containment in the kernel's (IPv4-mapped) address space.
pub fn mapped_contains(outer: &IpNet, inner: &IpNet) -> bool {
    let (outer_addr, outer_len) = mapped(outer);
    let (inner_addr, inner_len) = mapped(inner);
    if outer_len > inner_len {
        return false;
    }
    let mask = if outer_len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(outer_len))
    };
    outer_addr & mask == inner_addr & mask
}

fn v4_mapped_net() -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(V4_MAPPED, 96))
}

/// An IPv6 prefix inside the IPv4-mapped range (it would alias IPv4 prefixes).
fn inside_v4_mapped(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(_)) && v4_mapped_net().contains(net)
}

/// An IPv6 prefix that covers the whole IPv4-mapped range.
fn covers_v4_mapped(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(_)) && net.contains(&v4_mapped_net())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn mapped_containment_spans_families() {
        assert!(mapped_contains(&net("::/0"), &net("10.0.0.0/8")));
        assert!(mapped_contains(&net("10.0.0.0/8"), &net("10.1.0.0/16")));
        assert!(!mapped_contains(&net("10.0.0.0/8"), &net("::/0")));
        assert!(!mapped_contains(&net("fd00::/8"), &net("10.0.0.0/8")));
        assert!(inside_v4_mapped(&net("::ffff:10.0.0.0/104")));
        assert!(covers_v4_mapped(&net("::/0")));
        assert!(!covers_v4_mapped(&net("fd00::/8")));
    }

    #[test]
    fn except_inside_cidr_is_written_as_world_and_lone_world_is_not() {
        let blocks = BTreeSet::from([Block::new(&net("198.18.0.0/16"), &[net("198.18.1.0/24")])]);
        let identities = Identities::build(&State::default(), &blocks, false, &BTreeMap::new());
        assert_eq!(identities.trie.len(), 2);
        assert_eq!(identities.trie[&net("198.18.1.0/24")], IDENTITY_WORLD);
        assert_ne!(identities.trie[&net("198.18.0.0/16")], IDENTITY_WORLD);
        assert_eq!(identities.described.len(), 1);
    }

    #[test]
    fn ipv6_default_route_block_does_not_swallow_ipv4() {
        let blocks = BTreeSet::from([Block::new(&net("::/0"), &[])]);
        let identities = Identities::build(&State::default(), &blocks, false, &BTreeMap::new());
        assert_eq!(
            identities.trie.get(&net("0.0.0.0/0")),
            Some(&IDENTITY_WORLD)
        );
        assert_ne!(identities.trie[&net("::/0")], IDENTITY_WORLD);
    }
}
