//! Differential fuzz of the datapath: seeded random, truncated and mutated frames (every
//! EtherType, ARP, VLAN tags, IPv4 options and bad headers, IPv6 extension chains,
//! fragments, TCP/UDP/SCTP/ICMP/ICMPv6, ICMP errors quoting known and random flows,
//! ND/MLD) run through both TC programs with `BPF_PROG_TEST_RUN` and through a
//! userspace model written from the datapath spec `docs/verdicts.md` (`kernel/model.rs`, never
//! from `ebpf/src`). Per frame the kernel's action and reason (the one COUNTERS slot
//! that rose) are compared with the model's, and so are the conntrack entry and
//! fragment record it creates or updates; then the map state is put back, so every
//! frame meets the same fixed state (`kernel/fuzz_world.rs`).
//!
//! Fails when a frame the model drops passes (a hard failure, listed first), on any
//! other disagreement (grouped, with the shortest frame of each group in hex), and when
//! a reason the spec can reach in this state was never predicted (the generator must
//! explore). `DropPolicyChanged` needs `--existing-flows=cut` and is not covered.
//!
//! Needs root (CAP_BPF). `NFC_FUZZ_FRAMES` (default 50,000, what `cargo xtask test`
//! runs) and `NFC_FUZZ_SEED` (default 1) choose the run; the long run is
//! `cargo xtask fuzz [--frames 5000000] [--seed S]`, which runs this test in release
//! mode with `--nocapture` and prints frames/s and the reason histogram.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed setup step is a failed test"
)]

#[path = "kernel/fuzz_gen.rs"]
mod fuzz_gen;
#[path = "kernel/fuzz_rig.rs"]
mod fuzz_rig;
#[path = "kernel/fuzz_world.rs"]
mod fuzz_world;
#[path = "kernel/model.rs"]
mod model;
#[path = "kernel/model_parse.rs"]
mod model_parse;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Instant;

use fuzz_gen::Rng;
use fuzz_rig::{Rig, ktime_ns};
use model::{CtEffect, Hook, Verdict, World};
use netfence_common::reason::{COUNTER_EVENTS_LOST, REASON_SLOTS};
use netfence_common::{CtKey, CtValue, Reason};

const TC_ACT_SHOT: u32 = 2;
/// What every allow returns (TCX_NEXT), as `BPF_PROG_TEST_RUN` reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;
/// Frames per block; every fourth block runs without PORTS[1].
const BLOCK: usize = 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn hex(frame: &[u8]) -> String {
    frame.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn reason_name(r: Option<Reason>) -> &'static str {
    r.map_or("none", Reason::name)
}

/// A group of disagreements: how many, and the shortest frame seen.
#[derive(Debug, Default)]
struct Group {
    count: u64,
    example: Option<(Hook, Vec<u8>, String)>,
}

/// The kernel, the model's two worlds (with and without PORTS[1]) and the findings.
struct Fuzz {
    rig: Rig,
    worlds: [World; 2],
    with_port: usize,
    /// Pre-created entries, by key, as installed.
    flows: HashMap<CtKey, CtValue>,
    last_counters: Vec<u64>,
    /// Timestamps the pre-created entries were last written with.
    base_ns: u64,
    groups: BTreeMap<(u8, String), Group>,
    model_hist: BTreeMap<(Reason, bool), u64>,
    kernel_hist: BTreeMap<&'static str, u64>,
    refused: u64,
}

impl Fuzz {
    fn new() -> Self {
        let worlds = [fuzz_world::world(false), fuzz_world::world(true)];
        let mut rig = Rig::load();
        let base_ns = ktime_ns();
        rig.install(&worlds[1], base_ns);
        let flows = worlds[1].flows.iter().map(|f| (f.key, f.value)).collect();
        let last_counters = rig.counters();
        Self {
            rig,
            worlds,
            with_port: 1,
            flows,
            last_counters,
            base_ns,
            groups: BTreeMap::new(),
            model_hist: BTreeMap::new(),
            kernel_hist: BTreeMap::new(),
            refused: 0,
        }
    }

    fn world(&self) -> &World {
        &self.worlds[self.with_port]
    }

    fn set_port(&mut self, with_port: bool) {
        let with_port = usize::from(with_port);
        if with_port != self.with_port {
            self.with_port = with_port;
            self.rig.set_ports(&self.worlds[with_port]);
        }
    }

    /// Fresh timestamps for the pre-created entries (their ages stay what the model says).
    fn refresh(&mut self) {
        self.base_ns = ktime_ns();
        self.rig.refresh(&self.worlds[1], self.base_ns);
    }

    /// Severity 0: a model drop that passed; 1: the verdict; 2: map effects.
    fn note(&mut self, severity: u8, what: String, hook: Hook, frame: &[u8], detail: String) {
        let group = self.groups.entry((severity, what)).or_default();
        group.count += 1;
        if group
            .example
            .as_ref()
            .is_none_or(|(_, f, _)| frame.len() < f.len())
        {
            group.example = Some((hook, frame.to_vec(), detail));
        }
    }

    fn one(&mut self, hook: Hook, frame: &[u8]) {
        let expected = self.world().judge(hook, frame);
        let Some(action) = self.rig.run(hook, frame) else {
            self.refused += 1;
            return;
        };
        *self
            .model_hist
            .entry((expected.reason, hook == Hook::FromPod))
            .or_default() += 1;
        let counters = self.rig.counters();
        let risen: Vec<(usize, u64)> = (0..REASON_SLOTS as usize)
            .filter(|&i| i != COUNTER_EVENTS_LOST as usize && counters[i] != self.last_counters[i])
            .map(|i| (i, counters[i] - self.last_counters[i]))
            .collect();
        self.last_counters = counters;
        let got = match risen.as_slice() {
            [(slot, 1)] => Reason::from_code(*slot as u32),
            _ => None,
        };
        *self.kernel_hist.entry(reason_name(got)).or_default() += 1;
        let model_drop = expected.reason.is_drop();
        let summary = format!(
            "{hook:?}: model {} / kernel {} (action {action:#x})",
            expected.reason.name(),
            reason_name(got)
        );
        if model_drop && action != TC_ACT_SHOT {
            self.note(
                0,
                format!(
                    "{hook:?}: model {} passed as {}",
                    expected.reason.name(),
                    reason_name(got)
                ),
                hook,
                frame,
                summary.clone(),
            );
        }
        if got != Some(expected.reason) {
            let what = format!(
                "{hook:?}: model {} / kernel {} {risen:?}",
                expected.reason.name(),
                reason_name(got)
            );
            self.note(1, what, hook, frame, summary.clone());
        } else if (action == TC_ACT_SHOT) != model_drop || (!model_drop && action != TC_ACT_UNSPEC)
        {
            self.note(
                1,
                format!(
                    "{hook:?}: {} with action {action:#x}",
                    expected.reason.name()
                ),
                hook,
                frame,
                summary.clone(),
            );
        }
        let agree = got == Some(expected.reason);
        self.conntrack(hook, frame, &expected, agree);
        self.fragments(hook, frame, &expected, agree);
    }

    /// Compares CONNTRACK with the model's prediction, then restores it.
    fn conntrack(&mut self, hook: Hook, frame: &[u8], expected: &Verdict, agree: bool) {
        let mut created = false;
        for (key, value) in self.rig.conntrack() {
            let original = self.flows.get(&key).copied();
            let problem = match (expected.ct, original) {
                (
                    CtEffect::Create {
                        key: k,
                        origin,
                        rules,
                        n_rules,
                    },
                    _,
                ) if k == key => {
                    created = true;
                    let ok = value.origin == origin
                        && value.replied == 0
                        && rules[..n_rules].contains(&value.rule);
                    (!ok).then(|| {
                        format!(
                            "created entry {value:?}, expected origin {origin} rule in {:?}",
                            &rules[..n_rules]
                        )
                    })
                }
                (
                    CtEffect::Touch {
                        key: k,
                        replied,
                        state,
                    },
                    Some(o),
                ) if k == key => {
                    let ok = value.replied == replied
                        && value.state == state
                        && value.origin == o.origin
                        && value.rule == o.rule;
                    (!ok).then(|| {
                        format!("touched entry {value:?}, expected replied {replied} state {state}")
                    })
                }
                (_, Some(o)) => {
                    let same = CtValue {
                        last_seen_ns: o.last_seen_ns,
                        ..value
                    } == o;
                    (!same).then(|| format!("pre-created entry changed to {value:?}"))
                }
                (_, None) => Some(format!("unexpected entry {key:?} {value:?}")),
            };
            if let Some(detail) = problem
                && agree
            {
                self.note(
                    2,
                    format!("{hook:?} {}: conntrack", expected.reason.name()),
                    hook,
                    frame,
                    detail,
                );
            }
            match self.worlds[1].flows.iter().find(|f| f.key == key) {
                Some(f) => {
                    let want = CtValue {
                        last_seen_ns: self.base_ns - f.age_ns,
                        ..f.value
                    };
                    if value != want {
                        self.rig.put_conntrack(key, want);
                    }
                }
                None => self.rig.remove_conntrack(&key),
            }
        }
        if let CtEffect::Create { key, .. } = expected.ct
            && !created
            && agree
        {
            self.note(
                2,
                format!("{hook:?} {}: no entry", expected.reason.name()),
                hook,
                frame,
                format!("expected {key:?}"),
            );
        }
    }

    /// Checks a first fragment's record (allowed as the verdict; a drop may record
    /// nothing), then restores FRAGMENTS.
    fn fragments(&mut self, hook: Hook, frame: &[u8], expected: &Verdict, agree: bool) {
        let mut recorded = false;
        for (key, value) in self.rig.fragments() {
            let pre: Option<bool> = self.worlds[1].fragments.get(&key).copied();
            let ours = expected.first_fragment == Some(key);
            recorded |= ours;
            let problem = if ours {
                (value.allowed != u32::from(!expected.reason.is_drop()))
                    .then(|| format!("record {value:?}"))
            } else if let Some(allowed) = pre {
                (value.allowed != u32::from(allowed))
                    .then(|| format!("pre-created record {key:?} changed to {value:?}"))
            } else {
                Some(format!("unexpected record {key:?} {value:?}"))
            };
            if let Some(detail) = problem
                && agree
            {
                self.note(
                    2,
                    format!("{hook:?} {}: fragments", expected.reason.name()),
                    hook,
                    frame,
                    detail,
                );
            }
            match pre {
                Some(allowed) if ours || value.allowed != u32::from(allowed) => {
                    self.rig.put_fragment(
                        key,
                        netfence_common::FragValue {
                            last_seen_ns: self.base_ns,
                            allowed: u32::from(allowed),
                            rule: 0,
                        },
                    )
                }
                Some(_) => {}
                None => self.rig.remove_fragment(&key),
            }
        }
        if let Some(key) = expected.first_fragment
            && !recorded
            && agree
            && !expected.reason.is_drop()
        {
            self.note(
                2,
                format!("{hook:?} {}: no fragment record", expected.reason.name()),
                hook,
                frame,
                format!("{key:?}"),
            );
        }
    }

    fn report(&self, frames: u64, seconds: f64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{frames} frames in {seconds:.1} s: {:.0} frames/s, {} refused by test_run",
            frames as f64 / seconds,
            self.refused
        );
        let _ = writeln!(out, "model reasons (from_pod / to_pod):");
        for r in Reason::ALL {
            let (f, t) = (
                self.model_hist.get(&(r, true)),
                self.model_hist.get(&(r, false)),
            );
            let _ = writeln!(
                out,
                "  {:32} {:>9} {:>9}",
                r.name(),
                f.copied().unwrap_or(0),
                t.copied().unwrap_or(0)
            );
        }
        let _ = writeln!(out, "kernel reasons: {:?}", self.kernel_hist);
        out
    }

    fn findings(&self) -> String {
        let mut out = String::new();
        for ((severity, what), g) in &self.groups {
            let label = ["PASSED A MODEL DROP", "verdict", "maps"][usize::from(*severity)];
            let _ = writeln!(out, "[{label}] {what}: {} frames", g.count);
            if let Some((hook, frame, detail)) = &g.example {
                let _ = writeln!(out, "    {hook:?} {detail}\n    frame {}", hex(frame));
            }
        }
        out
    }
}

/// `NFC_FUZZ_FRAME=<hex>`: run that one frame through both hooks and print both
/// verdicts (to study a reported disagreement), instead of fuzzing.
fn probe(frame_hex: &str) {
    let frame: Vec<u8> = (0..frame_hex.len() / 2)
        .map(|i| u8::from_str_radix(&frame_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut fuzz = Fuzz::new();
    for hook in [Hook::FromPod, Hook::ToPod] {
        let v = fuzz.world().judge(hook, &frame);
        fuzz.one(hook, &frame);
        println!("{hook:?}: model {v:?}, kernel {:?}", fuzz.kernel_hist);
        fuzz.kernel_hist.clear();
    }
    println!("{}", fuzz.findings());
}

#[test]
fn kernel_and_model_agree_on_random_frames() {
    if let Ok(frame) = std::env::var("NFC_FUZZ_FRAME") {
        return probe(&frame);
    }
    let frames = env_u64("NFC_FUZZ_FRAMES", 50_000);
    let seed = env_u64("NFC_FUZZ_SEED", 1);
    let pools = fuzz_world::pools();
    let mut fuzz = Fuzz::new();
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut refreshed = Instant::now();
    for i in 0..frames as usize {
        if i % BLOCK == 0 {
            fuzz.set_port(i / BLOCK % 4 != 3);
            if refreshed.elapsed().as_secs_f64() > 1.0 {
                fuzz.refresh();
                refreshed = Instant::now();
            }
        }
        let hook = if rng.chance(1, 2) {
            Hook::FromPod
        } else {
            Hook::ToPod
        };
        let frame = fuzz_gen::frame(&mut rng, &pools);
        fuzz.one(hook, &frame);
    }
    let report = fuzz.report(frames, start.elapsed().as_secs_f64());
    println!("seed {seed}: {report}");
    let findings = fuzz.findings();
    assert!(
        findings.is_empty(),
        "seed {seed}: kernel and model disagree:\n{findings}\n{report}"
    );
    let unexplored: Vec<&str> = Reason::ALL
        .iter()
        .filter(|&&r| r != Reason::DropPolicyChanged)
        .filter(|&&r| {
            !fuzz.model_hist.contains_key(&(r, true)) && !fuzz.model_hist.contains_key(&(r, false))
        })
        .map(|r| r.name())
        .collect();
    assert!(
        unexplored.is_empty(),
        "seed {seed}: no frame reached {unexplored:?}\n{report}"
    );
}
