//! Changes to the cluster state one object at a time, as a watch delivers them: what
//! [`Engine::apply`](crate::compile::engine::Engine::apply) takes instead of a whole
//! state, so that neither a source nor the engine copies or compares every object of
//! the cluster for one change.

use crate::error::{Kind, ObjectKey};
use crate::model::{self, State};

/// A validated object of one of the kinds netfence reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Object {
    Namespace(model::Namespace),
    Pod(model::Pod),
    Policy(model::Policy),
    Service(model::Service),
    EndpointSlice(model::EndpointSlice),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, namespace, name) = match self {
            Object::Namespace(ns) => (Kind::Namespace, "", &ns.name),
            Object::Pod(pod) => (Kind::Pod, pod.namespace.as_str(), &pod.name),
            Object::Policy(policy) => {
                (Kind::NetworkPolicy, policy.namespace.as_str(), &policy.name)
            }
            Object::Service(svc) => (Kind::Service, svc.namespace.as_str(), &svc.name),
            Object::EndpointSlice(slice) => {
                (Kind::EndpointSlice, slice.namespace.as_str(), &slice.name)
            }
        };
        ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.clone(),
        }
    }

    /// (namespace, name), borrowed: the order the state keeps each kind in (the
    /// namespace is empty for a Namespace).
    pub fn names(&self) -> (&str, &str) {
        match self {
            Object::Namespace(ns) => ("", &ns.name),
            Object::Pod(pod) => (&pod.namespace, &pod.name),
            Object::Policy(policy) => (&policy.namespace, &policy.name),
            Object::Service(svc) => (&svc.namespace, &svc.name),
            Object::EndpointSlice(slice) => (&slice.namespace, &slice.name),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Policy(_) => Kind::NetworkPolicy,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
        }
    }
}

/// One change.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// An object added, or its new version.
    Put(Object),
    /// An object deleted (deleting one that is absent changes nothing).
    Delete(ObjectKey),
    /// Every object of a kind, after a (re)list: the objects of that kind not listed
    /// are deleted. (Objects of another kind in the list are ignored.)
    Relist(Kind, Vec<Object>),
}

/// The changes that turn `old` into `new`, per object (a relist of every kind whose
/// objects differ is not needed: only differing objects are named).
pub fn between(old: &State, new: &State) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut objects = |old: Vec<Object>, new: Vec<Object>| {
        let old: std::collections::BTreeMap<ObjectKey, Object> =
            old.into_iter().map(|o| (o.key(), o)).collect();
        let new: std::collections::BTreeMap<ObjectKey, Object> =
            new.into_iter().map(|o| (o.key(), o)).collect();
        for key in old.keys().filter(|k| !new.contains_key(*k)) {
            changes.push(Change::Delete(key.clone()));
        }
        for (key, object) in new {
            if old.get(&key) != Some(&object) {
                changes.push(Change::Put(object));
            }
        }
    };
    objects(objects_of(old), objects_of(new));
    changes
}

/// Every object of `state`.
pub fn objects_of(state: &State) -> Vec<Object> {
    let namespaces = state.namespaces.values().cloned().map(Object::Namespace);
    let pods = state.pods.iter().cloned().map(Object::Pod);
    let policies = state.policies.iter().cloned().map(Object::Policy);
    let services = state.services.iter().cloned().map(Object::Service);
    let slices = state
        .endpoint_slices
        .iter()
        .cloned()
        .map(Object::EndpointSlice);
    namespaces
        .chain(pods)
        .chain(policies)
        .chain(services)
        .chain(slices)
        .collect()
}

/// An object of the state's sorted lists, by (namespace, name).
pub(crate) trait Keyed {
    fn key(&self) -> (&str, &str);
}

macro_rules! keyed {
    ($($t:ty),*) => {$(
        impl Keyed for $t {
            fn key(&self) -> (&str, &str) {
                (&self.namespace, &self.name)
            }
        }
    )*};
}
keyed!(
    model::Pod,
    model::Policy,
    model::Service,
    model::EndpointSlice
);

/// Where the item with `key` is in `items` (sorted by key), or would go.
pub(crate) fn find_sorted<T: Keyed>(items: &[T], key: (&str, &str)) -> Result<usize, usize> {
    items.binary_search_by(|i| i.key().cmp(&key))
}

/// The item with `key` in `items` (sorted by key).
pub(crate) fn get_sorted<'a, T: Keyed>(items: &'a [T], key: (&str, &str)) -> Option<&'a T> {
    find_sorted(items, key).ok().map(|at| &items[at])
}

/// Puts `item` into `items` (sorted by key) in place of the one with its key;
/// returns that one.
pub(crate) fn put_sorted<T: Keyed>(items: &mut Vec<T>, item: T) -> Option<T> {
    match find_sorted(items, item.key()) {
        Ok(at) => Some(std::mem::replace(&mut items[at], item)),
        Err(at) => {
            items.insert(at, item);
            None
        }
    }
}

/// Removes the item with `key` from `items` (sorted by key).
pub(crate) fn delete_sorted<T: Keyed>(items: &mut Vec<T>, key: (&str, &str)) -> Option<T> {
    let at = find_sorted(items, key).ok()?;
    Some(items.remove(at))
}

/// The items that differ between two lists sorted by key: (old, new), either absent
/// for an added or a deleted one. `None` when either list is not sorted.
pub(crate) fn changed<'a, T: Keyed + PartialEq>(
    old: &'a [T],
    new: &'a [T],
) -> Option<Vec<(Option<&'a T>, Option<&'a T>)>> {
    let sorted = |items: &[T]| items.windows(2).all(|w| w[0].key() < w[1].key());
    if !sorted(old) || !sorted(new) {
        return None;
    }
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => a.key().cmp(&b.key()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push((old.get(i), None));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push((None, new.get(j)));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if old[i] != new[j] {
                    out.push((old.get(i), new.get(j)));
                }
                i += 1;
                j += 1;
            }
        }
    }
    Some(out)
}
