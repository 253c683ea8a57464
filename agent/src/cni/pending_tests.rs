//! Pending CNI endpoints around compile: deny-all for unknown pods, the real policy
//! for a pod the state names without an address, replacement when the state catches
//! up, and the readiness check.

use netfence_cni::protocol::{Command, PROTOCOL_VERSION};

use super::*;
use crate::compile::{NodeContext, compile, compile_node};
use crate::image::{DirectionVerdict, Packet};
use crate::model::State;
use crate::source::ManifestDir;
use netfence_common::{EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IDENTITY_WORLD};

const NODE: &str = "node-a";

/// `web` (app=web) is selected by a policy allowing ingress from app=client on TCP 80;
/// `client` is isolated by nothing. `new` is named in the state but has no address
/// unless `new_ip` is given.
fn state(new_ip: Option<&str>) -> State {
    let dir = tempfile::tempdir().unwrap();
    let status = |ip: Option<&str>| match ip {
        Some(ip) => format!("status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}"),
        None => "status: {phase: Pending}".to_owned(),
    };
    let pod = |name: &str, app: &str, ip: Option<&str>| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\nspec: {{nodeName: {NODE}, containers: [{{name: c, image: i}}]}}\n{}\n---\n",
            status(ip)
        )
    };
    let mut yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n".to_owned();
    yaml += &pod("web", "web", Some("198.18.0.10"));
    yaml += &pod("client", "client", Some("198.18.0.11"));
    yaml += &pod("new", "client", new_ip);
    yaml += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\n\
             spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]}\n";
    std::fs::write(dir.path().join("cluster.yaml"), yaml).unwrap();
    let load = ManifestDir::new(dir.path()).load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    load.state
}

fn request(id: &str, ips: &[&str], names: Option<(&str, &str)>) -> Request {
    Request {
        version: PROTOCOL_VERSION,
        command: Command::Add,
        container_id: id.to_owned(),
        netns: "/var/run/netns/p".to_owned(),
        ifname: "eth0".to_owned(),
        ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        host_interfaces: vec!["veth1".to_owned()],
        pod_namespace: names.map(|(ns, _)| ns.to_owned()),
        pod_name: names.map(|(_, pod)| pod.to_owned()),
    }
}

/// What the engine compiles for `state` with `pending` announced.
fn image_with(pending: &Pending, state: &State) -> Image {
    let announced = pending.announced();
    let context = NodeContext {
        name: Some(NODE),
        allow_node: true,
        announced: &announced,
        ..Default::default()
    };
    compile_node(state, &context)
}

fn tcp(src: &str, dst: &str) -> Packet {
    Packet {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: netfence_common::PROTO_TCP,
        src_port: 40000,
        dst_port: 80,
    }
}

#[test]
fn an_unknown_pod_is_denied_both_ways_until_the_state_has_it() {
    let mut pending = Pending::default();
    pending.add(PendingEndpoint::from_request(
        &request("c9", &["198.18.0.99"], Some(("x", "late"))),
        0,
    ));
    let image = image_with(&pending, &state(None));
    let endpoint = &image.endpoints[&"198.18.0.99".parse::<IpAddr>().unwrap()];
    assert_eq!(endpoint, &deny_all("x", "late"));
    assert!(is_deny_all(endpoint));
    // Its egress to an unisolated pod and ingress from one are both dropped.
    let out = image.lookup(&tcp("198.18.0.99", "198.18.0.11"));
    assert_eq!(
        (out.egress, out.ingress),
        (DirectionVerdict::Denied, DirectionVerdict::NotIsolated)
    );
    let inbound = image.lookup(&tcp("198.18.0.11", "198.18.0.99"));
    assert_eq!(inbound.ingress, DirectionVerdict::Denied);
    // No POLICY entry exists for endpoint policy 0.
    assert!(image.policy.keys().all(|entry| entry.policy != 0));

    // Without names: cni/<container id>.
    let mut unnamed = Pending::default();
    unnamed.add(PendingEndpoint::from_request(
        &request("c10", &["198.18.0.98"], None),
        0,
    ));
    let image = image_with(&unnamed, &state(None));
    assert_eq!(
        image.endpoints[&"198.18.0.98".parse::<IpAddr>().unwrap()],
        deny_all("cni", "c10")
    );
}

#[test]
fn a_pod_the_state_names_without_an_address_gets_its_real_policy_at_once() {
    let mut pending = Pending::default();
    pending.add(PendingEndpoint::from_request(
        &request("c1", &["198.18.0.12"], Some(("x", "new"))),
        0,
    ));
    let state = state(None);
    let image = image_with(&pending, &state);
    let endpoint = &image.endpoints[&"198.18.0.12".parse::<IpAddr>().unwrap()];
    assert_eq!(
        (endpoint.namespace.as_str(), endpoint.pod.as_str()),
        ("x", "new")
    );
    assert!(!is_deny_all(endpoint), "{endpoint:?}");
    // As a client (app=client) it may reach web:80: the policy sees its identity.
    let verdict = image.lookup(&tcp("198.18.0.12", "198.18.0.10"));
    assert!(
        verdict.ingress.passes() && verdict.egress.passes(),
        "{verdict:?}"
    );
    // The state itself is untouched.
    assert!(
        state
            .pods
            .iter()
            .any(|p| p.name == "new" && p.ips.is_empty())
    );
}

#[test]
fn the_state_catching_up_replaces_the_deny_all_endpoint() {
    let mut pending = Pending::default();
    pending.add(PendingEndpoint::from_request(
        &request("c1", &["198.18.0.12"], Some(("x", "renamed"))),
        0,
    ));
    let before = image_with(&pending, &state(None));
    assert!(is_deny_all(
        &before.endpoints[&"198.18.0.12".parse::<IpAddr>().unwrap()]
    ));
    let after = image_with(&pending, &state(Some("198.18.0.12")));
    let endpoint = &after.endpoints[&"198.18.0.12".parse::<IpAddr>().unwrap()];
    assert_eq!(
        (endpoint.pod.as_str(), is_deny_all(endpoint)),
        ("new", false)
    );
    assert!(
        after
            .lookup(&tcp("198.18.0.12", "198.18.0.10"))
            .ingress
            .passes()
    );
}

#[test]
fn del_removes_the_endpoint_and_a_reused_address_drops_the_stale_container() {
    let mut pending = Pending::default();
    pending.add(PendingEndpoint::from_request(
        &request("old", &["198.18.0.50", "fd00:18::50"], None),
        0,
    ));
    let stale = pending.add(PendingEndpoint::from_request(
        &request("new", &["198.18.0.50"], None),
        0,
    ));
    assert_eq!(stale, vec!["old".to_owned()]);
    assert_eq!(pending.len(), 1);
    let image = image_with(&pending, &state(None));
    assert!(
        !image
            .endpoints
            .contains_key(&"fd00:18::50".parse::<IpAddr>().unwrap())
    );
    assert!(pending.remove("new").is_some());
    assert!(pending.remove("new").is_none(), "DEL is idempotent");
    let image = image_with(&pending, &state(None));
    assert!(
        !image
            .endpoints
            .contains_key(&"198.18.0.50".parse::<IpAddr>().unwrap())
    );
    assert_eq!(image, compile(&state(None), Some(NODE)));
}

#[test]
fn programmed_needs_the_live_entry_a_binding_and_an_attachment() {
    let mut pending = Pending::default();
    pending.add(PendingEndpoint::from_request(
        &request("c9", &["198.18.0.99"], None),
        0,
    ));
    let image = image_with(&pending, &state(None));
    let ip: IpAddr = "198.18.0.99".parse().unwrap();
    let ips = [ip];
    let mut live = BTreeMap::new();
    assert_eq!(
        programmed(&ips, &image, &live, |_| true),
        Err("198.18.0.99 is not in the endpoint map yet".to_owned())
    );
    let value = EndpointValue {
        policy: 0,
        flags: EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS,
        ifindex: 0,
        identity: IDENTITY_WORLD,
    };
    live.insert(ip, value);
    assert!(
        programmed(&ips, &image, &live, |_| true)
            .unwrap_err()
            .contains("not bound")
    );
    live.insert(
        ip,
        EndpointValue {
            ifindex: 7,
            ..value
        },
    );
    assert_eq!(
        programmed(&ips, &image, &live, |index| index != 7),
        Err("198.18.0.99's interface (index 7) is not attached yet".to_owned())
    );
    assert_eq!(
        programmed(&ips, &image, &live, |_| true),
        Ok(Enforcement::DefaultDeny)
    );
    live.insert(
        ip,
        EndpointValue {
            flags: 0,
            ifindex: 7,
            ..value
        },
    );
    assert!(
        programmed(&ips, &image, &live, |_| true)
            .unwrap_err()
            .contains("not the compiled one")
    );
    // A pod with its real policy.
    let web: IpAddr = "198.18.0.10".parse().unwrap();
    let wanted = &image.endpoints[&web];
    live.insert(
        web,
        EndpointValue {
            policy: wanted.policy,
            flags: EP_ISOLATED_INGRESS,
            ifindex: 3,
            identity: wanted.identity,
        },
    );
    assert_eq!(
        programmed(&[web], &image, &live, |_| true),
        Ok(Enforcement::Policy)
    );
}
