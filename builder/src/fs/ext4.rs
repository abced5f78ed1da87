//! ext4 from a tree, through the `mkext4` crate (pinned to an exact version: its bytes are stable
//! only within one version).
//!
//! This module is the only place that knows mkext4, so the writer can be replaced. It declares the
//! tree in tree order (so inode numbers and directory order follow byte order of names), seals the
//! layout (every metadata byte is final before any content is read), then streams each file once,
//! hashing it for the manifest on the way.
//!
//! Regions mkext4 reports as zeros (free space, the journal body, sparse holes) are not written:
//! the sink must read as zeros where nothing was written (a fresh `set_len` file), which keeps the
//! output sparse and the block map exact.
//!
//! Limits inherited from mkext4 0.0.3: 4 KiB blocks; names and symlink targets must be UTF-8;
//! 8 MiB ≤ size < 16 TiB.

use std::collections::HashMap;
use std::io::{self, Read};

use mkext4::{
    FsBuilder, InodeCount, InodeHandle, Meta, Options, RegionSink, SparseSeg, SpecialKind,
};
use sha2::{Digest, Sha256};

use super::FileRecord;
use super::ext4_read::xattr::{ACL_ACCESS, ACL_DEFAULT, acl_to_disk};
use crate::blockio::region::Sink;
use crate::progress::Progress;
use crate::tree::{Content, Entry, Kind, Source, Tree, TreePath};

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;
/// mkext4 needs room for a journal: 2048 blocks.
const MIN_SIZE: u64 = 8 * MIB;

/// The inputs that, with the tree, decide every byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Params {
    /// Filesystem UUID (`s_uuid`, also the seed of every metadata checksum).
    pub uuid: [u8; 16],
    /// Directory hash seed (`s_hash_seed`).
    pub hash_seed: [u8; 16],
    /// Volume label, at most 16 bytes.
    pub label: Option<String>,
    /// SOURCE_DATE_EPOCH: superblock times, and the clamp for every inode time.
    pub epoch: i64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Ext4Error {
    #[error(
        "the contents do not fit in {size} bytes ({} MiB) of ext4: at least {needed} bytes ({} MiB) are needed; use a larger size or `auto`",
        size / MIB,
        needed.div_ceil(MIB)
    )]
    TooSmall { size: u64, needed: u64 },
    #[error("ext4 size {size} is not supported: {why}")]
    BadSize { size: u64, why: String },
    #[error("ext4 label {label:?} is longer than 16 bytes")]
    LabelTooLong { label: String },
    #[error("{path}: {why}")]
    Entry { path: String, why: String },
    #[error("reading the content of {path}: {source}")]
    Content {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the ext4 image: {0}")]
    Write(String),
}

/// What was declared: the builder plus what the writer must stream.
struct Plan {
    builder: FsBuilder,
    records: Vec<FileRecord>,
    /// One per file inode, in declaration order.
    fills: Vec<Fill>,
}

struct Fill {
    handle: InodeHandle,
    path: TreePath,
    /// Data ranges when the source has holes (then declared sparse).
    segments: Option<Vec<SparseSeg>>,
}

/// mkext4 always creates `/lost+found` (inode 11, as e2fsck expects it). A tree read from an
/// existing ext4 (every base image) has one too; writing both would give a directory with two
/// `lost+found` entries, which e2fsck rejects. Whatever a base kept in its `lost+found` is fsck
/// debris, not part of the OS, so the tree's copy and anything below it is left out.
fn is_lost_found(path: &TreePath) -> bool {
    let b = path.as_bytes();
    b == b"lost+found" || b.starts_with(b"lost+found/")
}

/// Number of inodes the tree uses (hard links share one), besides the reserved ones.
fn used_inodes(tree: &Tree) -> u64 {
    tree.iter()
        .filter(|(p, e)| !p.is_root() && !is_lost_found(p) && !matches!(e.kind, Kind::Hardlink(_)))
        .count() as u64
}

/// The inode count for an image of `size` bytes: mke2fs's one per 16 KiB, but never fewer than the
/// tree needs plus room for what a node creates at runtime.
fn inode_count(size: u64, used: u64) -> InodeCount {
    let wanted = (size / 16384).max(used + used / 8 + 256);
    InodeCount::Exact(u32::try_from(wanted).unwrap_or(u32::MAX))
}

fn options(size: u64, used: u64, params: &Ext4Params) -> Result<Options, Ext4Error> {
    if let Some(l) = &params.label
        && l.len() > 16
    {
        return Err(Ext4Error::LabelTooLong { label: l.clone() });
    }
    let mut o = Options::new(size, params.uuid, params.epoch);
    o.hash_seed = mkext4::dirhash::seed_from_uuid(&params.hash_seed);
    o.label = params.label.clone();
    o.inodes = inode_count(size, used);
    Ok(o)
}

fn utf8<'a>(path: &TreePath, bytes: &'a [u8], what: &str) -> Result<&'a str, Ext4Error> {
    std::str::from_utf8(bytes).map_err(|_| Ext4Error::Entry {
        path: path.display(),
        why: format!("{what} is not UTF-8, which the ext4 writer cannot store"),
    })
}

fn meta(e: &Entry, epoch: i64) -> Meta {
    let t = e.mtime.min(epoch);
    Meta::new(e.mode as u16 & 0o7777, e.uid, e.gid, (t, 0))
}

/// Sparse layouts of the files whose sources have holes, probed once per write.
type SparseMap<'a> = HashMap<&'a TreePath, Vec<SparseSeg>>;

fn probe_sparse(tree: &Tree) -> SparseMap<'_> {
    tree.iter()
        .filter_map(|(p, e)| match &e.kind {
            Kind::File(c) => sparse_segments(c).map(|s| (p, s)),
            _ => None,
        })
        .collect()
}

fn declare(
    tree: &Tree,
    size: u64,
    params: &Ext4Params,
    sparse: &SparseMap<'_>,
) -> Result<Plan, Ext4Error> {
    tree.validate().map_err(|e| Ext4Error::Entry {
        path: "/".into(),
        why: e.to_string(),
    })?;
    let used = used_inodes(tree);
    let mut b = FsBuilder::new(options(size, used, params)?).map_err(|e| Ext4Error::BadSize {
        size,
        why: e.to_string(),
    })?;
    // The first name of a hard-link group in tree order carries the inode, so directory order
    // stays byte order whichever name the tree calls the original.
    let mut dirs: HashMap<&TreePath, InodeHandle> = HashMap::new();
    let mut files: HashMap<&TreePath, InodeHandle> = HashMap::new();
    let mut records = Vec::with_capacity(tree.len());
    let links = super::link_counts(tree);
    let mut fills = Vec::new();
    let epoch = params.epoch;
    for (path, e) in tree.iter() {
        if is_lost_found(path) {
            continue;
        }
        let err = |why: String| Ext4Error::Entry {
            path: path.display(),
            why,
        };
        let mk = |r: mkext4::Error| err(r.to_string());
        let mut record = FileRecord::of(path, e);
        let Some(parent) = path.parent() else {
            b.set_meta(mkext4::ROOT, meta(e, epoch)).map_err(mk)?;
            set_xattrs(&mut b, mkext4::ROOT, path, e)?;
            dirs.insert(path, mkext4::ROOT);
            records.push(record);
            continue;
        };
        let dir = *dirs
            .get(&parent)
            .ok_or_else(|| err("parent directory was not declared".into()))?;
        let name = utf8(path, path.file_name(), "the name")?;
        let (group, inode_entry) = match &e.kind {
            Kind::Hardlink(t) => {
                record.target = Some(t.display());
                let target = tree
                    .get(t)
                    .ok_or_else(|| err("dangling hard link".into()))?;
                (Some(t), target)
            }
            Kind::File(_) => (Some(path), e),
            _ => (None, e),
        };
        if let Some(group) = group {
            let Kind::File(content) = &inode_entry.kind else {
                return Err(err("hard link to a non-file".into()));
            };
            if let Kind::Hardlink(_) = e.kind {
                record = FileRecord {
                    kind: record.kind,
                    target: record.target,
                    ..FileRecord::of(path, inode_entry)
                };
            }
            record.links = links.get(group).copied();
            if let Some(&h) = files.get(group) {
                b.hardlink(dir, name, h).map_err(mk)?;
            } else {
                let m = meta(inode_entry, epoch);
                let segments = sparse.get(group).cloned();
                let h = match &segments {
                    Some(segs) => b.file_sparse(dir, name, m, segs),
                    None => b.file(dir, name, m, content.len),
                }
                .map_err(mk)?;
                set_xattrs(&mut b, h, group, inode_entry)?;
                files.insert(group, h);
                fills.push(Fill {
                    handle: h,
                    path: group.clone(),
                    segments,
                });
            }
            record.size = Some(content.len);
            records.push(record);
            continue;
        }
        let m = meta(e, epoch);
        let h = match &e.kind {
            Kind::Dir => {
                let h = b.mkdir(dir, name, m).map_err(mk)?;
                dirs.insert(path, h);
                h
            }
            Kind::Symlink(target) => {
                record.target = Some(String::from_utf8_lossy(target).into_owned());
                let t = utf8(path, target, "the symlink target")?;
                b.symlink(dir, name, t, m).map_err(mk)?
            }
            Kind::CharDevice { major, minor } => b
                .mknod(
                    dir,
                    name,
                    m,
                    SpecialKind::Char {
                        major: *major,
                        minor: *minor,
                    },
                )
                .map_err(mk)?,
            Kind::BlockDevice { major, minor } => b
                .mknod(
                    dir,
                    name,
                    m,
                    SpecialKind::Block {
                        major: *major,
                        minor: *minor,
                    },
                )
                .map_err(mk)?,
            Kind::Fifo => b.mknod(dir, name, m, SpecialKind::Fifo).map_err(mk)?,
            Kind::Socket => b.mknod(dir, name, m, SpecialKind::Socket).map_err(mk)?,
            Kind::File(_) | Kind::Hardlink(_) => unreachable!("handled above"),
        };
        set_xattrs(&mut b, h, path, e)?;
        records.push(record);
    }
    Ok(Plan {
        builder: b,
        records,
        fills,
    })
}

fn set_xattrs(
    b: &mut FsBuilder,
    h: InodeHandle,
    path: &TreePath,
    e: &Entry,
) -> Result<(), Ext4Error> {
    for (k, v) in &e.xattrs {
        let name = utf8(path, k, "an xattr name")?;
        // The tree holds ACLs as the xattr calls see them; ext4 stores a compact form (the
        // kernel converts on every call; mkext4 stores bytes as given).
        let disk;
        let v = if k == ACL_ACCESS || k == ACL_DEFAULT {
            disk = acl_to_disk(v).ok_or_else(|| Ext4Error::Entry {
                path: path.display(),
                why: format!("{name} is not a valid POSIX ACL (xattr form, version 2)"),
            })?;
            &disk
        } else {
            v
        };
        b.set_xattr(h, name, v).map_err(|r| Ext4Error::Entry {
            path: path.display(),
            why: format!("xattr {name}: {r}"),
        })?;
    }
    Ok(())
}

/// Does the tree fit in `size` bytes? (Declares and seals; reads no content.)
fn fits(
    tree: &Tree,
    size: u64,
    params: &Ext4Params,
    sparse: &SparseMap<'_>,
) -> Result<bool, Ext4Error> {
    let plan = declare(tree, size, params, sparse)?;
    Ok(plan.builder.seal().is_ok())
}

/// The smallest size (a whole number of MiB, at least 8 MiB) that holds the tree.
pub fn required_size(tree: &Tree, params: &Ext4Params) -> Result<u64, Ext4Error> {
    let sparse = probe_sparse(tree);
    let fits = |size| fits(tree, size, params, &sparse);
    // Lower bound: content blocks plus one inode-table slot per inode.
    let data: u64 = tree
        .iter()
        .map(|(p, e)| match &e.kind {
            Kind::File(c) => match sparse.get(p) {
                Some(segs) => data_spans(segs).iter().map(|(s, e)| e - s).sum(),
                None => c.len.div_ceil(BLOCK) * BLOCK,
            },
            _ => 0,
        })
        .sum();
    let start = (data + used_inodes(tree) * 256).max(MIN_SIZE);
    super::smallest_fitting(start, 16 << 40, |s| s + s / 4, fits)?.map_err(|size| {
        Ext4Error::BadSize {
            size,
            why: "the tree needs 16 TiB or more, beyond what the ext4 writer supports".into(),
        }
    })
}

/// The size `size = auto` gives: the minimum plus room to boot and work (10 % + 64 MiB), so a
/// node can write logs and state before its data partition takes over. Whole MiB.
pub fn auto_size(required: u64) -> u64 {
    (required + required / 10 + 64 * MIB).next_multiple_of(MIB)
}

/// Writes `tree` as an ext4 filesystem of exactly `size` bytes into `sink` (offset 0 = the
/// filesystem's first byte). Returns one record per tree entry, in tree order.
pub fn write<S: Sink + ?Sized>(
    tree: &Tree,
    size: u64,
    params: &Ext4Params,
    sink: &mut S,
    progress: &Progress,
) -> Result<Vec<FileRecord>, Ext4Error> {
    if size % BLOCK != 0 || size < MIN_SIZE {
        return Err(Ext4Error::BadSize {
            size,
            why: format!("must be a multiple of 4096 and at least {MIN_SIZE} bytes (8 MiB)"),
        });
    }
    let Plan {
        builder,
        mut records,
        fills,
    } = declare(tree, size, params, &probe_sparse(tree))?;
    let layout = match builder.seal() {
        Ok(l) => l,
        Err(e) => {
            let needed = required_size(tree, params)?;
            if needed > size {
                return Err(Ext4Error::TooSmall { size, needed });
            }
            return Err(Ext4Error::Write(e.to_string()));
        }
    };
    let mut step = progress.step("ext4", tree.content_bytes());
    let mut hashes: HashMap<String, String> = HashMap::new();
    let mut adapter = Adapter { sink };
    let mut w = layout
        .writer(&mut adapter)
        .map_err(|e| Ext4Error::Write(e.to_string()))?;
    for fill in &fills {
        let Some(Entry {
            kind: Kind::File(content),
            ..
        }) = tree.get(&fill.path)
        else {
            unreachable!("fills are declared from files");
        };
        let content_err = |source| Ext4Error::Content {
            path: fill.path.display(),
            source,
        };
        let data: Vec<(u64, u64)> = match &fill.segments {
            Some(segs) => data_spans(segs),
            None => vec![(0, content.len)],
        };
        let mut feed = Feed {
            inner: content.open().map_err(content_err)?,
            hasher: Sha256::new(),
            pos: 0,
            data,
            len: content.len,
        };
        if feed.data.iter().any(|&(s, e)| e > s) {
            w.fill(fill.handle, &mut feed).map_err(|e| match e {
                mkext4::Error::Io(io) if io.get_ref().is_some_and(|r| r.is::<FeedError>()) => {
                    content_err(io::Error::other(
                        io.into_inner().map(|r| r.to_string()).unwrap_or_default(),
                    ))
                }
                other => Ext4Error::Write(format!("{}: {other}", fill.path)),
            })?;
        }
        // Holes after the last data byte are still part of the content (and of its hash).
        feed.drain().map_err(content_err)?;
        hashes.insert(fill.path.display(), hex::encode(feed.hasher.finalize()));
        step.inc(content.len);
    }
    w.finish().map_err(|e| Ext4Error::Write(e.to_string()))?;
    // Every name of a file (hard links included) gets its hash.
    for r in records.iter_mut() {
        let key = match r.kind {
            "file" => &r.path,
            "hardlink" => r
                .target
                .as_ref()
                .expect("hard-link records name their target"),
            _ => continue,
        };
        r.sha256 = hashes.get(key).cloned();
    }
    Ok(records)
}

/// mkext4's output contract onto ours: data regions are written, zero regions skipped.
struct Adapter<'a, S: Sink + ?Sized> {
    sink: &'a mut S,
}

impl<S: Sink + ?Sized> RegionSink for Adapter<'_, S> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.sink.write_at(offset, bytes)
    }
    fn zeros(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Marks errors of the content source (as opposed to the sink) as they pass through mkext4.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FeedError(String);

/// Reads a file's content once: serves the bytes of its data spans to mkext4 and hashes every
/// byte, holes included.
struct Feed<'a> {
    inner: Box<dyn Read + 'a>,
    hasher: Sha256,
    pos: u64,
    /// Data spans `[start, end)`, ascending.
    data: Vec<(u64, u64)>,
    len: u64,
}

impl Feed<'_> {
    /// Reads and hashes (without serving) up to `end`.
    fn skip_to(&mut self, end: u64) -> io::Result<()> {
        let mut buf = [0u8; 64 << 10];
        while self.pos < end {
            let want = (end - self.pos).min(buf.len() as u64) as usize;
            let n = self.inner.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.hasher.update(&buf[..n]);
            self.pos += n as u64;
        }
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        self.skip_to(self.len)
    }
}

impl Read for Feed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let wrap = |e: io::Error| io::Error::other(FeedError(e.to_string()));
        let Some(&(start, end)) = self.data.iter().find(|&&(_, e)| e > self.pos) else {
            return Ok(0);
        };
        if self.pos < start {
            self.skip_to(start).map_err(wrap)?;
        }
        let want = ((end - self.pos).min(buf.len() as u64)) as usize;
        let n = self.inner.read(&mut buf[..want]).map_err(wrap)?;
        self.hasher.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

fn data_spans(segs: &[SparseSeg]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for s in segs {
        match *s {
            SparseSeg::Data(l) => {
                out.push((at, at + l));
                at += l;
            }
            SparseSeg::Hole(l) => at += l,
        }
    }
    out
}

/// Data ranges widened to whole blocks and merged.
fn block_spans(ranges: Vec<(u64, u64)>, len: u64) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        let (s, e) = ((s / BLOCK) * BLOCK, e.next_multiple_of(BLOCK).min(len));
        match spans.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ if s < e => spans.push((s, e)),
            _ => {}
        }
    }
    spans
}

/// The host's own map of data and holes in `len` bytes of `path` from `base`.
fn host_spans(path: &std::path::Path, base: u64, len: u64) -> Option<Vec<(u64, u64)>> {
    let f = std::fs::File::open(path).ok()?;
    let mut ranges = Vec::new();
    let mut at = base;
    while at < base + len {
        let start = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(at)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return None,
        };
        if start >= base + len {
            break;
        }
        let end = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(start)).ok()?;
        ranges.push((start - base, end.min(base + len) - base));
        at = end;
    }
    Some(block_spans(ranges, len))
}

/// Below this a file is not worth probing for holes.
const PROBE_MIN: u64 = 16 * 1024;

/// Sparse segments of a host-file source, from the host's own map of data and holes
/// (`SEEK_DATA`/`SEEK_HOLE`), widened to whole 4 KiB blocks. `None` when the content has no
/// holes or the source cannot tell.
fn sparse_segments(content: &Content) -> Option<Vec<SparseSeg>> {
    if content.len < PROBE_MIN {
        return None;
    }
    let spans = match &content.source {
        Source::HostFile { path, offset } => host_spans(path, *offset, content.len)?,
        Source::Reader(r) => block_spans(r.data_ranges()?, content.len),
        Source::Bytes(_) => return None,
    };
    let len = content.len;
    if spans == [(0, len)] {
        return None;
    }
    let mut segs = Vec::new();
    let mut at = 0;
    for (s, e) in spans {
        if s > at {
            segs.push(SparseSeg::Hole(s - at));
        }
        segs.push(SparseSeg::Data(e - s));
        at = e;
    }
    if at < len {
        segs.push(SparseSeg::Hole(len - at));
    }
    Some(segs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockio::region::VecSink;
    use crate::tree::test_path as p;

    fn params() -> Ext4Params {
        Ext4Params {
            uuid: [7; 16],
            hash_seed: [9; 16],
            label: Some("root".into()),
            epoch: 1_700_000_000,
        }
    }

    /// Writes `t` into a filesystem of `size` bytes held in memory.
    fn write_in_memory(t: &Tree, size: u64) -> Result<Vec<FileRecord>, Ext4Error> {
        write(
            t,
            size,
            &params(),
            &mut VecSink::default(),
            &Progress::quiet(),
        )
    }

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.insert(p("etc"), Entry::dir(0o755)).unwrap();
        t.insert(
            p("etc/hostname"),
            Entry::file(0o644, Content::bytes("node\n")),
        )
        .unwrap();
        t.insert(
            p("etc/alias"),
            Entry::new(Kind::Hardlink(p("etc/hostname")), 0),
        )
        .unwrap();
        t.insert(p("sh"), Entry::symlink("bin/bash")).unwrap();
        t
    }

    #[test]
    fn writes_a_readable_deterministic_image() {
        let t = sample();
        let mut a = VecSink::default();
        let recs = write(&t, 16 * MIB, &params(), &mut a, &Progress::quiet()).unwrap();
        let mut b = VecSink::default();
        write(&t, 16 * MIB, &params(), &mut b, &Progress::quiet()).unwrap();
        assert_eq!(a.buf, b.buf);
        a.buf.resize(16 * MIB as usize, 0);
        let fs = mkext4::reader::Fs::open(&a.buf[..]).unwrap();
        assert_eq!(
            fs.read_file(fs.resolve("/etc/alias").unwrap()).unwrap(),
            b"node\n"
        );
        let host = recs.iter().find(|r| r.path == "/etc/hostname").unwrap();
        let alias = recs.iter().find(|r| r.path == "/etc/alias").unwrap();
        assert_eq!(host.sha256, alias.sha256);
        assert_eq!(host.sha256.as_deref().map(str::len), Some(64));
        let mut other = params();
        other.epoch -= 1;
        let mut c = VecSink::default();
        write(&t, 16 * MIB, &other, &mut c, &Progress::quiet()).unwrap();
        c.buf.resize(16 * MIB as usize, 0);
        assert_ne!(a.buf, c.buf);
    }

    #[test]
    fn records_carry_link_counts_and_xattr_names_and_acls_reach_disk_form() {
        let mut t = sample();
        let acl = {
            let mut x = 2u32.to_le_bytes().to_vec();
            for (tag, perm, id) in [
                (1u16, 7u16, u32::MAX),
                (4, 5, u32::MAX),
                (0x20, 0, u32::MAX),
            ] {
                x.extend_from_slice(&tag.to_le_bytes());
                x.extend_from_slice(&perm.to_le_bytes());
                x.extend_from_slice(&id.to_le_bytes());
            }
            x
        };
        let host = t.get_mut(&p("etc/hostname")).unwrap();
        host.xattrs.insert(b"user.b".to_vec(), b"1".to_vec());
        host.xattrs.insert(ACL_ACCESS.to_vec(), acl.clone());
        let mut sink = VecSink::default();
        let recs = write(&t, 16 * MIB, &params(), &mut sink, &Progress::quiet()).unwrap();
        for name in ["/etc/hostname", "/etc/alias"] {
            let r = recs.iter().find(|r| r.path == name).unwrap();
            assert_eq!(r.links, Some(2), "{name}");
            assert_eq!(r.xattrs, ["system.posix_acl_access", "user.b"], "{name}");
        }
        assert_eq!(recs.iter().find(|r| r.path == "/sh").unwrap().links, None);
        // Read back through our reader: the ACL comes back in xattr form (stored in disk form).
        sink.buf.resize(16 * MIB as usize, 0);
        let fs = std::sync::Arc::new(
            crate::fs::ext4_read::Ext4::open(sink.buf.clone(), 16 * MIB).unwrap(),
        );
        let (tree, stats) = crate::fs::ext4_read::read_tree(&fs).unwrap();
        assert_eq!(
            tree.get(&p("etc/hostname")).unwrap().xattrs[ACL_ACCESS],
            acl
        );
        assert!(
            matches!(&tree.get(&p("etc/hostname")).unwrap().kind, Kind::Hardlink(t) if *t == p("etc/alias"))
        );
        assert_eq!(stats.hardlink_groups, 1);
        let bad = t.get_mut(&p("etc/hostname")).unwrap();
        bad.xattrs.insert(ACL_DEFAULT.to_vec(), b"junk".to_vec());
        let err = write_in_memory(&t, 16 * MIB).unwrap_err();
        assert!(err.to_string().contains("not a valid POSIX ACL"), "{err}");
    }

    #[test]
    fn too_small_says_how_much_is_needed() {
        let mut t = Tree::new();
        t.insert(
            p("big"),
            Entry::file(0o644, Content::bytes(vec![1u8; 9 << 20])),
        )
        .unwrap();
        let need = required_size(&t, &params()).unwrap();
        assert!(need > 9 * MIB && need % MIB == 0, "{need}");
        let err = write_in_memory(&t, 8 * MIB).unwrap_err();
        assert!(
            matches!(err, Ext4Error::TooSmall { needed, .. } if needed == need),
            "{err}"
        );
        write_in_memory(&t, need).unwrap();
    }

    #[test]
    fn non_utf8_names_are_refused_by_path() {
        let mut t = Tree::new();
        t.insert(TreePath::new(b"caf\xe9").unwrap(), Entry::dir(0o755))
            .unwrap();
        let err = write_in_memory(&t, 16 * MIB).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}
