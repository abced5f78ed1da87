//! Disk images: partition layouts, GPT/MBR, sparse raw output, xz, bmap, qcow2, checksums.
//!
//! [`layout`] describes and places partitions, [`image`] writes table and contents into a sparse
//! raw image, [`outputs`] writes everything around it (the entry point the build command calls:
//! [`outputs::build_outputs`]), [`compare`] tells two builds apart, [`probe`] reads images back.

pub mod blocks;
pub mod bmap;
pub mod compare;
pub mod contents;
pub mod gpt;
pub mod image;
pub mod layout;
pub mod manifest;
pub mod mbr;
pub mod outputs;
pub mod probe;
pub mod xz;
pub mod xzstream;
pub mod zst;
