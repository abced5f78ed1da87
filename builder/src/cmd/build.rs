//! `imgbuild build PROFILE` (and the shortcut `imgbuild PROFILE`).

use std::path::PathBuf;

use anyhow::Result;

use super::{Context, NotImplemented};

/// Options of a build. The same names are used in profiles where they overlap (`--set` reaches
/// any profile key).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The profile to build (`imgbuild profiles list`).
    pub profile: String,
    /// Output folder (default: images/<profile>).
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Refuse to change imgbuild.lock (for CI).
    #[arg(long)]
    pub locked: bool,
    /// Use only the download cache; never touch the network.
    #[arg(long)]
    pub offline: bool,
    /// Override a profile value, e.g. --set k3s.version=v1.36.2+k3s1 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Build twice (other temp folder, other thread count) and compare every output byte.
    #[arg(long)]
    pub verify_repro: bool,
    /// Also write a copy of the image for this node of nodes.toml, with its seed.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let resolved = ctx.profiles().resolve(&args.profile, &args.set)?;
    super::profiles::print_warnings(&resolved);
    if resolved.profile.r#abstract {
        anyhow::bail!(
            "profile {} is abstract (only meant to be extended); build one of the profiles that extend it (`imgbuild profiles list`)",
            resolved.name
        );
    }
    Err(NotImplemented {
        command: "build",
        missing: "the image builder (fetching the base, filesystems, disk image) is not built yet; \
                  `imgbuild profiles show <profile>` shows what would be built",
    }
    .into())
}
