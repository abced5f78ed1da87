//! `imgbuild netboot dnsmasq [-o FILE]`: the snippet for Pi-hole's DHCP.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use super::Context;
use crate::netboot::Endpoint;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// Write the snippet here (e.g. /etc/dnsmasq.d/50-imgbuild-netboot.conf) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn run(args: &Args, _ctx: &Context) -> Result<()> {
    let IpAddr::V4(addr) = args.endpoint.listen else {
        bail!(
            "--listen {} is IPv6; PXE over DHCPv4 needs this host's IPv4 address",
            args.endpoint.listen
        );
    };
    if args.endpoint.tftp_port != 69 {
        bail!(
            "--tftp-port {}: PXE firmware always asks UDP port 69, and DHCP cannot say otherwise\n  help: serve TFTP on 69 for real clients (other ports are for tests)",
            args.endpoint.tftp_port
        );
    }
    let text = imgbuild_netboot::dnsmasq::snippet(addr, args.endpoint.http_port);
    match &args.out {
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
        Some(path) => {
            crate::netboot::write_generated(path, &text, "Written by `imgbuild netboot dnsmasq`")?;
            eprintln!("wrote {}", path.display());
        }
    }
    eprintln!("{}", pihole_note());
    Ok(())
}

/// Pi-hole v6 ignores /etc/dnsmasq.d unless misc.etc_dnsmasq_d is on: say whether it is.
fn pihole_note() -> String {
    let enable =
        "sudo pihole-FTL --config misc.etc_dnsmasq_d true && sudo systemctl restart pihole-FTL";
    match Command::new("pihole-FTL").args(["--config", "misc.etc_dnsmasq_d"]).output() {
        Ok(out) if out.status.success() => match String::from_utf8_lossy(&out.stdout).trim() {
            "true" => "Pi-hole reads /etc/dnsmasq.d (misc.etc_dnsmasq_d is true): put the snippet there and restart pihole-FTL".into(),
            other => format!("Pi-hole ignores /etc/dnsmasq.d (misc.etc_dnsmasq_d is {other:?}); turn it on:\n  {enable}"),
        },
        _ => format!(
            "on a Pi-hole v6 host, /etc/dnsmasq.d is read only with misc.etc_dnsmasq_d on (off by default):\n  {enable}"
        ),
    }
}
