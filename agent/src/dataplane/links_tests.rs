//! Table tests of `bind`: CNI records before peer reads, contested addresses
//! unbound, failed reads keeping their bindings, no first-claimer stickiness.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{BindProblem, CniRecord, PeerRead, bind};
use crate::dataplane::owners::Owner;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// veth3 (index 3), veth5 (index 5), veth7 (index 7): their peers show these.
fn read(index: u32, shows: &[&str]) -> PeerRead {
    PeerRead {
        index,
        name: format!("veth{index}"),
        addresses: Some(shows.iter().map(|a| ip(a)).collect()),
    }
}

fn failed(index: u32) -> PeerRead {
    PeerRead {
        index,
        name: format!("veth{index}"),
        addresses: None,
    }
}

fn owner(name: &str) -> Owner {
    let (namespace, pod) = name.split_once('/').expect("ns/pod");
    Owner {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
    }
}

/// The cluster state's owners: `(address, "ns/pod")`.
fn owners(pairs: &[(&str, &str)]) -> BTreeMap<IpAddr, Owner> {
    pairs.iter().map(|(a, o)| (ip(a), owner(o))).collect()
}

fn record(name: &str, ips: &[&str], host: &[&str]) -> CniRecord {
    CniRecord {
        owner: owner(name),
        ips: ips.iter().map(|a| ip(a)).collect(),
        host_interfaces: host.iter().map(|h| (*h).to_owned()).collect(),
    }
}

fn map(pairs: &[(&str, u32)]) -> BTreeMap<IpAddr, u32> {
    pairs.iter().map(|(a, i)| (ip(a), *i)).collect()
}

const A: &str = "198.18.0.10";
const V: &str = "198.18.0.50";
const V6: &str = "fd00::50";
/// The owners of A, V and V6 by the state.
const STATE: &[(&str, &str)] = &[(A, "x/a"), (V, "x/v"), (V6, "x/v")];

struct Case {
    name: &'static str,
    previous: BTreeMap<IpAddr, u32>,
    cni: Vec<CniRecord>,
    reads: Vec<PeerRead>,
    owners: BTreeMap<IpAddr, Owner>,
    bound: BTreeMap<IpAddr, u32>,
    problems: usize,
}

#[test]
fn bindings_come_from_the_cluster_first_and_never_from_the_first_claimer() {
    let cases = [
        Case {
            name: "one veth shows each address: bound there",
            previous: map(&[]),
            cni: vec![],
            reads: vec![read(3, &[A]), read(5, &[V, V6])],
            owners: owners(&[]),
            bound: map(&[(A, 3), (V, 5), (V6, 5)]),
            problems: 0,
        },
        Case {
            name: "a CNI record beats an earlier claimer (A put V's address on itself first)",
            previous: map(&[(A, 3), (V, 3)]),
            cni: vec![record("x/v", &[V, V6], &["cni0", "veth5"])],
            reads: vec![read(3, &[A, V]), read(5, &[V, V6])],
            owners: owners(&[]),
            bound: map(&[(A, 3), (V, 5), (V6, 5)]),
            problems: 1,
        },
        Case {
            name: "a CNI record binds even before its pod shows the address, and A's claim is ignored",
            previous: map(&[]),
            cni: vec![record("x/v", &[V], &["cni0", "veth5"])],
            reads: vec![read(3, &[A, V]), read(5, &[])],
            owners: owners(&[]),
            bound: map(&[(A, 3), (V, 5)]),
            problems: 1,
        },
        Case {
            name: "without a record, a contested address is unbound, whoever held it before",
            previous: map(&[(A, 3), (V, 5)]),
            cni: vec![],
            reads: vec![read(3, &[A, V]), read(5, &[V])],
            owners: owners(&[]),
            bound: map(&[(A, 3)]),
            problems: 1,
        },
        Case {
            name: "a failed read keeps that interface's previous bindings",
            previous: map(&[(A, 3), (V, 5), (V6, 5)]),
            cni: vec![],
            reads: vec![read(3, &[A]), failed(5)],
            owners: owners(&[]),
            bound: map(&[(A, 3), (V, 5), (V6, 5)]),
            problems: 0,
        },
        Case {
            name: "a kept binding is still contested by another interface showing it",
            previous: map(&[(V, 5)]),
            cni: vec![],
            reads: vec![read(3, &[V]), failed(5)],
            owners: owners(&[]),
            bound: map(&[]),
            problems: 1,
        },
        Case {
            name: "the address moves when its only veth changes",
            previous: map(&[(V, 5)]),
            cni: vec![],
            reads: vec![read(3, &[]), read(7, &[V])],
            owners: owners(&[]),
            bound: map(&[(V, 7)]),
            problems: 0,
        },
        Case {
            name: "a CNI record whose veth is not managed leaves its address unbound, not taken by a claimer",
            previous: map(&[(V, 5)]),
            cni: vec![record("x/v", &[V], &["cni0", "veth9"])],
            reads: vec![read(3, &[V])],
            owners: owners(&[]),
            bound: map(&[]),
            problems: 1,
        },
        Case {
            name: "a CNI record without host interfaces binds nothing itself: the peer read decides",
            previous: map(&[]),
            cni: vec![record("x/v", &[V], &[])],
            reads: vec![read(5, &[V])],
            owners: owners(&[]),
            bound: map(&[(V, 5)]),
            problems: 0,
        },
        Case {
            name: "the state tells a contested address's veth: the claimer's veth shows its own pod's address",
            previous: map(&[(A, 3), (V, 3)]),
            cni: vec![],
            reads: vec![read(3, &[A, V]), read(5, &[V, V6])],
            owners: owners(STATE),
            bound: map(&[(A, 3), (V, 5), (V6, 5)]),
            problems: 1,
        },
        Case {
            name: "a claimer showing V's address before V's veth does gets nothing, not even its own address",
            previous: map(&[]),
            cni: vec![],
            reads: vec![read(3, &[A, V])],
            owners: owners(STATE),
            bound: map(&[]),
            problems: 2,
        },
        Case {
            name: "a claimer that shows only V's address, contested with V's veth that also shows only it: unbound",
            previous: map(&[(V, 3)]),
            cni: vec![],
            reads: vec![read(3, &[V]), read(5, &[V])],
            owners: owners(STATE),
            bound: map(&[]),
            problems: 1,
        },
        Case {
            name: "a CNI record makes its veth its pod's: another pod's address shown there is not bound there",
            previous: map(&[]),
            cni: vec![record("x/a", &[A], &["cni0", "veth3"])],
            reads: vec![read(3, &[A, V])],
            owners: owners(STATE),
            bound: map(&[(A, 3)]),
            problems: 1,
        },
    ];
    for case in cases {
        let got = bind(&case.previous, &case.cni, &case.reads, &case.owners);
        assert_eq!(got.bindings, case.bound, "{}", case.name);
        assert_eq!(
            got.problems.len(),
            case.problems,
            "{}: {:?}",
            case.name,
            got.problems
        );
    }
}

#[test]
fn problems_name_the_address_the_owner_and_the_interfaces() {
    let got = bind(
        &BTreeMap::new(),
        &[record("x/v", &[V], &["cni0", "veth5"])],
        &[read(3, &[V, A]), read(5, &[V]), read(7, &[A])],
        &owners(&[]),
    );
    assert_eq!(
        got.problems,
        vec![
            BindProblem::ClaimedElsewhere {
                address: ip(V),
                owner: Some(owner("x/v")),
                bound: "veth5".to_owned(),
                others: vec!["veth3".to_owned()],
            },
            BindProblem::Contested {
                address: ip(A),
                owner: None,
                interfaces: vec!["veth3".to_owned(), "veth7".to_owned()],
            },
        ]
    );
    let text: Vec<String> = got.problems.iter().map(ToString::to_string).collect();
    assert!(
        text[0].contains("198.18.0.50") && text[0].contains("x/v") && text[0].contains("veth3"),
        "{text:?}"
    );
    assert!(
        text[1].contains("veth3, veth7") && text[1].contains("not bound"),
        "{text:?}"
    );
    assert_eq!(got.bindings, map(&[(V, 5)]));
}
