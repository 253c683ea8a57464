//! Attack 8 (the item 7): a tunnel to the node. In the two-node lab a pod on
//! node1 sends UDP to a node IP's Flannel VXLAN port (8472, VNI 1) carrying an inner
//! frame to a pod whose ingress denies the attacker, with an inner source that pod's
//! policy allows. What the node decapsulates would carry any source; the pod may not
//! send it.

use std::net::{SocketAddr, SocketAddrV4};

use netfence_testbed::flannel::{VXLAN_DEVICE, VXLAN_PORT, VXLAN_VNI};
use netfence_testbed::forge::{ETH_P_IPV4, ethernet, udp4, vxlan};
use netfence_testbed::raw::{mac, udp_socket};

use super::netns::{ALLOW, DENY, PodNs, TestBed, Verdicts, start_on, two_nodes};
use super::{TIMES, marker, policy, tagged_counts};

const PORT: u16 = 9800;

/// Pods app=v admit only app=ok.
const V_FROM_OK: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: v-from-ok
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: v
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: ok
";

/// `attacker` sends [`TIMES`] VXLAN packets to node `node`'s IP for each
/// (victim on that node, allowed pod whose address the inner frame forges); returns how
/// many inner datagrams each victim received.
fn tunnel(
    bed: &TestBed,
    attacker: &PodNs,
    targets: &[(u8, &PodNs, &PodNs)],
    round: &str,
) -> Vec<usize> {
    let tag = marker(round);
    let socket = udp_socket(&attacker.netns, SocketAddr::new(attacker.ip4(), 0)).unwrap();
    let servers: Vec<_> = targets
        .iter()
        .map(|(_, victim, _)| {
            udp_socket(&victim.netns, SocketAddr::new(victim.ip4(), PORT)).unwrap()
        })
        .collect();
    for &(node, victim, forged) in targets {
        let other = 3 - node;
        let inner = ethernet(
            mac(bed.node_ns(node).unwrap(), VXLAN_DEVICE).unwrap(),
            mac(bed.node_ns(other).unwrap(), VXLAN_DEVICE).unwrap(),
            ETH_P_IPV4,
            &udp4(
                SocketAddrV4::new(forged.v4, 5555),
                SocketAddrV4::new(victim.v4, PORT),
                &tag,
            ),
        );
        let outer = SocketAddr::new(bed.node_addrs(node).unwrap().node_ip().into(), VXLAN_PORT);
        for _ in 0..TIMES {
            socket.send_to(&vxlan(VXLAN_VNI, &inner), outer).unwrap();
        }
    }
    tagged_counts(&servers, &tag)
}

#[test]
fn a_pod_cannot_tunnel_through_a_nodes_vxlan_port() {
    let mut bed = two_nodes();
    bed.namespace("x", &[]);
    let attacker = bed
        .pod_on(1, "x", "atk", &[("app", "atk")], 10, &[])
        .unwrap();
    let v1 = bed.pod_on(1, "x", "v1", &[("app", "v")], 11, &[]).unwrap();
    let ok1 = bed
        .pod_on(1, "x", "ok1", &[("app", "ok")], 12, &[])
        .unwrap();
    let v2 = bed.pod_on(2, "x", "v2", &[("app", "v")], 21, &[]).unwrap();
    let ok2 = bed
        .pod_on(2, "x", "ok2", &[("app", "ok")], 22, &[])
        .unwrap();
    bed.write_cluster().unwrap();
    policy(&bed, "v.yaml", V_FROM_OK);
    // Each inner source is the allowed pod on the other node, as if that node's
    // flannel.1 had sent it: to node1's IP for v1, to node2's IP for v2.
    let targets = [(1, &v1, &ok2), (2, &v2, &ok1)];
    assert_eq!(
        tunnel(&bed, &attacker, &targets, "vxlan-control"),
        [TIMES, TIMES],
        "without the agents"
    );

    let _agents = [
        start_on(&bed, 1, super::netns::Attach::Auto),
        start_on(&bed, 2, super::netns::Attach::Auto),
    ];
    Verdicts::new()
        .udp(&attacker, &v1, PORT, DENY)
        .udp(&attacker, &v2, PORT, DENY)
        .udp(&ok2, &v1, PORT, ALLOW)
        .check();
    assert_eq!(
        tunnel(&bed, &attacker, &targets, "vxlan"),
        [0, 0],
        "VXLAN to node1's and node2's IP, inner frames to v1 and v2 from their allowed peers' addresses"
    );
}
