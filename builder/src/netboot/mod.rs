//! Netboot: what a network-booted node needs, built from the same tree as the disk image.
//! (The boot protocols themselves live in the `imgbuild-netboot` crate.)

pub mod artifacts;
