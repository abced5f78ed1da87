//! `imgbuild build PROFILE` (and the shortcut `imgbuild PROFILE`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::{Context, ProfileSelection};
use crate::build::outputs::build_into;
use crate::fetch::{self, FetchArgs};
use crate::node::inputs::{self, NodeSource};
use crate::output::OutputDir;
use crate::progress::Progress;

/// Options of a build. The same names are used in profiles where they overlap (`--set` reaches
/// any profile key).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub profile: ProfileSelection,
    /// Output folder (default: images/<profile>).
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Build twice (other temp folder, other thread count) and compare every output byte.
    #[arg(long)]
    pub verify_repro: bool,
    /// Also write this node's own copy of the image, with its first-boot seed (hostname, token,
    /// mesh key) in the boot partition: nodes/<image>-<node>.img, readable by you only.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    #[command(flatten)]
    pub nodes: NodeSource,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let resolved = args.profile.resolve(ctx)?;
    // A node's seed needs its inventory entry and secrets: check them before writing anything.
    let node = match &args.node {
        Some(name) => Some(args.nodes.load(&resolved, name, &super::env_var)?),
        None => None,
    };
    let templates = inputs::load_templates(&resolved)?;
    let out_path = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("images").join(resolved.image_name()));

    // Inputs: pinned by the lock, verified, in the cache.
    let planned = fetch::plan::plan(&resolved, Path::new("."))?;
    let (inputs, fetcher) = super::fetch_pinned(&resolved, &planned, &args.fetch, ctx)?;

    let out = OutputDir::prepare(&out_path)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let written = build_into(
        &resolved,
        &inputs,
        &fetcher,
        &templates,
        node.as_ref(),
        &out,
        threads,
        &ctx.progress,
    )?;
    if ctx.verbosity >= 0 {
        for w in &written.warnings {
            eprintln!("warning: {w}");
        }
        println!("built {} in {}", resolved.name, out.path().display());
        for f in &written.files {
            println!("  {}", f.display());
        }
    }

    if args.verify_repro {
        // Again, in another folder, with another xz thread count: every byte must match.
        let again = tempfile::Builder::new()
            .prefix(".imgbuild-repro-")
            .tempdir_in(out.path().parent().unwrap_or(Path::new(".")))
            .context("creating a folder for the second build")?;
        let second = OutputDir::prepare(again.path())?;
        let other_threads = if threads == 1 { 2 } else { 1 };
        build_into(
            &resolved,
            &inputs,
            &fetcher,
            &templates,
            None,
            &second,
            other_threads,
            &Progress::quiet(),
        )?;
        crate::disk::compare::compare_dirs(out.path(), second.path())
            .map_err(|d| super::CheckFailed(format!("the build is not reproducible: {d}")))?;
        if ctx.verbosity >= 0 {
            println!("reproducible: a second build gave identical bytes for every output");
        }
    }
    Ok(())
}
