//! `imgbuild mkfs` end to end: folders and tarballs in, images judged by e2fsck, debugfs,
//! fsck.fat and mtools; reproducible whatever the host's TZ, locale, umask and working folder;
//! bad input refused with exit 2 and nothing left behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{imgbuild, run};

fn fixture(name: &str) -> PathBuf {
    support::tests_dir().join("fixtures/fs").join(name)
}

/// A small folder with every kind FAT and ext4 share, plus a symlink for ext4.
fn source_dir(root: &Path, with_symlink: bool) -> PathBuf {
    let src = root.join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("config.txt"), "arm_64bit=1\n").unwrap();
    std::fs::write(src.join("sub/Long File Name.txt"), "long\n").unwrap();
    std::fs::write(src.join("sub/deeper/blob.bin"), vec![7u8; 100_000]).unwrap();
    std::fs::write(src.join("empty"), "").unwrap();
    if with_symlink {
        std::os::unix::fs::symlink("../config.txt", src.join("sub/link")).unwrap();
    }
    src
}

fn sha(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn mkfs(args: &[&str], out: &Path, from: &Path) -> (i32, String, String) {
    run(imgbuild()
        .env_remove("SOURCE_DATE_EPOCH")
        .arg("mkfs")
        .args(args)
        .arg("--from")
        .arg(from)
        .arg("-o")
        .arg(out))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn same_input_same_bytes_whatever_the_host() {
    let dir = tempfile::tempdir().unwrap();
    for (fs, symlink) in [("ext4", true), ("fat", false)] {
        let src = source_dir(&dir.path().join(fs), symlink);
        let mut shas = Vec::new();
        for (i, (tz, lc, umask)) in [
            ("UTC", "C", "022"),
            ("Asia/Tokyo", "de_DE.UTF-8", "077"),
            ("America/New_York", "C.UTF-8", "002"),
        ]
        .iter()
        .enumerate()
        {
            let cwd = dir.path().join(format!("{fs}-cwd-{i}"));
            std::fs::create_dir(&cwd).unwrap();
            let out = cwd.join("out.img");
            let script = format!(
                "umask {umask} && exec \"$0\" mkfs {fs} --from \"$1\" -o out.img --label BOOT --epoch 1700000000"
            );
            let (code, _, err) = run(Command::new("sh")
                .current_dir(&cwd)
                .env("TZ", tz)
                .env("LC_ALL", lc)
                .env_remove("SOURCE_DATE_EPOCH")
                .arg("-c")
                .arg(script)
                .arg(env!("CARGO_BIN_EXE_imgbuild"))
                .arg(&src));
            assert_eq!(code, 0, "{fs}: {err}");
            shas.push(sha(&out));
        }
        assert!(shas.windows(2).all(|w| w[0] == w[1]), "{fs}: {shas:?}");
        // SOURCE_DATE_EPOCH is the default epoch; another epoch gives other bytes.
        let sde = dir.path().join(format!("{fs}-sde.img"));
        let (code, _, err) = run(imgbuild()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["mkfs", fs, "--label", "BOOT", "--from"])
            .arg(&src)
            .arg("-o")
            .arg(&sde));
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            sha(&sde),
            shas[0],
            "{fs}: SOURCE_DATE_EPOCH must act like --epoch"
        );
        let other = dir.path().join(format!("{fs}-other.img"));
        let (code, _, err) = mkfs(
            &[fs, "--label", "BOOT", "--epoch", "1700000001"],
            &other,
            &src,
        );
        assert_eq!(code, 0, "{err}");
        assert_ne!(
            sha(&other),
            shas[0],
            "{fs}: another epoch must change the bytes"
        );
    }
}

#[test]
fn ext4_from_a_folder_is_root_owned_and_clean() {
    if !support::require_tool("e2fsck") || !support::require_tool("debugfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_dir(dir.path(), true);
    let img = dir.path().join("root.img");
    let (code, _, err) = mkfs(
        &[
            "ext4",
            "--label",
            "root",
            "--epoch",
            "1700000000",
            "--owner",
            "0:0",
        ],
        &img,
        &src,
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(Command::new(support::find_tool("e2fsck").unwrap())
        .arg("-fn")
        .arg(&img));
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = run(Command::new(support::find_tool("debugfs").unwrap())
        .args(["-R", "stat /sub/deeper/blob.bin"])
        .arg(&img));
    assert!(out.contains("User:     0   Group:     0"), "{out}");
    let (_, out, _) = run(Command::new(support::find_tool("debugfs").unwrap())
        .args(["-R", "stat /sub/link"])
        .arg(&img));
    assert!(out.contains("Fast link dest: \"../config.txt\""), "{out}");
    // Sparse: the free space is a hole.
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&img).unwrap();
    assert!(md.blocks() * 512 < md.len() / 2, "image is not sparse");
}

#[test]
fn ext4_from_tarballs_keeps_owners_devices_and_caps() {
    if !support::require_tool("e2fsck") || !support::require_tool("debugfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = fixture("rootfs-pax.tar");
    let bytes = std::fs::read(&plain).unwrap();
    // The same archive compressed three ways must give the same image.
    let gz = dir.path().join("rootfs.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &bytes).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let xz = dir.path().join("rootfs.tar.xz");
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    std::io::Write::write_all(&mut enc, &bytes).unwrap();
    std::fs::write(&xz, enc.finish().unwrap()).unwrap();
    let zst = dir.path().join("rootfs.tar.zst");
    std::fs::write(&zst, zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
    let mut shas = Vec::new();
    for (i, src) in [&plain, &gz, &xz, &zst].into_iter().enumerate() {
        let out_dir = dir.path().join(format!("out{i}"));
        std::fs::create_dir(&out_dir).unwrap();
        let img = out_dir.join("root.img");
        let (code, _, err) = mkfs(
            &["ext4", "--epoch", "1700000000", "--size", "64M"],
            &img,
            src,
        );
        assert_eq!(code, 0, "{}: {err}", src.display());
        assert_eq!(
            files_in(&out_dir),
            ["root.img"],
            "scratch files must be gone"
        );
        shas.push(sha(&img));
    }
    assert!(shas.windows(2).all(|w| w[0] == w[1]), "{shas:?}");
    let img = dir.path().join("out0/root.img");
    let (code, out, err) = run(Command::new(support::find_tool("e2fsck").unwrap())
        .arg("-fn")
        .arg(&img));
    assert_eq!(code, 0, "{out}{err}");
    let debugfs = |req: &str| {
        run(Command::new(support::find_tool("debugfs").unwrap())
            .args(["-R", req])
            .arg(&img))
        .1
    };
    assert!(debugfs("stat /dev/null").contains("Device major/minor number: 01:03"));
    assert!(debugfs("stat /dev/sda").contains("Type: block special"));
    assert!(debugfs("stat /run/initctl").contains("Type: FIFO"));
    let notes = debugfs("stat /home/user/notes.txt");
    assert!(notes.contains("User:  1000   Group:  1000"), "{notes}");
    let ping = debugfs("stat /usr/bin/ping");
    assert!(
        ping.contains("Mode:  04755") && ping.contains("Links: 2"),
        "{ping}"
    );
    let ea = debugfs("ea_get /usr/bin/ping security.capability");
    assert!(ea.contains("01 00 00 02 00 20 00 00"), "{ea}");
    let shadow = debugfs("stat /etc/shadow");
    assert!(
        shadow.contains("Group:    42") && shadow.contains("Mode:  0640"),
        "{shadow}"
    );
    // Times: clamped to the epoch (the archive's 2020 times are older and kept).
    assert!(shadow.contains("mtime: 0x5f5e1000"), "{shadow}");
}

#[test]
fn fat_image_reads_back_with_mtools() {
    if !support::require_tool("fsck.fat") || !support::require_tool("mcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_dir(dir.path(), false);
    let img = dir.path().join("boot.img");
    let (code, _, err) = mkfs(
        &[
            "fat",
            "--label",
            "boot",
            "--uuid",
            "DEAD-BEEF",
            "--epoch",
            "1700000000",
        ],
        &img,
        &src,
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(Command::new(support::find_tool("fsck.fat").unwrap())
        .args(["-n", "-V", "-v"])
        .arg(&img));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("32 bit entries"), "{out}");
    let back = dir.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let (code, _, err) = run(Command::new(support::find_tool("mcopy").unwrap())
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-n", "-i"])
        .arg(&img)
        .arg("::/")
        .arg(&back));
    assert_eq!(code, 0, "{err}");
    for f in [
        "config.txt",
        "sub/Long File Name.txt",
        "sub/deeper/blob.bin",
        "empty",
    ] {
        assert_eq!(
            std::fs::read(back.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    let (_, out, _) = run(Command::new(support::find_tool("mdir").unwrap())
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&img)
        .arg("::/"));
    assert!(
        out.contains("DEAD-BEEF") && out.contains("is BOOT"),
        "{out}"
    );
}

/// Every refusal: exit 2, a message that says what and where, no output file, no scratch file.
#[test]
fn bad_input_exits_2_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_dir(&dir.path().join("ok"), true);
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(big.join("blob"), vec![1u8; 40 << 20]).unwrap();
    let cases: Vec<(Vec<&str>, PathBuf, &str)> = vec![
        (vec!["ext4", "--size", "8M"], big.clone(), "at least"),
        (vec!["fat", "--size", "40M"], big.clone(), "at least"),
        (
            vec!["fat"],
            src.clone(),
            "/sub/link: FAT cannot store a symlink",
        ),
        (
            vec!["ext4", "--label", "a-label-longer-than-16"],
            src.clone(),
            "longer than 16 bytes",
        ),
        (vec!["ext4"], fixture("hostile-dotdot.tar"), "../../escape"),
        (
            vec!["ext4"],
            fixture("hostile-parent-file.tar"),
            "/etc is not a directory",
        ),
        (
            vec!["ext4"],
            fixture("name-too-long.tar"),
            "longer than 255 bytes",
        ),
        (vec!["ext4"], fixture("truncated.tar"), "truncated"),
        (vec!["ext4"], fixture("bad-checksum.tar"), "checksum"),
        (vec!["ext4"], dir.path().join("missing"), "missing"),
        (vec!["ext4", "--size", "lots"], src.clone(), "--size"),
    ];
    for (i, (args, from, expect)) in cases.iter().enumerate() {
        let out_dir = dir.path().join(format!("out{i}"));
        std::fs::create_dir(&out_dir).unwrap();
        let (code, _, err) = mkfs(args, &out_dir.join("x.img"), from);
        assert_eq!(code, 2, "{args:?} {}: {err}", from.display());
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in:\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            files_in(&out_dir).is_empty(),
            "{args:?} left {:?}",
            files_in(&out_dir)
        );
    }
}

#[test]
fn never_overwrites_a_file_it_did_not_create() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_dir(dir.path(), true);
    let img = dir.path().join("precious.img");
    std::fs::write(&img, "mine").unwrap();
    let (code, _, err) = mkfs(&["ext4"], &img, &src);
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&img).unwrap(), "mine");
    let (code, _, err) = mkfs(&["ext4", "--force"], &img, &src);
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(&img).unwrap(), b"mine");
}

/// A file the user cannot read is named in the error. (Root reads everything: skipped there.)
#[test]
fn unreadable_source_file_is_named() {
    if running_as_root() {
        eprintln!("skipping: running as root, which can read a mode-000 file");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_dir(dir.path(), true);
    let secret = src.join("sub/secret");
    std::fs::write(&secret, "x").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let (code, _, err) = mkfs(&["ext4"], &out_dir.join("x.img"), &src);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sub/secret"), "{err}");
    assert!(files_in(&out_dir).is_empty());
}

/// A file we create is owned by our effective uid.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::NamedTempFile::new().unwrap();
    probe.as_file().metadata().unwrap().uid() == 0
}

/// A tarball of `levels` nested folders `d/d/…/`, written by Python's tarfile (pax format).
fn nested_tar(path: &Path, levels: usize) {
    let (code, _, err) = run(Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, tarfile\n\
             t = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n\
             p = ''\n\
             for i in range(int(sys.argv[2])):\n\
             \x20   p += 'd/'\n\
             \x20   ti = tarfile.TarInfo(p); ti.type = tarfile.DIRTYPE; ti.mode = 0o755\n\
             \x20   t.addfile(ti)\n\
             t.close()\n",
        )
        .arg(path)
        .arg(levels.to_string()));
    assert_eq!(code, 0, "{err}");
}

/// Thousands of nested folders (each tar entry carries its whole path): refused at Linux's
/// PATH_MAX with a short message, instead of work quadratic in the depth; nothing is written.
#[test]
fn deeply_nested_tarball_is_refused_at_path_max() {
    if !support::require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("nested.tar");
    nested_tar(&tar, 3000);
    let out = dir.path().join("root.ext4");
    let (code, _, err) = mkfs(&["ext4"], &out, &tar);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("PATH_MAX"), "{err}");
    assert!(
        err.len() < 2000,
        "the error quotes a short part of the path: {} bytes",
        err.len()
    );
    assert!(
        files_in(dir.path()) == ["nested.tar"],
        "{:?}",
        files_in(dir.path())
    );
    // The same shape within the limit is read.
    let ok = dir.path().join("ok.tar");
    nested_tar(&ok, 1000);
    let (code, _, err) = mkfs(&["ext4"], &out, &ok);
    assert_eq!(code, 0, "{err}");
}

/// A tarball holding `mib` MiB of zeros in one file, compressed by `tool` (`xz` or `gzip`): a
/// few KiB on disk. Made by Python's tarfile and the tool itself.
fn zero_tarball(dir: &Path, tool: &str, mib: u64) -> PathBuf {
    let tar = dir.join("zeros.tar");
    let (code, _, err) = run(Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, tarfile, io\n\
             t = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n\
             n = int(sys.argv[2]) << 20\n\
             ti = tarfile.TarInfo('zeros'); ti.size = n; ti.mode = 0o644\n\
             t.addfile(ti, io.BytesIO(bytes(n)))\n\
             t.close()\n",
        )
        .arg(&tar)
        .arg(mib.to_string()));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(Command::new(tool).arg("-f").arg(&tar));
    assert_eq!(code, 0, "{err}");
    let ext = if tool == "xz" { "tar.xz" } else { "tar.gz" };
    dir.join(format!("zeros.{ext}"))
}

/// Decompression bombs: an `.xz` whose index declares more than the limit is refused before a
/// byte is written; a gzip stream (no trustworthy size) stops when it passes the limit. Either
/// way exit 2 names the input and the limit, and nothing is left in the output folder; the same
/// input within the limit builds a clean filesystem.
#[test]
fn decompression_bombs_stop_at_the_limit_and_leave_nothing() {
    for t in ["python3", "xz", "gzip", "e2fsck"] {
        if !support::require_tool(t) {
            return;
        }
    }
    for (tool, says) in [("xz", "it declares 671"), ("gzip", "stopped after")] {
        let dir = tempfile::tempdir().unwrap();
        let src = zero_tarball(dir.path(), tool, 64);
        assert!(std::fs::metadata(&src).unwrap().len() < 1 << 20);
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        let out = dir.path().join("root.ext4");
        let (code, _, err) = mkfs(&["ext4", "--max-unpacked", "32M"], &out, &src);
        assert_eq!(code, 2, "{tool}: {err}");
        assert!(
            err.contains(&name) && err.contains(says) && err.contains("at most 33554432 bytes"),
            "{tool}: {err}"
        );
        assert_eq!(files_in(dir.path()), [name], "{tool}");
        let (code, _, err) = mkfs(&["ext4", "--max-unpacked", "auto"], &out, &src);
        assert_eq!(code, 0, "{tool}: {err}");
        let (code, o, e) = run(Command::new("e2fsck").arg("-fn").arg(&out));
        assert_eq!(code, 0, "{o}{e}");
    }
}

/// A bare ext4 image as `.xz` takes the other path (a scratch copy, then the filesystem reader):
/// the same limit applies, and the copy keeps the image's free space as holes.
#[test]
fn a_compressed_filesystem_base_obeys_the_same_limit() {
    for t in ["mke2fs", "xz"] {
        if !support::require_tool(t) {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_dir(dir.path(), true);
    let base = dir.path().join("base.ext4");
    let (code, _, err) = run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-E", "root_owner=0:0", "-d"])
        .arg(&src)
        .arg(&base)
        .arg("96M"));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(Command::new("xz").arg("-T1").arg(&base));
    assert_eq!(code, 0, "{err}");
    let xz = dir.path().join("base.ext4.xz");
    let out = dir.path().join("root.ext4");
    let (code, _, err) = mkfs(&["ext4", "--max-unpacked", "64M"], &out, &xz);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("base.ext4.xz") && err.contains("declares 100663296"),
        "{err}"
    );
    assert!(!out.exists());
    let (code, _, err) = mkfs(&["ext4", "--max-unpacked", "96M"], &out, &xz);
    assert_eq!(code, 0, "{err}");
}

/// `imgbuild`'s reading of an `.xz` index (the declared size) agrees with `xz --list` on
/// multi-stream files with stream padding, and on xz's own multi-block output.
#[test]
fn declared_xz_sizes_agree_with_xz_list() {
    if !support::require_tool("xz") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut joined = Vec::new();
    for (i, (len, args)) in [(3_000_000usize, "-T1"), (5 << 20, "--block-size=1MiB")]
        .into_iter()
        .enumerate()
    {
        let p = dir.path().join(format!("part{i}"));
        let data: Vec<u8> = (0..len).map(|j| (j * 31 % 253) as u8).collect();
        std::fs::write(&p, data).unwrap();
        let (code, _, err) = run(Command::new("xz").args(["-0", args]).arg(&p));
        assert_eq!(code, 0, "{err}");
        joined.extend(std::fs::read(dir.path().join(format!("part{i}.xz"))).unwrap());
        joined.extend([0u8; 8]);
    }
    let cat = dir.path().join("joined.xz");
    std::fs::write(&cat, &joined).unwrap();
    let (code, list, err) = run(Command::new("xz").args(["--robot", "--list"]).arg(&cat));
    assert_eq!(code, 0, "{err}");
    // `totals  streams blocks compressed uncompressed ...`
    let totals: Vec<&str> = list
        .lines()
        .find(|l| l.starts_with("totals"))
        .unwrap()
        .split('\t')
        .collect();
    let ours = imgbuild::disk::xz::declared_size(&mut std::fs::File::open(&cat).unwrap()).unwrap();
    assert_eq!(ours, Some(totals[4].parse::<u64>().unwrap()), "{list}");
}

/// A base ext4 with a sparse file larger than the filesystem keeps it a hole in our image; a
/// size past the reader's bound (a claimed terabyte in a 64 MiB filesystem) is refused naming
/// the file, with nothing written.
#[test]
fn sparse_files_of_a_base_stay_holes_and_absurd_sizes_are_refused() {
    for t in ["mke2fs", "debugfs", "e2fsck", "truncate"] {
        if !support::require_tool(t) {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for (size, ok) in [("512M", true), ("1T", false)] {
        let src = dir.path().join(format!("src-{size}"));
        std::fs::create_dir_all(&src).unwrap();
        let (code, _, err) = run(Command::new("truncate")
            .args(["-s", size])
            .arg(src.join("big")));
        assert_eq!(code, 0, "{err}");
        let base = dir.path().join(format!("base-{size}.ext4"));
        let (code, _, err) = run(Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-b", "4096", "-d"])
            .arg(&src)
            .arg(&base)
            .arg("64M"));
        assert_eq!(code, 0, "{err}");
        let out = dir.path().join(format!("out-{size}.ext4"));
        let (code, _, err) = mkfs(&["ext4"], &out, &base);
        if !ok {
            assert_eq!(code, 2, "{err}");
            assert!(
                err.contains("/big") && err.contains("1099511627776"),
                "{err}"
            );
            assert!(!out.exists());
            continue;
        }
        assert_eq!(code, 0, "{err}");
        let (_, stat, _) = run(Command::new("debugfs").args(["-R", "stat /big"]).arg(&out));
        assert!(stat.contains("Size: 536870912"), "{stat}");
        assert!(stat.contains("Blockcount: 0"), "a hole, not zeros: {stat}");
        let (code, o, e) = run(Command::new("e2fsck").arg("-fn").arg(&out));
        assert_eq!(code, 0, "{o}{e}");
    }
}
