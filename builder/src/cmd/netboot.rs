//! `imgbuild netboot`.

use anyhow::Result;

use super::{Context, NotImplemented, Unparsed};

/// Arguments of `imgbuild netboot` (not parsed until the command exists).
pub type Args = Unparsed;

pub fn run(_args: &Args, _ctx: &Context) -> Result<()> {
    Err(NotImplemented {
        command: "netboot",
        missing: "the PXE/HTTP netboot server (proxyDHCP, TFTP, HTTP, iPXE, Raspberry Pi network boot) is not built yet",
    }
    .into())
}
