//! A window of a [`ReadAt`] source (one partition of a disk image), and a `Read + Seek` view of
//! one for parsers that want a stream (the FAT library, `ar` members).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use super::ReadAt;

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_exact_at(offset, buf)
    }
}

/// `len` bytes of `inner` from `offset`, addressed from 0. Reads past its end fail, so a parser
/// given a partition cannot read its neighbour.
#[derive(Debug, Clone)]
pub struct Window<R> {
    inner: R,
    offset: u64,
    len: u64,
}

impl<R: ReadAt> Window<R> {
    pub fn new(inner: R, offset: u64, len: u64) -> Self {
        Window { inner, offset, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<R: ReadAt> ReadAt for Window<R> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} goes past the end of the {}-byte window",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.inner.read_exact_at(self.offset + offset, buf)
    }
}

/// A `Read + Seek` cursor over a window. Writes are refused: bases are read, never written.
#[derive(Debug, Clone)]
pub struct WindowCursor<R> {
    window: Window<R>,
    pos: u64,
}

impl<R: ReadAt> WindowCursor<R> {
    pub fn new(window: Window<R>) -> Self {
        WindowCursor { window, pos: 0 }
    }
}

impl<R: ReadAt> Read for WindowCursor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.window.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.window.read_exact_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: ReadAt> Seek for WindowCursor<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.window.len.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the window",
            )
        })?;
        Ok(self.pos)
    }
}

impl<R> Write for WindowCursor<R> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_inside() {
        let data: Vec<u8> = (0..100).collect();
        let w = Window::new(&data[..], 10, 20);
        let mut b = [0u8; 5];
        w.read_exact_at(15, &mut b).unwrap();
        assert_eq!(b, [25, 26, 27, 28, 29]);
        assert!(w.read_exact_at(16, &mut b).is_err());
        let mut c = WindowCursor::new(w);
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        assert_eq!(all, (10..30).collect::<Vec<u8>>());
        assert!(c.write(b"x").is_err());
    }
}
