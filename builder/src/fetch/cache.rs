//! The download cache: content-addressed by SHA-256.
//!
//! Layout under the cache root:
//!
//! * `sha256/<hex>`: one verified blob per content hash, read-only. A blob is written under
//!   `tmp/` and renamed here only after its hash was checked, so a crash, a cut connection or a
//!   server sending the wrong bytes never leaves a blob whose name lies about its content.
//! * `tmp/<sha256 of the URL>.part`: an interrupted download, resumed with an HTTP Range request
//!   the next time the same URL is fetched.
//! * `unxz/<hex of the compressed blob>`: the decompressed copy of an `.xz` blob (a base image is
//!   decompressed once and then read in place), with `unxz/<hex>.sha256` holding the hash of the
//!   decompressed bytes so `imgbuild cache verify` can check it as well.
//!
//! * `xz-blocks/<key>` and `xz-blocks/<key>.zst`: compressed xz blocks and zstd frames of
//!   earlier builds ([`super::xzblocks`]).
//!
//! Garbage collection keeps what the given lockfiles reference (and the decompressed copies of
//! those blobs) and removes everything else, including partial downloads, xz blocks and zstd
//! frames.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Seek};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::FetchError;
use crate::disk::blocks::Kind;
use crate::unpack::{CopyError, UnpackLimit};

/// Buffer for streaming blobs (hashing, copying, decompressing).
pub(crate) const BUF: usize = 256 << 10;

/// A cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What kind of file a cache entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A verified download, named by its SHA-256.
    Blob,
    /// The decompressed copy of an `.xz` blob, named by the blob's SHA-256.
    Unxz,
    /// An interrupted download, or a compressed block not yet (or never) complete.
    Partial,
    /// A compressed xz block of an earlier build ([`super::xzblocks`]), named by its key.
    XzBlock,
    /// A compressed zstd frame of an earlier build, named by its key (without the `.zst`).
    ZstFrame,
}

/// One file in the cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheEntry {
    pub kind: EntryKind,
    /// The content hash (blobs) or the compressed blob's hash (decompressed copies); the file
    /// name for partial downloads.
    pub key: String,
    pub size: u64,
    pub path: PathBuf,
}

/// The result of re-hashing one entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Corrupt {
    pub path: PathBuf,
    pub expected: String,
    pub actual: String,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Is `s` a lowercase hex SHA-256?
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// SHA-256 of a whole file, in lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    crate::blockio::hash::sha256_path(path).map_err(io_err(path))
}

/// How long a blob being written may sit untouched before it counts as abandoned.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Cache {
    /// The default cache folder: `$XDG_CACHE_HOME/imgbuild`, else `~/.cache/imgbuild`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            let x = PathBuf::from(x);
            // The XDG spec says relative values are invalid and must be ignored.
            if x.is_absolute() {
                return Some(x.join("imgbuild"));
            }
        }
        let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
        Some(PathBuf::from(home).join(".cache").join("imgbuild"))
    }

    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache, FetchError> {
        let root = root.into();
        for sub in ["sha256", "tmp", "unxz"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let cache = Cache { root };
        cache.sweep_abandoned(STALE_AFTER)?;
        Ok(cache)
    }

    /// Removes `tmp/new.*` files (blobs being written) not written to for `age`: a killed run
    /// left them. A live writer keeps its file's mtime fresh, so another run's is never taken.
    /// `.part` downloads stay: they resume.
    pub fn sweep_abandoned(&self, age: std::time::Duration) -> Result<usize, FetchError> {
        let dir = self.root.join("tmp");
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = e.file_name();
            let Ok(md) = e.metadata() else { continue };
            let idle = md.modified().ok().and_then(|m| now.duration_since(m).ok());
            if name.to_string_lossy().starts_with("new.")
                && md.is_file()
                && idle.is_some_and(|i| i >= age)
            {
                fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this hash lives (whether or not it is there).
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    /// The blob with this hash, if cached.
    pub fn get(&self, sha256: &str) -> Option<PathBuf> {
        if !is_sha256_hex(sha256) {
            return None;
        }
        let p = self.blob_path(sha256);
        p.is_file().then_some(p)
    }

    /// The partial-download file for a URL.
    pub fn partial_path(&self, url: &str) -> PathBuf {
        let key = hex::encode(Sha256::digest(url.as_bytes()));
        self.root.join("tmp").join(format!("{key}.part"))
    }

    /// A fresh temporary file inside the cache (same filesystem as the blobs, so the final
    /// rename is atomic). Deleted on drop unless persisted.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile, FetchError> {
        let dir = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("new.")
            .tempfile_in(&dir)
            .map_err(io_err(&dir))
    }

    /// Moves a file whose SHA-256 the caller has verified to be `sha256` into the cache.
    pub fn insert(&self, file: &Path, sha256: &str) -> Result<PathBuf, FetchError> {
        let dest = self.blob_path(sha256);
        set_readonly(file)?;
        fs::rename(file, &dest).map_err(io_err(&dest))?;
        Ok(dest)
    }

    /// The decompressed copy of the `.xz` blob `sha256`, made once and then reused, within
    /// `limit` (its holes stay holes). Decompression goes to a temporary file that is renamed
    /// only when the stream ended cleanly, so a truncated, corrupt or oversized `.xz` leaves
    /// nothing behind.
    pub fn unxz(&self, sha256: &str, limit: &UnpackLimit) -> Result<PathBuf, FetchError> {
        let blob = self.get(sha256).ok_or_else(|| FetchError::Io {
            path: self.blob_path(sha256),
            source: io::Error::new(io::ErrorKind::NotFound, "blob is not in the cache"),
        })?;
        let dest = self.root.join("unxz").join(sha256);
        let sidecar = self.root.join("unxz").join(format!("{sha256}.sha256"));
        if dest.is_file() && sidecar.is_file() {
            return Ok(dest);
        }
        let mut src = File::open(&blob).map_err(io_err(&blob))?;
        let declared = crate::disk::xz::declared_size(&mut src).map_err(io_err(&blob))?;
        src.rewind().map_err(io_err(&blob))?;
        let mut dec =
            liblzma::read::XzDecoder::new_multi_decoder(io::BufReader::with_capacity(BUF, src));
        let mut tmp = self.temp_file()?;
        let mut h = Sha256::new();
        let dir = self.root.join("tmp");
        limit
            .copy(&blob, declared, &mut dec, tmp.as_file_mut(), &dir, |b| {
                h.update(b)
            })
            .map_err(|e| match e {
                CopyError::TooLarge(t) => FetchError::TooLarge(t),
                CopyError::Io(source) => FetchError::Decompress {
                    path: blob.clone(),
                    source,
                },
            })?;
        let digest = hex::encode(h.finalize());
        tmp.as_file().sync_all().map_err(io_err(&dest))?;
        fs::write(&sidecar, format!("{digest}\n")).map_err(io_err(&sidecar))?;
        let path = tmp.into_temp_path();
        set_readonly(&path)?;
        path.persist(&dest).map_err(|e| FetchError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }

    /// Every entry, sorted by kind and key.
    pub fn list(&self) -> Result<Vec<CacheEntry>, FetchError> {
        let mut out = Vec::new();
        for (sub, kind) in [
            ("sha256", EntryKind::Blob),
            ("unxz", EntryKind::Unxz),
            ("tmp", EntryKind::Partial),
            (super::xzblocks::DIR, EntryKind::XzBlock),
        ] {
            let dir = self.root.join(sub);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            for e in rd {
                let e = e.map_err(io_err(&dir))?;
                let mut name = e.file_name().to_string_lossy().into_owned();
                if kind == EntryKind::Unxz && name.ends_with(".sha256") {
                    continue;
                }
                let mut kind = kind;
                if kind == EntryKind::XzBlock {
                    if name.starts_with(super::xzblocks::TEMP_PREFIX) {
                        // A block being written, or left by a build that was killed.
                        kind = EntryKind::Partial;
                    } else if let Some(key) = name.strip_suffix(super::xzblocks::ZST_SUFFIX) {
                        (kind, name) = (EntryKind::ZstFrame, key.to_string());
                    }
                }
                let path = e.path();
                let size = e.metadata().map_err(io_err(&path))?.len();
                out.push(CacheEntry {
                    kind,
                    key: name,
                    size,
                    path,
                });
            }
        }
        out.sort_by(|a, b| (a.kind as u8, &a.key).cmp(&(b.kind as u8, &b.key)));
        Ok(out)
    }

    /// Re-hashes every blob and decompressed copy. Corrupt ones are removed when `repair` is
    /// set (they will be downloaded again) and returned either way.
    pub fn verify(&self, repair: bool) -> Result<Vec<Corrupt>, FetchError> {
        let mut bad = Vec::new();
        for e in self.list()? {
            let (expected, actual) = match e.kind {
                EntryKind::Blob => (e.key.clone(), sha256_file(&e.path)?),
                EntryKind::Unxz => {
                    let side = e.path.with_file_name(format!("{}.sha256", e.key));
                    let expected = fs::read_to_string(&side)
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| "(no recorded hash)".into());
                    (expected, sha256_file(&e.path)?)
                }
                EntryKind::Partial => continue,
                // A block records the hash of its own bytes.
                EntryKind::XzBlock | EntryKind::ZstFrame => {
                    let block = match e.kind {
                        EntryKind::XzBlock => Kind::Xz,
                        _ => Kind::Zst,
                    };
                    let bytes = fs::read(&e.path).map_err(io_err(&e.path))?;
                    match super::xzblocks::decode_entry(block, &bytes) {
                        Ok(_) => continue,
                        Err(pair) => pair,
                    }
                }
            };
            if actual != expected {
                if repair {
                    remove(&e.path)?;
                    if e.kind == EntryKind::Unxz {
                        remove(&e.path.with_file_name(format!("{}.sha256", e.key)))?;
                    }
                }
                bad.push(Corrupt {
                    path: e.path,
                    expected,
                    actual,
                });
            }
        }
        Ok(bad)
    }

    /// Removes every blob not in `keep` (SHA-256 hex), the decompressed copies of removed blobs,
    /// and all partial downloads. Returns what was (or, with `dry_run`, would be) removed.
    pub fn gc(
        &self,
        keep: &BTreeSet<String>,
        dry_run: bool,
    ) -> Result<Vec<CacheEntry>, FetchError> {
        let mut removed = Vec::new();
        for e in self.list()? {
            let doomed = match e.kind {
                EntryKind::Blob | EntryKind::Unxz => !keep.contains(&e.key),
                // Blocks only save time; gc empties their folder.
                EntryKind::Partial | EntryKind::XzBlock | EntryKind::ZstFrame => true,
            };
            if doomed {
                if !dry_run {
                    remove(&e.path)?;
                    if e.kind == EntryKind::Unxz {
                        remove(&e.path.with_file_name(format!("{}.sha256", e.key)))?;
                    }
                }
                removed.push(e);
            }
        }
        Ok(removed)
    }
}

fn remove(path: &Path) -> Result<(), FetchError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Blobs are read-only so nothing edits them in place by accident.
fn set_readonly(path: &Path) -> Result<(), FetchError> {
    let mut perm = fs::metadata(path).map_err(io_err(path))?.permissions();
    perm.set_readonly(true);
    fs::set_permissions(path, perm).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_base_that_unpacks_past_the_cap_stops_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let mut xz = Vec::new();
        {
            let mut e = liblzma::write::XzEncoder::new(&mut xz, 0);
            e.write_all(&vec![0u8; 16 << 20]).unwrap();
            e.finish().unwrap();
        }
        assert!(xz.len() < 64 << 10, "a small download: {}", xz.len());
        let src = d.path().join("bomb.xz");
        fs::write(&src, &xz).unwrap();
        let sha = hex::encode(Sha256::digest(&xz));
        c.insert(&src, &sha).unwrap();
        let err = c
            .unxz(&sha, &UnpackLimit { max: 4 << 20 })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("it declares 16777216 bytes") && err.contains("at most 4194304 bytes"),
            "{err}"
        );
        assert!(
            fs::read_dir(d.path().join("unxz"))
                .unwrap()
                .next()
                .is_none()
        );
        assert!(fs::read_dir(d.path().join("tmp")).unwrap().next().is_none());
        // The same blob within the cap unpacks.
        let limit = UnpackLimit { max: 32 << 20 };
        let unpacked = fs::metadata(c.unxz(&sha, &limit).unwrap()).unwrap();
        assert_eq!(unpacked.len(), 16 << 20);
        // All zeros: a hole, not 16 MiB of disk.
        use std::os::unix::fs::MetadataExt;
        assert!(
            unpacked.blocks() * 512 < 1 << 20,
            "{} blocks",
            unpacked.blocks()
        );
    }

    #[test]
    fn abandoned_blob_writes_are_swept_at_open_live_ones_and_resumable_downloads_are_not() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let old = d.path().join("tmp/new.abc123");
        let live = d.path().join("tmp/new.def456");
        let part = d.path().join("tmp/0123.part");
        for p in [&old, &live, &part] {
            fs::write(p, "x").unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in [&old, &part] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
        drop(c);
        Cache::open(d.path()).unwrap();
        assert!(!old.exists());
        assert!(live.exists() && part.exists());
    }

    #[test]
    fn insert_get_verify_gc() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let sha = hex::encode(Sha256::digest(b"hello"));
        let t = c.temp_file().unwrap();
        fs::write(t.path(), b"hello").unwrap();
        let (_, p) = t.keep().unwrap();
        c.insert(&p, &sha).unwrap();
        assert!(c.get(&sha).is_some());
        assert!(c.get("../etc/passwd").is_none());
        assert!(c.verify(false).unwrap().is_empty());

        // A blob whose content no longer matches its name is found and, with repair, removed.
        let bad = hex::encode(Sha256::digest(b"other"));
        fs::write(c.blob_path(&bad), b"not other").unwrap();
        let found = c.verify(true).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].expected, bad);
        assert!(c.get(&bad).is_none());

        fs::write(c.partial_path("http://x/y"), b"half").unwrap();
        let keep: BTreeSet<String> = [sha.clone()].into();
        let gone = c.gc(&keep, true).unwrap();
        assert_eq!(gone.len(), 1, "dry run reports the partial");
        assert!(c.partial_path("http://x/y").exists());
        c.gc(&BTreeSet::new(), false).unwrap();
        assert!(c.get(&sha).is_none());
        assert!(c.list().unwrap().is_empty());
    }

    #[test]
    fn a_block_left_half_written_is_listed_as_partial_not_corrupt_and_gc_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let blocks = dir.path().join(super::super::xzblocks::DIR);
        fs::create_dir_all(&blocks).unwrap();
        let half = blocks.join(format!("{}abc123", super::super::xzblocks::TEMP_PREFIX));
        fs::write(&half, b"half a block").unwrap();
        let listed = c.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].kind, EntryKind::Partial);
        assert!(c.verify(false).unwrap().is_empty());
        assert_eq!(c.gc(&BTreeSet::new(), false).unwrap().len(), 1);
        assert!(!half.exists());
    }
}
