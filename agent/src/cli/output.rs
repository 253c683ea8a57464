//! The output formats of the operator commands (`explain`, `compile`, `policies`):
//! `text` (aligned columns, names only), `wide` (text plus ids: identities, rule
//! ids, endpoint policy ids), and `json` / `yaml` (names instead of numbers:
//! `direction: ingress`, `protocol: TCP`), and the column alignment text uses.

use serde::Serialize;

/// `-o text|wide|json|yaml`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    /// Text with the ids the datapath uses (identities, rule ids, policy ids).
    Wide,
    Json,
    Yaml,
}

impl Format {
    /// JSON (pretty) or YAML of `value`; `None` for the text formats.
    pub fn document<T: Serialize>(self, value: &T) -> anyhow::Result<Option<String>> {
        Ok(match self {
            Format::Json => Some(format!("{}\n", serde_json::to_string_pretty(value)?)),
            Format::Yaml => Some(serde_yaml_ng::to_string(value)?),
            Format::Text | Format::Wide => None,
        })
    }
}

/// Rows of cells as aligned columns: each column as wide as its widest cell plus
/// two spaces, the last column unpadded, no trailing spaces.
pub fn columns(rows: &[Vec<String>]) -> String {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            (rows.iter())
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `ingress` or `egress` for a `DIR_*` code.
pub fn direction_name(direction: u8) -> &'static str {
    if direction == netfence_common::DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

/// The name of an IP protocol number as policies spell it (`TCP`, `UDP`, `SCTP`,
/// `ICMP`, `ICMPv6`, `any` for a rule without ports), else the number.
pub fn protocol_name(protocol: u8) -> String {
    match netfence_common::protocol_name(protocol) {
        Some(name) => name.to_owned(),
        None if protocol == netfence_common::PROTO_ANY => "any".to_owned(),
        None => protocol.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_pad_to_the_widest_cell_and_leave_no_trailing_space() {
        let rows = vec![
            vec!["NAME".to_owned(), "DIRECTION".to_owned(), "X".to_owned()],
            vec!["x/long-name".to_owned(), "in".to_owned(), String::new()],
        ];
        assert_eq!(
            columns(&rows),
            "NAME         DIRECTION  X\nx/long-name  in\n"
        );
    }

    #[test]
    fn numbers_become_the_names_policies_use() {
        assert_eq!(direction_name(netfence_common::DIR_INGRESS), "ingress");
        assert_eq!(direction_name(netfence_common::DIR_EGRESS), "egress");
        assert_eq!(protocol_name(6), "TCP");
        assert_eq!(protocol_name(17), "UDP");
        assert_eq!(protocol_name(132), "SCTP");
        assert_eq!(protocol_name(netfence_common::PROTO_ANY), "any");
        assert_eq!(
            Format::Json.document(&serde_json::json!({"a": 1})).unwrap(),
            Some("{\n  \"a\": 1\n}\n".to_owned())
        );
        assert_eq!(
            Format::Yaml.document(&serde_json::json!({"a": 1})).unwrap(),
            Some("a: 1\n".to_owned())
        );
        assert_eq!(Format::Text.document(&1).unwrap(), None);
    }
}
