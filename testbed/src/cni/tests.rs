//! Unit tests of the CNI invoker that need no root: conflist shape and parsing,
//! plugin configuration injection, error quoting, result reading, plugin lookup.

#![allow(clippy::unwrap_used, reason = "test inputs are literals")]

use super::*;

fn delegate() -> ConfList {
    ConfList::flannel_delegate(
        "198.18.0.0/24",
        "fd00:18::/64",
        &["198.18.0.0/15", "fd00:18::/32"],
        Path::new("/tmp/bed/cni"),
    )
}

#[test]
fn flannel_delegate_is_what_flannel_writes() {
    let list = delegate();
    let bridge = &list.plugins().unwrap()[0];
    assert_eq!(list.name().unwrap(), "cbr0");
    assert_eq!(list.cni_version().unwrap(), "1.0.0");
    assert_eq!(bridge["type"], "bridge");
    assert_eq!(bridge["bridge"], "cni0");
    assert_eq!(bridge["isGateway"], true);
    assert_eq!(bridge["isDefaultGateway"], true);
    assert_eq!(bridge["hairpinMode"], true);
    assert_eq!(bridge["ipMasq"], false);
    assert_eq!(bridge["mtu"], 1450);
    assert_eq!(
        bridge["ipam"]["ranges"],
        json!([[{"subnet": "198.18.0.0/24"}], [{"subnet": "fd00:18::/64"}]])
    );
    assert_eq!(bridge["ipam"]["routes"][1], json!({"dst": "fd00:18::/32"}));
    assert_eq!(bridge["ipam"]["dataDir"], "/tmp/bed/cni");
    // It round-trips through the parser (what a runtime reading the file does).
    assert_eq!(ConfList::parse(&list.json().to_string()).unwrap(), list);
}

#[test]
fn plugin_config_injects_name_version_prev_result_and_declared_capabilities() {
    let mut list = delegate();
    list.push_plugin(json!({"type": "netfence-cni", "capabilities": {"ips": true}}))
        .unwrap();
    let prev = json!({"cniVersion": "1.0.0", "ips": []});
    let runtime: Map<String, Value> = [
        ("ips".to_owned(), json!(["198.18.0.5"])),
        ("portMappings".to_owned(), json!([])),
    ]
    .into_iter()
    .collect();
    let first = list.plugin_config(0, None, &runtime).unwrap();
    assert_eq!(first["name"], "cbr0");
    assert_eq!(first["cniVersion"], "1.0.0");
    assert!(first.get("prevResult").is_none());
    assert!(
        first.get("runtimeConfig").is_none(),
        "no capability declared"
    );
    let second = list.plugin_config(1, Some(&prev), &runtime).unwrap();
    assert_eq!(second["type"], "netfence-cni");
    assert_eq!(second["name"], "cbr0");
    assert_eq!(second["prevResult"], prev);
    assert_eq!(second["runtimeConfig"], json!({"ips": ["198.18.0.5"]}));
    list.declare_capability(0, "ips").unwrap();
    let first = list.plugin_config(0, None, &runtime).unwrap();
    assert_eq!(first["runtimeConfig"], json!({"ips": ["198.18.0.5"]}));
}

#[test]
fn parse_rejects_lists_a_runtime_would_reject() {
    let cases = [
        ("{}", "no string `name`"),
        (r#"{"name":"n"}"#, "no string `cniVersion`"),
        (
            r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#,
            "has no plugins",
        ),
        (
            r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"x":1}]}"#,
            "plugins[0]",
        ),
        (
            r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"../sh"}]}"#,
            "plugins[0]",
        ),
    ];
    for (text, expected) in cases {
        let error = format!("{:#}", ConfList::parse(text).unwrap_err());
        assert!(error.contains(expected), "{text}: {error}");
    }
    assert!(delegate().push_plugin(json!({"name": "no type"})).is_err());
}

#[test]
fn cni_errors_are_quoted() {
    assert_eq!(
        describe_error(r#"{"code": 7, "msg": "bad config", "details": "field x"}"#),
        "CNI error 7: bad config (field x)"
    );
    assert_eq!(
        describe_error(r#"{"code": 999, "msg": "failed"}"#),
        "CNI error 999: failed"
    );
    assert_eq!(describe_error("panic: x\n"), "output \"panic: x\"");
}

#[test]
fn results_give_the_host_veth_and_addresses() {
    let result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
            {"name": "veth1a2b3c4d", "mac": "bb:bb:bb:bb:bb:bb"},
            {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/p"}
        ],
        "ips": [
            {"address": "198.18.0.5/24", "gateway": "198.18.0.1", "interface": 2},
            {"address": "fd00:18::5/64", "gateway": "fd00:18::1", "interface": 2}
        ]
    });
    assert_eq!(host_veth(&result, "cni0").unwrap(), "veth1a2b3c4d");
    assert_eq!(
        result_ips(&result).unwrap(),
        vec![
            "198.18.0.5".parse::<IpAddr>().unwrap(),
            "fd00:18::5".parse().unwrap()
        ]
    );
    assert!(host_veth(&json!({"interfaces": []}), "cni0").is_err());
}

#[test]
fn plugins_are_found_in_order_and_must_be_executable() {
    let root = std::env::temp_dir().join(format!("nfh1-cni-unit-{}", std::process::id()));
    let (a, b) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("p"), "").unwrap();
    std::fs::write(b.join("p"), "#!/bin/sh\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(b.join("p"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cni = Cni::new(vec![a, b.clone()], root.join("cache"));
    let found = cni.find_plugin("p");
    let missing = cni.find_plugin("q");
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(found.unwrap(), b.join("p"), "a/p is not executable");
    assert!(format!("{:#}", missing.unwrap_err()).contains("\"q\" not found"));
}
