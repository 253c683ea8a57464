//! Traffic that is not plain pod-to-pod, on the Flannel-shaped lab with real agents
//! (root): Service ClusterIPs behind the lab's kube-proxy-like nftables DNAT (egress
//! to a Service follows its backends, named targetPort, endpoints changing, the usual
//! DNS rule, a backend on the other node), and the node's own traffic (kubelet-like
//! probes under default-deny, `--allow-node=false`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod netns;

use std::net::{IpAddr, Ipv4Addr};

use netfence_testbed::{
    EndpointSliceSpec, Protocol, ServicePortSpec, ServiceSpec, SliceEndpoint, TargetPort, Vip,
    endpoint_slice_yaml, service_yaml, tcp_connects,
};
use netns::{
    ALLOW, Agent, Attach, DENY, PodNs, TestBed, Verdicts, bed, netfence_bin, start, start_on,
    two_nodes,
};

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 10);
const DB_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 11);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 53);

fn v4(pod: &PodNs) -> Ipv4Addr {
    match pod.ip4() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!("ip4 is IPv4"),
    }
}

/// A one-port Service `ns/name` on `vip` with its EndpointSlice (the backends as the
/// controller lists them: the resolved target port), as one manifest.
fn service_manifest(
    ns: &str,
    name: &str,
    vip: Ipv4Addr,
    ports: &[(&str, u16, TargetPort, u16, Protocol)],
    selector: &[(&str, &str)],
    backends: &[&PodNs],
) -> String {
    let service = ServiceSpec {
        namespace: ns.into(),
        name: name.into(),
        cluster_ip: IpAddr::V4(vip),
        ports: ports
            .iter()
            .map(|(port_name, port, target, _, protocol)| ServicePortSpec {
                name: (*port_name).into(),
                port: *port,
                target_port: target.clone(),
                protocol: *protocol,
            })
            .collect(),
        selector: selector
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    };
    let slice = EndpointSliceSpec {
        namespace: ns.into(),
        name: format!("{name}-x1"),
        service: name.into(),
        endpoints: backends
            .iter()
            .map(|pod| SliceEndpoint {
                address: pod.ip4(),
                ready: true,
                node_name: "node1".into(),
                pod: pod.name.clone(),
            })
            .collect(),
        ports: ports
            .iter()
            .map(|(port_name, _, _, resolved, protocol)| {
                ((*port_name).into(), *resolved, *protocol)
            })
            .collect(),
        ipv6: false,
    };
    format!(
        "{}---\n{}",
        service_yaml(&service),
        endpoint_slice_yaml(&slice)
    )
}

fn vip(cluster_ip: Ipv4Addr, port: u16, protocol: Protocol, backends: &[(&PodNs, u16)]) -> Vip {
    Vip {
        cluster_ip,
        port,
        protocol,
        backends: backends
            .iter()
            .map(|(pod, port)| (v4(pod), *port))
            .collect(),
    }
}

const CLIENT_EGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: client-egress
  namespace: x
spec:
  podSelector:
    matchLabels:
      role: client
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - port: http
";

#[test]
fn egress_to_a_service_follows_its_backends_and_endpoint_changes() {
    let mut bed = bed();
    bed.namespace("x", &[]);
    let client = bed
        .pod("x", "client", &[("role", "client")], 10, &[])
        .unwrap();
    let free = bed.pod("x", "free", &[("role", "other")], 11, &[]).unwrap();
    let web = bed
        .pod("x", "web", &[("app", "web")], 20, &[("http", 8080)])
        .unwrap();
    let db = bed
        .pod("x", "db", &[("app", "db")], 21, &[("sql", 5432)])
        .unwrap();
    let web2 = bed
        .pod("x", "web2", &[("app", "web")], 22, &[("http", 8080)])
        .unwrap();
    bed.write_cluster().unwrap();
    // web: port 80 → the named targetPort `http` (8080 on its pods); db: 5432.
    bed.write_manifest(
        "web.yaml",
        &service_manifest(
            "x",
            "web",
            WEB_VIP,
            &[(
                "http",
                80,
                TargetPort::Name("http".into()),
                8080,
                Protocol::Tcp,
            )],
            &[("app", "web")],
            &[&web],
        ),
    )
    .unwrap();
    bed.write_manifest(
        "db.yaml",
        &service_manifest(
            "x",
            "db",
            DB_VIP,
            &[("sql", 5432, TargetPort::Number(5432), 5432, Protocol::Tcp)],
            &[("app", "db")],
            &[&db],
        ),
    )
    .unwrap();
    bed.write_manifest("client-egress.yaml", CLIENT_EGRESS)
        .unwrap();
    bed.install_services(&[
        vip(WEB_VIP, 80, Protocol::Tcp, &[(&web, 8080)]),
        vip(DB_VIP, 5432, Protocol::Tcp, &[(&db, 5432)]),
    ])
    .unwrap();
    let mut agent = start(&bed, Attach::Auto);

    let mut verdicts = Verdicts::new();
    verdicts.tcp_via(&client, (WEB_VIP.into(), 80), (&web, 8080), ALLOW);
    verdicts.tcp_via(&client, (DB_VIP.into(), 5432), (&db, 5432), DENY);
    // The pod itself on its target port is allowed, the VIP on another port is not.
    verdicts.tcp(&client, &web, 8080, ALLOW);
    verdicts.tcp_via(&client, (WEB_VIP.into(), 8080), (&web, 8080), DENY);
    // A pod without an egress policy reaches both (the lab's DNAT works).
    verdicts.tcp_via(&free, (DB_VIP.into(), 5432), (&db, 5432), ALLOW);
    verdicts.tcp_via(&free, (WEB_VIP.into(), 80), (&web, 8080), ALLOW);
    verdicts.check();

    // Endpoints change while the policy stands: db's Service now fronts web2 on
    // 8080 (an allowed backend and port), then goes back to db.
    let generation = agent.generation();
    bed.write_manifest(
        "db.yaml",
        &service_manifest(
            "x",
            "db",
            DB_VIP,
            &[(
                "sql",
                5432,
                TargetPort::Name("http".into()),
                8080,
                Protocol::Tcp,
            )],
            &[("app", "web")],
            &[&web2],
        ),
    )
    .unwrap();
    bed.install_services(&[
        vip(WEB_VIP, 80, Protocol::Tcp, &[(&web, 8080)]),
        vip(DB_VIP, 5432, Protocol::Tcp, &[(&web2, 8080)]),
    ])
    .unwrap();
    agent.wait_for_sync_after(generation).unwrap();
    let mut verdicts = Verdicts::new();
    verdicts.tcp_via(&client, (DB_VIP.into(), 5432), (&web2, 8080), ALLOW);
    verdicts.check();

    let generation = agent.generation();
    bed.write_manifest(
        "db.yaml",
        &service_manifest(
            "x",
            "db",
            DB_VIP,
            &[("sql", 5432, TargetPort::Number(5432), 5432, Protocol::Tcp)],
            &[("app", "db")],
            &[&db],
        ),
    )
    .unwrap();
    bed.install_services(&[
        vip(WEB_VIP, 80, Protocol::Tcp, &[(&web, 8080)]),
        vip(DB_VIP, 5432, Protocol::Tcp, &[(&db, 5432)]),
    ])
    .unwrap();
    agent.wait_for_sync_after(generation).unwrap();
    let mut verdicts = Verdicts::new();
    verdicts.tcp_via(&client, (DB_VIP.into(), 5432), (&db, 5432), DENY);
    verdicts.check();
}

#[test]
fn backend_ingress_sees_the_client_and_dns_rule_allows_kube_dns() {
    let mut bed = bed();
    bed.namespace("x", &[]);
    bed.namespace("kube-system", &[]);
    let client = bed
        .pod("x", "client", &[("role", "client")], 10, &[])
        .unwrap();
    let other = bed
        .pod("x", "other", &[("role", "other")], 11, &[])
        .unwrap();
    let web = bed
        .pod("x", "web", &[("app", "web")], 20, &[("http", 8080)])
        .unwrap();
    let dns = bed
        .pod(
            "kube-system",
            "coredns",
            &[("k8s-app", "kube-dns")],
            53,
            &[("dns-tcp", 53)],
        )
        .unwrap();
    bed.write_cluster().unwrap();
    bed.write_manifest(
        "web.yaml",
        &service_manifest(
            "x",
            "web",
            WEB_VIP,
            &[(
                "http",
                80,
                TargetPort::Name("http".into()),
                8080,
                Protocol::Tcp,
            )],
            &[("app", "web")],
            &[&web],
        ),
    )
    .unwrap();
    bed.write_manifest(
        "dns.yaml",
        &service_manifest(
            "kube-system",
            "kube-dns",
            DNS_VIP,
            &[
                ("dns", 53, TargetPort::Number(53), 53, Protocol::Udp),
                ("dns-tcp", 53, TargetPort::Number(53), 53, Protocol::Tcp),
            ],
            &[("k8s-app", "kube-dns")],
            &[&dns],
        ),
    )
    .unwrap();
    // web admits only role=client (judged on the client's own address: no SNAT);
    // every pod of x may only resolve names (the usual DNS rule).
    bed.write_manifest(
        "policies.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-clients
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector:
        matchLabels:
          role: client
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-dns
  namespace: x
spec:
  podSelector:
    matchLabels:
      role: other
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
      podSelector:
        matchLabels:
          k8s-app: kube-dns
    ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
",
    )
    .unwrap();
    bed.install_services(&[
        vip(WEB_VIP, 80, Protocol::Tcp, &[(&web, 8080)]),
        vip(DNS_VIP, 53, Protocol::Udp, &[(&dns, 53)]),
        vip(DNS_VIP, 53, Protocol::Tcp, &[(&dns, 53)]),
    ])
    .unwrap();
    let _agent = start(&bed, Attach::Auto);

    let mut verdicts = Verdicts::new();
    verdicts.tcp_via(&client, (WEB_VIP.into(), 80), (&web, 8080), ALLOW);
    // `other` may not send to web at all (its egress), and web would refuse it anyway.
    verdicts.tcp_via(&other, (WEB_VIP.into(), 80), (&web, 8080), DENY);
    verdicts.udp_via(&other, (DNS_VIP.into(), 53), (&dns, 53), ALLOW);
    verdicts.tcp_via(&other, (DNS_VIP.into(), 53), (&dns, 53), ALLOW);
    // The DNS rule allows the DNS pod on 53 only.
    verdicts.tcp(&other, &dns, 54, DENY);
    verdicts.check();
}

#[test]
fn service_backend_on_the_other_node() {
    let mut bed = two_nodes();
    bed.namespace("x", &[]);
    let client = bed
        .pod_on(1, "x", "client", &[("role", "client")], 10, &[])
        .unwrap();
    let intruder = bed
        .pod_on(1, "x", "intruder", &[("role", "intruder")], 11, &[])
        .unwrap();
    let web = bed
        .pod_on(2, "x", "web", &[("app", "web")], 20, &[("http", 8080)])
        .unwrap();
    bed.write_cluster().unwrap();
    bed.write_manifest(
        "web.yaml",
        &service_manifest(
            "x",
            "web",
            WEB_VIP,
            &[(
                "http",
                80,
                TargetPort::Name("http".into()),
                8080,
                Protocol::Tcp,
            )],
            &[("app", "web")],
            &[&web],
        ),
    )
    .unwrap();
    // The client's egress allows web (the VIP through it, on node1); web's ingress
    // admits only the client (on node2, judged on the client's address).
    bed.write_manifest("client-egress.yaml", CLIENT_EGRESS)
        .unwrap();
    bed.write_manifest(
        "web-ingress.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-clients
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector:
        matchLabels:
          role: client
",
    )
    .unwrap();
    bed.install_services(&[vip(WEB_VIP, 80, Protocol::Tcp, &[(&web, 8080)])])
        .unwrap();
    let _agents = [
        start_on(&bed, 1, Attach::Auto),
        start_on(&bed, 2, Attach::Auto),
    ];
    let mut verdicts = Verdicts::new();
    verdicts.tcp_via(&client, (WEB_VIP.into(), 80), (&web, 8080), ALLOW);
    verdicts.tcp_via(&intruder, (WEB_VIP.into(), 80), (&web, 8080), DENY);
    verdicts.check();
}

const DENY_ALL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
";

/// Node → pod (a kubelet probe), pod → node, pod → pod, from the node's `cni0`
/// address (what the node uses toward its pods).
fn node_verdicts(bed: &TestBed, a: &PodNs, b: &PodNs, node_allowed: bool) {
    let gateway = IpAddr::V4(bed.node_addrs(1).unwrap().gateway_v4());
    let mut verdicts = Verdicts::new();
    verdicts.observed(
        &format!("TCP  node → {} [{}]:8080", a.name, a.ip4()),
        node_allowed,
        tcp_connects(bed.node(), &a.netns, a.ip4(), 8080).unwrap(),
    );
    verdicts.observed(
        &format!("TCP  {} → node [{gateway}]:9000", a.name),
        node_allowed,
        tcp_connects(&a.netns, bed.node(), gateway, 9000).unwrap(),
    );
    verdicts.tcp(b, a, 8080, DENY);
    verdicts.check();
}

#[test]
fn node_traffic_passes_default_deny_unless_allow_node_is_false() {
    let mut bed = bed();
    bed.namespace("x", &[]);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    bed.write_manifest("deny-all.yaml", DENY_ALL).unwrap();

    let agent = start(&bed, Attach::Auto);
    node_verdicts(&bed, &a, &b, ALLOW);
    agent.stop().unwrap();

    let agent = Agent::start_with(
        netfence_bin(),
        bed.node(),
        "node1",
        &bed.manifests(),
        &[],
        Attach::Auto,
        bed.scratch("agent-no-node.log"),
        &["--allow-node=false".as_ref(), "--detach-on-exit".as_ref()],
    )
    .unwrap();
    node_verdicts(&bed, &a, &b, DENY);
    drop(agent);
}
