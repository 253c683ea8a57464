//! Raw access to a namespace's link, as a hostile pod has it: an `AF_PACKET` socket
//! bound to one interface that sends whole forged frames ([`crate::forge`]) and
//! captures what arrives (before any IP processing, so a frame the stack would reject
//! still counts as delivered), and the link facts a forger needs: MACs, ifindexes,
//! link-local addresses and the neighbour table. Every wait is bounded by a window.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::forge::{Mac, parse_mac};
use crate::netns::Netns;
use crate::probe::bind_retrying;

/// How long one receive call blocks inside a capture window.
const SLICE: Duration = Duration::from_millis(20);
/// At most this many frames are read in one window (a bound, never reached by tests).
const MAX_FRAMES: usize = 100_000;

/// An `AF_PACKET` raw socket bound to one interface of a namespace (all EtherTypes).
#[derive(Debug)]
pub struct RawLink {
    fd: OwnedFd,
    ifindex: i32,
    what: String,
}

impl RawLink {
    /// Opens the socket on `dev` inside `netns`; frames arriving from then on queue in
    /// it until [`RawLink::count`] reads them.
    pub fn open(netns: &Netns, dev: &str) -> anyhow::Result<RawLink> {
        let what = format!("{dev} in {}", netns.name());
        let (fd, ifindex) = netns
            .run(|| open_packet_socket(dev))?
            .with_context(|| format!("AF_PACKET socket on {what}"))?;
        Ok(RawLink { fd, ifindex, what })
    }

    /// Sends one whole frame (Ethernet header included) out of the interface.
    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        let mut addr = sockaddr_ll(self.ifindex);
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(frame.get(..6).unwrap_or(&[0; 6]));
        // SAFETY: the buffer and the address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                sockaddr_ll_len(),
            )
        };
        if usize::try_from(sent).ok() != Some(frame.len()) {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending a {}-byte frame on {}", frame.len(), self.what));
        }
        Ok(())
    }

    /// Sends `frame` `times` times.
    pub fn send_times(&self, frame: &[u8], times: usize) -> anyhow::Result<()> {
        for _ in 0..times {
            self.send(frame)?;
        }
        Ok(())
    }

    /// Reads for `window` and returns the incoming frames (not the ones this
    /// namespace sent), oldest first. Reading consumes them: take one capture per
    /// round and count every kind of frame in it.
    pub fn capture(&self, window: Duration) -> anyhow::Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + window;
        let mut buf = vec![0u8; 65536];
        let mut frames = Vec::new();
        for _ in 0..MAX_FRAMES {
            if Instant::now() >= deadline {
                break;
            }
            let mut from = sockaddr_ll(0);
            let mut from_len = sockaddr_ll_len();
            // SAFETY: the buffer and the address are valid for the lengths given.
            let got = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    std::ptr::from_mut(&mut from).cast(),
                    &raw mut from_len,
                )
            };
            let Ok(len) = usize::try_from(got) else {
                let error = std::io::Error::last_os_error();
                match error.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                    _ => return Err(error).with_context(|| format!("capturing on {}", self.what)),
                }
            };
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                frames.push(buf[..len].to_vec());
            }
        }
        Ok(frames)
    }

    /// [`RawLink::capture`], counting the frames for which `matches` holds.
    pub fn count(
        &self,
        window: Duration,
        matches: impl Fn(&[u8]) -> bool,
    ) -> anyhow::Result<usize> {
        Ok(self.capture(window)?.iter().filter(|f| matches(f)).count())
    }
}

fn sockaddr_ll(ifindex: i32) -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: u16::try_from(libc::AF_PACKET).unwrap_or(17),
        sll_protocol: eth_p_all(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    }
}

fn sockaddr_ll_len() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(20)
}

/// `ETH_P_ALL` in network byte order, as `AF_PACKET` wants it.
fn eth_p_all() -> u16 {
    u16::try_from(libc::ETH_P_ALL).unwrap_or(3).to_be()
}

/// Runs inside the namespace: the socket, bound to `dev`, with a short receive timeout.
fn open_packet_socket(dev: &str) -> anyhow::Result<(OwnedFd, i32)> {
    let ifindex = i32::try_from(ifindex_here(dev)?)?;
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(eth_p_all()),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let addr = sockaddr_ll(ifindex);
    // SAFETY: the address is valid for the length given.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            sockaddr_ll_len(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("binding to {dev}"));
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: libc::suseconds_t::try_from(SLICE.as_micros()).unwrap_or(20_000),
    };
    // SAFETY: a timeval option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            libc::socklen_t::try_from(size_of::<libc::timeval>()).unwrap_or(16),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_RCVTIMEO");
    }
    Ok((fd, ifindex))
}

/// The ifindex of `dev` in the calling thread's namespace.
fn ifindex_here(dev: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {dev}"));
    }
    Ok(index)
}

/// The ifindex of `dev` in `netns` (a link-local address's scope id there).
pub fn ifindex(netns: &Netns, dev: &str) -> anyhow::Result<u32> {
    netns.run(|| ifindex_here(dev))?
}

/// The MAC address of `dev` in `netns`.
pub fn mac(netns: &Netns, dev: &str) -> anyhow::Result<Mac> {
    parse_mac(&crate::flannel::link_mac(netns, dev)?)
}

/// The link-layer address `netns` has for `ip` on `dev` (`ip -j neigh`), if any.
pub fn neighbour(netns: &Netns, dev: &str, ip: IpAddr) -> anyhow::Result<Option<Mac>> {
    let out = netns.ip(&["-j", "neigh", "show", "to", &ip.to_string(), "dev", dev])?;
    let json: Value = serde_json::from_str(&out).with_context(|| format!("ip -j neigh: {out}"))?;
    json.as_array()
        .into_iter()
        .flatten()
        .find_map(|entry| entry.get("lladdr").and_then(Value::as_str))
        .map(parse_mac)
        .transpose()
}

/// The IPv6 link-local address of `dev` in `netns`, once duplicate address detection
/// has finished (waits at most 3 s).
pub fn link_local(netns: &Netns, dev: &str) -> anyhow::Result<Ipv6Addr> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let out = netns.ip(&["-j", "-6", "addr", "show", "dev", dev, "scope", "link"])?;
        let json: Value =
            serde_json::from_str(&out).with_context(|| format!("ip -j addr: {out}"))?;
        let found = json
            .pointer("/0/addr_info")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| a.get("family").and_then(Value::as_str) == Some("inet6"));
        if let Some(addr) = found {
            let tentative = addr.get("tentative").and_then(Value::as_bool) == Some(true);
            let local = addr
                .get("local")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !tentative {
                return local
                    .parse()
                    .with_context(|| format!("link-local address {local:?}"));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{dev} in {} has no usable link-local address: {out}",
                netns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A UDP socket bound inside `netns` (e.g. a receiver on `0.0.0.0:port`).
pub fn udp_socket(netns: &Netns, bind: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = netns
        .run(|| bind_retrying(|| UdpSocket::bind(bind)))?
        .with_context(|| format!("binding UDP {bind} in {}", netns.name()))?;
    socket.set_read_timeout(Some(SLICE))?;
    Ok(socket)
}

/// Every datagram `socket` receives during `window`, with its sender.
pub fn datagrams(
    socket: &UdpSocket,
    window: Duration,
) -> anyhow::Result<Vec<(Vec<u8>, SocketAddr)>> {
    socket.set_read_timeout(Some(SLICE))?;
    let deadline = Instant::now() + window;
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    for _ in 0..MAX_FRAMES {
        if Instant::now() >= deadline {
            break;
        }
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => got.push((buf[..len].to_vec(), from)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("receiving UDP"),
        }
    }
    Ok(got)
}
