//! Tests of the CNI result cache reader, with sample entries in a temporary directory.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::*;

/// A libcni entry as containerd writes it for a Flannel pod (bridge, veth, eth0).
fn entry(container: &str, veth: &str, ips: &[&str]) -> String {
    let ips: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| serde_json::json!({"address": ip, "gateway": "198.18.0.1", "interface": 2}))
        .collect();
    serde_json::json!({
        "kind": "cniCacheV1",
        "containerId": container,
        "config": "eyJjbmlWZXJzaW9uIjoiMS4wLjAifQ==",
        "ifName": "eth0",
        "networkName": "cbr0",
        "netns": "/var/run/netns/cni-1",
        "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", "x"], ["K8S_POD_NAME", container], ["K8S_POD_INFRA_CONTAINER_ID", container]],
        "result": {
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "02:00:00:00:00:01"},
                {"name": veth, "mac": "02:00:00:00:00:02"},
                {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": "/var/run/netns/cni-1"}
            ],
            "ips": ips,
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        }
    })
    .to_string()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn owner(pod: &str) -> Owner {
    Owner {
        namespace: "x".into(),
        pod: pod.into(),
    }
}

#[test]
fn an_entry_gives_the_pods_addresses_and_its_host_interfaces() {
    let record = parse(
        Path::new("cbr0-v-eth0"),
        entry("v", "veth1", &["198.18.0.50/24", "fd00:18::50/64"]).as_bytes(),
    )
    .unwrap();
    assert_eq!(
        record,
        CniRecord {
            owner: owner("v"),
            ips: vec![ip("198.18.0.50"), ip("fd00:18::50")],
            host_interfaces: vec!["cni0".into(), "veth1".into()],
        }
    );
}

#[test]
fn addresses_of_host_interfaces_and_bad_indexes_are_not_the_pods() {
    let text = serde_json::json!({
        "kind": "cniCacheV1", "containerId": "c1", "ifName": "eth0", "networkName": "n",
        "result": {"interfaces": [{"name": "veth2"}, {"name": "eth0", "sandbox": "/proc/1/ns/net"}],
                   "ips": [{"address": "198.18.0.1/24", "interface": 0},
                           {"address": "198.18.0.7/24", "interface": 9},
                           {"address": "198.18.0.8/24", "interface": 1},
                           {"address": "198.18.0.9/24"},
                           {"address": "not-an-ip"}]}
    })
    .to_string();
    let record = parse(Path::new("n-c1-eth0"), text.as_bytes()).unwrap();
    // No K8S_POD_* arguments: named after the container, as netfence-cni records are.
    assert_eq!(
        record,
        CniRecord {
            owner: Owner {
                namespace: UNNAMED_NAMESPACE.into(),
                pod: "c1".into()
            },
            ips: vec![ip("198.18.0.8"), ip("198.18.0.9")],
            host_interfaces: vec!["veth2".into()],
        }
    );
}

#[test]
fn files_that_are_not_usable_entries_say_why() {
    let path = Path::new("f");
    let cases: [(&str, &str); 5] = [
        (
            "{\"kind\": \"cniCacheV1\", \"containerId\": ",
            "not a CNI cache entry",
        ),
        ("[1, 2]", "not a CNI cache entry"),
        (
            r#"{"kind": "cniCacheV2", "containerId": "c", "result": {}}"#,
            "kind \"cniCacheV2\", not \"cniCacheV1\"",
        ),
        // A loopback attachment: its one interface is in the sandbox.
        (
            r#"{"kind": "cniCacheV1", "containerId": "c", "ifName": "lo", "result": {"interfaces": [{"name": "lo", "sandbox": "/run/netns/p"}], "ips": [{"address": "127.0.0.1/8", "interface": 0}]}}"#,
            "no address or no host interface",
        ),
        (
            r#"{"kind": "cniCacheV1", "containerId": "c", "result": {"interfaces": [{"name": "veth3"}], "ips": []}}"#,
            "no address or no host interface",
        ),
    ];
    for (text, want) in cases {
        let error = parse(path, text.as_bytes()).expect_err(text);
        assert!(error.to_string().contains(want), "{text}: {error}");
    }
}

#[test]
fn a_directory_gives_its_entries_newest_first_and_skips_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str, age_s: u64| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
    };
    write(
        "cbr0-old-eth0",
        &entry("old", "veth-old", &["198.18.0.50/24"]),
        3600,
    );
    write(
        "cbr0-new-eth0",
        &entry("new", "veth-new", &["198.18.0.50/24"]),
        10,
    );
    write(
        "cbr0-mid-eth0",
        &entry("mid", "veth-mid", &["198.18.0.51/24"]),
        60,
    );
    write("cbr0-broken-eth0", "{\"kind\": \"cniCacheV1\"", 0);
    write("README", "not json at all", 0);
    std::fs::create_dir(dir.path().join("subdir")).unwrap();

    let records = read_dir(dir.path()).unwrap();
    let pods: Vec<&str> = records.iter().map(|r| r.owner.pod.as_str()).collect();
    assert_eq!(pods, ["new", "mid", "old"]);
    assert_eq!(records[0].host_interfaces, ["cni0", "veth-new"]);
}

#[test]
fn a_missing_directory_has_no_entries_and_a_file_in_its_place_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(read_dir(&dir.path().join("absent")).unwrap().is_empty());
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let error = read_dir(&file).expect_err("a file is no directory");
    assert!(error.to_string().contains("reading"), "{error}");
}
