//! Partition discovery in a base disk image: the MBR or GPT (parsed by [`crate::disk::mbr`] /
//! [`crate::disk::gpt`]), each partition's filesystem (by [`crate::fs::probe`]), and which
//! partition is boot and which is root.
//!
//! Which is which: the profile's `base.boot-partition` / `base.root-partition` (a 1-based number,
//! a GPT partition name or a filesystem label) if set; otherwise by type (GPT ESP / MBR 0xEF, GPT
//! root-x86-64 / root-arm64), then by label (`bootfs`, `boot`, `esp`, `efi` / `rootfs`, `root`),
//! then the first FAT partition for boot and the largest ext4 partition for root.

use super::RawError;
use crate::blockio::{ReadAt, SliceCursor};
use crate::disk::layout::PartType;
use crate::disk::probe::{ProbeError, read_table};
use crate::fs::probe::{self, FsKind};

/// The partition table kind.
pub use crate::disk::layout::TableKind as Scheme;
pub use crate::disk::probe::PartTypeId;

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

/// Reads the partition table of a disk image of `size` bytes ([`crate::disk::probe::read_table`])
/// and probes each partition's filesystem.
pub fn read_partitions<R: ReadAt + ?Sized>(
    src: &R,
    size: u64,
    image: &str,
) -> Result<(Scheme, Vec<Partition>), RawError> {
    let io = |source| RawError::Io {
        image: image.to_string(),
        source,
    };
    let table = read_table(&mut SliceCursor::new(src, 0, size), size).map_err(|e| match e {
        ProbeError::Io(e) => io(e),
        ProbeError::NotAnImage(_) => RawError::NoTable {
            image: image.to_string(),
        },
        ProbeError::Gpt(source) => RawError::Gpt {
            image: image.to_string(),
            source,
        },
        ProbeError::Truncated { number, end, size } => RawError::PastEnd {
            image: image.to_string(),
            number,
            end,
            size,
        },
        other => RawError::Table {
            image: image.to_string(),
            source: other,
        },
    })?;
    let mut parts = Vec::new();
    for e in table.entries {
        let found = probe::probe(src, e.offset, e.size).map_err(io)?;
        parts.push(Partition {
            number: e.number,
            offset: e.offset,
            size: e.size,
            type_id: e.type_id,
            name: e.name,
            fs: found.kind,
            label: found.label.unwrap_or_default(),
        });
    }
    Ok((table.kind, parts))
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
