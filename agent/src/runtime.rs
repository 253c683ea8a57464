//! Runtime facts checked when `netfence run` starts, before anything is loaded: the
//! effective capabilities (`CapEff` in `/proc/self/status`) and whether bpf(2) is
//! allowed at all. Each problem is one error naming what is missing and why, instead
//! of a verifier dump or an EPERM from deep inside the loader.
//!
//! 1. Capabilities: CAP_BPF (maps and programs), CAP_NET_ADMIN (attach TC programs,
//!    rtnetlink) and CAP_PERFMON (the verifier's full mode); CAP_SYS_ADMIN stands in
//!    for CAP_BPF and CAP_PERFMON (kernels before 5.8 have only that).
//! 2. A probe: one bpf(2) BPF_MAP_CREATE of a 1-entry array, closed at once. EPERM
//!    with the capabilities present and `Seccomp: 2` (a filter) is the container's
//!    seccomp profile: runtime default profiles allow bpf(2) with CAP_BPF only from
//!    containers/common 0.60 and containerd 1.6.9 / 1.7.0 on.

use std::fmt::Write as _;

/// Capability numbers (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What `/proc/self/status` says about this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStatus {
    /// `CapEff`, the effective capability set.
    pub cap_eff: u64,
    /// `Seccomp`: 0 none, 1 strict, 2 filter (`None` on kernels without the line).
    pub seccomp: Option<u8>,
}

impl ProcStatus {
    /// Reads `/proc/self/status`.
    pub fn read() -> Result<ProcStatus, String> {
        let text = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| format!("reading /proc/self/status: {e}"))?;
        ProcStatus::parse(&text)
    }

    /// Parses the text of a `/proc/PID/status` file.
    pub fn parse(text: &str) -> Result<ProcStatus, String> {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let cap_eff = field("CapEff")
            .ok_or("/proc/self/status has no CapEff line")?
            .to_owned();
        let cap_eff = u64::from_str_radix(&cap_eff, 16).map_err(|e| {
            format!("/proc/self/status: CapEff {cap_eff:?} is not hexadecimal: {e}")
        })?;
        let seccomp = field("Seccomp").and_then(|v| v.parse().ok());
        Ok(ProcStatus { cap_eff, seccomp })
    }

    pub fn has(&self, cap: u32) -> bool {
        self.cap_eff & (1u64 << cap) != 0
    }

    /// The capabilities netfence needs that this process lacks, with why each is
    /// needed.
    pub fn missing(&self) -> Vec<(&'static str, &'static str)> {
        let admin = self.has(CAP_SYS_ADMIN);
        let mut missing = Vec::new();
        if !self.has(CAP_BPF) && !admin {
            missing.push(("CAP_BPF", "create the BPF maps and load the TC programs"));
        }
        if !self.has(CAP_NET_ADMIN) {
            missing.push((
                "CAP_NET_ADMIN",
                "attach the TC programs and read pod addresses through rtnetlink",
            ));
        }
        if !self.has(CAP_PERFMON) && !admin {
            missing.push((
                "CAP_PERFMON",
                "have the verifier check the programs in its full mode",
            ));
        }
        missing
    }
}

/// The error for missing capabilities.
pub fn missing_error(status: &ProcStatus) -> Option<String> {
    let missing = status.missing();
    if missing.is_empty() {
        return None;
    }
    let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
    let mut text = format!("missing capabilities: {}", names.join(", "));
    for (name, why) in &missing {
        let _ = write!(text, "; {name} to {why}");
    }
    let _ = write!(
        text,
        ". netfence needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN in place of CAP_BPF and CAP_PERFMON); this process has CapEff {:016x} (/proc/self/status). In a pod, add them under securityContext.capabilities.add (deploy/daemonset.yaml)",
        status.cap_eff
    );
    Some(text)
}

/// The error for a bpf(2) probe that failed with `errno` although the capabilities
/// are there.
pub fn probe_error(status: &ProcStatus, errno: i32) -> String {
    let error = std::io::Error::from_raw_os_error(errno);
    if errno == libc::EPERM && status.seccomp == Some(2) {
        format!(
            "bpf(2) is denied by this container's seccomp profile ({error}; /proc/self/status has Seccomp: 2, and CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON are effective). \
             Runtime default profiles allow bpf(2) with CAP_BPF only from containers/common 0.60 (Podman, CRI-O) and containerd 1.6.9 / 1.7.0 on; \
             older ones, such as Debian 12's containers-common 0.50, allow it only with CAP_SYS_ADMIN. \
             Upgrade the container runtime, or use the profile netfence ships: seccompProfile type Localhost, localhostProfile netfence.json (deploy/seccomp/netfence.json, copied to the kubelet's seccomp directory)"
        )
    } else if errno == libc::EPERM {
        format!(
            "bpf(2) is refused ({error}) although CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON are effective and no seccomp filter is set (Seccomp: {}): \
             a user namespace (capabilities that are not the host's), a Linux security module, or kernel.unprivileged_bpf_disabled with a kernel older than 5.8",
            status
                .seccomp
                .map_or_else(|| "unknown".to_owned(), |s| s.to_string())
        )
    } else {
        format!("bpf(2) BPF_MAP_CREATE failed ({error}): the kernel may lack BPF support")
    }
}

/// One bpf(2) BPF_MAP_CREATE of a 1-entry array; the map is closed at once.
/// `Err(errno)` when the kernel refuses.
pub fn probe_bpf() -> Result<(), i32> {
    // union bpf_attr's map-create part: map_type, key_size, value_size, max_entries,
    // then fields left zero (the kernel accepts a shorter attr whose tail is zero).
    let mut attr = [0u32; 12];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: bpf(2) with BPF_MAP_CREATE (0) reads `size_of_val(&attr)` bytes from a
    // live, initialised buffer; it returns a new file descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EPERM));
    }
    // SAFETY: `fd` is the descriptor bpf(2) just returned, owned here only.
    unsafe { libc::close(i32::try_from(fd).unwrap_or(-1)) };
    Ok(())
}

/// The check `netfence run` makes first: capabilities, then the probe.
pub fn check() -> Result<(), String> {
    let status = ProcStatus::read()?;
    tracing::info!(
        cap_eff = %format!("{:016x}", status.cap_eff),
        seccomp = status.seccomp.map_or(-1, i32::from),
        "runtime: effective capabilities and seccomp mode (/proc/self/status)"
    );
    if let Some(error) = missing_error(&status) {
        return Err(error);
    }
    probe_bpf().map_err(|errno| probe_error(&status, errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\tnetfence\nUmask:\t0022\nState:\tR (running)\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n";

    fn status(cap_eff: u64, seccomp: Option<u8>) -> ProcStatus {
        ProcStatus { cap_eff, seccomp }
    }

    fn caps(list: &[u32]) -> u64 {
        list.iter().fold(0, |set, cap| set | (1u64 << cap))
    }

    #[test]
    fn cap_eff_and_seccomp_are_read_from_proc_status() {
        assert_eq!(
            ProcStatus::parse(ROOT),
            Ok(status(0x0000_01ff_ffff_ffff, Some(0)))
        );
        // The DaemonSet's container: BPF, NET_ADMIN, PERFMON, under a seccomp filter.
        let pod = ROOT
            .replace("CapEff:\t000001ffffffffff", "CapEff:\t000000c000001000")
            .replace("Seccomp:\t0", "Seccomp:\t2");
        let parsed = ProcStatus::parse(&pod).unwrap();
        assert_eq!(
            parsed,
            status(caps(&[CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF]), Some(2))
        );
        assert!(parsed.missing().is_empty());
        assert_eq!(
            ProcStatus::parse("Name:\tx\n"),
            Err("/proc/self/status has no CapEff line".to_owned())
        );
        assert!(
            ProcStatus::parse("CapEff:\tzz\n")
                .unwrap_err()
                .starts_with("/proc/self/status: CapEff \"zz\" is not hexadecimal")
        );
        // A kernel without the Seccomp line.
        assert_eq!(
            ProcStatus::parse("CapEff:\t0000000000001000\n"),
            Ok(status(caps(&[CAP_NET_ADMIN]), None))
        );
    }

    #[test]
    fn each_missing_capability_is_named_with_why_and_sys_admin_stands_in() {
        let all = caps(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        assert_eq!(missing_error(&status(all, Some(2))), None);
        assert_eq!(
            missing_error(&status(caps(&[CAP_SYS_ADMIN, CAP_NET_ADMIN]), None)),
            None,
            "CAP_SYS_ADMIN in place of CAP_BPF and CAP_PERFMON"
        );
        let names = |cap_eff| -> Vec<&'static str> {
            status(cap_eff, None)
                .missing()
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert_eq!(names(all & !caps(&[CAP_BPF])), ["CAP_BPF"]);
        assert_eq!(names(all & !caps(&[CAP_NET_ADMIN])), ["CAP_NET_ADMIN"]);
        assert_eq!(names(all & !caps(&[CAP_PERFMON])), ["CAP_PERFMON"]);
        assert_eq!(names(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert_eq!(
            missing_error(&status(caps(&[CAP_BPF, CAP_PERFMON]), Some(0))).unwrap(),
            "missing capabilities: CAP_NET_ADMIN; CAP_NET_ADMIN to attach the TC programs and read pod addresses through rtnetlink. \
             netfence needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN in place of CAP_BPF and CAP_PERFMON); \
             this process has CapEff 000000c000000000 (/proc/self/status). In a pod, add them under securityContext.capabilities.add (deploy/daemonset.yaml)"
        );
    }

    #[test]
    fn a_bpf_eperm_under_a_seccomp_filter_names_the_runtime_versions() {
        let all = caps(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        let text = probe_error(&status(all, Some(2)), libc::EPERM);
        assert!(
            text.starts_with("bpf(2) is denied by this container's seccomp profile (Operation not permitted (os error 1); /proc/self/status has Seccomp: 2"),
            "{text}"
        );
        for needle in [
            "containers/common 0.60",
            "containerd 1.6.9 / 1.7.0",
            "Debian 12's containers-common 0.50",
            "deploy/seccomp/netfence.json",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        let text = probe_error(&status(all, Some(0)), libc::EPERM);
        assert!(
            text.starts_with("bpf(2) is refused (Operation not permitted (os error 1)) although CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON are effective and no seccomp filter is set (Seccomp: 0)"),
            "{text}"
        );
        assert!(
            probe_error(&status(all, None), libc::ENOSYS)
                .starts_with("bpf(2) BPF_MAP_CREATE failed (Function not implemented")
        );
    }
}
