//! Block maps in bmaptool's XML format 2.0.
//!
//! The map comes from the ranges the image writer actually wrote, not from probing the file for
//! holes (probing gives wrong answers on some filesystems and after copies; see bmaptool issues
//! #53 and #65). `bmaptool copy --bmap` is the oracle in the tests.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::blockio::region::Ranges;

/// Block size of the map: 4 KiB, as bmaptool uses.
pub const BLOCK_SIZE: u64 = 4096;

/// Inclusive block ranges `[first, last]` touched by `written`, merged.
pub fn mapped_blocks(written: &Ranges, block_size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in written.iter() {
        let (first, last) = (s / block_size, (e - 1) / block_size);
        match out.last_mut() {
            Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// A mapped range: first block, last block (inclusive), SHA-256 hex of its bytes.
pub type MappedRange = (u64, u64, String);

/// A finished block map: image size and the mapped ranges with their SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    pub image_size: u64,
    pub block_size: u64,
    /// `(first block, last block, sha256 hex of those bytes)`.
    pub ranges: Vec<MappedRange>,
}

impl BlockMap {
    /// The XML text, with `BmapFileChecksum` filled in as bmaptool checks it: the SHA-256 of the
    /// file with that field's value replaced by 64 `0` characters.
    pub fn to_xml(&self) -> String {
        let blocks = self.image_size.div_ceil(self.block_size);
        let mapped: u64 = self.ranges.iter().map(|(f, l, _)| l - f + 1).sum();
        let mut x = String::new();
        x.push_str("<?xml version=\"1.0\" ?>\n");
        // No double hyphen inside: XML comments may not contain one.
        x.push_str(
            "<!-- Block map of a disk image: the blocks that hold data. Only these need to be\n     \
             written to the target device: bmaptool copy uses this file. Written by imgbuild. -->\n",
        );
        x.push_str("<bmap version=\"2.0\">\n");
        let _ = writeln!(x, "    <ImageSize> {} </ImageSize>", self.image_size);
        let _ = writeln!(x, "    <BlockSize> {} </BlockSize>", self.block_size);
        let _ = writeln!(x, "    <BlocksCount> {blocks} </BlocksCount>");
        let _ = writeln!(x, "    <MappedBlocksCount> {mapped} </MappedBlocksCount>");
        x.push_str("    <ChecksumType> sha256 </ChecksumType>\n");
        let placeholder = "0".repeat(64);
        let _ = writeln!(
            x,
            "    <BmapFileChecksum> {placeholder} </BmapFileChecksum>"
        );
        x.push_str("    <BlockMap>\n");
        for (f, l, sum) in &self.ranges {
            if f == l {
                let _ = writeln!(x, "        <Range chksum=\"{sum}\"> {f} </Range>");
            } else {
                let _ = writeln!(x, "        <Range chksum=\"{sum}\"> {f}-{l} </Range>");
            }
        }
        x.push_str("    </BlockMap>\n</bmap>\n");
        let digest = file_checksum(&x, &placeholder);
        x.replacen(&placeholder, &digest, 1)
    }
}

/// The value of `BmapFileChecksum` in `xml`, found as text (for tests and re-signing).
pub fn stated_checksum(xml: &str) -> Option<&str> {
    xml.split("<BmapFileChecksum> ").nth(1)?.split(' ').next()
}

/// What `BmapFileChecksum` must be for `xml` whose field now holds `stated`: the SHA-256 of the
/// file with that value replaced by 64 `0` characters, as bmaptool computes it.
pub fn file_checksum(xml: &str, stated: &str) -> String {
    let zeroed = xml.replacen(stated, &"0".repeat(64), 1);
    hex::encode(Sha256::digest(zeroed.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_become_block_ranges() {
        let mut r = Ranges::default();
        r.add(0, 512);
        r.add(4096, 4097);
        r.add(20000, 20001);
        r.add(1 << 20, (1 << 20) + 8192);
        assert_eq!(mapped_blocks(&r, 4096), vec![(0, 1), (4, 4), (256, 257)]);
    }

    #[test]
    fn checksum_covers_the_file_with_zeroed_field() {
        let m = BlockMap {
            image_size: 8192,
            block_size: 4096,
            ranges: vec![(0, 0, "ab".repeat(32))],
        };
        let x = m.to_xml();
        let sum = stated_checksum(&x).unwrap();
        let zeroed = x.replacen(sum, &"0".repeat(64), 1);
        assert_eq!(hex::encode(Sha256::digest(zeroed.as_bytes())), sum);
        assert!(x.contains("<Range chksum=\"abab"));
        assert!(x.contains("<MappedBlocksCount> 1 </MappedBlocksCount>"));
    }
}
