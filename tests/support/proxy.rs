//! A LAN for proxyDHCP tests, in network namespaces: a bridge with our server (10.33.0.1, in
//! `--dhcp proxy` mode), a "router" host running dnsmasq as the plain DHCP server (addresses
//! only, no PXE options; 10.33.0.2) or that dnsmasq on our own host holding UDP 67, and a client
//! host (10.33.0.50) whose test thread sends DHCP exactly as boot firmware does.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::Child;
use std::time::{Duration, Instant};

use imgbuild_netboot::Mac;
use imgbuild_netboot::dhcp::MessageType;
use imgbuild_netboot::dhcp::client::{Answer, Request};

use super::find_tool;
use super::netboot::{NODES, Server};
use super::netns::NetNs;

pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 33, 0, 1);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 33, 0, 2);
pub const PC1: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
pub const PC2: Mac = Mac([0x52, 0x54, 0, 0, 0, 2]);
pub const PI: Mac = Mac([0xdc, 0xa6, 0x32, 1, 2, 3]);

/// Root, `ip`, dnsmasq, ss and curl (skips locally, fails under CI).
pub fn ready() -> bool {
    super::netns::available()
        && super::require_tool("dnsmasq")
        && super::require_tool("ss")
        && super::require_tool("curl")
}

/// Where the DHCP server runs.
#[derive(PartialEq)]
pub enum Dnsmasq {
    /// On the router host, bound to its interface.
    Router,
    /// On our host, holding 0.0.0.0:67 without SO_REUSEADDR (no --bind-interfaces).
    SameHost,
}

pub struct Lab {
    pub lab: NetNs,
    pub client: NetNs,
    _router: NetNs,
    pub work: std::path::PathBuf,
    /// dnsmasq's server id.
    pub dhcp_server: Ipv4Addr,
    server: Option<Server>,
    server_args: Vec<String>,
    dnsmasq: Child,
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl Lab {
    /// The LAN around the work folder `work` (see [`super::netboot::workdir`]), with a Pi node
    /// added to its inventory and tap devices `taps` on the bridge (for QEMU).
    pub fn new(work: &std::path::Path, where_: Dnsmasq, taps: &[&str]) -> Lab {
        let nodes = format!(
            "{NODES}\n[[node]]\nname = \"pi-1\"\nprofile = \"amd64-worker\"\nmac = \"{PI}\"\n"
        );
        Lab::with(work, where_, taps, &nodes, &[])
    }

    /// [`Lab::new`] with this inventory and more options for the server.
    pub fn with(
        work: &std::path::Path,
        where_: Dnsmasq,
        taps: &[&str],
        nodes: &str,
        extra: &[&str],
    ) -> Lab {
        std::fs::write(work.join("nodes.toml"), nodes).unwrap();
        let lab = NetNs::new("proxy");
        lab.bridge("br0", "10.33.0.1/24");
        for t in taps {
            lab.tap(t, "br0");
        }
        let router = NetNs::new("router");
        lab.veth_to(&router, "rt0", "rt1", "br0", "10.33.0.2/24");
        let client = NetNs::new("client");
        lab.veth_to(&client, "cl0", "cl1", "br0", "10.33.0.50/24");
        let (ns, iface, dhcp_server) = match where_ {
            Dnsmasq::Router => (&router, "rt1", ROUTER),
            Dnsmasq::SameHost => (&lab, "br0", SERVER),
        };
        let mut d = ns.cmd(find_tool("dnsmasq").unwrap());
        d.args([
            "--keep-in-foreground",
            "--port=0",
            "--dhcp-range=10.33.0.100,10.33.0.150,255.255.255.0,10m",
            "--leasefile-ro",
            "--no-ping",
            "--log-dhcp",
            "--log-facility=-",
            "--user=root",
            "--conf-file=/dev/null",
        ])
        .arg(format!("--interface={iface}"));
        if where_ == Dnsmasq::Router {
            d.arg("--bind-interfaces");
        }
        let dnsmasq = ns.spawn(d, &work.join("dnsmasq.log"));
        wait_for_port_67(ns, work);
        let args: Vec<String> = ["--dhcp", "proxy"]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect();
        let server = Server::start(Some(&lab), work, "10.33.0.1", &strs(&args));
        Lab {
            lab,
            client,
            _router: router,
            work: work.to_path_buf(),
            dhcp_server,
            server: Some(server),
            server_args: args,
            dnsmasq,
        }
    }

    /// Stops our server (SIGTERM, checked) and starts it again with the same options.
    pub fn restart(&mut self) {
        self.server.take().unwrap().stop();
        let args = strs(&self.server_args);
        self.server = Some(Server::start(
            Some(&self.lab),
            &self.work,
            "10.33.0.1",
            &args,
        ));
    }

    pub fn log(&self) -> String {
        self.server.as_ref().unwrap().log()
    }

    /// curl on the client host: (exit code, HTTP status or "", body).
    pub fn curl(&self, url: &str) -> (i32, String, Vec<u8>) {
        let out = self
            .client
            .cmd("curl")
            .args(["-s", "-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        let mut body = out.stdout;
        let split = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let status = String::from_utf8_lossy(&body[split..]).trim().to_string();
        body.truncate(split);
        (out.status.code().unwrap_or(-1), status, body)
    }

    pub fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.work.join("dnsmasq.log")).unwrap_or_default()
    }

    /// Sends `req` from the client host and collects the answers to its xid for `wait`.
    pub fn exchange(
        &self,
        req: Vec<u8>,
        to: SocketAddrV4,
        wait: Duration,
    ) -> Vec<(SocketAddrV4, Answer)> {
        let xid = u32::from_be_bytes(req[4..8].try_into().unwrap());
        self.client.run_in(move || {
            let s = client_socket();
            s.send_to(&req, to).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1500];
            let t0 = Instant::now();
            while t0.elapsed() < wait {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let std::net::SocketAddr::V4(from) = from else {
                    continue;
                };
                if let Some(a) = Answer::parse(&buf[..n]).filter(|a| a.xid == xid) {
                    got.push((from, a));
                }
            }
            got
        })
    }

    /// DISCOVER broadcast from the client host: (ours, dnsmasq's). Ours is the one with option
    /// 60 (plain dnsmasq sends none); on the same host both have our server id.
    pub fn discover(&self, r: &Request, mac: Mac, xid: u32) -> (Option<Answer>, Option<Answer>) {
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let got = self.exchange(
            r.encode(MessageType::Discover, mac, xid),
            to,
            Duration::from_secs(3),
        );
        let by = |proxy: bool| {
            got.iter()
                .find(|(_, a)| a.vendor_class.is_some() == proxy)
                .map(|(_, a)| a.clone())
        };
        (by(true), by(false))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
    }
}

/// UDP 68 on any address with SO_REUSEADDR and SO_BROADCAST, a short read timeout.
fn client_socket() -> UdpSocket {
    use rustix::net::{AddressFamily, SocketType, bind, ipproto, socket, sockopt};
    let fd: OwnedFd = socket(AddressFamily::INET, SocketType::DGRAM, Some(ipproto::UDP)).unwrap();
    sockopt::set_socket_reuseaddr(&fd, true).unwrap();
    sockopt::set_socket_broadcast(&fd, true).unwrap();
    bind(&fd, &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).unwrap();
    let s = UdpSocket::from(fd);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// `ss -ulpn` inside `ns`.
pub fn udp_sockets(ns: &NetNs) -> String {
    let out = ns.cmd("ss").args(["-ulpn"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wait_for_port_67(ns: &NetNs, work: &std::path::Path) {
    let t0 = Instant::now();
    while !udp_sockets(ns).contains(":67 ") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "dnsmasq did not bind UDP 67:\n{}",
            std::fs::read_to_string(work.join("dnsmasq.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
