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
    const BLOCK: usize = 64 << 10;
    let mut dec = liblzma::read::XzDecoder::new_multi_decoder(io::BufReader::new(input));
    let mut buf = vec![0u8; BLOCK];
    let mut len = 0u64;
    let mut hole_at_end = false;
    loop {
        // Fill a whole block (the decoder may return less) so holes are block-aligned.
        let mut n = 0;
        while n < BLOCK {
            match dec.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
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
        // A seek alone does not extend the file: write its last byte.
        out.seek(SeekFrom::Start(len - 1))?;
        out.write_all(&[0])?;
    }
    Ok(len)
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
