//! UEFI firmware boots a GPT disk assembled by the disk module: OVMF → systemd-boot (from the
//! Debian base's `systemd-boot-efi`) on our FAT32 ESP → Debian's kernel and initrd → systemd on
//! our ext4 root, found by the `root=PARTUUID=…` that the image seed fixes before anything is
//! written.
//!
//! The guest records how it was booted on a results disk (FAT, read back with mtools): the
//! command line, systemd-boot's own EFI variables (`LoaderInfo`, the ESP's PARTUUID it was loaded
//! from, the entry it chose), and what is mounted at `/`. This is the chain the `efi` board's
//! images rely on; the full node boot test (seed, mesh and k3s stand-ins, second boot) builds on
//! the same harness once `imgbuild build` writes `efi` images.

mod support;

use std::fs;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use imgbuild::disk::contents::FatContent;
use imgbuild::disk::image;
use imgbuild::disk::layout::{Layout, MIB, PartType, Partition, Size};
use imgbuild::ids::ImageSeed;
use imgbuild::progress::Progress;
use imgbuild::source::dir::{DirOptions, read_dir_into};
use imgbuild::source::tar::read_archive_file;
use imgbuild::tree::Tree;
use support::qemu::{self, Arch, ResultsDisk, VmBuilder};
use support::{require_tool, run};

/// systemd-boot's vendor GUID for its EFI variables (Boot Loader Interface).
const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

const CHECK: &str = r#"#!/bin/sh
# Records how this system was booted for the host to check; the unit then powers off.
set -u
fail() { echo "IMGBUILD-BOOT-CHECK-FAILED: $*" > /dev/console; exit 1; }
@MOUNT@ || fail "cannot mount the results disk"
efivar() { # an EFI variable of systemd-boot as text: skip the 4 attribute bytes, UTF-16 -> ASCII
    f="/sys/firmware/efi/efivars/$1-@GUID@"
    if [ -r "$f" ]; then cat "$f" | tail -c +5 | tr -d '\000'; fi
}
root=$(findmnt -no SOURCE /)
{
    echo "cmdline=$(cat /proc/cmdline)"
    echo "efi=$(test -d /sys/firmware/efi && echo yes || echo no)"
    echo "efivarfs=$(findmnt -no FSTYPE /sys/firmware/efi/efivars)"
    echo "loader_info=$(efivar LoaderInfo)"
    echo "loader_device_partuuid=$(efivar LoaderDevicePartUUID)"
    echo "loader_entry=$(efivar LoaderEntrySelected)"
    echo "root_source=$root"
    echo "root_fstype=$(findmnt -no FSTYPE /)"
    echo "root_options=$(findmnt -no OPTIONS /)"
    echo "root_partuuid=$(blkid -s PARTUUID -o value "$root")"
    echo "kernel=$(uname -r)"
    if touch /usr/imgbuild-write-probe 2>/dev/null; then echo "usr_write=allowed"; else echo "usr_write=refused"; fi
} > /run/results/boot.txt || fail "cannot write the results"
bootctl status > /run/results/bootctl.txt 2>&1
umount /run/results || fail "cannot unmount the results disk"
echo "IMGBUILD-BOOT-CHECK-DONE" > /dev/console
"#;

const UNIT: &str = "[Unit]
Description=imgbuild boot check
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/imgbuild-boot-check
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

#[test]
fn ovmf_boots_systemd_boot_then_debian_from_our_gpt_disk() {
    if !qemu::require_qemu(Arch::X86_64, true)
        || !require_tool("sgdisk")
        || !require_tool("mkfs.vfat")
        || !require_tool("mtype")
    {
        return;
    }
    let Some(base) = qemu::debian_base() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let boot = qemu::extract_boot_files(&base, &work.join("bootfiles"));
    let efi = work.join("efi");
    let sd_boot = "./usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    qemu::extract_from_tar(&base, &efi, &[sd_boot]);

    // The root partition's GUID is known before anything is written: the seed fixes it.
    let seed = ImageSeed::new([0x5e; 32]);
    let root_partuuid = seed.partition_guid(PartType::RootX86_64.gpt_type(), 0);

    // ESP: systemd-boot at the removable-media path (no NVRAM boot entry needed), one loader
    // entry, and the kernel and initrd.
    let esp = work.join("esp");
    fs::create_dir_all(esp.join("EFI/BOOT")).expect("mkdir");
    fs::copy(efi.join(sd_boot), esp.join("EFI/BOOT/BOOTX64.EFI")).expect("copy systemd-boot");
    fs::create_dir_all(esp.join("debian")).expect("mkdir");
    fs::copy(&boot.kernel, esp.join("debian/vmlinuz")).expect("copy kernel");
    fs::copy(&boot.initrd, esp.join("debian/initrd.img")).expect("copy initrd");
    qemu::write_file(
        &esp,
        "loader/loader.conf",
        "timeout 0\ndefault debian.conf\n",
        0o644,
    );
    // `ro`: the root stays read-only (the base's fstab is empty), as on an imgbuild node.
    let options = format!(
        "root=PARTUUID={root_partuuid} ro console={} panic=-1 systemd.show_status=1",
        Arch::X86_64.console()
    );
    qemu::write_file(
        &esp,
        "loader/entries/debian.conf",
        &format!(
            "title Debian (imgbuild boot test)\nlinux /debian/vmlinuz\ninitrd /debian/initrd.img\noptions {options}\n"
        ),
        0o644,
    );

    // Root: the Debian base plus the check and its enabled unit.
    let extra = work.join("extra");
    let check = CHECK
        .replace("@MOUNT@", ResultsDisk::GUEST_MOUNT)
        .replace("@GUID@", LOADER_GUID);
    qemu::write_file(&extra, "usr/local/sbin/imgbuild-boot-check", &check, 0o755);
    qemu::write_file(
        &extra,
        "etc/systemd/system/imgbuild-boot-check.service",
        UNIT,
        0o644,
    );
    let wants = extra.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).expect("mkdir");
    std::os::unix::fs::symlink(
        "/etc/systemd/system/imgbuild-boot-check.service",
        wants.join("imgbuild-boot-check.service"),
    )
    .expect("symlink");

    let mut root_tree = Tree::new();
    let _base_file = read_archive_file(&base, work, &Default::default(), &mut root_tree)
        .expect("reading the base");
    read_dir_into(&extra, &mut root_tree, &DirOptions::default()).expect("adding the check");
    let mut esp_tree = Tree::new();
    read_dir_into(&esp, &mut esp_tree, &DirOptions::default()).expect("reading the ESP folder");

    let layout = Layout::gpt(vec![
        Partition {
            label: "esp".into(),
            ptype: PartType::Esp,
            size: Size::Bytes(128 * MIB),
            offset: None,
            content: Box::new(FatContent {
                tree: Arc::new(esp_tree),
                label: "ESP".into(),
            }),
        },
        support::ext4_root(Arc::new(root_tree)),
    ]);
    let disk = work.join("disk.img");
    let started = Instant::now();
    let mut file = fs::File::create_new(&disk).expect("creating disk.img");
    let report = image::write_raw(&layout, &seed, 1_700_000_000, &mut file, &Progress::quiet())
        .expect("assembling the disk");
    drop(file);
    eprintln!(
        "assembled {} bytes in {:.1?}",
        fs::metadata(&disk).expect("disk").len(),
        started.elapsed()
    );
    let root_str = root_partuuid.to_string().to_lowercase();
    assert_eq!(
        report.partuuid("root").map(str::to_lowercase).as_deref(),
        Some(root_str.as_str()),
        "the root PARTUUID written differs from the one the seed predicts"
    );
    let esp_partuuid = report.partuuid("esp").expect("esp partuuid").to_lowercase();
    let (code, out, err) = run(Command::new(support::find_tool("sgdisk").expect("sgdisk"))
        .arg("-v")
        .arg(&disk));
    assert!(
        code == 0 && out.contains("No problems found"),
        "sgdisk -v: {out}{err}"
    );

    let results = ResultsDisk::create(&work.join("results.img"));
    let mut vm = VmBuilder::uefi(Arch::X86_64)
        .disk(&disk, "system")
        .disk(&results.image, "results")
        .start(&work.join("vm"));
    vm.wait_for_poweroff(
        "IMGBUILD-BOOT-CHECK-DONE",
        &[
            "IMGBUILD-BOOT-CHECK-FAILED",
            "Kernel panic",
            "You are in emergency mode",
            "Failed to boot",
        ],
        qemu::BOOT_TIMEOUT,
    );
    eprintln!("firmware to poweroff: {:.1?}", vm.elapsed());
    let serial = vm.serial();
    drop(vm);

    let r = results.read_kv("boot.txt");
    let bootctl = results.read("bootctl.txt").unwrap_or_default();
    let show = || {
        format!(
            "{r:#?}\n--- bootctl status ---\n{bootctl}\n--- serial (last 4000 bytes) ---\n{}",
            tail(&serial, 4000)
        )
    };
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(get("efi"), "yes", "not booted through UEFI: {}", show());
    assert!(
        get("loader_info").starts_with("systemd-boot"),
        "systemd-boot did not start the kernel: {}",
        show()
    );
    assert_eq!(
        get("loader_device_partuuid").to_lowercase(),
        esp_partuuid,
        "systemd-boot was not loaded from our ESP: {}",
        show()
    );
    assert_eq!(get("loader_entry"), "debian.conf", "{}", show());
    assert!(
        get("cmdline").contains(&format!("root=PARTUUID={root_partuuid}")),
        "{}",
        show()
    );
    assert_eq!(get("root_partuuid").to_lowercase(), root_str, "{}", show());
    assert_eq!(get("root_source"), "/dev/vda2", "{}", show());
    assert_eq!(get("root_fstype"), "ext4", "{}", show());
    assert!(get("root_options").starts_with("ro,"), "{}", show());
    assert_eq!(get("usr_write"), "refused", "{}", show());
    assert_eq!(get("kernel"), boot.release, "{}", show());
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The results disk really is read back by mtools (so a missing file above is the guest's fault).
#[test]
fn results_disk_reads_back_with_mtools() {
    if !require_tool("mkfs.vfat") || !require_tool("mcopy") || !require_tool("mtype") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let results = ResultsDisk::create(&tmp.path().join("r.img"));
    assert_eq!(results.read("boot.txt"), None);
    let src = tmp.path().join("boot.txt");
    fs::write(&src, "a=1\nb = two words\n").expect("write");
    let (code, _, err) = run(Command::new("mcopy")
        .arg("-i")
        .arg(&results.image)
        .arg(&src)
        .arg("::/boot.txt"));
    assert_eq!(code, 0, "{err}");
    let kv = results.read_kv("boot.txt");
    assert_eq!(kv.get("a").map(String::as_str), Some("1"));
    assert_eq!(kv.get("b").map(String::as_str), Some("two words"));
}

/// The aarch64 side of the harness: `-M virt` with AAVMF in pflash (code read-only, a private
/// copy of the variable store) runs the firmware to its UEFI shell on the serial console.
#[test]
fn aavmf_firmware_starts_on_the_aarch64_virt_machine() {
    if !qemu::require_qemu(Arch::Aarch64, true) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut vm = VmBuilder::uefi(Arch::Aarch64)
        .memory_mib(1024)
        .start(&tmp.path().join("vm"));
    // No disk: the boot manager finds nothing and falls back to the built-in shell.
    vm.wait_for(
        "Shell>",
        &["ASSERT", "Synchronous Exception"],
        qemu::BOOT_TIMEOUT,
    );
    eprintln!("AAVMF reached its shell in {:.1?}", vm.elapsed());
}
