//! One invocation of the plugin, without process I/O: (environment, stdin, a way to
//! call the agent) → (stdout, stderr lines, exit code). `main` only wires it to the
//! process; the tests here call it with a fake agent.
//!
//! - ADD: needs `prevResult`; asks the agent to enforce the pod's addresses and waits
//!   for its confirmation; prints `prevResult` unchanged.
//! - DEL: tells the agent to forget the container; succeeds whatever the agent says
//!   or whether it runs (DEL must be idempotent and must not block teardown).
//! - CHECK (0.4.0 on): asks whether the addresses are enforced now.
//! - VERSION: the versions this plugin speaks.
//!
//! Agent down, slow or refusing, for ADD and CHECK: `failClosed: true` (default) → a
//! CNI error (code 11 "try again later" when the agent did not answer, 100 when it
//! refused); `failClosed: false` → the previous result passes with a warning.
//! `failClosed` holds while the agent's lease is fresh ([`crate::lease`]): an agent
//! that does not answer and whose lease expired (netfence uninstalled, or its agent
//! down longer than its lease) no longer blocks pods: ADD and CHECK pass with a
//! warning naming the lease.

use std::time::Duration;

use serde_json::{Value, json};

use crate::lease::{self, Standing};
use crate::protocol::{self, CallError, Command, PROTOCOL_VERSION, Request, Response};
use crate::spec::{
    self, CniCommand, CniError, Env, NetConf, OWN_VERSION, SUPPORTED_VERSIONS, code,
};

/// What the process prints and returns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: Option<String>,
    pub stderr: Vec<String>,
    pub exit: u8,
}

/// Calls the agent (the real one: [`protocol::call`]).
pub trait Agent {
    fn call(&mut self, conf: &NetConf, request: &Request) -> Result<Response, CallError>;

    /// The agent's lease, read when it did not answer (the real one: the file beside
    /// `socketPath`, judged at the current time).
    fn lease(&mut self, conf: &NetConf) -> Standing {
        lease::standing(&lease::path_for(&conf.socket_path), lease::now_unix())
    }
}

/// The agent behind `socketPath`.
#[derive(Debug)]
pub struct SocketAgent;

impl Agent for SocketAgent {
    fn call(&mut self, conf: &NetConf, request: &Request) -> Result<Response, CallError> {
        protocol::call(&conf.socket_path, request, conf.timeout())
    }
}

/// Runs one invocation.
pub fn run(env: Result<Env, CniError>, stdin: &[u8], agent: &mut dyn Agent) -> Output {
    // Errors are written in the configuration's version when it can be read.
    let version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| OWN_VERSION.to_owned());
    let mut stderr = Vec::new();
    match invoke(env, stdin, agent, &mut stderr) {
        Ok(stdout) => Output {
            stdout,
            stderr,
            exit: 0,
        },
        Err(error) => {
            stderr.push(format!("netfence-cni: error {}: {}", error.code, error.msg));
            Output {
                stdout: Some(error.to_json(&version).to_string()),
                stderr,
                exit: 1,
            }
        }
    }
}

fn invoke(
    env: Result<Env, CniError>,
    stdin: &[u8],
    agent: &mut dyn Agent,
    stderr: &mut Vec<String>,
) -> Result<Option<String>, CniError> {
    let env = env?;
    if env.command == CniCommand::Version {
        let answer = json!({ "cniVersion": OWN_VERSION, "supportedVersions": SUPPORTED_VERSIONS });
        return Ok(Some(answer.to_string()));
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        CniCommand::Add => add(&env, &conf, agent, stderr).map(Some),
        CniCommand::Check => check(&env, &conf, agent, stderr).map(|()| None),
        CniCommand::Del => {
            del(&env, &conf, agent, stderr);
            Ok(None)
        }
        CniCommand::Version => Ok(None),
    }
}

fn request(env: &Env, command: Command, addresses: spec::PodAddresses) -> Request {
    Request {
        version: PROTOCOL_VERSION,
        command,
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        ifname: env.ifname.clone(),
        ips: addresses.ips,
        host_interfaces: addresses.host_interfaces,
        pod_namespace: env.pod_namespace.clone(),
        pod_name: env.pod_name.clone(),
    }
}

fn prev_result<'a>(conf: &'a NetConf, command: &str) -> Result<&'a Value, CniError> {
    conf.prev_result.as_ref().filter(|v| !v.is_null()).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!(
                "{command} needs prevResult: netfence-cni is a chained plugin and must follow the plugin that creates the interface (e.g. flannel or bridge) in a conflist"
            ),
        )
    })
}

fn add(
    env: &Env,
    conf: &NetConf,
    agent: &mut dyn Agent,
    stderr: &mut Vec<String>,
) -> Result<String, CniError> {
    let prev = prev_result(conf, "ADD")?;
    let addresses = spec::pod_addresses(prev)?;
    if addresses.ips.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "prevResult lists no address of the container: nothing to enforce",
        ));
    }
    let mut result = prev.clone();
    if let Some(object) = result.as_object_mut() {
        object.insert(
            "cniVersion".to_owned(),
            Value::String(conf.cni_version.clone()),
        );
    }
    let pod = pod_name(env);
    match agent.call(conf, &request(env, Command::Add, addresses)) {
        Ok(response) if response.ok => {
            stderr.push(format!("netfence-cni: {pod}: {}", response.message));
            Ok(result.to_string())
        }
        outcome => {
            let unanswered = outcome.is_err();
            let error = failure("ADD", &pod, outcome);
            if let Some(why) = lease_expired(conf, agent, unanswered) {
                stderr.push(format!(
                    "netfence-cni: warning: {} ({}); {why}: the pod starts without waiting for netfence",
                    error.msg, error.details
                ));
                Ok(result.to_string())
            } else if conf.fail_closed {
                Err(with_lease(error, conf, agent, unanswered))
            } else {
                stderr.push(format!(
                    "netfence-cni: warning: {} ({}); failClosed is false: the pod starts without waiting for netfence",
                    error.msg, error.details
                ));
                Ok(result.to_string())
            }
        }
    }
}

fn check(
    env: &Env,
    conf: &NetConf,
    agent: &mut dyn Agent,
    stderr: &mut Vec<String>,
) -> Result<(), CniError> {
    if conf.cni_version.starts_with("0.3.") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined for cniVersion {}", conf.cni_version),
        ));
    }
    let addresses = spec::pod_addresses(prev_result(conf, "CHECK")?)?;
    let pod = pod_name(env);
    match agent.call(conf, &request(env, Command::Check, addresses)) {
        Ok(response) if response.ok => Ok(()),
        outcome => {
            let unanswered = outcome.is_err();
            let error = failure("CHECK", &pod, outcome);
            if let Some(why) = lease_expired(conf, agent, unanswered) {
                stderr.push(format!(
                    "netfence-cni: warning: {} ({}); {why}",
                    error.msg, error.details
                ));
                Ok(())
            } else if conf.fail_closed {
                Err(with_lease(error, conf, agent, unanswered))
            } else {
                stderr.push(format!(
                    "netfence-cni: warning: {} ({})",
                    error.msg, error.details
                ));
                Ok(())
            }
        }
    }
}

fn del(env: &Env, conf: &NetConf, agent: &mut dyn Agent, stderr: &mut Vec<String>) {
    // The addresses help the agent drop a stale endpoint; DEL works without them.
    let addresses = conf
        .prev_result
        .as_ref()
        .and_then(|prev| spec::pod_addresses(prev).ok())
        .unwrap_or_default();
    // DEL never waits long for an agent that is down: the runtime is tearing down.
    let mut quick = conf.clone();
    quick.timeout_seconds = conf.timeout_seconds.min(DEL_TIMEOUT.as_secs_f64());
    match agent.call(&quick, &request(env, Command::Del, addresses)) {
        Ok(response) if response.ok => {}
        Ok(response) => stderr.push(format!(
            "netfence-cni: warning: DEL: the agent answered: {}",
            response.message
        )),
        Err(error) => stderr.push(format!(
            "netfence-cni: warning: DEL: {error}; nothing to forget"
        )),
    }
}

/// Why an unanswered, fail-closed request passes: the agent's lease expired.
fn lease_expired(conf: &NetConf, agent: &mut dyn Agent, unanswered: bool) -> Option<String> {
    if !(conf.fail_closed && unanswered) {
        return None;
    }
    match agent.lease(conf) {
        Standing::Expired(why) => Some(why),
        Standing::Missing | Standing::Fresh(_) => None,
    }
}

/// An unanswered request's error, with what the lease said (why it fails closed).
fn with_lease(
    error: CniError,
    conf: &NetConf,
    agent: &mut dyn Agent,
    unanswered: bool,
) -> CniError {
    if !unanswered {
        return error;
    }
    let lease = match agent.lease(conf) {
        Standing::Fresh(why) => why,
        Standing::Missing => format!(
            "no lease at {}: failing closed",
            lease::path_for(&conf.socket_path).display()
        ),
        Standing::Expired(why) => why,
    };
    let details = format!("{}; {lease}", error.details);
    error.with_details(details)
}

/// The longest DEL waits for the agent.
const DEL_TIMEOUT: Duration = Duration::from_secs(2);

fn pod_name(env: &Env) -> String {
    match (&env.pod_namespace, &env.pod_name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => format!("container {}", env.container_id),
    }
}

fn failure(command: &str, pod: &str, outcome: Result<Response, CallError>) -> CniError {
    match outcome {
        Ok(response) => CniError::new(
            code::AGENT_REFUSED,
            format!("netfence agent did not confirm {command} for {pod}"),
        )
        .with_details(response.message),
        Err(error @ CallError::Broken { .. }) => CniError::new(
            code::IO_FAILURE,
            format!("netfence agent did not confirm {command} for {pod}"),
        )
        .with_details(error.to_string()),
        Err(error) => CniError::new(
            code::TRY_AGAIN_LATER,
            format!("netfence agent did not confirm {command} for {pod}"),
        )
        .with_details(error.to_string()),
    }
}

#[cfg(test)]
#[path = "plugin_tests.rs"]
mod tests;
