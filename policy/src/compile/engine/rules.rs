//! The ids of every effective rule, kept per policy: a changed policy frees its old
//! ids and gives its new rules ids, the others keep theirs.

// The engine's own parts share its imports.
use super::*;

/// The ids of every effective rule, kept per policy.
#[derive(Debug)]
pub(super) struct Rules {
    /// The policies' (namespace, name), in the state's order.
    pub(super) keys: Vec<(String, String)>,
    /// Their rules' ids by place (`ids.0[i]` are the ids of `keys[i]`), as the local
    /// part reads them.
    pub(super) ids: RuleIds,
    pub(super) allocator: IdAllocator,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            keys: Vec::new(),
            ids: RuleIds::default(),
            allocator: IdAllocator::new(reserved_rule),
        }
    }
}

impl Rules {
    /// The ids a compile gives the rules of `state`, and what each id stands for.
    pub(super) fn build(state: &State) -> (Rules, BTreeMap<u32, RuleInfo>) {
        let (ids, infos) = rule_ids(state);
        let mut allocator = IdAllocator::new(reserved_rule);
        for id in infos.keys() {
            allocator.take(*id);
        }
        let keys = (state.policies.iter())
            .map(|policy| (policy.namespace.clone(), policy.name.clone()))
            .collect();
        let rules = Rules {
            keys,
            ids,
            allocator,
        };
        (rules, infos)
    }

    /// Where policy `namespace/name` is or would go.
    fn place(&self, namespace: &str, name: &str) -> Result<usize, usize> {
        (self.keys).binary_search_by(|(n, m)| (n.as_str(), m.as_str()).cmp(&(namespace, name)))
    }

    /// Frees the ids of the old versions of `changed` and gives the new versions'
    /// rules ids, keeping `infos` (the image's rules) in step; every id freed or
    /// given goes into `ids_changed`. The work follows the changed policies (and a
    /// shift of the others' places).
    pub(super) fn update(
        &mut self,
        changed: &[(Option<Policy>, Option<Policy>)],
        infos: &mut BTreeMap<u32, RuleInfo>,
        ids_changed: &mut BTreeSet<u32>,
    ) {
        for old in changed.iter().filter_map(|(old, _)| old.as_ref()) {
            let Ok(at) = self.place(&old.namespace, &old.name) else {
                continue;
            };
            self.keys.remove(at);
            for id in self.ids.0.remove(at).into_iter().flatten() {
                self.allocator.free(id);
                infos.remove(&id);
                ids_changed.insert(id);
            }
        }
        for new in changed.iter().filter_map(|(_, new)| new.as_ref()) {
            let ids = [DIR_INGRESS, DIR_EGRESS].map(|direction| {
                (0..effective_rules(new, direction).len())
                    .map(|index| {
                        let text = rule_text(new, direction, index);
                        let id = self.allocator.allocate(rule_hash(&text));
                        infos.insert(id, rule_info(new, direction, index));
                        ids_changed.insert(id);
                        id
                    })
                    .collect()
            });
            match self.place(&new.namespace, &new.name) {
                Ok(at) => self.ids.0[at] = ids,
                Err(at) => {
                    self.keys
                        .insert(at, (new.namespace.clone(), new.name.clone()));
                    self.ids.0.insert(at, ids);
                }
            }
        }
    }
}
