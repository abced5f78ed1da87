//! PXE boots under QEMU against our server, in a network namespace: dnsmasq plays Pi-hole's DHCP
//! with the snippet `imgbuild netboot dnsmasq` writes, our server listens on the bridge, QEMU
//! sits on a tap. Firmware, iPXE and dnsmasq are nobody's here; the proof is in our server's
//! log (what each machine fetched) and dnsmasq's (which tags the client got).
//!
//! * SeaBIOS with QEMU's iPXE option ROM: DHCP says "iPXE" → our boot.ipxe over HTTP → node pc-1's
//!   script → its kernel and initrds.
//! * OVMF with EDK2's own PXE (no option ROM): DHCP arch 7 → snponly.efi over our TFTP (Debian's
//!   real binary) → iPXE → boot.ipxe → node pc-2's kernel and initrds.
//!
//! The kernel and initrd are the Debian test base's; the root image is a stand-in, so the boot
//! stops in the initramfs: the serial console shows the kernel started with the command line our
//! script gave it (seed URL with its `;` intact). The node's full boot is the artifact tests' job.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::netboot::{Lab, workdir_with};
use support::netns;
use support::require_tool;

const IPXE: &str = "/usr/lib/ipxe";

fn ready() -> bool {
    netns::available()
        && require_tool("qemu-system-x86_64")
        && require_tool("dnsmasq")
        && require_tool("flock")
        && (Path::new(IPXE).join("snponly.efi").exists() || {
            assert!(
                std::env::var_os("CI").is_none(),
                "Debian's ipxe package is missing"
            );
            eprintln!("skipping: {IPXE}/snponly.efi missing (apt-get install ipxe)");
            false
        })
}

/// The PXE lab with a stand-in artifact set (the Debian kernel and initrd, real iPXE).
struct Pxe {
    lab: Lab,
    work: tempfile::TempDir,
}

impl Pxe {
    fn new(kernel: &Path, initrd: &Path) -> Pxe {
        let work = workdir_with(1, Some(Path::new(IPXE)), Some((kernel, initrd)));
        Pxe {
            lab: Lab::new(work.path(), &["tap0"]),
            work,
        }
    }

    fn log(&self) -> String {
        self.lab.log()
    }

    fn dnsmasq_log(&self) -> String {
        self.lab.dnsmasq_log()
    }

    /// Boots a VM with `mac` and `firmware` args until our log has `done` and the serial console
    /// shows the kernel's command line with the seed URL, or fails. Returns the serial log.
    fn boot(&self, mac: &str, firmware: &[&str], nic: &str, done: &str) -> String {
        let serial = self.work.path().join(format!("serial-{mac}.log"));
        let pidfile = self.work.path().join(format!("qemu-{mac}.pid"));
        let mut q = self.lab.ns.cmd("flock");
        q.args([
            "/tmp/imgbuild-qemu.lock",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-pidfile")
        .arg(&pidfile)
        .args(firmware)
        .args([
            "-netdev",
            "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device",
        ])
        .arg(format!("{nic},netdev=n0,mac={mac},bootindex=1"));
        let mut vm = self
            .lab
            .ns
            .spawn(q, &self.work.path().join(format!("qemu-{mac}.log")));
        // The clock starts when QEMU does (it creates the serial file), not while flock waits
        // for another test's VM.
        let queued = Instant::now();
        while !serial.exists() {
            if let Some(st) = vm.try_wait().unwrap() {
                panic!(
                    "QEMU exited ({st}) at start: {}",
                    std::fs::read_to_string(self.work.path().join(format!("qemu-{mac}.log")))
                        .unwrap_or_default()
                );
            }
            assert!(
                queued.elapsed() < Duration::from_secs(3600),
                "waited an hour for the QEMU lock"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let t0 = Instant::now();
        loop {
            let console = std::fs::read_to_string(&serial).unwrap_or_default();
            if self.log().contains(done)
                && console.contains("ds=nocloud-net;s=http://10.33.0.1:8080/seed/")
            {
                break;
            }
            if let Some(st) = vm.try_wait().unwrap() {
                panic!(
                    "QEMU exited ({st}) before `{done}`:\nserver:\n{}\ndnsmasq:\n{}",
                    self.log(),
                    self.dnsmasq_log()
                );
            }
            if t0.elapsed() > Duration::from_secs(300) {
                let _ = vm.kill();
                panic!(
                    "no `{done}` after 300 s:\nserver:\n{}\ndnsmasq:\n{}",
                    self.log(),
                    self.dnsmasq_log()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // flock runs QEMU as its child: stop QEMU itself (it holds the lock), then flock ends.
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        let _ = vm.wait();
        std::fs::read_to_string(&serial).unwrap_or_default()
    }
}

#[test]
fn pxe_boots_reach_our_boot_script_and_artifacts() {
    if !ready() {
        return;
    }
    let Some(base) = support::qemu::debian_base() else {
        return;
    };
    let scratch = support::scratch();
    let boot = support::qemu::extract_boot_files(&base, scratch.path());
    let lab = Pxe::new(&boot.kernel, &boot.initrd);
    // SeaBIOS + iPXE ROM: the DHCP answer is our HTTP script at once.
    let console = lab.boot(
        "52:54:00:00:00:01",
        &["-machine", "pc"],
        "virtio-net-pci",
        "node=pc-1 file=amd64-worker/imgbuild.cpio bytes=751616",
    );
    let cmdline = console
        .lines()
        .find(|l| l.contains("Kernel command line:"))
        .unwrap_or_else(|| panic!("no kernel command line:\n{console}"));
    assert!(
        cmdline.contains("imgbuild.root=http://10.33.0.1:8080/a/amd64-worker/root.squashfs")
            && cmdline.contains("initrd=initrd.img initrd=imgbuild.cpio"),
        "{cmdline}"
    );
    let log = lab.log();
    let at = |s: &str| {
        log.find(s)
            .unwrap_or_else(|| panic!("{s:?} not in the log:\n{log}"))
    };
    let script = at("boot script served; seed token minted client=10.33.0.");
    assert!(
        log[script..].starts_with("boot script served; seed token minted client=10.33.0.")
            && log[script..].contains("mac=52:54:00:00:00:01 node=pc-1"),
        "{log}"
    );
    assert!(
        at("boot.ipxe without a MAC") < script,
        "the dnsmasq URL is chained to one with the MAC first:\n{log}"
    );
    assert!(
        script < at("node=pc-1 file=amd64-worker/vmlinuz bytes="),
        "{log}"
    );
    assert!(
        lab.dnsmasq_log().contains("tags: imgbuild-ipxe"),
        "{}",
        lab.dnsmasq_log()
    );

    // OVMF's own PXE (romfile= turns the iPXE ROM off): TFTP first, then iPXE over HTTP.
    let vars = lab.work.path().join("OVMF_VARS.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let code =
        "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".to_string();
    let vars = format!("if=pflash,format=raw,unit=1,file={}", vars.display());
    let console = lab.boot(
        "52:54:00:00:00:02",
        &["-machine", "q35", "-drive", &code, "-drive", &vars],
        "virtio-net-pci,romfile=",
        "node=pc-2 file=amd64-worker/imgbuild.cpio bytes=751616",
    );
    let log = lab.log();
    let tftp = log
        .lines()
        .find(|l| l.contains("tftp: sent") && l.contains("file=efi-x64/snponly.efi"))
        .unwrap_or_else(|| panic!("no TFTP of snponly.efi:\n{log}"));
    assert!(tftp.contains("bytes=173792"), "{tftp}");
    assert!(log.contains("mac=52:54:00:00:00:02 node=pc-2"), "{log}");
    assert!(console.contains("Linux version"), "{console}");
    let d = lab.dnsmasq_log();
    assert!(
        d.contains("efi-x64/snponly.efi") && d.contains("tags: imgbuild-efi64"),
        "{d}"
    );
    drop(lab);
}
