//! `imgbuild netboot doctor`: with serve's own options, why boot clients would not reach it.

use std::path::PathBuf;

use anyhow::Result;

use super::Context;
use crate::cmd::CheckFailed;
use crate::netboot::doctor::{Level, host};
use crate::netboot::options::ServeArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The same options as `netboot serve`: what it would serve, where and how.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// The boot network's interface. Default: the one with the --listen address.
    #[arg(long, value_name = "NAME")]
    pub interface: Option<String>,
    /// Pi-hole v6's configuration (read for misc.etc_dnsmasq_d and dhcp.active).
    #[arg(long, default_value = "/etc/pihole/pihole.toml", value_name = "FILE")]
    pub pihole_config: PathBuf,
    /// One JSON document on stdout instead of lines.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let opts = host::Options {
        serve: &args.serve,
        interface: args.interface.as_deref(),
        pihole_config: &args.pihole_config,
    };
    let findings = host::examine(&opts, &mut |node| {
        super::node_seed(&args.serve.nodes, ctx, node)
    })?;
    let problems = findings
        .iter()
        .filter(|f| f.level == Level::Problem)
        .count();
    if args.json {
        let doc = serde_json::json!({ "clean": problems == 0, "findings": findings });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for f in &findings {
            println!("{f}");
        }
    }
    if problems > 0 {
        return Err(CheckFailed(format!("netboot doctor: {problems} problem(s) found")).into());
    }
    eprintln!("netboot doctor: clean");
    Ok(())
}
