//! `netfence explain`: the verdict for one connection, and the allow/deny matrix of
//! every pod pair, both computed through the compiled image's `lookup` (the userspace
//! mirror of the kernel lookup), never a second evaluator: what `explain` says is what
//! the datapath does. The image is compiled with every pod local (`node = None`).
//!
//! A connection from a pod to its own address never reaches the pod's veth (the
//! kernel keeps it on the pod's loopback), so no policy can drop it: `explain` and the
//! matrix report such self pairs as allowed, as the upstream e2e tests do.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use netfence_common::{DIR_INGRESS, PROTO_ICMP, PROTO_ICMPV6};
use serde::Serialize;

use super::{ExplainArgs, ExplainProtocol, Family, Output};
use crate::image::{DirectionVerdict, Image, Packet, canonical_addr};
use crate::model::State;
use crate::source::ManifestDir;

/// The source port `explain` puts in its packets (policy never looks at it).
const SOURCE_PORT: u16 = 40000;

/// Why `explain` cannot answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("{0:?}: expected NAMESPACE/POD or an IP address")]
    BadTarget(String),
    #[error("no pod {0} in the manifests")]
    NoSuchPod(String),
    #[error(
        "{0} has no pod IP of its own (it is hostNetwork, has no IP yet, or has terminated): no policy applies to it"
    )]
    NotAnEndpoint(String),
    #[error("{from} and {to} have no address family in common")]
    NoCommonFamily { from: String, to: String },
    #[error("--port is required for {0}")]
    PortRequired(&'static str),
}

/// One end of a connection: its addresses (one per family) and its pod, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addrs: Vec<IpAddr>,
    /// `ns/name` of the pod owning the address(es).
    pub pod: Option<String>,
}

/// Resolves `NS/POD` or an IP address against the state and image.
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
        });
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
    })
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
    /// `audited` (no rule allows it, but every isolating policy is in audit mode: it
    /// passes, reported `audit`), `loopback` (a pod talking to itself).
    pub verdict: &'static str,
    /// The policies that isolate the endpoint in this direction.
    pub isolated_by: Vec<String>,
    /// The rule that allows it, as `ns/policy direction[index]`.
    pub rule: Option<String>,
    /// The rule id (the RULE_HITS key and the `rule=` of flow-log lines).
    pub rule_id: Option<u32>,
}

/// The verdict for one address pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Connection {
    pub family: Family,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub allowed: bool,
    /// The identity the destination's ingress check sees the source as, and back.
    pub src_identity: u32,
    pub dst_identity: u32,
    /// At the source (its egress policy).
    pub egress: Check,
    /// At the destination (its ingress policy).
    pub ingress: Check,
}

/// The answer to `explain --from --to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub from: String,
    pub to: String,
    pub protocol: &'static str,
    pub port: u16,
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
    let rule = rule_id.and_then(|id| image.rules.get(&id)).map(|info| {
        let direction = if info.direction == DIR_INGRESS {
            "ingress"
        } else {
            "egress"
        };
        format!(
            "{}/{} {direction}[{}]",
            info.namespace, info.policy, info.index
        )
    });
    Check {
        endpoint: endpoint.map(|e| format!("{}/{}", e.namespace, e.pod)),
        verdict: word,
        isolated_by,
        rule,
        rule_id,
    }
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
    Connection {
        family: family_of(dst),
        src,
        dst,
        allowed,
        src_identity: image.identity_of(src),
        dst_identity: image.identity_of(dst),
        egress,
        ingress,
    }
}

/// Explains `from → to` in `family`, or in every family both ends have.
pub fn explain(
    state: &State,
    image: &Image,
    from: &str,
    to: &str,
    protocol: ExplainProtocol,
    port: u16,
    family: Option<Family>,
) -> Result<Explanation, ExplainError> {
    let source = resolve(state, image, from)?;
    let destination = resolve(state, image, to)?;
    let mut connections = Vec::new();
    for src in &source.addrs {
        for dst in &destination.addrs {
            let same = src.is_ipv4() == dst.is_ipv4();
            if same && family.is_none_or(|f| f == family_of(*dst)) {
                connections.push(connection(image, *src, *dst, protocol, port));
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
        protocol: protocol.as_str(),
        port: if protocol == ExplainProtocol::Icmp {
            0
        } else {
            port
        },
        connections,
    })
}

fn check_text(out: &mut String, what: &str, check: &Check) {
    let who = check.endpoint.as_deref().unwrap_or("-");
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
        "audited" => writeln!(
            out,
            "  {what} at {who}: isolated by {by} in audit mode; no rule allows it: passes (audit: would be denied by {by})",
            by = check.isolated_by.join(", ")
        ),
        _ => {
            let by = check.isolated_by.join(", ");
            match &check.rule {
                Some(rule) => writeln!(
                    out,
                    "  {what} at {who}: isolated by {by}; allowed by {rule} (rule id {})",
                    check.rule_id.unwrap_or_default()
                ),
                None => writeln!(
                    out,
                    "  {what} at {who}: isolated by {by}; no rule allows it: DENIED"
                ),
            }
        }
    };
}

impl Explanation {
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.connections {
            let port = if self.port == 0 {
                String::new()
            } else {
                format!(" port {}", self.port)
            };
            let name = |pod: &Option<String>| {
                pod.as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            };
            let audited = c.egress.verdict == "audited" || c.ingress.verdict == "audited";
            let verdict = match (c.allowed, audited) {
                (true, true) => "ALLOWED (audit: would be denied)",
                (true, false) => "ALLOWED",
                (false, _) => "DENIED",
            };
            let _ = writeln!(
                out,
                "{} {}{} -> {}{}{port}: {verdict}",
                self.protocol,
                c.src,
                name(&c.egress.endpoint),
                c.dst,
                name(&c.ingress.endpoint)
            );
            check_text(&mut out, "egress", &c.egress);
            check_text(&mut out, "ingress", &c.ingress);
        }
        out
    }
}

/// The allow/deny table of every pod pair (the DESIGN.md JSON contract).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Matrix {
    pub port: u16,
    pub protocol: &'static str,
    /// `ns/name`, sorted by namespace then name: every pod with an address of its own.
    pub pods: Vec<String>,
    /// `allowed[i][j]`: a new connection from `pods[i]` to `pods[j]` is allowed.
    pub allowed: Vec<Vec<bool>>,
}

/// Every pod pair through `Image::lookup`. A pair is probed in `family`, or by default
/// over IPv4 when both pods have an IPv4 address, else IPv6; a pair with no common
/// family is denied (no connection is possible).
pub fn matrix(
    state: &State,
    image: &Image,
    protocol: ExplainProtocol,
    port: u16,
    family: Option<Family>,
) -> Matrix {
    let mut pods: Vec<(String, Vec<IpAddr>)> = state
        .pods
        .iter()
        .filter(|p| p.is_live_endpoint())
        .map(|p| {
            let addrs = p.ips.iter().map(|ip| canonical_addr(*ip)).collect();
            (format!("{}/{}", p.namespace, p.name), addrs)
        })
        .collect();
    pods.sort_by(|a, b| a.0.split_once('/').cmp(&b.0.split_once('/')));
    let pick = |addrs: &[IpAddr], f: Family| addrs.iter().copied().find(|a| family_of(*a) == f);
    let allowed = pods
        .iter()
        .map(|(_, from)| {
            pods.iter()
                .map(|(_, to)| {
                    let families = match family {
                        Some(f) => vec![f],
                        None => vec![Family::Ipv4, Family::Ipv6],
                    };
                    families
                        .into_iter()
                        .find_map(|f| Some((pick(from, f)?, pick(to, f)?)))
                        .is_some_and(|(src, dst)| {
                            connection(image, src, dst, protocol, port).allowed
                        })
                })
                .collect()
        })
        .collect();
    Matrix {
        port: if protocol == ExplainProtocol::Icmp {
            0
        } else {
            port
        },
        protocol: protocol.as_str(),
        pods: pods.into_iter().map(|(name, _)| name).collect(),
        allowed,
    }
}

impl Matrix {
    /// The grid of the upstream e2e truth tables: rows are sources, columns
    /// destinations, `.` allowed, `X` denied, tab-separated.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let port = if self.port == 0 {
            String::new()
        } else {
            format!("/{}", self.port)
        };
        let _ = writeln!(
            out,
            "{}{port}: rows = from, columns = to; . allowed, X denied (a pod to itself: loopback, always allowed)",
            self.protocol
        );
        let _ = writeln!(out, "-\t{}", self.pods.join("\t"));
        for (pod, row) in self.pods.iter().zip(&self.allowed) {
            let cells: Vec<&str> = row.iter().map(|a| if *a { "." } else { "X" }).collect();
            let _ = writeln!(out, "{pod}\t{}", cells.join("\t"));
        }
        out
    }
}

/// Runs `netfence explain`.
pub fn run(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let load = ManifestDir::new(&args.manifests).load();
    for error in &load.errors {
        eprintln!("netfence: invalid, skipped: {error}");
    }
    for warning in &load.warnings {
        eprintln!("netfence: warning: {warning}");
    }
    let port = match (args.port, args.protocol) {
        (Some(port), _) => port,
        (None, ExplainProtocol::Icmp) => 0,
        (None, protocol) => return Err(ExplainError::PortRequired(protocol.as_str()).into()),
    };
    let image = crate::compile::compile(&load.state, None);
    if args.matrix {
        let matrix = matrix(&load.state, &image, args.protocol, port, args.family);
        match args.output {
            Output::Json => println!("{}", serde_json::to_string(&matrix)?),
            Output::Text => print!("{}", matrix.text()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(from), Some(to)) = (&args.from, &args.to) else {
        anyhow::bail!("give --from and --to, or --matrix");
    };
    let explanation = explain(
        &load.state,
        &image,
        from,
        to,
        args.protocol,
        port,
        args.family,
    )?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&explanation)?),
        Output::Text => print!("{}", explanation.text()),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::image::{Endpoint, EndpointPolicyInfo};

    /// b (198.18.0.11) is isolated for ingress by `x/b-lockdown` alone, in audit mode.
    fn audited_image() -> Image {
        let mut image = Image::default();
        image.endpoints.insert(
            IpAddr::from([198, 18, 0, 11]),
            Endpoint {
                namespace: "x".into(),
                pod: "b".into(),
                policy: 9,
                isolated_ingress: true,
                isolated_egress: false,
                audit_ingress: true,
                audit_egress: false,
                identity: 20,
            },
        );
        image.endpoint_policies = BTreeMap::from([(
            9,
            EndpointPolicyInfo { ingress: vec!["x/b-lockdown".into()], egress: Vec::new() },
        )]);
        image
    }

    #[test]
    fn an_audited_direction_passes_and_names_the_policy_that_would_deny() {
        let image = audited_image();
        let c = connection(&image, IpAddr::from([198, 18, 0, 10]), IpAddr::from([198, 18, 0, 11]), ExplainProtocol::Tcp, 80);
        assert!(c.allowed, "audit passes");
        assert_eq!((c.ingress.verdict, c.ingress.isolated_by.clone()), ("audited", vec!["x/b-lockdown".to_owned()]));
        let text = Explanation { from: "x/a".into(), to: "x/b".into(), protocol: "TCP", port: 80, connections: vec![c] }.text();
        assert!(text.contains(": ALLOWED (audit: would be denied)"), "{text}");
        assert!(text.contains("passes (audit: would be denied by x/b-lockdown)"), "{text}");
    }
}
