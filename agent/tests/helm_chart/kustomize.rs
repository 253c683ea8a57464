//! `kubectl kustomize DIR`, emulated for deploy/ and deploy/seccomp/ (kubectl is not
//! installed by `cargo xtask setup`): the listed resources (files, or directories
//! with their own kustomization), then `namespace`, `labels`, `images` and JSON 6902
//! `patches` applied as kustomize applies them. Any other kustomization field, or a
//! case where kustomize's finer rules would matter (a Namespace or a ServiceAccount
//! subject named differently from `namespace`, `labels` with selectors or
//! templates, a patch op other than add/replace/remove), fails the test instead of
//! being guessed.

use std::path::Path;

use serde_json::Value as Json;

use super::render::read_yaml;

/// Kinds without a namespace, among those a kustomization here may list.
const CLUSTER_SCOPED: [&str; 3] = ["Namespace", "ClusterRole", "ClusterRoleBinding"];
const NAMESPACED: [&str; 4] = ["ServiceAccount", "Role", "RoleBinding", "DaemonSet"];

/// The objects `kubectl kustomize dir` prints.
pub fn build(dir: &Path) -> Vec<Json> {
    let kustomization = read_yaml(&dir.join("kustomization.yaml"));
    let fields = kustomization.as_object().unwrap();
    for key in fields.keys() {
        assert!(
            [
                "apiVersion",
                "kind",
                "namespace",
                "resources",
                "images",
                "labels",
                "patches"
            ]
            .contains(&key.as_str()),
            "{}: `{key}` is not emulated by this test",
            dir.display()
        );
    }
    let mut objects = Vec::new();
    for resource in fields["resources"].as_array().unwrap() {
        let path = dir.join(resource.as_str().unwrap());
        if path.is_dir() {
            objects.extend(build(&path));
        } else {
            objects.extend(documents(&path));
        }
    }
    // kustomize's order: patches, then namespace, labels, images.
    for patch in fields
        .get("patches")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        apply_patch(&mut objects, patch);
    }
    if let Some(namespace) = fields.get("namespace").and_then(Json::as_str) {
        for object in &mut objects {
            set_namespace(object, namespace);
        }
    }
    for label in fields
        .get("labels")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        for key in label.as_object().unwrap().keys() {
            assert_eq!(key, "pairs", "labels.{key} is not emulated");
        }
        for object in &mut objects {
            let labels = object["metadata"]
                .as_object_mut()
                .unwrap()
                .entry("labels")
                .or_insert_with(|| Json::Object(serde_json::Map::new()));
            for (key, value) in label["pairs"].as_object().unwrap() {
                labels[key] = value.clone();
            }
        }
    }
    for image in fields
        .get("images")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        for object in &mut objects {
            set_image(object, image);
        }
    }
    objects
}

fn documents(path: &Path) -> Vec<Json> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(document).unwrap();
            serde_json::to_value(value).unwrap()
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn kind(object: &Json) -> &str {
    object["kind"].as_str().unwrap()
}

fn set_namespace(object: &mut Json, namespace: &str) {
    let kind = kind(object).to_owned();
    // kustomize also renames a Namespace object and sets the namespace of some
    // subjects; here they must already agree, so that neither rule matters.
    if kind == "Namespace" {
        assert_eq!(
            object["metadata"]["name"], namespace,
            "Namespace renamed by kustomize"
        );
    }
    for subject in object["subjects"].as_array().into_iter().flatten() {
        if subject["kind"] == "ServiceAccount" {
            assert_eq!(subject["namespace"], namespace, "{subject}");
        }
    }
    if CLUSTER_SCOPED.contains(&kind.as_str()) {
        return;
    }
    assert!(
        NAMESPACED.contains(&kind.as_str()),
        "{kind}: scope unknown to this test"
    );
    object["metadata"]["namespace"] = Json::from(namespace);
}

/// kustomize's `images`: a container image whose name (before `:tag` or `@digest`)
/// is `name` gets `newName`, `newTag` or `digest`.
fn set_image(object: &mut Json, image: &Json) {
    for key in image.as_object().unwrap().keys() {
        assert!(
            ["name", "newName", "newTag", "digest"].contains(&key.as_str()),
            "images.{key} is not emulated"
        );
    }
    let Some(spec) = object.pointer_mut("/spec/template/spec") else {
        return;
    };
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_array_mut().into_iter().flatten() {
            let current = container["image"].as_str().unwrap().to_owned();
            let (name, tag) = match current.split_once('@') {
                Some((name, digest)) => (name.to_owned(), format!("@{digest}")),
                None => match current.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                    Some((name, tag)) => (name.to_owned(), format!(":{tag}")),
                    None => (current.clone(), String::new()),
                },
            };
            if name != image["name"] {
                continue;
            }
            let name = image["newName"].as_str().unwrap_or(&name).to_owned();
            let tag = match (image["digest"].as_str(), image["newTag"].as_str()) {
                (Some(digest), _) => format!("@{digest}"),
                (None, Some(tag)) => format!(":{tag}"),
                (None, None) => tag,
            };
            container["image"] = Json::from(format!("{name}{tag}"));
        }
    }
}

/// An inline JSON 6902 patch (`- op: ...` list) on the objects its target names.
fn apply_patch(objects: &mut [Json], patch: &Json) {
    let target = patch["target"].as_object().unwrap();
    for key in target.keys() {
        assert!(
            ["kind", "name"].contains(&key.as_str()),
            "target.{key} is not emulated"
        );
    }
    let ops: Json = serde_json::to_value(
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(patch["patch"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let ops = ops
        .as_array()
        .expect("a JSON 6902 patch (a strategic merge patch is not emulated)");
    let mut matched = 0;
    for object in objects.iter_mut() {
        if target.get("kind").is_some_and(|k| *k != object["kind"])
            || target
                .get("name")
                .is_some_and(|n| *n != object["metadata"]["name"])
        {
            continue;
        }
        matched += 1;
        for op in ops {
            let path = op["path"].as_str().unwrap();
            let (parent, last) = path.rsplit_once('/').unwrap();
            let last = last.replace("~1", "/").replace("~0", "~");
            match op["op"].as_str().unwrap() {
                "replace" => {
                    let slot = object
                        .pointer_mut(path)
                        .unwrap_or_else(|| panic!("replace {path}: absent"));
                    *slot = op["value"].clone();
                }
                "add" => match object
                    .pointer_mut(parent)
                    .unwrap_or_else(|| panic!("add {path}: no parent"))
                {
                    Json::Object(map) => {
                        map.insert(last, op["value"].clone());
                    }
                    Json::Array(items) if last == "-" => items.push(op["value"].clone()),
                    Json::Array(items) => items.insert(last.parse().unwrap(), op["value"].clone()),
                    other => panic!("add {path}: into {other}"),
                },
                "remove" => match object
                    .pointer_mut(parent)
                    .unwrap_or_else(|| panic!("remove {path}: no parent"))
                {
                    Json::Object(map) => {
                        map.remove(&last)
                            .unwrap_or_else(|| panic!("remove {path}: absent"));
                    }
                    Json::Array(items) => {
                        items.remove(last.parse().unwrap());
                    }
                    other => panic!("remove {path}: from {other}"),
                },
                other => panic!("op {other} is not emulated"),
            }
        }
    }
    assert_eq!(matched, 1, "the patch's target matches one object: {patch}");
}
