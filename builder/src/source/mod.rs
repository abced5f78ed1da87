//! Readers that turn inputs (host folders, tarballs, base images, `.deb`s, overlays) into tree
//! entries without unpacking anything onto the host filesystem.

pub mod deb;
pub mod dir;
pub mod overlay;
pub mod raw;
pub mod tar;
mod tar_sparse;
