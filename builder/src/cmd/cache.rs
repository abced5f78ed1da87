//! `imgbuild cache`.

use anyhow::Result;

use super::{Context, NotImplemented, Unparsed};

/// Arguments of `imgbuild cache` (not parsed until the command exists).
pub type Args = Unparsed;

pub fn run(_args: &Args, _ctx: &Context) -> Result<()> {
    Err(NotImplemented {
        command: "cache",
        missing: "the download cache is not built yet",
    }
    .into())
}
