//! Which filesystem a partition (or a bare filesystem image) holds: the one prober, used by the
//! base reader, `inspect` and the build's base dispatcher. Reads two sectors; never fails on
//! foreign bytes, only on I/O.

use std::io;

use serde::Serialize;

use crate::blockio::ReadAt;

/// A filesystem kind, by its superblock or boot sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// ext2, ext3 or ext4 (superblock magic 0xEF53).
    Ext4,
    /// FAT12, FAT16 or FAT32 (see [`FsInfo::detail`]).
    Fat,
    Unknown,
}

impl FsKind {
    /// For messages: `ext4`, `FAT`, `unknown filesystem`.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Fat => "FAT",
            FsKind::Ext4 => "ext4",
            FsKind::Unknown => "unknown filesystem",
        }
    }
}

/// What the prober found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub kind: FsKind,
    /// FAT: `FAT12`, `FAT16` or `FAT32`.
    pub detail: Option<String>,
    /// Volume label, trimmed; `None` if empty (or FAT's `NO NAME`).
    pub label: Option<String>,
    /// ext4: the UUID; FAT: the volume id as `XXXX-XXXX`.
    pub uuid: Option<String>,
}

impl FsInfo {
    fn unknown() -> Self {
        FsInfo {
            kind: FsKind::Unknown,
            detail: None,
            label: None,
            uuid: None,
        }
    }
}

fn trimmed(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim().to_string();
    (!s.is_empty() && s != "NO NAME").then_some(s)
}

/// Identifies the filesystem in the `size` bytes at `offset` of `r`.
pub fn probe<R: ReadAt + ?Sized>(r: &R, offset: u64, size: u64) -> io::Result<FsInfo> {
    if size < 2048 {
        return Ok(FsInfo::unknown());
    }
    let mut b = [0u8; 2048];
    r.read_exact_at(&mut b, offset)?;
    let sb = &b[1024..];
    if sb[0x38..0x3A] == [0x53, 0xEF] {
        let uuid = crate::ids::Guid(sb[0x68..0x78].try_into().expect("16 bytes"));
        return Ok(FsInfo {
            kind: FsKind::Ext4,
            detail: None,
            label: trimmed(&sb[0x78..0x88]),
            uuid: Some(uuid.to_string()),
        });
    }
    Ok(fat(&b).unwrap_or_else(FsInfo::unknown))
}

/// A FAT boot sector: its type by cluster count (as the FAT specification decides it).
fn fat(b: &[u8; 2048]) -> Option<FsInfo> {
    let bps = u16::from_le_bytes([b[11], b[12]]);
    if b[510..512] != [0x55, 0xAA] || !matches!(bps, 512 | 1024 | 2048 | 4096) || b[16] == 0 {
        return None;
    }
    let fat16_size = u16::from_le_bytes([b[22], b[23]]);
    let (detail, id_at, label_at) = if fat16_size == 0 && &b[82..87] == b"FAT32" {
        ("FAT32", 67, 71)
    } else if fat16_size == 0 {
        return None;
    } else {
        let total = match u16::from_le_bytes([b[19], b[20]]) {
            0 => u64::from(u32::from_le_bytes([b[32], b[33], b[34], b[35]])),
            n => u64::from(n),
        };
        let spc = u64::from(b[13].max(1));
        let reserved = u64::from(u16::from_le_bytes([b[14], b[15]]));
        let root_sectors =
            (u64::from(u16::from_le_bytes([b[17], b[18]])) * 32).div_ceil(u64::from(bps));
        let data = total
            .saturating_sub(reserved + u64::from(b[16]) * u64::from(fat16_size) + root_sectors);
        (if data / spc < 4085 { "FAT12" } else { "FAT16" }, 39, 43)
    };
    let id = u32::from_le_bytes(b[id_at..id_at + 4].try_into().expect("4 bytes"));
    Some(FsInfo {
        kind: FsKind::Fat,
        detail: Some(detail.to_string()),
        label: trimmed(&b[label_at..label_at + 11]),
        uuid: Some(format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_bytes_are_unknown() {
        let zeros = vec![0u8; 4096];
        assert_eq!(probe(&zeros[..], 0, 4096).unwrap().kind, FsKind::Unknown);
        let mut ext = vec![0u8; 4096];
        ext[1024 + 0x38] = 0x53;
        ext[1024 + 0x39] = 0xEF;
        ext[1024 + 0x78..1024 + 0x7C].copy_from_slice(b"root");
        let got = probe(&ext[..], 0, 4096).unwrap();
        assert_eq!(
            (got.kind, got.label.as_deref()),
            (FsKind::Ext4, Some("root"))
        );
        assert_eq!(probe(&ext[..], 0, 1024).unwrap().kind, FsKind::Unknown);
    }
}
