//! `imgbuild seed PROFILE --node NAME -o DIR`: a node's cloud-init NoCloud seed.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::{Context, ProfileSelection};
use crate::node::inputs::NodeSource;
use crate::node::seed;
use crate::output::OutputDir;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub profile: ProfileSelection,
    /// The node, by its name in the inventory.
    #[arg(long, value_name = "NAME")]
    pub node: String,
    #[command(flatten)]
    pub nodes: NodeSource,
    /// Output folder: new, empty, or one imgbuild wrote before.
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    /// Any text: a new nonce gives the node a new cloud-init instance-id, so a node re-seeded in
    /// place runs its first boot again.
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub nonce: String,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let resolved = args.profile.resolve(ctx)?;
    let inputs = args.nodes.load(&resolved, &args.node, &super::env_var)?;
    let seed = seed::render(
        &resolved,
        &inputs.node,
        &inputs.secrets,
        &args.nonce,
        &inputs.templates,
    )?;
    let out = OutputDir::prepare(&args.out)?;
    restrict(out.path(), 0o700)?;
    for (name, content) in seed.files() {
        let mut f = out.create(name)?;
        f.file()
            .write_all(content.as_bytes())
            .with_context(|| format!("writing {}", f.dest().display()))?;
        let dest = f.commit(true)?;
        // The seed holds credentials: owner-only, like the folder it is in.
        restrict(&dest, 0o600)?;
    }
    eprintln!(
        "wrote the seed of node {} (profile {}) to {}: meta-data, network-config, user-data\n\
         it holds the node's credentials; copy it to the node's boot partition and delete it",
        inputs.node.name,
        resolved.name,
        out.path().display()
    );
    Ok(())
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> Result<()> {
    Ok(())
}
