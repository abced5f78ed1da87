//! Per-node seeds: cloud-init NoCloud `user-data`, `meta-data` and `network-config`, rendered
//! from the node templates with the node's inventory entry and secrets. The seed carries what is
//! different for every node — host name, users and SSH keys, extra labels, the k3s token file and
//! the one-off mesh key (both written 0600 by `write_files` to the paths the units read) — and
//! nothing else: the units and binaries are already in the image.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::files::{NodeFile, paths};
use super::inventory::Node;
use super::secrets::Needed;
use super::templates::{TemplateError, Templates, shell_quote};
use super::yaml;
use crate::profile::{MeshProvider, Resolved};
use crate::tree::{Content, Entry, Tree, TreeError, TreePath};

/// The three files of a NoCloud seed.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed {
    pub user_data: String,
    pub meta_data: String,
    pub network_config: String,
}

/// Never print a seed: it holds secrets.
impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed { .. }")
    }
}

impl Seed {
    /// (file name, content) of each seed file, in the order they are written.
    pub fn files(&self) -> [(&'static str, &str); 3] {
        [
            ("meta-data", &self.meta_data),
            ("network-config", &self.network_config),
            ("user-data", &self.user_data),
        ]
    }

    /// Adds the seed files to the root of a boot partition's tree, where the image's NoCloud
    /// datasource reads them. Owner-only: they hold the node's credentials.
    pub fn add_to(&self, boot: &mut Tree, epoch: i64) -> Result<(), TreeError> {
        for (name, text) in self.files() {
            boot.insert(
                TreePath::new(name)?,
                Entry::file(0o600, Content::bytes(text.as_bytes().to_vec())).at(epoch),
            )?;
        }
        Ok(())
    }
}

/// A secret value with the place the node reads it from.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue {
    pub need: Needed,
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue({} → {})", self.need.name, self.need.path)
    }
}

/// The cloud-init `instance-id` of a node's seed: derived from the profile, the node and a nonce
/// the caller chooses (a new nonce makes cloud-init treat a re-seeded node as new), never from the
/// clock or randomness.
pub fn instance_id(profile: &str, node: &str, nonce: &str) -> String {
    let mut h = Sha256::new();
    for part in ["imgbuild instance-id", profile, node, nonce] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let d = hex::encode(&h.finalize()[..16]);
    format!(
        "iid-{}-{}-{}-{}-{}",
        &d[0..8],
        &d[8..12],
        &d[12..16],
        &d[16..20],
        &d[20..32]
    )
}

/// The node's own non-secret files: its k3s drop-in (node name, extra labels and taints) and the
/// values our mesh script reads.
pub fn node_files(resolved: &Resolved, node: &Node) -> Vec<NodeFile> {
    let mut entries: Vec<(String, Value)> = vec![("node-name".into(), json!(node.name))];
    if !node.labels.is_empty() {
        entries.push(("node-label+".into(), json!(node.labels)));
    }
    if !node.taints.is_empty() {
        entries.push(("node-taint+".into(), json!(node.taints)));
    }
    let mut out = vec![NodeFile {
        path: format!("{}/20-node.yaml", paths::K3S_CONFIG_D),
        mode: 0o644,
        content: format!(
            "# node {} (from the inventory), written by imgbuild\n{}",
            node.name,
            yaml::mapping(&entries)
        ),
    }];
    if resolved.profile.mesh.provider == MeshProvider::Tailscale {
        let tags = if node.mesh_tags.is_empty() {
            &resolved.profile.mesh.tags
        } else {
            &node.mesh_tags
        };
        out.push(NodeFile {
            path: paths::NODE_ENV.into(),
            mode: 0o644,
            content: format!(
                "MESH_HOSTNAME={}\nMESH_TAGS={}\n",
                shell_quote(node.hostname()),
                shell_quote(&tags.join(","))
            ),
        });
    }
    out
}

/// A `write_files` item for the user-data template.
pub fn write_file(path: &str, mode: u32, data: &[u8]) -> Value {
    match std::str::from_utf8(data) {
        Ok(text) if !text.contains('\0') => json!({
            "path": path,
            "mode": format!("{mode:04o}"),
            "encoding": null,
            "content": text,
        }),
        _ => {
            use base64::Engine;
            json!({
                "path": path,
                "mode": format!("{mode:04o}"),
                "encoding": "b64",
                "content": base64::engine::general_purpose::STANDARD.encode(data),
            })
        }
    }
}

/// The context of `user-data.j2`: node identity, users, files to write, commands to run.
pub fn user_data_context(
    resolved: &Resolved,
    node: &Node,
    purpose: &str,
    files: Vec<Value>,
    runcmd: Vec<String>,
) -> Value {
    let users: Vec<Value> = resolved
        .profile
        .users
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "groups": u.groups,
                "ssh_keys": u.ssh_keys,
                "sudo": u.sudo,
                "shell": u.shell,
            })
        })
        .collect();
    json!({
        "purpose": purpose,
        "profile": resolved.name,
        "node": {
            "name": node.name,
            "hostname": node.hostname(),
            "mac": node.mac_address.map(|m| m.to_string()),
            "serial": node.serial,
            "labels": node.labels,
            "taints": node.taints,
            "mesh_tags": node.mesh_tags,
            "address": node.address,
            "gateway": node.gateway,
            "dns": node.dns,
        },
        "users": users,
        "files": files,
        "runcmd": runcmd,
    })
}

/// The `write_files` items every seed carries: the node's own files, then its secrets (0600).
pub fn seed_write_files(resolved: &Resolved, node: &Node, secrets: &[SecretValue]) -> Vec<Value> {
    let mut files: Vec<Value> = node_files(resolved, node)
        .iter()
        .map(|f| write_file(&f.path, f.mode, f.content.as_bytes()))
        .collect();
    for s in secrets {
        files.push(write_file(
            s.need.path,
            0o600,
            format!("{}\n", s.value).as_bytes(),
        ));
    }
    files
}

/// Renders a node's NoCloud seed.
pub fn render(
    resolved: &Resolved,
    node: &Node,
    secrets: &[SecretValue],
    nonce: &str,
    templates: &Templates,
) -> Result<Seed, TemplateError> {
    let mut ctx = user_data_context(
        resolved,
        node,
        "First-boot seed",
        seed_write_files(resolved, node, secrets),
        Vec::new(),
    );
    ctx["instance_id"] = json!(instance_id(&resolved.name, &node.name, nonce));
    Ok(Seed {
        user_data: templates.render("user-data.j2", &ctx)?,
        meta_data: templates.render("meta-data.j2", &ctx)?,
        network_config: templates.render("network-config.j2", &ctx)?,
    })
}

/// A node's `network-config` alone: it holds no secret, so it is rendered without any (the
/// Raspberry Pi netboot puts it on the kernel command line at build time).
pub fn render_network_config(
    resolved: &Resolved,
    node: &Node,
    templates: &Templates,
) -> Result<String, TemplateError> {
    let ctx = user_data_context(resolved, node, "First-boot seed", Vec::new(), Vec::new());
    templates.render("network-config.j2", &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_stable_hyphenated_and_distinct() {
        let a = instance_id("pi-worker", "pi-03", "");
        assert_eq!(a, instance_id("pi-worker", "pi-03", ""));
        assert_ne!(a, instance_id("pi-worker", "pi-04", ""));
        assert_ne!(a, instance_id("pi-worker", "pi-03", "2"));
        // Length-prefixed parts: moving a character between fields changes the id.
        assert_ne!(instance_id("ab", "c", ""), instance_id("a", "bc", ""));
        assert_eq!(a.len(), 4 + 36);
        assert_eq!(a.matches('-').count(), 5);
    }

    #[test]
    fn binary_files_are_base64() {
        let v = write_file("/x", 0o644, &[0, 159, 146, 150]);
        assert_eq!(v["encoding"], "b64");
        assert_eq!(v["mode"], "0644");
        let v = write_file("/y", 0o600, b"text\n");
        assert_eq!(v["content"], "text\n");
        assert_eq!(v["mode"], "0600");
    }
}
