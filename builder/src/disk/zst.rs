//! Reproducible `.zst` as a concatenation of independent zstd frames, one per unit of input (the
//! xz block size).
//!
//! A frame compressed single-threaded at a fixed level depends only on its input, the level and
//! the library version (the bundled zstd of `zstd-sys`), never on the thread count or on the
//! frames around it. So each unit is compressed on its own (on the same workers as the xz
//! blocks, [`crate::disk::blocks`]), an all-zero unit once per length, and a unit compressed by
//! an earlier build is taken from the block cache. Every frame records its content size and an
//! XXH64 checksum, which `zstd -t` checks. zstd's format (RFC 8878 §3.1) says a file is a
//! sequence of frames: the `zstd` CLI, libarchive (Raspberry Pi Imager) and bmaptool decode it as
//! one stream.

use std::io;

use crate::disk::blocks::Block;

/// How `.img.zst` is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstSettings {
    /// zstd level; changes the bytes.
    pub level: i32,
}

/// zstd's own default level, what `zstd -T0` uses: fast enough to be worth a second format.
pub const DEFAULT_LEVEL: i32 = 3;

impl Default for ZstSettings {
    fn default() -> Self {
        ZstSettings {
            level: DEFAULT_LEVEL,
        }
    }
}

/// The magic bytes every zstd frame starts with (RFC 8878 §3.1.1).
pub const FRAME_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Compresses `data` into one frame with its content size and checksum. The returned block's
/// `unpadded` is the frame's length (a frame has no padding).
pub fn compress_frame(data: &[u8], s: &ZstSettings) -> io::Result<Block> {
    let mut c = zstd::bulk::Compressor::new(s.level)?;
    c.include_checksum(true)?;
    c.include_contentsize(true)?;
    let bytes = c.compress(data)?;
    if !bytes.starts_with(&FRAME_MAGIC) {
        return Err(io::Error::other("zstd wrote something other than a frame"));
    }
    Ok(Block {
        unpadded: bytes.len() as u64,
        uncompressed: data.len() as u64,
        bytes,
    })
}

/// The encoder whose bytes the block cache holds. The key changes with it, so an upgrade of
/// zstd never reuses frames of the old one (a test ties it to Cargo.lock).
pub const ENCODER_ID: &str = "zstd 0.13.4 zstd-sys 2.1.2+zstd.1.5.7";

/// The block cache's key of a frame: SHA-256 over the kind, the encoder, the level and the
/// SHA-256 of the input (`input_sha256`).
pub fn frame_key(input_sha256: &[u8; 32], s: &ZstSettings) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"imgbuild zstd frame 1\0");
    h.update(ENCODER_ID.as_bytes());
    h.update(s.level.to_le_bytes());
    h.update(input_sha256);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode_all(stream: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(stream)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    #[test]
    fn concatenated_frames_decode_as_one_stream() {
        let s = ZstSettings::default();
        let a: Vec<u8> = (0..300_000u32)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        let b = vec![0u8; 1 << 20];
        let (fa, fb) = (
            compress_frame(&a, &s).unwrap(),
            compress_frame(&b, &s).unwrap(),
        );
        assert_eq!(fa.uncompressed, a.len() as u64);
        assert_eq!(fa.unpadded, fa.bytes.len() as u64);
        // Holes cost a few bytes per 128 KiB block, not their size.
        assert!(fb.bytes.len() < 100, "{} bytes", fb.bytes.len());
        let mut stream = fa.bytes.clone();
        stream.extend(&fb.bytes);
        let mut want = a.clone();
        want.extend(&b);
        assert!(decode_all(&stream) == want);
        // The same input gives the same frame.
        assert_eq!(compress_frame(&a, &s).unwrap(), fa);
    }

    #[test]
    fn a_frame_records_content_size_and_checksum() {
        let f = compress_frame(b"hello, frames", &ZstSettings::default()).unwrap();
        // Frame header descriptor (RFC 8878 §3.1.1.1.1): bit 2 checksum, single segment with
        // the size, or a size field (bits 6–7) present.
        let fhd = f.bytes[4];
        assert_ne!(fhd & 0b100, 0, "no checksum flag");
        assert!(fhd & 0b10_0000 != 0 || fhd >> 6 != 0, "no content size");
        let mut bad = f.bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut out = Vec::new();
        let r = zstd::stream::read::Decoder::new(&bad[..])
            .unwrap()
            .read_to_end(&mut out);
        assert!(r.is_err(), "a damaged checksum went unnoticed");
    }

    #[test]
    fn the_key_changes_with_the_level_and_the_input() {
        let (x, y) = ([1u8; 32], [2u8; 32]);
        let s = ZstSettings::default();
        let s9 = ZstSettings { level: 9 };
        assert_ne!(frame_key(&x, &s), frame_key(&x, &s9));
        assert_ne!(frame_key(&x, &s), frame_key(&y, &s));
    }

    #[test]
    fn the_encoder_id_names_the_locked_zstd() {
        let lock = include_str!("../../../Cargo.lock");
        let version = |name: &str| {
            lock.split(&format!("name = \"{name}\"\nversion = \""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap()
                .to_string()
        };
        assert_eq!(
            ENCODER_ID,
            format!("zstd {} zstd-sys {}", version("zstd"), version("zstd-sys"))
        );
    }
}
