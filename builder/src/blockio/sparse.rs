//! Copying a stream into a file so that its runs of zeros stay holes, with a guard that may stop
//! the copy: the one loop behind every decompressed copy (cached bases, scratch copies of
//! archives, `.img.xz` read back), so none of them turns a disk image's unused space into real
//! zeros on disk or writes past a limit.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// Holes are found at this granularity (and aligned to it, from the start of the output).
const CHUNK: usize = 64 << 10;

/// Copies `input` into `out` from its current position, seeking over all-zero chunks, and returns
/// the number of bytes copied. `on_data` sees every chunk, zeros included (hashing); `guard` is
/// called with the running total before each chunk is written and stops the copy with its error.
/// A trailing hole is closed by writing the last byte, so the output has the full length.
pub fn copy_sparse<R: Read + ?Sized, W: Write + Seek + ?Sized>(
    input: &mut R,
    out: &mut W,
    mut on_data: impl FnMut(&[u8]),
    mut guard: impl FnMut(u64) -> io::Result<()>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    let mut hole_at_end = false;
    loop {
        // Whole chunks (a decoder may return less than asked), so holes stay chunk-aligned.
        let n = super::read_up_to(input, &mut buf)?;
        if n == 0 {
            break;
        }
        guard(len + n as u64)?;
        on_data(&buf[..n]);
        if buf[..n].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(n as i64))?;
            hole_at_end = true;
        } else {
            out.write_all(&buf[..n])?;
            hole_at_end = false;
        }
        len += n as u64;
    }
    if hole_at_end {
        // A seek alone does not extend the file.
        out.seek(SeekFrom::Current(-1))?;
        out.write_all(&[0])?;
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn data() -> Vec<u8> {
        let mut d = vec![0u8; 5 * CHUNK + 100];
        d[CHUNK + 7] = 1;
        d[3 * CHUNK] = 2;
        d
    }

    #[test]
    fn copies_exactly_and_sees_every_byte() {
        let d = data();
        let mut out = Cursor::new(Vec::new());
        let mut seen = 0usize;
        let n = copy_sparse(&mut &d[..], &mut out, |b| seen += b.len(), |_| Ok(())).unwrap();
        assert_eq!(n, d.len() as u64);
        assert_eq!(seen, d.len());
        assert_eq!(out.into_inner(), d);
    }

    #[test]
    fn leaves_zero_chunks_as_holes_in_a_file() {
        let mut d = vec![0u8; 64 * CHUNK];
        d[0] = 9;
        let mut f = tempfile::tempfile().unwrap();
        copy_sparse(&mut &d[..], &mut f, |_| {}, |_| Ok(())).unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = f.metadata().unwrap();
        assert_eq!(md.len(), d.len() as u64);
        // Two chunks at most (the first, and the closing byte) are allocated.
        assert!(
            md.blocks() * 512 <= 2 * CHUNK as u64 + 8192,
            "{}",
            md.blocks()
        );
    }

    #[test]
    fn the_guard_stops_before_writing_past_it() {
        let d = vec![1u8; 4 * CHUNK];
        let mut out = Cursor::new(Vec::new());
        let err = copy_sparse(
            &mut &d[..],
            &mut out,
            |_| {},
            |n| {
                if n > 2 * CHUNK as u64 {
                    Err(io::Error::other("too much"))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "too much");
        assert_eq!(out.into_inner().len(), 2 * CHUNK);
    }
}
