//! Services and EndpointSlices from manifests: a kubectl `List` round trip into exact
//! model values (named targetPort, headless, ExternalName, dual-stack clusterIPs,
//! not-ready endpoints, an FQDN slice ignored), typed lists, the API server's
//! validation with its exact messages, a port without a number, and last good versions.

use std::path::Path;

use netfence::model::{
    EndpointSlice, Port, Protocol, Service, ServicePort, SliceEndpoint, SlicePort,
};
use netfence::source::ManifestDir;

use super::{FIXTURES, ip, labels, messages, parse, tempdir, write};

fn svc_port(name: Option<&str>, protocol: Protocol, port: u16, target_port: Port) -> ServicePort {
    ServicePort {
        name: name.map(str::to_owned),
        protocol,
        port,
        target_port,
    }
}

fn slice_port(name: &str, protocol: Protocol, port: u16) -> SlicePort {
    SlicePort {
        name: Some(name.to_owned()),
        protocol,
        port,
    }
}

fn endpoint(address: &str, ready: bool) -> SliceEndpoint {
    SliceEndpoint {
        addresses: vec![ip(address)],
        ready,
    }
}

#[test]
fn kubectl_services_and_endpoint_slices_load_into_exact_model_values() {
    let dir = tempdir();
    std::fs::copy(
        Path::new(FIXTURES).join("services.yaml"),
        dir.path().join("services.yaml"),
    )
    .unwrap();
    let load = ManifestDir::new(dir.path()).load();
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    assert!(load.warnings.is_empty(), "{:?}", messages(&load.warnings));
    let state = load.state;
    assert!(state.pods.is_empty() && state.policies.is_empty());

    let services = vec![
        Service {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            cluster_ips: vec![ip("10.96.0.10")],
            ports: vec![
                svc_port(Some("dns"), Protocol::Udp, 53, Port::Number(53)),
                svc_port(Some("dns-tcp"), Protocol::Tcp, 53, Port::Number(53)),
            ],
            selector: Some(labels(&[("k8s-app", "kube-dns")])),
        },
        // ExternalName: no VIP, no ports.
        Service {
            namespace: "prod".into(),
            name: "billing".into(),
            cluster_ips: vec![],
            ports: vec![],
            selector: None,
        },
        // Headless: no VIP; targetPort kept.
        Service {
            namespace: "prod".into(),
            name: "db".into(),
            cluster_ips: vec![],
            ports: vec![svc_port(None, Protocol::Tcp, 5432, Port::Number(5432))],
            selector: Some(labels(&[("app", "db")])),
        },
        // Dual-stack, in clusterIPs order; a named and a numeric targetPort.
        Service {
            namespace: "prod".into(),
            name: "web".into(),
            cluster_ips: vec![ip("10.96.0.20"), ip("fd00:96::20")],
            ports: vec![
                svc_port(Some("http"), Protocol::Tcp, 80, Port::Name("http".into())),
                svc_port(Some("metrics"), Protocol::Udp, 9090, Port::Number(9091)),
            ],
            selector: Some(labels(&[("app", "web")])),
        },
    ];
    assert_eq!(state.services, services);

    // The FQDN slice `prod/billing-fqdn` contributes nothing.
    let slices = vec![
        EndpointSlice {
            namespace: "kube-system".into(),
            name: "kube-dns-4f7s2".into(),
            service: Some("kube-dns".into()),
            ports: vec![
                slice_port("dns", Protocol::Udp, 53),
                slice_port("dns-tcp", Protocol::Tcp, 53),
            ],
            endpoints: vec![endpoint("198.18.1.53", true)],
        },
        EndpointSlice {
            namespace: "prod".into(),
            name: "web-8xk2p".into(),
            service: Some("web".into()),
            ports: vec![
                slice_port("http", Protocol::Tcp, 8080),
                slice_port("metrics", Protocol::Udp, 9091),
            ],
            // ready: true, false (terminating), absent (= ready).
            endpoints: vec![
                endpoint("198.18.1.5", true),
                endpoint("198.18.2.6", false),
                endpoint("198.18.2.7", true),
            ],
        },
        EndpointSlice {
            namespace: "prod".into(),
            name: "web-v6q9z".into(),
            service: Some("web".into()),
            // Protocol defaults to TCP.
            ports: vec![
                slice_port("http", Protocol::Tcp, 8080),
                slice_port("metrics", Protocol::Udp, 9091),
            ],
            endpoints: vec![endpoint("fd00:18:1::5", true)],
        },
    ];
    assert_eq!(state.endpoint_slices, slices);
}

#[test]
fn defaults_typed_lists_and_the_default_namespace() {
    let text = "apiVersion: v1\nkind: ServiceList\nitems:\n\
                - metadata: {name: solo}\n  spec: {ports: [{port: 8080}], selector: {}}\n\
                - metadata: {name: zero, namespace: x}\n  spec: {clusterIP: \"\", type: NodePort, ports: [{port: 80, targetPort: 0, protocol: \"\"}]}\n\
                ---\n\
                apiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems:\n\
                - metadata: {name: s, namespace: x}\n  addressType: IPv4\n  endpoints: [{addresses: [198.18.0.1, 198.18.0.2], conditions: {}}]\n  ports: [{port: 80}]\n";
    let load = parse(text);
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    assert_eq!(
        load.state.services,
        [
            // No clusterIP yet (not allocated), no selector (empty), targetPort = port.
            Service {
                namespace: "default".into(),
                name: "solo".into(),
                cluster_ips: vec![],
                ports: vec![svc_port(None, Protocol::Tcp, 8080, Port::Number(8080))],
                selector: None,
            },
            // targetPort 0 and protocol "" are defaulted as the API server does.
            Service {
                namespace: "x".into(),
                name: "zero".into(),
                cluster_ips: vec![],
                ports: vec![svc_port(None, Protocol::Tcp, 80, Port::Number(80))],
                selector: None,
            },
        ]
    );
    assert_eq!(
        load.state.endpoint_slices,
        [EndpointSlice {
            namespace: "x".into(),
            name: "s".into(),
            service: None,
            ports: vec![SlicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 80
            }],
            endpoints: vec![SliceEndpoint {
                addresses: vec![ip("198.18.0.1"), ip("198.18.0.2")],
                ready: true
            }],
        }]
    );
}

/// A Service `s` in `x` with the given spec (YAML flow mapping).
fn svc(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: x}}\nspec: {spec}\n")
}

/// An EndpointSlice `e` in `x` with the given top-level fields (YAML, unindented).
fn eps(fields: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: e, namespace: x}}\n{fields}"
    )
}

#[test]
fn service_and_endpoint_slice_validation_errors() {
    const P80: &str = "ports: [{port: 80}]";
    let table: Vec<(String, &str)> = vec![
        (
            svc(&format!("{{clusterIP: 10.96.0.300, {P80}}}")),
            "spec.clusterIP: \"10.96.0.300\": must be a valid IP address",
        ),
        (
            svc(&format!("{{clusterIP: 10.96.0.0/12, {P80}}}")),
            "spec.clusterIP: \"10.96.0.0/12\": must be a valid IP address",
        ),
        (
            svc(&format!("{{clusterIPs: [10.96.0.1, 10.96.0.2], {P80}}}")),
            "spec.clusterIPs[1]: \"10.96.0.2\": may specify no more than one IP for each IP family",
        ),
        (
            svc(&format!(
                "{{clusterIPs: [\"fd00::1\", \"fd00::2\"], {P80}}}"
            )),
            "spec.clusterIPs[1]: \"fd00::2\": may specify no more than one IP for each IP family",
        ),
        (
            svc(&format!("{{clusterIPs: [10.96.0.1, \"fd00::zz\"], {P80}}}")),
            "spec.clusterIPs[1]: \"fd00::zz\": must be a valid IP address",
        ),
        (
            svc(&format!(
                "{{clusterIP: 10.96.0.1, clusterIPs: [10.96.0.2], {P80}}}"
            )),
            "spec.clusterIPs[0]: \"10.96.0.2\": must be the same as spec.clusterIP \"10.96.0.1\"",
        ),
        (
            svc(&format!("{{clusterIPs: [None, 10.96.0.1], {P80}}}")),
            "spec.clusterIPs[1]: \"10.96.0.1\": must be the only value when the first is \"None\" (headless)",
        ),
        (
            svc(&format!("{{clusterIPs: [10.96.0.1, None], {P80}}}")),
            "spec.clusterIPs[1]: \"None\": only the first value may be \"None\" (headless)",
        ),
        (
            svc("{type: ExternalName, externalName: a.example.com, clusterIP: 10.96.0.1}"),
            "spec.clusterIP: may not be set for ExternalName services",
        ),
        (
            svc("{type: ExternalName, externalName: a.example.com, clusterIPs: [None]}"),
            "spec.clusterIPs: may not be set for ExternalName services",
        ),
        (
            svc(&format!("{{type: Headless, {P80}}}")),
            "spec.type: unsupported value \"Headless\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ),
        (svc("{clusterIP: 10.96.0.1}"), "spec.ports: required"),
        (
            svc("{ports: [{port: 0}]}"),
            "spec.ports[0].port: 0: must be between 1 and 65535, inclusive",
        ),
        (
            svc("{ports: [{port: 65536}]}"),
            "spec.ports[0].port: 65536: must be between 1 and 65535, inclusive",
        ),
        (
            svc("{ports: [{port: 80, protocol: ICMP}]}"),
            "spec.ports[0].protocol: unsupported value \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
        ),
        (
            svc("{ports: [{port: 80, protocol: tcp}]}"),
            "spec.ports[0].protocol: unsupported value \"tcp\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
        ),
        (
            svc("{ports: [{port: 80, targetPort: 70000}]}"),
            "spec.ports[0].targetPort: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            svc("{ports: [{port: 80, targetPort: -1}]}"),
            "spec.ports[0].targetPort: -1: must be between 1 and 65535, inclusive",
        ),
        (
            svc("{ports: [{port: 80, targetPort: HTTP}]}"),
            "spec.ports[0].targetPort: \"HTTP\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
        ),
        (
            svc("{ports: [{port: 80, targetPort: \"8080\"}]}"),
            "spec.ports[0].targetPort: \"8080\": must contain at least one letter (a-z)",
        ),
        (
            svc("{ports: [{port: 80, targetPort: web--api}]}"),
            "spec.ports[0].targetPort: \"web--api\": must not contain consecutive hyphens",
        ),
        (
            svc("{ports: [{port: 80, targetPort: a-very-long-port-name}]}"),
            "spec.ports[0].targetPort: \"a-very-long-port-name\": must be no more than 15 characters",
        ),
        (
            svc("{ports: [{port: 80, name: http}, {port: 81}]}"),
            "spec.ports[1].name: required when the Service has more than one port",
        ),
        (
            svc("{ports: [{port: 80, name: http}, {port: 81, name: http}]}"),
            "spec.ports[1].name: duplicate value \"http\"",
        ),
        (
            svc("{ports: [{port: 80, name: Http}]}"),
            "spec.ports[0].name: \"Http\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ),
        (
            svc("{ports: [{port: 80, name: a}, {port: 80, name: b, protocol: TCP}]}"),
            "spec.ports[1]: duplicate value 80/TCP",
        ),
        (
            svc("{ports: [{port: 80}], selector: {app: \"-x\"}}"),
            "spec.selector[app]: \"-x\": a valid label value must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
        (
            svc("{ports: [{port: \"80\"}]}"),
            "spec.ports[0].port: invalid type: string \"80\", expected i32",
        ),
        (
            svc("{ports: [{port: 80}]}").replace("name: s,", "name: 1st,"),
            "metadata.name: \"1st\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
        ),
        // EndpointSlices.
        (
            eps("addressType: IP\nendpoints: []\n"),
            "addressType: unsupported value \"IP\": supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
        ),
        (eps("endpoints: []\n"), "addressType: required"),
        (
            eps("addressType: IPv4\nendpoints: [{addresses: [\"fd00::1\"]}]\n"),
            "endpoints[0].addresses[0]: \"fd00::1\": must be a valid IPv4 address",
        ),
        (
            eps(
                "addressType: IPv4\nendpoints: [{addresses: [198.18.0.1]}, {addresses: [198.18.0.256]}]\n",
            ),
            "endpoints[1].addresses[0]: \"198.18.0.256\": must be a valid IPv4 address",
        ),
        (
            eps("addressType: IPv6\nendpoints: [{addresses: [\"fd00::1\", 198.18.0.1]}]\n"),
            "endpoints[0].addresses[1]: \"198.18.0.1\": must be a valid IPv6 address",
        ),
        (
            eps("addressType: IPv6\nendpoints: [{addresses: [web.example.com]}]\n"),
            "endpoints[0].addresses[0]: \"web.example.com\": must be a valid IPv6 address",
        ),
        (
            eps("addressType: IPv4\nendpoints: [{addresses: []}]\n"),
            "endpoints[0].addresses: must contain at least 1 address",
        ),
        (
            eps("addressType: IPv4\nendpoints: []\nports: [{port: 0}]\n"),
            "ports[0].port: 0: must be between 1 and 65535, inclusive",
        ),
        (
            eps("addressType: IPv4\nendpoints: []\nports: [{port: 65536}]\n"),
            "ports[0].port: 65536: must be between 1 and 65535, inclusive",
        ),
        (
            eps("addressType: IPv4\nendpoints: []\nports: [{port: 53, protocol: udp}]\n"),
            "ports[0].protocol: unsupported value \"udp\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
        ),
        (
            eps(
                "addressType: IPv4\nendpoints: []\nports: [{port: 53, name: dns}, {port: 54, name: dns}]\n",
            ),
            "ports[1].name: duplicate value \"dns\"",
        ),
        (
            eps("addressType: IPv4\nendpoints: []\nports: [{port: 53}, {port: 54}]\n"),
            "ports[1].name: duplicate value \"\"",
        ),
        (
            eps(
                "addressType: IPv4\nendpoints: [{addresses: [198.18.0.1], conditions: {ready: yes}}]\n",
            ),
            "endpoints[0].conditions.ready: invalid type: string \"yes\", expected a boolean",
        ),
        (
            eps("addressType: IPv4\nendpoints: []\n").replace(
                "namespace: x}",
                "namespace: x, labels: {kubernetes.io/service-name: \"-web\"}}",
            ),
            "metadata.labels[kubernetes.io/service-name]: \"-web\": a valid label value must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
    ];
    for (manifest, expected) in &table {
        let load = parse(manifest);
        let object = if manifest.contains("kind: Service\n") {
            if manifest.contains("name: 1st") {
                "Service x/1st"
            } else {
                "Service x/s"
            }
        } else {
            "EndpointSlice x/e"
        };
        assert_eq!(
            messages(&load.errors),
            [format!("nfs.yaml: {object}: {expected}")],
            "{manifest}"
        );
        assert!(
            load.state.services.is_empty() && load.state.endpoint_slices.is_empty(),
            "{manifest}: an invalid object is skipped"
        );
    }
}

#[test]
fn slice_port_without_number_is_dropped_with_a_warning() {
    let load = parse(&eps(
        "addressType: IPv4\nendpoints: [{addresses: [198.18.0.1]}]\nports: [{name: all, protocol: UDP}, {name: http, port: 80}]\n",
    ));
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    assert_eq!(
        messages(&load.warnings),
        [
            "nfs.yaml: EndpointSlice x/e: ports[0].port: not set (\"all ports\" in the API): netfence ignores this port"
        ]
    );
    assert_eq!(
        load.state.endpoint_slices[0].ports,
        [slice_port("http", Protocol::Tcp, 80)]
    );
    assert_eq!(
        load.state.endpoint_slices[0].endpoints,
        [endpoint("198.18.0.1", true)]
    );
}

#[test]
fn fqdn_slice_is_no_error_and_no_object() {
    let load = parse(&eps(
        "addressType: FQDN\nendpoints: [{addresses: [db.example.com]}]\nports: [{port: 5432}]\n",
    ));
    assert!(load.errors.is_empty(), "{:?}", messages(&load.errors));
    assert!(load.warnings.is_empty(), "{:?}", messages(&load.warnings));
    assert!(load.state.endpoint_slices.is_empty());
}

#[test]
fn kinds_in_other_versions_or_misspelt() {
    let load = parse(
        "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\nendpoints: []\n---\n\
         apiVersion: v1\nkind: Services\nmetadata: {name: s}\n---\n\
         apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: knative}\n---\n\
         apiVersion: v1\nkind: Endpoints\nmetadata: {name: legacy}\n",
    );
    assert_eq!(
        messages(&load.errors),
        [
            "nfs.yaml: EndpointSlice default/e: apiVersion: \"discovery.k8s.io/v1beta1\": EndpointSlice is served as \"discovery.k8s.io/v1\"",
            "nfs.yaml: Services default/s: kind: \"Services\" is not a kind; did you mean \"Service\"?",
        ]
    );
    assert!(load.state.services.is_empty() && load.state.endpoint_slices.is_empty());
}

#[test]
fn last_good_service_and_slice_kept_when_an_edit_makes_them_invalid() {
    let good_svc = svc("{clusterIP: 10.96.0.7, ports: [{port: 80, targetPort: http}]}");
    let good_eps =
        eps("addressType: IPv4\nendpoints: [{addresses: [198.18.0.1]}]\nports: [{port: 8080}]\n");
    let dir = tempdir();
    write(
        dir.path(),
        "svc.yaml",
        &format!("{good_svc}---\n{good_eps}"),
    );
    let mut source = ManifestDir::new(dir.path());
    let first = source.load();
    assert!(first.errors.is_empty(), "{:?}", messages(&first.errors));
    assert_eq!(first.state.services[0].cluster_ips, [ip("10.96.0.7")]);
    assert_eq!(first.state.endpoint_slices.len(), 1);

    let bad = format!(
        "{}---\n{}",
        good_svc.replace("10.96.0.7", "10.96.0.777"),
        good_eps.replace("198.18.0.1", "fd00::1")
    );
    write(dir.path(), "svc.yaml", &bad);
    let second = source.load();
    let file = dir.path().join("svc.yaml").display().to_string();
    assert_eq!(
        messages(&second.errors),
        [
            format!(
                "{file}: Service x/s: spec.clusterIP: \"10.96.0.777\": must be a valid IP address"
            ),
            format!(
                "{file}: EndpointSlice x/e: endpoints[0].addresses[0]: \"fd00::1\": must be a valid IPv4 address"
            ),
        ]
    );
    assert_eq!(second.state, first.state, "the last good versions stay");

    // An edit that validates replaces them; removing the file removes them.
    write(
        dir.path(),
        "svc.yaml",
        &format!(
            "{}---\n{good_eps}",
            good_svc.replace("10.96.0.7", "10.96.0.8")
        ),
    );
    let third = source.load();
    assert!(third.errors.is_empty(), "{:?}", messages(&third.errors));
    assert_eq!(third.state.services[0].cluster_ips, [ip("10.96.0.8")]);
    std::fs::remove_file(dir.path().join("svc.yaml")).unwrap();
    let fourth = source.load();
    assert!(fourth.state.services.is_empty() && fourth.state.endpoint_slices.is_empty());
}
