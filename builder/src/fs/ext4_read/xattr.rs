//! Extended attributes: the in-inode area and the xattr block, and the conversion of POSIX ACLs
//! between ext4's compact on-disk form and the form the xattr system calls use (which is what
//! the tree holds, what `getfattr` shows and what tarballs carry). The kernel converts on every
//! `getxattr`/`setxattr`; a reader or writer of raw ext4 must do the same, or ACLs come out
//! unreadable.

use std::collections::BTreeMap;

use super::inode::Inode;
use super::{Ext4, Ext4ReadError, Result, le16, le32};
use crate::blockio::ReadAt;

const MAGIC: u32 = 0xEA02_0000;
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// The name prefix of an `e_name_index`.
fn prefix(index: u8) -> Option<&'static [u8]> {
    Some(match index {
        0 => b"",
        1 => b"user.",
        2 => ACL_ACCESS,
        3 => ACL_DEFAULT,
        4 => b"trusted.",
        6 => b"security.",
        7 => b"system.",
        8 => b"system.richacl",
        _ => return None,
    })
}

impl<R: ReadAt> Ext4<R> {
    /// Every xattr of an inode, full names to values (ACLs in xattr-call form).
    pub fn xattrs(&self, inode: &Inode) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let start = 128 + usize::from(inode.extra_isize);
        if inode.extra_isize > 0 && inode.raw.len() >= start + 4 && le32(&inode.raw, start) == MAGIC
        {
            // In-inode value offsets count from the first entry.
            let area = &inode.raw[start + 4..];
            entries(area, 0, area, inode.ino, "in-inode", &mut out)?;
        }
        if inode.file_acl != 0 {
            let block = self.block(inode.file_acl, inode.ino)?;
            if le32(&block, 0) != MAGIC {
                return Err(Ext4ReadError::inode(
                    inode.ino,
                    format!("xattr block {} has no xattr magic", inode.file_acl),
                ));
            }
            if le32(&block, 8) != 1 {
                return Err(Ext4ReadError::inode(
                    inode.ino,
                    format!(
                        "xattr block {} spans {} blocks",
                        inode.file_acl,
                        le32(&block, 8)
                    ),
                ));
            }
            entries(&block, 32, &block, inode.ino, "block", &mut out)?;
        }
        for name in [ACL_ACCESS, ACL_DEFAULT] {
            if let Some(v) = out.get_mut(name) {
                *v = acl_to_xattr(v).ok_or_else(|| {
                    Ext4ReadError::inode(
                        inode.ino,
                        format!("{} is not a valid ext4 ACL", String::from_utf8_lossy(name)),
                    )
                })?;
            }
        }
        Ok(out)
    }
}

/// Parses the entry table starting at `table[at..]`; values are at offsets into `values`.
fn entries(
    table: &[u8],
    mut at: usize,
    values: &[u8],
    ino: u32,
    where_: &str,
    out: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<()> {
    let bad = |why: String| Err(Ext4ReadError::inode(ino, format!("{where_} xattrs: {why}")));
    loop {
        if at + 4 > table.len() {
            return bad("the entry table runs past its end".into());
        }
        if le32(table, at) == 0 {
            return Ok(());
        }
        if at + 16 > table.len() {
            return bad("an entry runs past the end of the table".into());
        }
        let (name_len, index) = (usize::from(table[at]), table[at + 1]);
        let (offs, inum, size) = (
            usize::from(le16(table, at + 2)),
            le32(table, at + 4),
            le32(table, at + 8) as usize,
        );
        let name_end = at + 16 + name_len;
        if name_end > table.len() {
            return bad("a name runs past the end of the table".into());
        }
        let Some(pre) = prefix(index) else {
            return bad(format!("unknown name index {index}"));
        };
        let mut name = pre.to_vec();
        name.extend_from_slice(&table[at + 16..name_end]);
        if inum != 0 {
            return bad(format!(
                "{} has its value in inode {inum} (ea_inode), which is not supported",
                String::from_utf8_lossy(&name)
            ));
        }
        let Some(value) = offs.checked_add(size).and_then(|end| values.get(offs..end)) else {
            return bad(format!(
                "the value of {} ({size} bytes at offset {offs}) runs past the end of its {} bytes",
                String::from_utf8_lossy(&name),
                values.len()
            ));
        };
        out.insert(name, value.to_vec());
        at = (name_end + 3) & !3;
    }
}

/// ACL entry tags whose entries carry an id.
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// ext4's on-disk ACL (version 1, 4-byte entries without an id) → the xattr-call form (version 2,
/// 8-byte entries). `None` if malformed.
pub fn acl_to_xattr(disk: &[u8]) -> Option<Vec<u8>> {
    if disk.len() < 4 || le32(disk, 0) != 1 {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut at = 4;
    while at < disk.len() {
        let tag = le16(disk.get(at..at + 4)?, 0);
        let perm = le16(disk, at + 2);
        let id = if matches!(tag, ACL_USER | ACL_GROUP) {
            let id = le32(disk.get(at..at + 8)?, 4);
            at += 8;
            id
        } else {
            at += 4;
            ACL_UNDEFINED_ID
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Some(out)
}

/// The xattr-call form → ext4's on-disk form (what the kernel's `ext4_acl_to_disk` writes).
/// `None` if malformed.
pub fn acl_to_disk(x: &[u8]) -> Option<Vec<u8>> {
    if x.len() < 4 || le32(x, 0) != 2 || (x.len() - 4) % 8 != 0 {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in x[4..].chunks_exact(8) {
        let tag = le16(e, 0);
        out.extend_from_slice(&e[..4]);
        if matches!(tag, ACL_USER | ACL_GROUP) {
            out.extend_from_slice(&e[4..8]);
        }
    }
    Some(out)
}

/// The permission bits a file gets when its access ACL (xattr form) is set, as the kernel does
/// it (`posix_acl_update_mode`): owner bits from `user::`, group bits from `mask::` (or from
/// `group::` without a mask), other bits from `other::`; set-id and sticky bits kept. `mode`
/// unchanged if the ACL is malformed.
pub fn mode_with_acl(mode: u32, acl: &[u8]) -> u32 {
    if acl.len() < 4 || (acl.len() - 4) % 8 != 0 {
        return mode;
    }
    let (mut user, mut group, mut mask, mut other) = (None, None, None, None);
    for e in acl[4..].chunks_exact(8) {
        let perm = u32::from(le16(e, 2) & 7);
        match le16(e, 0) {
            1 => user = Some(perm),
            4 => group = Some(perm),
            0x10 => mask = Some(perm),
            0x20 => other = Some(perm),
            _ => {}
        }
    }
    match (user, mask.or(group), other) {
        (Some(u), Some(g), Some(o)) => (mode & 0o7000) | u << 6 | g << 3 | o,
        _ => mode,
    }
}

/// A textual POSIX ACL as tar archives carry it (`SCHILY.acl.access` / `.default`, star and
/// libarchive format: `tag:qualifier:perms[:id]` entries separated by `,` or newlines) → the
/// xattr-call form, entries in the order the kernel requires. Named entries need a numeric id
/// (the fourth field, or a numeric qualifier); names are never looked up. `Err` says why not.
pub fn acl_from_text(text: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the ACL text is not UTF-8".to_string())?;
    let mut entries: Vec<(u16, u32, u16)> = Vec::new();
    for e in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let f: Vec<&str> = e.split(':').collect();
        let (tag, qual, perms) = match f.as_slice() {
            [t, q, p, ..] => (*t, *q, *p),
            // `other::r--` may also be written `other:r--`.
            [t, p] => (*t, "", *p),
            _ => return Err(format!("malformed ACL entry {e:?}")),
        };
        let mut perm = 0u16;
        for (c, bit) in perms.chars().zip([4u16, 2, 1]) {
            match (c, bit) {
                ('r', 4) | ('w', 2) | ('x', 1) => perm |= bit,
                ('-', _) => {}
                _ => return Err(format!("malformed permissions in ACL entry {e:?}")),
            }
        }
        let named = !qual.is_empty();
        let id = || -> std::result::Result<u32, String> {
            f.get(3)
                .and_then(|v| v.parse().ok())
                .or_else(|| qual.parse().ok())
                .ok_or_else(|| {
                    format!(
                        "ACL entry {e:?} names {qual:?} without a numeric id (GNU tar --acls stores names only); recreate the archive with --xattrs --xattrs-include='*', or with bsdtar, which store ids"
                    )
                })
        };
        let (tag, id) = match (tag, named) {
            ("user" | "u", false) => (1, ACL_UNDEFINED_ID),
            ("user" | "u", true) => (ACL_USER, id()?),
            ("group" | "g", false) => (4, ACL_UNDEFINED_ID),
            ("group" | "g", true) => (ACL_GROUP, id()?),
            ("mask" | "m", _) => (0x10, ACL_UNDEFINED_ID),
            ("other" | "o", _) => (0x20, ACL_UNDEFINED_ID),
            _ => return Err(format!("unknown ACL entry {e:?}")),
        };
        entries.push((tag, id, perm));
    }
    if entries.is_empty() {
        return Err("the ACL is empty".into());
    }
    entries.sort_unstable();
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, id, perm) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acls_convert_both_ways() {
        // user::rwx user:1000:r-x group::r-x mask::r-x other::---
        let mut x = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 7u16, u32::MAX),
            (2, 5, 1000),
            (4, 5, u32::MAX),
            (0x10, 5, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            x.extend_from_slice(&tag.to_le_bytes());
            x.extend_from_slice(&perm.to_le_bytes());
            x.extend_from_slice(&id.to_le_bytes());
        }
        let disk = acl_to_disk(&x).unwrap();
        assert_eq!(disk.len(), 4 + 4 * 4 + 8);
        assert_eq!(acl_to_xattr(&disk).unwrap(), x);
        assert!(acl_to_xattr(&disk[..disk.len() - 2]).is_none());
        assert!(acl_to_disk(&x[..7]).is_none());
    }

    #[test]
    fn acl_text_as_bsdtar_writes_it() {
        let x = acl_from_text(b"user::rwx,group::r-x,other::r-x,user:alice:r-x:1000,mask::rwx")
            .unwrap();
        let disk = acl_to_disk(&x).unwrap();
        // user_obj, user 1000, group_obj, mask, other: in that order.
        let tags: Vec<u16> = acl_to_xattr(&disk).unwrap()[4..]
            .chunks(8)
            .map(|c| le16(c, 0))
            .collect();
        assert_eq!(tags, [1, 2, 4, 0x10, 0x20]);
        assert_eq!(le32(&x, 4 + 8 + 4), 1000);
        let err = acl_from_text(b"user::rwx\nuser:alice:r-x\n").unwrap_err();
        assert!(err.contains("numeric id"), "{err}");
        assert!(acl_from_text(b"user::rwz").is_err());
        // The mask sets the group bits, as setfacl does.
        assert_eq!(mode_with_acl(0o4755, &x), 0o4775);
        assert_eq!(mode_with_acl(0o644, b"junk"), 0o644);
    }

    #[test]
    fn a_value_past_its_area_is_an_error() {
        let mut t = vec![0u8; 64];
        t[0] = 3; // name_len
        t[1] = 1; // user.
        t[2..4].copy_from_slice(&40u16.to_le_bytes());
        t[8..12].copy_from_slice(&100u32.to_le_bytes());
        t[16..19].copy_from_slice(b"abc");
        let mut out = BTreeMap::new();
        let err = entries(&t, 0, &t, 9, "block", &mut out).unwrap_err();
        assert!(err.to_string().contains("user.abc"), "{err}");
        t[8..12].copy_from_slice(&4u32.to_le_bytes());
        entries(&t, 0, &t, 9, "block", &mut out).unwrap();
        assert_eq!(out[&b"user.abc"[..]], vec![0u8; 4]);
    }
}
