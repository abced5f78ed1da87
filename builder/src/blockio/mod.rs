//! The ground floor: byte ranges and the sinks that receive them ([`region`]), positional reads
//! ([`ReadAt`], windows of it, and a cursor over a window for stream parsers), SHA-256 over readers ([`hash`]) and sparse copies ([`sparse`]). It imports nothing from the rest of the
//! crate, so filesystem writers, disk tables, readers and the flasher can all stand on it.

pub mod hash;
pub mod region;
pub mod sparse;
mod window;

pub use window::SliceCursor;

use std::io::{self, Read, Seek, SeekFrom};

/// Reads until `buf` is full or the stream ends; returns how many bytes it got.
pub fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads at an offset without a cursor, so one handle can serve many readers.
pub trait ReadAt {
    /// Fills `buf` from `offset`, or fails (a short read is an `UnexpectedEof` error).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.len());
        let end = start
            .and_then(|s| s.checked_add(buf.len()))
            .filter(|&e| e <= self.len());
        match (start, end) {
            (Some(s), Some(e)) => {
                buf.copy_from_slice(&self[s..e]);
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} past the end ({} bytes)",
                    buf.len(),
                    self.len()
                ),
            )),
        }
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// A window `[base, base + len)` of another `ReadAt` (a partition of a disk image): reads past
/// its end fail instead of reaching the next partition.
#[derive(Debug, Clone)]
pub struct Slice<T> {
    pub inner: T,
    pub base: u64,
    pub len: u64,
}

impl<T: ReadAt> ReadAt for Slice<T> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read at {offset} past the end of a {}-byte window",
                    self.len
                ),
            ));
        }
        self.inner.read_exact_at(buf, self.base + offset)
    }
}

/// Seeks to `offset` and fills `buf`, for readers that only have a cursor.
pub fn read_at<R: Read + Seek + ?Sized>(r: &mut R, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_refuse_reads_past_their_end() {
        let data: Vec<u8> = (0..100u8).collect();
        let s = Slice {
            inner: &data,
            base: 10,
            len: 20,
        };
        let mut b = [0u8; 5];
        s.read_exact_at(&mut b, 15).unwrap();
        assert_eq!(b, [25, 26, 27, 28, 29]);
        assert!(s.read_exact_at(&mut b, 16).is_err());
        assert!(data.read_exact_at(&mut [0u8; 2], 99).is_err());
        assert!(data.read_exact_at(&mut [0u8; 1], u64::MAX).is_err());
    }
}
