//! PID 1 of the aarch64 test VM of `cargo xtask test --target aarch64`: a single file
//! with no crates, built by `rustc` for aarch64-unknown-linux-gnu with a static C
//! runtime (xtask/src/aarch64/vm.rs). It mounts proc, sys, dev, the BPF file system and
//! a tmpfs, prints the kernel, the CPU count and `net.core.bpf_jit_enable`, runs every
//! test binary under `/tests` in name order (their own output goes to the serial
//! console), watches `/proc/kallsyms` meanwhile for the JIT images of the TC programs,
//! and powers the machine off. xtask reads the console: every line of this program
//! starts with `netfence-guest:`.

use std::ffi::{CString, c_char, c_int, c_ulong, c_void};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

unsafe extern "C" {
    fn mount(
        source: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    fn reboot(cmd: c_int) -> c_int;
    fn sync();
}

/// `LINUX_REBOOT_CMD_POWER_OFF`: PSCI `SYSTEM_OFF` on `-M virt`, which ends QEMU.
const RB_POWER_OFF: c_int = 0x4321_fedc_u32 as c_int;

/// The names the TC programs' JIT images get in `/proc/kallsyms`
/// (`bpf_prog_<tag>_<name>`; the name is the BTF function name, or the program name
/// cut to 15 bytes on kernels without it).
const JIT_SYMBOLS: [(&str, &str); 2] = [
    ("netfence_from_pod", "netfence_from_p"),
    ("netfence_to_pod", "netfence_to_pod"),
];

fn say(line: &str) {
    println!("netfence-guest: {line}");
}

fn mount_fs(fstype: &str, target: &str) {
    let _ = std::fs::create_dir_all(target);
    let (Ok(fs), Ok(dir)) = (CString::new(fstype), CString::new(target)) else {
        return;
    };
    // SAFETY: the strings are NUL-terminated and outlive the call; no data argument.
    let rc = unsafe { mount(fs.as_ptr(), dir.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        say(&format!("mount {fstype} on {target} failed: {}", std::io::Error::last_os_error()));
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|e| format!("unreadable ({e})"), |s| s.trim().to_owned())
}

/// Polls `/proc/kallsyms` until `stop`, collecting the JIT symbols of the TC programs.
fn watch_jit(stop: Arc<AtomicBool>, seen: Arc<Mutex<BTreeSet<String>>>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(text) = std::fs::read_to_string("/proc/kallsyms") {
            for symbol in text.lines().filter_map(|line| line.split_whitespace().nth(2)) {
                let Some(rest) = symbol.strip_prefix("bpf_prog_") else {
                    continue;
                };
                for (name, short) in JIT_SYMBOLS {
                    if rest.ends_with(&format!("_{name}")) || rest.ends_with(&format!("_{short}")) {
                        if let Ok(mut seen) = seen.lock() {
                            seen.insert(name.to_owned());
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn run_tests() {
    let mut tests: Vec<_> = std::fs::read_dir("/tests")
        .map(|dir| dir.filter_map(Result::ok).map(|entry| entry.path()).collect())
        .unwrap_or_default();
    tests.sort();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let watcher = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        std::thread::spawn(move || watch_jit(stop, seen))
    };
    for test in &tests {
        let name = test.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        say(&format!("run {name}"));
        let start = Instant::now();
        let status = std::process::Command::new(test)
            .env("PATH", "/tests")
            .env("HOME", "/tmp")
            .env("TMPDIR", "/tmp")
            .env("RUST_BACKTRACE", "1")
            .current_dir("/tmp")
            .status();
        let secs = start.elapsed().as_secs_f64();
        match status {
            Ok(status) => say(&format!(
                "exit {name} {} in {secs:.1} s",
                status.code().map_or_else(|| format!("{status}"), |c| c.to_string())
            )),
            Err(e) => say(&format!("exit {name} not started ({e}) in {secs:.1} s")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let seen = seen.lock().map(|s| s.iter().cloned().collect::<Vec<_>>()).unwrap_or_default();
    say(&format!("jit images seen: [{}]", seen.join(" ")));
}

fn main() {
    let start = Instant::now();
    mount_fs("proc", "/proc");
    mount_fs("sysfs", "/sys");
    mount_fs("devtmpfs", "/dev");
    mount_fs("bpf", "/sys/fs/bpf");
    mount_fs("tmpfs", "/tmp");
    say(&format!(
        "kernel {} {} cpus {}",
        read_trimmed("/proc/sys/kernel/osrelease"),
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    say(&format!("bpf_jit_enable {}", read_trimmed("/proc/sys/net/core/bpf_jit_enable")));
    run_tests();
    say(&format!("done in {:.1} s", start.elapsed().as_secs_f64()));
    // SAFETY: no preconditions; powering off is the intended end of PID 1.
    unsafe {
        sync();
        reboot(RB_POWER_OFF);
    }
    // Reached only if the power-off failed: PID 1 exiting panics the kernel, and
    // `panic=-1` with `-no-reboot` ends QEMU anyway.
}
