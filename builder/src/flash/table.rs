//! The image's partitions, read from its first MiB alone (a streamed `.img.xz` offers nothing
//! more before the write starts): the MBR, and for GPT the primary header and entry array.

use crate::disk::gpt::{self, GptError};
use crate::disk::layout::{PartType, SECTOR};
use crate::disk::mbr::MbrTable;
use crate::flash::plan::{Span, mbr_type_is_fat};
use crate::ids::Guid;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    #[error(
        "the image has no partition table (no MBR boot signature in its first sector); is it a disk image?"
    )]
    NoTable,
    #[error("the image's GPT is damaged: {0}")]
    Gpt(#[from] GptError),
}

/// Microsoft basic data: what FAT data partitions carry on GPT disks.
const BASIC_DATA: &str = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";

fn gpt_is_fat(t: Guid) -> bool {
    t == PartType::Esp.gpt_type() || t.to_string() == BASIC_DATA
}

/// `(is GPT, partitions)` from the image's first bytes (at least 34 sectors for GPT).
pub fn partitions(head: &[u8]) -> Result<(bool, Vec<Span>), TableError> {
    let first: &[u8; SECTOR as usize] = head
        .get(..SECTOR as usize)
        .and_then(|s| s.try_into().ok())
        .ok_or(TableError::NoTable)?;
    let mbr = MbrTable::parse(first).map_err(|_| TableError::NoTable)?;
    if mbr.entries.iter().any(|e| e.type_byte == 0xEE) {
        let spans = gpt::read_primary(head)?
            .into_iter()
            .map(|(number, t, first, last)| Span {
                number,
                start: first.saturating_mul(SECTOR),
                end: last.saturating_add(1).saturating_mul(SECTOR),
                fat: gpt_is_fat(t),
            })
            .collect();
        return Ok((true, spans));
    }
    let spans = mbr
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.type_byte != 0 && e.sectors != 0)
        .filter(|(_, e)| !matches!(e.type_byte, 0x05 | 0x0F | 0x85))
        .map(|(i, e)| Span {
            number: i as u32 + 1,
            start: u64::from(e.first_lba) * SECTOR,
            end: (u64::from(e.first_lba) + u64::from(e.sectors)) * SECTOR,
            fat: mbr_type_is_fat(e.type_byte),
        })
        .collect();
    Ok((false, spans))
}

/// The partition a node's seed goes into: the first FAT-typed one.
pub fn boot_index(parts: &[Span]) -> Option<usize> {
    parts.iter().position(|p| p.fat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockio::region::VecSink;
    use crate::disk::gpt::{GptEntry, GptTable};
    use crate::disk::mbr::MbrEntry;

    #[test]
    fn reads_both_kinds_from_the_head() {
        let t = GptTable {
            disk_guid: "01234567-89ab-4def-8123-456789abcdef".parse().unwrap(),
            sectors: 8192,
            entries: vec![
                GptEntry {
                    type_guid: PartType::Esp.gpt_type(),
                    unique_guid: "11111111-2222-4333-8444-555555555555".parse().unwrap(),
                    first_lba: 2048,
                    last_lba: 4095,
                    attributes: 0,
                    name: "esp".into(),
                },
                GptEntry {
                    type_guid: PartType::LinuxGeneric.gpt_type(),
                    unique_guid: "11111111-2222-4333-8444-555555555556".parse().unwrap(),
                    first_lba: 4096,
                    last_lba: 8000,
                    attributes: 0,
                    name: "data".into(),
                },
            ],
        };
        let mut s = VecSink::default();
        t.write(&mut s).unwrap();
        let (gpt, p) = partitions(&s.buf[..(34 * SECTOR) as usize]).unwrap();
        assert!(gpt);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].start, p[0].end, p[0].fat), (MIB_, 2 * MIB_, true));
        assert!(!p[1].fat);
        assert_eq!(boot_index(&p), Some(0));

        let m = MbrTable {
            disk_signature: 1,
            entries: vec![
                MbrEntry {
                    bootable: false,
                    type_byte: 0x0c,
                    first_lba: 8192,
                    sectors: 8192,
                },
                MbrEntry {
                    bootable: false,
                    type_byte: 0x83,
                    first_lba: 16384,
                    sectors: 100,
                },
            ],
        };
        let (gpt, p) = partitions(&m.to_bytes()).unwrap();
        assert!(!gpt);
        assert_eq!((p[1].number, p[1].start, p[1].fat), (2, 16384 * 512, false));
        assert!(matches!(partitions(&[0u8; 512]), Err(TableError::NoTable)));
    }

    const MIB_: u64 = 1 << 20;
}
