//! The files that make a profile's node: units, scripts and k3s config, rendered from the node
//! templates. One function, [`node_files`], serves both outputs — [`super::compose`] puts them into
//! the image tree, [`super::userdata`] into a cloud VM's `write_files` — so the two can never
//! drift apart.

use serde_json::{Value, json};

use super::templates::{TemplateError, Templates};
use super::yaml;
use crate::profile::{MeshProvider, Resolved, Role};

/// Where things live on a node (the same in an image and on a cloud VM).
pub mod paths {
    /// Our scripts.
    pub const SCRIPTS: &str = "/usr/local/lib/imgbuild";
    /// Units we write, next to the ones upstream's k3s installer writes.
    pub const UNITS: &str = "/etc/systemd/system";
    /// Node state of ours (the one-off mesh key, the first-boot marker).
    pub const STATE: &str = "/var/lib/imgbuild";
    /// The one-off mesh auth key (written by the seed, 0600). In RAM (/run), so it never reaches
    /// a disk: a deleted file's blocks keep its bytes, and flash media remap overwrites.
    pub const MESH_KEY: &str = "/run/imgbuild/mesh-authkey";
    /// cloud-init's state (it holds the raw user-data, secrets included): a tmpfs on images.
    pub const CLOUD_STATE: &str = "/var/lib/cloud";
    /// Marker: the first boot finished and removed its credentials.
    pub const FIRSTBOOT_DONE: &str = "/var/lib/imgbuild/firstboot-done";
    /// Per-node, non-secret values for our scripts (MESH_HOSTNAME, MESH_TAGS).
    pub const NODE_ENV: &str = "/etc/imgbuild/node.env";
    pub const K3S_DIR: &str = "/etc/rancher/k3s";
    pub const K3S_CONFIG: &str = "/etc/rancher/k3s/config.yaml";
    pub const K3S_CONFIG_D: &str = "/etc/rancher/k3s/config.yaml.d";
    /// The k3s token file (`token-file`), written by the seed.
    pub const K3S_TOKEN: &str = "/etc/rancher/k3s/token";
    /// Servers only: the token agents join with (`agent-token-file`).
    pub const K3S_AGENT_TOKEN: &str = "/etc/rancher/k3s/agent-token";
    pub const K3S_BIN: &str = "/usr/local/bin/k3s";
    /// The PID 1 wrapper that mounts the data partition before systemd (images only).
    pub const PREINIT: &str = "/usr/local/lib/imgbuild/preinit";
    /// FlexVolume plugins must not live on the read-only /usr (k3s #1683, rancher/k3os#282).
    pub const VOLUME_PLUGINS: &str = "/var/lib/kubelet/volumeplugins";
}

/// How long imgbuild-nodeip waits for the mesh address before giving up, in seconds.
const NODEIP_TIMEOUT_S: u32 = 600;
/// The persistent journal's size limit on the data partition, in MiB.
const JOURNAL_MAX_MIB: u32 = 64;

/// Facts about the board and disk layout an image is composed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardFacts {
    /// fstab spec of the root filesystem (`PARTUUID=…`, `LABEL=…`).
    pub root_device: String,
    pub root_fstype: String,
    /// fstab spec of the boot partition (ESP or Pi firmware partition) holding the seed.
    pub boot_device: Option<String>,
    /// Where the boot partition is mounted (`/boot/efi`, `/boot/firmware`).
    pub boot_mount: String,
    /// Filesystem label of the data partition.
    pub data_label: String,
    /// Datasources cloud-init may use; empty means NoCloud from the boot partition only.
    pub datasources: Vec<String>,
}

/// Label of the data partition the disk builder creates (ext4, last partition).
pub const DATA_LABEL: &str = "imgbuild-data";
/// Label of the root filesystem the disk builder creates.
pub const ROOT_LABEL: &str = "imgbuild-root";
/// Label of the boot (ESP / firmware) FAT filesystem; FAT labels hold at most 11 characters.
pub const BOOT_LABEL: &str = "IMGBUILD";
/// Where the data partition is mounted.
pub const DATA_MOUNT: &str = "/persist";
/// Directories made writable by an overlay whose upper layer is on the data partition.
pub const PERSISTENT_DIRS: &[&str] = &["etc", "var", "home", "root"];

impl BoardFacts {
    /// The layout of imgbuild's own disk images for `resolved`'s board: root, boot and data
    /// filesystems found by label.
    pub fn for_profile(resolved: &Resolved) -> Self {
        let board = resolved.board();
        let boot_mount = if board.is_raspberry_pi() {
            "/boot/firmware"
        } else {
            "/boot/efi"
        };
        BoardFacts {
            root_device: format!("LABEL={ROOT_LABEL}"),
            root_fstype: "ext4".into(),
            boot_device: Some(format!("LABEL={BOOT_LABEL}")),
            boot_mount: boot_mount.into(),
            data_label: DATA_LABEL.into(),
            datasources: resolved.profile.cloud_init.datasources.clone(),
        }
    }

    /// Where the seed files are on the running node: the root of the boot partition, unless the
    /// board takes its seed from a cloud datasource.
    pub fn seed_dir(&self) -> Option<&str> {
        (self.datasources.is_empty() && self.boot_device.is_some())
            .then_some(self.boot_mount.as_str())
    }
}

/// What the files are for.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// An image: adds the read-only root, data partition, datasource config.
    Image(&'a BoardFacts),
    /// A stock cloud VM set up by user-data.
    Cloud {
        /// Add a unit that blocks pods from the metadata service.
        block_metadata: bool,
    },
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    /// Absolute path on the node.
    pub path: String,
    pub mode: u32,
    pub content: String,
}

/// The node's files and the units to enable.
#[derive(Debug, Clone, Default)]
pub struct NodeSet {
    pub files: Vec<NodeFile>,
    /// Units to enable (as `systemctl enable` would, from their `[Install]` sections), in order.
    pub enable: Vec<String>,
}

impl NodeSet {
    fn add(&mut self, path: impl Into<String>, mode: u32, content: String) {
        self.files.push(NodeFile {
            path: path.into(),
            mode,
            content,
        });
    }
}

/// The k3s role's command, unit name.
pub fn k3s_unit(role: Role) -> &'static str {
    match role {
        Role::Server => "k3s.service",
        Role::Agent => "k3s-agent.service",
    }
}

/// The interface the mesh creates (flannel-iface), or `None` without a mesh.
pub fn mesh_interface(resolved: &Resolved) -> Option<String> {
    let m = &resolved.profile.mesh;
    match m.provider {
        MeshProvider::None => None,
        MeshProvider::Tailscale => Some(m.interface.clone().unwrap_or("tailscale0".into())),
        MeshProvider::Zerotier => Some(m.interface.clone().unwrap_or("zt0".into())),
    }
}

/// The template context shared by every node template.
pub fn context(resolved: &Resolved, target: Target<'_>) -> Value {
    let p = &resolved.profile;
    let role = p.k3s.role.unwrap_or(Role::Agent);
    let mesh = &p.mesh;
    let (board, data, cloud_init, seed_dir) = match target {
        Target::Image(b) => {
            let mut list = if b.datasources.is_empty() {
                vec!["NoCloud".to_string()]
            } else {
                b.datasources.clone()
            };
            if !list.iter().any(|d| d == "None") {
                list.push("None".into());
            }
            let seedfrom = b
                .seed_dir()
                .map(|d| format!("file://{}/", d.trim_end_matches('/')));
            (
                json!({
                    "root_device": b.root_device,
                    "root_fstype": b.root_fstype,
                    "boot_device": b.boot_device,
                    "boot_mount": b.boot_mount,
                }),
                json!({ "label": b.data_label, "mount": DATA_MOUNT, "overlays": PERSISTENT_DIRS }),
                json!({ "datasource_list": list, "seedfrom": seedfrom }),
                json!(b.seed_dir()),
            )
        }
        Target::Cloud { .. } => (Value::Null, Value::Null, Value::Null, Value::Null),
    };
    json!({
        "profile": resolved.name,
        "k3s": {
            "role": role.as_str(),
            "command": role.as_str(),
            "unit": k3s_unit(role),
        },
        "mesh": {
            "enabled": mesh.provider != MeshProvider::None,
            "provider": mesh.provider.as_str(),
            "tags": mesh.tags,
            "login_server": mesh.login_server,
            "network": mesh.network,
            "interface": mesh_interface(resolved),
        },
        "paths": {
            "scripts": paths::SCRIPTS,
            "state": paths::STATE,
            "mesh_key": paths::MESH_KEY,
            "node_env": paths::NODE_ENV,
            "token": paths::K3S_TOKEN,
            "agent_token": paths::K3S_AGENT_TOKEN,
            "k3s_config_d": paths::K3S_CONFIG_D,
            "firstboot_done": paths::FIRSTBOOT_DONE,
            "preinit": paths::PREINIT,
        },
        "board": board,
        "data": data,
        "cloud_init": cloud_init,
        "seed_dir": seed_dir,
        "nodeip_timeout": NODEIP_TIMEOUT_S,
        "time_wait_s": resolved.profile.time.sync_wait(),
        "journal_max_mib": JOURNAL_MAX_MIB,
        "cloud_state": paths::CLOUD_STATE,
    })
}

/// The cluster-wide `/etc/rancher/k3s/config.yaml` of a profile. Per-node values (node name,
/// extra labels, node-ip) go to `config.yaml.d/` at first boot.
pub fn k3s_config(resolved: &Resolved) -> String {
    let k = &resolved.profile.k3s;
    let role = k.role.unwrap_or(Role::Agent);
    let mut entries: Vec<(String, Value)> = Vec::new();
    if k.cluster_init {
        entries.push(("cluster-init".into(), json!(true)));
    }
    if let Some(s) = &k.server {
        entries.push(("server".into(), json!(s)));
    }
    if k.token.is_some() {
        entries.push(("token-file".into(), json!(paths::K3S_TOKEN)));
    }
    if role == Role::Server && k.agent_token.is_some() {
        entries.push(("agent-token-file".into(), json!(paths::K3S_AGENT_TOKEN)));
    }
    if let Some(iface) = mesh_interface(resolved) {
        entries.push(("flannel-iface".into(), json!(iface)));
    }
    if !k.labels.is_empty() {
        entries.push(("node-label".into(), json!(k.labels)));
    }
    if !k.taints.is_empty() {
        entries.push(("node-taint".into(), json!(k.taints)));
    }
    if role == Role::Server {
        entries.push(("write-kubeconfig-mode".into(), json!("0600")));
    }
    // Our defaults, then the profile's own keys; for the volume-plugin arguments the profile's
    // lists are extended rather than replaced.
    let mut extra: Vec<(String, Value)> = vec![(
        "kubelet-arg".into(),
        json!([format!("volume-plugin-dir={}", paths::VOLUME_PLUGINS)]),
    )];
    if role == Role::Server {
        extra.push((
            "kube-controller-manager-arg".into(),
            json!([format!("flex-volume-plugin-dir={}", paths::VOLUME_PLUGINS)]),
        ));
    }
    for (key, v) in &k.config {
        let v = toml_to_json(v);
        match extra.iter_mut().find(|(k2, _)| k2 == key) {
            Some((_, Value::Array(ours))) => {
                let mut theirs = match v {
                    Value::Array(a) => a,
                    other => vec![other],
                };
                let prefix = ours[0]
                    .as_str()
                    .and_then(|s| s.split_once('='))
                    .map(|(p, _)| format!("{p}="))
                    .unwrap_or_default();
                if theirs
                    .iter()
                    .any(|t| t.as_str().is_some_and(|s| s.starts_with(&prefix)))
                {
                    ours.clear();
                }
                ours.append(&mut theirs);
            }
            _ => extra.push((key.clone(), v)),
        }
    }
    entries.extend(extra);
    format!(
        "# k3s configuration of profile {}, written by imgbuild.\n# Per-node values (node name, node-ip, extra labels) are in config.yaml.d/.\n{}",
        resolved.name,
        yaml::mapping(&entries)
    )
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => json!(s),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => json!(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Renders the node's units, scripts and k3s config for `target`. Binaries are not included: the
/// image gets them from the pinned artifacts, a cloud VM downloads them.
pub fn node_files(
    resolved: &Resolved,
    templates: &Templates,
    target: Target<'_>,
) -> Result<NodeSet, TemplateError> {
    let ctx = context(resolved, target);
    let render = |name: &str| templates.render(name, &ctx);
    let role = resolved.profile.k3s.role.unwrap_or(Role::Agent);
    let k3s_unit = k3s_unit(role);
    let unit = |name: &str| format!("{}/{name}", paths::UNITS);
    let script = |name: &str| format!("{}/{name}", paths::SCRIPTS);
    let mut set = NodeSet::default();

    set.add(unit(k3s_unit), 0o644, render("k3s.service.j2")?);
    set.add(paths::K3S_CONFIG, 0o600, k3s_config(resolved));
    set.enable.push(k3s_unit.to_string());

    match resolved.profile.mesh.provider {
        MeshProvider::None => {}
        MeshProvider::Tailscale => {
            set.add(
                unit("tailscaled.service"),
                0o644,
                render("tailscaled.service.j2")?,
            );
            set.add(
                "/etc/default/tailscaled",
                0o644,
                render("tailscaled.defaults.j2")?,
            );
            set.add(
                unit("imgbuild-mesh-join.service"),
                0o644,
                render("imgbuild-mesh-join.service.j2")?,
            );
            set.add(
                script("mesh-join"),
                0o755,
                render("mesh-join-tailscale.sh.j2")?,
            );
            set.enable.push("tailscaled.service".to_string());
            set.enable.push("imgbuild-mesh-join.service".to_string());
        }
        MeshProvider::Zerotier => {
            set.add(
                unit("zerotier-one.service.d/10-imgbuild.conf"),
                0o644,
                render("zerotier-one.service.d.conf.j2")?,
            );
            set.add(
                script("mesh-join"),
                0o755,
                render("mesh-join-zerotier.sh.j2")?,
            );
        }
    }
    if resolved.profile.mesh.provider != MeshProvider::None {
        set.add(
            unit("imgbuild-nodeip.service"),
            0o644,
            render("imgbuild-nodeip.service.j2")?,
        );
        set.add(script("k3s-nodeip"), 0o755, render("k3s-nodeip.sh.j2")?);
        set.enable.push("imgbuild-nodeip.service".to_string());
    }
    set.add(
        unit("imgbuild-firstboot-done.service"),
        0o644,
        render("imgbuild-firstboot-done.service.j2")?,
    );
    set.add(
        script("firstboot-done"),
        0o755,
        render("firstboot-done.sh.j2")?,
    );
    set.enable
        .push("imgbuild-firstboot-done.service".to_string());

    // On clouds the metadata service serves the node's user-data, credentials included, to
    // anything that asks, pods too.
    let block_metadata = match target {
        Target::Image(board) => !board.datasources.is_empty(),
        Target::Cloud { block_metadata } => block_metadata,
    };
    if block_metadata {
        set.add(
            unit("imgbuild-block-metadata.service"),
            0o644,
            render("imgbuild-block-metadata.service.j2")?,
        );
        set.add(
            script("block-metadata"),
            0o755,
            render("block-metadata.sh.j2")?,
        );
        set.enable
            .push("imgbuild-block-metadata.service".to_string());
    }
    match target {
        Target::Image(board) => {
            set.add(paths::PREINIT, 0o755, render("preinit.sh.j2")?);
            set.add(
                unit("imgbuild-grow-data.service"),
                0o644,
                render("imgbuild-grow-data.service.j2")?,
            );
            set.add(script("grow-data"), 0o755, render("grow-data.sh.j2")?);
            set.enable.push("imgbuild-grow-data.service".to_string());
            set.add("/etc/fstab", 0o644, render("fstab.j2")?);
            set.add(
                "/etc/systemd/journald.conf.d/10-imgbuild.conf",
                0o644,
                render("journald.conf.j2")?,
            );
            set.add(
                "/etc/cloud/cloud.cfg.d/90-imgbuild.cfg",
                0o644,
                render("cloud.cfg.j2")?,
            );
            if board.seed_dir().is_some() {
                set.add(
                    unit("cloud-init-local.service.d/10-imgbuild-seed.conf"),
                    0o644,
                    render("cloud-init-local-seed.conf.j2")?,
                );
            }
            set.add(
                "/etc/ssh/sshd_config.d/10-imgbuild.conf",
                0o644,
                render("sshd_config.conf.j2")?,
            );
            set.add(
                unit("ssh.service.d/10-imgbuild-hostkeys.conf"),
                0o644,
                render("ssh-hostkeys.conf.j2")?,
            );
        }
        Target::Cloud { .. } => {}
    }
    Ok(set)
}
