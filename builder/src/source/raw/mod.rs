//! Base OS images → trees, without mounting or unpacking anything.
//!
//! * [`partitions`]: the partition table and which partition is boot and which is root;
//! * [`ext4`]: the root filesystem, read by [`crate::fs::ext4_read`] with everything the image
//!   writer can write (xattrs, hard links, devices, holes);
//! * [`fat`]: the boot partition;
//! * [`base`]: the one dispatcher that decides, by content, what a base is (disk image, bare
//!   ext4 filesystem, rootfs tarball, `.xz` of either) — used by `build`, `mkfs --from` and the
//!   tests alike.
//!
//! Readers take a [`ReadAt`] handle; only [`read_image`] and [`base::open_base`] open files.
//! File contents stay where they are and are read on demand ([`crate::tree::Source::Reader`]).
//! A corrupt filesystem is an error naming the partition (and for ext4 the inode and path); a
//! third-party parser's panic on hostile input is caught and reported as corruption.

pub mod base;
pub mod ext4;
pub mod fat;
pub mod partitions;

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use crate::fs::probe::FsKind;
pub use base::{Base, Decompress, open_base};
pub use ext4::read_ext4;
pub use fat::read_fat;
pub use partitions::{PartTypeId, Partition, Scheme, read_partitions, select};

use crate::blockio::{ReadAt, Slice};
use crate::fs::ext4_read::ReadStats;
use crate::tree::{Tree, TreeError};

/// Deepest directory nesting accepted (a corrupt filesystem can loop).
const MAX_DEPTH: usize = 128;
/// Most entries accepted from one filesystem.
const MAX_ENTRIES: usize = 4_000_000;

/// What went wrong reading a base image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RawError {
    #[error("{image}: {source}")]
    Io {
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("{image}: no partition table found (no MBR boot signature); is this a raw disk image?")]
    NoTable { image: String },
    #[error("{image}: the GPT is damaged: {source}")]
    Gpt {
        image: String,
        #[source]
        source: crate::disk::gpt::GptError,
    },
    #[error(
        "{image}: partition {number} ends at byte {end}, past the end of the image ({size} bytes): the image is truncated or its table is corrupt"
    )]
    PastEnd {
        image: String,
        number: u32,
        end: u64,
        size: u64,
    },
    #[error("{image}: {what}; the partitions are: {list}")]
    Select {
        image: String,
        what: String,
        list: String,
    },
    #[error("{image}, partition {number} ({fs}): {why}")]
    Filesystem {
        image: String,
        number: u32,
        fs: &'static str,
        why: String,
    },
    #[error("{image} (a bare {fs} filesystem): {why}")]
    BareFilesystem {
        image: String,
        fs: &'static str,
        why: String,
    },
    #[error("{image}, partition {number}: {path}: {why}")]
    Entry {
        image: String,
        number: u32,
        path: String,
        why: String,
    },
    #[error("{image}: {source}")]
    Tree {
        image: String,
        #[source]
        source: TreeError,
    },
    #[error(transparent)]
    Tar(#[from] super::tar::TarError),
    #[error(transparent)]
    Cache(#[from] crate::fetch::FetchError),
    #[error(transparent)]
    TooLarge(#[from] crate::unpack::TooLarge),
}

/// A base disk image read into trees.
#[derive(Debug)]
pub struct BaseImage {
    pub scheme: Scheme,
    pub partitions: Vec<Partition>,
    /// Index into `partitions` and the tree of the boot partition, if the image has one.
    pub boot: Option<(usize, Tree)>,
    pub root: (usize, Tree),
    /// What the root filesystem held (inodes, hard-link groups, xattrs).
    pub root_stats: ReadStats,
}

/// Reads a partitioned disk image of `size` bytes: its table, its boot and root filesystems.
/// `image` names it in errors.
pub fn read_disk<R>(
    disk: R,
    size: u64,
    image: &str,
    boot_sel: Option<&str>,
    root_sel: Option<&str>,
) -> Result<BaseImage, RawError>
where
    R: ReadAt + Clone + Send + Sync + Debug + 'static,
{
    let (scheme, partitions) = read_partitions(&disk, size, image)?;
    let (boot, root) = select(&partitions, boot_sel, root_sel, image)?;
    let boot = match boot {
        Some(i) => {
            let p = &partitions[i];
            let part = Slice {
                inner: disk.clone(),
                base: p.offset,
                len: p.size,
            };
            Some((i, read_fat(part, image, p.number)?))
        }
        None => None,
    };
    let p = &partitions[root];
    let (root_tree, root_stats) = read_ext4(disk, p.offset, p.size, image, p.number)?;
    Ok(BaseImage {
        scheme,
        partitions,
        boot,
        root: (root, root_tree),
        root_stats,
    })
}

/// Reads a raw disk image file (see [`read_disk`]).
pub fn read_image(
    path: &Path,
    boot_sel: Option<&str>,
    root_sel: Option<&str>,
) -> Result<BaseImage, RawError> {
    let image = path.display().to_string();
    let io = |source| RawError::Io {
        image: image.clone(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    read_disk(Arc::new(f), size, &image, boot_sel, root_sel)
}

/// Runs a third-party parser, turning a panic on hostile input into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("the filesystem reader gave up on corrupt metadata".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_clean_error() {
        let zeros = vec![0u8; 4096];
        assert!(matches!(
            read_partitions(&zeros[..], 4096, "x"),
            Err(RawError::NoTable { .. })
        ));
        // An MBR whose partition runs past the end of the image.
        let mut m = vec![0u8; 8192];
        m[446 + 4] = 0x83;
        m[446 + 8..446 + 12].copy_from_slice(&8u32.to_le_bytes());
        m[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xAA;
        let err = read_partitions(&m[..], 8192, "x").unwrap_err();
        assert!(matches!(err, RawError::PastEnd { number: 1, .. }), "{err}");
    }
}
