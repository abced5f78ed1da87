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
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use support::netbuild::build_with;
use support::pi::pi_base;
use support::pi_client::{PIS, boot_sequence, built_set, dhcp, inventory, listen_args};
use support::proxy::{Dnsmasq, Lab, SERVER, ready};
use support::require_tool;

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
    let (setup, set) = built_set(work.path(), &base);
    let listen = listen_args();
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

    let lab = Lab::with(work.path(), Dnsmasq::Router, &[], &inventory(), &[]);
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
