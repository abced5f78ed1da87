//! A base's FAT boot partition → a tree, with the fatfs code base (`lamfat`). FAT files may be
//! fragmented, so a file's content is read through the filesystem (boot files are small) rather
//! than as one byte range.

use std::fmt::Debug;
use std::io::{self, Read};
use std::sync::Arc;

use super::{MAX_DEPTH, MAX_ENTRIES, RawError, guarded};
use crate::blockio::{ReadAt, Slice, SliceCursor};
use crate::tree::{Content, ContentReader, Entry, Source, Tree, TreePath};

type FatFs<R> = lamfat::FileSystem<lamfat::StdIoWrapper<SliceCursor<R>>>;

fn load_fat<R: ReadAt + Clone>(part: &Slice<R>) -> Result<FatFs<R>, String> {
    let part = SliceCursor::new(part.inner.clone(), part.base, part.len);
    guarded(|| {
        lamfat::FileSystem::new(lamfat::StdIoWrapper::new(part), lamfat::FsOptions::new())
            .map_err(|e| format!("{e:?}"))
    })
}

/// The content of a file in a FAT partition. FAT files may be fragmented, so the file is read
/// through the filesystem (boot files are small) rather than as one byte range.
#[derive(Debug)]
struct FatContent<R> {
    part: Slice<R>,
    /// The image, for messages.
    image: Arc<str>,
    path: String,
}

impl<R> ContentReader for FatContent<R>
where
    R: ReadAt + Clone + Send + Sync + Debug + 'static,
{
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        let fs = load_fat(&self.part).map_err(io::Error::other)?;
        let data = guarded(|| {
            let mut f = fs
                .root_dir()
                .open_file(&self.path)
                .map_err(|e| format!("{e:?}"))?;
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 64 << 10];
                let n = lamfat::Read::read(&mut f, &mut chunk).map_err(|e| format!("{e:?}"))?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(buf)
        })
        .map_err(|e| io::Error::other(format!("{} in {}: {e}", self.path, self.image)))?;
        Ok(Box::new(io::Cursor::new(data)))
    }
}

/// FAT times have no zone; imgbuild reads and writes them as UTC.
fn fat_time(dt: lamfat::DateTime) -> i64 {
    let d = crate::civil::days_from_civil(
        i64::from(dt.date.year),
        i64::from(dt.date.month.clamp(1, 12)),
        i64::from(dt.date.day.clamp(1, 31)),
    );
    d * 86_400
        + i64::from(dt.time.hour) * 3600
        + i64::from(dt.time.min) * 60
        + i64::from(dt.time.sec)
}

/// Reads a FAT partition into a tree. FAT has no owners or permissions: everything is
/// `root:root`, directories 0755, files 0644 (what Linux shows for a vfat mount with
/// `umask=022`); mtimes are the FAT modification times read as UTC.
pub fn read_fat<R>(part: Slice<R>, image: &str, number: u32) -> Result<Tree, RawError>
where
    R: ReadAt + Clone + Send + Sync + Debug + 'static,
{
    let name = image.to_string();
    let fs_err = |why: String| RawError::Filesystem {
        image: name.clone(),
        number,
        fs: "FAT",
        why,
    };
    let fs = load_fat(&part).map_err(fs_err)?;
    let shared: Arc<str> = Arc::from(image);
    let listing = guarded(|| {
        let mut out: Vec<(String, bool, u64, i64)> = Vec::new();
        let mut stack = vec![(String::new(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if depth >= MAX_DEPTH {
                return Err(format!(
                    "{dir}: directories nest too deep (corrupt filesystem?)"
                ));
            }
            let d = if dir.is_empty() {
                fs.root_dir()
            } else {
                fs.root_dir()
                    .open_dir(&dir)
                    .map_err(|e| format!("{dir}: {e:?}"))?
            };
            for e in d.iter() {
                let e = e.map_err(|e| format!("{dir}: {e:?}"))?;
                let n = e.file_name();
                if n == "." || n == ".." || n.is_empty() {
                    continue;
                }
                if out.len() >= MAX_ENTRIES {
                    return Err(format!("more than {MAX_ENTRIES} entries"));
                }
                let path = if dir.is_empty() {
                    n
                } else {
                    format!("{dir}/{n}")
                };
                if e.is_dir() {
                    stack.push((path.clone(), depth + 1));
                }
                out.push((path, e.is_dir(), e.len(), fat_time(e.modified())));
            }
        }
        Ok(out)
    })
    .map_err(fs_err)?;
    let mut tree = Tree::new();
    // Parents are listed before their children, but the walk is depth-first from a stack, so
    // insert in path order.
    let mut listing = listing;
    listing.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, is_dir, len, mtime) in listing {
        let tp = TreePath::new(&path).map_err(|source| RawError::Tree {
            image: name.clone(),
            source,
        })?;
        let entry = if is_dir {
            Entry::dir(0o755)
        } else {
            Entry::file(
                0o644,
                Content {
                    len,
                    source: Source::Reader(Arc::new(FatContent {
                        part: part.clone(),
                        image: Arc::clone(&shared),
                        path: path.clone(),
                    })),
                },
            )
        }
        .at(mtime);
        tree.insert_with_parents(tp, entry, &Entry::dir(0o755))
            .map_err(|source| RawError::Tree {
                image: name.clone(),
                source,
            })?;
    }
    Ok(tree)
}
