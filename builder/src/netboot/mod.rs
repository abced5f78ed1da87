//! Netboot, the builder's side: the [`artifacts`] a network-booted node needs (built from the
//! same tree as the disk image), the artifact sets the server reads back ([`set`]), the
//! [`catalog`] that answers the netboot server's questions from the inventory, and the systemd
//! unit ([`unit`]); a Pi profile's set also holds the Raspberry Pi TFTP tree ([`pitree`]); both boot paths put
//! the node's network-config on the kernel command line ([`netcfg`]). The boot protocols themselves live in the `imgbuild-netboot` crate.

pub mod artifacts;
pub mod catalog;
pub mod doctor;
pub mod matching;
pub mod neigh;
pub mod netcfg;
pub mod options;
pub mod pitree;
pub mod set;
pub mod state;
pub mod unit;

use std::net::IpAddr;

/// Where the server listens: shared by `netboot serve`, `netboot dnsmasq` and
/// `netboot install-unit`, so the three agree.
#[derive(clap::Args, Debug, Clone)]
pub struct Endpoint {
    /// This host's address on the boot network (what clients are told to reach).
    #[arg(long, value_name = "ADDR")]
    pub listen: IpAddr,
    /// UDP port for TFTP (PXE firmware always uses 69).
    #[arg(long, default_value_t = 69, value_name = "N")]
    pub tftp_port: u16,
    /// TCP port for HTTP (iPXE scripts, kernels, initrds, seeds).
    #[arg(long, default_value_t = 8080, value_name = "N")]
    pub http_port: u16,
}

impl Endpoint {
    /// `http://ADDR:PORT`, as iPXE and cloud-init reach it.
    pub fn base_url(&self) -> String {
        match self.listen {
            IpAddr::V4(a) => format!("http://{a}:{}", self.http_port),
            IpAddr::V6(a) => format!("http://[{a}]:{}", self.http_port),
        }
    }
}

/// The netboot server's state folder (`--state-dir`, the same in `serve` and `arm`).
#[derive(clap::Args, Debug, Clone)]
pub struct StateArgs {
    /// Where the server records which `netboot = "once"` nodes fetched their seed (the
    /// systemd unit's StateDirectory).
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: std::path::PathBuf,
}

/// The default `--state-dir`: systemd's StateDirectory=imgbuild-netboot.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/imgbuild-netboot";

/// Who answers PXE clients' DHCP (`--dhcp`, the same in `serve` and `install-unit`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpMode {
    /// Our proxyDHCP on UDP 67 and 4011, beside the network's own DHCP server (never an
    /// address): for a router's DHCP, or a Pi-hole doing DNS only.
    Proxy,
    /// Another DHCP server sends boot clients here (Pi-hole's DHCP with the snippet of
    /// `imgbuild netboot dnsmasq`).
    None,
}

/// The `--dhcp` option.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DhcpArgs {
    /// `proxy`: answer PXE, UEFI HTTP Boot, iPXE and Raspberry Pi clients on UDP 67 and 4011
    /// beside the network's DHCP server; `none`: Pi-hole's DHCP sends them (see `netboot dnsmasq`).
    #[arg(long, value_enum, default_value_t = DhcpMode::None)]
    pub dhcp: DhcpMode,
}

/// Writes a generated config file (dnsmasq snippet, systemd unit) atomically. An existing file is
/// replaced only if imgbuild wrote it (it holds `marker`); anything else is the user's and stays.
pub fn write_generated(path: &std::path::Path, text: &str, marker: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    if let Ok(old) = std::fs::read_to_string(path)
        && !old.contains(marker)
    {
        anyhow::bail!(
            "{} exists and was not written by imgbuild; not replacing it\n  help: move it away, or choose another -o FILE",
            path.display()
        );
    }
    let mut f = crate::output::PendingFile::create(path)?;
    f.file()
        .write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    f.commit(true)?;
    Ok(())
}
