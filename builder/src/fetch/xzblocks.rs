//! The compressed-block cache: xz blocks and zstd frames compressed by earlier builds, under
//! `xz-blocks/` in the download cache (the name predates the zstd frames; kept so existing caches
//! stay in reach of `cache gc`), one file per block named by its key: [`xzstream::block_key`]
//! (`<hex>`) or [`zst::frame_key`] (`<hex>.zst`), each the input's SHA-256 with the settings and
//! the encoder's version. A rebuild after a small change recompresses only the units whose input
//! changed; the rest come from here, so `.img.xz` and `.img.zst` are byte-identical to a cold
//! build's.
//!
//! An entry holds its block and the SHA-256 of it; an entry that does not match its hash (a bit
//! flip, a truncated write) is removed and the block compressed again, never used. Entries are
//! written to a temporary name and renamed. The folder is bounded: after each build the least
//! recently used entries go until it fits in [`DEFAULT_MAX_BYTES`]; `imgbuild cache gc` empties
//! it (blocks are only ever a speed-up).

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::disk::blocks::{Block, BlockStore, Kind};
#[cfg(doc)]
use crate::disk::{xzstream, zst};

/// The folder under the cache root.
pub const DIR: &str = "xz-blocks";
/// Bound on the folder: a few images' worth of blocks.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// File name suffix of a zstd frame's entry.
pub const ZST_SUFFIX: &str = ".zst";
/// The name prefix of an entry being written (renamed to its key when complete).
pub const TEMP_PREFIX: &str = ".new.";
const MAGIC_LEN: usize = 20;
const HEAD: usize = MAGIC_LEN + 8 + 8 + 32;

fn magic(kind: Kind) -> &'static [u8; MAGIC_LEN] {
    match kind {
        Kind::Xz => b"imgbuild xz block 1\n",
        Kind::Zst => b"imgbuild zstframe 1\n",
    }
}

/// An entry's bytes: magic (by kind), unpadded and uncompressed size (LE), SHA-256 of the rest,
/// block.
pub fn encode_entry(kind: Kind, b: &Block) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + b.bytes.len());
    out.extend_from_slice(magic(kind));
    out.extend(b.unpadded.to_le_bytes());
    out.extend(b.uncompressed.to_le_bytes());
    out.extend(entry_hash(b.unpadded, b.uncompressed, &b.bytes));
    out.extend_from_slice(&b.bytes);
    out
}

fn entry_hash(unpadded: u64, uncompressed: u64, bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(unpadded.to_le_bytes());
    h.update(uncompressed.to_le_bytes());
    h.update(bytes);
    h.finalize().into()
}

/// The block in an entry of `kind`, or `Err((recorded hash, actual hash))` in hex when it is
/// damaged.
pub fn decode_entry(kind: Kind, e: &[u8]) -> Result<Block, (String, String)> {
    let malformed = || Err(("a block entry".into(), "a bad header or length".into()));
    if e.len() < HEAD || !e.starts_with(magic(kind)) {
        return malformed();
    }
    let num = |at: usize| u64::from_le_bytes(e[at..at + 8].try_into().expect("8 bytes"));
    let (unpadded, uncompressed) = (num(MAGIC_LEN), num(MAGIC_LEN + 8));
    let recorded = &e[MAGIC_LEN + 16..HEAD];
    let bytes = &e[HEAD..];
    let actual = entry_hash(unpadded, uncompressed, bytes);
    if actual != recorded {
        return Err((hex::encode(recorded), hex::encode(actual)));
    }
    let stored = match kind {
        Kind::Xz => unpadded.div_ceil(4) * 4,
        Kind::Zst => unpadded,
    };
    if stored != bytes.len() as u64 {
        return malformed();
    }
    Ok(Block {
        bytes: bytes.to_vec(),
        unpadded,
        uncompressed,
    })
}

/// What a build took from the cache, for one kind of block.
#[derive(Debug, Default)]
pub struct Counts {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Entries found damaged (removed, their blocks compressed again).
    pub damaged: AtomicU64,
}

impl Counts {
    /// (hits, misses, damaged) so far.
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.damaged.load(Ordering::Relaxed),
        )
    }
}

/// The cache folder, with counts of what a build took from it.
#[derive(Debug)]
pub struct BlockCache {
    dir: PathBuf,
    max_bytes: u64,
    pub xz: Counts,
    pub zst: Counts,
}

impl BlockCache {
    /// Opens (creating) `xz-blocks/` under the cache root.
    pub fn open(cache_root: &Path) -> io::Result<BlockCache> {
        let dir = cache_root.join(DIR);
        fs::create_dir_all(&dir)?;
        Ok(BlockCache {
            dir,
            max_bytes: DEFAULT_MAX_BYTES,
            xz: Counts::default(),
            zst: Counts::default(),
        })
    }

    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    fn path(&self, kind: Kind, key: &[u8; 32]) -> PathBuf {
        let suffix = match kind {
            Kind::Xz => "",
            Kind::Zst => ZST_SUFFIX,
        };
        self.dir.join(format!("{}{suffix}", hex::encode(key)))
    }

    pub fn counts(&self, kind: Kind) -> &Counts {
        match kind {
            Kind::Xz => &self.xz,
            Kind::Zst => &self.zst,
        }
    }

    /// Removes the least recently used entries until the folder fits its bound. Returns how
    /// many were removed.
    pub fn trim(&self) -> io::Result<usize> {
        let mut entries = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let md = e.metadata()?;
            if md.is_file() {
                entries.push((md.modified()?, e.file_name(), md.len()));
            }
        }
        // Newest first; ties by name so the choice does not depend on readdir order.
        entries.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let (mut total, mut removed) = (0u64, 0);
        for (_, name, len) in entries {
            total += len;
            if total > self.max_bytes {
                remove_quiet(&self.dir.join(name));
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn remove_quiet(p: &Path) {
    // Gone already is fine; anything else only means the entry stays until the next trim.
    let _ = fs::remove_file(p);
}

impl BlockStore for BlockCache {
    fn get(&self, kind: Kind, key: &[u8; 32], uncompressed: u64) -> Option<Block> {
        let (path, counts) = (self.path(kind, key), self.counts(kind));
        let Ok(bytes) = fs::read(&path) else {
            counts.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match decode_entry(kind, &bytes) {
            Ok(b) if b.uncompressed == uncompressed => {
                // Used now: the least recently used entries are trimmed first.
                if let Ok(f) = fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                counts.hits.fetch_add(1, Ordering::Relaxed);
                Some(b)
            }
            _ => {
                tracing::warn!(entry = %path.display(), "damaged block in the cache: removed, compressing again");
                remove_quiet(&path);
                counts.damaged.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn put(&self, kind: Kind, key: &[u8; 32], block: &Block) {
        let write = || -> io::Result<()> {
            let mut tmp = tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .tempfile_in(&self.dir)?;
            tmp.write_all(&encode_entry(kind, block))?;
            tmp.persist(self.path(kind, key)).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %self.dir.display(), "could not keep a compressed block in the cache: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::xz::XzSettings;
    use crate::disk::xzstream;
    use crate::disk::zst::{self, ZstSettings};

    fn block() -> Block {
        let s = XzSettings {
            preset: 1,
            block_size: 1 << 16,
            threads: 1,
        };
        xzstream::compress_block(&[7u8; 5000], &s).unwrap()
    }

    fn frame() -> Block {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 13) as u8).collect();
        zst::compress_frame(&data, &ZstSettings::default()).unwrap()
    }

    #[test]
    fn entries_round_trip_and_every_bit_flip_is_caught() {
        for (kind, b) in [(Kind::Xz, block()), (Kind::Zst, frame())] {
            let e = encode_entry(kind, &b);
            assert_eq!(decode_entry(kind, &e).unwrap(), b);
            for i in 0..e.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = e.clone();
                    bad[i] ^= bit;
                    assert!(
                        decode_entry(kind, &bad).is_err(),
                        "{kind:?}: flip at byte {i} went unnoticed"
                    );
                }
            }
            assert!(decode_entry(kind, &e[..e.len() - 1]).is_err());
        }
        // An entry of one kind is never taken for the other.
        assert!(decode_entry(Kind::Zst, &encode_entry(Kind::Xz, &block())).is_err());
        assert!(decode_entry(Kind::Xz, &encode_entry(Kind::Zst, &frame())).is_err());
    }

    #[test]
    fn a_damaged_entry_is_removed_and_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlockCache::open(dir.path()).unwrap();
        for (kind, b) in [(Kind::Xz, block()), (Kind::Zst, frame())] {
            let key = [1u8; 32];
            c.put(kind, &key, &b);
            assert_eq!(c.get(kind, &key, 5000), Some(b.clone()));
            assert_eq!(
                c.get(kind, &key, 4999),
                None,
                "another length is not this block"
            );
            c.put(kind, &key, &b);
            let p = c.path(kind, &key);
            let mut bytes = fs::read(&p).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 4;
            fs::write(&p, bytes).unwrap();
            assert_eq!(c.get(kind, &key, 5000), None);
            assert!(!p.exists());
            assert_eq!(c.counts(kind).get(), (1, 0, 2));
        }
        // Both kinds under one key: two entries.
        c.put(Kind::Xz, &[2; 32], &block());
        c.put(Kind::Zst, &[2; 32], &frame());
        assert_eq!(c.get(Kind::Xz, &[2; 32], 5000), Some(block()));
        assert_eq!(c.get(Kind::Zst, &[2; 32], 5000), Some(frame()));
    }

    #[test]
    fn trim_keeps_the_most_recently_used_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let b = block();
        let one = encode_entry(Kind::Xz, &b).len() as u64;
        let c = BlockCache::open(dir.path())
            .unwrap()
            .with_max_bytes(2 * one);
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for k in 0..4u8 {
            c.put(Kind::Xz, &[k; 32], &b);
            let f = fs::File::options()
                .append(true)
                .open(c.path(Kind::Xz, &[k; 32]))
                .unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(k.into()))
                .unwrap();
        }
        assert_eq!(c.trim().unwrap(), 2);
        let left: Vec<bool> = (0..4u8)
            .map(|k| c.path(Kind::Xz, &[k; 32]).exists())
            .collect();
        assert_eq!(left, [false, false, true, true]);
    }
}
