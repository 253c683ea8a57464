//! One kind's pipeline: kube-runtime `watcher` (list, then watch from the list's
//! resourceVersion; relist after 410 Gone; exponential backoff on errors) → conversion
//! to the slim model value → `reflector` store → one change per event for the policy
//! engine (an object put or deleted; after a complete list, every object of the kind
//! relisted, so the engine deletes what the list no longer has). The store stays the
//! whole truth: a snapshot of it rebuilds an engine that was lost.
//!
//! Invalid objects never reach the store: an invalid update is dropped (the store keeps
//! the last good version), and during a relist an invalid object is replaced by its
//! last good version from the store being replaced, as the manifest source does.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};

use super::Shared;
use super::convert::{Slim, key_of};
use crate::source::{Change, Object, ObjectKey};

/// Runs until the stream ends (never, in practice: the watcher retries forever).
pub async fn run<K, S>(
    stream: S,
    writer: reflector::store::Writer<K>,
    shared: Arc<Shared>,
    origin: String,
) where
    K: Slim,
    S: futures::Stream<Item = watcher::Result<Event<K::Raw>>> + Send + 'static,
{
    let reader = writer.as_reader();
    let converted = stream.default_backoff().filter_map(|item| {
        let out = match item {
            Ok(event) => convert_event::<K>(event, &reader, &shared, &origin).map(Ok),
            Err(error) => Some(Err(error)),
        };
        std::future::ready(out)
    });
    let mut events = std::pin::pin!(reflector::reflector(writer, converted));
    let listed = &shared.listed[K::KIND as usize];
    while let Some(item) = events.next().await {
        match item {
            Ok(Event::InitDone) => {
                if !listed.swap(true, Ordering::SeqCst) {
                    tracing::info!(kind = %K::KIND, objects = reader.len(), "first complete list");
                } else {
                    tracing::info!(kind = %K::KIND, objects = reader.len(), "relisted");
                }
                shared.push(Change::Relist(K::KIND, objects(&reader)));
            }
            Ok(Event::Apply(value)) => shared.push(Change::Put(value.object())),
            Ok(Event::Delete(value)) => shared.push(Change::Delete(value.object().key())),
            // The store changes only at InitDone.
            Ok(Event::Init | Event::InitApply(_)) => {}
            Err(error) => {
                shared.watch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = %K::KIND, "watch error, retrying with backoff: {error}");
            }
        }
    }
}

/// Every object of a store, as changes carry them.
pub fn objects<K: Slim>(store: &Store<K>) -> Vec<Object> {
    store.state().iter().map(|value| value.object()).collect()
}

/// Converts one watcher event; `None` drops it (an unchanged or invalid update).
fn convert_event<K: Slim>(
    event: Event<K::Raw>,
    store: &Store<K>,
    shared: &Shared,
    origin: &str,
) -> Option<Event<K>> {
    match event {
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
        Event::Apply(raw) => {
            let (key, value) = convert::<K>(raw, shared, origin);
            let value = value?;
            // Status churn (conditions, container states) converts to the same slim
            // value: not a change.
            let unchanged = key
                .and_then(|key| store.get(&key))
                .is_some_and(|old| *old == value);
            (!unchanged).then_some(Event::Apply(value))
        }
        Event::InitApply(raw) => {
            let (key, value) = convert::<K>(raw, shared, origin);
            match value {
                Some(value) => Some(Event::InitApply(value)),
                None => key
                    .and_then(|key| store.get(&key))
                    .map(|old| Event::InitApply((*old).clone())),
            }
        }
        Event::Delete(raw) => {
            // Only the key matters; the body may be one that did not validate.
            let key = reference::<K>(key_of(K::KIND, kube::Resource::meta(&raw))?);
            let tombstone = store.get(&key).map_or_else(
                || K::tombstone(&object_key::<K>(&key)),
                |old| (*old).clone(),
            );
            Some(Event::Delete(tombstone))
        }
    }
}

/// Converts, records problems, and returns the store key with the value if it is valid.
fn convert<K: Slim>(
    raw: K::Raw,
    shared: &Shared,
    origin: &str,
) -> (Option<ObjectRef<K>>, Option<K>) {
    let converted = K::convert(raw, origin);
    if !converted.errors.is_empty() {
        shared.invalid_objects.fetch_add(1, Ordering::Relaxed);
    }
    shared.report(converted.errors, converted.warnings);
    (converted.key.map(reference::<K>), converted.value)
}

fn reference<K: Slim>(key: ObjectKey) -> ObjectRef<K> {
    let reference = ObjectRef::<K>::new(&key.name);
    if key.kind.is_namespaced() {
        reference.within(&key.namespace)
    } else {
        reference
    }
}

fn object_key<K: Slim>(reference: &ObjectRef<K>) -> ObjectKey {
    ObjectKey {
        kind: K::KIND,
        namespace: reference.namespace.clone().unwrap_or_default(),
        name: reference.name.clone(),
    }
}
