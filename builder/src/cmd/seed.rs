//! `imgbuild seed PROFILE --node NAME -o DIR`: a node's cloud-init NoCloud seed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use super::{Context, NodeSelection};
use crate::node::seed;
use crate::output::OutputDir;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub node: NodeSelection,
    /// Output folder: new, empty, or one imgbuild wrote before.
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    /// Any text: a new nonce gives the node a new cloud-init instance-id, so a node re-seeded in
    /// place runs its first boot again.
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub nonce: String,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let (resolved, inputs) = args.node.load(ctx)?;
    let seed = seed::render(
        &resolved,
        &inputs.node,
        &inputs.secrets,
        &args.nonce,
        &inputs.templates,
    )?;
    let out = OutputDir::prepare(&args.out)?;
    crate::output::set_mode(out.path(), 0o700)?;
    for (name, content) in seed.files() {
        let mut f = out.create(name)?;
        f.file()
            .write_all(content.as_bytes())
            .with_context(|| format!("writing {}", f.dest().display()))?;
        let dest = f.commit(true)?;
        // The seed holds credentials: owner-only, like the folder it is in.
        crate::output::set_mode(&dest, 0o600)?;
    }
    eprintln!(
        "wrote the seed of node {} (profile {}) to {}: meta-data, network-config, user-data\n\
         it holds the node's credentials; {}",
        inputs.node.name,
        resolved.name,
        out.path().display(),
        where_it_goes(&resolved, &out.path().display().to_string())
    );
    Ok(())
}

/// What to do with the seed, for the kind of machine the profile is for.
fn where_it_goes(resolved: &crate::profile::Resolved, dir: &str) -> String {
    if resolved.board() == crate::profile::Board::Cloud {
        format!(
            "a cloud VM reads it from its provider, not a boot partition: pass the user-data \
             (`imgbuild userdata {} --node NAME`), or attach it as a NoCloud disk \
             (`cloud-localds seed.img {dir}/user-data {dir}/meta-data`, or an ISO labelled \
             cidata) or an OpenStack config drive; delete it afterwards",
            resolved.name
        )
    } else {
        "copy it to the node's boot partition (or flash with `imgbuild flash … --node NAME`, \
         which writes it there) and delete it"
            .to_string()
    }
}
