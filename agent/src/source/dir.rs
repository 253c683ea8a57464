//! A watched directory of manifests, read incrementally: each file is parsed again
//! only when its size, modification or change time or inode differ from the last
//! read (a file with problems is read every time, so its problems are reported at
//! every read, as the API source reports an object's), and only the keys of the
//! files that changed are resolved again (which file's version of an object is
//! enforced, and whether it is a duplicate). A reload's work follows the files that
//! changed, not the directory. The last-good rules of the module above hold per
//! object.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Batch, Change, Kind, Load, Object, ObjectKey, SourceError};
use super::{manifest_entries, parse_str, state_of};

/// What identifies one version of a file's contents without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    inode: (u64, u64),
}

impl Stamp {
    /// From a file's metadata (links followed: a ConfigMap volume's files are links
    /// into `..data/`).
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
            inode: (meta.dev(), meta.ino()),
        }
    }
}

/// One file as last read.
#[derive(Debug, Default)]
struct File {
    /// `None`: read again next time (it had problems, or could not be read).
    stamp: Option<Stamp>,
    /// Its objects (after falling back to last good versions), the first of each key.
    /// Shared with `good` where enforced: one copy of each object.
    objects: BTreeMap<ObjectKey, Arc<Object>>,
}

/// A watched directory of manifests and the last good version of each object in it.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    /// Per file name, as last read.
    files: BTreeMap<String, File>,
    /// The files holding each key (the first by name is enforced).
    holders: BTreeMap<ObjectKey, BTreeSet<String>>,
    /// The keys more than one file holds.
    duplicated: BTreeSet<ObjectKey>,
    /// What the last read enforced, by key.
    good: BTreeMap<ObjectKey, Arc<Object>>,
    /// Files the last read parsed.
    parsed: usize,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestDir {
            dir: dir.into(),
            files: BTreeMap::new(),
            holders: BTreeMap::new(),
            duplicated: BTreeSet::new(),
            good: BTreeMap::new(),
            parsed: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many files the last read parsed (the others were unchanged).
    pub fn parsed(&self) -> usize {
        self.parsed
    }

    /// Re-reads the directory. Returns the state to enforce and the problems found.
    pub fn load(&mut self) -> Load {
        let batch = self.reload();
        Load {
            state: state_of(self.good.iter().map(|(k, v)| (k, &**v))),
            errors: batch.errors,
            warnings: batch.warnings,
        }
    }

    /// Re-reads the directory. Returns the objects that changed since the last read
    /// (a put for each new or changed one, a delete for each one gone) and the
    /// problems found.
    pub fn reload(&mut self) -> Batch {
        let mut batch = Batch::default();
        self.parsed = 0;
        let entries = match manifest_entries(&self.dir) {
            Ok(entries) => entries,
            Err(source) => {
                batch.errors.push(SourceError::Directory {
                    dir: self.dir.display().to_string(),
                    source,
                });
                return batch;
            }
        };
        // Files gone, then files new or changed: the keys to resolve again.
        let mut affected: BTreeSet<ObjectKey> = BTreeSet::new();
        let listed: BTreeSet<&String> = entries.iter().map(|(name, _)| name).collect();
        let gone: Vec<String> = (self.files.keys())
            .filter(|name| !listed.contains(name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(file) = self.files.remove(&name) {
                self.forget(&name, file.objects.keys(), &mut affected);
            }
        }
        for (name, meta) in entries {
            let path = self.dir.join(&name);
            let stamp = Stamp::of(&meta);
            if self
                .files
                .get(&name)
                .is_some_and(|f| f.stamp == Some(stamp))
            {
                continue;
            }
            self.parsed += 1;
            let Some(file) = self.read_file(&path, stamp, &mut batch) else {
                continue; // unreadable or not YAML: its previous objects stay
            };
            let old = self.files.insert(name.clone(), file).unwrap_or_default();
            self.forget(&name, old.objects.keys(), &mut affected);
            let new_keys: Vec<ObjectKey> = (self.files.get(&name))
                .map(|f| f.objects.keys().cloned().collect())
                .unwrap_or_default();
            for key in new_keys {
                self.holders
                    .entry(key.clone())
                    .or_default()
                    .insert(name.clone());
                affected.insert(key);
            }
        }
        for key in affected {
            if self.holders.get(&key).is_some_and(|names| names.len() > 1) {
                self.duplicated.insert(key.clone());
            } else {
                self.duplicated.remove(&key);
            }
            let winner = (self.holders.get(&key))
                .and_then(|names| names.first())
                .and_then(|name| self.files.get(name))
                .and_then(|file| file.objects.get(&key));
            let previous = self.good.get(&key);
            match winner {
                Some(object) if previous != Some(object) => {
                    batch.changes.push(Change::Put((**object).clone()));
                    self.good.insert(key, object.clone());
                }
                Some(_) => {}
                None => {
                    if self.good.remove(&key).is_some() {
                        batch.changes.push(Change::Delete(key));
                    }
                }
            }
        }
        self.report_duplicates(&mut batch.errors);
        batch
    }

    /// Every kind relisted as the last read left it: what an engine starting anew
    /// takes.
    pub fn snapshot(&self) -> Vec<Change> {
        Kind::ALL
            .into_iter()
            .map(|kind| {
                let objects = (self.good.iter())
                    .filter(|(key, _)| key.kind == kind)
                    .map(|(_, object)| (**object).clone())
                    .collect();
                Change::Relist(kind, objects)
            })
            .collect()
    }

    /// Reads and parses one file; `None` when it cannot be read or is not YAML/JSON
    /// (reported; the caller keeps what the file gave last time).
    fn read_file(&self, path: &Path, stamp: Stamp, batch: &mut Batch) -> Option<File> {
        let display = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(source) => {
                batch.errors.push(SourceError::Read {
                    file: display,
                    source,
                });
                return None;
            }
        };
        let mut parsed = match parse_str(&display, &text) {
            Ok(parsed) => parsed,
            Err(syntax) => {
                batch.errors.push(syntax);
                return None;
            }
        };
        let mut clean = parsed.errors.is_empty() && parsed.warnings.is_empty();
        batch.errors.append(&mut parsed.errors);
        batch.warnings.append(&mut parsed.warnings);
        let mut objects = BTreeMap::new();
        for entry in parsed.entries {
            // An invalid object keeps its last good version.
            let Some(object) =
                (entry.object.map(Arc::new)).or_else(|| self.good.get(&entry.key).cloned())
            else {
                continue;
            };
            match objects.entry(object.key()) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(object);
                }
                std::collections::btree_map::Entry::Occupied(first) => {
                    // A second one in the same file: the first is kept.
                    clean = false;
                    batch.errors.push(SourceError::Duplicate {
                        file: display.clone(),
                        object: first.key().to_string(),
                        first: display.clone(),
                    })
                }
            }
        }
        Some(File {
            stamp: clean.then_some(stamp),
            objects,
        })
    }

    /// Drops file `name` from the holders of `keys`, noting them in `affected`.
    fn forget<'a>(
        &mut self,
        name: &str,
        keys: impl Iterator<Item = &'a ObjectKey>,
        affected: &mut BTreeSet<ObjectKey>,
    ) {
        for key in keys {
            if let Some(names) = self.holders.get_mut(key) {
                names.remove(name);
                if names.is_empty() {
                    self.holders.remove(key);
                }
            }
            affected.insert(key.clone());
        }
    }

    /// A duplicate error for every file holding a key another file before it holds
    /// (reported at every read while it lasts).
    fn report_duplicates(&self, errors: &mut Vec<SourceError>) {
        for key in &self.duplicated {
            let Some(names) = self.holders.get(key) else {
                continue;
            };
            let mut names = names.iter();
            let Some(first) = names.next() else { continue };
            for name in names {
                errors.push(SourceError::Duplicate {
                    file: self.dir.join(name).display().to_string(),
                    object: key.to_string(),
                    first: self.dir.join(first).display().to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
#[path = "dir_tests.rs"]
mod tests;
