//! The plugin ↔ agent protocol on the agent's unix socket: one JSON request per
//! connection, written by the plugin, which then shuts down its write half; one JSON
//! response, written by the agent, which then closes. Versioned: a request carries
//! [`PROTOCOL_VERSION`], and an agent answers a version it does not speak with an
//! error naming the versions it does.
//!
//! ```text
//! → {"version":1,"command":"ADD","containerId":"c1","netns":"/var/run/netns/x","ifname":"eth0",
//!    "ips":["10.244.1.5"],"hostInterfaces":["veth12ab"],"podNamespace":"default","podName":"web-0"}
//! ← {"version":1,"ok":true,"enforcement":"default-deny","message":"..."}
//! ```

use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request or response larger than this is refused (a request names one pod).
pub const MAX_MESSAGE_BYTES: u64 = 64 * 1024;

/// What the plugin asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Enforce this new endpoint (its policy, or deny-all both ways until the agent
    /// knows it); answer once it is programmed and its interface attached.
    Add,
    /// Forget this container's endpoint.
    Del,
    /// Answer whether this endpoint is programmed and attached, now.
    Check,
}

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub version: u32,
    pub command: Command,
    /// `CNI_CONTAINERID`: the key of the pending endpoint.
    pub container_id: String,
    /// `CNI_NETNS` (for logs).
    #[serde(default)]
    pub netns: String,
    /// `CNI_IFNAME` (for logs).
    #[serde(default)]
    pub ifname: String,
    /// The pod's addresses from the previous result (empty for DEL without one).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Interfaces the previous result lists outside the sandbox (the host-side veth,
    /// and the bridge with the bridge plugin).
    #[serde(default)]
    pub host_interfaces: Vec<String>,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_name: Option<String>,
}

/// How the agent enforces an endpoint it answered ADD or CHECK for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// The pod is in the agent's state: its own policy (or none, if no policy selects it).
    Policy,
    /// The pod is not in the agent's state yet: isolated both ways, nothing allowed.
    DefaultDeny,
}

/// One response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub version: u32,
    /// ADD: programmed and attached; DEL: forgotten; CHECK: programmed and attached.
    pub ok: bool,
    /// For ADD and CHECK when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
    /// What happened, for the plugin's error or the agent's log.
    #[serde(default)]
    pub message: String,
}

impl Response {
    pub fn ok(enforcement: Option<Enforcement>, message: impl Into<String>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            ok: true,
            enforcement,
            message: message.into(),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            ok: false,
            enforcement: None,
            message: message.into(),
        }
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum CallError {
    /// No agent listens (the socket is missing, or nothing accepts on it).
    Unreachable {
        socket: String,
        error: std::io::Error,
    },
    /// The agent did not answer within the deadline.
    Timeout { socket: String, after: Duration },
    /// The connection failed midway, or the answer is not a response.
    Broken { socket: String, error: String },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable { socket, error } => {
                write!(f, "netfence agent unreachable at {socket}: {error}")
            }
            CallError::Timeout { socket, after } => write!(
                f,
                "netfence agent at {socket} did not confirm within {:.1} s",
                after.as_secs_f64()
            ),
            CallError::Broken { socket, error } => {
                write!(f, "netfence agent at {socket}: {error}")
            }
        }
    }
}

impl std::error::Error for CallError {}

/// Sends `request` to the agent at `socket` and waits for its response, at most
/// `timeout` in all (connect, write, read).
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, CallError> {
    let name = socket.display().to_string();
    let started = Instant::now();
    let timed_out = |error: &std::io::Error| {
        matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(|error| CallError::Unreachable {
        socket: name.clone(),
        error,
    })?;
    let broken = |error: String| CallError::Broken {
        socket: name.clone(),
        error,
    };
    let remaining = |started: Instant| {
        timeout
            .checked_sub(started.elapsed())
            .filter(|left| !left.is_zero())
    };
    let body =
        serde_json::to_vec(request).map_err(|e| broken(format!("encoding the request: {e}")))?;
    let left = remaining(started).ok_or(CallError::Timeout {
        socket: name.clone(),
        after: timeout,
    })?;
    stream
        .set_write_timeout(Some(left))
        .map_err(|e| broken(format!("setting a write timeout: {e}")))?;
    stream.write_all(&body).map_err(|e| {
        if timed_out(&e) {
            CallError::Timeout {
                socket: name.clone(),
                after: timeout,
            }
        } else {
            broken(format!("sending the request: {e}"))
        }
    })?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| broken(format!("ending the request: {e}")))?;
    let mut answer = Vec::new();
    loop {
        let left = remaining(started).ok_or(CallError::Timeout {
            socket: name.clone(),
            after: timeout,
        })?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| broken(format!("setting a read timeout: {e}")))?;
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                if answer.len() as u64 > MAX_MESSAGE_BYTES {
                    return Err(broken(format!(
                        "response longer than {MAX_MESSAGE_BYTES} bytes"
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => {
                return Err(CallError::Timeout {
                    socket: name.clone(),
                    after: timeout,
                });
            }
            Err(e) => return Err(broken(format!("reading the response: {e}"))),
        }
    }
    if answer.is_empty() {
        return Err(broken(
            "closed the connection without a response".to_owned(),
        ));
    }
    let response: Response = serde_json::from_slice(&answer)
        .map_err(|e| broken(format!("response is not valid: {e}")))?;
    if response.version != PROTOCOL_VERSION {
        return Err(broken(format!(
            "answered in protocol version {}, this plugin speaks {PROTOCOL_VERSION}",
            response.version
        )));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape_is_camel_case_with_upper_case_command() {
        let request = Request {
            version: PROTOCOL_VERSION,
            command: Command::Add,
            container_id: "c1".to_owned(),
            netns: "/var/run/netns/x".to_owned(),
            ifname: "eth0".to_owned(),
            ips: vec!["10.244.1.5".parse().unwrap()],
            host_interfaces: vec!["veth12ab".to_owned()],
            pod_namespace: Some("default".to_owned()),
            pod_name: Some("web-0".to_owned()),
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"command":"ADD","containerId":"c1","netns":"/var/run/netns/x","ifname":"eth0","ips":["10.244.1.5"],"hostInterfaces":["veth12ab"],"podNamespace":"default","podName":"web-0"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let minimal: Request =
            serde_json::from_str(r#"{"version":1,"command":"DEL","containerId":"c1"}"#).unwrap();
        assert!(minimal.ips.is_empty() && minimal.pod_name.is_none());
    }

    #[test]
    fn response_wire_shape() {
        let text =
            serde_json::to_string(&Response::ok(Some(Enforcement::DefaultDeny), "m")).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"ok":true,"enforcement":"default-deny","message":"m"}"#
        );
        let text = serde_json::to_string(&Response::error("no")).unwrap();
        assert_eq!(text, r#"{"version":1,"ok":false,"message":"no"}"#);
    }

    #[test]
    fn call_to_a_missing_socket_is_unreachable() {
        let request = Request {
            version: PROTOCOL_VERSION,
            command: Command::Del,
            container_id: "c".to_owned(),
            netns: String::new(),
            ifname: String::new(),
            ips: Vec::new(),
            host_interfaces: Vec::new(),
            pod_namespace: None,
            pod_name: None,
        };
        let error = call(
            Path::new("/nonexistent/nfh3.sock"),
            &request,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(error, CallError::Unreachable { .. }), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("netfence agent unreachable at /nonexistent/nfh3.sock: "),
            "{error}"
        );
    }
}
