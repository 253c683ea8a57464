//! The CNI parts of the command line: `netfence cni-install` (the DaemonSet's init
//! container) and the flags `netfence uninstall` uses to reverse it.

use std::path::PathBuf;
use std::process::ExitCode;

use super::install::{self, InstallError};

#[derive(Debug, clap::Args)]
pub struct CniInstallArgs {
    /// The CNI binary directory (the host's /opt/cni/bin, mounted).
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The CNI configuration directory (the host's /etc/cni/net.d, mounted).
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The conflist to chain into (a file name in --conf-dir). Default: the one
    /// conflist whose plugins include type "flannel".
    #[arg(long, value_name = "NAME")]
    pub conflist: Option<String>,
    /// The plugin binary to install. Default: `netfence-cni` beside this executable.
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,
    /// The agent's socket, as the plugin's `socketPath` (the host path: the plugin runs
    /// on the host).
    #[arg(long, value_name = "PATH", default_value = netfence_cni::spec::DEFAULT_SOCKET_PATH)]
    pub socket_path: PathBuf,
    /// The plugin's `timeoutSeconds`: how long a pod's ADD waits for the agent.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub timeout_seconds: u32,
    /// The plugin's `failClosed`: with `false`, ADD passes (with a warning) when the
    /// agent is down or slow, and the pod starts without waiting for enforcement.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub fail_closed: bool,
}

/// `netfence run`'s flags for keeping the plugin chained (`--cni-conf-dir`): the entry
/// it writes is `cni-install`'s, with `socketPath` = `--cni-socket` (the same path
/// on the host and in the agent's container).
#[derive(Debug, clap::Args)]
pub struct CniRunArgs {
    /// Keep netfence-cni chained last in the Flannel conflist of this directory (the
    /// host's /etc/cni/net.d, mounted) while the agent runs: when Flannel rewrites its
    /// conflist without the entry, it is put back within a second. Off by default.
    #[arg(long = "cni-conf-dir", value_name = "DIR")]
    pub conf_dir: Option<PathBuf>,
    /// The entry's `timeoutSeconds` (as `cni-install --timeout-seconds`).
    #[arg(long = "cni-timeout-seconds", value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub timeout_seconds: u32,
    /// The entry's `failClosed` (as `cni-install --fail-closed`).
    #[arg(long = "cni-fail-closed", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub fail_closed: bool,
    /// The container runtime's CNI result cache (libcni's, as containerd and CRI-O
    /// write it; the host's, mounted): its ADD results bind pod addresses to their
    /// host veths like netfence-cni's ADDs (for pods ADDed before netfence-cni was
    /// chained, or while the agent was down). Read every second. An empty value
    /// disables it.
    #[arg(long = "cni-cache-dir", value_name = "DIR", default_value = super::cache::DEFAULT_CACHE_DIR)]
    pub cache_dir: String,
    /// `--cni-lease-seconds`, `--daemonset`, `--daemonset-kubeconfig` (boxed: `run`'s
    /// arguments stay small).
    #[command(flatten)]
    pub removal: Box<RemovalArgs>,
}

/// `netfence run`'s flags for safe removal ([`super::removal`]).
#[derive(Debug, clap::Args)]
pub struct RemovalArgs {
    /// How long netfence-cni keeps failing closed after the agent last ran: the lease
    /// the agent renews beside its socket (`cni.lease.json`) while it runs, and
    /// writes once more on SIGTERM for a restart. An ADD the agent does not answer
    /// fails (and is retried) while the lease is fresh, and passes with a warning once
    /// it expired (netfence removed, or its agent down for longer).
    #[arg(long = "cni-lease-seconds", value_name = "SECONDS", default_value_t = super::removal::DEFAULT_LEASE_SECONDS, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub lease_seconds: u32,
    /// The DaemonSet this agent runs in (deploy/ sets it). On SIGTERM the agent asks
    /// the API server whether that DaemonSet or its namespace is being deleted (or
    /// its access was revoked with them): then it is an uninstall, and the agent takes
    /// netfence-cni out of the conflists in --cni-conf-dir, expires its lease and
    /// removes its pinned state; otherwise (a restart, an upgrade) everything stays.
    #[arg(long = "daemonset", value_name = "NAMESPACE/NAME")]
    pub daemonset: Option<super::removal::DaemonSetRef>,
    /// Ask about --daemonset through this kubeconfig instead of --kubeconfig or the
    /// in-cluster service account (e.g. when running with --manifests).
    #[arg(
        long = "daemonset-kubeconfig",
        value_name = "FILE",
        requires = "daemonset"
    )]
    pub daemonset_kubeconfig: Option<PathBuf>,
}

/// Installs the binary, then chains it into the Flannel conflist.
pub fn run(args: &CniInstallArgs) -> anyhow::Result<ExitCode> {
    let plugin = match &args.plugin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|dir| dir.join(install::PLUGIN_TYPE))
            .ok_or_else(|| {
                anyhow::anyhow!("this executable has no directory; give --plugin PATH")
            })?,
    };
    let copied = install::install_binary(&plugin, &args.bin_dir)?;
    let conflist = install::flannel_conflist(&args.conf_dir, args.conflist.as_deref())?;
    let entry = install::plugin_entry(&args.socket_path, args.timeout_seconds, args.fail_closed);
    let rewritten = install::add_to_conflist(&conflist, &entry)?;
    println!(
        "netfence-cni: binary {} in {}; {} {}",
        if copied {
            "installed"
        } else {
            "already current"
        },
        args.bin_dir.display(),
        conflist.display(),
        if rewritten {
            "now chains netfence-cni last"
        } else {
            "already chains netfence-cni"
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// What `netfence uninstall --cni-conf-dir/--cni-bin-dir` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub conflists: Vec<PathBuf>,
    pub binary: bool,
}

/// Removes the plugin's entries from every conflist in `conf_dir` and its binary
/// from `bin_dir` (each only when given). Idempotent.
pub fn uninstall(
    conf_dir: Option<&std::path::Path>,
    bin_dir: Option<&std::path::Path>,
) -> Result<Removed, InstallError> {
    // Conflists first: a runtime must not call a plugin that is gone.
    let conflists = match conf_dir {
        Some(dir) => install::remove_from_conflists(dir)?,
        None => Vec::new(),
    };
    let binary = match bin_dir {
        Some(dir) => install::remove_binary(dir)?,
        None => false,
    };
    Ok(Removed { conflists, binary })
}
