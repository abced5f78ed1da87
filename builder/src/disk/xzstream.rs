//! `.xz` streams put together block by block.
//!
//! liblzma's multithreaded encoder compresses every block of `block_size` input bytes on its
//! own, so a block's bytes depend only on its input and the settings, never on where it sits in
//! the stream or on the thread count. That lets us compress each block separately (and reuse a
//! block we compressed before: an all-zero block, or one from the block cache) and still write
//! exactly the stream `xz -T0 --block-size=N` writes ([`crate::disk::blocks`] runs the blocks
//! on worker threads). The blocks themselves still come from
//! liblzma: we compress one block as a stream of its own and cut the block out of it. No crate
//! exposes block-level output of liblzma's encoder without `unsafe`, and the container around
//! the blocks (stream header, index, footer; xz file format 1.2.1 §2, §4) is 60 lines, written
//! here.

use std::io::{self, Write};

use crate::disk::blocks::Block;
use crate::disk::xz::{self, MAGIC, XzSettings};

/// Stream flags: no flags, check type 4 (CRC64), as [`xz::encoder`] writes.
const STREAM_FLAGS: [u8; 2] = [0x00, 0x04];
const FOOTER_MAGIC: [u8; 2] = *b"YZ";
const HEADER_LEN: usize = 12;
const FOOTER_LEN: usize = 12;

fn bad(what: &str) -> io::Error {
    io::Error::other(format!("liblzma wrote an unexpected .xz stream: {what}"))
}

/// Compresses `data` (at most one block's worth, not empty) into one block: block header,
/// compressed data, padding to 4 bytes and the CRC64 check, as liblzma's multithreaded encoder
/// writes it.
pub fn compress_block(data: &[u8], s: &XzSettings) -> io::Result<Block> {
    if data.is_empty() || data.len() as u64 > s.block_size {
        return Err(io::Error::other(format!(
            "an xz block holds 1 to {} bytes, not {}",
            s.block_size,
            data.len()
        )));
    }
    // One worker thread: the bytes are the same, and the caller runs blocks in parallel.
    let one = XzSettings { threads: 1, ..*s };
    let mut enc = xz::encoder(Vec::new(), &one)?;
    enc.write_all(data)?;
    let stream = enc.finish()?;
    let block = cut_single_block(&stream)?;
    if block.uncompressed != data.len() as u64 {
        return Err(bad("the block does not hold the whole input"));
    }
    Ok(block)
}

/// The one block of a one-block stream.
fn cut_single_block(stream: &[u8]) -> io::Result<Block> {
    if stream.len() < HEADER_LEN + FOOTER_LEN || !stream.starts_with(&MAGIC) {
        return Err(bad("too short or no magic"));
    }
    if stream[6..8] != STREAM_FLAGS || !stream.ends_with(&FOOTER_MAGIC) {
        return Err(bad("other stream flags"));
    }
    let footer = &stream[stream.len() - FOOTER_LEN..];
    let backward = u32::from_le_bytes(footer[4..8].try_into().expect("4 bytes"));
    let index_len = (backward as usize + 1) * 4;
    let index_start = (stream.len() - FOOTER_LEN)
        .checked_sub(index_len)
        .filter(|&s| s >= HEADER_LEN)
        .ok_or_else(|| bad("index size"))?;
    let index = &stream[index_start..stream.len() - FOOTER_LEN];
    let mut p = 1;
    let fields = (0..3)
        .map(|_| xz::varint(index, &mut p))
        .collect::<Option<Vec<u64>>>();
    let (count, unpadded, uncompressed) = match (index.first(), fields.as_deref()) {
        (Some(0), Some(&[c, u, n])) => (c, u, n),
        _ => return Err(bad("index")),
    };
    let bytes = stream[HEADER_LEN..index_start].to_vec();
    if count != 1 || unpadded.div_ceil(4) * 4 != bytes.len() as u64 {
        return Err(bad("not exactly one block"));
    }
    Ok(Block {
        bytes,
        unpadded,
        uncompressed,
    })
}

fn write_vli(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes an `.xz` stream from blocks: the stream header at once, each block as it is pushed,
/// the index and footer at [`StreamWriter::finish`].
pub struct StreamWriter<W: Write> {
    out: W,
    records: Vec<(u64, u64)>,
}

impl<W: Write> StreamWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&MAGIC)?;
        out.write_all(&STREAM_FLAGS)?;
        out.write_all(&crc32fast::hash(&STREAM_FLAGS).to_le_bytes())?;
        Ok(StreamWriter {
            out,
            records: Vec::new(),
        })
    }

    pub fn push(&mut self, block: &Block) -> io::Result<()> {
        self.out.write_all(&block.bytes)?;
        self.records.push((block.unpadded, block.uncompressed));
        Ok(())
    }

    /// Writes the index and the footer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let mut index = vec![0u8];
        write_vli(&mut index, self.records.len() as u64);
        for &(unpadded, uncompressed) in &self.records {
            write_vli(&mut index, unpadded);
            write_vli(&mut index, uncompressed);
        }
        index.resize(index.len().div_ceil(4) * 4, 0);
        let crc = crc32fast::hash(&index);
        index.extend(crc.to_le_bytes());
        let backward = u32::try_from(index.len() / 4 - 1)
            .map_err(|_| io::Error::other("xz index too large"))?;
        let mut tail = backward.to_le_bytes().to_vec();
        tail.extend(STREAM_FLAGS);
        self.out.write_all(&index)?;
        self.out.write_all(&crc32fast::hash(&tail).to_le_bytes())?;
        self.out.write_all(&tail)?;
        self.out.write_all(&FOOTER_MAGIC)?;
        Ok(self.out)
    }
}

/// The encoder whose bytes the block cache holds. The key changes with it, so an upgrade of
/// liblzma never reuses blocks of the old one (a test ties it to Cargo.lock).
pub const ENCODER_ID: &str = "liblzma-sys 0.4.9 static";

/// The block cache's key: SHA-256 over the kind, the encoder, the settings that change the bytes
/// and the SHA-256 of the input (`input_sha256`).
pub fn block_key(input_sha256: &[u8; 32], s: &XzSettings) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"imgbuild xz block 1\0");
    h.update(ENCODER_ID.as_bytes());
    h.update(s.preset.to_le_bytes());
    h.update(s.block_size.to_le_bytes());
    h.update(STREAM_FLAGS);
    h.update(input_sha256);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> XzSettings {
        XzSettings {
            preset: 1,
            block_size: 1 << 16,
            threads: 2,
        }
    }

    #[test]
    fn blocks_spliced_equal_liblzmas_own_stream() {
        let s = settings();
        // Data, zeros, data, and a short last block.
        let mut data: Vec<u8> = (0..150_000u32).map(|i| (i * 31 % 253) as u8).collect();
        data.extend(std::iter::repeat_n(0u8, 300_000));
        data.extend((0..9_999u32).map(|i| (i % 7) as u8));
        let mut whole = xz::encoder(Vec::new(), &s).unwrap();
        whole.write_all(&data).unwrap();
        let want = whole.finish().unwrap();

        let mut w = StreamWriter::new(Vec::new()).unwrap();
        for chunk in data.chunks(s.block_size as usize) {
            w.push(&compress_block(chunk, &s).unwrap()).unwrap();
        }
        assert_eq!(w.finish().unwrap(), want);
    }

    #[test]
    fn an_empty_stream_equals_liblzmas() {
        let want = xz::encoder(Vec::new(), &settings())
            .unwrap()
            .finish()
            .unwrap();
        let got = StreamWriter::new(Vec::new()).unwrap().finish().unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn a_block_too_large_or_empty_is_an_error() {
        let s = settings();
        assert!(compress_block(&[], &s).is_err());
        assert!(compress_block(&vec![1u8; (1 << 16) + 1], &s).is_err());
        assert!(compress_block(&vec![1u8; 1 << 16], &s).is_ok());
    }

    #[test]
    fn the_encoder_id_names_the_locked_liblzma_sys() {
        let lock = include_str!("../../../Cargo.lock");
        let version = lock
            .split("name = \"liblzma-sys\"\nversion = \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap();
        assert_eq!(ENCODER_ID, format!("liblzma-sys {version} static"));
    }

    #[test]
    fn vli_round_trips() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX >> 1] {
            let mut b = Vec::new();
            write_vli(&mut b, v);
            let mut p = 0;
            assert_eq!(xz::varint(&b, &mut p), Some(v));
            assert_eq!(p, b.len());
        }
    }
}
