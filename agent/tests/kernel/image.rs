//! Fills a test datapath's maps with a compiled `Image` exactly as the agent does:
//! `Contents::from_image` (with no interface bindings, or the given ones: PORTS
//! follows from them) and the agent's own ordered `dataplane::sync`, applied
//! through a `MapBackend` over the test's maps.

use std::collections::BTreeMap;
use std::net::IpAddr;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, MapData, MapError, PerCpuHashMap, PerCpuValues};
use netfence::dataplane::loader::{endpoint_key, identity_key, policy_key};
use netfence::dataplane::sync::{Contents, MapBackend, MapOp, sync};
use netfence::image::Image;
use netfence_common::{EndpointValue, PolicyValue, map};

use super::Kernel;

struct Backend<'a>(&'a mut Kernel);

fn map_of<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut aya::maps::Map, MapError> {
    ebpf.map_mut(name).ok_or_else(|| MapError::InvalidName {
        name: name.to_owned(),
    })
}

impl MapBackend for Backend<'_> {
    type Error = MapError;

    fn apply(&mut self, op: &MapOp) -> Result<(), MapError> {
        let ebpf = &mut self.0.ebpf;
        match op {
            MapOp::PutRule(rule) => {
                let cpus = aya::util::nr_cpus().expect("the number of CPUs");
                let mut hits: PerCpuHashMap<&mut MapData, u32, u64> =
                    PerCpuHashMap::try_from(map_of(ebpf, map::RULE_HITS)?)?;
                hits.insert(*rule, PerCpuValues::try_from(vec![0u64; cpus])?, 0)
            }
            MapOp::PutPolicy(entry, rule) => {
                let mut m: LpmTrie<&mut MapData, _, PolicyValue> =
                    LpmTrie::try_from(map_of(ebpf, map::POLICY)?)?;
                m.insert(
                    &policy_key(entry),
                    PolicyValue {
                        rule: *rule,
                        flags: 0,
                    },
                    0,
                )
            }
            MapOp::PutIdentity(net, id) => {
                let mut m: LpmTrie<&mut MapData, _, u32> =
                    LpmTrie::try_from(map_of(ebpf, map::IDENTITIES)?)?;
                m.insert(&identity_key(net), *id, 0)
            }
            MapOp::PutEndpoint(addr, value) => {
                let mut m: HashMap<&mut MapData, _, EndpointValue> =
                    HashMap::try_from(map_of(ebpf, map::ENDPOINTS)?)?;
                m.insert(endpoint_key(addr), *value, 0)
            }
            MapOp::PutPort(ifindex, value) => {
                let mut m: HashMap<&mut MapData, u32, EndpointValue> =
                    HashMap::try_from(map_of(ebpf, map::PORTS)?)?;
                m.insert(*ifindex, *value, 0)
            }
            MapOp::DeletePort(ifindex) => {
                let mut m: HashMap<&mut MapData, u32, EndpointValue> =
                    HashMap::try_from(map_of(ebpf, map::PORTS)?)?;
                m.remove(ifindex)
            }
            MapOp::DeleteEndpoint(addr) => {
                let mut m: HashMap<&mut MapData, _, EndpointValue> =
                    HashMap::try_from(map_of(ebpf, map::ENDPOINTS)?)?;
                m.remove(&endpoint_key(addr))
            }
            MapOp::DeleteIdentity(net) => {
                let mut m: LpmTrie<&mut MapData, _, u32> =
                    LpmTrie::try_from(map_of(ebpf, map::IDENTITIES)?)?;
                m.remove(&identity_key(net))
            }
            MapOp::DeletePolicy(entry) => {
                let mut m: LpmTrie<&mut MapData, _, PolicyValue> =
                    LpmTrie::try_from(map_of(ebpf, map::POLICY)?)?;
                m.remove(&policy_key(entry))
            }
            MapOp::DeleteRule(rule) => {
                let mut hits: PerCpuHashMap<&mut MapData, u32, u64> =
                    PerCpuHashMap::try_from(map_of(ebpf, map::RULE_HITS)?)?;
                hits.remove(rule)
            }
        }
    }
}

impl Kernel {
    /// Makes the maps hold `image` (from `live`, what they hold now), through the
    /// agent's sync, every endpoint bound to the test run's port (where every crafted
    /// frame arrives); panics listing any failed map write.
    pub fn sync_image(&mut self, live: &mut Contents, image: &Image) {
        let bindings: BTreeMap<_, _> = image
            .endpoints
            .keys()
            .map(|addr| (*addr, super::TEST_RUN_IFINDEX))
            .collect();
        self.sync_image_bound(live, image, &bindings);
    }

    /// As [`Kernel::sync_image`], with pod addresses bound to interfaces
    /// (`bindings`: address → ifindex; `TEST_RUN_IFINDEX` is the test run's).
    pub fn sync_image_bound(
        &mut self,
        live: &mut Contents,
        image: &Image,
        bindings: &BTreeMap<IpAddr, u32>,
    ) {
        let target = Contents::from_image(image, bindings);
        let report = sync(&mut Backend(self), live, &target);
        assert!(
            report.failed.is_empty(),
            "map writes failed: {:?}",
            report.failed
        );
        assert_eq!(live, &target);
    }
}
