//! The record of the agent's last sync that `netfence status` reads: generation,
//! time, map entry counts, the agent's pid and the flags it enforces with (`--mode`,
//! `--existing-flows`, `--allow-node`). A BPF file system holds no regular
//! files, so the record lives beside the pins, under [`STATE_DIR`], one file per pin
//! directory. Written atomically (a temporary file renamed over the old one), so a
//! reader sees the previous record or the new one, never half of one.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::Deserialize as _;

use super::loader::ExistingFlows;
use super::sync::Mode;

/// Where the records live (tmpfs on a node: gone at reboot, like the pins).
pub const STATE_DIR: &str = "/run/netfence";

/// What the agent writes after each sync.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastSync {
    /// The pin directory the agent enforces from.
    pub pin_dir: PathBuf,
    /// The agent's process id.
    pub pid: u32,
    /// Sync counter of this agent process (1 = its first sync).
    pub generation: u64,
    /// Seconds since the Unix epoch when the sync finished.
    pub unix_time: u64,
    /// What caused the sync (the source's name, or `interfaces`).
    pub cause: String,
    /// Map writes applied, and failed (those are retried by the next sync).
    pub writes: usize,
    pub failed_writes: usize,
    /// Entries the agent holds in each map after the sync.
    pub endpoints: usize,
    pub identities: usize,
    pub policy_entries: usize,
    pub rules: usize,
    /// `--mode` of the agent. `None` in a record written before the flags were
    /// recorded (such records still read).
    #[serde(default, deserialize_with = "value_enum")]
    pub mode: Option<Mode>,
    /// `--existing-flows` of the agent (`None` as for `mode`).
    #[serde(default, deserialize_with = "value_enum")]
    pub existing_flows: Option<ExistingFlows>,
    /// `--allow-node` of the agent (`None` as for `mode`).
    #[serde(default)]
    pub allow_node: Option<bool>,
}

/// Reads a flag's value by its command-line name (`enforce`, `cut`...), the names
/// it is written with.
fn value_enum<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: clap::ValueEnum,
{
    Option::<String>::deserialize(deserializer)?
        .map(|text| T::from_str(&text, false).map_err(serde::de::Error::custom))
        .transpose()
}

/// The record file of a pin directory: `STATE_DIR/<the path, '/' and other
/// non-name characters as '_'>.json`, e.g. `/run/netfence/sys_fs_bpf_netfence.json`.
pub fn path_for(pin_dir: &Path) -> PathBuf {
    path_in(Path::new(STATE_DIR), pin_dir)
}

fn path_in(state_dir: &Path, pin_dir: &Path) -> PathBuf {
    let text = pin_dir.to_string_lossy();
    let name: String = text
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join(format!("{name}.json"))
}

/// Writes `record` to `path` atomically (temporary file in the same directory, then
/// rename), creating the directory if needed.
pub fn write(path: &Path, record: &LastSync) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let temp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a sync record: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The record at `path`, `None` when there is none.
pub fn read(path: &Path) -> Result<Option<LastSync>, ReadError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReadError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ReadError::Parse {
            path: path.to_owned(),
            source,
        })
}

/// Whether process `pid` is alive and is a netfence (a reused pid is not).
pub fn agent_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "netfence")
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LastSync {
        LastSync {
            pin_dir: PathBuf::from("/sys/fs/bpf/netfence"),
            pid: 42,
            generation: 3,
            unix_time: 1_700_000_000,
            cause: "manifests".into(),
            writes: 10,
            failed_writes: 1,
            endpoints: 2,
            identities: 4,
            policy_entries: 6,
            rules: 1,
            mode: Some(Mode::Audit),
            existing_flows: Some(ExistingFlows::Cut),
            allow_node: Some(false),
        }
    }

    #[test]
    fn the_file_name_is_the_escaped_pin_dir() {
        assert_eq!(
            path_in(
                Path::new("/run/netfence"),
                Path::new("/sys/fs/bpf/netfence")
            ),
            PathBuf::from("/run/netfence/sys_fs_bpf_netfence.json")
        );
        assert_eq!(
            path_for(Path::new("/tmp/nf9 x/pins")),
            PathBuf::from("/run/netfence/tmp_nf9_x_pins.json")
        );
    }

    #[test]
    fn write_then_read_round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(&dir.path().join("state"), Path::new("/sys/fs/bpf/netfence"));
        assert_eq!(read(&path).unwrap(), None, "no record yet");
        write(&path, &record()).unwrap();
        let mut second = record();
        second.generation = 4;
        write(&path, &second).unwrap();
        assert_eq!(read(&path).unwrap(), Some(second));
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(files.len(), 1, "only the record: {files:?}");
    }

    #[test]
    fn the_flags_are_written_by_their_command_line_names() {
        let json = serde_json::to_value(record()).unwrap();
        assert_eq!(
            (&json["mode"], &json["existing_flows"], &json["allow_node"]),
            (
                &serde_json::json!("audit"),
                &serde_json::json!("cut"),
                &serde_json::json!(false)
            )
        );
        let mut enforce = record();
        enforce.mode = Some(Mode::Enforce);
        enforce.existing_flows = Some(ExistingFlows::Keep);
        let text = serde_json::to_string(&enforce).unwrap();
        assert!(
            text.contains(r#""mode":"enforce","existing_flows":"keep","allow_node":false"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<LastSync>(&text).unwrap(), enforce);
    }

    #[test]
    fn a_record_without_the_flags_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.json");
        // What an agent before the flags were recorded wrote.
        std::fs::write(
            &path,
            r#"{"pin_dir":"/sys/fs/bpf/netfence","pid":42,"generation":3,"unix_time":1700000000,
                "cause":"manifests","writes":10,"failed_writes":1,"endpoints":2,"identities":4,
                "policy_entries":6,"rules":1}"#,
        )
        .unwrap();
        let old = read(&path).unwrap().unwrap();
        assert_eq!(
            (old.mode, old.existing_flows, old.allow_node),
            (None, None, None)
        );
        assert_eq!(old.generation, 3);
    }

    #[test]
    fn an_unknown_flag_value_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        let mut json = serde_json::to_value(record()).unwrap();
        json["mode"] = serde_json::json!("permissive");
        std::fs::write(&path, json.to_string()).unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "{} is not a sync record: invalid variant: permissive",
                path.display()
            )),
            "{error}"
        );
    }

    #[test]
    fn a_garbled_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(&path, "{not json").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{} is not a sync record", path.display())),
            "{error}"
        );
    }

    #[test]
    fn this_process_is_not_a_netfence_agent_and_a_free_pid_is_not_running() {
        assert!(
            !agent_running(std::process::id()),
            "the test binary is not named netfence"
        );
        assert!(!agent_running(u32::MAX));
    }
}
