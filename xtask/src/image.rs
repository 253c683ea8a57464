//! `cargo xtask image`: the agent's OCI image, written directly as an OCI image layout
//! archive (`oci-archive`), with no base image and nothing downloaded. It holds the
//! `netfence` and `netfence-cni` binaries built from this tree and exactly what they
//! load at run time: the dynamic loader and the shared libraries `ldd` names (glibc
//! and libgcc_s of the build machine). No shell, no package manager, no CA bundle.
//!
//! Two layers, the libraries first (they change only with the build machine's glibc),
//! then the binaries; uncompressed, as `podman save` and `docker save` write them
//! (`podman push` / `skopeo copy` compress them on the way to a registry). Files are
//! owned by root with the build commit's time, in a fixed order, so a rebuild of the
//! same binaries gives the same digests. With podman present the archive is loaded
//! into its local storage as `localhost/netfence:<version>`.

#[cfg(test)]
mod lab_test;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::cmd::{cargo, repo_root, run};

/// The image's name in a runtime's local storage (and in `deploy/kustomization.yaml`).
pub const NAME: &str = "localhost/netfence";
/// The workspace version, the image's tag.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the binaries go, and the entrypoint.
pub const BIN_DIR: &str = "usr/local/bin";
pub const ENTRYPOINT: &str = "/usr/local/bin/netfence";
/// The binaries of the image (cargo package, binary name).
const BINARIES: [(&str, &str); 2] = [("netfence", "netfence"), ("netfence-cni", "netfence-cni")];

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Which build the image holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `cargo build --release`: the image to ship.
    Release,
    /// The debug build with its debug info stripped (from 300 MB to a tenth): for the
    /// lab test, which thus needs no release build of its own.
    Debug,
}

/// `cargo xtask image`: build, write the archive, load it into podman when present.
pub fn image(profile: Profile, out: Option<PathBuf>, load: bool) -> anyhow::Result<()> {
    let binaries = build(profile)?;
    let out = out.unwrap_or_else(default_archive);
    let written = write_archive(&binaries, profile, &out)?;
    println!(
        "image: {} ({} bytes; {} {}; layers: {} libraries, {} binaries)",
        out.display(),
        written.archive_size,
        written.platform.0,
        written.platform.1,
        written.libraries.len(),
        written.binaries.len(),
    );
    for (path, size) in written.libraries.iter().chain(&written.binaries) {
        println!("  /{path:<44} {size:>10} bytes");
    }
    if !load {
        return Ok(());
    }
    if !podman_present() {
        println!(
            "image: podman not found, nothing loaded (`cargo xtask setup` installs it); \
             load the archive with `podman load -i {}`",
            out.display()
        );
        return Ok(());
    }
    let reference = reference();
    run(Command::new("podman").args(["load", "-i"]).arg(&out))?;
    // `podman load` names the image from the index's annotation; tag it anyway, so
    // the name does not depend on how a podman version reads annotations.
    let id = written.config_digest.trim_start_matches("sha256:");
    run(Command::new("podman").args(["tag", id, &reference]))?;
    println!("image: loaded into podman as {reference}");
    Ok(())
}

/// `localhost/netfence:<version>`.
pub fn reference() -> String {
    format!("{NAME}:{VERSION}")
}

/// target/image/netfence-<version>-<arch>.oci.tar.
pub fn default_archive() -> PathBuf {
    target_dir().join("image").join(format!(
        "netfence-{VERSION}-{}.oci.tar",
        oci_arch(std::env::consts::ARCH)
    ))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

pub fn podman_present() -> bool {
    Command::new("podman")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds both binaries of `profile` (a no-op when fresh) and returns their paths.
pub fn build(profile: Profile) -> anyhow::Result<Vec<PathBuf>> {
    let mut cmd = cargo();
    cmd.args(["build", "--locked"]);
    if profile == Profile::Release {
        // As `cargo xtask build`.
        cmd.arg("--release");
        for (package, _) in BINARIES {
            cmd.args(["-p", package]);
        }
    }
    // The debug build: every default member, as `cargo build` in `cargo xtask test`
    // (with `-p` the features would unify differently and rebuild the agent).
    run(cmd.current_dir(repo_root()))?;
    let dir = target_dir().join(match profile {
        Profile::Release => "release",
        Profile::Debug => "debug",
    });
    Ok(BINARIES.iter().map(|(_, bin)| dir.join(bin)).collect())
}

/// What [`write_archive`] wrote: each layer's files (path in the image, size), the
/// config's digest (the image ID), the platform, and the archive's size.
#[derive(Debug)]
pub struct Written {
    pub libraries: Vec<(String, u64)>,
    pub binaries: Vec<(String, u64)>,
    pub config_digest: String,
    pub platform: (String, String),
    pub archive_size: u64,
}

/// Writes the OCI archive of `binaries` (placed in /usr/local/bin) and the libraries
/// they load to `out` (through a temporary file renamed into place).
pub fn write_archive(
    binaries: &[PathBuf],
    profile: Profile,
    out: &Path,
) -> anyhow::Result<Written> {
    let time = BuildTime::of_head()?;
    let mut libraries = BTreeMap::new();
    for binary in binaries {
        for library in shared_libraries(binary)? {
            let content = std::fs::read(&library)
                .with_context(|| format!("reading {}", library.display()))?;
            let path = in_image(&library)?;
            libraries.insert(path, (content, mode_of(&library)?));
        }
    }
    let mut programs = BTreeMap::new();
    for binary in binaries {
        let name = binary
            .file_name()
            .with_context(|| format!("{} has no file name", binary.display()))?
            .to_string_lossy()
            .into_owned();
        let content = match profile {
            Profile::Release => std::fs::read(binary),
            Profile::Debug => strip_debug(binary),
        }
        .with_context(|| format!("reading {}", binary.display()))?;
        programs.insert(format!("{BIN_DIR}/{name}"), (content, 0o755));
    }
    let library_layer = layer_tar(&libraries, time.epoch)?;
    let binary_layer = layer_tar(&programs, time.epoch)?;
    let arch = oci_arch(std::env::consts::ARCH).to_owned();
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    let labels = json!({
        "org.opencontainers.image.title": "netfence",
        "org.opencontainers.image.description": "netfence agent: enforces Kubernetes NetworkPolicy with eBPF TC programs",
        "org.opencontainers.image.version": VERSION,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": time.rfc3339,
    });
    let config = json!({
        "created": time.rfc3339,
        "architecture": arch,
        "os": "linux",
        "config": {
            // Root inside the container: Kubernetes adds capabilities (BPF, NET_ADMIN,
            // PERFMON in deploy/daemonset.yaml) to UID 0 only.
            "User": "0:0",
            "Env": ["PATH=/usr/local/bin"],
            "Entrypoint": [ENTRYPOINT],
            "Cmd": ["run", "--bridge", "cni0"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [sha256(&library_layer), sha256(&binary_layer)],
        },
        "history": [
            {"created": time.rfc3339, "created_by": "cargo xtask image: the dynamic loader and the libraries ldd names, from the build machine"},
            {"created": time.rfc3339, "created_by": format!("cargo xtask image: netfence and netfence-cni ({})", match profile {
                Profile::Release => "cargo build --release",
                Profile::Debug => "cargo build, debug info stripped",
            })},
        ],
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config),
        "layers": [descriptor(MEDIA_LAYER, &library_layer), descriptor(MEDIA_LAYER, &binary_layer)],
        "annotations": labels,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let mut manifest_descriptor = descriptor(MEDIA_MANIFEST, &manifest);
    manifest_descriptor["platform"] = json!({"architecture": arch, "os": "linux"});
    manifest_descriptor["annotations"] = json!({
        // The full name: podman load and containerd (`ctr images import`) name the
        // image from these.
        "org.opencontainers.image.ref.name": reference(),
        "io.containerd.image.name": reference(),
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [manifest_descriptor],
    }))?;

    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    files.insert(
        "oci-layout".into(),
        (br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(), 0o644),
    );
    files.insert("index.json".into(), (index, 0o644));
    let config_digest = sha256(&config);
    for blob in [config, manifest, library_layer, binary_layer] {
        let hex = sha256(&blob).trim_start_matches("sha256:").to_owned();
        files.insert(format!("blobs/sha256/{hex}"), (blob, 0o644));
    }
    let archive = layer_tar(&files, time.epoch)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &archive).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    let sizes = |files: &BTreeMap<String, (Vec<u8>, u32)>| {
        files
            .iter()
            .map(|(path, (content, _))| (path.clone(), content.len() as u64))
            .collect()
    };
    Ok(Written {
        libraries: sizes(&libraries),
        binaries: sizes(&programs),
        config_digest,
        platform: ("linux".into(), arch),
        archive_size: archive.len() as u64,
    })
}

/// The files `binary` loads at start, as `ldd` names them: the dynamic loader and
/// each shared library (not the vDSO, which the kernel maps). A library `ldd` cannot
/// find is an error; a static binary has none.
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!(
            "ldd {} failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", binary.display()))
}

fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, the loader as
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`, the vDSO as `linux-vdso.so.1 (0x...)`.
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("{} not found", name.trim());
                }
                target
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            found.push(PathBuf::from(path));
        }
    }
    Ok(found)
}

/// A host path as a path in the image (no leading `/`), checked to be plain.
fn in_image(path: &Path) -> anyhow::Result<String> {
    let text = path.to_string_lossy();
    match text.strip_prefix('/') {
        Some(rest)
            if !rest
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..") =>
        {
            Ok(rest.to_owned())
        }
        _ => bail!("{} is not a plain absolute path", path.display()),
    }
}

fn mode_of(path: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(meta.permissions().mode() & 0o777)
}

/// The binary without its debug sections (`strip --strip-debug`, symbols kept: a
/// backtrace still names functions). The embedded BPF object is data and stays.
fn strip_debug(binary: &Path) -> std::io::Result<Vec<u8>> {
    let dir = target_dir().join("image/stripped");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(binary.file_name().unwrap_or_default());
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .stdin(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "strip --strip-debug {}: {status}",
            binary.display()
        )));
    }
    std::fs::read(out)
}

/// A tar of `files` (path → content, mode) with a directory entry before each
/// directory's first file; owner root, `mtime` everywhere, sorted: deterministic.
fn layer_tar(files: &BTreeMap<String, (Vec<u8>, u32)>, mtime: u64) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs_done: Vec<String> = Vec::new();
    for (path, (content, mode)) in files {
        let mut dir = String::new();
        for component in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            dir.push_str(component);
            dir.push('/');
            if !dirs_done.contains(&dir) {
                let mut header = tar::Header::new_ustar();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                owned_by_root(&mut header, mtime);
                builder.append_data(&mut header, &dir, std::io::empty())?;
                dirs_done.push(dir.clone());
            }
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(*mode);
        header.set_size(content.len() as u64);
        owned_by_root(&mut header, mtime);
        builder.append_data(&mut header, path, content.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

fn owned_by_root(header: &mut tar::Header, mtime: u64) {
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(blob), "size": blob.len()})
}

fn sha256(blob: &[u8]) -> String {
    let digest = Sha256::digest(blob);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Go's architecture names, which OCI uses.
pub fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The commit time of HEAD (`SOURCE_DATE_EPOCH` wins when set): the image's
/// `created` and every file's mtime.
struct BuildTime {
    epoch: u64,
    rfc3339: String,
}

impl BuildTime {
    fn of_head() -> anyhow::Result<BuildTime> {
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(value) => value
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={value} is not a number"))?,
            Err(_) => git(&["log", "-1", "--format=%ct"])?
                .parse()
                .context("git log -1 --format=%ct")?,
        };
        let out = Command::new("date")
            .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .stdin(Stdio::null())
            .output()
            .context("running date")?;
        let rfc3339 = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || rfc3339.is_empty() {
            bail!("date -u -d @{epoch} failed");
        }
        Ok(BuildTime { epoch, rfc3339 })
    }
}

fn git(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// deploy/ runs the image this task builds.
    #[test]
    fn the_kustomization_names_the_image_this_builds() {
        let path = repo_root().join("deploy/kustomization.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap_or_default();
        let image = &doc["images"][0];
        assert_eq!(
            image["name"].as_str(),
            Some("netfence"),
            "{}",
            path.display()
        );
        assert_eq!(
            format!(
                "{}:{}",
                image["newName"].as_str().unwrap_or_default(),
                image["newTag"].as_str().unwrap_or_default()
            ),
            reference()
        );
    }

    #[test]
    fn ldd_output_gives_the_loader_and_the_libraries() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f38)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f37)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f38)\n";
        assert_eq!(
            parse_ldd(text).unwrap_or_default(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn layers_are_deterministic_with_directories_first() {
        let mut files = BTreeMap::new();
        files.insert("usr/local/bin/a".to_owned(), (b"x".to_vec(), 0o755));
        files.insert("lib64/b".to_owned(), (b"yy".to_vec(), 0o644));
        let tar = layer_tar(&files, 1_700_000_000).unwrap_or_default();
        assert_eq!(tar, layer_tar(&files, 1_700_000_000).unwrap_or_default());
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let header = e.header();
                (
                    e.path()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    header.mode().unwrap_or_default(),
                    header.uid().unwrap_or(1),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("lib64/".to_owned(), 0o755, 0),
                ("lib64/b".to_owned(), 0o644, 0),
                ("usr/".to_owned(), 0o755, 0),
                ("usr/local/".to_owned(), 0o755, 0),
                ("usr/local/bin/".to_owned(), 0o755, 0),
                ("usr/local/bin/a".to_owned(), 0o755, 0),
            ]
        );
    }
}
