//! `netfence status`: what the pinned state under `--pin-dir` enforces, read from the
//! BPF file system and the agent's last-sync record, so it works whether or not an
//! agent runs: attachments (pinned TCX links), map fill, verdict counters, last sync,
//! the flags the agent enforces with (from the record) and the policy generation
//! (from the pinned SETTINGS map, so it is right after the agent stopped too).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use netfence_common::reason::COUNTER_EVENTS_LOST;
use netfence_common::{
    CtKey, CtValue, EndpointKey, EndpointValue, FragKey, FragValue, IdentityKey, PolicyKey,
    PolicyValue, Reason, Settings, map,
};

use super::{Output, StatusArgs};
use crate::dataplane::last_sync::{self, LastSync};
use crate::dataplane::loader::ExistingFlows;
use crate::dataplane::pin::{self, Hook, PinDir};
use crate::dataplane::sync::Mode;

/// Everything `status` reports.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub pin_dir: PathBuf,
    /// Whether `pin_dir` is a pin directory on a BPF file system.
    pub pinned: bool,
    /// This build's map layout, and whether its maps are pinned.
    pub layout: String,
    pub maps_pinned: bool,
    /// Map layouts of another netfence version found pinned (their contents are not read).
    pub other_layouts: Vec<String>,
    pub attachments: Vec<Attachment>,
    pub maps: Vec<MapFill>,
    /// Packets per verdict reason since the maps were created (all reasons listed).
    pub counters: BTreeMap<&'static str, u64>,
    /// Events the programs could not queue (ring buffer full).
    pub events_lost: u64,
    pub last_sync: Option<LastSync>,
    /// Whether the agent that wrote `last_sync` is running now.
    pub agent_running: bool,
    /// `--mode` of the agent that wrote `last_sync` (the pinned programs keep
    /// enforcing with it after it stopped). `None`: no record, or a record written
    /// before the flags were recorded. Likewise the next two.
    pub mode: Option<Mode>,
    /// `--existing-flows` of that agent.
    pub existing_flows: Option<ExistingFlows>,
    /// `--allow-node` of that agent.
    pub allow_node: Option<bool>,
    /// The policy generation in the pinned SETTINGS map: bumped by every sync that
    /// changed what a verdict depends on. `None` when the maps are not pinned.
    pub policy_generation: Option<u32>,
}

/// One pinned TCX link.
#[derive(Debug, serde::Serialize)]
pub struct Attachment {
    pub ifindex: u32,
    /// The interface name, `None` when no interface has that index any more.
    pub interface: Option<String>,
    /// `to_pod` (TC egress of the host veth: the pod's ingress policy) or `from_pod`
    /// (TC ingress: its egress policy).
    pub program: &'static str,
    pub tc_hook: &'static str,
}

/// Entries and capacity of one map.
#[derive(Debug, serde::Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let status = read(&args.pin_dir)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Text => print!("{}", text(&status)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the status of the pin directory `dir`.
pub fn read(dir: &Path) -> anyhow::Result<Status> {
    let last_sync = last_sync::read(&last_sync::path_for(dir))?;
    let agent_running = last_sync
        .as_ref()
        .is_some_and(|s| last_sync::agent_running(s.pid));
    let mut status = Status {
        mode: last_sync.as_ref().and_then(|s| s.mode),
        existing_flows: last_sync.as_ref().and_then(|s| s.existing_flows),
        allow_node: last_sync.as_ref().and_then(|s| s.allow_node),
        policy_generation: None,
        pin_dir: dir.to_owned(),
        pinned: false,
        layout: pin::layout(),
        maps_pinned: false,
        other_layouts: Vec::new(),
        attachments: Vec::new(),
        maps: Vec::new(),
        counters: BTreeMap::new(),
        events_lost: 0,
        last_sync,
        agent_running,
    };
    let Some(pins) = PinDir::existing(dir) else {
        return Ok(status);
    };
    status.pinned = true;
    status.other_layouts = pins
        .other_layouts()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    status.attachments = pins
        .links()
        .into_iter()
        .map(|(ifindex, hook, _)| Attachment {
            ifindex,
            interface: interface_name(ifindex),
            program: hook.suffix(),
            tc_hook: match hook {
                Hook::ToPod => "egress",
                Hook::FromPod => "ingress",
            },
        })
        .collect();
    status.maps_pinned = pins.has_own_layout();
    if status.maps_pinned {
        status.maps = fills(&pins)?;
        let counters = open::<PerCpuArray<MapData, u64>>(&pins, map::COUNTERS)?.0;
        let sum = |index: u32| -> anyhow::Result<u64> {
            let values = counters
                .get(&index, 0)
                .with_context(|| format!("reading COUNTERS[{index}]"))?;
            Ok(values.iter().sum())
        };
        for reason in Reason::ALL {
            status.counters.insert(reason.name(), sum(reason.code())?);
        }
        status.events_lost = sum(COUNTER_EVENTS_LOST)?;
        let settings = open::<Array<MapData, Settings>>(&pins, map::SETTINGS)?.0;
        let settings = settings.get(&0, 0).context("reading SETTINGS[0]")?;
        status.policy_generation = Some(settings.generation);
    }
    Ok(status)
}

/// Opens a pinned map of this build's layout as `T`, with its capacity.
fn open<T>(pins: &PinDir, name: &'static str) -> anyhow::Result<(T, u32)>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = pins.map_path(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let capacity = data
        .info()
        .with_context(|| format!("{name}: map info"))?
        .max_entries();
    let map = Map::from_map_data(data).with_context(|| format!("{name}: map type"))?;
    let typed = T::try_from(map)
        .with_context(|| format!("{name}: not the map type this netfence expects"))?;
    Ok((typed, capacity))
}

/// Counts the entries of every sized map (iterating conntrack is fine for a CLI).
fn fills(pins: &PinDir) -> anyhow::Result<Vec<MapFill>> {
    fn fill<E: std::error::Error + Send + Sync + 'static>(
        name: &'static str,
        capacity: u32,
        keys: impl Iterator<Item = Result<impl Sized, E>>,
    ) -> anyhow::Result<MapFill> {
        let mut entries = 0;
        for key in keys {
            key.with_context(|| format!("iterating {name}"))?;
            entries += 1;
        }
        Ok(MapFill {
            name,
            entries,
            capacity,
        })
    }
    let (m, c) = open::<HashMap<MapData, EndpointKey, EndpointValue>>(pins, map::ENDPOINTS)?;
    let endpoints = fill(map::ENDPOINTS, c, m.keys())?;
    let (m, c) = open::<HashMap<MapData, u32, EndpointValue>>(pins, map::PORTS)?;
    let ports = fill(map::PORTS, c, m.keys())?;
    let (m, c) = open::<LpmTrie<MapData, IdentityKey, u32>>(pins, map::IDENTITIES)?;
    let identities = fill(map::IDENTITIES, c, m.keys())?;
    let (m, c) = open::<LpmTrie<MapData, PolicyKey, PolicyValue>>(pins, map::POLICY)?;
    let policy = fill(map::POLICY, c, m.keys())?;
    let (m, c) = open::<HashMap<MapData, CtKey, CtValue>>(pins, map::CONNTRACK)?;
    let conntrack = fill(map::CONNTRACK, c, m.keys())?;
    let (m, c) = open::<HashMap<MapData, FragKey, FragValue>>(pins, map::FRAGMENTS)?;
    let fragments = fill(map::FRAGMENTS, c, m.keys())?;
    let (m, c) = open::<PerCpuHashMap<MapData, u32, u64>>(pins, map::RULE_HITS)?;
    let rules = fill(map::RULE_HITS, c, m.keys())?;
    Ok(vec![
        endpoints, ports, identities, policy, conntrack, fragments, rules,
    ])
}

fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// The human-readable form.
pub fn text(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let dir = status.pin_dir.display();
    let agent = match (&status.last_sync, status.agent_running) {
        (Some(s), true) => format!("running (pid {})", s.pid),
        (Some(s), false) => format!("not running (last pid {})", s.pid),
        (None, _) => "not running (no sync recorded)".to_owned(),
    };
    let _ = writeln!(out, "agent: {agent}");
    let _ = writeln!(out, "enforcing with: {}", flags_text(status));
    if !status.pinned {
        let _ = writeln!(
            out,
            "nothing pinned: {dir} is not a pin directory on a BPF file system (nothing enforced from it)"
        );
        return out;
    }
    let _ = writeln!(out, "pin dir: {dir}");
    if status.attachments.is_empty() {
        let _ = writeln!(
            out,
            "attached: no pinned links (clsact filters, used when TCX is unavailable, are not pinned and not listed)"
        );
    } else {
        let _ = writeln!(
            out,
            "attached ({} links, enforcing whether or not the agent runs):",
            status.attachments.len()
        );
        for a in &status.attachments {
            let name = a.interface.as_deref().unwrap_or("<gone>");
            let _ = writeln!(
                out,
                "  {name} (ifindex {}): {} on tc {}",
                a.ifindex, a.program, a.tc_hook
            );
        }
    }
    if !status.other_layouts.is_empty() {
        let _ = writeln!(
            out,
            "maps of another netfence version: {}",
            status.other_layouts.join(", ")
        );
    }
    if !status.maps_pinned {
        let _ = writeln!(
            out,
            "maps: none pinned in this version's layout {}",
            status.layout
        );
    } else {
        let _ = writeln!(out, "maps (layout {}):", status.layout);
        for m in &status.maps {
            let percent = m.entries as f64 * 100.0 / f64::from(m.capacity.max(1));
            let _ = writeln!(
                out,
                "  {:<11} {:>7} / {:<7} ({percent:.1}%)",
                m.name, m.entries, m.capacity
            );
        }
        if let Some(generation) = status.policy_generation {
            let _ = writeln!(out, "policy generation: {generation}");
        }
        let _ = writeln!(out, "counters (packets):");
        for (name, n) in &status.counters {
            let _ = writeln!(out, "  {name:<20} {n}");
        }
        let _ = writeln!(out, "  {:<20} {}", "events_lost", status.events_lost);
    }
    match &status.last_sync {
        Some(s) => {
            let age = last_sync::now_unix().saturating_sub(s.unix_time);
            let _ = writeln!(
                out,
                "last sync: generation {} ({}) {age}s ago: {} writes, {} failed; {} endpoints, {} identities, {} policy entries",
                s.generation,
                s.cause,
                s.writes,
                s.failed_writes,
                s.endpoints,
                s.identities,
                s.policy_entries
            );
        }
        None => {
            let _ = writeln!(out, "last sync: none recorded");
        }
    }
    out
}

/// The recorded flags as the command line spells them.
fn flags_text(status: &Status) -> String {
    fn name(value: &impl clap::ValueEnum) -> String {
        value
            .to_possible_value()
            .map_or_else(|| "?".to_owned(), |v| v.get_name().to_owned())
    }
    match (status.mode, status.existing_flows, status.allow_node) {
        (Some(mode), Some(flows), Some(allow_node)) => format!(
            "--mode={} --existing-flows={} --allow-node={allow_node}",
            name(&mode),
            name(&flows)
        ),
        _ if status.last_sync.is_none() => "unknown (no sync recorded)".to_owned(),
        _ => "not recorded (the last sync record predates them)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn a_missing_pin_dir_reports_nothing_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let status = read(&dir.path().join("nf9-none")).unwrap();
        assert!(!status.pinned);
        assert!(status.attachments.is_empty() && status.maps.is_empty());
        assert!(!status.agent_running);
        let text = text(&status);
        assert!(text.contains("nothing pinned:"), "{text}");
        assert!(
            text.contains("agent: not running (no sync recorded)"),
            "{text}"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["pinned"], false);
        assert_eq!(json["agent_running"], false);
        assert_eq!(json["last_sync"], serde_json::Value::Null);
    }

    fn pinned_status(last_sync: Option<LastSync>) -> Status {
        Status {
            pin_dir: PathBuf::from("/sys/fs/bpf/nfh6"),
            pinned: true,
            layout: "v9".into(),
            maps_pinned: true,
            other_layouts: Vec::new(),
            attachments: vec![Attachment {
                ifindex: 1,
                interface: Some("lo".into()),
                program: "to_pod",
                tc_hook: "egress",
            }],
            maps: vec![MapFill {
                name: map::ENDPOINTS,
                entries: 2,
                capacity: 16,
            }],
            counters: BTreeMap::from([
                (Reason::AuditPolicy.name(), 5),
                (Reason::DropPolicyChanged.name(), 2),
            ]),
            events_lost: 0,
            mode: last_sync.as_ref().and_then(|s| s.mode),
            existing_flows: last_sync.as_ref().and_then(|s| s.existing_flows),
            allow_node: last_sync.as_ref().and_then(|s| s.allow_node),
            last_sync,
            agent_running: false,
            policy_generation: Some(7),
        }
    }

    fn record() -> LastSync {
        LastSync {
            pin_dir: PathBuf::from("/sys/fs/bpf/nfh6"),
            pid: 4242,
            generation: 3,
            unix_time: 0,
            cause: "manifests".into(),
            writes: 10,
            failed_writes: 0,
            endpoints: 2,
            identities: 4,
            policy_entries: 6,
            rules: 1,
            mode: Some(Mode::Audit),
            existing_flows: Some(ExistingFlows::Cut),
            allow_node: Some(false),
        }
    }

    #[test]
    fn text_shows_the_flags_and_the_policy_generation() {
        let status = pinned_status(Some(record()));
        let shown = text(&status);
        let lines: Vec<&str> = shown.lines().collect();
        let (last, rest) = lines.split_last().unwrap();
        assert_eq!(
            rest,
            [
                "agent: not running (last pid 4242)",
                "enforcing with: --mode=audit --existing-flows=cut --allow-node=false",
                "pin dir: /sys/fs/bpf/nfh6",
                "attached (1 links, enforcing whether or not the agent runs):",
                "  lo (ifindex 1): to_pod on tc egress",
                "maps (layout v9):",
                "  ENDPOINTS         2 / 16      (12.5%)",
                "policy generation: 7",
                "counters (packets):",
                "  policy_audit         5",
                "  policy_changed_deny  2",
                "  events_lost          0",
            ]
        );
        assert!(
            last.starts_with("last sync: generation 3 (manifests) ")
                && last.ends_with(
                    "s ago: 10 writes, 0 failed; 2 endpoints, 4 identities, 6 policy entries"
                ),
            "{last}"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["mode"], "audit");
        assert_eq!(json["existing_flows"], "cut");
        assert_eq!(json["allow_node"], false);
        assert_eq!(json["policy_generation"], 7);
        assert_eq!(json["last_sync"]["mode"], "audit");
    }

    #[test]
    fn text_says_when_the_flags_are_not_known() {
        let mut old = record();
        (old.mode, old.existing_flows, old.allow_node) = (None, None, None);
        let old_text = text(&pinned_status(Some(old)));
        assert_eq!(
            old_text.lines().nth(1),
            Some("enforcing with: not recorded (the last sync record predates them)")
        );
        let mut none = pinned_status(None);
        none.policy_generation = None;
        let none_text = text(&none);
        assert_eq!(
            none_text.lines().take(2).collect::<Vec<_>>(),
            [
                "agent: not running (no sync recorded)",
                "enforcing with: unknown (no sync recorded)"
            ]
        );
        assert!(!none_text.contains("policy generation"), "{none_text}");
        let json = serde_json::to_value(&none).unwrap();
        assert_eq!(
            (
                &json["mode"],
                &json["existing_flows"],
                &json["allow_node"],
                &json["policy_generation"]
            ),
            (&Value::Null, &Value::Null, &Value::Null, &Value::Null)
        );
    }

    #[test]
    fn loopback_has_a_name() {
        assert_eq!(interface_name(1).as_deref(), Some("lo"));
        assert_eq!(interface_name(u32::MAX), None);
    }
}
