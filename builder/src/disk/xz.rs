//! Reproducible `.xz`: liblzma's multithreaded encoder with a fixed block size.
//!
//! The single-threaded and multithreaded xz encoders produce different bytes, and the
//! multithreaded one depends on the block size but not on the number of threads. So we always
//! use the multithreaded encoder (even with one thread) and always set the block size; the thread
//! count only changes the speed. The `static` feature of `liblzma` pins the library version,
//! which also changes the bytes.

use std::io::{self, Read, Seek, SeekFrom, Write};

use liblzma::stream::{Check, MtStreamBuilder};
use liblzma::write::XzEncoder;

/// How `.img.xz` is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XzSettings {
    /// xz preset level (0–9).
    pub preset: u32,
    /// Uncompressed bytes per xz block. Changes the output bytes; fixed for reproducibility.
    pub block_size: u64,
    /// Worker threads. Does not change the output bytes.
    pub threads: u32,
}

/// The block size `xz -6` picks by itself (3 × its 8 MiB dictionary).
pub const DEFAULT_BLOCK_SIZE: u64 = 24 << 20;

impl Default for XzSettings {
    fn default() -> Self {
        XzSettings {
            preset: 6,
            block_size: DEFAULT_BLOCK_SIZE,
            threads: std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(1))
                .unwrap_or(1),
        }
    }
}

/// An `.xz` encoder writing into `out`. Call `finish()` on it to write the index and footer.
pub fn encoder<W: Write>(out: W, s: &XzSettings) -> io::Result<XzEncoder<W>> {
    let stream = MtStreamBuilder::new()
        .threads(s.threads.max(1))
        .block_size(s.block_size)
        .preset(s.preset)
        .check(Check::Crc64)
        .encoder()
        .map_err(|e| io::Error::other(format!("starting the xz encoder: {e}")))?;
    Ok(XzEncoder::new_stream(out, stream))
}

/// The magic bytes every `.xz` stream starts with.
pub const MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0];

/// Decompresses an `.xz` stream (one or more) into `out`, seeking over all-zero blocks so that a
/// disk image's unused space stays a hole. Returns the decompressed length.
pub fn decompress_sparse<R: Read, W: Write + Seek>(input: R, out: &mut W) -> io::Result<u64> {
    let mut dec = liblzma::read::XzDecoder::new_multi_decoder(io::BufReader::new(input));
    crate::blockio::sparse::copy_sparse(&mut dec, out, |_| {}, |_| Ok(()))
}

/// The decompressed size an `.xz` file declares in its indexes (every stream's, summed), read
/// from its end without decompressing. `None` when the file is not a well-formed `.xz` (the
/// decoder then says what is wrong); saturates at `u64::MAX`.
pub fn declared_size<R: Read + Seek>(r: &mut R) -> io::Result<Option<u64>> {
    let mut end = r.seek(SeekFrom::End(0))?;
    let mut total = 0u64;
    while end > 0 {
        // Stream padding: groups of four zero bytes after a stream.
        let mut w = [0u8; 4];
        while end >= 4 && read_at(r, end - 4, &mut w).is_ok() && w == [0; 4] {
            end -= 4;
        }
        match stream_before(r, end)? {
            Some((start, size)) => {
                total = total.saturating_add(size);
                end = start;
            }
            None => return Ok(None),
        }
    }
    Ok(Some(total))
}

/// The stream ending at `end`: where it starts and the bytes its index declares.
fn stream_before<R: Read + Seek>(r: &mut R, end: u64) -> io::Result<Option<(u64, u64)>> {
    let mut footer = [0u8; 12];
    if end < 24 || read_at(r, end - 12, &mut footer).is_err() || &footer[10..] != b"YZ" {
        return Ok(None);
    }
    let index_size = (u64::from(u32::from_le_bytes(footer[4..8].try_into().unwrap())) + 1) * 4;
    let Some(index_start) = end.checked_sub(12 + index_size).filter(|&s| s >= 12) else {
        return Ok(None);
    };
    let mut index = vec![0u8; index_size as usize];
    read_at(r, index_start, &mut index)?;
    let Some((blocks, size)) = parse_index(&index) else {
        return Ok(None);
    };
    let Some(start) = index_start
        .checked_sub(blocks)
        .and_then(|s| s.checked_sub(12))
    else {
        return Ok(None);
    };
    let mut magic = [0u8; 6];
    read_at(r, start, &mut magic)?;
    Ok((magic == MAGIC).then_some((start, size)))
}

/// An index's blocks: their total stored size (padded to 4) and decompressed size.
fn parse_index(index: &[u8]) -> Option<(u64, u64)> {
    let mut at = 1;
    if index.first() != Some(&0) {
        return None;
    }
    let count = varint(index, &mut at)?;
    let (mut stored, mut size) = (0u64, 0u64);
    for _ in 0..count {
        let unpadded = varint(index, &mut at)?;
        stored = stored.checked_add(unpadded.checked_add(3)? & !3)?;
        size = size.saturating_add(varint(index, &mut at)?);
    }
    Some((stored, size))
}

/// xz's multibyte integer: 7 bits a byte, low first, at most 9 bytes.
pub(crate) fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn compress(data: &[u8], threads: u32) -> Vec<u8> {
        let s = XzSettings {
            preset: 1,
            block_size: 1 << 16,
            threads,
        };
        let mut e = encoder(Vec::new(), &s).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn declared_size_sums_every_stream_and_skips_padding() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
        let b = vec![0u8; 1 << 20];
        let mut cat = compress(&a, 2);
        cat.extend_from_slice(&[0; 8]);
        cat.extend(compress(&b, 1));
        cat.extend_from_slice(&[0; 4]);
        let mut c = io::Cursor::new(&cat);
        assert_eq!(
            declared_size(&mut c).unwrap(),
            Some((a.len() + b.len()) as u64)
        );
        assert_eq!(
            declared_size(&mut io::Cursor::new(b"not xz at all, long enough?")).unwrap(),
            None
        );
        let mut cut = cat.clone();
        cut.truncate(cat.len() - 20);
        assert_eq!(declared_size(&mut io::Cursor::new(&cut)).unwrap(), None);
    }

    #[test]
    fn bytes_do_not_depend_on_threads_and_decode() {
        let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let one = compress(&data, 1);
        assert_eq!(one, compress(&data, 3));
        let mut back = Vec::new();
        liblzma::read::XzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn sparse_decompression_restores_every_byte_and_the_length() {
        // Data, a long zero run, data, and a zero tail (which must still count in the length).
        let mut data: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8 + 1).collect();
        data.extend(std::iter::repeat_n(0u8, 300_000));
        data.extend((0..5_000u32).map(|i| (i % 7) as u8 + 1));
        data.extend(std::iter::repeat_n(0u8, 200_000));
        let packed = [compress(&data, 1), compress(b"second stream", 1)].concat();
        assert!(packed.starts_with(&MAGIC));
        let mut out = io::Cursor::new(Vec::new());
        let n = decompress_sparse(&packed[..], &mut out).unwrap();
        let want = [data.as_slice(), b"second stream"].concat();
        assert_eq!(n, want.len() as u64);
        assert_eq!(out.into_inner(), want);
        // Damage is an error, not a short image.
        let mut bad = compress(&data, 1);
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert!(decompress_sparse(&bad[..], &mut io::Cursor::new(Vec::new())).is_err());
    }
}
