//! Label selector semantics (`metav1.LabelSelector`): matchLabels AND every
//! matchExpression, and the labels a namespace is selected by.

use std::collections::BTreeMap;

use crate::model::{LabelSelector, Labels, Operator, Requirement, State};

/// The label every namespace carries, set by the API server.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// True when `labels` satisfy `selector`. An empty selector matches everything.
pub fn matches(selector: &LabelSelector, labels: &Labels) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
        && selector
            .match_expressions
            .iter()
            .all(|requirement| requirement_matches(requirement, labels))
}

fn requirement_matches(requirement: &Requirement, labels: &Labels) -> bool {
    let value = labels.get(&requirement.key);
    match requirement.operator {
        Operator::In => value.is_some_and(|v| requirement.values.contains(v)),
        // NotIn also matches when the key is absent.
        Operator::NotIn => value.is_none_or(|v| !requirement.values.contains(v)),
        Operator::Exists => value.is_some(),
        Operator::DoesNotExist => value.is_none(),
    }
}

/// Labels of every namespace a pod or policy lives in. A namespace with no Namespace
/// object (the source has not seen it) is labelled only with its name, as the API
/// server would label it. The index from labels to namespaces is built on its first
/// use (an update whose rules name no namespace by labels does not pay for it).
#[derive(Debug)]
pub struct NamespaceLabels<'a> {
    known: &'a BTreeMap<String, crate::model::Namespace>,
    /// (key, value) → the known namespaces carrying that label.
    by_label: std::cell::OnceCell<BTreeMap<(&'a str, &'a str), Vec<&'a str>>>,
}

impl<'a> NamespaceLabels<'a> {
    pub fn new(state: &'a State) -> Self {
        NamespaceLabels {
            known: &state.namespaces,
            by_label: std::cell::OnceCell::new(),
        }
    }

    fn by_label(&self) -> &BTreeMap<(&'a str, &'a str), Vec<&'a str>> {
        self.by_label.get_or_init(|| {
            let mut by_label: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
            for (name, namespace) in self.known {
                for (key, value) in &namespace.labels {
                    by_label
                        .entry((key.as_str(), value.as_str()))
                        .or_default()
                        .push(name.as_str());
                }
            }
            by_label
        })
    }

    /// Namespaces that can match `selector`, found through its first matchLabels
    /// pair (a superset of the matching ones: check each with [`Self::matches`]);
    /// `None` when the selector has no matchLabels (any namespace may match).
    /// A namespace with no Namespace object carries only its name label.
    pub fn candidates<'s>(&'s self, selector: &'s LabelSelector) -> Option<Vec<&'s str>> {
        let (key, value) = selector.match_labels.iter().next()?;
        let mut out: Vec<&str> = self
            .by_label()
            .get(&(key.as_str(), value.as_str()))
            .cloned()
            .unwrap_or_default();
        if key == NAMESPACE_NAME_LABEL && !self.known.contains_key(value) {
            out.push(value.as_str());
        }
        Some(out)
    }

    /// True when namespace `name` matches `selector`.
    pub fn matches(&self, selector: &LabelSelector, name: &str) -> bool {
        match self.known.get(name) {
            Some(namespace) => matches(selector, &namespace.labels),
            None => matches(selector, &default_labels(name)),
        }
    }
}

fn default_labels(name: &str) -> Labels {
    Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: key.to_owned(),
                operator,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
        }
    }

    #[test]
    fn expressions_follow_the_api_reference() {
        let with = labels(&[("pod", "a")]);
        let without = labels(&[("other", "x")]);
        assert!(matches(&expr("pod", Operator::In, &["a", "b"]), &with));
        assert!(!matches(&expr("pod", Operator::In, &["a"]), &without));
        assert!(!matches(&expr("pod", Operator::NotIn, &["a"]), &with));
        assert!(matches(&expr("pod", Operator::NotIn, &["a"]), &without));
        assert!(matches(&expr("pod", Operator::Exists, &[]), &with));
        assert!(!matches(&expr("pod", Operator::Exists, &[]), &without));
        assert!(!matches(&expr("pod", Operator::DoesNotExist, &[]), &with));
        assert!(matches(&expr("pod", Operator::DoesNotExist, &[]), &without));
        assert!(matches(&LabelSelector::default(), &without));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let mut selector = expr("pod", Operator::Exists, &[]);
        selector.match_labels = labels(&[("app", "web")]);
        assert!(matches(&selector, &labels(&[("app", "web"), ("pod", "a")])));
        assert!(!matches(&selector, &labels(&[("app", "web")])));
        assert!(!matches(&selector, &labels(&[("app", "db"), ("pod", "a")])));
    }

    #[test]
    fn unknown_namespace_is_labelled_with_its_name() {
        let state = State::default();
        let namespaces = NamespaceLabels::new(&state);
        let by_name = LabelSelector {
            match_labels: labels(&[(NAMESPACE_NAME_LABEL, "x")]),
            match_expressions: vec![],
        };
        assert!(namespaces.matches(&by_name, "x"));
        assert!(!namespaces.matches(&by_name, "y"));
    }
}
