//! The base dispatcher: what a base is, decided by its content, never its name.
//!
//! * `.xz` (magic `FD 37 7A 58 5A 00`): decompressed once (into the cache for the build, into an
//!   unlinked scratch file for `mkfs`), then looked at again;
//! * a tar stream (`ustar` at byte 257, or gzip / zstd / bzip2 magic: only archives come
//!   compressed that way): a rootfs tarball;
//! * an ext2/3/4 superblock at byte 1024: a bare filesystem image, the root;
//! * anything else must be a partitioned disk image (MBR or GPT).

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{BaseImage, RawError, read_disk, read_ext4};
use crate::fetch::Cache;
use crate::fs::ext4_read::ReadStats;
use crate::fs::probe::{self, FsKind};
use crate::source::tar::{self, Compression, TarFile};
use crate::tree::Tree;
use crate::unpack::{CopyError, UnpackLimit};

/// A base OS read into trees.
#[derive(Debug)]
pub enum Base {
    /// A partitioned disk image (boot and root filesystems).
    Image(BaseImage),
    /// A bare ext2/3/4 filesystem image: the root.
    Filesystem { tree: Tree, stats: ReadStats },
    /// The tree's contents point into `archive`: keep it alive until the tree is written.
    Tarball { tree: Tree, archive: TarFile },
}

impl Base {
    /// The root tree, the boot tree (disk images that have one), and what must stay alive while
    /// the trees are read (the tarball the contents point into).
    pub fn into_trees(self) -> (Tree, Option<Tree>, Option<TarFile>) {
        match self {
            Base::Image(b) => (b.root.1, b.boot.map(|(_, t)| t), None),
            Base::Filesystem { tree, .. } => (tree, None, None),
            Base::Tarball { tree, archive } => (tree, None, Some(archive)),
        }
    }
}

/// Where a compressed base is decompressed to.
#[derive(Debug, Clone, Copy)]
pub enum Decompress<'a> {
    /// Into the download cache, once per blob (`sha256` is the blob's hash).
    Cache { cache: &'a Cache, sha256: &'a str },
    /// Into an unlinked file in the scratch folder, gone when the base is dropped.
    Scratch,
}

fn io_err(p: &Path) -> impl Fn(io::Error) -> RawError + '_ {
    move |source| RawError::Io {
        image: p.display().to_string(),
        source,
    }
}

/// Up to 4 KiB from the start of a stream.
fn head(mut r: impl Read) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; 4096];
    let n = crate::blockio::read_up_to(&mut r, &mut b)?;
    b.truncate(n);
    Ok(b)
}

fn is_tar(b: &[u8]) -> bool {
    b.len() >= 262 && &b[257..262] == b"ustar"
}

/// Reads the base at `path`. `scratch` holds decompressed copies for as long as they are needed;
/// none may grow past `limit`.
pub fn open_base(
    path: &Path,
    decompress: Decompress<'_>,
    scratch: &Path,
    limit: &UnpackLimit,
    boot_sel: Option<&str>,
    root_sel: Option<&str>,
) -> Result<Base, RawError> {
    let magic = head(File::open(path).map_err(io_err(path))?).map_err(io_err(path))?;
    match Compression::detect(&magic) {
        Compression::None if is_tar(&magic) => tarball(path, scratch, limit),
        Compression::None => uncompressed(
            path,
            File::open(path).map_err(io_err(path))?,
            boot_sel,
            root_sel,
        ),
        Compression::Xz => {
            let plain = match decompress {
                Decompress::Cache { cache, sha256 } => {
                    let p = cache.unxz(sha256, limit)?;
                    Plain::Path(p)
                }
                Decompress::Scratch => {
                    // A tarball is read straight from the .xz by the tar reader.
                    let dec = liblzma::read::XzDecoder::new_multi_decoder(
                        File::open(path).map_err(io_err(path))?,
                    );
                    if is_tar(&head(dec).map_err(io_err(path))?) {
                        return tarball(path, scratch, limit);
                    }
                    Plain::File(unxz_scratch(path, scratch, limit)?)
                }
            };
            match plain {
                Plain::Path(p) => {
                    let m = head(File::open(&p).map_err(io_err(&p))?).map_err(io_err(&p))?;
                    if is_tar(&m) {
                        return tarball(&p, scratch, limit);
                    }
                    uncompressed(
                        path,
                        File::open(&p).map_err(io_err(&p))?,
                        boot_sel,
                        root_sel,
                    )
                }
                Plain::File(f) => uncompressed(path, f, boot_sel, root_sel),
            }
        }
        // gzip, zstd, bzip2: only archives come compressed that way (the tar reader says which
        // compressions it supports).
        _ => tarball(path, scratch, limit),
    }
}

enum Plain {
    Path(PathBuf),
    File(File),
}

fn tarball(path: &Path, scratch: &Path, limit: &UnpackLimit) -> Result<Base, RawError> {
    let mut tree = Tree::new();
    let archive = tar::read_archive_file(path, scratch, limit, &mut tree)?;
    Ok(Base::Tarball { tree, archive })
}

/// A bare filesystem or a disk image, in `f` (named `path` in messages).
fn uncompressed(
    path: &Path,
    f: File,
    boot_sel: Option<&str>,
    root_sel: Option<&str>,
) -> Result<Base, RawError> {
    let image = path.display().to_string();
    let size = f.metadata().map_err(io_err(path))?.len();
    let f = Arc::new(f);
    if probe::probe(&*f, 0, size).map_err(io_err(path))?.kind == FsKind::Ext4 {
        let (tree, stats) = read_ext4(f, 0, size, &image, 0)?;
        return Ok(Base::Filesystem { tree, stats });
    }
    Ok(Base::Image(read_disk(f, size, &image, boot_sel, root_sel)?))
}

/// Decompresses an `.xz` into an unlinked file in `scratch`, within `limit`, holes kept.
fn unxz_scratch(path: &Path, scratch: &Path, limit: &UnpackLimit) -> Result<File, RawError> {
    let mut out = tempfile::tempfile_in(scratch).map_err(io_err(scratch))?;
    let mut src = File::open(path).map_err(io_err(path))?;
    let declared = crate::disk::xz::declared_size(&mut src).map_err(io_err(path))?;
    src.rewind().map_err(io_err(path))?;
    let mut dec =
        liblzma::read::XzDecoder::new_multi_decoder(io::BufReader::with_capacity(1 << 20, src));
    match limit.copy(path, declared, &mut dec, &mut out, scratch, |_| {}) {
        Ok(_) => Ok(out),
        Err(CopyError::TooLarge(t)) => Err(t.into()),
        Err(CopyError::Io(e)) => Err(RawError::Io {
            image: format!("{} (xz decompression)", path.display()),
            source: e,
        }),
    }
}
