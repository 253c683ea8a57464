//! `netfence cni-install` (the DaemonSet's init container) and its reverse in
//! `netfence uninstall`: put `netfence-cni` into the CNI binary directory and append
//! it to the Flannel conflist's `plugins`, or take both out.
//!
//! Idempotent: a conflist that already ends with the same entry is not rewritten; an
//! older netfence entry is replaced in place of the last position (never doubled).
//! Files are written atomically (a dot-file beside them, renamed over): a runtime
//! reading the directory sees the old or the new file, never half of one. Other
//! conflists are left alone. A single-plugin `.conf` cannot chain, so a Flannel
//! `.conf` is refused with an error saying to use a `.conflist`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The plugin's `type` (and its binary's name).
pub const PLUGIN_TYPE: &str = "netfence-cni";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a conflist: {reason}")]
    NotConflist { path: PathBuf, reason: String },
    #[error(
        "no Flannel conflist (a *.conflist whose plugins include type \"flannel\") in {dir}; found: {found}. \
         A single-plugin {conf} cannot chain netfence-cni: configure Flannel with a .conflist (its default, 10-flannel.conflist)"
    )]
    NoFlannel {
        dir: PathBuf,
        found: String,
        conf: String,
    },
    #[error("several Flannel conflists in {dir} ({found}); name one with --conflist")]
    Ambiguous { dir: PathBuf, found: String },
}

/// The plugin's conflist entry.
pub fn plugin_entry(socket_path: &Path, timeout_seconds: u32, fail_closed: bool) -> Value {
    json!({
        "type": PLUGIN_TYPE,
        "socketPath": socket_path.to_string_lossy(),
        "timeoutSeconds": timeout_seconds,
        "failClosed": fail_closed,
    })
}

pub(crate) fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn plugins_mut(conflist: &mut Value) -> Result<&mut Vec<Value>, String> {
    conflist
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| "it has no \"plugins\" list".to_owned())
}

/// `conflist` with `entry` as its last plugin and no other netfence entry; `None`
/// when it already is exactly that.
pub fn with_plugin(conflist: &Value, entry: &Value) -> Result<Option<Value>, String> {
    let mut out = conflist.clone();
    let plugins = plugins_mut(&mut out)?;
    if plugins.iter().filter(|p| is_ours(p)).count() == 1 && plugins.last() == Some(entry) {
        return Ok(None);
    }
    plugins.retain(|p| !is_ours(p));
    plugins.push(entry.clone());
    Ok(Some(out))
}

/// `conflist` without netfence entries; `None` when it has none.
pub fn without_plugin(conflist: &Value) -> Result<Option<Value>, String> {
    let mut out = conflist.clone();
    let plugins = plugins_mut(&mut out)?;
    let before = plugins.len();
    plugins.retain(|p| !is_ours(p));
    Ok((plugins.len() != before).then_some(out))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |error| InstallError::Io {
        path: path.to_owned(),
        error,
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value, InstallError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| InstallError::NotConflist {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes `bytes` to `path` through a dot-file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.netfence-tmp"));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

fn write_json(path: &Path, value: &Value) -> Result<(), InstallError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| InstallError::NotConflist {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    write_atomically(path, text.as_bytes(), 0o644)
}

fn entries(dir: &Path, extension: &str) -> Result<Vec<PathBuf>, InstallError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    out.sort();
    Ok(out)
}

fn has_flannel(conf: &Value) -> bool {
    let is_flannel = |p: &Value| p.get("type").and_then(Value::as_str) == Some("flannel");
    is_flannel(conf)
        || conf
            .get("plugins")
            .and_then(Value::as_array)
            .is_some_and(|p| p.iter().any(is_flannel))
}

/// The Flannel conflist in `dir` (`name` picks one by file name).
pub fn flannel_conflist(dir: &Path, name: Option<&str>) -> Result<PathBuf, InstallError> {
    if let Some(name) = name {
        return Ok(dir.join(name));
    }
    let lists = entries(dir, "conflist")?;
    let flannel: Vec<&PathBuf> = lists
        .iter()
        .filter(|p| read_json(p).is_ok_and(|conf| has_flannel(&conf)))
        .collect();
    let names = |paths: &[&PathBuf]| {
        let names: Vec<String> = paths
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        if names.is_empty() {
            "nothing".to_owned()
        } else {
            names.join(", ")
        }
    };
    match flannel[..] {
        [one] => Ok(one.clone()),
        [] => {
            let confs = entries(dir, "conf")?;
            let flannel_conf: Vec<&PathBuf> = confs
                .iter()
                .filter(|p| read_json(p).is_ok_and(|conf| has_flannel(&conf)))
                .collect();
            let all: Vec<&PathBuf> = lists.iter().chain(&confs).collect();
            Err(InstallError::NoFlannel {
                dir: dir.to_owned(),
                found: names(&all),
                conf: if flannel_conf.is_empty() {
                    ".conf".to_owned()
                } else {
                    names(&flannel_conf)
                },
            })
        }
        _ => Err(InstallError::Ambiguous {
            dir: dir.to_owned(),
            found: names(&flannel),
        }),
    }
}

/// Appends (or updates) the entry in the conflist at `path`. True when the file was
/// rewritten.
pub fn add_to_conflist(path: &Path, entry: &Value) -> Result<bool, InstallError> {
    let conf = read_json(path)?;
    match with_plugin(&conf, entry).map_err(|reason| InstallError::NotConflist {
        path: path.to_owned(),
        reason,
    })? {
        Some(new) => write_json(path, &new).map(|()| true),
        None => Ok(false),
    }
}

/// Removes netfence entries from every conflist in `dir`; the files rewritten.
pub fn remove_from_conflists(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut rewritten = Vec::new();
    for path in entries(dir, "conflist")? {
        // A file that is no conflist is not ours to judge.
        let Ok(conf) = read_json(&path) else { continue };
        if let Ok(Some(new)) = without_plugin(&conf) {
            write_json(&path, &new)?;
            rewritten.push(path);
        }
    }
    Ok(rewritten)
}

/// Copies the plugin binary into `bin_dir` (through a dot-file and a rename: a
/// runtime executing the old binary keeps its inode). True when it changed.
pub fn install_binary(source: &Path, bin_dir: &Path) -> Result<bool, InstallError> {
    let bytes = std::fs::read(source).map_err(io(source))?;
    std::fs::create_dir_all(bin_dir).map_err(io(bin_dir))?;
    let target = bin_dir.join(PLUGIN_TYPE);
    if std::fs::read(&target).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    write_atomically(&target, &bytes, 0o755)?;
    Ok(true)
}

/// Removes the plugin binary from `bin_dir`; true when there was one.
pub fn remove_binary(bin_dir: &Path) -> Result<bool, InstallError> {
    let target = bin_dir.join(PLUGIN_TYPE);
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io(&target)(error)),
    }
}

#[cfg(test)]
#[path = "install_tests.rs"]
mod tests;
