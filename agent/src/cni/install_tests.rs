//! Conflist editing: Flannel's shape, idempotence, update, removal, other plugins and
//! other conflists kept, `.conf` refused; the binary copy.

use super::*;

fn flannel() -> Value {
    serde_json::from_str(
        r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
    )
    .unwrap()
}

fn entry(fail_closed: bool) -> Value {
    plugin_entry(Path::new("/run/netfence/cni.sock"), 10, fail_closed)
}

#[test]
fn appends_to_flannel_conflist_once_and_keeps_the_other_plugins() {
    let added = with_plugin(&flannel(), &entry(true)).unwrap().unwrap();
    let mut expected = flannel();
    expected["plugins"].as_array_mut().unwrap().push(json!({
        "type": "netfence-cni", "socketPath": "/run/netfence/cni.sock", "timeoutSeconds": 10, "failClosed": true
    }));
    assert_eq!(added, expected);
    // Re-run: nothing to do.
    assert_eq!(with_plugin(&added, &entry(true)).unwrap(), None);
    // A changed setting replaces the entry, still once and last.
    let updated = with_plugin(&added, &entry(false)).unwrap().unwrap();
    let plugins = updated["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 3);
    assert_eq!(plugins[2]["failClosed"], false);
    assert_eq!(plugins[..2], flannel()["plugins"].as_array().unwrap()[..]);
}

#[test]
fn an_entry_not_last_or_doubled_is_moved_to_the_end_once() {
    let mut doubled = flannel();
    let plugins = doubled["plugins"].as_array_mut().unwrap();
    plugins.insert(1, entry(true));
    plugins.push(entry(true));
    let fixed = with_plugin(&doubled, &entry(true)).unwrap().unwrap();
    let types: Vec<&str> = fixed["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["flannel", "portmap", "netfence-cni"]);
}

#[test]
fn removal_takes_only_netfence_out_and_is_idempotent() {
    let added = with_plugin(&flannel(), &entry(true)).unwrap().unwrap();
    assert_eq!(without_plugin(&added).unwrap(), Some(flannel()));
    assert_eq!(without_plugin(&flannel()).unwrap(), None);
    assert_eq!(
        with_plugin(&json!({"name": "x"}), &entry(true)).unwrap_err(),
        "it has no \"plugins\" list"
    );
}

#[test]
fn files_flannel_found_rewritten_atomically_others_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let flannel_path = dir.path().join("10-flannel.conflist");
    std::fs::write(&flannel_path, flannel().to_string()).unwrap();
    let other = r#"{"name":"other","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#;
    let other_path = dir.path().join("20-other.conflist");
    std::fs::write(&other_path, other).unwrap();
    std::fs::write(
        dir.path().join("99-loopback.conf"),
        r#"{"cniVersion":"1.0.0","type":"loopback"}"#,
    )
    .unwrap();

    let found = flannel_conflist(dir.path(), None).unwrap();
    assert_eq!(found, flannel_path);
    assert!(add_to_conflist(&found, &entry(true)).unwrap());
    assert!(
        !add_to_conflist(&found, &entry(true)).unwrap(),
        "second run rewrites nothing"
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&flannel_path).unwrap()).unwrap();
    assert_eq!(
        written,
        with_plugin(&flannel(), &entry(true)).unwrap().unwrap()
    );
    assert_eq!(std::fs::read_to_string(&other_path).unwrap(), other);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    assert_eq!(
        remove_from_conflists(dir.path()).unwrap(),
        vec![flannel_path.clone()]
    );
    assert!(remove_from_conflists(dir.path()).unwrap().is_empty());
    let restored: Value =
        serde_json::from_str(&std::fs::read_to_string(&flannel_path).unwrap()).unwrap();
    assert_eq!(restored, flannel());
    assert_eq!(std::fs::read_to_string(&other_path).unwrap(), other);
}

#[test]
fn a_flannel_conf_file_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-flannel.conf"),
        r#"{"name":"cbr0","cniVersion":"0.3.1","type":"flannel","delegate":{"isDefaultGateway":true}}"#,
    )
    .unwrap();
    let error = flannel_conflist(dir.path(), None).unwrap_err().to_string();
    assert!(error.contains("found: 10-flannel.conf"), "{error}");
    assert!(
        error.contains("A single-plugin 10-flannel.conf cannot chain netfence-cni"),
        "{error}"
    );

    // Two Flannel conflists: ambiguous.
    std::fs::write(dir.path().join("10-a.conflist"), flannel().to_string()).unwrap();
    std::fs::write(dir.path().join("11-b.conflist"), flannel().to_string()).unwrap();
    let error = flannel_conflist(dir.path(), None).unwrap_err().to_string();
    assert!(
        error.contains("several Flannel conflists")
            && error.contains("10-a.conflist, 11-b.conflist"),
        "{error}"
    );
}

#[test]
fn binary_copy_is_idempotent_and_removable() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src-plugin");
    std::fs::write(&source, b"\x7fELF plugin").unwrap();
    let bin = dir.path().join("opt/cni/bin");
    assert!(install_binary(&source, &bin).unwrap());
    assert!(!install_binary(&source, &bin).unwrap());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(bin.join(PLUGIN_TYPE))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
    assert!(remove_binary(&bin).unwrap());
    assert!(!remove_binary(&bin).unwrap());
}
