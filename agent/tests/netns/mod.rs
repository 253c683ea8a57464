//! Harness for the packet tests: the shared test bed (`netfence-testbed`: node
//! namespace, pod namespaces, kubectl-style manifests, agent guard, probes) bound to the
//! `netfence` binary cargo built for these tests, plus [`Verdicts`], which runs probes
//! and reports every verdict that differs from the expected one at once.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

mod bpffs;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[allow(unused_imports, reason = "only the pin tests use these")]
pub use bpffs::{Bpffs, start_pinned};
pub use netfence_testbed::{Agent, Attach, PodNs, TestBed, UdpOutcome};
use netfence_testbed::{ping, tcp_connects, tcp_via, udp_exchange, udp_via};

/// The agent binary under test.
pub fn netfence_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_netfence"))
}

/// Builds `netfence-cni` (a no-op when fresh: `cargo test` at the root already built
/// it, as a default member; `cargo test -p netfence` does not) and returns the
/// directory holding it, beside `netfence`.
pub fn plugin_dir() -> PathBuf {
    let dir = netfence_bin().parent().unwrap().to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "netfence-cni"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap());
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(status.success(), "cargo build -p netfence-cni: {status}");
    assert!(
        dir.join("netfence-cni").is_file(),
        "no netfence-cni in {}",
        dir.display()
    );
    dir
}

/// A policy isolating pods `app=<app>` of namespace x for `types` (e.g. `[Ingress]`,
/// `[Ingress, Egress]`) with no rule.
pub fn deny_all(app: &str, types: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-{app}
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: {app}
  policyTypes: {types}
"
    )
}

/// A fresh node for one test (names `nft<pid>x<n>-*`). Fails clearly when not root.
pub fn bed() -> TestBed {
    match TestBed::new("nft") {
        Ok(bed) => bed,
        Err(error) => panic!("setting up the test node: {error:#}"),
    }
}

/// Two nodes over VXLAN for one test (`node1`, `node2`; names `nft<pid>x<n>-*`).
pub fn two_nodes() -> TestBed {
    match TestBed::two_nodes("nft") {
        Ok(bed) => bed,
        Err(error) => panic!("setting up the two test nodes: {error:#}"),
    }
}

/// Starts node `number`'s agent on `bed` and waits until it is ready.
pub fn start_on(bed: &TestBed, number: u8, attach: Attach) -> Agent {
    match bed.start_agent_on(number, netfence_bin(), attach) {
        Ok(agent) => agent,
        Err(error) => panic!("starting netfence on node{number}: {error:#}"),
    }
}

/// Starts the agent on `bed` and waits until it is ready.
pub fn start(bed: &TestBed, attach: Attach) -> Agent {
    match bed.start_agent(netfence_bin(), attach) {
        Ok(agent) => agent,
        Err(error) => panic!("starting netfence: {error:#}"),
    }
}

/// Pod `b` of namespace `x` admits only pod `a` (ingress isolated): the policy of
/// the [`abc_pods`] fixture.
pub const B_FROM_A: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-from-a
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: b
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: a
";

/// The fixture many packet tests share: namespace `x` with pods `a`, `b`, `c`
/// (`app: <name>`, hosts 10, 11, 12), written to the manifests with `policy` as
/// `policy.yaml`.
pub fn abc_pods(bed: &mut TestBed, policy: &str) -> [PodNs; 3] {
    bed.namespace("x", &[]);
    let pods = [("a", 10), ("b", 11), ("c", 12)].map(|(name, host)| {
        bed.pod("x", name, &[("app", name)], host, &[])
            .unwrap_or_else(|e| panic!("creating pod {name}: {e:#}"))
    });
    bed.write_cluster()
        .unwrap_or_else(|e| panic!("writing the cluster: {e:#}"));
    bed.write_manifest("policy.yaml", policy)
        .unwrap_or_else(|e| panic!("writing the policy: {e:#}"));
    pods
}

pub const ALLOW: bool = true;
pub const DENY: bool = false;

/// Address family of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

fn target(to: &PodNs, family: Family) -> std::net::IpAddr {
    match family {
        Family::V4 => to.ip4(),
        Family::V6 => to.ip6(),
    }
}

/// Probes with their expected verdicts; [`Verdicts::check`] panics listing every
/// probe whose observed verdict differs.
#[derive(Debug, Default)]
pub struct Verdicts {
    lines: Vec<(String, bool, bool)>,
}

impl Verdicts {
    pub fn new() -> Verdicts {
        Verdicts::default()
    }

    fn record(&mut self, what: String, expected: bool, observed: anyhow::Result<bool>) {
        match observed {
            Ok(observed) => self.lines.push((what, expected, observed)),
            Err(error) => panic!("probe {what} could not run: {error:#}"),
        }
    }

    /// A new TCP connection (handshake plus one request and reply).
    pub fn tcp(&mut self, from: &PodNs, to: &PodNs, port: u16, expected: bool) -> &mut Self {
        self.tcp_family(from, to, port, Family::V4, expected)
    }

    pub fn tcp6(&mut self, from: &PodNs, to: &PodNs, port: u16, expected: bool) -> &mut Self {
        self.tcp_family(from, to, port, Family::V6, expected)
    }

    fn tcp_family(
        &mut self,
        from: &PodNs,
        to: &PodNs,
        port: u16,
        family: Family,
        expected: bool,
    ) -> &mut Self {
        let ip = target(to, family);
        let what = format!("TCP  {} → {} [{ip}]:{port}", from.name, to.name);
        self.record(
            what,
            expected,
            tcp_connects(&from.netns, &to.netns, ip, port),
        );
        self
    }

    /// A UDP request and its reply: `expected` is the verdict of the request; an
    /// arrived request must always get its reply back (conntrack).
    pub fn udp(&mut self, from: &PodNs, to: &PodNs, port: u16, expected: bool) -> &mut Self {
        let ip = to.ip4();
        let outcome = udp_exchange(&from.netns, &to.netns, ip, port);
        let what = format!("UDP  {} → {} [{ip}]:{port}", from.name, to.name);
        self.udp_outcome(what, expected, outcome, "(reply)")
    }

    /// A new TCP connection to `vip:port` (a Service ClusterIP) that the node's DNAT
    /// sends to `backend`, listening on its IPv4 address and `target`.
    pub fn tcp_via(
        &mut self,
        from: &PodNs,
        (vip, port): (std::net::IpAddr, u16),
        (backend, target): (&PodNs, u16),
        expected: bool,
    ) -> &mut Self {
        let what = format!(
            "TCP  {} → {vip}:{port} (backend {}:{target})",
            from.name, backend.name
        );
        let listen = std::net::SocketAddr::new(backend.ip4(), target);
        let connect = std::net::SocketAddr::new(vip, port);
        self.record(
            what,
            expected,
            tcp_via(&from.netns, &backend.netns, listen, connect),
        );
        self
    }

    /// A UDP request to `vip:port` served by `backend` on `target`: `expected` is the
    /// verdict of the request; an arrived request must get its reply back from the VIP.
    pub fn udp_via(
        &mut self,
        from: &PodNs,
        (vip, port): (std::net::IpAddr, u16),
        (backend, target): (&PodNs, u16),
        expected: bool,
    ) -> &mut Self {
        let what = format!(
            "UDP  {} → {vip}:{port} (backend {}:{target})",
            from.name, backend.name
        );
        let listen = std::net::SocketAddr::new(backend.ip4(), target);
        let connect = std::net::SocketAddr::new(vip, port);
        let outcome = udp_via(&from.netns, &backend.netns, listen, connect);
        self.udp_outcome(what, expected, outcome, "(reply from the VIP)")
    }

    /// Records a UDP probe's request verdict and, when the request arrived, its reply.
    fn udp_outcome(
        &mut self,
        what: String,
        expected: bool,
        outcome: anyhow::Result<UdpOutcome>,
        reply: &str,
    ) -> &mut Self {
        match outcome {
            Ok(UdpOutcome {
                request_arrived,
                reply_arrived,
            }) => {
                self.lines.push((what.clone(), expected, request_arrived));
                if request_arrived {
                    self.lines
                        .push((format!("{what} {reply}"), ALLOW, reply_arrived));
                }
            }
            Err(error) => panic!("probe {what} could not run: {error:#}"),
        }
        self
    }

    /// An ICMP echo and its reply.
    pub fn ping(&mut self, from: &PodNs, to: &PodNs, expected: bool) -> &mut Self {
        self.ping_family(from, to, Family::V4, expected)
    }

    pub fn ping6(&mut self, from: &PodNs, to: &PodNs, expected: bool) -> &mut Self {
        self.ping_family(from, to, Family::V6, expected)
    }

    fn ping_family(
        &mut self,
        from: &PodNs,
        to: &PodNs,
        family: Family,
        expected: bool,
    ) -> &mut Self {
        let ip = target(to, family);
        let what = format!("ICMP {} → {} [{ip}]", from.name, to.name);
        self.record(what, expected, ping(&from.netns, ip));
        self
    }

    /// Records a verdict observed some other way.
    pub fn observed(&mut self, what: &str, expected: bool, observed: bool) -> &mut Self {
        self.lines.push((what.to_owned(), expected, observed));
        self
    }

    /// Panics with the whole table if any verdict differs from its expectation.
    pub fn check(&mut self) {
        let word = |allowed: bool| if allowed { "allowed" } else { "denied" };
        let mut table = String::new();
        let mut wrong = 0;
        for (what, expected, observed) in self.lines.drain(..) {
            let mark = if expected == observed { "ok" } else { "WRONG" };
            wrong += usize::from(expected != observed);
            let _ = writeln!(
                table,
                "  {what:<44} expected {:<7} observed {:<7} {mark}",
                word(expected),
                word(observed)
            );
        }
        assert!(
            wrong == 0,
            "{wrong} verdict(s) differ from the policy:\n{table}"
        );
    }
}
