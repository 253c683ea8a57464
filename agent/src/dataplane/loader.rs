//! Loading the TC programs and holding their maps: the real `MapBackend`.

use std::net::IpAddr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;
use netfence_common::{
    EndpointKey, EndpointValue, IdentityKey, POLICY_PREFIX_ANY_PORT, PolicyKey, PolicyValue,
    V4_MAPPED_PREFIX_BITS, global, map, program, v4_mapped,
};

use super::sync::{MapBackend, MapOp};
use crate::image::PolicyEntry;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the TC programs into the kernel: {0} (netfence needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, or root, and a kernel with BPF LPM tries, ring buffers and BTF: 5.8 or newer)")]
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
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
}

/// Load-time settings of the programs.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub ct_tcp_timeout_ns: u64,
    pub ct_other_timeout_ns: u64,
    pub event_allows: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ct_tcp_timeout_ns: netfence_common::DEFAULT_CT_TCP_TIMEOUT_NS,
            ct_other_timeout_ns: netfence_common::DEFAULT_CT_OTHER_TIMEOUT_NS,
            event_allows: false,
        }
    }
}

/// The maps the agent writes.
pub struct Maps {
    endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    identities: LpmTrie<MapData, IdentityKey, u32>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    rule_hits: PerCpuHashMap<MapData, u32, u64>,
    counters: PerCpuArray<MapData, u64>,
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
        f.debug_struct("Maps").field("cpus", &self.cpus).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath").field("maps", &self.maps).finish_non_exhaustive()
    }
}

impl Datapath {
    pub fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        let event_allows = u32::from(options.event_allows);
        let mut ebpf = EbpfLoader::new()
            .override_global(global::CT_TCP_TIMEOUT_NS, &options.ct_tcp_timeout_ns, true)
            .override_global(global::CT_OTHER_TIMEOUT_NS, &options.ct_other_timeout_ns, true)
            .override_global(global::EVENT_ALLOWS, &event_allows, true)
            .load(super::EBPF_OBJECT)?;
        for name in [program::FROM_POD, program::TO_POD] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| LoadError::Program { name, source })?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))?;
        let maps = Maps {
            endpoints: take(&mut ebpf, map::ENDPOINTS)?,
            identities: take(&mut ebpf, map::IDENTITIES)?,
            policy: take(&mut ebpf, map::POLICY)?,
            rule_hits: take(&mut ebpf, map::RULE_HITS)?,
            counters: take(&mut ebpf, map::COUNTERS)?,
            cpus,
        };
        let events = Some(take(&mut ebpf, map::EVENTS)?);
        Ok(Self { ebpf, maps, events })
    }
}

/// One of the two TC programs.
pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, LoadError> {
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
            IdentityKey { addr: v4_mapped(v4.addr().octets()) },
        ),
        IpNet::V6(v6) => Key::new(u32::from(v6.prefix_len()), IdentityKey { addr: v6.addr().octets() }),
    }
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
        PolicyKey::new(entry.policy, entry.peer, entry.direction, entry.protocol, entry.port),
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
                PolicyValue { rule: *rule, flags: 0 },
                0,
            ),
            MapOp::PutIdentity(net, id) => self.identities.insert(&identity_key(net), *id, 0),
            MapOp::PutEndpoint(addr, value) => self.endpoints.insert(endpoint_key(addr), *value, 0),
            MapOp::DeleteEndpoint(addr) => self.endpoints.remove(&endpoint_key(addr)),
            MapOp::DeleteIdentity(net) => self.identities.remove(&identity_key(net)),
            MapOp::DeletePolicy(entry) => self.policy.remove(&policy_key(entry)),
            MapOp::DeleteRule(rule) => self.rule_hits.remove(rule),
        }
    }
}

impl Maps {
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
