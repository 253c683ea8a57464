//! `explain --matrix`: the allow/deny table of every pod pair, through the same
//! [`connection`] as one `explain`. JSON is the DESIGN.md contract (`port`, `protocol`,
//! `pods`, `allowed`), plus `audited` only where a cell is audited or `--mode audit`
//! was asked for: a key added to the object, so scripts reading the contract keep
//! working, and the output of a matrix without audit is byte for byte what it was.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use super::{ExplainProtocol, Family, Probe, connection, family_of, in_mode};
use crate::dataplane::sync::Mode;
use crate::image::{Image, canonical_addr};
use crate::model::State;

/// The allow/deny table of every pod pair (the DESIGN.md JSON contract).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Matrix {
    pub port: u16,
    pub protocol: &'static str,
    /// `ns/name`, sorted by namespace then name: every pod with an address of its own.
    pub pods: Vec<String>,
    /// `allowed[i][j]`: a new connection from `pods[i]` to `pods[j]` passes (an
    /// audited one passes: `true`).
    pub allowed: Vec<Vec<bool>>,
    /// `audited[i][j]`: it passes only because a direction is audited (enforcing, it
    /// would be denied); `audited[i][j]` implies `allowed[i][j]`. Present with
    /// `--mode audit`, or when some cell is audited (a policy annotated
    /// `netfence.io/mode: audit`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audited: Option<Vec<Vec<bool>>>,
}

/// Every pod pair in enforce mode (see [`matrix_with`]).
pub fn matrix(
    state: &State,
    image: &Image,
    protocol: ExplainProtocol,
    port: u16,
    family: Option<Family>,
) -> Matrix {
    matrix_with(state, image, &Probe::new(protocol, port, family))
}

/// Every pod pair through `Image::lookup`, with the image in `probe.mode`. A pair is
/// probed in `probe.family`, or by default over IPv4 when both pods have an IPv4
/// address, else IPv6; a pair with no common family is denied (no connection is
/// possible).
pub fn matrix_with(state: &State, image: &Image, probe: &Probe) -> Matrix {
    let image = in_mode(image, probe.mode);
    let mut pods: Vec<(String, Vec<IpAddr>)> = state
        .pods
        .iter()
        .filter(|p| p.is_live_endpoint())
        .map(|p| {
            let addrs = p.ips.iter().map(|ip| canonical_addr(*ip)).collect();
            (format!("{}/{}", p.namespace, p.name), addrs)
        })
        .collect();
    pods.sort_by(|a, b| a.0.split_once('/').cmp(&b.0.split_once('/')));
    let pick = |addrs: &[IpAddr], f: Family| addrs.iter().copied().find(|a| family_of(*a) == f);
    let families = match probe.family {
        Some(f) => vec![f],
        None => vec![Family::Ipv4, Family::Ipv6],
    };
    // (allowed, audited) of every cell.
    let cells: Vec<Vec<(bool, bool)>> = pods
        .iter()
        .map(|(_, from)| {
            pods.iter()
                .map(|(_, to)| {
                    families
                        .iter()
                        .find_map(|f| Some((pick(from, *f)?, pick(to, *f)?)))
                        .map_or((false, false), |(src, dst)| {
                            let c = connection(&image, src, dst, probe.protocol, probe.port);
                            (c.allowed, c.audited)
                        })
                })
                .collect()
        })
        .collect();
    let any_audited = cells.iter().flatten().any(|(_, audited)| *audited);
    let audited = (probe.mode == Mode::Audit || any_audited).then(|| {
        cells
            .iter()
            .map(|row| row.iter().map(|c| c.1).collect())
            .collect()
    });
    Matrix {
        port: probe.reported_port(),
        protocol: probe.protocol.as_str(),
        pods: pods.into_iter().map(|(name, _)| name).collect(),
        allowed: cells
            .iter()
            .map(|row| row.iter().map(|c| c.0).collect())
            .collect(),
        audited,
    }
}

impl Matrix {
    /// The grid of the upstream e2e truth tables: rows are sources, columns
    /// destinations, `.` allowed, `X` denied, `A` audited (passes; enforcing, it would
    /// be denied), tab-separated.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let port = if self.port == 0 {
            String::new()
        } else {
            format!("/{}", self.port)
        };
        let audit_legend = if self.audited.is_some() {
            ", A audited (passes; enforcing, it would be denied)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{}{port}: rows = from, columns = to; . allowed, X denied{audit_legend} (a pod to itself: loopback, always allowed)",
            self.protocol
        );
        let _ = writeln!(out, "-\t{}", self.pods.join("\t"));
        for (i, (pod, row)) in self.pods.iter().zip(&self.allowed).enumerate() {
            let cells: Vec<&str> = row
                .iter()
                .enumerate()
                .map(|(j, allowed)| {
                    let audited = self
                        .audited
                        .as_ref()
                        .and_then(|a| a.get(i)?.get(j).copied())
                        .unwrap_or(false);
                    match (*allowed, audited) {
                        (true, true) => "A",
                        (true, false) => ".",
                        (false, _) => "X",
                    }
                })
                .collect();
            let _ = writeln!(out, "{pod}\t{}", cells.join("\t"));
        }
        out
    }
}
