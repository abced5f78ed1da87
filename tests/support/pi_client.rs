//! A scripted Raspberry Pi 4 / 5 EEPROM bootloader for the netboot tests: its DHCP
//! DISCOVER and REQUEST, then the TFTP file sequence of each model (reference netboot.md §7,
//! flash-and-netboot.md C) with its habits.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use imgbuild_netboot::Mac;
use imgbuild_netboot::dhcp::MessageType;
use imgbuild_netboot::dhcp::client::Request;
use imgbuild_netboot::tftp::packet::{self, ErrorCode, Packet};

use super::node::{NodeProfile, Setup};
use super::proxy::{Lab, ROUTER, SERVER};
use super::tftp::Client;

/// A Pi in the inventory: the serial as nodes.toml has it, its TFTP folder, MAC and model.
pub struct Pi {
    pub node: &'static str,
    pub serial: &'static str,
    pub folder: &'static str,
    pub mac: Mac,
    pub pi5: bool,
    pub revision: u32,
}

pub const PIS: [Pi; 2] = [
    Pi {
        node: "pi-1",
        serial: "100000009FFEFDEF",
        folder: "9ffefdef",
        mac: Mac([0xdc, 0xa6, 0x32, 1, 2, 3]),
        pi5: false,
        revision: 0x00c0_3111,
    },
    Pi {
        node: "pi-2",
        serial: "1234abcd",
        folder: "1234abcd",
        mac: Mac([0x2c, 0xcf, 0x67, 0, 0, 2]),
        pi5: true,
        revision: 0x00d0_4170,
    },
];

/// The `pi-node` workspace in `work` on `base` with [`inventory`], its netboot set built
/// (umask 022, UTC, seeds on [`SERVER`]) into `images/pi-node/netboot`: (setup, set folder).
pub fn built_set(work: &std::path::Path, base: &std::path::Path) -> (Setup, std::path::PathBuf) {
    let setup = Setup::new(work, &NodeProfile::pi_node(base), "pi");
    std::fs::write(work.join("nodes.toml"), inventory()).unwrap();
    let set = work.join("images/pi-node/netboot");
    super::netbuild::build_with(&setup, &set, "022", "UTC", &listen_args());
    (setup, set)
}

/// `--listen SERVER` for `netboot build`.
pub fn listen_args() -> [String; 2] {
    ["--listen".to_string(), SERVER.to_string()]
}

pub fn inventory() -> String {
    PIS.iter()
        .map(|p| {
            format!(
                "[[node]]\nname = \"{}\"\nprofile = \"pi-node\"\nmac = \"{}\"\nserial = \"{}\"\n\n",
                p.node, p.mac, p.serial
            )
        })
        .collect()
}

/// DISCOVER and REQUEST as the Pi's bootloader sends them; our answer's option 66.
pub fn dhcp(lab: &Lab, pi: &Pi, xid: u32) -> Ipv4Addr {
    let serial = u32::from_str_radix(pi.folder, 16).unwrap();
    let r = Request::pi(pi.pi5, pi.mac, pi.revision, serial);
    assert_eq!(
        r.vendor_class.as_deref(),
        Some("PXEClient:Arch:00000:UNDI:002001")
    );
    assert_eq!(r.arch, Some(0));
    let (us, them) = lab.discover(&r, pi.mac, xid);
    let us = us.unwrap_or_else(|| panic!("no proxy answer:\n{}", lab.log()));
    let them = them.unwrap_or_else(|| panic!("no address:\n{}", lab.dnsmasq_log()));
    let o43 = us.option43.clone().unwrap();
    assert!(
        o43.windows(17).any(|w| w == b"Raspberry Pi Boot"),
        "{o43:?}"
    );
    assert_eq!(us.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(them.server_id, Some(ROUTER));
    // The REQUEST lacks option 60; dnsmasq acknowledges its lease, we stay silent.
    let req = Request {
        vendor_class: None,
        ..r
    };
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let got = lab.exchange(
        req.encode_select(pi.mac, xid + 1, them.yiaddr, ROUTER),
        to,
        Duration::from_secs(2),
    );
    assert!(
        got.iter()
            .any(|(_, a)| a.msg_type == Some(MessageType::Ack) && a.yiaddr == them.yiaddr),
        "{got:?}\n{}",
        lab.dnsmasq_log()
    );
    assert!(got.iter().all(|(from, _)| *from.ip() != SERVER), "{got:?}");
    let o66 = String::from_utf8(us.option66.unwrap()).unwrap();
    o66.parse().unwrap()
}

/// How the bootloader looks at a file before reading it.
#[derive(Clone, Copy)]
enum Probe {
    /// Pi 4: RRQ with tsize, then ERROR 8 after the OACK.
    Size,
    /// Pi 5: ACK 0, DATA 1, then ERROR "Early terminate".
    OneBlock,
}

/// The file sequence of the reference (netboot.md §7, flash-and-netboot.md C) from the Pi's
/// serial folder; returns the files read in full, by requested name.
pub fn boot_sequence(server: SocketAddr, pi: &Pi) -> BTreeMap<String, Vec<u8>> {
    let c = Client::from_ip(server, "10.33.0.50");
    let f = |n: &str| format!("{}/{n}", pi.folder);
    let mut got = BTreeMap::new();
    let probe = if pi.pi5 { Probe::OneBlock } else { Probe::Size };
    let read = |got: &mut BTreeMap<String, Vec<u8>>, name: &str, twice: bool| {
        let bytes =
            fetch(&c, &f(name), probe, twice).unwrap_or_else(|e| panic!("{name}: error {e}"));
        got.insert(f(name), bytes);
    };
    if !pi.pi5 {
        // Does the serial folder look bootable? start4.elf's size only.
        c.rrq(
            f("start4.elf").as_bytes(),
            &[("tsize", "0"), ("blksize", "1468")],
        );
        let (p, tid) = c.recv();
        assert!(matches!(packet::parse(&p).unwrap(), Packet::Oack(_)));
        c.end(tid, ErrorCode::OptionRefused, "abort");
    }
    read(&mut got, "config.txt", false);
    let missing: &[&str] = if pi.pi5 {
        &["pieeprom.sig", "armstub8-2712.bin"]
    } else {
        &["pieeprom.sig", "vl805.sig", "recover4.elf"]
    };
    for m in missing {
        assert_eq!(fetch(&c, &f(m), probe, false), Err(1), "{m}");
    }
    if !pi.pi5 {
        read(&mut got, "start4.elf", false);
        read(&mut got, "fixup4.dat", false);
        // Re-read, the request sent twice: one transfer answers both.
        read(&mut got, "config.txt", true);
    }
    let config = String::from_utf8(got[&f("config.txt")].clone()).unwrap();
    let (kernel, dtb, initramfs) = model_files(&config, if pi.pi5 { "pi5" } else { "pi4" });
    read(&mut got, &dtb, false);
    // overlay_map.dtb: read if the tree has one, else the expected "not found".
    let _ = fetch(&c, &f("overlays/overlay_map.dtb"), probe, false)
        .map(|b| got.insert(f("overlays/overlay_map.dtb"), b));
    read(&mut got, "cmdline.txt", false);
    read(&mut got, &kernel, false);
    for i in initramfs {
        read(&mut got, &i, false);
    }
    // Another Pi's folder, or none: nothing.
    assert_eq!(fetch(&c, "deadbeef/config.txt", probe, false), Err(1));
    got
}

/// One file of `pi`'s serial folder read as its bootloader reads it (size probe, then the real
/// read); Err(code) when the server answers ERROR.
pub fn read_file(server: SocketAddr, pi: &Pi, name: &str) -> Result<Vec<u8>, u16> {
    let c = Client::from_ip(server, "10.33.0.50");
    let probe = if pi.pi5 { Probe::OneBlock } else { Probe::Size };
    fetch(&c, &format!("{}/{name}", pi.folder), probe, false)
}

/// What the firmware takes from config.txt for `section`: kernel, device tree, initramfs list
/// (later lines win, as in the firmware).
pub fn model_files(config: &str, section: &str) -> (String, String, Vec<String>) {
    let (mut kernel, mut dtb, mut initramfs) = (None, None, Vec::new());
    let mut on = true;
    for l in config.lines().map(str::trim) {
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            on = s == "all" || s == section;
            continue;
        }
        if !on {
            continue;
        }
        if let Some(k) = l.strip_prefix("kernel=") {
            kernel = Some(k.to_string());
        } else if let Some(d) = l.strip_prefix("device_tree=") {
            dtb = Some(d.to_string());
        } else if let Some(rest) = l.strip_prefix("initramfs ") {
            let list = rest.split_whitespace().next().unwrap();
            initramfs = list.split(',').map(String::from).collect();
        }
    }
    (
        kernel.expect("kernel="),
        dtb.expect("device_tree="),
        initramfs,
    )
}

/// One file as the bootloader reads it: the probe, then the real RRQ (tsize, blksize 1468),
/// every DATA ACKed twice; `twice` sends that RRQ twice. Err(code) when the server answers ERROR.
fn fetch(c: &Client, name: &str, probe: Probe, twice: bool) -> Result<Vec<u8>, u16> {
    let opts = [("tsize", "0"), ("blksize", "1468")];
    c.rrq(name.as_bytes(), &opts);
    let (p, tid) = c.recv();
    let size = match packet::parse(&p).unwrap() {
        Packet::Error { code, .. } => return Err(code),
        Packet::Oack(o) => {
            assert!(
                o.contains(&("blksize".into(), "1468".into())),
                "{name}: {o:?}"
            );
            o.iter()
                .find(|(k, _)| k == "tsize")
                .unwrap()
                .1
                .parse::<usize>()
                .unwrap()
        }
        other => panic!("{name}: {other:?}"),
    };
    match probe {
        Probe::Size => c.end(tid, ErrorCode::OptionRefused, "abort"),
        Probe::OneBlock => {
            c.first_block(tid);
            c.end(tid, ErrorCode::NotDefined, "Early terminate");
        }
    }
    c.rrq(name.as_bytes(), &opts);
    if twice {
        c.rrq(name.as_bytes(), &opts);
    }
    let (p, tid) = c.recv();
    assert!(
        matches!(packet::parse(&p).unwrap(), Packet::Oack(_)),
        "{name}"
    );
    c.sock.send_to(&packet::ack(0), tid).unwrap();
    let data = read_acking_twice(c, tid);
    assert_eq!(data.len(), size, "{name}: tsize");
    Ok(data)
}

/// A lock-step transfer from `tid` at blksize 1468, each block ACKed twice (the bootloader
/// re-ACKs; a server that resent on the duplicate would double every block).
fn read_acking_twice(c: &Client, tid: SocketAddr) -> Vec<u8> {
    let mut data = Vec::new();
    let (mut want, mut dups) = (1u16, 0u32);
    loop {
        let (p, from) = c.recv();
        if from != tid {
            // A late answer to a request sent twice would come from its transfer's own port.
            panic!("a packet from {from}, not the transfer's {tid}");
        }
        let parsed = packet::parse(&p).unwrap();
        if matches!(parsed, Packet::Oack(_)) {
            // The OACK again, for a request sent twice: the same transfer.
            continue;
        }
        let Packet::Data { block, data: d } = parsed else {
            panic!("expected DATA, got {parsed:?}");
        };
        for _ in 0..2 {
            c.sock.send_to(&packet::ack(block), tid).unwrap();
        }
        if block != want {
            dups += 1;
            assert!(dups < 64, "the server keeps resending blocks");
            continue;
        }
        data.extend_from_slice(d);
        want = want.wrapping_add(1);
        if d.len() < 1468 {
            return data;
        }
    }
}
