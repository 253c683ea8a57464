//! A generated cluster (`scenario`) written as Kubernetes manifests, one JSON file per
//! namespace (a `List` of the namespace and its pods, policies, Services and
//! EndpointSlices), as `kubectl get -o json` would give them: the backdrop of section
//! 5, so the real agent reads, compiles and watches a cluster of that size beside the
//! two pods whose packets it judges.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use netfence::model::{
    EndpointSlice, LabelSelector, Peer, Pod, Policy, Port, PortSpec, Protocol, Rule, Service, State,
};
use serde_json::{Value, json};

fn selector(selector: &LabelSelector) -> Value {
    let expressions: Vec<Value> = (selector.match_expressions.iter())
        .map(|r| json!({"key": r.key, "operator": format!("{:?}", r.operator), "values": r.values}))
        .collect();
    json!({"matchLabels": *selector.match_labels, "matchExpressions": expressions})
}

fn protocol(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn port(port: &Port) -> Value {
    match port {
        Port::Number(n) => json!(n),
        Port::Name(name) => json!(name),
    }
}

fn port_spec(spec: &PortSpec) -> Value {
    let mut out = json!({"protocol": protocol(spec.protocol)});
    if let Some(p) = &spec.port {
        out["port"] = port(p);
    }
    if let Some(end) = spec.end_port {
        out["endPort"] = json!(end);
    }
    out
}

fn rule(rule: &Rule, peers_field: &str) -> Value {
    let peers: Vec<Value> = (rule.peers.iter())
        .map(|peer| match peer {
            Peer::Pods {
                namespace_selector,
                pod_selector,
            } => {
                let mut out = json!({});
                if let Some(s) = namespace_selector {
                    out["namespaceSelector"] = selector(s);
                }
                if let Some(s) = pod_selector {
                    out["podSelector"] = selector(s);
                }
                out
            }
            Peer::IpBlock { cidr, except } => {
                json!({"ipBlock": {"cidr": cidr.to_string(), "except": except.iter().map(ToString::to_string).collect::<Vec<_>>()}})
            }
        })
        .collect();
    let ports: Vec<Value> = rule.ports.iter().map(port_spec).collect();
    json!({peers_field: peers, "ports": ports})
}

fn metadata(namespace: &str, name: &str) -> Value {
    json!({"namespace": namespace, "name": name})
}

fn pod(pod: &Pod) -> Value {
    let ports: Vec<Value> = (pod.ports.iter())
        .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": protocol(p.protocol)}))
        .collect();
    let ips: Vec<Value> = pod.ips.iter().map(|ip| json!({"ip": ip})).collect();
    let mut meta = metadata(&pod.namespace, &pod.name);
    meta["labels"] = json!(*pod.labels);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
           "spec": {"nodeName": pod.node_name, "containers": [{"name": "c", "image": "app", "ports": ports}]},
           "status": {"phase": "Running", "podIP": pod.ips.first(), "podIPs": ips}})
}

fn policy(policy: &Policy) -> Value {
    let mut types = Vec::new();
    if policy.isolates_ingress {
        types.push("Ingress");
    }
    if policy.isolates_egress {
        types.push("Egress");
    }
    let ingress: Vec<Value> = policy.ingress.iter().map(|r| rule(r, "from")).collect();
    let egress: Vec<Value> = policy.egress.iter().map(|r| rule(r, "to")).collect();
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": metadata(&policy.namespace, &policy.name),
           "spec": {"podSelector": selector(&policy.pod_selector), "policyTypes": types,
                    "ingress": ingress, "egress": egress}})
}

fn service(service: &Service) -> Value {
    let ports: Vec<Value> = (service.ports.iter())
        .map(|p| json!({"name": p.name, "protocol": protocol(p.protocol), "port": p.port, "targetPort": port(&p.target_port)}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata(&service.namespace, &service.name),
           "spec": {"clusterIP": service.cluster_ips.first(), "clusterIPs": service.cluster_ips,
                    "ports": ports, "selector": service.selector.as_deref()}})
}

/// A slice per address family (the API's slices hold one family each).
fn slices(slice: &EndpointSlice) -> Vec<Value> {
    let ports: Vec<Value> = (slice.ports.iter())
        .map(|p| json!({"name": p.name, "protocol": protocol(p.protocol), "port": p.port}))
        .collect();
    [("IPv4", "v4"), ("IPv6", "v6")]
        .into_iter()
        .filter_map(|(family, suffix)| {
            let endpoints: Vec<Value> = (slice.endpoints.iter())
                .filter(|e| e.addresses.iter().all(|a| a.is_ipv4() == (family == "IPv4")))
                .map(|e| json!({"addresses": e.addresses, "conditions": {"ready": e.ready}}))
                .collect();
            if endpoints.is_empty() {
                return None;
            }
            let mut meta = metadata(&slice.namespace, &format!("{}-{suffix}", slice.name));
            meta["labels"] = json!({"kubernetes.io/service-name": slice.service});
            Some(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
                        "addressType": family, "ports": ports, "endpoints": endpoints}))
        })
        .collect()
}

/// The file name of namespace `namespace`'s objects.
pub fn file_of(namespace: &str) -> String {
    format!("backdrop-{namespace}.json")
}

/// Every object of `state` as the API serves it: namespaces, pods, policies,
/// Services, EndpointSlices.
pub fn objects(state: &State) -> Vec<Value> {
    let mut out: Vec<Value> = (state.namespaces.values())
        .map(|namespace| {
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": namespace.name, "labels": namespace.labels}})
        })
        .collect();
    out.extend(state.pods.iter().map(pod));
    out.extend(state.policies.iter().map(policy));
    out.extend(state.services.iter().map(service));
    out.extend(state.endpoint_slices.iter().flat_map(slices));
    out
}

/// Writes `state` into `dir`, a file per namespace; returns the number of files.
pub fn write(dir: &Path, state: &State) -> anyhow::Result<usize> {
    let mut items: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for object in objects(state) {
        let meta = &object["metadata"];
        let namespace = match object["kind"].as_str() {
            Some("Namespace") => &meta["name"],
            _ => &meta["namespace"],
        };
        let namespace = namespace.as_str().unwrap_or_default().to_owned();
        items.entry(namespace).or_default().push(object);
    }
    for (namespace, items) in &items {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        let path = dir.join(file_of(namespace));
        std::fs::write(&path, serde_json::to_vec(&list)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(items.len())
}
