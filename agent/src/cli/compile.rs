//! `netfence compile`: the image the input compiles to, as aligned text (each
//! endpoint with the policies isolating it; `-o wide` adds identities and endpoint
//! policy ids) or as JSON / YAML with names instead of numbers (`direction:
//! ingress`, `protocol: TCP`). Bad input (see `cli::input`) is listed on stderr and
//! exits 2 with nothing on stdout, unless `--keep-going` compiles the rest (exit 0).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;

use ipnet::IpNet;
use serde::Serialize;

use super::output::{Format, columns, direction_name, protocol_name};
use super::{CompileArgs, input};
use crate::image::{Endpoint, EndpointPolicyInfo, IdentityInfo, Image};

/// One POLICY entry, named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryView {
    /// The endpoint policy id (ENDPOINTS' `policy`).
    pub policy: u32,
    /// The peer identity.
    pub peer: u32,
    pub direction: &'static str,
    /// `TCP`, `UDP`, `SCTP`, or `any` (a rule without ports: every protocol).
    pub protocol: String,
    /// First port of the prefix (0 with `port_bits` 0: every port).
    pub port: u16,
    pub port_bits: u8,
    /// Last port of the prefix.
    pub port_last: u16,
    /// The rule id.
    pub rule: u32,
}

/// Where a rule id came from, named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleView {
    pub namespace: String,
    pub policy: String,
    pub direction: &'static str,
    pub index: usize,
}

/// The image as `compile -o json|yaml` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageView<'a> {
    pub identities: &'a BTreeMap<IpNet, u32>,
    pub endpoints: &'a BTreeMap<IpAddr, Endpoint>,
    pub policy: Vec<EntryView>,
    pub rules: BTreeMap<u32, RuleView>,
    pub identity_info: &'a BTreeMap<u32, IdentityInfo>,
    pub endpoint_policies: &'a BTreeMap<u32, EndpointPolicyInfo>,
}

impl<'a> ImageView<'a> {
    pub fn new(image: &'a Image) -> Self {
        let policy = (image.policy.iter())
            .map(|(key, rule)| {
                let span = if key.port_bits >= 16 {
                    0
                } else {
                    (1u32 << (16 - u32::from(key.port_bits))) - 1
                };
                EntryView {
                    policy: key.policy,
                    peer: key.peer,
                    direction: direction_name(key.direction),
                    protocol: protocol_name(key.protocol),
                    port: key.port,
                    port_bits: key.port_bits,
                    port_last: u16::try_from(u32::from(key.port) + span).unwrap_or(u16::MAX),
                    rule: *rule,
                }
            })
            .collect();
        let rules = (image.rules.iter())
            .map(|(id, info)| {
                let view = RuleView {
                    namespace: info.namespace.clone(),
                    policy: info.policy.clone(),
                    direction: direction_name(info.direction),
                    index: info.index,
                };
                (*id, view)
            })
            .collect();
        ImageView {
            identities: &image.identities,
            endpoints: &image.endpoints,
            policy,
            rules,
            identity_info: &image.identity_info,
            endpoint_policies: &image.endpoint_policies,
        }
    }
}

/// The text form: a summary line, then one aligned row per endpoint (the policies
/// isolating it by namespace/name) and per ClusterIP; `wide` adds identities and
/// endpoint policy ids.
pub fn text(image: &Image, wide: bool) -> String {
    let mut out = format!(
        "{} endpoints, {} identity prefixes, {} identities, {} endpoint policies, {} policy entries, {} rules\n",
        image.endpoints.len(),
        image.identities.len(),
        image.identity_info.len(),
        image.endpoint_policies.len(),
        image.policy.len(),
        image.rules.len()
    );
    let mut header = vec!["ADDRESS", "POD", "ISOLATED", "POLICIES"];
    if wide {
        header.extend(["IDENTITY", "POLICY-ID"]);
    }
    let mut rows = vec![header.into_iter().map(str::to_owned).collect::<Vec<_>>()];
    for (addr, endpoint) in &image.endpoints {
        let direction = |isolated: bool, audit: bool, name: &str| match (isolated, audit) {
            (false, _) => None,
            (true, false) => Some(name.to_owned()),
            (true, true) => Some(format!("{name} (audit)")),
        };
        let isolated: Vec<String> = [
            direction(endpoint.isolated_ingress, endpoint.audit_ingress, "ingress"),
            direction(endpoint.isolated_egress, endpoint.audit_egress, "egress"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let isolation = if isolated.is_empty() {
            "no".to_owned()
        } else {
            isolated.join(", ")
        };
        let policies = image
            .endpoint_policies
            .get(&endpoint.policy)
            .map(|info| {
                let mut parts = Vec::new();
                if !info.ingress.is_empty() {
                    parts.push(format!("ingress: {}", info.ingress.join(", ")));
                }
                if !info.egress.is_empty() {
                    parts.push(format!("egress: {}", info.egress.join(", ")));
                }
                parts.join("; ")
            })
            .filter(|text| !text.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        let mut row = vec![
            addr.to_string(),
            format!("{}/{}", endpoint.namespace, endpoint.pod),
            isolation,
            policies,
        ];
        if wide {
            row.extend([endpoint.identity.to_string(), endpoint.policy.to_string()]);
        }
        rows.push(row);
    }
    // ClusterIPs: egress entries allow them through their backends.
    for (net, identity) in &image.identities {
        if let Some(service) = (image.identity_info.get(identity)).and_then(|i| i.service.as_ref())
        {
            let mut row = vec![
                net.addr().to_string(),
                format!("service {service}"),
                "-".to_owned(),
                "-".to_owned(),
            ];
            if wide {
                row.extend([identity.to_string(), "-".to_owned()]);
            }
            rows.push(row);
        }
    }
    out.push_str(&columns(&rows));
    out
}

/// Runs `netfence compile`: exit 0 with the image printed, 2 on bad input.
pub fn compile(args: &CompileArgs) -> anyhow::Result<ExitCode> {
    let state = match input::load(&args.input, args.keep_going) {
        Ok(state) => state,
        Err(error) => {
            eprintln!("netfence: error: {error}");
            return Ok(input::bad_input());
        }
    };
    let image = crate::compile::compile(&state, args.node_name.as_deref());
    match args.output.document(&ImageView::new(&image))? {
        Some(document) => print!("{document}"),
        None => print!("{}", text(&image, args.output == Format::Wide)),
    }
    Ok(ExitCode::SUCCESS)
}
