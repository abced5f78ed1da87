//! The build pipeline: a resolved profile and its verified inputs → the trees of the image's
//! filesystems → the disk layout. Reading inputs is the only I/O here (through the tree's content
//! references); fetching and the clock stay in `cmd/build.rs`; [`outputs`] writes the files.

pub mod outputs;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::boot::efi::{self, EspSpec};
use crate::boot::rpi::{self, PiSpec};
use crate::disk::contents::{Ext4Content, FatContent};
use crate::disk::layout::{Layout, PartType, Partition, Size, TableKind};
use crate::disk::manifest::InputRecord;
use crate::fetch::FetchedInput;
use crate::fetch::cache::Cache;
use crate::fetch::plan::InputKind;
use crate::ids::ImageSeed;
use crate::node::compose::{self, Artifacts, MeshArtifacts};
use crate::node::files::{BOOT_LABEL, BoardFacts, DATA_LABEL, ROOT_LABEL};
use crate::node::templates::Templates;
use crate::profile::{Arch, Board, PartitionTable, Resolved};
use crate::source::overlay;
use crate::source::{deb, raw, tar};
use crate::tree::{Content, Tree, TreePath};
use crate::unpack::UnpackLimit;

/// Opened inputs: the trees read from them and the scratch files their contents point into
/// (kept alive until the image is written).
pub struct Opened {
    pub root: Tree,
    /// The base's boot partition, when the base is a disk image that has one.
    pub boot: Option<Tree>,
    pub artifacts: Artifacts,
    pub records: Vec<InputRecord>,
    _hold: Vec<Box<dyn std::any::Any>>,
}

/// How far the profile's base may decompress: `base.max-unpacked`, or what the image size implies.
fn unpack_limit(p: &crate::profile::Profile) -> UnpackLimit {
    match p.base.max_unpacked.bytes() {
        Some(max) => UnpackLimit { max },
        None => UnpackLimit::for_image(p.image.size.bytes()),
    }
}

/// Reads every fetched input into trees. `scratch` holds decompressed archives for the life of
/// the build.
pub fn open_inputs(
    resolved: &Resolved,
    inputs: &[FetchedInput],
    cache: &Cache,
    scratch: &Path,
) -> Result<Opened> {
    let mut hold: Vec<Box<dyn std::any::Any>> = Vec::new();
    let by_kind = |k: InputKind| inputs.iter().find(|i| i.kind == k);
    let base = by_kind(InputKind::Base).with_context(|| {
        format!(
            "profile {} has no base OS: set base.url (or base.path) to a raw disk image, .img.xz or rootfs tarball",
            resolved.name
        )
    })?;

    // By content, not by name: the same dispatcher as `mkfs --from` and the base-reader tests.
    let (root, boot, archive) = raw::open_base(
        &base.path,
        raw::Decompress::Cache {
            cache,
            sha256: &base.sha256,
        },
        scratch,
        &unpack_limit(&resolved.profile),
        resolved.profile.base.boot_partition.as_deref(),
        resolved.profile.base.root_partition.as_deref(),
    )
    .with_context(|| format!("reading the base {}", base.url))?
    .into_trees();
    if let Some(a) = archive {
        hold.push(Box::new(a));
    }

    let k3s = by_kind(InputKind::K3s).context("the k3s binary is missing from the inputs")?;
    let mesh = match resolved.profile.mesh.provider {
        crate::profile::MeshProvider::None => MeshArtifacts::None,
        crate::profile::MeshProvider::Tailscale => {
            let i = by_kind(InputKind::Tailscale).context("the Tailscale tarball is missing")?;
            let mut t = Tree::new();
            let tf = tar::read_archive_file(&i.path, scratch, &UnpackLimit::default(), &mut t)
                .with_context(|| format!("reading the Tailscale tarball {}", i.url))?;
            hold.push(Box::new(tf));
            MeshArtifacts::tailscale_from_tarball(&t)?
        }
        crate::profile::MeshProvider::Zerotier => {
            let i = by_kind(InputKind::Zerotier).context("the ZeroTier package is missing")?;
            let mut t = Tree::new();
            let d = deb::read_deb(&i.path, scratch, &mut t)
                .with_context(|| format!("reading the ZeroTier package {}", i.url))?;
            hold.push(Box::new(d));
            MeshArtifacts::Zerotier(t)
        }
    };
    let airgap_images = by_kind(InputKind::K3sAirgapImages).map(|i| {
        let name = crate::fetch::plan::file_name(&i.url).to_string();
        (name, Content::host_file(&i.path, 0, i.size))
    });
    let records = inputs
        .iter()
        .map(|i| InputRecord {
            name: i.name.clone(),
            url: i.url.clone(),
            sha256: i.sha256.clone(),
        })
        .collect();
    Ok(Opened {
        root,
        boot,
        artifacts: Artifacts {
            k3s: Content::host_file(&k3s.path, 0, k3s.size),
            mesh,
            airgap_images,
        },
        records,
        _hold: hold,
    })
}

/// SOURCE_DATE_EPOCH when the profile does not set one: the newest timestamp in the base's root
/// filesystem — the moment the base was built. Derived from a pinned input, never the clock, and
/// so nothing imgbuild adds looks newer than the OS it was added to.
pub fn default_epoch(root: &Tree) -> i64 {
    root.iter().map(|(_, e)| e.mtime).max().unwrap_or(0).max(0)
}

/// The seed every identifier of the image is derived from: a hash of the resolved profile and
/// the pinned inputs (systemd-repart keys its identifiers the same way).
///
/// Only what changes the disk feeds it: the output formats do not (adding `.img.xz` later must
/// give the same disk), nor does the output folder or `--node` (which are not in the profile).
pub fn image_seed(resolved: &Resolved, records: &[InputRecord]) -> Result<ImageSeed> {
    let mut disk_profile = resolved.profile.clone();
    disk_profile.image.formats.clear();
    let mut h = Sha256::new();
    h.update(b"imgbuild image seed v1\0");
    h.update(serde_json::to_vec(&disk_profile)?);
    for r in records {
        h.update(b"\0");
        h.update(r.name.as_bytes());
        h.update(b"\0");
        h.update(r.sha256.as_bytes());
    }
    Ok(ImageSeed::new(h.finalize().into()))
}

/// The trees of one image.
#[derive(Clone)]
pub struct ImageTrees {
    pub root: Tree,
    pub boot: Tree,
    /// Kernel command line of the image (for reports and tests).
    pub cmdline: Vec<String>,
    pub warnings: Vec<String>,
}

/// Composes the node onto the base and builds the boot partition for the board.
pub fn compose_image(
    resolved: &Resolved,
    opened: &Opened,
    templates: &Templates,
    seed: &ImageSeed,
    epoch: i64,
) -> Result<ImageTrees> {
    let mut root = opened.root.clone();
    let facts = BoardFacts::for_profile(resolved);
    let composed = compose::compose(
        &mut root,
        resolved,
        &opened.artifacts,
        &facts,
        templates,
        epoch,
    )
    .context("composing the node onto the base")?;
    // The profile's overlays come last: they may replace anything, in order.
    overlay::apply_profile(&mut root, resolved, epoch)
        .context("applying the profile's overlays")?;
    root.clamp_mtimes(epoch);
    let board = resolved.board();
    let boot = match board {
        Board::Efi | Board::Cloud => {
            let uuid = root_partuuid(resolved, seed);
            let cmdline: Vec<String> = composed
                .cmdline
                .iter()
                .filter(|a| a.as_str() != "ro")
                .cloned()
                .collect();
            efi::esp_tree(
                &root,
                &EspSpec {
                    arch: resolved.arch(),
                    title: resolved.image_name(),
                    root_partuuid: &uuid,
                    cmdline: &cmdline,
                    epoch,
                },
            )?
        }
        Board::Rpi4 | Board::Rpi5 | Board::Rpi => {
            let uuid = root_partuuid(resolved, seed);
            rpi::boot_tree(
                opened.boot.as_ref(),
                &PiSpec {
                    board,
                    root_partuuid: &uuid,
                    cmdline: &composed.cmdline,
                    config_txt: &resolved.profile.pi.config_txt,
                    epoch,
                },
            )?
        }
    };
    let mut warnings = composed.warnings;
    warnings.extend(
        crate::fs::fat::unrepresentable(&boot)
            .into_iter()
            .map(|w| format!("boot partition: {w}")),
    );
    Ok(ImageTrees {
        root,
        boot,
        cmdline: composed.cmdline,
        warnings,
    })
}

/// The type of the root partition on this architecture (Discoverable Partitions Specification).
fn root_type(arch: Arch) -> PartType {
    match arch {
        Arch::Amd64 => PartType::RootX86_64,
        Arch::Arm64 => PartType::RootArm64,
    }
}

/// The image's partitions, in order: labels and types. [`layout`] builds exactly these, and
/// [`root_partuuid`] names the root among them before anything is written.
fn partition_shape(resolved: &Resolved) -> (TableKind, [(&'static str, PartType); 3]) {
    let (table, boot_type) = match resolved.partition_table() {
        PartitionTable::Gpt => (TableKind::Gpt, PartType::Esp),
        PartitionTable::Mbr => (TableKind::Mbr, PartType::Fat32),
    };
    let shape = [
        (BOOT_LABEL, boot_type),
        (ROOT_LABEL, root_type(resolved.arch())),
        (DATA_LABEL, PartType::LinuxGeneric),
    ];
    (table, shape)
}

/// The PARTUUID the root partition will have, derived as the disk assembly derives it, so the
/// boot entry can name it before the disk is written.
pub fn root_partuuid(resolved: &Resolved, seed: &ImageSeed) -> String {
    let (table, shape) = partition_shape(resolved);
    crate::disk::image::ids_for_shape(table, &shape, seed)
        .into_iter()
        .find(|p| p.label == ROOT_LABEL)
        .expect("the shape has a root partition")
        .partuuid
}

/// The disk layout: boot (ESP / FAT32), root (ext4, sized to fit), data (ext4, grows at first
/// boot). The image is `image.size` when set, else just large enough.
pub fn layout(resolved: &Resolved, trees: ImageTrees, epoch: i64) -> Result<Layout> {
    let img = &resolved.profile.image;
    let bytes = |s: crate::profile::Size, what: &str| match s {
        crate::profile::Size::Bytes(b) => Ok(Size::Bytes(b)),
        crate::profile::Size::Auto => {
            bail!("image.{what} = \"auto\" is not supported; give a size")
        }
    };
    // An empty filesystem (the ext4 writer adds lost+found itself).
    let mut data = Tree::new();
    data.get_mut(&TreePath::root()).expect("root").mtime = epoch;
    let (table, [(_, boot_type), (_, root_type), (_, data_type)]) = partition_shape(resolved);
    let partitions = vec![
        Partition {
            label: BOOT_LABEL.to_string(),
            ptype: boot_type,
            size: bytes(img.boot_size, "boot-size")?,
            offset: None,
            content: Box::new(FatContent {
                tree: Arc::new(trees.boot),
                label: BOOT_LABEL.to_string(),
            }),
        },
        Partition {
            label: ROOT_LABEL.to_string(),
            ptype: root_type,
            size: Size::Auto,
            offset: None,
            content: Box::new(Ext4Content {
                tree: Arc::new(trees.root),
                label: Some(ROOT_LABEL.to_string()),
            }),
        },
        Partition {
            label: DATA_LABEL.to_string(),
            ptype: data_type,
            size: match img.size {
                crate::profile::Size::Auto => bytes(img.data_size, "data-size")?,
                crate::profile::Size::Bytes(_) => Size::Grow,
            },
            offset: None,
            content: Box::new(Ext4Content {
                tree: Arc::new(data),
                label: Some(DATA_LABEL.to_string()),
            }),
        },
    ];
    let disk_size = match img.size {
        crate::profile::Size::Auto => None,
        crate::profile::Size::Bytes(b) => Some(b),
    };
    Ok(match table {
        TableKind::Gpt => Layout {
            disk_size,
            ..Layout::gpt(partitions)
        },
        TableKind::Mbr => Layout {
            disk_size,
            ..Layout::mbr_pi(partitions)
        },
    })
}

/// Everything one build composes from its inputs: the opened inputs (kept alive: the trees'
/// contents point into them), the epoch, the identifier seed and the image's trees. The disk
/// image and the netboot artifacts both start here, so they hold the same files.
pub struct Prepared {
    pub opened: Opened,
    pub epoch: i64,
    pub seed: ImageSeed,
    pub trees: ImageTrees,
}

/// Opens the inputs and composes the image's trees.
pub fn prepare(
    resolved: &Resolved,
    inputs: &[FetchedInput],
    cache: &Cache,
    scratch: &Path,
    templates: &Templates,
) -> Result<Prepared> {
    let opened = open_inputs(resolved, inputs, cache, scratch)?;
    let epoch = resolved
        .profile
        .image
        .source_date_epoch
        .unwrap_or_else(|| default_epoch(&opened.root));
    let seed = image_seed(resolved, &opened.records)?;
    let trees = compose_image(resolved, &opened, templates, &seed, epoch)?;
    Ok(Prepared {
        opened,
        epoch,
        seed,
        trees,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileStore;

    #[test]
    fn output_formats_do_not_change_the_disk_identifiers() {
        let store = ProfileStore::stock_only();
        let seed_of = |set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            let r = store.resolve("amd64-worker", &set).unwrap();
            root_partuuid(&r, &image_seed(&r, &[]).unwrap())
        };
        let base = seed_of(&["image.formats=[\"img\", \"bmap\"]"]);
        assert_eq!(
            base,
            seed_of(&["image.formats=[\"img\", \"img.xz\", \"bmap\"]"])
        );
        assert_eq!(base, seed_of(&["image.formats=[\"qcow2\"]"]));
        // What does change the disk still changes them.
        assert_ne!(
            base,
            seed_of(&["image.formats=[\"img\"]", "k3s.labels=[\"a=b\"]"])
        );
    }

    #[test]
    fn the_base_unpack_limit_follows_the_profile() {
        let store = ProfileStore::stock_only();
        let limit = |set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            unpack_limit(&store.resolve("amd64-worker", &set).unwrap().profile).max
        };
        assert_eq!(limit(&["image.size=\"auto\""]), crate::unpack::DEFAULT_MAX);
        assert_eq!(limit(&["image.size=\"8GiB\""]), 32 << 30);
        assert_eq!(
            limit(&["image.size=\"8GiB\"", "base.max-unpacked=\"2GiB\""]),
            2 << 30
        );
    }
}
