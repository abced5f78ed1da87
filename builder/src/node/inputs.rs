//! A node's inputs: its inventory entry, its secrets and the templates that render its files.
//! Every command that takes `--node` (build, seed, userdata, flash, netboot) loads them here,
//! with the same flags ([`NodeSource`]) and the same checks, before it writes anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::node::inventory::{Inventory, InventoryError, Node, UnknownNode};
use crate::node::secrets::{self, Secrets, SecretsError};
use crate::node::seed::SecretValue;
use crate::node::templates::Templates;
use crate::profile::Resolved;

/// Default inventory file.
pub const DEFAULT_INVENTORY: &str = "nodes.toml";
/// Default secrets file.
pub const DEFAULT_SECRETS: &str = "secrets.toml";

/// Where nodes and their secrets are listed: flattened into every command that takes a node.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeSource {
    /// The inventory of nodes.
    #[arg(long, env = "IMGBUILD_INVENTORY", default_value = DEFAULT_INVENTORY, value_name = "FILE")]
    pub inventory: PathBuf,
    /// The secrets file (mode 0600; `imgbuild secrets init`).
    #[arg(long, env = "IMGBUILD_SECRETS", default_value = DEFAULT_SECRETS, value_name = "FILE")]
    pub secrets: PathBuf,
}

/// A node's resolved inputs.
pub struct NodeInputs {
    pub node: Node,
    pub secrets: Vec<SecretValue>,
    pub templates: Templates,
}

#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    #[error(
        "the inventory {file} does not exist\n  help: create it with one [[node]] table per machine:\n\n  [[node]]\n  name = \"{node}\"\n  profile = \"{profile}\"\n"
    )]
    NoInventory {
        file: String,
        node: String,
        profile: String,
    },
    #[error("reading {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    UnknownNode(#[from] UnknownNode),
    #[error(
        "node {node:?} runs profile {runs:?} in {file}, not {asked:?}\n  help: use `{runs} --node {node}`, or change the node's profile in {file}"
    )]
    WrongProfile {
        node: String,
        runs: String,
        asked: String,
        file: String,
    },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// Every secret the node lacks, one message per line.
    #[error("{}", .0.join("\n"))]
    MissingSecrets(Vec<String>),
}

impl NodeSource {
    /// Finds node `name` of profile `resolved`, collects its secrets (from the secrets file, or
    /// the environment through `env`) and its templates. Every problem is reported here.
    pub fn load(
        &self,
        resolved: &Resolved,
        name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<NodeInputs, InputsError> {
        let node = self.node(resolved, name)?;
        self.inputs_for(resolved, node, env)
    }

    /// [`load`](Self::load) for a node that is not in the inventory (the netboot server's
    /// default profile for unknown machines): its secrets and templates.
    pub fn inputs_for(
        &self,
        resolved: &Resolved,
        node: Node,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<NodeInputs, InputsError> {
        let store = load_secrets(&self.secrets)?;
        let mut values = Vec::new();
        let mut missing = Vec::new();
        for need in secrets::needed(resolved) {
            match store.require(&need, Some(&node.name), env) {
                Ok(value) => values.push(SecretValue { need, value }),
                Err(e) => missing.push(e.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(InputsError::MissingSecrets(missing));
        }
        Ok(NodeInputs {
            node,
            secrets: values,
            templates: load_templates(resolved)?,
        })
    }

    /// The inventory entry of node `name`, which must run profile `resolved`.
    fn node(&self, resolved: &Resolved, name: &str) -> Result<Node, InputsError> {
        let file = self.inventory.display().to_string();
        let text = match std::fs::read_to_string(&self.inventory) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InputsError::NoInventory {
                    file,
                    node: name.to_string(),
                    profile: resolved.name.clone(),
                });
            }
            Err(source) => return Err(InputsError::Read { file, source }),
        };
        let inventory = Inventory::parse(&text, &file)?;
        let node = inventory.node(name, &file)?.clone();
        if node.profile != resolved.name {
            return Err(InputsError::WrongProfile {
                node: node.name,
                runs: node.profile,
                asked: resolved.name.clone(),
                file,
            });
        }
        Ok(node)
    }
}

/// Reads the secrets file, refusing one that others can read. A missing file is empty (the
/// environment may still provide every secret).
pub fn load_secrets(path: &Path) -> Result<Secrets, InputsError> {
    let file = path.display().to_string();
    let read_err = |source| InputsError::Read {
        file: file.clone(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Secrets::empty(&file)),
        Err(e) => return Err(read_err(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode();
        secrets::check_mode(mode, &file)?;
    }
    Ok(Secrets::parse(&text, &file)?)
}

/// The stock templates, with the profile's `cloud-init.templates` folder over them.
pub fn load_templates(resolved: &Resolved) -> Result<Templates, InputsError> {
    let Some(dir) = &resolved.profile.cloud_init.templates else {
        return Ok(Templates::stock());
    };
    let path = resolved.path_for("cloud-init.templates", dir, Path::new("."));
    let read_err = |p: &Path, what: &str| {
        let file = format!("{what} {} (cloud-init.templates)", p.display());
        move |source| InputsError::Read { file, source }
    };
    let rd = std::fs::read_dir(&path).map_err(read_err(&path, "the template folder"))?;
    let mut overrides = BTreeMap::new();
    for e in rd {
        let e = e.map_err(read_err(&path, "the template folder"))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".j2") || !e.path().is_file() {
            continue;
        }
        let text =
            std::fs::read_to_string(e.path()).map_err(read_err(&e.path(), "the template"))?;
        overrides.insert(name, text);
    }
    Ok(Templates::with_overrides(overrides))
}
