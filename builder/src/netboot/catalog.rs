//! The server's view of the inventory and the built artifacts: it implements the netboot crate's
//! [`Catalog`]. Made once at start (every problem is an error then, naming the file and line) and
//! read-only afterwards.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use imgbuild_netboot::{Artifact, Catalog, Mac, NodeBoot, SeedFile, dnsmasq};

use super::set::ArtifactSet;
use crate::node::inventory::{Inventory, Node, node_line};
use crate::node::seed::Seed;

/// Artifacts by served name, nodes by MAC, seeds by node.
pub struct NetbootCatalog {
    artifacts: BTreeMap<String, Artifact>,
    nodes: HashMap<Mac, NodeBoot>,
    seeds: HashMap<String, Seed>,
}

/// Summary for the start-up message.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub nodes: Vec<(String, Mac, String)>,
    pub skipped: Vec<String>,
    pub files: usize,
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
        };
        let mut summary = Summary::default();
        for (i, node) in inv.nodes.iter().enumerate() {
            // Parsed and checked when the inventory was loaded.
            let Some(mac) = node.mac_address else {
                summary.skipped.push(node.name.clone());
                continue;
            };
            let line = node_line(&text, i, "profile");
            if !sets.contains_key(&node.profile) {
                let dir = images.join(&node.profile).join("netboot");
                let set = ArtifactSet::load(&dir, &node.profile).with_context(|| {
                    format!(
                        "{shown}:{line}: node {:?} netboots profile {:?}",
                        node.name, node.profile
                    )
                })?;
                sets.insert(node.profile.clone(), set);
            }
            let set = &sets[&node.profile];
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
        if cat.nodes.is_empty() {
            bail!(
                "{shown} has no node with a `mac`, so there is nothing to netboot\n  help: add mac = \"…\" to the [[node]] entries of the machines that boot from the network"
            );
        }
        cat.add_files(&sets);
        summary.files = cat.artifacts.len();
        Ok((cat, summary))
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
}
