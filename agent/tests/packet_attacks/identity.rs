//! Attack 5: a pod puts another pod's future address on its own eth0 before that pod
//! exists. Bindings come from the cluster (and the CNI ADD result), never from what a
//! pod shows: the squatter never sends with the address, and the real owner's traffic
//! works — bound from netfence-cni's ADD when it is chained (as `agent/tests/cni.rs`
//! runs it; that agent does not read the runtime's cache, so the plugin alone is
//! shown to suffice), and without it from the runtime's CNI result cache (the lab's
//! node writes libcni's `cniCacheV1` files, read with `--cni-cache-dir`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use netfence_testbed::NODE_NAME;
use serde_json::json;

use super::netns::{Agent, Attach, TestBed, netfence_bin, plugin_dir};
use super::{Burst, TIMES, any_port, ingress_from, policy, udp_burst, udp_burst_from_port};

/// The contested address: the victim's (host 50), claimed first by the squatter.
const CONTESTED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
const PORT: u16 = 9500;

fn squat(with_cni: bool) {
    let plugins = with_cni.then(plugin_dir);
    let mut bed =
        TestBed::new("nfatk").unwrap_or_else(|e| panic!("setting up the test node: {e:#}"));
    bed.namespace("x", &[]);
    let server = bed.pod("x", "srv", &[("app", "srv")], 10, &[]).unwrap();
    let squatter = bed.pod("x", "sq", &[("app", "sq")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    // The server admits only the victim (app=v).
    policy(&bed, "srv.yaml", &ingress_from("srv", "v", &[PORT]));
    let dst = SocketAddr::new(server.ip4(), PORT);
    let contested = IpAddr::V4(CONTESTED);
    squatter
        .netns
        .ip(&["addr", "add", &format!("{CONTESTED}/32"), "dev", "eth0"])
        .unwrap();
    let all = Burst {
        arrived: TIMES,
        answered: TIMES,
    };
    let none = Burst {
        arrived: 0,
        answered: 0,
    };
    assert_eq!(
        udp_burst(&squatter, any_port(contested), &server, dst),
        all,
        "control: no agent"
    );

    let socket = bed.scratch("cni.sock");
    let mut agent = if with_cni {
        Agent::start_with(
            netfence_bin(),
            bed.node(),
            NODE_NAME,
            &bed.manifests(),
            &[],
            Attach::Auto,
            bed.scratch("agent-cni.log"),
            &[
                "--detach-on-exit".as_ref(),
                "--cni-socket".as_ref(),
                socket.as_os_str(),
            ],
        )
        .unwrap_or_else(|e| panic!("starting netfence: {e:#}"))
    } else {
        super::netns::start(&bed, Attach::Auto)
    };
    assert_eq!(
        udp_burst_from_port(&squatter, 0, &server, PORT),
        none,
        "the squatter from its own address"
    );
    assert_eq!(
        udp_burst(&squatter, any_port(contested), &server, dst),
        none,
        "before the victim exists"
    );
    // The squatter now shows only the contested address (in its subnet, to reach the
    // server): nothing it shows says its interface is its own, so what the pods show
    // cannot tell the two veths apart; only the CNI ADD results can.
    squatter
        .netns
        .ip(&["-6", "addr", "flush", "dev", "eth0", "scope", "global"])
        .unwrap();
    for (verb, address) in [
        ("del", format!("{}/24", squatter.ip4())),
        ("del", format!("{CONTESTED}/32")),
        ("add", format!("{CONTESTED}/24")),
    ] {
        squatter
            .netns
            .ip(&["addr", verb, &address, "dev", "eth0"])
            .unwrap();
    }

    if let Some(plugins) = &plugins {
        let entry = json!({
            "type": "netfence-cni",
            "socketPath": socket.to_string_lossy(),
            "timeoutSeconds": 20,
            "failClosed": true,
        });
        bed.chain_plugin(&entry, plugins).unwrap();
    }
    let victim = bed.pod("x", "v", &[("app", "v")], 50, &[]).unwrap();
    assert_eq!(victim.v4, CONTESTED);
    let generation = agent.generation();
    bed.write_cluster().unwrap();
    super::wait_for_manifests_sync(&mut agent, generation);

    assert_eq!(
        udp_burst(&squatter, any_port(contested), &server, dst),
        none,
        "the squatter with the victim's address, once the victim exists"
    );
    assert_eq!(
        udp_burst_from_port(&victim, 0, &server, PORT),
        all,
        "the victim's own traffic (bound from {})",
        if with_cni {
            "netfence-cni's ADD"
        } else {
            "the runtime's CNI result cache"
        }
    );
    assert_eq!(
        udp_burst(&squatter, any_port(contested), &server, dst),
        none,
        "the squatter, after the victim's traffic"
    );
}

#[test]
fn a_squatted_address_binds_to_its_pod_with_netfence_cni() {
    netfence_testbed::require_root().unwrap();
    squat(true);
}

#[test]
fn a_squatted_address_binds_to_its_pod_from_the_runtime_cache_without_netfence_cni() {
    netfence_testbed::require_root().unwrap();
    squat(false);
}
