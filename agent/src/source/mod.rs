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

pub mod kube;
mod manifest;
mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// A watched directory of manifests and the last good version of each object in it.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    /// Per file name: the objects it contributed at the last load (after falling back
    /// to last good versions), before duplicates across files were dropped.
    files: BTreeMap<String, Vec<Object>>,
    /// What the last load enforced, by key.
    good: BTreeMap<ObjectKey, Object>,
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

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestDir {
            dir: dir.into(),
            files: BTreeMap::new(),
            good: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the whole directory. Returns the state to enforce and the problems found.
    pub fn load(&mut self) -> Load {
        let (errors, warnings, _) = self.read();
        Load {
            state: state_of(&self.good),
            errors,
            warnings,
        }
    }

    /// Re-reads the whole directory. Returns the objects that changed since the last
    /// read (a put for each new or changed one, a delete for each one gone) and the
    /// problems found.
    pub fn reload(&mut self) -> Batch {
        let (errors, warnings, previous) = self.read();
        let mut changes: Vec<Change> = (previous.keys())
            .filter(|key| !self.good.contains_key(*key))
            .map(|key| Change::Delete(key.clone()))
            .collect();
        for (key, object) in &self.good {
            if previous.get(key) != Some(object) {
                changes.push(Change::Put(object.clone()));
            }
        }
        Batch {
            changes,
            errors,
            warnings,
        }
    }

    /// Every kind relisted as the last read left it: what an engine starting anew
    /// takes.
    pub fn snapshot(&self) -> Vec<Change> {
        Kind::ALL
            .into_iter()
            .map(|kind| {
                let objects = (self.good.iter())
                    .filter(|(key, _)| key.kind == kind)
                    .map(|(_, object)| object.clone())
                    .collect();
                Change::Relist(kind, objects)
            })
            .collect()
    }

    /// Reads the directory into `good`; returns the errors, the warnings, and what
    /// `good` held before.
    fn read(
        &mut self,
    ) -> (
        Vec<SourceError>,
        Vec<SourceError>,
        BTreeMap<ObjectKey, Object>,
    ) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let names = match manifest_files(&self.dir) {
            Ok(names) => names,
            Err(source) => {
                errors.push(SourceError::Directory {
                    dir: self.dir.display().to_string(),
                    source,
                });
                return (errors, warnings, self.good.clone());
            }
        };
        let mut files = BTreeMap::new();
        for name in names {
            let path = self.dir.join(&name);
            let display = path.display().to_string();
            let previous = || self.files.get(&name).cloned().unwrap_or_default();
            let objects = match std::fs::read_to_string(&path) {
                Err(source) => {
                    errors.push(SourceError::Read {
                        file: display,
                        source,
                    });
                    previous()
                }
                Ok(text) => match parse_str(&display, &text) {
                    Err(syntax) => {
                        errors.push(syntax);
                        previous()
                    }
                    Ok(mut parsed) => {
                        errors.append(&mut parsed.errors);
                        warnings.append(&mut parsed.warnings);
                        parsed
                            .entries
                            .into_iter()
                            .filter_map(|entry| {
                                entry.object.or_else(|| self.good.get(&entry.key).cloned())
                            })
                            .collect()
                    }
                },
            };
            files.insert(name, objects);
        }
        let mut good = BTreeMap::new();
        let mut origin: BTreeMap<ObjectKey, String> = BTreeMap::new();
        for (name, objects) in &files {
            let file = self.dir.join(name).display().to_string();
            for object in objects {
                let key = object.key();
                if let Some(first) = origin.get(&key) {
                    errors.push(SourceError::Duplicate {
                        file: file.clone(),
                        object: key.to_string(),
                        first: first.clone(),
                    });
                    continue;
                }
                origin.insert(key.clone(), file.clone());
                good.insert(key, object.clone());
            }
        }
        self.files = files;
        let previous = std::mem::replace(&mut self.good, good);
        (errors, warnings, previous)
    }
}

/// The file names to read, sorted: `*.yaml`, `*.yml` and `*.json` directly in `dir`
/// that are regular files (or links to them), skipping hidden files and editor
/// leftovers (`.#x`, `#x#`, `x~`, `.x.swp`).
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<String>> {
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
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.push(name);
        }
    }
    names.sort();
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

/// Builds the state from objects by key; the key order gives pods, policies, services
/// and endpoint slices sorted by (namespace, name).
fn state_of(objects: &BTreeMap<ObjectKey, Object>) -> State {
    let mut state = State::default();
    for object in objects.values() {
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
                state: state_of(&objects),
                errors,
                warnings: parsed.warnings,
            }
        }
    }
}
