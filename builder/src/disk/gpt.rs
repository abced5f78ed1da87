//! GUID Partition Table: writer and reader.
//!
//! Written here rather than with the `gpt` crate (whose `add_partition` draws random GUIDs) or
//! `gptman` (which wants a `Read + Write + Seek` device to edit in place): the table is a
//! protective MBR, a 92-byte header and a 16 KiB entry array, twice, with two CRC32s — about a
//! hundred lines. Writing it ourselves lets the table go through the same [`Sink`] as the
//! filesystems (so the block map records it) and takes every GUID from the caller, so the bytes
//! are a pure function of the layout and the seed. The reader serves `imgbuild inspect` with
//! precise errors for truncated or damaged tables. `sgdisk -v` and `sfdisk --verify` judge the
//! result in the tests.

use std::io::{self, Read, Seek};

use crate::blockio::read_at;
use crate::blockio::region::Sink;
use crate::disk::layout::SECTOR;
use crate::ids::Guid;

/// Entries in each array (the UEFI minimum, what every tool writes).
pub const ENTRIES: u32 = 128;
pub const ENTRY_SIZE: u32 = 128;
const HEADER_SIZE: u32 = 92;
/// Sectors of the entry array: 128 × 128 bytes.
const ARRAY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
const SIGNATURE: &[u8; 8] = b"EFI PART";

/// One partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// A whole table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptTable {
    pub disk_guid: Guid,
    /// Disk size in sectors.
    pub sectors: u64,
    /// Entries in partition-number order (entry i is partition i + 1).
    pub entries: Vec<GptEntry>,
}

/// A disk that does not hold a valid GPT.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GptError {
    #[error("the image is {0} bytes, too small to hold a GPT")]
    TooSmall(u64),
    #[error("no GPT header at sector 1 (signature missing)")]
    NoHeader,
    #[error("the {which} GPT header is damaged: {why}")]
    BadHeader { which: &'static str, why: String },
    #[error(
        "the backup GPT header is missing: the image is truncated (it should be at least {expected} bytes)"
    )]
    Truncated { expected: u64 },
    #[error("reading the partition table: {0}")]
    Io(#[from] io::Error),
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

impl GptTable {
    fn last_lba(&self) -> u64 {
        self.sectors - 1
    }

    /// The entry array as on disk (128 × 128 bytes).
    fn array(&self) -> Vec<u8> {
        let mut a = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
        for (e, chunk) in self
            .entries
            .iter()
            .zip(a.chunks_exact_mut(ENTRY_SIZE as usize))
        {
            chunk[0..16].copy_from_slice(&e.type_guid.to_gpt_bytes());
            chunk[16..32].copy_from_slice(&e.unique_guid.to_gpt_bytes());
            chunk[32..40].copy_from_slice(&e.first_lba.to_le_bytes());
            chunk[40..48].copy_from_slice(&e.last_lba.to_le_bytes());
            chunk[48..56].copy_from_slice(&e.attributes.to_le_bytes());
            for (i, u) in e.name.encode_utf16().take(36).enumerate() {
                chunk[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
        }
        a
    }

    fn header(&self, primary: bool, array_crc: u32) -> [u8; SECTOR as usize] {
        let last = self.last_lba();
        let (my, alt, entries_lba) = if primary {
            (1, last, 2)
        } else {
            (last, 1, last - ARRAY_SECTORS)
        };
        let mut h = [0u8; SECTOR as usize];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + ARRAY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&(last - ARRAY_SECTORS - 1).to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_gpt_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&h[..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The protective MBR: one entry of type 0xEE covering the disk (capped at 2 TiB).
    fn protective_mbr(&self) -> [u8; SECTOR as usize] {
        let mut m = [0u8; SECTOR as usize];
        let e = &mut m[446..462];
        e[0] = 0x00;
        e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        e[4] = 0xEE;
        e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = u32::try_from(self.sectors - 1).unwrap_or(u32::MAX);
        e[12..16].copy_from_slice(&size.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xAA;
        m
    }

    /// Writes protective MBR, primary header and array, backup array and header.
    pub fn write(&self, sink: &mut dyn Sink) -> io::Result<()> {
        let array = self.array();
        let crc = crc32(&array);
        let last = self.last_lba();
        sink.write_at(0, &self.protective_mbr())?;
        sink.write_at(SECTOR, &self.header(true, crc))?;
        sink.write_at(2 * SECTOR, &array)?;
        sink.write_at((last - ARRAY_SECTORS) * SECTOR, &array)?;
        sink.write_at(last * SECTOR, &self.header(false, crc))?;
        Ok(())
    }

    /// Reads and checks a GPT (both headers, both CRCs) from a disk of `size` bytes.
    pub fn read<R: Read + Seek>(disk: &mut R, size: u64) -> Result<GptTable, GptError> {
        if size < (2 + ARRAY_SECTORS) * SECTOR {
            return Err(GptError::TooSmall(size));
        }
        let mut hdr = [0u8; SECTOR as usize];
        read_at(disk, SECTOR, &mut hdr)?;
        if &hdr[0..8] != SIGNATURE {
            return Err(GptError::NoHeader);
        }
        let (fields, array) = parse_header(disk, &hdr, 1, size, "primary")?;
        let expected = (fields.alternate + 1) * SECTOR;
        if expected > size {
            return Err(GptError::Truncated { expected });
        }
        let mut backup = [0u8; SECTOR as usize];
        read_at(disk, fields.alternate * SECTOR, &mut backup)?;
        if &backup[0..8] != SIGNATURE {
            return Err(GptError::BadHeader {
                which: "backup",
                why: format!("no signature at sector {}", fields.alternate),
            });
        }
        let (bfields, barray) = parse_header(disk, &backup, fields.alternate, size, "backup")?;
        if barray != array || bfields.disk_guid != fields.disk_guid {
            return Err(GptError::BadHeader {
                which: "backup",
                why: "it differs from the primary table".into(),
            });
        }
        let mut entries = Vec::new();
        for chunk in array.chunks_exact(fields.entry_size as usize) {
            let type_guid = Guid::from_gpt_bytes(chunk[0..16].try_into().expect("16 bytes"));
            if type_guid.is_nil() {
                continue;
            }
            let units: Vec<u16> = chunk[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            entries.push(GptEntry {
                type_guid,
                unique_guid: Guid::from_gpt_bytes(chunk[16..32].try_into().expect("16 bytes")),
                first_lba: u64::from_le_bytes(chunk[32..40].try_into().expect("8 bytes")),
                last_lba: u64::from_le_bytes(chunk[40..48].try_into().expect("8 bytes")),
                attributes: u64::from_le_bytes(chunk[48..56].try_into().expect("8 bytes")),
                name: String::from_utf16_lossy(&units),
            });
        }
        Ok(GptTable {
            disk_guid: fields.disk_guid,
            sectors: fields.alternate + 1,
            entries,
        })
    }
}

/// The entries of the primary table alone (header and array CRCs checked), from the disk's
/// first bytes: what a streamed image offers before its backup table arrives. Each entry is
/// `(slot number from 1, type GUID, first LBA, last LBA)`; empty slots are skipped.
pub fn read_primary(head: &[u8]) -> Result<Vec<(u32, Guid, u64, u64)>, GptError> {
    if head.len() < 2 * SECTOR as usize {
        return Err(GptError::TooSmall(head.len() as u64));
    }
    let mut hdr = [0u8; SECTOR as usize];
    hdr.copy_from_slice(&head[SECTOR as usize..2 * SECTOR as usize]);
    if &hdr[0..8] != SIGNATURE {
        return Err(GptError::NoHeader);
    }
    let size = head.len() as u64;
    let (f, array) = parse_header(&mut io::Cursor::new(head), &hdr, 1, size, "primary")?;
    let u64_at = |c: &[u8], o: usize| u64::from_le_bytes(c[o..o + 8].try_into().expect("8 bytes"));
    Ok(array
        .chunks_exact(f.entry_size as usize)
        .enumerate()
        .filter_map(|(i, c)| {
            let t = Guid::from_gpt_bytes(c[0..16].try_into().expect("16 bytes"));
            (!t.is_nil()).then(|| (i as u32 + 1, t, u64_at(c, 32), u64_at(c, 40)))
        })
        .collect())
}

/// Moves a GPT's backup to the end of a disk of `sectors` sectors (bmaptool's TODO #1): patches
/// the primary header (alternate LBA, last usable LBA, CRC) and the protective MBR in `head` (the
/// disk's first bytes: MBR, primary header and entry array) and returns where the backup goes
/// and its bytes (entry array, then header). The partitions are unchanged, so the last one can
/// grow into the new space at first boot.
pub fn relocate(head: &mut [u8], sectors: u64) -> Result<(u64, Vec<u8>), GptError> {
    let size = head.len() as u64;
    if size < 2 * SECTOR {
        return Err(GptError::TooSmall(size));
    }
    let mut hdr = [0u8; SECTOR as usize];
    hdr.copy_from_slice(&head[SECTOR as usize..2 * SECTOR as usize]);
    if &hdr[0..8] != SIGNATURE {
        return Err(GptError::NoHeader);
    }
    let (_, array) = parse_header(&mut io::Cursor::new(&head[..]), &hdr, 1, size, "primary")?;
    let array_sectors = (array.len() as u64).div_ceil(SECTOR);
    let last = sectors - 1;
    let old_last_usable = u64::from_le_bytes(hdr[48..56].try_into().expect("8 bytes"));
    let new_last_usable = last - array_sectors - 1;
    if new_last_usable < old_last_usable {
        return Err(GptError::BadHeader {
            which: "primary",
            why: format!("the disk ({sectors} sectors) is smaller than the table's usable area"),
        });
    }
    hdr[32..40].copy_from_slice(&last.to_le_bytes());
    hdr[48..56].copy_from_slice(&new_last_usable.to_le_bytes());
    let mut backup = hdr;
    backup[24..32].copy_from_slice(&last.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&(last - array_sectors).to_le_bytes());
    let hsize = u32::from_le_bytes(hdr[12..16].try_into().expect("4 bytes")) as usize;
    for h in [&mut hdr, &mut backup] {
        h[16..20].fill(0);
        let crc = crc32(&h[..hsize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }
    head[SECTOR as usize..2 * SECTOR as usize].copy_from_slice(&hdr);
    if head[446 + 4] == 0xEE {
        let n = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
        head[446 + 12..446 + 16].copy_from_slice(&n.to_le_bytes());
    }
    let mut tail = array;
    tail.resize((array_sectors * SECTOR) as usize, 0);
    tail.extend_from_slice(&backup);
    Ok(((last - array_sectors) * SECTOR, tail))
}

struct HeaderFields {
    alternate: u64,
    disk_guid: Guid,
    entry_size: u32,
}

fn parse_header<R: Read + Seek>(
    disk: &mut R,
    h: &[u8; SECTOR as usize],
    at: u64,
    size: u64,
    which: &'static str,
) -> Result<(HeaderFields, Vec<u8>), GptError> {
    let bad = |why: String| GptError::BadHeader { which, why };
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    let hsize = u32_at(12);
    if !(HEADER_SIZE..=SECTOR as u32).contains(&hsize) {
        return Err(bad(format!("header size {hsize}")));
    }
    let mut copy = h[..hsize as usize].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != u32_at(16) {
        return Err(bad("header CRC32 mismatch".into()));
    }
    if u64_at(24) != at {
        return Err(bad(format!("it says it is at sector {}", u64_at(24))));
    }
    let count = u32_at(80);
    let esize = u32_at(84);
    if !(128..=4096).contains(&esize) || esize % 8 != 0 || count == 0 || count > 1024 {
        return Err(bad(format!("{count} entries of {esize} bytes")));
    }
    let array_lba = u64_at(72);
    let array_len = u64::from(count) * u64::from(esize);
    if array_lba
        .checked_mul(SECTOR)
        .and_then(|o| o.checked_add(array_len))
        .is_none_or(|end| end > size)
    {
        return Err(GptError::Truncated {
            expected: array_lba * SECTOR + array_len,
        });
    }
    let mut array = vec![0u8; array_len as usize];
    read_at(disk, array_lba * SECTOR, &mut array)?;
    if crc32(&array) != u32_at(88) {
        return Err(bad("partition entry array CRC32 mismatch".into()));
    }
    Ok((
        HeaderFields {
            alternate: u64_at(32).max(u64_at(24)),
            disk_guid: Guid::from_gpt_bytes(h[56..72].try_into().expect("16 bytes")),
            entry_size: esize,
        },
        array,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockio::region::VecSink;
    use std::io::Cursor;

    fn table() -> GptTable {
        GptTable {
            disk_guid: "01234567-89ab-4def-8123-456789abcdef".parse().unwrap(),
            sectors: 8192,
            entries: vec![GptEntry {
                type_guid: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b".parse().unwrap(),
                unique_guid: "11111111-2222-4333-8444-555555555555".parse().unwrap(),
                first_lba: 2048,
                last_lba: 4095,
                attributes: 0,
                name: "esp".into(),
            }],
        }
    }

    #[test]
    fn round_trips() {
        let t = table();
        let mut s = VecSink::default();
        t.write(&mut s).unwrap();
        assert_eq!(s.buf.len() as u64, 8192 * SECTOR);
        let back = GptTable::read(&mut Cursor::new(&s.buf), s.buf.len() as u64).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn relocation_gives_the_table_of_the_larger_disk() {
        let small = table();
        let mut s = VecSink::default();
        small.write(&mut s).unwrap();
        let mut disk = s.buf.clone();
        let big = GptTable {
            sectors: 3 * 8192,
            ..table()
        };
        let (at, tail) = relocate(&mut disk[..(34 * SECTOR) as usize], big.sectors).unwrap();
        disk.resize((big.sectors * SECTOR) as usize, 0);
        disk[at as usize..at as usize + tail.len()].copy_from_slice(&tail);
        assert_eq!(at as usize + tail.len(), disk.len());
        let back = GptTable::read(&mut Cursor::new(&disk), disk.len() as u64).unwrap();
        assert_eq!(back, big);
        // Byte for byte what the writer gives for the larger disk.
        let mut want = VecSink::default();
        big.write(&mut want).unwrap();
        assert_eq!(disk[..34 * 512], want.buf[..34 * 512]);
        assert_eq!(disk[at as usize..], want.buf[at as usize..]);
    }

    #[test]
    fn detects_damage_and_truncation() {
        let mut s = VecSink::default();
        table().write(&mut s).unwrap();
        let len = s.buf.len() as u64;
        let mut bad = s.buf.clone();
        bad[2 * SECTOR as usize + 60] ^= 1;
        let e = GptTable::read(&mut Cursor::new(&bad), len).unwrap_err();
        assert!(e.to_string().contains("CRC32"), "{e}");
        let cut = &s.buf[..(40 * SECTOR) as usize];
        let e = GptTable::read(&mut Cursor::new(cut), cut.len() as u64).unwrap_err();
        assert!(matches!(e, GptError::Truncated { .. }), "{e}");
        let zero = vec![0u8; 64 * SECTOR as usize];
        assert!(matches!(
            GptTable::read(&mut Cursor::new(&zero), zero.len() as u64),
            Err(GptError::NoHeader)
        ));
    }
}
