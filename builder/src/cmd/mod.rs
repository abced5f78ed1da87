//! One module per subcommand: its clap arguments and its `run`. This is the outermost layer:
//! commands read files, talk to the network and print; the library modules they call do not.

use std::path::PathBuf;

use crate::profile::ProfileStore;
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
}

/// A capability that a later release will provide. Exits 2 like any other refusal, so scripts
/// never mistake it for success.
#[derive(Debug, thiserror::Error)]
#[error("`imgbuild {command}` is not implemented yet: {missing}")]
pub struct NotImplemented {
    pub command: &'static str,
    pub missing: &'static str,
}

/// A check that ran and found a difference (exit status 1, unlike errors, which exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// Accepts any arguments of a command that is not implemented yet, so the user sees the
/// "not implemented" message rather than a usage error.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Unparsed {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}
