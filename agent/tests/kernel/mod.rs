//! Harness for the kernel-verdict tests: loads its own copy of the TC programs and
//! maps (nothing pinned, nothing attached, so tests run in parallel), fills maps the
//! way the agent does (through the agent's own key encoders), runs frames through
//! `BPF_PROG_TEST_RUN` and reads back counters, conntrack, fragments and events.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod frame;
pub mod image;

use std::net::IpAddr;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;
use netfence::dataplane::EBPF_OBJECT;
use netfence::dataplane::loader::{endpoint_key, identity_key, policy_key};
use netfence::image::PolicyEntry;
use netfence_common::reason::REASON_SLOTS;
use netfence_common::{
    CtKey, CtValue, EndpointValue, Event, FragKey, FragValue, PolicyValue, Reason, Settings,
    global, map, program,
};

/// What every allow returns: `TC_ACT_UNSPEC` (-1), which is `TCX_NEXT` under TCX, so
/// later programs and filters on the port still run.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
pub const TC_ACT_SHOT: u32 = 2;
/// `BPF_PROG_TEST_RUN` gives the skb the loopback device when no context is passed.
pub const TEST_RUN_IFINDEX: u32 = 1;

pub const FROM_POD: &str = program::FROM_POD;
pub const TO_POD: &str = program::TO_POD;

/// Load-time options of one test's datapath.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub ct_other_timeout_ns: u64,
    pub ct_unreplied_timeout_ns: u64,
    pub event_allows: bool,
    /// `--existing-flows=cut`.
    pub cut_existing_flows: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ct_other_timeout_ns: netfence_common::DEFAULT_CT_OTHER_TIMEOUT_NS,
            ct_unreplied_timeout_ns: netfence_common::DEFAULT_CT_UNREPLIED_TIMEOUT_NS,
            event_allows: false,
            cut_existing_flows: false,
        }
    }
}

/// One test's private datapath.
pub struct Kernel {
    ebpf: Ebpf,
}

impl Kernel {
    pub fn load() -> Self {
        Self::load_with(Options::default())
    }

    pub fn load_with(options: Options) -> Self {
        let event_allows = u32::from(options.event_allows);
        let cut = u32::from(options.cut_existing_flows);
        let ct_tcp = netfence_common::DEFAULT_CT_TCP_TIMEOUT_NS;
        let mut ebpf = EbpfLoader::new()
            // Small LRU maps: they preallocate, and every test loads its own.
            .map_max_entries(map::CONNTRACK, 1024)
            .map_max_entries(map::FRAGMENTS, 256)
            .map_max_entries(map::RULE_HITS, 1024)
            .map_max_entries(map::ENDPOINTS, 256)
            .override_global(global::CT_TCP_TIMEOUT_NS, &ct_tcp, true)
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
            .override_global(global::EXISTING_FLOWS_CUT, &cut, true)
            .load(EBPF_OBJECT)
            .unwrap_or_else(|e| panic!("loading the TC object: {e:#?}"));
        for name in [FROM_POD, TO_POD] {
            let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            prog.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:#?}"));
        }
        Self { ebpf }
    }

    /// Runs `frame` through program `name` and returns its TC action.
    pub fn run(&self, name: &str, frame: &[u8]) -> u32 {
        let prog: &SchedClassifier = self.ebpf.program(name).unwrap().try_into().unwrap();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        };
        prog.test_run(opts)
            .unwrap_or_else(|e| panic!("test run of {name}: {e:?}"))
            .return_value
    }

    /// Runs `frame` and asserts both the action and that exactly one counter moved:
    /// `reason`'s, by one.
    pub fn expect(&mut self, name: &str, frame: &[u8], action: u32, reason: Reason) {
        let before = self.counters();
        let got = self.run(name, frame);
        let after = self.counters();
        let delta: Vec<(u32, u64)> = (0..REASON_SLOTS as usize)
            .filter(|&i| after[i] != before[i])
            .map(|i| (i as u32, after[i] - before[i]))
            .collect();
        let named: Vec<String> = delta
            .iter()
            .map(|(code, n)| format!("{}+{n}", Reason::from_code(*code).map_or("?", Reason::name)))
            .collect();
        assert_eq!(
            (got, delta.clone()),
            (action, vec![(reason.code(), 1)]),
            "{name}: expected action {action} and {} +1, got action {got} and counters {named:?}",
            reason.name()
        );
    }

    pub fn pass(&mut self, name: &str, frame: &[u8], reason: Reason) {
        assert!(!reason.is_drop());
        self.expect(name, frame, TC_ACT_UNSPEC, reason);
    }

    pub fn drop(&mut self, name: &str, frame: &[u8], reason: Reason) {
        assert!(reason.is_drop());
        self.expect(name, frame, TC_ACT_SHOT, reason);
    }

    /// COUNTERS summed over CPUs, by slot.
    pub fn counters(&self) -> Vec<u64> {
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(map::COUNTERS).unwrap()).unwrap();
        (0..REASON_SLOTS)
            .map(|i| counters.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    pub fn endpoint(&mut self, addr: IpAddr, policy: u32, flags: u32, ifindex: u32) {
        let mut m: HashMap<&mut MapData, _, EndpointValue> =
            HashMap::try_from(self.ebpf.map_mut(map::ENDPOINTS).unwrap()).unwrap();
        let value = EndpointValue {
            policy,
            flags,
            ifindex,
            identity: 0,
        };
        m.insert(endpoint_key(&addr), value, 0).unwrap();
    }

    /// The endpoint bound to port `ifindex` (PORTS), as the agent's sync writes it.
    pub fn port(&mut self, ifindex: u32, policy: u32, flags: u32) {
        let mut m: HashMap<&mut MapData, u32, EndpointValue> =
            HashMap::try_from(self.ebpf.map_mut(map::PORTS).unwrap()).unwrap();
        let value = EndpointValue {
            policy,
            flags,
            ifindex,
            identity: 0,
        };
        m.insert(ifindex, value, 0).unwrap();
    }

    pub fn identity(&mut self, net: &str, id: u32) {
        let net: IpNet = net.parse().unwrap();
        let mut m: LpmTrie<&mut MapData, _, u32> =
            LpmTrie::try_from(self.ebpf.map_mut(map::IDENTITIES).unwrap()).unwrap();
        m.insert(&identity_key(&net), id, 0).unwrap();
    }

    /// A POLICY entry and its RULE_HITS slot, as the agent's sync writes them.
    pub fn allow(&mut self, entry: PolicyEntry, rule: u32) {
        {
            let mut m: LpmTrie<&mut MapData, _, PolicyValue> =
                LpmTrie::try_from(self.ebpf.map_mut(map::POLICY).unwrap()).unwrap();
            m.insert(&policy_key(&entry), PolicyValue { rule, flags: 0 }, 0)
                .unwrap();
        }
        let cpus = aya::util::nr_cpus().unwrap();
        let mut hits: PerCpuHashMap<&mut MapData, u32, u64> =
            PerCpuHashMap::try_from(self.ebpf.map_mut(map::RULE_HITS).unwrap()).unwrap();
        hits.insert(rule, PerCpuValues::try_from(vec![0u64; cpus]).unwrap(), 0)
            .unwrap();
    }

    pub fn disallow(&mut self, entry: PolicyEntry) {
        let mut m: LpmTrie<&mut MapData, _, PolicyValue> =
            LpmTrie::try_from(self.ebpf.map_mut(map::POLICY).unwrap()).unwrap();
        m.remove(&policy_key(&entry)).unwrap();
    }

    pub fn rule_hits(&self, rule: u32) -> u64 {
        let hits: PerCpuHashMap<&MapData, u32, u64> =
            PerCpuHashMap::try_from(self.ebpf.map(map::RULE_HITS).unwrap()).unwrap();
        hits.get(&rule, 0).map_or(0, |v| v.iter().sum())
    }

    pub fn conntrack(&self) -> Vec<(CtKey, CtValue)> {
        let m: HashMap<&MapData, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map(map::CONNTRACK).unwrap()).unwrap();
        m.iter().map(Result::unwrap).collect()
    }

    pub fn put_conntrack(&mut self, key: CtKey, value: CtValue) {
        let mut m: HashMap<&mut MapData, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map_mut(map::CONNTRACK).unwrap()).unwrap();
        m.insert(key, value, 0).unwrap();
    }

    /// Removes every conntrack entry (as the agent does for an address whose pod went).
    pub fn clear_conntrack(&mut self) {
        let keys: Vec<CtKey> = self.conntrack().into_iter().map(|(key, _)| key).collect();
        let mut m: HashMap<&mut MapData, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map_mut(map::CONNTRACK).unwrap()).unwrap();
        for key in keys {
            m.remove(&key).unwrap();
        }
    }

    /// Bytes of `name` after the verifier (`bpftool prog`'s `xlated`): 8 per insn.
    pub fn xlated_bytes(&self, name: &str) -> u32 {
        let prog: &SchedClassifier = self.ebpf.program(name).unwrap().try_into().unwrap();
        prog.info().unwrap().size_translated().unwrap()
    }

    /// Sets the policy generation in SETTINGS, as the agent does after a sync.
    pub fn set_generation(&mut self, generation: u32) {
        let mut m: Array<&mut MapData, Settings> =
            Array::try_from(self.ebpf.map_mut(map::SETTINGS).unwrap()).unwrap();
        m.set(
            0,
            Settings {
                generation,
                _pad: 0,
            },
            0,
        )
        .unwrap();
    }

    pub fn fragments(&self) -> Vec<(FragKey, FragValue)> {
        let m: HashMap<&MapData, FragKey, FragValue> =
            HashMap::try_from(self.ebpf.map(map::FRAGMENTS).unwrap()).unwrap();
        m.iter().map(Result::unwrap).collect()
    }

    /// Every event waiting in the ring buffer.
    pub fn events(&mut self) -> Vec<Event> {
        let mut ring: RingBuf<&mut MapData> =
            RingBuf::try_from(self.ebpf.map_mut(map::EVENTS).unwrap()).unwrap();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            out.push(netfence::dataplane::events::decode(&item).expect("a whole event"));
        }
        out
    }
}

/// The 16-byte map form of an address.
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    endpoint_key(&addr).addr
}

/// A POLICY entry for one port (`port_bits` 16), a port prefix, or no ports.
pub fn entry(
    policy: u32,
    peer: u32,
    direction: u8,
    protocol: u8,
    port: u16,
    port_bits: u8,
) -> PolicyEntry {
    PolicyEntry {
        policy,
        peer,
        direction,
        protocol,
        port,
        port_bits,
    }
}
