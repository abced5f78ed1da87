//! The server's view of the inventory and the built artifacts: it implements the netboot crate's
//! [`Catalog`]. Made once at start (every problem is an error then, naming the file and line) and
//! read-only afterwards.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use imgbuild_netboot::{Artifact, Catalog, Mac, NodeBoot, SeedFile, dnsmasq};

use super::pitree;
use super::set::{self, ArtifactSet};
use crate::node::inventory::{Inventory, Node, node_line};
use crate::node::seed::Seed;

/// Artifacts by served name, nodes by MAC, seeds by node, Pi seed keys.
pub struct NetbootCatalog {
    artifacts: BTreeMap<String, Artifact>,
    nodes: HashMap<Mac, NodeBoot>,
    seeds: HashMap<String, Seed>,
    /// Seed key (in a Pi node's cmdline.txt) → node.
    pi_keys: HashMap<String, String>,
}

/// Summary for the start-up message.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub nodes: Vec<(String, Mac, String)>,
    pub skipped: Vec<String>,
    pub files: usize,
    /// Raspberry Pi nodes served by their serial folder: (node, folder, profile).
    pub pi: Vec<(String, String, String)>,
}

impl Summary {
    /// Nodes served, by MAC or serial folder or both, each once.
    pub fn node_count(&self) -> usize {
        let names: std::collections::BTreeSet<&str> = self
            .nodes
            .iter()
            .map(|(n, _, _)| n.as_str())
            .chain(self.pi.iter().map(|(n, _, _)| n.as_str()))
            .collect();
        names.len()
    }
}

impl NetbootCatalog {
    /// Reads the inventory at `inventory`, the artifact set of every profile a node with a MAC
    /// runs (under `images/<profile>/netboot`), and each such node's seed from `seed_of`.
    pub fn load(
        inventory: &Path,
        images: &Path,
        mut seed_of: impl FnMut(&Node) -> Result<Seed>,
    ) -> Result<(NetbootCatalog, Summary)> {
        let shown = inventory.display().to_string();
        let text = std::fs::read_to_string(inventory)
            .with_context(|| format!("reading the inventory {shown}"))?;
        let inv = Inventory::parse(&text, &shown)?;
        let mut sets: BTreeMap<String, ArtifactSet> = BTreeMap::new();
        let mut cat = NetbootCatalog {
            artifacts: BTreeMap::new(),
            nodes: HashMap::new(),
            seeds: HashMap::new(),
            pi_keys: HashMap::new(),
        };
        let mut summary = Summary::default();
        for (i, node) in inv.nodes.iter().enumerate() {
            let line = node_line(&text, i, "profile");
            if node.serial.is_some() {
                let at = format!("{shown}:{line}");
                cat.add_pi_node(node, &at, images, &mut sets, &mut seed_of, &mut summary)?;
            }
            // Parsed and checked when the inventory was loaded.
            let Some(mac) = node.mac_address else {
                if node.serial.is_none() {
                    summary.skipped.push(node.name.clone());
                }
                continue;
            };
            let set = load_set(&mut sets, images, node, &format!("{shown}:{line}"))?;
            let seed = seed_of(node)
                .with_context(|| format!("{shown}:{line}: the seed of node {:?}", node.name))?;
            let m = &set.manifest;
            let name = |f: &str| format!("{}/{f}", node.profile);
            cat.nodes.insert(
                mac,
                NodeBoot {
                    node: node.name.clone(),
                    profile: node.profile.clone(),
                    kernel: name(&m.kernel),
                    initrds: m.initrds.iter().map(|i| name(i)).collect(),
                    cmdline: m.cmdline.clone(),
                },
            );
            cat.seeds.insert(node.name.clone(), seed);
            summary
                .nodes
                .push((node.name.clone(), mac, node.profile.clone()));
        }
        if cat.nodes.is_empty() && summary.pi.is_empty() {
            bail!(
                "{shown} has no node with a `mac` (or a Raspberry Pi `serial`), so there is nothing to netboot\n  help: add mac = \"…\" to the [[node]] entries of the machines that boot from the network"
            );
        }
        cat.add_files(&sets);
        summary.files = cat.artifacts.len();
        Ok((cat, summary))
    }

    /// A node with a `serial` whose profile's set has a Pi tree: `<folder>/X` resolves to the
    /// node's own `pi/<folder>/X` if the set has it, else to the shared `pi/X` (map entries, no
    /// copies). Its seed key is checked against the built cmdline.txt (same secrets).
    fn add_pi_node(
        &mut self,
        node: &Node,
        at: &str,
        images: &Path,
        sets: &mut BTreeMap<String, ArtifactSet>,
        seed_of: &mut impl FnMut(&Node) -> Result<Seed>,
        summary: &mut Summary,
    ) -> Result<()> {
        let serial = node.serial.as_deref().unwrap_or_default();
        let Ok(folder) = pitree::serial_folder(&node.name, serial) else {
            // A serial that is no Pi's (an SMBIOS UUID): not a Pi node.
            return Ok(());
        };
        let set = load_set(sets, images, node, at)?;
        let Some(pi) = &set.manifest.pi else {
            return Ok(());
        };
        if pi.nodes.get(&folder) != Some(&node.name) {
            bail!(
                "{at}: node {:?} (serial folder {folder}) has no folder in the Raspberry Pi tree of profile {:?}\n  help: rebuild it with `imgbuild netboot build {} --listen ADDR` (the inventory changed since)",
                node.name,
                node.profile,
                node.profile
            );
        }
        let own = set::pi_node_file(&folder);
        let seed =
            seed_of(node).with_context(|| format!("{at}: the seed of node {:?}", node.name))?;
        let key = pitree::seed_key(&seed);
        let cmdline = std::fs::read_to_string(&set.files[&own].path)
            .with_context(|| format!("reading {own} of profile {:?}", node.profile))?;
        if !cmdline.contains(&format!("/seed/{key}/")) {
            bail!(
                "{at}: the cmdline.txt of node {:?} names another seed (its seed or secrets changed since the build)\n  help: rebuild with `imgbuild netboot build {} --listen ADDR`",
                node.name,
                node.profile
            );
        }
        for f in &pi.shared {
            let a = &set.files[&format!("{}/{f}", pitree::PI_DIR)];
            self.artifacts.insert(format!("{folder}/{f}"), a.clone());
        }
        for f in &pi.set_files {
            self.artifacts
                .insert(format!("{folder}/{f}"), set.files[f].clone());
        }
        self.artifacts.insert(
            format!("{folder}/{}", pitree::CMDLINE),
            set.files[&own].clone(),
        );
        self.pi_keys.insert(key, node.name.clone());
        self.seeds.insert(node.name.clone(), seed);
        summary
            .pi
            .push((node.name.clone(), folder, node.profile.clone()));
        Ok(())
    }

    /// `<profile>/<file>` for every listed file, and the iPXE binaries under the fixed names the
    /// dnsmasq snippet hands out (from the first profile, by name, that has each).
    fn add_files(&mut self, sets: &BTreeMap<String, ArtifactSet>) {
        for (profile, set) in sets {
            for (name, a) in &set.files {
                self.artifacts
                    .insert(format!("{profile}/{name}"), a.clone());
            }
            for (key, file) in &set.manifest.ipxe {
                let alias = match key.as_str() {
                    "bios" => dnsmasq::BIOS_NBP,
                    "efi-x64" => dnsmasq::EFI_X64_NBP,
                    "efi-arm64" => dnsmasq::EFI_ARM64_NBP,
                    // No DHCP answer names it: only under <profile>/ipxe/….
                    _ => continue,
                };
                self.artifacts
                    .entry(alias.to_string())
                    .or_insert_with(|| set.files[file].clone());
            }
        }
    }
}

/// The profile's artifact set, read once.
fn load_set<'s>(
    sets: &'s mut BTreeMap<String, ArtifactSet>,
    images: &Path,
    node: &Node,
    at: &str,
) -> Result<&'s ArtifactSet> {
    if !sets.contains_key(&node.profile) {
        let dir = images.join(&node.profile).join("netboot");
        let set = ArtifactSet::load(&dir, &node.profile).with_context(|| {
            format!(
                "{at}: node {:?} netboots profile {:?}",
                node.name, node.profile
            )
        })?;
        sets.insert(node.profile.clone(), set);
    }
    Ok(&sets[&node.profile])
}

impl Catalog for NetbootCatalog {
    fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.get(name)
    }

    fn node_boot(&self, mac: Mac) -> Option<NodeBoot> {
        self.nodes.get(&mac).cloned()
    }

    fn seed(&self, node: &str, file: SeedFile) -> Option<String> {
        let s = self.seeds.get(node)?;
        Some(match file {
            SeedFile::MetaData => s.meta_data.clone(),
            SeedFile::UserData => s.user_data.clone(),
            SeedFile::NetworkConfig => s.network_config.clone(),
            // Nothing vendor-specific: an empty vendor-data is what cloud-init expects then.
            SeedFile::VendorData => String::new(),
        })
    }

    fn seed_key_node(&self, key: &str) -> Option<String> {
        self.pi_keys.get(key).cloned()
    }
}
