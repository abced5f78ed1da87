//! What the flash tests share: loop devices and mounts that clean up after themselves, device
//! checksums, partition tables read by sfdisk, fsck per partition, bmap ranges for `cmp`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::node::{NodeProfile, Setup};

const MIB: u64 = 1 << 20;
use super::{imgbuild, run};

/// A loop device, detached on drop (also when the test fails).
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// `losetup -f --show [ARGS] FILE`.
    pub fn attach(file: &Path, args: &[&str]) -> Loop {
        let (code, out, err) = run(Command::new("losetup")
            .arg("-f")
            .arg("--show")
            .args(args)
            .arg(file));
        assert_eq!(code, 0, "losetup {args:?} {}: {err}", file.display());
        Loop {
            dev: PathBuf::from(out.trim()),
        }
    }

    /// A loop over `len` bytes at `offset` of `file` (a partition: no partition scanning here).
    pub fn window(file: &Path, offset: u64, len: u64, ro: bool) -> Loop {
        let (o, l) = (offset.to_string(), len.to_string());
        let mut args = vec!["-o", &o, "--sizelimit", &l];
        if ro {
            args.push("-r");
        }
        Loop::attach(file, &args)
    }

    pub fn path(&self) -> &Path {
        &self.dev
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mount, unmounted on drop.
pub struct Mounted {
    pub dir: PathBuf,
}

impl Mounted {
    pub fn new(dev: &Path, dir: &Path) -> Mounted {
        fs::create_dir_all(dir).unwrap();
        let (code, _, err) = run(Command::new("mount").args(["-o", "ro"]).arg(dev).arg(dir));
        assert_eq!(code, 0, "mount {}: {err}", dev.display());
        Mounted {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// SHA-256 of a whole device or file.
pub fn sha256(p: &Path) -> String {
    let (code, out, err) = run(Command::new("sha256sum").arg(p));
    assert_eq!(code, 0, "sha256sum {}: {err}", p.display());
    out[..64].to_string()
}

/// A sparse file of `size` bytes; `random` fills it with random bytes (reused media).
pub fn target_file(path: &Path, size: u64, random: bool) -> PathBuf {
    if random {
        let (code, _, err) = run(Command::new("dd")
            .arg("if=/dev/urandom")
            .arg(format!("of={}", path.display()))
            .args(["bs=1M", &format!("count={}", size >> 20), "status=none"]));
        assert_eq!(code, 0, "dd: {err}");
    } else {
        let _ = fs::remove_file(path);
    }
    let f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    path.to_path_buf()
}

/// `imgbuild flash ARGS`, stdin closed: (code, stdout, stderr).
pub fn flash(dir: &Path, args: &[&str]) -> (i32, String, String) {
    run(imgbuild()
        .current_dir(dir)
        .arg("flash")
        .args(args)
        .stdin(std::process::Stdio::null()))
}

/// A partition: start and size in bytes, sfdisk's type.
#[derive(Debug, Clone)]
pub struct Part {
    pub start: u64,
    pub size: u64,
    pub kind: String,
}

/// The partitions `sfdisk -J` reads from a disk or image.
pub fn partitions(disk: &Path) -> Vec<Part> {
    let (code, out, err) = run(Command::new("sfdisk").arg("-J").arg(disk));
    assert_eq!(code, 0, "sfdisk -J {}: {err}", disk.display());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Part {
            start: p["start"].as_u64().unwrap() * 512,
            size: p["size"].as_u64().unwrap() * 512,
            kind: p["type"].as_str().unwrap_or("").to_lowercase(),
        })
        .collect()
}

/// What the filesystem at `offset` is, by blkid.
fn fs_type(dev: &Path) -> String {
    run(Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(dev))
    .1
    .trim()
    .to_string()
}

/// `fsck.fat -n` / `e2fsck -fn` on every partition of `disk`; returns the types seen.
pub fn fsck_all(disk: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    for p in partitions(disk) {
        let l = Loop::window(disk, p.start, p.size, true);
        let t = fs_type(l.path());
        let (code, out, err) = match t.as_str() {
            "vfat" => run(Command::new("fsck.fat").arg("-n").arg(l.path())),
            "ext4" | "ext2" | "ext3" => run(Command::new("e2fsck").arg("-fn").arg(l.path())),
            other => panic!(
                "partition at {} of {}: unexpected filesystem {other:?}",
                p.start,
                disk.display()
            ),
        };
        assert_eq!(
            code, 0,
            "fsck of the {t} partition at {}: {out}{err}",
            p.start
        );
        seen.push(t);
    }
    seen
}

/// `sgdisk -v` reports no problem.
pub fn assert_gpt_clean(disk: &Path) {
    let (code, out, err) = run(Command::new("sgdisk").arg("-v").arg(disk));
    assert!(
        code == 0 && out.contains("No problems found"),
        "sgdisk -v {}: {out}{err}",
        disk.display()
    );
}

/// `cmp` of `len` bytes at `offset` of two files or devices.
pub fn same_bytes(a: &Path, b: &Path, offset: u64, len: u64) -> bool {
    let skip = format!("{offset}:{offset}");
    run(Command::new("cmp")
        .args(["-s", "-i", &skip, "-n", &len.to_string()])
        .arg(a)
        .arg(b))
    .0 == 0
}

/// The mapped byte ranges of a `.bmap` (bmaptool's format), read with a plain text scan so the
/// test does not trust our parser.
pub fn bmap_ranges(bmap: &Path) -> Vec<(u64, u64)> {
    let text = fs::read_to_string(bmap).unwrap();
    let num = |tag: &str| -> u64 {
        let s = text.split(&format!("<{tag}>")).nth(1).unwrap();
        s.split(&format!("</{tag}>"))
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (bs, size) = (num("BlockSize"), num("ImageSize"));
    text.split("<Range")
        .skip(1)
        .map(|r| {
            let body = r
                .split('>')
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
                .trim();
            let (a, b) = body.split_once('-').unwrap_or((body, body));
            let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
            (a * bs, ((b + 1) * bs).min(size))
        })
        .collect()
}

/// `mtype` of a file in the FAT partition at `offset` of `disk`.
pub fn mtype(disk: &Path, offset: u64, name: &str) -> String {
    let img = format!("{}@@{offset}", disk.display());
    let (code, out, err) = run(Command::new("mtype").args(["-i", &img, &format!("::/{name}")]));
    assert_eq!(code, 0, "mtype {name}: {err}");
    out
}

/// A node workspace (`pc-node` extending amd64-worker, or `pi-node` extending pi-worker) whose
/// image has a block map; builds node `<prefix>-1` (and with it the shared image).
pub fn node_build(work: &Path, base: &Path, pi: bool) -> (Setup, PathBuf) {
    let (profile, prefix) = if pi {
        (NodeProfile::pi_node(base), "pi")
    } else {
        (NodeProfile::pc_node(base), "pc")
    };
    let setup = Setup::new(work, &profile, prefix);
    let toml = work.join(format!("profiles/{}.toml", profile.name));
    let text = fs::read_to_string(&toml)
        .unwrap()
        .replace("formats = [\"img\"]", "formats = [\"img\", \"bmap\"]");
    fs::write(&toml, text).unwrap();
    let node_img = setup.build_node(&format!("{prefix}-1"));
    (setup, node_img)
}

pub fn assert_no_secret(text: &str) {
    for (name, value) in super::node::SECRETS {
        assert!(!text.contains(value), "secret {name} in the output");
    }
}

/// The shared image flashed with `--node`: byte for byte `build --node`'s image on a zeroed
/// target of its size; fsck-clean with the node's seed on reused media twice its size; no
/// partition table after a SIGKILL mid-write, and a clean re-flash.
pub fn node_flash(base: &Path, pi: bool) {
    let tmp = super::scratch();
    let d = tmp.path();
    let (setup, node_img) = node_build(d, base, pi);
    let (prefix, shared) = if pi {
        ("pi", "pi-node.img")
    } else {
        ("pc", "pc-node.img")
    };
    let (first, second) = (format!("{prefix}-1"), format!("{prefix}-2"));
    let shared = setup.out.join(shared);
    let size = fs::metadata(&shared).unwrap().len();
    let shared_s = shared.to_str().unwrap();

    let exact = target_file(&d.join("exact.bin"), size, false);
    let t = Loop::attach(&exact, &[]);
    let (code, out, err) = flash(
        d,
        &[
            shared_s,
            t.path().to_str().unwrap(),
            "--node",
            &first,
            "--yes",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&first), "{out}");
    assert_no_secret(&format!("{out}{err}"));
    assert!(
        same_bytes(&node_img, t.path(), 0, size),
        "flash --node differs from build --node"
    );
    drop(t);
    fs::remove_file(&exact).unwrap();

    let big = target_file(&d.join("big.bin"), 2 * size, true);
    let t = Loop::attach(&big, &[]);
    let dev = t.path().to_str().unwrap();
    let (code, out, err) = flash(d, &[shared_s, dev, "--node", &first, "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    check_node_disk(t.path(), &shared, &first, pi);

    let mut child = imgbuild()
        .current_dir(d)
        .args([
            "flash",
            shared_s,
            dev,
            "--node",
            &second,
            "--yes",
            "--progress",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = lines
        .any(|l| l.is_ok_and(|l| l.contains("\"step\":\"write\"") && !l.contains("\"done\":0,")));
    assert!(started, "no write progress before the end");
    child.kill().unwrap();
    let _ = child.wait();
    let (code, out, _) = run(Command::new("sfdisk").arg("-d").arg(t.path()));
    assert!(
        code != 0 || !out.contains("start="),
        "a partition table survived SIGKILL: {out}"
    );
    let (code, out, err) = flash(d, &[shared_s, dev, "--node", &second, "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    check_node_disk(t.path(), &shared, &second, pi);
}

/// The table clean (sgdisk -v, or sfdisk --verify for MBR), every filesystem fsck-clean, the
/// node's seed in the boot partition exactly as `imgbuild seed` renders it, every mapped range
/// outside the boot partition equal to the shared image's.
fn check_node_disk(dev: &Path, shared: &Path, node: &str, mbr: bool) {
    if mbr {
        let (code, out, err) = run(Command::new("sfdisk").arg("--verify").arg(dev));
        assert!(
            code == 0 && out.contains("No errors detected"),
            "sfdisk --verify: {out}{err}"
        );
    } else {
        assert_gpt_clean(dev);
    }
    assert_eq!(fsck_all(dev), ["vfat", "ext4", "ext4"]);
    let boot = &partitions(dev)[0];
    let meta = mtype(dev, boot.start, "meta-data");
    assert!(
        meta.contains(&format!("local-hostname: \"{node}\"")),
        "{meta}"
    );
    let profile = shared.file_stem().unwrap().to_str().unwrap();
    let dir = shared.parent().unwrap().parent().unwrap();
    let out = dir.join(format!("seed-{node}"));
    let (code, o, e) = run(imgbuild()
        .current_dir(dir)
        .args(["seed", profile, "--node", node, "-o"])
        .arg(&out));
    assert_eq!(code, 0, "{o}{e}");
    assert_eq!(meta, fs::read_to_string(out.join("meta-data")).unwrap());
    assert_eq!(
        mtype(dev, boot.start, "user-data"),
        fs::read_to_string(out.join("user-data")).unwrap()
    );
    let bmap = shared.with_extension("img.bmap");
    for (s, e) in bmap_ranges(&bmap) {
        if e <= boot.start + boot.size && s >= boot.start || e <= MIB {
            continue;
        }
        let s = s.max(MIB);
        assert!(
            same_bytes(shared, dev, s, e - s),
            "range {s}..{e} differs from the image"
        );
    }
}
