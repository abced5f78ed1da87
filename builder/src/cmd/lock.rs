//! `imgbuild lock`.

use anyhow::Result;

use super::{Context, NotImplemented, Unparsed};

/// Arguments of `imgbuild lock` (not parsed until the command exists).
pub type Args = Unparsed;

pub fn run(_args: &Args, _ctx: &Context) -> Result<()> {
    Err(NotImplemented {
        command: "lock",
        missing: "the lockfile (pinned inputs) is not built yet",
    }
    .into())
}
