//! deploy/helm/netfence against the kustomize base: with its default values the chart
//! renders exactly the objects `kubectl kustomize deploy/` gives (compared as parsed
//! objects), with `seccomp.type=Localhost` exactly those of deploy/seccomp/, and each
//! value reaches what it names: CNI chaining off drops the init container, its
//! volumes and flags; failClosed, timeouts, lease, bridge, interfaces, port, logs,
//! image, resources, tolerations, nodeSelector and the namespace show up where the
//! agent and the plugin read them (the agent's arguments are parsed by the real CLI).
//! Every rendered object decodes into its Kubernetes type without losing a field.
//!
//! Neither Helm nor kubectl runs here: `render` emulates `helm template` with a Go
//! text/template engine and Helm's functions, `kustomize` emulates `kubectl kustomize`
//! for the fields deploy/ uses (each module says what it covers and refuses). With
//! NETFENCE_GORENDER set, the renderer is also compared with Go's own text/template
//! and Sprig (helm_chart/gorender.go).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

#[path = "helm_chart/kustomize.rs"]
mod kustomize;
#[path = "helm_chart/render.rs"]
mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use netfence::cli::{Cli, Command, LogFormat, LogLevel};
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// (kind, namespace, name) → object.
fn by_id(objects: &[Json]) -> BTreeMap<(String, String, String), Json> {
    let mut out = BTreeMap::new();
    for object in objects {
        let id = (
            object["kind"].as_str().unwrap().to_owned(),
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            object["metadata"]["name"].as_str().unwrap().to_owned(),
        );
        assert!(
            out.insert(id.clone(), object.clone()).is_none(),
            "{id:?} twice"
        );
    }
    out
}

/// The same objects, each compared whole; a difference names the object and shows
/// both sides.
fn assert_same_objects(chart: &[Json], kustomize: &[Json]) {
    assert_same(("chart", chart), ("kustomize", kustomize));
}

fn assert_same((left, chart): (&str, &[Json]), (right, kustomize): (&str, &[Json])) {
    let (chart, kustomize) = (by_id(chart), by_id(kustomize));
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        kustomize.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (id, object) in &chart {
        assert_eq!(
            object,
            &kustomize[id],
            "{id:?} differs:\n{left}:\n{}\n{right}:\n{}",
            serde_yaml_ng::to_string(object).unwrap(),
            serde_yaml_ng::to_string(&kustomize[id]).unwrap()
        );
    }
}

fn render(overrides: Json) -> Vec<Json> {
    let objects = render::render(&overrides)
        .unwrap_or_else(|e| panic!("{overrides}: {e}"))
        .objects;
    for object in &objects {
        decodes(object);
    }
    objects
}

/// Decodes into the object's Kubernetes type, and encoding it again gives the same
/// JSON: no field is misspelt or misplaced (e.g. by an indentation).
fn decodes(object: &Json) {
    fn typed<T: DeserializeOwned + serde::Serialize>(object: &Json) {
        let typed: T =
            serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{e}: {object}"));
        assert_eq!(
            &serde_json::to_value(typed).unwrap(),
            object,
            "a field was not understood"
        );
    }
    match object["kind"].as_str().unwrap() {
        "Namespace" => typed::<Namespace>(object),
        "ServiceAccount" => typed::<ServiceAccount>(object),
        "ClusterRole" => typed::<ClusterRole>(object),
        "ClusterRoleBinding" => typed::<ClusterRoleBinding>(object),
        "Role" => typed::<Role>(object),
        "RoleBinding" => typed::<RoleBinding>(object),
        "DaemonSet" => typed::<DaemonSet>(object),
        other => panic!("unexpected kind {other}"),
    }
}

fn daemonset(objects: &[Json]) -> Json {
    let sets: Vec<&Json> = objects
        .iter()
        .filter(|o| o["kind"] == "DaemonSet")
        .collect();
    assert_eq!(sets.len(), 1);
    sets[0].clone()
}

fn names(list: &Json) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|item| item["name"].as_str().unwrap())
        .collect()
}

fn args(container: &Json) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// The agent container's arguments as the real CLI parses them.
fn parsed_agent(daemonset: &Json) -> Cli {
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "agent");
    let mut argv = vec!["netfence".to_owned()];
    argv.extend(args(container));
    argv.extend(["--node-name".to_owned(), "n".to_owned()]);
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

fn run_args(cli: &Cli) -> &netfence::cli::RunArgs {
    let Command::Run(run) = &cli.command else {
        panic!("not `run`");
    };
    run
}

/// The init container's arguments as the real CLI parses them.
fn parsed_cni_install(daemonset: &Json) -> netfence::cni::command::CniInstallArgs {
    let container = &daemonset["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(container["name"], "cni-install");
    let mut argv = vec!["netfence".to_owned()];
    argv.extend(args(container));
    match Cli::try_parse_from(&argv).unwrap().command {
        Command::CniInstall(install) => install,
        _ => panic!("not `cni-install`: {argv:?}"),
    }
}

#[test]
fn default_values_render_the_kustomize_base() {
    let chart = render(json!({}));
    let kustomize = kustomize::build(&deploy_dir());
    assert_eq!(
        kustomize.len(),
        7,
        "Namespace, ServiceAccount, ClusterRole(Binding), Role(Binding), DaemonSet"
    );
    assert_same_objects(&chart, &kustomize);
}

#[test]
fn localhost_seccomp_renders_the_seccomp_overlay() {
    let chart = render(json!({"seccomp": {"type": "Localhost"}}));
    let kustomize = kustomize::build(&deploy_dir().join("seccomp"));
    assert_same_objects(&chart, &kustomize);
    let profile = &daemonset(&chart)["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        ["seccompProfile"];
    assert_eq!(
        profile,
        &json!({"type": "Localhost", "localhostProfile": "netfence.json"})
    );
    // The profile's file name is the one deploy/seccomp ships.
    assert!(deploy_dir().join("seccomp/netfence.json").is_file());
}

#[test]
fn cni_chaining_off_drops_the_init_container_its_volumes_and_flags() {
    let on = render(json!({}));
    let off = render(json!({"cni": {"enabled": false}}));
    let (on_set, off_set) = (daemonset(&on), daemonset(&off));
    let pod = &off_set["spec"]["template"]["spec"];
    assert!(pod.get("initContainers").is_none(), "no cni-install");
    assert_eq!(names(&pod["volumes"]), ["bpffs", "run", "cni-results"]);
    assert_eq!(
        names(&pod["containers"][0]["volumeMounts"]),
        ["bpffs", "run", "cni-results"],
        "no CNI configuration, no network namespaces (only pending CNI pods need them)"
    );
    let agent = args(&pod["containers"][0]);
    for flag in [
        "--cni-conf-dir",
        "--cni-timeout-seconds",
        "--cni-fail-closed",
        "--cni-lease-seconds",
    ] {
        assert!(!agent.contains(&flag.to_owned()), "{flag} in {agent:?}");
    }
    let cli = parsed_agent(&off_set);
    let run = run_args(&cli);
    assert_eq!(run.cni_socket, "", "no socket: nothing waits for the agent");
    assert_eq!(run.cni.conf_dir, None);
    assert_eq!(
        run.cni.cache_dir, "/var/lib/cni/results",
        "pods are still bound to their veths through the runtime's CNI cache"
    );
    let daemonset_ref = run
        .cni
        .removal
        .daemonset
        .clone()
        .expect("--daemonset stays: an uninstall still removes the pins");
    assert_eq!(
        (
            daemonset_ref.namespace.as_str(),
            daemonset_ref.name.as_str()
        ),
        ("netfence-system", "netfence")
    );

    // Nothing else changes: the same objects, and the same DaemonSet once the CNI
    // parts are taken out of the default one.
    let without = |objects: &[Json]| {
        let mut map = by_id(objects);
        map.retain(|(kind, _, _), _| kind != "DaemonSet");
        map
    };
    assert_eq!(without(&on), without(&off));
    let mut expected = on_set.clone();
    let spec = expected["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap();
    spec.remove("initContainers");
    spec.get_mut("volumes")
        .unwrap()
        .as_array_mut()
        .unwrap()
        .retain(|v| !["cni-bin", "cni-conf", "netns"].contains(&v["name"].as_str().unwrap()));
    let container = &mut spec.get_mut("containers").unwrap()[0];
    container["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| !["cni-conf", "netns"].contains(&m["name"].as_str().unwrap()));
    container["args"] = off_set["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert_eq!(expected, off_set);
    // The default's arguments less the CNI flags, with an empty socket.
    let mut on_args = args(&on_set["spec"]["template"]["spec"]["containers"][0]);
    for flag in [
        "--cni-conf-dir",
        "--cni-timeout-seconds",
        "--cni-fail-closed",
        "--cni-lease-seconds",
    ] {
        let at = on_args.iter().position(|a| a == flag).unwrap();
        on_args.drain(at..at + 2);
    }
    let socket = on_args.iter().position(|a| a == "--cni-socket").unwrap();
    on_args[socket + 1] = String::new();
    assert_eq!(on_args, agent);
}

#[test]
fn fail_closed_timeout_and_lease_reach_the_plugin_entry_and_the_agent() {
    for fail_closed in [true, false] {
        let objects = render(
            json!({"cni": {"failClosed": fail_closed, "timeoutSeconds": 30, "leaseSeconds": 900}}),
        );
        let set = daemonset(&objects);
        let install = parsed_cni_install(&set);
        assert_eq!(
            (install.fail_closed, install.timeout_seconds),
            (fail_closed, 30)
        );
        assert_eq!(install.socket_path, Path::new("/run/netfence/cni.sock"));
        let cli = parsed_agent(&set);
        let run = run_args(&cli);
        // The agent restores the same entry the init container wrote.
        assert_eq!(
            (run.cni.fail_closed, run.cni.timeout_seconds),
            (fail_closed, 30)
        );
        assert_eq!(Path::new(&run.cni_socket), install.socket_path);
        assert_eq!(run.cni.removal.lease_seconds, 900);
    }
}

/// A value of every kind changed (every key of values.yaml).
fn every_value_overrides() -> Json {
    json!({
        "image": {"repository": "registry.example/netfence", "tag": "1.2.3", "pullPolicy": "Always"},
        "namespace": {"name": "fence", "create": false},
        "bridge": "",
        "interfaces": ["veth*", "eth1"],
        "health": {"port": 9000},
        "log": {"level": "debug", "format": "text"},
        "resources": {"limits": {"memory": "1Gi"}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "cni": {"binDir": "/usr/libexec/cni", "confDir": "/etc/cni/conf.d"},
    })
}

#[test]
fn each_value_reaches_what_it_names() {
    let objects = render(every_value_overrides());
    assert!(
        objects.iter().all(|o| o["kind"] != "Namespace"),
        "namespace.create=false"
    );
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        if !["ClusterRole", "ClusterRoleBinding"].contains(&kind) {
            assert_eq!(object["metadata"]["namespace"], "fence", "{kind}");
        }
        for subject in object["subjects"].as_array().into_iter().flatten() {
            assert_eq!(subject["namespace"], "fence", "{kind}");
        }
    }
    let set = daemonset(&objects);
    let pod = &set["spec"]["template"]["spec"];
    for container in [&pod["initContainers"][0], &pod["containers"][0]] {
        assert_eq!(container["image"], "registry.example/netfence:1.2.3");
        assert_eq!(container["imagePullPolicy"], "Always");
    }
    let agent = &pod["containers"][0];
    assert_eq!(agent["ports"][0]["containerPort"], 9000);
    assert_eq!(
        set["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        "9000"
    );
    // Maps merge with the defaults, as Helm merges values.
    assert_eq!(
        agent["resources"],
        json!({"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}})
    );
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}])
    );
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    let host_path = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()["hostPath"]["path"]
            .clone()
    };
    assert_eq!(host_path("cni-bin"), "/usr/libexec/cni");
    assert_eq!(host_path("cni-conf"), "/etc/cni/conf.d");

    let cli = parsed_agent(&set);
    assert_eq!(
        (cli.log_level, cli.log_format),
        (LogLevel::Debug, LogFormat::Text)
    );
    let run = run_args(&cli);
    assert_eq!(run.bridge, None, "empty bridge: no --bridge");
    assert_eq!(run.interfaces, ["veth*", "eth1"]);
    assert_eq!(run.health_addr, Some("0.0.0.0:9000".parse().unwrap()));
    let daemonset_ref = run.cni.removal.daemonset.clone().unwrap();
    assert_eq!(
        (
            daemonset_ref.namespace.as_str(),
            daemonset_ref.name.as_str()
        ),
        ("fence", "netfence")
    );
    // The Role lets the agent get exactly that DaemonSet.
    let role = objects.iter().find(|o| o["kind"] == "Role").unwrap();
    assert_eq!(role["metadata"]["namespace"], "fence");
    assert_eq!(role["rules"][0]["resourceNames"], json!(["netfence"]));

    // The tag defaults to the chart's appVersion; the bridge with interfaces both.
    let objects = render(json!({"image": {"tag": ""}, "interfaces": ["veth*"]}));
    let set = daemonset(&objects);
    let chart = render::read_yaml(&render::chart_dir().join("Chart.yaml"));
    let image = set["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        image.ends_with(&format!(":{}", chart["appVersion"].as_str().unwrap())),
        "{image}"
    );
    let cli = parsed_agent(&set);
    let run = run_args(&cli);
    assert_eq!(
        (run.bridge.as_deref(), run.interfaces.as_slice()),
        (Some("cni0"), &["veth*".to_owned()][..])
    );
}

#[test]
fn notes_say_where_it_runs_and_how_to_ask_it() {
    let notes = render::render(&json!({})).unwrap().notes;
    assert!(
        notes.contains("kubectl -n netfence-system rollout status ds/netfence"),
        "{notes}"
    );
    assert!(notes.contains("kubectl netfence explain"), "{notes}");
    assert!(notes.contains("failClosed: true"), "{notes}");
    assert!(!notes.contains("seccomp"), "{notes}");
    let notes =
        render::render(&json!({"cni": {"enabled": false}, "seccomp": {"type": "Localhost"}}))
            .unwrap()
            .notes;
    assert!(!notes.contains("netfence-cni is chained"), "{notes}");
    assert!(
        notes.contains("Localhost seccomp profile netfence.json"),
        "{notes}"
    );
}

/// The chart's own files: what Helm requires of them, and a values.yaml whose every
/// top-level value is documented in the chart's README.
#[test]
fn the_chart_is_complete() {
    let dir = render::chart_dir();
    let chart = render::read_yaml(&dir.join("Chart.yaml"));
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "netfence");
    assert!(chart["version"].is_string() && chart["appVersion"].is_string());
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let values = render::read_yaml(&dir.join("values.yaml"));
    fn leaves(prefix: &str, value: &Json, out: &mut Vec<String>) {
        match value {
            Json::Object(map) if !map.is_empty() && prefix != "resources" => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, value, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut documented = Vec::new();
    leaves("", &values, &mut documented);
    for value in documented {
        assert!(
            readme.contains(&format!("`{value}`")),
            "README.md does not document `{value}`"
        );
    }
}

/// The test's renderer against Go's text/template and Sprig, the engine and function
/// library Helm renders with: the same objects and notes for the defaults and for
/// every override case above. Needs gorender (helm_chart/gorender.go says how to
/// build it from Debian's packages) named by NETFENCE_GORENDER; without it, this test
/// says so and compares nothing (`cargo xtask setup` installs no Go).
#[test]
fn go_text_template_and_sprig_render_the_same() {
    let Some(program) = std::env::var_os("NETFENCE_GORENDER") else {
        eprintln!(
            "skipped: NETFENCE_GORENDER is not set (a gorender binary, see agent/tests/helm_chart/gorender.go)"
        );
        return;
    };
    let cases = [
        json!({}),
        json!({"seccomp": {"type": "Localhost"}}),
        json!({"cni": {"enabled": false}}),
        json!({"cni": {"failClosed": false, "timeoutSeconds": 30, "leaseSeconds": 900}}),
        json!({"image": {"tag": ""}, "interfaces": ["veth*"]}),
        json!({"cni": {"enabled": false}, "seccomp": {"type": "Localhost"}}),
        every_value_overrides(),
    ];
    for overrides in cases {
        let ours = render::render(&overrides).unwrap();
        let go = render::render_with_go(Path::new(&program), &overrides).unwrap();
        assert_same(("Go", &go.objects), ("gtmpl-ng", &ours.objects));
        assert_eq!(go.objects.len(), ours.objects.len(), "{overrides}");
        assert_eq!(go.notes, ours.notes, "{overrides}");
    }
}
