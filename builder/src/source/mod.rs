//! Readers that turn inputs (host folders, tarballs, base images, `.deb`s, overlays) into tree
//! entries without unpacking anything onto the host filesystem.

pub mod dir;
pub mod tar;
pub mod raw;
pub mod deb;
pub mod overlay;
pub mod systemd;
