//! The manifests `explain` and `compile` answer from, and what bad input does to
//! them. Operator commands answer for the manifests as written, so any problem in
//! them (broken YAML, an invalid object or unknown field, a duplicate object, a file
//! that cannot be read) is fatal (exit 2, as `kubectl auth can-i` exits on an
//! error) unless `--keep-going` asks to report it, skip what it names, and answer
//! from the rest. A directory that cannot be listed is fatal either way: nothing is
//! left to answer from. Warnings (values accepted with an adjustment) never are.

use std::path::Path;
use std::process::ExitCode;

use crate::model::State;
use crate::source::{ManifestDir, SourceError};

/// The exit code of bad input (and of any failure to answer).
pub const EXIT_BAD_INPUT: u8 = 2;

/// The exit code for bad input.
pub fn bad_input() -> ExitCode {
    ExitCode::from(EXIT_BAD_INPUT)
}

/// Why the manifests give no answer.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Problems found (each printed on stderr as it was found).
    #[error(
        "{count} problem(s) in the manifests in {dir}; fix them, or give --keep-going to skip what they name"
    )]
    Manifests { dir: String, count: usize },
    /// The directory itself cannot be listed.
    #[error("{0}")]
    Directory(SourceError),
}

/// Loads `dir` once, with no last-good memory. Every problem and warning is printed
/// on stderr (`netfence: error:`, or `netfence: skipped:` with `keep_going`).
pub fn load(dir: &Path, keep_going: bool) -> Result<State, InputError> {
    let load = ManifestDir::new(dir).load();
    for warning in &load.warnings {
        eprintln!("netfence: warning: {warning}");
    }
    let mut count = 0;
    for error in load.errors {
        if matches!(error, SourceError::Directory { .. }) {
            return Err(InputError::Directory(error));
        }
        let what = if keep_going { "skipped" } else { "error" };
        eprintln!("netfence: {what}: {error}");
        count += 1;
    }
    if count > 0 && !keep_going {
        return Err(InputError::Manifests {
            dir: dir.display().to_string(),
            count,
        });
    }
    Ok(load.state)
}
