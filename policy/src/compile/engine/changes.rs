//! The changes an update takes, collected per object: the first old and the last
//! new version of each, what the step that follows reads.

// The engine's own parts share its imports.
use super::*;

/// Old and new version of every object one update changes (at most one pair per
/// object; either absent for an added or deleted one).
#[derive(Debug, Default)]
pub(super) struct Delta {
    pub(super) pods: Vec<(Option<Pod>, Option<Pod>)>,
    pub(super) policies: Vec<(Option<Policy>, Option<Policy>)>,
    pub(super) services: Vec<(Option<Service>, Option<Service>)>,
    pub(super) slices: Vec<(Option<EndpointSlice>, Option<EndpointSlice>)>,
}

/// Per-object changes being collected, by key: the first old and the last new
/// version.
pub(super) type Pairs<T> = BTreeMap<(String, String), (Option<T>, Option<T>)>;

/// [`Delta`] while changes are applied.
#[derive(Debug, Default)]
pub(super) struct Collecting {
    /// Nothing is collected (puts are not copied): the update rebuilds anyway, as
    /// the first does, which would otherwise hold a second copy of the cluster.
    pub(super) off: bool,
    pub(super) pods: Pairs<Pod>,
    pub(super) policies: Pairs<Policy>,
    pub(super) services: Pairs<Service>,
    pub(super) slices: Pairs<EndpointSlice>,
}

impl Collecting {
    pub(super) fn finish(self) -> Delta {
        fn differing<T: PartialEq>(pairs: Pairs<T>) -> Vec<(Option<T>, Option<T>)> {
            pairs
                .into_values()
                .filter(|(old, new)| old != new)
                .collect()
        }
        Delta {
            pods: differing(self.pods),
            policies: differing(self.policies),
            services: differing(self.services),
            slices: differing(self.slices),
        }
    }
}

/// Records that the object `new` or `old` names went from `old` to `new`.
pub(super) fn record<T: Keyed>(pairs: &mut Pairs<T>, old: Option<T>, new: Option<T>) {
    let Some((namespace, name)) = new.as_ref().or(old.as_ref()).map(Keyed::key) else {
        return;
    };
    let key = (namespace.to_owned(), name.to_owned());
    pairs.entry(key).or_insert_with(|| (old, None)).1 = new;
}

/// Puts `item` into `items` (sorted), recording the change unless collecting is
/// `off`.
fn put<T: Keyed + Clone>(items: &mut Vec<T>, pairs: &mut Pairs<T>, off: bool, item: T) {
    if off {
        put_sorted(items, item);
    } else {
        let old = put_sorted(items, item.clone());
        record(pairs, old, Some(item));
    }
}

/// The pairs of [`changed`], owned.
pub(super) fn owned<T: Clone>(pairs: Vec<(Option<&T>, Option<&T>)>) -> Vec<(Option<T>, Option<T>)> {
    pairs
        .into_iter()
        .map(|(old, new)| (old.cloned(), new.cloned()))
        .collect()
}

/// The keys of the objects of `kind` in `state`.
pub(super) fn keys_of(state: &State, kind: Kind) -> Vec<crate::error::ObjectKey> {
    pub(super) fn of<T: Keyed>(items: &[T], kind: Kind) -> Vec<crate::error::ObjectKey> {
        items
            .iter()
            .map(|item| crate::error::ObjectKey {
                kind,
                namespace: item.key().0.to_owned(),
                name: item.key().1.to_owned(),
            })
            .collect()
    }
    match kind {
        Kind::Namespace => state
            .namespaces
            .keys()
            .map(|name| crate::error::ObjectKey {
                kind,
                namespace: String::new(),
                name: name.clone(),
            })
            .collect(),
        Kind::Pod => of(&state.pods, kind),
        Kind::NetworkPolicy => of(&state.policies, kind),
        Kind::Service => of(&state.services, kind),
        Kind::EndpointSlice => of(&state.endpoint_slices, kind),
    }
}

impl Engine {
    pub(super) fn apply_one(
        &mut self,
        state: &mut State,
        change: Change,
        announced: &[Announced],
        c: &mut Collecting,
    ) {
        match change {
            Change::Put(Object::Namespace(namespace)) => {
                state.namespaces.insert(namespace.name.clone(), namespace);
            }
            Change::Put(Object::Pod(mut pod)) => {
                let key = key_of(&pod);
                let filled = (self.node.name.as_deref())
                    .is_some_and(|node| fill_pod(&mut pod, node, announced));
                if filled {
                    self.filled.insert(key);
                } else {
                    self.filled.remove(&key);
                }
                put(&mut state.pods, &mut c.pods, c.off, pod);
            }
            Change::Put(Object::Policy(policy)) => {
                put(&mut state.policies, &mut c.policies, c.off, policy);
            }
            Change::Put(Object::Service(service)) => {
                put(&mut state.services, &mut c.services, c.off, service);
            }
            Change::Put(Object::EndpointSlice(slice)) => {
                put(&mut state.endpoint_slices, &mut c.slices, c.off, slice);
            }
            Change::Delete(key) => {
                let at = (key.namespace.as_str(), key.name.as_str());
                match key.kind {
                    Kind::Namespace => {
                        state.namespaces.remove(&key.name);
                    }
                    Kind::Pod => {
                        let old = delete_sorted(&mut state.pods, at);
                        self.filled
                            .remove(&(key.namespace.clone(), key.name.clone()));
                        record(&mut c.pods, old, None);
                    }
                    Kind::NetworkPolicy => {
                        let old = delete_sorted(&mut state.policies, at);
                        record(&mut c.policies, old, None);
                    }
                    Kind::Service => {
                        let old = delete_sorted(&mut state.services, at);
                        record(&mut c.services, old, None);
                    }
                    Kind::EndpointSlice => {
                        let old = delete_sorted(&mut state.endpoint_slices, at);
                        record(&mut c.slices, old, None);
                    }
                }
            }
            Change::Relist(kind, objects) => {
                let mut objects: Vec<Object> =
                    objects.into_iter().filter(|o| o.kind() == kind).collect();
                // In the state's order (a reflector store lists in hash order): each
                // put then appends or replaces in place, where unsorted puts into the
                // sorted state moved half of it per object (from the API, 150,000
                // pods took the agent 19-31 s to ready instead of 10.7, bench 7).
                objects.sort_by(|a, b| a.names().cmp(&b.names()));
                let listed: BTreeSet<crate::error::ObjectKey> =
                    objects.iter().map(Object::key).collect();
                let present = keys_of(state, kind);
                for key in present.into_iter().filter(|k| !listed.contains(k)) {
                    self.apply_one(state, Change::Delete(key), announced, c);
                }
                for object in objects {
                    self.apply_one(state, Change::Put(object), announced, c);
                }
            }
        }
    }

    /// Fills the pods that the announcements, old or new, name again from `announced`.
    pub(super) fn refill(
        &mut self,
        state: &mut State,
        announced: &[Announced],
        c: &mut Collecting,
    ) {
        let Some(node) = self.node.name.clone() else {
            return;
        };
        if announced == self.announced.as_slice() {
            return;
        }
        let named: BTreeSet<(String, String)> = (self.announced.iter().chain(announced))
            .filter_map(|one| one.pod.clone())
            .collect();
        for key in named {
            let Ok(at) = find_pod(state, &key.0, &key.1) else {
                continue;
            };
            let mut pod = state.pods[at].clone();
            if self.filled.remove(&key) {
                // The source's version: an announcement gave its addresses.
                pod.ips.clear();
            }
            if fill_pod(&mut pod, &node, announced) {
                self.filled.insert(key);
            }
            if pod != state.pods[at] {
                let old = std::mem::replace(&mut state.pods[at], pod.clone());
                record(&mut c.pods, Some(old), Some(pod));
            }
        }
    }
}
