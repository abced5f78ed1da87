//! Partition discovery in a base disk image: the MBR or GPT (parsed by [`crate::disk::mbr`] /
//! [`crate::disk::gpt`]), each partition's filesystem (by [`crate::fs::probe`]), and which
//! partition is boot and which is root.
//!
//! Which is which: the profile's `base.boot-partition` / `base.root-partition` (a 1-based number,
//! a GPT partition name or a filesystem label) if set; otherwise by type (GPT ESP / MBR 0xEF, GPT
//! root-x86-64 / root-arm64), then by label (`bootfs`, `boot`, `esp`, `efi` / `rootfs`, `root`),
//! then the first FAT partition for boot and the largest ext4 partition for root.

use std::io::{self, Read, Seek, SeekFrom};

use super::RawError;
use crate::blockio::{ReadAt, SliceCursor};
use crate::disk::gpt::{GptError, GptTable};
use crate::disk::layout::PartType;
use crate::disk::mbr::{MbrError, MbrTable};
use crate::fs::probe::{self, FsKind};

/// The partition table kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Mbr,
    Gpt,
}

/// The partition's type as the table states it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartTypeId {
    Mbr(u8),
    Gpt(String),
}

/// One partition of a base image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based, as the kernel numbers it.
    pub number: u32,
    /// Byte offset and length inside the image.
    pub offset: u64,
    pub size: u64,
    pub type_id: PartTypeId,
    /// GPT partition name (empty on MBR).
    pub name: String,
    pub fs: FsKind,
    /// Filesystem label (ext4 volume name, FAT boot-sector label), trimmed.
    pub label: String,
}

impl Partition {
    fn describe(&self) -> String {
        let mut s = format!("{} ({}", self.number, self.fs.name());
        if !self.label.is_empty() {
            s.push_str(&format!(", label {:?}", self.label));
        }
        if !self.name.is_empty() {
            s.push_str(&format!(", name {:?}", self.name));
        }
        s.push(')');
        s
    }

    fn is_esp(&self) -> bool {
        match &self.type_id {
            PartTypeId::Mbr(t) => *t == 0xEF,
            PartTypeId::Gpt(g) => *g == PartType::Esp.gpt_type().to_string(),
        }
    }

    fn is_root_type(&self) -> bool {
        match &self.type_id {
            PartTypeId::Mbr(_) => false,
            PartTypeId::Gpt(g) => {
                *g == PartType::RootX86_64.gpt_type().to_string()
                    || *g == PartType::RootArm64.gpt_type().to_string()
            }
        }
    }

    /// Does a profile's selector (number, GPT name or label) name this partition?
    fn matches(&self, sel: &str) -> bool {
        sel.parse::<u32>().is_ok_and(|n| n == self.number)
            || (!self.name.is_empty() && self.name == sel)
            || (!self.label.is_empty() && self.label.eq_ignore_ascii_case(sel))
    }
}

/// Reads the partition table of a disk image of `size` bytes and probes each partition's
/// filesystem. Empty slots are skipped; MBR extended partitions (logical partitions) are not
/// read. A partition reaching past the end of the image is an error.
pub fn read_partitions<R: ReadAt + ?Sized>(
    src: &R,
    size: u64,
    image: &str,
) -> Result<(Scheme, Vec<Partition>), RawError> {
    let mut cursor = SliceCursor::new(src, 0, size);
    let disk = &mut cursor;
    let io = |source| RawError::Io {
        image: image.to_string(),
        source,
    };
    let mbr = match MbrTable::read(disk, size) {
        Ok(m) => m,
        Err(MbrError::Io(e)) => return Err(io(e)),
        Err(_) => {
            return Err(RawError::NoTable {
                image: image.to_string(),
            });
        }
    };
    let mut parts = Vec::new();
    let scheme = if mbr.entries.iter().any(|e| e.type_byte == 0xEE) {
        let gpt = GptTable::read(disk, size).map_err(|source| match source {
            GptError::Io(e) => io(e),
            source => RawError::Gpt {
                image: image.to_string(),
                source,
            },
        })?;
        let slots = gpt_slots(disk).map_err(io)?;
        for (i, e) in gpt.entries.iter().enumerate() {
            // The table reader drops empty slots; partition numbers are slot positions.
            let number = slots
                .iter()
                .position(|g| *g == e.unique_guid.to_gpt_bytes())
                .map_or(i as u32 + 1, |s| s as u32 + 1);
            let bad = || RawError::PastEnd {
                image: image.to_string(),
                number,
                end: u64::MAX,
                size,
            };
            let offset = e.first_lba.checked_mul(512).ok_or_else(bad)?;
            let len = e
                .last_lba
                .checked_sub(e.first_lba)
                .and_then(|n| n.checked_add(1))
                .and_then(|n| n.checked_mul(512))
                .ok_or_else(bad)?;
            parts.push(Partition {
                number,
                offset,
                size: len,
                type_id: PartTypeId::Gpt(e.type_guid.to_string()),
                name: e.name.clone(),
                fs: FsKind::Unknown,
                label: String::new(),
            });
        }
        Scheme::Gpt
    } else {
        for (i, e) in mbr.entries.iter().enumerate() {
            if e.type_byte == 0 || e.sectors == 0 || matches!(e.type_byte, 0x05 | 0x0F | 0x85) {
                continue;
            }
            parts.push(Partition {
                number: i as u32 + 1,
                offset: u64::from(e.first_lba) * 512,
                size: u64::from(e.sectors) * 512,
                type_id: PartTypeId::Mbr(e.type_byte),
                name: String::new(),
                fs: FsKind::Unknown,
                label: String::new(),
            });
        }
        Scheme::Mbr
    };
    for p in &mut parts {
        let end = p.offset.saturating_add(p.size);
        if end > size || p.offset == 0 {
            return Err(RawError::PastEnd {
                image: image.to_string(),
                number: p.number,
                end,
                size,
            });
        }
        let found = probe::probe(src, p.offset, p.size).map_err(io)?;
        p.fs = found.kind;
        p.label = found.label.unwrap_or_default();
    }
    Ok((scheme, parts))
}

/// The unique GUID (on-disk bytes) of every slot of the primary GPT entry array, empty ones
/// included. Called only after [`GptTable::read`] checked the header and the array's CRC.
fn gpt_slots<R: Read + Seek>(disk: &mut R) -> io::Result<Vec<[u8; 16]>> {
    let mut h = [0u8; 512];
    disk.seek(SeekFrom::Start(512))?;
    disk.read_exact(&mut h)?;
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let lba = u64::from_le_bytes(h[72..80].try_into().expect("8 bytes"));
    let (count, esize) = (
        u32_at(80).min(1024) as usize,
        u32_at(84).clamp(128, 4096) as usize,
    );
    let mut array = vec![0u8; count * esize];
    disk.seek(SeekFrom::Start(lba.saturating_mul(512)))?;
    disk.read_exact(&mut array)?;
    Ok(array
        .chunks_exact(esize)
        .map(|c| c[16..32].try_into().expect("16 bytes"))
        .collect())
}

/// Picks the boot and root partitions (indexes into `parts`).
pub fn select(
    parts: &[Partition],
    boot: Option<&str>,
    root: Option<&str>,
    image: &str,
) -> Result<(Option<usize>, usize), RawError> {
    let list = || {
        parts
            .iter()
            .map(Partition::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let err = |what: String| RawError::Select {
        image: image.to_string(),
        what,
        list: list(),
    };
    let by_sel = |sel: &str, key: &str| {
        let hits: Vec<usize> = (0..parts.len())
            .filter(|&i| parts[i].matches(sel))
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(err(format!("no partition matches {key} = {sel:?}"))),
            _ => Err(err(format!(
                "several partitions match {key} = {sel:?}; use the partition number"
            ))),
        }
    };
    let labelled = |names: &[&str], fs: FsKind| {
        (0..parts.len()).find(|&i| {
            parts[i].fs == fs
                && names.iter().any(|n| {
                    parts[i].label.eq_ignore_ascii_case(n) || parts[i].name.eq_ignore_ascii_case(n)
                })
        })
    };
    let boot = match boot {
        Some(sel) => Some(by_sel(sel, "base.boot-partition")?),
        None => (0..parts.len())
            .find(|&i| parts[i].is_esp() && parts[i].fs == FsKind::Fat)
            .or_else(|| labelled(&["bootfs", "boot", "esp", "efi"], FsKind::Fat))
            .or_else(|| (0..parts.len()).find(|&i| parts[i].fs == FsKind::Fat)),
    };
    let root = match root {
        Some(sel) => by_sel(sel, "base.root-partition")?,
        None => (0..parts.len())
            .find(|&i| parts[i].is_root_type() && parts[i].fs == FsKind::Ext4)
            .or_else(|| labelled(&["rootfs", "root"], FsKind::Ext4))
            .or_else(|| {
                (0..parts.len())
                    .filter(|&i| parts[i].fs == FsKind::Ext4)
                    .max_by_key(|&i| (parts[i].size, std::cmp::Reverse(i)))
            })
            .ok_or_else(|| {
                err("no ext4 root partition found; set base.root-partition".to_string())
            })?,
    };
    if parts[root].fs != FsKind::Ext4 {
        return Err(err(format!(
            "the root partition {} is not ext4",
            parts[root].describe()
        )));
    }
    if let Some(b) = boot {
        if b == root {
            return Err(err("boot and root name the same partition".into()));
        }
        if parts[b].fs != FsKind::Fat {
            return Err(err(format!(
                "the boot partition {} is not FAT",
                parts[b].describe()
            )));
        }
    }
    Ok((boot, root))
}
