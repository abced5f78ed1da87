//! Base readers against images made by the reference tools (mkfs.ext4 -d, mkfs.vfat + mcopy,
//! sfdisk, sgdisk): every entry read back is compared with the folder that went in.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use imgbuild::source::raw::{self, FsKind, RawError, Scheme};
use imgbuild::tree::{Kind, Tree, TreePath};

fn tools() -> bool {
    ["mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk", "sgdisk"]
        .iter()
        .all(|t| support::require_tool(t))
}

/// Runs tests/fixtures/inputs/make-base-image.sh into a fresh folder.
fn make(table: &str, extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(table);
    let script = support::tests_dir().join("fixtures/inputs/make-base-image.sh");
    let (code, _, err) = support::run(
        Command::new("sh")
            .arg(script)
            .arg(&out)
            .arg(table)
            .args(extra)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"),
    );
    assert_eq!(code, 0, "make-base-image.sh failed: {err}");
    (dir, out)
}

fn read_content(tree: &Tree, path: &TreePath) -> Vec<u8> {
    match &tree.get(path).unwrap().kind {
        Kind::File(c) => c.read_all().unwrap_or_else(|e| panic!("{path}: {e}")),
        k => panic!("{path} is a {}", k.name()),
    }
}

/// Compares every entry of the host folder `src` with `tree`: type, permissions, owner, mtime,
/// symlink target and content. `fat` relaxes what FAT cannot store.
fn compare(src: &Path, tree: &Tree, fat: bool) -> usize {
    let mut host = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            let rel = p
                .strip_prefix(src)
                .unwrap()
                .as_os_str()
                .as_encoded_bytes()
                .to_vec();
            host.insert(TreePath::new(rel).unwrap(), (p, m));
        }
    }
    let read: Vec<&TreePath> = tree
        .iter()
        .map(|(p, _)| p)
        .filter(|p| !p.is_root())
        .collect();
    let ours: Vec<&TreePath> = host.keys().collect();
    let read_names: Vec<String> = read.iter().map(|p| p.display()).collect();
    let host_names: Vec<String> = ours.iter().map(|p| p.display()).collect();
    let read_names: Vec<String> = read_names
        .into_iter()
        .filter(|n| fat || n != "/lost+found")
        .collect();
    assert_eq!(read_names, host_names, "the same entries");
    for (path, (hp, m)) in &host {
        let e = tree.get(path).unwrap();
        let ft = m.file_type();
        if fat {
            assert_eq!((e.uid, e.gid), (0, 0));
            assert_eq!(e.mode, if ft.is_dir() { 0o755 } else { 0o644 }, "{path}");
            if !ft.is_dir() {
                // FAT keeps even seconds.
                assert_eq!(e.mtime / 2, m.mtime() / 2, "{path} mtime");
            }
        } else {
            assert_eq!(e.mode, m.mode() & 0o7777, "{path} mode");
            assert_eq!((e.uid, e.gid), (m.uid(), m.gid()), "{path} owner");
            assert_eq!(e.mtime, m.mtime(), "{path} mtime");
        }
        match &e.kind {
            Kind::Dir => assert!(ft.is_dir(), "{path}"),
            Kind::File(c) => {
                assert!(ft.is_file(), "{path}");
                assert_eq!(c.len, m.len(), "{path} size");
                let mut ours = c.open().unwrap();
                let mut theirs = fs::File::open(hp).unwrap();
                let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
                loop {
                    let n = read_full(&mut ours, &mut a);
                    let k = read_full(&mut theirs, &mut b);
                    assert_eq!(a[..n], b[..k], "{path} content");
                    if n == 0 {
                        break;
                    }
                }
            }
            Kind::Symlink(t) => {
                assert!(ft.is_symlink(), "{path}");
                assert_eq!(
                    t.as_slice(),
                    fs::read_link(hp).unwrap().as_os_str().as_encoded_bytes()
                );
            }
            Kind::Fifo => assert!(ft.is_fifo(), "{path}"),
            k => panic!("{path}: unexpected {}", k.name()),
        }
    }
    host.len()
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

#[test]
fn mbr_fat_ext4_image_reads_back_exactly() {
    if !tools() {
        return;
    }
    let (_d, out) = make("mbr", &[]);
    let img = raw::read_image(&out.join("disk.img"), None, None).unwrap();
    assert_eq!(img.scheme, Scheme::Mbr);
    let parts: Vec<(u32, FsKind, &str)> = img
        .partitions
        .iter()
        .map(|p| (p.number, p.fs, p.label.as_str()))
        .collect();
    assert_eq!(
        parts,
        [(1, FsKind::Fat, "BOOTFS"), (2, FsKind::Ext4, "rootfs")]
    );
    let (bi, boot) = img.boot.as_ref().unwrap();
    assert_eq!(*bi, 0);
    assert_eq!(img.root.0, 1);
    assert_eq!(compare(&out.join("boot"), boot, true), 8);
    assert!(compare(&out.join("root"), &img.root.1, false) >= 20);
    // Symlinks are kept verbatim, never followed.
    let esc = img
        .root
        .1
        .get(&TreePath::new("/etc/escaping-link").unwrap())
        .unwrap();
    assert!(matches!(&esc.kind, Kind::Symlink(t) if t == b"../../../../../../etc/shadow"));
    let suid = img
        .root
        .1
        .get(&TreePath::new("/usr/bin/suid").unwrap())
        .unwrap();
    assert_eq!(suid.mode, 0o4755);
    assert_eq!(
        img.root
            .1
            .get(&TreePath::new("/tmp").unwrap())
            .unwrap()
            .mode,
        0o1777
    );
    let sparse = read_content(&img.root.1, &TreePath::new("/var/sparse").unwrap());
    assert_eq!(&sparse[1_500_000..1_500_006], b"middle");
}

#[test]
fn gpt_image_selects_by_type_and_numbers_by_slot() {
    if !tools() {
        return;
    }
    let (_d, out) = make("gpt", &[]);
    let disk = out.join("disk.img");
    let img = raw::read_image(&disk, None, None).unwrap();
    assert_eq!(img.scheme, Scheme::Gpt);
    let numbers: Vec<u32> = img.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 15], "partition numbers are GPT slots");
    let boot = &img.partitions[img.boot.as_ref().unwrap().0];
    assert_eq!((boot.number, boot.name.as_str()), (15, "ESP"));
    assert_eq!(img.partitions[img.root.0].number, 1);
    compare(&out.join("boot"), &img.boot.as_ref().unwrap().1, true);
    compare(&out.join("root"), &img.root.1, false);

    // Overrides by number and by GPT name / label; bad overrides list the partitions.
    let img = raw::read_image(&disk, Some("15"), Some("root")).unwrap();
    assert_eq!(img.partitions[img.root.0].number, 1);
    let err = raw::read_image(&disk, Some("firmware"), None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("base.boot-partition") && msg.contains("15 (FAT"),
        "{msg}"
    );
    let err = raw::read_image(&disk, None, Some("15")).unwrap_err();
    assert!(err.to_string().contains("not ext4"), "{err}");
}

fn corrupt(path: &Path, at: u64, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn damaged_tables_are_clear_errors() {
    if !tools() {
        return;
    }
    let (_d, out) = make("gpt", &[]);
    let disk = out.join("disk.img");
    let pristine = fs::read(&disk).unwrap();

    // A flipped byte in the primary GPT header: CRC mismatch.
    corrupt(&disk, 512 + 40, &[0xFF]);
    let err = raw::read_image(&disk, None, None).unwrap_err();
    assert!(matches!(err, RawError::Gpt { .. }), "{err}");
    assert!(err.to_string().contains("CRC"), "{err}");

    // Truncated: the backup GPT and the end of the root partition are gone.
    fs::write(&disk, &pristine[..60 << 20]).unwrap();
    let err = raw::read_image(&disk, None, None).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");

    // MBR: a partition that reaches past the end of the image.
    let (_d2, mbr) = make("mbr", &[]);
    let disk = mbr.join("disk.img");
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(50 << 20).unwrap();
    let err = raw::read_image(&disk, None, None).unwrap_err();
    assert!(matches!(err, RawError::PastEnd { number: 2, .. }), "{err}");

    // Not a disk image at all.
    fs::write(&disk, vec![0x42; 1 << 20]).unwrap();
    let err = raw::read_image(&disk, None, None).unwrap_err();
    assert!(matches!(err, RawError::NoTable { .. }), "{err}");
}

/// The byte offset of an inode's `i_block` (extent tree root), from debugfs.
fn i_block_offset(fs_image: &Path, path: &str, block_size: u64) -> u64 {
    let (_, out, _) = support::run(
        Command::new(support::find_tool("debugfs").unwrap())
            .arg("-R")
            .arg(format!("imap {path}"))
            .arg(fs_image),
    );
    // "Inode 12 is part of block group 0\n\tlocated at block 35, offset 0x0b00"
    let block: u64 = out
        .split("located at block ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let off = out.split("offset 0x").nth(1).unwrap().trim();
    let off = u64::from_str_radix(off, 16).unwrap();
    block * block_size + off + 40
}

#[test]
fn corrupt_ext4_is_an_error_not_a_panic() {
    if !tools() || !support::require_tool("debugfs") {
        return;
    }
    // Without metadata checksums, so the damage reaches the extent parser.
    let (_d, out) = make("mbr", &["-O", "^metadata_csum", "-b", "4096"]);
    let disk = out.join("disk.img");
    let root_at = 83968 * 512;
    let file_extents = i_block_offset(
        &out.join("root.ext4"),
        "/usr/lib/deep/er/still/data.txt",
        4096,
    );
    let dir_extents = i_block_offset(&out.join("root.ext4"), "/usr/lib/deep/er", 4096);
    let pristine = fs::read(&disk).unwrap();

    // A file whose extent tree is garbage: the tree is read, the content is an error.
    corrupt(
        &disk,
        root_at + file_extents,
        &[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff],
    );
    let img = raw::read_image(&disk, None, None).unwrap();
    let p = TreePath::new("/usr/lib/deep/er/still/data.txt").unwrap();
    match &img.root.1.get(&p).unwrap().kind {
        Kind::File(c) => assert!(c.read_all().is_err()),
        k => panic!("{}", k.name()),
    }

    // A directory whose extent tree is garbage: reading the tree fails, naming the folder.
    fs::write(&disk, &pristine).unwrap();
    corrupt(&disk, root_at + dir_extents, &[0x00, 0x00, 0x00, 0x00]);
    let err = raw::read_image(&disk, None, None).unwrap_err();
    assert!(err.to_string().contains("/usr/lib/deep/er"), "{err}");

    // A superblock with impossible geometry.
    fs::write(&disk, &pristine).unwrap();
    corrupt(&disk, root_at + 1024 + 24, &[0x40, 0, 0, 0]); // s_log_block_size = 64
    let err = raw::read_image(&disk, None, None).unwrap_err();
    assert!(
        matches!(err, RawError::Filesystem { number: 2, .. }),
        "{err}"
    );
}

/// The ext4 reader against the real thing: `/usr` of this machine, through mkfs.ext4 -d.
#[test]
fn ext4_of_usr_matches_every_file() {
    if !support::require_tool("mkfs.ext4") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fsimg = dir.path().join("usr.ext4");
    // Concurrent package installs may change /usr while we run: entries changed after this
    // moment are not compared.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 2;
    let (code, _, err) = support::run(
        Command::new(support::find_tool("mkfs.ext4").unwrap())
            .args(["-q", "-F", "-E", "root_owner=0:0", "-d", "/usr"])
            .arg(&fsimg)
            .arg("12G"),
    );
    assert_eq!(code, 0, "{err}");
    let size = fs::metadata(&fsimg).unwrap().len();
    let part = raw::Partition {
        number: 1,
        offset: 0,
        size,
        type_id: raw::PartTypeId::Mbr(0x83),
        name: String::new(),
        fs: FsKind::Ext4,
        label: String::new(),
    };
    let tree = raw::read_ext4(&fsimg, &part).unwrap();
    let src = Path::new("/usr");
    let mut compared = 0usize;
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if m.ctime() >= started || m.mtime() >= started {
                continue;
            }
            if m.is_dir() {
                stack.push(p.clone());
            }
            let rel = p
                .strip_prefix(src)
                .unwrap()
                .as_os_str()
                .as_encoded_bytes()
                .to_vec();
            let tp = TreePath::new(rel).unwrap();
            let e = tree.get(&tp).unwrap_or_else(|| panic!("{tp} missing"));
            assert_eq!(e.mode, m.mode() & 0o7777, "{tp}");
            assert_eq!(
                (e.uid, e.gid, e.mtime),
                (m.uid(), m.gid(), m.mtime()),
                "{tp}"
            );
            match &e.kind {
                Kind::Dir => assert!(m.is_dir(), "{tp}"),
                Kind::Symlink(t) => {
                    assert_eq!(
                        t.as_slice(),
                        fs::read_link(&p).unwrap().as_os_str().as_encoded_bytes(),
                        "{tp}"
                    )
                }
                Kind::File(c) => {
                    assert_eq!(c.len, m.len(), "{tp}");
                    let mut ours = c.open().unwrap();
                    let mut theirs = fs::File::open(&p).unwrap();
                    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
                    loop {
                        let n = read_full(&mut ours, &mut a);
                        let k = read_full(&mut theirs, &mut b);
                        assert!(a[..n] == b[..k], "{tp} content differs");
                        if n == 0 {
                            break;
                        }
                    }
                }
                k => panic!("{tp}: unexpected {}", k.name()),
            }
            compared += 1;
        }
    }
    assert!(compared > 1000, "only {compared} entries compared");
    eprintln!("compared {compared} entries of /usr");
}
