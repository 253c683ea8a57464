//! Safe removal in the lab (part of the `cni` test binary): an agent stopped because
//! its DaemonSet was deleted takes netfence-cni out of Flannel's conflist, expires its
//! lease and removes its pinned state, and the node starts new pods; an agent stopped
//! for a restart (its DaemonSet still there) leaves everything, new pods wait (CNI
//! error 11, the lease named) and the next agent programs them; an agent stopped
//! without knowing why leaves a lease after whose expiry pods start. The API server
//! the stopping agent asks is the test API server answering GETs of the DaemonSet and
//! its namespace, listening inside the node's network namespace.

use netfence::cni::persist;
use netfence_cni::lease::{self, Lease, LeaseState, Standing};
use netfence_testbed::apiserver::ApiServer;
use netns::{Bpffs, start_pinned};

use super::*;

const DS_PATH: &str = "/apis/apps/v1/namespaces/netfence-system/daemonsets/netfence";
const NS_PATH: &str = "/api/v1/namespaces/netfence-system";

/// The test API server (`netfence_testbed::apiserver`) inside `node` (where the agent
/// runs), on a runtime of its own (these tests are not async), answering GETs of the
/// DaemonSet and its namespace as a test sets them; 404 for any other object.
struct FakeApi {
    server: ApiServer,
    _runtime: tokio::runtime::Runtime,
}

impl FakeApi {
    fn start(node: &netfence_testbed::Netns) -> FakeApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = node
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let server = {
            let _entered = runtime.enter();
            ApiServer::start_with(listener)
        };
        FakeApi {
            server,
            _runtime: runtime,
        }
    }

    fn answer(&self, path: &str, code: u16, body: Value) {
        self.server.answer(path, code, body);
    }

    /// The DaemonSet and its namespace exist (a restart).
    fn installed(&self) {
        self.answer(
            DS_PATH,
            200,
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                   "metadata": {"name": "netfence", "namespace": "netfence-system"},
                   "spec": {"selector": {"matchLabels": {"app": "netfence"}},
                            "template": {"metadata": {"labels": {"app": "netfence"}},
                                         "spec": {"containers": [{"name": "agent", "image": "netfence"}]}}}}),
        );
        self.answer(
            NS_PATH,
            200,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "netfence-system"}}),
        );
    }

    /// `kubectl delete -k deploy/`: the DaemonSet is gone.
    fn deleted(&self) {
        self.answer(
            DS_PATH,
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "daemonsets.apps \"netfence\" not found", "reason": "NotFound",
                   "details": {"name": "netfence", "group": "apps", "kind": "daemonsets"}, "code": 404}),
        );
    }

    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        self.server.kubeconfig(dir)
    }

    /// The paths requested so far.
    fn seen(&self) -> Vec<String> {
        self.server.requests().into_iter().map(|r| r.path).collect()
    }
}

fn lease_at(socket: &Path) -> Lease {
    serde_json::from_slice(&std::fs::read(lease::path_for(socket)).unwrap()).unwrap()
}

/// The agent's CNI flags plus `--daemonset` asked through `kubeconfig`.
fn removal_args<'a>(
    socket: &'a Path,
    conf: &'a Path,
    kubeconfig: Option<&'a Path>,
) -> Vec<&'a std::ffi::OsStr> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--cni-socket".as_ref(),
        socket.as_os_str(),
        "--cni-conf-dir".as_ref(),
        conf.as_os_str(),
    ];
    if let Some(kubeconfig) = kubeconfig {
        args.extend::<[&std::ffi::OsStr; 4]>([
            "--daemonset".as_ref(),
            "netfence-system/netfence".as_ref(),
            "--daemonset-kubeconfig".as_ref(),
            kubeconfig.as_os_str(),
        ]);
    }
    args
}

fn conflist_dir(bed: &TestBed) -> (PathBuf, PathBuf) {
    let conf = bed.scratch("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    let flannel = conf.join("10-flannel.conflist");
    std::fs::write(&flannel, FLANNEL_CONFLIST).unwrap();
    (conf, flannel)
}

fn chains_netfence(flannel: &Path) -> bool {
    let conf: Value = serde_json::from_str(&std::fs::read_to_string(flannel).unwrap()).unwrap();
    conf["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["type"] == "netfence-cni")
}

#[test]
fn deleting_the_daemonset_unchains_the_plugin_removes_the_pins_and_pods_start() {
    netfence_testbed::require_root().unwrap();
    let plugins = plugin_dir();
    let mut bed = bed("nfr7a");
    bed.namespace("x", &[]);
    let srv = bed.pod("x", "srv", &[("app", "srv")], 10, &[]).unwrap();
    bed.write_cluster().unwrap();
    let api = FakeApi::start(bed.node());
    api.installed();
    let kubeconfig = api.kubeconfig(&bed.scratch(""));
    let (conf, flannel) = conflist_dir(&bed);
    let bpffs = Bpffs::mount("nfr7a");
    let pin_dir = bpffs.pin_dir();
    let socket = bed.scratch("cni.sock");
    let log = bed.scratch("agent-nfr7a.log");
    let mut agent = start_pinned(
        &bed,
        &pin_dir,
        &log,
        &removal_args(&socket, &conf, Some(&kubeconfig)),
    );
    agent
        .wait_for_line(&["netfence-cni entry restored in"])
        .unwrap();
    assert!(chains_netfence(&flannel));
    assert_eq!(lease_at(&socket).state, LeaseState::Running);
    bed.chain_plugin(&plugin_entry(&socket, true), &plugins)
        .unwrap();
    let a = bed.pod("x", "a", &[("app", "a")], 11, &[]).unwrap();
    agent
        .wait_for_line(&["cni: programmed", "x/a", "DefaultDeny"])
        .unwrap();
    assert!(
        !tcp_connects(&a.netns, &srv.netns, srv.ip4(), 80).unwrap(),
        "a is denied until it appears in the state"
    );
    assert!(pin_dir.exists());

    // kubectl delete -k deploy/: the DaemonSet goes, its pods get SIGTERM.
    api.deleted();
    assert!(agent.stop().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(
            "netfence is being uninstalled from this node: DaemonSet netfence-system/netfence is deleted"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("netfence-cni removed from {}", flannel.display())),
        "{text}"
    );
    assert!(text.contains("pinned state removed"), "{text}");
    assert!(api.seen().contains(&DS_PATH.to_owned()), "{:?}", api.seen());
    assert_eq!(
        serde_json::from_str::<Value>(&std::fs::read_to_string(&flannel).unwrap()).unwrap(),
        serde_json::from_str::<Value>(FLANNEL_CONFLIST).unwrap(),
        "Flannel's conflist is as Flannel wrote it"
    );
    assert!(!pin_dir.exists(), "pins removed");
    assert!(
        !netfence::dataplane::last_sync::path_for(&pin_dir).exists(),
        "last-sync record removed"
    );
    assert!(!persist::path_for(&socket).exists());
    let last = lease_at(&socket);
    assert_eq!(last.state, LeaseState::Uninstalled);
    assert!(matches!(
        lease::standing(&lease::path_for(&socket), lease::now_unix()),
        Standing::Expired(_)
    ));

    // A runtime that still runs the old conflist (the lab's keeps netfence-cni
    // chained) starts a new pod: the plugin finds no agent and an expired lease.
    let b = bed
        .pod("x", "b", &[("app", "b")], 12, &[])
        .unwrap_or_else(|e| panic!("a new pod after the uninstall: {e:#}"));
    assert!(
        tcp_connects(&b.netns, &srv.netns, srv.ip4(), 80).unwrap(),
        "nothing enforces any more"
    );
    assert!(
        tcp_connects(&a.netns, &srv.netns, srv.ip4(), 80).unwrap(),
        "a's deny-all went with the pins"
    );
}

#[test]
fn a_restart_keeps_the_plugin_chained_new_pods_wait_and_the_next_agent_programs_them() {
    netfence_testbed::require_root().unwrap();
    let plugins = plugin_dir();
    let mut bed = bed("nfr7b");
    bed.namespace("x", &[]);
    let srv = bed.pod("x", "srv", &[("app", "srv")], 10, &[]).unwrap();
    bed.write_cluster().unwrap();
    let api = FakeApi::start(bed.node());
    api.installed();
    let kubeconfig = api.kubeconfig(&bed.scratch(""));
    let (conf, flannel) = conflist_dir(&bed);
    let bpffs = Bpffs::mount("nfr7b");
    let pin_dir = bpffs.pin_dir();
    let socket = bed.scratch("cni.sock");
    let log = bed.scratch("agent-nfr7b.log");
    let args = removal_args(&socket, &conf, Some(&kubeconfig));
    let agent = start_pinned(&bed, &pin_dir, &log, &args);
    bed.chain_plugin(&plugin_entry(&socket, true), &plugins)
        .unwrap();

    // A rollout: SIGTERM while the DaemonSet exists (and was readable at start, so a
    // refusal would have meant revoked access).
    let mut agent = agent;
    agent
        .wait_for_line(&["safe removal: DaemonSet netfence-system/netfence is readable"])
        .unwrap();
    assert!(agent.stop().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("restart, not an uninstall (DaemonSet netfence-system/netfence exists and is not being deleted)"),
        "{text}"
    );
    assert!(api.seen().contains(&NS_PATH.to_owned()), "{:?}", api.seen());
    assert!(chains_netfence(&flannel), "the entry stays");
    assert!(pin_dir.exists(), "the pins stay");
    let lease = lease_at(&socket);
    assert_eq!(lease.state, LeaseState::Restarting);
    assert_eq!(
        lease.expires_unix - lease.written_unix,
        300,
        "--cni-lease-seconds default"
    );

    // No agent: a new pod's ADD fails closed (the runtime retries), naming the lease.
    let error = bed.pod("x", "early", &[("app", "c")], 11, &[]).unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("CNI error 11: netfence agent did not confirm ADD for x/early"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "its lease {} (restarting, pid ",
            lease::path_for(&socket).display()
        )) && text.contains("s more"),
        "{text}"
    );

    // The next agent adopts the pins and programs the retried pod.
    let mut agent = start_pinned(&bed, &pin_dir, &log, &args);
    let c = bed.pod("x", "c", &[("app", "c")], 12, &[]).unwrap();
    agent
        .wait_for_line(&["cni: programmed", "x/c", "DefaultDeny"])
        .unwrap();
    assert!(
        !tcp_connects(&c.netns, &srv.netns, srv.ip4(), 80).unwrap(),
        "the new pod is denied until it appears in the state"
    );
    assert_eq!(lease_at(&socket).state, LeaseState::Running);
    assert!(agent.stop().unwrap().success());
    assert!(chains_netfence(&flannel));
}

#[test]
fn an_agent_gone_without_a_reason_fails_closed_until_its_lease_expires() {
    netfence_testbed::require_root().unwrap();
    let plugins = plugin_dir();
    let mut bed = bed("nfr7c");
    bed.namespace("x", &[]);
    bed.write_cluster().unwrap();
    let (conf, flannel) = conflist_dir(&bed);
    let socket = bed.scratch("cni.sock");
    let mut args = removal_args(&socket, &conf, None);
    args.extend::<[&std::ffi::OsStr; 3]>([
        "--detach-on-exit".as_ref(),
        "--cni-lease-seconds".as_ref(),
        "2".as_ref(),
    ]);
    let agent = Agent::start_with(
        netfence_bin(),
        bed.node(),
        NODE_NAME,
        &bed.manifests(),
        &[],
        Attach::Auto,
        bed.scratch("agent-nfr7c.log"),
        &args,
    )
    .unwrap_or_else(|error| panic!("starting netfence: {error:#}"));
    bed.chain_plugin(&plugin_entry(&socket, true), &plugins)
        .unwrap();
    assert!(agent.stop().unwrap().success());
    let log = std::fs::read_to_string(bed.scratch("agent-nfr7c.log")).unwrap();
    assert!(
        log.contains("stopping without knowing whether netfence is being uninstalled (no --daemonset to ask about)"),
        "{log}"
    );
    assert!(chains_netfence(&flannel), "nothing says it is an uninstall");
    assert_eq!(lease_at(&socket).state, LeaseState::Stopped);
    // Wait (bounded) for the 2 s lease to run out; no pod is tried meanwhile.
    let path = lease::path_for(&socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(
        lease::standing(&path, lease::now_unix()),
        Standing::Expired(_)
    ) {
        assert!(Instant::now() < deadline, "the lease never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pod = bed.pod("x", "late", &[("app", "late")], 11, &[]);
    assert!(pod.is_ok(), "expired lease: the pod starts: {pod:?}");
}

#[test]
fn revoked_access_is_an_uninstall_only_when_the_daemonset_was_readable_at_start() {
    netfence_testbed::require_root().unwrap();
    let mut bed = bed("nfr7d");
    bed.namespace("x", &[]);
    bed.write_cluster().unwrap();
    let api = FakeApi::start(bed.node());
    let kubeconfig = api.kubeconfig(&bed.scratch(""));
    let (conf, flannel) = conflist_dir(&bed);
    let socket = bed.scratch("cni.sock");
    let mut args = removal_args(&socket, &conf, Some(&kubeconfig));
    args.push("--detach-on-exit".as_ref());
    let start = |log: &str| {
        Agent::start_with(
            netfence_bin(),
            bed.node(),
            NODE_NAME,
            &bed.manifests(),
            &[],
            Attach::Auto,
            bed.scratch(log),
            &args,
        )
        .unwrap_or_else(|error| panic!("starting netfence: {error:#}"))
    };
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "daemonsets.apps \"netfence\" is forbidden", "reason": "Forbidden", "code": 403});

    // RBAC that never granted the read: an error at start, and a stop is no uninstall.
    api.answer(DS_PATH, 403, forbidden.clone());
    let mut agent = start("agent-nfr7d-1.log");
    agent
        .wait_for_line(&[
            "safe removal: reading DaemonSet netfence-system/netfence is refused (403): grant get on it",
        ])
        .unwrap();
    assert!(agent.stop().unwrap().success());
    let text = std::fs::read_to_string(bed.scratch("agent-nfr7d-1.log")).unwrap();
    assert!(
        text.contains("and the DaemonSet was not readable at start either"),
        "{text}"
    );
    assert!(chains_netfence(&flannel), "not taken for an uninstall");
    assert_eq!(lease_at(&socket).state, LeaseState::Stopped);

    // Readable at start, refused at SIGTERM (kubectl delete -k removed the binding):
    // an uninstall.
    api.installed();
    let mut agent = start("agent-nfr7d-2.log");
    agent
        .wait_for_line(&["safe removal: DaemonSet netfence-system/netfence is readable"])
        .unwrap();
    api.answer(DS_PATH, 403, forbidden);
    assert!(agent.stop().unwrap().success());
    let text = std::fs::read_to_string(bed.scratch("agent-nfr7d-2.log")).unwrap();
    assert!(
        text.contains("netfence is being uninstalled from this node: reading DaemonSet netfence-system/netfence is refused (403): the agent's ServiceAccount or its RBAC binding was deleted, as an uninstall does"),
        "{text}"
    );
    assert!(!chains_netfence(&flannel), "the entry is gone");
    assert_eq!(lease_at(&socket).state, LeaseState::Uninstalled);
}
