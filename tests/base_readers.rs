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
use imgbuild::unpack::UnpackLimit;

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
            Kind::Hardlink(_) => assert!(ft.is_file() && m.nlink() > 1, "{path}"),
            k => panic!("{path}: unexpected {}", k.name()),
        }
    }
    host.len()
}

/// A base through the one dispatcher the build uses (decompressing into `cache`).
fn read_base(
    blob: &Path,
    sha: &str,
    cache: &imgbuild::fetch::Cache,
) -> Result<raw::Base, RawError> {
    let scratch = cache.root().join("tmp");
    fs::create_dir_all(&scratch).unwrap();
    raw::open_base(
        blob,
        raw::Decompress::Cache { cache, sha256: sha },
        &scratch,
        &UnpackLimit::default(),
        None,
        None,
    )
}

/// A bare ext4 filesystem image through the dispatcher.
fn read_bare_ext4(img: &Path) -> Tree {
    match raw::open_base(
        img,
        raw::Decompress::Scratch,
        img.parent().unwrap(),
        &UnpackLimit::default(),
        None,
        None,
    ) {
        Ok(raw::Base::Filesystem { tree, .. }) => tree,
        Ok(other) => panic!("{} read as {other:?}", img.display()),
        Err(e) => panic!("{}: {e}", img.display()),
    }
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
    // Its extents are resolved when the tree is read, so the read fails at once (before a build
    // writes anything), naming the file and its inode.
    let err = raw::read_image(&disk, None, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("/usr/lib/deep/er/still/data.txt (inode "),
        "{err}"
    );

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
    let tree = read_bare_ext4(&fsimg);
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
                // One inode, several names: the first name in tree order holds the file.
                Kind::Hardlink(t) => {
                    let first = src.join(String::from_utf8_lossy(t.as_bytes()).as_ref());
                    let fm = fs::symlink_metadata(&first).unwrap();
                    assert!(m.nlink() > 1 && fm.ino() == m.ino(), "{tp} → {t}");
                    assert!(t < &tp, "{tp}: the first name comes first");
                }
                k => panic!("{tp}: unexpected {}", k.name()),
            }
            compared += 1;
        }
    }
    assert!(compared > 1000, "only {compared} entries compared");
    eprintln!("compared {compared} entries of /usr");
}

fn sh(script: &str, dir: &Path) {
    let (code, _, err) = support::run(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
    assert_eq!(code, 0, "{script}: {err}");
}

#[test]
fn deb_data_lands_at_its_paths() {
    if !support::require_tool("dpkg-deb") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    sh(
        "mkdir -p pkg/DEBIAN pkg/usr/sbin pkg/lib/systemd/system pkg/var/lib/zerotier-one
         printf 'Package: zt\\nVersion: 1.0\\nArchitecture: amd64\\nMaintainer: t <t@e>\\nDescription: t\\n' > pkg/DEBIAN/control
         printf 'binary' > pkg/usr/sbin/zerotier-one && chmod 755 pkg/usr/sbin/zerotier-one
         printf '[Install]\\nWantedBy=multi-user.target\\n' > pkg/lib/systemd/system/zerotier-one.service
         ln -s zerotier-one pkg/usr/sbin/zerotier-cli
         find pkg -exec touch -h -d @1600000000 {} +
         for z in none gzip xz zstd; do dpkg-deb -Z$z --root-owner-group --build pkg $z.deb > /dev/null; done",
        dir.path(),
    );
    for z in ["none", "gzip", "xz", "zstd"] {
        let mut tree = Tree::new();
        let deb = imgbuild::source::deb::read_deb(
            &dir.path().join(format!("{z}.deb")),
            dir.path(),
            &mut tree,
        )
        .unwrap_or_else(|e| panic!("{z}: {e}"));
        let bin = tree
            .get(&TreePath::new("/usr/sbin/zerotier-one").unwrap())
            .unwrap();
        assert_eq!(
            (bin.mode, bin.uid, bin.gid, bin.mtime),
            (0o755, 0, 0, 1_600_000_000),
            "{z}"
        );
        assert_eq!(
            read_content(&tree, &TreePath::new("/usr/sbin/zerotier-one").unwrap()),
            b"binary"
        );
        let cli = tree
            .get(&TreePath::new("/usr/sbin/zerotier-cli").unwrap())
            .unwrap();
        assert!(matches!(&cli.kind, Kind::Symlink(t) if t == b"zerotier-one"));
        assert!(
            tree.get(&TreePath::new("/DEBIAN").unwrap()).is_none(),
            "control files stay out"
        );
        drop(deb);
    }
    // Not a package / truncated package.
    let bad = dir.path().join("bad.deb");
    fs::write(
        &bad,
        b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n",
    )
    .unwrap();
    let err = imgbuild::source::deb::read_deb(&bad, dir.path(), &mut Tree::new()).unwrap_err();
    assert!(err.to_string().contains("no data.tar"), "{err}");
    let full = fs::read(dir.path().join("xz.deb")).unwrap();
    fs::write(&bad, &full[..full.len() - 100]).unwrap();
    let err = imgbuild::source::deb::read_deb(&bad, dir.path(), &mut Tree::new()).unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");
}

fn cache_blob(cache: &imgbuild::fetch::Cache, file: &Path) -> (String, PathBuf) {
    let f = imgbuild::fetch::Fetcher::new(
        cache.clone(),
        imgbuild::fetch::Mirrors::default(),
        false,
        imgbuild::progress::Progress::quiet(),
    );
    let (sha, _, path) = f
        .fetch_verified("base", file.to_str().unwrap(), None, "test")
        .unwrap();
    (sha, path)
}

#[test]
fn tarball_and_xz_image_bases() {
    if !tools() {
        return;
    }
    let (_d, out) = make("mbr", &[]);
    let cache = imgbuild::fetch::Cache::open(out.join("cache")).unwrap();
    sh(
        "tar --numeric-owner -C root -cf rootfs.tar .
         gzip -k -n rootfs.tar && xz -k -T1 rootfs.tar && zstd -q -k rootfs.tar
         xz -k -T1 disk.img",
        &out,
    );
    for name in [
        "rootfs.tar",
        "rootfs.tar.gz",
        "rootfs.tar.xz",
        "rootfs.tar.zst",
    ] {
        let (sha, blob) = cache_blob(&cache, &out.join(name));
        match read_base(&blob, &sha, &cache).unwrap() {
            raw::Base::Tarball { tree, archive } => {
                let hello = tree
                    .get(&TreePath::new("/usr/bin/hello-again").unwrap())
                    .unwrap();
                assert!(
                    matches!(hello.kind, Kind::Hardlink(_) | Kind::File(_)),
                    "{name}"
                );
                let data = TreePath::new("/usr/lib/deep/er/still/data.txt").unwrap();
                assert_eq!(
                    read_content(&tree, &data),
                    fs::read(out.join("root/usr/lib/deep/er/still/data.txt")).unwrap()
                );
                assert_eq!(
                    tree.get(&TreePath::new("/usr/bin/suid").unwrap())
                        .unwrap()
                        .mode,
                    0o4755
                );
                drop(archive);
            }
            other => panic!("{name} read as {other:?}"),
        }
    }
    let (sha, blob) = cache_blob(&cache, &out.join("disk.img.xz"));
    let raw::Base::Image(img) = read_base(&blob, &sha, &cache).unwrap() else {
        panic!("disk.img.xz is an image");
    };
    assert_eq!(img.partitions.len(), 2);
    compare(&out.join("root"), &img.root.1, false);
    // Decompressed once: the second read reuses the cache entry.
    let unxz = cache.root().join("unxz").join(&sha);
    let before = fs::metadata(&unxz).unwrap().modified().unwrap();
    read_base(&blob, &sha, &cache).unwrap();
    assert_eq!(fs::metadata(&unxz).unwrap().modified().unwrap(), before);
}

fn profile() -> imgbuild::profile::Resolved {
    imgbuild::profile::ProfileStore::stock_only()
        .resolve("pi-worker", &[])
        .unwrap()
}

#[test]
fn overlays_never_leak_host_metadata() {
    use imgbuild::source::overlay::{self, OverlaySource};
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("overlay");
    sh(
        "umask 077
         mkdir -p overlay/etc/rancher/k3s overlay/usr/local/bin overlay/etc/systemd/system
         printf 'hello\\n' > overlay/etc/motd
         printf '#!/bin/sh\\n' > overlay/usr/local/bin/tool && chmod 700 overlay/usr/local/bin/tool
         printf 'version: {{ k3s.version }}\\nnode: {{ name }} on {{ arch }}/{{ board }}\\n' > overlay/etc/rancher/k3s/config.yaml.j2
         printf 'x' > overlay/etc/private.conf
         ln -s ../../../../outside overlay/etc/escape
         printf '# modes\\n0600 0:0 /etc/private.conf\\n0750 1000:1000 /usr/local/bin/tool\\n' > overlay/.imgbuild-modes
         chown -R 4321:4321 overlay 2>/dev/null || true",
        dir.path(),
    );
    let r = profile();
    let mut tree = Tree::new();
    let etc = TreePath::new("/etc").unwrap();
    tree.insert(etc.clone(), imgbuild::tree::Entry::dir(0o700).owned(0, 42))
        .unwrap();
    let stats = overlay::apply(
        &mut tree,
        OverlaySource::Host(&o),
        "overlay",
        &r,
        1_700_000_000,
    )
    .unwrap();
    assert_eq!((stats.files, stats.templates, stats.symlinks), (3, 1, 1));
    let e = |p: &str| tree.get(&TreePath::new(p).unwrap()).unwrap().clone();
    assert_eq!(
        (e("/etc").mode, e("/etc").gid),
        (0o700, 42),
        "existing directories keep their metadata"
    );
    let motd = e("/etc/motd");
    assert_eq!(
        (motd.mode, motd.uid, motd.gid, motd.mtime),
        (0o644, 0, 0, 1_700_000_000)
    );
    assert_eq!(e("/usr/local/bin").mode, 0o755);
    let tool = e("/usr/local/bin/tool");
    assert_eq!((tool.mode, tool.uid, tool.gid), (0o750, 1000, 1000));
    assert_eq!(e("/etc/private.conf").mode, 0o600);
    assert!(matches!(e("/etc/escape").kind, Kind::Symlink(t) if t == b"../../../../outside"));
    assert!(
        tree.get(&TreePath::new("/.imgbuild-modes").unwrap())
            .is_none()
    );
    let cfg = read_content(
        &tree,
        &TreePath::new("/etc/rancher/k3s/config.yaml").unwrap(),
    );
    let want = format!(
        "version: {}\nnode: pi-worker on arm64/rpi\n",
        r.profile.k3s.version.as_deref().unwrap()
    );
    assert_eq!(String::from_utf8(cfg).unwrap(), want);
    assert!(
        tree.get(&TreePath::new("/etc/rancher/k3s/config.yaml.j2").unwrap())
            .is_none()
    );

    // An undefined variable names the template and the line.
    fs::write(o.join("etc/bad.conf.j2"), "ok\n{{ k3s.nope }}\n").unwrap();
    let err =
        overlay::apply(&mut Tree::new(), OverlaySource::Host(&o), "overlay", &r, 0).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/etc/bad.conf.j2") && msg.contains("line 2"),
        "{msg}"
    );
    fs::remove_file(o.join("etc/bad.conf.j2")).unwrap();

    // A mode file naming a path the overlay lacks.
    fs::write(o.join(".imgbuild-modes"), "0600 /etc/typo.conf\n").unwrap();
    let err =
        overlay::apply(&mut Tree::new(), OverlaySource::Host(&o), "overlay", &r, 0).unwrap_err();
    assert!(err.to_string().contains("/etc/typo.conf"), "{err}");
    fs::remove_file(o.join(".imgbuild-modes")).unwrap();

    // A file over a directory of the tree.
    let mut t = Tree::new();
    t.insert_with_parents(
        TreePath::new("/etc/motd/x").unwrap(),
        imgbuild::tree::Entry::dir(0o755),
        &imgbuild::tree::Entry::dir(0o755),
    )
    .unwrap();
    let err = overlay::apply(&mut t, OverlaySource::Host(&o), "overlay", &r, 0).unwrap_err();
    assert!(err.to_string().contains("replace a directory"), "{err}");

    // FIFOs and device nodes are refused.
    sh("mkfifo overlay/etc/pipe", dir.path());
    let err =
        overlay::apply(&mut Tree::new(), OverlaySource::Host(&o), "overlay", &r, 0).unwrap_err();
    assert!(err.to_string().contains("FIFO"), "{err}");
    fs::remove_file(o.join("etc/pipe")).unwrap();
    let (code, _, _) = support::run(
        Command::new("mknod")
            .arg(o.join("etc/null"))
            .args(["c", "1", "3"]),
    );
    if code == 0 {
        let err = overlay::apply(&mut Tree::new(), OverlaySource::Host(&o), "overlay", &r, 0)
            .unwrap_err();
        assert!(err.to_string().contains("device node"), "{err}");
    }
}

#[test]
fn overlay_order_is_independent_of_creation_order() {
    use imgbuild::source::overlay::{self, OverlaySource};
    let r = profile();
    let mut listings = Vec::new();
    for order in ["a b c d", "d c b a"] {
        let dir = tempfile::tempdir().unwrap();
        sh(
            &format!("mkdir o; for n in {order}; do mkdir -p o/$n; printf $n > o/$n/f; done"),
            dir.path(),
        );
        let mut t = Tree::new();
        overlay::apply(
            &mut t,
            OverlaySource::Host(&dir.path().join("o")),
            "o",
            &r,
            5,
        )
        .unwrap();
        listings.push(
            t.iter()
                .map(|(p, e)| format!("{p} {:o} {} {}", e.mode, e.uid, e.mtime))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(listings[0], listings[1]);
}

/// The fuzz targets' properties (see fuzz/), run on every `cargo test` with random damage to
/// real images: never a panic, partitions always inside the disk.
mod smoke {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// One GPT and one MBR image, made once and held in memory: a static is never dropped, so
    /// the folder they were made in is removed at once.
    fn images() -> Option<&'static [Vec<u8>; 2]> {
        static IMAGES: OnceLock<Option<[Vec<u8>; 2]>> = OnceLock::new();
        IMAGES
            .get_or_init(|| {
                if !tools() {
                    return None;
                }
                let mk = |t: &str| {
                    let (_dir, out) = make(t, &[]);
                    fs::read(out.join("disk.img")).unwrap()
                };
                Some([mk("gpt"), mk("mbr")])
            })
            .as_ref()
    }

    fn damage(img: &[u8], flips: &[(u32, u8)], region: usize) -> Vec<u8> {
        let mut v = img.to_vec();
        for &(at, b) in flips {
            let i = at as usize % region.min(v.len());
            v[i] ^= b | 1;
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn partition_tables_never_panic(which in 0usize..2, flips in prop::collection::vec((any::<u32>(), any::<u8>()), 1..8)) {
            let Some(imgs) = images() else { return Ok(()) };
            // The tables live in the first and last 17 KiB.
            let mut v = damage(&imgs[which], &flips, 34 * 512);
            let n = v.len();
            v[n - 512..].copy_from_slice(&damage(&imgs[which][n - 512..], &flips, 512));
            let len = v.len() as u64;
            if let Ok((_, parts)) = raw::read_partitions(&v[..], len, "smoke") {
                for p in &parts {
                    prop_assert!(p.offset + p.size <= len);
                }
                let _ = raw::select(&parts, None, None, "smoke");
            }
        }

        #[test]
        fn tar_reader_never_panics(data in prop::collection::vec(any::<u8>(), 0..4096), header in any::<bool>()) {
            let mut bytes = data;
            if header && bytes.len() > 262 {
                bytes[257..262].copy_from_slice(b"ustar");
            }
            let mut tree = Tree::new();
            let src = |o| imgbuild::tree::Source::HostFile { path: "/nonexistent".into(), offset: o };
            let _ = imgbuild::source::tar::read_into(&bytes[..], &mut tree, &src);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Damage inside the root filesystem's metadata (superblock, group descriptors, inode
        /// tables, directories) of the MBR image, then read everything.
        #[test]
        fn base_image_reader_never_panics(flips in prop::collection::vec((any::<u32>(), any::<u8>()), 1..16)) {
            let Some(imgs) = images() else { return Ok(()) };
            let mut v = imgs[1].clone();
            let root = 83968 * 512;
            let meta = damage(&v[root..root + (2 << 20)], &flips, 2 << 20);
            v[root..root + (2 << 20)].copy_from_slice(&meta);
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("damaged.img");
            fs::write(&p, &v).unwrap();
            if let Ok(img) = raw::read_image(&p, None, None) {
                for (_, e) in img.root.1.iter() {
                    if let Kind::File(c) = &e.kind {
                        if let Ok(mut r) = c.open() {
                            let mut sink = Vec::new();
                            let _ = r.read_to_end(&mut sink);
                        }
                    }
                }
            }
        }
    }
}

/// Hostile rootfs tarballs made by GNU tar itself: `..` is refused, absolute paths become
/// relative, symlinks stay symlinks, the last of duplicate members wins; nothing is written
/// outside the cache.
#[test]
fn hostile_tarball_bases() {
    if !support::require_tool("tar") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    sh(
        "mkdir -p w/in && cd w/in
         printf one > dup && tar -cf ../../dup.tar dup
         printf two > dup && tar -rf ../../dup.tar dup
         ln -s ../../../../etc/shadow esc && tar -rf ../../dup.tar esc
         printf x > ../outside && tar -P -cf ../../dotdot.tar ../outside
         tar -P -cf ../../abs.tar \"$PWD/dup\"",
        dir.path(),
    );
    let cache = imgbuild::fetch::Cache::open(dir.path().join("cache")).unwrap();
    let before: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();

    let (sha, blob) = cache_blob(&cache, &dir.path().join("dup.tar"));
    let raw::Base::Tarball { tree, .. } = read_base(&blob, &sha, &cache).unwrap() else {
        panic!("a tarball")
    };
    assert_eq!(
        read_content(&tree, &TreePath::new("/dup").unwrap()),
        b"two",
        "last wins"
    );
    let esc = tree.get(&TreePath::new("/esc").unwrap()).unwrap();
    assert!(matches!(&esc.kind, Kind::Symlink(t) if t == b"../../../../etc/shadow"));

    let (sha, blob) = cache_blob(&cache, &dir.path().join("dotdot.tar"));
    let err = read_base(&blob, &sha, &cache).unwrap_err();
    assert!(err.to_string().contains(".."), "{err}");

    let (sha, blob) = cache_blob(&cache, &dir.path().join("abs.tar"));
    let raw::Base::Tarball { tree, .. } = read_base(&blob, &sha, &cache).unwrap() else {
        panic!("a tarball")
    };
    let abs = dir.path().join("w/in/dup");
    let inside = TreePath::new(abs.as_os_str().as_encoded_bytes()).unwrap();
    assert!(
        tree.get(&inside).is_some(),
        "an absolute member lands inside the tree"
    );

    let after: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after, "nothing written beside the inputs");
}

/// Benchmark, run by `scripts/bench-read` (or `--ignored --nocapture`): read an ext4 image
/// into a tree and every file's content through it. `BENCH_EXT4` names the image (the script
/// makes one of /usr); without it, an image of /usr/share is made here and also timed against
/// `debugfs -R 'rdump / DIR'`. Prints times; asserts nothing about speed.
#[test]
#[ignore = "benchmark"]
fn bench_ext4_read_vs_debugfs_rdump() {
    if !support::require_tool("mkfs.ext4") || !support::require_tool("debugfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let given = std::env::var_os("BENCH_EXT4").map(PathBuf::from);
    let img = given
        .clone()
        .unwrap_or_else(|| dir.path().join("share.ext4"));
    if given.is_none() {
        let (code, _, err) = support::run(
            Command::new(support::find_tool("mkfs.ext4").unwrap())
                .args(["-q", "-F", "-d", "/usr/share"])
                .arg(&img)
                .arg("3G"),
        );
        assert_eq!(code, 0, "{err}");
    }
    let t0 = std::time::Instant::now();
    let tree = read_bare_ext4(&img);
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for (_, e) in tree.iter() {
        if let Kind::File(c) = &e.kind {
            let mut r = c.open().unwrap();
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                bytes += n as u64;
            }
        }
    }
    let ours = t0.elapsed();
    println!(
        "imgbuild read: {:.3} s ({} entries, {bytes} bytes)",
        ours.as_secs_f64(),
        tree.len()
    );
    if given.is_some() {
        return;
    }
    let out = dir.path().join("rdump");
    fs::create_dir(&out).unwrap();
    let t1 = std::time::Instant::now();
    let (code, _, err) = support::run(
        Command::new(support::find_tool("debugfs").unwrap())
            .arg("-R")
            .arg(format!("rdump / {}", out.display()))
            .arg(&img),
    );
    let theirs = t1.elapsed();
    assert_eq!(code, 0, "{err}");
    eprintln!(
        "debugfs rdump {theirs:.2?}, ratio {:.2}",
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}
