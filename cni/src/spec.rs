//! The parts of the CNI specification (1.0.0, and the 0.3.x/0.4.0 configurations
//! runtimes still pass) the plugin reads and writes: the runtime's environment, the
//! plugin's network configuration with its `prevResult`, and the error object.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

/// Versions whose configurations and results this plugin accepts. CHECK exists
/// from 0.4.0 on.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The version this plugin answers VERSION with and writes errors in when the
/// configuration names none.
pub const OWN_VERSION: &str = "1.0.0";

/// Well-known error codes (CNI spec, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// Transient: the runtime retries later (the agent is down or slow).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific: the agent answered and refused.
    pub const AGENT_REFUSED: u32 = 100;
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object in `version` (the configuration's, when it has one).
    pub fn to_json(&self, version: &str) -> Value {
        let mut out = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            out["details"] = Value::String(self.details.clone());
        }
        out
    }
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Version,
}

/// The runtime's environment for one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: CniCommand,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
}

impl Env {
    /// Reads the environment through `var`. VERSION needs only `CNI_COMMAND`; ADD,
    /// CHECK and DEL need `CNI_CONTAINERID` and `CNI_IFNAME`, ADD and CHECK also
    /// `CNI_NETNS` (DEL may come without one when the namespace is gone).
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => CniCommand::Add,
            Some("DEL") => CniCommand::Del,
            Some("CHECK") => CniCommand::Check,
            Some("VERSION") => CniCommand::Version,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("unknown CNI_COMMAND {other:?} (ADD, DEL, CHECK or VERSION)"),
                ));
            }
            None => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    "CNI_COMMAND is not set",
                ));
            }
        };
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let mut required = Vec::new();
        if command != CniCommand::Version {
            required.extend(["CNI_CONTAINERID", "CNI_IFNAME"]);
        }
        if matches!(command, CniCommand::Add | CniCommand::Check) {
            required.push("CNI_NETNS");
        }
        if let Some(missing) = required.iter().find(|name| get(name).is_none()) {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("{missing} is not set"),
            ));
        }
        let args = var("CNI_ARGS").unwrap_or_default();
        let arg = |key: &str| {
            args.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == key && !v.is_empty()).then(|| v.to_owned())
            })
        };
        Ok(Env {
            command,
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            pod_namespace: arg("K8S_POD_NAMESPACE"),
            pod_name: arg("K8S_POD_NAME"),
        })
    }
}

/// The plugin's network configuration (its entry in the conflist, with the list's
/// `name` and `cniVersion`, and `prevResult` in a chain).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    /// The agent's socket.
    #[serde(default = "default_socket_path")]
    pub socket_path: PathBuf,
    /// How long ADD (and CHECK) wait for the agent, in seconds.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: f64,
    /// Agent down, slow or refusing: fail ADD and CHECK (true), or pass the previous
    /// result through with a warning on stderr (false).
    #[serde(default = "default_fail_closed")]
    pub fail_closed: bool,
    #[serde(default)]
    pub prev_result: Option<Value>,
}

/// The agent's default socket.
pub const DEFAULT_SOCKET_PATH: &str = "/run/netfence/cni.sock";
pub const DEFAULT_TIMEOUT_SECONDS: f64 = 10.0;

fn default_socket_path() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET_PATH)
}

const fn default_timeout_seconds() -> f64 {
    DEFAULT_TIMEOUT_SECONDS
}

const fn default_fail_closed() -> bool {
    true
}

impl NetConf {
    /// Parses stdin; checks the version and the timeout.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode the network configuration",
            )
            .with_details(e.to_string())
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} is not supported (supported: {})",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if !(conf.timeout_seconds.is_finite()
            && conf.timeout_seconds > 0.0
            && conf.timeout_seconds <= 3600.0)
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "timeoutSeconds must be in (0, 3600], not {}",
                    conf.timeout_seconds
                ),
            ));
        }
        Ok(conf)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds)
    }
}

/// What the plugin reads from a previous result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodAddresses {
    /// The pod's addresses (prefix lengths dropped), in result order.
    pub ips: Vec<IpAddr>,
    /// Interfaces listed without a `sandbox`: host side (veth, bridge).
    pub host_interfaces: Vec<String>,
}

/// Reads the addresses of the container's interfaces from a previous result (0.3.0
/// to 1.0.0 shapes: `interfaces[]` with an optional `sandbox`, `ips[]` with `address`
/// in CIDR form and an optional `interface` index). An address whose `interface`
/// points at a host-side interface is not the pod's and is skipped.
pub fn pod_addresses(prev: &Value) -> Result<PodAddresses, CniError> {
    let invalid = |what: String| CniError::new(code::INVALID_CONFIG, format!("prevResult: {what}"));
    let interfaces = match prev.get("interfaces") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("interfaces is not a list".to_owned())),
    };
    let in_sandbox: Vec<bool> = interfaces
        .iter()
        .map(|i| {
            i.get("sandbox")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        })
        .collect();
    let host_interfaces = interfaces
        .iter()
        .zip(&in_sandbox)
        .filter(|(_, sandboxed)| !**sandboxed)
        .filter_map(|(i, _)| i.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let mut ips = Vec::new();
    let list = match prev.get("ips") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("ips is not a list".to_owned())),
    };
    for (n, entry) in list.iter().enumerate() {
        let Some(address) = entry.get("address").and_then(Value::as_str) else {
            return Err(invalid(format!("ips[{n}] has no address")));
        };
        let host = address.split_once('/').map_or(address, |(ip, _)| ip);
        let ip: IpAddr = host
            .parse()
            .map_err(|_| invalid(format!("ips[{n}].address {address:?} is not an address")))?;
        let on_host_side = entry
            .get("interface")
            .and_then(Value::as_u64)
            .and_then(|index| in_sandbox.get(usize::try_from(index).ok()?))
            .is_some_and(|sandboxed| !sandboxed);
        if !on_host_side && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(PodAddresses {
        ips,
        host_interfaces,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Env::read(|name| map.get(name).cloned())
    }

    #[test]
    fn env_reads_pod_names_from_cni_args_and_requires_what_the_command_needs() {
        let add = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;K8S_POD_UID=u",
            ),
        ])
        .unwrap();
        assert_eq!(add.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(add.pod_name.as_deref(), Some("web-0"));
        let error = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert_eq!(
            error,
            CniError::new(code::INVALID_ENVIRONMENT, "CNI_NETNS is not set")
        );
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(
            (del.command, del.netns.as_str(), del.pod_name),
            (CniCommand::Del, "", None)
        );
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            CniCommand::Version
        );
        assert_eq!(
            env(&[("CNI_COMMAND", "GC")]).unwrap_err().code,
            code::INVALID_ENVIRONMENT
        );
    }

    #[test]
    fn netconf_defaults_and_version_check() {
        let conf = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"cbr0","type":"netfence-cni"}"#)
            .unwrap();
        assert_eq!(conf.socket_path, PathBuf::from("/run/netfence/cni.sock"));
        assert_eq!(conf.timeout(), Duration::from_secs(10));
        assert!(conf.fail_closed);
        assert!(conf.prev_result.is_none());
        let error = NetConf::parse(br#"{"cniVersion":"0.2.0","type":"netfence-cni"}"#).unwrap_err();
        assert_eq!(error.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(
            error.msg,
            r#"cniVersion "0.2.0" is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0)"#
        );
        let error = NetConf::parse(br#"{"cniVersion":"1.0.0","timeoutSeconds":0}"#).unwrap_err();
        assert_eq!(error.code, code::INVALID_CONFIG);
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, code::DECODE_FAILURE);
    }

    #[test]
    fn pod_addresses_from_a_bridge_result_skip_host_side_and_keep_both_families() {
        // The shape Debian's bridge + host-local return (1.0.0): bridge, host veth,
        // container interface; the ips point at the container interface.
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:00:00:00:00:01"},
                {"name": "veth1a2b", "mac": "aa:00:00:00:00:02"},
                {"name": "eth0", "mac": "aa:00:00:00:00:03", "sandbox": "/var/run/netns/p"}
            ],
            "ips": [
                {"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2},
                {"address": "fd00:244:1::5/64", "gateway": "fd00:244:1::1", "interface": 2},
                {"address": "10.9.9.9/32", "interface": 0}
            ]
        });
        let got = pod_addresses(&prev).unwrap();
        assert_eq!(
            got.ips,
            vec![
                "10.244.1.5".parse::<IpAddr>().unwrap(),
                "fd00:244:1::5".parse().unwrap()
            ]
        );
        assert_eq!(got.host_interfaces, vec!["cni0", "veth1a2b"]);
        // 0.3.1: `version` in each ip, no interface index.
        let old =
            json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.244.1.6/24"}]});
        assert_eq!(
            pod_addresses(&old).unwrap().ips,
            vec!["10.244.1.6".parse::<IpAddr>().unwrap()]
        );
        let bad = json!({"ips": [{"address": "ten/24"}]});
        assert_eq!(
            pod_addresses(&bad).unwrap_err().msg,
            r#"prevResult: ips[0].address "ten/24" is not an address"#
        );
    }

    #[test]
    fn error_json_has_code_msg_and_details_only_when_given() {
        let error = CniError::new(code::TRY_AGAIN_LATER, "down");
        assert_eq!(
            error.to_json("0.4.0"),
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "down"})
        );
        let error = error.with_details("why");
        assert_eq!(error.to_json("1.0.0")["details"], "why");
    }
}
