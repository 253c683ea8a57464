//! `deploy/`: every manifest decodes into k8s-openapi types without losing a field
//! (a misspelt field fails), the kustomization lists exactly the files beside it, the
//! ClusterRole grants get/list/watch on exactly the resources the agent watches, and
//! the DaemonSet is unprivileged, adds only the documented capabilities, and runs the
//! agent with arguments the real CLI accepts. Example workloads follow the restricted
//! container practices.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Parser as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use netfence::cli::{Cli, Command};
use netfence::source::kube::{VERBS, WATCHED};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The capabilities the DaemonSet may add, each justified in `deploy/daemonset.yaml`.
const CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document under `dir` (recursively), with its file; not the Helm chart's
/// templates and values (tests/helm_chart.rs renders the chart and checks its objects).
fn documents(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() && path.file_name().is_some_and(|n| n == "helm") {
            continue;
        }
        if path.is_dir() {
            out.extend(documents(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                let value: serde_yaml_ng::Value =
                    serde::Deserialize::deserialize(document).unwrap();
                if !value.is_null() {
                    out.push((path.clone(), serde_json::to_value(value).unwrap()));
                }
            }
        }
    }
    out
}

/// Decodes `value` as `T` and checks that nothing was dropped: encoding it again gives
/// the same JSON.
fn typed<T: DeserializeOwned + serde::Serialize>(file: &Path, value: &Value) -> T {
    let object: T =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let again = serde_json::to_value(&object).unwrap();
    assert_eq!(
        &again,
        value,
        "{}: a field was not understood",
        file.display()
    );
    object
}

/// All objects of `kind` under `deploy/` (decoded and round-trip checked).
fn objects<T: DeserializeOwned + serde::Serialize>(kind: &str) -> Vec<(PathBuf, T)> {
    documents(&deploy_dir())
        .into_iter()
        .filter(|(_, v)| v["kind"] == kind)
        .map(|(file, v)| {
            let object = typed::<T>(&file, &v);
            (file, object)
        })
        .collect()
}

#[test]
fn every_manifest_decodes_into_its_kubernetes_type() {
    let mut kinds = BTreeSet::new();
    for (file, value) in documents(&deploy_dir()) {
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(&file, &value)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&file, &value)),
            "ClusterRole" => drop(typed::<ClusterRole>(&file, &value)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&file, &value)),
            "Role" => drop(typed::<Role>(&file, &value)),
            "RoleBinding" => drop(typed::<RoleBinding>(&file, &value)),
            "DaemonSet" => drop(typed::<DaemonSet>(&file, &value)),
            "Deployment" => drop(typed::<Deployment>(&file, &value)),
            "Service" => drop(typed::<Service>(&file, &value)),
            // The demo's Services' slices, in its cluster state.
            "EndpointSlice" => drop(typed::<EndpointSlice>(&file, &value)),
            "NetworkPolicy" => drop(typed::<NetworkPolicy>(&file, &value)),
            // The demo's cluster state (`kubectl get -o yaml` output).
            "List" => {}
            "Kustomization" => {}
            other => panic!("{}: unexpected kind {other:?}", file.display()),
        }
        kinds.insert(kind);
    }
    for expected in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Kustomization",
    ] {
        assert!(kinds.contains(expected), "no {expected} in deploy/");
    }
}

#[test]
fn kustomization_lists_exactly_the_manifests_beside_it() {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let kustomization: Value =
        serde_json::to_value(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).unwrap())
            .unwrap();
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    assert_eq!(kustomization["namespace"], "netfence-system");
    assert_eq!(kustomization["images"][0]["name"], "netfence");
}

#[test]
fn cluster_role_grants_exactly_what_the_agent_watches() {
    let roles = objects::<ClusterRole>("ClusterRole");
    assert_eq!(roles.len(), 1);
    let role = &roles[0].1;
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let needed: BTreeSet<(String, String, String)> = WATCHED
        .iter()
        .flat_map(|(group, resource)| {
            VERBS.iter().map(move |verb| {
                (
                    (*group).to_owned(),
                    (*resource).to_owned(),
                    (*verb).to_owned(),
                )
            })
        })
        .collect();
    assert_eq!(granted, needed);
    // What WATCHED must hold (and so the role grant): the five kinds the sources read.
    let resources: BTreeSet<(&str, &str)> = WATCHED.iter().copied().collect();
    assert_eq!(
        resources,
        BTreeSet::from([
            ("", "namespaces"),
            ("", "pods"),
            ("", "services"),
            ("networking.k8s.io", "networkpolicies"),
            ("discovery.k8s.io", "endpointslices"),
        ])
    );
    assert_eq!(VERBS, ["get", "list", "watch"], "read-only");

    let bindings = objects::<ClusterRoleBinding>("ClusterRoleBinding");
    assert_eq!(bindings.len(), 1);
    let binding = &bindings[0].1;
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    let accounts = objects::<ServiceAccount>("ServiceAccount");
    assert_eq!(accounts.len(), 1);
    assert_eq!(
        Some(&subjects[0].name),
        accounts[0].1.metadata.name.as_ref()
    );
    assert_eq!(subjects[0].namespace, accounts[0].1.metadata.namespace);
}

fn agent_daemonset() -> (PodSpec, Container) {
    let sets = objects::<DaemonSet>("DaemonSet");
    assert_eq!(sets.len(), 1);
    let spec = sets[0].1.spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(spec.containers.len(), 1);
    // The one init container (netfence-cni install) is checked in tests/cni.rs.
    assert_eq!(spec.init_containers.as_ref().map(Vec::len), Some(1));
    let container = spec.containers[0].clone();
    (spec, container)
}

/// The agent container's arguments as the real CLI parses them (NODE_NAME comes from
/// the env).
fn parsed_run(container: &Container) -> netfence::cli::RunArgs {
    let args = container.args.clone().unwrap();
    let mut argv = vec!["netfence".to_owned()];
    argv.extend(args.iter().cloned());
    argv.extend(["--node-name".to_owned(), "n".to_owned()]);
    let Command::Run(run) = Cli::try_parse_from(&argv).unwrap().command else {
        panic!("not `run`: {args:?}");
    };
    run
}

#[test]
fn daemonset_is_unprivileged_with_only_the_documented_capabilities() {
    let (spec, container) = agent_daemonset();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(spec.host_pid, None);
    let tolerations = spec.tolerations.unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint"
    );
    let accounts = objects::<ServiceAccount>("ServiceAccount");
    assert_eq!(spec.service_account_name, accounts[0].1.metadata.name);

    let security = container.security_context.clone().unwrap();
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let capabilities = security.capabilities.unwrap();
    assert_eq!(capabilities.drop.unwrap(), ["ALL"]);
    assert_eq!(capabilities.add.unwrap(), CAPABILITIES);

    // Exactly five host paths: the bpffs for the pins, the directory of the agent's
    // last-sync record and CNI socket (the root filesystem is read-only), the CNI
    // configuration directory (--cni-conf-dir), the network namespaces, read only
    // (a pending CNI pod whose namespace is gone is forgotten), and the runtime's CNI
    // result cache, read only, where `run` reads it (--cni-cache-dir).
    let mounts = container.volume_mounts.clone().unwrap();
    let volumes = spec.volumes.unwrap();
    let cache_dir = parsed_run(&container).cni.cache_dir;
    assert!(!cache_dir.is_empty(), "--cni-cache-dir is on");
    let record_dir =
        netfence::dataplane::last_sync::path_for(std::path::Path::new("/sys/fs/bpf/netfence"))
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
    let mut host_paths: Vec<(String, String)> = mounts
        .iter()
        .map(|m| {
            let volume = volumes
                .iter()
                .find(|v| v.name == m.name)
                .expect("mount has a volume");
            let host = volume.host_path.clone().expect("a hostPath volume").path;
            (m.mount_path.clone(), host)
        })
        .collect();
    host_paths.sort();
    assert_eq!(
        host_paths,
        vec![
            (
                "/host/etc/cni/net.d".to_owned(),
                "/etc/cni/net.d".to_owned()
            ),
            (record_dir.clone(), record_dir),
            ("/run/netns".to_owned(), "/run/netns".to_owned()),
            ("/sys/fs/bpf".to_owned(), "/sys/fs/bpf".to_owned()),
            (cache_dir.clone(), "/var/lib/cni/results".to_owned()),
        ]
    );
    let propagation: Vec<(&str, Option<&str>, Option<bool>)> = mounts
        .iter()
        .map(|m| {
            (
                m.mount_path.as_str(),
                m.mount_propagation.as_deref(),
                m.read_only,
            )
        })
        .collect();
    assert!(
        propagation
            .iter()
            .all(|(path, mode, read_only)| match *path {
                "/run/netns" => *mode == Some("HostToContainer") && *read_only == Some(true),
                path if path == cache_dir => mode.is_none() && *read_only == Some(true),
                _ => mode.is_none(),
            }),
        "no bidirectional mounts; the network namespaces read only, host to container; the CNI result cache read only: {propagation:?}"
    );

    let resources = container.resources.clone().unwrap();
    assert!(resources.requests.unwrap().contains_key("memory"));
    assert_eq!(resources.limits.unwrap()["memory"].0, "512Mi");
}

#[test]
fn daemonset_runs_the_agent_in_cluster_with_probes_on_its_health_endpoints() {
    let (_, container) = agent_daemonset();
    let env = container.env.clone().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node.value_from.clone().unwrap().field_ref.unwrap();
    assert_eq!(field.field_path, "spec.nodeName");

    let run = parsed_run(&container);
    assert_eq!(run.bridge.as_deref(), Some("cni0"));
    assert_eq!((run.manifests, run.kubeconfig), (None, None), "in-cluster");
    let health = run
        .health_addr
        .unwrap_or(netfence::enforcer::DEFAULT_HEALTH_ADDR);

    let ports = container.ports.clone().unwrap();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("health"))
        .unwrap();
    assert_eq!(i32::from(health.port()), port.container_port);
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe.clone().unwrap().http_get.unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("health".into())
        );
    }
}

#[test]
fn example_workloads_follow_restricted_container_practices() {
    let deployments = objects::<Deployment>("Deployment");
    assert!(!deployments.is_empty());
    for (file, deployment) in deployments {
        let spec = deployment.spec.unwrap().template.spec.unwrap();
        let what = format!("{}: {:?}", file.display(), deployment.metadata.name);
        assert_eq!(spec.automount_service_account_token, Some(false), "{what}");
        let pod_security = spec.security_context.unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true), "{what}");
        for container in spec.containers {
            let security = container.security_context.unwrap();
            assert_eq!(security.allow_privilege_escalation, Some(false), "{what}");
            assert_eq!(security.read_only_root_filesystem, Some(true), "{what}");
            assert_eq!(
                security.capabilities.unwrap().drop.unwrap(),
                ["ALL"],
                "{what}"
            );
            assert!(
                container
                    .resources
                    .unwrap()
                    .limits
                    .unwrap()
                    .contains_key("memory"),
                "{what}"
            );
        }
    }
}

#[test]
fn the_agent_may_get_exactly_its_own_daemonset_for_safe_removal() {
    let (_, container) = agent_daemonset();
    let run = parsed_run(&container);
    let daemonset = run
        .cni
        .removal
        .daemonset
        .clone()
        .expect("--daemonset is set: an uninstall is told from a restart");
    let sets = objects::<DaemonSet>("DaemonSet");
    let meta = &sets[0].1.metadata;
    assert_eq!(
        (Some(&daemonset.namespace), Some(&daemonset.name)),
        (meta.namespace.as_ref(), meta.name.as_ref()),
        "--daemonset names this DaemonSet"
    );
    assert_eq!(run.cni.removal.lease_seconds, 300);
    let roles = objects::<Role>("Role");
    assert_eq!(roles.len(), 1);
    let role = &roles[0].1;
    assert_eq!(role.metadata.namespace.as_ref(), Some(&daemonset.namespace));
    let rules = role.rules.clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&["apps".to_owned()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["daemonsets".to_owned()][..])
    );
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&[daemonset.name.clone()][..])
    );
    assert_eq!(rules[0].verbs, ["get"]);
    let bindings = objects::<RoleBinding>("RoleBinding");
    assert_eq!(bindings.len(), 1);
    let binding = &bindings[0].1;
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.clone().unwrap();
    let accounts = objects::<ServiceAccount>("ServiceAccount");
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (Some(&subjects[0].name), subjects[0].namespace.as_ref()),
        (
            accounts[0].1.metadata.name.as_ref(),
            accounts[0].1.metadata.namespace.as_ref()
        )
    );
    // The namespace it also reads is granted by the ClusterRole (get namespaces).
    let cluster = objects::<ClusterRole>("ClusterRole");
    assert!(cluster[0].1.rules.iter().flatten().any(|r| {
        r.resources.iter().flatten().any(|x| x == "namespaces")
            && r.verbs.iter().any(|v| v == "get")
    }));
}

/// The Localhost seccomp profile deploy/seccomp ships: the runtime default as it
/// applies to the agent's capabilities, plus bpf(2) and perf_event_open(2).
#[test]
fn the_seccomp_profile_allows_bpf_and_perf_event_open_and_the_overlay_uses_it() {
    let dir = deploy_dir().join("seccomp");
    let profile: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("netfence.json")).unwrap()).unwrap();
    assert_eq!(
        profile["defaultAction"], "SCMP_ACT_ERRNO",
        "deny by default"
    );
    let architectures = profile["architectures"].as_array().unwrap();
    for arch in ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"] {
        assert!(architectures.iter().any(|a| a == arch), "{arch}");
    }
    let rules = profile["syscalls"].as_array().unwrap();
    // Portable between the OCI format (containerd) and containers/common's (CRI-O):
    // names, action, args and errnoRet only, no capability or arch conditions.
    for rule in rules {
        for key in rule.as_object().unwrap().keys() {
            assert!(
                ["names", "action", "args", "errnoRet"].contains(&key.as_str()),
                "{key} in {rule}"
            );
        }
    }
    let allows = |name: &str| {
        rules.iter().any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r.get("args").is_none()
                && r["names"].as_array().unwrap().iter().any(|n| n == name)
        })
    };
    let denies = |name: &str| {
        rules.iter().any(|r| {
            r["action"] == "SCMP_ACT_ERRNO"
                && r["names"].as_array().unwrap().iter().any(|n| n == name)
        })
    };
    for name in ["bpf", "perf_event_open", "read", "sendmsg", "mount_setattr"] {
        assert!(!denies(name), "{name} denied");
    }
    for name in [
        "bpf",
        "perf_event_open",
        "read",
        "openat",
        "socket",
        "setns",
    ] {
        assert!(allows(name) || name == "socket", "{name} not allowed");
    }
    // Still denied as by the runtime default without CAP_SYS_ADMIN and the others.
    for name in [
        "init_module",
        "kexec_load",
        "open_by_handle_at",
        "chroot",
        "sethostname",
    ] {
        assert!(denies(name), "{name} not denied");
        assert!(!allows(name), "{name} allowed");
    }

    // The overlay: the base with the agent container's profile replaced.
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let overlay: Value =
        serde_json::to_value(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).unwrap())
            .unwrap();
    assert_eq!(overlay["resources"], serde_json::json!(["../"]));
    let patch = &overlay["patches"][0];
    assert_eq!(patch["target"]["kind"], "DaemonSet");
    let sets = objects::<DaemonSet>("DaemonSet");
    assert_eq!(
        Some(patch["target"]["name"].as_str().unwrap()),
        sets[0].1.metadata.name.as_deref()
    );
    let ops: Value = serde_json::to_value(
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(patch["patch"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let op = &ops[0];
    assert_eq!(op["op"], "replace");
    let mut daemonset = serde_json::to_value(&sets[0].1).unwrap();
    let target = daemonset
        .pointer_mut(op["path"].as_str().unwrap())
        .expect("the patched path exists in the base");
    assert_eq!(*target, serde_json::json!({"type": "RuntimeDefault"}));
    *target = op["value"].clone();
    let patched: DaemonSet = serde_json::from_value(daemonset).unwrap();
    let container = &patched.spec.unwrap().template.spec.unwrap().containers[0];
    let profile = container
        .security_context
        .clone()
        .unwrap()
        .seccomp_profile
        .unwrap();
    assert_eq!(
        (profile.type_.as_str(), profile.localhost_profile.as_deref()),
        ("Localhost", Some("netfence.json"))
    );
}

/// No environment variable in deploy/ overrides a flag (RUST_LOG would win over
/// --log-level), and the agent logs JSON.
#[test]
fn the_daemonset_sets_no_env_that_overrides_flags_and_logs_json() {
    let (spec, container) = agent_daemonset();
    for c in spec.init_containers.iter().flatten().chain([&container]) {
        let names: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        for name in &names {
            assert_eq!(*name, "NODE_NAME", "{}: env {name}", c.name);
        }
        assert!(c.env_from.is_none(), "{}: envFrom", c.name);
    }
    let mut argv = vec!["netfence".to_owned()];
    argv.extend(container.args.clone().unwrap());
    argv.extend(["--node-name".to_owned(), "n".to_owned()]);
    let cli = Cli::try_parse_from(&argv).unwrap();
    assert_eq!(cli.log_format, netfence::cli::LogFormat::Json);
    assert_eq!(cli.log_level, netfence::cli::LogLevel::Info);
}
