use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};

use super::*;
use crate::Mac;
use crate::dhcp::client::Request;

const MAC: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 33, 0, 1);

fn cfg() -> Config {
    Config {
        server: SERVER,
        http_base: "http://10.33.0.1:8080".into(),
    }
}

fn from() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
}

fn all(_: &str) -> bool {
    true
}

fn anyone(_: &Client, _: &Class) -> Option<String> {
    None
}

fn ask(r: &Request, t: MessageType, port: Port) -> Result<Reply, Silence> {
    answer(
        &r.encode(t, MAC, 0xabcd),
        from(),
        port,
        &cfg(),
        &all,
        &anyone,
    )
}

/// The reply decoded, after the checks every reply must pass.
fn offer(r: &Request) -> Message {
    let reply = ask(r, MessageType::Discover, Port::Dhcp).unwrap();
    assert_eq!(reply.dest, Dest::Broadcast);
    let m = decoded(&reply.bytes);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    m
}

fn decoded(bytes: &[u8]) -> Message {
    assert!(
        bytes.len() <= 576,
        "{} bytes: old ROMs take 576",
        bytes.len()
    );
    let m = Message::decode(&mut Decoder::new(bytes)).unwrap();
    assert_eq!(
        m.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "a proxy never gives an address"
    );
    assert!(
        m.opts().get(OptionCode::AddressLeaseTime).is_none(),
        "no lease"
    );
    assert_eq!(m.xid(), 0xabcd);
    assert_eq!(m.chaddr(), &MAC.0);
    assert_eq!(m.siaddr(), SERVER);
    assert_eq!(
        m.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    m
}

fn vendor(m: &Message) -> Vec<u8> {
    match m.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => v.clone(),
        o => panic!("option 60: {o:?}"),
    }
}

fn opt43(m: &Message) -> Option<Vec<u8>> {
    match m.opts().get(OptionCode::VendorExtensions) {
        Some(DhcpOption::VendorExtensions(v)) => Some(v.clone()),
        _ => None,
    }
}

/// The file field (dhcproto's decoder keeps the terminating NUL).
fn file(m: &Message) -> &str {
    m.fname_str().unwrap().unwrap().trim_end_matches('\0')
}

#[test]
fn bios_gets_undionly_and_discovery_control_8() {
    let m = offer(&Request::bios());
    assert_eq!(file(&m), "bios/undionly.kpxe");
    assert_eq!(vendor(&m), b"PXEClient");
    assert_eq!(opt43(&m), Some(vec![6, 1, 8, 255]));
}

#[test]
fn uefi_pxe_gets_snponly_without_43_and_the_same_on_4011() {
    let m = offer(&Request::uefi_x64());
    assert_eq!(file(&m), "efi-x64/snponly.efi");
    assert_eq!(opt43(&m), None, "no 43: the firmware asks port 4011");
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 33, 0, 120), 4011);
    let req = Request::uefi_x64().encode(MessageType::Request, MAC, 0xabcd);
    let r = answer(&req, client, Port::Pxe, &cfg(), &all, &anyone).unwrap();
    assert_eq!(r.dest, Dest::Source(client));
    let m = decoded(&r.bytes);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(file(&m), "efi-x64/snponly.efi");
}

#[test]
fn http_boot_gets_a_url_and_the_httpclient_echo() {
    let m = offer(&Request::http_x64());
    assert_eq!(file(&m), "http://10.33.0.1:8080/a/efi-x64/snponly.efi");
    assert_eq!(vendor(&m), b"HTTPClient");
    // A URL too long for the 128-byte file field goes in option 67 (dhcproto would panic).
    let long = Config {
        http_base: format!("http://{}:8080", "h".repeat(140)),
        ..cfg()
    };
    let req = Request::http_x64().encode(MessageType::Discover, MAC, 0xabcd);
    let r = answer(&req, from(), Port::Dhcp, &long, &all, &anyone).unwrap();
    let m = Message::decode(&mut Decoder::new(&r.bytes)).unwrap();
    assert_eq!(m.fname(), None);
    match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(v)) => assert!(v.ends_with(b"/a/efi-x64/snponly.efi")),
        o => panic!("option 67: {o:?}"),
    }
}

#[test]
fn ipxe_gets_our_script_on_67_and_4011() {
    let m = offer(&Request::ipxe_bios());
    assert_eq!(file(&m), "http://10.33.0.1:8080/boot.ipxe");
    let r = ask(&Request::ipxe_bios(), MessageType::Request, Port::Pxe).unwrap();
    assert_eq!(file(&decoded(&r.bytes)), "http://10.33.0.1:8080/boot.ipxe");
}

#[test]
fn pis_get_option_43_raspberry_pi_boot_66_and_their_guid_back() {
    let pi = Request::pi(true, MAC, 0x00d04170, 0x1234abcd);
    let m = offer(&pi);
    let o43 = opt43(&m).unwrap();
    let at = o43.iter().position(|&b| b == 9).unwrap();
    assert_eq!(&o43[at..at + 5], &[9, 20, 0, 0, 17]);
    assert_eq!(&o43[at + 5..at + 22], b"Raspberry Pi Boot");
    assert_eq!(*o43.last().unwrap(), 255);
    assert_eq!(
        m.opts().get(OptionCode::TFTPServerName),
        Some(&DhcpOption::TFTPServerName(b"10.33.0.1".to_vec()))
    );
    assert_eq!(
        m.opts().get(OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(
            pi.guid.clone().unwrap()
        ))
    );
    assert_eq!(m.fname(), None);
}

#[test]
fn only_discovers_on_67_and_requests_on_4011() {
    // The REQUEST to 67 is for the address server (the Pi's even lacks option 60).
    assert_eq!(
        ask(&Request::bios(), MessageType::Request, Port::Dhcp),
        Err(Silence::Ignored(Ignored::WrongMessage(
            MessageType::Request
        )))
    );
    assert!(ask(&Request::bios(), MessageType::Discover, Port::Pxe).is_err());
    assert!(ask(&Request::bios(), MessageType::Release, Port::Dhcp).is_err());
    assert!(ask(&Request::bios(), MessageType::Discover, Port::Dhcp).is_ok());
}

#[test]
fn the_policy_and_missing_files_silence_a_client() {
    let req = Request::uefi_x64().encode(MessageType::Discover, MAC, 1);
    let never = |c: &Client, _: &Class| Some(format!("{} is netboot = \"never\"", c.mac));
    let e = answer(&req, from(), Port::Dhcp, &cfg(), &all, &never).unwrap_err();
    assert_eq!(
        e.to_string(),
        "52:54:00:00:00:01: 52:54:00:00:00:01 is netboot = \"never\""
    );
    let no_efi = |f: &str| f != "efi-x64/snponly.efi";
    let e = answer(&req, from(), Port::Dhcp, &cfg(), &no_efi, &anyone).unwrap_err();
    assert!(
        matches!(
            e,
            Silence::NoFile {
                file: "efi-x64/snponly.efi",
                ..
            }
        ),
        "{e}"
    );
    // The same request with both allowed is answered.
    assert!(answer(&req, from(), Port::Dhcp, &cfg(), &all, &anyone).is_ok());
}

#[test]
fn relayed_requests_go_back_to_the_relay() {
    let mut req = Request::bios().encode(MessageType::Discover, MAC, 0xabcd);
    req[24..28].copy_from_slice(&[10, 9, 0, 1]); // giaddr
    let r = answer(&req, from(), Port::Dhcp, &cfg(), &all, &anyone).unwrap();
    assert_eq!(r.dest, Dest::Relay(Ipv4Addr::new(10, 9, 0, 1)));
    assert_eq!(decoded(&r.bytes).giaddr(), Ipv4Addr::new(10, 9, 0, 1));
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    let good = Request::bios().encode(MessageType::Discover, MAC, 1);
    for bad in [&b""[..], &good[..100], &good[..239], &[0xffu8; 600][..]] {
        let r = answer(bad, from(), Port::Dhcp, &cfg(), &all, &anyone);
        assert!(matches!(r, Err(Silence::Malformed(_))), "{r:?}");
    }
    let mut no_cookie = good.clone();
    no_cookie[236] = 0;
    assert!(matches!(
        answer(&no_cookie, from(), Port::Dhcp, &cfg(), &all, &anyone),
        Err(Silence::Malformed(_))
    ));
}

#[test]
fn option_lengths_dhcproto_only_debug_asserts_are_refused() {
    let good = Request::uefi_x64().encode(MessageType::Discover, MAC, 0xabcd);
    assert!(answer(&good, from(), Port::Dhcp, &cfg(), &all, &anyone).is_ok());
    // Option 94 (client NII) is written with length 3: make it 4 by eating the next byte.
    let at = 240 + good[240..].windows(2).position(|w| w == [94, 3]).unwrap();
    for bad in [
        [&good[..at], &[94, 2, 1, 2], &good[at + 5..]].concat(),
        [&good[..240], &[81, 1, 0, 255]].concat(),
        [&good[..240], &[151, 0, 255]].concat(),
        [&good[..240], &[152, 2, 0, 0, 255]].concat(),
        [&good[..240], &[80, 1, 0, 255]].concat(),
        [&good[..240], &[60, 200, 0]].concat(),
        // RFC 3396: two adjacent 94s are one option of length 4.
        [&good[..240], &[94, 3, 1, 2, 1, 94, 1, 0, 255]].concat(),
    ] {
        let r = answer(&bad, from(), Port::Dhcp, &cfg(), &all, &anyone);
        assert!(matches!(r, Err(Silence::Malformed(_))), "{r:?}");
    }
}
