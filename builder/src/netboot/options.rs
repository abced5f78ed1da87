//! The options of `imgbuild netboot serve`, here so `netboot doctor` takes exactly the same
//! command line and checks what that server would do.

use std::path::PathBuf;

use super::{DhcpArgs, Endpoint, StateArgs};
use crate::node::inputs::{NodeInputs, NodeSource};
use crate::node::seed::{self, Seed};
use crate::profile::Resolved;

/// What to serve and how: the set, the inventory, the address and ports, the limits.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// The inventory (its nodes with a `mac` are served) and the secrets file.
    #[command(flatten)]
    pub nodes: NodeSource,
    /// Folder of built images: a profile's netboot set is <DIR>/<profile>/netboot.
    #[arg(long, default_value = "images", value_name = "DIR")]
    pub images: PathBuf,
    /// What a machine whose MAC is not in the inventory gets: `ignore` (iPXE exits to the next
    /// boot device) or `shell` (the iPXE shell, for debugging at its console).
    #[arg(long, value_enum, default_value_t = UnknownArg::Ignore)]
    pub unknown: UnknownArg,
    /// Boot machines whose MAC is not in the inventory with this profile instead (each as node
    /// `<profile>-<MAC as 12 hex digits>`, with its own seed); --unknown then never applies.
    #[arg(long, value_name = "PROFILE")]
    pub unknown_profile: Option<String>,
    /// How long a node's seed URL works after its boot script was served.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub seed_ttl: u64,
    /// TFTP transfers at once; more get "server busy".
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_transfers: usize,
    /// TFTP transfers at once from one client address; more get "server busy". Default: only
    /// --max-transfers applies.
    #[arg(long, value_name = "N")]
    pub max_transfers_per_client: Option<usize>,
    /// TFTP bytes per second one client address gets, shared by its transfers (a stuck or
    /// spoofed client cannot take the LAN). Default: no cap.
    #[arg(long, value_name = "BYTES")]
    pub max_rate_per_client: Option<u64>,
    /// Largest TFTP block size granted; it is lowered further to the path MTU of each client.
    #[arg(long, default_value_t = 65464, value_name = "BYTES")]
    pub max_blksize: u16,
    /// Largest TFTP window granted (RFC 7440).
    #[arg(long, default_value_t = 64, value_name = "BLOCKS")]
    pub max_windowsize: u16,
    #[command(flatten)]
    pub dhcp: DhcpArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum UnknownArg {
    Ignore,
    Shell,
}

/// The seed of a node from its inputs (for an inventory node, or an unknown machine under
/// `--unknown-profile`).
pub fn render_seed(resolved: &Resolved, inputs: &NodeInputs) -> anyhow::Result<Seed> {
    Ok(seed::render(
        resolved,
        &inputs.node,
        &inputs.secrets,
        "",
        &inputs.templates,
    )?)
}
