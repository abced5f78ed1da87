//! Reading a target back past the page cache: `O_DIRECT` with aligned buffers, after
//! `posix_fadvise(DONTNEED)` and `BLKFLSBUF` dropped what the kernel kept of the writes.
//!
//! The device's own cache (a card reader's or a USB bridge's DRAM) cannot be bypassed from
//! here; it can only make a verify pass that should fail, never fail one that should pass.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment for `O_DIRECT` (covers 512-byte and 4Kn devices).
const ALIGN: usize = 4096;
const WINDOW: usize = 4 << 20;

/// A `Read + Seek` over a device or file that reads through `O_DIRECT` when the kernel allows
/// it (tmpfs and some filesystems refuse it: then plain reads after `DONTNEED`).
pub struct DirectReader {
    file: File,
    direct: bool,
    pos: u64,
    size: u64,
    buf: Vec<u8>,
}

impl DirectReader {
    pub fn open(path: &Path, size: u64) -> io::Result<DirectReader> {
        let direct_flag = rustix::fs::OFlags::DIRECT.bits() as i32;
        let (file, direct) = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(direct_flag)
            .open(path)
        {
            Ok(f) => (f, true),
            Err(_) => (File::open(path)?, false),
        };
        // Whatever the page cache still holds of this file is dropped first.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        Ok(DirectReader {
            file,
            direct,
            pos: 0,
            size,
            buf: vec![0u8; WINDOW + ALIGN],
        })
    }

    /// Was `O_DIRECT` granted?
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// An `ALIGN`-aligned window of the buffer (the allocator gives no alignment guarantee).
    fn aligned(buf: &mut [u8]) -> &mut [u8] {
        let skew = buf.as_ptr() as usize % ALIGN;
        let start = if skew == 0 { 0 } else { ALIGN - skew };
        &mut buf[start..start + WINDOW]
    }
}

impl Read for DirectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let base = self.pos - self.pos % ALIGN as u64;
        let skip = (self.pos - base) as usize;
        let want = (skip + out.len()).min(WINDOW);
        let len = want.next_multiple_of(ALIGN).min(WINDOW);
        let win = Self::aligned(&mut self.buf);
        let got = self.file.read_at(&mut win[..len], base)?;
        if got <= skip {
            return Ok(0);
        }
        let n = (got - skip)
            .min(out.len())
            .min((self.size - self.pos) as usize);
        out[..n].copy_from_slice(&win[skip..skip + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for DirectReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(n) => n,
            SeekFrom::End(d) => self.size.saturating_add_signed(d),
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
        };
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unaligned_ranges_exactly() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let mut r = DirectReader::open(&p, data.len() as u64).unwrap();
        r.seek(SeekFrom::Start(4000)).unwrap();
        let mut got = vec![0u8; 8300];
        r.read_exact(&mut got).unwrap();
        assert_eq!(got, data[4000..12300]);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, data[12300..]);
    }
}
