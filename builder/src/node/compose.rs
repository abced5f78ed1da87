//! Composition: a resolved profile, its pinned artifacts and the board's facts → the additions
//! that turn a base OS tree into a k3s node image. Pure: no files, clock or randomness; secrets
//! are not an input, so they cannot reach the image.
//!
//! # Immutable root: why a PID 1 wrapper with overlays
//!
//! The root filesystem is mounted read-only (`ro` on the kernel command line and in fstab). All
//! state lives on the data partition (label [`DATA_LABEL`], grown to fill the disk at first boot),
//! mounted at [`DATA_MOUNT`]; `/etc`, `/var`, `/home` and `/root` are overlays whose lower layer
//! is the image and whose upper layer is on the data partition. So everything k3s, cloud-init,
//! the mesh agent and systemd write — `/etc/rancher` (node password, k3s #11140), `/var/lib/rancher`,
//! `/var/lib/kubelet`, `/var/lib/cni`, `/var/lib/tailscale`, `/var/lib/cloud`, `/etc/machine-id`,
//! SSH host keys, `/var/log` — persists, while `/usr` and the rest stay exactly the image.
//!
//! The overlays are mounted by a small shell script run as PID 1 (`init=`) before it execs
//! systemd. Alternatives considered:
//! * `systemd.volatile=overlay` needs systemd in the initrd (Debian and Raspberry Pi OS use
//!   initramfs-tools) and its upper layer is tmpfs, so `/etc` would not persist.
//! * overlayroot needs `cloud-initramfs-tools` and a rebuilt initramfs (we never execute the base),
//!   and by default it turns the data partition into tmpfs too (recursion trap).
//! * Mounting from fstab comes too late for `/etc`: systemd has already read `/etc` and set up
//!   `/etc/machine-id` by then, and `systemd-machine-id-commit` would commit to the hidden file.
//! * Bind mounts of single paths would need every writer's paths listed, and cloud-init writes
//!   all over `/etc` (passwd, shadow, hostname, sudoers.d, network config).
//!
//! Before systemd starts, the script has the kernel's `/dev`, `/proc` and `/sys` (or mounts
//! them), finds the data partition by label, checks and mounts it, and mounts the overlays. If the
//! partition is missing it uses tmpfs and says so on the console: the node boots, but forgets.
//! This is the OSTree/Fedora CoreOS split (immutable `/usr`, persistent `/etc` and `/var`) without
//! an initramfs of our own.
//!
//! Replacing a node under the same name: its k3s node password lives on the old node's data
//! partition, so delete the Node object (`kubectl delete node NAME`) before the replacement joins,
//! or k3s rejects it as a duplicate host name.

use super::files::{self, BoardFacts, NodeSet, Target, paths};
use super::inventory;
use super::templates::{TemplateError, Templates};
use std::io::Read;

use crate::node::systemd::{self, SystemdError};
use crate::profile::{Arch, MeshProvider, Resolved};
use crate::tree::{Content, Entry, Kind, Tree, TreeError, TreePath};

pub use super::files::{DATA_LABEL, DATA_MOUNT, PERSISTENT_DIRS};

/// The pinned artifacts a node image carries, already verified by the fetch layer.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The k3s binary for the image's architecture.
    pub k3s: Content,
    pub mesh: MeshArtifacts,
    /// Optional airgap images tarball: (file name, e.g. `k3s-airgap-images-arm64.tar.zst`, content).
    pub airgap_images: Option<(String, Content)>,
}

/// The mesh agent's files.
#[derive(Debug, Clone)]
pub enum MeshArtifacts {
    None,
    /// The two binaries of the static tarball (`tailscale_<ver>_<arch>/tailscale{,d}`).
    Tailscale {
        tailscale: Content,
        tailscaled: Content,
    },
    /// The contents of the `zerotier-one` `.deb`, as a tree.
    Zerotier(Tree),
}

impl MeshArtifacts {
    /// Picks the binaries out of the static Tailscale tarball read as a tree.
    pub fn tailscale_from_tarball(tree: &Tree) -> Result<Self, ComposeError> {
        let find = |name: &[u8]| {
            tree.iter()
                .find(|(p, e)| {
                    p.file_name() == name
                        && p.components().count() == 2
                        && matches!(e.kind, Kind::File(_))
                })
                .and_then(|(_, e)| match &e.kind {
                    Kind::File(c) => Some(c.clone()),
                    _ => None,
                })
                .ok_or(ComposeError::TarballLacks {
                    name: String::from_utf8_lossy(name).into_owned(),
                })
        };
        Ok(MeshArtifacts::Tailscale {
            tailscale: find(b"tailscale")?,
            tailscaled: find(b"tailscaled")?,
        })
    }
}

/// Why a profile could not be composed onto a base.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("composing the node tree: {0}")]
    Tree(#[from] TreeError),
    #[error(
        "the base has no {what} (looked for {}); use a base with {what} installed",
        .looked.join(", ")
    )]
    BaseLacks {
        what: &'static str,
        looked: Vec<String>,
    },
    #[error("the profile uses {profile} but the mesh artifacts given are for {given}")]
    MeshMismatch {
        profile: &'static str,
        given: &'static str,
    },
    #[error("the {package} package has no {file}; is it the right package?")]
    PackageLacks {
        package: &'static str,
        file: &'static str,
    },
    #[error("the Tailscale tarball has no tailscale_*/{name}")]
    TarballLacks { name: String },
    #[error(transparent)]
    Label(#[from] inventory::LabelError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(
        "{what} is built for {found}, but the profile's image.arch is {arch}\n  help: use the {arch} build, or set image.arch = \"{found}\""
    )]
    ArchMismatch {
        what: &'static str,
        found: &'static str,
        arch: Arch,
    },
}

/// The architecture an ELF executable is built for, from its header; `None` for anything else
/// (scripts, unknown machines).
fn elf_arch(c: &Content) -> Option<&'static str> {
    let mut head = [0u8; 20];
    c.open().ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" {
        return None;
    }
    let machine = match head[5] {
        1 => u16::from_le_bytes([head[18], head[19]]),
        _ => u16::from_be_bytes([head[18], head[19]]),
    };
    match machine {
        0x3e => Some("amd64"),
        0xb7 => Some("arm64"),
        0x28 => Some("arm"),
        0x03 => Some("386"),
        0xf3 => Some("riscv64"),
        _ => None,
    }
}

/// Refuses a base or artifact built for another architecture than the profile's.
fn check_arch(what: &'static str, c: Option<&Content>, arch: Arch) -> Result<(), ComposeError> {
    match c.and_then(elf_arch) {
        Some(found) if found != arch.as_str() => {
            Err(ComposeError::ArchMismatch { what, found, arch })
        }
        _ => Ok(()),
    }
}

/// What composition decided besides the tree: the kernel command line additions and the units
/// it enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// Kernel command line arguments to add (the board writer joins them to its own).
    pub cmdline: Vec<String>,
    /// Units enabled, by name.
    pub enabled: Vec<String>,
    /// Non-fatal remarks.
    pub warnings: Vec<String>,
}

/// Adds the node to `tree` (the base OS): k3s, the mesh agent, units, config, read-only root with
/// the data partition, datasource config; and resets the base's machine identity. Every entry
/// added gets `epoch` as its mtime.
pub fn compose(
    tree: &mut Tree,
    resolved: &Resolved,
    artifacts: &Artifacts,
    board: &BoardFacts,
    templates: &Templates,
    epoch: i64,
) -> Result<Composed, ComposeError> {
    check_base(tree)?;
    let arch = resolved.arch();
    let systemd = ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"]
        .iter()
        .find_map(|p| {
            match resolve(tree, p)
                .ok()
                .and_then(|p| tree.get(&p))
                .map(|e| &e.kind)
            {
                Some(Kind::File(c)) => Some(c.clone()),
                _ => None,
            }
        });
    check_arch("the base OS", systemd.as_ref(), arch)?;
    check_arch("the k3s binary", Some(&artifacts.k3s), arch)?;
    if let MeshArtifacts::Tailscale { tailscaled, .. } = &artifacts.mesh {
        check_arch("the tailscaled binary", Some(tailscaled), arch)?;
    }
    for l in &resolved.profile.k3s.labels {
        inventory::check_self_label(l)?;
    }
    let mut w = Writer { tree, epoch };
    let mut warnings = Vec::new();

    // k3s, as upstream's installer lays it out.
    w.file(paths::K3S_BIN, 0o755, artifacts.k3s.clone())?;
    for l in ["kubectl", "crictl", "ctr"] {
        w.symlink(&format!("/usr/local/bin/{l}"), "k3s")?;
    }
    w.dir(paths::K3S_CONFIG_D, 0o755)?;
    if let Some((name, content)) = &artifacts.airgap_images {
        w.file(
            &format!("/var/lib/rancher/k3s/agent/images/{name}"),
            0o644,
            content.clone(),
        )?;
    }

    // The mesh agent's binaries.
    let provider = resolved.profile.mesh.provider;
    let mut enable_extra: Vec<String> = Vec::new();
    match (&artifacts.mesh, provider) {
        (MeshArtifacts::None, MeshProvider::None) => {}
        (
            MeshArtifacts::Tailscale {
                tailscale,
                tailscaled,
            },
            MeshProvider::Tailscale,
        ) => {
            w.file("/usr/bin/tailscale", 0o755, tailscale.clone())?;
            w.file("/usr/sbin/tailscaled", 0o755, tailscaled.clone())?;
        }
        (MeshArtifacts::Zerotier(deb), MeshProvider::Zerotier) => {
            if !w.merge(deb, "zerotier-one.service")? {
                return Err(ComposeError::PackageLacks {
                    package: "zerotier-one",
                    file: "zerotier-one.service",
                });
            }
            enable_extra.push("zerotier-one.service".into());
        }
        (given, _) => {
            return Err(ComposeError::MeshMismatch {
                profile: provider.as_str(),
                given: match given {
                    MeshArtifacts::None => "no mesh",
                    MeshArtifacts::Tailscale { .. } => "tailscale",
                    MeshArtifacts::Zerotier(_) => "zerotier",
                },
            });
        }
    }

    // Units, scripts and config: the same set a cloud VM gets.
    let NodeSet { files, mut enable } =
        files::node_files(resolved, templates, Target::Image(board))?;
    for f in &files {
        w.file(
            &f.path,
            f.mode,
            Content::bytes(f.content.clone().into_bytes()),
        )?;
    }
    enable.extend(enable_extra);
    // Order the mesh and k3s after the clock is right where the base can wait for it (a Pi has no
    // RTC; TLS to the control server and k3s fails on a clock in 1970).
    for dir in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        let p = format!("{dir}/systemd-time-wait-sync.service");
        if w.exists(&p) {
            enable.push("systemd-time-wait-sync.service".into());
            let ctx = files::context(resolved, Target::Image(board));
            w.file(
                "/etc/systemd/system/systemd-time-wait-sync.service.d/10-imgbuild.conf",
                0o644,
                Content::bytes(
                    templates
                        .render("time-wait-sync.conf.j2", &ctx)?
                        .into_bytes(),
                ),
            )?;
            break;
        }
    }
    for unit in &enable {
        systemd::enable(w.tree, unit, epoch)?;
    }

    // The read-only root and its data partition; mount points must exist, nothing can create
    // them at boot.
    w.dir(DATA_MOUNT, 0o755)?;
    if board.boot_device.is_some() {
        w.dir(&board.boot_mount, 0o755)?;
    }
    w.dir(paths::STATE, 0o700)?;
    w.dir("/etc/imgbuild", 0o755)?;
    reset_identity(&mut w)?;

    let mut cmdline: Vec<String> = vec!["ro".into(), format!("init={}", paths::PREINIT)];
    if resolved.board().is_raspberry_pi() {
        // k3s needs the memory cgroup, which the Pi firmware's device tree switches off.
        cmdline.push("cgroup_enable=memory".into());
    }
    for a in &resolved.profile.kernel.cmdline {
        if !cmdline.contains(a) {
            cmdline.push(a.clone());
        }
    }
    if let Some(dir) = board.seed_dir()
        && !cmdline.iter().any(|a| a.starts_with("ds="))
    {
        // The seed's place on the kernel command line as well as in cloud.cfg.d: ds-identify
        // then settles on NoCloud from the command line alone, and anyone reading cmdline.txt
        // or the loader entry sees where the node's identity comes from.
        cmdline.push(format!(
            "ds=nocloud;s=file://{}/",
            dir.trim_end_matches('/')
        ));
    }
    let pos = |name: &str| board.datasources.iter().position(|d| d == name);
    if let (Some(nocloud), Some(configdrive)) = (pos("NoCloud"), pos("ConfigDrive"))
        && nocloud < configdrive
    {
        warnings.push(
            "cloud-init.datasources lists NoCloud before ConfigDrive: DigitalOcean droplets from \
             this image will not boot properly; list ConfigDrive first"
                .into(),
        );
    }
    Ok(Composed {
        cmdline,
        enabled: enable,
        warnings,
    })
}

/// The base must be able to run a node: systemd as init, cloud-init for the seed, and findfs or
/// blkid for the preinit script to find the data partition.
fn check_base(tree: &Tree) -> Result<(), ComposeError> {
    let w = Reader { tree };
    let need: [(&'static str, &[&str]); 4] = [
        (
            "systemd",
            &["/usr/lib/systemd/systemd", "/lib/systemd/systemd"],
        ),
        ("cloud-init", &["/usr/bin/cloud-init"]),
        (
            "findfs or blkid (util-linux)",
            &[
                "/usr/sbin/findfs",
                "/sbin/findfs",
                "/usr/sbin/blkid",
                "/sbin/blkid",
            ],
        ),
        ("a POSIX shell", &["/bin/sh", "/usr/bin/sh"]),
    ];
    for (what, looked) in need {
        if !looked.iter().any(|p| w.exists(p)) {
            return Err(ComposeError::BaseLacks {
                what,
                looked: looked.iter().map(|s| s.to_string()).collect(),
            });
        }
    }
    Ok(())
}

/// Removes everything that makes a node unique, so every node made from the image gets its own:
/// machine-id, SSH host keys, mesh identity, k3s node password and state, cloud-init state.
fn reset_identity(w: &mut Writer<'_>) -> Result<(), ComposeError> {
    // An empty machine-id (not a missing one) tells systemd this is the first boot.
    w.file("/etc/machine-id", 0o444, Content::bytes(Vec::new()))?;
    if w.exists("/var/lib/dbus/machine-id") || w.exists("/var/lib/dbus") {
        w.symlink("/var/lib/dbus/machine-id", "/etc/machine-id")?;
    }
    let ssh = w.real("/etc/ssh")?;
    let host_keys: Vec<TreePath> = w
        .tree
        .children(&ssh)
        .filter(|(p, _)| p.file_name().starts_with(b"ssh_host_"))
        .map(|(p, _)| p.clone())
        .collect();
    for p in host_keys {
        w.tree.remove(&p);
    }
    for dir in [
        "/var/lib/tailscale",
        "/var/lib/cloud",
        "/etc/rancher/node",
        "/var/lib/rancher/k3s/agent/etc",
        "/var/lib/rancher/k3s/server",
    ] {
        let p = w.real(dir)?;
        w.tree.remove(&p);
    }
    for file in [
        "/var/lib/zerotier-one/identity.secret",
        "/var/lib/zerotier-one/identity.public",
        "/var/lib/zerotier-one/authtoken.secret",
        "/var/lib/systemd/random-seed",
        "/var/lib/systemd/credential.secret",
        "/etc/rancher/k3s/k3s.yaml",
        paths::MESH_KEY,
        // Where images of earlier versions kept the key (a base made from such a node).
        "/var/lib/imgbuild/mesh-authkey",
        paths::K3S_TOKEN,
        paths::K3S_AGENT_TOKEN,
    ] {
        let p = w.real(file)?;
        w.tree.remove(&p);
    }
    Ok(())
}

/// Reads paths of a tree the way the running system would, following symlinked directories
/// (`/lib` → `usr/lib` on merged-/usr systems).
struct Reader<'a> {
    tree: &'a Tree,
}

impl Reader<'_> {
    fn exists(&self, path: &str) -> bool {
        resolve(self.tree, path).is_ok_and(|p| self.tree.get(&p).is_some())
    }
}

/// `path` with every directory component resolved through the tree's symlinks (the last component
/// is kept as is). Gives up after 40 links, like the kernel.
fn resolve(tree: &Tree, path: &str) -> Result<TreePath, TreeError> {
    let mut pending: Vec<Vec<u8>> = TreePath::new(path)?
        .components()
        .map(<[u8]>::to_vec)
        .collect();
    pending.reverse();
    let mut cur = TreePath::root();
    let mut links = 0;
    while let Some(comp) = pending.pop() {
        let next = cur.join(&comp)?;
        let is_last = pending.is_empty();
        match tree.get(&next).map(|e| &e.kind) {
            Some(Kind::Symlink(target)) if !is_last && links < 40 => {
                links += 1;
                let base = if target.starts_with(b"/") {
                    TreePath::root()
                } else {
                    cur.clone()
                };
                let mut parts: Vec<Vec<u8>> = Vec::new();
                for c in target.split(|&b| b == b'/') {
                    match c {
                        b"" | b"." => {}
                        b".." => {
                            parts.push(b"..".to_vec());
                        }
                        c => parts.push(c.to_vec()),
                    }
                }
                // Apply `..` against the base, then continue with the rest of the target.
                let mut start = base;
                let mut rest = Vec::new();
                for c in parts {
                    if c == b".." && rest.is_empty() {
                        start = start.parent().unwrap_or_else(TreePath::root);
                    } else {
                        rest.push(c);
                    }
                }
                cur = start;
                for c in rest.into_iter().rev() {
                    pending.push(c);
                }
            }
            _ => cur = next,
        }
    }
    Ok(cur)
}

/// Adds entries with parents created as needed, through the tree's symlinked directories.
struct Writer<'a> {
    tree: &'a mut Tree,
    epoch: i64,
}

impl Writer<'_> {
    fn real(&self, path: &str) -> Result<TreePath, TreeError> {
        resolve(self.tree, path)
    }

    fn exists(&self, path: &str) -> bool {
        Reader { tree: self.tree }.exists(path)
    }

    fn put(&mut self, path: &str, entry: Entry) -> Result<(), TreeError> {
        let real = self.real(path)?;
        let parent_dir = Entry::dir(0o755).at(self.epoch);
        if let Some(parent) = real.parent() {
            self.tree.mkdir_p(&parent, &parent_dir)?;
        }
        self.tree.insert(real, entry.at(self.epoch))?;
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, content: Content) -> Result<(), TreeError> {
        self.put(path, Entry::file(mode, content))
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        self.put(path, Entry::dir(mode))
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<(), TreeError> {
        self.put(path, Entry::symlink(target))
    }

    /// Copies every entry of `other` (a package's files) into the tree, keeping existing
    /// directories; says whether the package has a systemd unit named `unit`.
    fn merge(&mut self, other: &Tree, unit: &str) -> Result<bool, TreeError> {
        let mut found = false;
        for (p, e) in other.iter() {
            if p.is_root() {
                continue;
            }
            let display = p.display();
            if e.is_dir() {
                let real = self.real(&display)?;
                if self.tree.get(&real).is_some() {
                    continue;
                }
            }
            if p.file_name() == unit.as_bytes() && display.contains("/systemd/system/") {
                found = true;
            }
            let mut e = e.clone();
            e.mtime = e.mtime.min(self.epoch);
            let real = self.real(&display)?;
            if let Some(parent) = real.parent() {
                self.tree
                    .mkdir_p(&parent, &Entry::dir(0o755).at(self.epoch))?;
            }
            self.tree.insert(real, e)?;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::test_path as p;

    #[test]
    fn resolve_follows_merged_usr_links() {
        let mut t = Tree::new();
        let d = Entry::dir(0o755);
        t.insert_with_parents(p("/usr/lib/systemd/system"), d.clone(), &d)
            .unwrap();
        t.insert(p("/lib"), Entry::symlink("usr/lib")).unwrap();
        t.insert_with_parents(p("/etc/alt"), Entry::symlink("../usr/lib"), &d)
            .unwrap();
        assert_eq!(
            resolve(&t, "/lib/systemd/system/x.service").unwrap(),
            p("/usr/lib/systemd/system/x.service")
        );
        assert_eq!(
            resolve(&t, "/etc/alt/systemd").unwrap(),
            p("/usr/lib/systemd")
        );
        // The last component is never followed: we replace links, not their targets.
        assert_eq!(resolve(&t, "/lib").unwrap(), p("/lib"));
    }
}
