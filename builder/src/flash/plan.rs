//! The write plan: which bytes of the image go where on the target, which holes are zeroed, and
//! what is held back to the end. Pure arithmetic on the image's table and block map.
//!
//! Skipping holes is only safe when they are truly don't-care (bmaptool's users lost FAT and ZFS
//! images to stale data in holes, intel/bmap-tools#75, #128). Our writers leave holes in three
//! kinds of places: free space and unused inode-table blocks of ext4 (mkext4 marks those groups
//! `INODE_ZEROED`/`INODE_UNINIT` and e2fsck and the kernel never read them as inodes), the free
//! tail of both FATs of a FAT32 volume (`fs/fat.rs` writes the FAT only up to its last used
//! entry: stale bytes there would read as allocated clusters), and free data clusters. So the
//! plan zeroes, wherever the image has a hole: the first 17 MiB of every FAT-typed partition
//! (every FAT32 up to 32 GiB has its reserved sectors and both FATs in there), the first and
//! last MiB of every other partition (old superblocks, LVM/md/ZFS labels a probe would find),
//! the first MiB of the disk and the last MiB of the target (an old backup GPT).

use crate::blockio::region::Ranges;
use crate::disk::bmap::BlockMap;

pub const MIB: u64 = 1 << 20;
/// Held back and written last, so an interrupted flash leaves no partition table.
pub const HEAD: u64 = MIB;
/// Holes zeroed at the start of a FAT partition: reserved sectors and both FATs.
pub const FAT_ZONE: u64 = 17 * MIB;
/// Holes zeroed at each end of any other partition.
pub const EDGE_ZONE: u64 = MIB;

/// A partition of the image, from its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// 1-based slot number.
    pub number: u32,
    pub start: u64,
    pub end: u64,
    /// Typed as a FAT partition (MBR 0x01/0x04/0x06/0x0b/0x0c/0x0e/0xef, GPT ESP or basic data).
    pub fat: bool,
}

/// Image bytes `[start, end)` to copy; `sha256` is the block map's checksum of exactly these
/// bytes (none for an image without a map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub start: u64,
    pub end: u64,
    pub sha256: Option<String>,
}

/// The boot partition, rebuilt with the node's seed instead of copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    pub start: u64,
    pub end: u64,
    /// Holes below this (in the rebuilt partition) are zeroed.
    pub zone_end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub image_size: u64,
    pub target_size: u64,
    pub mapped: Vec<Mapped>,
    /// Holes to zero, ascending, disjoint from `mapped`, none below [`HEAD`] or inside `boot`.
    pub zeros: Vec<(u64, u64)>,
    pub boot: Option<Boot>,
    /// Bytes of the image's start held back (`min(HEAD, image_size)`).
    pub head: u64,
    /// Zeroed before anything else: the end of a larger target (an old backup GPT).
    pub tail_wipe: Option<(u64, u64)>,
    /// The table is GPT: its backup moves to the end of a larger target.
    pub gpt: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error(
        "the target is {target} bytes, smaller than the image ({image} bytes); use a larger card or disk"
    )]
    TooSmall { target: u64, image: u64 },
    #[error("the block map describes a {map}-byte image, but the image is {image} bytes")]
    SizeMismatch { map: u64, image: u64 },
    #[error("partition {number} ({start}..{end}) lies outside the {image}-byte image")]
    PartitionOutside {
        number: u32,
        start: u64,
        end: u64,
        image: u64,
    },
}

/// The map's ranges as image byte ranges (the last one ends at the image's end, not at a block).
pub fn mapped_from_bmap(map: &BlockMap) -> Vec<Mapped> {
    map.ranges
        .iter()
        .map(|(f, l, sum)| Mapped {
            start: f * map.block_size,
            end: ((l + 1) * map.block_size).min(map.image_size),
            sha256: Some(sum.clone()),
        })
        .collect()
}

/// Every byte of an image without a map.
pub fn mapped_whole(image_size: u64) -> Vec<Mapped> {
    vec![Mapped {
        start: 0,
        end: image_size,
        sha256: None,
    }]
}

/// Where holes must be zeroed (see the module comment).
fn zones(parts: &[Span], image_size: u64) -> Ranges {
    let mut z = Ranges::default();
    z.add(0, HEAD.min(image_size));
    for p in parts {
        let head = if p.fat { FAT_ZONE } else { EDGE_ZONE };
        z.add(p.start, (p.start + head).min(p.end));
        z.add(p.end.saturating_sub(EDGE_ZONE).max(p.start), p.end);
    }
    z
}

/// `zones` minus `mapped` minus `skip`, from [`HEAD`] on.
fn holes(zones: &Ranges, mapped: &[Mapped], skip: Option<Boot>) -> Vec<(u64, u64)> {
    let mut covered = Ranges::default();
    for m in mapped {
        covered.add(m.start, m.end);
    }
    covered.add(0, HEAD);
    if let Some(b) = skip {
        covered.add(b.start, b.end);
    }
    let mut out = Vec::new();
    let mut c = covered.iter().peekable();
    for (s, e) in zones.iter() {
        let mut at = s;
        while at < e {
            while c.peek().is_some_and(|&(_, ce)| ce <= at) {
                c.next();
            }
            match c.peek() {
                Some(&(cs, ce)) if cs <= at => at = ce.min(e).max(at),
                Some(&(cs, _)) if cs < e => {
                    out.push((at, cs));
                    at = cs;
                }
                _ => {
                    out.push((at, e));
                    at = e;
                }
            }
        }
    }
    out
}

/// Plans the flash of an `image_size`-byte image onto a `target_size`-byte target. `boot` is the
/// index in `parts` of the partition rebuilt with a node's seed.
pub fn plan(
    image_size: u64,
    target_size: u64,
    mapped: Vec<Mapped>,
    parts: &[Span],
    boot: Option<usize>,
    gpt: bool,
) -> Result<Plan, PlanError> {
    if target_size < image_size {
        return Err(PlanError::TooSmall {
            target: target_size,
            image: image_size,
        });
    }
    if let Some(m) = mapped.last().filter(|m| m.end > image_size) {
        return Err(PlanError::SizeMismatch {
            map: m.end,
            image: image_size,
        });
    }
    if let Some(p) = parts
        .iter()
        .find(|p| p.end > image_size || p.start >= p.end)
    {
        return Err(PlanError::PartitionOutside {
            number: p.number,
            start: p.start,
            end: p.end,
            image: image_size,
        });
    }
    let boot = boot.map(|i| {
        let p = &parts[i];
        Boot {
            start: p.start,
            end: p.end,
            zone_end: (p.start + FAT_ZONE).min(p.end),
        }
    });
    let zeros = holes(&zones(parts, image_size), &mapped, boot);
    let tail_start = target_size.saturating_sub(MIB).max(image_size);
    Ok(Plan {
        image_size,
        target_size,
        mapped,
        zeros,
        boot,
        head: HEAD.min(image_size),
        tail_wipe: (tail_start < target_size).then_some((tail_start, target_size)),
        gpt,
    })
}

impl Plan {
    /// Bytes the write pass puts on the target (the held-back head included).
    pub fn write_bytes(&self) -> u64 {
        let inside = |m: &Mapped| match self.boot {
            Some(b) => m.start >= b.start && m.end <= b.end,
            None => false,
        };
        let mapped: u64 = self
            .mapped
            .iter()
            .filter(|m| !inside(m))
            .map(|m| m.end.max(self.head) - m.start.max(self.head).min(m.end.max(self.head)))
            .sum();
        let zeros: u64 = self.zeros.iter().map(|(s, e)| e - s).sum();
        let boot = self.boot.map_or(0, |b| b.zone_end - b.start);
        mapped + zeros + boot + self.head
    }
}

/// Is this MBR type byte a FAT filesystem?
pub fn mbr_type_is_fat(t: u8) -> bool {
    matches!(t, 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e | 0xef)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(number: u32, start: u64, end: u64, fat: bool) -> Span {
        Span {
            number,
            start,
            end,
            fat,
        }
    }

    fn m(start: u64, end: u64) -> Mapped {
        Mapped {
            start,
            end,
            sha256: None,
        }
    }

    #[test]
    fn holes_in_metadata_zones_are_zeroed_and_nothing_else() {
        let parts = [
            span(1, MIB, 65 * MIB, true),
            span(2, 65 * MIB, 200 * MIB, false),
        ];
        let mapped = vec![m(0, 4096), m(MIB, MIB + 8192), m(66 * MIB, 67 * MIB)];
        let p = plan(200 * MIB, 400 * MIB, mapped, &parts, None, true).unwrap();
        assert_eq!(
            p.zeros,
            vec![
                (MIB + 8192, 18 * MIB),
                (64 * MIB, 66 * MIB),
                (199 * MIB, 200 * MIB)
            ]
        );
        assert_eq!(p.tail_wipe, Some((399 * MIB, 400 * MIB)));
        assert_eq!(p.head, MIB);
    }

    #[test]
    fn the_rebuilt_boot_partition_is_not_copied_or_zeroed() {
        let parts = [
            span(1, MIB, 65 * MIB, true),
            span(2, 65 * MIB, 100 * MIB, false),
        ];
        let mapped = vec![m(0, 4096), m(MIB, 2 * MIB), m(70 * MIB, 71 * MIB)];
        let p = plan(100 * MIB, 100 * MIB, mapped, &parts, Some(0), false).unwrap();
        assert!(
            p.zeros.iter().all(|&(s, e)| e <= MIB || s >= 65 * MIB),
            "{:?}",
            p.zeros
        );
        assert_eq!(p.boot.unwrap().zone_end, 18 * MIB);
        assert_eq!(p.tail_wipe, None);
        // Head + the root's copied MiB + its zeroed edges + the boot zone.
        assert_eq!(p.write_bytes(), MIB + MIB + 2 * MIB + 17 * MIB);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert!(matches!(
            plan(10 * MIB, 9 * MIB, mapped_whole(10 * MIB), &[], None, false),
            Err(PlanError::TooSmall { .. })
        ));
        assert!(matches!(
            plan(10 * MIB, 10 * MIB, vec![m(0, 11 * MIB)], &[], None, false),
            Err(PlanError::SizeMismatch { .. })
        ));
        let outside = [span(1, MIB, 20 * MIB, false)];
        assert!(matches!(
            plan(
                10 * MIB,
                10 * MIB,
                mapped_whole(10 * MIB),
                &outside,
                None,
                false
            ),
            Err(PlanError::PartitionOutside { number: 1, .. })
        ));
    }
}
