//! Filesystems: writers (a [`crate::tree::Tree`] in, an image out through a
//! [`crate::blockio::region::Sink`]: ext4, FAT, cpio, squashfs), the ext4 reader for bases
//! ([`ext4_read`]) and the one prober that tells filesystems apart ([`probe`]).

pub mod cpio;
pub mod ext4;
pub mod ext4_read;
pub mod fat;
pub mod probe;
pub mod squashfs;

use serde::Serialize;

/// One entry of a written filesystem, as listed in `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRecord {
    /// Absolute path inside the filesystem (`/etc/hostname`).
    pub path: String,
    /// `file`, `dir`, `symlink`, `hardlink`, `char`, `block`, `fifo`, `socket`.
    pub kind: &'static str,
    /// Permission bits, octal string (`0644`).
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    /// Regular files: size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Regular files: SHA-256 of the content, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlinks: the target; hard links: the path linked to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Regular files with several names: the inode's link count (every name records it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<u32>,
    /// Names of the entry's extended attributes (values are not listed), sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<String>,
}

impl FileRecord {
    /// The record of `e` at `path`, without content details.
    pub fn of(path: &crate::tree::TreePath, e: &crate::tree::Entry) -> Self {
        FileRecord {
            path: path.display(),
            kind: e.kind.name(),
            mode: format!("{:04o}", e.mode & 0o7777),
            uid: e.uid,
            gid: e.gid,
            size: None,
            sha256: None,
            target: None,
            links: None,
            xattrs: e
                .xattrs
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect(),
        }
    }
}

/// Names per regular file (the file itself and every hard link to it), for files with more
/// than one.
pub(crate) fn link_counts(
    tree: &crate::tree::Tree,
) -> std::collections::HashMap<&crate::tree::TreePath, u32> {
    let mut n = std::collections::HashMap::new();
    for (_, e) in tree.iter() {
        if let crate::tree::Kind::Hardlink(t) = &e.kind {
            *n.entry(t).or_insert(1) += 1;
        }
    }
    n
}

const MIB: u64 = 1 << 20;

/// The smallest size, in whole MiB, for which `fits` holds: `start` if it fits; otherwise grow
/// with `grow` until a size fits, then bisect between the last size that did not and the first
/// that did. `Err(size)` once a size reaches `limit`. Both filesystem writers size `auto`
/// partitions with it (fitting is assumed to stay true as the size grows).
pub(crate) fn smallest_fitting<E>(
    start: u64,
    limit: u64,
    grow: impl Fn(u64) -> u64,
    fits: impl Fn(u64) -> Result<bool, E>,
) -> Result<Result<u64, u64>, E> {
    let mut lo = start.next_multiple_of(MIB);
    if fits(lo)? {
        return Ok(Ok(lo));
    }
    let mut hi = lo;
    loop {
        hi = grow(hi).next_multiple_of(MIB);
        if hi >= limit {
            return Ok(Err(hi));
        }
        if fits(hi)? {
            break;
        }
        lo = hi;
    }
    while hi - lo > MIB {
        let mid = (lo + (hi - lo) / 2).next_multiple_of(MIB).min(hi - MIB);
        if fits(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Ok(hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_fitting_finds_the_first_whole_mib_that_fits() {
        let need = 37 * MIB + 5;
        let fits = |s: u64| Ok::<_, ()>(s >= need);
        assert_eq!(
            smallest_fitting(MIB, 1 << 40, |s| s * 2, fits),
            Ok(Ok(38 * MIB))
        );
        assert_eq!(
            smallest_fitting(64 * MIB, 1 << 40, |s| s * 2, fits),
            Ok(Ok(64 * MIB))
        );
        assert_eq!(
            smallest_fitting(MIB, 16 * MIB, |s| s * 2, fits),
            Ok(Err(16 * MIB))
        );
    }
}
