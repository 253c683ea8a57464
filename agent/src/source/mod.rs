//! Where cluster objects come from: a directory of manifests or the Kubernetes API
//! (`kube`), each reading Namespaces, Pods, NetworkPolicies, Services and EndpointSlices. This module owns the last-good bookkeeping: a `ManifestDir` keeps, per object,
//! the last version that validated, so a typo in a manifest never opens or closes
//! traffic by itself.
//!
//! On every `load` (the whole state, for one-shot commands) or `reload` (the objects
//! changed since the last read, for the policy engine of `run`):
//! - a file that cannot be read, or is not YAML/JSON at all, is reported and every
//!   object it produced last time is kept;
//! - an object that fails validation is reported and its previous good version (by
//!   kind, namespace and name) is kept if it had one, else it is skipped;
//! - objects no longer present in a file that parsed are removed;
//! - a second object with the same kind, namespace and name is reported and the first
//!   (by file name, then position) is kept;
//! - a directory that cannot be listed is reported and the whole last state is kept.

mod dir;
pub mod kube;
mod manifest;
mod watch;

use std::collections::BTreeMap;
use std::path::Path;

pub use dir::ManifestDir;
pub use manifest::{Entry, Object, Parsed, parse_str};
pub use netfence_policy::change::Change;
pub use netfence_policy::error::{Kind, ObjectKey, SourceError};
pub use netfence_policy::validate::NAMESPACE_NAME_LABEL;
pub use netfence_policy::validate::services::SERVICE_NAME_LABEL;
pub use netfence_policy::validate::{self, names, services as service};
pub use watch::{Watcher, watch};

use crate::model::State;

/// What a running source hands the policy engine: the changes since the last batch,
/// and the problems found meanwhile.
#[derive(Debug, Default)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// Problems found; each object named in one is skipped or held at its last good
    /// version.
    pub errors: Vec<SourceError>,
    /// Values accepted with an adjustment.
    pub warnings: Vec<SourceError>,
}

/// The result of one `load`.
#[derive(Debug, Default)]
pub struct Load {
    /// The state to enforce.
    pub state: State,
    /// Problems found; each object named in one is skipped or held at its last good
    /// version.
    pub errors: Vec<SourceError>,
    /// Values accepted with an adjustment (a CIDR with host bits set is truncated,
    /// a wrong `kubernetes.io/metadata.name` label is replaced).
    pub warnings: Vec<SourceError>,
}

/// The file names to read, sorted: `*.yaml`, `*.yml` and `*.json` directly in `dir`
/// that are regular files (or links to them), skipping hidden files and editor
/// leftovers (`.#x`, `#x#`, `x~`, `.x.swp`).
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<String>> {
    Ok(manifest_entries(dir)?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// [`manifest_files`] with each file's metadata (the one `stat` that chose it).
fn manifest_entries(dir: &Path) -> std::io::Result<Vec<(String, std::fs::Metadata)>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !is_manifest_name(&name) {
            continue;
        }
        // Follows links: a ConfigMap volume's files are links into `..data/`.
        if let Ok(meta) = std::fs::metadata(entry.path())
            && meta.is_file()
        {
            names.push((name, meta));
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(names)
}

fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.')
        && !name.starts_with('#')
        && !name.ends_with('~')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// Builds the state from objects in key order, which gives pods, policies, services
/// and endpoint slices sorted by (namespace, name).
pub fn state_of<'a>(objects: impl IntoIterator<Item = &'a Object>) -> State {
    let mut state = State::default();
    for object in objects {
        match object {
            Object::Namespace(ns) => {
                state.namespaces.insert(ns.name.clone(), ns.clone());
            }
            Object::Pod(pod) => state.pods.push(pod.clone()),
            Object::Policy(policy) => state.policies.push(policy.clone()),
            Object::Service(svc) => state.services.push(svc.clone()),
            Object::EndpointSlice(slice) => state.endpoint_slices.push(slice.clone()),
        }
    }
    state
}

/// Parses, validates and collects a single text into a state, with no last-good
/// memory: what `compile`-style one-shot users and tests need.
pub fn state_from_str(file_name: &str, text: &str) -> Load {
    match parse_str(file_name, text) {
        Err(syntax) => Load {
            state: State::default(),
            errors: vec![syntax],
            warnings: Vec::new(),
        },
        Ok(parsed) => {
            let mut objects = BTreeMap::new();
            let mut errors = parsed.errors;
            for object in parsed.entries.into_iter().filter_map(|e| e.object) {
                match objects.entry(object.key()) {
                    std::collections::btree_map::Entry::Occupied(seen) => {
                        errors.push(SourceError::Duplicate {
                            file: file_name.to_owned(),
                            object: seen.key().to_string(),
                            first: file_name.to_owned(),
                        })
                    }
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(object);
                    }
                }
            }
            Load {
                state: state_of(objects.values()),
                errors,
                warnings: parsed.warnings,
            }
        }
    }
}
