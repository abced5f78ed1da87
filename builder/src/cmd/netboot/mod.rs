//! `imgbuild netboot …`: one module per subcommand.

use anyhow::Result;

use super::Context;

pub mod build;

/// Arguments of `imgbuild netboot`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Build a profile's netboot artifacts (kernel, initrds with the root image, iPXE binaries,
    /// netboot.json) into images/<profile>/netboot.
    Build(build::Args),
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    match &args.command {
        Command::Build(a) => build::run(a, ctx),
    }
}
