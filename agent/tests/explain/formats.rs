//! `-o text|wide|json|yaml` on explain and compile: JSON and YAML name directions
//! and protocols (`direction: ingress`, `protocol: TCP`, never `0` / `6`), text
//! names policies by namespace/name (no endpoint policy ids) in aligned columns,
//! wide adds the ids.

use super::files::{CLUSTER, netfence};

#[test]
fn compile_json_and_yaml_name_directions_and_protocols() {
    let run = netfence(&["compile", "-f", "-", "-o", "json"], CLUSTER);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let entries = value["policy"].as_array().unwrap();
    assert!(!entries.is_empty());
    for entry in entries {
        assert_eq!(entry["direction"], "ingress", "{entry}");
        assert_eq!(entry["protocol"], "TCP", "{entry}");
        assert_eq!(
            (entry["port"].as_u64(), entry["port_last"].as_u64()),
            (Some(80), Some(80))
        );
    }
    let rules: Vec<&serde_json::Value> = value["rules"].as_object().unwrap().values().collect();
    assert_eq!(
        rules,
        [
            &serde_json::json!({"namespace": "x", "policy": "a-from-b", "direction": "ingress", "index": 0})
        ]
    );
    let yaml = netfence(&["compile", "-f", "-", "-o", "yaml"], CLUSTER);
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    let from_yaml: serde_json::Value = serde_yaml_ng::from_str(&yaml.stdout).unwrap();
    assert_eq!(from_yaml, value, "YAML says what JSON says");
    assert!(
        yaml.stdout
            .contains("  direction: ingress\n  protocol: TCP\n"),
        "{}",
        yaml.stdout
    );
}

#[test]
fn compile_text_names_policies_and_wide_adds_ids() {
    let run = netfence(&["compile", "-f", "-"], CLUSTER);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "3 endpoints, 3 identity prefixes, 3 identities, 1 endpoint policies, 1 policy entries, 1 rules
ADDRESS     POD  ISOLATED  POLICIES
198.18.0.1  x/a  ingress   ingress: x/a-from-b
198.18.0.2  x/b  no        -
198.18.0.3  x/c  no        -
"
    );
    let json = netfence(&["compile", "-f", "-", "-o", "json"], CLUSTER);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let a = &value["endpoints"]["198.18.0.1"];
    let wide = netfence(&["compile", "-f", "-", "-o", "wide"], CLUSTER);
    assert_eq!(wide.code, 0);
    let line = wide.stdout.lines().nth(2).unwrap();
    assert_eq!(
        line,
        format!(
            "198.18.0.1  x/a  ingress   ingress: x/a-from-b  {}  {}",
            a["identity"], a["policy"]
        )
    );
}

#[test]
fn explain_yaml_wide_and_matrix_yaml() {
    let args = [
        "explain", "-f", "-", "--from", "x/b", "--to", "x/a", "--port", "80",
    ];
    let json = netfence(&[&args[..], &["-o", "json"]].concat(), CLUSTER);
    let yaml = netfence(&[&args[..], &["-o", "yaml"]].concat(), CLUSTER);
    assert_eq!((json.code, yaml.code), (0, 0));
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let from_yaml: serde_json::Value = serde_yaml_ng::from_str(&yaml.stdout).unwrap();
    assert_eq!(from_yaml, json);
    assert!(
        yaml.stdout
            .starts_with("from: x/b\nto: x/a\nprotocol: TCP\nport: 80\nmode: enforce\n"),
        "{}",
        yaml.stdout
    );
    let wide = netfence(&[&args[..], &["-o", "wide"]].concat(), CLUSTER);
    assert_eq!(wide.code, 0);
    let c = &json["connections"][0];
    assert_eq!(
        wide.stdout.lines().nth(1).unwrap(),
        format!(
            "  identities: source {}, destination {}",
            c["src_identity"], c["dst_identity"]
        )
    );
    let matrix = netfence(
        &[
            "explain", "-f", "-", "--matrix", "--port", "80", "-o", "yaml",
        ],
        CLUSTER,
    );
    assert_eq!(matrix.code, 0);
    assert_eq!(
        matrix.stdout,
        "port: 80\nprotocol: TCP\npods:\n- x/a\n- x/b\n- x/c\nallowed:\n- - true\n  - true\n  - true\n- - true\n  - true\n  - true\n- - false\n  - true\n  - true\n"
    );
}
