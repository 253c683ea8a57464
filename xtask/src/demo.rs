//! `cargo xtask demo`: the NetworkPolicy example of `deploy/examples/` (namespace
//! `prod` with `web`, `api` and `db`, the Services `api` and `db` in front of them,
//! and a `backup` server outside the cluster) built in network namespaces — a Flannel
//! node with a kube-proxy-like DNAT for the ClusterIPs — enforced by the real
//! `netfence run`, and probed with real connections, to pods and to ClusterIPs. Prints one row per probe and fails if any verdict differs from the
//! policy. Everything it creates (`nfx*` namespaces, a temp directory with the CNI IPAM state) is removed on
//! exit, Ctrl-C included.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use netfence_testbed::{
    Attach, BRIDGE, EndpointSliceSpec, NODE_IP, NODE_NAME, NODE_V4, PodNs, Protocol,
    ServicePortSpec, ServiceSpec, SliceEndpoint, TargetPort, TestBed, Vip, cluster_yaml,
    endpoint_slice_yaml, namespace_spec, ping, pod_spec, service_yaml, tcp_connects, tcp_via,
};

use crate::cmd::{cargo, repo_root, run};
use crate::setup::setup;

/// The example's pods: name, host number (198.18.0.N, fd00:18::N), label, port.
const PODS: [(&str, u8, &str, (&str, u16)); 3] = [
    ("web", 10, "web", ("http", 80)),
    ("api", 11, "api", ("api", 5000)),
    ("db", 12, "db", ("mysql", 3306)),
];
const NAMESPACE: &str = "prod";
/// The backup server: not a pod but a host beyond the node (198.19.1.200), reachable
/// from db through an ipBlock /32.
const BACKUP: (&str, u8) = ("backup", 200);

/// The Services of `deploy/examples/workloads/prod.yaml` (named as the pod they front,
/// same port name and number), with the ClusterIPs the demo gives them.
const SERVICES: [(&str, Ipv4Addr); 2] = [
    ("api", Ipv4Addr::new(198, 19, 128, 11)),
    ("db", Ipv4Addr::new(198, 19, 128, 12)),
];

#[derive(Clone, Copy, Debug)]
pub enum Probe {
    Tcp(u16),
    Icmp,
    /// TCP to the ClusterIP of the Service named as the target pod, on its port.
    Service(u16),
}

const ALLOWED: bool = true;
const DENIED: bool = false;

/// from, to, what, expected verdict.
const PROBES: &[Row] = &[
    ("web", "api", Probe::Tcp(5000), ALLOWED),
    ("web", "api", Probe::Tcp(80), DENIED),
    ("web", "api", Probe::Icmp, DENIED),
    ("api", "db", Probe::Tcp(3306), ALLOWED),
    ("web", "db", Probe::Tcp(3306), DENIED),
    ("backup", "db", Probe::Tcp(3306), DENIED),
    ("db", "backup", Probe::Tcp(873), ALLOWED),
    ("db", "backup", Probe::Tcp(22), DENIED),
    ("db", "web", Probe::Tcp(80), DENIED),
    ("db", "api", Probe::Tcp(5000), DENIED),
    ("api", "web", Probe::Tcp(80), ALLOWED),
    ("backup", "web", Probe::Tcp(80), ALLOWED),
    ("api", "web", Probe::Icmp, ALLOWED),
    // Through the Services' ClusterIPs (kube-proxy's DNAT after netfence's check).
    ("web", "api", Probe::Service(5000), ALLOWED),
    ("web", "db", Probe::Service(3306), DENIED),
    ("api", "db", Probe::Service(3306), ALLOWED),
];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The Namespace, Pods, Services and EndpointSlices of the example, as
/// `deploy/examples/cluster.yaml` holds them.
pub fn example_cluster_yaml() -> String {
    let namespaces = [namespace_spec(NAMESPACE, &[])];
    let pods: Vec<_> = PODS
        .iter()
        .map(|(name, host, app, port)| pod_spec(NAMESPACE, name, &[("app", app)], *host, &[*port]))
        .collect();
    let mut out = format!(
        "# The cluster state of the example, as `kubectl get namespace prod; kubectl get\n\
         # pods,services,endpointslices -n prod -o yaml` would print it on node1 (pod IPs and\n\
         # ClusterIPs as `cargo xtask demo` assigns them).\n{}",
        cluster_yaml(&namespaces, &pods)
    );
    for (service, vip) in SERVICES {
        let Some((_, _, app, (port_name, port))) = PODS.iter().find(|p| p.0 == service) else {
            continue;
        };
        let pod = pods.iter().find(|p| p.name == service);
        let address = pod
            .and_then(|p| p.ips.first().copied())
            .unwrap_or(IpAddr::V4(vip));
        out.push_str("---\n");
        out.push_str(&service_yaml(&ServiceSpec {
            namespace: NAMESPACE.into(),
            name: service.into(),
            cluster_ip: IpAddr::V4(vip),
            ports: vec![ServicePortSpec {
                name: (*port_name).into(),
                port: *port,
                target_port: TargetPort::Number(*port),
                protocol: Protocol::Tcp,
            }],
            selector: vec![("app".into(), (*app).into())],
        }));
        out.push_str("---\n");
        out.push_str(&endpoint_slice_yaml(&EndpointSliceSpec {
            namespace: NAMESPACE.into(),
            name: format!("{service}-demo1"),
            service: service.into(),
            endpoints: vec![SliceEndpoint {
                address,
                ready: true,
                node_name: NODE_NAME.into(),
                pod: service.into(),
            }],
            ports: vec![((*port_name).into(), *port, Protocol::Tcp)],
            ipv6: false,
        }));
    }
    out
}

/// The lab's kube-proxy rules for the example's Services.
fn service_vips(hosts: &[PodNs]) -> anyhow::Result<Vec<Vip>> {
    SERVICES
        .iter()
        .map(|(service, vip)| {
            let pod = find(hosts, service)?;
            let port = PODS
                .iter()
                .find(|p| p.0 == *service)
                .map(|p| p.3.1)
                .with_context(|| format!("no pod for Service {service}"))?;
            Ok(Vip {
                cluster_ip: *vip,
                port,
                protocol: Protocol::Tcp,
                backends: vec![(pod.v4, port)],
            })
        })
        .collect()
}

pub fn demo(print_cluster: bool) -> anyhow::Result<()> {
    if print_cluster {
        print!("{}", example_cluster_yaml());
        return Ok(());
    }
    setup()?;
    run(cargo().args(["build", "-p", "netfence"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    let binary = target.join("debug/netfence");
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let result = run_demo(&binary);
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; the namespaces and files of the demo were removed");
    }
    result
}

/// The example built in network namespaces: node 1 with the example's pods and the
/// backup host, `deploy/examples/` in its manifest directory, the Services' DNAT
/// installed. Shared with the image's lab test, which enforces it from a container.
#[derive(Debug)]
pub struct Lab {
    /// Dropped before the bed: each pod's CNI DEL needs its node.
    pub hosts: Vec<PodNs>,
    pub bed: TestBed,
}

impl Lab {
    /// Builds the example on a fresh bed whose names start with `prefix`.
    pub fn build(prefix: &str) -> anyhow::Result<Lab> {
        let examples = repo_root().join("deploy/examples");
        let mut bed = TestBed::new(prefix)?;
        bed.namespace(NAMESPACE, &[]);
        let mut hosts: Vec<PodNs> = Vec::new();
        for (name, host, app, port) in PODS {
            hosts.push(bed.pod(NAMESPACE, name, &[("app", app)], host, &[port])?);
        }
        hosts.push(bed.external(BACKUP.0, BACKUP.1)?);
        check_examples(&examples)?;
        for entry in std::fs::read_dir(&examples)
            .with_context(|| format!("reading {}", examples.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "yaml") {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                bed.write_manifest(&name, &std::fs::read_to_string(&path)?)?;
            }
        }
        bed.install_services(&service_vips(&hosts)?)?;
        Ok(Lab { hosts, bed })
    }

    /// Runs every probe of the example's table in order, calling `each` with the
    /// probe's row and what was observed (true: the connection was made).
    pub fn probe_all(
        &self,
        mut each: impl FnMut(&Row, bool) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for row in PROBES {
            let observed = self.probe(row)?;
            each(row, observed)?;
        }
        Ok(())
    }

    fn probe(&self, &(from, to, probe, _): &Row) -> anyhow::Result<bool> {
        let (from, to) = (find(&self.hosts, from)?, find(&self.hosts, to)?);
        let ip = IpAddr::V4(to.v4);
        match probe {
            Probe::Tcp(port) => tcp_connects(&from.netns, &to.netns, ip, port),
            Probe::Icmp => ping(&from.netns, ip),
            Probe::Service(port) => {
                let vip = SERVICES
                    .iter()
                    .find(|s| s.0 == to.name)
                    .map(|s| s.1)
                    .with_context(|| format!("no Service {}", to.name))?;
                let listen = SocketAddr::new(ip, port);
                let connect = SocketAddr::new(IpAddr::V4(vip), port);
                tcp_via(&from.netns, &to.netns, listen, connect)
            }
        }
    }
}

/// A row of the probe table: from, to, what, expected verdict (true: allowed).
pub type Row = (&'static str, &'static str, Probe, bool);

#[cfg(test)]
/// The probe table: how many rows, and how many of them are expected to pass.
pub fn expected_counts() -> (usize, usize) {
    (PROBES.len(), PROBES.iter().filter(|row| row.3).count())
}

#[cfg(test)]
/// How a row is printed: `web → api :5000`, `web → svc/db :3306`, `api → web icmp`.
pub fn describe(&(from, to, probe, _): &Row) -> String {
    match probe {
        Probe::Tcp(port) => format!("{from} → {to} :{port}"),
        Probe::Icmp => format!("{from} → {to} icmp"),
        Probe::Service(port) => format!("{from} → svc/{to} :{port}"),
    }
}

fn run_demo(binary: &Path) -> anyhow::Result<()> {
    let examples = repo_root().join("deploy/examples");
    let lab = Lab::build("nfx")?;
    let (bed, hosts) = (&lab.bed, &lab.hosts);
    println!(
        "node {} (node IP {NODE_IP}; pods created by the CNI bridge plugin on {BRIDGE} \
         {NODE_V4}/24 with host-local IPAM, as Flannel delegates), netfence enforcing {}:",
        bed.node().name(),
        examples.display()
    );
    for host in hosts {
        let role = if host.name == BACKUP.0 {
            "outside the cluster"
        } else {
            "pod prod/"
        };
        let host_if = if host.name == BACKUP.0 {
            format!("routed link {}", host.host_if)
        } else {
            format!("{BRIDGE} port {}", host.host_if)
        };
        let pod = if host.name == BACKUP.0 {
            String::new()
        } else {
            host.name.clone()
        };
        println!(
            "  {:<7} {:<15} {:<16} {:<24} {role}{pod}",
            host.name, host.v4, host.v6, host_if
        );
    }
    for (service, vip) in SERVICES {
        println!(
            "  svc/{service:<11} {vip:<15} ClusterIP, DNAT by the node's nftables (as kube-proxy)"
        );
    }
    let agent = bed.start_agent(binary, Attach::Auto)?;
    println!();
    println!(
        "{:<7}   {:<7} {:<6} {:<9} {:<9}",
        "from", "to", "port", "expected", "observed"
    );
    let word = |allowed: bool| if allowed { "allowed" } else { "denied" };
    let mut wrong = 0;
    lab.probe_all(|&(from, to, probe, expected), observed| {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let (to_name, port) = match probe {
            Probe::Tcp(port) => (to.to_owned(), format!(":{port}")),
            Probe::Icmp => (to.to_owned(), "icmp".to_owned()),
            Probe::Service(port) => (format!("svc/{to}"), format!(":{port}")),
        };
        let mark = if observed == expected { "✓" } else { "✗" };
        wrong += usize::from(observed != expected);
        println!(
            "{from:<7} → {to_name:<7} {port:<6} {:<9} {:<9} {mark}",
            word(expected),
            word(observed)
        );
        Ok(())
    })?;
    let drops = agent
        .log()
        .lines()
        .filter(|line| line.contains("drop"))
        .count();
    println!("\nnetfence logged {drops} drop line(s).");
    let status = agent.stop()?;
    if !status.success() {
        bail!("netfence exited with {status} on SIGTERM");
    }
    if wrong > 0 {
        bail!("{wrong} of {} probes differ from the policy", PROBES.len());
    }
    println!("all {} probes match the policy.", PROBES.len());
    Ok(())
}

fn find<'a>(hosts: &'a [PodNs], name: &str) -> anyhow::Result<&'a PodNs> {
    hosts
        .iter()
        .find(|h| h.name == name)
        .with_context(|| format!("no host {name} in the demo"))
}

/// `deploy/examples/cluster.yaml` must describe the namespaces the demo builds.
fn check_examples(examples: &Path) -> anyhow::Result<()> {
    let path = examples.join("cluster.yaml");
    let written =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if written != example_cluster_yaml() {
        bail!(
            "{} does not match the pods the demo creates; regenerate it with \
             `cargo xtask demo --print-cluster > deploy/examples/cluster.yaml`",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_cluster_file_matches_the_demo() {
        let path = repo_root().join("deploy/examples/cluster.yaml");
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == example_cluster_yaml(),
            "{} is stale: cargo xtask demo --print-cluster > deploy/examples/cluster.yaml",
            path.display()
        );
    }
}
