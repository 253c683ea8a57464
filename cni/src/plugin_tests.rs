//! The plugin's behaviour per command against a fake agent.

use std::collections::HashMap;

use super::*;
use crate::protocol::Enforcement;

/// Records requests and answers with a fixed outcome.
struct Fake {
    seen: Vec<Request>,
    answer: fn() -> Result<Response, CallError>,
    lease: Standing,
}

impl Agent for Fake {
    fn call(&mut self, _conf: &NetConf, request: &Request) -> Result<Response, CallError> {
        self.seen.push(request.clone());
        (self.answer)()
    }

    fn lease(&mut self, _conf: &NetConf) -> Standing {
        self.lease.clone()
    }
}

fn programmed() -> Result<Response, CallError> {
    Ok(Response::ok(
        Some(Enforcement::DefaultDeny),
        "10.244.1.5 programmed",
    ))
}

fn down() -> Result<Response, CallError> {
    Err(CallError::Unreachable {
        socket: "/run/netfence/cni.sock".to_owned(),
        error: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

fn refused() -> Result<Response, CallError> {
    Ok(Response::error("endpoints map full"))
}

fn env(command: &str) -> Result<Env, CniError> {
    let map: HashMap<&str, &str> = HashMap::from([
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0"),
    ]);
    Env::read(|name| map.get(name).map(|v| (*v).to_owned()))
}

fn prev() -> Value {
    json!({
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:00:00:00:00:01"},
            {"name": "veth1a2b", "mac": "aa:00:00:00:00:02"},
            {"name": "eth0", "mac": "aa:00:00:00:00:03", "sandbox": "/var/run/netns/p"}
        ],
        "ips": [{"version": "4", "address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}],
        "dns": {}
    })
}

fn conf(extra: Value) -> Vec<u8> {
    let mut conf = json!({"cniVersion": "0.4.0", "name": "cbr0", "type": "netfence-cni", "prevResult": prev()});
    if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
        conf.extend(extra.clone());
    }
    serde_json::to_vec(&conf).unwrap()
}

fn fake(answer: fn() -> Result<Response, CallError>) -> Fake {
    Fake {
        seen: Vec::new(),
        answer,
        lease: Standing::Missing,
    }
}

#[test]
fn add_sends_the_pod_and_prints_prev_result_unchanged() {
    let mut agent = fake(programmed);
    let out = run(env("ADD"), &conf(json!({})), &mut agent);
    assert_eq!(out.exit, 0, "{out:?}");
    let printed: Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
    assert_eq!(printed, prev());
    let request = &agent.seen[0];
    assert_eq!(request.command, Command::Add);
    assert_eq!(request.container_id, "c1");
    assert_eq!(
        request.ips,
        vec!["10.244.1.5".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(request.host_interfaces, vec!["cni0", "veth1a2b"]);
    assert_eq!(
        (
            request.pod_namespace.as_deref(),
            request.pod_name.as_deref()
        ),
        (Some("prod"), Some("web-0"))
    );
}

#[test]
fn add_without_prev_result_is_a_config_error() {
    let mut agent = fake(programmed);
    let stdin = br#"{"cniVersion":"1.0.0","name":"cbr0","type":"netfence-cni"}"#;
    let out = run(env("ADD"), stdin, &mut agent);
    assert_eq!(out.exit, 1);
    let error: Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
    assert_eq!(error["code"], 7);
    assert_eq!(error["cniVersion"], "1.0.0");
    assert!(
        error["msg"]
            .as_str()
            .unwrap()
            .starts_with("ADD needs prevResult"),
        "{error}"
    );
    assert!(agent.seen.is_empty());
}

#[test]
fn agent_down_fails_add_closed_with_try_again_later() {
    let mut agent = fake(down);
    let out = run(env("ADD"), &conf(json!({})), &mut agent);
    assert_eq!(out.exit, 1);
    let error: Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
    assert_eq!(error["code"], 11);
    assert_eq!(error["cniVersion"], "0.4.0");
    assert_eq!(
        error["msg"],
        "netfence agent did not confirm ADD for prod/web-0"
    );
    assert!(
        error["details"]
            .as_str()
            .unwrap()
            .starts_with("netfence agent unreachable at /run/netfence/cni.sock"),
        "{error}"
    );
}

#[test]
fn agent_down_passes_add_open_with_a_warning() {
    let mut agent = fake(down);
    let out = run(env("ADD"), &conf(json!({"failClosed": false})), &mut agent);
    assert_eq!(out.exit, 0);
    assert_eq!(
        serde_json::from_str::<Value>(out.stdout.as_deref().unwrap()).unwrap(),
        prev()
    );
    assert_eq!(out.stderr.len(), 1);
    assert!(
        out.stderr[0].starts_with("netfence-cni: warning: netfence agent did not confirm ADD"),
        "{:?}",
        out.stderr
    );
}

#[test]
fn agent_refusal_is_plugin_error_100_with_its_message() {
    let mut agent = fake(refused);
    let out = run(env("ADD"), &conf(json!({})), &mut agent);
    let error: Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
    assert_eq!((out.exit, error["code"].as_u64()), (1, Some(100)));
    assert_eq!(error["details"], "endpoints map full");
}

#[test]
fn del_never_fails_and_prints_nothing() {
    for answer in [programmed, down, refused] {
        let mut agent = fake(answer);
        let out = run(env("DEL"), &conf(json!({})), &mut agent);
        assert_eq!((out.exit, out.stdout.as_deref()), (0, None), "{out:?}");
        assert_eq!(agent.seen[0].command, Command::Del);
    }
    // Without prevResult (a DEL after a failed ADD) it still asks the agent to forget.
    let mut agent = fake(down);
    let out = run(
        env("DEL"),
        br#"{"cniVersion":"1.0.0","type":"netfence-cni"}"#,
        &mut agent,
    );
    assert_eq!(out.exit, 0);
    assert!(agent.seen[0].ips.is_empty());
}

#[test]
fn check_fails_closed_when_not_enforced_and_is_undefined_before_0_4() {
    let mut agent = fake(refused);
    let out = run(env("CHECK"), &conf(json!({})), &mut agent);
    assert_eq!(out.exit, 1);
    let mut agent = fake(programmed);
    let out = run(env("CHECK"), &conf(json!({})), &mut agent);
    assert_eq!((out.exit, out.stdout), (0, None));
    let out = run(
        env("CHECK"),
        &conf(json!({"cniVersion": "0.3.1"})),
        &mut agent,
    );
    let error: Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
    assert_eq!(error["code"], 1);
    let mut agent = fake(down);
    assert_eq!(
        run(
            env("CHECK"),
            &conf(json!({"failClosed": false})),
            &mut agent
        )
        .exit,
        0
    );
}

#[test]
fn version_lists_supported_versions() {
    let mut agent = fake(down);
    let out = run(env("VERSION"), br#"{"cniVersion":"1.0.0"}"#, &mut agent);
    let answer: Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
    assert_eq!(
        answer,
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
    );
}

#[test]
fn agent_down_with_an_expired_lease_passes_add_and_check_with_a_warning() {
    let uninstalled =
        "netfence was uninstalled from this node (lease /run/netfence/cni.lease.json, 3 s ago)";
    let mut agent = fake(down);
    agent.lease = Standing::Expired(uninstalled.to_owned());
    let out = run(env("ADD"), &conf(json!({})), &mut agent);
    assert_eq!(out.exit, 0, "{out:?}");
    assert_eq!(
        serde_json::from_str::<Value>(out.stdout.as_deref().unwrap()).unwrap(),
        prev()
    );
    assert_eq!(out.stderr.len(), 1, "{:?}", out.stderr);
    assert!(
        out.stderr[0].starts_with("netfence-cni: warning: netfence agent did not confirm ADD for prod/web-0 (netfence agent unreachable at /run/netfence/cni.sock"),
        "{:?}",
        out.stderr
    );
    assert!(
        out.stderr[0].ends_with(&format!(
            "; {uninstalled}: the pod starts without waiting for netfence"
        )),
        "{:?}",
        out.stderr
    );
    let out = run(env("CHECK"), &conf(json!({})), &mut agent);
    assert_eq!((out.exit, out.stdout), (0, None));
    assert!(out.stderr[0].ends_with(uninstalled), "{:?}", out.stderr);
}

#[test]
fn agent_down_with_a_fresh_or_missing_lease_fails_closed_and_says_why() {
    let mut agent = fake(down);
    agent.lease = Standing::Fresh(
        "its lease /run/netfence/cni.lease.json (restarting, pid 7) is fresh for 290 s more"
            .to_owned(),
    );
    let out = run(env("ADD"), &conf(json!({})), &mut agent);
    assert_eq!(out.exit, 1);
    let error: Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
    assert_eq!(error["code"], 11);
    let details = error["details"].as_str().unwrap();
    assert!(
        details.ends_with(
            "; its lease /run/netfence/cni.lease.json (restarting, pid 7) is fresh for 290 s more"
        ),
        "{details}"
    );
    let mut agent = fake(down);
    let out = run(env("ADD"), &conf(json!({})), &mut agent);
    let error: Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
    assert_eq!(error["code"], 11);
    assert!(
        error["details"]
            .as_str()
            .unwrap()
            .ends_with("; no lease at /run/netfence/cni.lease.json: failing closed"),
        "{error}"
    );
}

#[test]
fn an_agent_that_answers_and_refuses_fails_add_whatever_its_lease() {
    let mut agent = fake(refused);
    agent.lease = Standing::Expired("expired".to_owned());
    let out = run(env("ADD"), &conf(json!({})), &mut agent);
    let error: Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
    assert_eq!((out.exit, error["code"].as_u64()), (1, Some(100)));
    assert_eq!(error["details"], "endpoints map full");
}
