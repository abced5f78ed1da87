//! `imgbuild netboot arm NODE`: a `netboot = "once"` node that fetched its seed may netboot
//! again. It deletes the node's file in the state folder; a running server looks there on every
//! request, so nothing needs restarting.

use anyhow::{Context as _, Result, bail};

use super::Context;
use crate::netboot::StateArgs;
use crate::netboot::state::StateDir;
use crate::node::inputs::NodeSource;
use crate::node::inventory::{Inventory, NetbootPolicy};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The node (its `name` in the inventory).
    pub node: String,
    #[command(flatten)]
    pub nodes: NodeSource,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn run(args: &Args, _ctx: &Context) -> Result<()> {
    let file = args.nodes.inventory.display().to_string();
    let text = std::fs::read_to_string(&args.nodes.inventory)
        .with_context(|| format!("reading the inventory {file}"))?;
    let inv = Inventory::parse(&text, &file)?;
    let node = inv.node(&args.node, &file)?;
    match node.netboot {
        NetbootPolicy::Once => {}
        NetbootPolicy::Always => {
            eprintln!(
                "node {} has netboot = \"always\" in {file}: it netboots every time, nothing to arm",
                node.name
            );
            return Ok(());
        }
        NetbootPolicy::Never => bail!(
            "node {} has netboot = \"never\" in {file}, so arming it would not let it boot\n  help: set netboot = \"once\" (or \"always\") for it in {file}",
            node.name
        ),
    }
    let state = StateDir::new(&args.state.state_dir);
    if state.arm(&node.name)? {
        eprintln!(
            "node {} is armed: its next netboot is served (once)",
            node.name
        );
    } else {
        eprintln!(
            "node {} was armed already (it has not fetched its seed since)",
            node.name
        );
    }
    Ok(())
}
