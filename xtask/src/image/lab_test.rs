//! The image run with podman as the DaemonSet runs it, in a lab node (needs root and
//! podman, which `cargo xtask setup` installs). The image is written by the same code
//! as `cargo xtask image`, from the debug build (debug info stripped: no release build
//! in the test). Its archive is checked first: the layers hold exactly the two
//! binaries and the files `ldd` names for them, the config runs `netfence` as root.
//!
//! Then `deploy/daemonset.yaml` is read, not restated: the init container and the
//! agent run with its args, env, read-only root, no new privileges, `--cap-drop ALL`
//! plus its `capabilities.add`, its volume mounts (each hostPath mapped to a directory
//! of the test, `/sys/fs/bpf` to a bpffs of its own) and, for the agent, the Localhost
//! seccomp profile `deploy/seccomp/` ships (Debian 12's default profile denies bpf(2)
//! without CAP_SYS_ADMIN). hostNetwork is the lab node's namespace (`--network
//! ns:/run/netns/NODE`). The only departure: the lab has no API server, so the agent
//! also gets `--manifests` (the demo's directory, mounted read-only).
//!
//! The demo's probes run twice: without the agent (control: every one passes) and
//! with the container enforcing (each verdict as the demo's table says).
//!
//! podman runs inside a mount namespace of the test's own (a holder process, killed by
//! its PID), with its storage, run root and logs in the bed's directory: nothing of
//! the machine's podman is touched. On a hybrid cgroup host (cgroup v1 controllers,
//! an empty cgroup2 on /sys/fs/cgroup/unified, as in this sandbox) crun refuses to
//! start, so in that namespace the cgroup2 hierarchy is bound on /sys/fs/cgroup, and
//! containers run with `--cgroups=disabled`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

use super::*;
use crate::demo::{Lab, describe, expected_counts};

#[test]
fn the_image_enforces_the_demo_as_the_daemonset_runs_it() {
    netfence_testbed::require_root().unwrap();
    assert!(
        podman_present(),
        "this test runs the image with podman: `cargo xtask setup` installs it"
    );
    let binaries = build(Profile::Debug).unwrap();
    let lab = Lab::build("nfi").unwrap_or_else(|e| panic!("building the demo: {e:#}"));
    let bed = &lab.bed;
    let archive = bed.scratch("netfence.oci.tar");
    write_archive(&binaries, Profile::Debug, &archive).unwrap();
    let layers = check_archive(&archive, &binaries, &bed.scratch("archive"));

    // Control: with no agent every probe of the table passes.
    let (rows, allowed) = expected_counts();
    let mut blocked = Vec::new();
    lab.probe_all(|row, observed| {
        if !observed {
            blocked.push(describe(row));
        }
        Ok(())
    })
    .unwrap();
    assert!(blocked.is_empty(), "without netfence, blocked: {blocked:?}");

    let daemonset = DaemonSet::read();
    let podman = Podman::start(bed.scratch("podman")).unwrap();
    let loaded = podman.ok(&["load", "-i", &archive.to_string_lossy()]);
    assert!(
        loaded.contains(&format!("Loaded image: {}", reference())),
        "{loaded}"
    );

    // The DaemonSet's hostPath volumes, mapped to the test's own directories.
    let host = HostDirs::new(bed, &podman);
    std::fs::write(host.cni_conf.join("10-flannel.conflist"), FLANNEL_CONFLIST).unwrap();

    // The init container: installs netfence-cni and chains it in Flannel's conflist.
    let init = podman.run(
        &daemonset.container("initContainers", "cni-install"),
        &host,
        bed,
        &[],
    );
    let init_out = podman.wait(&init);
    assert_eq!(
        init_out.0, 0,
        "cni-install exited {}: {}",
        init_out.0, init_out.1
    );
    assert_eq!(
        std::fs::read(host.cni_bin.join("netfence-cni")).unwrap(),
        std::fs::read(layers.join(BIN_DIR).join("netfence-cni")).unwrap(),
        "cni-install copies the image's netfence-cni to the host"
    );
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(host.cni_conf.join("10-flannel.conflist")).unwrap())
            .unwrap();
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["flannel", "portmap", "netfence-cni"]);

    // The agent under the runtime's own default seccomp profile instead of
    // deploy/seccomp's: Debian 12's (containers-common 0.50) denies bpf(2) without
    // CAP_SYS_ADMIN, and the agent exits saying so; under a runtime whose default
    // allows bpf(2) with CAP_BPF (containers/common >= 0.60) it starts.
    let mut runtime_default = daemonset.container("containers", "agent");
    runtime_default.name = "agent-runtime-default".into();
    runtime_default.seccomp = None;
    let first = podman.run(&runtime_default, &host, bed, &["--manifests", MANIFESTS]);
    match first.wait_ready_or_exit(&podman) {
        None => {
            println!("this runtime's default seccomp profile allows bpf(2) with CAP_BPF");
            podman.ok(&["stop", "--time", "10", &first.id]);
        }
        Some(code) => {
            assert_eq!(code, 1, "{}", first.log());
            assert!(
                first
                    .log()
                    .contains("bpf(2) is denied by this container's seccomp profile"),
                "{}",
                first.log()
            );
            println!("this runtime's default seccomp profile denies bpf(2): the agent said so");
        }
    }
    drop(first);

    // The agent, enforcing the demo's manifests on the lab node.
    let agent = podman.run(
        &daemonset.container("containers", "agent"),
        &host,
        bed,
        &["--manifests", MANIFESTS],
    );
    agent.wait_ready(&podman);
    let mut wrong = Vec::new();
    let mut denied = 0;
    lab.probe_all(|row, observed| {
        denied += usize::from(!observed);
        if observed != row.3 {
            wrong.push(format!(
                "{}: expected {}, observed {}",
                describe(row),
                row.3,
                observed
            ));
        }
        Ok(())
    })
    .unwrap();
    assert!(
        wrong.is_empty(),
        "the image's verdicts differ from the demo's: {wrong:#?}\n{}",
        agent.log()
    );
    assert_eq!(denied, rows - allowed);
    assert!(
        host.run.join("cni.sock").exists(),
        "the agent serves netfence-cni on /run/netfence (the run volume)"
    );
    // SIGTERM, as the kubelet stops it: a clean exit within the grace period.
    let grace = daemonset.grace_seconds().to_string();
    podman.ok(&["stop", "--time", &grace, &agent.id]);
    let (code, _) = podman.wait(&agent);
    assert_eq!(
        code,
        0,
        "the agent's exit status on SIGTERM\n{}",
        agent.log()
    );
}

/// Where the lab mounts the demo's manifests in the agent container.
const MANIFESTS: &str = "/etc/netfence/manifests";

const FLANNEL_CONFLIST: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

/// Unpacks the archive into `dir` and checks it: the index names the image
/// `localhost/netfence:<version>`, each blob's digest is its name, the config's
/// diff_ids are the layers', the config runs `/usr/local/bin/netfence` as 0:0, and the
/// layers hold exactly the binaries and the files ldd names (no shell, nothing else).
/// Returns a directory with the layers unpacked.
fn check_archive(archive: &Path, binaries: &[PathBuf], dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    tar(&[
        "-xf",
        &archive.to_string_lossy(),
        "-C",
        &dir.to_string_lossy(),
    ]);
    let blob = |digest: &str| {
        let path = dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            sha256(&bytes),
            digest,
            "{} holds another digest",
            path.display()
        );
        bytes
    };
    let json = |bytes: &[u8]| -> Value { serde_json::from_slice(bytes).unwrap() };
    let index = json(&std::fs::read(dir.join("index.json")).unwrap());
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        reference()
    );
    let manifest = json(&blob(entry["digest"].as_str().unwrap()));
    let config = json(&blob(manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], oci_arch(std::env::consts::ARCH));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!([ENTRYPOINT])
    );
    assert_eq!(config["config"]["User"], "0:0");
    let layers_dir = dir.join("rootfs");
    std::fs::create_dir_all(&layers_dir).unwrap();
    let mut files = BTreeSet::new();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (layer, diff_id) in layers
        .iter()
        .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
    {
        assert_eq!(layer["mediaType"], MEDIA_LAYER);
        assert_eq!(
            layer["digest"], *diff_id,
            "uncompressed: the digest is the diff_id"
        );
        let bytes = blob(layer["digest"].as_str().unwrap());
        let mut tar = tar::Archive::new(bytes.as_slice());
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            assert_eq!(entry.header().uid().unwrap(), 0);
            if entry.header().entry_type() == tar::EntryType::Regular {
                files.insert(entry.path().unwrap().to_string_lossy().into_owned());
            } else {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Directory);
            }
            entry.unpack_in(&layers_dir).unwrap();
        }
    }
    let mut expected: BTreeSet<String> = BINARIES
        .iter()
        .map(|(_, bin)| format!("{BIN_DIR}/{bin}"))
        .collect();
    for binary in binaries {
        for library in shared_libraries(binary).unwrap() {
            expected.insert(in_image(&library).unwrap());
        }
    }
    assert_eq!(files, expected);
    assert!(
        expected.iter().any(|f| f.contains("libc.so")),
        "{expected:?}"
    );
    layers_dir
}

fn tar(args: &[&str]) {
    let status = Command::new("tar").args(args).status().unwrap();
    assert!(status.success(), "tar {args:?}: {status}");
}

/// `deploy/daemonset.yaml`, read.
struct DaemonSet {
    pod: Yaml,
}

/// A container of the DaemonSet, as the test runs it.
struct Spec {
    name: String,
    args: Vec<String>,
    env: Vec<String>,
    read_only_root: bool,
    no_new_privileges: bool,
    cap_drop: Vec<String>,
    cap_add: Vec<String>,
    /// A Localhost profile under deploy/seccomp, or None for RuntimeDefault.
    seccomp: Option<PathBuf>,
    /// hostPath, mountPath, readOnly, mountPropagation.
    mounts: Vec<(String, String, bool, Option<String>)>,
}

impl DaemonSet {
    fn read() -> DaemonSet {
        let path = repo_root().join("deploy/daemonset.yaml");
        let doc: Yaml = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let pod = doc["spec"]["template"]["spec"].clone();
        assert_eq!(
            pod["hostNetwork"],
            Yaml::Bool(true),
            "the agent runs in the node's network namespace"
        );
        DaemonSet { pod }
    }

    fn grace_seconds(&self) -> u64 {
        self.pod["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30)
    }

    fn container(&self, list: &str, name: &str) -> Spec {
        let container = self.pod[list]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {list} {name} in deploy/daemonset.yaml"))
            .clone();
        assert_eq!(container["image"].as_str(), Some("netfence"));
        let strings = |value: &Yaml| -> Vec<String> {
            value
                .as_sequence()
                .map(|s| {
                    s.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let security = &container["securityContext"];
        assert_ne!(security["privileged"], Yaml::Bool(true));
        let seccomp = match security["seccompProfile"]["type"].as_str() {
            Some("RuntimeDefault") if name == "agent" => Some(seccomp_overlay_profile()),
            Some("RuntimeDefault") => None,
            other => panic!("{name}: seccompProfile {other:?} is not handled by this test"),
        };
        let volumes = self.pod["volumes"].as_sequence().unwrap();
        let mounts = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| {
                let volume = volumes
                    .iter()
                    .find(|v| v["name"] == m["name"])
                    .unwrap_or_else(|| panic!("no volume {:?}", m["name"]));
                (
                    volume["hostPath"]["path"].as_str().unwrap().to_owned(),
                    m["mountPath"].as_str().unwrap().to_owned(),
                    m["readOnly"].as_bool().unwrap_or(false),
                    m["mountPropagation"].as_str().map(str::to_owned),
                )
            })
            .collect();
        Spec {
            name: name.to_owned(),
            args: strings(&container["args"]),
            env: container["env"]
                .as_sequence()
                .map(|e| {
                    e.iter()
                        .filter_map(|v| v["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            read_only_root: security["readOnlyRootFilesystem"] == Yaml::Bool(true),
            no_new_privileges: security["allowPrivilegeEscalation"] == Yaml::Bool(false),
            cap_drop: strings(&security["capabilities"]["drop"]),
            cap_add: strings(&security["capabilities"]["add"]),
            seccomp,
            mounts,
        }
    }
}

/// The profile of `deploy/seccomp/` (its kustomization patches the agent to
/// `Localhost` with that file): the one runtimes older than containers/common 0.60
/// need, Debian 12's podman among them.
fn seccomp_overlay_profile() -> PathBuf {
    let dir = repo_root().join("deploy/seccomp");
    let overlay = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let doc: Yaml = serde_yaml_ng::from_str(&overlay).unwrap();
    let patch: Yaml =
        serde_yaml_ng::from_str(doc["patches"][0]["patch"].as_str().unwrap()).unwrap();
    let value = &patch[0]["value"];
    assert_eq!(value["type"].as_str(), Some("Localhost"));
    dir.join(value["localhostProfile"].as_str().unwrap())
}

/// The test's stand-ins for the node's hostPath directories.
struct HostDirs {
    root: PathBuf,
    bpffs: PathBuf,
    run: PathBuf,
    cni_conf: PathBuf,
    cni_bin: PathBuf,
    netns: PathBuf,
}

impl HostDirs {
    fn new(bed: &netfence_testbed::TestBed, podman: &Podman) -> HostDirs {
        let root = bed.scratch("host");
        let dirs = HostDirs {
            bpffs: root.join("sys/fs/bpf"),
            run: root.join("run/netfence"),
            cni_conf: root.join("etc/cni/net.d"),
            cni_bin: root.join("opt/cni/bin"),
            netns: root.join("run/netns"),
            root,
        };
        for dir in [
            &dirs.bpffs,
            &dirs.run,
            &dirs.cni_conf,
            &dirs.cni_bin,
            &dirs.netns,
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        // A bpffs of the test's own, in podman's mount namespace only (gone with it).
        podman.nsenter(&["mount", "-t", "bpf", "bpf", &dirs.bpffs.to_string_lossy()]);
        dirs
    }

    /// The test's directory for the node's `host_path`.
    fn map(&self, host_path: &str, bed: &netfence_testbed::TestBed) -> PathBuf {
        match host_path {
            "/sys/fs/bpf" => self.bpffs.clone(),
            "/run/netfence" => self.run.clone(),
            "/etc/cni/net.d" => self.cni_conf.clone(),
            "/opt/cni/bin" => self.cni_bin.clone(),
            "/run/netns" => self.netns.clone(),
            // The lab runtime's CNI result cache, as on a node.
            "/var/lib/cni/results" => bed.cni_cache_dir(),
            other => panic!(
                "deploy/daemonset.yaml mounts {other}, which this test does not map (under {})",
                self.root.display()
            ),
        }
    }
}

/// podman in a mount namespace of the test's own, with its own storage.
struct Podman {
    holder: Child,
    dir: PathBuf,
}

/// A container the test started, removed (`podman rm -f` by its ID) on drop.
struct Container<'a> {
    podman: &'a Podman,
    id: String,
    log: PathBuf,
}

const POLL: Duration = Duration::from_millis(100);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Podman {
    fn start(dir: PathBuf) -> anyhow::Result<Podman> {
        std::fs::create_dir_all(&dir)?;
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()?;
        let podman = Podman { holder, dir };
        // unshare execs sleep once the namespace is made: wait for the new one.
        let own = std::fs::read_link("/proc/self/ns/mnt")?;
        let theirs = format!("/proc/{}/ns/mnt", podman.holder.id());
        let start = Instant::now();
        for _ in 0..100 {
            if std::fs::read_link(&theirs).is_ok_and(|ns| ns != own) {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(5),
                "unshare made no namespace"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // crun 1.8 refuses hybrid cgroups when the cgroup2 mount has controllers.
        let unified = Path::new("/sys/fs/cgroup/unified");
        if unified.join("cgroup.controllers").exists() {
            podman.nsenter(&[
                "mount",
                "--bind",
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup",
            ]);
        }
        Ok(podman)
    }

    fn nsenter(&self, args: &[&str]) -> Output {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success() || args[0] == "podman",
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `podman ARGS` with the test's storage; its output.
    fn podman(&self, args: &[&str]) -> Output {
        let d = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
        let (root, runroot, tmp) = (d("root"), d("runroot"), d("tmp"));
        let mut all = vec![
            "podman",
            "--root",
            &root,
            "--runroot",
            &runroot,
            "--tmpdir",
            &tmp,
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ];
        all.extend_from_slice(args);
        self.nsenter(&all)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `spec` detached, as the kubelet would from the DaemonSet, on the lab
    /// node's network namespace; `extra` arguments follow the DaemonSet's.
    fn run(
        &self,
        spec: &Spec,
        host: &HostDirs,
        bed: &netfence_testbed::TestBed,
        extra: &[&str],
    ) -> Container<'_> {
        let log = self.dir.join(format!("{}.log", spec.name));
        let mut args: Vec<String> = vec!["run".into(), "--detach".into()];
        // The lab's limits: without CAP_SYS_RESOURCE (this sandbox) crun fails to set
        // podman's defaults, so ask for values under this process's own hard limits
        // (a node's runtime sets its own; the DaemonSet asks for none).
        args.extend([
            "--cgroups=disabled".into(),
            "--ulimit".into(),
            format!("nofile={0}:{0}", hard_limit(libc::RLIMIT_NOFILE)),
        ]);
        args.extend(["--ulimit".into(), "nproc=4096:4096".into()]);
        args.extend([
            "--log-driver".into(),
            "k8s-file".into(),
            "--log-opt".into(),
            format!("path={}", log.display()),
        ]);
        args.push(format!("--network=ns:/run/netns/{}", bed.node().name()));
        if spec.read_only_root {
            // Kubernetes mounts no tmpfs on /run, /tmp, /var/tmp: neither does this.
            args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        if spec.no_new_privileges {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        for cap in &spec.cap_drop {
            args.extend(["--cap-drop".into(), cap.clone()]);
        }
        for cap in &spec.cap_add {
            args.extend(["--cap-add".into(), format!("CAP_{cap}")]);
        }
        if let Some(profile) = &spec.seccomp {
            args.extend([
                "--security-opt".into(),
                format!("seccomp={}", profile.display()),
            ]);
        }
        for (host_path, mount_path, read_only, propagation) in &spec.mounts {
            let mut options = vec![if *read_only { "ro" } else { "rw" }];
            match propagation.as_deref() {
                None | Some("None") => {}
                Some("HostToContainer") => options.push("rslave"),
                Some(other) => panic!("mountPropagation {other} is not handled by this test"),
            }
            args.extend([
                "--volume".into(),
                format!(
                    "{}:{mount_path}:{}",
                    host.map(host_path, bed).display(),
                    options.join(",")
                ),
            ]);
        }
        for name in &spec.env {
            assert_eq!(name, "NODE_NAME", "an env var this test does not know");
            args.extend([
                "--env".into(),
                format!("NODE_NAME={}", netfence_testbed::NODE_NAME),
            ]);
        }
        if !extra.is_empty() {
            args.extend([
                "--volume".into(),
                format!("{}:{MANIFESTS}:ro", bed.manifests().display()),
            ]);
        }
        args.push(reference());
        args.extend(spec.args.iter().cloned());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = self.ok(&refs).trim().to_owned();
        assert!(!id.is_empty());
        Container {
            podman: self,
            id,
            log,
        }
    }

    /// Waits (bounded) for the container to exit; its exit code and log.
    fn wait(&self, container: &Container) -> (i64, String) {
        let out = self.ok(&["wait", &container.id]);
        (out.trim().parse().unwrap_or(-1), container.log())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of our own unreaped child.
        let pid = self.holder.id() as libc::pid_t;
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = self.holder.wait();
    }
}

impl Container<'_> {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until the agent says it is ready.
    fn wait_ready(&self, podman: &Podman) {
        if let Some(code) = self.wait_ready_or_exit(podman) {
            panic!("the agent container exited ({code}):\n{}", self.log());
        }
    }

    /// Polls until the agent logs that it is ready (None) or its container exits
    /// (Some(exit code)), at most [`READY_TIMEOUT`].
    fn wait_ready_or_exit(&self, podman: &Podman) -> Option<i64> {
        let start = Instant::now();
        for _ in 0..(READY_TIMEOUT.as_millis() / POLL.as_millis()) {
            if self.log().contains("netfence: ready") {
                return None;
            }
            let state = podman.ok(&[
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.ExitCode}}",
                &self.id,
            ]);
            if let Some(("false", code)) = state.trim().split_once(' ') {
                return Some(code.parse().unwrap_or(-1));
            }
            if start.elapsed() > READY_TIMEOUT {
                break;
            }
            std::thread::sleep(POLL);
        }
        panic!(
            "the agent was neither ready nor gone within {READY_TIMEOUT:?}:\n{}",
            self.log()
        );
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let out = self
            .podman
            .podman(&["rm", "--force", "--time", "0", &self.id]);
        if !out.status.success() {
            eprintln!(
                "image test: podman rm -f {}: {}",
                self.id,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if std::thread::panicking() {
            eprintln!(
                "--- container {} log ---\n{}--- end ---",
                self.id,
                self.log()
            );
        }
    }
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    unsafe { libc::getrlimit(resource, &mut limit) };
    limit.rlim_max.min(65_536)
}
