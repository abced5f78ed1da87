//! `imgbuild netboot serve --dhcp proxy` on a LAN in network namespaces: a bridge with our server
//! (10.33.0.1), a "router" host running dnsmasq as the plain DHCP server (addresses only, no PXE
//! options; 10.33.0.2), and a client host whose test thread sends DHCP exactly as each boot
//! firmware does. dnsmasq is the independent party: its OFFER carries the address, ours only the
//! boot file, and the client sees both. The second lab puts dnsmasq on our own host, holding UDP
//! 67 without sharing it (Pi-hole's setup; `ss` shows the holder): our proxy still answers.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::Child;
use std::time::{Duration, Instant};

use imgbuild_netboot::Mac;
use imgbuild_netboot::dhcp::MessageType;
use imgbuild_netboot::dhcp::client::{Answer, Request};
use support::netboot::{NODES, Server, workdir};
use support::netns::{self, NetNs};
use support::{find_tool, require_tool};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 33, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 33, 0, 2);
const PC1: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
const PC2: Mac = Mac([0x52, 0x54, 0, 0, 0, 2]);
const PI: Mac = Mac([0xdc, 0xa6, 0x32, 1, 2, 3]);

fn ready() -> bool {
    netns::available() && require_tool("dnsmasq") && require_tool("ss") && require_tool("curl")
}

/// Where the DHCP server runs.
#[derive(PartialEq)]
enum Dnsmasq {
    /// On the router host, bound to its interface.
    Router,
    /// On our host, holding 0.0.0.0:67 without SO_REUSEADDR (no --bind-interfaces).
    SameHost,
}

struct Lab {
    lab: NetNs,
    client: NetNs,
    _router: NetNs,
    work: tempfile::TempDir,
    /// dnsmasq's server id.
    dhcp_server: Ipv4Addr,
    server: Option<Server>,
    dnsmasq: Child,
}

impl Lab {
    fn new(where_: Dnsmasq) -> Lab {
        let work = workdir(1);
        let nodes = format!(
            "{NODES}\n[[node]]\nname = \"pi-1\"\nprofile = \"amd64-worker\"\nmac = \"{PI}\"\n"
        );
        std::fs::write(work.path().join("nodes.toml"), nodes).unwrap();
        let lab = NetNs::new("proxy");
        lab.bridge("br0", "10.33.0.1/24");
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
        let dnsmasq = ns.spawn(d, &work.path().join("dnsmasq.log"));
        wait_for_port_67(ns, &work);
        let server = Server::start(Some(&lab), work.path(), "10.33.0.1", &["--dhcp", "proxy"]);
        Lab {
            lab,
            client,
            _router: router,
            work,
            dhcp_server,
            server: Some(server),
            dnsmasq,
        }
    }

    fn log(&self) -> String {
        self.server.as_ref().unwrap().log()
    }

    fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("dnsmasq.log")).unwrap_or_default()
    }

    /// Sends `req` from the client host and collects the answers to its xid for `wait`.
    fn exchange(
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
    fn discover(&self, r: &Request, mac: Mac, xid: u32) -> (Option<Answer>, Option<Answer>) {
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
fn udp_sockets(ns: &NetNs) -> String {
    let out = ns.cmd("ss").args(["-ulpn"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for_port_67(ns: &NetNs, work: &tempfile::TempDir) {
    let t0 = Instant::now();
    while !udp_sockets(ns).contains(":67 ") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "dnsmasq did not bind UDP 67:\n{}",
            std::fs::read_to_string(work.path().join("dnsmasq.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Our answer: never an address or a lease, from our address.
fn ours(a: Option<Answer>, lab: &Lab, what: &str) -> Answer {
    let a = a.unwrap_or_else(|| panic!("no proxy answer to {what}:\n{}", lab.log()));
    assert_eq!(a.yiaddr, Ipv4Addr::UNSPECIFIED, "{what}: {a:?}");
    assert_eq!(a.lease_time, None, "{what}: {a:?}");
    assert_eq!(a.siaddr, SERVER, "{what}: {a:?}");
    assert_eq!(a.server_id, Some(SERVER), "{what}: {a:?}");
    a
}

/// dnsmasq's answer: the address (proof the same broadcast reached a real DHCP server).
fn address(a: Option<Answer>, lab: &Lab, what: &str, server: Ipv4Addr) {
    let a = a.unwrap_or_else(|| panic!("no dnsmasq answer to {what}:\n{}", lab.dnsmasq_log()));
    assert_eq!(a.msg_type, Some(MessageType::Offer));
    assert_eq!(a.server_id, Some(server), "{a:?}");
    let octets = a.yiaddr.octets();
    assert!(
        octets[..3] == [10, 33, 0] && (100..=150).contains(&octets[3]),
        "{a:?}"
    );
}

/// BIOS and UEFI PXE (with the port-4011 REQUEST), checked on whichever lab.
fn pxe_clients_boot(lab: &Lab) {
    let (us, them) = lab.discover(&Request::bios(), PC1, 0x1001);
    let a = ours(us, lab, "BIOS");
    assert_eq!(a.msg_type, Some(MessageType::Offer));
    assert_eq!(a.file.as_deref(), Some("bios/undionly.kpxe"));
    assert_eq!(a.option43.as_deref(), Some(&[6, 1, 8, 255][..]));
    assert_eq!(a.vendor_class.as_deref(), Some(&b"PXEClient"[..]));
    address(them, lab, "BIOS", lab.dhcp_server);

    let (us, them) = lab.discover(&Request::uefi_x64(), PC2, 0x1002);
    let a = ours(us, lab, "UEFI");
    assert_eq!(a.file.as_deref(), Some("efi-x64/snponly.efi"));
    assert_eq!(a.option43, None);
    address(them, lab, "UEFI", lab.dhcp_server);
    // The firmware's next step: a REQUEST to the boot server port, answered unicast.
    let req = Request::uefi_x64().encode(MessageType::Request, PC2, 0x1003);
    let got = lab.exchange(req, SocketAddrV4::new(SERVER, 4011), Duration::from_secs(2));
    let (from, ack) = got
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no answer on 4011:\n{}", lab.log()));
    assert_eq!(from, SocketAddrV4::new(SERVER, 4011));
    assert_eq!(ack.msg_type, Some(MessageType::Ack));
    assert_eq!(ack.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.file.as_deref(), Some("efi-x64/snponly.efi"));
}

#[test]
fn proxy_beside_a_router_dhcp_answers_each_boot_client_and_ignores_the_rest() {
    if !ready() {
        return;
    }
    let lab = Lab::new(Dnsmasq::Router);
    assert!(
        lab.log().contains("proxyDHCP on UDP 67: udp"),
        "{}",
        lab.log()
    );
    pxe_clients_boot(&lab);

    // UEFI HTTP Boot: a URL our HTTP server serves (curl on the client host is the judge).
    let (us, _) = lab.discover(&Request::http_x64(), PC1, 0x2001);
    let a = ours(us, &lab, "HTTP Boot");
    assert_eq!(a.vendor_class.as_deref(), Some(&b"HTTPClient"[..]));
    let url = a.file.unwrap();
    assert_eq!(url, "http://10.33.0.1:8080/a/efi-x64/snponly.efi");
    let st = lab
        .client
        .cmd("curl")
        .args(["-sfo", "/dev/null", &url])
        .status()
        .unwrap();
    assert!(st.success(), "curl {url}");

    let (us, _) = lab.discover(&Request::ipxe_bios(), PC1, 0x2002);
    let a = ours(us, &lab, "iPXE");
    assert_eq!(a.file.as_deref(), Some("http://10.33.0.1:8080/boot.ipxe"));

    for (pi5, serial, xid) in [(false, 0x9ffefdef, 0x2003), (true, 0x1234abcd, 0x2004)] {
        let r = Request::pi(pi5, PI, 0x00c03111, serial);
        let (us, them) = lab.discover(&r, PI, xid);
        let a = ours(us, &lab, "Pi");
        let o43 = a.option43.clone().unwrap();
        assert!(
            o43.windows(17).any(|w| w == b"Raspberry Pi Boot"),
            "{o43:?}"
        );
        assert_eq!(a.option66.as_deref(), Some(&b"10.33.0.1"[..]));
        assert_eq!(a.guid, r.guid);
        address(them, &lab, "Pi", ROUTER);
    }

    // Ignored, while dnsmasq answers the same broadcast: an unknown MAC, a phone, arm64 (no
    // arm64 iPXE in this set).
    let stranger = Mac([0x52, 0x54, 0, 0, 0, 0x99]);
    let phone = Request {
        vendor_class: Some("android-dhcp-14".into()),
        ..Request::default()
    };
    let arm = Request {
        vendor_class: Some("PXEClient:Arch:00011:UNDI:003000".into()),
        arch: Some(11),
        ..Request::default()
    };
    for (r, mac, xid) in [
        (Request::bios(), stranger, 0x3001),
        (phone, PC1, 0x3002),
        (arm, PC1, 0x3003),
    ] {
        let (us, them) = lab.discover(&r, mac, xid);
        assert!(us.is_none(), "{us:?}");
        address(them, &lab, "an ignored client", ROUTER);
    }
    let log = lab.log();
    assert!(
        log.contains("52:54:00:00:00:99: MAC not in the inventory"),
        "{log}"
    );
    assert!(
        log.contains("efi-arm64/snponly.efi, which this server does not have"),
        "{log}"
    );
    assert!(
        log.contains("class=Pi { model: Some(Pi5), serial: Some(305441741) }"),
        "{log}"
    );
    assert!(
        log.contains("option 97 GUID says Pi4 serial 9ffefdef"),
        "{log}"
    );
    assert!(
        log.contains("option 97 GUID says Pi5 serial 1234abcd"),
        "{log}"
    );
}

#[test]
fn proxy_on_the_host_where_dnsmasq_holds_port_67_still_answers() {
    if !ready() {
        return;
    }
    let lab = Lab::new(Dnsmasq::SameHost);
    let sockets = udp_sockets(&lab.lab);
    let holder = sockets
        .lines()
        .find(|l| l.contains("0.0.0.0:67 "))
        .unwrap_or_else(|| panic!("{sockets}"));
    assert!(holder.contains("dnsmasq"), "{sockets}");
    assert!(
        lab.log().contains("proxyDHCP on UDP 67: raw"),
        "{}",
        lab.log()
    );
    pxe_clients_boot(&lab);
}
