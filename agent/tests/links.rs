//! Interface discovery through rtnetlink (root): veth peers in other namespaces are
//! found, their addresses read without entering the namespace, and a bridge's ports
//! selected. Runs in a namespace of its own (`nfl-*`), cleaned up by a guard.

#![allow(
    clippy::expect_used,
    reason = "tests: a failed setup step is a failed test"
)]

use std::net::IpAddr;
use std::process::Command;

use netfence::dataplane::links::{self, Selection};

/// A network namespace that is deleted when dropped, with helpers to run `ip` in it.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        sh(&["ip", "netns", "add", name]);
        Netns(name.to_owned())
    }
    fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.0];
        full.extend_from_slice(args);
        sh(&full);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(status.success(), "{args:?} failed");
}

/// Runs `f` inside namespace `ns` on a fresh thread (setns affects only that thread)
/// with its own tokio runtime.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on this thread only, with a valid fd of a network namespace.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread")
}

#[test]
fn veth_peer_addresses_bind_pod_ips_to_host_interfaces() {
    let id = std::process::id();
    let node = Netns::new(&format!("nfl-n{id}"));
    let pod_a = Netns::new(&format!("nfl-a{id}"));
    let pod_b = Netns::new(&format!("nfl-b{id}"));
    node.ip(&["link", "add", "br-nfl", "type", "bridge"]);
    for (pod, host, addr4, addr6) in [
        (&pod_a, "nflh-a", "198.18.7.2/24", "fd00:7::2/64"),
        (&pod_b, "nflh-b", "198.18.7.3/24", "fd00:7::3/64"),
    ] {
        node.ip(&[
            "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
        ]);
        node.ip(&["link", "set", host, "master", "br-nfl", "up"]);
        pod.ip(&["addr", "add", addr4, "dev", "eth0"]);
        pod.ip(&["addr", "add", addr6, "dev", "eth0", "nodad"]);
        pod.ip(&["link", "set", "eth0", "up"]);
    }
    node.ip(&[
        "link", "add", "nfl-o1", "type", "veth", "peer", "name", "nfl-o2",
    ]);

    let (names, bindings, problems) = in_netns(&node.0, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        runtime.block_on(async {
            let handle = links::connect().expect("netlink");
            let all = links::list(&handle).await.expect("list");
            let selection = Selection::new(&[], Some("br-nfl".to_owned())).expect("selection");
            let managed = selection.managed(&all);
            let names: Vec<String> = managed.iter().map(|i| i.name.clone()).collect();
            let (reads, mut problems) = links::peer_reads(&handle, &managed).await;
            let bound = links::bind(&Default::default(), &[], &reads, &Default::default());
            problems.extend(bound.problems.iter().map(ToString::to_string));
            let bindings: Vec<(IpAddr, String)> = bound
                .bindings
                .into_iter()
                .map(|(addr, index)| {
                    let name = all
                        .iter()
                        .find(|i| i.index == index)
                        .map(|i| i.name.clone())
                        .unwrap_or_default();
                    (addr, name)
                })
                .collect();
            (names, bindings, problems)
        })
    });
    assert_eq!(names, vec!["nflh-a", "nflh-b"], "bridge ports only");
    assert!(problems.is_empty(), "{problems:?}");
    let expected: Vec<(IpAddr, String)> = vec![
        ("198.18.7.2".parse().expect("ip"), "nflh-a".to_owned()),
        ("198.18.7.3".parse().expect("ip"), "nflh-b".to_owned()),
        ("fd00:7::2".parse().expect("ip"), "nflh-a".to_owned()),
        ("fd00:7::3".parse().expect("ip"), "nflh-b".to_owned()),
    ];
    assert_eq!(
        bindings, expected,
        "global addresses of each peer, link-local excluded"
    );
}
