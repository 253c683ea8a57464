//! Every map and load-time global of the TC programs, and the only code that touches
//! them: one small accessor per operation, so the rest of the program never sees a
//! raw map or pointer. Names, keys and values are the ABI in `netfence-common`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
};
use netfence_common::{
    Addr, CtKey, CtValue, DEFAULT_CT_OTHER_TIMEOUT_NS, DEFAULT_CT_TCP_TIMEOUT_NS,
    DEFAULT_CT_UNREPLIED_TIMEOUT_NS, EVENTS_BYTES, EndpointKey, EndpointValue, Event, FragKey,
    FragValue, IDENTITY_WORLD, IdentityKey, MAX_CONNTRACK, MAX_ENDPOINTS, MAX_FRAGMENTS,
    MAX_IDENTITY_PREFIXES, MAX_POLICY_ENTRIES, MAX_PORTS, MAX_RULES, POLICY_PREFIX_FULL, PolicyKey,
    PolicyValue, Reason, Settings,
    reason::{COUNTER_EVENTS_LOST, REASON_SLOTS},
};

#[map]
static ENDPOINTS: HashMap<EndpointKey, EndpointValue> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map]
static PORTS: HashMap<u32, EndpointValue> = HashMap::with_max_entries(MAX_PORTS, 0);

#[map]
static IDENTITIES: LpmTrie<IdentityKey, u32> =
    LpmTrie::with_max_entries(MAX_IDENTITY_PREFIXES, BPF_F_NO_PREALLOC);

#[map]
static POLICY: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(MAX_POLICY_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(MAX_CONNTRACK, 0);

#[map]
static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::with_max_entries(MAX_FRAGMENTS, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_SLOTS, 0);

#[map]
static RULE_HITS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(MAX_RULES, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

// Load-time tunables (`EbpfLoader::override_global`). Read with `read_volatile` so the
// compiler cannot fold the defaults into the code.
#[unsafe(no_mangle)]
static CT_TCP_TIMEOUT_NS: u64 = DEFAULT_CT_TCP_TIMEOUT_NS;
#[unsafe(no_mangle)]
static CT_OTHER_TIMEOUT_NS: u64 = DEFAULT_CT_OTHER_TIMEOUT_NS;
#[unsafe(no_mangle)]
static CT_UNREPLIED_TIMEOUT_NS: u64 = DEFAULT_CT_UNREPLIED_TIMEOUT_NS;
#[unsafe(no_mangle)]
static EVENT_ALLOWS: u32 = 0;
#[unsafe(no_mangle)]
static EXISTING_FLOWS_CUT: u32 = 0;
#[unsafe(no_mangle)]
static BENCH_STAGE: u32 = 0;

#[inline(always)]
pub fn ct_tcp_timeout_ns() -> u64 {
    // SAFETY: a plain read of an initialised static the loader may have rewritten.
    unsafe { core::ptr::read_volatile(&raw const CT_TCP_TIMEOUT_NS) }
}

#[inline(always)]
pub fn ct_other_timeout_ns() -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&raw const CT_OTHER_TIMEOUT_NS) }
}

#[inline(always)]
pub fn ct_unreplied_timeout_ns() -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&raw const CT_UNREPLIED_TIMEOUT_NS) }
}

#[inline(always)]
pub fn event_allows() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&raw const EVENT_ALLOWS) != 0 }
}

/// `--existing-flows=cut`. A frozen load-time constant: in `keep` mode the verifier
/// removes every branch behind it, so established packets cost what they did.
#[inline(always)]
pub fn cut_existing_flows() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&raw const EXISTING_FLOWS_CUT) != 0 }
}

/// The bench's cut-off stage (`global::BENCH_STAGE`): 0 runs everything. Frozen at
/// load like `cut_existing_flows`, so with 0 the verifier removes every cut-off.
#[inline(always)]
pub fn bench_stage() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&raw const BENCH_STAGE) }
}

/// The current policy generation (one array lookup, which the kernel inlines). 0
/// if the slot cannot be read, which cannot happen for a one-element array.
#[inline(always)]
pub fn generation() -> u32 {
    SETTINGS.get(0).map_or(0, |settings| settings.generation)
}

/// CLOCK_MONOTONIC_COARSE in ns (a cached clock, one tick behind at most, and far
/// cheaper than the precise one): conntrack and fragment timeouts are seconds, and an
/// entry is refreshed at most once a second.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments or side effects (Linux 5.11+).
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The local endpoint owning `addr`, if the agent knows one.
#[inline(always)]
pub fn endpoint(addr: &Addr) -> Option<EndpointValue> {
    let key = EndpointKey { addr: *addr };
    // SAFETY: the kernel returned a valid pointer to a value of this map; it is read
    // once, by value (the agent may rewrite it concurrently: a torn read gives either
    // the old or the new endpoint's fields, each of which is a valid endpoint state).
    ENDPOINTS.get_ptr(key).map(|p| unsafe { p.read() })
}

/// The endpoint bound to host-side interface `ifindex`, if any.
#[inline(always)]
pub fn port(ifindex: u32) -> Option<EndpointValue> {
    // SAFETY: as `endpoint`.
    PORTS.get_ptr(ifindex).map(|p| unsafe { p.read() })
}

/// The identity of a remote address: the longest IDENTITIES prefix covering it.
/// Fails to `IDENTITY_WORLD` on a miss: an address no pod and no ipBlock covers is the
/// world, which only world-covering rules (ipBlock 0.0.0.0/0, `IDENTITY_ANY`) allow.
#[inline(always)]
pub fn identity(addr: &Addr) -> u32 {
    let key = Key::new(128, IdentityKey { addr: *addr });
    IDENTITIES.get(key).copied().unwrap_or(IDENTITY_WORLD)
}

/// The longest POLICY entry matching `key` with all its 96 bits.
#[inline(always)]
pub fn policy(key: PolicyKey) -> Option<PolicyValue> {
    POLICY.get(Key::new(POLICY_PREFIX_FULL, key)).copied()
}

/// The conntrack entry of a flow, writable in place (refresh, TCP state).
#[inline(always)]
pub fn conntrack(key: &CtKey) -> Option<*mut CtValue> {
    CONNTRACK.get_ptr_mut(key)
}

/// Creates or replaces a conntrack entry. Failing to insert (map full is impossible
/// for an LRU; only an allocation failure remains) fails open for this packet, which
/// policy already allowed, and closed for the reply, which policy will re-check.
#[inline(always)]
pub fn conntrack_put(key: &CtKey, value: &CtValue) {
    let _ = CONNTRACK.insert(key, value, 0);
}

/// Deletes a conntrack entry (a re-checked flow the current policy denies). A failed
/// delete (the entry already gone: another CPU deleted it, or the LRU evicted it)
/// leaves nothing to delete.
#[inline(always)]
pub fn conntrack_delete(key: &CtKey) {
    let _ = CONNTRACK.remove(key);
}

/// The recorded verdict of a first fragment.
#[inline(always)]
pub fn fragment(key: &FragKey) -> Option<FragValue> {
    // SAFETY: a valid value pointer from the kernel, read once by value.
    FRAGMENTS.get_ptr(key).map(|p| unsafe { p.read() })
}

/// Records a first fragment's verdict. An insert failure leaves no entry, so the
/// following fragments drop (fail closed): the first fragment alone is useless to the
/// receiver, which will time the datagram out.
#[inline(always)]
pub fn fragment_put(key: &FragKey, value: &FragValue) {
    let _ = FRAGMENTS.insert(key, value, 0);
}

/// Counts one verdict. The slot always exists (array map, index < REASON_SLOTS).
#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason.code()) {
        // SAFETY: per-CPU slot of this CPU; no other writer while we run.
        unsafe { *slot += 1 };
    }
}

/// Counts one new flow allowed (or decided) by `rule`, if the agent created its
/// entry; the program never inserts (the agent owns the key set).
#[inline(always)]
pub fn count_rule(rule: u32) {
    if let Some(slot) = RULE_HITS.get_ptr_mut(rule) {
        // SAFETY: per-CPU value of this CPU; no other writer while we run.
        unsafe { *slot += 1 };
    }
}

/// Sends one event. A full ring buffer loses the event and never blocks or changes
/// the verdict; the loss is counted in the `EVENTS_LOST` counter slot.
#[inline(always)]
pub fn emit(event: &Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(0);
        }
        None => {
            if let Some(slot) = COUNTERS.get_ptr_mut(COUNTER_EVENTS_LOST) {
                // SAFETY: per-CPU slot of this CPU.
                unsafe { *slot += 1 };
            }
        }
    }
}
