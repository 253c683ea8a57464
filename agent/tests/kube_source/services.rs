//! Services, EndpointSlices and the policy mode annotation through the API source:
//! exact model values from the API, updates and deletes seen, invalid updates reported
//! with the resource path and the last good version kept, an FQDN slice ignored, and
//! readiness waiting for both new kinds.

use std::net::IpAddr;

use netfence::model::{
    EndpointSlice, Port, Protocol, Service, ServicePort, SliceEndpoint, SlicePort,
};
use serde_json::{Value, json};

use super::apiserver::{ApiServer, ENDPOINT_SLICES, PODS, POLICIES, SERVICES};
use super::{API, Fixture, WEB, allow_web_from, cluster, list_requests, wait_for};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// prod/web: dual-stack VIPs, a named and a numeric targetPort.
fn web_service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "web", "namespace": "prod",
                        "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
           "spec": {"type": "ClusterIP", "clusterIP": "10.96.6.10",
                    "clusterIPs": ["10.96.6.10", "fd00:96::6:10"],
                    "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                    "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                              {"name": "admin", "port": 8443, "protocol": "TCP", "targetPort": 9443}]},
           "status": {"loadBalancer": {}}})
}

/// prod/web-abcde: the web pod ready, a terminating one not ready.
fn web_slice(endpoints: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-abcde", "namespace": "prod",
                        "labels": {"kubernetes.io/service-name": "web",
                                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
           "addressType": "IPv4",
           "endpoints": endpoints,
           "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                     {"name": "admin", "port": 9443}]})
}

fn ready(address: &str, ready: bool) -> Value {
    json!({"addresses": [address], "conditions": {"ready": ready, "serving": ready},
           "nodeName": super::NODE, "targetRef": {"kind": "Pod", "namespace": "prod", "name": "x"}})
}

fn fqdn_slice() -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "ext-fqdn", "namespace": "prod",
                        "labels": {"kubernetes.io/service-name": "ext"}},
           "addressType": "FQDN",
           "endpoints": [{"addresses": ["db.example.com"]}],
           "ports": [{"port": 5432}]})
}

fn expected_service(cluster_ips: &[&str]) -> Service {
    Service {
        namespace: "prod".into(),
        name: "web".into(),
        cluster_ips: cluster_ips.iter().map(|s| ip(s)).collect(),
        ports: vec![
            ServicePort {
                name: Some("http".into()),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: Port::Name("http".into()),
            },
            ServicePort {
                name: Some("admin".into()),
                protocol: Protocol::Tcp,
                port: 8443,
                target_port: Port::Number(9443),
            },
        ],
        selector: Some([("app".to_owned(), "web".to_owned())].into()),
    }
}

fn expected_slice(endpoints: &[(&str, bool)]) -> EndpointSlice {
    EndpointSlice {
        namespace: "prod".into(),
        name: "web-abcde".into(),
        service: Some("web".into()),
        ports: vec![
            SlicePort {
                name: Some("http".into()),
                protocol: Protocol::Tcp,
                port: 80,
            },
            SlicePort {
                name: Some("admin".into()),
                protocol: Protocol::Tcp,
                port: 9443,
            },
        ],
        endpoints: endpoints
            .iter()
            .map(|(address, ready)| SliceEndpoint {
                addresses: vec![ip(address)],
                ready: *ready,
            })
            .collect(),
    }
}

#[tokio::test]
async fn service_and_endpoint_slice_added_changed_and_deleted() {
    let mut objects = cluster();
    objects.push((SERVICES, web_service()));
    objects.push((
        ENDPOINT_SLICES,
        web_slice(json!([ready(WEB, true), ready("198.18.6.99", false)])),
    ));
    objects.push((ENDPOINT_SLICES, fqdn_slice()));
    let mut f = Fixture::start(objects).await;
    let (load, _) = f.until("the first state", |_, _| true).await;
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    assert_eq!(
        load.state.services,
        [expected_service(&["10.96.6.10", "fd00:96::6:10"])]
    );
    assert_eq!(
        load.state.endpoint_slices,
        [expected_slice(&[(WEB, true), ("198.18.6.99", false)])],
        "the FQDN slice is not stored"
    );
    let stats = f.source.stats();
    assert_eq!((stats.services, stats.endpoint_slices), (1, 1));
    assert_eq!(stats.invalid_objects, 0);

    // Update: the terminating endpoint is gone, another pod became a backend.
    f.server.apply(
        ENDPOINT_SLICES,
        web_slice(json!([ready(WEB, true), ready(API, true)])),
    );
    let expected = expected_slice(&[(WEB, true), (API, true)]);
    let (load, _) = f
        .until("the slice update", |load, _| {
            load.state.endpoint_slices.first() == Some(&expected)
        })
        .await;
    assert_eq!(load.state.services.len(), 1);

    // Update: single-stack now.
    let mut single = web_service();
    single["spec"]["clusterIPs"] = json!(["10.96.6.10"]);
    f.server.apply(SERVICES, single);
    let expected = expected_service(&["10.96.6.10"]);
    f.until("the service update", |load, _| {
        load.state.services.first() == Some(&expected)
    })
    .await;

    // An invalid update is reported with the resource path; the last good one stays.
    let mut broken = web_service();
    broken["spec"]["clusterIPs"] = json!(["10.96.6.10", "10.96.6.11"]);
    f.server.apply(SERVICES, broken);
    let (load, _) = f
        .until("the invalid update", |load, _| !load.errors.is_empty())
        .await;
    assert_eq!(
        load.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "/api/v1/services: Service prod/web: spec.clusterIPs[1]: \"10.96.6.11\": may specify no more than one IP for each IP family"
        ]
    );
    assert_eq!(load.state.services, [expected]);
    assert_eq!(f.source.stats().invalid_objects, 1);

    f.server.delete(SERVICES, "prod", "web");
    f.server.delete(ENDPOINT_SLICES, "prod", "web-abcde");
    let (load, _) = f
        .until("the deletes", |load, _| {
            load.state.services.is_empty() && load.state.endpoint_slices.is_empty()
        })
        .await;
    assert_eq!(load.state.pods.len(), 4, "nothing else changed");
}

#[tokio::test]
async fn invalid_endpoint_slice_names_its_field() {
    let mut objects = cluster();
    let mut slice = web_slice(json!([ready(WEB, true)]));
    slice["endpoints"][0]["conditions"]["ready"] = json!("yes");
    objects.push((ENDPOINT_SLICES, slice));
    let mut bad_family = web_slice(json!([ready("fd00::6", true)]));
    bad_family["metadata"]["name"] = json!("web-v4");
    objects.push((ENDPOINT_SLICES, bad_family));
    let mut f = Fixture::start(objects).await;
    let (load, _) = f
        .until("the errors", |load, _| load.errors.len() == 2)
        .await;
    let mut errors: Vec<String> = load.errors.iter().map(ToString::to_string).collect();
    errors.sort();
    assert_eq!(
        errors,
        [
            "/apis/discovery.k8s.io/v1/endpointslices: EndpointSlice prod/web-abcde: endpoints[0].conditions.ready: invalid type: string \"yes\", expected a boolean",
            "/apis/discovery.k8s.io/v1/endpointslices: EndpointSlice prod/web-v4: endpoints[0].addresses[0]: \"fd00::6\": must be a valid IPv4 address",
        ]
    );
    assert!(load.state.endpoint_slices.is_empty());
}

#[tokio::test]
async fn policy_mode_annotation_from_the_api() {
    let (resource, mut policy) = allow_web_from(
        "prod",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "api"}}}),
    );
    policy["metadata"]["annotations"] = json!({"netfence.io/mode": "audit", "note": "x"});
    let mut objects = cluster();
    objects.push((resource, policy.clone()));
    let mut f = Fixture::start(objects).await;
    let (load, _) = f.until("the first state", |_, _| true).await;
    assert!(load.state.policies[0].audit);

    policy["metadata"]["annotations"]["netfence.io/mode"] = json!("enforce");
    f.server.apply(POLICIES, policy.clone());
    f.until("enforce", |load, _| !load.state.policies[0].audit)
        .await;

    policy["metadata"]["annotations"]["netfence.io/mode"] = json!("audit");
    f.server.apply(POLICIES, policy.clone());
    f.until("audit again", |load, _| load.state.policies[0].audit)
        .await;

    policy["metadata"]["annotations"]["netfence.io/mode"] = json!("warn");
    f.server.apply(POLICIES, policy);
    let (load, _) = f
        .until("the invalid mode", |load, _| !load.errors.is_empty())
        .await;
    assert_eq!(
        load.errors[0].to_string(),
        "/apis/networking.k8s.io/v1/networkpolicies: NetworkPolicy prod/web: metadata.annotations[netfence.io/mode]: must be \"audit\" or \"enforce\""
    );
    assert!(
        load.state.policies[0].audit,
        "the last good (audit) version stays"
    );
}

#[tokio::test]
async fn not_ready_until_services_and_endpoint_slices_are_listed() {
    let server = ApiServer::start().await;
    for (resource, object) in cluster() {
        server.apply(resource, object);
    }
    server.apply(SERVICES, web_service());
    server.fail_lists(SERVICES, true);
    server.fail_lists(ENDPOINT_SLICES, true);
    let mut f = Fixture::watch(server).await;
    wait_for(
        || f.server.open_watches(PODS) == 1 && list_requests(&f.server, ENDPOINT_SLICES) >= 2,
        "pods watched, a retried slice list",
    )
    .await;
    assert!(f.source.load().is_none());
    assert_eq!(f.source.waiting_for(), ["Service", "EndpointSlice"]);

    f.server.fail_lists(SERVICES, false);
    wait_for(
        || f.source.waiting_for() == ["EndpointSlice"],
        "services listed",
    )
    .await;
    assert!(
        f.source.load().is_none(),
        "not ready without endpoint slices"
    );

    f.server.fail_lists(ENDPOINT_SLICES, false);
    let (load, _) = f.until("ready", |_, _| true).await;
    assert_eq!(load.state.services.len(), 1);
    assert!(f.source.waiting_for().is_empty());
}
