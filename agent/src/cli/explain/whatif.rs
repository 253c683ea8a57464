//! `explain --matrix --with FILE`: what applying objects would change. The matrix of
//! the input and the matrix of the input with the `--with` objects added (an object
//! of the same kind, namespace and name replaces the one read) are both computed
//! through `Image::lookup`; only the pod pairs whose verdict differs are printed. A
//! pod only one side has is `absent` on the other.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Matrix, Probe, matrix_with};
use crate::cli::output::columns;
use crate::cli::{ExplainArgs, input};
use crate::image::Image;
use crate::model::State;
use crate::source::{Object, ObjectKey};

/// The matrix pairs that `args.with` changes, from the input's `objects` (whose
/// state and image are given).
pub fn what_if(
    args: &ExplainArgs,
    objects: &BTreeMap<ObjectKey, Object>,
    state: &State,
    image: &Image,
    probe: &Probe,
) -> anyhow::Result<WhatIf> {
    let dash = |paths: &[std::path::PathBuf]| paths.iter().any(|p| p.as_os_str() == "-");
    if dash(&args.input.filenames) && dash(&args.with) {
        return Err(input::InputError::StdinTwice("-".to_owned()).into());
    }
    let with = input::load_with(&args.with, args.input.recursive, args.keep_going)?;
    let before = matrix_with(state, image, probe);
    let after_state = input::state_of(&input::overlay(objects, with));
    let after_image = crate::compile::compile(&after_state, None);
    Ok(diff(
        &before,
        &matrix_with(&after_state, &after_image, probe),
    ))
}

/// One pair whose verdict changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PairChange {
    pub from: String,
    pub to: String,
    /// `allowed`, `denied`, `audited` (passes; enforcing, it would be denied) or
    /// `absent` (no such pod on that side).
    pub before: &'static str,
    pub after: &'static str,
}

/// The pairs that change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WhatIf {
    pub port: u16,
    pub protocol: &'static str,
    pub changes: Vec<PairChange>,
}

/// Every cell's verdict, by (from, to).
fn cells(matrix: &Matrix) -> BTreeMap<(&str, &str), &'static str> {
    let mut cells = BTreeMap::new();
    for (i, from) in matrix.pods.iter().enumerate() {
        for (j, to) in matrix.pods.iter().enumerate() {
            let allowed = matrix.allowed[i][j];
            let audited = (matrix.audited.as_ref()).is_some_and(|a| a[i][j]);
            let verdict = match (allowed, audited) {
                (true, true) => "audited",
                (true, false) => "allowed",
                (false, _) => "denied",
            };
            cells.insert((from.as_str(), to.as_str()), verdict);
        }
    }
    cells
}

/// The pairs whose verdict differs between `before` and `after`, sorted by source
/// then destination (each by namespace, then name).
pub fn diff(before: &Matrix, after: &Matrix) -> WhatIf {
    let (old, new) = (cells(before), cells(after));
    let mut pods: Vec<&str> = (before.pods.iter().chain(&after.pods))
        .map(String::as_str)
        .collect();
    pods.sort_by(|a, b| a.split_once('/').cmp(&b.split_once('/')));
    pods.dedup();
    let mut changes = Vec::new();
    for from in &pods {
        for to in &pods {
            let before = old.get(&(*from, *to)).copied().unwrap_or("absent");
            let after = new.get(&(*from, *to)).copied().unwrap_or("absent");
            if before != after {
                changes.push(PairChange {
                    from: (*from).to_owned(),
                    to: (*to).to_owned(),
                    before,
                    after,
                });
            }
        }
    }
    WhatIf {
        port: after.port,
        protocol: after.protocol,
        changes,
    }
}

impl WhatIf {
    /// `TCP/80: N pair(s) change`, then aligned FROM TO BEFORE AFTER rows.
    pub fn text(&self) -> String {
        let port = if self.port == 0 {
            String::new()
        } else {
            format!("/{}", self.port)
        };
        if self.changes.is_empty() {
            return format!("{}{port}: no pair changes\n", self.protocol);
        }
        let mut rows = vec![vec![
            "FROM".to_owned(),
            "TO".to_owned(),
            "BEFORE".to_owned(),
            "AFTER".to_owned(),
        ]];
        for c in &self.changes {
            rows.push(vec![
                c.from.clone(),
                c.to.clone(),
                c.before.to_owned(),
                c.after.to_owned(),
            ]);
        }
        format!(
            "{}{port}: {} pair(s) change\n{}",
            self.protocol,
            self.changes.len(),
            columns(&rows)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(pods: &[&str], allowed: Vec<Vec<bool>>) -> Matrix {
        Matrix {
            port: 80,
            protocol: "TCP",
            pods: pods.iter().map(|p| (*p).to_owned()).collect(),
            allowed,
            audited: None,
        }
    }

    #[test]
    fn only_changed_pairs_and_pods_on_one_side_are_absent_on_the_other() {
        let before = matrix(&["x/a", "x/b"], vec![vec![true, false], vec![true, true]]);
        let mut after = matrix(
            &["x/a", "x/b", "x/c"],
            vec![
                vec![true, true, true],
                vec![true, true, true],
                vec![false, true, true],
            ],
        );
        after.audited = Some(vec![
            vec![false; 3],
            vec![true, false, false],
            vec![false; 3],
        ]);
        let what = diff(&before, &after);
        let rows: Vec<(&str, &str, &str, &str)> = (what.changes.iter())
            .map(|c| (c.from.as_str(), c.to.as_str(), c.before, c.after))
            .collect();
        assert_eq!(
            rows,
            [
                ("x/a", "x/b", "denied", "allowed"),
                ("x/a", "x/c", "absent", "allowed"),
                ("x/b", "x/a", "allowed", "audited"),
                ("x/b", "x/c", "absent", "allowed"),
                ("x/c", "x/a", "absent", "denied"),
                ("x/c", "x/b", "absent", "allowed"),
                ("x/c", "x/c", "absent", "allowed"),
            ]
        );
        assert!(what.text().starts_with(
            "TCP/80: 7 pair(s) change\nFROM  TO   BEFORE   AFTER\nx/a   x/b  denied   allowed\n"
        ));
        assert_eq!(diff(&before, &before).text(), "TCP/80: no pair changes\n");
    }
}
