//! A real Linux kernel uses an ext4 written by `imgbuild mkfs ext4` as its root filesystem.
//!
//! The Debian base tarball (`scripts/make-test-base`, from Debian's packages) plus a small
//! workload unit becomes an ext4 image via `imgbuild mkfs ext4 --from <tar>`. QEMU (TCG) boots
//! Debian's own kernel and initrd with that image as `root=` and runs systemd to multi-user; the
//! workload then writes hundreds of files (some large, one sparse), grows directories our writer
//! built (htree), renames and moves directories, deletes a large tree from the base, appends to a
//! base file, syncs and powers off. Afterwards `e2fsck -fn` must find nothing, and `debugfs`
//! must read back exactly what the guest wrote (checked with the guest's own SHA256SUMS).

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use support::qemu::{self, Arch, VmBuilder};
use support::{find_tool, imgbuild, require_tool, run};

/// What runs inside the guest, as root, once multi-user is reached.
const WORKLOAD: &str = r#"#!/bin/sh
# Exercises the ext4 root read-write, then records what it wrote for the host to check.
set -eu
trap 'echo "IMGBUILD-EXT4-WORKLOAD-FAILED at line $LINENO" > /dev/console' EXIT
d=/root/ext4-test
mkdir -p "$d/small" "$d/large" "$d/links"
grep -q ' / ext4 rw' /proc/mounts || { echo "root is not ext4 rw: $(grep ' / ' /proc/mounts)"; exit 1; }

# Hundreds of small files of many sizes (0 .. 20 KiB) in seven folders; `split` keeps the
# number of processes (slow under emulation) small.
head -c 6M /dev/urandom > /run/random
g=0
for size in 1 511 4096 4097 8191 12289 20011; do
    mkdir -p "$d/small/g$g"
    head -c $((size * 60)) /run/random | split -b "$size" -a 2 - "$d/small/g$g/f"
    : > "$d/small/g$g/empty"
    g=$((g + 1))
done
rm /run/random

# Large files (multi-extent), one sparse with data far past its holes.
head -c 32M /dev/urandom > "$d/large/random-32M"
head -c 5M /dev/urandom > "$d/large/random-5M"
dd if=/dev/urandom of="$d/large/sparse" bs=1M count=2 seek=64 status=none

# Grow a directory our writer built as an htree (/usr/bin) and one it built linear (/etc/skel).
i=0
while [ "$i" -lt 300 ]; do
    : > "/usr/bin/imgbuild-test-entry-$i"
    i=$((i + 1))
done
echo skel > /etc/skel/imgbuild-test

# Modify a file our writer wrote, in place and by appending.
echo "imgbuild-test 65000/tcp" >> /etc/services
cp /etc/services "$d/services.after"

# Delete a large tree of the base (frees many blocks and inodes the writer allocated).
rm -rf /usr/lib/modules/*/kernel/sound
# Rename a directory of the base, and move one across parents (updates "..").
mv /usr/share/perl5 /usr/share/perl5-renamed
mv "$d/small/g3" "$d/links/g3-moved"
rm -f "$d/small/g1/faa" "$d/small/g2/fab"
rmdir /usr/share/perl5-renamed/Debconf 2>/dev/null || rm -rf /usr/share/perl5-renamed/Debconf

# Links.
ln "$d/large/random-5M" "$d/links/hard-5M"
ln -s ../large/random-32M "$d/links/soft-32M"
ln -s "$(head -c 200 /dev/zero | tr '\0' x)" "$d/links/long-target"

cd "$d"
find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum > SHA256SUMS
sync
trap - EXIT
echo "IMGBUILD-EXT4-WORKLOAD-OK $(wc -l < SHA256SUMS) files" > /dev/console
"#;

const UNIT: &str = "[Unit]
Description=imgbuild ext4 write workload
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/imgbuild-ext4-workload
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

#[test]
fn kernel_boots_and_writes_to_an_ext4_root_made_by_imgbuild() {
    if !qemu::require_qemu(Arch::X86_64, false)
        || !require_tool("e2fsck")
        || !require_tool("debugfs")
        || !require_tool("sha256sum")
    {
        return;
    }
    let Some(base) = qemu::debian_base() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();

    // The root tree: the Debian base plus the workload and its enabled unit.
    let extra = work.join("extra");
    qemu::write_file(
        &extra,
        "usr/local/sbin/imgbuild-ext4-workload",
        WORKLOAD,
        0o755,
    );
    qemu::write_file(
        &extra,
        "etc/systemd/system/imgbuild-ext4-workload.service",
        UNIT,
        0o644,
    );
    let wants = extra.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).expect("creating wants");
    std::os::unix::fs::symlink(
        "/etc/systemd/system/imgbuild-ext4-workload.service",
        wants.join("imgbuild-ext4-workload.service"),
    )
    .expect("symlink");
    let root_tar = work.join("root.tar");
    qemu::tar_with_extra_files(&base, &extra, &root_tar);

    let image = work.join("root.ext4");
    let started = Instant::now();
    let (code, out, err) = run(imgbuild()
        .args(["mkfs", "ext4", "--from"])
        .arg(&root_tar)
        .arg("-o")
        .arg(&image)
        .args(["--size", "3G", "--label", "root", "--epoch", "1700000000"]));
    assert_eq!(code, 0, "imgbuild mkfs ext4 failed:\n{out}\n{err}");
    eprintln!("imgbuild mkfs ext4 of the base: {:.1?}", started.elapsed());
    e2fsck_clean(&image, "as written by imgbuild");

    let boot = qemu::extract_boot_files(&base, &work.join("bootfiles"));
    // fastboot / fsck.mode=skip: nothing may repair the image before the kernel writes to it.
    let cmdline = format!(
        "root=/dev/vda rw rootfstype=ext4 console={} fastboot fsck.mode=skip panic=-1 \
         systemd.show_status=1",
        Arch::X86_64.console()
    );
    let mut vm = VmBuilder::kernel(Arch::X86_64, &boot.kernel, Some(&boot.initrd), &cmdline)
        .disk(&image, "root")
        .start(&work.join("vm"));
    let line = vm.wait_for_poweroff(
        "IMGBUILD-EXT4-WORKLOAD-OK",
        &[
            "IMGBUILD-EXT4-WORKLOAD-FAILED",
            "Kernel panic",
            "EXT4-fs error",
            "You are in emergency mode",
        ],
        qemu::BOOT_TIMEOUT,
    );
    eprintln!(
        "guest: {line}; boot + workload + poweroff: {:.1?}",
        vm.elapsed()
    );
    drop(vm);

    // The oracles: e2fsprogs on the filesystem the kernel wrote to.
    e2fsck_clean(&image, "after the kernel wrote to it");

    let dump = work.join("dump");
    fs::create_dir_all(&dump).expect("creating dump folder");
    debugfs(&image, &format!("rdump /root/ext4-test {}", dump.display()));
    let tree = dump.join("ext4-test");
    let (code, out, err) = run(Command::new("sha256sum")
        .args(["--check", "--strict", "--quiet", "SHA256SUMS"])
        .current_dir(&tree));
    assert_eq!(
        code, 0,
        "files read back by debugfs differ from what the guest wrote:\n{out}{err}"
    );
    let sums = fs::read_to_string(tree.join("SHA256SUMS")).expect("SHA256SUMS");
    // 7 × (60 pieces + 1 empty) small files minus two deleted, 3 large (+1 hard link), the copy
    // of /etc/services.
    assert_eq!(sums.lines().count(), 7 * 61 - 2 + 3 + 1 + 1, "{sums}");
    assert_eq!(
        fs::metadata(tree.join("large/random-32M"))
            .expect("32M")
            .len(),
        32 << 20
    );
    assert_eq!(
        fs::read_link(tree.join("links/soft-32M")).expect("symlink"),
        Path::new("../large/random-32M")
    );
    assert_eq!(
        fs::read_link(tree.join("links/long-target"))
            .expect("slow symlink")
            .as_os_str()
            .len(),
        200
    );

    // Changes to what our writer wrote.
    let (services, _) = debugfs(&image, "cat /etc/services");
    assert!(
        services.ends_with("imgbuild-test 65000/tcp\n"),
        "{services}"
    );
    assert_eq!(
        services,
        fs::read_to_string(tree.join("services.after")).expect("copy")
    );
    let (usr_bin, _) = debugfs(&image, "ls -l /usr/bin");
    for i in [0, 150, 299] {
        assert!(
            usr_bin.contains(&format!("imgbuild-test-entry-{i}")),
            "entry {i} missing"
        );
    }
    let (_, gone) = debugfs(
        &image,
        &format!("stat /usr/lib/modules/{}/kernel/sound", boot.release),
    );
    assert!(
        gone.contains("File not found"),
        "sound/ still there: {gone}"
    );
    let (renamed, _) = debugfs(&image, "ls /usr/share/perl5-renamed");
    assert!(renamed.contains("Debian"), "{renamed}");
    let (moved, _) = debugfs(&image, "ls /root/ext4-test/links/g3-moved/..");
    assert!(
        moved.contains("hard-5M"),
        "'..' of the moved folder is wrong: {moved}"
    );
}

/// Asserts `e2fsck -fn` finds nothing to fix.
fn e2fsck_clean(image: &Path, when: &str) {
    let e2fsck = find_tool("e2fsck").expect("e2fsck");
    let (code, out, err) = run(Command::new(e2fsck).arg("-fn").arg(image));
    // With -n, e2fsck answers "no" and may still exit 0: any question is a finding too (and
    // a journal needing recovery means the guest did not unmount cleanly).
    let findings = out.contains('?') || err.contains("journal recovery");
    assert!(
        code == 0 && !findings,
        "e2fsck -fn {when}: exit {code}\n{out}\n{err}"
    );
}

/// Runs one debugfs request (read-only); returns (stdout, stderr). debugfs exits 0 even when
/// a request fails and reports that on stderr after its banner line.
fn debugfs(image: &Path, request: &str) -> (String, String) {
    let debugfs = find_tool("debugfs").expect("debugfs");
    let (code, out, err) = run(Command::new(debugfs).arg("-R").arg(request).arg(image));
    assert_eq!(code, 0, "debugfs -R {request:?}: {err}");
    (out, err)
}
