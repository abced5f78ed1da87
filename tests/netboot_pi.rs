//! Raspberry Pi 4 and 5 network boot, short of the EEPROM (no emulator runs it):
//!
//! - `imgbuild netboot build` of the stock `pi-worker` (as `pi-node`, on the Raspberry Pi OS
//!   Lite-like test base) writes the Pi TFTP tree `pi/`: twice, under other umask and TZ, byte
//!   for byte the same; the firmware, device trees and kernels are the base's boot partition's
//!   bytes (read with mtools);
//! - on a LAN in network namespaces, with dnsmasq as the router's plain DHCP server and our
//!   `serve --dhcp proxy` beside it, a scripted Pi 4 and a scripted Pi 5 send the bootloader's
//!   DISCOVER (option 60 `PXEClient:Arch:00000:UNDI:002001`, 93 = 0, 97 "RPi4"/"RPi5" + serial)
//!   and REQUEST (no option 60), take the address from dnsmasq and the TFTP server from our
//!   option 66, then fetch each model's file sequence from their serial folder as the
//!   reference lists it, with the bootloader's habits: tsize probe then abort (Pi 4) or one
//!   block then "Early terminate" (Pi 5) before each real read, blksize 1468, every ACK sent
//!   twice, a request sent twice, probes for files that do not exist. What they got is checked
//!   against the build; cmdline.txt names the node's own seed, which curl then fetches.
//!
//! The client does not configure the address dnsmasq leased (the namespace has a fixed one).

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use imgbuild_netboot::Mac;
use imgbuild_netboot::dhcp::MessageType;
use imgbuild_netboot::dhcp::client::Request;
use imgbuild_netboot::tftp::packet::{self, ErrorCode, Packet};
use support::netbuild::build_with;
use support::node::{NodeProfile, Setup};
use support::pi::pi_base;
use support::proxy::{Dnsmasq, Lab, ROUTER, SERVER, ready};
use support::require_tool;
use support::tftp::Client;

/// A Pi in the inventory: the serial as nodes.toml has it, its TFTP folder, MAC and model.
struct Pi {
    node: &'static str,
    serial: &'static str,
    folder: &'static str,
    mac: Mac,
    pi5: bool,
    revision: u32,
}

const PIS: [Pi; 2] = [
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

fn inventory() -> String {
    PIS.iter()
        .map(|p| {
            format!(
                "[[node]]\nname = \"{}\"\nprofile = \"pi-node\"\nmac = \"{}\"\nserial = \"{}\"\n\n",
                p.node, p.mac, p.serial
            )
        })
        .collect()
}

/// Every file under `dir`, by relative name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A file of the base image's FAT boot partition (mtools; the partition starts at 4 MiB).
fn base_boot_file(base: &Path, name: &str) -> Vec<u8> {
    let fat = format!("{}@@{}", base.display(), 4 << 20);
    let out = Command::new("mtype")
        .args(["-i", &fat, &format!("::{name}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "mtype {name}");
    out.stdout
}

#[test]
fn pi_4_and_5_netboot_from_their_serial_folders() {
    if !ready() || !require_tool("mtype") {
        return;
    }
    let Some(base) = pi_base(None) else {
        return;
    };
    let work = support::scratch();
    let setup = Setup::new(work.path(), &NodeProfile::pi_node(&base), "pi");
    std::fs::write(work.path().join("nodes.toml"), inventory()).unwrap();
    let listen = ["--listen".to_string(), SERVER.to_string()];
    let set = work.path().join("images/pi-node/netboot");
    build_with(&setup, &set, "022", "UTC", &listen);
    let again = work.path().join("again");
    build_with(&setup, &again, "077", "Asia/Tokyo", &listen);
    let (a, b) = (files(&set), files(&again));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(b[name] == *bytes, "{name} differs between two builds");
    }
    drop(b);
    std::fs::remove_dir_all(&again).unwrap();
    check_tree(&a, &base);
    drop(a);

    let lab = Lab::with_nodes(work.path(), Dnsmasq::Router, &[], &inventory());
    let mut seeds = Vec::new();
    for (i, pi) in PIS.iter().enumerate() {
        let tftp = dhcp(&lab, pi, 0x7000 + i as u32 * 16);
        let got = lab
            .client
            .run_in(|| boot_sequence(SocketAddr::new(tftp.into(), 69), pi));
        for (name, bytes) in &got {
            let rest = name.strip_prefix(&format!("{}/", pi.folder)).unwrap();
            let own = set.join("pi").join(pi.folder).join(rest);
            // The node's own file, else the shared one, else the set's (imgbuild.cpio).
            let shared = set.join("pi").join(rest);
            let want = std::fs::read(if own.exists() {
                own
            } else if shared.exists() {
                shared
            } else {
                set.join(rest)
            })
            .unwrap();
            assert!(*bytes == want, "{name}: not the built file");
        }
        let cmdline =
            String::from_utf8(got[&format!("{}/cmdline.txt", pi.folder)].clone()).unwrap();
        assert!(cmdline.contains("boot=imgbuild"), "{cmdline}");
        assert!(cmdline.contains("imgbuild.root-sha256="), "{cmdline}");
        let url = cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix("ds=nocloud-net;s="))
            .unwrap_or_else(|| panic!("no seed URL in {cmdline}"))
            .to_string();
        assert!(
            url.starts_with(&format!("http://{SERVER}:8080/seed/")),
            "{url}"
        );
        let out = lab
            .client
            .cmd("curl")
            .args(["-sf", &format!("{url}meta-data")])
            .output()
            .unwrap();
        let meta = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && meta.contains(pi.node),
            "{url}: {meta}\n{}",
            lab.log()
        );
        seeds.push(url);
    }
    assert_ne!(seeds[0], seeds[1], "each node its own seed");
    let log = lab.log();
    assert!(log.contains("serving Raspberry Pi node"), "{log}");
    // Expected probes for missing files are answered and logged at info, never as problems.
    let missing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tftp: no such file"))
        .collect();
    assert!(missing.len() >= 4, "{log}");
    assert!(missing.iter().all(|l| l.contains("INFO")), "{log}");
}

/// The tree: shared firmware and kernels as the base has them, one folder per node holding only
/// cmdline.txt, config.txt naming each model's kernel and initramfs list.
fn check_tree(set: &BTreeMap<String, Vec<u8>>, base: &Path) {
    for f in [
        "start4.elf",
        "fixup4.dat",
        "bcm2711-rpi-4-b.dtb",
        "bcm2712-rpi-5-b.dtb",
        "kernel8.img",
        "kernel_2712.img",
    ] {
        assert!(
            set[&format!("pi/{f}")] == base_boot_file(base, f),
            "pi/{f} is not the base's {f}"
        );
    }
    for pi in &PIS {
        let own: Vec<&String> = set
            .keys()
            .filter(|k| k.starts_with(&format!("pi/{}/", pi.folder)))
            .collect();
        assert_eq!(own, [&format!("pi/{}/cmdline.txt", pi.folder)]);
    }
    let config = String::from_utf8_lossy(&set["pi/config.txt"]);
    for want in [
        "[pi4]\nkernel=kernel8.img\ndevice_tree=bcm2711-rpi-4-b.dtb\ninitramfs initramfs8,imgbuild.cpio followkernel\n",
        "[pi5]\nkernel=kernel_2712.img\ndevice_tree=bcm2712-rpi-5-b.dtb\ninitramfs initramfs_2712,imgbuild.cpio followkernel\n",
        "auto_initramfs=0\n",
    ] {
        assert!(config.contains(want), "{config}");
    }
    let json: serde_json::Value = serde_json::from_slice(&set["netboot.json"]).unwrap();
    assert_eq!(json["pi"]["nodes"]["9ffefdef"], "pi-1", "{json}");
}

/// DISCOVER and REQUEST as the Pi's bootloader sends them; our answer's option 66.
fn dhcp(lab: &Lab, pi: &Pi, xid: u32) -> Ipv4Addr {
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
fn boot_sequence(server: SocketAddr, pi: &Pi) -> BTreeMap<String, Vec<u8>> {
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
        c.sock
            .send_to(&packet::error(ErrorCode::OptionRefused, "abort"), tid)
            .unwrap();
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

/// What the firmware takes from config.txt for `section`: kernel, device tree, initramfs list
/// (later lines win, as in the firmware).
fn model_files(config: &str, section: &str) -> (String, String, Vec<String>) {
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
        Probe::Size => {
            c.sock
                .send_to(&packet::error(ErrorCode::OptionRefused, "abort"), tid)
                .unwrap();
        }
        Probe::OneBlock => {
            c.sock.send_to(&packet::ack(0), tid).unwrap();
            let (d, _) = c.recv();
            assert!(matches!(
                packet::parse(&d).unwrap(),
                Packet::Data { block: 1, .. }
            ));
            c.sock
                .send_to(
                    &packet::error(ErrorCode::NotDefined, "Early terminate"),
                    tid,
                )
                .unwrap();
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
