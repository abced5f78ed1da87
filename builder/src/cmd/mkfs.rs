//! `imgbuild mkfs`: a rootless `mkfs -d` that also reads tarballs and images.
//!
//! The source (a folder, or whatever a profile's base may be: a tar / .tar.gz / .tar.xz /
//! .tar.zst, an ext4 image, a disk image, read by the build's own base dispatcher) becomes a
//! tree; ownership comes from tar headers or inodes, or is `root:root` (or `--owner`) for
//! folders, so an unprivileged user builds a root-owned filesystem. Nothing depends on the host beyond the source itself:
//!
//! * the epoch is `--epoch`, else `SOURCE_DATE_EPOCH`, else 0 (1970-01-01; FAT stores its
//!   earliest date, 1980-01-01) — never the clock. Every time in the tree is clamped to it.
//! * the UUID / hash seed / FAT volume id default to values derived from the filesystem type,
//!   label, epoch and a digest of the tree listing (every path, type, size, owner, mode, time,
//!   link target and xattr), so the same input gives the same identifiers, a different input
//!   different ones. File bytes are not read for this (they are read once, when written).
//!
//! The output is written sparse under a temporary name and renamed when complete.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest, Sha256};

use super::Context;
use crate::blockio::region::SeekSink;
use crate::fs::{ext4, fat};
use crate::ids::{Guid, ImageSeed};
use crate::output::PendingFile;
use crate::source::dir::{DirOptions, Ownership};
use crate::source::raw;
use crate::tree::{Kind, Tree};
use crate::unpack::UnpackLimit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsType {
    /// ext4 (4 KiB blocks, journal, metadata checksums).
    Ext4,
    /// FAT32 (boot and EFI system partitions).
    Fat,
}

/// Write a filesystem image from a folder or tarball, without root.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    imgbuild mkfs ext4 --from rootfs.tar.zst -o root.img --size auto --label root\n  \
    imgbuild mkfs fat --from boot/ -o boot.img --size 256M --label BOOT --epoch 1700000000")]
pub struct Args {
    /// Filesystem to write.
    #[arg(value_enum)]
    pub fs: FsType,
    /// Source: a folder, a tar archive (plain, gzip, xz or zstd), an ext4 filesystem image or a
    /// disk image (its root filesystem), each optionally xz-compressed.
    #[arg(long, value_name = "DIR|TARBALL|IMAGE")]
    pub from: PathBuf,
    /// Output image file.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Image size: bytes or with a suffix (K, M, G, T; powers of 1024), or `auto` (the smallest
    /// size that fits, plus headroom).
    #[arg(long, default_value = "auto", value_name = "SIZE|auto")]
    pub size: String,
    /// Volume label (ext4: up to 16 bytes; FAT: up to 11 characters, stored upper-case).
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// ext4: filesystem UUID; FAT: volume id (XXXX-XXXX). Default: derived from the input.
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// Timestamp for every entry and the superblock (seconds since 1970, UTC). Default:
    /// SOURCE_DATE_EPOCH, else 0.
    #[arg(long, value_name = "SECS", env = "SOURCE_DATE_EPOCH")]
    pub epoch: Option<i64>,
    /// Owner of every entry (default for folders: 0:0; tarballs keep their headers' owners
    /// unless this is given).
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner)]
    pub owner: Option<(u32, u32)>,
    /// Folders: copy extended attributes (security.capability, user.*) from the host.
    #[arg(long)]
    pub xattrs: bool,
    /// The most a compressed `--from` may decompress to (same units as `--size`); `auto`: four
    /// times `--size`, at least 16 GiB, or 256 GiB with `--size auto`.
    #[arg(long, default_value = "auto", value_name = "SIZE|auto")]
    pub max_unpacked: String,
    /// Replace the output file even if imgbuild did not create it.
    #[arg(long)]
    pub force: bool,
}

fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected UID:GID, e.g. 0:0"))?;
    let n = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{v:?} is not a numeric id (names are not looked up)"))
    };
    Ok((n(u)?, n(g)?))
}

/// Parses `auto` or a size with an optional binary suffix.
fn parse_size(flag: &str, s: &str) -> Result<Option<u64>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    let lower = t.to_ascii_lowercase();
    let lower = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some('t') => (&lower[..lower.len() - 1], 1 << 40),
        _ => (lower, 1),
    };
    let n: u64 = num.trim().parse().with_context(|| {
        format!("{flag} {s:?}: expected `auto`, bytes, or a number with K/M/G/T")
    })?;
    n.checked_mul(mult)
        .map(Some)
        .with_context(|| format!("{flag} {s:?} is too large"))
}

fn parse_volume_id(s: &str) -> Result<u32> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 8 {
        bail!("--uuid {s:?}: a FAT volume id is 8 hex digits, e.g. 1A2B-3C4D");
    }
    u32::from_str_radix(&hex, 16).with_context(|| format!("--uuid {s:?}: not hexadecimal"))
}

/// A digest of everything in the tree that reaches the image, without reading file contents.
fn tree_digest(tree: &Tree) -> [u8; 32] {
    let mut h = Sha256::new();
    for (path, e) in tree.iter() {
        h.update((path.as_bytes().len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(e.kind.name());
        match &e.kind {
            Kind::File(c) => h.update(c.len.to_le_bytes()),
            Kind::Symlink(t) => h.update(t),
            Kind::Hardlink(t) => h.update(t.as_bytes()),
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                h.update(major.to_le_bytes());
                h.update(minor.to_le_bytes());
            }
            _ => {}
        }
        for v in [e.mode, e.uid, e.gid] {
            h.update(v.to_le_bytes());
        }
        h.update(e.mtime.to_le_bytes());
        for (k, v) in &e.xattrs {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k);
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        }
    }
    h.finalize().into()
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let epoch = args.epoch.unwrap_or(0);
    let size = parse_size("--size", &args.size)?;
    let output_dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();

    // Read the source. A tarball's tree points into it (or into a scratch copy kept alive here).
    let mut tree = Tree::new();
    let md = std::fs::metadata(&args.from)
        .with_context(|| format!("--from {}: cannot read it", args.from.display()))?;
    let _archive = if md.is_dir() {
        let opts = DirOptions {
            ownership: match args.owner {
                Some((uid, gid)) => Ownership::Fixed { uid, gid },
                None => Ownership::default(),
            },
            xattrs: args.xattrs,
        };
        crate::source::dir::read_dir_into(&args.from, &mut tree, &opts)?;
        None
    } else {
        // The base dispatcher: a tarball, a bare ext4 image or a disk image (its root), by content.
        let limit = match parse_size("--max-unpacked", &args.max_unpacked)? {
            Some(max) => UnpackLimit { max },
            None => UnpackLimit::for_image(size),
        };
        let base = raw::open_base(
            &args.from,
            raw::Decompress::Scratch,
            &output_dir,
            &limit,
            None,
            None,
        )
        .with_context(|| format!("--from {}", args.from.display()))?;
        let (root, _boot, a) = base.into_trees();
        tree = root;
        if let Some((uid, gid)) = args.owner {
            for (_, e) in tree.iter_mut() {
                e.uid = uid;
                e.gid = gid;
            }
        }
        Some(a)
    };
    tree.clamp_mtimes(epoch);

    let label = args.label.clone();
    let mut seed_input = Sha256::new();
    seed_input.update(match args.fs {
        FsType::Ext4 => "mkfs ext4",
        FsType::Fat => "mkfs fat",
    });
    seed_input.update(label.as_deref().unwrap_or("").as_bytes());
    seed_input.update([0]);
    seed_input.update(epoch.to_le_bytes());
    seed_input.update(tree_digest(&tree));
    let ids = ImageSeed::new(seed_input.finalize().into()).fs_ids(Guid::default());

    let (size, described) = match args.fs {
        FsType::Ext4 => {
            let uuid = match &args.uuid {
                Some(u) => u.parse::<Guid>().with_context(|| format!("--uuid {u:?}"))?,
                None => ids.uuid,
            };
            let params = ext4::Ext4Params {
                uuid: *uuid.as_bytes(),
                hash_seed: *ids.hash_seed.as_bytes(),
                label,
                epoch,
            };
            let size = match size {
                Some(s) => s,
                None => ext4::auto_size(ext4::required_size(&tree, &params)?),
            };
            write_image(&args.output, size, args.force, |sink| {
                ext4::write(&tree, size, &params, sink, &ctx.progress)
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            })?;
            (size, format!("ext4, UUID {uuid}"))
        }
        FsType::Fat => {
            if ctx.verbosity >= 0 {
                for w in fat::unrepresentable(&tree) {
                    eprintln!("warning: {w}");
                }
            }
            let volume_id = match &args.uuid {
                Some(u) => parse_volume_id(u)?,
                None => ids.volume_id,
            };
            let params = fat::FatParams {
                volume_id,
                label: label.unwrap_or_default(),
                epoch,
            };
            let size = match size {
                Some(s) => s,
                None => fat::auto_size(fat::required_size(&tree, &params)?),
            };
            write_image(&args.output, size, args.force, |sink| {
                fat::write(&tree, size, &params, sink, &ctx.progress)
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            })?;
            (
                size,
                format!(
                    "FAT32, volume id {:04X}-{:04X}",
                    volume_id >> 16,
                    volume_id & 0xFFFF
                ),
            )
        }
    };
    if ctx.verbosity >= 0 {
        eprintln!(
            "wrote {}: {described}, {} bytes ({} MiB), {} entries",
            args.output.display(),
            size,
            size >> 20,
            tree.len()
        );
    }
    Ok(())
}

type DynSink<'a> = SeekSink<BufWriter<&'a mut std::fs::File>>;

/// Writes an image of `size` bytes through `write` into a sparse temporary file, renamed into
/// place only when complete.
fn write_image(
    dest: &Path,
    size: u64,
    force: bool,
    write: impl FnOnce(&mut DynSink<'_>) -> Result<()>,
) -> Result<()> {
    if dest.is_dir() {
        bail!("-o {}: is a folder; name the image file", dest.display());
    }
    if dest.exists() && !force {
        bail!(
            "{} already exists; choose another -o or pass --force to replace it",
            dest.display()
        );
    }
    let mut pending = PendingFile::create(dest)?;
    pending
        .file()
        .set_len(size)
        .with_context(|| format!("sizing {} to {size} bytes", pending.tmp_path().display()))?;
    {
        let mut sink = SeekSink::new(BufWriter::with_capacity(1 << 20, pending.file()));
        write(&mut sink)?;
        let (w, _) = sink.into_parts();
        w.into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    pending.commit(force)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("--size", "auto").unwrap(), None);
        assert_eq!(parse_size("--size", "4096").unwrap(), Some(4096));
        assert_eq!(parse_size("--size", "256M").unwrap(), Some(256 << 20));
        assert_eq!(parse_size("--size", "1GiB").unwrap(), Some(1 << 30));
        assert!(parse_size("--size", "lots").is_err());
        assert_eq!(parse_owner("0:0"), Ok((0, 0)));
        assert!(parse_owner("root:root").is_err());
        assert_eq!(parse_volume_id("1a2b-3C4D").unwrap(), 0x1A2B_3C4D);
    }
}
