//! A watched directory of manifests, read incrementally: each file is parsed again
//! only when its size, modification or change time or inode differ from the last
//! read (a file with problems is read every time, so its problems are reported at
//! every read, as the API source reports an object's), and only the keys of the
//! files that changed are resolved again (which file's version of an object is
//! enforced, and whether it is a duplicate). A reload's work follows the files that
//! changed, not the directory. The last-good rules of the module above hold per
//! object.
//!
//! The objects themselves are not kept here: the policy engine holds the one copy
//! of each. A read keeps, per key, the files holding it and a fingerprint of the
//! version it handed on (a put for an object parsed again unchanged is not repeated);
//! per file, its keys. An object whose winning file changes to one not parsed in
//! this read (the file that held it first was removed) is read again from that
//! file. About 250 bytes per object, where keeping the objects cost 2.7 KiB per pod
//! at the 150,000-pod bench.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash as _, Hasher as _};
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
    /// The keys it holds: its valid objects, and its invalid ones that have a last
    /// good version (the first of each key in the file).
    keys: Vec<Arc<ObjectKey>>,
}

/// What the reads know of one key.
#[derive(Debug, Default)]
struct Held {
    /// The files holding it, by name (the first is enforced).
    holders: Vec<Arc<str>>,
    /// The version handed on, if any: the file it came from and its fingerprint.
    enforced: Option<(Arc<str>, u128)>,
}

/// A 128-bit fingerprint of `object` (two SipHash passes with different prefixes:
/// an unnoticed change needs a collision of both).
fn fingerprint(object: &Object) -> u128 {
    let pass = |salt: u8| {
        let mut hasher = std::hash::DefaultHasher::new();
        salt.hash(&mut hasher);
        object.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(pass(0)) << 64) | u128::from(pass(1))
}

/// The objects of one file parsed, by key (`None`: invalid).
type Objects = HashMap<Arc<ObjectKey>, Option<Object>>;

/// The objects of the files parsed in one read, by file.
type Fresh = HashMap<Arc<str>, Objects>;

/// A watched directory of manifests and what was handed on from it.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    /// Per file name, as last read.
    files: BTreeMap<Arc<str>, File>,
    /// Per key held by some file, or handed on.
    keys: HashMap<Arc<ObjectKey>, Held>,
    /// The keys more than one file holds.
    duplicated: BTreeSet<Arc<ObjectKey>>,
    /// Files the last read parsed.
    parsed: usize,
    /// Every object handed on, for `load`: kept by a directory made with `new`
    /// (one-shot commands, tests), not by one made with `for_engine` (`run`, whose
    /// policy engine keeps the one copy).
    loaded: Option<BTreeMap<ObjectKey, Object>>,
}

impl ManifestDir {
    /// A directory whose `load` returns the whole state.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestDir {
            loaded: Some(BTreeMap::new()),
            ..ManifestDir::for_engine(dir)
        }
    }

    /// A directory read only for its changes (`reload`), keeping no copy of the
    /// objects: its `load` returns only what changed.
    pub fn for_engine(dir: impl Into<PathBuf>) -> Self {
        ManifestDir {
            dir: dir.into(),
            files: BTreeMap::new(),
            keys: HashMap::new(),
            duplicated: BTreeSet::new(),
            parsed: 0,
            loaded: None,
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
        let state = match &self.loaded {
            Some(loaded) => state_of(loaded.values()),
            None => state_of(batch.changes.iter().filter_map(|change| match change {
                Change::Put(object) => Some(object),
                _ => None,
            })),
        };
        Load {
            state,
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
        let mut affected: BTreeSet<Arc<ObjectKey>> = BTreeSet::new();
        let mut fresh = Fresh::new();
        let listed: BTreeSet<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
        let gone: Vec<Arc<str>> = (self.files.keys())
            .filter(|name| !listed.contains(&***name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(file) = self.files.remove(&name) {
                self.forget(&name, file.keys, &mut affected);
            }
        }
        for (name, meta) in entries {
            let stamp = Stamp::of(&meta);
            if (self.files.get(name.as_str())).is_some_and(|f| f.stamp == Some(stamp)) {
                continue;
            }
            self.parsed += 1;
            let name: Arc<str> = (self.files.get_key_value(name.as_str()))
                .map_or_else(|| name.as_str().into(), |(held, _)| held.clone());
            let Some((file, objects)) = self.read_file(&name, Some(stamp), &mut batch) else {
                continue; // unreadable or not YAML: its previous objects stay
            };
            let new_keys = file.keys.clone();
            let old = self.files.insert(name.clone(), file).unwrap_or_default();
            self.forget(&name, old.keys, &mut affected);
            for key in new_keys {
                let held = self.keys.entry(key.clone()).or_default();
                if let Err(at) = held.holders.binary_search(&name) {
                    held.holders.insert(at, name.clone());
                }
                affected.insert(key);
            }
            fresh.insert(name, objects);
        }
        for key in affected {
            self.resolve(key, &mut fresh, &mut batch);
        }
        self.report_duplicates(&mut batch.errors);
        if let Some(loaded) = &mut self.loaded {
            for change in &batch.changes {
                match change {
                    Change::Put(object) => {
                        loaded.insert(object.key(), object.clone());
                    }
                    Change::Delete(key) => {
                        loaded.remove(key);
                    }
                    Change::Relist(..) => {} // never from a read
                }
            }
        }
        batch
    }

    /// Hands on the version of `key` its first holder has now, if it differs from
    /// the one handed on; a delete when no file holds it any more.
    fn resolve(&mut self, key: Arc<ObjectKey>, fresh: &mut Fresh, batch: &mut Batch) {
        let Some(held) = self.keys.get(&key) else {
            return;
        };
        let Some(winner) = held.holders.first().cloned() else {
            self.duplicated.remove(&key);
            if self.keys.remove(&key).is_some_and(|h| h.enforced.is_some()) {
                batch.changes.push(Change::Delete((*key).clone()));
            }
            return;
        };
        if held.holders.len() > 1 {
            self.duplicated.insert(key.clone());
        } else {
            self.duplicated.remove(&key);
        }
        let from = held.enforced.as_ref().map(|(from, _)| from.clone());
        if !fresh.contains_key(&winner) {
            if from.as_ref() == Some(&winner) {
                return; // its file did not change
            }
            // The file it came from lost it to one not parsed now: read that one.
            let objects = self
                .read_file(&winner, None, &mut Batch::default())
                .map(|(_, objects)| objects)
                .unwrap_or_default();
            fresh.insert(winner.clone(), objects);
        }
        let object = fresh
            .get_mut(&winner)
            .and_then(|objects| objects.remove(&key))
            .flatten();
        let Some(held) = self.keys.get_mut(&key) else {
            return;
        };
        match object {
            Some(object) => {
                let print = fingerprint(&object);
                if held.enforced.as_ref().map(|(_, p)| *p) != Some(print) {
                    batch.changes.push(Change::Put(object));
                }
                held.enforced = Some((winner, print));
            }
            // Invalid there: its last good version stays (a file holds an invalid
            // object only while there is one).
            None => {
                if let Some((from, _)) = held.enforced.as_mut() {
                    *from = winner;
                }
            }
        }
    }

    /// Every kind relisted as the files are now, read afresh: what an engine
    /// starting anew after a failed update takes. (An object whose file now holds
    /// an invalid version is missing from it: its last good version was in the
    /// engine that failed.)
    pub fn snapshot(&self) -> Vec<Change> {
        let mut objects: BTreeMap<Kind, Vec<Object>> = BTreeMap::new();
        for change in ManifestDir::for_engine(&self.dir).reload().changes {
            if let Change::Put(object) = change {
                objects.entry(object.kind()).or_default().push(object);
            }
        }
        Kind::ALL
            .into_iter()
            .map(|kind| Change::Relist(kind, objects.remove(&kind).unwrap_or_default()))
            .collect()
    }

    /// Reads and parses file `name`: what it holds, and its objects by key
    /// (`None`: invalid). `None` when it cannot be read or is not YAML/JSON
    /// (reported; the caller keeps what the file gave last time). `stamp`: the
    /// file's, when it is clean.
    fn read_file(
        &self,
        name: &str,
        stamp: Option<Stamp>,
        batch: &mut Batch,
    ) -> Option<(File, Objects)> {
        let display = self.dir.join(name).display().to_string();
        let text = match std::fs::read_to_string(self.dir.join(name)) {
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
        let mut keys = Vec::new();
        let mut objects = Objects::new();
        for entry in parsed.entries {
            let key = match self.keys.get_key_value(&entry.key) {
                Some((held_key, held)) => {
                    // An invalid object keeps its last good version, if it has one.
                    if entry.object.is_none() && held.enforced.is_none() {
                        continue;
                    }
                    held_key.clone()
                }
                None if entry.object.is_none() => continue,
                None => Arc::new(entry.key),
            };
            match objects.entry(key) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    keys.push(slot.key().clone());
                    slot.insert(entry.object);
                }
                std::collections::hash_map::Entry::Occupied(first) => {
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
        let file = File {
            stamp: stamp.filter(|_| clean),
            keys,
        };
        Some((file, objects))
    }

    /// Drops file `name` from the holders of `keys`, noting them in `affected`.
    fn forget(
        &mut self,
        name: &str,
        keys: Vec<Arc<ObjectKey>>,
        affected: &mut BTreeSet<Arc<ObjectKey>>,
    ) {
        for key in keys {
            if let Some(held) = self.keys.get_mut(&key)
                && let Ok(at) = held.holders.binary_search_by(|h| (**h).cmp(name))
            {
                held.holders.remove(at);
            }
            affected.insert(key);
        }
    }

    /// A duplicate error for every file holding a key another file before it holds
    /// (reported at every read while it lasts).
    fn report_duplicates(&self, errors: &mut Vec<SourceError>) {
        for key in &self.duplicated {
            let Some(held) = self.keys.get(key) else {
                continue;
            };
            let mut names = held.holders.iter();
            let Some(first) = names.next() else { continue };
            for name in names {
                errors.push(SourceError::Duplicate {
                    file: self.dir.join(&**name).display().to_string(),
                    object: key.to_string(),
                    first: self.dir.join(&**first).display().to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
#[path = "dir_tests.rs"]
mod tests;
