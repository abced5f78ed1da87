//! A deterministic cpio "newc" (SVR4, magic `070701`) writer: the format the Linux kernel unpacks
//! from an initramfs, and what a boot loader appends to the base's initrd.
//!
//! Ours, not the `cpio` crate: the format is a 110-byte ASCII header, the name and the data,
//! each padded to 4 bytes, and we need every field pinned (inode numbers in write order, mtime
//! from SOURCE_DATE_EPOCH, owner root, no device of the build host), which is less code to write
//! than to force through a builder meant for host files.

use std::io::{self, Read, Write};

/// What one cpio entry is.
pub enum CpioKind<'a> {
    Dir,
    /// A regular file: its length and a reader over exactly that many bytes.
    File {
        len: u64,
        data: Box<dyn Read + 'a>,
    },
    Symlink(&'a [u8]),
}

/// Errors writing an archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CpioError {
    #[error("cpio entry {name}: {why}")]
    Entry { name: String, why: &'static str },
    #[error("writing the cpio archive: {0}")]
    Io(#[from] io::Error),
}

/// newc limits each size field to 8 hex digits.
const MAX_LEN: u64 = u32::MAX as u64;

/// Streams a newc archive into `W`. Entries are written in the order given; the caller orders
/// them (parents before children) so the kernel can create each path.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    mtime: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Every entry gets `mtime` (seconds since the epoch; clamped to the field's range).
    pub fn new(out: W, mtime: i64) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
            mtime: mtime.clamp(0, i64::from(u32::MAX)) as u32,
        }
    }

    /// Adds one entry owned by root with permission bits `mode` (`0o7777`). `name` is relative
    /// (`scripts/imgbuild`), never absolute, never with `..`.
    pub fn add(&mut self, name: &str, mode: u32, kind: CpioKind<'_>) -> Result<(), CpioError> {
        let bad = |why| CpioError::Entry {
            name: name.to_string(),
            why,
        };
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c == "..") {
            return Err(bad("names must be relative and may not contain `..`"));
        }
        if name.contains('\0') {
            return Err(bad("names may not contain NUL"));
        }
        let (ftype, len, nlink) = match &kind {
            CpioKind::Dir => (0o040000, 0, 2),
            CpioKind::File { len, .. } => (0o100000, *len, 1),
            CpioKind::Symlink(t) => (0o120000, t.len() as u64, 1),
        };
        if len > MAX_LEN {
            return Err(bad("newc cannot hold a file of 4 GiB or more"));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(ino, ftype | (mode & 0o7777), nlink, len as u32, name)?;
        match kind {
            CpioKind::Dir => {}
            CpioKind::Symlink(t) => self.emit(t)?,
            CpioKind::File { len, data } => {
                let n = io::copy(&mut data.take(len), &mut CountingWrite(self))?;
                if n != len {
                    return Err(bad("the file's content ended early"));
                }
            }
        }
        self.pad()
    }

    /// Writes the `TRAILER!!!` entry and returns the sink.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.header(0, 0, 1, 0, "TRAILER!!!")?;
        self.pad()?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        name: &str,
    ) -> Result<(), CpioError> {
        let namesize = name.len() as u32 + 1;
        // magic ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check
        let h = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
            0, 0, self.mtime, 0, 0, 0, 0, 0
        );
        self.emit(h.as_bytes())?;
        self.emit(name.as_bytes())?;
        self.emit(&[0])?;
        self.pad()
    }

    fn emit(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.emit(&[0; 3][..n])?;
        Ok(())
    }
}

/// Counts what `io::copy` writes through the archive, so padding stays right.
struct CountingWrite<'a, W: Write>(&'a mut CpioWriter<W>);

impl<W: Write> Write for CountingWrite<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.out.write(buf)?;
        self.0.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new(), 1_700_000_000);
        w.add("scripts", 0o755, CpioKind::Dir).unwrap();
        let data = b"#!/bin/sh\necho hi\n";
        w.add(
            "scripts/x",
            0o755,
            CpioKind::File {
                len: data.len() as u64,
                data: Box::new(&data[..]),
            },
        )
        .unwrap();
        w.add("l", 0o777, CpioKind::Symlink(b"scripts/x")).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn layout_is_newc_and_padded() {
        let a = archive();
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        // The second header follows the first (110 bytes) and its name ("scripts\0", 8 bytes),
        // padded to a multiple of 4.
        let second = 120;
        assert_eq!(&a[second..second + 6], b"070701");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(archive(), a, "same input, same bytes");
    }

    #[test]
    fn refuses_unsafe_names_and_short_content() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        assert!(w.add("/abs", 0o644, CpioKind::Dir).is_err());
        assert!(w.add("a/../b", 0o644, CpioKind::Dir).is_err());
        let short = CpioKind::File {
            len: 10,
            data: Box::new(&b"abc"[..]),
        };
        assert!(matches!(
            w.add("f", 0o644, short),
            Err(CpioError::Entry { .. })
        ));
    }
}
