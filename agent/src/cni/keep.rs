//! `netfence run --cni-conf-dir DIR`: keeps `netfence-cni` chained in Flannel's
//! conflist while the agent runs. Flannel's own install-cni init container rewrites
//! `10-flannel.conflist` whenever Flannel restarts, which drops the entry `netfence
//! cni-install` added; pods created after that would start without waiting for
//! enforcement.
//!
//! The run loop calls [`ConflistKeeper::check`] at start and on every tick (1 s). A
//! check lists the directory (names, sizes, modification times, inodes of `*.conflist`
//! and `*.conf`) and does nothing more when that fingerprint is what the last
//! successful check saw; otherwise it re-ensures the entry with `cni-install`'s own
//! editing (idempotent, atomic rename, Flannel's conflist only: [`super::install`]).
//! A tick rather than inotify: the directory is a host path that may not exist yet
//! when the agent starts, files are replaced by rename or rewritten in place (a
//! watcher must follow both, and re-arm when the directory itself is replaced), and
//! a listing per second costs a few `stat`s; the price is a window of up to one tick
//! in which a pod may be created without the plugin (it is then enforced as soon as
//! the agent sees it in the state, like any pod without deny-until-ready).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::install::{self, InstallError};

/// What a check that looked at the conflist found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The entry was there as wanted: nothing written.
    Chained(PathBuf),
    /// There was no netfence entry (Flannel rewrote its conflist): added back.
    Restored(PathBuf),
    /// There was one with other settings, or not last: replaced by the wanted one.
    Updated(PathBuf),
}

/// Makes the Flannel conflist in `dir` chain `entry` last: [`Ensured`] says how.
/// Conflists that are not Flannel's are never touched.
pub fn ensure(dir: &Path, entry: &Value) -> Result<Ensured, InstallError> {
    let path = install::flannel_conflist(dir, None)?;
    let had = install::read_json(&path)?
        .get("plugins")
        .and_then(Value::as_array)
        .is_some_and(|plugins| plugins.iter().any(install::is_ours));
    Ok(match (install::add_to_conflist(&path, entry)?, had) {
        (false, _) => Ensured::Chained(path),
        (true, false) => Ensured::Restored(path),
        (true, true) => Ensured::Updated(path),
    })
}

/// The result of one [`ConflistKeeper::check`].
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// The directory did not change since the last successful check.
    Unchanged,
    Ensured(Ensured),
    /// The entry could not be ensured; `repeated` when the last check failed the same
    /// way (log it once). Retried on every check until it succeeds.
    Failed {
        message: String,
        repeated: bool,
    },
}

/// One CNI configuration directory and the entry it must chain.
#[derive(Debug)]
pub struct ConflistKeeper {
    dir: PathBuf,
    entry: Value,
    seen: Option<Fingerprint>,
    last_error: Option<String>,
}

/// Per file: name, size, modification time (s, ns), inode. `None` when the
/// directory cannot be listed.
type Fingerprint = Option<Vec<(std::ffi::OsString, u64, i64, i64, u64)>>;

fn fingerprint(dir: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt as _;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "conflist" || x == "conf")
        })
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((
                e.file_name(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ino(),
            ))
        })
        .collect();
    files.sort();
    Some(files)
}

impl ConflistKeeper {
    pub fn new(dir: PathBuf, entry: Value) -> Self {
        Self {
            dir,
            entry,
            seen: None,
            last_error: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-ensures the entry if the directory changed since the last successful check
    /// (always on the first).
    pub fn check(&mut self) -> Check {
        let now = fingerprint(&self.dir);
        if self.seen.as_ref() == Some(&now) {
            return Check::Unchanged;
        }
        match ensure(&self.dir, &self.entry) {
            Ok(ensured) => {
                // Taken before the edit: our own write changes the directory, and the
                // next check confirms it (`Chained`, nothing written).
                self.seen = Some(now);
                self.last_error = None;
                Check::Ensured(ensured)
            }
            Err(error) => {
                let message = error.to_string();
                let repeated = self.last_error.as_deref() == Some(message.as_str());
                self.last_error = Some(message.clone());
                Check::Failed { message, repeated }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const FLANNEL: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    const OTHER: &str =
        r#"{"name":"other","cniVersion":"1.0.0","plugins":[{"type":"bridge","bridge":"br9"}]}"#;

    fn entry(fail_closed: bool) -> Value {
        install::plugin_entry(Path::new("/run/netfence/cni.sock"), 10, fail_closed)
    }

    fn types(path: &Path) -> Vec<String> {
        let conf: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        conf["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn ensure_restores_a_missing_entry_updates_a_different_one_and_leaves_other_conflists() {
        let dir = tempfile::tempdir().unwrap();
        let flannel = dir.path().join("10-flannel.conflist");
        let other = dir.path().join("99-other.conflist");
        std::fs::write(&flannel, FLANNEL).unwrap();
        std::fs::write(&other, OTHER).unwrap();

        assert_eq!(
            ensure(dir.path(), &entry(true)).unwrap(),
            Ensured::Restored(flannel.clone())
        );
        assert_eq!(types(&flannel), ["flannel", "portmap", "netfence-cni"]);
        assert_eq!(
            ensure(dir.path(), &entry(true)).unwrap(),
            Ensured::Chained(flannel.clone())
        );
        // Other settings (e.g. an older init container's): replaced in place, not doubled.
        assert_eq!(
            ensure(dir.path(), &entry(false)).unwrap(),
            Ensured::Updated(flannel.clone())
        );
        assert_eq!(types(&flannel), ["flannel", "portmap", "netfence-cni"]);
        let conf: Value =
            serde_json::from_str(&std::fs::read_to_string(&flannel).unwrap()).unwrap();
        assert_eq!(conf["plugins"][2], entry(false));
        assert_eq!(
            std::fs::read_to_string(&other).unwrap(),
            OTHER,
            "not Flannel's: untouched"
        );
    }

    #[test]
    fn ensure_without_a_flannel_conflist_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("99-other.conflist");
        std::fs::write(&other, OTHER).unwrap();
        let error = ensure(dir.path(), &entry(true)).unwrap_err().to_string();
        assert!(error.starts_with(&format!("no Flannel conflist (a *.conflist whose plugins include type \"flannel\") in {}; found: 99-other.conflist", dir.path().display())), "{error}");
        assert_eq!(std::fs::read_to_string(&other).unwrap(), OTHER);
    }

    #[test]
    fn the_keeper_acts_only_when_the_directory_changed_and_restores_after_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        let mut keeper = ConflistKeeper::new(conf.clone(), entry(true));
        // No directory yet (Flannel not installed): an error, logged once.
        let Check::Failed {
            message,
            repeated: false,
        } = keeper.check()
        else {
            panic!("no directory is an error")
        };
        assert!(
            message.starts_with(&format!("{}: ", conf.display())),
            "{message}"
        );
        assert!(matches!(
            keeper.check(),
            Check::Failed { repeated: true, .. }
        ));

        std::fs::create_dir_all(&conf).unwrap();
        let flannel = conf.join("10-flannel.conflist");
        std::fs::write(&flannel, FLANNEL).unwrap();
        assert_eq!(
            keeper.check(),
            Check::Ensured(Ensured::Restored(flannel.clone()))
        );
        // Our own write changed the directory: confirmed once, then nothing to do.
        assert_eq!(
            keeper.check(),
            Check::Ensured(Ensured::Chained(flannel.clone()))
        );
        assert_eq!(keeper.check(), Check::Unchanged);
        assert_eq!(keeper.check(), Check::Unchanged);

        // Flannel restarts and copies its conflist over ours (in place, as `cp` does).
        std::fs::write(&flannel, FLANNEL).unwrap();
        assert_eq!(
            keeper.check(),
            Check::Ensured(Ensured::Restored(flannel.clone()))
        );
        assert_eq!(types(&flannel), ["flannel", "portmap", "netfence-cni"]);
        // An unrelated conflist appearing is a change, but nothing is written.
        std::fs::write(conf.join("99-other.conflist"), OTHER).unwrap();
        assert_eq!(
            keeper.check(),
            Check::Ensured(Ensured::Chained(flannel.clone()))
        );
        assert_eq!(
            std::fs::read_to_string(conf.join("99-other.conflist")).unwrap(),
            OTHER
        );
        let entry_json = json!(entry(true));
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&flannel).unwrap()).unwrap();
        assert_eq!(written["plugins"][2], entry_json);
    }
}
