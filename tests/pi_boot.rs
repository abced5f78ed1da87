//! A Raspberry Pi image becomes a node: `imgbuild build pi-node --node pi-1` (the stock
//! `pi-worker`, board `rpi`) from a base laid out like Raspberry Pi OS Lite
//! (`tests/fixtures/pi/make-pi-base`: a configured Debian trixie arm64 root, Debian's Pi
//! firmware), then booted under `qemu-system-aarch64 -M virt` (TCG) with no network.
//!
//! QEMU has no Raspberry Pi 4 or 5 machine, so it plays the firmware's part: it loads what the
//! image's boot partition tells the Pi 4 firmware to load (`kernel8.img`, and `initramfs8` through
//! `auto_initramfs=1`) with the image's own `cmdline.txt`, where the firmware would expand
//! `console=serial0` to the board's serial console (here a virtio console, `hvc0`). Everything
//! after that is the image's: the initramfs finds the root by the PARTUUID in cmdline.txt, the
//! preinit mounts the data partition, cloud-init reads the seed from the boot partition.
//!
//! The disk boots twice: the first boot joins the mesh and starts k3s from the seed; the second
//! keeps identity and state and does not run the first boot again.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::node::{self, NodeProfile, Seen, Setup, grown_copy};
use support::pi::pi_base;
use support::qemu::{self, Arch, ResultsDisk, VmBuilder};
use support::{require_tool, run};

/// An arm64 boot with systemd, cloud-init, the mesh join and k3s under TCG: several minutes on two
/// idle cores, much more on a loaded machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1800);

fn tools_present() -> bool {
    qemu::require_qemu(Arch::Aarch64, false)
        && ["mkfs.vfat", "mtype", "mdir", "sfdisk"]
            .iter()
            .all(|t| require_tool(t))
}

/// What the Pi 4 firmware would load from the image's boot partition.
struct FirmwareView {
    kernel: PathBuf,
    initramfs: PathBuf,
    cmdline: String,
}

/// Reads `config.txt` and `cmdline.txt` and copies `kernel8.img` and `initramfs8` out of the
/// boot partition (the first partition) with mtools.
fn firmware_view(img: &Path, dest: &Path) -> FirmwareView {
    let (code, out, err) = run(Command::new("sfdisk").arg("-J").arg(img));
    assert_eq!(code, 0, "sfdisk -J: {err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let start = j["partitiontable"]["partitions"][0]["start"]
        .as_u64()
        .unwrap();
    let fat = format!("{}@@{}", img.display(), start * 512);
    let read = |name: &str| {
        let (code, out, err) = run(Command::new("mtype").args(["-i", &fat, &format!("::{name}")]));
        assert_eq!(code, 0, "mtype {name}: {err}");
        out
    };
    let config = read("config.txt");
    // The firmware loads kernel8.img with its initramfs only because of these.
    for (line, why) in [
        ("arm_64bit=1", "a 64-bit kernel"),
        ("auto_initramfs=1", "initramfs8 next to kernel8.img"),
    ] {
        assert!(
            config.lines().any(|l| l.trim() == line),
            "config.txt lacks {line} ({why}):\n{config}"
        );
    }
    assert!(
        !config
            .lines()
            .any(|l| l.starts_with("kernel=") || l.starts_with("initramfs ")),
        "config.txt names its own kernel or initramfs:\n{config}"
    );
    let copy = |name: &str| {
        let to = dest.join(name);
        let (code, _, err) = run(Command::new("mcopy")
            .args(["-n", "-i", &fat, &format!("::{name}")])
            .arg(&to));
        assert_eq!(code, 0, "mcopy {name}: {err}");
        to
    };
    let cmdline = read("cmdline.txt");
    assert_eq!(cmdline.lines().count(), 1, "{cmdline:?}");
    FirmwareView {
        kernel: copy("kernel8.img"),
        initramfs: copy("initramfs8"),
        cmdline: support::pi::firmware_cmdline(&cmdline),
    }
}

fn boot(disk: &Path, fw: &FirmwareView, work: &Path, name: &str) -> Seen {
    let results = ResultsDisk::create(&work.join(format!("results-{name}.img")));
    // panic=-1 turns a failed boot into a QEMU exit (with -no-reboot) instead of a hang.
    let cmdline = format!("{} panic=-1", fw.cmdline);
    let mut vm = VmBuilder::kernel(Arch::Aarch64, &fw.kernel, Some(&fw.initramfs), &cmdline)
        .disk(disk, "disk")
        .disk(&results.image, "results")
        .virtio_console()
        .memory_mib(2048)
        .start(&work.join(format!("vm-{name}")));
    vm.wait_for_poweroff(node::DONE, node::FAILED, BOOT_TIMEOUT);
    eprintln!("boot {name}: {:.1?}", vm.elapsed());
    drop(vm);
    Seen::read(&results)
}

#[test]
fn pi_image_boots_under_qemu_joins_the_mesh_starts_k3s_and_keeps_its_state() {
    if !tools_present() {
        return;
    }
    let Some(base) = pi_base(None) else { return };
    let tmp = support::scratch();
    let work = tmp.path();
    let profile = NodeProfile::pi_node(&base);
    let setup = Setup::new(work, &profile, "pi");
    let img = setup.build_node("pi-1");
    setup.assert_secrets_only_in_node_image(&img);

    let disk = grown_copy(&img, &work.join("pi-1.img"));
    let fw = firmware_view(&disk, work);
    assert!(
        fw.cmdline.split_whitespace().any(|a| a == "ro"),
        "{}",
        fw.cmdline
    );

    let first = boot(&disk, &fw, work, "pi-1-first");
    assert_eq!(first.get("arch"), "aarch64", "{}", first.show());
    first.assert_first_boot("pi-1", profile.boot_mount);

    let second = boot(&disk, &fw, work, "pi-1-second");
    second.assert_later_boot(&first, "pi-1", 2);
}
