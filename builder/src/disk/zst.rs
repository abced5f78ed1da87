//! Reproducible `.zst`: zstd's multithreaded compressor at a fixed level.
//!
//! zstd's multithreaded mode cuts the input into jobs whose size follows from the level, not
//! from the worker count, so with at least one worker the bytes depend only on the level and the
//! library version (the bundled zstd of `zstd-sys`); zero workers (single-threaded mode) would
//! give other bytes, so there is always one. The frame records the content size and a checksum,
//! which `zstd -t` checks.

use std::io::{self, Write};

/// How `.img.zst` is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstSettings {
    /// zstd level; changes the bytes.
    pub level: i32,
    /// Worker threads (at least one is used). Does not change the bytes.
    pub threads: u32,
}

/// zstd's own default level, what `zstd -T0` uses: fast enough to be worth a second format.
pub const DEFAULT_LEVEL: i32 = 3;

impl ZstSettings {
    pub fn new(threads: u32) -> Self {
        ZstSettings {
            level: DEFAULT_LEVEL,
            threads,
        }
    }
}

/// A `.zst` encoder of exactly `size` input bytes writing into `out`; call `finish()` on it.
pub fn encoder<W: Write>(
    out: W,
    size: u64,
    s: &ZstSettings,
) -> io::Result<zstd::Encoder<'static, W>> {
    let mut e = zstd::Encoder::new(out, s.level)?;
    e.multithread(s.threads.max(1))?;
    e.include_checksum(true)?;
    e.include_contentsize(true)?;
    e.set_pledged_src_size(Some(size))?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn compress(data: &[u8], threads: u32) -> Vec<u8> {
        let mut e = encoder(Vec::new(), data.len() as u64, &ZstSettings::new(threads)).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn bytes_do_not_depend_on_threads_and_decode() {
        // Several jobs' worth (a job is some MiB at level 3), with a zero run.
        let mut data: Vec<u8> = (0..9_000_000u32)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        data.extend(std::iter::repeat_n(0u8, 5_000_000));
        let one = compress(&data, 1);
        assert_eq!(one, compress(&data, 3));
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(&one[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
    }

    #[test]
    fn a_wrong_pledged_size_is_an_error() {
        let mut e = encoder(Vec::new(), 10, &ZstSettings::new(1)).unwrap();
        e.write_all(b"only nine").unwrap();
        assert!(e.finish().is_err());
    }
}
