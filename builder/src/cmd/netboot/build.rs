//! `imgbuild netboot build PROFILE`: the netboot artifact set, from the same tree as the disk
//! image.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::cmd::{Context, ProfileSelection};
use crate::fetch::plan::InputKind;
use crate::fetch::{self, FetchArgs};
use crate::fs::squashfs::SquashfsSettings;
use crate::netboot::Endpoint;
use crate::netboot::artifacts::{self, NetbootRequest, PiNode, PiRequest};
use crate::netboot::pitree;
use crate::node::inputs::NodeSource;
use crate::node::inventory::Inventory;
use crate::output::OutputDir;
use crate::profile::{Board, Resolved};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub profile: ProfileSelection,
    /// Output folder (default: images/<profile>/netboot).
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// A Raspberry Pi profile's nodes (those with a `serial`) get a TFTP folder each, their
    /// cmdline.txt naming their seed URL on the server (its token minted when served).
    #[command(flatten)]
    pub nodes: NodeSource,
    /// The server's address on the boot network, as `netboot serve --listen` (needed for a Pi
    /// profile with nodes: their seed URL).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<IpAddr>,
    /// The server's HTTP port, as `netboot serve --http-port`.
    #[arg(long, default_value_t = 8080, value_name = "N")]
    pub http_port: u16,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let resolved = args.profile.resolve(ctx)?;
    let templates = crate::node::inputs::load_templates(&resolved)?;
    let out_path = args.out.clone().unwrap_or_else(|| {
        Path::new("images")
            .join(resolved.image_name())
            .join("netboot")
    });

    let mut planned = fetch::plan::plan(&resolved, Path::new("."))?;
    planned.extend(fetch::plan::plan_ipxe(&resolved));
    let (inputs, fetcher) = crate::cmd::fetch_pinned(&resolved, &planned, &args.fetch, ctx)?;

    let out = OutputDir::prepare(&out_path)?;
    let scratch = tempfile::Builder::new()
        .prefix("imgbuild-scratch-")
        .tempdir_in(fetcher.cache.root())
        .context("creating a scratch folder in the cache")?;
    // The disk image's inputs only: the iPXE package must not change the image's identifiers.
    let (ipxe_inputs, disk_inputs): (Vec<_>, Vec<_>) = inputs
        .iter()
        .cloned()
        .partition(|i| i.kind == InputKind::Ipxe);
    let prepared = crate::build::prepare(
        &resolved,
        &disk_inputs,
        &fetcher.cache,
        scratch.path(),
        &templates,
    )?;
    let mut ipxe_tree = crate::tree::Tree::new();
    let mut _ipxe_deb = None;
    let ipxe = match ipxe_inputs.first() {
        Some(i) => {
            _ipxe_deb = Some(
                crate::source::deb::read_deb(&i.path, scratch.path(), &mut ipxe_tree)
                    .with_context(|| format!("reading the iPXE package {}", i.url))?,
            );
            artifacts::ipxe_files(&ipxe_tree)?
        }
        None => Vec::new(),
    };
    // The manifest lists every input, the iPXE package included.
    let mut records = prepared.opened.records.clone();
    records.extend(
        ipxe_inputs
            .iter()
            .map(|i| crate::disk::manifest::InputRecord {
                name: i.name.clone(),
                url: i.url.clone(),
                sha256: i.sha256.clone(),
            }),
    );
    let pi = match resolved.board() {
        Board::Rpi | Board::Rpi4 | Board::Rpi5 => Some(PiRequest {
            boot: &prepared.trees.boot,
            nodes: pi_nodes(args, &resolved)?,
            base_url: args
                .listen
                .map(|listen| Endpoint {
                    listen,
                    tftp_port: 69,
                    http_port: args.http_port,
                })
                .map(|e| e.base_url())
                .unwrap_or_default(),
        }),
        _ => None,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let profile_json = serde_json::to_value(&resolved.profile)?;
    let written = artifacts::build(
        &out,
        &NetbootRequest {
            profile: &resolved.name,
            arch: resolved.arch(),
            root: &prepared.trees.root,
            cmdline: &prepared.trees.cmdline,
            epoch: prepared.epoch,
            profile_json: &profile_json,
            inputs: &records,
            ipxe: &ipxe,
            squashfs: SquashfsSettings {
                epoch: prepared.epoch,
                processors: threads,
                ..SquashfsSettings::default()
            },
            pi,
        },
    )?;
    if ctx.verbosity >= 0 {
        for w in &prepared.trees.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "built the netboot artifacts of {} in {}",
            resolved.name,
            out.path().display()
        );
        for f in &written {
            println!("  {}", f.display());
        }
    }
    Ok(())
}

/// Each inventory node of this profile with a `serial`, by folder. No inventory: no node
/// folders (the shared tree is still built). No secret is read: the token in the seed URL is
/// minted by `netboot serve`, and the network-config on the command line holds none.
fn pi_nodes(args: &Args, resolved: &Resolved) -> Result<Vec<PiNode>> {
    let path = &args.nodes.inventory;
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading the inventory {shown}")),
    };
    let inv = Inventory::parse(&text, &shown)?;
    let templates = crate::node::inputs::load_templates(resolved)?;
    let mut out = Vec::new();
    for node in inv.nodes.iter().filter(|n| n.profile == resolved.name) {
        let Some(serial) = &node.serial else { continue };
        let folder = pitree::serial_folder(&node.name, serial)
            .with_context(|| format!("{shown}: node {:?}", node.name))?;
        if args.listen.is_none() {
            anyhow::bail!(
                "node {:?} ({shown}) netboots this Raspberry Pi profile, and its cmdline.txt must name its seed URL on the server\n  help: add --listen ADDR (and --http-port N), as given to `imgbuild netboot serve`",
                node.name
            );
        }
        let network_config =
            crate::node::seed::render_network_config(resolved, node, &templates)
                .with_context(|| format!("{shown}: the network-config of node {:?}", node.name))?;
        out.push(PiNode {
            folder,
            node: node.name.clone(),
            network_config,
        });
    }
    out.sort();
    if let Some(w) = out.windows(2).find(|w| w[0].folder == w[1].folder) {
        anyhow::bail!(
            "{shown}: nodes {:?} and {:?} have serials with the same low 32 bits ({}), which is all a Pi's TFTP folder is named by\n  help: give one of them TFTP_PREFIX=2 (MAC folders) in its EEPROM and no serial here",
            w[0].node,
            w[1].node,
            w[0].folder
        );
    }
    Ok(out)
}
