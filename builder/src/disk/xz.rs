//! Reproducible `.xz`: liblzma's multithreaded encoder with a fixed block size.
//!
//! The single-threaded and multithreaded xz encoders produce different bytes, and the
//! multithreaded one depends on the block size but not on the number of threads. So we always
//! use the multithreaded encoder (even with one thread) and always set the block size; the thread
//! count only changes the speed. The `static` feature of `liblzma` pins the library version,
//! which also changes the bytes.

use std::io::{self, Write};

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
}
