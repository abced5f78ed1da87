//! FAT32 from a tree (boot and EFI system partitions), written once and streamed.
//!
//! Why our own writer: the released `fatfs` (0.3.6) writes FAT16 when asked for FAT32 and `.`/`..`
//! entries `fsck.fat` rejects; `lamfat` (a republish of its fixed master) is correct but is a
//! read-modify-write filesystem driver: it needs the whole image as `Read + Write + Seek` storage
//! and allocates as files are created, so it cannot stream into a [`Sink`] or keep the output
//! sparse, and its output depends on its allocator's behaviour across versions. A tree is known
//! in full before writing, so the layout can be computed up front in one page of arithmetic and
//! every byte emitted once, in ascending order, like the ext4 writer: boot sector, FSInfo and
//! their backups, both FATs, directories, then file contents streamed and hashed once.
//!
//! What is written: FAT32 with 512-byte sectors, 32 reserved sectors, 2 FATs, FSInfo (sector 1)
//! and backup boot sector (sector 6), root directory at cluster 2, clusters allocated
//! contiguously in tree order. Names: a VFAT long name (LFN) for every name that is not already an
//! upper-case 8.3 name, and a unique 8.3 alias (`NAME~1.EXT`, numbered in byte order of names,
//! so deterministic) with the LFN checksum. Every timestamp is the build epoch as UTC calendar
//! fields (FAT has no time zone; never the host's), clamped to FAT's 1980–2107 range. The volume
//! label is in the boot sector and in a label entry of the root directory.
//!
//! FAT cannot hold symlinks, device nodes, FIFOs, sockets, owners or modes: symlinks and special
//! files are refused naming the path; owners and modes are ignored; a hard link is stored as a
//! copy of its file's content.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::FileRecord;
use crate::blockio::region::Sink;
use crate::progress::Progress;
use crate::tree::{Content, Kind, Tree, TreePath};

const SECTOR: u64 = 512;
const RESERVED: u32 = 32;
const FATS: u32 = 2;
const MIN_CLUSTERS: u32 = 65525;
const MAX_CLUSTERS: u32 = 0x0FFF_FFF4;
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;
const MIB: u64 = 1 << 20;
/// A directory holds at most 65536 32-byte slots (2 MiB).
const MAX_DIR_SLOTS: usize = 65536;

/// The inputs that, with the tree, decide every byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatParams {
    /// Volume serial number (`/dev/disk/by-uuid/XXXX-XXXX`).
    pub volume_id: u32,
    /// Volume label, up to 11 characters; stored upper-case. Empty: none (`NO NAME`).
    pub label: String,
    /// SOURCE_DATE_EPOCH: every timestamp.
    pub epoch: i64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FatError {
    #[error(
        "the contents do not fit in {size} bytes ({} MiB) of FAT32: at least {needed} bytes ({} MiB) are needed; use a larger size or `auto`",
        size / MIB,
        needed.div_ceil(MIB)
    )]
    TooSmall { size: u64, needed: u64 },
    #[error("FAT32 size {size}: {why}")]
    BadSize { size: u64, why: String },
    #[error("FAT label {label:?}: {why}")]
    BadLabel { label: String, why: &'static str },
    #[error("{path}: {why}")]
    Entry { path: String, why: String },
    #[error("reading the content of {path}: {source}")]
    Content {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the FAT image: {0}")]
    Write(#[source] io::Error),
}

/// Sector and cluster arithmetic of one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    total_sectors: u32,
    sectors_per_cluster: u32,
    fat_sectors: u32,
    clusters: u32,
}

impl Geometry {
    fn new(size: u64) -> Result<Geometry, FatError> {
        let bad = |why: String| FatError::BadSize { size, why };
        if size % SECTOR != 0 {
            return Err(bad("must be a multiple of 512 bytes".into()));
        }
        let total = u32::try_from(size / SECTOR)
            .map_err(|_| bad("FAT32 volumes are limited to 2 TiB".into()))?;
        // Microsoft's cluster-size table, then smaller clusters if that leaves too few for FAT32.
        let mut spc: u32 = match size {
            s if s <= 260 * MIB => 1,
            s if s <= 8 << 30 => 8,
            s if s <= 16 << 30 => 16,
            s if s <= 32 << 30 => 32,
            _ => 64,
        };
        loop {
            let g = Self::with_cluster(total, spc);
            if let Some(g) = g.filter(|g| g.clusters >= MIN_CLUSTERS) {
                if g.clusters > MAX_CLUSTERS {
                    return Err(bad("too many clusters for FAT32".into()));
                }
                return Ok(g);
            }
            if spc == 1 {
                return Err(bad(format!(
                    "FAT32 needs at least {MIN_CLUSTERS} clusters; the smallest FAT32 volume is {} bytes",
                    Self::min_size()
                )));
            }
            spc /= 2;
        }
    }

    fn with_cluster(total: u32, spc: u32) -> Option<Geometry> {
        let mut fat: u32 = 1;
        loop {
            let data = total.checked_sub(RESERVED + FATS * fat)?;
            let clusters = data / spc;
            let need = (u64::from(clusters) + 2).saturating_mul(4).div_ceil(SECTOR) as u32;
            if need <= fat {
                return Some(Geometry {
                    total_sectors: total,
                    sectors_per_cluster: spc,
                    fat_sectors: fat,
                    clusters,
                });
            }
            fat = need;
        }
    }

    /// Bytes of the smallest FAT32 volume (512-byte clusters).
    fn min_size() -> u64 {
        let fat = (u64::from(MIN_CLUSTERS) + 2) * 4;
        let fat = fat.div_ceil(SECTOR);
        (u64::from(RESERVED) + 2 * fat + u64::from(MIN_CLUSTERS)) * SECTOR
    }

    fn cluster_bytes(&self) -> u64 {
        u64::from(self.sectors_per_cluster) * SECTOR
    }

    fn data_start(&self) -> u64 {
        u64::from(RESERVED + FATS * self.fat_sectors) * SECTOR
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start() + u64::from(cluster - 2) * self.cluster_bytes()
    }
}

/// One name in a directory: its 8.3 alias and, when needed, its long name.
#[derive(Debug)]
struct DirName {
    short: [u8; 11],
    long: Option<Vec<u16>>,
}

impl DirName {
    fn slots(&self) -> usize {
        1 + self.long.as_ref().map_or(0, |l| l.len().div_ceil(13))
    }
}

/// A node to lay out: a directory or a file's content.
struct Node<'a> {
    path: &'a TreePath,
    /// Index of the parent directory's node (the root: itself).
    parent: usize,
    name: Option<DirName>,
    /// Directory (children indices) or file content.
    body: Body<'a>,
    first_cluster: u32,
    clusters: u32,
}

enum Body<'a> {
    Dir(Vec<usize>),
    File(&'a Content),
}

struct Plan<'a> {
    nodes: Vec<Node<'a>>,
    clusters_used: u32,
}

fn entry_err(path: &TreePath, why: impl Into<String>) -> FatError {
    FatError::Entry {
        path: path.display(),
        why: why.into(),
    }
}

fn plan<'a>(tree: &'a Tree, cluster_bytes: u64, has_label: bool) -> Result<Plan<'a>, FatError> {
    let mut nodes: Vec<Node<'a>> = Vec::with_capacity(tree.len());
    let mut index: HashMap<&TreePath, usize> = HashMap::new();
    // Per directory: short names taken and upper-cased long names seen.
    let mut taken: HashMap<usize, (HashSet<[u8; 11]>, HashSet<String>)> = HashMap::new();
    for (path, e) in tree.iter() {
        let body = match &e.kind {
            Kind::Dir => Body::Dir(Vec::new()),
            Kind::File(c) => Body::File(c),
            Kind::Hardlink(t) => match tree.get(t).map(|t| &t.kind) {
                Some(Kind::File(c)) => Body::File(c),
                _ => return Err(entry_err(path, "hard link to a missing file")),
            },
            other => {
                return Err(entry_err(
                    path,
                    format!(
                        "FAT cannot store a {} (only directories and regular files); remove it from this partition's contents",
                        other.name()
                    ),
                ));
            }
        };
        if let Body::File(c) = &body
            && c.len > u64::from(u32::MAX)
        {
            return Err(entry_err(path, "FAT files are limited to 4 GiB - 1 byte"));
        }
        let i = nodes.len();
        let mut parent_index = i;
        let name = match path.parent() {
            None => None,
            Some(parent) => {
                let pi = *index
                    .get(&parent)
                    .ok_or_else(|| entry_err(path, "parent directory missing"))?;
                parent_index = pi;
                let (shorts, longs) = taken.entry(pi).or_default();
                let name = dir_name(path, shorts, longs)?;
                if let Body::Dir(kids) = &mut nodes[pi].body {
                    kids.push(i);
                }
                Some(name)
            }
        };
        if matches!(body, Body::Dir(_)) {
            index.insert(path, i);
        }
        nodes.push(Node {
            path,
            parent: parent_index,
            name,
            body,
            first_cluster: 0,
            clusters: 0,
        });
    }
    // Allocate in tree order, the root first (cluster 2).
    let mut next: u64 = 2;
    for i in 0..nodes.len() {
        let bytes = match &nodes[i].body {
            Body::Dir(kids) => {
                let dots = if i == 0 { usize::from(has_label) } else { 2 };
                let slots = dots
                    + kids
                        .iter()
                        .map(|&k| nodes[k].name.as_ref().map_or(0, DirName::slots))
                        .sum::<usize>();
                if slots > MAX_DIR_SLOTS {
                    return Err(entry_err(
                        nodes[i].path,
                        format!(
                            "too many entries for one FAT directory ({slots} of {MAX_DIR_SLOTS} slots, long names take several)"
                        ),
                    ));
                }
                // Every directory has at least one cluster (the root included, even if empty).
                (slots as u64 * 32).max(1)
            }
            Body::File(c) => c.len,
        };
        let n = bytes.div_ceil(cluster_bytes);
        if n > 0 {
            nodes[i].first_cluster = u32::try_from(next).unwrap_or(u32::MAX);
            nodes[i].clusters = n as u32;
            next += n;
        }
    }
    Ok(Plan {
        nodes,
        clusters_used: u32::try_from(next - 2).unwrap_or(u32::MAX),
    })
}

/// Characters a long name may not contain (besides controls).
const LFN_FORBIDDEN: &str = "\"*/:<>?\\|";
/// Characters allowed in 8.3 names besides A–Z and 0–9.
const SHORT_EXTRA: &[u8] = b"!#$%&'()-@^_`{}~";

fn dir_name(
    path: &TreePath,
    shorts: &mut HashSet<[u8; 11]>,
    longs: &mut HashSet<String>,
) -> Result<DirName, FatError> {
    let name = std::str::from_utf8(path.file_name())
        .map_err(|_| entry_err(path, "the name is not UTF-8, which FAT long names require"))?;
    if let Some(c) = name
        .chars()
        .find(|&c| (c as u32) < 0x20 || LFN_FORBIDDEN.contains(c))
    {
        return Err(entry_err(
            path,
            format!("FAT names may not contain {c:?}; rename it"),
        ));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Err(entry_err(
            path,
            "FAT names may not end with a dot or a space; rename it",
        ));
    }
    let long: Vec<u16> = name.encode_utf16().collect();
    if long.len() > 255 {
        return Err(entry_err(
            path,
            "the name is longer than FAT's 255 UTF-16 characters",
        ));
    }
    if !longs.insert(name.to_uppercase()) {
        return Err(entry_err(
            path,
            "another name in this folder differs only in letter case; FAT cannot hold both",
        ));
    }
    // The 8.3 basis: upper-case, invalid characters replaced, base ≤ 8 and extension ≤ 3.
    let trimmed = name.trim_start_matches('.').replace(' ', "");
    let (base, ext) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&trimmed[..], ""),
    };
    let mut lossy = trimmed.len() != name.len() || base.contains('.');
    let map = |s: &str, lossy: &mut bool| -> Vec<u8> {
        s.chars()
            .filter(|&c| c != '.')
            .map(|c| {
                let u = c.to_ascii_uppercase();
                if u.is_ascii_uppercase()
                    || u.is_ascii_digit()
                    || (u.is_ascii() && SHORT_EXTRA.contains(&(u as u8)))
                {
                    u as u8
                } else {
                    *lossy = true;
                    b'_'
                }
            })
            .collect()
    };
    let mut b = map(base, &mut lossy);
    let mut x = map(ext, &mut lossy);
    if b.len() > 8 || x.len() > 3 || b.is_empty() {
        lossy = true;
    }
    if b.is_empty() {
        b = b"_".to_vec();
    }
    x.truncate(3);
    let pack = |b: &[u8], x: &[u8]| {
        let mut s = [b' '; 11];
        s[..b.len()].copy_from_slice(b);
        s[8..8 + x.len()].copy_from_slice(x);
        s
    };
    let exact = !lossy
        && name.as_bytes() == [&b[..], if x.is_empty() { b"" } else { b"." }, &x[..]].concat();
    let short = if !lossy && shorts.insert(pack(&b, &x)) {
        pack(&b, &x)
    } else {
        // Numeric tail, as Windows and Linux do: BASE~N.EXT, the first free N.
        let mut n = 1u32;
        loop {
            let tail = format!("~{n}");
            let keep = 8 - tail.len();
            let mut nb = b[..b.len().min(keep)].to_vec();
            nb.extend_from_slice(tail.as_bytes());
            let s = pack(&nb, &x);
            if shorts.insert(s) {
                break s;
            }
            n += 1;
            if n > 999_999 {
                return Err(entry_err(path, "no free 8.3 alias for this name"));
            }
        }
    };
    Ok(DirName {
        short,
        long: if exact { None } else { Some(long) },
    })
}

/// The LFN checksum of an 8.3 name.
fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

/// What the tree holds that FAT cannot: extended attributes (dropped) and hard links (written
/// as independent copies). One line per entry, for warnings; empty when nothing is lost.
/// (Owners and modes are not listed: FAT has none, and every FAT tree is written as root's.)
pub fn unrepresentable(tree: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (path, e) in tree.iter() {
        if let Kind::Hardlink(t) = &e.kind {
            out.push(format!(
                "{path}: a hard link to {t}, which FAT cannot hold; it is written as a copy"
            ));
        }
        if !e.xattrs.is_empty() {
            let names: Vec<String> = e
                .xattrs
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            out.push(format!(
                "{path}: FAT cannot hold extended attributes; dropped: {}",
                names.join(", ")
            ));
        }
    }
    out
}

/// FAT date and time fields for `epoch` (UTC), clamped to 1980-01-01 … 2107-12-31.
fn dos_time(epoch: i64) -> (u16, u16) {
    const MIN: i64 = 315_532_800; // 1980-01-01T00:00:00Z
    const MAX: i64 = 4_354_819_199; // 2107-12-31T23:59:59Z
    let t = epoch.clamp(MIN, MAX);
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (year, month, day) = crate::civil::civil_from_days(days);
    let date = (((year - 1980) << 9) | (month << 5) | day) as u16;
    let time = (((secs / 3600) << 11) | ((secs % 3600 / 60) << 5) | ((secs % 60) / 2)) as u16;
    (date, time)
}

fn short_entry(
    name: &[u8; 11],
    attr: u8,
    cluster: u32,
    size: u32,
    (date, time): (u16, u16),
) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

fn push_name(
    out: &mut Vec<u8>,
    name: &DirName,
    attr: u8,
    cluster: u32,
    size: u32,
    when: (u16, u16),
) {
    if let Some(long) = &name.long {
        let sum = lfn_checksum(&name.short);
        let parts = long.len().div_ceil(13);
        for ord in (1..=parts).rev() {
            let mut units = [0xFFFFu16; 13];
            let chunk = &long[(ord - 1) * 13..long.len().min(ord * 13)];
            units[..chunk.len()].copy_from_slice(chunk);
            if chunk.len() < 13 {
                units[chunk.len()] = 0;
            }
            let mut e = [0u8; 32];
            e[0] = ord as u8 | if ord == parts { 0x40 } else { 0 };
            e[11] = 0x0F;
            e[13] = sum;
            let at = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
            for (u, &o) in units.iter().zip(at.iter()) {
                e[o..o + 2].copy_from_slice(&u.to_le_bytes());
            }
            out.extend_from_slice(&e);
        }
    }
    out.extend_from_slice(&short_entry(&name.short, attr, cluster, size, when));
}

fn label_bytes(label: &str) -> Result<Option<[u8; 11]>, FatError> {
    if label.is_empty() {
        return Ok(None);
    }
    let bad = |why| FatError::BadLabel {
        label: label.to_string(),
        why,
    };
    if label.len() > 11 {
        return Err(bad("at most 11 characters"));
    }
    let mut out = [b' '; 11];
    for (i, c) in label.bytes().enumerate() {
        let u = c.to_ascii_uppercase();
        if !(u.is_ascii_uppercase() || u.is_ascii_digit() || u == b' ' || SHORT_EXTRA.contains(&u))
        {
            return Err(bad("use letters, digits, spaces and !#$%&'()-@^_`{}~ only"));
        }
        out[i] = u;
    }
    Ok(Some(out))
}

/// The smallest size (whole MiB) that holds the tree as FAT32.
pub fn required_size(tree: &Tree, params: &FatParams) -> Result<u64, FatError> {
    let has_label = label_bytes(&params.label)?.is_some();
    let fits = |size: u64| -> Result<bool, FatError> {
        let g = Geometry::new(size)?;
        Ok(plan(tree, g.cluster_bytes(), has_label)?.clusters_used <= g.clusters)
    };
    super::smallest_fitting(Geometry::min_size(), 2 << 40, |s| s + s / 2, fits)?.map_err(|size| {
        FatError::BadSize {
            size,
            why: "the contents need 2 TiB or more".into(),
        }
    })
}

/// The size `size = auto` gives: the minimum plus 10 % and 16 MiB for firmware and kernel
/// updates. Whole MiB.
pub fn auto_size(required: u64) -> u64 {
    (required + required / 10 + 16 * MIB).next_multiple_of(MIB)
}

/// Writes `tree` as a FAT32 filesystem of exactly `size` bytes into `sink` (which must read as
/// zeros where nothing is written). Returns one record per tree entry, in tree order.
pub fn write<S: Sink + ?Sized>(
    tree: &Tree,
    size: u64,
    params: &FatParams,
    sink: &mut S,
    progress: &Progress,
) -> Result<Vec<FileRecord>, FatError> {
    let label = label_bytes(&params.label)?;
    let g = Geometry::new(size)?;
    let plan = plan(tree, g.cluster_bytes(), label.is_some())?;
    if plan.clusters_used > g.clusters {
        return Err(FatError::TooSmall {
            size,
            needed: required_size(tree, params)?,
        });
    }
    let when = dos_time(params.epoch);
    let w = |sink: &mut S, off: u64, data: &[u8]| sink.write_at(off, data).map_err(FatError::Write);

    // Boot sector, FSInfo, and their backups at sectors 6 and 7.
    let boot = boot_sector(&g, params.volume_id, label.as_ref());
    let free = g.clusters - plan.clusters_used;
    let info = fs_info(free, plan.clusters_used + 2);
    let mut head = vec![0u8; 8 * SECTOR as usize];
    head[..512].copy_from_slice(&boot);
    head[512..1024].copy_from_slice(&info);
    head[1024 + 510..1024 + 512].copy_from_slice(&[0x55, 0xAA]);
    head[6 * 512..7 * 512].copy_from_slice(&boot);
    head[7 * 512..8 * 512].copy_from_slice(&info);
    w(sink, 0, &head)?;

    // The FAT: written up to the last used entry; the rest is free (zeros) and left unwritten.
    let mut fat: Vec<u8> = Vec::with_capacity((plan.clusters_used as usize + 2) * 4);
    fat.extend_from_slice(&0x0FFF_FFF8u32.to_le_bytes());
    fat.extend_from_slice(&END_OF_CHAIN.to_le_bytes());
    for n in plan.nodes.iter().filter(|n| n.clusters > 0) {
        for c in n.first_cluster..n.first_cluster + n.clusters {
            let v = if c + 1 == n.first_cluster + n.clusters {
                END_OF_CHAIN
            } else {
                c + 1
            };
            fat.extend_from_slice(&v.to_le_bytes());
        }
    }
    for copy in 0..FATS {
        let at = u64::from(RESERVED + copy * g.fat_sectors) * SECTOR;
        w(sink, at, &fat)?;
    }

    // Directories.
    for (i, n) in plan.nodes.iter().enumerate() {
        let Body::Dir(kids) = &n.body else { continue };
        let mut out = Vec::new();
        if i == 0 {
            if let Some(l) = &label {
                out.extend_from_slice(&short_entry(l, 0x08, 0, 0, when));
            }
        } else {
            // `..` of a first-level directory points at cluster 0, not the root's cluster.
            let pc = match n.parent {
                0 => 0,
                p => plan.nodes[p].first_cluster,
            };
            out.extend_from_slice(&short_entry(b".          ", 0x10, n.first_cluster, 0, when));
            out.extend_from_slice(&short_entry(b"..         ", 0x10, pc, 0, when));
        }
        for &k in kids {
            let kid = &plan.nodes[k];
            let name = kid.name.as_ref().expect("children have names");
            let (attr, len) = match kid.body {
                Body::Dir(_) => (0x10, 0),
                Body::File(c) => (0x20, c.len as u32),
            };
            push_name(&mut out, name, attr, kid.first_cluster, len, when);
        }
        // Pad to the whole cluster chain: stale bytes must read as end-of-directory.
        out.resize((u64::from(n.clusters) * g.cluster_bytes()) as usize, 0);
        w(sink, g.cluster_offset(n.first_cluster), &out)?;
    }

    // File contents, in cluster order, each read and hashed once.
    let mut step = progress.step("fat", tree.content_bytes());
    let mut hashes: Vec<Option<String>> = vec![None; plan.nodes.len()];
    let mut buf = vec![0u8; 1 << 20];
    for (i, n) in plan.nodes.iter().enumerate() {
        let Body::File(c) = n.body else { continue };
        let content_err = |source| FatError::Content {
            path: n.path.display(),
            source,
        };
        let mut r = c.open().map_err(content_err)?;
        let mut h = Sha256::new();
        let mut at = if n.clusters > 0 {
            g.cluster_offset(n.first_cluster)
        } else {
            0
        };
        let mut left = c.len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            r.read_exact(&mut buf[..want]).map_err(content_err)?;
            h.update(&buf[..want]);
            w(sink, at, &buf[..want])?;
            at += want as u64;
            left -= want as u64;
            step.inc(want as u64);
        }
        hashes[i] = Some(hex::encode(h.finalize()));
    }

    Ok(plan
        .nodes
        .iter()
        .zip(hashes)
        .map(|(n, sha256)| {
            let e = tree.get(n.path).expect("planned from the tree");
            let size = match n.body {
                Body::File(c) => Some(c.len),
                Body::Dir(_) => None,
            };
            FileRecord {
                path: n.path.display(),
                // A hard link is stored as an independent copy.
                kind: if size.is_some() { "file" } else { "dir" },
                mode: format!("{:04o}", e.mode & 0o7777),
                uid: e.uid,
                gid: e.gid,
                size,
                sha256,
                target: None,
                links: None,
                xattrs: Vec::new(),
            }
        })
        .collect())
}

fn boot_sector(g: &Geometry, volume_id: u32, label: Option<&[u8; 11]>) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"IMGBUILD");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = g.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(RESERVED as u16).to_le_bytes());
    b[16] = FATS as u8;
    b[21] = 0xF8; // fixed disk
    b[24..26].copy_from_slice(&32u16.to_le_bytes()); // sectors per track (nominal)
    b[26..28].copy_from_slice(&64u16.to_le_bytes()); // heads (nominal)
    b[32..36].copy_from_slice(&g.total_sectors.to_le_bytes());
    b[36..40].copy_from_slice(&g.fat_sectors.to_le_bytes());
    b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root directory cluster
    b[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    b[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
    b[64] = 0x80;
    b[66] = 0x29;
    b[67..71].copy_from_slice(&volume_id.to_le_bytes());
    b[71..82].copy_from_slice(label.unwrap_or(b"NO NAME    "));
    b[82..90].copy_from_slice(b"FAT32   ");
    // Not bootable: `int 0x18` (boot next device) if a BIOS ever jumps here.
    b[90..92].copy_from_slice(&[0xCD, 0x18]);
    b[510..512].copy_from_slice(&[0x55, 0xAA]);
    b
}

fn fs_info(free: u32, next_free: u32) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&free.to_le_bytes());
    s[492..496].copy_from_slice(&next_free.to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockio::region::VecSink;
    use crate::tree::Entry;
    use crate::tree::test_path as p;

    fn names(list: &[&str]) -> Vec<(String, bool)> {
        let mut s = HashSet::new();
        let mut l = HashSet::new();
        list.iter()
            .map(|n| {
                let d = dir_name(&p(n), &mut s, &mut l).unwrap();
                (
                    String::from_utf8(d.short.to_vec()).unwrap(),
                    d.long.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn short_names_are_unique_and_upper_case() {
        assert_eq!(
            names(&[
                "CONFIG.TXT",
                "config.txt2",
                "cmdline.txt",
                "start4.elf",
                "bcm2711-rpi-4-b.dtb",
                "bcm2711-rpi-400.dtb",
                ".hidden",
                "a b"
            ]),
            vec![
                ("CONFIG  TXT".into(), false),
                ("CONFIG~1TXT".into(), true),
                ("CMDLINE TXT".into(), true),
                ("START4  ELF".into(), true),
                ("BCM271~1DTB".into(), true),
                ("BCM271~2DTB".into(), true),
                ("HIDDEN~1   ".into(), true),
                ("AB~1       ".into(), true),
            ]
        );
    }

    #[test]
    fn refuses_what_fat_cannot_hold() {
        let mut s = HashSet::new();
        let mut l = HashSet::new();
        assert!(dir_name(&p("a:b"), &mut s, &mut l).is_err());
        assert!(dir_name(&p("x."), &mut s, &mut l).is_err());
        dir_name(&p("Kernel"), &mut s, &mut l).unwrap();
        let e = dir_name(&p("kernel"), &mut s, &mut l).unwrap_err();
        assert!(e.to_string().contains("letter case"), "{e}");
        let mut t = Tree::new();
        t.insert(p("l"), Entry::symlink("x")).unwrap();
        let e = write_in_memory(&t, 64 * MIB).unwrap_err();
        assert!(
            e.to_string().starts_with("/l: FAT cannot store a symlink"),
            "{e}"
        );
        assert!(label_bytes("TOO LONG LABEL").is_err());
    }

    #[test]
    fn says_what_fat_cannot_hold() {
        let mut t = Tree::new();
        t.insert(p("a"), Entry::file(0o644, Content::bytes("x")))
            .unwrap();
        assert!(unrepresentable(&t).is_empty());
        t.insert(p("b"), Entry::new(Kind::Hardlink(p("a")), 0))
            .unwrap();
        t.get_mut(&p("a"))
            .unwrap()
            .xattrs
            .insert(b"security.capability".to_vec(), vec![1]);
        let w = unrepresentable(&t);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("/a") && w[0].contains("security.capability"),
            "{w:?}"
        );
        assert!(w[1].contains("/b: a hard link to /a"), "{w:?}");
    }

    #[test]
    fn checksum_and_dates() {
        // The checksum itself is judged by mtools and fsck.fat in tests/fs_fat.rs.
        assert_ne!(lfn_checksum(b"CONFIG~1TXT"), lfn_checksum(b"CONFIG~2TXT"));
        // 2024-01-01T00:00:00Z
        let (d, t) = dos_time(1_704_067_200);
        assert_eq!((d >> 9, d >> 5 & 15, d & 31, t), (44, 1, 1, 0));
        assert_eq!(dos_time(0), dos_time(315_532_800));
    }

    fn params() -> FatParams {
        FatParams {
            volume_id: 0x1234_5678,
            label: "boot".into(),
            epoch: 1_700_000_000,
        }
    }

    /// Writes `t` into a filesystem of `size` bytes held in memory.
    fn write_in_memory(t: &Tree, size: u64) -> Result<Vec<FileRecord>, FatError> {
        write(
            t,
            size,
            &params(),
            &mut VecSink::default(),
            &Progress::quiet(),
        )
    }

    #[test]
    fn geometry_is_fat32() {
        let g = Geometry::new(64 * MIB).unwrap();
        assert!(g.clusters >= MIN_CLUSTERS);
        assert!(Geometry::new(16 * MIB).is_err());
        let g = Geometry::new(512 * MIB).unwrap();
        assert_eq!(g.sectors_per_cluster, 8);
        let mut t = Tree::new();
        t.insert(p("f"), Entry::file(0o644, Content::bytes(vec![1u8; 1000])))
            .unwrap();
        let need = required_size(&t, &params()).unwrap();
        assert_eq!(need, Geometry::min_size().next_multiple_of(MIB));
    }
}
