//! Bases read faithfully: an image built from an ext4 base holds the base's file capabilities,
//! xattrs, ACLs, hard-link groups, device numbers, FIFOs, sockets, symlinks and holes. Judged by
//! tools nobody here wrote: both the base and the image are loop-mounted read-only by the kernel
//! and compared by `getcap`, `getfattr`, `getfacl`, `stat` and `sha256sum`; the image is checked
//! by `e2fsck -fn`. The image is made by `imgbuild mkfs ext4 --from BASE`, which reads the base
//! through the same dispatcher and ext4 reader as `imgbuild build`.
//!
//! Needs root (loop devices, mount, mknod, setcap) and the tools `.ci/run` installs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const EPOCH: &str = "2000000000";

fn tools() -> bool {
    let root = support::run(Command::new("id").arg("-u")).1.trim() == "0";
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs these tests as root"
        );
        eprintln!("skipping: needs root (loop devices, mount)");
        return false;
    }
    [
        "mke2fs",
        "mkfs.ext4",
        "e2fsck",
        "losetup",
        "mount",
        "getcap",
        "setcap",
        "getfattr",
        "setfattr",
        "getfacl",
        "setfacl",
        "debugfs",
        "sha256sum",
    ]
    .iter()
    .all(|t| support::require_tool(t))
}

fn sh(script: &str, dir: &Path) -> String {
    let (code, out, err) = support::run(
        Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"),
    );
    assert_eq!(code, 0, "{script}\nfailed: {err}");
    out
}

/// A filesystem image attached to a loop device and mounted read-only; unmounted and detached
/// when dropped, also when the test fails.
struct Mounted {
    dir: tempfile::TempDir,
    dev: String,
    mounted: bool,
}

impl Mounted {
    fn new(img: &Path, offset: u64, size: u64) -> Mounted {
        let (code, out, err) = support::run(
            Command::new("losetup")
                .args([
                    "-f",
                    "--show",
                    "-r",
                    "-o",
                    &offset.to_string(),
                    "--sizelimit",
                    &size.to_string(),
                ])
                .arg(img),
        );
        assert_eq!(code, 0, "losetup: {err}");
        let mut m = Mounted {
            dir: tempfile::tempdir().unwrap(),
            dev: out.trim().to_string(),
            mounted: false,
        };
        let (code, _, err) = support::run(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "ro", &m.dev])
                .arg(m.dir.path()),
        );
        assert_eq!(code, 0, "mount {}: {err}", img.display());
        m.mounted = true;
        m
    }

    fn whole(img: &Path) -> Mounted {
        Mounted::new(img, 0, std::fs::metadata(img).unwrap().len())
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Output of a recursive tool (`getfattr -R`, `getfacl -R`) split into per-file blocks, keyed by
/// file, without lost+found (every ext4 has its own).
fn blocks(out: &str) -> BTreeMap<String, String> {
    out.split("\n\n")
        .filter_map(|b| {
            let b = b.trim();
            let file = b.lines().find_map(|l| l.strip_prefix("# file: "))?;
            let file = file.strip_prefix("./").unwrap_or(file).to_string();
            (!file.starts_with("lost+found")).then(|| (file, b.to_string()))
        })
        .collect()
}

/// What the oracles say about a mounted tree.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    caps: String,
    xattrs: BTreeMap<String, String>,
    acls: BTreeMap<String, String>,
    /// path → `%h %t:%T %F %a %u:%g %Y %s` (size left out for directories, which depends on the
    /// block size and history of the directory, not its content).
    stat: BTreeMap<String, String>,
    /// Names sharing an inode (`%i`), for every inode with more than one name.
    groups: BTreeSet<Vec<String>>,
    inodes: usize,
    sha: String,
    /// Bytes of data blocks allocated to the tree (`du`, hard links counted once).
    used: u64,
}

fn snapshot(root: &Path) -> Snapshot {
    let list = "find . -path ./lost+found -prune -o -print0 | sort -z";
    let caps = sh("getcap -r . | sort", root);
    let xattrs = blocks(&sh(
        "getfattr -R -P -h -d -m - -e hex . 2>/dev/null || true",
        root,
    ));
    let acls = blocks(&sh("getfacl -R -P -n . 2>/dev/null || true", root));
    let raw = sh(
        &format!("{list} | xargs -0 stat -c '%n|%i|%h|%t:%T|%F|%a|%u:%g|%Y|%s'"),
        root,
    );
    let mut stat = BTreeMap::new();
    let mut by_inode: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in raw.lines() {
        let f: Vec<&str> = l.split('|').collect();
        let size = if f[4] == "directory" { "-" } else { f[8] };
        let name = f[0].strip_prefix("./").unwrap_or(f[0]).to_string();
        stat.insert(
            name.clone(),
            format!(
                "{} {} {} {} {} {} {size}",
                f[2], f[3], f[4], f[5], f[6], f[7]
            ),
        );
        by_inode.entry(f[1].to_string()).or_default().push(name);
    }
    let inodes = by_inode.len();
    let groups = by_inode.into_values().filter(|v| v.len() > 1).collect();
    let sha = sh(
        "find . -path ./lost+found -prune -o -type f -print0 | sort -z | xargs -0 -r sha256sum",
        root,
    );
    let used = sh("du -s -B1 -x --exclude=./lost+found . | cut -f1", root)
        .trim()
        .parse()
        .unwrap();
    Snapshot {
        caps,
        xattrs,
        acls,
        stat,
        groups,
        inodes,
        sha,
        used,
    }
}

/// `imgbuild mkfs ext4 --from base -o out`.
fn mkfs_from(base: &Path, out: &Path) -> (i32, String) {
    let (code, _, err) = support::run(
        Command::new("timeout")
            .arg("300")
            .arg(env!("CARGO_BIN_EXE_imgbuild"))
            .args(["mkfs", "ext4", "--epoch", EPOCH, "--from"])
            .arg(base)
            .arg("-o")
            .arg(out)
            .env("NO_COLOR", "1"),
    );
    (code, err)
}

fn e2fsck_clean(img: &Path) {
    let (code, out, err) = support::run(Command::new("e2fsck").arg("-fn").arg(img));
    assert_eq!(code, 0, "e2fsck -fn {}:\n{out}{err}", img.display());
}

/// Builds from `base` and compares the result with it, oracle by oracle.
fn round_trip(base: &Path, work: &Path) -> Snapshot {
    build_and_compare(base, base, work, &[])
}

/// Builds an image from `from` and compares it with the ext4 filesystem `reference`, leaving out
/// the paths in `skip` (what the source format cannot hold).
fn build_and_compare(reference: &Path, from: &Path, work: &Path, skip: &[&str]) -> Snapshot {
    let out = work.join(format!(
        "{}.out.img",
        from.file_name().unwrap().to_string_lossy()
    ));
    let (code, err) = mkfs_from(from, &out);
    assert_eq!(code, 0, "mkfs --from {}: {err}", from.display());
    e2fsck_clean(&out);
    let a = Mounted::whole(reference);
    let b = Mounted::whole(&out);
    let (mut want, got) = (snapshot(a.path()), snapshot(b.path()));
    for s in skip {
        want.stat.remove(*s);
        want.acls.remove(*s);
        want.xattrs.remove(*s);
        want.inodes -= 1;
    }
    let what = from.display();
    assert_eq!(want.caps, got.caps, "{what}: getcap -r");
    same(
        &want.xattrs,
        &got.xattrs,
        &format!("{what}: getfattr -d -m -"),
    );
    same(&want.acls, &got.acls, &format!("{what}: getfacl"));
    same(&want.stat, &got.stat, &format!("{what}: stat"));
    assert_eq!(want.groups, got.groups, "{what}: hard-link groups");
    assert_eq!(want.inodes, got.inodes, "{what}: distinct inodes");
    assert_eq!(want.sha, got.sha, "{what}: file contents");
    got
}

/// Asserts two per-path maps are equal, naming only the paths that differ.
fn same(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>, what: &str) {
    let diff: Vec<String> = want
        .keys()
        .chain(got.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .map(|k| format!("{k}: base {:?}, image {:?}", want.get(k), got.get(k)))
        .collect();
    assert!(diff.is_empty(), "{what} differs:\n{}", diff.join("\n"));
}

/// Tarball bases keep theirs too: archives of the kernel-written fixture made by GNU tar
/// (xattrs, ACLs as xattrs, hard links, devices) and by bsdtar (ACLs as text, sparse files in
/// PAX 1.0 form), read and written back, compared with the fixture itself. Tar cannot hold
/// sockets (both tools skip them), so the socket is left out of the comparison.
#[test]
fn tarball_bases_keep_xattrs_acls_links_devices_and_holes() {
    let Some((_d, dir)) = fixtures() else { return };
    let base = dir.join("kernel.ext4");
    let m = Mounted::whole(&base);
    let src = m.path().display().to_string();
    let mut made = vec![];
    sh(
        &format!(
            "tar --xattrs --xattrs-include='*' --sparse --sparse-version=1.0 --numeric-owner -cpf gnu.tar -C {src} . 2>/dev/null || test -s gnu.tar"
        ),
        &dir,
    );
    made.push("gnu.tar");
    if support::require_tool("bsdtar") {
        sh(
            &format!(
                "bsdtar --xattrs --acls --numeric-owner -cf bsd.tar -C {src} . 2>/dev/null || test -s bsd.tar"
            ),
            &dir,
        );
        made.push("bsd.tar");
    }
    drop(m);
    for t in made {
        let got = build_and_compare(&base, &dir.join(t), &dir, &["run/sock"]);
        assert!(got.caps.contains("cap_net_raw=ep"), "{t}");
        assert!(
            got.acls["var/log/journal"].contains("default:user:1000:rwx"),
            "{t}"
        );
        let out = dir.join(format!("{t}.out.img"));
        let m = Mounted::whole(&out);
        let blocks = sh("stat -c %b var/lib/sparse", m.path());
        assert!(
            blocks.trim().parse::<u64>().unwrap() * 512 <= 16384,
            "{t}: sparse file uses {blocks} blocks"
        );
    }
}

fn fixtures() -> Option<(tempfile::TempDir, PathBuf)> {
    if !tools() {
        return None;
    }
    let dir = support::scratch();
    let script = support::tests_dir().join("fixtures/inputs/make-faithful-base.sh");
    sh(
        &format!("sh {} {}", script.display(), dir.path().display()),
        dir.path(),
    );
    let p = dir.path().to_path_buf();
    Some((dir, p))
}

#[test]
fn capabilities_acls_links_devices_and_holes_survive() {
    let Some((_d, dir)) = fixtures() else { return };
    for name in ["mke2fs.ext4", "kernel.ext4", "ext3.ext4"] {
        let base = dir.join(name);
        let got = round_trip(&base, &dir);
        // The fixture's features are really there (the comparison is not of two empty sets).
        assert!(
            got.caps.contains("./bin/ping cap_net_raw=ep"),
            "{name}: {}",
            got.caps
        );
        let tagged = &got.xattrs["etc/tagged"];
        assert!(
            tagged.contains("user.small=0x6f6e65") && tagged.contains("user.big="),
            "{tagged}"
        );
        assert!(tagged.contains("trusted.note="), "{tagged}");
        assert!(got.acls["var/log/journal"].contains("default:user:1000:rwx"));
        assert!(got.groups.contains(&vec![
            "bin/zcat".to_string(),
            "usr/bin/gzip".to_string(),
            "usr/lib/gz/gunzip".to_string()
        ]));
        assert_eq!(
            got.stat["dev/wide"],
            "1 103:493e0 character special file 644 0:0 1600000000 0"
        );
        assert!(got.stat["dev/sda1"].starts_with("1 8:1 block special file"));
        assert!(got.stat["run/sock"].contains(" socket "));
        assert!(got.stat["run/fifo"].contains(" fifo "));
        // The hole stays a hole: 1 MiB + 8 KiB long, at most a few blocks allocated.
        let out = dir.join(format!("{name}.out.img"));
        let m = Mounted::whole(&out);
        let blocks = sh("stat -c %b var/lib/sparse", m.path());
        assert!(
            blocks.trim().parse::<u64>().unwrap() * 512 <= 16384,
            "sparse file uses {blocks} blocks"
        );
    }
}

/// The amd64 Debian test base, unpacked by GNU tar (keeping xattrs) into a kernel-written ext4,
/// plus two file capabilities (the mmdebstrap tarball carries none).
#[test]
fn debian_base_keeps_capabilities_and_link_groups() {
    if !tools() || !support::require_tool("tar") {
        return;
    }
    let Some(tarball) = support::qemu::debian_base() else {
        return;
    };
    let dir = support::scratch();
    let base = dir.path().join("debian.ext4");
    sh(
        &format!(
            "truncate -s 2G debian.ext4
             mkfs.ext4 -q -F -L root debian.ext4
             mkdir mnt
             dev=$(losetup -f --show debian.ext4)
             trap 'umount mnt 2>/dev/null; losetup -d $dev' EXIT
             mount $dev mnt
             tar --xattrs --xattrs-include='*' --numeric-owner -xpf {} -C mnt
             for f in mnt/usr/bin/ping mnt/usr/bin/newuidmap mnt/usr/bin/dash; do
                 if [ -f $f ]; then setcap cap_net_raw+ep $f; fi
             done
             umount mnt
             losetup -d $dev
             trap - EXIT
             e2fsck -fn debian.ext4 >/dev/null",
            tarball.display()
        ),
        dir.path(),
    );
    let m = Mounted::whole(&base);
    let base_used = snapshot(m.path()).used;
    drop(m);
    let got = round_trip(&base, dir.path());
    assert!(!got.caps.is_empty(), "the base holds capabilities");
    // Hard links stay links and holes stay holes, so the same content takes no more blocks.
    assert!(
        got.used <= base_used,
        "image {} bytes, base {base_used}",
        got.used
    );
    assert!(got.inodes > 10_000, "{} inodes", got.inodes);
    eprintln!(
        "debian base: {} inodes, {} hard-link groups, {} bytes used (base {base_used}), caps:\n{}",
        got.inodes,
        got.groups.len(),
        got.used,
        got.caps
    );
}

fn debugfs_w(img: &Path, cmd: &str) {
    let (code, _, err) = support::run(Command::new("debugfs").args(["-w", "-R", cmd]).arg(img));
    assert!(
        code == 0 && !err.contains("debugfs: "),
        "debugfs -w -R {cmd:?}: {err}"
    );
}

fn debugfs_stat(img: &Path, path: &str) -> String {
    support::run(
        Command::new("debugfs")
            .args(["-R", &format!("stat {path}")])
            .arg(img),
    )
    .1
}

/// Patches `bytes` at `offset` of a file.
fn patch(img: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Features the reader cannot carry over are refused by name (exit 2), while the same tree
/// without them goes through.
#[test]
fn unreadable_features_are_refused_by_name() {
    let Some((_d, dir)) = fixtures() else { return };
    let src = Mounted::whole(&dir.join("kernel.ext4"));
    let tree = src.path().display();
    for (feature, opts) in [
        ("inline_data", "-O inline_data"),
        ("casefold", "-O casefold"),
        ("encrypt", "-O encrypt"),
        ("ea_inode", "-O ea_inode"),
    ] {
        let img = dir.join(format!("{feature}.ext4"));
        sh(
            &format!(
                "mke2fs -q -F -t ext4 -b 4096 {opts} -d {tree} {} 32M",
                img.display()
            ),
            &dir,
        );
        let (code, err) = mkfs_from(&img, &dir.join(format!("{feature}.img")));
        assert_eq!(code, 2, "{feature}: {err}");
        assert!(err.contains(&format!("`{feature}`")), "{feature}: {err}");
    }
    let plain = dir.join("plain.ext4");
    sh(
        &format!(
            "mke2fs -q -F -t ext4 -b 4096 -d {tree} {} 32M",
            plain.display()
        ),
        &dir,
    );
    let (code, err) = mkfs_from(&plain, &dir.join("plain.img"));
    assert_eq!(code, 0, "{err}");
}

/// Sets the inode number of entry `name` of directory `dir` (4 KiB blocks, linear directory).
fn patch_dirent(img: &Path, dir: &str, name: &[u8], ino: u32) {
    let out = support::run(
        Command::new("debugfs")
            .args(["-R", &format!("blocks {dir}")])
            .arg(img),
    )
    .1;
    let data = std::fs::read(img).unwrap();
    for block in out.split_whitespace().filter_map(|b| b.parse::<u64>().ok()) {
        let start = (block * 4096) as usize;
        let blk = &data[start..start + 4096];
        let mut at = 0;
        while at + 8 <= blk.len() {
            let rec = u16::from_le_bytes([blk[at + 4], blk[at + 5]]) as usize;
            let n = blk[at + 6] as usize;
            if &blk[at + 8..at + 8 + n] == name {
                patch(img, (start + at) as u64, &ino.to_le_bytes());
                return;
            }
            if rec == 0 {
                break;
            }
            at += rec;
        }
    }
    panic!("{dir}: no entry {:?}", String::from_utf8_lossy(name));
}

/// Hostile ext4: each corruption is refused with exit 2, naming the inode and the path, within
/// the timeout (no hang); the intact base goes through in the same test.
#[test]
fn hostile_ext4_is_refused_by_inode_and_path() {
    let Some((_d, dir)) = fixtures() else { return };
    let good = dir.join("mke2fs.ext4");
    let (code, err) = mkfs_from(&good, &dir.join("good.img"));
    assert_eq!(code, 0, "{err}");
    let case = |name: &str, corrupt: &dyn Fn(&Path)| {
        let bad = dir.join(format!("{name}.ext4"));
        std::fs::copy(&good, &bad).unwrap();
        corrupt(&bad);
        let (code, err) = mkfs_from(&bad, &dir.join(format!("{name}.img")));
        eprintln!("{name}: exit {code}: {}", err.trim().replace('\n', " / "));
        assert_eq!(code, 2, "{name}: exit {code}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(
            !dir.join(format!("{name}.img")).exists(),
            "{name}: nothing half-written"
        );
        err
    };
    // An entry pointing at a free inode.
    let err = case("unused", &|p| debugfs_w(p, "ln <300> /etc/ghost"));
    assert!(
        err.contains("/etc/ghost (inode 300)") && err.contains("unused inode"),
        "{err}"
    );
    // An entry pointing past the last inode.
    let err = case("range", &|p| {
        let inodes = sh(
            &format!(
                "dumpe2fs -h {} 2>/dev/null | sed -n 's/^Inode count: *//p'",
                p.display()
            ),
            &dir,
        );
        let beyond = inodes.trim().parse::<u32>().unwrap() + 5;
        // debugfs refuses such a link: rewrite the entry's inode number in the directory block.
        patch_dirent(p, "/etc", b"tagged", beyond);
    });
    assert!(
        err.contains("/etc/tagged (inode") && err.contains("out of range"),
        "{err}"
    );
    // An extent starting far past the end of the device (i_block[5] is the first extent's
    // start_lo).
    let err = case("extent", &|p| {
        debugfs_w(p, "sif /usr/lib/big block[5] 0x7fffff00")
    });
    assert!(
        err.contains("/usr/lib/big (inode") && err.contains("past the end"),
        "{err}"
    );
    // A directory cycle: a subdirectory entry naming the root.
    let err = case("cycle", &|p| debugfs_w(p, "ln <2> /usr/lib/gz/loop"));
    assert!(
        err.contains("/usr/lib/gz/loop (inode 2)") && err.contains("cycle"),
        "{err}"
    );
    // An xattr whose value runs past its block: user.big's e_value_size set to 60000.
    let err = case("xattr", &|p| {
        let st = debugfs_stat(p, "/etc/tagged");
        let block: u64 = st
            .lines()
            .find_map(|l| l.split("File ACL: ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no xattr block: {st}"));
        let data = std::fs::read(p).unwrap();
        let start = (block * 4096) as usize;
        let blk = &data[start..start + 4096];
        // Entries from byte 32: name_len, index, value_offs, value_inum, value_size, hash, name.
        let mut at = 32;
        while blk[at] != 0 {
            let n = blk[at] as usize;
            if blk[at + 1] == 1 && &blk[at + 16..at + 16 + n] == b"big" {
                patch(p, (start + at + 8) as u64, &60000u32.to_le_bytes());
                return;
            }
            at = (at + 16 + n + 3) & !3;
        }
        panic!("user.big not in the xattr block");
    });
    assert!(
        err.contains("/etc/tagged (inode") && err.contains("runs past the end"),
        "{err}"
    );
}
