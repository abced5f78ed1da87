//! The netboot artifact set of a profile (`images/<profile>/netboot/`), from the same composed
//! tree as the disk image:
//!
//! - `vmlinuz`, `initrd.img`: the base's newest kernel and its own initramfs, unchanged;
//! - `imgbuild.cpio`: appended as a second initrd (newc, uncompressed), it holds only what the
//!   base's initramfs lacks: the `boot=imgbuild` script, `sha256sum` from the base, the
//!   squashfs/loop modules of that kernel, and the root image `/imgbuild/root.squashfs`;
//! - `ipxe/*`: the iPXE binaries of Debian's `ipxe` package (pinned inputs);
//! - `netboot.json` (what the boot server serves), `manifest.json`, `SHA256SUMS`.
//!
//! The root ships inside the cpio rather than being fetched over HTTP by the initramfs: the
//! base's initramfs has no HTTP client (Debian's, without busybox, has only klibc tools), the
//! steady-state RAM is the same (the image sits in RAM either way), and the boot loader's one
//! HTTP download replaces a second network stack in the initramfs.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::pitree;
use crate::boot::efi::{self, Kernel};
use crate::disk::manifest::{InputRecord, ManifestFile, redact};
use crate::fs::cpio::{CpioKind, CpioWriter};
use crate::fs::squashfs::{self, SquashfsSettings};
use crate::output::{OutputDir, PendingFile};
use crate::profile::Arch;
use crate::tree::{Content, Tree};

pub const JSON_FILE: &str = "netboot.json";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SUMS_FILE: &str = "SHA256SUMS";
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";
pub const CPIO_FILE: &str = "imgbuild.cpio";
/// Where the root image is inside the initramfs (named by `imgbuild.root=`).
pub const ROOT_IMAGE: &str = "/imgbuild/root.squashfs";
/// The initramfs-tools boot script, run for `boot=imgbuild`.
const BOOT_SCRIPT: &str = include_str!("imgbuild-boot.sh");

/// Why an artifact set could not be made from the tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetbootError {
    #[error(
        "the base has no {what} at {path}; the netboot initramfs needs it (install {package} in the base)"
    )]
    Missing {
        what: &'static str,
        path: String,
        package: &'static str,
    },
    #[error(
        "kernel {version} builds squashfs as a module, but the base has no kernel/fs/squashfs/squashfs.ko* under /lib/modules/{version}"
    )]
    NoSquashfsModule { version: String },
}

/// `netboot.json`: the contract with the boot server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetbootJson {
    pub profile: String,
    pub arch: String,
    pub kernel: String,
    pub initrds: Vec<String>,
    /// `${base}` (if present) is replaced by the server; it appends the node's seed argument.
    pub cmdline: String,
    pub files: Vec<ArtifactFile>,
    pub ipxe: BTreeMap<String, String>,
    /// The Raspberry Pi TFTP tree, for a Pi profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pi: Option<PiJson>,
}

/// `netboot.json`'s `pi`: the shared files (names under `pi/`), files of the set itself served
/// in the Pi folders under their own names (`imgbuild.cpio`), and the node folders
/// (`pi/<folder>/cmdline.txt`), folder → node name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PiJson {
    pub shared: Vec<String>,
    pub set_files: Vec<String>,
    pub nodes: BTreeMap<String, String>,
}

/// What the Pi tree is made of: the disk image's boot partition and the nodes with a serial.
pub struct PiRequest<'a> {
    pub boot: &'a Tree,
    pub nodes: Vec<PiNode>,
    /// `http://ADDR:PORT` of the server the nodes fetch their seeds from.
    pub base_url: String,
}

/// A Raspberry Pi node of the inventory, as its `cmdline.txt` needs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PiNode {
    /// Its TFTP folder (the serial's low 32 bits).
    pub folder: String,
    pub node: String,
    /// Its seed's `network-config` (also on the command line: see [`pitree::node_cmdline`]).
    pub network_config: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// The root image as `manifest.json` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootImage {
    /// `imgbuild.cpio:/imgbuild/root.squashfs`
    pub file: String,
    pub fs: String,
    pub compression: String,
    pub size: u64,
    pub sha256: String,
    /// Every entry, listed exactly as the disk image's root partition lists it.
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetbootManifest {
    pub format: u32,
    pub source_date_epoch: u64,
    pub kernel_version: String,
    pub profile: serde_json::Value,
    pub inputs: Vec<InputRecord>,
    pub root: RootImage,
    pub files: Vec<ArtifactFile>,
}

/// An iPXE binary to ship: its name in the artifact set (`ipxe/snponly.efi`), the netboot.json
/// key that names it (`efi-x64`), and its bytes.
#[derive(Debug, Clone)]
pub struct IpxeFile {
    pub name: String,
    pub key: String,
    pub content: Content,
}

/// The iPXE binaries a netboot set ships: (netboot.json key, name in the set, path in the
/// package). `snponly.efi` uses the firmware's network driver (the fix everyone converges on
/// for UEFI NICs); `ipxe.efi`, with iPXE's own drivers, is there for firmware without SNP.
const IPXE_FILES: &[(&str, &str, &str)] = &[
    ("bios", "ipxe/undionly.kpxe", "/usr/lib/ipxe/undionly.kpxe"),
    ("efi-x64", "ipxe/snponly.efi", "/usr/lib/ipxe/snponly.efi"),
    ("efi-x64-ipxe", "ipxe/ipxe.efi", "/usr/lib/ipxe/ipxe.efi"),
];

/// Picks the iPXE binaries out of the tree of Debian's `ipxe` package.
pub fn ipxe_files(package: &Tree) -> Result<Vec<IpxeFile>, NetbootError> {
    IPXE_FILES
        .iter()
        .map(|(key, name, path)| {
            let content = efi::file_content(package, path).ok_or(NetbootError::Missing {
                what: "iPXE binary",
                path: (*path).to_string(),
                package: "a Debian ipxe package that has it (the lock pins ipxe_*.deb)",
            })?;
            Ok(IpxeFile {
                name: (*name).to_string(),
                key: (*key).to_string(),
                content,
            })
        })
        .collect()
}

/// What to build.
pub struct NetbootRequest<'a> {
    pub profile: &'a str,
    pub arch: Arch,
    pub root: &'a Tree,
    /// The image's kernel command line (from the composition).
    pub cmdline: &'a [String],
    pub epoch: i64,
    pub profile_json: &'a serde_json::Value,
    pub inputs: &'a [InputRecord],
    pub ipxe: &'a [IpxeFile],
    pub squashfs: SquashfsSettings,
    pub pi: Option<PiRequest<'a>>,
}

/// The netboot kernel command line: the image's, without its seed location (the server adds
/// the node's), with the root image and its hash.
pub fn netboot_cmdline(image: &[String], root_sha256: &str) -> Vec<String> {
    let mut out = vec!["boot=imgbuild".to_string()];
    out.extend(
        image
            .iter()
            .filter(|a| !a.starts_with("ds=") && !a.starts_with("root=") && *a != "boot=imgbuild")
            .cloned(),
    );
    out.push(format!("imgbuild.root={ROOT_IMAGE}"));
    out.push(format!("imgbuild.root-sha256={root_sha256}"));
    out
}

/// Files of `imgbuild.cpio` besides the root image.
#[derive(Debug, Clone)]
pub struct HookFiles {
    pub sha256sum: Content,
    /// (`squashfs.ko`, content) — named as found, compressed suffix included.
    pub modules: Vec<(String, Content)>,
}

/// Picks what the initramfs hook needs from the base: `sha256sum` and the modules the base's
/// initramfs may lack. A module the kernel has built in (its config says `=y`) is not needed.
pub fn hook_files(root: &Tree, kernel: &Kernel) -> Result<HookFiles, NetbootError> {
    let sha256sum = efi::file_content(root, "/usr/bin/sha256sum").ok_or(NetbootError::Missing {
        what: "sha256sum",
        path: "/usr/bin/sha256sum".into(),
        package: "coreutils",
    })?;
    let v = &kernel.version;
    let config = efi::file_content(root, &format!("/boot/config-{v}"))
        .and_then(|c| c.read_all().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut modules = Vec::new();
    for (name, dir, option) in [
        ("squashfs", "fs/squashfs", "CONFIG_SQUASHFS"),
        ("loop", "drivers/block", "CONFIG_BLK_DEV_LOOP"),
    ] {
        let found = ["ko", "ko.xz", "ko.zst", "ko.gz"].iter().find_map(|ext| {
            let file = format!("{name}.{ext}");
            efi::file_content(root, &format!("/lib/modules/{v}/kernel/{dir}/{file}"))
                .map(|c| (file, c))
        });
        match found {
            Some(m) => modules.push(m),
            None if name == "squashfs" && !config.contains(&format!("{option}=y")) => {
                return Err(NetbootError::NoSquashfsModule { version: v.clone() });
            }
            None => {}
        }
    }
    Ok(HookFiles { sha256sum, modules })
}

/// Writes `imgbuild.cpio`: the boot script, the hook's files and the root image.
pub fn write_cpio<W: Write>(
    out: W,
    hook: &HookFiles,
    root_image: (u64, Box<dyn Read + '_>),
    epoch: i64,
) -> Result<W, crate::fs::cpio::CpioError> {
    let mut w = CpioWriter::new(out, epoch);
    w.add("scripts", 0o755, CpioKind::Dir)?;
    let script = BOOT_SCRIPT.as_bytes();
    w.add(
        "scripts/imgbuild",
        0o755,
        CpioKind::File {
            len: script.len() as u64,
            data: Box::new(script),
        },
    )?;
    w.add("imgbuild", 0o755, CpioKind::Dir)?;
    w.add("imgbuild/bin", 0o755, CpioKind::Dir)?;
    w.add("imgbuild/bin/sha256sum", 0o755, file(&hook.sha256sum)?)?;
    w.add("imgbuild/modules", 0o755, CpioKind::Dir)?;
    for (name, c) in &hook.modules {
        w.add(&format!("imgbuild/modules/{name}"), 0o644, file(c)?)?;
    }
    let (len, data) = root_image;
    w.add(&ROOT_IMAGE[1..], 0o444, CpioKind::File { len, data })?;
    w.finish()
}

fn file(c: &Content) -> Result<CpioKind<'_>, io::Error> {
    Ok(CpioKind::File {
        len: c.len,
        data: c.open()?,
    })
}

/// Runs `mksquashfs` on a tar stream of `root`, into `dest` (a pending file of the output
/// folder). Returns the manifest records of the root.
fn make_squashfs(
    root: &Tree,
    dest: &PendingFile,
    s: &SquashfsSettings,
) -> Result<Vec<crate::fs::FileRecord>> {
    let mut child = Command::new("mksquashfs")
        .arg("-")
        .arg(dest.tmp_path())
        .args(squashfs::mksquashfs_args(s))
        .args(squashfs::root_args(root))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "running mksquashfs (squashfs-tools): install it (apt-get install squashfs-tools)",
        )?;
    let mut stderr = child.stderr.take().expect("piped");
    // Drained on its own thread: a full stderr pipe would stop mksquashfs reading the tar.
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stdin = io::BufWriter::with_capacity(1 << 20, child.stdin.take().expect("piped"));
    let written = squashfs::write_tar(root, stdin);
    let status = child.wait().context("waiting for mksquashfs")?;
    let errs = errs.join().unwrap_or_default();
    if !status.success() {
        bail!("mksquashfs failed ({status}): {}", errs.trim());
    }
    let records = written.context("writing the root tree for mksquashfs")?;
    let mut image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dest.tmp_path())
        .context("opening the root image mksquashfs wrote")?;
    squashfs::pin_root_time(&mut image, s.epoch).context("pinning the root image's root time")?;
    Ok(records)
}

/// Zeros that bring an initrd of `len` bytes to a multiple of 4. The Linux EFI stub, loading the
/// initrds named by `initrd=` (iPXE builds without LoadFile2, like Debian 12's), lays them end to
/// end with no gap, and the kernel reads the next cpio archive only at a 4-byte offset: without
/// this, imgbuild.cpio after an odd-sized initrd.img is never unpacked. Zeros between archives
/// are skipped.
fn initrd_padding(len: u64) -> Vec<u8> {
    vec![0; (len.next_multiple_of(4) - len) as usize]
}

/// Builds every artifact into `out` and commits them, `SHA256SUMS` last. Returns the final
/// paths.
pub fn build(out: &OutputDir, req: &NetbootRequest<'_>) -> Result<Vec<PathBuf>> {
    let kernel = efi::find_kernel(req.root, req.arch)?;
    let hook = hook_files(req.root, &kernel)?;

    let sq = out.create("root.squashfs")?;
    let records = make_squashfs(req.root, &sq, &req.squashfs)?;
    let sq_len = std::fs::metadata(sq.tmp_path())?.len();
    let sq_sha = crate::fetch::cache::sha256_file(sq.tmp_path())?;

    let mut pending: Vec<(String, PendingFile)> = Vec::new();
    for (name, c) in [(KERNEL_FILE, &kernel.image), (INITRD_FILE, &kernel.initrd)] {
        let mut f = out.create(name)?;
        let n = io::copy(&mut c.open()?, f.file()).with_context(|| format!("writing {name}"))?;
        if name == INITRD_FILE {
            f.file()
                .write_all(&initrd_padding(n))
                .with_context(|| format!("writing {name}"))?;
        }
        pending.push((name.to_string(), f));
    }
    let mut cpio = out.create(CPIO_FILE)?;
    let image = std::fs::File::open(sq.tmp_path())?;
    write_cpio(
        io::BufWriter::new(cpio.file()),
        &hook,
        (sq_len, Box::new(image)),
        req.epoch,
    )
    .context("writing imgbuild.cpio")?;
    drop(sq);
    pending.push((CPIO_FILE.to_string(), cpio));
    if !req.ipxe.is_empty() {
        std::fs::create_dir_all(out.path().join("ipxe"))?;
    }
    for i in req.ipxe {
        let mut f = out.create(&i.name)?;
        io::copy(&mut i.content.open()?, f.file())
            .with_context(|| format!("writing {}", i.name))?;
        pending.push((i.name.clone(), f));
    }
    let cmdline = netboot_cmdline(req.cmdline, &sq_sha);
    let pi = match &req.pi {
        Some(p) => Some(write_pi_tree(out, p, &cmdline, &mut pending)?),
        None => None,
    };
    let mut files = Vec::new();
    for (name, f) in &mut pending {
        files.push(ArtifactFile {
            name: name.clone(),
            size: f.file().metadata()?.len(),
            sha256: crate::fetch::cache::sha256_file(f.tmp_path())?,
        });
    }
    let cmdline = cmdline.join(" ");
    let json = NetbootJson {
        profile: req.profile.to_string(),
        arch: req.arch.as_str().to_string(),
        kernel: KERNEL_FILE.into(),
        initrds: vec![INITRD_FILE.into(), CPIO_FILE.into()],
        cmdline,
        files: files.clone(),
        ipxe: req
            .ipxe
            .iter()
            .map(|i| (i.key.clone(), i.name.clone()))
            .collect(),
        pi,
    };
    let manifest = NetbootManifest {
        format: 1,
        source_date_epoch: req.epoch.max(0) as u64,
        kernel_version: kernel.version.clone(),
        profile: redact(req.profile_json),
        inputs: req.inputs.to_vec(),
        root: RootImage {
            file: format!("{CPIO_FILE}:{ROOT_IMAGE}"),
            fs: "squashfs".into(),
            compression: format!("zstd-{}", req.squashfs.level),
            size: sq_len,
            sha256: sq_sha,
            files: records.iter().map(ManifestFile::from).collect(),
        },
        files,
    };
    for (name, text) in [
        (JSON_FILE, pretty(&json)?),
        (MANIFEST_FILE, pretty(&manifest)?),
    ] {
        let mut f = out.create(name)?;
        f.file().write_all(text.as_bytes())?;
        pending.push((name.to_string(), f));
    }
    commit_all(out, pending)
}

/// Writes `pi/`: the shared files, the generated `config.txt`, a `cmdline.txt` per node.
fn write_pi_tree(
    out: &OutputDir,
    p: &PiRequest<'_>,
    cmdline: &[String],
    pending: &mut Vec<(String, PendingFile)>,
) -> Result<PiJson> {
    let image_config = efi::file_content(p.boot, pitree::CONFIG)
        .map(|c| c.read_all())
        .transpose()?
        .unwrap_or_default();
    let config = pitree::config_txt(&String::from_utf8_lossy(&image_config), p.boot, CPIO_FILE)?;
    let mut files = pitree::shared_files(p.boot)?;
    files.push((pitree::CONFIG.into(), Content::bytes(config.into_bytes())));
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let shared_line = pitree::shared_cmdline(cmdline);
    let mut nodes = BTreeMap::new();
    let mut all: Vec<(String, Content)> = Vec::new();
    for (name, c) in &files {
        all.push((format!("{}/{name}", pitree::PI_DIR), c.clone()));
    }
    for n in &p.nodes {
        let text = pitree::node_cmdline(&shared_line, &p.base_url, &n.network_config);
        let name = format!("{}/{}/{}", pitree::PI_DIR, n.folder, pitree::CMDLINE);
        all.push((name, Content::bytes(text.into_bytes())));
        nodes.insert(n.folder.clone(), n.node.clone());
    }
    for (name, c) in all {
        let path = out.path().join(&name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = out.create(&name)?;
        io::copy(&mut c.open()?, f.file()).with_context(|| format!("writing {name}"))?;
        pending.push((name, f));
    }
    Ok(PiJson {
        shared: files.into_iter().map(|(n, _)| n).collect(),
        set_files: vec![CPIO_FILE.into()],
        nodes,
    })
}

fn pretty<T: Serialize>(v: &T) -> Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

/// Writes `SHA256SUMS` over every file, retires the old one, renames everything into place.
fn commit_all(out: &OutputDir, mut pending: Vec<(String, PendingFile)>) -> Result<Vec<PathBuf>> {
    let mut sums = Vec::new();
    for (name, f) in &mut pending {
        f.file().flush()?;
        sums.push((
            name.clone(),
            crate::fetch::cache::sha256_file(f.tmp_path())?,
        ));
    }
    sums.sort();
    let text: String = sums.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    let mut sf = out.create(SUMS_FILE)?;
    sf.file().write_all(text.as_bytes())?;
    let old = out.path().join(SUMS_FILE);
    if old.exists() {
        std::fs::remove_file(&old)
            .with_context(|| format!("removing the previous {}", old.display()))?;
    }
    let mut paths = Vec::new();
    for (_, f) in pending {
        paths.push(f.commit(true)?);
    }
    paths.push(sf.commit(true)?);
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_padding_reaches_a_multiple_of_four() {
        for len in 0..9u64 {
            assert_eq!((len + initrd_padding(len).len() as u64) % 4, 0, "{len}");
            assert!(initrd_padding(len).len() < 4);
        }
    }

    /// The server loads what the builder writes: every iPXE key is one the set reader knows.
    #[test]
    fn every_ipxe_key_written_is_known_to_the_set_reader() {
        for (key, _, _) in IPXE_FILES {
            assert!(super::super::set::IPXE_KEYS.contains(key), "{key}");
        }
    }

    #[test]
    fn cmdline_drops_the_disk_seed_and_names_the_root() {
        let image: Vec<String> = [
            "ro",
            "init=/usr/local/lib/imgbuild/preinit",
            "console=ttyS0,115200",
            "ds=nocloud;s=file:///boot/efi/",
        ]
        .map(String::from)
        .to_vec();
        let c = netboot_cmdline(&image, &"a".repeat(64));
        assert_eq!(c[0], "boot=imgbuild");
        assert!(c.contains(&"ro".to_string()));
        assert!(c.contains(&"init=/usr/local/lib/imgbuild/preinit".to_string()));
        assert!(!c.iter().any(|a| a.starts_with("ds=")));
        assert_eq!(c[c.len() - 2], "imgbuild.root=/imgbuild/root.squashfs");
        assert_eq!(
            c[c.len() - 1],
            format!("imgbuild.root-sha256={}", "a".repeat(64))
        );
    }
}
