//! The lab itself, without netfence (root): pods made by CNI reach each other on one
//! node and across two nodes over flannel.1 (IPv4 and IPv6, TCP and UDP with replies),
//! hosts beyond the node are routed both ways, and CNI DEL removes a pod's veth and
//! releases its addresses.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use netfence_testbed::{NodeAddrs, TestBed, ping, tcp_connects, udp_exchange};

#[test]
fn pods_on_one_node_are_cni_bridge_ports_and_reach_each_other_and_external_hosts() {
    let mut bed = TestBed::new("nfh1l").unwrap();
    let a = bed.pod("x", "a", &[], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[], 11, &[]).unwrap();
    let ext = bed.external("ext", 100).unwrap();
    for pod in [&a, &b] {
        assert!(pod.host_if.starts_with("veth"), "{}", pod.host_if);
        let link = bed
            .node()
            .ip(&["-d", "link", "show", "dev", &pod.host_if])
            .unwrap();
        assert!(link.contains("master cni0"), "{link}");
        assert!(link.contains("hairpin on"), "{link}");
        assert!(link.contains("mtu 1450"), "{link}");
    }
    let ext_link = bed
        .node()
        .ip(&["-d", "link", "show", "dev", &ext.host_if])
        .unwrap();
    assert!(
        !ext_link.contains("master"),
        "external hosts are no bridge ports: {ext_link}"
    );
    assert!(tcp_connects(&a.netns, &b.netns, b.ip4(), 80).unwrap());
    assert!(tcp_connects(&a.netns, &b.netns, b.ip6(), 80).unwrap());
    assert!(
        udp_exchange(&a.netns, &b.netns, b.ip4(), 53)
            .unwrap()
            .reply_arrived
    );
    assert!(tcp_connects(&a.netns, &ext.netns, ext.ip4(), 873).unwrap());
    assert!(tcp_connects(&ext.netns, &b.netns, b.ip4(), 80).unwrap());
    assert!(tcp_connects(&ext.netns, &b.netns, b.ip6(), 80).unwrap());
    assert!(ping(&a.netns, ext.ip6()).unwrap());
    let addrs = bed.node_addrs(1).unwrap();
    assert!(
        bed.cluster_yaml()
            .contains(&format!("hostIP: {}", addrs.node_ip()))
    );
}

#[test]
fn cni_del_removes_the_veth_and_releases_the_addresses() {
    let mut bed = TestBed::new("nfh1l").unwrap();
    let a = bed.pod("x", "a", &[], 10, &[]).unwrap();
    let veth = a.host_if.clone();
    drop(a);
    let links = bed.node().ip(&["-o", "link"]).unwrap();
    assert!(!links.contains(&veth), "{veth} still there:\n{links}");
    // host-local released 198.18.0.10 and fd00:18::10: the same pod can be made again.
    let again = bed.pod("x", "a", &[], 10, &[]).unwrap();
    assert_ne!(
        again.host_if, veth,
        "the bridge plugin names veths at random"
    );
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_flannel_vxlan() {
    let start = std::time::Instant::now();
    let mut bed = TestBed::two_nodes("nfh1l").unwrap();
    let nodes = start.elapsed();
    let a = bed.pod_on(1, "x", "a", &[], 10, &[]).unwrap();
    let b = bed.pod_on(2, "x", "b", &[], 11, &[]).unwrap();
    eprintln!(
        "two nodes in {nodes:?}, two pods in {:?}",
        start.elapsed() - nodes
    );
    let ext = bed.external("ext", 100).unwrap();
    assert_eq!(b.v4.to_string(), "198.18.1.11");
    assert_eq!(b.v6.to_string(), "fd00:18:1::11");
    let node2 = bed.node_ns(2).unwrap();
    let vxlan = node2
        .ip(&["-d", "link", "show", "dev", "flannel.1"])
        .unwrap();
    for expected in [
        "vxlan id 1 ",
        "local 198.19.0.2",
        "dstport 8472",
        "nolearning",
    ] {
        assert!(vxlan.contains(expected), "{expected:?} not in {vxlan}");
    }
    assert!(tcp_connects(&a.netns, &b.netns, b.ip4(), 80).unwrap());
    assert!(tcp_connects(&b.netns, &a.netns, a.ip4(), 80).unwrap());
    assert!(tcp_connects(&a.netns, &b.netns, b.ip6(), 80).unwrap());
    let udp = udp_exchange(&b.netns, &a.netns, a.ip4(), 53).unwrap();
    assert!(udp.request_arrived && udp.reply_arrived, "{udp:?}");
    assert!(tcp_connects(&b.netns, &ext.netns, ext.ip4(), 873).unwrap());
    assert!(tcp_connects(&ext.netns, &b.netns, b.ip4(), 80).unwrap());
    // The pod-to-pod packets crossed as VXLAN: flannel.1 counted them on both nodes.
    let stats = node2
        .ip(&["-j", "-s", "link", "show", "dev", "flannel.1"])
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let received = stats[0]["stats64"]["rx"]["packets"].as_u64().unwrap();
    assert!(
        received >= 10,
        "flannel.1 on node2 received {received} packets"
    );
    assert_eq!(NodeAddrs::new(2).unwrap().name(), "node2");
    assert!(bed.cluster_yaml().contains("nodeName: node2"));
    assert!(bed.cluster_yaml().contains("hostIP: 198.19.0.2"));
}

#[test]
fn service_vips_reach_backends_on_the_same_and_the_other_node_and_replies_return() {
    use std::net::{Ipv4Addr, SocketAddr};

    use netfence_testbed::{Protocol, Vip, tcp_via, udp_via};

    let mut bed = TestBed::two_nodes("nfh1l").unwrap();
    let client = bed.pod_on(1, "x", "client", &[], 10, &[]).unwrap();
    let near = bed.pod_on(1, "x", "near", &[], 20, &[]).unwrap();
    let far = bed.pod_on(2, "x", "far", &[], 30, &[]).unwrap();
    let (near_vip, far_vip) = (
        Ipv4Addr::new(198, 19, 128, 10),
        Ipv4Addr::new(198, 19, 128, 11),
    );
    let vips = |near_backend: &netfence_testbed::PodNs| {
        vec![
            Vip {
                cluster_ip: near_vip,
                port: 80,
                protocol: Protocol::Tcp,
                backends: vec![(near_backend.v4, 8080)],
            },
            Vip {
                cluster_ip: near_vip,
                port: 53,
                protocol: Protocol::Udp,
                backends: vec![(near_backend.v4, 5353)],
            },
            Vip {
                cluster_ip: far_vip,
                port: 80,
                protocol: Protocol::Tcp,
                backends: vec![(far.v4, 8080)],
            },
            Vip {
                cluster_ip: far_vip,
                port: 53,
                protocol: Protocol::Udp,
                backends: vec![(far.v4, 5353)],
            },
        ]
    };
    bed.install_services(&vips(&near)).unwrap();
    let at = |ip: Ipv4Addr, port| SocketAddr::new(ip.into(), port);
    // Same node: the backend's reply is bridged back to the client, and un-DNATed
    // only because bridged packets pass netfilter (bridge-nf-call-iptables).
    assert!(
        tcp_via(
            &client.netns,
            &near.netns,
            at(near.v4, 8080),
            at(near_vip, 80)
        )
        .unwrap()
    );
    let udp = udp_via(
        &client.netns,
        &near.netns,
        at(near.v4, 5353),
        at(near_vip, 53),
    )
    .unwrap();
    assert!(
        udp.request_arrived && udp.reply_arrived,
        "same node UDP: {udp:?}"
    );
    // Other node: DNAT on node1, across flannel.1, reply un-DNATed on node1.
    assert!(tcp_via(&client.netns, &far.netns, at(far.v4, 8080), at(far_vip, 80)).unwrap());
    let udp = udp_via(&client.netns, &far.netns, at(far.v4, 5353), at(far_vip, 53)).unwrap();
    assert!(
        udp.request_arrived && udp.reply_arrived,
        "cross-node UDP: {udp:?}"
    );
    // From node2's side too (its own kube-proxy table), and from node1 itself.
    assert!(tcp_via(&far.netns, &near.netns, at(near.v4, 8080), at(near_vip, 80)).unwrap());
    assert!(tcp_via(bed.node(), &far.netns, at(far.v4, 8080), at(far_vip, 80)).unwrap());
    // A wrong port of the VIP is not translated.
    assert!(
        !tcp_via(
            &client.netns,
            &near.netns,
            at(near.v4, 8080),
            at(near_vip, 81)
        )
        .unwrap()
    );
    // Endpoints change: the near VIP now fronts the far pod; the old backend gets nothing.
    bed.install_services(&vips(&far)).unwrap();
    assert!(
        tcp_via(
            &client.netns,
            &far.netns,
            at(far.v4, 8080),
            at(near_vip, 80)
        )
        .unwrap()
    );
    assert!(
        !tcp_via(
            &client.netns,
            &near.netns,
            at(near.v4, 8080),
            at(near_vip, 80)
        )
        .unwrap()
    );
    let table = bed
        .node()
        .command("nft")
        .args(["list", "table", "ip", "kube-proxy-lab"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("198.18.1.30 . 8080") && !table.contains("198.18.0.20"),
        "{table}"
    );
}

#[test]
fn cni_check_passes_on_a_made_pod_and_a_plugin_error_is_quoted() {
    use netfence_testbed::cni::{Attachment, Cni, ConfList};

    let bed = TestBed::new("nfh1l").unwrap();
    let dir = bed.scratch("cni-direct");
    let mut list = ConfList::flannel_delegate(
        "198.18.0.0/24",
        "fd00:18::/64",
        // No gateway-less routes: the bridge plugin's CHECK (1.1.1) reports them as
        // missing, as the kernel shows them with the gateway.
        &[],
        &dir.join("ipam"),
    );
    list.declare_capability(0, "ips").unwrap();
    let cni = Cni::new(vec!["/usr/lib/cni".into()], dir.join("results"));
    let pod = netfence_testbed::Netns::new(&format!("{}-direct", bed.id())).unwrap();
    let ok = Attachment::pod(
        "direct1",
        pod.name(),
        "x",
        "direct",
        &[
            "198.18.0.40".parse().unwrap(),
            "fd00:18::40".parse().unwrap(),
        ],
    );
    let result = cni.add(bed.node(), &list, &ok).unwrap();
    assert_eq!(result["ips"][0]["address"], "198.18.0.40/24", "{result}");
    assert_eq!(cni.cached(&list, &ok).unwrap(), Some(result));
    cni.check(bed.node(), &list, &ok).unwrap();
    cni.del(bed.node(), &list, &ok).unwrap();
    assert_eq!(cni.cached(&list, &ok).unwrap(), None);
    // An address outside the node's subnet: host-local's error, quoted.
    let bad = Attachment::pod(
        "direct2",
        pod.name(),
        "x",
        "direct",
        &["10.0.0.1".parse().unwrap()],
    );
    let error = format!("{:#}", cni.add(bed.node(), &list, &bad).unwrap_err());
    assert!(
        error.contains("CNI plugin bridge ADD failed")
            && error.contains("CNI error")
            && error.contains("10.0.0.1"),
        "{error}"
    );
}
