//! The proxyDHCP sockets: UDP 67 (DISCOVERs) and 4011 (the PXE boot server's REQUESTs), each
//! answered by [`reply::answer`] and logged with the decision's reason.
//!
//! Port 67 is often held already on a Pi-hole host: dnsmasq binds `0.0.0.0:67`, and sets
//! SO_REUSEADDR only with `bind-interfaces`. So each port is opened one of two ways:
//! * **UDP**: `0.0.0.0:PORT` (receives broadcasts) and `LISTEN:PORT` (receives unicast and sends,
//!   so the kernel routes 255.255.255.255 out of the interface holding LISTEN), both with
//!   SO_REUSEADDR, which lets them share the port with each other and with a dnsmasq that also
//!   sets it; broadcasts reach every socket bound to the port.
//! * **raw**, when that bind fails with "address in use": a raw IPPROTO_UDP socket gets a copy of
//!   every UDP packet the host receives (before the UDP layer picks the owner of the port), we
//!   keep those to PORT; a second raw socket bound to LISTEN sends UDP header + reply. Needs
//!   CAP_NET_RAW. dnsmasq still answers its own clients; we only add the boot offer.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::classify::{Class, Client};
use super::frame;
use super::reply::{self, Dest, Port, Silence};

pub const DHCP_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const PXE_PORT: u16 = 4011;

/// The inventory's say on a client: None boots it, Some(reason) refuses.
pub type Policy = Arc<dyn Fn(&Client, &Class) -> Option<String> + Send + Sync>;
/// Whether the server has a TFTP name (the iPXE binaries).
pub type HasFile = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One port's sockets.
pub enum Listener {
    Udp {
        port: u16,
        wild: UdpSocket,
        local: UdpSocket,
    },
    Raw {
        port: u16,
        recv: UdpSocket,
        send: UdpSocket,
    },
}

impl Listener {
    /// UDP `port` on `listen`, or a raw socket when the port is held by a process that does
    /// not share it.
    pub fn bind(listen: Ipv4Addr, port: u16) -> io::Result<Listener> {
        match udp_pair(listen, port) {
            Ok((wild, local)) => Ok(Listener::Udp { port, wild, local }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => raw_pair(listen, port),
            Err(e) => Err(e),
        }
    }

    /// `udp` or `raw`, for the start-up line.
    pub fn mode(&self) -> &'static str {
        match self {
            Listener::Udp { .. } => "udp",
            Listener::Raw { .. } => "raw (the port is held by another process)",
        }
    }

    fn port(&self) -> u16 {
        match self {
            Listener::Udp { port, .. } | Listener::Raw { port, .. } => *port,
        }
    }

    /// The next datagram to our port and its source.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4)> {
        match self {
            Listener::Udp { wild, local, .. } => {
                let (n, from) = loop {
                    tokio::select! {
                        r = wild.readable() => r?,
                        r = local.readable() => r?,
                    }
                    match try_recv(wild, local, buf)? {
                        Some(x) => break x,
                        None => continue,
                    }
                };
                match from {
                    SocketAddr::V4(a) => Ok((n, a)),
                    SocketAddr::V6(_) => Err(io::Error::other("an IPv6 source on an IPv4 socket")),
                }
            }
            Listener::Raw { port, recv, .. } => loop {
                let mut packet = [0u8; 65536];
                let (n, _) = recv.recv_from(&mut packet).await?;
                if let Some((from, payload)) = frame::udp_to_port(&packet[..n], *port) {
                    let len = payload.len().min(buf.len());
                    buf[..len].copy_from_slice(&payload[..len]);
                    return Ok((len, from));
                }
            },
        }
    }

    async fn send(&self, data: &[u8], to: SocketAddrV4) -> io::Result<()> {
        match self {
            Listener::Udp { local, .. } => local.send_to(data, to).await.map(drop),
            Listener::Raw { port, send, .. } => {
                let d = frame::udp_datagram(*port, to.port(), data)
                    .ok_or_else(|| io::Error::other("reply too large for UDP"))?;
                // The IP address in the raw sockaddr is the destination; its port is unused.
                send.send_to(&d, SocketAddrV4::new(*to.ip(), 0))
                    .await
                    .map(drop)
            }
        }
    }
}

/// A datagram waiting on either socket, or None when the wake-up was spurious.
fn try_recv(
    a: &UdpSocket,
    b: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<Option<(usize, SocketAddr)>> {
    for s in [a, b] {
        match s.try_recv_from(buf) {
            Ok(x) => return Ok(Some(x)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn udp_socket(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        Some(ipproto::UDP),
    )?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::sockopt::set_socket_broadcast(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

fn udp_pair(listen: Ipv4Addr, port: u16) -> io::Result<(UdpSocket, UdpSocket)> {
    let wild = udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    let local = udp_socket(SocketAddrV4::new(listen, port))?;
    Ok((wild, local))
}

fn raw_pair(listen: Ipv4Addr, port: u16) -> io::Result<Listener> {
    let raw = || {
        rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::RAW,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            Some(ipproto::UDP),
        )
    };
    // Unbound: a raw socket bound to LISTEN would only see packets to LISTEN, not broadcasts.
    let recv = raw()?;
    let send = raw()?;
    rustix::net::sockopt::set_socket_broadcast(&send, true)?;
    rustix::net::bind(&send, &SocketAddrV4::new(listen, 0))?;
    // The send socket also gets a copy of every UDP packet to LISTEN; keep that queue tiny.
    rustix::net::sockopt::set_socket_recv_buffer_size(&send, 1)?;
    // tokio has no raw-socket type; its UdpSocket only calls recvfrom/sendto, which work the
    // same on a raw socket (whole IPv4 packets in, UDP header + payload out).
    let tokio = |fd: OwnedFd| UdpSocket::from_std(std::net::UdpSocket::from(fd));
    Ok(Listener::Raw {
        port,
        recv: tokio(recv)?,
        send: tokio(send)?,
    })
}

/// Answers on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: Listener,
    cfg: reply::Config,
    has_file: HasFile,
    policy: Policy,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let port = if listener.port() == PXE_PORT {
        Port::Pxe
    } else {
        Port::Dhcp
    };
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            r = listener.recv(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("dhcp: receive failed: {e}");
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        // A decoder panic on some datagram must not end the server for everyone else.
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            reply::answer(&buf[..n], from, port, &cfg, &*has_file, &*policy)
        }))
        .unwrap_or_else(|_| Err(Silence::Malformed("the DHCP decoder panicked".into())));
        handle(&listener, port, from, answer).await;
    }
}

async fn handle(
    listener: &Listener,
    port: Port,
    from: SocketAddrV4,
    answer: Result<reply::Reply, Silence>,
) {
    let r = match answer {
        Ok(r) => r,
        // Malformed and non-boot traffic is routine on a LAN: debug, not info.
        Err(e @ (Silence::Malformed(_) | Silence::Ignored(_))) => {
            tracing::debug!(client = %from, ?port, "dhcp: ignored: {e}");
            return;
        }
        Err(e) => {
            tracing::info!(client = %from, ?port, "dhcp: ignored: {e}");
            return;
        }
    };
    let to = match r.dest {
        Dest::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
        Dest::Relay(ip) => SocketAddrV4::new(ip, DHCP_PORT),
        Dest::Source(a) => a,
    };
    match listener.send(&r.bytes, to).await {
        Ok(()) => tracing::info!(
            mac = %r.client.mac, class = ?r.class, ?port, to = %to,
            "dhcp: answered ({})", r.reason
        ),
        Err(e) => {
            tracing::warn!(mac = %r.client.mac, to = %to, "dhcp: sending the answer failed: {e}")
        }
    }
}
