//! A node's boot partition, made during the flash: the image's boot FAT read into a tree, the
//! node's seed added, and the same FAT writer the build uses writing it again with the same
//! size, label, volume serial and timestamps. So the flashed partition is byte for byte the one
//! `imgbuild build --node` puts in `nodes/<image>-<node>.img`, and no per-node copy of the image
//! ever exists on the host.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::blockio::region::Sink;
use crate::fs::fat::{self, FatParams};
use crate::node::seed::Seed;
use crate::progress::Progress;
use crate::source::raw;
use crate::tree::Tree;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    #[error(
        "partition {number} of the image is not a FAT32 filesystem (a node's seed goes into the FAT boot partition)"
    )]
    NotFat32 { number: u32 },
    #[error("reading the image's boot partition: {0}")]
    Read(String),
    #[error("adding the seed: {0}")]
    Seed(String),
}

/// The rebuilt boot filesystem, ready to be written.
pub struct NodeBoot {
    tree: Tree,
    size: u64,
    params: FatParams,
}

/// Volume serial and label from a FAT32 boot sector.
fn identity(sector: &[u8; 512], number: u32) -> Result<(u32, String), BootError> {
    if &sector[82..87] != b"FAT32" || sector[510..512] != [0x55, 0xAA] {
        return Err(BootError::NotFat32 { number });
    }
    let id = u32::from_le_bytes(sector[67..71].try_into().expect("4 bytes"));
    let label = String::from_utf8_lossy(&sector[71..82]).trim().to_string();
    Ok((
        id,
        if label == "NO NAME" {
            String::new()
        } else {
            label
        },
    ))
}

impl NodeBoot {
    /// Reads partition `number` (`offset`, `size` bytes) of `image` (a file holding at least that
    /// partition at that offset) and adds `seed`. `epoch` is the image's SOURCE_DATE_EPOCH when
    /// its manifest says; otherwise the files' own timestamps are kept.
    pub fn new(
        image: &Path,
        number: u32,
        offset: u64,
        size: u64,
        seed: &Seed,
        epoch: Option<i64>,
    ) -> Result<NodeBoot, BootError> {
        let read = |e: std::io::Error| BootError::Read(e.to_string());
        let mut f = std::fs::File::open(image).map_err(read)?;
        let mut sector = [0u8; 512];
        f.seek(SeekFrom::Start(offset)).map_err(read)?;
        f.read_exact(&mut sector).map_err(read)?;
        let (volume_id, label) = identity(&sector, number)?;
        let part = crate::blockio::Slice {
            inner: std::sync::Arc::new(f),
            base: offset,
            len: size,
        };
        let mut tree = raw::read_fat(part, &image.display().to_string(), number)
            .map_err(|e| BootError::Read(e.to_string()))?;
        // Every timestamp our FAT writer puts down is the epoch (to FAT's 2 s).
        let epoch = epoch.unwrap_or_else(|| tree.iter().map(|(_, e)| e.mtime).max().unwrap_or(0));
        seed.add_to(&mut tree, epoch)
            .map_err(|e| BootError::Seed(e.to_string()))?;
        Ok(NodeBoot {
            tree,
            size,
            params: FatParams {
                volume_id,
                label,
                epoch,
            },
        })
    }

    /// Writes the filesystem into `sink` (offsets relative to the partition).
    pub fn write(&self, sink: &mut dyn Sink) -> Result<(), String> {
        fat::write(
            &self.tree,
            self.size,
            &self.params,
            sink,
            &Progress::quiet(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockio::region::VecSink;
    use crate::tree::{Content, Entry, TreePath};

    /// Our writer's FAT, read back and written again with the seed, equals writing the tree with
    /// the seed in the first place.
    #[test]
    fn rebuilt_partition_equals_building_with_the_seed() {
        let epoch = 1_700_000_001;
        let mut tree = Tree::new();
        let p = |s: &str| TreePath::new(s).unwrap();
        tree.insert(p("EFI"), Entry::dir(0o755).at(epoch)).unwrap();
        tree.insert(p("EFI/BOOT"), Entry::dir(0o755).at(epoch))
            .unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        tree.insert(
            p("EFI/BOOT/BOOTX64.EFI"),
            Entry::file(0o644, Content::bytes(big)).at(epoch),
        )
        .unwrap();
        tree.insert(
            p("config.txt"),
            Entry::file(0o644, Content::bytes(b"x=1\n".to_vec())).at(epoch),
        )
        .unwrap();
        let size = 40 << 20;
        let params = FatParams {
            volume_id: 0x1234_5678,
            label: "IMGBUILD".into(),
            epoch,
        };
        let mut shared = VecSink::default();
        fat::write(&tree, size, &params, &mut shared, &Progress::quiet()).unwrap();
        shared.buf.resize(size as usize, 0);
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("boot.img");
        let mut padded = vec![0u8; 4096];
        padded.extend_from_slice(&shared.buf);
        std::fs::write(&img, &padded).unwrap();

        let seed = Seed {
            user_data: "#cloud-config\n".into(),
            meta_data: "instance-id: n1\n".into(),
            network_config: "version: 2\n".into(),
        };
        let nb = NodeBoot::new(&img, 1, 4096, size, &seed, None).unwrap();
        let mut rebuilt = VecSink::default();
        nb.write(&mut rebuilt).unwrap();
        rebuilt.buf.resize(size as usize, 0);

        seed.add_to(&mut tree, epoch).unwrap();
        let mut want = VecSink::default();
        fat::write(&tree, size, &params, &mut want, &Progress::quiet()).unwrap();
        want.buf.resize(size as usize, 0);
        assert!(
            rebuilt.buf == want.buf,
            "rebuilt FAT differs from the one built with the seed"
        );
    }
}
