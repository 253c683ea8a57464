//! The objects `explain`, `compile` and `policies` answer from, and what bad input
//! does to them. Input is a manifest directory (`--manifests DIR`), files and
//! directories as kubectl takes them (`-f FILE`, repeatable, `-` for stdin, `-R` to
//! recurse into directories), or a live cluster listed once (`cli::live`). Every
//! file is decoded by the manifest source's own strict parser
//! ([`crate::source::parse_str`]), and a directory is listed as the source lists one
//! ([`crate::source::manifest_files`]), so the same file gives the same objects and
//! the same errors here as in `netfence run --manifests`.
//!
//! Operator commands answer for the manifests as written, so any problem in them
//! (broken YAML, an invalid object or unknown field, a duplicate object, a file that
//! cannot be read) is fatal (exit 2, as `kubectl auth can-i` exits on an error)
//! unless `--keep-going` asks to report it, skip what it names, and answer from the
//! rest. A path that does not exist or a directory that cannot be listed is fatal
//! either way: nothing is left to answer from. Warnings (values accepted with an
//! adjustment) never are.
//!
//! Of two objects with the same kind, namespace and name, the first read is kept
//! (`--manifests` first, then each `-f` in order, a directory's files by name) and the
//! second is a duplicate; `--with` objects (what-if) instead replace the ones read.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::model::State;
use crate::source::{Object, ObjectKey, SourceError};

/// The exit code of bad input (and of any failure to answer).
pub const EXIT_BAD_INPUT: u8 = 2;

/// The exit code for bad input.
pub fn bad_input() -> ExitCode {
    ExitCode::from(EXIT_BAD_INPUT)
}

/// Where the objects come from (every operator command takes these).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct InputArgs {
    /// Directory of Kubernetes manifests (its *.yaml, *.yml and *.json files).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// A manifest file, a directory of them, or `-` for stdin (repeatable, as
    /// `kubectl apply -f`). A named file is read whatever its extension.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filenames: Vec<PathBuf>,
    /// Read the directories given with -f (and --with) and their subdirectories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Answer from a live cluster through this kubeconfig (its current context):
    /// listed once, read-only, no watch. Without --manifests, -f or --kubeconfig, the
    /// in-cluster service account is used when running in a pod.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["manifests", "filenames"])]
    pub kubeconfig: Option<PathBuf>,
}

/// Why the input gives no answer.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Problems found (each printed on stderr as it was found).
    #[error("{count} problem(s) in {what}; fix them, or give --keep-going to skip what they name")]
    Manifests { what: String, count: usize },
    /// A directory that cannot be listed, a path that does not exist, stdin read
    /// twice.
    #[error("{0}")]
    Path(SourceError),
    #[error("{0:?}: stdin can be read only once")]
    StdinTwice(String),
    #[error(
        "no input: give --manifests DIR, -f FILE or --kubeconfig FILE (in a pod, the in-cluster service account is used)"
    )]
    NoInput,
    /// The live cluster could not be listed.
    #[error("{0}")]
    Live(String),
}

/// One place objects are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// `--manifests DIR`: listed, never recursed, must exist.
    Dir(PathBuf),
    /// `-f PATH`: a file, or a directory (recursed with `-R`).
    Path(PathBuf),
    Stdin,
}

/// Objects read, by key, with the file each came from, and the problems found.
#[derive(Debug, Default)]
pub struct Objects {
    pub objects: BTreeMap<ObjectKey, (String, Object)>,
    pub errors: Vec<SourceError>,
    pub warnings: Vec<SourceError>,
}

impl Objects {
    /// Adds one file's text: its syntax error, or its objects (a key seen before is
    /// a duplicate, the first kept) and problems.
    fn add_text(&mut self, file: &str, text: &str) {
        let parsed = match crate::source::parse_str(file, text) {
            Ok(parsed) => parsed,
            Err(syntax) => {
                self.errors.push(syntax);
                return;
            }
        };
        self.errors.extend(parsed.errors);
        self.warnings.extend(parsed.warnings);
        for object in parsed.entries.into_iter().filter_map(|e| e.object) {
            self.insert(file, object);
        }
    }

    /// Adds one valid object read from `file` (a key seen before is a duplicate,
    /// the first kept).
    pub fn insert(&mut self, file: &str, object: Object) {
        match self.objects.entry(object.key()) {
            std::collections::btree_map::Entry::Occupied(first) => {
                self.errors.push(SourceError::Duplicate {
                    file: file.to_owned(),
                    object: first.key().to_string(),
                    first: first.get().0.clone(),
                });
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert((file.to_owned(), object));
            }
        }
    }

    /// The objects alone.
    pub fn into_map(self) -> BTreeMap<ObjectKey, Object> {
        (self.objects.into_iter())
            .map(|(key, (_, object))| (key, object))
            .collect()
    }
}

/// The state of `objects` (sorted as every source sorts it).
pub fn state_of(objects: &BTreeMap<ObjectKey, Object>) -> State {
    crate::source::state_of(objects.values())
}

/// Reads every place in order. `Err` for what is fatal even with `--keep-going`.
fn read_places(places: &[Place], recursive: bool) -> Result<Objects, InputError> {
    let mut objects = Objects::default();
    let mut stdin_read = false;
    for place in places {
        match place {
            Place::Stdin => {
                if stdin_read {
                    return Err(InputError::StdinTwice("-".to_owned()));
                }
                stdin_read = true;
                let mut text = String::new();
                match std::io::stdin().read_to_string(&mut text) {
                    Ok(_) => objects.add_text("<stdin>", &text),
                    Err(source) => objects.errors.push(SourceError::Read {
                        file: "<stdin>".to_owned(),
                        source,
                    }),
                }
            }
            Place::Dir(dir) => read_dir(&mut objects, dir, false)?,
            Place::Path(path) => {
                let meta = std::fs::metadata(path).map_err(|source| {
                    InputError::Path(SourceError::Read {
                        file: path.display().to_string(),
                        source,
                    })
                })?;
                if meta.is_dir() {
                    read_dir(&mut objects, path, recursive)?;
                } else {
                    read_file(&mut objects, path);
                }
            }
        }
    }
    Ok(objects)
}

fn read_file(objects: &mut Objects, path: &Path) {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => objects.add_text(&file, &text),
        Err(source) => objects.errors.push(SourceError::Read { file, source }),
    }
}

/// A directory's manifest files by name, then (with `recursive`) its subdirectories
/// by name, skipping hidden ones (a ConfigMap volume's `..data`) and any directory
/// already read (a link back up the tree would loop forever).
fn read_dir(objects: &mut Objects, dir: &Path, recursive: bool) -> Result<(), InputError> {
    read_dir_once(
        objects,
        dir,
        recursive,
        &mut std::collections::BTreeSet::new(),
    )
}

fn read_dir_once(
    objects: &mut Objects,
    dir: &Path,
    recursive: bool,
    seen: &mut std::collections::BTreeSet<PathBuf>,
) -> Result<(), InputError> {
    if !seen.insert(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())) {
        return Ok(());
    }
    let listing_error = |source| {
        InputError::Path(SourceError::Directory {
            dir: dir.display().to_string(),
            source,
        })
    };
    for name in crate::source::manifest_files(dir).map_err(listing_error)? {
        read_file(objects, &dir.join(name));
    }
    if recursive {
        let mut subdirs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(listing_error)? {
            let entry = entry.map_err(listing_error)?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if !hidden && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                subdirs.push(entry.path());
            }
        }
        subdirs.sort();
        for subdir in subdirs {
            read_dir_once(objects, &subdir, true, seen)?;
        }
    }
    Ok(())
}

fn places(args: &InputArgs) -> Vec<Place> {
    let mut places: Vec<Place> = args.manifests.iter().cloned().map(Place::Dir).collect();
    places.extend(args.filenames.iter().map(|path| {
        if path.as_os_str() == "-" {
            Place::Stdin
        } else {
            Place::Path(path.clone())
        }
    }));
    places
}

/// What the input names, for messages: `DIR`, `a.yaml, b.yaml`.
fn describe(places: &[Place]) -> String {
    let names: Vec<String> = (places.iter())
        .map(|place| match place {
            Place::Dir(path) | Place::Path(path) => path.display().to_string(),
            Place::Stdin => "<stdin>".to_owned(),
        })
        .collect();
    names.join(", ")
}

/// Prints the warnings and problems of `read` on stderr (`netfence: error:`, or
/// `netfence: skipped:` with `keep_going`); `Err` when there were problems and not
/// `keep_going`.
fn report(read: &mut Objects, what: String, keep_going: bool) -> Result<(), InputError> {
    for warning in read.warnings.drain(..) {
        eprintln!("netfence: warning: {warning}");
    }
    let count = read.errors.len();
    for error in read.errors.drain(..) {
        let word = if keep_going { "skipped" } else { "error" };
        eprintln!("netfence: {word}: {error}");
    }
    if count > 0 && !keep_going {
        return Err(InputError::Manifests { what, count });
    }
    Ok(())
}

/// Reads the files the input flags name (not a live cluster),
/// reporting problems on stderr.
pub fn load_files(
    args: &InputArgs,
    keep_going: bool,
) -> Result<BTreeMap<ObjectKey, Object>, InputError> {
    let places = places(args);
    if places.is_empty() {
        return Err(InputError::NoInput);
    }
    let mut read = read_places(&places, args.recursive)?;
    report(
        &mut read,
        format!("the manifests in {}", describe(&places)),
        keep_going,
    )?;
    Ok(read.into_map())
}

/// Reads `--with` files (same semantics as `-f`, `recursive` as `-R`): the objects
/// that replace or add to the input's.
pub fn load_with(
    paths: &[PathBuf],
    recursive: bool,
    keep_going: bool,
) -> Result<BTreeMap<ObjectKey, Object>, InputError> {
    let args = InputArgs {
        filenames: paths.to_vec(),
        recursive,
        ..InputArgs::default()
    };
    load_files(&args, keep_going)
}

/// Loads the input's objects once: files, or a live cluster (`--kubeconfig`, or
/// in-cluster when no input flag is given and `KUBERNETES_SERVICE_HOST` is set).
pub fn load_objects(
    args: &InputArgs,
    keep_going: bool,
) -> Result<BTreeMap<ObjectKey, Object>, InputError> {
    if args.manifests.is_some() || !args.filenames.is_empty() {
        return load_files(args, keep_going);
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if args.kubeconfig.is_none() && !in_cluster {
        return Err(InputError::NoInput);
    }
    let mut read = super::live::read(args.kubeconfig.as_deref())?;
    let what = match &args.kubeconfig {
        Some(path) => format!("the objects listed through {}", path.display()),
        None => "the objects listed in-cluster".to_owned(),
    };
    report(&mut read, what, keep_going)?;
    Ok(read.into_map())
}

/// Loads the input's state once.
pub fn load(args: &InputArgs, keep_going: bool) -> Result<State, InputError> {
    Ok(state_of(&load_objects(args, keep_going)?))
}

/// `base` with every object of `with` added, or replacing the one of the same kind,
/// namespace and name.
pub fn overlay(
    base: &BTreeMap<ObjectKey, Object>,
    with: BTreeMap<ObjectKey, Object>,
) -> BTreeMap<ObjectKey, Object> {
    let mut merged = base.clone();
    merged.extend(with);
    merged
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    const POD_A: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 198.18.0.1}\n";

    #[test]
    fn a_second_object_with_the_same_key_is_a_duplicate_naming_the_first_file() {
        let mut read = Objects::default();
        read.add_text("one.yaml", POD_A);
        read.add_text("two.yaml", &POD_A.replace("198.18.0.1", "198.18.0.2"));
        assert_eq!(read.objects.len(), 1);
        let errors: Vec<String> = read.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            ["two.yaml: Pod x/a: duplicate; the one in one.yaml is kept"]
        );
        let state = state_of(&read.into_map());
        assert_eq!(
            state.pods[0].ips,
            ["198.18.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn overlay_replaces_by_key_and_adds_new_keys() {
        let mut base = Objects::default();
        base.add_text("base.yaml", POD_A);
        let base = base.into_map();
        let mut with = Objects::default();
        with.add_text(
            "with.yaml",
            &format!(
                "{}---\n{}",
                POD_A.replace("198.18.0.1", "198.18.0.7"),
                POD_A.replace("name: a", "name: b")
            ),
        );
        let merged = state_of(&overlay(&base, with.into_map()));
        let pods: Vec<(String, String)> = (merged.pods.iter())
            .map(|p| (p.name.clone(), p.ips[0].to_string()))
            .collect();
        assert_eq!(
            pods,
            [
                ("a".to_owned(), "198.18.0.7".to_owned()),
                ("b".to_owned(), "198.18.0.1".to_owned())
            ]
        );
    }

    fn parse(args: &[&str]) -> Result<crate::cli::Command, String> {
        use clap::Parser as _;
        crate::cli::Cli::try_parse_from(args)
            .map(|cli| cli.command)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn input_flags_parse_as_kubectl_s_and_kubeconfig_excludes_files() {
        let Ok(crate::cli::Command::Explain(args)) = parse(&[
            "netfence",
            "explain",
            "-f",
            "a.yaml",
            "--filename",
            "-",
            "-R",
            "--matrix",
            "--with",
            "b.yaml",
            "--with",
            "c/",
            "-o",
            "yaml",
        ]) else {
            panic!("explain -f parses");
        };
        assert_eq!(
            args.input.filenames,
            [PathBuf::from("a.yaml"), PathBuf::from("-")]
        );
        assert!(args.input.recursive);
        assert_eq!(args.with, [PathBuf::from("b.yaml"), PathBuf::from("c/")]);
        assert_eq!(args.output, crate::cli::output::Format::Yaml);
        let Ok(crate::cli::Command::Policies(args)) = parse(&[
            "netfence",
            "policies",
            "x/a",
            "--kubeconfig",
            "kc",
            "-o",
            "wide",
        ]) else {
            panic!("policies parses");
        };
        assert_eq!(
            (args.pod.as_str(), args.input.kubeconfig),
            ("x/a", Some("kc".into()))
        );
        for conflict in [
            &["netfence", "compile", "--kubeconfig", "kc", "-f", "a.yaml"][..],
            &[
                "netfence",
                "compile",
                "--kubeconfig",
                "kc",
                "--manifests",
                "m",
            ],
        ] {
            let error = parse(conflict).unwrap_err();
            assert!(
                error.contains("cannot be used with"),
                "{conflict:?}: {error}"
            );
        }
        let error = parse(&["netfence", "compile", "-f", "a", "-o", "table"]).unwrap_err();
        assert!(
            error.contains("[possible values: text, wide, json, yaml]"),
            "{error}"
        );
    }

    #[test]
    fn recursion_reads_each_directory_once_through_links() {
        let dir = tempfile::Builder::new().prefix("nfr").tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("a.yaml"), POD_A).unwrap();
        // sub/up -> .. and sub/again -> sub: loops.
        std::os::unix::fs::symlink(dir.path(), sub.join("up")).unwrap();
        std::os::unix::fs::symlink(&sub, dir.path().join("again")).unwrap();
        let mut read = Objects::default();
        read_dir(&mut read, dir.path(), true).unwrap();
        assert_eq!(read.objects.len(), 1);
        assert!(read.errors.is_empty(), "{:?}", read.errors);
    }

    #[test]
    fn places_keep_the_order_given_and_dash_is_stdin() {
        let args = InputArgs {
            manifests: Some("m".into()),
            filenames: vec!["a.yaml".into(), "-".into()],
            ..InputArgs::default()
        };
        let places = places(&args);
        assert_eq!(
            places,
            [
                Place::Dir("m".into()),
                Place::Path("a.yaml".into()),
                Place::Stdin
            ]
        );
        assert_eq!(describe(&places), "m, a.yaml, <stdin>");
    }
}
