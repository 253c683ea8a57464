//! The differential fuzz's kernel side: its own copy of the TC programs and maps
//! (loaded, never attached), the model's [`World`] written into them, frames run
//! through `BPF_PROG_TEST_RUN` without panicking on a refused frame, and the raw map
//! reads and writes the fuzz needs to keep the state fixed between frames.

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use netfence::dataplane::EBPF_OBJECT;
use netfence_common::reason::REASON_SLOTS;
use netfence_common::{
    CtKey, CtValue, DEFAULT_CT_OTHER_TIMEOUT_NS, DEFAULT_CT_TCP_TIMEOUT_NS,
    DEFAULT_CT_UNREPLIED_TIMEOUT_NS, EndpointKey, EndpointValue, FragKey, FragValue, IdentityKey,
    POLICY_PREFIX_ANY_PORT, PolicyKey, PolicyValue, global, map, program,
};

use super::model::{Hook, World};

/// `bpf_ktime_get_ns`'s clock, for conntrack and fragment timestamps.
pub fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
}

/// The loaded programs and their maps.
pub struct Rig {
    ebpf: Ebpf,
}

impl std::fmt::Debug for Rig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rig")
    }
}

fn name(hook: Hook) -> &'static str {
    match hook {
        Hook::FromPod => program::FROM_POD,
        Hook::ToPod => program::TO_POD,
    }
}

impl Rig {
    pub fn load() -> Self {
        let zero = 0u32;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map::CONNTRACK, 1024)
            .map_max_entries(map::FRAGMENTS, 256)
            .map_max_entries(map::RULE_HITS, 1024)
            .map_max_entries(map::ENDPOINTS, 256)
            .override_global(global::CT_TCP_TIMEOUT_NS, &DEFAULT_CT_TCP_TIMEOUT_NS, true)
            .override_global(
                global::CT_OTHER_TIMEOUT_NS,
                &DEFAULT_CT_OTHER_TIMEOUT_NS,
                true,
            )
            .override_global(
                global::CT_UNREPLIED_TIMEOUT_NS,
                &DEFAULT_CT_UNREPLIED_TIMEOUT_NS,
                false,
            )
            .override_global(global::EVENT_ALLOWS, &zero, true)
            .override_global(global::EXISTING_FLOWS_CUT, &zero, true)
            .load(EBPF_OBJECT)
            .unwrap_or_else(|e| panic!("loading the TC object: {e:#?}"));
        for hook in [Hook::FromPod, Hook::ToPod] {
            let prog: &mut SchedClassifier =
                ebpf.program_mut(name(hook)).unwrap().try_into().unwrap();
            prog.load()
                .unwrap_or_else(|e| panic!("verifier rejected {}: {e:#?}", name(hook)));
        }
        Self { ebpf }
    }

    /// Runs a frame; `None` when `BPF_PROG_TEST_RUN` refuses it (the program never ran).
    pub fn run(&self, hook: Hook, frame: &[u8]) -> Option<u32> {
        let prog: &SchedClassifier = self.ebpf.program(name(hook)).unwrap().try_into().unwrap();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        };
        prog.test_run(opts).ok().map(|r| r.return_value)
    }

    /// COUNTERS summed over CPUs, by slot.
    pub fn counters(&self) -> Vec<u64> {
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(map::COUNTERS).unwrap()).unwrap();
        (0..REASON_SLOTS)
            .map(|i| counters.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    /// Writes the whole world; timestamps are `now` minus each entry's age.
    pub fn install(&mut self, world: &World, now: u64) {
        {
            let mut m: HashMap<&mut MapData, EndpointKey, EndpointValue> =
                HashMap::try_from(self.ebpf.map_mut(map::ENDPOINTS).unwrap()).unwrap();
            for (addr, value) in &world.endpoints {
                m.insert(EndpointKey { addr: *addr }, value, 0).unwrap();
            }
        }
        self.set_ports(world);
        {
            let mut m: LpmTrie<&mut MapData, IdentityKey, u32> =
                LpmTrie::try_from(self.ebpf.map_mut(map::IDENTITIES).unwrap()).unwrap();
            for &(addr, bits, id) in &world.identities {
                m.insert(&Key::new(bits, IdentityKey { addr }), id, 0)
                    .unwrap();
            }
        }
        {
            let mut m: LpmTrie<&mut MapData, PolicyKey, PolicyValue> =
                LpmTrie::try_from(self.ebpf.map_mut(map::POLICY).unwrap()).unwrap();
            for r in &world.rules {
                let key = PolicyKey::new(r.policy, r.peer, r.direction, r.protocol, r.port);
                let value = PolicyValue {
                    rule: r.rule,
                    flags: 0,
                };
                m.insert(
                    &Key::new(POLICY_PREFIX_ANY_PORT + u32::from(r.port_bits), key),
                    value,
                    0,
                )
                .unwrap();
            }
        }
        {
            let cpus = aya::util::nr_cpus().unwrap();
            let mut hits: PerCpuHashMap<&mut MapData, u32, u64> =
                PerCpuHashMap::try_from(self.ebpf.map_mut(map::RULE_HITS).unwrap()).unwrap();
            for r in &world.rules {
                hits.insert(r.rule, PerCpuValues::try_from(vec![0u64; cpus]).unwrap(), 0)
                    .unwrap();
            }
        }
        self.refresh(world, now);
    }

    /// PORTS as the world has it (entries it lacks removed).
    pub fn set_ports(&mut self, world: &World) {
        let mut m: HashMap<&mut MapData, u32, EndpointValue> =
            HashMap::try_from(self.ebpf.map_mut(map::PORTS).unwrap()).unwrap();
        let stale: Vec<u32> = m
            .keys()
            .map(Result::unwrap)
            .filter(|k| !world.ports.contains_key(k))
            .collect();
        for k in stale {
            m.remove(&k).unwrap();
        }
        for (ifindex, value) in &world.ports {
            m.insert(ifindex, value, 0).unwrap();
        }
    }

    /// Rewrites the pre-created flows and fragment records with fresh timestamps.
    pub fn refresh(&mut self, world: &World, now: u64) {
        for flow in &world.flows {
            self.put_conntrack(
                flow.key,
                CtValue {
                    last_seen_ns: now - flow.age_ns,
                    ..flow.value
                },
            );
        }
        for (key, allowed) in &world.fragments {
            self.put_fragment(
                *key,
                FragValue {
                    last_seen_ns: now,
                    allowed: u32::from(*allowed),
                    rule: 0,
                },
            );
        }
    }

    pub fn conntrack(&self) -> Vec<(CtKey, CtValue)> {
        let m: HashMap<&MapData, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map(map::CONNTRACK).unwrap()).unwrap();
        m.iter().filter_map(Result::ok).collect()
    }

    pub fn put_conntrack(&mut self, key: CtKey, value: CtValue) {
        let mut m: HashMap<&mut MapData, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map_mut(map::CONNTRACK).unwrap()).unwrap();
        m.insert(key, value, 0).unwrap();
    }

    pub fn remove_conntrack(&mut self, key: &CtKey) {
        let mut m: HashMap<&mut MapData, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map_mut(map::CONNTRACK).unwrap()).unwrap();
        let _ = m.remove(key);
    }

    pub fn fragments(&self) -> Vec<(FragKey, FragValue)> {
        let m: HashMap<&MapData, FragKey, FragValue> =
            HashMap::try_from(self.ebpf.map(map::FRAGMENTS).unwrap()).unwrap();
        m.iter().filter_map(Result::ok).collect()
    }

    pub fn put_fragment(&mut self, key: FragKey, value: FragValue) {
        let mut m: HashMap<&mut MapData, FragKey, FragValue> =
            HashMap::try_from(self.ebpf.map_mut(map::FRAGMENTS).unwrap()).unwrap();
        m.insert(key, value, 0).unwrap();
    }

    pub fn remove_fragment(&mut self, key: &FragKey) {
        let mut m: HashMap<&mut MapData, FragKey, FragValue> =
            HashMap::try_from(self.ebpf.map_mut(map::FRAGMENTS).unwrap()).unwrap();
        let _ = m.remove(key);
    }
}
