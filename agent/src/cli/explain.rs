//! `netfence explain`: the verdict for one connection, and the allow/deny matrix of
//! every pod pair, both computed through the compiled image's `lookup` (the userspace
//! mirror of the kernel lookup), never a second evaluator: what `explain` says is what
//! the datapath does. The image is compiled with every pod local (`node = None`), and
//! put in the node mode asked for (`--mode audit` audits every isolated direction, as
//! `netfence run --mode audit` programs the endpoints).
//!
//! A connection from a pod to its own address never reaches the pod's veth (the
//! kernel keeps it on the pod's loopback), so no policy can drop it: `explain` and the
//! matrix report such self pairs as allowed, as the upstream e2e tests do.
//!
//! A destination may be a Service ClusterIP (`svc/NS/NAME` or the address): the
//! source's egress check decides it through the entry its backends' rule wrote for the
//! VIP; the VIP itself is no local endpoint, so it has no ingress check (each backend's
//! own ingress policy decides after the DNAT).

mod matrix;
mod service;
#[cfg(test)]
mod tests;
pub mod whatif;
pub mod why;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use netfence_common::{DIR_INGRESS, PROTO_ICMP, PROTO_ICMPV6};
use serde::Serialize;

pub use self::matrix::{Matrix, matrix, matrix_with};
pub use self::service::ServicePeer;
use super::output::Format;
use super::{ExplainArgs, ExplainProtocol, Family, input};
use crate::dataplane::sync::Mode;
use crate::image::{DirectionVerdict, Image, Packet, canonical_addr};
use crate::model::State;

/// The source port `explain` puts in its packets (policy never looks at it).
const SOURCE_PORT: u16 = 40000;

/// Why `explain` cannot answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("{0:?}: expected NAMESPACE/POD, svc/NAMESPACE/NAME or an IP address")]
    BadTarget(String),
    #[error("no pod {0} in the manifests")]
    NoSuchPod(String),
    #[error(
        "{0} has no pod IP of its own (it is hostNetwork, has no IP yet, or has terminated): no policy applies to it"
    )]
    NotAnEndpoint(String),
    #[error("no Service {0} in the manifests")]
    NoSuchService(String),
    #[error(
        "Service {0} has no ClusterIP (headless or ExternalName): connections go to its pods directly; explain --to one of them"
    )]
    NoClusterIp(String),
    #[error(
        "--from {0}: a Service is only a destination (its ClusterIP sends nothing); explain from a pod"
    )]
    ServiceAsSource(String),
    #[error("{from} and {to} have no address family in common")]
    NoCommonFamily { from: String, to: String },
    #[error("--port is required for {0}")]
    PortRequired(&'static str),
}

/// One end of a connection: its addresses (one per family) and its pod or Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addrs: Vec<IpAddr>,
    /// `ns/name` of the pod owning the address(es).
    pub pod: Option<String>,
    /// `ns/name` of the Service whose ClusterIP(s) the addresses are.
    pub service: Option<String>,
}

/// Resolves `NS/POD`, `svc/NS/NAME` (the Service's first ClusterIP of each family) or
/// an IP address against the state and image.
pub fn resolve(state: &State, image: &Image, text: &str) -> Result<Target, ExplainError> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        let addr = canonical_addr(addr);
        let pod = image
            .endpoints
            .get(&addr)
            .map(|e| format!("{}/{}", e.namespace, e.pod));
        return Ok(Target {
            addrs: vec![addr],
            pod,
            service: service::of_vip(image, addr),
        });
    }
    if let Some(name) = service::named(text) {
        return service::resolve(state, text, name);
    }
    let Some((namespace, name)) = text.split_once('/') else {
        return Err(ExplainError::BadTarget(text.to_owned()));
    };
    let pod = state
        .pods
        .iter()
        .find(|p| p.namespace == namespace && p.name == name)
        .ok_or_else(|| ExplainError::NoSuchPod(text.to_owned()))?;
    if !pod.is_live_endpoint() {
        return Err(ExplainError::NotAnEndpoint(text.to_owned()));
    }
    let mut addrs: Vec<IpAddr> = pod.ips.iter().map(|ip| canonical_addr(*ip)).collect();
    addrs.sort_by_key(IpAddr::is_ipv6);
    Ok(Target {
        addrs,
        pod: Some(text.to_owned()),
        service: None,
    })
}

/// What a question asks besides its two ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub protocol: ExplainProtocol,
    /// The destination port (ignored for ICMP).
    pub port: u16,
    /// One family, or every family both ends have (`None`).
    pub family: Option<Family>,
    /// The node mode (`netfence run --mode`).
    pub mode: Mode,
}

impl Probe {
    /// A probe in enforce mode.
    pub fn new(protocol: ExplainProtocol, port: u16, family: Option<Family>) -> Self {
        Self {
            protocol,
            port,
            family,
            mode: Mode::Enforce,
        }
    }

    /// The port reported: 0 for ICMP, which has none.
    fn reported_port(&self) -> u16 {
        if self.protocol == ExplainProtocol::Icmp {
            0
        } else {
            self.port
        }
    }
}

/// `image` as a node in `mode` enforces it: in `Mode::Audit` every isolated direction
/// of every endpoint is audited, as the engine compiles for `netfence run --mode
/// audit` ([`crate::compile::audit_all`]).
pub fn in_mode(image: &Image, mode: Mode) -> Cow<'_, Image> {
    match mode {
        Mode::Enforce => Cow::Borrowed(image),
        Mode::Audit => {
            let mut audited = image.clone();
            crate::compile::audit_all(&mut audited);
            Cow::Owned(audited)
        }
    }
}

/// The IP protocol number of `protocol` for the family of `addr`.
fn protocol_number(protocol: ExplainProtocol, addr: IpAddr) -> u8 {
    match protocol {
        ExplainProtocol::Tcp => netfence_common::PROTO_TCP,
        ExplainProtocol::Udp => netfence_common::PROTO_UDP,
        ExplainProtocol::Sctp => netfence_common::PROTO_SCTP,
        ExplainProtocol::Icmp if addr.is_ipv6() => PROTO_ICMPV6,
        ExplainProtocol::Icmp => PROTO_ICMP,
    }
}

fn family_of(addr: IpAddr) -> Family {
    if addr.is_ipv4() {
        Family::Ipv4
    } else {
        Family::Ipv6
    }
}

/// One direction's check, as `explain` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `ns/name` of the endpoint that checks (`None`: the address is no pod).
    pub endpoint: Option<String>,
    /// `not_local` (no pod: nothing to check), `not_isolated`, `allowed`, `denied`,
    /// `audited` (no rule allows it, but the direction is audited — every isolating
    /// policy is in audit mode, or the node is (`--mode audit`): it passes, reported
    /// `audit`), `loopback` (a pod talking to itself).
    pub verdict: &'static str,
    /// The policies that isolate the endpoint in this direction.
    pub isolated_by: Vec<String>,
    /// The rule that allows it, as `ns/policy direction[index]`.
    pub rule: Option<String>,
    /// The rule id (the RULE_HITS key and the `rule=` of flow-log lines).
    pub rule_id: Option<u32>,
    /// When `denied` or `audited`: per isolating policy, per rule in this direction,
    /// whether the peer or the port did not match. Absent otherwise, and for a
    /// Service ClusterIP destination (its backends' rules decide).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<why::PolicyWhy>,
}

/// The verdict for one address pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Connection {
    pub family: Family,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The connection passes (audited directions pass).
    pub allowed: bool,
    /// It passes only because a direction is audited: enforcing, it would be denied.
    pub audited: bool,
    /// The identity the destination's ingress check sees the source as, and back.
    pub src_identity: u32,
    pub dst_identity: u32,
    /// At the source (its egress policy).
    pub egress: Check,
    /// At the destination (its ingress policy).
    pub ingress: Check,
    /// When `dst` is a Service ClusterIP: the Service, and the backend whose rule
    /// allows the VIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServicePeer>,
}

/// The answer to `explain --from --to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub from: String,
    pub to: String,
    pub protocol: &'static str,
    pub port: u16,
    /// The node mode explained (`enforce` or `audit`).
    pub mode: Mode,
    pub connections: Vec<Connection>,
}

impl Explanation {
    /// Allowed in every family explained.
    pub fn allowed(&self) -> bool {
        self.connections.iter().all(|c| c.allowed)
    }
}

fn check(image: &Image, local: IpAddr, verdict: DirectionVerdict, direction: u8) -> Check {
    let endpoint = image.endpoints.get(&local);
    let isolated_by = endpoint
        .and_then(|e| image.endpoint_policies.get(&e.policy))
        .map(|info| {
            if direction == DIR_INGRESS {
                info.ingress.clone()
            } else {
                info.egress.clone()
            }
        })
        .unwrap_or_default();
    let (word, rule_id) = match verdict {
        DirectionVerdict::NotLocal => ("not_local", None),
        DirectionVerdict::NotIsolated => ("not_isolated", None),
        DirectionVerdict::Allowed { rule } => ("allowed", Some(rule)),
        DirectionVerdict::Denied => ("denied", None),
        DirectionVerdict::Audited => ("audited", None),
    };
    Check {
        endpoint: endpoint.map(|e| format!("{}/{}", e.namespace, e.pod)),
        verdict: word,
        isolated_by,
        rule: rule_id.and_then(|id| rule_name(image, id)),
        rule_id,
        why: Vec::new(),
    }
}

/// A rule as `ns/policy direction[index]`.
fn rule_name(image: &Image, id: u32) -> Option<String> {
    image.rules.get(&id).map(|info| {
        let direction = if info.direction == DIR_INGRESS {
            "ingress"
        } else {
            "egress"
        };
        format!(
            "{}/{} {direction}[{}]",
            info.namespace, info.policy, info.index
        )
    })
}

/// The verdict for a new connection `src → dst`, through `Image::lookup`.
pub fn connection(
    image: &Image,
    src: IpAddr,
    dst: IpAddr,
    protocol: ExplainProtocol,
    port: u16,
) -> Connection {
    let (src, dst) = (canonical_addr(src), canonical_addr(dst));
    let protocol = protocol_number(protocol, dst);
    let dst_port = if matches!(protocol, PROTO_ICMP | PROTO_ICMPV6) {
        0
    } else {
        port
    };
    let packet = Packet {
        src,
        dst,
        protocol,
        src_port: SOURCE_PORT,
        dst_port,
    };
    let verdict = image.lookup(&packet);
    let mut egress = check(image, src, verdict.egress, netfence_common::DIR_EGRESS);
    let mut ingress = check(image, dst, verdict.ingress, DIR_INGRESS);
    let mut allowed = verdict.allowed();
    if src == dst && image.endpoints.contains_key(&src) {
        // Traffic to the pod's own address stays on its loopback.
        egress.verdict = "loopback";
        ingress.verdict = "loopback";
        allowed = true;
    }
    let audited = allowed && (egress.verdict == "audited" || ingress.verdict == "audited");
    Connection {
        family: family_of(dst),
        src,
        dst,
        allowed,
        audited,
        src_identity: image.identity_of(src),
        dst_identity: image.identity_of(dst),
        egress,
        ingress,
        service: None,
    }
}

/// Explains `from → to` in enforce mode (see [`explain_with`]).
pub fn explain(
    state: &State,
    image: &Image,
    from: &str,
    to: &str,
    protocol: ExplainProtocol,
    port: u16,
    family: Option<Family>,
) -> Result<Explanation, ExplainError> {
    explain_with(state, image, from, to, &Probe::new(protocol, port, family))
}

/// Explains `from → to` in `probe.family`, or in every family both ends have, with
/// the image in `probe.mode`.
pub fn explain_with(
    state: &State,
    image: &Image,
    from: &str,
    to: &str,
    probe: &Probe,
) -> Result<Explanation, ExplainError> {
    let image = in_mode(image, probe.mode);
    if service::named(from).is_some() {
        return Err(ExplainError::ServiceAsSource(from.to_owned()));
    }
    let source = resolve(state, &image, from)?;
    let destination = resolve(state, &image, to)?;
    let mut connections = Vec::new();
    for src in &source.addrs {
        for dst in &destination.addrs {
            let same = src.is_ipv4() == dst.is_ipv4();
            if same && probe.family.is_none_or(|f| f == family_of(*dst)) {
                let mut c = connection(&image, *src, *dst, probe.protocol, probe.port);
                let protocol = protocol_number(probe.protocol, *dst);
                c.service = service::peer(state, &image, &c, protocol, probe.reported_port());
                if c.service.is_none() {
                    explain_why(state, &mut c, protocol, probe.reported_port());
                }
                connections.push(c);
            }
        }
    }
    if connections.is_empty() {
        return Err(ExplainError::NoCommonFamily {
            from: from.to_owned(),
            to: to.to_owned(),
        });
    }
    Ok(Explanation {
        from: from.to_owned(),
        to: to.to_owned(),
        protocol: probe.protocol.as_str(),
        port: probe.reported_port(),
        mode: probe.mode,
        connections,
    })
}

/// Fills in `why` for each direction that denies (or audits what it would deny).
fn explain_why(state: &State, c: &mut Connection, protocol: u8, port: u16) {
    for (check, ingress) in [(&mut c.egress, false), (&mut c.ingress, true)] {
        if matches!(check.verdict, "denied" | "audited") {
            check.why = why::why(
                state,
                &check.isolated_by,
                ingress,
                c.src,
                c.dst,
                protocol,
                port,
            );
        }
    }
}

fn check_text(out: &mut String, what: &str, check: &Check, mode: Mode) {
    let who = check.endpoint.as_deref().unwrap_or("-");
    let by = check.isolated_by.join(", ");
    let _ = match check.verdict {
        "not_local" => writeln!(
            out,
            "  {what}: the address is no pod: no {what} policy to check"
        ),
        "loopback" => writeln!(
            out,
            "  {what} at {who}: a pod's traffic to itself stays on its loopback: allowed"
        ),
        "not_isolated" => writeln!(
            out,
            "  {what} at {who}: not isolated (no policy selects it for {what}): allowed"
        ),
        "audited" if mode == Mode::Audit => writeln!(
            out,
            "  {what} at {who}: isolated by {by}; no rule allows it: passes (audit, --mode audit: would be denied by {by})"
        ),
        "audited" => writeln!(
            out,
            "  {what} at {who}: isolated by {by} in audit mode; no rule allows it: passes (audit: would be denied by {by})"
        ),
        _ => match &check.rule {
            Some(rule) => writeln!(
                out,
                "  {what} at {who}: isolated by {by}; allowed by {rule} (rule id {})",
                check.rule_id.unwrap_or_default()
            ),
            None => writeln!(
                out,
                "  {what} at {who}: isolated by {by}; no rule allows it: DENIED"
            ),
        },
    };
    why::text(out, what, &check.why);
}

impl Explanation {
    /// The text form.
    pub fn text(&self) -> String {
        self.text_with(false)
    }

    /// The text form; `wide` adds each connection's identities (the IDENTITIES
    /// values the checks see).
    pub fn text_with(&self, wide: bool) -> String {
        let mut out = String::new();
        if self.mode == Mode::Audit {
            let _ = writeln!(
                out,
                "mode audit: every isolated direction is audited (as netfence run --mode audit): what no rule allows passes, reported as audit"
            );
        }
        for c in &self.connections {
            let port = if self.port == 0 {
                String::new()
            } else {
                format!(" port {}", self.port)
            };
            let name = |check: &Check, addr: IpAddr| match (&check.endpoint, &c.service) {
                (Some(pod), _) => format!(" ({pod})"),
                (None, Some(service)) if service.vip == addr => {
                    format!(" (Service {})", service.name)
                }
                (None, _) => String::new(),
            };
            let verdict = match (c.allowed, c.audited) {
                (true, true) => "ALLOWED (audit: would be denied)",
                (true, false) => "ALLOWED",
                (false, _) => "DENIED",
            };
            let _ = writeln!(
                out,
                "{} {}{} -> {}{}{port}: {verdict}",
                self.protocol,
                c.src,
                name(&c.egress, c.src),
                c.dst,
                name(&c.ingress, c.dst)
            );
            if wide {
                let _ = writeln!(
                    out,
                    "  identities: source {}, destination {}",
                    c.src_identity, c.dst_identity
                );
            }
            check_text(&mut out, "egress", &c.egress, self.mode);
            match &c.service {
                Some(service) => service::text(&mut out, c, service, self.protocol, self.port),
                None => check_text(&mut out, "ingress", &c.ingress, self.mode),
            }
        }
        out
    }
}

/// Runs `netfence explain`. Exit codes, as `kubectl auth can-i`: 0 allowed (in every
/// family explained; audited counts as allowed, it passes), 1 denied, 2 bad input or
/// any other failure to answer. `--matrix` is a table, not a verdict: 0 when printed.
pub fn run(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    Ok(answer(args).unwrap_or_else(|error| {
        eprintln!("netfence: error: {error:#}");
        input::bad_input()
    }))
}

fn answer(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let port = match (args.port, args.protocol) {
        (Some(port), _) => port,
        (None, ExplainProtocol::Icmp) => 0,
        (None, protocol) => return Err(ExplainError::PortRequired(protocol.as_str()).into()),
    };
    let objects = input::load_objects(&args.input, args.keep_going)?;
    let state = input::state_of(&objects);
    let image = crate::compile::compile(&state, None);
    let probe = Probe {
        protocol: args.protocol,
        port,
        family: args.family,
        mode: args.mode,
    };
    if !args.with.is_empty() {
        if !args.matrix {
            anyhow::bail!("--with compares matrices: give --matrix");
        }
        let what_if = whatif::what_if(args, &objects, &state, &image, &probe)?;
        match args.output.document(&what_if)? {
            Some(document) => print!("{document}"),
            None => print!("{}", what_if.text()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.matrix {
        let matrix = matrix_with(&state, &image, &probe);
        match args.output {
            // The DESIGN.md contract: one line.
            Format::Json => println!("{}", serde_json::to_string(&matrix)?),
            Format::Yaml => print!("{}", serde_yaml_ng::to_string(&matrix)?),
            Format::Text | Format::Wide => print!("{}", matrix.text()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(from), Some(to)) = (&args.from, &args.to) else {
        anyhow::bail!("give --from and --to, or --matrix");
    };
    let explanation = explain_with(&state, &image, from, to, &probe)?;
    match args.output.document(&explanation)? {
        Some(document) => print!("{document}"),
        None => print!("{}", explanation.text_with(args.output == Format::Wide)),
    }
    Ok(if explanation.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
