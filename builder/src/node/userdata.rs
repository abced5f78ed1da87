//! Cloud user-data: one `#cloud-config` that turns a stock cloud VM (a DigitalOcean droplet, an
//! OpenStack instance) into the node a profile describes — the same pinned k3s and mesh agent
//! (downloaded and checked against the lock's SHA-256 before anything is installed), the same
//! units and k3s config as the image (rendered by [`super::files::node_files`] from the same
//! templates), the node's seed values and secrets, and the profile's overlay files.
//!
//! What the provider keeps: the user-data stays readable from the metadata service
//! (169.254.169.254) for the VM's life, whatever the node deletes. Use one-off, short-expiry mesh
//! keys and agent (not server) tokens, and let `--block-metadata` keep pods away from it.

use std::fmt;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::files::{self, Target, paths};
use super::inventory::Node;
use super::seed::{self, SecretValue};
use super::templates::{TemplateError, Templates};
use crate::profile::{Board, MeshProvider, Resolved, Role};

/// A pinned download: where it comes from and its SHA-256 (hex) from the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub url: String,
    pub sha256: String,
}

/// The pinned artifacts a cloud VM downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    /// The k3s binary for the VM's architecture.
    pub k3s: Pin,
    /// The Tailscale static tarball or the ZeroTier `.deb`; `None` without a mesh.
    pub mesh: Option<Pin>,
}

/// Where the user-data goes, for its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CloudTarget {
    /// DigitalOcean: plain text (no gzip), at most 64 KiB.
    Digitalocean,
    /// OpenStack Nova: at most 65,535 bytes once base64-encoded.
    Openstack,
    /// No provider limit.
    Generic,
}

impl fmt::Display for CloudTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloudTarget::Digitalocean => "digitalocean",
            CloudTarget::Openstack => "openstack",
            CloudTarget::Generic => "generic",
        })
    }
}

/// DigitalOcean's `user_data` limit (API spec): 64 KiB of plain text.
pub const DIGITALOCEAN_LIMIT: usize = 64 * 1024;
/// OpenStack Nova's limit on the base64-encoded user-data.
pub const OPENSTACK_LIMIT_B64: usize = 65_535;

/// A file of the profile's overlays, to be written on the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Why user-data could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UserdataError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(
        "the user-data is {size} bytes{}, over {target}'s limit of {limit} bytes{}\n  help: {}",
        .encoded.map(|e| format!(" ({e} bytes base64-encoded)")).unwrap_or_default(),
        if *.encoded_limit { " after base64" } else { "" },
        "move large overlay files into the image, or have the user-data fetch a hash-pinned bundle"
    )]
    TooLarge {
        target: CloudTarget,
        size: usize,
        encoded: Option<usize>,
        limit: usize,
        encoded_limit: bool,
    },
    #[error(
        "the profile uses {provider} but no pinned {provider} download was given\n  help: run `imgbuild lock` for the profile"
    )]
    MeshPinMissing { provider: &'static str },
}

/// Everything a node's user-data is made from.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub resolved: &'a Resolved,
    pub node: &'a Node,
    pub secrets: &'a [SecretValue],
    /// The downloads, with any mirror already applied to their URLs.
    pub pins: &'a Pins,
    pub block_metadata: bool,
    /// The profile's overlay files.
    pub extra_files: &'a [ExtraFile],
    pub target: CloudTarget,
}

/// Generated user-data.
#[derive(Clone, PartialEq, Eq)]
pub struct UserData {
    pub text: String,
    /// Remarks for the user (printed to stderr, never into the user-data).
    pub warnings: Vec<String>,
}

impl fmt::Debug for UserData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserData({} bytes)", self.text.len())
    }
}

impl UserData {
    /// Hex SHA-256 of the text.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.text.as_bytes()))
    }

    /// `{ "user_data", "sha256", "size" }` for Terraform's `external` data source.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "user_data": self.text,
            "sha256": self.sha256(),
            "size": self.text.len(),
        })
    }
}

/// The lock entry names of a profile's k3s and mesh downloads (`k3s/<version>/<arch>`,
/// `tailscale/<version>/<arch>`, `zerotier/<version>/<arch>`), as [`crate::fetch::plan`] names
/// them.
pub fn pin_names(resolved: &Resolved) -> (Option<String>, Option<String>) {
    let p = &resolved.profile;
    let arch = resolved.arch();
    let k3s = p.k3s.version.as_ref().map(|v| format!("k3s/{v}/{arch}"));
    let mesh = match p.mesh.provider {
        MeshProvider::None => None,
        provider => p
            .mesh
            .version
            .as_ref()
            .map(|v| format!("{}/{v}/{arch}", provider.as_str())),
    };
    (k3s, mesh)
}

/// Checks the provider's size limit.
pub fn check_size(target: CloudTarget, text: &str) -> Result<(), UserdataError> {
    let size = text.len();
    match target {
        CloudTarget::Digitalocean if size > DIGITALOCEAN_LIMIT => Err(UserdataError::TooLarge {
            target,
            size,
            encoded: None,
            limit: DIGITALOCEAN_LIMIT,
            encoded_limit: false,
        }),
        CloudTarget::Openstack => {
            let encoded = size.div_ceil(3) * 4;
            if encoded > OPENSTACK_LIMIT_B64 {
                Err(UserdataError::TooLarge {
                    target,
                    size,
                    encoded: Some(encoded),
                    limit: OPENSTACK_LIMIT_B64,
                    encoded_limit: true,
                })
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Renders a node's cloud user-data and checks it against the target's size limit.
pub fn render(input: &Input<'_>, templates: &Templates) -> Result<UserData, UserdataError> {
    let r = input.resolved;
    let mut warnings = Vec::new();
    let role = r.profile.k3s.role.unwrap_or(Role::Agent);
    // Said once: profile validation may already have warned about it.
    let warned = r.warnings.iter().any(|w| w.message.contains("WAN"));
    if role == Role::Server
        && r.profile.k3s.server.is_some()
        && r.board() == Board::Cloud
        && !warned
    {
        warnings.push(format!(
            "profile {} makes this cloud VM a k3s server joining {}: embedded etcd across a WAN \
             or mesh is not supported upstream (docs: networking/distributed-multicloud); keep \
             servers on one site and run cloud VMs as agents",
            r.name,
            r.profile.k3s.server.as_deref().unwrap_or("?")
        ));
    }

    let provider = r.profile.mesh.provider;
    let mut artifacts = vec![json!({
        "name": "k3s",
        "file": "k3s",
        "url": input.pins.k3s.url,
        "sha256": input.pins.k3s.sha256.to_ascii_lowercase(),
    })];
    let mesh_file = match provider {
        MeshProvider::None => None,
        MeshProvider::Tailscale => Some("tailscale.tgz"),
        MeshProvider::Zerotier => Some("zerotier-one.deb"),
    };
    if let Some(file) = mesh_file {
        let pin = input
            .pins
            .mesh
            .as_ref()
            .ok_or(UserdataError::MeshPinMissing {
                provider: provider.as_str(),
            })?;
        artifacts.push(json!({
            "name": provider.as_str(),
            "file": file,
            "url": pin.url,
            "sha256": pin.sha256.to_ascii_lowercase(),
        }));
    }

    let target = Target::Cloud {
        block_metadata: input.block_metadata,
    };
    let set = files::node_files(r, templates, target)?;
    let mut ctx = files::context(r, target);
    ctx["artifacts"] = json!(artifacts);
    ctx["mesh"]["file"] = json!(mesh_file);
    ctx["enable"] = json!(set.enable);
    ctx["block_metadata"] = json!(input.block_metadata);
    let install = templates.render("cloud-install.sh.j2", &ctx)?;

    // The profile's overlays first, so our units and config win where paths collide.
    let mut write: Vec<serde_json::Value> = input
        .extra_files
        .iter()
        .map(|f| seed::write_file(&f.path, f.mode, &f.data))
        .collect();
    write.extend(
        set.files
            .iter()
            .map(|f| seed::write_file(&f.path, f.mode, f.content.as_bytes())),
    );
    let install_path = format!("{}/cloud-install", paths::SCRIPTS);
    write.push(seed::write_file(&install_path, 0o755, install.as_bytes()));
    write.extend(seed::seed_write_files(r, input.node, input.secrets));

    let ctx = seed::user_data_context(r, input.node, "Cloud user-data", write, vec![install_path]);
    let text = templates.render("user-data.j2", &ctx)?;
    check_size(input.target, &text)?;
    Ok(UserData { text, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limits() {
        let small = "x".repeat(1000);
        for t in [
            CloudTarget::Digitalocean,
            CloudTarget::Openstack,
            CloudTarget::Generic,
        ] {
            check_size(t, &small).unwrap();
        }
        assert!(check_size(CloudTarget::Digitalocean, &"x".repeat(65_536)).is_ok());
        let err = check_size(CloudTarget::Digitalocean, &"x".repeat(65_537)).unwrap_err();
        assert!(err.to_string().contains("65537 bytes"), "{err}");
        // 49,149 bytes encode to 65,532; 49,152 to 65,536.
        assert!(check_size(CloudTarget::Openstack, &"x".repeat(49_149)).is_ok());
        let err = check_size(CloudTarget::Openstack, &"x".repeat(49_152)).unwrap_err();
        assert!(
            err.to_string().contains("65536 bytes base64-encoded"),
            "{err}"
        );
        assert!(check_size(CloudTarget::Generic, &"x".repeat(1 << 20)).is_ok());
    }

    #[test]
    fn pin_names_follow_the_fetch_plan() {
        use crate::fetch::{InputKind, plan::plan};
        use crate::profile::ProfileStore;
        for name in ["pi-worker", "amd64-server", "droplet-worker"] {
            let r = ProfileStore::stock_only().resolve(name, &[]).unwrap();
            let planned = plan(&r, std::path::Path::new(".")).unwrap();
            let named = |kind: InputKind| {
                planned
                    .iter()
                    .find(|i| i.kind == kind)
                    .map(|i| i.name.clone())
            };
            let (k3s, mesh) = pin_names(&r);
            assert_eq!(k3s, named(InputKind::K3s), "{name}");
            assert_eq!(mesh, named(InputKind::Tailscale), "{name}");
        }
    }
}
