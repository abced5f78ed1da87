//! `imgbuild netboot serve --dhcp proxy` on a LAN in network namespaces: a bridge with our server
//! (10.33.0.1), a "router" host running dnsmasq as the plain DHCP server (addresses only, no PXE
//! options; 10.33.0.2), and a client host whose test thread sends DHCP exactly as each boot
//! firmware does. dnsmasq is the independent party: its OFFER carries the address, ours only the
//! boot file, and the client sees both. The second lab puts dnsmasq on our own host, holding UDP
//! 67 without sharing it (Pi-hole's setup; `ss` shows the holder): our proxy still answers.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use imgbuild_netboot::Mac;
use imgbuild_netboot::dhcp::MessageType;
use imgbuild_netboot::dhcp::client::{Answer, Request};
use support::netboot::workdir;
use support::netns::NetNs;
use support::proxy::{Dnsmasq, Lab, PC1, PC2, PI, ROUTER, SERVER, ready, udp_sockets};

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
    let work = workdir(1);
    let lab = Lab::new(work.path(), Dnsmasq::Router, &[]);
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
    let work = workdir(1);
    let lab = Lab::new(work.path(), Dnsmasq::SameHost, &[]);
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

/// Thousands of malformed DHCP and TFTP datagrams a second for 30 s from one host, while another
/// machine boots as usual: every DISCOVER of the real client is still answered within iPXE's
/// 2-second proxy wait, and a TFTP download (curl) during the flood gets the whole file.
#[test]
fn a_flood_of_garbage_neither_stops_nor_starves_a_real_client() {
    if !ready() {
        return;
    }
    let work = workdir(1);
    let lab = Lab::new(work.path(), Dnsmasq::Router, &[]);
    let flooder = NetNs::new("flood");
    lab.lab
        .veth_to(&flooder, "fl0", "fl1", "br0", "10.33.0.60/24");
    let stop = AtomicBool::new(false);
    let sent = std::thread::scope(|s| {
        let flood = s.spawn(|| flooder.run_in(|| flood(&stop)));
        // Stops the flood even when an assertion below fails (the scope joins it).
        let _stop = StopOnDrop(&stop);
        let t0 = Instant::now();
        let mut xid = 0x5000;
        let mut answered = 0;
        while t0.elapsed() < Duration::from_secs(30) {
            xid += 1;
            // Within iPXE's 2-second wait for proxy offers.
            let req = Request::bios().encode(MessageType::Discover, PC1, xid);
            let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
            let got = lab.exchange(req, to, Duration::from_secs(2));
            let us = got
                .into_iter()
                .map(|(_, a)| a)
                .find(|a| a.vendor_class.is_some());
            ours(us, &lab, "BIOS during the flood");
            answered += 1;
        }
        let got = lab
            .client
            .cmd("curl")
            .args(["-s", "tftp://10.33.0.1/bios/undionly.kpxe"])
            .output()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        let want =
            std::fs::metadata(support::netboot::set_dir(work.path()).join("ipxe/undionly.kpxe"))
                .unwrap()
                .len();
        assert_eq!(got.stdout.len() as u64, want, "TFTP during the flood");
        eprintln!("flood: the real client's {answered} DISCOVERs were all answered within 2 s");
        flood.join().unwrap()
    });
    eprintln!("flood: {sent} datagrams in 30 s ({} per second)", sent / 30);
    assert!(sent > 60_000, "the flood was only {sent} datagrams");
    assert!(lab.log().contains("dhcp: answered"), "{}", lab.log());
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sends garbage until `stop`, about 5000 datagrams a second: mutated and truncated DHCP
/// (broadcast and unicast), random bytes, bad TFTP requests.
fn flood(stop: &AtomicBool) -> u64 {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_broadcast(true).unwrap();
    let good = Request::bios().encode(MessageType::Discover, PC2, 9);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // xorshift: deterministic noise.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut junk = good.clone();
        let at = (seed as usize) % junk.len();
        junk[at] ^= (seed >> 32) as u8;
        junk.truncate(((seed >> 40) as usize) % good.len() + 1);
        let tftp = [&[0, 1][..], &seed.to_le_bytes(), b"\0octet\0blksize\0"].concat();
        for (d, to) in [
            (&junk[..], "255.255.255.255:67"),
            (&junk[..], "10.33.0.1:4011"),
            (&seed.to_be_bytes()[..], "10.33.0.1:67"),
            (&tftp[..], "10.33.0.1:69"),
        ] {
            if s.send_to(d, to).is_ok() {
                n += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(800));
    }
    n
}
