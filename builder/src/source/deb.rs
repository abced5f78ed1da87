//! Debian packages (`.deb`) → tree entries: the files of `data.tar.*` at their paths.
//!
//! A `.deb` is an `ar` archive holding `debian-binary`, `control.tar.*` and `data.tar.*`. Only
//! the data member is added to the tree; maintainer scripts are never run (a package whose
//! scripts matter must be handled by an overlay or at first boot). The members are read in
//! place: an uncompressed `data.tar` is referenced by offset inside the `.deb`; a compressed one
//! is copied out and decompressed once into a scratch file by the tar reader.
//!
//! Hostile packages: member sizes past the end of the file, a missing `data.tar.*`, or a
//! `debian-binary` other than 2.x are errors; tar-level checks (`..`, absolute paths, links)
//! are the tar reader's.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::tar::{self, TarError, TarFile, TarStats};
use crate::blockio::SliceCursor;
use crate::tree::{Source, Tree};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DebError {
    #[error("{deb}: {why}")]
    Format { deb: PathBuf, why: String },
    #[error("{deb}: {source}")]
    Io {
        deb: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tar(#[from] TarError),
}

/// One member of an `ar` archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArMember {
    pub name: String,
    /// Offset of the member's data in the archive.
    pub offset: u64,
    pub size: u64,
}

/// Lists the members of an `ar` archive of `len` bytes.
pub fn ar_members<R: Read + Seek>(r: &mut R, len: u64) -> Result<Vec<ArMember>, String> {
    let mut magic = [0u8; 8];
    r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    r.read_exact(&mut magic)
        .map_err(|_| "not an ar archive (too short)".to_string())?;
    if &magic != b"!<arch>\n" {
        return Err("not a Debian package (no `!<arch>` header)".into());
    }
    let mut out = Vec::new();
    let mut pos = 8u64;
    while pos < len {
        if len - pos < 60 {
            return Err(format!("truncated member header at byte {pos}"));
        }
        let mut h = [0u8; 60];
        r.seek(SeekFrom::Start(pos)).map_err(|e| e.to_string())?;
        r.read_exact(&mut h).map_err(|e| e.to_string())?;
        if &h[58..60] != b"`\n" {
            return Err(format!("bad member header at byte {pos}"));
        }
        let name = String::from_utf8_lossy(&h[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = std::str::from_utf8(&h[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("member {name:?}: bad size field"))?;
        let offset = pos + 60;
        if size > len - offset {
            return Err(format!(
                "member {name:?} claims {size} bytes, past the end of the file"
            ));
        }
        out.push(ArMember { name, offset, size });
        // Members are padded to an even offset.
        pos = offset + size + (size & 1);
    }
    Ok(out)
}

/// A package whose data was read into a tree. Tree sources may point into the scratch copy
/// this holds: keep it alive until the tree has been written.
#[derive(Debug)]
pub struct DebFile {
    pub stats: TarStats,
    _decompressed: Option<TarFile>,
}

/// Adds the files of the package at `deb` to `tree`. `scratch_dir` receives the decompressed
/// data member (inside the cache or the build's temporary folder, never elsewhere).
pub fn read_deb(deb: &Path, scratch_dir: &Path, tree: &mut Tree) -> Result<DebFile, DebError> {
    let fmt = |why: String| DebError::Format {
        deb: deb.to_path_buf(),
        why,
    };
    let io = |source| DebError::Io {
        deb: deb.to_path_buf(),
        source,
    };
    let mut f = File::open(deb).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let members = ar_members(&mut f, len).map_err(fmt)?;
    let version = members
        .iter()
        .find(|m| m.name == "debian-binary")
        .ok_or_else(|| fmt("no debian-binary member".into()))?;
    let mut v = vec![0u8; version.size.min(16) as usize];
    f.seek(SeekFrom::Start(version.offset)).map_err(io)?;
    f.read_exact(&mut v).map_err(io)?;
    if !v.starts_with(b"2.") {
        return Err(fmt(format!(
            "package format {:?} is not supported (expected 2.x)",
            String::from_utf8_lossy(&v).trim()
        )));
    }
    let data = members
        .iter()
        .find(|m| m.name.starts_with("data.tar"))
        .ok_or_else(|| fmt("no data.tar member".into()))?;
    if data.name == "data.tar" {
        let part = SliceCursor::new(File::open(deb).map_err(io)?, data.offset, data.size);
        let owned = deb.to_path_buf();
        let base = data.offset;
        let stats = tar::read_into_seekable(
            part,
            data.size,
            &format!("{} (data.tar)", deb.display()),
            tree,
            &move |o| Source::HostFile {
                path: owned.clone(),
                offset: base + o,
            },
        )?;
        return Ok(DebFile {
            stats,
            _decompressed: None,
        });
    }
    // Copy the compressed member out; the tar reader detects the compression and decompresses
    // it once. The compressed copy is deleted when this function returns.
    let mut member = tempfile::Builder::new()
        .prefix(".imgbuild-deb.")
        .tempfile_in(scratch_dir)
        .map_err(io)?;
    let mut part = SliceCursor::new(File::open(deb).map_err(io)?, data.offset, data.size);
    io::copy(&mut part, member.as_file_mut()).map_err(io)?;
    let limit = crate::unpack::UnpackLimit::default();
    let tar =
        tar::read_archive_file(member.path(), scratch_dir, &limit, tree).map_err(|e| match e {
            TarError::Member {
                member: m,
                header_at,
                why,
                ..
            } => TarError::Member {
                archive: format!("{} ({})", deb.display(), data.name),
                member: m,
                header_at,
                why,
            },
            other => other,
        })?;
    Ok(DebFile {
        stats: tar.stats,
        _decompressed: Some(tar),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = b"!<arch>\n".to_vec();
        for (name, data) in members {
            v.extend_from_slice(
                format!(
                    "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    name,
                    0,
                    0,
                    0,
                    100644,
                    data.len()
                )
                .as_bytes(),
            );
            v.extend_from_slice(data);
            if data.len() % 2 == 1 {
                v.push(b'\n');
            }
        }
        v
    }

    #[test]
    fn members_and_padding() {
        let a = ar(&[
            ("debian-binary", b"2.0\n"),
            ("odd/", b"abc"),
            ("data.tar", b"xy"),
        ]);
        let m = ar_members(&mut Cursor::new(&a), a.len() as u64).unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["debian-binary", "odd", "data.tar"]);
        assert_eq!(&a[m[2].offset as usize..][..2], b"xy");
    }

    #[test]
    fn hostile_archives_are_errors() {
        let mut a = ar(&[("data.tar", b"xy")]);
        // Claim a huge size.
        let at = 8 + 48;
        a[at..at + 10].copy_from_slice(b"9999999999");
        let err = ar_members(&mut Cursor::new(&a), a.len() as u64).unwrap_err();
        assert!(err.contains("past the end"), "{err}");
        assert!(ar_members(&mut Cursor::new(b"hello"), 5).is_err());
        let short = &ar(&[("x", b"y")])[..30];
        assert!(ar_members(&mut Cursor::new(short), 30).is_err());
    }
}
