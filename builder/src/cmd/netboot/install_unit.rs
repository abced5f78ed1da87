//! `imgbuild netboot install-unit`: the systemd unit that runs `netboot serve` on this host.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::Context;
use crate::netboot::{DhcpArgs, Endpoint, unit};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub endpoint: Endpoint,
    #[command(flatten)]
    pub dhcp: DhcpArgs,
    /// The inventory the service reads (absolute path).
    #[arg(long, default_value = "/etc/imgbuild/nodes.toml", value_name = "FILE")]
    pub inventory: PathBuf,
    /// The secrets file (root's, mode 0600; the service gets a copy as a systemd credential).
    #[arg(
        long,
        default_value = "/etc/imgbuild/secrets.toml",
        value_name = "FILE"
    )]
    pub secrets: PathBuf,
    /// Folder of built images the service serves from.
    #[arg(long, default_value = "/var/lib/imgbuild/images", value_name = "DIR")]
    pub images: PathBuf,
    /// The imgbuild binary the unit runs (default: this one).
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
    /// Where to write the unit.
    #[arg(
        long,
        short,
        default_value = "/etc/systemd/system/imgbuild-netboot.service",
        value_name = "FILE"
    )]
    pub out: PathBuf,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding the imgbuild binary")?,
    };
    let abs = |p: &Path| -> Result<PathBuf> {
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()?.join(p)
        })
    };
    let text = unit::render(&unit::UnitParams {
        binary: &abs(&binary)?,
        endpoint: &args.endpoint,
        dhcp: args.dhcp.dhcp,
        inventory: &abs(&args.inventory)?,
        secrets: &abs(&args.secrets)?,
        images: &abs(&args.images)?,
        profiles_dir: &abs(&ctx.profiles_dir)?,
    });
    crate::netboot::write_generated(
        &args.out,
        &text,
        "Written by `imgbuild netboot install-unit`",
    )?;
    eprintln!(
        "wrote {}\n  start it with: systemctl daemon-reload && systemctl enable --now {}\n  its log: journalctl -u {}",
        args.out.display(),
        unit::NAME,
        unit::NAME
    );
    Ok(())
}
