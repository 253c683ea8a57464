//! `netfence compile`: the image a manifest directory compiles to, as JSON or a
//! short text summary. Bad input (see `cli::input`) is listed on stderr and exits 2
//! with nothing on stdout, unless `--keep-going` compiles the rest (exit 0).

use std::process::ExitCode;

use super::{CompileArgs, Output, input};

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
    Ok(ExitCode::SUCCESS)
}
