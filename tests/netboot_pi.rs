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
//!   against the build, and cmdline.txt is the built one with a fresh one-shot token in its
//!   seed URL: curl fetches each seed file once with it (200), a second time 404, the
//!   long-lived key older builds used 404; reading cmdline.txt again mints a new token and ends
//!   the first; a `netboot = "once"` node is refused (TFTP and seed) after its seed.
//!
//! The client does not configure the address dnsmasq leased (the namespace has a fixed one).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use imgbuild_netboot::tokens::TOKEN_SLOT;
use sha2::{Digest, Sha256};
use support::netboot::serve_command;
use support::netbuild::build_with;
use support::pi::pi_base;
use support::pi_client::{
    PIS, Pi, boot_sequence, built_set, dhcp, inventory, listen_args, read_file,
};
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

    // pi-2 may netboot once: after its seed it is refused (its state in the work folder).
    let nodes = inventory().replace(
        &format!("serial = \"{}\"\n", PIS[1].serial),
        &format!("serial = \"{}\"\nnetboot = \"once\"\n", PIS[1].serial),
    );
    let state = work.path().join("state");
    let state_args = ["--state-dir", state.to_str().unwrap()];
    let lab = Lab::with(work.path(), Dnsmasq::Router, &[], &nodes, &state_args);
    let mut seeds = Vec::new();
    for (i, pi) in PIS.iter().enumerate() {
        let tftp = dhcp(&lab, pi, 0x7000 + i as u32 * 16);
        let server = SocketAddr::new(tftp.into(), 69);
        let got = lab.client.run_in(|| boot_sequence(server, pi));
        check_fetched(&got, &set, pi);
        let cmdline =
            String::from_utf8(got[&format!("{}/cmdline.txt", pi.folder)].clone()).unwrap();
        let url = seed_url(&cmdline);
        assert!(
            url.starts_with(&format!("http://{SERVER}:8080/seed/")),
            "{url}"
        );
        let token = check_seed_once(&lab, &url, pi);
        // The same Pi reads cmdline.txt again (its next boot).
        let again = lab.client.run_in(|| read_file(server, pi, "cmdline.txt"));
        if pi.node == "pi-2" {
            // netboot = "once": it fetched its seed, so every route refuses it now.
            assert_eq!(again, Err(2), "{}", lab.log());
            assert_eq!(get(&lab, &format!("{url}vendor-data")).0, 403);
        } else {
            let again = seed_url(&String::from_utf8(again.unwrap()).unwrap());
            assert_ne!(again, url, "a new token for each read");
            assert_eq!(again.len(), url.len());
            // The first token's last file is gone, the new one's is served.
            assert_eq!(get(&lab, &format!("{url}vendor-data")).0, 404);
            assert_eq!(get(&lab, &format!("{again}vendor-data")).0, 200);
        }
        seeds.push(token);
    }
    let log = lab.log();
    for t in &seeds {
        assert!(!log.contains(t.as_str()), "a seed token in the log:\n{log}");
    }
    assert!(log.contains("serving Raspberry Pi node"), "{log}");
    let mints = log
        .lines()
        .filter(|l| l.contains("tftp: served with a new seed token") && l.contains("node=pi-1"))
        .count();
    // Size probe and read (Pi 4), twice.
    assert!(mints >= 4, "{log}");
    // Expected probes for missing files are answered and logged at info, never as problems.
    let missing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tftp: no such file"))
        .collect();
    assert!(missing.len() >= 4, "{log}");
    assert!(missing.iter().all(|l| l.contains("INFO")), "{log}");
    check_seed_server(&lab, &state_args);
    check_stale_network_config(&lab, &state_args, &state);
}

/// pi-1's MAC changes in the inventory after the build, so the network-config its built
/// cmdline.txt carries is stale: `doctor` says so under "pi" with the rebuild fix, and `serve`
/// refuses to start (exit 2) naming the node, its inventory line and the fix, writing nothing.
/// (The unchanged inventory: doctor had no "pi" problem and the lab's serve started.)
fn check_stale_network_config(lab: &Lab, state: &[&str], state_dir: &Path) {
    let inventory = lab.work.join("nodes.toml");
    let was = std::fs::read_to_string(&inventory).unwrap();
    let mac = format!("mac = \"{}\"\n", PIS[0].mac);
    assert!(was.contains(&mac), "{was}");
    let moved = was.replacen(&mac, "mac = \"dc:a6:32:0a:0b:0c\"\n", 1);
    std::fs::write(&inventory, &moved).unwrap();
    let stale = "nodes.toml:3: node \"pi-1\": the network-config in its built cmdline.txt is not the one the inventory gives it now (its MAC or address changed since the build)";
    let fix = "rebuild with `imgbuild netboot build pi-node --listen ADDR --http-port N` as given to serve";

    let (code, out) = doctor(lab, state, "8080");
    assert_eq!(code, Some(1), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("problem pi:"))
        .unwrap_or_else(|| panic!("no pi problem:\n{out}"));
    assert!(line.contains(stale), "{line}");
    assert!(line.contains(&format!("fix: {fix}")), "{line}");
    assert!(
        !out.contains("problem pi: node \"pi-2\""),
        "pi-2 is unchanged:\n{out}"
    );

    let listing = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let (work_before, state_before) = (listing(&lab.work), files(state_dir));
    let err = serve_refused(lab, state, "0");
    assert!(err.contains(stale), "{err}");
    assert!(err.contains(&format!("help: {fix}")), "{err}");
    assert_eq!(
        listing(&lab.work),
        work_before,
        "serve wrote into its folder"
    );
    assert_eq!(files(state_dir), state_before, "serve wrote netboot state");
    std::fs::write(&inventory, was).unwrap();
}

/// `netboot serve` in the lab on HTTP port `port`, which must refuse to start (exit 2, nothing
/// on stdout): its stderr.
fn serve_refused(lab: &Lab, state: &[&str], port: &str) -> String {
    let out = serve_command(Some(&lab.lab), &lab.work, &SERVER.to_string(), &[])
        .args(["--tftp-port", "0", "--http-port", port])
        .args(state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// `netboot doctor` in the lab with serve's options for port `port`: its exit code and stdout.
fn doctor(lab: &Lab, state: &[&str], port: &str) -> (Option<i32>, String) {
    let out = lab
        .lab
        .cmd(env!("CARGO_BIN_EXE_imgbuild"))
        .current_dir(&lab.work)
        .args(["netboot", "doctor", "--listen", &SERVER.to_string()])
        .args(["--images", "images", "--http-port", port])
        .args(["--pihole-config", "/nonexistent"])
        .args(state)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), stdout)
}

/// The built cmdline.txt names the seed server: `doctor` finds it right for the lab server's
/// port 8080 and wrong for 8081, and `serve` on 8081 refuses to start, saying to rebuild.
fn check_seed_server(lab: &Lab, state: &[&str]) {
    let doctor = |port: &str| doctor(lab, state, port).1;
    let good = doctor("8080");
    let ok = format!(
        "node pi-1: its serial folder is built, cmdline.txt names the seed URL on http://{SERVER}:8080"
    );
    assert!(good.contains(&ok), "{good}");
    assert!(!good.contains("names the seed server"), "{good}");
    assert!(!good.contains("problem pi:"), "{good}");
    let bad = doctor("8081");
    assert!(bad.contains(&format!("node pi-1: its cmdline.txt names the seed server http://{SERVER}:8080, but serve would listen at http://{SERVER}:8081")), "{bad}");
    let err = serve_refused(lab, state, "8081");
    assert!(
        err.contains(&format!(
            "names the seed server http://{SERVER}:8080, but this server is http://{SERVER}:8081"
        )),
        "{err}"
    );
    assert!(err.contains("help: rebuild"), "{err}");
}

/// The files the Pi got are the built ones; its cmdline.txt is the built one with a fresh
/// token (fixed-length hex) where the build has the token slot.
fn check_fetched(got: &BTreeMap<String, Vec<u8>>, set: &Path, pi: &Pi) {
    for (name, bytes) in got {
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
        if rest == "cmdline.txt" {
            let served = String::from_utf8(bytes.clone()).unwrap();
            let token = token_of(&seed_url(&served));
            assert_eq!(token.len(), TOKEN_SLOT.len());
            assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{served}");
            assert_eq!(served.replace(&token, TOKEN_SLOT).into_bytes(), want);
            assert!(served.contains("boot=imgbuild"), "{served}");
            assert!(served.contains("imgbuild.root-sha256="), "{served}");
        } else {
            assert!(*bytes == want, "{name}: not the built file");
        }
    }
}

/// Each seed file once with the token (200), meta-data a second time 404; the long-lived seed
/// key older builds put in the URL (SHA-256 over the seed) is 404. Returns the token.
fn check_seed_once(lab: &Lab, url: &str, pi: &Pi) -> String {
    let (code, meta) = get(lab, &format!("{url}meta-data"));
    assert!(
        code == 200 && meta.contains(pi.node),
        "{url}: {code} {meta}\n{}",
        lab.log()
    );
    assert_eq!(get(lab, &format!("{url}meta-data")).0, 404, "replayed");
    let (code, net) = get(lab, &format!("{url}network-config"));
    assert_eq!(code, 200);
    let (code, user) = get(lab, &format!("{url}user-data"));
    assert_eq!(code, 200);
    let mut h = Sha256::new();
    h.update(b"imgbuild pi seed key v1\0");
    for (name, text) in [
        ("meta-data", &meta),
        ("network-config", &net),
        ("user-data", &user),
    ] {
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(text.as_bytes());
        h.update(b"\0");
    }
    let key = hex::encode(&h.finalize()[..16]);
    let old = format!("http://{SERVER}:8080/seed/{key}/meta-data");
    assert_eq!(get(lab, &old).0, 404, "the long-lived key still works");
    token_of(url)
}

/// The seed URL (`…/seed/<token>/`) a cmdline.txt names.
fn seed_url(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("ds=nocloud-net;s="))
        .unwrap_or_else(|| panic!("no seed URL in {cmdline}"))
        .to_string()
}

fn token_of(url: &str) -> String {
    let rest = url.split("/seed/").nth(1).unwrap();
    rest.trim_end_matches('/').to_string()
}

/// curl from the client host: (status, body).
fn get(lab: &Lab, url: &str) -> (u16, String) {
    let (_, code, body) = lab.curl(url);
    (code.parse().unwrap(), String::from_utf8(body).unwrap())
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
