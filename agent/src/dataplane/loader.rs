//! Loading the TC programs and holding their maps: the real `MapBackend`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;
use netfence_common::{
    CtKey, CtValue, EndpointKey, EndpointValue, IdentityKey, POLICY_PREFIX_ANY_PORT, PolicyKey,
    PolicyValue, Settings, V4_MAPPED_PREFIX_BITS, global, map, program, v4_mapped,
};

use super::pin::{PINNED_MAPS, PinDir};
use super::sync::{Contents, MapBackend, MapOp};
use crate::image::PolicyEntry;

/// Keys a CONNTRACK walk reads at most: its capacity, and as many again for keys
/// the LRU evicts under the walk (a vanished key restarts the kernel's iteration).
const CONNTRACK_WALK_LIMIT: usize = 2 * netfence_common::MAX_CONNTRACK as usize;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "loading the TC programs into the kernel: {0} (netfence needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, or root, and a kernel with BPF LPM tries, ring buffers and cgroup-charged BPF memory: 5.11 or newer)"
    )]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("the TC object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the TC object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("creating the map pin directory: {0}")]
    PinDir(std::io::Error),
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
}

/// Load-time settings of the programs.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub ct_tcp_timeout_ns: u64,
    pub ct_other_timeout_ns: u64,
    /// Idle timeout of a non-TCP conntrack entry that has seen no reply.
    pub ct_unreplied_timeout_ns: u64,
    pub event_allows: bool,
    /// `--existing-flows`.
    pub existing_flows: ExistingFlows,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ct_tcp_timeout_ns: netfence_common::DEFAULT_CT_TCP_TIMEOUT_NS,
            ct_other_timeout_ns: netfence_common::DEFAULT_CT_OTHER_TIMEOUT_NS,
            ct_unreplied_timeout_ns: netfence_common::DEFAULT_CT_UNREPLIED_TIMEOUT_NS,
            event_allows: false,
            existing_flows: ExistingFlows::Keep,
        }
    }
}

/// What a policy change does to connections conntrack already tracks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExistingFlows {
    /// They continue until they close (or idle out), as Calico and Cilium do.
    #[default]
    Keep,
    /// Their next packet after a change is re-checked against the new policy; a flow
    /// it denies is dropped and its conntrack entry removed.
    Cut,
}

/// The maps the agent writes.
pub struct Maps {
    endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    ports: HashMap<MapData, u32, EndpointValue>,
    identities: LpmTrie<MapData, IdentityKey, u32>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    rule_hits: PerCpuHashMap<MapData, u32, u64>,
    counters: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    cpus: usize,
}

/// Loaded programs (not yet attached) and their maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub maps: Maps,
    /// Taken by the event reader.
    pub events: Option<RingBuf<MapData>>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps")
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("maps", &self.maps)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs with fresh, unpinned maps (they go away with the process).
    pub fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        Self::load_with(options, None)
    }

    /// Loads the programs with the maps pinned in `pins` (this build's layout):
    /// existing pins are reused as they are — their contents, conntrack included,
    /// survive a restart — and missing ones are created and pinned.
    pub fn load_pinned(options: &LoadOptions, pins: &PinDir) -> Result<Self, LoadError> {
        Self::load_with(options, Some(pins))
    }

    fn load_with(options: &LoadOptions, pins: Option<&PinDir>) -> Result<Self, LoadError> {
        let event_allows = u32::from(options.event_allows);
        let cut = u32::from(options.existing_flows == ExistingFlows::Cut);
        let mut loader = EbpfLoader::new();
        loader
            .override_global(global::CT_TCP_TIMEOUT_NS, &options.ct_tcp_timeout_ns, true)
            .override_global(
                global::CT_OTHER_TIMEOUT_NS,
                &options.ct_other_timeout_ns,
                true,
            )
            .override_global(
                global::CT_UNREPLIED_TIMEOUT_NS,
                &options.ct_unreplied_timeout_ns,
                true,
            )
            .override_global(global::EVENT_ALLOWS, &event_allows, true)
            .override_global(global::EXISTING_FLOWS_CUT, &cut, true);
        if let Some(pins) = pins {
            std::fs::create_dir_all(pins.layout_dir()).map_err(LoadError::PinDir)?;
            for name in PINNED_MAPS {
                loader.map_pin_path(name, pins.map_path(name));
            }
        }
        let mut ebpf = loader.load(super::EBPF_OBJECT)?;
        for name in [program::FROM_POD, program::TO_POD] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| LoadError::Program { name, source })?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))?;
        let maps = Maps {
            endpoints: take(&mut ebpf, map::ENDPOINTS)?,
            ports: take(&mut ebpf, map::PORTS)?,
            identities: take(&mut ebpf, map::IDENTITIES)?,
            policy: take(&mut ebpf, map::POLICY)?,
            rule_hits: take(&mut ebpf, map::RULE_HITS)?,
            counters: take(&mut ebpf, map::COUNTERS)?,
            settings: take(&mut ebpf, map::SETTINGS)?,
            cpus,
        };
        let events = Some(take(&mut ebpf, map::EVENTS)?);
        Ok(Self { ebpf, maps, events })
    }
}

/// One of the two TC programs.
pub fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}

/// The LPM key of an address prefix (IPv4 as IPv4-mapped IPv6).
pub fn identity_key(net: &IpNet) -> Key<IdentityKey> {
    match net {
        IpNet::V4(v4) => Key::new(
            u32::from(v4.prefix_len()) + V4_MAPPED_PREFIX_BITS,
            IdentityKey {
                addr: v4_mapped(v4.addr().octets()),
            },
        ),
        IpNet::V6(v6) => Key::new(
            u32::from(v6.prefix_len()),
            IdentityKey {
                addr: v6.addr().octets(),
            },
        ),
    }
}

/// The address of an ENDPOINTS key (IPv4-mapped → IPv4).
pub fn endpoint_addr(addr: &[u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The prefix of an IDENTITIES key: inside `::ffff:0:0/96` with at least 96 bits, an
/// IPv4 prefix (the form `identity_key` writes); otherwise IPv6.
pub fn identity_net(prefix_len: u32, addr: &[u8; 16]) -> Option<IpNet> {
    let v6 = std::net::Ipv6Addr::from(*addr);
    if prefix_len >= V4_MAPPED_PREFIX_BITS
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        let len = u8::try_from(prefix_len - V4_MAPPED_PREFIX_BITS).ok()?;
        return ipnet::Ipv4Net::new(v4, len).ok().map(IpNet::V4);
    }
    ipnet::Ipv6Net::new(v6, u8::try_from(prefix_len).ok()?)
        .ok()
        .map(IpNet::V6)
}

/// The ENDPOINTS key of an address.
pub fn endpoint_key(addr: &IpAddr) -> EndpointKey {
    EndpointKey {
        addr: match addr {
            IpAddr::V4(v4) => v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        },
    }
}

/// The POLICY key of an entry.
pub fn policy_key(entry: &PolicyEntry) -> Key<PolicyKey> {
    Key::new(
        POLICY_PREFIX_ANY_PORT + u32::from(entry.port_bits),
        PolicyKey::new(
            entry.policy,
            entry.peer,
            entry.direction,
            entry.protocol,
            entry.port,
        ),
    )
}

impl MapBackend for Maps {
    type Error = aya::maps::MapError;

    fn apply(&mut self, op: &MapOp) -> Result<(), Self::Error> {
        match op {
            MapOp::PutRule(rule) => {
                let zeros = PerCpuValues::try_from(vec![0u64; self.cpus])?;
                self.rule_hits.insert(*rule, zeros, 0)
            }
            MapOp::PutPolicy(entry, rule) => self.policy.insert(
                &policy_key(entry),
                PolicyValue {
                    rule: *rule,
                    flags: 0,
                },
                0,
            ),
            MapOp::PutIdentity(net, id) => self.identities.insert(&identity_key(net), *id, 0),
            MapOp::PutEndpoint(addr, value) => self.endpoints.insert(endpoint_key(addr), *value, 0),
            MapOp::PutPort(ifindex, value) => self.ports.insert(*ifindex, *value, 0),
            MapOp::DeleteEndpoint(addr) => self.endpoints.remove(&endpoint_key(addr)),
            MapOp::DeletePort(ifindex) => self.ports.remove(ifindex),
            MapOp::DeleteIdentity(net) => self.identities.remove(&identity_key(net)),
            MapOp::DeletePolicy(entry) => self.policy.remove(&policy_key(entry)),
            MapOp::DeleteRule(rule) => self.rule_hits.remove(rule),
        }
    }
}

impl Maps {
    /// What the maps hold now, read back as sync `Contents`: after a restart on
    /// pinned maps, the first sync is then a difference, not a rewrite. Entries
    /// this agent could not have written (a foreign key shape) are read as they are
    /// and so get deleted by the next sync if the image lacks them.
    pub fn read_live(&self) -> Result<Contents, aya::maps::MapError> {
        let mut live = Contents::default();
        for item in self.endpoints.iter() {
            let (key, value) = item?;
            live.endpoints.insert(endpoint_addr(&key.addr), value);
        }
        for item in self.ports.iter() {
            let (ifindex, value) = item?;
            live.ports.insert(ifindex, value);
        }
        for item in self.identities.iter() {
            let (key, id) = item?;
            if let Some(net) = identity_net(key.prefix_len(), &key.data().addr) {
                live.identities.insert(net, id);
            }
        }
        for item in self.policy.iter() {
            let (key, value) = item?;
            let data = key.data();
            let Some(port_bits) = key.prefix_len().checked_sub(POLICY_PREFIX_ANY_PORT) else {
                continue;
            };
            let Ok(port_bits) = u8::try_from(port_bits) else {
                continue;
            };
            let entry = PolicyEntry {
                policy: u32::from_be_bytes(data.policy),
                peer: u32::from_be_bytes(data.peer),
                direction: data.direction,
                protocol: data.protocol,
                port: u16::from_be_bytes(data.port),
                port_bits,
            };
            live.policy.insert(entry, value.rule);
        }
        for key in self.rule_hits.keys() {
            live.rules.insert(key?);
        }
        Ok(live)
    }

    /// Live CONNTRACK entries of the loaded programs, counted by their `local`
    /// address (the pod side of the hook): a walk of the LRU map's keys, one syscall
    /// per entry (at most `MAX_CONNTRACK`), so callers sample it rarely.
    pub fn conntrack_by_local(ebpf: &Ebpf) -> Result<BTreeMap<IpAddr, usize>, LoadError> {
        let name = map::CONNTRACK;
        let found = ebpf.map(name).ok_or(LoadError::MissingMap(name))?;
        let conntrack = HashMap::<&MapData, CtKey, CtValue>::try_from(found)
            .map_err(|source| LoadError::Map { name, source })?;
        let mut out: BTreeMap<IpAddr, usize> = BTreeMap::new();
        // Bounded: keys that vanish under the walk can restart the kernel's iteration.
        for key in conntrack
            .keys()
            .take(CONNTRACK_WALK_LIMIT)
            .filter_map(Result::ok)
        {
            *out.entry(endpoint_addr(&key.local)).or_default() += 1;
        }
        Ok(out)
    }

    /// Deletes every CONNTRACK entry whose `local` or `remote` address is in
    /// `addresses` (a pod went or its address moved to another pod): one walk of the
    /// keys (bounded by the capacity), then one delete per match. Returns how many
    /// entries it deleted; an entry that vanished meanwhile is not counted.
    pub fn purge_conntrack(
        ebpf: &mut Ebpf,
        addresses: &BTreeSet<IpAddr>,
    ) -> Result<usize, LoadError> {
        if addresses.is_empty() {
            return Ok(0);
        }
        let name = map::CONNTRACK;
        let found = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        let mut conntrack = HashMap::<&mut MapData, CtKey, CtValue>::try_from(found)
            .map_err(|source| LoadError::Map { name, source })?;
        let wanted: BTreeSet<[u8; 16]> = addresses.iter().map(|a| endpoint_key(a).addr).collect();
        let doomed: Vec<CtKey> = conntrack
            .keys()
            .take(CONNTRACK_WALK_LIMIT)
            .filter_map(Result::ok)
            .filter(|key| wanted.contains(&key.local) || wanted.contains(&key.remote))
            .collect();
        Ok(doomed
            .iter()
            .filter(|key| conntrack.remove(key).is_ok())
            .count())
    }

    /// The policy generation in SETTINGS (pinned: a restarted agent continues it).
    pub fn generation(&self) -> Result<u32, aya::maps::MapError> {
        Ok(self.settings.get(&0, 0)?.generation)
    }

    /// Sets the policy generation. Written after a sync that changed what policy
    /// decides, as its last write: with `--existing-flows=cut` every flow conntrack
    /// tracks is then re-checked, on its next packet, against the complete new policy.
    pub fn set_generation(&mut self, generation: u32) -> Result<(), aya::maps::MapError> {
        self.settings.set(
            0,
            Settings {
                generation,
                _pad: 0,
            },
            0,
        )
    }

    /// Increments the policy generation (wrapping; entries compare by equality) and
    /// returns the new one.
    pub fn bump_generation(&mut self) -> Result<u32, aya::maps::MapError> {
        let next = self.generation()?.wrapping_add(1);
        self.set_generation(next)?;
        Ok(next)
    }

    /// Allow hits of each rule, summed over CPUs.
    pub fn rule_hits(&self) -> Result<Vec<(u32, u64)>, aya::maps::MapError> {
        let mut out = Vec::new();
        for item in self.rule_hits.iter() {
            let (rule, values) = item?;
            out.push((rule, values.iter().sum()));
        }
        Ok(out)
    }

    /// Sum over CPUs of each verdict-reason counter, by reason code.
    pub fn counters(&self) -> Result<Vec<(u32, u64)>, aya::maps::MapError> {
        let mut out = Vec::new();
        for reason in netfence_common::Reason::ALL {
            let values = self.counters.get(&reason.code(), 0)?;
            out.push((reason.code(), values.iter().sum()));
        }
        Ok(out)
    }
}
