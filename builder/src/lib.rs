//! imgbuild: immutable, reproducible k3s node images from declarative profiles.
//!
//! The pipeline is a chain of functions from data to data (see the README's design notes):
//! profile → plan → fetched inputs → [`tree::Tree`] → filesystems → disk image → outputs.
//! Paths, devices, sockets and the clock are touched only by the outer layer: [`cmd`], [`fetch`],
//! [`output`], [`blockdev`], and the functions that open inputs by path ([`build::open_inputs`],
//! the readers' entry points in [`source`], [`node::inputs`]). Formats and protocols (`fs`,
//! `disk`'s tables, `flash`, `blockio`) work on readers, writers and sinks.

#[cfg(target_os = "linux")]
pub mod blockdev;
pub mod blockio;
pub mod boot;
pub mod build;
pub mod civil;
pub mod cli;
pub mod cmd;
pub mod disk;
pub mod fetch;
pub mod flash;
pub mod fs;
pub mod ids;
pub mod netboot;
pub mod node;
pub mod output;
pub mod profile;
pub mod progress;
pub mod source;
pub mod stock;
pub mod tree;
pub mod unpack;
