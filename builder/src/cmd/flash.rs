//! `imgbuild flash`.

use anyhow::Result;

use super::{Context, NotImplemented, Unparsed};

/// Arguments of `imgbuild flash` (not parsed until the command exists).
pub type Args = Unparsed;

pub fn run(_args: &Args, _ctx: &Context) -> Result<()> {
    Err(NotImplemented {
        command: "flash",
        missing: "flashing (writing an image to an SD card or SSD with the node's seed, then verifying it) arrives with the Raspberry Pi and flashing work; for now write images/<profile>/*.img with bmaptool or dd",
    }
    .into())
}
