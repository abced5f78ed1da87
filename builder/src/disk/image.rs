//! Assembling a disk image: a planned layout, the image seed and the epoch in; the partition
//! table and every partition's content written into a [`Sink`]; a report of what went where out.
//!
//! Written into a file through [`SeekSink`] the image is sparse: only the regions the table and
//! the filesystems emit are written, everything else stays a hole, and the report carries the
//! exact written ranges for the block map.

use std::fs::File;
use std::io;

use serde::Serialize;

use crate::blockio::region::{Ranges, SeekSink, Sink, Window};
use crate::disk::gpt::{GptEntry, GptTable};
use crate::disk::layout::{
    ContentError, Layout, LayoutError, PartType, Plan, SECTOR, TableKind, WriteParams,
};
use crate::disk::mbr::{MbrEntry, MbrTable};
use crate::fs::FileRecord;
use crate::ids::{FsIds, Guid, ImageSeed};
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("writing partition {label:?}: {source}")]
    Content {
        label: String,
        #[source]
        source: ContentError,
    },
    #[error("writing the partition table: {0}")]
    Table(#[source] io::Error),
    #[error("sizing the image file: {0}")]
    Io(#[source] io::Error),
}

/// The filesystem of a partition, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FsReport {
    /// `ext4`, `vfat`, `raw`, `none`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    /// What `blkid` shows as UUID: the ext4 UUID, or the FAT volume id as `XXXX-XXXX`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uuid: Option<String>,
}

/// One partition, as written.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// 1-based partition number.
    pub number: usize,
    /// GPT partition name (the layout's label).
    pub label: String,
    #[serde(rename = "type")]
    pub ptype: PartType,
    /// GPT type GUID, or the MBR type byte as `0x0c`.
    pub type_id: String,
    pub offset: u64,
    pub size: u64,
    /// What `root=PARTUUID=` takes: the GPT partition GUID, or `<disk signature>-<nn>` on MBR.
    pub partuuid: String,
    pub fs: FsReport,
    /// Every file of the filesystem.
    pub files: Vec<FileRecord>,
}

/// What an assembly wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub table: TableKind,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_guid: Option<Guid>,
    /// MBR disk signature, 8 hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_signature: Option<String>,
    pub partitions: Vec<PartitionReport>,
    /// Byte ranges written (everything else is a hole of zeros).
    #[serde(skip)]
    pub written: Ranges,
}

impl ImageReport {
    /// The PARTUUID of the partition labelled `label` (for `root=PARTUUID=…`).
    pub fn partuuid(&self, label: &str) -> Option<&str> {
        self.partitions
            .iter()
            .find(|p| p.label == label)
            .map(|p| p.partuuid.as_str())
    }
}

/// Forwards to a sink and records what was written.
struct Recording<'a> {
    inner: &'a mut dyn Sink,
    written: Ranges,
}

impl Sink for Recording<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)?;
        self.written.add(offset, offset + data.len() as u64);
        Ok(())
    }
}

/// The GUID a partition is known by: its GPT unique GUID, and on MBR disks the same derivation,
/// so filesystem identifiers are derived the same way whatever the table.
fn partition_guids(types: &[PartType], seed: &ImageSeed) -> Vec<Guid> {
    types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = types[..i].iter().filter(|u| *u == t).count() as u64;
            seed.partition_guid(t.gpt_type(), n)
        })
        .collect()
}

/// The identifiers of one partition, known before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionIds {
    pub label: String,
    /// What `root=PARTUUID=` takes: the GPT partition GUID, or `<disk signature>-<nn>` on MBR.
    pub partuuid: String,
    /// The filesystem's UUID, hash seed and FAT volume id.
    pub fs: FsIds,
}

/// Every partition's identifiers for `layout` and `seed`, in layout order, so boot
/// configuration (`cmdline.txt`, `/etc/fstab`) written *into* the image can name them.
pub fn partition_ids(layout: &Layout, seed: &ImageSeed) -> Vec<PartitionIds> {
    let shape: Vec<(&str, PartType)> = layout
        .partitions
        .iter()
        .map(|p| (p.label.as_str(), p.ptype))
        .collect();
    ids_for_shape(layout.table, &shape, seed)
}

/// [`partition_ids`] from the table kind and the partitions' labels and types alone, for
/// callers that need the identifiers before the partitions' contents exist.
pub fn ids_for_shape(
    table: TableKind,
    shape: &[(&str, PartType)],
    seed: &ImageSeed,
) -> Vec<PartitionIds> {
    let types: Vec<PartType> = shape.iter().map(|(_, t)| *t).collect();
    let guids = partition_guids(&types, seed);
    let signature = seed.mbr_disk_signature();
    shape
        .iter()
        .zip(&guids)
        .enumerate()
        .map(|(i, ((label, _), g))| PartitionIds {
            label: label.to_string(),
            partuuid: match table {
                TableKind::Gpt => g.to_string(),
                TableKind::Mbr => MbrTable::partuuid(signature, i + 1),
            },
            fs: seed.fs_ids(*g),
        })
        .collect()
}

/// Writes the table and every partition of `plan` (made from `layout`) into `sink`.
pub fn assemble(
    layout: &Layout,
    plan: &Plan,
    seed: &ImageSeed,
    epoch: u64,
    sink: &mut dyn Sink,
    progress: &Progress,
) -> Result<ImageReport, ImageError> {
    let mut rec = Recording {
        inner: sink,
        written: Ranges::default(),
    };
    let types: Vec<PartType> = layout.partitions.iter().map(|p| p.ptype).collect();
    let guids = partition_guids(&types, seed);
    let signature = seed.mbr_disk_signature();
    let disk_guid = seed.disk_guid();
    match plan.table {
        TableKind::Gpt => GptTable {
            disk_guid,
            sectors: plan.disk_size / SECTOR,
            entries: plan
                .placed
                .iter()
                .map(|pl| {
                    let p = &layout.partitions[pl.index];
                    GptEntry {
                        type_guid: p.ptype.gpt_type(),
                        unique_guid: guids[pl.index],
                        first_lba: pl.offset / SECTOR,
                        last_lba: (pl.offset + pl.size) / SECTOR - 1,
                        attributes: 0,
                        name: p.label.clone(),
                    }
                })
                .collect(),
        }
        .write(&mut rec),
        TableKind::Mbr => MbrTable {
            disk_signature: signature,
            entries: plan
                .placed
                .iter()
                .map(|pl| MbrEntry {
                    bootable: false,
                    type_byte: layout.partitions[pl.index].ptype.mbr_type(),
                    // plan() refused anything beyond 2 TiB.
                    first_lba: (pl.offset / SECTOR) as u32,
                    sectors: (pl.size / SECTOR) as u32,
                })
                .collect(),
        }
        .write(&mut rec),
    }
    .map_err(ImageError::Table)?;

    let mut partitions = Vec::with_capacity(plan.placed.len());
    for pl in &plan.placed {
        let p = &layout.partitions[pl.index];
        let ids = seed.fs_ids(guids[pl.index]);
        let params = WriteParams {
            size: pl.size,
            ids,
            epoch,
        };
        let files = {
            let mut window = Window::new(&mut rec, pl.offset, pl.size);
            p.content
                .write(&params, &mut window, progress)
                .map_err(|source| ImageError::Content {
                    label: p.label.clone(),
                    source,
                })?
        };
        let info = p.content.describe();
        let uuid = match info.fs {
            "ext4" => Some(ids.uuid.to_string()),
            "vfat" => Some(format!(
                "{:04X}-{:04X}",
                ids.volume_id >> 16,
                ids.volume_id & 0xFFFF
            )),
            _ => None,
        };
        let number = pl.index + 1;
        partitions.push(PartitionReport {
            number,
            label: p.label.clone(),
            ptype: p.ptype,
            type_id: match plan.table {
                TableKind::Gpt => p.ptype.gpt_type().to_string(),
                TableKind::Mbr => format!("0x{:02x}", p.ptype.mbr_type()),
            },
            offset: pl.offset,
            size: pl.size,
            partuuid: match plan.table {
                TableKind::Gpt => guids[pl.index].to_string(),
                TableKind::Mbr => MbrTable::partuuid(signature, number),
            },
            fs: FsReport {
                kind: info.fs.to_string(),
                detail: info.detail,
                label: info.label,
                uuid,
            },
            files,
        });
    }
    Ok(ImageReport {
        table: plan.table,
        size: plan.disk_size,
        disk_guid: (plan.table == TableKind::Gpt).then_some(disk_guid),
        disk_signature: (plan.table == TableKind::Mbr).then(|| format!("{signature:08x}")),
        partitions,
        written: rec.written,
    })
}

/// Plans `layout` and writes the image into `file` (which must be empty), sparse: the file is
/// sized with `set_len` and only written regions are allocated.
pub fn write_raw(
    layout: &Layout,
    seed: &ImageSeed,
    epoch: u64,
    file: &mut File,
    progress: &Progress,
) -> Result<ImageReport, ImageError> {
    let plan = layout.plan()?;
    file.set_len(0).map_err(ImageError::Io)?;
    file.set_len(plan.disk_size).map_err(ImageError::Io)?;
    let mut sink = SeekSink::new(&mut *file);
    assemble(layout, &plan, seed, epoch, &mut sink, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockio::region::VecSink;
    use crate::disk::layout::{EmptyContent, MIB, Partition, RawContent, Size};
    use std::io::Cursor;

    #[test]
    fn gpt_image_reads_back_with_derived_guids() {
        let layout = Layout::gpt(vec![
            Partition {
                label: "esp".into(),
                ptype: PartType::Esp,
                size: Size::Bytes(2 * MIB),
                offset: None,
                content: Box::new(RawContent(b"hello".to_vec())),
            },
            Partition {
                label: "root".into(),
                ptype: PartType::RootX86_64,
                size: Size::Auto,
                offset: None,
                content: Box::new(EmptyContent),
            },
        ]);
        let plan = layout.plan().unwrap();
        let seed = ImageSeed::new([3; 32]);
        let mut sink = VecSink::default();
        let r = assemble(&layout, &plan, &seed, 0, &mut sink, &Progress::quiet()).unwrap();
        sink.buf.resize(r.size as usize, 0);
        let t = GptTable::read(&mut Cursor::new(&sink.buf), r.size).unwrap();
        assert_eq!(t.disk_guid, seed.disk_guid());
        assert_eq!(
            t.entries[0].unique_guid.to_string(),
            r.partitions[0].partuuid
        );
        let ids = partition_ids(&layout, &seed);
        assert_eq!(ids[1].partuuid, r.partitions[1].partuuid);
        assert_eq!(ids[0].fs, seed.fs_ids(t.entries[0].unique_guid));
        assert_eq!(&sink.buf[MIB as usize..MIB as usize + 5], b"hello");
        // Table regions + 5 bytes of content: everything else is a hole.
        assert_eq!(r.written.len_bytes(), 512 + 512 + 2 * 16384 + 512 + 5);
    }
}
