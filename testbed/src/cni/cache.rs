//! The ADD result cache as libcni keeps it (containerd and CRI-O): one file per
//! attachment, `<cacheDir>/results/<network>-<containerID>-<ifName>`, JSON of kind
//! `cniCacheV1` with the attachment's identity, its arguments, the conflist (base64,
//! as Go encodes bytes) and the last plugin's result. netfence reads these files
//! (`netfence run --cni-cache-dir`) as a real node's runtime writes them.

use serde_json::{Map, Value, json};

use super::{Attachment, ConfList};

/// libcni's `kind` of a cache entry.
pub const KIND: &str = "cniCacheV1";

/// The cache entry of `att`'s ADD through `list` with `result`.
pub fn entry(list: &ConfList, att: &Attachment, result: &Value) -> anyhow::Result<Value> {
    let mut entry = Map::new();
    entry.insert("kind".into(), KIND.into());
    entry.insert("containerId".into(), att.container_id.clone().into());
    entry.insert(
        "config".into(),
        base64(&serde_json::to_vec(&list.json)?).into(),
    );
    entry.insert("ifName".into(), att.ifname.clone().into());
    entry.insert("networkName".into(), list.name()?.into());
    entry.insert("netns".into(), format!("/run/netns/{}", att.netns).into());
    if !att.args.is_empty() {
        let args: Vec<Value> = att.args.iter().map(|(k, v)| json!([k, v])).collect();
        entry.insert("cniArgs".into(), args.into());
    }
    if !att.runtime_config.is_empty() {
        entry.insert(
            "capabilityArgs".into(),
            Value::Object(att.runtime_config.clone()),
        );
    }
    entry.insert("result".into(), result.clone());
    Ok(Value::Object(entry))
}

/// The result an entry holds, checking its kind.
pub fn result_of(entry: Value) -> anyhow::Result<Value> {
    let kind = entry.get("kind").and_then(Value::as_str);
    if kind != Some(KIND) {
        anyhow::bail!("kind {kind:?}, not {KIND:?}");
    }
    match entry {
        Value::Object(mut map) => map
            .remove("result")
            .ok_or_else(|| anyhow::anyhow!("no `result`")),
        _ => anyhow::bail!("not an object"),
    }
}

/// Standard base64 with padding (Go's encoding of `[]byte` in JSON).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_encoding() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            (
                "{\"cniVersion\":\"1.0.0\"}",
                "eyJjbmlWZXJzaW9uIjoiMS4wLjAifQ==",
            ),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn an_entry_is_libcnis_shape_and_gives_its_result_back() {
        let list = ConfList::from_json(json!({
            "cniVersion": "1.0.0", "name": "cbr0", "plugins": [{"type": "bridge"}]
        }))
        .unwrap();
        let att = Attachment::pod("c1", "ns1", "x", "p", &[]);
        let result =
            json!({"cniVersion": "1.0.0", "ips": [{"address": "198.18.0.5/24", "interface": 2}]});
        let entry = entry(&list, &att, &result).unwrap();
        assert_eq!(entry["kind"], "cniCacheV1");
        assert_eq!(entry["containerId"], "c1");
        assert_eq!(entry["ifName"], "eth0");
        assert_eq!(entry["networkName"], "cbr0");
        assert_eq!(entry["netns"], "/run/netns/ns1");
        assert_eq!(entry["cniArgs"][1], json!(["K8S_POD_NAMESPACE", "x"]));
        assert_eq!(
            entry["config"],
            base64(&serde_json::to_vec(&list.json).unwrap())
        );
        assert_eq!(result_of(entry).unwrap(), result);
        let error = result_of(json!({"kind": "other", "result": {}})).unwrap_err();
        assert!(error.to_string().contains("not \"cniCacheV1\""), "{error}");
    }
}
