//! Partition layouts as data, and their placement on a disk.
//!
//! A [`Layout`] lists partitions (label, type, size, content); [`Layout::plan`] checks it and
//! computes where every partition goes. Contents are trait objects ([`PartitionContent`]), so this
//! module knows nothing of how a filesystem is written; it only asks how much room one needs.

use std::fmt;
use std::str::FromStr;

use crate::blockio::region::Sink;
use crate::fs::FileRecord;
use crate::ids::{FsIds, Guid};
use crate::progress::Progress;

/// 512-byte logical sectors: what every SD card, USB stick and cloud disk image uses.
pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries (erase-block friendly, what every partitioning tool does).
pub const MIB: u64 = 1 << 20;

/// An error from a partition's content (a filesystem writer's own error type).
pub type ContentError = Box<dyn std::error::Error + Send + Sync>;

/// What a partition's content is, for reports and label checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentInfo {
    /// `ext4`, `vfat`, `raw`, `none`.
    pub fs: &'static str,
    /// FAT flavour or similar detail (`FAT32`), if any.
    pub detail: Option<String>,
    /// The filesystem label, if the content carries one.
    pub label: Option<String>,
    /// Longest label the filesystem takes, in bytes (ext4 16, FAT 11).
    pub label_max: Option<usize>,
}

/// Everything a content needs to write itself besides the bytes it already holds.
#[derive(Debug, Clone, Copy)]
pub struct WriteParams {
    /// Bytes available (the partition size).
    pub size: u64,
    /// Identifiers derived from the image seed for this partition.
    pub ids: FsIds,
    /// SOURCE_DATE_EPOCH: the time written wherever a filesystem wants "now".
    pub epoch: u64,
}

/// The content of a partition: a filesystem writer (through an adapter) or raw bytes.
pub trait PartitionContent: Send + Sync {
    /// The smallest size, in bytes, this content fits in.
    fn required_size(&self) -> Result<u64, ContentError>;
    /// The size `size = "auto"` gives, from the required size: a filesystem may want headroom.
    fn auto_size(&self, required: u64) -> u64 {
        required
    }
    /// Writes the content into `sink` (offsets relative to the partition start), returning the
    /// files it holds for the manifest.
    fn write(
        &self,
        params: &WriteParams,
        sink: &mut dyn Sink,
        progress: &Progress,
    ) -> Result<Vec<FileRecord>, ContentError>;
    fn describe(&self) -> ContentInfo;
}

/// Raw bytes written at the start of the partition (a prebuilt filesystem, a bootloader blob).
pub struct RawContent(pub Vec<u8>);

impl PartitionContent for RawContent {
    fn required_size(&self) -> Result<u64, ContentError> {
        Ok(self.0.len() as u64)
    }

    fn write(
        &self,
        _: &WriteParams,
        sink: &mut dyn Sink,
        _: &Progress,
    ) -> Result<Vec<FileRecord>, ContentError> {
        sink.write_at(0, &self.0)?;
        Ok(Vec::new())
    }

    fn describe(&self) -> ContentInfo {
        ContentInfo {
            fs: "raw",
            detail: None,
            label: None,
            label_max: None,
        }
    }
}

/// Nothing: the partition is left as a hole (formatted at first boot, or a placeholder).
pub struct EmptyContent;

impl PartitionContent for EmptyContent {
    fn required_size(&self) -> Result<u64, ContentError> {
        Ok(0)
    }

    fn write(
        &self,
        _: &WriteParams,
        _: &mut dyn Sink,
        _: &Progress,
    ) -> Result<Vec<FileRecord>, ContentError> {
        Ok(Vec::new())
    }

    fn describe(&self) -> ContentInfo {
        ContentInfo {
            fs: "none",
            detail: None,
            label: None,
            label_max: None,
        }
    }
}

/// A partition type, with its GPT type GUID (Discoverable Partitions Specification) and the MBR
/// type byte used when the table is MBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartType {
    /// EFI System Partition.
    Esp,
    /// A FAT boot partition that is not an ESP (Raspberry Pi firmware): MBR 0x0C.
    Fat32,
    RootX86_64,
    RootArm64,
    LinuxGeneric,
}

impl PartType {
    pub const ALL: [PartType; 5] = [
        PartType::Esp,
        PartType::Fat32,
        PartType::RootX86_64,
        PartType::RootArm64,
        PartType::LinuxGeneric,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PartType::Esp => "esp",
            PartType::Fat32 => "fat32",
            PartType::RootX86_64 => "root-x86-64",
            PartType::RootArm64 => "root-arm64",
            PartType::LinuxGeneric => "linux-generic",
        }
    }

    /// The GPT partition type GUID.
    pub fn gpt_type(self) -> Guid {
        let s = match self {
            PartType::Esp => "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            // Microsoft basic data: what a plain FAT partition is on GPT.
            PartType::Fat32 => "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",
            PartType::RootX86_64 => "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            PartType::RootArm64 => "b921b045-1df0-41c3-af44-4c6f280d3fae",
            PartType::LinuxGeneric => "0fc63daf-8483-4772-8e79-3d69d8477de4",
        };
        s.parse().expect("static GUID")
    }

    /// The MBR partition type byte.
    pub fn mbr_type(self) -> u8 {
        match self {
            PartType::Esp => 0xEF,
            // FAT32 with LBA addressing: what the Raspberry Pi boot ROM looks for.
            PartType::Fat32 => 0x0C,
            PartType::RootX86_64 | PartType::RootArm64 | PartType::LinuxGeneric => 0x83,
        }
    }

    pub fn from_gpt_type(g: Guid) -> Option<PartType> {
        PartType::ALL.into_iter().find(|t| t.gpt_type() == g)
    }
}

impl fmt::Display for PartType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PartType {
    type Err = LayoutError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PartType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| LayoutError::UnknownType {
                name: s.to_string(),
            })
    }
}

/// How big a partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Exactly this many bytes (rounded up to whole sectors).
    Bytes(u64),
    /// Whatever is left of the disk (at most one partition, and the disk size must be given).
    Grow,
    /// What the content needs, rounded up to the alignment.
    Auto,
}

/// The partition table type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
}

/// One partition of a layout.
pub struct Partition {
    /// GPT partition name, and the filesystem label when the content takes one.
    pub label: String,
    pub ptype: PartType,
    pub size: Size,
    /// Start offset in bytes; `None` places it after the previous partition, aligned.
    pub offset: Option<u64>,
    pub content: Box<dyn PartitionContent>,
}

/// A disk layout.
pub struct Layout {
    pub table: TableKind,
    /// Total disk size; `None` makes the disk just large enough.
    pub disk_size: Option<u64>,
    /// Where the first partition starts when it has no explicit offset (1 MiB; 4 MiB for the
    /// Raspberry Pi, whose boot partition conventionally starts there).
    pub first_offset: u64,
    /// Alignment of partition starts and of `auto` sizes.
    pub align: u64,
    pub partitions: Vec<Partition>,
}

/// Mistakes in a layout. Every message says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error(
        "unknown partition type {name:?}; known types: esp, fat32, root-x86-64, root-arm64, linux-generic"
    )]
    UnknownType { name: String },
    #[error("partition {label:?}: the label is empty; give every partition a label")]
    EmptyLabel { label: String },
    #[error("partition {label:?}: the label is {len} UTF-16 units long, GPT allows 36; shorten it")]
    GptLabelTooLong { label: String, len: usize },
    #[error(
        "partition {label:?}: the label is {len} bytes, a {fs} filesystem label holds at most {max}; shorten it"
    )]
    FsLabelTooLong {
        label: String,
        len: usize,
        fs: &'static str,
        max: usize,
    },
    #[error("two partitions are labelled {label:?}; labels must be unique")]
    DuplicateLabel { label: String },
    #[error(
        "partition {label:?}: its contents need {needed} bytes ({needed_mib} MiB) but its size is {size} bytes; \
         raise the size to at least {needed_mib} MiB or use size = \"auto\""
    )]
    DoesNotFit {
        label: String,
        needed: u64,
        needed_mib: u64,
        size: u64,
    },
    #[error("partition {label:?}: measuring its contents failed: {source}")]
    Content {
        label: String,
        #[source]
        source: ContentError,
    },
    #[error(
        "partitions {first:?} and {second:?} overlap ({first:?} ends at byte {first_end}, {second:?} starts at {second_start}); \
         move {second:?} to {first_end} or later"
    )]
    Overlap {
        first: String,
        second: String,
        first_end: u64,
        second_start: u64,
    },
    #[error("partition {label:?}: offset {offset} is not a multiple of {SECTOR} bytes")]
    Misaligned { label: String, offset: u64 },
    #[error(
        "partition {label:?} starts at byte {offset}, inside the partition table area (first usable byte {first_usable})"
    )]
    InTableArea {
        label: String,
        offset: u64,
        first_usable: u64,
    },
    #[error(
        "the disk is {size} bytes but the partitions need {needed} bytes ({needed_mib} MiB); raise the disk size"
    )]
    DiskTooSmall {
        size: u64,
        needed: u64,
        needed_mib: u64,
    },
    #[error("only one partition may use size = \"grow\" ({first:?} and {second:?} both do)")]
    SeveralGrow { first: String, second: String },
    #[error(
        "partition {label:?} uses size = \"grow\", which needs a disk size; set the disk size or give the partition a size"
    )]
    GrowWithoutDiskSize { label: String },
    #[error(
        "partition {label:?} uses size = \"grow\" but {next:?} comes after it; only the last partition can grow"
    )]
    GrowNotLast { label: String, next: String },
    #[error("a layout needs at least one partition")]
    NoPartitions,
    #[error("an MBR table holds at most 4 partitions; this layout has {count} (use GPT)")]
    TooManyMbr { count: usize },
    #[error(
        "an MBR table cannot address beyond 2 TiB (partition {label:?} ends at byte {end}); use GPT"
    )]
    MbrTooLarge { label: String, end: u64 },
    #[error("alignment {align} is not a positive multiple of {SECTOR} bytes")]
    BadAlign { align: u64 },
}

/// A partition placed on the disk.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Index into [`Layout::partitions`] (partition number − 1).
    pub index: usize,
    pub offset: u64,
    pub size: u64,
}

/// A checked layout with every partition placed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub table: TableKind,
    pub disk_size: u64,
    pub placed: Vec<Placed>,
}

/// Bytes GPT reserves at each end: the first usable byte and the bytes after the last usable one
/// (protective MBR + header + 128 entries of 128 bytes; backup entries + header).
pub const GPT_HEAD: u64 = 34 * SECTOR;
pub const GPT_TAIL: u64 = 33 * SECTOR;

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl Layout {
    /// A GPT layout with 1 MiB alignment.
    pub fn gpt(partitions: Vec<Partition>) -> Layout {
        Layout {
            table: TableKind::Gpt,
            disk_size: None,
            first_offset: MIB,
            align: MIB,
            partitions,
        }
    }

    /// An MBR layout as the Raspberry Pi expects: first partition at 4 MiB.
    pub fn mbr_pi(partitions: Vec<Partition>) -> Layout {
        Layout {
            table: TableKind::Mbr,
            disk_size: None,
            first_offset: 4 * MIB,
            align: MIB,
            partitions,
        }
    }

    /// Checks the layout and places every partition.
    pub fn plan(&self) -> Result<Plan, LayoutError> {
        if self.align == 0 || self.align % SECTOR != 0 {
            return Err(LayoutError::BadAlign { align: self.align });
        }
        if self.partitions.is_empty() {
            return Err(LayoutError::NoPartitions);
        }
        if self.table == TableKind::Mbr && self.partitions.len() > 4 {
            return Err(LayoutError::TooManyMbr {
                count: self.partitions.len(),
            });
        }
        self.check_labels()?;
        let (head, tail) = match self.table {
            TableKind::Gpt => (GPT_HEAD, GPT_TAIL),
            TableKind::Mbr => (SECTOR, 0),
        };

        // Sizes first: `grow` takes what the others leave.
        let mut needed = Vec::with_capacity(self.partitions.len());
        let mut grow: Option<usize> = None;
        for (i, p) in self.partitions.iter().enumerate() {
            let req = p
                .content
                .required_size()
                .map_err(|source| LayoutError::Content {
                    label: p.label.clone(),
                    source,
                })?;
            let req = align_up(req, SECTOR);
            if let Size::Bytes(n) = p.size {
                let n = align_up(n, SECTOR);
                if n < req {
                    return Err(LayoutError::DoesNotFit {
                        label: p.label.clone(),
                        needed: req,
                        needed_mib: req.div_ceil(MIB),
                        size: n,
                    });
                }
            }
            if p.size == Size::Grow {
                if let Some(g) = grow {
                    return Err(LayoutError::SeveralGrow {
                        first: self.partitions[g].label.clone(),
                        second: p.label.clone(),
                    });
                }
                if self.disk_size.is_none() {
                    return Err(LayoutError::GrowWithoutDiskSize {
                        label: p.label.clone(),
                    });
                }
                grow = Some(i);
            }
            needed.push(if p.size == Size::Auto {
                align_up(p.content.auto_size(req), SECTOR)
            } else {
                req
            });
        }

        // Place everything with `grow` at its minimum, then hand it the rest.
        let mut placed = self.place(&needed, None, head)?;
        let min_end = placed
            .iter()
            .map(|p| p.offset + p.size)
            .max()
            .unwrap_or(head);
        let min_disk = align_up(min_end + tail, self.align.max(MIB));
        let disk_size = match self.disk_size {
            Some(s) => {
                let s = s / SECTOR * SECTOR;
                if s < min_end + tail {
                    let need = min_end + tail;
                    return Err(LayoutError::DiskTooSmall {
                        size: s,
                        needed: need,
                        needed_mib: need.div_ceil(MIB),
                    });
                }
                s
            }
            None => min_disk,
        };
        if let Some(g) = grow {
            let start = placed[g].offset;
            if let Some(after) = placed.iter().find(|p| p.index != g && p.offset > start) {
                return Err(LayoutError::GrowNotLast {
                    label: self.partitions[g].label.clone(),
                    next: self.partitions[after.index].label.clone(),
                });
            }
            let end = (disk_size - tail) / SECTOR * SECTOR;
            placed = self.place(&needed, Some((g, end - start)), head)?;
        }
        let last_end = placed.iter().map(|p| p.offset + p.size).max().unwrap_or(0);
        if last_end + tail > disk_size {
            return Err(LayoutError::DiskTooSmall {
                size: disk_size,
                needed: last_end + tail,
                needed_mib: (last_end + tail).div_ceil(MIB),
            });
        }
        if self.table == TableKind::Mbr {
            if let Some(p) = placed
                .iter()
                .find(|p| (p.offset + p.size) / SECTOR > u64::from(u32::MAX))
            {
                return Err(LayoutError::MbrTooLarge {
                    label: self.partitions[p.index].label.clone(),
                    end: p.offset + p.size,
                });
            }
        }
        Ok(Plan {
            table: self.table,
            disk_size,
            placed,
        })
    }

    fn check_labels(&self) -> Result<(), LayoutError> {
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.partitions {
            if p.label.is_empty() {
                return Err(LayoutError::EmptyLabel {
                    label: p.label.clone(),
                });
            }
            let units = p.label.encode_utf16().count();
            if self.table == TableKind::Gpt && units > 36 {
                return Err(LayoutError::GptLabelTooLong {
                    label: p.label.clone(),
                    len: units,
                });
            }
            let info = p.content.describe();
            if let Some(max) = info.label_max {
                let label = info.label.as_deref().unwrap_or(&p.label);
                if label.len() > max {
                    return Err(LayoutError::FsLabelTooLong {
                        label: label.to_string(),
                        len: label.len(),
                        fs: info.fs,
                        max,
                    });
                }
            }
            if !seen.insert(p.label.as_str()) {
                return Err(LayoutError::DuplicateLabel {
                    label: p.label.clone(),
                });
            }
        }
        Ok(())
    }

    /// Places partitions in order; `grown` overrides one partition's size.
    fn place(
        &self,
        needed: &[u64],
        grown: Option<(usize, u64)>,
        head: u64,
    ) -> Result<Vec<Placed>, LayoutError> {
        let mut out: Vec<Placed> = Vec::with_capacity(self.partitions.len());
        let mut cursor = self.first_offset.max(head);
        for (i, p) in self.partitions.iter().enumerate() {
            let offset = match p.offset {
                Some(o) => {
                    if o % SECTOR != 0 {
                        return Err(LayoutError::Misaligned {
                            label: p.label.clone(),
                            offset: o,
                        });
                    }
                    if o < head {
                        return Err(LayoutError::InTableArea {
                            label: p.label.clone(),
                            offset: o,
                            first_usable: head,
                        });
                    }
                    o
                }
                None => align_up(cursor, self.align),
            };
            let size = match (grown, p.size) {
                (Some((g, s)), _) if g == i => s,
                (_, Size::Bytes(n)) => align_up(n, SECTOR),
                (_, Size::Auto | Size::Grow) => align_up(needed[i].max(SECTOR), self.align),
            };
            cursor = offset + size;
            out.push(Placed {
                index: i,
                offset,
                size,
            });
        }
        let mut by_start: Vec<&Placed> = out.iter().collect();
        by_start.sort_by_key(|p| (p.offset, p.index));
        for w in by_start.windows(2) {
            if w[0].offset + w[0].size > w[1].offset {
                return Err(LayoutError::Overlap {
                    first: self.partitions[w[0].index].label.clone(),
                    second: self.partitions[w[1].index].label.clone(),
                    first_end: w[0].offset + w[0].size,
                    second_start: w[1].offset,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(label: &str, ptype: PartType, size: Size, bytes: usize) -> Partition {
        Partition {
            label: label.into(),
            ptype,
            size,
            offset: None,
            content: Box::new(RawContent(vec![1; bytes])),
        }
    }

    #[test]
    fn places_aligned_and_grows_last() {
        let mut l = Layout::gpt(vec![
            part("esp", PartType::Esp, Size::Bytes(64 * MIB), 10),
            part("root", PartType::RootArm64, Size::Grow, 3 * MIB as usize),
        ]);
        l.disk_size = Some(256 * MIB);
        let plan = l.plan().unwrap();
        assert_eq!(plan.placed[0].offset, MIB);
        assert_eq!(plan.placed[0].size, 64 * MIB);
        assert_eq!(plan.placed[1].offset, 65 * MIB);
        assert_eq!(plan.placed[1].size, 256 * MIB - 65 * MIB - GPT_TAIL);
    }

    #[test]
    fn auto_disk_size_fits_backup_table() {
        let l = Layout::mbr_pi(vec![
            part("boot", PartType::Fat32, Size::Bytes(8 * MIB), 10),
            part("root", PartType::LinuxGeneric, Size::Auto, MIB as usize + 1),
        ]);
        let plan = l.plan().unwrap();
        assert_eq!(plan.placed[0].offset, 4 * MIB);
        assert_eq!(plan.placed[1].size, 2 * MIB);
        assert_eq!(plan.disk_size, 14 * MIB);
    }

    #[test]
    fn refuses_bad_layouts_with_useful_messages() {
        let l = Layout::gpt(vec![part("a", PartType::Esp, Size::Bytes(MIB), 3 << 20)]);
        let e = l.plan().unwrap_err().to_string();
        assert!(e.contains("need 3145728 bytes (3 MiB)"), "{e}");

        let mut p2 = part("b", PartType::LinuxGeneric, Size::Bytes(MIB), 1);
        p2.offset = Some(MIB + 4096);
        let l = Layout::gpt(vec![part("a", PartType::Esp, Size::Bytes(MIB), 1), p2]);
        assert!(matches!(l.plan(), Err(LayoutError::Overlap { .. })));

        let l = Layout::gpt(vec![part(&"x".repeat(37), PartType::Esp, Size::Auto, 1)]);
        assert!(matches!(
            l.plan(),
            Err(LayoutError::GptLabelTooLong { len: 37, .. })
        ));

        let mut l = Layout::gpt(vec![part("a", PartType::Esp, Size::Bytes(8 * MIB), 1)]);
        l.disk_size = Some(4 * MIB);
        let e = l.plan().unwrap_err();
        assert!(matches!(e, LayoutError::DiskTooSmall { .. }), "{e}");

        let e = "swap".parse::<PartType>().unwrap_err().to_string();
        assert!(e.contains("known types"), "{e}");

        let l = Layout::gpt(vec![part("a", PartType::Esp, Size::Grow, 1)]);
        assert!(matches!(
            l.plan(),
            Err(LayoutError::GrowWithoutDiskSize { .. })
        ));
    }

    struct Labelled;
    impl PartitionContent for Labelled {
        fn required_size(&self) -> Result<u64, ContentError> {
            Ok(0)
        }
        fn write(
            &self,
            _: &WriteParams,
            _: &mut dyn Sink,
            _: &Progress,
        ) -> Result<Vec<FileRecord>, ContentError> {
            Ok(vec![])
        }
        fn describe(&self) -> ContentInfo {
            ContentInfo {
                fs: "vfat",
                detail: None,
                label: None,
                label_max: Some(11),
            }
        }
    }

    #[test]
    fn filesystem_label_limit() {
        let l = Layout::gpt(vec![Partition {
            label: "much-too-long".into(),
            ptype: PartType::Esp,
            size: Size::Auto,
            offset: None,
            content: Box::new(Labelled),
        }]);
        let e = l.plan().unwrap_err().to_string();
        assert!(e.contains("vfat filesystem label holds at most 11"), "{e}");
    }
}
