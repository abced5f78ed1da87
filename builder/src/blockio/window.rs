//! A `Read + Seek` view of a [`Slice`], for parsers that want a stream (the FAT library, `ar`
//! members) over a partition or a member of a file.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::{ReadAt, Slice};

/// A cursor over a window. Writes are refused: bases are read, never written.
#[derive(Debug, Clone)]
pub struct SliceCursor<R> {
    window: Slice<R>,
    pos: u64,
}

impl<R: ReadAt> SliceCursor<R> {
    pub fn new(inner: R, base: u64, len: u64) -> Self {
        SliceCursor {
            window: Slice { inner, base, len },
            pos: 0,
        }
    }
}

impl<R: ReadAt> Read for SliceCursor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.window.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.window.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: ReadAt> Seek for SliceCursor<R> {
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

impl<R> Write for SliceCursor<R> {
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
    fn cursors_stay_inside_their_window() {
        let data: Vec<u8> = (0..100).collect();
        let mut c = SliceCursor::new(&data[..], 10, 20);
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        assert_eq!(all, (10..30).collect::<Vec<u8>>());
        c.seek(SeekFrom::End(-2)).unwrap();
        let mut two = [0u8; 4];
        assert_eq!(c.read(&mut two).unwrap(), 2);
        assert!(c.write(b"x").is_err());
    }
}
