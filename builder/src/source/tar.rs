//! Tar archives → tree entries, without unpacking anything.
//!
//! [`read_into`] walks an *uncompressed* tar stream (v7, ustar, GNU with long names, PAX with long
//! names, large ids/sizes, `mtime`, `SCHILY.xattr.*`, `SCHILY.acl.*` and PAX sparse 1.0 files,
//! whose holes stay holes) and adds one [`Entry`] per member to a
//! [`Tree`]. File contents are not copied: for each regular file the caller's closure turns the
//! member's data offset into a [`Source`] (usually `Source::HostFile` into the uncompressed tar).
//! Ownership, modes, device numbers and xattrs come from the headers, so a non-root user gets a
//! root-owned tree.
//!
//! Hostile input is refused with the member named: paths with `..` (absolute paths are made
//! relative), a member below a non-directory, hard links to members not seen before, sizes past
//! the end of the archive, bad header checksums. Duplicate members follow tar's extraction rule:
//! **the last one wins** (a directory replacing a directory keeps its children). Parent
//! directories the archive does not list are created `root:root 0755` with the mtime of the member
//! that needed them (clamped to the build epoch later, like every time).
//!
//! [`read_archive_file`] is the outer layer for files on disk: it detects gzip, xz and zstd by
//! their magic bytes, decompresses once into a scratch file in a folder the caller chooses, and
//! reads that.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::fs::ext4_read::xattr::{ACL_ACCESS, ACL_DEFAULT, acl_from_text, mode_with_acl};
use crate::tree::{Content, Entry, Kind, Source, Tree, TreeError, TreePath};
use crate::unpack::{CopyError, UnpackLimit};

/// What went wrong reading an archive. Every variant names the member or file involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    #[error("reading tar archive {archive}: {source} (is it a complete, uncorrupted tar file?)")]
    Io {
        archive: String,
        #[source]
        source: io::Error,
    },
    #[error("tar archive {archive}, member {member:?} (header at byte {header_at}): {why}")]
    Member {
        archive: String,
        member: String,
        header_at: u64,
        why: String,
    },
    #[error("decompressing {path} ({format}) into {scratch}: {source}")]
    Decompress {
        path: PathBuf,
        format: &'static str,
        scratch: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {why}")]
    Unsupported { path: PathBuf, why: String },
    #[error(transparent)]
    TooLarge(crate::unpack::TooLarge),
}

/// Counts of what an archive held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TarStats {
    /// Members added to the tree (directories created for missing parents not included).
    pub entries: u64,
    /// Bytes of regular-file content.
    pub file_bytes: u64,
}

/// Adds every member of an uncompressed tar stream to `tree`. `source(offset)` makes the content
/// source of a regular file whose data starts at byte `offset` of the stream.
pub fn read_into<R: Read>(
    r: R,
    tree: &mut Tree,
    source: &dyn Fn(u64) -> Source,
) -> Result<TarStats, TarError> {
    let mut archive = tar::Archive::new(r);
    let name = "(stream)";
    let entries = archive.entries().map_err(|e| io_err(name, e))?;
    read_entries(entries, name, None, tree, source)
}

/// Like [`read_into`] for a seekable archive of `len` bytes: member data is skipped by seeking
/// instead of reading, and a member claiming bytes past `len` is an error.
pub fn read_into_seekable<R: Read + Seek>(
    r: R,
    len: u64,
    archive_name: &str,
    tree: &mut Tree,
    source: &dyn Fn(u64) -> Source,
) -> Result<TarStats, TarError> {
    let mut archive = tar::Archive::new(r);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| io_err(archive_name, e))?;
    read_entries(entries, archive_name, Some(len), tree, source)
}

fn io_err(archive: &str, source: io::Error) -> TarError {
    TarError::Io {
        archive: archive.to_string(),
        source,
    }
}

fn read_entries<R: Read>(
    entries: tar::Entries<'_, R>,
    archive: &str,
    len: Option<u64>,
    tree: &mut Tree,
    source: &dyn Fn(u64) -> Source,
) -> Result<TarStats, TarError> {
    let mut stats = TarStats::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| io_err(archive, e))?;
        let header_at = entry.raw_header_position();
        let raw_path = entry.path_bytes().into_owned();
        let fail = |why: String| TarError::Member {
            archive: archive.to_string(),
            member: crate::tree::shown(&raw_path),
            header_at,
            why,
        };
        let ty = entry.header().entry_type();
        if ty.is_pax_global_extensions() {
            // Global defaults (usually just a comment); nothing in them is a member.
            continue;
        }
        let size = entry.size();
        let data_at = entry.raw_file_position();
        if let Some(len) = len
            && data_at.checked_add(size).is_none_or(|end| end > len)
        {
            return Err(fail(format!(
                "claims {size} bytes of data but the archive ends at byte {len} (truncated or corrupt)"
            )));
        }
        let pax = read_pax(&mut entry).map_err(&fail)?;
        // PAX sparse 1.0 (bsdtar's default for sparse files) stores the real name apart.
        let name = pax.sparse.as_ref().map_or(&raw_path, |s| &s.name);
        let path = TreePath::new(name).map_err(|e| fail(path_problem(&e)))?;
        let header = entry.header();
        let num = |v: io::Result<u64>, what: &str| -> Result<u32, TarError> {
            let v = v.map_err(|e| fail(format!("unreadable {what}: {e}")))?;
            u32::try_from(v).map_err(|_| fail(format!("{what} {v} does not fit in 32 bits")))
        };
        let mode = num(header.mode().map(u64::from), "mode")?;
        let mut uid = num(header.uid(), "uid")?;
        let mut gid = num(header.gid(), "gid")?;
        let mut mtime = header
            .mtime()
            .map_err(|e| fail(format!("unreadable mtime: {e}")))
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX))?;
        let dev = |v: io::Result<Option<u32>>, what: &str| -> Result<u32, TarError> {
            v.map(Option::unwrap_or_default)
                .map_err(|e| fail(format!("unreadable device {what}: {e}")))
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let kind = match ty {
            tar::EntryType::Directory => Kind::Dir,
            // v7 archives mark directories only by a trailing slash.
            tar::EntryType::Regular if raw_path.ends_with(b"/") => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => match &pax.sparse {
                Some(sp) => Kind::File(
                    super::tar_sparse::content(&mut entry, sp, size, source(data_at))
                        .map_err(&fail)?,
                ),
                None => Kind::File(Content {
                    len: size,
                    source: source(data_at),
                }),
            },
            tar::EntryType::Symlink => match link {
                Some(t) if !t.is_empty() => Kind::Symlink(t),
                _ => return Err(fail("symbolic link without a target".into())),
            },
            tar::EntryType::Link => {
                let target = link.ok_or_else(|| fail("hard link without a target".into()))?;
                let target = TreePath::new(&target)
                    .map_err(|e| fail(format!("hard link target: {}", path_problem(&e))))?;
                // Tar links to the first name; follow one step if that name is itself a link.
                let target = match tree.get(&target).map(|e| &e.kind) {
                    Some(Kind::File(_)) => target,
                    Some(Kind::Hardlink(first)) => first.clone(),
                    Some(other) => {
                        return Err(fail(format!(
                            "hard link to {target}, which is a {} (only regular files can be hard-linked here)",
                            other.name()
                        )));
                    }
                    None => {
                        return Err(fail(format!(
                            "hard link to {target}, which does not appear earlier in the archive"
                        )));
                    }
                };
                if target == path {
                    return Err(fail("hard link to itself".into()));
                }
                Kind::Hardlink(target)
            }
            tar::EntryType::Char => Kind::CharDevice {
                major: dev(header.device_major(), "major")?,
                minor: dev(header.device_minor(), "minor")?,
            },
            tar::EntryType::Block => Kind::BlockDevice {
                major: dev(header.device_major(), "major")?,
                minor: dev(header.device_minor(), "minor")?,
            },
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::GNUSparse => {
                return Err(fail(
                    "GNU sparse members are not supported; recreate the archive without --sparse"
                        .into(),
                ));
            }
            other => {
                return Err(fail(format!(
                    "unsupported member type {:?} (byte {:#04x})",
                    other,
                    other.as_byte()
                )));
            }
        };
        if let Some(t) = pax.mtime {
            mtime = t;
        }
        uid = pax.uid.unwrap_or(uid);
        gid = pax.gid.unwrap_or(gid);
        let mut xattrs = pax.xattrs;
        for (name, text) in [
            (ACL_ACCESS, &pax.acl_access),
            (ACL_DEFAULT, &pax.acl_default),
        ] {
            // GNU tar --xattrs stores ACLs as xattrs too; that form wins. bsdtar stores text only.
            if let Some(text) = text
                && !xattrs.contains_key(name)
            {
                xattrs.insert(name.to_vec(), acl_from_text(text).map_err(&fail)?);
            }
        }
        // Extracting sets the ACL after the mode, and setting an access ACL sets the group bits.
        let mode = match xattrs.get(ACL_ACCESS) {
            Some(acl) => mode_with_acl(mode, acl),
            None => mode,
        };
        if let Kind::File(c) = &kind {
            stats.file_bytes += c.len;
        }
        let new = Entry {
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            mtime,
            xattrs,
        };
        let parent_dir = Entry::dir(0o755).at(mtime);
        tree.insert_with_parents(path, new, &parent_dir)
            .map_err(|e| match e {
                TreeError::ParentNotDir { parent, .. } => {
                    fail(format!("{parent} is not a directory in the archive"))
                }
                TreeError::RootNotDir => fail("the archive root must be a directory".into()),
                other => fail(other.to_string()),
            })?;
        stats.entries += 1;
    }
    Ok(stats)
}

/// What a member's PAX header says besides the path.
#[derive(Default)]
struct Pax {
    xattrs: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    mtime: Option<i64>,
    uid: Option<u32>,
    gid: Option<u32>,
    acl_access: Option<Vec<u8>>,
    acl_default: Option<Vec<u8>>,
    sparse: Option<super::tar_sparse::SparseHeader>,
}

fn read_pax<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Pax, String> {
    let mut out = Pax::default();
    let mut sparse = super::tar_sparse::Keys::default();
    let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| format!("unreadable PAX header: {e}"))?
    else {
        return Ok(out);
    };
    for ext in pax {
        let ext = ext.map_err(|e| format!("malformed PAX record: {e}"))?;
        let (key, value) = (ext.key_bytes(), ext.value_bytes());
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            out.xattrs.insert(name.to_vec(), value.to_vec());
        } else if key == b"SCHILY.acl.access" {
            out.acl_access = Some(value.to_vec());
        } else if key == b"SCHILY.acl.default" {
            out.acl_default = Some(value.to_vec());
        } else if key.starts_with(b"GNU.sparse.") {
            sparse.set(key, value)?;
        } else if key == b"mtime" {
            out.mtime = Some(parse_pax_time(value).ok_or("malformed PAX mtime")?);
        } else if key == b"uid" || key == b"gid" {
            let v = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or("PAX uid/gid is not a 32-bit number")?;
            *(if key == b"uid" {
                &mut out.uid
            } else {
                &mut out.gid
            }) = Some(v);
        }
    }
    out.sparse = sparse.header()?;
    Ok(out)
}

fn path_problem(e: &TreeError) -> String {
    match e {
        TreeError::InvalidPath { why, .. } => format!("unsafe or invalid path: {why}"),
        other => other.to_string(),
    }
}

/// PAX times are decimal seconds, maybe negative, maybe with a fraction (dropped: the tree keeps
/// whole seconds).
fn parse_pax_time(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let whole = s.split('.').next()?;
    whole.parse().ok()
}

/// Compression of an archive file, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
}

impl Compression {
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if magic.starts_with(b"BZh") {
            Compression::Bzip2
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        }
    }
}

/// An archive that was read into a tree. Tree sources point into [`TarFile::path`], so keep this
/// value alive until the tree has been written; a decompressed scratch copy is deleted on drop.
#[derive(Debug)]
pub struct TarFile {
    path: PathBuf,
    _scratch: Option<tempfile::TempPath>,
    pub compression: Compression,
    pub stats: TarStats,
}

impl TarFile {
    /// The uncompressed tar the tree's file sources read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a tar file (plain, gzip, xz or zstd) into `tree`. A compressed archive is decompressed
/// once into a scratch file in `scratch_dir` (holes kept, no larger than `limit`); nothing else
/// is written anywhere.
pub fn read_archive_file(
    path: &Path,
    scratch_dir: &Path,
    limit: &UnpackLimit,
    tree: &mut Tree,
) -> Result<TarFile, TarError> {
    let io_at = |source| TarError::Io {
        archive: path.display().to_string(),
        source,
    };
    let mut f = File::open(path).map_err(io_at)?;
    let mut magic = [0u8; 6];
    let n = crate::blockio::read_up_to(&mut f, &mut magic).map_err(io_at)?;
    let compression = Compression::detect(&magic[..n]);
    let decoder: Box<dyn Read> = match compression {
        Compression::None => {
            let len = f.metadata().map_err(io_at)?.len();
            f.seek(SeekFrom::Start(0)).map_err(io_at)?;
            let stats = read_file(f, len, path, tree)?;
            return Ok(TarFile {
                path: path.to_path_buf(),
                _scratch: None,
                compression,
                stats,
            });
        }
        Compression::Bzip2 => {
            return Err(TarError::Unsupported {
                path: path.to_path_buf(),
                why:
                    "bzip2-compressed archives are not supported; recompress with gzip, xz or zstd"
                        .into(),
            });
        }
        Compression::Gzip | Compression::Xz | Compression::Zstd => {
            f.seek(SeekFrom::Start(0)).map_err(io_at)?;
            let f = BufReader::with_capacity(1 << 20, f);
            match compression {
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
                Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(f)),
                _ => Box::new(zstd::stream::read::Decoder::with_buffer(f).map_err(io_at)?),
            }
        }
    };
    let decompress_err = |source| TarError::Decompress {
        path: path.to_path_buf(),
        format: compression.name(),
        scratch: scratch_dir.to_path_buf(),
        source,
    };
    let mut scratch = tempfile::Builder::new()
        .prefix(".imgbuild-tar.")
        .tempfile_in(scratch_dir)
        .map_err(decompress_err)?;
    let mut decoder = decoder;
    let declared = match compression {
        Compression::Xz => {
            let mut f = File::open(path).map_err(io_at)?;
            crate::disk::xz::declared_size(&mut f).map_err(io_at)?
        }
        _ => None,
    };
    let len = limit
        .copy(
            path,
            declared,
            &mut decoder,
            scratch.as_file_mut(),
            scratch_dir,
            |_| {},
        )
        .map_err(|e| match e {
            CopyError::TooLarge(t) => TarError::TooLarge(t),
            CopyError::Io(e) => decompress_err(e),
        })?;
    let (file, scratch_path) = scratch.into_parts();
    let mut file = file;
    file.seek(SeekFrom::Start(0)).map_err(decompress_err)?;
    let stats = read_file(file, len, &scratch_path, tree).map_err(|e| match e {
        // Name the archive the user gave, not our scratch copy.
        TarError::Member {
            member,
            header_at,
            why,
            ..
        } => TarError::Member {
            archive: format!(
                "{} (after {} decompression)",
                path.display(),
                compression.name()
            ),
            member,
            header_at,
            why,
        },
        TarError::Io { source, .. } => io_at(source),
        other => other,
    })?;
    Ok(TarFile {
        path: scratch_path.to_path_buf(),
        _scratch: Some(scratch_path),
        compression,
        stats,
    })
}

fn read_file(f: File, len: u64, path: &Path, tree: &mut Tree) -> Result<TarStats, TarError> {
    let owned = path.to_path_buf();
    let source = move |offset| Source::HostFile {
        path: owned.clone(),
        offset,
    };
    read_into_seekable(
        BufReader::with_capacity(64 << 10, f),
        len,
        &path.display().to_string(),
        tree,
        &source,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::test_path as p;

    fn header(path: &str, ty: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_mode(0o640);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    fn read(bytes: &[u8]) -> Result<Tree, TarError> {
        let mut t = Tree::new();
        read_into_seekable(
            io::Cursor::new(bytes),
            bytes.len() as u64,
            "t.tar",
            &mut t,
            &|o| Source::HostFile {
                path: "t.tar".into(),
                offset: o,
            },
        )?;
        Ok(t)
    }

    #[test]
    fn members_become_entries_with_offsets() {
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header("etc/", tar::EntryType::Directory, 0), io::empty())
            .unwrap();
        b.append(
            &header("etc/hostname", tar::EntryType::Regular, 5),
            &b"node1"[..],
        )
        .unwrap();
        let mut l = header("etc/alias", tar::EntryType::Link, 0);
        l.set_link_name("etc/hostname").unwrap();
        l.set_cksum();
        b.append(&l, io::empty()).unwrap();
        let mut s = header("sbin/init", tar::EntryType::Symlink, 0);
        s.set_link_name("../lib/systemd/systemd").unwrap();
        s.set_cksum();
        b.append(&s, io::empty()).unwrap();
        let mut d = header("dev/null", tar::EntryType::Char, 0);
        d.set_device_major(1).unwrap();
        d.set_device_minor(3).unwrap();
        d.set_cksum();
        b.append(&d, io::empty()).unwrap();
        let long = format!("{}/{}", "d".repeat(200), "f".repeat(200));
        let mut lh = header("x", tar::EntryType::Regular, 0);
        b.append_data(&mut lh, &long, io::empty()).unwrap();
        let bytes = b.into_inner().unwrap();
        let t = read(&bytes).unwrap();
        let e = t.get(&p("etc/hostname")).unwrap();
        assert_eq!(
            (e.uid, e.gid, e.mode, e.mtime),
            (1000, 100, 0o640, 1_700_000_000)
        );
        match &e.kind {
            Kind::File(c) => {
                assert_eq!(c.len, 5);
                let Source::HostFile { offset, .. } = c.source else {
                    panic!()
                };
                assert_eq!(&bytes[offset as usize..offset as usize + 5], b"node1");
            }
            k => panic!("{k:?}"),
        }
        assert!(
            matches!(&t.get(&p("etc/alias")).unwrap().kind, Kind::Hardlink(x) if *x == p("etc/hostname"))
        );
        assert!(
            matches!(&t.get(&p("sbin/init")).unwrap().kind, Kind::Symlink(x) if x == b"../lib/systemd/systemd")
        );
        assert!(matches!(
            t.get(&p("dev/null")).unwrap().kind,
            Kind::CharDevice { major: 1, minor: 3 }
        ));
        // Parents the archive did not list are root-owned 0755.
        let sbin = t.get(&p("sbin")).unwrap();
        assert!(sbin.is_dir() && sbin.uid == 0 && sbin.mode == 0o755);
        assert!(t.get(&TreePath::new(&long).unwrap()).is_some());
    }

    #[test]
    fn pax_xattrs_and_times() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            (
                "SCHILY.xattr.security.capability",
                &b"\x01\x00\x00\x02\x00\x20\x00\x00"[..],
            ),
            ("mtime", b"1600000000.5"),
            ("uid", b"4000000000"),
        ])
        .unwrap();
        b.append(&header("ping", tar::EntryType::Regular, 0), io::empty())
            .unwrap();
        let t = read(&b.into_inner().unwrap()).unwrap();
        let e = t.get(&p("ping")).unwrap();
        assert_eq!(e.mtime, 1_600_000_000);
        assert_eq!(e.uid, 4_000_000_000);
        assert_eq!(
            e.xattrs.get(&b"security.capability"[..]).map(Vec::len),
            Some(8)
        );
    }

    fn raw_member(path: &[u8], ty: u8, size: u64, link: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(tar::EntryType::new(ty));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        let mut v = h.as_bytes().to_vec();
        v.resize(512 + size.div_ceil(512) as usize * 512, 0);
        v
    }

    #[test]
    fn hostile_archives_are_refused_by_name() {
        let err = read(&raw_member(b"../etc/passwd", b'0', 0, b"")).unwrap_err();
        assert!(err.to_string().contains("../etc/passwd"), "{err}");
        assert!(err.to_string().contains(".."), "{err}");

        let abs = read(&raw_member(b"/etc/passwd", b'0', 0, b"")).unwrap();
        assert!(
            abs.get(&p("etc/passwd")).is_some(),
            "absolute paths become relative"
        );

        let mut v = raw_member(b"f", b'0', 0, b"");
        v.extend(raw_member(b"f/x", b'0', 0, b""));
        let err = read(&v).unwrap_err();
        assert!(err.to_string().contains("/f is not a directory"), "{err}");

        let err = read(&raw_member(b"l", b'1', 0, b"nowhere")).unwrap_err();
        assert!(err.to_string().contains("does not appear earlier"), "{err}");

        let mut v = raw_member(b"big", b'0', 100, b"");
        v.truncate(512 + 10);
        let err = read(&v).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        let mut v = raw_member(b"f", b'0', 0, b"");
        v[0] = b'g';
        let err = read(&v).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");

        let mut h = raw_member(b"huge", b'0', 0, b"");
        // Base-256 size far beyond the archive.
        h[124..136].copy_from_slice(&[
            0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        let hdr = tar::Header::from_byte_slice(&h[..512]).clone();
        let mut hdr = hdr;
        hdr.set_cksum();
        h[..512].copy_from_slice(hdr.as_bytes());
        let err = read(&h).unwrap_err();
        assert!(err.to_string().contains("huge"), "{err}");
    }

    #[test]
    fn streams_refuse_truncation_too() {
        let mut v = raw_member(b"a", b'0', 3000, b"");
        v.extend(raw_member(b"b", b'0', 10, b""));
        v.truncate(2000);
        let mut t = Tree::new();
        let err = read_into(&v[..], &mut t, &|o| Source::HostFile {
            path: "s.tar".into(),
            offset: o,
        })
        .unwrap_err();
        assert!(matches!(err, TarError::Io { .. }), "{err}");
    }

    #[test]
    fn duplicates_last_wins() {
        let mut v = raw_member(b"a", b'0', 1, b"");
        v[512] = b'1';
        let mut w = raw_member(b"a", b'0', 2, b"");
        w[512] = b'2';
        v.extend(w);
        let t = read(&v).unwrap();
        let Kind::File(c) = &t.get(&p("a")).unwrap().kind else {
            panic!()
        };
        assert_eq!(c.len, 2);
    }

    #[test]
    fn compression_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::detect(b"\xfd7zXZ\0"), Compression::Xz);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"usr/"), Compression::None);
    }

    #[test]
    fn compressed_archives_read_from_a_scratch_copy() {
        let dir = tempfile::tempdir().unwrap();
        let tar = raw_member(b"hello", b'0', 3, b"");
        let mut tar = tar;
        tar[512..515].copy_from_slice(b"hey");
        tar.extend([0u8; 1024]);
        let gz = dir.path().join("a.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut enc, &tar).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let mut t = Tree::new();
        let f = read_archive_file(&gz, &scratch, &UnpackLimit::default(), &mut t).unwrap();
        assert_eq!(f.compression, Compression::Gzip);
        let Kind::File(c) = &t.get(&p("hello")).unwrap().kind else {
            panic!()
        };
        assert_eq!(c.read_all().unwrap(), b"hey");
        drop(f);
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    }
}
