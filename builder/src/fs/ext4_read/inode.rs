//! Inodes: decoding one inode-table slot, with its checksum checked when metadata_csum is on.

use super::{Ext4, Ext4ReadError, Result, le16, le32};
use crate::blockio::ReadAt;

/// File types in `i_mode`.
pub const S_IFMT: u16 = 0o170000;
pub const S_IFSOCK: u16 = 0o140000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFBLK: u16 = 0o060000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFIFO: u16 = 0o010000;

/// `i_flags` bits.
pub const EXTENTS_FL: u32 = 0x80000;
const ENCRYPT_FL: u32 = 0x800;
const CASEFOLD_FL: u32 = 0x4000_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const EA_INODE_FL: u32 = 0x20_0000;
const VERITY_FL: u32 = 0x10_0000;

/// A decoded inode.
#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    pub flags: u32,
    /// Seconds since the epoch (with the extra epoch bits when the inode has them).
    pub mtime: i64,
    pub dtime: u32,
    /// `i_block`: extent root, block map, device number or fast symlink target.
    pub block: [u8; 60],
    /// The xattr block, 0 if none.
    pub file_acl: u64,
    /// The whole on-disk inode (in-inode xattrs live after `i_extra_isize`).
    pub raw: Vec<u8>,
    pub extra_isize: u16,
}

impl Inode {
    pub fn file_type(&self) -> u16 {
        self.mode & S_IFMT
    }

    /// Refuses per-inode features that would be lost.
    pub fn check_flags(&self) -> Result<()> {
        for (bit, name) in [
            (ENCRYPT_FL, "encrypt"),
            (CASEFOLD_FL, "casefold"),
            (INLINE_DATA_FL, "inline_data"),
            (EA_INODE_FL, "ea_inode"),
            (VERITY_FL, "verity"),
        ] {
            if self.flags & bit != 0 {
                return Err(Ext4ReadError::inode(
                    self.ino,
                    format!(
                        "uses the ext4 feature `{name}`, which imgbuild cannot read faithfully"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `(major, minor)` of a device inode, in the old (16-bit) or new (32-bit) encoding.
    pub fn device(&self) -> (u32, u32) {
        let old = le32(&self.block, 0);
        if old != 0 {
            return ((old >> 8) & 0xff, old & 0xff);
        }
        let new = le32(&self.block, 4);
        ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
    }

    /// The target of a fast symlink (stored in `i_block`), if this is one: like the kernel, a
    /// symlink that owns no data blocks besides its xattr block.
    pub fn fast_symlink(&self, block_size: u64) -> Option<&[u8]> {
        let blocks = u64::from(le32(&self.raw, 0x1C)) | u64::from(le16(&self.raw, 0x74)) << 32;
        let ea = if self.file_acl != 0 {
            block_size / 512
        } else {
            0
        };
        (self.file_type() == S_IFLNK && blocks.saturating_sub(ea) == 0 && self.size < 60)
            .then(|| &self.block[..self.size as usize])
    }
}

impl<R: ReadAt> Ext4<R> {
    /// Reads and decodes inode `ino`.
    pub fn inode(&self, ino: u32) -> Result<Inode> {
        let sb = &self.sb;
        if ino == 0 || ino > sb.inodes_count {
            return Err(Ext4ReadError::inode(
                ino,
                format!(
                    "out of range: the filesystem has inodes 1 to {}",
                    sb.inodes_count
                ),
            ));
        }
        let ipg = u64::from(sb.inodes_per_group);
        let (g, idx) = ((u64::from(ino) - 1) / ipg, (u64::from(ino) - 1) % ipg);
        let table = self.groups[g as usize].inode_table;
        let mut raw = vec![0u8; sb.inode_size as usize];
        let off = table * sb.block_size + idx * sb.inode_size;
        self.read(off, &mut raw, || format!("inode {ino}"))?;
        decode(ino, raw, sb.csum_seed)
    }
}

fn decode(ino: u32, raw: Vec<u8>, csum_seed: Option<u32>) -> Result<Inode> {
    let extra_isize = if raw.len() > 128 { le16(&raw, 0x80) } else { 0 };
    if 128 + usize::from(extra_isize) > raw.len() || extra_isize % 4 != 0 {
        return Err(Ext4ReadError::inode(
            ino,
            format!("i_extra_isize {extra_isize} does not fit the inode"),
        ));
    }
    if let Some(seed) = csum_seed {
        let generation = le32(&raw, 0x64);
        let full = mkext4::csum::inode(seed, ino, generation, &raw);
        let stored = u32::from(le16(&raw, 0x7C))
            | if extra_isize >= 4 {
                u32::from(le16(&raw, 0x82)) << 16
            } else {
                0
            };
        let want = if extra_isize >= 4 {
            full
        } else {
            full & 0xFFFF
        };
        // A never-used inode (all zeros) carries no checksum.
        if want != stored && raw.iter().any(|&b| b != 0) {
            return Err(Ext4ReadError::inode(
                ino,
                format!("checksum {want:#x} does not match the stored {stored:#x} (corrupt inode)"),
            ));
        }
    }
    let mtime_lo = i64::from(le32(&raw, 0x10) as i32);
    // i_mtime_extra's low two bits extend the epoch past 2038.
    let mtime = if extra_isize >= 12 {
        mtime_lo + (i64::from(le32(&raw, 0x88) & 3) << 32)
    } else {
        mtime_lo
    };
    let mut block = [0u8; 60];
    block.copy_from_slice(&raw[0x28..0x64]);
    Ok(Inode {
        ino,
        mode: le16(&raw, 0x00),
        uid: u32::from(le16(&raw, 0x02)) | u32::from(le16(&raw, 0x78)) << 16,
        gid: u32::from(le16(&raw, 0x18)) | u32::from(le16(&raw, 0x7A)) << 16,
        size: u64::from(le32(&raw, 0x04)) | u64::from(le32(&raw, 0x6C)) << 32,
        links: le16(&raw, 0x1A),
        flags: le32(&raw, 0x20),
        mtime,
        dtime: le32(&raw, 0x14),
        block,
        file_acl: u64::from(le32(&raw, 0x68)) | u64::from(le16(&raw, 0x76)) << 32,
        extra_isize,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_block(words: [u32; 2]) -> Inode {
        let mut raw = vec![0u8; 256];
        raw[0x28..0x2C].copy_from_slice(&words[0].to_le_bytes());
        raw[0x2C..0x30].copy_from_slice(&words[1].to_le_bytes());
        decode(12, raw, None).unwrap()
    }

    #[test]
    fn device_numbers_in_both_encodings() {
        // Old: major 8, minor 1 in one 16-bit word.
        assert_eq!(with_block([0x0801, 0]).device(), (8, 1));
        // New (huge_encode_dev): major 259, minor 300000.
        let (major, minor) = (259u32, 300_000u32);
        let new = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        assert_eq!(with_block([0, new]).device(), (major, minor));
    }

    #[test]
    fn bad_extra_isize_is_an_error_not_a_panic() {
        let mut raw = vec![0u8; 256];
        raw[0x80] = 200;
        assert!(decode(5, raw, None).is_err());
    }
}
