//! The walk: from the root directory down, every entry into a [`Tree`], with contents left in
//! place (a [`ContentReader`] over the file's runs).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::sync::Arc;

use super::inode::{Inode, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK};
use super::map::Run;
use super::{Ext4, Ext4ReadError, Result, incompat, le16, le32};
use crate::blockio::ReadAt;
use crate::tree::{Content, ContentReader, Entry, Kind, Source, Tree, TreePath};

/// Deepest directory nesting accepted.
const MAX_DEPTH: usize = 256;
/// Most entries accepted from one filesystem.
const MAX_ENTRIES: usize = 8_000_000;
const ROOT_INO: u32 = 2;
/// A file may be this many times larger than the filesystem (sparse).
const MAX_SPARSE_FACTOR: u64 = 16;

/// What a read found, for reports and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Distinct inodes (the root included).
    pub inodes: u64,
    /// Groups of names sharing one regular-file inode.
    pub hardlink_groups: u64,
    /// Names that are second (or later) names of a file.
    pub hardlinks: u64,
    /// xattrs read, over all inodes.
    pub xattrs: u64,
    /// Non-regular inodes with several names, which the tree holds as separate copies.
    pub copied_links: u64,
}

struct Walk<'a, R: ReadAt> {
    fs: &'a Arc<Ext4<R>>,
    tree: Tree,
    stats: ReadStats,
    bitmaps: HashMap<u64, Vec<u8>>,
    /// Directory inodes already entered: ext4 has no directory hard links, so a second visit is
    /// a cycle (or a cross-link) through a corrupt entry.
    dirs: HashSet<u32>,
    /// Regular files with several names: inode → its names.
    links: HashMap<u32, Vec<TreePath>>,
    /// Other inodes with several names (symlinks, devices): seen once already.
    others: HashSet<u32>,
}

/// Reads the whole filesystem into a tree. The first name of a hard-linked file in tree order
/// holds the content; the others are [`Kind::Hardlink`]s to it.
pub fn read_tree<R>(fs: &Arc<Ext4<R>>) -> Result<(Tree, ReadStats)>
where
    R: ReadAt + Send + Sync + std::fmt::Debug + 'static,
{
    let mut w = Walk {
        fs,
        tree: Tree::new(),
        stats: ReadStats::default(),
        bitmaps: HashMap::new(),
        dirs: HashSet::new(),
        links: HashMap::new(),
        others: HashSet::new(),
    };
    let root = fs.inode(ROOT_INO).map_err(|e| e.at("/"))?;
    if root.file_type() != S_IFDIR {
        return Err(Ext4ReadError::Entry {
            path: "/".into(),
            ino: ROOT_INO,
            why: "the root inode is not a directory".into(),
        });
    }
    let mut root_entry = w.entry(&root, Kind::Dir).map_err(|e| e.at("/"))?;
    std::mem::swap(
        w.tree.get_mut(&TreePath::root()).expect("root"),
        &mut root_entry,
    );
    w.dirs.insert(ROOT_INO);
    w.stats.inodes = 1;
    let mut stack = vec![(root, TreePath::root(), 0usize)];
    while let Some((dir, path, depth)) = stack.pop() {
        if depth >= MAX_DEPTH {
            return Err(Ext4ReadError::Entry {
                path: path.display(),
                ino: dir.ino,
                why: format!("directories nest deeper than {MAX_DEPTH} (corrupt filesystem?)"),
            });
        }
        for (ino, name) in w.list(&dir).map_err(|e| e.at(&path.display()))? {
            let child = path.join(&name).map_err(|e| Ext4ReadError::Entry {
                path: path.display(),
                ino,
                why: format!("invalid name in the directory: {e}"),
            })?;
            if let Some(sub) = w.add(ino, &child).map_err(|e| e.at(&child.display()))? {
                stack.push((sub, child, depth + 1));
            }
        }
    }
    w.finish_links()?;
    Ok((w.tree, w.stats))
}

impl<R> Walk<'_, R>
where
    R: ReadAt + Send + Sync + std::fmt::Debug + 'static,
{
    /// The live entries of a directory (`.` and `..` left out), in on-disk order.
    fn list(&self, dir: &Inode) -> Result<Vec<(u32, Vec<u8>)>> {
        let fs = self.fs;
        let bs = fs.sb.block_size;
        let filetype = fs.sb.has(incompat::FILETYPE);
        let mut out = Vec::new();
        let blocks = dir.size.div_ceil(bs);
        for run in fs.runs(dir)? {
            let end = (run.logical + run.len).min(blocks);
            if run.logical >= end {
                continue;
            }
            let mut data = vec![0u8; ((end - run.logical) * bs) as usize];
            fs.read(run.physical * bs, &mut data, || {
                format!("directory inode {}", dir.ino)
            })?;
            for block in data.chunks_exact(bs as usize) {
                dirents(block, filetype, dir.ino, &mut out)?;
            }
            if out.len() > MAX_ENTRIES {
                return Err(Ext4ReadError::inode(
                    dir.ino,
                    "the directory has too many entries",
                ));
            }
        }
        Ok(out)
    }

    /// Adds the entry for `ino` at `path`; returns the inode if it is a directory to enter.
    fn add(&mut self, ino: u32, path: &TreePath) -> Result<Option<Inode>> {
        if self.tree.len() > MAX_ENTRIES {
            return Err(Ext4ReadError::inode(
                ino,
                format!("more than {MAX_ENTRIES} entries"),
            ));
        }
        let inode = self.fs.inode(ino)?;
        if !self.fs.in_use(ino, &mut self.bitmaps)? || inode.mode == 0 || inode.links == 0 {
            return Err(Ext4ReadError::inode(
                ino,
                "the directory entry points at an unused inode (corrupt filesystem: run e2fsck on a copy)",
            ));
        }
        inode.check_flags()?;
        let mut enter = None;
        let kind = match inode.file_type() {
            S_IFDIR => {
                if !self.dirs.insert(ino) {
                    return Err(Ext4ReadError::inode(
                        ino,
                        "this directory is reached a second time: a directory cycle or cross-link (corrupt filesystem)",
                    ));
                }
                enter = Some(inode.clone());
                Kind::Dir
            }
            S_IFREG => {
                if inode.links > 1 {
                    let names = self.links.entry(ino).or_default();
                    names.push(path.clone());
                    if names.len() > 1 {
                        self.stats.hardlinks += 1;
                    }
                }
                self.file(&inode)?
            }
            S_IFLNK => Kind::Symlink(self.symlink(&inode)?),
            S_IFCHR => {
                let (major, minor) = inode.device();
                Kind::CharDevice { major, minor }
            }
            S_IFBLK => {
                let (major, minor) = inode.device();
                Kind::BlockDevice { major, minor }
            }
            S_IFIFO => Kind::Fifo,
            S_IFSOCK => Kind::Socket,
            t => {
                return Err(Ext4ReadError::inode(
                    ino,
                    format!("unknown file type {t:#o}"),
                ));
            }
        };
        let counted = match inode.file_type() {
            S_IFREG => self.links.get(&ino).is_none_or(|n| n.len() == 1),
            S_IFDIR => true,
            _ if inode.links > 1 => {
                let first = self.others.insert(ino);
                if !first {
                    self.stats.copied_links += 1;
                }
                first
            }
            _ => true,
        };
        if counted {
            self.stats.inodes += 1;
        }
        let entry = self.entry(&inode, kind)?;
        self.tree
            .insert(path.clone(), entry)
            .map_err(|e| Ext4ReadError::inode(ino, e.to_string()))?;
        Ok(enter)
    }

    fn entry(&mut self, inode: &Inode, kind: Kind) -> Result<Entry> {
        let mut e = Entry::new(kind, u32::from(inode.mode));
        e.uid = inode.uid;
        e.gid = inode.gid;
        e.mtime = inode.mtime;
        e.xattrs = self.fs.xattrs(inode)?;
        self.stats.xattrs += e.xattrs.len() as u64;
        Ok(e)
    }

    fn file(&self, inode: &Inode) -> Result<Kind> {
        // Sparse files may be larger than the filesystem, but not without bound: every byte of
        // the content is hashed for the manifest, holes included.
        let fs_bytes = self.fs.sb.blocks_count * self.fs.sb.block_size;
        let limit = fs_bytes.saturating_mul(MAX_SPARSE_FACTOR);
        if inode.size > limit {
            return Err(Ext4ReadError::inode(
                inode.ino,
                format!(
                    "size {} is more than {MAX_SPARSE_FACTOR} times the filesystem ({fs_bytes} bytes): corrupt, or a sparse file too large for a base",
                    inode.size
                ),
            ));
        }
        let runs = self.fs.runs(inode)?;
        Ok(Kind::File(Content {
            len: inode.size,
            source: Source::Reader(Arc::new(FileContent {
                fs: Arc::clone(self.fs),
                ino: inode.ino,
                size: inode.size,
                runs,
            })),
        }))
    }

    fn symlink(&self, inode: &Inode) -> Result<Vec<u8>> {
        let bs = self.fs.sb.block_size;
        if let Some(t) = inode.fast_symlink(bs) {
            return Ok(t.to_vec());
        }
        if inode.size == 0 || inode.size > bs.min(4096) {
            return Err(Ext4ReadError::inode(
                inode.ino,
                format!("symlink target of {} bytes", inode.size),
            ));
        }
        let runs = self.fs.runs(inode)?;
        let mut target = Vec::with_capacity(inode.size as usize);
        RunReader::new(self.fs, &runs, inode.size)
            .read_to_end(&mut target)
            .map_err(|source| Ext4ReadError::Io {
                what: format!("the symlink target of inode {}", inode.ino),
                source,
            })?;
        Ok(target)
    }

    /// Every hard-link group: the first name in tree order keeps the file, the others point at
    /// it. (The walk visits directories in stack order, not tree order.)
    fn finish_links(&mut self) -> Result<()> {
        for (_, mut names) in std::mem::take(&mut self.links) {
            if names.len() < 2 {
                continue;
            }
            names.sort();
            self.stats.hardlink_groups += 1;
            let first = names[0].clone();
            for n in &names[1..] {
                let e = self.tree.get_mut(n).expect("inserted by the walk");
                e.kind = Kind::Hardlink(first.clone());
            }
        }
        Ok(())
    }
}

/// Parses one directory block's entries into `out`, skipping `.`, `..`, unused slots, the
/// checksum tail and htree node blocks (whose single fake entry has inode 0).
fn dirents(block: &[u8], filetype: bool, dir: u32, out: &mut Vec<(u32, Vec<u8>)>) -> Result<()> {
    let mut at = 0usize;
    while at + 8 <= block.len() {
        let ino = le32(block, at);
        let rec_len = usize::from(le16(block, at + 4));
        let name_len = if filetype {
            usize::from(block[at + 6])
        } else {
            usize::from(le16(block, at + 6))
        };
        if rec_len < 8
            || rec_len % 4 != 0
            || at + rec_len > block.len()
            || (ino != 0 && 8 + name_len > rec_len)
        {
            return Err(Ext4ReadError::inode(
                dir,
                format!(
                    "directory entry at byte {at} of a block is malformed (rec_len {rec_len}, name_len {name_len})"
                ),
            ));
        }
        let name = &block[at + 8..at + 8 + name_len.min(rec_len - 8)];
        if ino != 0 && name != b"." && name != b".." {
            if name.is_empty() {
                return Err(Ext4ReadError::inode(
                    dir,
                    "a directory entry has an empty name",
                ));
            }
            out.push((ino, name.to_vec()));
        }
        at += rec_len;
    }
    Ok(())
}

/// The content of a regular file: its runs over the filesystem's source.
struct FileContent<R> {
    fs: Arc<Ext4<R>>,
    ino: u32,
    size: u64,
    runs: Vec<Run>,
}

impl<R> std::fmt::Debug for FileContent<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ext4 inode {} ({} bytes, {} runs)",
            self.ino,
            self.size,
            self.runs.len()
        )
    }
}

impl<R> ContentReader for FileContent<R>
where
    R: ReadAt + Send + Sync + std::fmt::Debug + 'static,
{
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(RunReader::new(&self.fs, &self.runs, self.size)))
    }

    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        let bs = self.fs.sb.block_size;
        Some(
            self.runs
                .iter()
                .map(|r| (r.logical * bs, ((r.logical + r.len) * bs).min(self.size)))
                .filter(|(s, e)| s < e)
                .collect(),
        )
    }
}

/// Reads a file's bytes from its runs; holes read as zeros.
struct RunReader<'a, R> {
    fs: &'a Ext4<R>,
    runs: &'a [Run],
    size: u64,
    pos: u64,
}

impl<'a, R> RunReader<'a, R> {
    fn new(fs: &'a Ext4<R>, runs: &'a [Run], size: u64) -> Self {
        RunReader {
            fs,
            runs,
            size,
            pos: 0,
        }
    }
}

impl<R: ReadAt> Read for RunReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let bs = self.fs.sb.block_size;
        let left = (self.size - self.pos).min(buf.len() as u64);
        // Drop runs that end before the position; the rest are ascending.
        while let Some(r) = self.runs.first()
            && (r.logical + r.len) * bs <= self.pos
        {
            self.runs = &self.runs[1..];
        }
        let n = match self.runs.first() {
            Some(r) if r.logical * bs <= self.pos => {
                let n = ((r.logical + r.len) * bs - self.pos).min(left) as usize;
                let at = r.physical * bs + (self.pos - r.logical * bs);
                self.fs.src.read_exact_at(&mut buf[..n], at)?;
                n
            }
            next => {
                let hole_end = next.map_or(self.size, |r| r.logical * bs);
                let n = (hole_end - self.pos).min(left) as usize;
                buf[..n].fill(0);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}
