//! Packet tests of the issue 4 semantics with real traffic between pod namespaces and
//! the real `netfence run` (harness `netns/` over `netfence-testbed`): named ports
//! resolved per pod, endPort ranges, IPv6 ipBlocks with excepts on dual-stack pods,
//! and SCTP (skipped, with the reason printed, when the kernel has no SCTP).
//! Need root (namespaces, BPF).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is a test failure"
)]

mod netns;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netns::{ALLOW, Attach, DENY, PodNs, Verdicts, bed, start};

/// Named ports resolve against each destination pod's own container ports, and an
/// endPort range allows exactly its ports.
#[test]
fn named_port_per_pod_and_end_port_range() {
    let mut bed = bed();
    bed.namespace("x", &[("team", "x")]);
    let a = bed
        .pod("x", "a", &[("app", "srv")], 10, &[("web", 8080)])
        .unwrap();
    let b = bed
        .pod("x", "b", &[("app", "srv")], 11, &[("web", 9090)])
        .unwrap();
    let c = bed.pod("x", "c", &[("app", "client")], 12, &[]).unwrap();
    bed.write_cluster().unwrap();
    bed.write_manifest(
        "srv.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: srv
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: srv
  ingress:
  - ports:
    - port: web
    - port: 7000
      endPort: 7001
",
    )
    .unwrap();
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp(&c, &a, 8080, ALLOW)
        .tcp(&c, &b, 9090, ALLOW)
        // a's "web" is 8080: b's number for it is not open on a, and back.
        .tcp(&c, &a, 9090, DENY)
        .tcp(&c, &b, 8080, DENY)
        .tcp(&c, &a, 7000, ALLOW)
        .tcp6(&c, &b, 7001, ALLOW)
        .tcp(&c, &a, 7002, DENY)
        .check();
}

/// Dual-stack pods: an IPv6 ipBlock with an except decides IPv6 connections, an IPv4
/// block the IPv4 ones, each per address of the same pod.
#[test]
fn ipv6_block_with_except_on_dual_stack_pods() {
    let mut bed = bed();
    bed.namespace("x", &[("team", "x")]);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    let c = bed.pod("x", "c", &[("app", "c")], 12, &[]).unwrap();
    bed.write_cluster().unwrap();
    // fd00:18::/64 holds every pod's IPv6 address; the except removes c's (fd00:18::12).
    // Over IPv4 only c is allowed.
    bed.write_manifest(
        "a.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-by-address
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: a
  ingress:
  - from:
    - ipBlock:
        cidr: fd00:18::/64
        except: [fd00:18::12/128]
    - ipBlock:
        cidr: 198.18.0.12/32
",
    )
    .unwrap();
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .tcp6(&b, &a, 80, ALLOW)
        .ping6(&b, &a, ALLOW)
        .tcp6(&c, &a, 80, DENY)
        .tcp(&c, &a, 80, ALLOW)
        .tcp(&b, &a, 80, DENY)
        .check();
}

/// Whether this kernel can open SCTP sockets; `Err` carries the reason it cannot.
fn sctp_supported() -> Result<(), String> {
    // SAFETY: plain socket(2) call; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        return Err(format!(
            "socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {error}"
        ));
    }
    // SAFETY: `fd` is a socket this function owns.
    unsafe { libc::close(fd) };
    Ok(())
}

/// An SCTP association from `from` to `to` on `port` (IPv4): a listener in `to`, a
/// connect with a 1.5 s timeout from `from`.
fn sctp_connects(from: &PodNs, to: &PodNs, port: u16) -> bool {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let ip = to.v4;
    let sockaddr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let socket = |nonblocking: bool| {
        let kind = libc::SOCK_STREAM | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
        // SAFETY: socket(2); the result is owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, kind, libc::IPPROTO_SCTP) };
        assert!(fd >= 0, "SCTP socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    use std::os::fd::AsRawFd as _;
    let listener = to
        .netns
        .run(|| {
            let fd = socket(false);
            // SAFETY: bind/listen on an owned socket with a valid sockaddr_in.
            let ok = unsafe {
                libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&sockaddr).cast(), len) == 0
                    && libc::listen(fd.as_raw_fd(), 1) == 0
            };
            assert!(
                ok,
                "SCTP listen on {}: {}",
                SocketAddr::from((ip, port)),
                std::io::Error::last_os_error()
            );
            fd
        })
        .unwrap();
    let connected = from
        .netns
        .run(|| {
            let fd = socket(true);
            // SAFETY: connect on an owned non-blocking socket with a valid sockaddr_in.
            unsafe { libc::connect(fd.as_raw_fd(), std::ptr::from_ref(&sockaddr).cast(), len) };
            let deadline = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < deadline {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: poll on one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 100) } > 0 {
                    let mut error: libc::c_int = 0;
                    let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                    // SAFETY: SO_ERROR into an int of the given size.
                    unsafe {
                        libc::getsockopt(
                            fd.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_ERROR,
                            std::ptr::from_mut(&mut error).cast(),
                            &mut size,
                        )
                    };
                    return error == 0;
                }
            }
            false
        })
        .unwrap();
    drop(listener);
    connected
}

/// SCTP through a numeric port rule; skipped (with the reason) without kernel SCTP.
/// The SCTP verdicts are also covered with crafted packets in `kernel_tables`.
#[test]
fn sctp_port_rule() {
    if let Err(reason) = sctp_supported() {
        eprintln!(
            "skipped: this kernel has no SCTP ({reason}); SCTP verdicts are covered by kernel_tables"
        );
        return;
    }
    let mut bed = bed();
    bed.namespace("x", &[("team", "x")]);
    let a = bed.pod("x", "a", &[("app", "a")], 10, &[]).unwrap();
    let b = bed.pod("x", "b", &[("app", "b")], 11, &[]).unwrap();
    bed.write_cluster().unwrap();
    bed.write_manifest(
        "a.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-sctp
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: a
  ingress:
  - ports:
    - protocol: SCTP
      port: 9000
",
    )
    .unwrap();
    let _agent = start(&bed, Attach::Auto);
    Verdicts::new()
        .observed("SCTP b → a:9000", ALLOW, sctp_connects(&b, &a, 9000))
        .observed("SCTP b → a:9001", DENY, sctp_connects(&b, &a, 9001))
        .check();
}
