//! `imgbuild netboot …`: serve nodes over the network, and set up the Pi-hole host for it.

use anyhow::Result;

use super::Context;

pub mod dnsmasq;
pub mod install_unit;
pub mod serve;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Serve the inventory's nodes over TFTP and HTTP (iPXE scripts, kernels, initrds, seeds).
    Serve(serve::Args),
    /// Write the dnsmasq snippet that makes Pi-hole's DHCP send PXE clients to this server.
    Dnsmasq(dnsmasq::Args),
    /// Write the systemd unit that runs `netboot serve` on this host.
    InstallUnit(install_unit::Args),
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    match &args.command {
        Command::Serve(a) => serve::run(a, ctx),
        Command::Dnsmasq(a) => dnsmasq::run(a, ctx),
        Command::InstallUnit(a) => install_unit::run(a, ctx),
    }
}
