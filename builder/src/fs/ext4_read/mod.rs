//! Reading ext2/3/4 filesystems (the root of a base image) into a [`crate::tree::Tree`].
//!
//! Our own reader, not `mkext4::reader` (a verification oracle for mkext4's own output: 4 KiB
//! blocks only, no block-mapped files, which it reads as zeros) nor `ext4-view` (no xattrs, inode
//! or device numbers). It keeps everything the ext4 writer can write: type, mode, owner, times,
//! xattrs of every namespace (in the inode and in an xattr block), hard links, device numbers,
//! FIFOs, sockets, fast and slow symlinks, and holes. Extents and ext2/3 block maps are both
//! read; htree directories are read through their leaf blocks, which every htree directory keeps
//! in linear-readable form.
//!
//! Generic over [`ReadAt`]: no paths inside. Every structure read is bounds-checked against the
//! superblock and the device; a corrupt or hostile filesystem is an error naming the inode (and,
//! from the walk, the path), never a panic or an endless loop. Features it cannot read faithfully
//! are refused by name. The journal is not replayed: a filesystem that needs recovery is refused.

mod inode;
mod map;
mod walk;
pub mod xattr;

use crate::blockio::ReadAt;

pub use inode::Inode;
pub use map::Run;
pub use walk::{ReadStats, read_tree};

/// What went wrong reading an ext4 filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Ext4ReadError {
    #[error("reading {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not an ext2/3/4 filesystem (no superblock magic 0xEF53 at byte 1080)")]
    NotExt4,
    #[error(
        "the filesystem uses the ext4 feature `{feature}`, which imgbuild cannot read faithfully; {fix}"
    )]
    Unsupported { feature: String, fix: &'static str },
    #[error("corrupt filesystem: {0}")]
    Corrupt(String),
    #[error("inode {ino}: {why}")]
    Inode { ino: u32, why: String },
    #[error("{path} (inode {ino}): {why}")]
    Entry { path: String, ino: u32, why: String },
}

impl Ext4ReadError {
    fn inode(ino: u32, why: impl Into<String>) -> Self {
        Ext4ReadError::Inode {
            ino,
            why: why.into(),
        }
    }

    /// Adds the path an inode error was reached by.
    fn at(self, path: &str) -> Self {
        match self {
            Ext4ReadError::Inode { ino, why } => Ext4ReadError::Entry {
                path: path.to_string(),
                ino,
                why,
            },
            other => other,
        }
    }
}

type Result<T> = std::result::Result<T, Ext4ReadError>;

/// `s_feature_incompat` bits.
mod incompat {
    pub const FILETYPE: u32 = 0x2;
    pub const RECOVER: u32 = 0x4;
    pub const JOURNAL_DEV: u32 = 0x8;
    pub const META_BG: u32 = 0x10;
    pub const EXTENTS: u32 = 0x40;
    pub const BIT64: u32 = 0x80;
    pub const MMP: u32 = 0x100;
    pub const FLEX_BG: u32 = 0x200;
    pub const EA_INODE: u32 = 0x400;
    pub const DIRDATA: u32 = 0x1000;
    pub const CSUM_SEED: u32 = 0x2000;
    pub const LARGEDIR: u32 = 0x4000;
    pub const INLINE_DATA: u32 = 0x8000;
    pub const ENCRYPT: u32 = 0x10000;
    pub const CASEFOLD: u32 = 0x20000;
    /// What this reader handles.
    pub const KNOWN: u32 =
        FILETYPE | META_BG | EXTENTS | BIT64 | MMP | FLEX_BG | CSUM_SEED | LARGEDIR;
}

/// `s_feature_ro_compat` bits that matter when reading.
mod ro_compat {
    pub const METADATA_CSUM: u32 = 0x400;
    pub const VERITY: u32 = 0x8000;
}

/// Features refused, by name, with what to do about them.
const REFUSED: &[(u32, &str, &str)] = &[
    (
        incompat::RECOVER,
        "needs_recovery",
        "the journal holds unreplayed writes: run `e2fsck -f` on a copy of the base, then use that",
    ),
    (
        incompat::JOURNAL_DEV,
        "journal_dev",
        "this is an external journal device, not a filesystem",
    ),
    (
        incompat::EA_INODE,
        "ea_inode",
        "xattr values stored in inodes are not supported: use a base made without `-O ea_inode`",
    ),
    (
        incompat::DIRDATA,
        "dirdata",
        "Lustre directory data is not supported",
    ),
    (
        incompat::INLINE_DATA,
        "inline_data",
        "files stored inside inodes are not supported: use a base made without `-O inline_data`",
    ),
    (
        incompat::ENCRYPT,
        "encrypt",
        "encrypted directories cannot be read without their keys: use an unencrypted base",
    ),
    (
        incompat::CASEFOLD,
        "casefold",
        "case-insensitive directories are not supported: use a base made without `-O casefold`",
    ),
];

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// The superblock fields the reader uses.
#[derive(Debug, Clone)]
pub struct Superblock {
    pub block_size: u64,
    pub blocks_count: u64,
    pub inodes_count: u32,
    pub inodes_per_group: u32,
    pub blocks_per_group: u32,
    pub inode_size: u64,
    pub first_data_block: u64,
    pub first_meta_bg: u32,
    pub desc_size: u64,
    pub incompat: u32,
    pub ro_compat: u32,
    pub label: String,
    /// metadata_csum seed, when checksums are on.
    csum_seed: Option<u32>,
}

impl Superblock {
    fn parse(sb: &[u8; 1024]) -> Result<Superblock> {
        if le16(sb, 0x38) != 0xEF53 {
            return Err(Ext4ReadError::NotExt4);
        }
        let bad = |why: String| Ext4ReadError::Corrupt(format!("superblock: {why}"));
        let log = le32(sb, 0x18);
        if log > 6 {
            return Err(bad(format!("block size 2^{} is out of range", 10 + log)));
        }
        let block_size = 1024u64 << log;
        let incompat = le32(sb, 0x60);
        let ro_compat = le32(sb, 0x64);
        let rev = le32(sb, 0x4C);
        let inode_size = if rev == 0 {
            128
        } else {
            u64::from(le16(sb, 0x58))
        };
        if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
            return Err(bad(format!("inode size {inode_size}")));
        }
        let bit64 = incompat & incompat::BIT64 != 0;
        let desc_size = if bit64 { u64::from(le16(sb, 0xFE)) } else { 32 };
        if bit64 && (!(64..=1024).contains(&desc_size) || !desc_size.is_power_of_two()) {
            return Err(bad(format!("group descriptor size {desc_size}")));
        }
        let blocks_hi = if bit64 { u64::from(le32(sb, 0x150)) } else { 0 };
        let sb_out = Superblock {
            block_size,
            blocks_count: u64::from(le32(sb, 0x04)) | blocks_hi << 32,
            inodes_count: le32(sb, 0x00),
            inodes_per_group: le32(sb, 0x28),
            blocks_per_group: le32(sb, 0x20),
            inode_size,
            first_data_block: u64::from(le32(sb, 0x14)),
            first_meta_bg: le32(sb, 0x104),
            desc_size,
            incompat,
            ro_compat,
            label: {
                let l = &sb[0x78..0x88];
                let end = l.iter().position(|&c| c == 0).unwrap_or(l.len());
                String::from_utf8_lossy(&l[..end]).into_owned()
            },
            csum_seed: None,
        };
        sb_out.check_geometry()?;
        let mut sb_out = sb_out;
        if ro_compat & ro_compat::METADATA_CSUM != 0 {
            let want = mkext4::csum::superblock(sb);
            let stored = le32(sb, 0x3FC);
            if want != stored {
                return Err(bad(format!(
                    "checksum {want:#010x} does not match the stored {stored:#010x}"
                )));
            }
            sb_out.csum_seed = Some(if incompat & incompat::CSUM_SEED != 0 {
                le32(sb, 0x270)
            } else {
                let uuid: [u8; 16] = sb[0x68..0x78].try_into().expect("16 bytes");
                mkext4::csum::fs_seed(&uuid)
            });
        }
        Ok(sb_out)
    }

    /// Everything later code divides by or sizes allocations with, checked once.
    fn check_geometry(&self) -> Result<()> {
        let bad = |why: String| Err(Ext4ReadError::Corrupt(format!("superblock: {why}")));
        let bits = self.block_size * 8;
        if self.blocks_per_group == 0 || u64::from(self.blocks_per_group) > bits {
            return bad(format!("{} blocks per group", self.blocks_per_group));
        }
        if self.inodes_per_group == 0 || u64::from(self.inodes_per_group) > bits {
            return bad(format!("{} inodes per group", self.inodes_per_group));
        }
        if self.blocks_count <= self.first_data_block {
            return bad(format!("{} blocks", self.blocks_count));
        }
        if self.first_data_block > 1 {
            return bad(format!("first data block {}", self.first_data_block));
        }
        if u64::from(self.inodes_count) > u64::from(self.inodes_per_group) * self.group_count() {
            return bad(format!(
                "{} inodes for {} groups",
                self.inodes_count,
                self.group_count()
            ));
        }
        if self.inodes_count < 11 {
            return bad(format!("{} inodes", self.inodes_count));
        }
        Ok(())
    }

    pub fn group_count(&self) -> u64 {
        (self.blocks_count - self.first_data_block).div_ceil(u64::from(self.blocks_per_group))
    }

    /// Refuses features that would make the tree differ from the filesystem, by name.
    fn check_features(&self) -> Result<()> {
        for &(bit, name, fix) in REFUSED {
            if self.incompat & bit != 0 {
                return Err(Ext4ReadError::Unsupported {
                    feature: name.into(),
                    fix,
                });
            }
        }
        if self.ro_compat & ro_compat::VERITY != 0 {
            return Err(Ext4ReadError::Unsupported {
                feature: "verity".into(),
                fix: "fs-verity files cannot be copied with their Merkle trees: use a base without it",
            });
        }
        let unknown = self.incompat & !incompat::KNOWN;
        if unknown != 0 {
            return Err(Ext4ReadError::Unsupported {
                feature: format!("incompat {unknown:#x}"),
                fix: "this reader does not know that feature: use a base made by a stock mke2fs",
            });
        }
        Ok(())
    }

    fn has(&self, incompat_bit: u32) -> bool {
        self.incompat & incompat_bit != 0
    }
}

/// One block group's descriptor fields the reader uses.
#[derive(Debug, Clone, Copy)]
struct Group {
    inode_bitmap: u64,
    inode_table: u64,
    flags: u16,
}

const INODE_UNINIT: u16 = 0x1;

/// An open ext2/3/4 filesystem over a [`ReadAt`] source (a partition window, a byte slice).
#[derive(Debug)]
pub struct Ext4<R> {
    src: R,
    /// Bytes the source holds.
    len: u64,
    sb: Superblock,
    groups: Vec<Group>,
}

impl<R: ReadAt> Ext4<R> {
    /// Opens the filesystem in `src`, which holds `len` bytes: reads the superblock and the group
    /// descriptors and checks them against each other and the device.
    pub fn open(src: R, len: u64) -> Result<Ext4<R>> {
        let mut raw = [0u8; 1024];
        if len < 2048 {
            return Err(Ext4ReadError::NotExt4);
        }
        read_at(&src, 1024, &mut raw, "the superblock")?;
        let sb = Superblock::parse(&raw)?;
        sb.check_features()?;
        let end = sb.blocks_count.checked_mul(sb.block_size);
        if end.is_none_or(|e| e > len) {
            return Err(Ext4ReadError::Corrupt(format!(
                "the superblock claims {} blocks of {} bytes, more than the {len} bytes of the device: the image is truncated",
                sb.blocks_count, sb.block_size
            )));
        }
        let mut fs = Ext4 {
            src,
            len,
            sb,
            groups: Vec::new(),
        };
        fs.groups = fs.read_groups()?;
        Ok(fs)
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The source and its length (for content readers).
    pub fn source(&self) -> (&R, u64) {
        (&self.src, self.len)
    }

    /// Where group `g`'s descriptor lives: after the superblock, or with `meta_bg` in the first
    /// block(s) of its meta group.
    fn desc_offset(&self, g: u64) -> u64 {
        let sb = &self.sb;
        let per_block = sb.block_size / sb.desc_size;
        let gdt = (sb.first_data_block + 1) * sb.block_size;
        if !sb.has(incompat::META_BG) || g / per_block < u64::from(sb.first_meta_bg) {
            return gdt + g * sb.desc_size;
        }
        let first = g / per_block * per_block;
        let start = sb.first_data_block + first * u64::from(sb.blocks_per_group);
        let block = start + u64::from(has_super(first));
        block * sb.block_size + (g % per_block) * sb.desc_size
    }

    fn read_groups(&self) -> Result<Vec<Group>> {
        let sb = &self.sb;
        let count = sb.group_count();
        // Every group needs at least its inode table: a count the device cannot hold is corrupt,
        // and the check bounds the allocation below.
        if count > self.len / sb.block_size {
            return Err(Ext4ReadError::Corrupt(format!("{count} block groups")));
        }
        let table_blocks = (u64::from(sb.inodes_per_group) * sb.inode_size).div_ceil(sb.block_size);
        let mut out = Vec::with_capacity(count as usize);
        let mut d = vec![0u8; sb.desc_size as usize];
        for g in 0..count {
            read_at(&self.src, self.desc_offset(g), &mut d, "a group descriptor")?;
            let hi = |o: usize| {
                if sb.desc_size >= 64 {
                    u64::from(le32(&d, o)) << 32
                } else {
                    0
                }
            };
            let grp = Group {
                inode_bitmap: u64::from(le32(&d, 0x04)) | hi(0x24),
                inode_table: u64::from(le32(&d, 0x08)) | hi(0x28),
                flags: le16(&d, 0x12),
            };
            let end = grp.inode_table.checked_add(table_blocks);
            if end.is_none_or(|e| e > sb.blocks_count) || grp.inode_bitmap >= sb.blocks_count {
                return Err(Ext4ReadError::Corrupt(format!(
                    "group {g}: inode table at block {} or bitmap at block {} lies outside the {} blocks of the filesystem",
                    grp.inode_table, grp.inode_bitmap, sb.blocks_count
                )));
            }
            out.push(grp);
        }
        Ok(out)
    }

    /// Reads `buf.len()` bytes at byte `offset`, refusing reads past the device.
    fn read(&self, offset: u64, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(Ext4ReadError::Corrupt(format!(
                "{} lies past the end of the device ({} bytes)",
                what(),
                self.len
            )));
        }
        self.src
            .read_exact_at(buf, offset)
            .map_err(|source| Ext4ReadError::Io {
                what: what(),
                source,
            })
    }

    /// One filesystem block.
    fn block(&self, n: u64, ino: u32) -> Result<Vec<u8>> {
        if n >= self.sb.blocks_count || n < self.sb.first_data_block {
            return Err(Ext4ReadError::inode(
                ino,
                format!(
                    "refers to block {n}, outside the {} blocks of the filesystem",
                    self.sb.blocks_count
                ),
            ));
        }
        let mut buf = vec![0u8; self.sb.block_size as usize];
        self.read(n * self.sb.block_size, &mut buf, || {
            format!("block {n} of inode {ino}")
        })?;
        Ok(buf)
    }

    /// Is inode `ino` marked in use? Reads its group's inode bitmap.
    fn in_use(
        &self,
        ino: u32,
        bitmaps: &mut std::collections::HashMap<u64, Vec<u8>>,
    ) -> Result<bool> {
        let ipg = u64::from(self.sb.inodes_per_group);
        let (g, idx) = ((u64::from(ino) - 1) / ipg, (u64::from(ino) - 1) % ipg);
        let grp = self.groups[g as usize];
        if grp.flags & INODE_UNINIT != 0 {
            return Ok(false);
        }
        let bitmap = match bitmaps.entry(g) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(self.block(grp.inode_bitmap, ino)?)
            }
        };
        Ok(bitmap[(idx / 8) as usize] & (1 << (idx % 8)) != 0)
    }
}

/// Does block group `g` hold a superblock backup (sparse_super: 0, 1, powers of 3, 5, 7)?
/// Used only for meta_bg descriptor placement, where mke2fs always sets sparse_super.
fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&b| {
        let mut n = b;
        while n < g {
            n *= b;
        }
        n == g
    })
}

fn read_at<R: ReadAt>(src: &R, offset: u64, buf: &mut [u8], what: &str) -> Result<()> {
    src.read_exact_at(buf, offset)
        .map_err(|source| Ext4ReadError::Io {
            what: what.to_string(),
            source,
        })
}
