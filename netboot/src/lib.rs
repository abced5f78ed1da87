//! Netboot server for imgbuild nodes.
//!
//! The server (proxyDHCP, TFTP, HTTP, iPXE scripts, inventory matching) is not built yet; the
//! `imgbuild netboot` command says so. This crate holds the pieces as they land.

/// The boot clients the server is designed to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Legacy BIOS PXE, chainloading iPXE.
    Bios,
    /// UEFI PXE on x86-64, chainloading `snponly.efi`.
    UefiX64,
    /// UEFI PXE on arm64.
    UefiArm64,
    /// UEFI HTTP Boot.
    UefiHttp,
    /// The Raspberry Pi 4/5 bootloader (option 43 "Raspberry Pi Boot").
    RaspberryPi,
}
