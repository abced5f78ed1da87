//! Base OS images → trees, without mounting or unpacking anything.
//!
//! A raw disk image (`.img`, or `.img.xz` decompressed once into the cache) is read through its
//! partition table (MBR or GPT, parsed by [`crate::disk::mbr`] / [`crate::disk::gpt`]). Each
//! partition's filesystem is recognised by its superblock; FAT is read with the fatfs code base
//! (`lamfat`), ext2/3/4 with `ext4-view` (which replays the journal in memory). Every entry keeps
//! its type, mode, owner and mtime; file contents stay where they are and are read on demand
//! ([`Source::Reader`]).
//!
//! Which partition is boot and which is root: the profile's `base.boot-partition` /
//! `base.root-partition` (a 1-based number, a GPT partition name or a filesystem label) if set;
//! otherwise by type (GPT ESP / MBR 0xEF, GPT root-x86-64 / root-arm64), then by label
//! (`bootfs`, `boot`, `esp`, `efi` / `rootfs`, `root`), then the first FAT partition for boot and
//! the largest ext4 partition for root.
//!
//! Limits of the ext4 reader, and what happens: `ext4-view` exposes neither inode numbers,
//! extended attributes nor device numbers. Hard-linked files therefore become separate files with
//! the same content; extended attributes (file capabilities, SELinux labels) are not carried over;
//! a device node in a base is an error naming it. Symlinks are kept as symlinks, never followed.
//! A corrupt filesystem is an error naming the partition; a parser panic on hostile input is
//! caught and reported as corruption, never propagated.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::gpt::{GptError, GptTable};
use crate::disk::layout::PartType;
use crate::disk::mbr::{MbrError, MbrTable};
use crate::tree::{Content, ContentReader, Entry, Kind, Source, Tree, TreeError, TreePath};

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
        source: GptError,
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
}

/// The partition table kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Mbr,
    Gpt,
}

/// The filesystem found in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Fat,
    Ext4,
    Unknown,
}

impl FsKind {
    fn name(self) -> &'static str {
        match self {
            FsKind::Fat => "FAT",
            FsKind::Ext4 => "ext4",
            FsKind::Unknown => "unknown filesystem",
        }
    }
}

/// The partition's type as the table states it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartTypeId {
    Mbr(u8),
    Gpt(String),
}

/// One partition of a base image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based, as the kernel numbers it.
    pub number: u32,
    /// Byte offset and length inside the image.
    pub offset: u64,
    pub size: u64,
    pub type_id: PartTypeId,
    /// GPT partition name (empty on MBR).
    pub name: String,
    pub fs: FsKind,
    /// Filesystem label (ext4 volume name, FAT boot-sector label), trimmed.
    pub label: String,
}

impl Partition {
    fn describe(&self) -> String {
        let mut s = format!("{} ({}", self.number, self.fs.name());
        if !self.label.is_empty() {
            s.push_str(&format!(", label {:?}", self.label));
        }
        if !self.name.is_empty() {
            s.push_str(&format!(", name {:?}", self.name));
        }
        s.push(')');
        s
    }

    fn is_esp(&self) -> bool {
        match &self.type_id {
            PartTypeId::Mbr(t) => *t == 0xEF,
            PartTypeId::Gpt(g) => *g == PartType::Esp.gpt_type().to_string(),
        }
    }

    fn is_root_type(&self) -> bool {
        match &self.type_id {
            PartTypeId::Mbr(_) => false,
            PartTypeId::Gpt(g) => {
                *g == PartType::RootX86_64.gpt_type().to_string()
                    || *g == PartType::RootArm64.gpt_type().to_string()
            }
        }
    }

    /// Does a profile's selector (number, GPT name or label) name this partition?
    fn matches(&self, sel: &str) -> bool {
        sel.parse::<u32>().is_ok_and(|n| n == self.number)
            || (!self.name.is_empty() && self.name == sel)
            || (!self.label.is_empty() && self.label.eq_ignore_ascii_case(sel))
    }
}

/// Reads the partition table of a disk image of `size` bytes and probes each partition's
/// filesystem. Empty slots are skipped; MBR extended partitions (logical partitions) are not
/// read. A partition reaching past the end of the image is an error.
pub fn read_partitions<R: Read + Seek>(
    disk: &mut R,
    size: u64,
    image: &str,
) -> Result<(Scheme, Vec<Partition>), RawError> {
    let io = |source| RawError::Io {
        image: image.to_string(),
        source,
    };
    let mbr = match MbrTable::read(disk, size) {
        Ok(m) => m,
        Err(MbrError::Io(e)) => return Err(io(e)),
        Err(_) => {
            return Err(RawError::NoTable {
                image: image.to_string(),
            });
        }
    };
    let mut parts = Vec::new();
    let scheme = if mbr.entries.iter().any(|e| e.type_byte == 0xEE) {
        let gpt = GptTable::read(disk, size).map_err(|source| match source {
            GptError::Io(e) => io(e),
            source => RawError::Gpt {
                image: image.to_string(),
                source,
            },
        })?;
        let slots = gpt_slots(disk).map_err(io)?;
        for (i, e) in gpt.entries.iter().enumerate() {
            // The table reader drops empty slots; partition numbers are slot positions.
            let number = slots
                .iter()
                .position(|g| *g == e.unique_guid.to_gpt_bytes())
                .map_or(i as u32 + 1, |s| s as u32 + 1);
            let bad = || RawError::PastEnd {
                image: image.to_string(),
                number,
                end: u64::MAX,
                size,
            };
            let offset = e.first_lba.checked_mul(512).ok_or_else(bad)?;
            let len = e
                .last_lba
                .checked_sub(e.first_lba)
                .and_then(|n| n.checked_add(1))
                .and_then(|n| n.checked_mul(512))
                .ok_or_else(bad)?;
            parts.push(Partition {
                number,
                offset,
                size: len,
                type_id: PartTypeId::Gpt(e.type_guid.to_string()),
                name: e.name.clone(),
                fs: FsKind::Unknown,
                label: String::new(),
            });
        }
        Scheme::Gpt
    } else {
        for (i, e) in mbr.entries.iter().enumerate() {
            if e.type_byte == 0 || e.sectors == 0 || matches!(e.type_byte, 0x05 | 0x0F | 0x85) {
                continue;
            }
            parts.push(Partition {
                number: i as u32 + 1,
                offset: u64::from(e.first_lba) * 512,
                size: u64::from(e.sectors) * 512,
                type_id: PartTypeId::Mbr(e.type_byte),
                name: String::new(),
                fs: FsKind::Unknown,
                label: String::new(),
            });
        }
        Scheme::Mbr
    };
    for p in &mut parts {
        let end = p.offset.saturating_add(p.size);
        if end > size || p.offset == 0 {
            return Err(RawError::PastEnd {
                image: image.to_string(),
                number: p.number,
                end,
                size,
            });
        }
        let (fs, label) = probe(disk, p.offset, p.size).map_err(io)?;
        p.fs = fs;
        p.label = label;
    }
    Ok((scheme, parts))
}

/// The unique GUID (on-disk bytes) of every slot of the primary GPT entry array, empty ones
/// included. Called only after [`GptTable::read`] checked the header and the array's CRC.
fn gpt_slots<R: Read + Seek>(disk: &mut R) -> io::Result<Vec<[u8; 16]>> {
    let mut h = [0u8; 512];
    disk.seek(SeekFrom::Start(512))?;
    disk.read_exact(&mut h)?;
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let lba = u64::from_le_bytes(h[72..80].try_into().expect("8 bytes"));
    let (count, esize) = (
        u32_at(80).min(1024) as usize,
        u32_at(84).clamp(128, 4096) as usize,
    );
    let mut array = vec![0u8; count * esize];
    disk.seek(SeekFrom::Start(lba.saturating_mul(512)))?;
    disk.read_exact(&mut array)?;
    Ok(array
        .chunks_exact(esize)
        .map(|c| c[16..32].try_into().expect("16 bytes"))
        .collect())
}

/// Recognises ext2/3/4 and FAT by their superblocks; returns the label too.
fn probe<R: Read + Seek>(disk: &mut R, offset: u64, size: u64) -> io::Result<(FsKind, String)> {
    let mut buf = [0u8; 2048];
    let n = (size.min(2048)) as usize;
    disk.seek(SeekFrom::Start(offset))?;
    disk.read_exact(&mut buf[..n])?;
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).trim().to_string()
    };
    if n >= 2048 && buf[1024 + 56] == 0x53 && buf[1024 + 57] == 0xEF {
        return Ok((FsKind::Ext4, text(&buf[1024 + 120..1024 + 136])));
    }
    if n >= 512 && buf[510] == 0x55 && buf[511] == 0xAA {
        if &buf[82..87] == b"FAT32" {
            return Ok((FsKind::Fat, fat_label(&buf[71..82])));
        }
        if &buf[54..57] == b"FAT" {
            return Ok((FsKind::Fat, fat_label(&buf[43..54])));
        }
    }
    Ok((FsKind::Unknown, String::new()))
}

fn fat_label(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b).trim().to_string();
    if s == "NO NAME" { String::new() } else { s }
}

/// Picks the boot and root partitions (indexes into `parts`).
pub fn select(
    parts: &[Partition],
    boot: Option<&str>,
    root: Option<&str>,
    image: &str,
) -> Result<(Option<usize>, usize), RawError> {
    let list = || {
        parts
            .iter()
            .map(Partition::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let err = |what: String| RawError::Select {
        image: image.to_string(),
        what,
        list: list(),
    };
    let by_sel = |sel: &str, key: &str| {
        let hits: Vec<usize> = (0..parts.len())
            .filter(|&i| parts[i].matches(sel))
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(err(format!("no partition matches {key} = {sel:?}"))),
            _ => Err(err(format!(
                "several partitions match {key} = {sel:?}; use the partition number"
            ))),
        }
    };
    let labelled = |names: &[&str], fs: FsKind| {
        (0..parts.len()).find(|&i| {
            parts[i].fs == fs
                && names.iter().any(|n| {
                    parts[i].label.eq_ignore_ascii_case(n) || parts[i].name.eq_ignore_ascii_case(n)
                })
        })
    };
    let boot = match boot {
        Some(sel) => Some(by_sel(sel, "base.boot-partition")?),
        None => (0..parts.len())
            .find(|&i| parts[i].is_esp() && parts[i].fs == FsKind::Fat)
            .or_else(|| labelled(&["bootfs", "boot", "esp", "efi"], FsKind::Fat))
            .or_else(|| (0..parts.len()).find(|&i| parts[i].fs == FsKind::Fat)),
    };
    let root = match root {
        Some(sel) => by_sel(sel, "base.root-partition")?,
        None => (0..parts.len())
            .find(|&i| parts[i].is_root_type() && parts[i].fs == FsKind::Ext4)
            .or_else(|| labelled(&["rootfs", "root"], FsKind::Ext4))
            .or_else(|| {
                (0..parts.len())
                    .filter(|&i| parts[i].fs == FsKind::Ext4)
                    .max_by_key(|&i| (parts[i].size, std::cmp::Reverse(i)))
            })
            .ok_or_else(|| {
                err("no ext4 root partition found; set base.root-partition".to_string())
            })?,
    };
    if parts[root].fs != FsKind::Ext4 {
        return Err(err(format!(
            "the root partition {} is not ext4",
            parts[root].describe()
        )));
    }
    if let Some(b) = boot {
        if b == root {
            return Err(err("boot and root name the same partition".into()));
        }
        if parts[b].fs != FsKind::Fat {
            return Err(err(format!(
                "the boot partition {} is not FAT",
                parts[b].describe()
            )));
        }
    }
    Ok((boot, root))
}

/// A base disk image read into trees.
#[derive(Debug)]
pub struct BaseImage {
    pub scheme: Scheme,
    pub partitions: Vec<Partition>,
    /// Index into `partitions` and the tree of the boot partition, if the image has one.
    pub boot: Option<(usize, Tree)>,
    pub root: (usize, Tree),
}

/// Reads a raw disk image file: its table, its boot and root filesystems.
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
    let mut f = File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let (scheme, partitions) = read_partitions(&mut f, size, &image)?;
    let (boot, root) = select(&partitions, boot_sel, root_sel, &image)?;
    let boot = match boot {
        Some(i) => Some((i, read_fat(path, &partitions[i])?)),
        None => None,
    };
    let root_tree = read_ext4(path, &partitions[root])?;
    Ok(BaseImage {
        scheme,
        partitions,
        boot,
        root: (root, root_tree),
    })
}

/// A base OS read into trees: a disk image (boot and root filesystems) or a rootfs tarball.
#[derive(Debug)]
pub enum Base {
    Image(BaseImage),
    /// The tree's contents point into `archive`: keep it alive until the tree is written.
    Tarball {
        tree: Tree,
        archive: super::tar::TarFile,
    },
}

/// Reads a verified base (a cache blob with SHA-256 `sha256`) by its content, not its name:
/// `.xz` is decompressed once into the cache and looked at again; a tar stream (plain, gzip,
/// xz, zstd) is a rootfs tarball; anything else must be a partitioned disk image.
pub fn read_base(
    path: &Path,
    sha256: &str,
    cache: &crate::fetch::Cache,
    boot_sel: Option<&str>,
    root_sel: Option<&str>,
) -> Result<Base, RawError> {
    let head = |p: &Path| -> Result<Vec<u8>, RawError> {
        let mut f = File::open(p).map_err(|source| RawError::Io {
            image: p.display().to_string(),
            source,
        })?;
        let mut b = vec![0u8; 512];
        let mut n = 0;
        while n < b.len() {
            match f.read(&mut b[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(source) => {
                    return Err(RawError::Io {
                        image: p.display().to_string(),
                        source,
                    });
                }
            }
        }
        b.truncate(n);
        Ok(b)
    };
    let is_tar = |b: &[u8]| b.len() >= 262 && &b[257..262] == b"ustar";
    let magic = head(path)?;
    let (path, tarball) = match super::tar::Compression::detect(&magic) {
        super::tar::Compression::Xz => {
            let plain = cache.unxz(sha256)?;
            let tarball = is_tar(&head(&plain)?);
            (plain, tarball)
        }
        super::tar::Compression::None => (path.to_path_buf(), is_tar(&magic)),
        // gzip, zstd, bzip2: only archives come compressed that way (the tar reader says
        // which compressions it supports).
        _ => (path.to_path_buf(), true),
    };
    if tarball {
        let mut tree = Tree::new();
        let archive = super::tar::read_archive_file(&path, &cache.root().join("tmp"), &mut tree)?;
        return Ok(Base::Tarball { tree, archive });
    }
    Ok(Base::Image(read_image(&path, boot_sel, root_sel)?))
}

/// A read-only window of a host file (one partition of an image, one member of an archive).
#[derive(Debug)]
pub(crate) struct Part {
    file: File,
    offset: u64,
    len: u64,
    pos: u64,
}

impl Part {
    pub(crate) fn open(image: &Path, offset: u64, len: u64) -> io::Result<Part> {
        Ok(Part {
            file: File::open(image)?,
            offset,
            len,
            pos: 0,
        })
    }
}

impl Read for Part {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.offset + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Part {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )
        })?;
        Ok(self.pos)
    }
}

/// Bases are read, never written: any write is refused.
impl Write for Part {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "base images are opened read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ext4_view::Ext4Read for Part {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let end = start.checked_add(dst.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(format!(
                "read of {} bytes at {start} goes past the end of the partition ({} bytes)",
                dst.len(),
                self.len
            )
            .into());
        }
        self.file.seek(SeekFrom::Start(self.offset + start))?;
        self.file.read_exact(dst)?;
        Ok(())
    }
}

/// Runs a third-party parser, turning a panic on hostile input into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("the filesystem reader gave up on corrupt metadata".into()))
}

fn load_ext4(image: &Path, offset: u64, len: u64) -> Result<ext4_view::Ext4, String> {
    let part = Part::open(image, offset, len).map_err(|e| e.to_string())?;
    guarded(|| ext4_view::Ext4::load(Box::new(part)).map_err(|e| e.to_string()))
}

thread_local! {
    /// Loaded filesystems, per thread (`Ext4` is not `Send`): opening a file's content must not
    /// re-read the superblock and group descriptors for every file.
    /// Keyed by the image's identity as well as its path, so a file replaced on disk is loaded
    /// afresh.
    static EXT4: RefCell<HashMap<Ext4Key, ext4_view::Ext4>> = RefCell::new(HashMap::new());
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Ext4Key {
    image: PathBuf,
    offset: u64,
    size: u64,
    modified: Option<std::time::SystemTime>,
}

/// The content of a file in an ext4 partition of an image.
#[derive(Debug)]
struct Ext4Content {
    image: PathBuf,
    offset: u64,
    len: u64,
    path: Vec<u8>,
}

impl ContentReader for Ext4Content {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        let meta = std::fs::metadata(&self.image)?;
        let key = Ext4Key {
            image: self.image.clone(),
            offset: self.offset,
            size: meta.len(),
            modified: meta.modified().ok(),
        };
        let fs = EXT4.with(|c| -> io::Result<ext4_view::Ext4> {
            if let Some(fs) = c.borrow().get(&key) {
                return Ok(fs.clone());
            }
            let fs = load_ext4(&self.image, self.offset, self.len).map_err(io::Error::other)?;
            c.borrow_mut().insert(key.clone(), fs.clone());
            Ok(fs)
        })?;
        let p = ext4_view::PathBuf::try_from(self.path.clone()).map_err(io::Error::other)?;
        let file = guarded(|| fs.open(&p).map_err(|e| e.to_string())).map_err(|e| {
            io::Error::other(format!(
                "{} in {}: {e}",
                String::from_utf8_lossy(&self.path),
                self.image.display()
            ))
        })?;
        Ok(Box::new(file))
    }
}

/// Reads an ext2/3/4 partition into a tree.
pub fn read_ext4(image: &Path, part: &Partition) -> Result<Tree, RawError> {
    let name = image.display().to_string();
    let fs_err = |why: String| RawError::Filesystem {
        image: name.clone(),
        number: part.number,
        fs: "ext4",
        why,
    };
    let fs = load_ext4(image, part.offset, part.size).map_err(fs_err)?;
    let mut tree = Tree::new();
    let root_meta = guarded(|| fs.metadata("/").map_err(|e| e.to_string())).map_err(fs_err)?;
    if let Some(r) = tree.get_mut(&TreePath::root()) {
        r.mode = u32::from(root_meta.mode());
        r.uid = root_meta.uid();
        r.gid = root_meta.gid();
        r.mtime = root_meta.modified().seconds();
    }
    let mut stack: Vec<(Vec<u8>, usize)> = vec![(b"/".to_vec(), 0)];
    let mut count = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let entry_err = |path: &[u8], why: String| RawError::Entry {
            image: name.clone(),
            number: part.number,
            path: String::from_utf8_lossy(path).into_owned(),
            why,
        };
        if depth >= MAX_DEPTH {
            return Err(entry_err(
                &dir,
                "directories nest too deep (corrupt filesystem?)".into(),
            ));
        }
        let listing = guarded(|| {
            let p = ext4_view::PathBuf::try_from(dir.clone()).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for e in fs.read_dir(&p).map_err(|e| e.to_string())? {
                let e = e.map_err(|e| e.to_string())?;
                let fname = e.file_name().as_ref().to_vec();
                if fname == b"." || fname == b".." {
                    continue;
                }
                let meta = e.metadata().map_err(|e| e.to_string())?;
                let path = e.path();
                let target = if meta.is_symlink() {
                    Some(
                        fs.read_link(&path)
                            .map_err(|e| e.to_string())?
                            .as_ref()
                            .to_vec(),
                    )
                } else {
                    None
                };
                out.push((path.as_ref().to_vec(), meta, target));
            }
            Ok(out)
        })
        .map_err(|why| entry_err(&dir, why))?;
        for (path, meta, target) in listing {
            count += 1;
            if count > MAX_ENTRIES {
                return Err(fs_err(format!("more than {MAX_ENTRIES} entries")));
            }
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push((path.clone(), depth + 1));
                Kind::Dir
            } else if ft.is_regular_file() {
                Kind::File(Content {
                    len: meta.len(),
                    source: Source::Reader(Arc::new(Ext4Content {
                        image: image.to_path_buf(),
                        offset: part.offset,
                        len: part.size,
                        path: path.clone(),
                    })),
                })
            } else if let Some(t) = target {
                Kind::Symlink(t)
            } else if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_socket() {
                Kind::Socket
            } else {
                return Err(entry_err(
                    &path,
                    "device nodes in a base root filesystem are not supported (their device \
                     numbers cannot be read); remove it from the base — /dev is a devtmpfs at boot"
                        .into(),
                ));
            };
            let mut e = Entry::new(kind, u32::from(meta.mode()));
            e.uid = meta.uid();
            e.gid = meta.gid();
            e.mtime = meta.modified().seconds();
            let tp = TreePath::new(&path).map_err(|source| RawError::Tree {
                image: name.clone(),
                source,
            })?;
            tree.insert(tp, e).map_err(|source| RawError::Tree {
                image: name.clone(),
                source,
            })?;
        }
    }
    Ok(tree)
}

type FatFs = lamfat::FileSystem<lamfat::StdIoWrapper<Part>>;

fn load_fat(image: &Path, offset: u64, len: u64) -> Result<FatFs, String> {
    let part = Part::open(image, offset, len).map_err(|e| e.to_string())?;
    guarded(|| {
        lamfat::FileSystem::new(lamfat::StdIoWrapper::new(part), lamfat::FsOptions::new())
            .map_err(|e| format!("{e:?}"))
    })
}

/// The content of a file in a FAT partition. FAT files may be fragmented, so the file is read
/// through the filesystem (boot files are small) rather than as one byte range.
#[derive(Debug)]
struct FatContent {
    image: PathBuf,
    offset: u64,
    len: u64,
    path: String,
}

impl ContentReader for FatContent {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        let fs = load_fat(&self.image, self.offset, self.len).map_err(io::Error::other)?;
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
        .map_err(|e| io::Error::other(format!("{} in {}: {e}", self.path, self.image.display())))?;
        Ok(Box::new(io::Cursor::new(data)))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// FAT times have no zone; imgbuild reads and writes them as UTC.
fn fat_time(dt: lamfat::DateTime) -> i64 {
    let d = days_from_civil(
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
pub fn read_fat(image: &Path, part: &Partition) -> Result<Tree, RawError> {
    let name = image.display().to_string();
    let fs_err = |why: String| RawError::Filesystem {
        image: name.clone(),
        number: part.number,
        fs: "FAT",
        why,
    };
    let fs = load_fat(image, part.offset, part.size).map_err(fs_err)?;
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
                        image: image.to_path_buf(),
                        offset: part.offset,
                        len: part.size,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1980, 1, 1) * 86_400, 315_532_800);
    }

    #[test]
    fn garbage_is_a_clean_error() {
        let mut c = io::Cursor::new(vec![0u8; 4096]);
        assert!(matches!(
            read_partitions(&mut c, 4096, "x"),
            Err(RawError::NoTable { .. })
        ));
        // An MBR whose partition runs past the end of the image.
        let mut m = vec![0u8; 8192];
        m[446 + 4] = 0x83;
        m[446 + 8..446 + 12].copy_from_slice(&8u32.to_le_bytes());
        m[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xAA;
        let err = read_partitions(&mut io::Cursor::new(m), 8192, "x").unwrap_err();
        assert!(matches!(err, RawError::PastEnd { number: 1, .. }), "{err}");
    }
}
