//! `imgbuild netboot build PROFILE`: the netboot artifact set, from the same tree as the disk
//! image.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::cmd::{Context, ProfileSelection};
use crate::fetch::plan::InputKind;
use crate::fetch::{self, FetchArgs};
use crate::fs::squashfs::SquashfsSettings;
use crate::netboot::artifacts::{self, NetbootRequest};
use crate::output::OutputDir;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub profile: ProfileSelection,
    /// Output folder (default: images/<profile>/netboot).
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub fetch: FetchArgs,
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
