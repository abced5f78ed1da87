//! `imgbuild build PROFILE` (and the shortcut `imgbuild PROFILE`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::Context;
use crate::build;
use crate::disk::outputs::{self, Formats, OutputRequest};
use crate::disk::xz::XzSettings;
use crate::fetch::{self, FetchArgs, Fetcher, lock::Lock};
use crate::output::{OutputDir, PendingFile};
use crate::profile::{Format, Resolved};
use crate::progress::Progress;

/// Options of a build. The same names are used in profiles where they overlap (`--set` reaches
/// any profile key).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The profile to build (`imgbuild profiles list`).
    pub profile: String,
    /// Output folder (default: images/<profile>).
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Override a profile value, e.g. --set k3s.version=v1.36.2+k3s1 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Build twice (other temp folder, other thread count) and compare every output byte.
    #[arg(long)]
    pub verify_repro: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let resolved = ctx.profiles().resolve(&args.profile, &args.set)?;
    super::profiles::print_warnings(&resolved);
    if resolved.profile.r#abstract {
        anyhow::bail!(
            "profile {} is abstract (only meant to be extended); build one of the profiles that extend it (`imgbuild profiles list`)",
            resolved.name
        );
    }
    let out_path = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("images").join(resolved.image_name()));

    // Inputs: pinned by the lock, verified, in the cache.
    let fetcher = Fetcher::from_args(&args.fetch, ctx.progress.clone())?;
    let lock_path = args.fetch.lock_path(&ctx.profiles_dir);
    let mut lock = Lock::load(&lock_path)?;
    let before = lock.clone();
    let inputs = fetch::resolve_inputs(&resolved, &mut lock, &fetcher, args.fetch.locked)
        .with_context(|| format!("getting the inputs of profile {}", resolved.name))?;
    if lock != before {
        let mut f = PendingFile::create(&lock_path)?;
        std::io::Write::write_all(f.file(), lock.to_toml().as_bytes())
            .with_context(|| format!("writing {}", lock_path.display()))?;
        f.commit(true)?;
        if ctx.verbosity >= 0 {
            eprintln!("pinned new inputs in {}", lock_path.display());
        }
    }

    let out = OutputDir::prepare(&out_path)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let written = build_into(&resolved, &inputs, &fetcher, &out, threads, &ctx.progress)?;
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
        build_into(&resolved, &inputs, &fetcher, &second, other_threads, &Progress::quiet())?;
        crate::disk::compare::compare_dirs(out.path(), second.path())
            .map_err(|d| super::CheckFailed(format!("the build is not reproducible: {d}")))?;
        if ctx.verbosity >= 0 {
            println!("reproducible: a second build gave identical bytes for every output");
        }
    }
    Ok(())
}

struct Written {
    files: Vec<PathBuf>,
    warnings: Vec<String>,
}

fn build_into(
    resolved: &Resolved,
    inputs: &[fetch::FetchedInput],
    fetcher: &Fetcher,
    out: &OutputDir,
    threads: u32,
    progress: &Progress,
) -> Result<Written> {
    let scratch = tempfile::Builder::new()
        .prefix("imgbuild-scratch-")
        .tempdir_in(fetcher.cache.root())
        .context("creating a scratch folder in the cache")?;
    let opened = build::open_inputs(resolved, inputs, &fetcher.cache, scratch.path())?;
    let epoch = resolved
        .profile
        .image
        .source_date_epoch
        .unwrap_or_else(|| build::default_epoch(&opened.root));
    let seed = build::image_seed(resolved, &opened.records)?;
    let trees = build::compose_image(resolved, &opened, &seed, epoch)?;
    let warnings = trees.warnings.clone();
    let layout = build::layout(resolved, trees, epoch)?;
    let fmts = &resolved.profile.image.formats;
    let formats = Formats {
        raw: fmts.contains(&Format::Img),
        xz: fmts.contains(&Format::ImgXz),
        bmap: fmts.contains(&Format::Bmap),
        qcow2: fmts.contains(&Format::Qcow2),
    };
    let profile_json = serde_json::to_value(&resolved.profile)?;
    let req = OutputRequest {
        name: resolved.image_name(),
        formats,
        xz: XzSettings {
            threads,
            ..XzSettings::default()
        },
        epoch: epoch.max(0) as u64,
        profile: &profile_json,
        inputs: &opened.records,
    };
    let built = outputs::build_outputs(out, &layout, &seed, &req, progress)?;
    Ok(Written {
        files: built.files,
        warnings,
    })
}
