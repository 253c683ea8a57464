//! Verdict events from the EVENTS ring buffer, decoded and written to the log in a
//! form a person can read, with pod names filled in from the current image. Without
//! a flow log, lines are limited per interval and the rest summarised
//! ([`crate::telemetry::eventlog`]). An event of a pod that netfence-cni announced
//! and the state does not have yet (deny-all until ready) names the pod (from the
//! CNI request) and says so: `why="pod not yet programmed: deny until ready"`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use netfence_common::{
    Addr, DIR_EGRESS, Event, PROTO_ICMP, PROTO_ICMPV6, Reason, VERDICT_AUDIT, VERDICT_DROP,
};
use tokio::io::unix::AsyncFd;

use super::flowlog::{FlowContext, FlowLog};
use crate::image::{EndpointPolicyInfo, Image};
use crate::telemetry::eventlog::EventLimiter;

/// What a log line names: pod addresses (`ns/pod`) and endpoint policies (the
/// policies isolating their endpoints).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub pods: BTreeMap<IpAddr, String>,
    pub policies: BTreeMap<u32, EndpointPolicyInfo>,
    /// Addresses of pods netfence-cni announced that the state does not have yet:
    /// denied both ways until ready.
    pub pending: BTreeSet<IpAddr>,
}

/// Why a pending pod's packets are dropped.
pub const PENDING_WHY: &str = "pod not yet programmed: deny until ready";

impl Names {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, addr: &IpAddr) -> Option<&String> {
        self.pods.get(addr)
    }

    /// The name (`ns/pod`, or its address when the CNI request named none) of the
    /// event's local pod when it is pending.
    pub fn pending_pod(&self, event: &Event) -> Option<String> {
        self.pending_why(event)?;
        let local = addr_of(if event.direction == DIR_EGRESS {
            &event.src
        } else {
            &event.dst
        });
        Some(
            self.get(&local)
                .cloned()
                .unwrap_or_else(|| local.to_string()),
        )
    }

    /// [`PENDING_WHY`] when the event's local pod (the source of an egress event,
    /// the destination of an ingress one) is pending.
    pub fn pending_why(&self, event: &Event) -> Option<&'static str> {
        let local = if event.direction == DIR_EGRESS {
            event.src
        } else {
            event.dst
        };
        self.pending
            .contains(&addr_of(&local))
            .then_some(PENDING_WHY)
    }

    /// The policies that would deny a flow `event` reports as a policy drop or
    /// audit: those isolating the local endpoint in the event's direction.
    pub fn deciding_policies(&self, event: &Event) -> &[String] {
        let decided_by_policy = matches!(
            Reason::from_code(event.reason),
            Some(Reason::DropPolicy | Reason::AuditPolicy | Reason::DropPolicyChanged)
        );
        match self.policies.get(&event.policy) {
            Some(info) if decided_by_policy && event.direction == DIR_EGRESS => &info.egress,
            Some(info) if decided_by_policy => &info.ingress,
            _ => &[],
        }
    }
}

/// Names of every pod address an image knows (local endpoints and peers), and its
/// endpoint policies.
pub fn names(image: &Image) -> Names {
    Names {
        pods: image
            .endpoints
            .iter()
            .map(|(addr, endpoint)| (*addr, format!("{}/{}", endpoint.namespace, endpoint.pod)))
            .collect(),
        policies: image.endpoint_policies.clone(),
        pending: image
            .endpoints
            .iter()
            .filter(|(_, endpoint)| crate::compile::announced::is_deny_all(endpoint))
            .map(|(addr, _)| *addr)
            .collect(),
    }
}

/// The flow-log and log-line word of an event's verdict.
pub fn verdict_name(verdict: u8) -> &'static str {
    match verdict {
        VERDICT_DROP => "drop",
        VERDICT_AUDIT => "audit",
        _ => "allow",
    }
}

/// Decodes one ring-buffer record; `None` if it is not a whole `Event`.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: `Event` is `#[repr(C)]`, valid for any bit pattern (common's size
    // assertion fixes its layout) and the slice holds at least that many bytes;
    // `read_unaligned` makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// An address from its 16-byte map form (IPv4-mapped → IPv4).
pub fn addr_of(addr: &Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if *addr == [0; 16] => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(v6),
    }
}

/// An event with names, printable as one log line.
#[derive(Debug)]
pub struct Described<'a> {
    pub event: &'a Event,
    pub names: &'a Names,
}

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.event;
        let verdict = verdict_name(e.verdict);
        let reason = Reason::from_code(e.reason).map_or("unknown", Reason::name);
        let direction = if e.direction == DIR_EGRESS {
            "egress"
        } else {
            "ingress"
        };
        let protocol = protocol_name(e.protocol);
        let (src, dst) = (addr_of(&e.src), addr_of(&e.dst));
        write!(
            f,
            "{verdict} {direction} {protocol} {} -> {} reason={reason} ifindex={}",
            endpoint(src, e.src_port, e.protocol, self.names),
            endpoint(dst, e.dst_port, e.protocol, self.names),
            e.ifindex,
        )?;
        if e.rule != 0 {
            write!(f, " rule={}", e.rule)?;
        }
        let policies = self.names.deciding_policies(e);
        if !policies.is_empty() {
            let label = if e.verdict == VERDICT_AUDIT {
                "would_deny"
            } else {
                "isolated_by"
            };
            write!(f, " {label}={}", policies.join(","))?;
        }
        if let Some(why) = self.names.pending_why(e) {
            write!(f, " why=\"{why}\"")?;
        }
        Ok(())
    }
}

fn endpoint(addr: IpAddr, port: u16, protocol: u8, names: &Names) -> String {
    let with_port = match (addr, protocol) {
        (_, PROTO_ICMP | PROTO_ICMPV6) => addr.to_string(),
        (IpAddr::V4(v4), _) => format!("{v4}:{port}"),
        (IpAddr::V6(v6), _) => format!("[{v6}]:{port}"),
    };
    match names.get(&addr) {
        Some(name) => format!("{with_port} ({name})"),
        None => with_port,
    }
}

/// The flow log and the latest names it uses.
pub type Flows = (FlowLog, tokio::sync::watch::Receiver<Arc<FlowContext>>);

/// Reads events until the task is dropped: each goes to the flow log when there is
/// one, else to the agent's log through `limiter` (the lines over its limit are
/// summarised when its interval ends, checked every second).
pub async fn read(
    ring: RingBuf<MapData>,
    names: tokio::sync::watch::Receiver<Arc<Names>>,
    mut flows: Option<Flows>,
    mut limiter: EventLimiter,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as
    // long as the `AsyncFd` owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let mut guard = tokio::select! {
            guard = ring.readable_mut() => guard?,
            _ = tick.tick() => {
                if let Some(summary) = limiter.tick(std::time::Instant::now()) {
                    tracing::warn!(target: "netfence::flow", "{summary}");
                }
                continue;
            }
        };
        let current = Arc::clone(&names.borrow());
        let context = flows.as_ref().map(|(_, rx)| Arc::clone(&rx.borrow()));
        while let Some(item) = guard.get_inner_mut().next() {
            match decode(&item) {
                Some(event) => {
                    if let (Some((log, _)), Some(context)) = (flows.as_mut(), context.as_deref()) {
                        let pending = current.pending_pod(&event);
                        let now = std::time::Instant::now();
                        if let Err(error) = log.log(&event, context, pending.as_deref(), now) {
                            tracing::warn!("writing the flow log: {error}");
                        }
                        continue;
                    }
                    log_line(&event, &current, &mut limiter);
                }
                None => tracing::warn!("short event record ({} bytes)", item.len()),
            }
        }
        if let Some((log, _)) = flows.as_mut()
            && let Err(error) = log.flush()
        {
            tracing::warn!("writing the flow log: {error}");
        }
        guard.clear_ready();
    }
}

/// One event to the agent's log, within the limiter's allowance.
fn log_line(event: &Event, names: &Names, limiter: &mut EventLimiter) {
    let line = Described { event, names };
    let (summary, show) = limiter.event(std::time::Instant::now(), || group(event, names));
    if let Some(summary) = summary {
        tracing::warn!(target: "netfence::flow", "{summary}");
    }
    if !show {
        return;
    }
    if event.verdict == VERDICT_DROP || event.verdict == VERDICT_AUDIT {
        tracing::warn!(target: "netfence::flow", "{line}");
    } else {
        tracing::info!(target: "netfence::flow", "{line}");
    }
}

/// An event's flow group in a summary: the line without ports, ifindex and rule.
pub fn group(event: &Event, names: &Names) -> String {
    let name = |addr: IpAddr| match names.get(&addr) {
        Some(name) => format!("{addr} ({name})"),
        None => addr.to_string(),
    };
    let reason = Reason::from_code(event.reason).map_or("unknown", Reason::name);
    let direction = if event.direction == DIR_EGRESS {
        "egress"
    } else {
        "ingress"
    };
    let mut text = format!(
        "{} {direction} {} {} -> {} reason={reason}",
        verdict_name(event.verdict),
        protocol_name(event.protocol),
        name(addr_of(&event.src)),
        name(addr_of(&event.dst)),
    );
    if let Some(why) = names.pending_why(event) {
        text.push_str(&format!(" why=\"{why}\""));
    }
    text
}

/// A packet's protocol in drop lines and the flow log: its name, else `proto-N`.
pub(super) fn protocol_name(protocol: u8) -> String {
    netfence_common::protocol_name(protocol)
        .map_or_else(|| format!("proto-{protocol}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netfence_common::PROTO_TCP;
    use netfence_common::v4_mapped;

    #[test]
    fn drop_event_reads_with_names_ports_and_reason() {
        let event = Event {
            src: v4_mapped([198, 18, 0, 2]),
            dst: v4_mapped([198, 18, 0, 3]),
            ifindex: 7,
            reason: Reason::DropPolicy.code(),
            policy: 9,
            rule: 0,
            src_port: 40000,
            dst_port: 3306,
            protocol: PROTO_TCP,
            direction: netfence_common::DIR_INGRESS,
            verdict: VERDICT_DROP,
            _pad: 0,
        };
        let names = Names {
            pods: BTreeMap::from([(IpAddr::from([198, 18, 0, 3]), "prod/db".to_owned())]),
            policies: BTreeMap::new(),
            pending: BTreeSet::new(),
        };
        let line = Described {
            event: &event,
            names: &names,
        }
        .to_string();
        assert_eq!(
            line,
            "drop ingress TCP 198.18.0.2:40000 -> 198.18.0.3:3306 (prod/db) reason=policy_deny ifindex=7"
        );
    }

    #[test]
    fn audit_and_changed_policy_events_name_the_verdict_and_the_policies() {
        let mut event = Event {
            src: v4_mapped([198, 18, 0, 2]),
            dst: v4_mapped([198, 18, 0, 3]),
            ifindex: 7,
            reason: Reason::AuditPolicy.code(),
            policy: 9,
            rule: 0,
            src_port: 40000,
            dst_port: 3306,
            protocol: PROTO_TCP,
            direction: netfence_common::DIR_INGRESS,
            verdict: VERDICT_AUDIT,
            _pad: 0,
        };
        let names = Names {
            pods: BTreeMap::new(),
            policies: BTreeMap::from([(
                9,
                EndpointPolicyInfo {
                    ingress: vec!["prod/db-lockdown".into()],
                    egress: vec!["prod/other".into()],
                },
            )]),
            pending: BTreeSet::new(),
        };
        let line = Described {
            event: &event,
            names: &names,
        }
        .to_string();
        assert_eq!(
            line,
            "audit ingress TCP 198.18.0.2:40000 -> 198.18.0.3:3306 reason=policy_audit ifindex=7 would_deny=prod/db-lockdown"
        );
        event.reason = Reason::DropPolicyChanged.code();
        event.verdict = VERDICT_DROP;
        event.direction = DIR_EGRESS;
        let line = Described {
            event: &event,
            names: &names,
        }
        .to_string();
        assert!(line.starts_with("drop egress TCP"), "{line}");
        assert!(
            line.ends_with("reason=policy_changed_deny ifindex=7 isolated_by=prod/other"),
            "{line}"
        );
    }

    #[test]
    fn decode_rejects_short_records_and_round_trips_whole_ones() {
        assert!(decode(&[0u8; 10]).is_none());
        let mut event = Event {
            src: [0; 16],
            dst: [0; 16],
            ifindex: 1,
            reason: 17,
            policy: 2,
            rule: 3,
            src_port: 4,
            dst_port: 5,
            protocol: 6,
            direction: 1,
            verdict: 0,
            _pad: 0,
        };
        event.src[15] = 1;
        // SAFETY: reading a repr(C) value's bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<Event>())
        };
        assert_eq!(decode(bytes), Some(event));
        assert_eq!(addr_of(&event.src), IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(
            addr_of(&v4_mapped([10, 1, 2, 3])),
            IpAddr::from([10, 1, 2, 3])
        );
    }

    #[test]
    fn a_pending_pods_drop_names_it_and_says_why_and_groups_leave_ports_out() {
        let event = Event {
            src: v4_mapped([198, 18, 0, 12]),
            dst: v4_mapped([198, 18, 0, 10]),
            ifindex: 7,
            reason: Reason::DropPolicy.code(),
            policy: 0,
            rule: 0,
            src_port: 40000,
            dst_port: 80,
            protocol: PROTO_TCP,
            direction: netfence_common::DIR_EGRESS,
            verdict: VERDICT_DROP,
            _pad: 0,
        };
        let new = IpAddr::from([198, 18, 0, 12]);
        let mut names = Names {
            pods: BTreeMap::from([(new, "x/new".to_owned())]),
            policies: BTreeMap::new(),
            pending: BTreeSet::from([new]),
        };
        let line = Described {
            event: &event,
            names: &names,
        }
        .to_string();
        assert_eq!(
            line,
            "drop egress TCP 198.18.0.12:40000 (x/new) -> 198.18.0.10:80 reason=policy_deny ifindex=7 why=\"pod not yet programmed: deny until ready\""
        );
        assert_eq!(names.pending_pod(&event).as_deref(), Some("x/new"));
        assert_eq!(
            group(&event, &names),
            "drop egress TCP 198.18.0.12 (x/new) -> 198.18.0.10 reason=policy_deny why=\"pod not yet programmed: deny until ready\""
        );
        // Once the pod is in the state (no longer pending): a plain drop line.
        names.pending.clear();
        assert_eq!(names.pending_pod(&event), None);
        assert!(!group(&event, &names).contains("why="));
    }

    #[test]
    fn names_mark_the_deny_all_endpoints_announced_by_the_cni_as_pending() {
        let mut image = Image::default();
        let announced = IpAddr::from([198, 18, 0, 12]);
        image
            .endpoints
            .insert(announced, crate::compile::announced::deny_all("x", "new"));
        let names = names(&image);
        assert_eq!(names.pending, BTreeSet::from([announced]));
        assert_eq!(names.get(&announced).map(String::as_str), Some("x/new"));
    }
}
