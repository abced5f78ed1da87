//! The target of a flash: what it is, every reason to refuse it, opening it, and the ioctls
//! around the write. Each refusal says why and what to do; nothing here writes.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Busy, DevError, Disk, Kind, Transport};

/// Larger than this is unusual for a card or stick: `--allow-large` confirms it (Etcher's rule).
pub const LARGE: u64 = 128 << 30;

/// The `--allow-*` flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    pub file: bool,
    pub large: bool,
    pub internal: bool,
}

#[derive(Debug)]
pub enum TargetKind {
    Disk(Disk),
    /// A regular file (`--allow-file`); `exists` is false when it will be created.
    File {
        exists: bool,
    },
}

#[derive(Debug)]
pub struct Target {
    pub path: PathBuf,
    pub kind: TargetKind,
    /// Bytes (a file shorter than the image is extended to it).
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error(transparent)]
    Dev(#[from] DevError),
    #[error(
        "{0} is a regular file, not a block device\n  help: to write the image into a file, add --allow-file; to list disks, run `imgbuild flash --list`"
    )]
    NotBlock(String),
    #[error("{0} does not exist\n  help: name a disk from `imgbuild flash --list`")]
    Missing(String),
    #[error("{0} is neither a block device nor a regular file")]
    Other(String),
    #[error(
        "{0} is read-only (the card's or adapter's write-protect switch, or `blockdev --setro`)\n  help: unlock it and try again"
    )]
    ReadOnly(String),
    #[error(
        "{path} is in use:\n{list}\n  help: unmount its partitions, `swapoff` its swap, detach loop devices over it (`losetup -d`), stop what holds it — or pick another disk (`imgbuild flash --list`)"
    )]
    Busy { path: String, list: String },
    #[error(
        "refusing to write {path}: {why}; this is the disk the machine is running from\n  help: pick another disk (`imgbuild flash --list`)"
    )]
    System { path: String, why: String },
    #[error(
        "{path} is {size} bytes ({}), smaller than the image ({image} bytes, {})\n  help: use a larger card or disk",
        human(*size),
        human(*image)
    )]
    TooSmall { path: String, size: u64, image: u64 },
    #[error(
        "{path} is {} — larger than {} is unusual for an SD card or USB stick, so it may be the wrong disk\n  help: if you really mean {path}, add --allow-large",
        human(*size),
        human(LARGE)
    )]
    Large { path: String, size: u64 },
    #[error(
        "{path} is not removable ({transport} disk {model}), so it may be one of this machine's own disks\n  help: if you really mean {path}, add --allow-internal"
    )]
    Internal {
        path: String,
        transport: &'static str,
        model: String,
    },
    #[error("the image {image} is stored on {path}: flashing would destroy it while it is read")]
    HoldsImage { path: String, image: String },
    #[error(
        "{0} is busy: the kernel refused exclusive access (a partition is mounted, or another program has it open exclusively)\n  help: unmount it, or close the program using it"
    )]
    Exclusive(String),
}

/// `1.5 GiB`, `300 MiB`.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// Resolves and checks `path` as the target for an `image_size`-byte image read from `image`.
pub fn check(path: &Path, image_size: u64, image: &Path, allow: Allow) -> Result<Target, Refusal> {
    let shown = path.display().to_string();
    match super::classify(path)? {
        Kind::Block(disk) => check_disk(disk, image_size, image, allow),
        Kind::File if allow.file && same_file(path, image) => {
            let (path, image) = (shown, image.display().to_string());
            Err(Refusal::HoldsImage { path, image })
        }
        Kind::File if allow.file => {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            Ok(file_target(path, size.max(image_size), true))
        }
        Kind::Missing if allow.file && !path.starts_with("/dev") => {
            Ok(file_target(path, image_size, false))
        }
        Kind::File => Err(Refusal::NotBlock(shown)),
        Kind::Missing => Err(Refusal::Missing(shown)),
        Kind::Other => Err(Refusal::Other(shown)),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn file_target(path: &Path, size: u64, exists: bool) -> Target {
    Target {
        path: path.to_path_buf(),
        kind: TargetKind::File { exists },
        size,
    }
}

fn check_disk(disk: Disk, image_size: u64, image: &Path, allow: Allow) -> Result<Target, Refusal> {
    let path = disk.path.display().to_string();
    if disk.read_only {
        return Err(Refusal::ReadOnly(path));
    }
    check_usage(&disk)?;
    if image_on(&disk, image) {
        let image = image.display().to_string();
        return Err(Refusal::HoldsImage { path, image });
    }
    if disk.size < image_size {
        return Err(Refusal::TooSmall {
            path,
            size: disk.size,
            image: image_size,
        });
    }
    if disk.size > LARGE && !allow.large {
        return Err(Refusal::Large {
            path,
            size: disk.size,
        });
    }
    if !disk.removable && disk.transport != Transport::Loop && !allow.internal {
        return Err(Refusal::Internal {
            path,
            transport: disk.transport.name(),
            model: disk.model.clone(),
        });
    }
    Ok(Target {
        path: disk.path.clone(),
        size: disk.size,
        kind: TargetKind::Disk(disk),
    })
}

fn check_usage(disk: &Disk) -> Result<(), Refusal> {
    let busy = super::usage(disk);
    let path = disk.path.display().to_string();
    if let Some(Busy::System { mountpoint }) =
        busy.iter().find(|b| matches!(b, Busy::System { .. }))
    {
        return Err(Refusal::System {
            path,
            why: format!("it holds {mountpoint}"),
        });
    }
    if busy.is_empty() {
        return Ok(());
    }
    let list = busy
        .iter()
        .map(|b| format!("  - {b}"))
        .collect::<Vec<_>>()
        .join("\n");
    Err(Refusal::Busy { path, list })
}

/// Does the image file live on this disk?
fn image_on(disk: &Disk, image: &Path) -> bool {
    let Ok(m) = std::fs::metadata(image) else {
        return false;
    };
    let dev = m.dev();
    let devno = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let Ok(p) = std::fs::canonicalize(format!("/sys/dev/block/{}:{}", devno.0, devno.1)) else {
        return false;
    };
    p.file_name()
        .map(|n| super::disks_under(&n.to_string_lossy()).contains(&disk.name))
        .unwrap_or(false)
}

/// What a confirmation names: model, serial, size, transport and current partitions.
pub fn describe(t: &Target) -> String {
    let TargetKind::Disk(d) = &t.kind else {
        return format!("{} (a regular file, {})", t.path.display(), human(t.size));
    };
    let mut s = format!(
        "{}: {} (serial {}), {}, {}{}",
        d.path.display(),
        d.model,
        d.serial,
        human(d.size),
        d.transport.name(),
        if d.removable { ", removable" } else { "" }
    );
    if let Some(b) = &d.backing_file {
        s.push_str(&format!(", backed by {}", b.display()));
    }
    if d.partitions.is_empty() {
        s.push_str("\n  no partitions");
    }
    for p in &d.partitions {
        let label = p
            .label
            .as_ref()
            .map(|l| format!(" label {l:?}"))
            .unwrap_or_default();
        s.push_str(&format!(
            "\n  partition {} {}{label}",
            p.name,
            human(p.size)
        ));
    }
    s
}

/// Opens the target for writing: a disk with `O_EXCL`, a file created or extended to `size`.
pub fn open(t: &Target) -> Result<File, Refusal> {
    let path = t.path.display().to_string();
    match &t.kind {
        TargetKind::Disk(_) => super::open_exclusive(&t.path).map_err(|e| match e {
            DevError::Io { source, .. }
                if source.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) =>
            {
                Refusal::Exclusive(path)
            }
            e => Refusal::Dev(e),
        }),
        TargetKind::File { .. } => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&t.path)
                .map_err(|source| DevError::Io {
                    path: path.clone(),
                    source,
                })?;
            if f.metadata().map(|m| m.len()).unwrap_or(0) < t.size {
                f.set_len(t.size)
                    .map_err(|source| DevError::Io { path, source })?;
            }
            Ok(f)
        }
    }
}

/// Drops what the kernel caches of the target, so a read-back comes from the device.
pub fn drop_cache(t: &Target, f: &File) -> std::io::Result<()> {
    rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed)?;
    if matches!(t.kind, TargetKind::Disk(_)) {
        super::ioctl::flush_buffers(f)?;
    }
    Ok(())
}

/// Re-reads the partition table (a disk only). A loop device without partition scanning
/// refuses with EINVAL: not an error for the flash.
pub fn reread(t: &Target, f: &File) -> Option<String> {
    let TargetKind::Disk(d) = &t.kind else {
        return None;
    };
    match super::ioctl::reread_partitions(f) {
        Ok(()) => None,
        Err(_) if d.transport == Transport::Loop => None,
        Err(e) => Some(format!(
            "the kernel did not re-read the partition table of {} ({e}); unplug and replug it before use",
            d.path.display()
        )),
    }
}
