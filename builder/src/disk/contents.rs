//! Partition contents backed by our filesystem writers: a [`Tree`] written as ext4 or FAT32,
//! with the identifiers the image seed derives for the partition and the image's epoch.

use std::sync::Arc;

use crate::blockio::region::Sink;
use crate::disk::layout::{ContentError, ContentInfo, PartitionContent, WriteParams};
use crate::fs::{FileRecord, ext4, fat};
use crate::progress::Progress;
use crate::tree::Tree;

fn epoch_i64(epoch: u64) -> Result<i64, ContentError> {
    i64::try_from(epoch).map_err(|_| format!("SOURCE_DATE_EPOCH {epoch} is out of range").into())
}

/// A tree written as ext4.
pub struct Ext4Content {
    pub tree: Arc<Tree>,
    /// Filesystem label (at most 16 bytes).
    pub label: Option<String>,
}

impl Ext4Content {
    fn params(&self, p: Option<&WriteParams>) -> Result<ext4::Ext4Params, ContentError> {
        Ok(ext4::Ext4Params {
            uuid: p.map(|p| p.ids.uuid.0).unwrap_or_default(),
            hash_seed: p.map(|p| p.ids.hash_seed.0).unwrap_or_default(),
            label: self.label.clone(),
            epoch: p.map(|p| epoch_i64(p.epoch)).transpose()?.unwrap_or(0),
        })
    }
}

impl PartitionContent for Ext4Content {
    fn required_size(&self) -> Result<u64, ContentError> {
        // Identifiers and times do not change the size.
        Ok(ext4::required_size(&self.tree, &self.params(None)?)?)
    }

    fn auto_size(&self, required: u64) -> u64 {
        ext4::auto_size(required)
    }

    fn write(
        &self,
        p: &WriteParams,
        sink: &mut dyn Sink,
        progress: &Progress,
    ) -> Result<Vec<FileRecord>, ContentError> {
        // ext4 takes whole 4 KiB blocks; a partition of an odd sector count keeps a tail unused.
        let size = p.size / 4096 * 4096;
        Ok(ext4::write(
            &self.tree,
            size,
            &self.params(Some(p))?,
            sink,
            progress,
        )?)
    }

    fn describe(&self) -> ContentInfo {
        ContentInfo {
            fs: "ext4",
            detail: None,
            label: self.label.clone(),
            label_max: Some(16),
        }
    }
}

/// A tree written as FAT32 (ESP, Raspberry Pi boot partition).
pub struct FatContent {
    pub tree: Arc<Tree>,
    /// Volume label (at most 11 characters, stored upper-case).
    pub label: String,
}

impl FatContent {
    fn params(&self, p: Option<&WriteParams>) -> Result<fat::FatParams, ContentError> {
        Ok(fat::FatParams {
            volume_id: p.map(|p| p.ids.volume_id).unwrap_or(0),
            label: self.label.clone(),
            epoch: p.map(|p| epoch_i64(p.epoch)).transpose()?.unwrap_or(0),
        })
    }
}

impl PartitionContent for FatContent {
    fn required_size(&self) -> Result<u64, ContentError> {
        Ok(fat::required_size(&self.tree, &self.params(None)?)?)
    }

    fn auto_size(&self, required: u64) -> u64 {
        fat::auto_size(required)
    }

    fn write(
        &self,
        p: &WriteParams,
        sink: &mut dyn Sink,
        progress: &Progress,
    ) -> Result<Vec<FileRecord>, ContentError> {
        Ok(fat::write(
            &self.tree,
            p.size,
            &self.params(Some(p))?,
            sink,
            progress,
        )?)
    }

    fn describe(&self) -> ContentInfo {
        ContentInfo {
            fs: "vfat",
            detail: Some("FAT32".into()),
            label: (!self.label.is_empty()).then(|| self.label.to_ascii_uppercase()),
            label_max: Some(11),
        }
    }
}
