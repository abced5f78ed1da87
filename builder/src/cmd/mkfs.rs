//! `imgbuild mkfs`.

use anyhow::Result;

use super::{Context, NotImplemented, Unparsed};

/// Arguments of `imgbuild mkfs` (not parsed until the command exists).
pub type Args = Unparsed;

pub fn run(_args: &Args, _ctx: &Context) -> Result<()> {
    Err(NotImplemented {
        command: "mkfs",
        missing: "the filesystem writers are not built yet",
    }
    .into())
}
