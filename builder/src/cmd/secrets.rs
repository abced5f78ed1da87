//! `imgbuild secrets`.

use anyhow::Result;

use super::{Context, NotImplemented, Unparsed};

/// Arguments of `imgbuild secrets` (not parsed until the command exists).
pub type Args = Unparsed;

pub fn run(_args: &Args, _ctx: &Context) -> Result<()> {
    Err(NotImplemented {
        command: "secrets",
        missing: "the secrets file is not built yet",
    }
    .into())
}
