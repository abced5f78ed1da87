//! One module per subcommand: its clap arguments and its `run`. This is the outermost layer:
//! commands read files, talk to the network and print; the library modules they call do not.

use std::path::PathBuf;

use crate::profile::{ProfileStore, Resolved};
use crate::progress::Progress;

pub mod build;
pub mod cache;
pub mod flash;
pub mod inspect;
pub mod lock;
pub mod mkfs;
pub mod netboot;
pub mod profiles;
pub mod secrets;
pub mod seed;
pub mod userdata;

/// What every command may use: global options resolved once.
pub struct Context {
    pub progress: Progress,
    /// Folder of the user's own profiles (default `./profiles`), layered over the stock ones.
    pub profiles_dir: PathBuf,
    /// -v minus -q.
    pub verbosity: i8,
}

impl Context {
    /// The profile store: the user's profiles over the stock ones.
    pub fn profiles(&self) -> ProfileStore {
        ProfileStore::new(Some(self.profiles_dir.clone()))
    }

    /// Resolves a profile that can be built (not abstract), printing its warnings.
    pub fn resolve_concrete(&self, name: &str, set: &[String]) -> anyhow::Result<Resolved> {
        let resolved = self.profiles().resolve(name, set)?;
        print_warnings(&resolved);
        if resolved.profile.r#abstract {
            anyhow::bail!(
                "profile {} is abstract (only meant to be extended); use one of the profiles that extend it (`imgbuild profiles list`)",
                resolved.name
            );
        }
        Ok(resolved)
    }
}

/// The profile's warnings, on stderr (so `--json` output stays clean).
pub fn print_warnings(r: &Resolved) {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
}

/// The profile a command works on, and overrides of its values.
#[derive(clap::Args, Debug, Clone)]
pub struct ProfileSelection {
    /// The profile (`imgbuild profiles list`).
    pub profile: String,
    /// Override a profile value, e.g. --set k3s.version=v1.36.2+k3s1 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ProfileSelection {
    /// The resolved, buildable profile.
    pub fn resolve(&self, ctx: &Context) -> anyhow::Result<Resolved> {
        ctx.resolve_concrete(&self.profile, &self.set)
    }
}

/// One node of the inventory and the profile it runs: for the commands that work on one node.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeSelection {
    #[command(flatten)]
    pub profile: ProfileSelection,
    /// The node, by its name in the inventory.
    #[arg(long, value_name = "NAME")]
    pub node: String,
    #[command(flatten)]
    pub nodes: crate::node::inputs::NodeSource,
}

impl NodeSelection {
    /// The resolved profile and the node's inputs, every problem reported before any output.
    pub fn load(
        &self,
        ctx: &Context,
    ) -> anyhow::Result<(Resolved, crate::node::inputs::NodeInputs)> {
        let resolved = self.profile.resolve(ctx)?;
        let inputs = self.nodes.load(&resolved, &self.node, &env_var)?;
        Ok((resolved, inputs))
    }
}

/// Gets a profile's `planned` inputs into the cache, verified against the lockfile that
/// `fetch` selects, and writes the lockfile back when inputs were newly pinned.
pub fn fetch_pinned(
    resolved: &Resolved,
    planned: &[crate::fetch::plan::PlannedInput],
    fetch: &crate::fetch::FetchArgs,
    ctx: &Context,
) -> anyhow::Result<(Vec<crate::fetch::FetchedInput>, crate::fetch::Fetcher)> {
    use anyhow::Context as _;
    let fetcher = crate::fetch::Fetcher::from_args(fetch, ctx.progress.clone())?;
    let lock_path = fetch.lock_path(&ctx.profiles_dir);
    let mut lock = crate::fetch::Lock::load(&lock_path)?;
    let before = lock.clone();
    let inputs = crate::fetch::resolve_planned(
        planned,
        &mut lock,
        &fetcher,
        fetch.locked,
        crate::fetch::Refresh::None,
    )
    .with_context(|| format!("getting the inputs of profile {}", resolved.name))?;
    if lock != before {
        crate::output::write_file(&lock_path, lock.to_toml().as_bytes())?;
        if ctx.verbosity >= 0 {
            eprintln!("pinned new inputs in {}", lock_path.display());
        }
    }
    Ok((inputs, fetcher))
}

/// Reads a secret from the environment (`IMGBUILD_SECRET_*`), for [`crate::node::inputs`].
pub fn env_var(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// A check that ran and found a difference (exit status 1, unlike errors, which exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);
