//! `imgbuild netboot …`: build a profile's netboot artifacts, serve nodes over the network, and
//! set up the Pi-hole host for it. One module per subcommand.

use anyhow::Result;

use super::Context;
use crate::node::inputs::NodeSource;
use crate::node::inventory::Node;
use crate::node::seed::Seed;

pub mod arm;
pub mod build;
pub mod dnsmasq;
pub mod doctor;
pub mod install_unit;
pub mod serve;

/// Arguments of `imgbuild netboot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Build a profile's netboot artifacts (kernel, initrds with the root image, iPXE binaries,
    /// netboot.json) into images/<profile>/netboot.
    Build(build::Args),
    /// Serve the inventory's nodes over TFTP and HTTP (iPXE scripts, kernels, initrds, seeds).
    Serve(serve::Args),
    /// Let a `netboot = "once"` node netboot again (works while `netboot serve` runs).
    Arm(arm::Args),
    /// Write the dnsmasq snippet that makes Pi-hole's DHCP send PXE clients to this server.
    Dnsmasq(dnsmasq::Args),
    /// Write the systemd unit that runs `netboot serve` on this host.
    InstallUnit(install_unit::Args),
    /// Check this host for what would stop boot clients reaching `netboot serve` (held ports,
    /// Pi-hole settings, the interface, firewall rules, missing artifacts); takes serve's options.
    /// Exit 0: clean, 1: problems found, 2: bad input.
    Doctor(doctor::Args),
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    match &args.command {
        Command::Build(a) => build::run(a, ctx),
        Command::Serve(a) => serve::run(a, ctx),
        Command::Arm(a) => arm::run(a, ctx),
        Command::Dnsmasq(a) => dnsmasq::run(a, ctx),
        Command::InstallUnit(a) => install_unit::run(a, ctx),
        Command::Doctor(a) => doctor::run(a, ctx),
    }
}

/// The node's seed as `netboot serve` serves it (`netboot build` keys a Pi's seed URL by it,
/// `netboot doctor` checks that it renders):
/// rendered with no nonce, so both commands get the same bytes; held in memory only.
pub(crate) fn node_seed(nodes: &NodeSource, ctx: &Context, node: &Node) -> Result<Seed> {
    let resolved = ctx.resolve_concrete(&node.profile, &[])?;
    let inputs = nodes.load(&resolved, &node.name, &crate::cmd::env_var)?;
    crate::netboot::options::render_seed(&resolved, &inputs)
}
