//! Live mode of the operator commands: Namespaces (metadata only), Pods,
//! NetworkPolicies, Services and EndpointSlices listed once from the API server
//! (`--kubeconfig FILE`, or the in-cluster service account), read-only, no watch.
//! Each object goes through the API source's own conversion (`source::kube::Slim`),
//! so it reads, validates and fails the same as in `netfence run`; an object that does
//! not convert is a problem like a bad manifest (fatal unless `--keep-going`).

use std::path::Path;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use kube::Resource as _;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::PartialObjectMeta;

use super::input::{InputError, Objects};
use crate::model;
use crate::source::kube::{Connection, Slim, Stored, client};

/// Objects per list request (continued until the list is complete).
const PAGE: u32 = 500;

/// Lists every object of one kind through `api`, converting each.
async fn list<K: Slim>(
    api: Api<K::Raw>,
    origin: &str,
    read: &mut Objects,
) -> Result<(), InputError> {
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|error| InputError::Live(format!("{origin}: cannot list: {error}")))?;
        for raw in page.items {
            let converted = K::convert(raw, origin);
            read.errors.extend(converted.errors);
            read.warnings.extend(converted.warnings);
            if let Some(value) = converted.value {
                read.insert(origin, value.object());
            }
        }
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

async fn list_all(connection: &Connection) -> Result<Objects, InputError> {
    let client = client(connection)
        .await
        .map_err(|error| InputError::Live(error.to_string()))?;
    let mut read = Objects::default();
    let api = Api::<PartialObjectMeta<core::Namespace>>::all(client.clone());
    let origin = core::Namespace::url_path(&(), None);
    list::<Stored<model::Namespace>>(api, &origin, &mut read).await?;
    let erased = |resource: ApiResource| Api::<DynamicObject>::all_with(client.clone(), &resource);
    let origin = core::Pod::url_path(&(), None);
    let api = erased(ApiResource::erase::<core::Pod>(&()));
    list::<Stored<model::Pod>>(api, &origin, &mut read).await?;
    let origin = net::NetworkPolicy::url_path(&(), None);
    let api = erased(ApiResource::erase::<net::NetworkPolicy>(&()));
    list::<Stored<model::Policy>>(api, &origin, &mut read).await?;
    let origin = core::Service::url_path(&(), None);
    let api = erased(ApiResource::erase::<core::Service>(&()));
    list::<Stored<model::Service>>(api, &origin, &mut read).await?;
    let origin = discovery::EndpointSlice::url_path(&(), None);
    let api = erased(ApiResource::erase::<discovery::EndpointSlice>(&()));
    list::<Stored<model::EndpointSlice>>(api, &origin, &mut read).await?;
    Ok(read)
}

/// Lists the cluster once through `kubeconfig`, or in-cluster when `None`.
pub fn read(kubeconfig: Option<&Path>) -> Result<Objects, InputError> {
    let connection = match kubeconfig {
        Some(path) => Connection::Kubeconfig(path.to_path_buf()),
        None => Connection::InCluster,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| InputError::Live(format!("cannot start the client runtime: {error}")))?;
    // The client logs connection failures itself; the error returned says it once.
    let quiet = tracing::subscriber::NoSubscriber::default();
    tracing::subscriber::with_default(quiet, || runtime.block_on(list_all(&connection)))
}
