//! OVMF (EDK2's own PXE, no option ROM) boots through our proxyDHCP, with a router-style
//! dnsmasq giving the address and nothing else: the firmware takes the boot file from our offer
//! and our port-4011 ACK, fetches snponly.efi over our TFTP, and that iPXE gets our HTTP script
//! from our proxy offer (user class iPXE), then the node's kernel and initrds. Firmware, iPXE and
//! dnsmasq are nobody's here: the proof is what they fetched (our log) and the kernel's console.
//! UEFI HTTP Boot and the Pi-hole host's layout (dnsmasq holding 67 beside us) are booted to the
//! node's first boot by `netboot_e2e_boot.rs`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::netboot::workdir_with;
use support::proxy::{Dnsmasq, Lab, ready};

const IPXE: &str = "/usr/lib/ipxe";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn qemu_ready() -> bool {
    let ok = support::require_tool("qemu-system-x86_64")
        && support::require_tool("flock")
        && Path::new(IPXE).join("snponly.efi").exists()
        && Path::new(OVMF_CODE).exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "qemu, ipxe or ovmf is missing"
        );
        eprintln!("skipping: needs qemu-system-x86_64, flock, ipxe and ovmf");
    }
    ok
}

/// Runs OVMF on tap0 in the lab with `mac` until `done(server log, console)` or 300 s of
/// running (the host's QEMU lock may first make it wait). Returns the console.
fn boot_ovmf(lab: &Lab, mac: &str, done: impl Fn(&str, &str) -> bool) -> String {
    let serial = lab.work.join("serial.log");
    let pidfile = lab.work.join("qemu.pid");
    let vars = lab.work.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let mut q = lab.lab.cmd("flock");
    q.args([
        "/tmp/imgbuild-qemu.lock",
        "qemu-system-x86_64",
        "-accel",
        "tcg",
    ])
    .args([
        "-machine",
        "q35",
        "-m",
        "512",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-drive")
    .arg(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
    ))
    .arg("-drive")
    .arg(format!(
        "if=pflash,format=raw,unit=1,file={}",
        vars.display()
    ))
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .arg("-pidfile")
    .arg(&pidfile)
    .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
    .arg("-device")
    .arg(format!(
        "virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"
    ));
    let mut vm = lab.lab.spawn(q, &lab.work.join("qemu.log"));
    let queued = Instant::now();
    let mut started: Option<Instant> = None;
    let console = loop {
        let console = std::fs::read_to_string(&serial).unwrap_or_default();
        if done(&lab.log(), &console) {
            break console;
        }
        if let Some(st) = vm.try_wait().unwrap() {
            panic!("QEMU exited ({st}):\n{}\n{console}", lab.log());
        }
        // The clock starts when QEMU does (it writes its pid file), not while flock waits.
        if pidfile.exists() {
            started.get_or_insert_with(Instant::now);
        }
        assert!(
            queued.elapsed() < Duration::from_secs(3600),
            "waited an hour for the QEMU lock"
        );
        if started.is_some_and(|t0| t0.elapsed() > Duration::from_secs(300)) {
            let _ = vm.kill();
            panic!(
                "no boot after 300 s:\nserver:\n{}\ndnsmasq:\n{}\nconsole:\n{console}",
                lab.log(),
                lab.dnsmasq_log()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // flock runs QEMU as its child: stop QEMU itself (it holds the lock), then flock ends.
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
    let _ = vm.wait();
    console
}

#[test]
fn ovmf_pxe_boots_through_the_proxy_beside_a_router_dhcp() {
    if !ready() || !qemu_ready() {
        return;
    }
    let Some(base) = support::qemu::debian_base() else {
        return;
    };
    let scratch = support::scratch();
    let boot = support::qemu::extract_boot_files(&base, scratch.path());
    let work = workdir_with(1, Some(Path::new(IPXE)), Some((&boot.kernel, &boot.initrd)));
    let lab = Lab::new(work.path(), Dnsmasq::Router, &["tap0"]);
    let console = boot_ovmf(&lab, "52:54:00:00:00:02", |log, console| {
        log.contains("node=pc-2 file=amd64-worker/imgbuild.cpio")
            && console.contains("Linux version")
    });
    let log = lab.log();
    let at = |s: &str| {
        log.find(s)
            .unwrap_or_else(|| panic!("{s:?} not in the log:\n{log}"))
    };
    // EDK2: our offer, then the boot server ACK on 4011, then TFTP of snponly.efi.
    let offer = at(
        "dhcp: answered (arch 7: UEFI PXE X64) mac=52:54:00:00:00:02 class=UefiPxe(X64) port=Dhcp",
    );
    let ack = at("class=UefiPxe(X64) port=Pxe");
    let tftp = log
        .lines()
        .find(|l| l.contains("tftp: sent") && l.contains("file=efi-x64/snponly.efi"))
        .unwrap_or_else(|| panic!("no TFTP of snponly.efi:\n{log}"));
    assert!(tftp.contains("bytes=173792"), "{tftp}");
    // iPXE: our proxy offer with the script URL, then the script and the node's kernel.
    let ipxe = at("dhcp: answered (user class iPXE: the HTTP boot script) mac=52:54:00:00:00:02");
    let script = at("boot script served; seed token minted client=10.33.0.");
    let kernel = at("node=pc-2 file=amd64-worker/vmlinuz bytes=");
    assert!(
        offer < ack && ack < log.find(tftp).unwrap() && ack < ipxe,
        "{log}"
    );
    assert!(ipxe < script && script < kernel, "{log}");
    // The address came from the router, never from us.
    let d = lab.dnsmasq_log();
    assert!(
        d.contains("DHCPACK(rt1) 10.33.0.1") && d.contains("52:54:00:00:00:02"),
        "{d}"
    );
    assert!(
        console.contains("ds=nocloud-net;s=http://10.33.0.1:8080/seed/"),
        "{console}"
    );
}
