//! Where a file's bytes are: its extent tree (ext4) or block map (ext2/3), flattened into runs of
//! contiguous blocks. Blocks not in any run are holes (unwritten extents count as holes: they
//! read as zeros).

use super::inode::{EXTENTS_FL, Inode};
use super::{Ext4, Ext4ReadError, Result, le16, le32};
use crate::blockio::ReadAt;

/// `len` blocks of the file from logical block `logical` are at physical block `physical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
}

/// Most extent-tree nodes visited for one file: far above any real file (a depth-2 tree of
/// 4 KiB nodes maps 340 × 340 leaves), low enough that a forged tree cannot stall the read.
const MAX_NODES: usize = 1 << 17;

impl<R: ReadAt> Ext4<R> {
    /// The data runs of a file, directory or slow symlink, ascending, checked to lie inside the
    /// filesystem. Runs may reach past the end of the file (preallocated blocks): readers clip.
    pub fn runs(&self, inode: &Inode) -> Result<Vec<Run>> {
        let mut out = Vec::new();
        if inode.flags & EXTENTS_FL != 0 {
            let mut nodes = 0;
            self.extent_node(inode, &inode.block, None, &mut out, &mut nodes)?;
        } else {
            let mut budget = owned_blocks(inode, self.sb.block_size);
            self.block_map(inode, &mut out, &mut budget)?;
        }
        Ok(out)
    }

    fn extent_node(
        &self,
        inode: &Inode,
        node: &[u8],
        depth_want: Option<u16>,
        out: &mut Vec<Run>,
        nodes: &mut usize,
    ) -> Result<()> {
        let bad = |why: String| {
            Err(Ext4ReadError::inode(
                inode.ino,
                format!("extent tree: {why}"),
            ))
        };
        *nodes += 1;
        if *nodes > MAX_NODES {
            return bad(format!("more than {MAX_NODES} nodes"));
        }
        if le16(node, 0) != 0xF30A {
            return bad("bad header magic".into());
        }
        let (entries, max, depth) = (le16(node, 2), le16(node, 4), le16(node, 6));
        if depth > 5 || depth_want.is_some_and(|d| d != depth) {
            return bad(format!("node depth {depth} is wrong"));
        }
        let cap = (node.len() - 12) / 12;
        if entries > max || usize::from(max) > cap {
            return bad(format!("{entries} entries, {max} max, room for {cap}"));
        }
        for i in 0..usize::from(entries) {
            let e = &node[12 + i * 12..24 + i * 12];
            let logical = u64::from(le32(e, 0));
            if depth > 0 {
                let child = u64::from(le32(e, 4)) | u64::from(le16(e, 8)) << 32;
                if out.last().is_some_and(|r| r.logical + r.len > logical) {
                    return bad(format!("index entry for block {logical} is out of order"));
                }
                let block = self.block(child, inode.ino)?;
                self.extent_node(inode, &block, Some(depth - 1), out, nodes)?;
                continue;
            }
            let raw_len = u64::from(le16(e, 4));
            let (len, unwritten) = if raw_len > 32768 {
                (raw_len - 32768, true)
            } else {
                (raw_len, false)
            };
            let physical = u64::from(le32(e, 8)) | u64::from(le16(e, 6)) << 32;
            if len == 0 {
                return bad(format!("zero-length extent at block {logical}"));
            }
            if out.last().is_some_and(|r| r.logical + r.len > logical) {
                return bad(format!("extent at block {logical} overlaps the one before"));
            }
            self.check_run(inode, physical, len)?;
            if !unwritten {
                push(
                    out,
                    Run {
                        logical,
                        physical,
                        len,
                    },
                );
            }
        }
        Ok(())
    }

    /// A run must lie inside the filesystem (and so inside the device: `open` checked that).
    fn check_run(&self, inode: &Inode, physical: u64, len: u64) -> Result<()> {
        let end = physical.checked_add(len);
        if physical < self.sb.first_data_block || end.is_none_or(|e| e > self.sb.blocks_count) {
            return Err(Ext4ReadError::inode(
                inode.ino,
                format!(
                    "data at blocks {physical}..{} lies past the end of the filesystem ({} blocks)",
                    physical.saturating_add(len),
                    self.sb.blocks_count
                ),
            ));
        }
        Ok(())
    }

    /// ext2/3 block map: 12 direct pointers, then single, double and triple indirect blocks.
    /// Walks only as far as the file's size reaches; zero pointers are holes.
    fn block_map(&self, inode: &Inode, out: &mut Vec<Run>, budget: &mut u64) -> Result<()> {
        let bs = self.sb.block_size;
        let wanted = inode.size.div_ceil(bs);
        let per = bs / 4;
        let ptr = |i: usize| u64::from(le32(&inode.block, i * 4));
        let mut at = 0u64;
        for i in 0..12 {
            if at >= wanted {
                return Ok(());
            }
            self.map_leaf(inode, at, ptr(i), out, budget)?;
            at += 1;
        }
        let mut span = per;
        for level in 0..3 {
            if at >= wanted {
                return Ok(());
            }
            self.indirect(inode, ptr(12 + level), level, (at, wanted), out, budget)?;
            at += span;
            span = span.saturating_mul(per);
        }
        if at < wanted {
            return Err(Ext4ReadError::inode(
                inode.ino,
                format!("size {} is larger than a block map can address", inode.size),
            ));
        }
        Ok(())
    }

    /// An indirect block at `level` (0 = its pointers are data blocks) covering logical blocks
    /// from `at`.
    fn indirect(
        &self,
        inode: &Inode,
        block: u64,
        level: usize,
        (at, wanted): (u64, u64),
        out: &mut Vec<Run>,
        budget: &mut u64,
    ) -> Result<()> {
        if block == 0 {
            return Ok(());
        }
        spend(inode, budget)?;
        let data = self.block(block, inode.ino)?;
        let per = self.sb.block_size / 4;
        let span = per.pow(level as u32);
        for (i, w) in data.chunks_exact(4).enumerate() {
            let start = at + i as u64 * span;
            if start >= wanted {
                break;
            }
            let p = u64::from(le32(w, 0));
            if level == 0 {
                self.map_leaf(inode, start, p, out, budget)?;
            } else {
                self.indirect(inode, p, level - 1, (start, wanted), out, budget)?;
            }
        }
        Ok(())
    }

    fn map_leaf(
        &self,
        inode: &Inode,
        logical: u64,
        physical: u64,
        out: &mut Vec<Run>,
        budget: &mut u64,
    ) -> Result<()> {
        if physical == 0 {
            return Ok(());
        }
        spend(inode, budget)?;
        self.check_run(inode, physical, 1)?;
        push(
            out,
            Run {
                logical,
                physical,
                len: 1,
            },
        );
        Ok(())
    }
}

/// Appends a run, merging it into the previous one when both are contiguous.
fn push(out: &mut Vec<Run>, r: Run) {
    if let Some(last) = out.last_mut()
        && last.logical + last.len == r.logical
        && last.physical + last.len == r.physical
    {
        last.len += r.len;
        return;
    }
    out.push(r);
}

/// Blocks the inode says it owns (`i_blocks`): a block map pointing at more is forged, and
/// stopping there bounds the walk of a map whose indirect blocks point at themselves.
fn owned_blocks(inode: &Inode, block_size: u64) -> u64 {
    const HUGE_FILE_FL: u32 = 0x40000;
    let raw = u64::from(le32(&inode.raw, 0x1C)) | u64::from(le16(&inode.raw, 0x74)) << 32;
    if inode.flags & HUGE_FILE_FL != 0 {
        raw
    } else {
        raw * 512 / block_size
    }
}

fn spend(inode: &Inode, budget: &mut u64) -> Result<()> {
    if *budget == 0 {
        return Err(Ext4ReadError::inode(
            inode.ino,
            "the block map points at more blocks than the inode owns (i_blocks)",
        ));
    }
    *budget -= 1;
    Ok(())
}
