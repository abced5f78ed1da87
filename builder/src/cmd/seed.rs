//! `imgbuild seed PROFILE --node NAME -o DIR`: a node's cloud-init NoCloud seed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::Context;
use crate::node::inventory::{Inventory, Node};
use crate::node::secrets;
use crate::node::seed::{self, SecretValue};
use crate::node::templates::Templates;
use crate::output::OutputDir;
use crate::profile::Resolved;

/// Default inventory file.
pub const DEFAULT_INVENTORY: &str = "nodes.toml";

/// Where a node's values come from (shared by `seed` and `userdata`).
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// The profile (`imgbuild profiles list`).
    pub profile: String,
    /// The node, by its name in the inventory.
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// The inventory of nodes.
    #[arg(long, env = "IMGBUILD_INVENTORY", default_value = DEFAULT_INVENTORY, value_name = "FILE")]
    pub inventory: PathBuf,
    /// The secrets file (mode 0600; `imgbuild secrets init`).
    #[arg(long, env = "IMGBUILD_SECRETS", default_value = super::secrets::DEFAULT_FILE, value_name = "FILE")]
    pub secrets: PathBuf,
    /// Override a profile value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Output folder: new, empty, or one imgbuild wrote before.
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    /// Any text: a new nonce gives the node a new cloud-init instance-id, so a node re-seeded in
    /// place runs its first boot again.
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub nonce: String,
}

/// A node's resolved inputs.
pub struct NodeInputs {
    pub resolved: Resolved,
    pub node: Node,
    pub secrets: Vec<SecretValue>,
    pub templates: Templates,
}

impl NodeArgs {
    /// Resolves the profile, finds the node, collects its secrets and templates; every problem
    /// is reported before anything is written.
    pub fn load(&self, ctx: &Context) -> Result<NodeInputs> {
        let resolved = ctx.profiles().resolve(&self.profile, &self.set)?;
        super::profiles::print_warnings(&resolved);
        if resolved.profile.r#abstract {
            bail!(
                "profile {} is abstract (only meant to be extended); use one of the profiles that extend it (`imgbuild profiles list`)",
                resolved.name
            );
        }
        let inv_shown = self.inventory.display().to_string();
        let text = match std::fs::read_to_string(&self.inventory) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "the inventory {inv_shown} does not exist\n  help: create it with one [[node]] table per machine:\n\n  [[node]]\n  name = \"{}\"\n  profile = \"{}\"\n",
                self.node,
                self.profile
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {inv_shown}")),
        };
        let inventory = Inventory::parse(&text, &inv_shown)?;
        let node = inventory.node(&self.node, &inv_shown)?.clone();
        if node.profile != resolved.name {
            bail!(
                "node {:?} runs profile {:?} in {inv_shown}, not {:?}\n  help: use `{} --node {}`, or change the node's profile in {inv_shown}",
                node.name,
                node.profile,
                resolved.name,
                node.profile,
                node.name
            );
        }
        let store = super::secrets::load(&self.secrets)?;
        let env = |k: &str| std::env::var(k).ok();
        let mut values = Vec::new();
        let mut missing = Vec::new();
        for need in secrets::needed(&resolved) {
            match store.require(&need, Some(&node.name), &env) {
                Ok(value) => values.push(SecretValue { need, value }),
                Err(e) => missing.push(e.to_string()),
            }
        }
        if !missing.is_empty() {
            bail!("{}", missing.join("\n"));
        }
        let templates = load_templates(&resolved)?;
        Ok(NodeInputs {
            resolved,
            node,
            secrets: values,
            templates,
        })
    }
}

/// The stock templates, with the profile's `cloud-init.templates` folder over them.
pub fn load_templates(resolved: &Resolved) -> Result<Templates> {
    let Some(dir) = &resolved.profile.cloud_init.templates else {
        return Ok(Templates::stock());
    };
    let path = resolved.path_for("cloud-init.templates", dir, Path::new("."));
    let rd = std::fs::read_dir(&path).with_context(|| {
        format!(
            "reading the template folder {} (cloud-init.templates)",
            path.display()
        )
    })?;
    let mut overrides = BTreeMap::new();
    for e in rd {
        let e = e.with_context(|| format!("reading {}", path.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".j2") || !e.path().is_file() {
            continue;
        }
        let text = std::fs::read_to_string(e.path())
            .with_context(|| format!("reading template {}", e.path().display()))?;
        overrides.insert(name, text);
    }
    Ok(Templates::with_overrides(overrides))
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let inputs = args.node.load(ctx)?;
    let seed = seed::render(
        &inputs.resolved,
        &inputs.node,
        &inputs.secrets,
        &args.nonce,
        &inputs.templates,
    )?;
    let out = OutputDir::prepare(&args.out)?;
    restrict(out.path(), 0o700)?;
    for (name, content) in seed.files() {
        let mut f = out.create(name)?;
        f.file()
            .write_all(content.as_bytes())
            .with_context(|| format!("writing {}", f.dest().display()))?;
        let dest = f.commit(true)?;
        // The seed holds credentials: owner-only, like the folder it is in.
        restrict(&dest, 0o600)?;
    }
    eprintln!(
        "wrote the seed of node {} (profile {}) to {}: meta-data, network-config, user-data\n\
         it holds the node's credentials; copy it to the node's boot partition and delete it",
        inputs.node.name,
        inputs.resolved.name,
        out.path().display()
    );
    Ok(())
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> Result<()> {
    Ok(())
}
