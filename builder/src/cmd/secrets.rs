//! `imgbuild secrets`: create the secrets file, check that a node has every secret it needs.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::Context;
use crate::node::inputs::{DEFAULT_SECRETS, load_secrets};
use crate::node::secrets;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Create the secrets file (mode 0600) with fresh k3s server and agent tokens and a
    /// placeholder for the mesh key. Never overwrites an existing file.
    Init {
        /// The secrets file to create.
        #[arg(long, env = "IMGBUILD_SECRETS", default_value = DEFAULT_SECRETS, value_name = "FILE")]
        file: PathBuf,
    },
    /// Check that a profile's nodes (or one node) have every secret they need; values are never
    /// printed.
    Check {
        /// The profile.
        profile: String,
        /// Check the values for this node of the inventory (per-node secrets).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        #[arg(long, env = "IMGBUILD_SECRETS", default_value = DEFAULT_SECRETS, value_name = "FILE")]
        file: PathBuf,
        /// Override a profile value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    match &args.command {
        Command::Init { file } => init(file),
        Command::Check {
            profile,
            node,
            file,
            set,
        } => {
            let resolved = ctx.profiles().resolve(profile, set)?;
            let s = load_secrets(file)?;
            let env = |k: &str| std::env::var(k).ok();
            let mut problems = Vec::new();
            for need in secrets::needed(&resolved) {
                match s.require(&need, node.as_deref(), &env) {
                    Ok(_) => println!("ok       {} ({})", need.name, need.key),
                    Err(e) => {
                        println!("MISSING  {} ({})", need.name, need.key);
                        problems.push(e.to_string());
                    }
                }
            }
            if !problems.is_empty() {
                bail!("{}", problems.join("\n"));
            }
            Ok(())
        }
    }
}

fn init(path: &Path) -> Result<()> {
    let shown = path.display().to_string();
    if path.exists() {
        bail!(
            "{shown} already exists; imgbuild never overwrites a secrets file\n  help: edit it, or move it away to start over (its tokens may already be in use by a cluster)"
        );
    }
    let mut fill_error = None;
    let text = secrets::init_text(&mut |buf: &mut [u8]| {
        if let Err(e) = getrandom::fill(buf) {
            fill_error = Some(e);
        }
    });
    if let Some(e) = fill_error {
        bail!("the operating system's random number generator failed: {e}");
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // NamedTempFile is created 0600, so the tokens are never readable by others, not even briefly.
    let mut tmp = tempfile::Builder::new()
        .prefix(".secrets.")
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {shown}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {shown}"))?;
    }
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{shown} already exists; imgbuild never overwrites a secrets file")
        } else {
            anyhow::Error::new(e.error).context(format!("writing {shown}"))
        }
    })?;
    eprintln!(
        "wrote {shown} (mode 0600) with new k3s server and agent tokens\n\
         next: put a one-off Tailscale auth key in tailscale-authkey (per node under [node.<name>]), \
         or set {}",
        secrets::env_var("tailscale-authkey")
    );
    Ok(())
}
