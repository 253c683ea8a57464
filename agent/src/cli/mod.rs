//! The `netfence` command line: argument types (clap derive) and one module per
//! subcommand; `run`'s enforcer is `crate::enforcer`.

pub mod compile;
pub mod explain;
pub mod input;
pub mod live;
pub mod output;
pub mod policies;
pub mod status;
pub mod uninstall;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::dataplane::attach::AttachMode;

#[derive(Debug, Parser)]
#[command(
    name = "netfence",
    version,
    about = "Kubernetes NetworkPolicy for plain-veth CNIs, enforced with eBPF"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level on stderr. `RUST_LOG`, when set, wins (it also takes per-module
    /// directives, e.g. `netfence=debug,aya=warn`).
    #[arg(long, global = true, value_enum, env = "NETFENCE_LOG_LEVEL", default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The `tracing` filter directives: `RUST_LOG` when it is set, non-empty and valid,
/// else `--log-level`.
pub fn log_directives(level: LogLevel, rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        Some(env) if !env.is_empty() && tracing_subscriber::EnvFilter::try_new(env).is_ok() => {
            env.to_owned()
        }
        _ => level.as_str().to_owned(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enforce policy on this node until stopped (SIGINT/SIGTERM exit 0 and leave the
    /// pinned enforcement in place unless --detach-on-exit).
    Run(RunArgs),
    /// Compile manifests and print the map contents netfence would enforce (exit 2 on
    /// bad input unless --keep-going).
    Compile(CompileArgs),
    /// Explain the verdict for one connection (exit 0 allowed, 1 denied, 2 bad input),
    /// or print the allow/deny matrix of every pod pair (exit 0), computed through the
    /// compiled image.
    Explain(ExplainArgs),
    /// Which NetworkPolicies select a pod, per direction, and which of its
    /// container ports they open (exit 0; 2 on bad input or an unknown pod).
    Policies(PoliciesArgs),
    /// Show what the pinned state enforces: attachments, map fill, counters, last
    /// sync, and whether the agent runs.
    Status(StatusArgs),
    /// Detach every pinned attachment and remove every pinned map (stop the agent first).
    Uninstall(UninstallArgs),
    /// Install the netfence-cni plugin on this node (the DaemonSet's init container):
    /// copy the binary into the CNI binary directory and chain it last in the Flannel
    /// conflist. Idempotent.
    CniInstall(crate::cni::command::CniInstallArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's pin directory.
    #[arg(long, value_name = "DIR", default_value = crate::dataplane::pin::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The agent's pin directory.
    #[arg(long, value_name = "DIR", default_value = crate::dataplane::pin::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Also remove the netfence-cni entry from every conflist in this CNI
    /// configuration directory (e.g. /etc/cni/net.d).
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Also remove the netfence-cni binary from this CNI binary directory (e.g.
    /// /opt/cni/bin).
    #[arg(long, value_name = "DIR")]
    pub cni_bin_dir: Option<PathBuf>,
    /// The agent's CNI socket (`run --cni-socket`): the pending-pods file and the
    /// lease beside it are removed (and a stale socket file).
    #[arg(long, value_name = "PATH", default_value = netfence_cni::spec::DEFAULT_SOCKET_PATH)]
    pub cni_socket: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// This node's name: pods with this `spec.nodeName` are enforced here.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Directory of Kubernetes manifests (Namespaces, Pods, NetworkPolicies), watched
    /// for changes. Without it (and without --kubeconfig), the Kubernetes API is
    /// watched with the pod's in-cluster service account.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Watch the Kubernetes API through this kubeconfig (its current context).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve /healthz and /readyz on this address. Default: 0.0.0.0:9896 when
    /// watching the Kubernetes API, none with --manifests.
    #[arg(long, value_name = "ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,
    /// Attach to interfaces whose name matches this glob (repeatable), e.g. 'veth*'.
    #[arg(long = "interfaces", value_name = "GLOB")]
    pub interfaces: Vec<String>,
    /// Attach to every port of this bridge, following new ports. Default: `cni0`
    /// (Flannel's bridge) unless --interfaces is given.
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// Let traffic between a local pod and this node's own addresses pass whatever the
    /// policy (kubelet probes, hostNetwork pods on this node): `--allow-node=false`
    /// judges it by ipBlocks like any other address.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub allow_node: bool,
    /// How to attach the TC programs.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
    /// Seconds an idle TCP connection stays in conntrack.
    #[arg(long, default_value_t = 6 * 3600)]
    pub ct_tcp_timeout: u64,
    /// Seconds an idle UDP/SCTP/ICMP flow stays in conntrack.
    #[arg(long, default_value_t = 120)]
    pub ct_other_timeout: u64,
    /// Seconds an idle UDP/SCTP/ICMP flow that has seen no reply stays in conntrack
    /// (an unanswered TCP SYN uses --ct-other-timeout).
    #[arg(long, default_value_t = 30)]
    pub ct_unreplied_timeout: u64,
    /// Also log every allowed new flow (drops are always logged, within
    /// --event-log-lines or --flow-log-rate).
    #[arg(long)]
    pub log_allows: bool,
    /// Write the flow log (drops, and allowed new flows with --log-allows) as JSON
    /// lines to `stdout` or to this file (appended). Without it, flow events go to
    /// the agent's log as text.
    #[arg(long, value_name = "stdout|PATH")]
    pub flow_log: Option<crate::dataplane::flowlog::Target>,
    /// Flow log lines per second at most (bursts up to one second's worth); the
    /// rest are counted (netfence_flow_log_suppressed_total).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub flow_log_rate: u32,
    /// Without --flow-log: flow events (drops, audits, allows with --log-allows)
    /// logged one by one per 10 s at most; the rest are counted per flow (ports
    /// left out) and summarised in one line every 10 s. The exact counts are in
    /// netfence_packets_total.
    #[arg(long, value_name = "N", default_value_t = crate::telemetry::eventlog::DEFAULT_LINES)]
    pub event_log_lines: u32,
    /// Where maps and TCX links are pinned (on a BPF file system; one is mounted at
    /// the parent when it is not). A restarted agent adopts what it finds there.
    #[arg(long, value_name = "DIR", default_value = crate::dataplane::pin::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Detach the programs on SIGTERM/SIGINT. By default they stay attached (pinned)
    /// and keep enforcing the last synced policy until the next agent adopts them.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// What a new flow no rule allows does: `enforce` drops it (except where every
    /// policy isolating the pod in that direction is annotated `netfence.io/mode:
    /// audit`); `audit` lets it pass on every pod, counted and logged as `audit`.
    #[arg(long, value_enum, default_value_t = crate::dataplane::sync::Mode::Enforce)]
    pub mode: crate::dataplane::sync::Mode,
    /// What a policy change does to established connections: `keep` lets them run
    /// until they close (as Calico and Cilium do); `cut` re-checks each one on its next
    /// packet and drops (and forgets) those the new policy denies.
    #[arg(long, value_enum, default_value_t = crate::dataplane::loader::ExistingFlows::Keep)]
    pub existing_flows: crate::dataplane::loader::ExistingFlows,
    /// Serve the netfence-cni plugin on this unix socket (deny until ready: a new pod's
    /// ADD returns once its endpoint is enforced). An empty value disables it.
    #[arg(long, value_name = "PATH", default_value = netfence_cni::spec::DEFAULT_SOCKET_PATH)]
    pub cni_socket: String,
    /// `--cni-conf-dir`, `--cni-timeout-seconds`, `--cni-fail-closed`.
    #[command(flatten)]
    pub cni: crate::cni::command::CniRunArgs,
}

#[derive(Debug, clap::Args)]
pub struct CompileArgs {
    /// `--manifests`, `-f`, `-R`.
    #[command(flatten)]
    pub input: input::InputArgs,
    /// Compile for this node only (default: every pod is local).
    #[arg(long)]
    pub node_name: Option<String>,
    /// text, wide (with identities and ids), json or yaml (names, not numbers).
    #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Text)]
    pub output: output::Format,
    /// Report bad input (broken YAML, invalid objects, unknown fields, duplicates) on
    /// stderr and compile the rest, instead of exiting 2.
    #[arg(long)]
    pub keep_going: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// `--manifests`, `-f`, `-R`.
    #[command(flatten)]
    pub input: input::InputArgs,
    /// Source: NAMESPACE/POD or an IP address.
    #[arg(long, required_unless_present = "matrix", conflicts_with = "matrix")]
    pub from: Option<String>,
    /// Destination: NAMESPACE/POD, svc/NAMESPACE/NAME (the Service's ClusterIP of
    /// each family) or an IP address (a ClusterIP is named by its Service).
    #[arg(long, required_unless_present = "matrix", conflicts_with = "matrix")]
    pub to: Option<String>,
    /// Print the allow/deny table of every pod pair instead.
    #[arg(long)]
    pub matrix: bool,
    /// What-if: with --matrix, print only the pod pairs whose verdict changes when
    /// the objects of FILE are added (an object of the same kind, namespace and name
    /// replaces the one read). Repeatable; `-` for stdin, -R for directories, as -f.
    #[arg(long, value_name = "FILE")]
    pub with: Vec<PathBuf>,
    /// Destination port, 1-65535 (not needed for ICMP).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    #[arg(long, value_enum, ignore_case = true, default_value_t = ExplainProtocol::Tcp)]
    pub protocol: ExplainProtocol,
    /// Address family (default: every family both ends have; the matrix prefers IPv4).
    #[arg(long, value_enum)]
    pub family: Option<Family>,
    /// The node mode to explain, as `netfence run --mode`: `audit` audits every
    /// isolated direction (what no rule allows passes, shown as audited; `A` in the
    /// matrix).
    #[arg(long, value_enum, default_value_t = crate::dataplane::sync::Mode::Enforce)]
    pub mode: crate::dataplane::sync::Mode,
    /// text, wide (with identities and ids), json or yaml (names, not numbers).
    #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Text)]
    pub output: output::Format,
    /// Report bad input (broken YAML, invalid objects, unknown fields, duplicates) on
    /// stderr and answer from the rest, instead of exiting 2.
    #[arg(long)]
    pub keep_going: bool,
}

#[derive(Debug, clap::Args)]
pub struct PoliciesArgs {
    /// The pod: NAMESPACE/POD.
    #[arg(value_name = "NS/POD")]
    pub pod: String,
    /// `--manifests`, `-f`, `-R`.
    #[command(flatten)]
    pub input: input::InputArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Text)]
    pub output: output::Format,
    /// Report bad input on stderr and answer from the rest, instead of exiting 2.
    #[arg(long)]
    pub keep_going: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExplainProtocol {
    Tcp,
    Udp,
    Sctp,
    /// ICMP echo (ICMPv6 for IPv6): allowed only by rules without ports.
    Icmp,
}

impl ExplainProtocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            ExplainProtocol::Tcp => "TCP",
            ExplainProtocol::Udp => "UDP",
            ExplainProtocol::Sctp => "SCTP",
            ExplainProtocol::Icmp => "ICMP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Family {
    #[serde(rename = "IPv4")]
    Ipv4,
    #[serde(rename = "IPv6")]
    Ipv6,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn log_level_defaults_to_info_and_is_global() {
        // NETFENCE_LOG_LEVEL is not set in the test environment.
        assert_eq!(parse(&["netfence", "uninstall"]).log_level, LogLevel::Info);
        assert_eq!(
            parse(&["netfence", "--log-level", "debug", "uninstall"]).log_level,
            LogLevel::Debug
        );
        assert_eq!(
            parse(&["netfence", "status", "--log-level", "warn"]).log_level,
            LogLevel::Warn
        );
        let error = Cli::try_parse_from(["netfence", "--log-level", "loud", "uninstall"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("invalid value 'loud' for '--log-level"),
            "{error}"
        );
        assert!(error.contains("error, warn, info, debug, trace"), "{error}");
    }

    #[test]
    fn explain_port_is_1_to_65535_and_keep_going_is_a_flag() {
        let explain = |port: &str| {
            Cli::try_parse_from([
                "netfence",
                "explain",
                "--manifests",
                "m",
                "--matrix",
                "--port",
                port,
            ])
            .map(|cli| match cli.command {
                Command::Explain(args) => (args.port, args.keep_going),
                other => panic!("{other:?}"),
            })
            .map_err(|e| e.to_string())
        };
        assert_eq!(explain("1"), Ok((Some(1), false)));
        assert_eq!(explain("65535"), Ok((Some(65535), false)));
        for (port, message) in [
            (
                "0",
                "invalid value '0' for '--port <PORT>': 0 is not in 1..=65535",
            ),
            (
                "65536",
                "invalid value '65536' for '--port <PORT>': 65536 is not in 1..=65535",
            ),
            ("-1", "unexpected argument '-1' found"),
            (
                "http",
                "invalid value 'http' for '--port <PORT>': invalid digit found in string",
            ),
        ] {
            let error = explain(port).unwrap_err();
            assert!(error.contains(message), "{port}: {error}");
        }
        let cli = Cli::try_parse_from(["netfence", "compile", "--manifests", "m", "--keep-going"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Compile(CompileArgs {
                keep_going: true,
                ..
            }))
        ));
    }

    #[test]
    fn rust_log_wins_when_set_and_valid() {
        assert_eq!(log_directives(LogLevel::Debug, None), "debug");
        assert_eq!(
            log_directives(LogLevel::Warn, Some("netfence=trace,aya=warn")),
            "netfence=trace,aya=warn"
        );
        assert_eq!(
            log_directives(LogLevel::Warn, Some("  ")),
            "warn",
            "empty RUST_LOG is unset"
        );
        assert_eq!(
            log_directives(LogLevel::Error, Some("netfence=[")),
            "error",
            "invalid RUST_LOG falls back"
        );
    }
}
