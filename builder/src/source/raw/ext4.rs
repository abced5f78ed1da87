//! A base's ext4 root partition → a tree, through [`crate::fs::ext4_read`]. Contents stay in
//! the base and are read when the image is written.

use std::fmt::Debug;
use std::sync::Arc;

use super::RawError;
use crate::blockio::{ReadAt, Slice};
use crate::fs::ext4_read::{self, Ext4, ReadStats};
use crate::tree::Tree;

/// Reads the ext4 filesystem in `len` bytes of `src` from `offset` (a partition, or the whole
/// source for a bare filesystem image, `number` 0). `image` and `number` name it in errors.
pub fn read_ext4<R>(
    src: R,
    offset: u64,
    len: u64,
    image: &str,
    number: u32,
) -> Result<(Tree, ReadStats), RawError>
where
    R: ReadAt + Send + Sync + Debug + 'static,
{
    let fs_err = |e: ext4_read::Ext4ReadError| match number {
        0 => RawError::BareFilesystem {
            image: image.to_string(),
            fs: "ext4",
            why: e.to_string(),
        },
        _ => RawError::Filesystem {
            image: image.to_string(),
            number,
            fs: "ext4",
            why: e.to_string(),
        },
    };
    let fs = Ext4::open(
        Slice {
            inner: src,
            base: offset,
            len,
        },
        len,
    )
    .map_err(fs_err)?;
    ext4_read::read_tree(&Arc::new(fs)).map_err(fs_err)
}
