//! Reading disk images back: partition table, partitions, filesystem identifiers, and checking an
//! image against its `manifest.json` (for `imgbuild inspect`). Damaged or foreign input gives an
//! error naming what is wrong, never a panic.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::blockio::read_at;
use crate::disk::gpt::{GptError, GptTable};
use crate::disk::image::FsReport;
use crate::disk::layout::{PartType, SECTOR, TableKind};
use crate::disk::manifest::Manifest;
use crate::disk::mbr::{MbrError, MbrTable};
use crate::fs::probe::{self as fs_probe, FsKind};
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    #[error("not a disk image: {0}")]
    NotAnImage(String),
    #[error("damaged GPT: {0}")]
    Gpt(#[from] GptError),
    #[error(
        "partition {number} ends at byte {end} but the image is only {size} bytes: the image is truncated"
    )]
    Truncated { number: u32, end: u64, size: u64 },
    #[error("partition {number} starts at byte 0, over the partition table: the table is corrupt")]
    OverTable { number: u32 },
    #[error("reading the image: {0}")]
    Io(#[from] io::Error),
}

/// A partition found in an image.
#[derive(Debug, Clone, Serialize)]
pub struct ProbedPartition {
    pub number: usize,
    /// GPT partition name (none on MBR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Our name for the type (`esp`, `root-arm64`), if it is one we know.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub ptype: Option<String>,
    /// GPT type GUID or MBR type byte (`0x0c`).
    pub type_id: String,
    pub offset: u64,
    pub size: u64,
    pub partuuid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsReport>,
}

/// What an image holds.
#[derive(Debug, Clone, Serialize)]
pub struct ProbedImage {
    pub table: TableKind,
    pub size: u64,
    /// GPT disk GUID or MBR disk signature (8 hex digits).
    pub disk_id: String,
    pub partitions: Vec<ProbedPartition>,
}

/// The partition's type as the table states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartTypeId {
    Mbr(u8),
    Gpt(String),
}

impl std::fmt::Display for PartTypeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartTypeId::Mbr(t) => write!(f, "0x{t:02x}"),
            PartTypeId::Gpt(g) => f.write_str(g),
        }
    }
}

/// One used slot of a partition table, as the table states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    /// 1-based slot position, as the kernel numbers it.
    pub number: u32,
    pub offset: u64,
    pub size: u64,
    pub type_id: PartTypeId,
    /// GPT partition name (empty on MBR).
    pub name: String,
    pub partuuid: String,
}

/// A disk's partition table: the one reader behind `inspect` and the base-image reader.
#[derive(Debug, Clone)]
pub struct Table {
    pub kind: TableKind,
    /// GPT disk GUID or MBR disk signature (8 hex digits).
    pub disk_id: String,
    pub entries: Vec<TableEntry>,
}

/// Reads the MBR or GPT of a disk of `size` bytes. Empty slots are skipped, and so are MBR
/// extended partitions (logical partitions are not read); a partition starting at byte 0 or
/// reaching past the end is an error.
pub fn read_table<R: Read + Seek>(r: &mut R, size: u64) -> Result<Table, ProbeError> {
    let mbr = MbrTable::read(r, size).map_err(|e| match e {
        MbrError::Io(e) => ProbeError::Io(e),
        MbrError::NoSignature => ProbeError::NotAnImage(
            "the first sector has no partition table (no 0x55AA boot signature)".into(),
        ),
        other => ProbeError::NotAnImage(other.to_string()),
    })?;
    let table = if mbr.entries.iter().any(|e| e.type_byte == 0xEE) {
        gpt_table(r, size)?
    } else {
        mbr_table(&mbr)
    };
    for p in &table.entries {
        let end = p.offset.saturating_add(p.size);
        if p.offset == 0 {
            return Err(ProbeError::OverTable { number: p.number });
        }
        if end > size {
            return Err(ProbeError::Truncated {
                number: p.number,
                end,
                size,
            });
        }
    }
    Ok(table)
}

fn mbr_table(mbr: &MbrTable) -> Table {
    let entries = mbr
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.type_byte != 0 && e.sectors != 0)
        .filter(|(_, e)| !matches!(e.type_byte, 0x05 | 0x0F | 0x85))
        .map(|(i, e)| TableEntry {
            number: i as u32 + 1,
            offset: u64::from(e.first_lba) * SECTOR,
            size: u64::from(e.sectors) * SECTOR,
            type_id: PartTypeId::Mbr(e.type_byte),
            name: String::new(),
            partuuid: MbrTable::partuuid(mbr.disk_signature, i + 1),
        })
        .collect();
    Table {
        kind: TableKind::Mbr,
        disk_id: format!("{:08x}", mbr.disk_signature),
        entries,
    }
}

fn gpt_table<R: Read + Seek>(r: &mut R, size: u64) -> Result<Table, ProbeError> {
    let gpt = GptTable::read(r, size)?;
    let slots = gpt_slots(r)?;
    let mut entries = Vec::new();
    for (i, e) in gpt.entries.iter().enumerate() {
        // The table reader drops empty slots; partition numbers are slot positions.
        let number = slots
            .iter()
            .position(|g| *g == e.unique_guid.to_gpt_bytes())
            .map_or(i as u32 + 1, |s| s as u32 + 1);
        let bad = ProbeError::Truncated {
            number,
            end: u64::MAX,
            size,
        };
        let offset = e.first_lba.checked_mul(SECTOR);
        let len = e
            .last_lba
            .checked_sub(e.first_lba)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(SECTOR));
        let (Some(offset), Some(len)) = (offset, len) else {
            return Err(bad);
        };
        entries.push(TableEntry {
            number,
            offset,
            size: len,
            type_id: PartTypeId::Gpt(e.type_guid.to_string()),
            name: e.name.clone(),
            partuuid: e.unique_guid.to_string(),
        });
    }
    Ok(Table {
        kind: TableKind::Gpt,
        disk_id: gpt.disk_guid.to_string(),
        entries,
    })
}

/// The unique GUID (on-disk bytes) of every slot of the primary GPT entry array, empty ones
/// included. Called only after [`GptTable::read`] checked the header and the array's CRC.
fn gpt_slots<R: Read + Seek>(disk: &mut R) -> io::Result<Vec<[u8; 16]>> {
    let mut h = [0u8; 512];
    read_at(disk, 512, &mut h)?;
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let lba = u64::from_le_bytes(h[72..80].try_into().expect("8 bytes"));
    let (count, esize) = (
        u32_at(80).min(1024) as usize,
        u32_at(84).clamp(128, 4096) as usize,
    );
    let mut array = vec![0u8; count * esize];
    read_at(disk, lba.saturating_mul(512), &mut array)?;
    Ok(array
        .chunks_exact(esize)
        .map(|c| c[16..32].try_into().expect("16 bytes"))
        .collect())
}

/// Reads the partition table and identifies each partition's filesystem.
pub fn probe<R: Read + Seek>(r: &mut R, size: u64) -> Result<ProbedImage, ProbeError> {
    let table = read_table(r, size)?;
    let mut partitions = Vec::new();
    for e in table.entries {
        let ptype = match &e.type_id {
            PartTypeId::Gpt(g) => g
                .parse()
                .ok()
                .and_then(PartType::from_gpt_type)
                .map(|t| t.name().to_string()),
            PartTypeId::Mbr(_) => None,
        };
        partitions.push(ProbedPartition {
            number: e.number as usize,
            label: (table.kind == TableKind::Gpt).then(|| e.name.clone()),
            ptype,
            type_id: e.type_id.to_string(),
            offset: e.offset,
            size: e.size,
            partuuid: e.partuuid,
            fs: probe_fs(r, e.offset, e.size)?,
        });
    }
    Ok(ProbedImage {
        table: table.kind,
        size,
        disk_id: table.disk_id,
        partitions,
    })
}

/// The filesystem at `offset`, by the one prober ([`crate::fs::probe`]), in the report's terms.
fn probe_fs<R: Read + Seek>(r: &mut R, offset: u64, size: u64) -> io::Result<Option<FsReport>> {
    let mut head = vec![0u8; size.min(2048) as usize];
    read_at(r, offset, &mut head)?;
    let found = fs_probe::probe(&head[..], 0, head.len() as u64)?;
    let kind = match found.kind {
        FsKind::Ext4 => "ext4",
        FsKind::Fat => "vfat",
        FsKind::Unknown => return Ok(None),
    };
    Ok(Some(FsReport {
        kind: kind.into(),
        detail: found.detail,
        label: found.label,
        uuid: found.uuid,
    }))
}

/// One way an image no longer matches its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// `image`, `table`, `partition 2`, or `partition 2: /etc/hostname`.
    pub what: String,
    pub detail: String,
}

/// The result of checking an image against its manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub image_sha256: String,
    pub image_sha256_matches: bool,
    /// Files compared by content (ext4 partitions).
    pub files_checked: u64,
    pub mismatches: Vec<Mismatch>,
}

/// SHA-256 of `len` bytes from the start of `r`.
pub fn sha256_of<R: Read + Seek>(r: &mut R, len: u64, progress: &Progress) -> io::Result<String> {
    let mut step = progress.step("sha256", len);
    crate::blockio::hash::sha256_range(r, 0, len, |n| step.inc(n))
}

/// An ext4 partition of an image file, for `ext4-view`.
struct PartitionReader {
    file: File,
    base: u64,
    len: u64,
}

impl ext4_view::Ext4Read for PartitionReader {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        if start.saturating_add(dst.len() as u64) > self.len {
            return Err("read past the end of the partition".into());
        }
        self.file.seek(SeekFrom::Start(self.base + start))?;
        self.file.read_exact(dst)?;
        Ok(())
    }
}

/// Checks `image` (probed as `found`) against `manifest`: image hash, partition table, and the
/// content, mode and owner of every file of every ext4 partition.
pub fn verify(
    image: &File,
    found: &ProbedImage,
    manifest: &Manifest,
    progress: &Progress,
) -> io::Result<Verification> {
    let mut mismatches = Vec::new();
    let mut miss = |what: String, detail: String| mismatches.push(Mismatch { what, detail });
    let sha = sha256_of(&mut image.try_clone()?, found.size, progress)?;
    let sha_ok = sha == manifest.image.sha256;
    if !sha_ok {
        miss(
            "image".into(),
            format!(
                "SHA-256 is {sha}, the manifest records {}",
                manifest.image.sha256
            ),
        );
    }
    if found.size != manifest.image.size {
        miss(
            "image".into(),
            format!(
                "{} bytes, the manifest records {}",
                found.size, manifest.image.size
            ),
        );
    }
    let disk_id = manifest
        .disk_guid
        .clone()
        .or(manifest.disk_signature.clone())
        .unwrap_or_default();
    if found.table != manifest.table || found.disk_id != disk_id {
        miss(
            "table".into(),
            format!(
                "{:?} table with disk id {}, the manifest records {:?} with {disk_id}",
                found.table, found.disk_id, manifest.table
            ),
        );
    }
    if found.partitions.len() != manifest.partitions.len() {
        miss(
            "table".into(),
            format!(
                "{} partitions, the manifest records {}",
                found.partitions.len(),
                manifest.partitions.len()
            ),
        );
    }
    let mut files_checked = 0;
    for (f, m) in found.partitions.iter().zip(&manifest.partitions) {
        let what = format!("partition {}", m.number);
        let got = (f.offset, f.size, &f.partuuid, &f.type_id);
        let want = (m.offset, m.size, &m.partuuid, &m.type_id);
        if got != want {
            miss(
                what.clone(),
                format!("offset/size/PARTUUID/type are {got:?}, the manifest records {want:?}"),
            );
            continue;
        }
        let fs_got = f.fs.as_ref().map(|x| (&x.kind, &x.uuid));
        if m.fs.kind != "raw" && m.fs.kind != "none" && fs_got != Some((&m.fs.kind, &m.fs.uuid)) {
            miss(
                what.clone(),
                format!(
                    "filesystem is {fs_got:?}, the manifest records {} {:?}",
                    m.fs.kind, m.fs.uuid
                ),
            );
            continue;
        }
        if m.fs.kind != "ext4" {
            continue;
        }
        let reader = PartitionReader {
            file: image.try_clone()?,
            base: f.offset,
            len: f.size,
        };
        let fs = match ext4_view::Ext4::load(Box::new(reader)) {
            Ok(fs) => fs,
            Err(e) => {
                miss(what, format!("the ext4 filesystem cannot be read: {e}"));
                continue;
            }
        };
        for rec in &m.files {
            let here = format!("{what}: {}", rec.path);
            let meta = match fs.symlink_metadata(rec.path.as_str()) {
                Ok(md) => md,
                Err(e) => {
                    miss(here, format!("missing or unreadable: {e}"));
                    continue;
                }
            };
            let mode = format!("{:04o}", meta.mode() & 0o7777);
            if mode != rec.mode || meta.uid() != rec.uid || meta.gid() != rec.gid {
                miss(
                    here.clone(),
                    format!(
                        "mode {mode} owner {}:{}, the manifest records {} {}:{}",
                        meta.uid(),
                        meta.gid(),
                        rec.mode,
                        rec.uid,
                        rec.gid
                    ),
                );
            }
            let Some(want) = &rec.sha256 else { continue };
            files_checked += 1;
            let got = fs
                .open(rec.path.as_str())
                .map_err(|e| e.to_string())
                .and_then(|mut file| {
                    let mut h = Sha256::new();
                    io::copy(&mut file, &mut h).map_err(|e| e.to_string())?;
                    Ok(hex::encode(h.finalize()))
                });
            match got {
                Ok(got) if &got == want => {}
                Ok(got) => miss(
                    here,
                    format!("content SHA-256 is {got}, the manifest records {want}"),
                ),
                Err(e) => miss(here, format!("cannot be read: {e}")),
            }
        }
    }
    Ok(Verification {
        image_sha256: sha,
        image_sha256_matches: sha_ok,
        files_checked,
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn refuses_non_images_without_panicking() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0; 4096],
            b"\xFD7zXZ\0rest of an xz file".to_vec(),
            {
                // A protective MBR with nothing behind it.
                let mut v = vec![0u8; 4096];
                v[446 + 4] = 0xEE;
                v[510] = 0x55;
                v[511] = 0xAA;
                v
            },
        ];
        for c in cases {
            let len = c.len() as u64;
            let e = probe(&mut Cursor::new(c), len).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
    }
}
