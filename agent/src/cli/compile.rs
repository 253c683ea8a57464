//! `netfence compile`: the image a manifest directory compiles to, as JSON or a
//! short text summary. Invalid objects are listed on stderr and make the exit code 1.

use std::process::ExitCode;

use super::{CompileArgs, Output};
use crate::source::ManifestDir;

pub fn compile(args: &CompileArgs) -> anyhow::Result<ExitCode> {
    let load = ManifestDir::new(&args.manifests).load();
    for error in &load.errors {
        eprintln!("netfence: invalid, skipped: {error}");
    }
    for warning in &load.warnings {
        eprintln!("netfence: warning: {warning}");
    }
    let image = crate::compile::compile(&load.state, args.node_name.as_deref());
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&image)?),
        Output::Text => {
            println!(
                "{} endpoints, {} identity prefixes, {} identities, {} endpoint policies, {} policy entries, {} rules",
                image.endpoints.len(),
                image.identities.len(),
                image.identity_info.len(),
                image.endpoint_policies.len(),
                image.policy.len(),
                image.rules.len()
            );
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
                    "not isolated".to_owned()
                } else {
                    format!("isolated {}", isolated.join("+"))
                };
                println!(
                    "  {addr:<40} {}/{}  identity={} policy={} {isolation}",
                    endpoint.namespace, endpoint.pod, endpoint.identity, endpoint.policy
                );
            }
            // ClusterIPs: egress entries allow them through their backends.
            for (net, identity) in &image.identities {
                if let Some(service) = image
                    .identity_info
                    .get(identity)
                    .and_then(|i| i.service.as_ref())
                {
                    println!(
                        "  {:<40} service {service}  identity={identity}",
                        net.addr().to_string()
                    );
                }
            }
        }
    }
    Ok(if load.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
