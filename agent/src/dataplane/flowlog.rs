//! The flow log: verdict events from the ring buffer as JSON lines (drops, and with
//! `--log-allows` allowed new flows), enriched with namespace/pod names and the
//! deciding policy, written to stdout or a file through a token bucket so that a
//! flood of drops costs a bounded number of lines; what the bucket refuses is
//! counted (`suppressed_before` on the next line, `netfence_flow_log_suppressed_total`).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use netfence_common::{DIR_EGRESS, Event, PROTO_ICMP, PROTO_ICMPV6, Reason};

use super::events::{addr_of, protocol_name, verdict_name};
use crate::image::{EndpointPolicyInfo, Image, RuleInfo};
use crate::model::State;
use crate::telemetry::Metrics;

/// What the flow log needs from the current state and image to name things.
#[derive(Debug, Default)]
pub struct FlowContext {
    /// Every pod address of the cluster → (namespace, pod).
    pods: BTreeMap<IpAddr, (String, String)>,
    rules: BTreeMap<u32, RuleInfo>,
    endpoint_policies: BTreeMap<u32, EndpointPolicyInfo>,
}

impl FlowContext {
    pub fn new(state: &State, image: &Image) -> Self {
        let pods = state
            .pods
            .iter()
            .filter(|pod| !pod.host_network)
            .flat_map(|pod| {
                pod.ips
                    .iter()
                    .map(|ip| (*ip, (pod.namespace.clone(), pod.name.clone())))
            })
            .collect();
        Self {
            pods,
            rules: image.rules.clone(),
            endpoint_policies: image.endpoint_policies.clone(),
        }
    }
}

/// One end of a flow.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct FlowEnd {
    pub ip: IpAddr,
    /// `None` for ICMP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The rule that allowed a flow.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct FlowRule {
    /// `namespace/name` of the NetworkPolicy.
    pub policy: String,
    /// `ingress` or `egress`, and the index in that list of the policy's spec.
    pub direction: &'static str,
    pub index: usize,
}

/// One JSON line of the flow log.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct FlowRecord {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// `drop`, `allow`, or `audit` (policy in audit mode would drop it; it passed).
    pub verdict: &'static str,
    /// The verdict reason (the `netfence_packets_total` label).
    pub reason: &'static str,
    /// Policy direction of the local pod: `ingress` or `egress`.
    pub direction: &'static str,
    pub protocol: String,
    pub src: FlowEnd,
    pub dst: FlowEnd,
    /// Host-side interface the packet crossed.
    pub ifindex: u32,
    /// The rule that allowed the flow (allows by policy only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<FlowRule>,
    /// The policies that isolate the local pod in this direction and of which no
    /// rule allowed the flow (policy drops, `policy_changed_deny` drops, and audits:
    /// the policies that would deny it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// Events the rate limit dropped since the previous line.
    pub suppressed_before: u64,
    /// Why the local pod's packets are dropped when no policy decided it: a pod
    /// netfence-cni announced that the agent's state does not have yet
    /// (`pod not yet programmed: deny until ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<&'static str>,
}

fn direction_name(direction: u8) -> &'static str {
    if direction == DIR_EGRESS {
        "egress"
    } else {
        "ingress"
    }
}

/// The record of `event`, named through `context`.
///
/// `pending`: the local pod (`ns/pod`) when it is a pod netfence-cni announced and the
/// state does not have yet: the record names it (from the CNI request) and says why.
pub fn record(
    event: &Event,
    context: &FlowContext,
    time: String,
    suppressed_before: u64,
    pending: Option<&str>,
) -> FlowRecord {
    let ports = !matches!(event.protocol, PROTO_ICMP | PROTO_ICMPV6);
    let end = |addr, port| {
        let ip = addr_of(addr);
        let (namespace, pod) = context
            .pods
            .get(&crate::image::canonical_addr(ip))
            .or_else(|| context.pods.get(&ip))
            .map_or((None, None), |(ns, pod)| {
                (Some(ns.clone()), Some(pod.clone()))
            });
        FlowEnd {
            ip,
            port: ports.then_some(port),
            namespace,
            pod,
        }
    };
    let reason = Reason::from_code(event.reason);
    let rule = (event.rule != 0)
        .then(|| context.rules.get(&event.rule))
        .flatten()
        .map(|info| FlowRule {
            policy: format!("{}/{}", info.namespace, info.policy),
            direction: direction_name(info.direction),
            index: info.index,
        });
    let by_policy = matches!(
        reason,
        Some(Reason::DropPolicy | Reason::AuditPolicy | Reason::DropPolicyChanged)
    );
    let isolated_by = match context.endpoint_policies.get(&event.policy) {
        Some(info) if by_policy && event.direction == DIR_EGRESS => info.egress.clone(),
        Some(info) if by_policy => info.ingress.clone(),
        _ => Vec::new(),
    };
    let mut src = end(&event.src, event.src_port);
    let mut dst = end(&event.dst, event.dst_port);
    if let Some(name) = pending {
        let local = if event.direction == DIR_EGRESS {
            &mut src
        } else {
            &mut dst
        };
        if local.pod.is_none()
            && let Some((namespace, pod)) = name.split_once('/')
        {
            local.namespace = Some(namespace.to_owned());
            local.pod = Some(pod.to_owned());
        }
    }
    FlowRecord {
        time,
        verdict: verdict_name(event.verdict),
        reason: reason.map_or("unknown", Reason::name),
        direction: direction_name(event.direction),
        protocol: protocol_name(event.protocol),
        src,
        dst,
        ifindex: event.ifindex,
        rule,
        isolated_by,
        suppressed_before,
        why: pending.map(|_| super::events::PENDING_WHY),
    }
}

/// A token bucket: `rate` tokens a second, at most `rate` stored (one second's burst).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` (at least 1) tokens.
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes a token if one is left at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where the flow log goes (`--flow-log stdout|PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "stdout" || s == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(s))
        })
    }
}

/// The flow log writer: rate limit, counting, one JSON line per passed event.
pub struct FlowLog {
    out: Box<dyn Write + Send>,
    bucket: TokenBucket,
    /// Refused since the last written line.
    pending_suppressed: u64,
    /// Refused in total.
    pub suppressed: u64,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for FlowLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowLog")
            .field("suppressed", &self.suppressed)
            .finish_non_exhaustive()
    }
}

impl FlowLog {
    /// Opens `target` (a file is appended to, created if missing).
    pub fn open(target: &Target, rate: u32, metrics: Option<Arc<Metrics>>) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            Target::Stdout => Box::new(io::stdout()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        Ok(Self::to_writer(out, rate, metrics))
    }

    pub fn to_writer(out: Box<dyn Write + Send>, rate: u32, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            out,
            bucket: TokenBucket::new(rate, Instant::now()),
            pending_suppressed: 0,
            suppressed: 0,
            metrics,
        }
    }

    /// Writes `event` as one line if the rate limit allows, else counts it.
    /// Writes `event` (`pending`: as [`record`]), or counts it when over the rate.
    pub fn log(
        &mut self,
        event: &Event,
        context: &FlowContext,
        pending: Option<&str>,
        now: Instant,
    ) -> io::Result<()> {
        if !self.bucket.take(now) {
            self.pending_suppressed += 1;
            self.suppressed += 1;
            if let Some(metrics) = &self.metrics {
                metrics.add_flow_log_suppressed(1);
            }
            return Ok(());
        }
        let line = record(
            event,
            context,
            rfc3339_now(),
            std::mem::take(&mut self.pending_suppressed),
            pending,
        );
        let mut text = serde_json::to_vec(&line).map_err(io::Error::other)?;
        text.push(b'\n');
        self.out.write_all(&text)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn rfc3339_now() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since.as_secs(), since.subsec_millis())
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, H. Hinnant).
fn rfc3339(secs: u64, millis: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[path = "flowlog_tests.rs"]
mod tests;
