//! The ids of every effective rule, kept per policy: a changed policy frees its old
//! ids and gives its new rules ids, the others keep theirs.

// The engine's own parts share its imports.
use super::*;

/// The ids of every effective rule, kept per policy.
#[derive(Debug)]
pub(super) struct Rules {
    /// By (namespace, name), in the state's order.
    pub(super) of_policy: BTreeMap<(String, String), [Vec<u32>; 2]>,
    /// The same ids by place, as the local part reads them.
    pub(super) ids: RuleIds,
    pub(super) allocator: IdAllocator,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            of_policy: BTreeMap::new(),
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
        let of_policy = state
            .policies
            .iter()
            .zip(&ids.0)
            .map(|(policy, ids)| ((policy.namespace.clone(), policy.name.clone()), ids.clone()))
            .collect();
        let rules = Rules {
            of_policy,
            ids,
            allocator,
        };
        (rules, infos)
    }

    /// Frees the ids of the old versions of `changed` and gives the new versions'
    /// rules ids, keeping `infos` (the image's rules) in step.
    pub(super) fn update(
        &mut self,
        changed: &[(Option<Policy>, Option<Policy>)],
        infos: &mut BTreeMap<u32, RuleInfo>,
        ids_changed: &mut BTreeSet<u32>,
    ) {
        for old in changed.iter().filter_map(|(old, _)| old.as_ref()) {
            let key = (old.namespace.clone(), old.name.clone());
            for id in self.of_policy.remove(&key).into_iter().flatten().flatten() {
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
            self.of_policy
                .insert((new.namespace.clone(), new.name.clone()), ids);
        }
        // Both are sorted by (namespace, name) and hold the same policies.
        self.ids = RuleIds(self.of_policy.values().cloned().collect());
    }
}
