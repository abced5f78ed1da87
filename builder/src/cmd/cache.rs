//! `imgbuild cache`: list, clean and check the download cache.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use super::{CheckFailed, Context};
use crate::fetch::{Cache, FetchArgs, Lock};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Download cache [default: $XDG_CACHE_HOME/imgbuild, else ~/.cache/imgbuild].
    #[arg(long, env = "IMGBUILD_CACHE_DIR", value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// List cached downloads, decompressed bases, partial downloads and xz blocks.
    Ls {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove every entry no lockfile references, all partial downloads and all compressed blocks.
    ///
    /// Kept: the blobs pinned by the given lockfiles (default: imgbuild.lock next to the profiles
    /// folder) and the decompressed copies of those blobs. The xz blocks and zstd frames of
    /// earlier builds (which make rebuilds fast) are removed; the next build compresses every
    /// block again.
    Gc {
        /// Lockfiles whose inputs to keep (repeatable).
        #[arg(long, value_name = "FILE")]
        lockfile: Vec<PathBuf>,
        /// Remove everything.
        #[arg(long, conflicts_with = "lockfile")]
        all: bool,
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash every entry; exit status 1 if any is corrupt.
    Verify {
        /// Remove corrupt entries (they are downloaded again when next needed).
        #[arg(long)]
        repair: bool,
    },
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let dir = FetchArgs {
        cache_dir: args.cache_dir.clone(),
        ..FetchArgs::default()
    }
    .cache_dir()?;
    let cache = Cache::open(&dir)?;
    match &args.command {
        Command::Ls { json } => {
            for e in cache.list()? {
                if *json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    let kind = match e.kind {
                        crate::fetch::cache::EntryKind::Blob => "blob",
                        crate::fetch::cache::EntryKind::Unxz => "unxz",
                        crate::fetch::cache::EntryKind::Partial => "partial",
                        crate::fetch::cache::EntryKind::XzBlock => "xz-block",
                        crate::fetch::cache::EntryKind::ZstFrame => "zst-frame",
                    };
                    println!("{kind:<8} {:>14} {}", e.size, e.key);
                }
            }
            Ok(())
        }
        Command::Gc {
            lockfile,
            all,
            dry_run,
        } => {
            let mut keep = BTreeSet::new();
            if !all {
                let files = if lockfile.is_empty() {
                    vec![FetchArgs::default().lock_path(&ctx.profiles_dir)]
                } else {
                    lockfile.clone()
                };
                for f in &files {
                    if !f.exists() {
                        bail!(
                            "lockfile {} does not exist, so nothing would be kept; \
                             name the lockfiles to keep with --lockfile, or pass --all to empty the cache",
                            f.display()
                        );
                    }
                    let lock = Lock::load(f)?;
                    keep.extend(lock.iter().map(|(_, e)| e.sha256.clone()));
                }
            }
            let removed = cache.gc(&keep, *dry_run)?;
            let bytes: u64 = removed.iter().map(|e| e.size).sum();
            for e in &removed {
                println!(
                    "{} {}",
                    if *dry_run { "would remove" } else { "removed" },
                    e.path.display()
                );
            }
            if ctx.verbosity >= 0 {
                eprintln!(
                    "{} {} entries, {bytes} bytes",
                    if *dry_run { "would free" } else { "freed" },
                    removed.len()
                );
            }
            Ok(())
        }
        Command::Verify { repair } => {
            let bad = cache
                .verify(*repair)
                .with_context(|| format!("verifying {}", dir.display()))?;
            for b in &bad {
                println!(
                    "corrupt {}: expected {}, actual {}{}",
                    b.path.display(),
                    b.expected,
                    b.actual,
                    if *repair { " (removed)" } else { "" }
                );
            }
            if bad.is_empty() {
                Ok(())
            } else {
                Err(CheckFailed(format!(
                    "{} corrupt cache entries{}",
                    bad.len(),
                    if *repair {
                        " removed"
                    } else {
                        "; rerun with --repair to remove them"
                    }
                ))
                .into())
            }
        }
    }
}
