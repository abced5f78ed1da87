//! Filesystem writers: a [`crate::tree::Tree`] in, a filesystem image out (through a
//! [`crate::disk::region::Sink`]).

pub mod ext4;
pub mod fat;

use serde::Serialize;

/// One entry of a written filesystem, as listed in `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRecord {
    /// Absolute path inside the filesystem (`/etc/hostname`).
    pub path: String,
    /// `file`, `dir`, `symlink`, `hardlink`, `char`, `block`, `fifo`, `socket`.
    pub kind: &'static str,
    /// Permission bits, octal string (`0644`).
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    /// Regular files: size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Regular files: SHA-256 of the content, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlinks: the target; hard links: the path linked to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}
