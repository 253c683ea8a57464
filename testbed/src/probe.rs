//! Probes of real traffic between namespaces. TCP and UDP use std sockets created on
//! a thread inside the source or destination namespace (so timeouts are exact and no
//! helper process is involved); ICMP runs `ping` through `ip netns exec`. Every probe
//! is bounded: a dropped packet costs at most [`CONNECT_TIMEOUT`].

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::netns::Netns;

/// How long a probe waits for a connection, a datagram or a reply before calling it
/// dropped. Local veths answer in well under a millisecond; this leaves room for ARP
/// and a loaded machine.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

const REQUEST: &[u8; 4] = b"ping";
const REPLY: &[u8; 4] = b"pong";

/// Whether a TCP connection from `from` to `to_ip:port` is established and carries a
/// request and its reply. A listener is bound to `to_ip:port` inside `to`.
pub fn tcp_connects(from: &Netns, to: &Netns, to_ip: IpAddr, port: u16) -> anyhow::Result<bool> {
    let target = SocketAddr::new(to_ip, port);
    tcp_via(from, to, target, target)
}

/// Whether a TCP connection from `from` to `connect` (e.g. a Service's ClusterIP:port)
/// reaches a listener bound to `listen` (its backend pod IP:targetPort) inside `to`
/// and carries a request and its reply (which must come back from `connect`, else
/// the client's stack resets it).
pub fn tcp_via(
    from: &Netns,
    to: &Netns,
    listen: SocketAddr,
    connect: SocketAddr,
) -> anyhow::Result<bool> {
    let target = connect;
    let listener = to
        .run(|| bind_retrying(|| TcpListener::bind(listen)))?
        .with_context(|| format!("listening on {listen} in {}", to.name()))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + CONNECT_TIMEOUT * 2;
    std::thread::scope(|scope| {
        let server = scope.spawn(|| serve_one(&listener, deadline));
        let client = from.run(|| exchange(target));
        let _served = server.join();
        client
    })
}

/// Binds with `bind`, waiting out (bounded: 40 tries over about 2 s) an earlier
/// probe's socket on the same address that is not released yet. Tests run in
/// parallel: a process another test forks holds a copy of every descriptor until its
/// exec closes them (close-on-exec), so a socket a probe has just closed can stay
/// bound for that instant.
pub fn bind_retrying<S>(bind: impl Fn() -> std::io::Result<S>) -> std::io::Result<S> {
    let mut tries = 0;
    loop {
        match bind() {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// Accepts one connection before `deadline` and answers its request. Errors only mean
/// the exchange did not happen; the client's view decides the probe.
fn serve_one(listener: &TcpListener, deadline: Instant) -> std::io::Result<()> {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
                let mut buf = [0; 4];
                stream.read_exact(&mut buf)?;
                if &buf == REQUEST {
                    stream.write_all(REPLY)?;
                }
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn exchange(target: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        return false;
    };
    let mut buf = [0; 4];
    stream.set_read_timeout(Some(CONNECT_TIMEOUT)).is_ok()
        && stream.write_all(REQUEST).is_ok()
        && stream.read_exact(&mut buf).is_ok()
        && &buf == REPLY
}

/// What a UDP request/reply exchange saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpOutcome {
    /// The request reached the socket bound in the destination.
    pub request_arrived: bool,
    /// The destination's reply reached the sender.
    pub reply_arrived: bool,
}

/// Sends one datagram from `from` to `to_ip:port` (a socket bound there inside `to`),
/// which answers it to the sender's address.
pub fn udp_exchange(
    from: &Netns,
    to: &Netns,
    to_ip: IpAddr,
    port: u16,
) -> anyhow::Result<UdpOutcome> {
    let target = SocketAddr::new(to_ip, port);
    udp_probe(from, None, to, target, target)
}

/// A UDP request from `from` to `connect` (e.g. a ClusterIP:port) answered by a socket
/// bound to `listen` inside `to` (its backend); the reply counts as arrived only if it
/// comes back from `connect` (un-DNATed), as a DNS client requires.
pub fn udp_via(
    from: &Netns,
    to: &Netns,
    listen: SocketAddr,
    connect: SocketAddr,
) -> anyhow::Result<UdpOutcome> {
    udp_probe(from, None, to, listen, connect)
}

/// Like [`udp_exchange`] but from a socket bound to `source`, an address the caller
/// has put on `from`'s interface: the way to send with a source that is not the pod's.
pub fn udp_from_address(
    from: &Netns,
    source: IpAddr,
    to: &Netns,
    to_ip: IpAddr,
    port: u16,
) -> anyhow::Result<UdpOutcome> {
    let target = SocketAddr::new(to_ip, port);
    udp_probe(from, Some(source), to, target, target)
}

fn udp_probe(
    from: &Netns,
    source: Option<IpAddr>,
    to: &Netns,
    listen: SocketAddr,
    target: SocketAddr,
) -> anyhow::Result<UdpOutcome> {
    let server = to
        .run(|| bind_retrying(|| UdpSocket::bind(listen)))?
        .with_context(|| format!("binding UDP {listen} in {}", to.name()))?;
    let local = source.unwrap_or(match target.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let client = from
        .run(|| UdpSocket::bind(SocketAddr::new(local, 0)))?
        .with_context(|| format!("binding UDP {local} in {}", from.name()))?;
    server.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    client.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    client
        .send_to(REQUEST, target)
        .with_context(|| format!("sending to {target} from {}", from.name()))?;
    let mut buf = [0; 16];
    let Ok((len, sender)) = server.recv_from(&mut buf) else {
        return Ok(UdpOutcome {
            request_arrived: false,
            reply_arrived: false,
        });
    };
    let request_arrived = &buf[..len] == REQUEST;
    // A reply that cannot even be sent (no route) is a reply that did not arrive.
    let reply_sent = server.send_to(REPLY, sender).is_ok();
    let reply_arrived = reply_sent
        && matches!(client.recv_from(&mut buf), Ok((len, from)) if &buf[..len] == REPLY && from == target);
    Ok(UdpOutcome {
        request_arrived,
        reply_arrived,
    })
}

/// Whether an ICMP (or ICMPv6) echo from `from` to `to_ip` is answered: `ping` sends
/// every 200 ms and stops at the first reply or after two seconds.
pub fn ping(from: &Netns, to_ip: IpAddr) -> anyhow::Result<bool> {
    let status = from
        .command("timeout")
        .args(["5", "ping", "-q", "-n", "-c", "1", "-i", "0.2", "-w", "2"])
        .arg(to_ip.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running ping")?;
    Ok(status.success())
}
