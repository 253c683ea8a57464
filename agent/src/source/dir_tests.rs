//! The incremental read: only changed files are parsed, only their objects become
//! changes, duplicates and problems are reported at every read while they last.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use super::*;

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 198.18.0.ADDR}\n";
const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - ports: [{port: PORT}]\n";

fn pod(name: &str, ip: u8) -> String {
    POD.replace("NAME", name).replace("ADDR", &ip.to_string())
}

fn policy(port: u16) -> String {
    POLICY.replace("PORT", &port.to_string())
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// (kind of change, object key) of each change, in order.
fn summary(batch: &Batch) -> Vec<(&'static str, String)> {
    batch
        .changes
        .iter()
        .map(|change| match change {
            Change::Put(object) => ("put", object.key().to_string()),
            Change::Delete(key) => ("delete", key.to_string()),
            Change::Relist(kind, _) => ("relist", kind.as_str().to_owned()),
        })
        .collect()
}

#[test]
fn only_changed_files_are_parsed_and_only_their_objects_change() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        &format!("{}---\n{}", pod("a", 1), pod("b", 2)),
    );
    write(dir.path(), "p.yaml", &policy(80));
    let mut source = ManifestDir::new(dir.path());
    let first = source.reload();
    assert_eq!(first.changes.len(), 3, "{:?}", summary(&first));
    assert_eq!(source.parsed(), 2);

    let again = source.reload();
    assert!(again.changes.is_empty() && again.errors.is_empty());
    assert_eq!(source.parsed(), 0, "nothing changed: nothing parsed");

    write(dir.path(), "p.yaml", &policy(81));
    let edit = source.reload();
    assert_eq!(source.parsed(), 1);
    assert_eq!(
        summary(&edit),
        [("put", "NetworkPolicy x/p".to_owned())],
        "the changed policy alone"
    );

    // Rewritten with the same contents: parsed again, no change.
    write(
        dir.path(),
        "a.yaml",
        &format!("{}---\n{}", pod("a", 1), pod("b", 2)),
    );
    assert!(source.reload().changes.is_empty());

    write(dir.path(), "a.yaml", &pod("a", 1));
    assert_eq!(
        summary(&source.reload()),
        [("delete", "Pod x/b".to_owned())]
    );
    std::fs::remove_file(dir.path().join("p.yaml")).unwrap();
    assert_eq!(
        summary(&source.reload()),
        [("delete", "NetworkPolicy x/p".to_owned())]
    );
    assert_eq!(source.load().state.pods.len(), 1);
}

#[test]
fn a_duplicate_is_reported_while_it_lasts_and_the_next_file_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &policy(80));
    write(dir.path(), "b.yaml", &policy(81));
    let mut source = ManifestDir::new(dir.path());
    let first = source.reload();
    assert_eq!(summary(&first), [("put", "NetworkPolicy x/p".to_owned())]);
    let duplicate = |batch: &Batch| {
        batch
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let expected = format!(
        "{}: NetworkPolicy x/p: duplicate; the one in {} is kept",
        dir.path().join("b.yaml").display(),
        dir.path().join("a.yaml").display()
    );
    assert_eq!(duplicate(&first), std::slice::from_ref(&expected));
    let again = source.reload();
    assert!(again.changes.is_empty());
    assert_eq!(duplicate(&again), [expected], "reported at every read");
    assert_eq!(source.load().state.policies[0].ingress[0].ports.len(), 1);

    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    let after = source.reload();
    assert!(after.errors.is_empty());
    let [Change::Put(Object::Policy(kept))] = after.changes.as_slice() else {
        panic!("b's version is put: {:?}", summary(&after));
    };
    assert_eq!(
        format!("{:?}", kept.ingress[0].ports[0].port),
        "Some(Number(81))"
    );
}

#[test]
fn a_file_with_problems_is_read_and_reported_every_time() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.yaml", &policy(80));
    let mut source = ManifestDir::new(dir.path());
    source.reload();
    write(
        dir.path(),
        "p.yaml",
        &POLICY.replace("PORT", "80, protocol: HTTP"),
    );
    for _ in 0..2 {
        let batch = source.reload();
        assert_eq!(source.parsed(), 1);
        assert_eq!(batch.errors.len(), 1, "{:?}", batch.errors);
        assert!(batch.changes.is_empty(), "the last good version stays");
    }
}

#[test]
fn a_directory_for_the_engine_hands_on_the_same_changes_and_keeps_no_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut whole = ManifestDir::new(dir.path());
    let mut engine = ManifestDir::for_engine(dir.path());
    let steps: [&dyn Fn(&Path); 6] = [
        &|d| {
            write(d, "a.yaml", &format!("{}---\n{}", pod("a", 1), pod("b", 2)));
            write(d, "p.yaml", &policy(80));
        },
        // Invalid: the last good version stays, no change.
        &|d| write(d, "p.yaml", &POLICY.replace("PORT", "80, protocol: HTTP")),
        &|d| write(d, "p.yaml", &policy(82)),
        // The same policy in a file before it: that one's version wins.
        &|d| write(d, "0.yaml", &policy(83)),
        // Gone again: p.yaml's, which was not parsed in this read, is read again.
        &|d| std::fs::remove_file(d.join("0.yaml")).unwrap(),
        &|d| std::fs::remove_file(d.join("a.yaml")).unwrap(),
    ];
    let expected: [&[(&str, &str)]; 6] = [
        &[
            ("put", "Pod x/a"),
            ("put", "Pod x/b"),
            ("put", "NetworkPolicy x/p"),
        ],
        &[],
        &[("put", "NetworkPolicy x/p")],
        &[("put", "NetworkPolicy x/p")],
        &[("put", "NetworkPolicy x/p")],
        &[("delete", "Pod x/a"), ("delete", "Pod x/b")],
    ];
    for (step, expected) in steps.iter().zip(expected) {
        step(dir.path());
        let expected: Vec<(&str, String)> = expected
            .iter()
            .map(|(c, k)| (*c, (*k).to_owned()))
            .collect();
        let (a, b) = (whole.reload(), engine.reload());
        assert_eq!(summary(&a), expected);
        assert_eq!(a.changes, b.changes, "the same changes either way");
    }
    assert_eq!(whole.loaded.as_ref().map(BTreeMap::len), Some(1));
    assert!(engine.loaded.is_none(), "no copy of the objects");
    let port = |source: &mut ManifestDir| {
        let policies = source.load().state.policies;
        format!("{:?}", policies[0].ingress[0].ports[0].port)
    };
    assert_eq!(port(&mut whole), "Some(Number(82))");
    write(dir.path(), "p.yaml", &policy(84));
    assert_eq!(port(&mut engine), "Some(Number(84))", "what changed");
}

#[test]
fn a_snapshot_relists_every_kind_from_the_files_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &pod("a", 1));
    write(dir.path(), "p.yaml", &policy(80));
    let mut source = ManifestDir::for_engine(dir.path());
    source.reload();
    write(dir.path(), "b.yaml", &pod("b", 2));
    let snapshot = source.snapshot();
    let listed: Vec<(Kind, Vec<String>)> = snapshot
        .iter()
        .map(|change| match change {
            Change::Relist(kind, objects) => {
                (*kind, objects.iter().map(|o| o.key().to_string()).collect())
            }
            other => panic!("not a relist: {other:?}"),
        })
        .collect();
    let names = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        listed,
        [
            (Kind::Namespace, names(&[])),
            (Kind::Pod, names(&["Pod x/a", "Pod x/b"])),
            (Kind::NetworkPolicy, names(&["NetworkPolicy x/p"])),
            (Kind::Service, names(&[])),
            (Kind::EndpointSlice, names(&[])),
        ]
    );
    assert_eq!(
        summary(&source.reload()),
        [("put", "Pod x/b".to_owned())],
        "a snapshot does not change what the next read hands on"
    );
}
