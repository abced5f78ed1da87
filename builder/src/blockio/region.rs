//! Region sinks: where filesystem writers put their bytes. A writer emits `(offset, bytes)`
//! regions; the sink records which ranges were written, so sparse output and the block map come
//! from what we wrote rather than from probing the result for holes.

use std::io::{self, Seek, SeekFrom, Write};

/// Receives regions of an image. Offsets are relative to the sink (a partition window, a disk).
pub trait Sink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// Sorted, merged byte ranges `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    /// Adds `[start, end)`, merging with neighbours it touches.
    pub fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Fast path: writers mostly emit ascending regions.
        if let Some(last) = self.0.last_mut() {
            if start >= last.0 && start <= last.1 {
                last.1 = last.1.max(end);
                return;
            }
            if start > last.1 {
                self.0.push((start, end));
                return;
            }
        } else {
            self.0.push((start, end));
            return;
        }
        let i = self.0.partition_point(|r| r.1 < start);
        let mut s = start;
        let mut e = end;
        let mut j = i;
        while j < self.0.len() && self.0[j].0 <= e {
            s = s.min(self.0[j].0);
            e = e.max(self.0[j].1);
            j += 1;
        }
        self.0.splice(i..j, [(s, e)]);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().copied()
    }

    /// Total bytes covered.
    pub fn len_bytes(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same ranges shifted by `by` (a partition's offset on the disk).
    pub fn shifted(&self, by: u64) -> Ranges {
        Ranges(self.0.iter().map(|(s, e)| (s + by, e + by)).collect())
    }

    /// Adds every range of `other`.
    pub fn extend(&mut self, other: &Ranges) {
        for (s, e) in other.iter() {
            self.add(s, e);
        }
    }
}

/// Writes regions into a seekable output, leaving holes where nothing is written (the output
/// file must be created empty and sized with `set_len`, so unwritten ranges read as zeros and
/// stay unallocated). Records what was written.
pub struct SeekSink<W> {
    inner: W,
    written: Ranges,
    pos: Option<u64>,
}

impl<W: Write + Seek> SeekSink<W> {
    pub fn new(inner: W) -> Self {
        SeekSink {
            inner,
            written: Ranges::default(),
            pos: None,
        }
    }

    pub fn written(&self) -> &Ranges {
        &self.written
    }

    pub fn into_parts(self) -> (W, Ranges) {
        (self.inner, self.written)
    }
}

impl<W: Write + Seek> Sink for SeekSink<W> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.pos != Some(offset) {
            self.inner.seek(SeekFrom::Start(offset))?;
        }
        self.inner.write_all(data)?;
        self.pos = Some(offset + data.len() as u64);
        self.written.add(offset, offset + data.len() as u64);
        Ok(())
    }
}

/// An in-memory sink (tests, small filesystems).
#[derive(Debug, Default)]
pub struct VecSink {
    pub buf: Vec<u8>,
    pub written: Ranges,
}

impl Sink for VecSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = usize::try_from(offset + data.len() as u64)
            .map_err(|_| io::Error::other("region beyond addressable memory"))?;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.buf[offset as usize..end].copy_from_slice(data);
        self.written.add(offset, end as u64);
        Ok(())
    }
}

/// A window of another sink: a partition at `base` of at most `len` bytes. Writes past the
/// window are refused, so a filesystem can never spill into its neighbour.
pub struct Window<'a, S: Sink + ?Sized> {
    inner: &'a mut S,
    base: u64,
    len: u64,
}

impl<'a, S: Sink + ?Sized> Window<'a, S> {
    pub fn new(inner: &'a mut S, base: u64, len: u64) -> Self {
        Window { inner, base, len }
    }
}

impl<S: Sink + ?Sized> Sink for Window<'_, S> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "write of {} bytes at {offset} runs past the end of a {}-byte partition",
                    data.len(),
                    self.len
                ))
            })?;
        let _ = end;
        self.inner.write_at(self.base + offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_in_any_order() {
        let mut r = Ranges::default();
        r.add(10, 20);
        r.add(30, 40);
        r.add(0, 5);
        r.add(18, 31);
        r.add(5, 10);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(0, 40)]);
        r.add(50, 60);
        assert_eq!(r.len_bytes(), 50);
        assert_eq!(r.shifted(100).iter().next(), Some((100, 140)));
    }

    #[test]
    fn window_refuses_overflow() {
        let mut v = VecSink::default();
        let mut w = Window::new(&mut v, 100, 10);
        w.write_at(0, &[1; 10]).unwrap();
        assert!(w.write_at(5, &[1; 6]).is_err());
        assert_eq!(v.written.iter().collect::<Vec<_>>(), vec![(100, 110)]);
    }

    #[test]
    fn seek_sink_leaves_holes() {
        let mut s = SeekSink::new(std::io::Cursor::new(Vec::new()));
        s.write_at(8, b"ab").unwrap();
        s.write_at(0, b"x").unwrap();
        let (c, w) = s.into_parts();
        assert_eq!(c.into_inner(), b"x\0\0\0\0\0\0\0ab");
        assert_eq!(w.iter().collect::<Vec<_>>(), vec![(0, 1), (8, 10)]);
    }
}
