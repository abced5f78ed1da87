//! `imgbuild lock`: create or refresh `imgbuild.lock` for some or all profiles.

use anyhow::{Context as _, Result};

use super::Context;
use crate::fetch::{self, FetchArgs, Fetcher, Lock, Refresh};

/// Pin every input (base OS, k3s, mesh agent) of the profiles in imgbuild.lock.
///
/// Inputs the lock does not pin yet are downloaded once and verified against their upstream
/// checksum files; the lock then records their URL, size and SHA-256. Downloads land in the cache,
/// so the next build does not fetch them again.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Profiles to lock [default: every buildable profile].
    pub profiles: Vec<String>,
    /// Re-verify pinned inputs from upstream: all of them, or one INPUT (a name such as
    /// `k3s/v1.36.2+k3s1/arm64`, or its first part: `k3s`, `base`, `tailscale`).
    #[arg(long, value_name = "INPUT", num_args = 0..=1, default_missing_value = "")]
    pub update: Option<String>,
    /// Override a profile value (repeatable), as for `imgbuild build`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let store = ctx.profiles();
    let names: Vec<String> = if args.profiles.is_empty() {
        store
            .list()?
            .into_iter()
            .filter(|l| !l.r#abstract)
            .map(|l| l.name)
            .collect()
    } else {
        args.profiles.clone()
    };
    let lock_path = args.fetch.lock_path(&ctx.profiles_dir);
    let mut lock = Lock::load(&lock_path)?;
    let before = lock.clone();
    let fetcher = Fetcher::from_args(&args.fetch, ctx.progress.clone())?;
    let refresh = match args.update.as_deref() {
        None => Refresh::None,
        Some("") => Refresh::All,
        Some(one) => Refresh::Only(one),
    };
    let mut matched = false;
    for name in &names {
        let resolved = store.resolve(name, &args.set)?;
        let planned = fetch::plan::plan(&resolved, std::path::Path::new("."))
            .with_context(|| format!("profile {name}"))?;
        if let Refresh::Only(sel) = refresh
            && !planned
                .iter()
                .any(|p| p.name == sel || p.name.starts_with(&format!("{sel}/")))
        {
            continue;
        }
        matched = true;
        fetch::resolve_planned(&planned, &mut lock, &fetcher, args.fetch.locked, refresh)
            .with_context(|| format!("locking the inputs of profile {name}"))?;
    }
    if let Refresh::Only(sel) = refresh
        && !matched
    {
        anyhow::bail!(
            "no profile among {} has an input named {sel:?}; `imgbuild lock` lists the inputs in {}",
            names.join(", "),
            lock_path.display()
        );
    }
    if lock == before && lock_path.exists() {
        if ctx.verbosity >= 0 {
            eprintln!("{} is up to date", lock_path.display());
        }
        return Ok(());
    }
    crate::output::write_file(&lock_path, lock.to_toml().as_bytes())?;
    if ctx.verbosity >= 0 {
        eprintln!("wrote {}", lock_path.display());
    }
    Ok(())
}
