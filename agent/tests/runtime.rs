//! `netfence run`'s start checks with the real binary (needs root): run with a
//! capability dropped (util-linux `setpriv --bounding-set=-CAP`, which takes it out of
//! what root gets at exec) it exits 1 naming that capability; run under a seccomp
//! filter that answers bpf(2) with EPERM (as Debian 12's runtime default profile does
//! without CAP_SYS_ADMIN) it says so and names the runtime versions that allow it.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output};

fn netfence() -> &'static str {
    env!("CARGO_BIN_EXE_netfence")
}

/// `netfence run` on a directory that does not exist: the start checks come first.
fn run_args(command: &mut Command) -> &mut Command {
    command.args([
        "run",
        "--node-name",
        "n",
        "--manifests",
        "/nonexistent/nfr6",
        "--cni-socket",
        "",
    ])
}

fn under_setpriv(bounding: &str) -> Output {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--bounding-set={bounding}"))
        .arg("--inh-caps=-all")
        .arg(netfence());
    run_args(&mut command)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_dropped_capability_is_named_and_the_agent_exits_1() {
    netfence_testbed::require_root().unwrap();
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: no setpriv (util-linux)");
        return;
    }
    for (drop, named) in [
        ("-net_admin", "CAP_NET_ADMIN"),
        ("-perfmon,-sys_admin", "CAP_PERFMON"),
        ("-bpf,-sys_admin", "CAP_BPF"),
    ] {
        let out = under_setpriv(drop);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{drop}: {text}");
        assert!(
            text.contains(&format!(
                "netfence: error: missing capabilities: {named}; {named} to "
            )),
            "{drop}: {text}"
        );
        assert!(
            text.contains("netfence needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
            "{text}"
        );
    }
    // Only CAP_SYS_ADMIN dropped: CAP_BPF and CAP_PERFMON are enough, the check
    // passes and the run fails later, on the missing directory.
    let out = under_setpriv("-sys_admin");
    assert!(
        !stderr(&out).contains("missing capabilities"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_seccomp_denial_of_bpf_is_reported_as_such() {
    netfence_testbed::require_root().unwrap();
    let mut command = Command::new(netfence());
    run_args(&mut command).env("NO_COLOR", "1");
    // A classic BPF seccomp filter: bpf(2) → EPERM, everything else allowed.
    const LD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS, offset 0: the syscall number
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000;
    const ERRNO_EPERM: u32 = 0x0005_0000 | 1;
    let bpf_nr = u32::try_from(libc::SYS_bpf).unwrap();
    let filter = [
        libc::sock_filter {
            code: LD_NR,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JEQ,
            jt: 0,
            jf: 1,
            k: bpf_nr,
        },
        libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: ERRNO_EPERM,
        },
        libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: ALLOW,
        },
    ];
    // SAFETY: between fork and exec only prctl(2) runs, on a filter array that
    // outlives the call (copied into the child's memory by fork).
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog {
                len: 4,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_SECCOMP, 2, &program as *const libc::sock_fprog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("netfence: error: bpf(2) is denied by this container's seccomp profile (Operation not permitted (os error 1); /proc/self/status has Seccomp: 2, and CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON are effective)"),
        "{text}"
    );
    assert!(
        text.contains("containers/common 0.60 (Podman, CRI-O) and containerd 1.6.9 / 1.7.0"),
        "{text}"
    );
}
