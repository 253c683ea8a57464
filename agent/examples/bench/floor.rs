//! The floor of section 1: an empty TC classifier (`r0 = 0; exit`) loaded with a raw
//! bpf(2) and run through the same `BPF_PROG_TEST_RUN` harness, with the same frame,
//! repeat count and BPF run-time statistics as the real programs. Whatever it costs is
//! the harness's own (the test-run loop, the statistics' clock reads), so every cell of
//! section 1 is also printed as a ratio to it: absolute nanoseconds differ between
//! machines, ratios are what runs compare.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// `r0 = 0` (BPF_ALU64 | BPF_MOV | BPF_K, dst r0) and `exit` (BPF_JMP | BPF_EXIT).
const EMPTY: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];

/// The `prog_load` part of `union bpf_attr` netfence sets (the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    _rest: [u64; 8],
}

/// The `test` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgTestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The `info` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `union bpf_attr` prefix of its own size.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The loaded empty classifier.
pub struct Empty {
    fd: OwnedFd,
    id: u32,
}

impl Empty {
    pub fn load() -> anyhow::Result<Self> {
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..14].copy_from_slice(b"netfence_empty");
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: EMPTY.len() as u32,
            insns: EMPTY.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..ProgLoad::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr)
            .context("loading the empty classifier (bpf BPF_PROG_LOAD)")?;
        // SAFETY: a new file descriptor the kernel just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // struct bpf_prog_info starts with `type` and `id` (u32 each).
        let mut head = [0u32; 2];
        let mut info = ObjInfo {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: size_of_val(&head) as u32,
            info: head.as_mut_ptr() as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut info).context("reading the empty classifier's id")?;
        Ok(Self { fd, id: head[1] })
    }

    /// BPF run-time statistics of the program: (run time, run count).
    fn stats(&self) -> anyhow::Result<(u64, u64)> {
        for program in aya::programs::loaded_programs() {
            let program = program?;
            if program.id() == self.id {
                return Ok((program.run_time().as_nanos() as u64, program.run_count()));
            }
        }
        bail!(
            "the empty classifier (id {}) is not among the loaded programs",
            self.id
        )
    }

    fn test_run(&self, frame: &[u8], repeat: u32) -> anyhow::Result<ProgTestRun> {
        let mut attr = ProgTestRun {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..ProgTestRun::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).context("test run of the empty classifier")?;
        Ok(attr)
    }

    /// ns per run of `frame`, `repeat` times, after a warm-up batch: from the BPF
    /// statistics (as section 1 measures) and from the test run's own timer.
    pub fn measure(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(f64, f64)> {
        self.test_run(frame, repeat / 10)?;
        let (time_before, runs_before) = self.stats()?;
        let result = self.test_run(frame, repeat)?;
        let (time_after, runs_after) = self.stats()?;
        if result.retval != 0 {
            bail!("the empty classifier returned {}", result.retval);
        }
        let runs = runs_after.saturating_sub(runs_before);
        if runs < u64::from(repeat) {
            bail!(
                "BPF stats counted {runs} runs of the empty classifier of {repeat}; are run-time stats on?"
            );
        }
        Ok((
            time_after.saturating_sub(time_before) as f64 / runs as f64,
            f64::from(result.duration),
        ))
    }
}
