//! Linux block devices: what a target is, what uses it, and opening it exclusively.
//!
//! Discovery reads sysfs and `/proc` directly rather than through the `udev` crate (which links
//! libudev) or `lsblk --json` (whose output changed between util-linux versions): `/sys/block`
//! gives size, read-only flag, removable flag, model, serial and partitions; `holders/` and
//! `slaves/` the device-mapper/md/LVM stacking; `loop/backing_file` and `loop/offset` the loop
//! devices set up over a disk or over a byte range of it; `/proc/self/mountinfo` and
//! `/proc/swaps` what is mounted or swapped on. Parsing is in small pure functions with tests.

pub mod direct;
pub mod ioctl;
pub mod target;

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Usb,
    Sd,
    Nvme,
    Sata,
    Virtio,
    Loop,
    Other,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Usb => "USB",
            Transport::Sd => "SD/MMC",
            Transport::Nvme => "NVMe",
            Transport::Sata => "SATA",
            Transport::Virtio => "virtio",
            Transport::Loop => "loop",
            Transport::Other => "other",
        }
    }
}

/// One partition of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub name: String,
    pub size: u64,
    pub label: Option<String>,
}

/// A whole disk, as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `/dev/NAME`.
    pub path: PathBuf,
    pub name: String,
    pub size: u64,
    pub read_only: bool,
    pub removable: bool,
    pub transport: Transport,
    pub model: String,
    pub serial: String,
    pub partitions: Vec<PartInfo>,
    /// For a loop device: the file it shows.
    pub backing_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is a partition of /dev/{disk}; flash the whole disk (`imgbuild flash IMAGE /dev/{disk}`)"
    )]
    Partition { path: String, disk: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_attr(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// What a target path is.
pub enum Kind {
    Block(Disk),
    File,
    Missing,
    Other,
}

/// Classifies `path` (symlinks such as `/dev/disk/by-id/…` followed).
pub fn classify(path: &Path) -> Result<Kind, DevError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Kind::Missing),
        Err(e) => return Err(io(path)(e)),
    };
    if meta.file_type().is_block_device() {
        return disk_of_devno(meta.rdev(), path).map(Kind::Block);
    }
    Ok(if meta.is_file() {
        Kind::File
    } else {
        Kind::Other
    })
}

fn devno(rdev: u64) -> (u32, u32) {
    (rustix::fs::major(rdev), rustix::fs::minor(rdev))
}

fn disk_of_devno(rdev: u64, path: &Path) -> Result<Disk, DevError> {
    let (ma, mi) = devno(rdev);
    let link = PathBuf::from(format!("/sys/dev/block/{ma}:{mi}"));
    let sys = std::fs::canonicalize(&link).map_err(io(&link))?;
    if sys.join("partition").exists() {
        let disk = sys
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(DevError::Partition {
            path: path.display().to_string(),
            disk,
        });
    }
    let name = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(describe(&name))
}

fn transport(name: &str, sys_path: &str) -> Transport {
    if name.starts_with("loop") {
        Transport::Loop
    } else if sys_path.contains("/usb") {
        Transport::Usb
    } else if name.starts_with("mmcblk") {
        Transport::Sd
    } else if name.starts_with("nvme") {
        Transport::Nvme
    } else if sys_path.contains("/ata") {
        Transport::Sata
    } else if sys_path.contains("/virtio") {
        Transport::Virtio
    } else {
        Transport::Other
    }
}

/// Labels by device name, from `/dev/disk/by-label`.
fn labels() -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir("/dev/disk/by-label") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let target = std::fs::canonicalize(e.path()).ok()?;
            let name = target.file_name()?.to_string_lossy().into_owned();
            Some((name, unescape_udev(&e.file_name().to_string_lossy())))
        })
        .collect()
}

/// udev escapes spaces and slashes in link names as `\x20`.
fn unescape_udev(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("\\x") {
        out.push_str(&rest[..i]);
        match u8::from_str_radix(rest.get(i + 2..i + 4).unwrap_or(""), 16) {
            Ok(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            Err(_) => {
                out.push_str("\\x");
                rest = &rest[i + 2..];
            }
        }
    }
    out + rest
}

/// Everything sysfs says about disk `name`.
pub fn describe(name: &str) -> Disk {
    let sys = PathBuf::from("/sys/block").join(name);
    let attr = |rel: &str| read_attr(&sys.join(rel));
    let canon = std::fs::canonicalize(&sys).unwrap_or_else(|_| sys.clone());
    let t = transport(name, &canon.to_string_lossy());
    let sectors: u64 = attr("size").and_then(|s| s.parse().ok()).unwrap_or(0);
    let model = [
        attr("device/vendor"),
        attr("device/model"),
        attr("device/name"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let serial = attr("device/serial")
        .or_else(|| attr("serial"))
        .unwrap_or_default();
    let labels = labels();
    let mut partitions: Vec<PartInfo> = std::fs::read_dir(&sys)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("partition").exists())
        .map(|e| {
            let pname = e.file_name().to_string_lossy().into_owned();
            let size = read_attr(&e.path().join("size")).and_then(|s| s.parse::<u64>().ok());
            PartInfo {
                label: labels
                    .iter()
                    .find(|(n, _)| *n == pname)
                    .map(|(_, l)| l.clone()),
                name: pname,
                size: size.unwrap_or(0) * 512,
            }
        })
        .collect();
    partitions.sort_by(|a, b| a.name.cmp(&b.name));
    Disk {
        path: PathBuf::from("/dev").join(name),
        name: name.to_string(),
        size: sectors * 512,
        read_only: attr("ro").as_deref() == Some("1"),
        removable: attr("removable").as_deref() == Some("1")
            || matches!(t, Transport::Usb | Transport::Sd),
        transport: t,
        model: if model.is_empty() {
            "unknown model".into()
        } else {
            model
        },
        serial: if serial.is_empty() {
            "no serial".into()
        } else {
            serial
        },
        partitions,
        backing_file: attr("loop/backing_file").map(PathBuf::from),
    }
}

/// Every disk of the machine, except RAM disks, zram and optical drives.
pub fn list() -> Vec<Disk> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !["ram", "zram", "sr", "fd"].iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| describe(n))
        .filter(|d| d.size > 0)
        .collect()
}

/// A mount: the device number of its source, where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub devno: (u32, u32),
    pub mountpoint: String,
    pub source: String,
}

/// `/proc/self/mountinfo` → mounts (fields: id parent major:minor root mountpoint … - type source).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (ma, mi) = f.get(2)?.split_once(':')?;
            let dash = f.iter().position(|x| *x == "-")?;
            Some(Mount {
                devno: (ma.parse().ok()?, mi.parse().ok()?),
                mountpoint: unescape_octal(f.get(4)?),
                source: unescape_octal(f.get(dash + 2).unwrap_or(&"")),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (b[i], oct) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/proc/swaps` → the swap files and devices in use.
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape_octal)
        .collect()
}

/// The sysfs name of a device number (`sda1`, `dm-0`, `loop3`).
fn name_of(devno: (u32, u32)) -> Option<String> {
    let p = std::fs::canonicalize(format!("/sys/dev/block/{}:{}", devno.0, devno.1)).ok()?;
    Some(p.file_name()?.to_string_lossy().into_owned())
}

/// The sysfs directory of block device `name` (a disk or a partition).
fn sys_dir(name: &str) -> Option<PathBuf> {
    std::fs::canonicalize(PathBuf::from("/sys/class/block").join(name)).ok()
}

/// The whole disks that block device `name` lives on: itself or its parent disk, through
/// device-mapper/md `slaves/` and loop devices' backing devices, recursively.
pub fn disks_under(name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) || seen.len() > 256 {
            continue;
        }
        let Some(dir) = sys_dir(&n) else { continue };
        let disk_dir = if dir.join("partition").exists() {
            dir.parent().map(Path::to_path_buf).unwrap_or(dir.clone())
        } else {
            dir.clone()
        };
        let disk = disk_dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.insert(disk.clone());
        for sub in [dir.join("slaves"), disk_dir.join("slaves")] {
            for e in std::fs::read_dir(sub).into_iter().flatten().flatten() {
                todo.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        if let Some(b) = read_attr(&disk_dir.join("loop/backing_file")) {
            if let Some(bn) = backing_block_name(Path::new(&b)) {
                todo.push(bn);
            }
        }
    }
    out
}

/// The block device a loop's backing file is, when it is one.
fn backing_block_name(p: &Path) -> Option<String> {
    let m = std::fs::metadata(p).ok()?;
    m.file_type()
        .is_block_device()
        .then(|| name_of(devno(m.rdev())))
        .flatten()
}

/// A reason the target is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Busy {
    /// `what` (a partition, a loop over it, a dm device) is mounted at `mountpoint`.
    Mounted {
        what: String,
        mountpoint: String,
    },
    Swap {
        what: String,
    },
    /// Holders (device-mapper, md, LVM) stacked on it.
    Held {
        what: String,
        holder: String,
    },
    /// A loop device shows the target (or a byte range of it).
    Loop {
        name: String,
        offset: u64,
        sizelimit: u64,
    },
    /// It holds the running system.
    System {
        mountpoint: String,
    },
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Busy::Mounted { what, mountpoint } => {
                write!(f, "/dev/{what} is mounted at {mountpoint}")
            }
            Busy::Swap { what } => write!(f, "{what} is in use as swap"),
            Busy::Held { what, holder } => write!(
                f,
                "/dev/{what} is held by /dev/{holder} (device-mapper, LVM or md)"
            ),
            Busy::Loop {
                name,
                offset,
                sizelimit,
            } => write!(
                f,
                "loop device /dev/{name} is set up over it (offset {offset}, size limit {sizelimit})"
            ),
            Busy::System { mountpoint } => {
                write!(f, "it holds {mountpoint}, part of the running system")
            }
        }
    }
}

/// Everything that uses `disk`: mounts and swaps on it (directly, through dm/md or through loop
/// devices over it), holders, loop devices over it, the running system's mounts.
pub fn usage(disk: &Disk) -> Vec<Busy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let mut out = Vec::new();
    for m in parse_mountinfo(&mountinfo) {
        let Some(n) = name_of(m.devno) else { continue };
        if !disks_under(&n).contains(&disk.name) {
            continue;
        }
        if ["/", "/boot", "/boot/efi", "/usr"].contains(&m.mountpoint.as_str()) {
            out.push(Busy::System {
                mountpoint: m.mountpoint.clone(),
            });
        }
        out.push(Busy::Mounted {
            what: n,
            mountpoint: m.mountpoint,
        });
    }
    for s in parse_swaps(&swaps) {
        let dev = backing_block_name(Path::new(&s));
        if dev.is_some_and(|n| disks_under(&n).contains(&disk.name)) {
            out.push(Busy::Swap { what: s });
        }
    }
    out.extend(holders(disk));
    out.extend(loops_over(disk));
    out
}

fn holders(disk: &Disk) -> Vec<Busy> {
    let mut out = Vec::new();
    let names =
        std::iter::once(disk.name.clone()).chain(disk.partitions.iter().map(|p| p.name.clone()));
    for n in names {
        let Some(dir) = sys_dir(&n) else { continue };
        for e in std::fs::read_dir(dir.join("holders"))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(Busy::Held {
                what: n.clone(),
                holder: e.file_name().to_string_lossy().into_owned(),
            });
        }
    }
    out
}

fn loops_over(disk: &Disk) -> Vec<Busy> {
    list_loops()
        .into_iter()
        .filter(|(name, _, _, backing)| {
            *name != disk.name && backing_block_name(backing).is_some_and(|b| b == disk.name)
        })
        .map(|(name, offset, sizelimit, _)| Busy::Loop {
            name,
            offset,
            sizelimit,
        })
        .collect()
}

/// Loop devices in use: name, offset, size limit, backing file.
fn list_loops() -> Vec<(String, u64, u64, PathBuf)> {
    let num = |p: PathBuf| read_attr(&p).and_then(|s| s.parse().ok()).unwrap_or(0);
    std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let l = e.path().join("loop");
            let backing = read_attr(&l.join("backing_file"))?;
            Some((
                name,
                num(l.join("offset")),
                num(l.join("sizelimit")),
                PathBuf::from(backing),
            ))
        })
        .collect()
}

/// Opens a block device for writing with `O_EXCL`: the kernel refuses (EBUSY) while any
/// partition is mounted or another program holds it exclusively, and keeps desktop automounters
/// off it while we write.
pub fn open_exclusive(path: &Path) -> Result<File, DevError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(path)
        .map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_and_swaps_parse() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 22 7:1 / /mnt/with\\040space rw - vfat /dev/loop1 rw\n\
                    41 22 0:5 / /proc rw - proc proc rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].devno, (254, 0));
        assert_eq!(m[1].mountpoint, "/mnt/with space");
        assert_eq!(m[1].source, "/dev/loop1");
        let s = parse_swaps(
            "Filename Type Size Used Priority\n/dev/sdb2 partition 1 0 -2\n/swap\\040file file 1 0 -3\n",
        );
        assert_eq!(s, vec!["/dev/sdb2", "/swap file"]);
        assert_eq!(unescape_udev("my\\x20card"), "my card");
    }

    #[test]
    fn transports_from_sysfs_paths() {
        assert_eq!(
            transport(
                "sdb",
                "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb"
            ),
            Transport::Usb
        );
        assert_eq!(
            transport(
                "mmcblk0",
                "/sys/devices/platform/emmc2bus/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0"
            ),
            Transport::Sd
        );
        assert_eq!(
            transport("nvme0n1", "/sys/devices/pci0000:00/nvme/nvme0/nvme0n1"),
            Transport::Nvme
        );
        assert_eq!(
            transport(
                "sda",
                "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/block/sda"
            ),
            Transport::Sata
        );
        assert_eq!(
            transport("loop0", "/sys/devices/virtual/block/loop0"),
            Transport::Loop
        );
    }
}
