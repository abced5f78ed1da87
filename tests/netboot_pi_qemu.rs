//! A Raspberry Pi 4 node boots from the network, as far as an emulator can take it: the scripted
//! Pi 4 bootloader (`support::pi_client`) gets its address from dnsmasq (the router's DHCP) and
//! our proxyDHCP's option 43/66, fetches its serial folder's files over our TFTP, and then
//! `qemu-system-aarch64 -M virt` (TCG) boots exactly the kernel, initramfs list and
//! `cmdline.txt` it fetched (QEMU plays the firmware: it has no Pi 4 machine), with a NIC on the
//! lab's bridge. The node's root comes from `imgbuild.cpio`, its seed over HTTP from our server
//! at the URL in `cmdline.txt`, its address from dnsmasq: the same first-boot checks as the disk
//! Pi boot and the PC netboot.
//!
//! Known broken (ignored): the boot reaches the squashfs root and the preinit's data disk, but
//! cloud-init-local.service never runs (the guest's journal shows neither a start nor a skipped
//! condition; cloud-init 25's network stage then finds no socket), so the seed is never
//! requested and the node waits for its mesh. Suspect: the Pi board's drop-in
//! `cloud-init-local.service.d/10-imgbuild-seed.conf` (`RequiresMountsFor=/boot/firmware`),
//! where the preinit's tmpfs stands in for the boot partition.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::node::{self, Seen};
use support::pi::pi_base;
use support::pi_client::{PIS, boot_sequence, built_set, dhcp, inventory};
use support::proxy::{Dnsmasq, Lab, ready};
use support::qemu::{self, Arch, ResultsDisk, VmBuilder};

/// arm64 under TCG with systemd, cloud-init, the mesh join and k3s (see pi_boot.rs).
const BOOT_TIMEOUT: Duration = Duration::from_secs(1800);

#[test]
#[ignore = "not working yet: the VM boots the fetched kernel, initramfs and cmdline.txt to the \
            squashfs root and the preinit's data disk, but trixie's cloud-init 25 never runs \
            its local stage here, so the seed is never fetched and the boot waits"]
fn a_pi_4_netboots_what_it_fetched_to_its_first_boot_checks() {
    if !ready() || !qemu::require_qemu(Arch::Aarch64, false) {
        return;
    }
    let Some(base) = pi_base(None) else {
        return;
    };
    let work = support::scratch();
    let (_setup, _) = built_set(work.path(), &base);
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
}
