//! Board boot setup: what goes on the boot partition (ESP or Raspberry Pi firmware partition).

pub mod efi;
pub mod rpi;
