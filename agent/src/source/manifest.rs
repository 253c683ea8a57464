//! Parsing one manifest file: YAML (multi-document, merge keys applied) or JSON text
//! into documents, `List` expansion, dispatch on apiVersion/kind, strict decoding into
//! k8s-openapi types (a field not in the kind's schema is an error, as with `kubectl
//! apply --validate=strict`) and validation into `model` objects. Knows nothing of
//! other files or earlier loads.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use super::service;
use super::validate::{self, Checker};
use super::{Kind, ObjectKey, SourceError};

pub use netfence_policy::change::Object;

/// One object found in a file: its key, and the object when it validated.
#[derive(Debug)]
pub struct Entry {
    pub key: ObjectKey,
    pub object: Option<Object>,
}

/// What a file that parsed produced.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Objects with a name, valid or not, in file order.
    pub entries: Vec<Entry>,
    pub errors: Vec<SourceError>,
    /// Accepted but adjusted (e.g. a CIDR with host bits set).
    pub warnings: Vec<SourceError>,
}

impl Parsed {
    /// The valid objects.
    pub fn objects(&self) -> Vec<Object> {
        self.entries
            .iter()
            .filter_map(|e| e.object.clone())
            .collect()
    }
}

/// Parses and validates one file's text. `file_name` decides the syntax (`.json`
/// is JSON, anything else YAML) and names the file in errors. A syntax error anywhere
/// in the file is returned as `Err`: the file as a whole is not usable.
pub fn parse_str(file_name: &str, text: &str) -> Result<Parsed, SourceError> {
    let documents = if file_name.ends_with(".json") {
        json_documents(file_name, text)?
    } else {
        yaml_documents(file_name, text)?
    };
    let mut parsed = Parsed::default();
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let place = format!("document {}", index + 1);
        read_document(&mut parsed, file_name, &place, document, None);
    }
    Ok(parsed)
}

fn yaml_documents(file: &str, text: &str) -> Result<Vec<Value>, SourceError> {
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let mut value = <Value as serde::Deserialize>::deserialize(document).map_err(|error| {
            let (line, column) = error
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or_default();
            SourceError::Syntax {
                file: file.to_owned(),
                line,
                column,
                message: error.to_string(),
            }
        })?;
        // Merge keys (`<<: *anchor`), as kubectl's YAML reader applies them; left in,
        // `<<` would be an unknown field.
        value.apply_merge().map_err(|error| SourceError::Syntax {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message: format!("document {}: merge key `<<`: {error}", documents.len() + 1),
        })?;
        documents.push(value);
    }
    Ok(documents)
}

fn json_documents(file: &str, text: &str) -> Result<Vec<Value>, SourceError> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| SourceError::Syntax {
            file: file.to_owned(),
            line: error.line(),
            column: error.column(),
            message: format!("invalid JSON: {error}"),
        })
}

/// What a document's apiVersion and kind make of it.
enum Dispatch {
    Object(Kind),
    /// `kind: List` or a typed list; items without apiVersion/kind get `item`'s.
    List(Option<(&'static str, &'static str)>),
    Ignore,
    /// A mistake in `field`; the kind it was meant to be, when that is clear.
    Invalid(Option<Kind>, &'static str, String),
}

const OURS: [(&str, &str, Kind); 5] = [
    ("v1", "Namespace", Kind::Namespace),
    ("v1", "Pod", Kind::Pod),
    ("networking.k8s.io/v1", "NetworkPolicy", Kind::NetworkPolicy),
    ("v1", "Service", Kind::Service),
    ("discovery.k8s.io/v1", "EndpointSlice", Kind::EndpointSlice),
];

/// An API group that is Kubernetes' own (core, `*.k8s.io`, or a group without a dot
/// such as `extensions`): a kind of ours under a wrong version there is a mistake. A
/// kind of ours in a foreign group (e.g. Calico's `projectcalico.org/v3`
/// NetworkPolicy) is another API and is ignored.
fn is_kubernetes_group(api_version: &str) -> bool {
    match api_version.rsplit_once('/') {
        None => true,
        Some((group, _)) => !group.contains('.') || group == "k8s.io" || group.ends_with(".k8s.io"),
    }
}

fn classify(api_version: &str, kind: &str) -> Dispatch {
    for (version, ours, k) in OURS {
        if kind == ours {
            if api_version == version {
                return Dispatch::Object(k);
            }
            if is_kubernetes_group(api_version) {
                return Dispatch::Invalid(
                    Some(k),
                    "apiVersion",
                    format!("{api_version:?}: {ours} is served as {version:?}"),
                );
            }
            return Dispatch::Ignore;
        }
        if kind == format!("{ours}List") {
            return if api_version == version {
                Dispatch::List(Some((version, ours)))
            } else {
                Dispatch::Invalid(
                    None,
                    "apiVersion",
                    format!("{api_version:?}: {kind} is served as {version:?}"),
                )
            };
        }
    }
    if kind == "List" {
        return if api_version == "v1" {
            Dispatch::List(None)
        } else {
            Dispatch::Invalid(
                None,
                "apiVersion",
                format!("{api_version:?}: List is \"v1\""),
            )
        };
    }
    if let Some((ours, k)) = lookalike(kind) {
        return Dispatch::Invalid(
            Some(k),
            "kind",
            format!("{kind:?} is not a kind; did you mean {ours:?}?"),
        );
    }
    Dispatch::Ignore
}

/// A misspelling of one of our kinds (case, plural, or a small typo). Other kinds
/// (Node, Deployment, Endpoints, ServiceAccount, ...) are not close enough to match.
fn lookalike(kind: &str) -> Option<(&'static str, Kind)> {
    let lower = kind.to_ascii_lowercase();
    let lower = lower.strip_suffix("list").unwrap_or(&lower);
    for (_, ours, k) in OURS {
        let target = ours.to_ascii_lowercase();
        let plural = if target.ends_with('y') {
            format!("{}ies", &target[..target.len() - 1])
        } else {
            format!("{target}s")
        };
        let budget = if target.len() >= 8 { 2 } else { 1 };
        if lower == target || lower == plural || edit_distance(lower, &target) <= budget {
            return Some((ours, k));
        }
    }
    None
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

fn text_at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_str)
}

/// The key of a document, from its raw metadata, when it has a name.
fn raw_key(kind: Kind, document: &Value) -> Option<ObjectKey> {
    let name = text_at(document, &["metadata", "name"]).filter(|n| !n.is_empty())?;
    let namespace = if kind.is_namespaced() {
        text_at(document, &["metadata", "namespace"])
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned()
    } else {
        String::new()
    };
    Some(ObjectKey {
        kind,
        namespace,
        name: name.to_owned(),
    })
}

fn invalid(file: &str, object: &str, field: &str, message: String) -> SourceError {
    SourceError::Invalid {
        file: file.to_owned(),
        object: object.to_owned(),
        field: field.to_owned(),
        message,
    }
}

/// Reads one document (or list item at `place`). `defaults` fills in a typed list's
/// item apiVersion/kind when an item lacks them.
fn read_document(
    parsed: &mut Parsed,
    file: &str,
    place: &str,
    mut document: Value,
    defaults: Option<(&'static str, &'static str)>,
) {
    let Value::Mapping(map) = &mut document else {
        parsed.errors.push(invalid(
            file,
            place,
            "(document)",
            "expected a Kubernetes object (a mapping)".into(),
        ));
        return;
    };
    if let Some((api_version, kind)) = defaults {
        map.entry("apiVersion".into())
            .or_insert_with(|| api_version.into());
        map.entry("kind".into()).or_insert_with(|| kind.into());
    }
    let (Some(api_version), Some(kind)) = (
        text_at(&document, &["apiVersion"]),
        text_at(&document, &["kind"]),
    ) else {
        let field = if text_at(&document, &["kind"]).is_none() {
            "kind"
        } else {
            "apiVersion"
        };
        parsed
            .errors
            .push(invalid(file, place, field, "required".into()));
        return;
    };
    let (api_version, kind) = (api_version.to_owned(), kind.to_owned());
    match classify(&api_version, &kind) {
        Dispatch::Ignore => {
            tracing::debug!(file, %place, %api_version, %kind, "ignored: not a kind netfence reads")
        }
        Dispatch::Invalid(meant, field, message) => {
            // Named as its key would be (`Kind ns/name`), under the kind it was given.
            let object = match meant.and_then(|k| raw_key(k, &document)) {
                Some(key) if key.kind.is_namespaced() => {
                    format!("{kind} {}/{}", key.namespace, key.name)
                }
                Some(key) => format!("{kind} {}", key.name),
                None => match text_at(&document, &["metadata", "name"]) {
                    Some(name) => format!("{kind} {name}"),
                    None => format!("{kind} ({place})"),
                },
            };
            parsed.errors.push(invalid(file, &object, field, message));
        }
        Dispatch::List(item_defaults) => read_list(parsed, file, place, document, item_defaults),
        Dispatch::Object(kind) => read_object(parsed, file, place, kind, document),
    }
}

fn read_list(
    parsed: &mut Parsed,
    file: &str,
    place: &str,
    mut document: Value,
    defaults: Option<(&'static str, &'static str)>,
) {
    // A list has these fields only (strict, like an object's): `item:` for `items:`
    // would otherwise drop every object silently. Its items are still read.
    if let Value::Mapping(map) = &document {
        for key in map.keys() {
            let known = key
                .as_str()
                .is_some_and(|k| ["apiVersion", "kind", "metadata", "items"].contains(&k));
            if !known {
                let field = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_owned);
                parsed.errors.push(invalid(
                    file,
                    &format!("List ({place})"),
                    &field,
                    UNKNOWN_FIELD.into(),
                ));
            }
        }
    }
    let items = match document.get_mut("items").map(std::mem::take) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            parsed.errors.push(invalid(
                file,
                &format!("List ({place})"),
                "items",
                "expected a list of objects".into(),
            ));
            return;
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let is_list = text_at(&item, &["kind"]).is_some_and(|k| k == "List" || k.ends_with("List"));
        let item_place = format!("{place}, items[{i}]");
        if is_list {
            parsed.errors.push(invalid(
                file,
                &item_place,
                "kind",
                "a List inside a List is not supported".into(),
            ));
        } else {
            read_document(parsed, file, &item_place, item, defaults);
        }
    }
}

fn read_object(parsed: &mut Parsed, file: &str, place: &str, kind: Kind, mut document: Value) {
    let key = raw_key(kind, &document);
    let object = match &key {
        Some(key) => key.to_string(),
        None => format!("{kind} ({place})"),
    };
    // Managed fields are bookkeeping of the API server; nothing here reads them.
    if let Some(Value::Mapping(metadata)) = document.get_mut("metadata") {
        metadata.remove("managedFields");
    }
    let mut cx = Checker::new(file, object);
    let converted = match kind {
        Kind::Namespace => decode::<core::Namespace>(&mut cx, document)
            .and_then(|ns| validate::namespace(&mut cx, &ns).map(Object::Namespace)),
        Kind::Pod => decode::<core::Pod>(&mut cx, document)
            .and_then(|pod| validate::pod(&mut cx, &pod).map(Object::Pod)),
        Kind::NetworkPolicy => decode::<net::NetworkPolicy>(&mut cx, document)
            .and_then(|np| validate::policy(&mut cx, &np).map(Object::Policy)),
        Kind::Service => decode::<core::Service>(&mut cx, document)
            .and_then(|svc| service::service(&mut cx, &svc).map(Object::Service)),
        Kind::EndpointSlice => match decode::<discovery::EndpointSlice>(&mut cx, document) {
            Some(slice) if service::is_fqdn(&slice) => {
                // Names are no packet's address: like a kind we do not read, but its
                // unknown fields are still reported.
                tracing::debug!(file, %place, "ignored: an FQDN EndpointSlice");
                parsed.errors.append(&mut cx.errors);
                return;
            }
            Some(slice) => service::endpoint_slice(&mut cx, &slice).map(Object::EndpointSlice),
            None => None,
        },
    };
    parsed.errors.append(&mut cx.errors);
    parsed.warnings.append(&mut cx.warnings);
    // The validated object's key is the raw one: names and namespaces are taken
    // verbatim (with the same `default` namespace). Without a name the object was
    // rejected (metadata.name is required) and has no last good version to keep.
    if let Some(key) = key {
        parsed.entries.push(Entry {
            key,
            object: converted,
        });
    }
}

/// Decodes through k8s-openapi, naming the field of a type error, and rejects unknown
/// fields as `kubectl apply --validate=strict` does: every key the typed decode skips
/// (k8s-openapi ignores keys it does not know) is not in the kind's OpenAPI schema,
/// at any depth, whatever its value (`form: null` too). The value is still returned
/// so that validation reports its other problems; the errors reject the object.
fn decode<T: DeserializeOwned>(cx: &mut Checker<'_>, document: Value) -> Option<T> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
    let decoded = serde_path_to_error::deserialize::<_, T>(serde_ignored::Deserializer::new(
        document,
        &mut record,
    ));
    for field in unknown {
        cx.error(&field, UNKNOWN_FIELD);
    }
    match decoded {
        Ok(value) => Some(value),
        Err(error) => {
            let path = error.path().to_string();
            let field = if path == "." {
                "(object)".to_owned()
            } else {
                path
            };
            cx.error(&field, error.into_inner().to_string());
            None
        }
    }
}

/// The message of an unknown field (the field path names it).
pub const UNKNOWN_FIELD: &str =
    "unknown field: not in the schema of this kind (kubectl apply --validate=strict rejects it)";

/// A field path as the API server writes it: `spec.ingress[0].form`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}
