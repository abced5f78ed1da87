//! A Raspberry Pi 4 node boots from the network, as far as an emulator can take it: the scripted
//! Pi 4 bootloader (`support::pi_client`) gets its address from dnsmasq (the router's DHCP) and
//! our proxyDHCP's option 43/66, fetches its serial folder's files over our TFTP, and then
//! `qemu-system-aarch64 -M virt` (TCG) boots exactly the kernel, initramfs list and
//! `cmdline.txt` it fetched (QEMU plays the firmware: it has no Pi 4 machine), with a NIC on the
//! lab's bridge. The node's root comes from `imgbuild.cpio`, its seed over HTTP from our server
//! at the URL in `cmdline.txt`, its address from dnsmasq: the same first-boot checks as the disk
//! Pi boot and the PC netboot.
//!
//! What was wrong (fixed in the preinit): fstab names the disk image's boot partition
//! (`LABEL=IMGBUILD` at `/boot/firmware`), which a netbooted node does not have. The preinit put
//! a tmpfs there and masked that device's fsck unit; but the mount unit fstab's generator made
//! still `Requires=` the fsck, so the seed drop-in's `RequiresMountsFor=/boot/firmware` made
//! cloud-init-local.service impossible to queue: systemd drops a wanted unit whose requirement
//! is masked from the boot at debug log level only, so the journal showed no trace of it. cloud-init 22 (bookworm, the PC
//! netboot) still found the HTTP seed in its network stage; cloud-init 24+ (trixie) runs one
//! process that waits for the local stage's socket message, so it never went on (and its
//! network stage's shim, no longer ordered after anything, ran first and found no socket). The
//! preinit now writes `/run/systemd/system/boot-firmware.mount` for the tmpfs, which replaces
//! fstab's unit.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::node::{self, Seen};
use support::pi::pi_base;
use support::pi_client::{PIS, boot_sequence, built_set, dhcp, inventory};
use support::proxy::{Dnsmasq, Lab, ready};
use support::qemu::{self, Arch, ResultsDisk, VmBuilder};
use support::{require_tool, run};

/// arm64 under TCG with systemd, cloud-init, the mesh join and k3s (see pi_boot.rs).
const BOOT_TIMEOUT: Duration = Duration::from_secs(1800);

#[test]
fn a_pi_4_netboots_what_it_fetched_to_its_first_boot_checks() {
    if !ready() || !qemu::require_qemu(Arch::Aarch64, false) {
        return;
    }
    let Some(base) = pi_base(None) else {
        return;
    };
    let work = support::scratch();
    let (setup, set) = built_set(work.path(), &base);
    let lab = Lab::with(work.path(), Dnsmasq::Router, &["tap0"], &inventory(), &[]);
    let pi = &PIS[0];
    assert!(!pi.pi5);
    let tftp = dhcp(&lab, pi, 0x7100);
    let got = lab
        .client
        .run_in(|| boot_sequence(SocketAddr::new(tftp.into(), 69), pi));
    let file = |n: &str| got[&format!("{}/{n}", pi.folder)].clone();
    let config = String::from_utf8(file("config.txt")).unwrap();
    let (kernel, _, initramfs) = support::pi_client::model_files(&config, "pi4");
    // The firmware lays the initramfs list end to end (each file is 4-byte padded already).
    let mut initrd = Vec::new();
    for i in &initramfs {
        let b = file(i);
        assert_eq!(b.len() % 4, 0, "{i}");
        initrd.extend(b);
    }
    let w = work.path();
    std::fs::write(w.join("kernel"), file(&kernel)).unwrap();
    std::fs::write(w.join("initrd"), initrd).unwrap();
    let cmdline = String::from_utf8(file("cmdline.txt")).unwrap();
    // The node's network-config, for cloud-init's local stage (before the HTTP seed).
    assert!(cmdline.contains(" network-config="), "{cmdline}");
    drop(got);
    let seed_url = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("ds=nocloud-net;s="))
        .unwrap()
        .to_string();

    let data = w.join("data.img");
    node::blank_data_disk(&data);
    let results = ResultsDisk::create(&w.join("results.img"));
    let args = format!("{} panic=-1", support::pi::firmware_cmdline(&cmdline));
    let mut vm = VmBuilder::kernel(
        Arch::Aarch64,
        &w.join("kernel"),
        Some(&w.join("initrd")),
        &args,
    )
    .tap("tap0", &pi.mac.to_string())
    .in_netns(&lab.lab.name)
    .host_lock()
    .disk(&data, "data")
    .disk(&results.image, "results")
    .virtio_console()
    .memory_mib(2048)
    .start(&w.join("vm"));
    vm.wait_for_poweroff(node::DONE, node::FAILED, BOOT_TIMEOUT);
    eprintln!("pi netboot: {:.1?}", vm.elapsed());
    drop(vm);
    let seen = Seen::read(&results);
    assert_eq!(seen.get("arch"), "aarch64", "{}", seen.show());
    seen.assert_first_netboot(pi.node, &seed_url, true);
    let log = lab.log();
    assert!(log.contains("seed served"), "{log}");
    // The seed's secrets reach the node only from the server: none in the shared set.
    assert_no_secrets_in_set(&set, w, &setup.seed(pi.node));
}

/// No file of the built set, and no file of the squashfs root inside its `imgbuild.cpio`
/// (unpacked with bsdtar and unsquashfs: it is zstd-compressed), holds a seed secret (grep).
/// The same search finds them in the node's own seed (`seed`), so it can fail.
fn assert_no_secrets_in_set(set: &Path, work: &Path, seed: &Path) {
    if !["bsdtar", "unsquashfs", "grep"]
        .iter()
        .all(|t| require_tool(t))
    {
        return;
    }
    let cpio = work.join("set-cpio");
    std::fs::create_dir_all(&cpio).unwrap();
    let (code, _, err) = run(Command::new("bsdtar")
        .arg("-xf")
        .arg(set.join("imgbuild.cpio"))
        .arg("-C")
        .arg(&cpio)
        .arg("imgbuild/root.squashfs"));
    assert_eq!(code, 0, "bsdtar: {err}");
    let root = work.join("set-root");
    let (code, _, err) = run(Command::new("unsquashfs")
        .args(["-no-progress", "-quiet", "-d"])
        .arg(&root)
        .arg(cpio.join("imgbuild/root.squashfs")));
    assert_eq!(code, 0, "unsquashfs: {err}");
    let grep = |paths: &[&Path]| {
        let mut c = Command::new("grep");
        c.args(["-rlFa", "-D", "skip"]);
        for (_, value) in node::SECRETS {
            c.args(["-e", value]);
        }
        run(c.args(paths))
    };
    let (code, out, err) = grep(&[seed]);
    assert!(
        code == 0 && !out.is_empty(),
        "grep finds no secret in the seed: {err}"
    );
    let (code, out, err) = grep(&[set, &root]);
    assert_eq!(code, 1, "a seed secret is in the shared set: {out}{err}");
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&cpio).unwrap();
}
