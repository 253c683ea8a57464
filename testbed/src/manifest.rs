//! Namespaces and Pods written exactly as `kubectl get -o yaml` prints them: a
//! `kind: List` of full objects with keys in kubectl's (alphabetical) order, server
//! fields included (`uid`, `resourceVersion`, `status.podIP`, `status.podIPs`,
//! `spec.nodeName`, `status.phase: Running`, container ports).

use std::fmt::Write as _;
use std::net::IpAddr;

/// A Namespace and its labels (`kubernetes.io/metadata.name` is added when written).
#[derive(Clone, Debug)]
pub struct NamespaceSpec {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

/// A running Pod on a node.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub node_name: String,
    pub host_ip: IpAddr,
    /// The first is `status.podIP`; all are `status.podIPs`.
    pub ips: Vec<IpAddr>,
    /// Named TCP container ports.
    pub ports: Vec<(String, u16)>,
}

pub(crate) const CREATED: &str = "2026-11-23T12:00:00Z";

/// The Namespaces, then the Pods, as one `kind: List`.
pub fn cluster_yaml(namespaces: &[NamespaceSpec], pods: &[PodSpec]) -> String {
    let mut out = String::from("apiVersion: v1\nitems:\n");
    let mut version = 1000;
    for ns in namespaces {
        version += 1;
        namespace_item(&mut out, ns, version);
    }
    for pod in pods {
        version += 1;
        pod_item(&mut out, pod, version);
    }
    out.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
    out
}

fn namespace_item(out: &mut String, ns: &NamespaceSpec, version: u32) {
    let mut labels = ns.labels.clone();
    labels.push(("kubernetes.io/metadata.name".into(), ns.name.clone()));
    labels.sort();
    out.push_str("- apiVersion: v1\n  kind: Namespace\n  metadata:\n");
    let _ = writeln!(out, "    creationTimestamp: \"{CREATED}\"");
    write_labels(out, &labels);
    let _ = writeln!(out, "    name: {}", scalar(&ns.name));
    let _ = writeln!(out, "    resourceVersion: \"{version}\"");
    let _ = writeln!(out, "    uid: {}", uid(&["Namespace", &ns.name]));
    out.push_str("  spec:\n    finalizers:\n    - kubernetes\n  status:\n    phase: Active\n");
}

fn pod_item(out: &mut String, pod: &PodSpec, version: u32) {
    let mut labels = pod.labels.clone();
    labels.sort();
    out.push_str("- apiVersion: v1\n  kind: Pod\n  metadata:\n");
    let _ = writeln!(out, "    creationTimestamp: \"{CREATED}\"");
    write_labels(out, &labels);
    let _ = writeln!(out, "    name: {}", scalar(&pod.name));
    let _ = writeln!(out, "    namespace: {}", scalar(&pod.namespace));
    let _ = writeln!(out, "    resourceVersion: \"{version}\"");
    let _ = writeln!(out, "    uid: {}", uid(&["Pod", &pod.namespace, &pod.name]));
    out.push_str("  spec:\n    containers:\n");
    out.push_str("    - image: registry.k8s.io/e2e-test-images/agnhost:2.53\n");
    out.push_str("      imagePullPolicy: IfNotPresent\n");
    let _ = writeln!(out, "      name: {}", scalar(&pod.name));
    if !pod.ports.is_empty() {
        out.push_str("      ports:\n");
        for (name, port) in &pod.ports {
            let _ = writeln!(out, "      - containerPort: {port}");
            let _ = writeln!(out, "        name: {}", scalar(name));
            out.push_str("        protocol: TCP\n");
        }
    }
    out.push_str(
        "      resources: {}\n\
         \x20     terminationMessagePath: /dev/termination-log\n\
         \x20     terminationMessagePolicy: File\n\
         \x20   dnsPolicy: ClusterFirst\n\
         \x20   enableServiceLinks: true\n",
    );
    let _ = writeln!(out, "    nodeName: {}", scalar(&pod.node_name));
    out.push_str(
        "    preemptionPolicy: PreemptLowerPriority\n\
         \x20   priority: 0\n\
         \x20   restartPolicy: Always\n\
         \x20   schedulerName: default-scheduler\n\
         \x20   securityContext: {}\n\
         \x20   serviceAccount: default\n\
         \x20   serviceAccountName: default\n\
         \x20   terminationGracePeriodSeconds: 30\n",
    );
    out.push_str("  status:\n");
    let _ = writeln!(out, "    hostIP: {}", pod.host_ip);
    let _ = writeln!(out, "    hostIPs:\n    - ip: {}", pod.host_ip);
    out.push_str("    phase: Running\n");
    if let Some(first) = pod.ips.first() {
        let _ = writeln!(out, "    podIP: {first}");
        out.push_str("    podIPs:\n");
        for ip in &pod.ips {
            let _ = writeln!(out, "    - ip: {ip}");
        }
    }
    out.push_str("    qosClass: BestEffort\n");
    let _ = writeln!(out, "    startTime: \"{CREATED}\"");
}

pub(crate) fn write_labels(out: &mut String, labels: &[(String, String)]) {
    if labels.is_empty() {
        return;
    }
    out.push_str("    labels:\n");
    for (key, value) in labels {
        let _ = writeln!(out, "      {}: {}", scalar(key), scalar(value));
    }
}

/// A YAML scalar as kubectl prints it: plain when unambiguous, double-quoted when it
/// would otherwise read as a number, a boolean, null, or contain YAML syntax.
pub(crate) fn scalar(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && value.starts_with(|c: char| c.is_ascii_alphabetic())
        && !matches!(
            value.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null"
        );
    if plain {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

/// A stable, UUID-shaped id derived from the object's kind and names.
pub(crate) fn uid(parts: &[&str]) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in parts.join("/").bytes() {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        b = (b ^ u64::from(byte))
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(7);
    }
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test inputs are literals")]
mod tests {
    use super::*;

    #[test]
    fn pod_list_reads_like_kubectl() {
        let yaml = cluster_yaml(
            &[NamespaceSpec {
                name: "prod".into(),
                labels: vec![("team".into(), "1".into())],
            }],
            &[PodSpec {
                namespace: "prod".into(),
                name: "web".into(),
                labels: vec![("app".into(), "web".into())],
                node_name: "node1".into(),
                host_ip: "198.18.0.1".parse().unwrap(),
                ips: vec![
                    "198.18.0.10".parse().unwrap(),
                    "fd00:18::10".parse().unwrap(),
                ],
                ports: vec![("http".into(), 80)],
            }],
        );
        for expected in [
            "      kubernetes.io/metadata.name: prod\n      team: \"1\"\n",
            "    nodeName: node1\n",
            "    phase: Running\n    podIP: 198.18.0.10\n    podIPs:\n    - ip: 198.18.0.10\n    - ip: fd00:18::10\n",
            "      - containerPort: 80\n        name: http\n        protocol: TCP\n",
            "kind: List\n",
        ] {
            assert!(yaml.contains(expected), "missing {expected:?} in:\n{yaml}");
        }
        assert_eq!(yaml.matches("- apiVersion: v1\n").count(), 2);
    }

    #[test]
    fn uids_are_stable_and_distinct() {
        assert_eq!(uid(&["Pod", "a", "b"]), uid(&["Pod", "a", "b"]));
        assert_ne!(uid(&["Pod", "a", "b"]), uid(&["Pod", "a", "c"]));
        assert_eq!(uid(&["Pod", "a", "b"]).len(), 36);
    }
}
