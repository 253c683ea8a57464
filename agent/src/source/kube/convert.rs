//! Turning objects as the API server sends them into the slim `model` values the store
//! keeps. Decoding goes through k8s-openapi types and validation through the manifest
//! source's `validate` and `service`, so an error reads the same in both sources
//! (`/api/v1/pods: Pod ns/name: field: message`). Everything the compiler does not read
//! (managed fields, annotations other than `netfence.io/mode`, conditions other than
//! an endpoint's `ready`, container specs beyond ports, ...) is gone once an object has
//! been converted: the raw object is dropped on arrival. An FQDN EndpointSlice converts
//! to nothing, without an error.

use std::borrow::Cow;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Lookup;
use serde::de::DeserializeOwned;

use crate::model;
use crate::source::Object;
use crate::source::service;
use crate::source::validate::{self, Checker};
use crate::source::{Kind, ObjectKey, SourceError};

/// The outcome of converting one object.
#[derive(Debug)]
pub struct Converted<T> {
    /// Kind, namespace and name; `None` when the object has no name (it cannot be
    /// stored, nor can an earlier version of it exist).
    pub key: Option<ObjectKey>,
    /// The slim value, when the object decoded and validated.
    pub value: Option<T>,
    pub errors: Vec<SourceError>,
    pub warnings: Vec<SourceError>,
}

/// A kind the store keeps: the slim model value, looked up by (namespace, name).
pub trait Slim: Lookup<DynamicType = ()> + Clone + PartialEq + Send + Sync + 'static {
    /// What the API server sends for this kind.
    type Raw: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static;
    const KIND: Kind;

    /// Decodes and validates; `origin` is the resource path, used as the errors' "file".
    fn convert(raw: Self::Raw, origin: &str) -> Converted<Self>;

    /// A value that only carries the key, for deleting an object whose last body did
    /// not convert.
    fn tombstone(key: &ObjectKey) -> Self;

    /// The object as the policy engine takes it in a change.
    fn object(&self) -> Object;
}

/// A slim model value as the reflector store keeps it (the store's `Lookup` is
/// implemented on this wrapper: the model types belong to the policy crate).
#[derive(Clone, Debug, PartialEq)]
pub struct Stored<T>(pub T);

impl<T> std::ops::Deref for Stored<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Kind, namespace and name of a raw object; `None` without a name.
pub fn key_of(kind: Kind, meta: &ObjectMeta) -> Option<ObjectKey> {
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let namespace = if kind.is_namespaced() {
        validate::namespace_of(meta)
    } else {
        String::new()
    };
    Some(ObjectKey {
        kind,
        namespace,
        name,
    })
}

/// `Kind ns/name`, or the kind alone for an object without a name.
fn object_name(kind: Kind, key: Option<&ObjectKey>) -> String {
    key.map_or_else(|| format!("{kind} (no metadata.name)"), ToString::to_string)
}

/// Decodes one top-level field (`spec`, `status`) of a raw object through k8s-openapi,
/// naming the failing field with its full path.
fn field<T: DeserializeOwned + Default>(
    cx: &mut Checker<'_>,
    data: &mut serde_json::Value,
    name: &str,
) -> Option<T> {
    let value = match data.get_mut(name).map(serde_json::Value::take) {
        None | Some(serde_json::Value::Null) => return Some(T::default()),
        Some(value) => value,
    };
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            let path = error.path().to_string();
            let field = if path == "." {
                name.to_owned()
            } else if path.starts_with('[') {
                format!("{name}{path}")
            } else {
                format!("{name}.{path}")
            };
            cx.error(&field, error.into_inner().to_string());
            None
        }
    }
}

fn finish<T>(key: Option<ObjectKey>, value: Option<T>, cx: Checker<'_>) -> Converted<T> {
    Converted {
        key,
        value,
        errors: cx.errors,
        warnings: cx.warnings,
    }
}

impl Slim for Stored<model::Pod> {
    type Raw = DynamicObject;
    const KIND: Kind = Kind::Pod;

    fn object(&self) -> Object {
        Object::Pod(self.0.clone())
    }

    fn convert(mut raw: DynamicObject, origin: &str) -> Converted<Self> {
        raw.metadata.managed_fields = None;
        let key = key_of(Self::KIND, &raw.metadata);
        let mut cx = Checker::new(origin, object_name(Self::KIND, key.as_ref()));
        let spec = field::<core::PodSpec>(&mut cx, &mut raw.data, "spec");
        let status = field::<core::PodStatus>(&mut cx, &mut raw.data, "status");
        let value = match (spec, status) {
            (Some(spec), Some(status)) => {
                let pod = core::Pod {
                    metadata: raw.metadata,
                    spec: Some(spec),
                    status: Some(status),
                };
                validate::pod(&mut cx, &pod)
            }
            _ => None,
        };
        // Its labels are interned by validation (`model::intern`).
        finish(key, value.map(Stored), cx)
    }

    fn tombstone(key: &ObjectKey) -> Self {
        Stored(model::Pod {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            labels: model::Labels::new(),
            node_name: None,
            ips: Vec::new(),
            host_network: false,
            phase: model::PodPhase::Unknown,
            ports: Vec::new(),
        })
    }
}

impl Slim for Stored<model::Policy> {
    type Raw = DynamicObject;
    const KIND: Kind = Kind::NetworkPolicy;

    fn object(&self) -> Object {
        Object::Policy(self.0.clone())
    }

    fn convert(mut raw: DynamicObject, origin: &str) -> Converted<Self> {
        raw.metadata.managed_fields = None;
        let key = key_of(Self::KIND, &raw.metadata);
        let mut cx = Checker::new(origin, object_name(Self::KIND, key.as_ref()));
        let value =
            field::<net::NetworkPolicySpec>(&mut cx, &mut raw.data, "spec").and_then(|spec| {
                let policy = net::NetworkPolicy {
                    metadata: raw.metadata,
                    spec: Some(spec),
                };
                validate::policy(&mut cx, &policy)
            });
        finish(key, value.map(Stored), cx)
    }

    fn tombstone(key: &ObjectKey) -> Self {
        Stored(model::Policy {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            pod_selector: model::LabelSelector::default(),
            isolates_ingress: false,
            isolates_egress: false,
            ingress: Vec::new(),
            egress: Vec::new(),
            audit: false,
        })
    }
}

impl Slim for Stored<model::Service> {
    type Raw = DynamicObject;
    const KIND: Kind = Kind::Service;

    fn object(&self) -> Object {
        Object::Service(self.0.clone())
    }

    fn convert(mut raw: DynamicObject, origin: &str) -> Converted<Self> {
        raw.metadata.managed_fields = None;
        let key = key_of(Self::KIND, &raw.metadata);
        let mut cx = Checker::new(origin, object_name(Self::KIND, key.as_ref()));
        let value = field::<core::ServiceSpec>(&mut cx, &mut raw.data, "spec").and_then(|spec| {
            let svc = core::Service {
                metadata: raw.metadata,
                spec: Some(spec),
                status: None,
            };
            service::service(&mut cx, &svc)
        });
        finish(key, value.map(Stored), cx)
    }

    fn tombstone(key: &ObjectKey) -> Self {
        Stored(model::Service {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            cluster_ips: Vec::new(),
            ports: Vec::new(),
            selector: None,
        })
    }
}

impl Slim for Stored<model::EndpointSlice> {
    type Raw = DynamicObject;
    const KIND: Kind = Kind::EndpointSlice;

    fn object(&self) -> Object {
        Object::EndpointSlice(self.0.clone())
    }

    fn convert(mut raw: DynamicObject, origin: &str) -> Converted<Self> {
        raw.metadata.managed_fields = None;
        let key = key_of(Self::KIND, &raw.metadata);
        let mut cx = Checker::new(origin, object_name(Self::KIND, key.as_ref()));
        let address_type = field::<String>(&mut cx, &mut raw.data, "addressType");
        let endpoints = field::<Vec<discovery::Endpoint>>(&mut cx, &mut raw.data, "endpoints");
        let ports = field::<Option<Vec<discovery::EndpointPort>>>(&mut cx, &mut raw.data, "ports");
        let value = match (address_type, endpoints, ports) {
            (Some(address_type), Some(endpoints), Some(ports)) => {
                let slice = discovery::EndpointSlice {
                    address_type,
                    endpoints,
                    metadata: raw.metadata,
                    ports,
                };
                // Valid, but no packet carries a name: nothing to store, no error.
                if service::is_fqdn(&slice) {
                    None
                } else {
                    service::endpoint_slice(&mut cx, &slice)
                }
            }
            _ => None,
        };
        finish(key, value.map(Stored), cx)
    }

    fn tombstone(key: &ObjectKey) -> Self {
        Stored(model::EndpointSlice {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            service: None,
            ports: Vec::new(),
            endpoints: Vec::new(),
        })
    }
}

impl Slim for Stored<model::Namespace> {
    type Raw = PartialObjectMeta<core::Namespace>;
    const KIND: Kind = Kind::Namespace;

    fn object(&self) -> Object {
        Object::Namespace(self.0.clone())
    }

    fn convert(raw: PartialObjectMeta<core::Namespace>, origin: &str) -> Converted<Self> {
        let mut metadata = raw.metadata;
        metadata.managed_fields = None;
        let key = key_of(Self::KIND, &metadata);
        let mut cx = Checker::new(origin, object_name(Self::KIND, key.as_ref()));
        let namespace = core::Namespace {
            metadata,
            ..core::Namespace::default()
        };
        let value = validate::namespace(&mut cx, &namespace);
        finish(key, value.map(Stored), cx)
    }

    fn tombstone(key: &ObjectKey) -> Self {
        Stored(model::Namespace {
            name: key.name.clone(),
            labels: model::Labels::new(),
        })
    }
}

/// The store is keyed by (namespace, name) from the slim values themselves: no
/// `ObjectMeta` is kept.
macro_rules! lookup {
    ($ty:ty, $kind:literal, $group:literal, $plural:literal, |$v:ident| $namespace:expr) => {
        impl Lookup for $ty {
            type DynamicType = ();

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }

            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }

            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("v1")
            }

            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }

            fn name(&self) -> Option<Cow<'_, str>> {
                Some(Cow::Borrowed(&self.0.name))
            }

            fn namespace(&self) -> Option<Cow<'_, str>> {
                let $v = &self.0;
                $namespace
            }

            fn resource_version(&self) -> Option<Cow<'_, str>> {
                None
            }

            fn uid(&self) -> Option<Cow<'_, str>> {
                None
            }
        }
    };
}

lookup!(Stored<model::Pod>, "Pod", "", "pods", |p| Some(
    Cow::Borrowed(&p.namespace)
));
lookup!(
    Stored<model::Policy>,
    "NetworkPolicy",
    "networking.k8s.io",
    "networkpolicies",
    |p| Some(Cow::Borrowed(&p.namespace))
);
lookup!(
    Stored<model::Namespace>,
    "Namespace",
    "",
    "namespaces",
    |_n| None
);
lookup!(Stored<model::Service>, "Service", "", "services", |s| Some(
    Cow::Borrowed(&s.namespace)
));
lookup!(
    Stored<model::EndpointSlice>,
    "EndpointSlice",
    "discovery.k8s.io",
    "endpointslices",
    |s| Some(Cow::Borrowed(&s.namespace))
);
