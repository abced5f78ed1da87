//! Per-node netboot policy, judged by scripted firmware DHCP, curl's TFTP and HTTP clients and
//! dnsmasq (which keeps answering the same broadcasts, so silence is ours alone). On the proxy
//! LAN of netboot_proxy.rs: a `netboot = "once"` node boots (DHCP offer, TFTP, boot script,
//! kernel, seed), is then refused on every route, stays refused across a restart, and boots
//! again after `imgbuild netboot arm` while the server runs; a `never` node and an unknown MAC
//! are ignored. Without a namespace: an inventory with a duplicate MAC is refused at start with
//! file:line, and the same inventory without it serves.

mod support;

use imgbuild_netboot::Mac;
use imgbuild_netboot::dhcp::MessageType;
use imgbuild_netboot::dhcp::client::{Answer, Request};
use support::netboot::{
    NODES, Server, cmdline_network_config, secret_values, serve_command, set_dir, workdir,
};
use support::proxy::{Dnsmasq, Lab, PC1, PC2, ready};
use support::{imgbuild, run};

const URL: &str = "http://10.33.0.1:8080";

/// `serve` on loopback, any free ports, the state folder in the work folder.
const LOOPBACK: [&str; 6] = [
    "--tftp-port",
    "0",
    "--http-port",
    "0",
    "--state-dir",
    "state",
];

/// pc-1 once, pc-2 never, a Pi known by its serial only (never) and a PC by its SMBIOS UUID
/// only.
fn inventory() -> String {
    NODES
        .replace(
            "mac = \"52:54:00:00:00:01\"",
            "mac = \"52:54:00:00:00:01\"\nnetboot = \"once\"",
        )
        .replace(
            "mac = \"52:54:00:00:00:02\"",
            "mac = \"52:54:00:00:00:02\"\nnetboot = \"never\"",
        )
        + "\n[[node]]\nname = \"pi-1\"\nprofile = \"amd64-worker\"\nserial = \"100000009ffefdef\"\nnetboot = \"never\"\n"
        + "\n[[node]]\nname = \"efi-1\"\nprofile = \"amd64-worker\"\nuuid = \"00112233-4455-6677-8899-AABBCCDDEEFF\"\n"
}

/// Our proxy's answer to a BIOS DISCOVER from `mac` (None: silent), after checking that
/// dnsmasq answered the same broadcast.
fn offer(lab: &Lab, mac: Mac, xid: u32) -> Option<Answer> {
    let (us, them) = lab.discover(&Request::bios(), mac, xid);
    assert!(
        them.is_some_and(|a| a.msg_type == Some(MessageType::Offer)),
        "dnsmasq did not answer:\n{}",
        lab.dnsmasq_log()
    );
    us
}

fn status(lab: &Lab, url: &str) -> String {
    lab.curl(url).1
}

fn arm(work: &std::path::Path, node: &str) -> (i32, String) {
    let (code, _, err) = run(imgbuild()
        .current_dir(work)
        .args(["netboot", "arm", node, "--inventory", "nodes.toml"])
        .args(["--state-dir", "state"]));
    (code, err)
}

/// The boot script of `mac`: 200 and the seed URL in it.
fn boot_script(lab: &Lab, mac: Mac) -> String {
    let (_, st, body) = lab.curl(&format!("{URL}/boot.ipxe?mac={mac}"));
    let text = String::from_utf8(body).unwrap();
    assert_eq!(st, "200", "{text}\n{}", lab.log());
    let at = text.find("s=http").unwrap_or_else(|| panic!("{text}")) + 2;
    text[at..].split_whitespace().next().unwrap().to_string()
}

/// Everything pc-1 does in a boot, each answered; the boot's seed URL.
fn pc1_boots(lab: &Lab, xid: u32) -> String {
    let a = offer(lab, PC1, xid).unwrap_or_else(|| panic!("no offer for pc-1:\n{}", lab.log()));
    assert_eq!(a.file.as_deref(), Some("bios/undionly.kpxe"));
    let want = std::fs::read(set_dir(&lab.work).join("ipxe/undionly.kpxe")).unwrap();
    let (code, _, got) = lab.curl("tftp://10.33.0.1/bios/undionly.kpxe");
    assert_eq!((code, got.len()), (0, want.len()), "TFTP:\n{}", lab.log());
    let seed = boot_script(lab, PC1);
    assert_eq!(status(lab, &format!("{URL}/a/amd64-worker/vmlinuz")), "200");
    for f in ["meta-data", "user-data"] {
        let (_, st, body) = lab.curl(&format!("{seed}{f}"));
        assert_eq!(st, "200", "{f}: {}", String::from_utf8_lossy(&body));
    }
    seed
}

/// pc-1 is refused on every route; `seed` is the URL of its last boot.
fn pc1_refused(lab: &Lab, xid: u32, seed: Option<&str>) {
    assert!(offer(lab, PC1, xid).is_none(), "{}", lab.log());
    let (code, _, got) = lab.curl("tftp://10.33.0.1/bios/undionly.kpxe");
    // 69: CURLE_TFTP_PERM, our "access violation" ERROR.
    assert_eq!((code, got.len()), (69, 0), "TFTP:\n{}", lab.log());
    let (_, st, body) = lab.curl(&format!("{URL}/boot.ipxe?mac={PC1}"));
    assert_eq!(st, "403", "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("imgbuild netboot arm pc-1"));
    assert_eq!(status(lab, &format!("{URL}/a/amd64-worker/vmlinuz")), "403");
    if let Some(seed) = seed {
        assert_eq!(status(lab, &format!("{seed}vendor-data")), "403");
    }
    let log = lab.log();
    let why = "node pc-1: netboot = \"once\" and it fetched its seed already";
    for route in [
        "dhcp: ignored: 52:54:00:00:00:01: ",
        "tftp: refused: ",
        "http: 403 boot.ipxe refused",
        "http: 403 artifact refused",
    ] {
        let seen = log
            .lines()
            .any(|l| l.contains(route) && l.contains("fetched its seed already"));
        assert!(seen, "{route} … {why}:\n{log}");
    }
}

#[test]
fn once_never_and_unknown_machines_on_every_route() {
    if !ready() {
        return;
    }
    let work = workdir(1);
    let state = work.path().join("state");
    let mut lab = Lab::with(
        work.path(),
        Dnsmasq::Router,
        &[],
        &inventory(),
        &["--state-dir", state.to_str().unwrap()],
    );
    // The client host is pc-1's card: TFTP and HTTP know it by the kernel's ARP table.
    // (veth takes a new address while up: no link flap for the bridge to recover from.)
    lab.client
        .ip(&["link", "set", "cl1", "address", "52:54:00:00:00:01"]);
    let seed = pc1_boots(&lab, 0x4001);
    assert!(
        lab.log()
            .contains("node fetched its seed; netboot = \"once\""),
        "{}",
        lab.log()
    );
    let spent = std::fs::read_to_string(state.join("spent/pc-1")).unwrap();
    assert!(spent.contains("client = \"10.33.0.50\""), "{spent}");
    for s in secret_values() {
        assert!(!spent.contains(&s), "a secret in the state file");
    }
    // The finished boot's token still holds vendor-data, but the node may not have it now.
    pc1_refused(&lab, 0x4002, Some(&seed));

    // The state is on disk: a restarted server still refuses.
    lab.restart();
    pc1_refused(&lab, 0x4003, None);
    // Re-armed while the server runs: it boots once more, then is refused again.
    let (code, err) = arm(work.path(), "pc-1");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("node pc-1 is armed"), "{err}");
    assert!(!state.join("spent/pc-1").exists());
    let (code, err) = arm(work.path(), "pc-1");
    assert!(code == 0 && err.contains("armed already"), "{err}");
    pc1_boots(&lab, 0x4004);
    pc1_refused(&lab, 0x4005, None);
    assert_eq!(arm(work.path(), "pc-1").0, 0);

    never_and_unknown(&lab, work.path());
}

fn never_and_unknown(lab: &Lab, work: &std::path::Path) {
    assert!(offer(lab, PC2, 0x4101).is_none(), "{}", lab.log());
    assert_eq!(status(lab, &format!("{URL}/boot.ipxe?mac={PC2}")), "403");
    let stranger = Mac([0x52, 0x54, 0, 0, 0, 0x99]);
    assert!(offer(lab, stranger, 0x4102).is_none(), "{}", lab.log());
    let (_, st, body) = lab.curl(&format!("{URL}/boot.ipxe?mac={stranger}"));
    let text = String::from_utf8_lossy(&body);
    assert!(
        st == "200" && text.contains("not in the inventory") && text.contains("\nexit\n"),
        "{text}"
    );
    // The Pi known by its serial only: refused when it asks in its serial's folder, though the
    // address is (armed) pc-1's: the serial is more specific than the MAC.
    let (code, _, _) = lab.curl("tftp://10.33.0.1/9ffefdef/start4.elf");
    assert_eq!(code, 69, "{}", lab.log());
    // Another folder: pc-1 by its MAC, which may boot; the file is just not there (68).
    let (code, _, _) = lab.curl("tftp://10.33.0.1/12345678/start4.elf");
    assert_eq!(code, 68, "{}", lab.log());
    let log = lab.log();
    for want in [
        "node pc-2: netboot = \"never\" in the inventory (matched by MAC 52:54:00:00:00:02)",
        "52:54:00:00:00:99: MAC not in the inventory",
        "node pi-1: netboot = \"never\" in the inventory (matched by Raspberry Pi serial 9ffefdef, which wins over its MAC (that is node \"pc-1\"'s))",
    ] {
        assert!(log.contains(want), "{want}:\n{log}");
    }
    // A PXE client known only by its UUID, sent in SMBIOS (little-endian) order: offered.
    let uefi = Mac([0x52, 0x54, 0, 0, 0, 0x77]);
    let printed = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];
    let smbios = [
        &[0u8, 0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66][..],
        &printed[8..],
    ]
    .concat();
    let with_uuid = Request {
        guid: Some(smbios),
        ..Request::uefi_x64()
    };
    let (us, _) = lab.discover(&with_uuid, uefi, 0x4103);
    let a = us.unwrap_or_else(|| panic!("no offer for efi-1:\n{}", lab.log()));
    assert_eq!(a.file.as_deref(), Some("efi-x64/snponly.efi"));
    // The same machine without its GUID is a stranger.
    let (us, _) = lab.discover(&Request::uefi_x64(), uefi, 0x4104);
    assert!(us.is_none(), "{us:?}");
    let log = lab.log();
    assert!(
        log.contains("dhcp: matched (SMBIOS UUID 00112233-4455-6677-8899-AABBCCDDEEFF (SMBIOS byte order)) mac=52:54:00:00:00:77 node=efi-1"),
        "{log}"
    );
    let (code, err) = arm(work, "pc-2");
    assert!(code == 2 && err.contains("netboot = \"never\""), "{err}");
    let (code, err) = arm(work, "pc-9");
    assert!(
        code == 2 && err.contains("node \"pc-9\" is not in nodes.toml"),
        "{err}"
    );
}

#[test]
fn a_duplicate_mac_is_refused_at_start_and_the_fixed_inventory_serves() {
    let work = workdir(1);
    let inv = work.path().join("nodes.toml");
    let good = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(&inv, good.replace("52:54:00:00:00:02", "52:54:00:00:00:01")).unwrap();
    let args = LOOPBACK;
    let (code, _, err) = run(&mut serve_command(None, work.path(), "127.0.0.1", &args));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("nodes.toml:9:7: MAC 52:54:00:00:00:01 is also given for node \"pc-1\""),
        "{err}"
    );
    // An unknown profile and one without netboot artifacts: both named, each at its line.
    let two = good
        .replace(
            "profile = \"amd64-worker\"\nmac = \"52:54:00:00:00:01\"",
            "profile = \"no-such\"\nmac = \"52:54:00:00:00:01\"",
        )
        .replace(
            "profile = \"amd64-worker\"\nmac = \"52:54:00:00:00:02\"",
            "profile = \"amd64-server\"\nmac = \"52:54:00:00:00:02\"",
        );
    std::fs::write(&inv, two).unwrap();
    let (code, _, err) = run(&mut serve_command(None, work.path(), "127.0.0.1", &args));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("nodes.toml:3:") && err.contains("no-such"),
        "{err}"
    );
    assert!(
        err.contains("nodes.toml:8:") && err.contains("imgbuild netboot build amd64-server"),
        "{err}"
    );
    // A `once` node needs a state folder it can write (else its seed could go out unrecorded).
    let once = good.replace(
        "mac = \"52:54:00:00:00:01\"",
        "mac = \"52:54:00:00:00:01\"\nnetboot = \"once\"",
    );
    std::fs::write(&inv, &once).unwrap();
    std::fs::write(work.path().join("not-a-folder"), "").unwrap();
    let mut bad = args;
    bad[5] = "not-a-folder";
    let (code, _, err) = run(&mut serve_command(None, work.path(), "127.0.0.1", &bad));
    assert!(
        code == 2 && err.contains("not-a-folder is not writable"),
        "{err}"
    );
    let server = Server::start(None, work.path(), "127.0.0.1", &args);
    let log = server.stop();
    assert!(log.contains("serving 2 node(s)"), "{log}");
}

/// `--unknown-profile`: a machine not in the inventory boots that profile as its own node (name
/// from its MAC, its own seed), while inventory nodes keep theirs; a profile that does not
/// exist stops the start.
#[test]
fn unknown_machines_boot_the_default_profile_when_one_is_set() {
    if !support::require_tool("curl") {
        return;
    }
    let work = workdir(1);
    let base = LOOPBACK;
    let with = |p: &'static str| [&base[..], &["--unknown-profile", p]].concat();
    let (code, _, err) = run(&mut serve_command(
        None,
        work.path(),
        "127.0.0.1",
        &with("no-such-profile"),
    ));
    assert!(
        code == 2 && err.contains("--unknown-profile no-such-profile"),
        "{err}"
    );
    let s = Server::start(None, work.path(), "127.0.0.1", &with("amd64-worker"));
    let get = |url: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sf", url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{url}:\n{}", s.log());
        String::from_utf8(out.stdout).unwrap()
    };
    let script = get(&format!("{}/boot.ipxe?mac=52-54-00-00-00-99", s.url()));
    assert!(
        script.contains("# imgbuild: node amd64-worker-525400000099, profile amd64-worker"),
        "{script}"
    );
    let at = script.find("s=http").unwrap() + 2;
    let seed = script[at..].split_whitespace().next().unwrap().to_string();
    let meta = get(&format!("{seed}meta-data"));
    assert!(meta.contains("amd64-worker-525400000099"), "{meta}");
    // Its own MAC's network-config on the kernel line, as its seed serves it.
    let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
    let net = cmdline_network_config(kernel).expect("a network-config=");
    assert!(net.contains("macaddress: \"52:54:00:00:00:99\""), "{net}");
    assert_eq!(net, get(&format!("{seed}network-config")));
    assert!(!get(&format!("{seed}user-data")).is_empty());
    let pc1 = get(&format!("{}/boot.ipxe?mac=52-54-00-00-00-01", s.url()));
    assert!(pc1.contains("# imgbuild: node pc-1,"), "{pc1}");
    let log = s.stop();
    assert!(
        log.contains("--unknown-profile amd64-worker boots it as node amd64-worker-525400000099"),
        "{log}"
    );
    for secret in secret_values() {
        assert!(!log.contains(&secret), "a secret in the log");
    }
}
