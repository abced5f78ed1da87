//! Disk images: partition layouts, GPT/MBR, sparse raw output, xz, bmap, qcow2, checksums.

pub mod region;
