//! `imgbuild flash` onto loop devices, judged by tools nobody here wrote: sgdisk -v, sfdisk,
//! fsck.fat -n and e2fsck -fn per partition (through `losetup -o/--sizelimit`, as partition
//! scanning is off here), mtools, cmp, sha256sum, and bmaptool (which makes the block maps of the
//! synthetic images, so our parser reads a map it did not write).
//!
//! Every refusal is shown to leave the device's bytes unchanged *and* the same command to
//! succeed once the problem is gone.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::flash::{
    Loop, Mounted, assert_gpt_clean, bmap_ranges, flash, fsck_all, mtype, partitions, same_bytes,
    sha256, target_file,
};
use support::{require_tool, run};

const MIB: u64 = 1 << 20;

fn tools() -> bool {
    [
        "sgdisk",
        "sfdisk",
        "mkfs.vfat",
        "mkfs.ext4",
        "mcopy",
        "mtype",
        "bmaptool",
        "fsck.fat",
        "e2fsck",
        "losetup",
        "blkid",
    ]
    .iter()
    .all(|t| require_tool(t))
}

fn sh(script: &str, dir: &Path) {
    let (code, out, err) = run(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
    assert_eq!(code, 0, "{script}\n{out}{err}");
}

/// A 64 MiB disk image made with the standard tools: `gpt` — ESP (FAT) at 1 MiB + ext4; `mbr`
/// — FAT (0x0c) at 4 MiB + ext4 (another layout, for reused media). Filesystems are copied in
/// with `conv=sparse`, so their zeroed FAT tables are holes in the image and in the bmap
/// `bmaptool create` makes: exactly the stale-data trap of intel/bmap-tools#128.
fn tool_image(dir: &Path, name: &str, table: &str) -> PathBuf {
    let (fat_at, layout) = match table {
        "gpt" => (
            1,
            "sgdisk -n1:2048:+16M -t1:ef00 -n2:0:0 -t2:8300 \"$img\" >/dev/null",
        ),
        _ => (
            4,
            "printf 'label: dos\\nstart=8192, size=32768, type=c\\nstart=40960, type=83\\n' | sfdisk -q \"$img\"",
        ),
    };
    let root_at = fat_at + 16;
    sh(
        &format!(
            "img={name}.img; rm -f $img {name}.*; truncate -s 64M $img; {layout}
             truncate -s 16M {name}.fat; mkfs.vfat -n BOOT {name}.fat >/dev/null
             seq 1 20000 > {name}.txt; mcopy -i {name}.fat {name}.txt ::/big.txt
             dd if={name}.fat of=$img bs=1M seek={fat_at} conv=notrunc,sparse status=none
             mkdir -p {name}.root/etc; seq 1 50000 > {name}.root/etc/numbers; truncate -s 40M {name}.ext4; mkfs.ext4 -q -L root -d {name}.root {name}.ext4
             dd if={name}.ext4 of=$img bs=1M seek={root_at} conv=notrunc,sparse status=none
             bmaptool -q create $img -o $img.bmap"
        ),
        dir,
    );
    dir.join(format!("{name}.img"))
}

#[test]
fn sparse_flash_onto_reused_media_is_fsck_clean_and_moves_the_backup_gpt() {
    if !tools() {
        return;
    }
    let tmp = support::scratch();
    let d = tmp.path();
    let gpt = tool_image(d, "a", "gpt");
    let mbr = tool_image(d, "b", "mbr");
    // A target twice the image, full of random bytes.
    let file = target_file(&d.join("t.bin"), 128 * MIB, true);
    let t = Loop::attach(&file, &[]);
    let dev = t.path().to_str().unwrap();

    // Another image flashed before, then ours.
    let (code, out, err) = flash(d, &["b.img", dev, "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(fsck_all(t.path()), ["vfat", "ext4"]);
    let (code, out, err) = flash(d, &["a.img", dev, "--yes", "--progress", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("verified") && out.contains("safe to remove"),
        "{out}"
    );
    assert!(
        err.contains("\"step\":\"write\"") && err.contains("\"step\":\"verify\""),
        "{err}"
    );

    // The backup GPT sits at the end of the 128 MiB target; partitions as in the image.
    assert_gpt_clean(t.path());
    let (p_img, p_dev) = (partitions(&gpt), partitions(t.path()));
    assert_eq!(p_dev.len(), 2);
    assert_eq!(
        (p_dev[1].start, p_dev[1].size),
        (p_img[1].start, p_img[1].size)
    );
    assert_eq!(fsck_all(t.path()), ["vfat", "ext4"]);
    // Range by range, the mapped bytes are the image's (the first MiB differs: relocated GPT).
    for (s, e) in bmap_ranges(&d.join("a.img.bmap")) {
        let s = s.max(MIB);
        assert!(
            s >= e || same_bytes(&gpt, t.path(), s, e - s),
            "range {s}..{e} differs"
        );
    }
    assert_eq!(
        mtype(t.path(), MIB, "big.txt"),
        fs::read_to_string(d.join("a.txt")).unwrap()
    );
    drop(mbr);

    // The same image as .img.xz (decompressed on the fly, the .bmap found beside it), onto the
    // target refilled with random bytes.
    if !require_tool("xz") {
        return;
    }
    sh("xz -T0 -1 -k a.img && mv a.img a.raw", d);
    drop(t);
    target_file(&file, 128 * MIB, true);
    let t = Loop::attach(&file, &[]);
    let (code, out, err) = flash(d, &["a.img.xz", t.path().to_str().unwrap(), "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_gpt_clean(t.path());
    assert_eq!(fsck_all(t.path()), ["vfat", "ext4"]);
    for (s, e) in bmap_ranges(&d.join("a.img.bmap")) {
        let s = s.max(MIB);
        assert!(
            s >= e || same_bytes(&d.join("a.raw"), t.path(), s, e - s),
            "xz: range {s}..{e} differs"
        );
    }
}

/// A refusal: exit 2, the reason in the message, the target's bytes unchanged.
fn refused(d: &Path, args: &[&str], target: &Path, why: &str) {
    let before = sha256(target);
    let (code, out, err) = flash(d, args);
    assert_eq!(code, 2, "{args:?} was not refused: {out}{err}");
    assert!(err.contains(why), "{args:?}: expected {why:?} in: {err}");
    assert_eq!(sha256(target), before, "{args:?} changed the target");
}

fn succeeds(d: &Path, args: &[&str]) {
    let (code, out, err) = flash(d, args);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
}

#[test]
fn refusals_write_nothing_and_the_same_command_works_once_fixed() {
    if !tools() {
        return;
    }
    let tmp = support::scratch();
    let d = tmp.path();
    tool_image(d, "a", "gpt");

    // A regular file, without and with --allow-file.
    let f = target_file(&d.join("file.bin"), 64 * MIB, false);
    let fs_ = f.to_str().unwrap();
    refused(d, &["a.img", fs_, "--yes"], &f, "not a block device");
    succeeds(d, &["a.img", fs_, "--yes", "--allow-file"]);
    assert_eq!(fsck_all(&f), ["vfat", "ext4"]);
    // ... but never the image itself.
    let img = d.join("a.img");
    refused(
        d,
        &["a.img", img.to_str().unwrap(), "--yes", "--allow-file"],
        &img,
        "is stored on",
    );

    // No terminal and no --yes.
    let file = target_file(&d.join("t.bin"), 64 * MIB, true);
    let t = Loop::attach(&file, &[]);
    let dev = t.path().to_str().unwrap();
    refused(d, &["a.img", dev], t.path(), "no terminal");
    succeeds(d, &["a.img", dev, "--yes"]);

    // A partition of the target (its ext4 root) mounted through a loop over a byte range of it.
    let root = &partitions(t.path())[1];
    let window = Loop::window(t.path(), root.start, root.size, false);
    let m = Mounted::new(window.path(), &d.join("mnt"));
    refused(d, &["a.img", dev, "--yes"], t.path(), "is mounted at");
    let (code, out, err) = flash(d, &["--list"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(dev))
        .unwrap_or_else(|| panic!("{dev} not listed: {out}"));
    assert!(
        line.contains("loop") && out.contains("is mounted at"),
        "{out}"
    );
    drop(m);
    refused(d, &["a.img", dev, "--yes"], t.path(), "loop device");
    drop(window);
    succeeds(d, &["a.img", dev, "--yes"]);

    // A profile name whose image is not built, then built (here: put where the build puts it).
    refused(
        d,
        &["pi-worker", dev, "--yes"],
        t.path(),
        "imgbuild build pi-worker",
    );
    fs::create_dir_all(d.join("images/pi-worker")).unwrap();
    fs::copy(d.join("a.img"), d.join("images/pi-worker/pi-worker.img")).unwrap();
    succeeds(d, &["pi-worker", dev, "--yes"]);
    drop(t);

    // A read-only loop of the same file, then a writable one.
    let ro = Loop::attach(&file, &["-r"]);
    refused(
        d,
        &["a.img", ro.path().to_str().unwrap(), "--yes"],
        ro.path(),
        "read-only",
    );
    drop(ro);
    let rw = Loop::attach(&file, &[]);
    succeeds(d, &["a.img", rw.path().to_str().unwrap(), "--yes"]);
    drop(rw);

    // Too small, then large enough.
    let small = target_file(&d.join("small.bin"), 32 * MIB, true);
    let s = Loop::attach(&small, &[]);
    refused(
        d,
        &["a.img", s.path().to_str().unwrap(), "--yes"],
        s.path(),
        "smaller than the image",
    );
    drop(s);
    fs::OpenOptions::new()
        .write(true)
        .open(&small)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let s = Loop::attach(&small, &[]);
    succeeds(d, &["a.img", s.path().to_str().unwrap(), "--yes"]);
}

/// The disk holding `/`, whatever this machine calls it.
fn root_disk() -> Option<String> {
    let (_, src, _) = run(Command::new("findmnt").args(["-no", "SOURCE", "/"]));
    let src = src.trim();
    if !src.starts_with("/dev/") {
        return None;
    }
    let (_, parent, _) = run(Command::new("lsblk").args(["-no", "PKNAME"]).arg(src));
    let name = parent.lines().next().unwrap_or("").trim().to_string();
    Some(if name.is_empty() {
        src.to_string()
    } else {
        format!("/dev/{name}")
    })
}

#[test]
fn the_machines_own_root_disk_is_refused_even_with_every_allow_flag() {
    if !tools() {
        return;
    }
    let tmp = support::scratch();
    let d = tmp.path();
    tool_image(d, "a", "gpt");
    let Some(root) = root_disk() else {
        eprintln!("skipping: / is not on a block device here");
        return;
    };
    // --dry-run opens nothing for writing, so a bug here can never write the root disk (its
    // checksum cannot be compared: the running system writes it all the time).
    let all = ["--dry-run", "--yes", "--allow-large", "--allow-internal"];
    let (code, out, err) = flash(d, &[&["a.img", &root], &all[..]].concat());
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("running from") && err.contains("holds /"),
        "{err}"
    );
    // The same dry run on a loop target passes every check.
    let file = target_file(&d.join("t.bin"), 64 * MIB, false);
    let t = Loop::attach(&file, &[]);
    let before = sha256(t.path());
    let (code, out, err) = flash(
        d,
        &[&["a.img", t.path().to_str().unwrap()], &all[..]].concat(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(sha256(t.path()), before);
}

#[test]
fn hostile_block_maps_are_refused_before_writing() {
    if !tools() {
        return;
    }
    let tmp = support::scratch();
    let d = tmp.path();
    let img = tool_image(d, "a", "gpt");
    let good = fs::read_to_string(d.join("a.img.bmap")).unwrap();
    let file = target_file(&d.join("t.bin"), 64 * MIB, true);
    let t = Loop::attach(&file, &[]);
    let dev = t.path().to_str().unwrap();
    let ranges: Vec<&str> = good.split("<Range").skip(1).collect();
    assert!(ranges.len() >= 3, "{good}");
    let blocks = 64 * MIB / 4096;
    let first_range = format!("<Range{}", ranges[0].split("</Range>").next().unwrap());
    let cases: Vec<(String, &str)> = vec![
        (
            good.replacen("version=\"2.0\"", "version=\"9.0\"", 1),
            "version",
        ),
        (
            good.replacen("<BmapFileChecksum> ", "<BmapFileChecksum> f", 1),
            "checksum",
        ),
        (
            resign(&good.replacen(
                &first_range,
                &format!(
                    "<Range chksum=\"{}\"> {blocks}-{} ",
                    "0".repeat(64),
                    blocks + 5
                ),
                1,
            )),
            "past the end",
        ),
        (
            resign(&format!(
                "{}{first_range}</Range>\n{}",
                &good[..good.find("</BlockMap>").unwrap()],
                &good[good.find("</BlockMap>").unwrap()..]
            )),
            "overlaps or comes before",
        ),
        (
            resign(&good.replacen("<ChecksumType> sha256", "<ChecksumType> md5", 1)),
            "md5",
        ),
    ];
    for (text, why) in &cases {
        fs::write(d.join("a.img.bmap"), text).unwrap();
        refused(d, &["a.img", dev, "--yes"], t.path(), why);
    }
    // A wrong checksum of one range, the file re-signed: found while reading, exit 1, the
    // partition table wiped.
    let sum = ranges[1].split("chksum=\"").nth(1).unwrap()[..64].to_string();
    let flipped: String = sum.chars().rev().collect();
    fs::write(
        d.join("a.img.bmap"),
        resign(&good.replacen(&sum, &flipped, 1)),
    )
    .unwrap();
    let (code, out, err) = flash(d, &["a.img", dev, "--yes"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("does not match its block map") && err.contains("wiped"),
        "{err}"
    );
    let (code, out, _) = run(Command::new("sfdisk").arg("-d").arg(t.path()));
    assert!(
        code != 0 || !out.contains("start="),
        "a partition table survived: {out}"
    );
    // The good map works.
    fs::write(d.join("a.img.bmap"), &good).unwrap();
    succeeds(d, &["a.img", dev, "--yes"]);
    assert_eq!(fsck_all(t.path()), ["vfat", "ext4"]);
    let _ = img;
}

/// Re-signs a bmap (its `BmapFileChecksum`), as a hostile map would be.
fn resign(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let old = text
        .split("<BmapFileChecksum>")
        .nth(1)
        .unwrap()
        .split("</BmapFileChecksum>")
        .next()
        .unwrap()
        .trim()
        .to_string();
    let zeroed = text.replacen(&old, &"0".repeat(old.len()), 1);
    let sum = hex::encode(Sha256::digest(zeroed.as_bytes()));
    zeroed.replacen(&"0".repeat(old.len()), &sum, 1)
}

#[test]
fn amd64_node_flash_equals_build_node_and_survives_reuse_and_sigkill() {
    if !tools() {
        return;
    }
    let Some(base) = support::qemu::debian_base() else {
        return;
    };
    support::flash::node_flash(&base, false);
}
