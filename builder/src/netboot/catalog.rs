//! The server's view of the inventory and the built artifacts: it implements the netboot crate's
//! [`Catalog`]. Made once at start (every problem is an error then, naming the file and line);
//! afterwards only the netboot policy state changes, and it is read from the state folder on
//! every request (see [`super::state`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context as _, Result, bail};
use imgbuild_netboot::ipxe;
use imgbuild_netboot::tokens::TOKEN_SLOT;
use imgbuild_netboot::{
    Admission, Artifact, Catalog, ClientIds, Mac, NodeBoot, SeedFile, SeedTemplate, dnsmasq,
};

use super::matching;
use super::netcfg;
use super::pitree;
use super::set::{self, ArtifactSet};
use super::state::StateDir;
use crate::node::inventory::{Inventory, NetbootPolicy, Node, node_line};
use crate::node::seed::Seed;

/// The MAC the LAN says an address has (the kernel's ARP table), for TFTP and HTTP requests.
pub type Neighbours = Box<dyn Fn(IpAddr) -> Option<Mac> + Send + Sync>;

/// Artifacts by served name, the netboot nodes, boots and seeds by node.
pub struct NetbootCatalog {
    artifacts: BTreeMap<String, Artifact>,
    /// Nodes with a MAC, Pi serial or UUID, `netboot = "never"` ones included (they are
    /// matched, then refused, so the log says why).
    nodes: Vec<Node>,
    boots: HashMap<String, NodeBoot>,
    seeds: HashMap<String, Seed>,
    state: StateDir,
    neighbours: Neighbours,
    /// Address → MAC, from requests that carried both (`/boot.ipxe?mac=`).
    learnt: Mutex<HashMap<IpAddr, Mac>>,
    fallback: Option<Fallback>,
    /// `<folder>/cmdline.txt` of each Pi node, served with a token minted per request.
    pi_cmdlines: BTreeMap<String, SeedTemplate>,
}

/// Summary for the start-up message: (node, how it is matched, profile, policy).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub nodes: Vec<(String, String, String, NetbootPolicy)>,
    pub skipped: Vec<String>,
    pub files: usize,
    /// Raspberry Pi nodes served by their serial folder: (node, folder, profile).
    pub pi: Vec<(String, String, String)>,
}

/// How the server finds nodes and keeps their policy state.
pub struct Lookup {
    pub state: StateDir,
    pub neighbours: Neighbours,
    /// What a machine not in the inventory boots, if anything.
    pub default: Option<DefaultProfile>,
}

/// Renders the seed of a node that is not in the inventory.
pub type RenderSeed = Box<dyn Fn(&Node) -> Result<Seed> + Send + Sync>;

/// `--unknown-profile`: machines not in the inventory boot this profile as node
/// `<profile>-<mac as 12 hex digits>`, their seed rendered when they first ask.
pub struct DefaultProfile {
    pub profile: String,
    pub render: RenderSeed,
}

/// The default profile with its boot (for a probe node) and the seeds rendered so far.
struct Fallback {
    profile: DefaultProfile,
    boot: NodeBoot,
    seeds: Mutex<HashMap<String, Seed>>,
}

impl NetbootCatalog {
    /// Reads the inventory at `inventory`, the artifact set of every profile a netboot node
    /// runs (under `images/<profile>/netboot`), and each such node's seed from `seed_of`.
    pub fn load(
        inventory: &Path,
        images: &Path,
        lookup: Lookup,
        mut seed_of: impl FnMut(&Node) -> Result<Seed>,
    ) -> Result<(NetbootCatalog, Summary)> {
        let shown = inventory.display().to_string();
        let text = std::fs::read_to_string(inventory)
            .with_context(|| format!("reading the inventory {shown}"))?;
        let inv = Inventory::parse(&text, &shown)?;
        if inv.nodes.iter().any(|n| n.netboot == NetbootPolicy::Once) {
            lookup.state.check_writable()?;
        }
        let mut sets: BTreeMap<String, ArtifactSet> = BTreeMap::new();
        let mut cat = NetbootCatalog {
            artifacts: BTreeMap::new(),
            nodes: Vec::new(),
            boots: HashMap::new(),
            seeds: HashMap::new(),
            state: lookup.state,
            neighbours: lookup.neighbours,
            learnt: Mutex::default(),
            fallback: None,
            pi_cmdlines: BTreeMap::new(),
        };
        let mut summary = Summary::default();
        let mut problems = Vec::new();
        for (i, node) in inv.nodes.iter().enumerate() {
            let Some(ids) = identifiers(node) else {
                summary.skipped.push(node.name.clone());
                continue;
            };
            summary
                .nodes
                .push((node.name.clone(), ids, node.profile.clone(), node.netboot));
            cat.nodes.push(node.clone());
            if !node.netboots() {
                continue;
            }
            let at = format!("{shown}:{}", node_line(&text, i, "profile"));
            let added = cat
                .add_node(node, images, &mut sets, &mut seed_of, &at)
                .and_then(|()| cat.add_pi_node(node, &at, &sets, &mut summary));
            if let Err(e) = added {
                problems.push(format!("{e:#}"));
            }
        }
        if let Some(d) = lookup.default
            && let Err(e) = cat.add_fallback(d, images, &mut sets)
        {
            problems.push(format!("{e:#}"));
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("\n"));
        }
        if cat.boots.is_empty() && cat.fallback.is_none() {
            bail!(
                "{shown} has no node with a `mac`, `serial` or `uuid` that may netboot, so there is nothing to serve\n  help: add mac = \"…\" to the [[node]] entries of the machines that boot from the network"
            );
        }
        cat.add_files(&sets);
        summary.files = cat.artifacts.len();
        Ok((cat, summary))
    }

    /// The boot and seed of `node`; `at` is its `file:line` for messages.
    fn add_node(
        &mut self,
        node: &Node,
        images: &Path,
        sets: &mut BTreeMap<String, ArtifactSet>,
        seed_of: &mut impl FnMut(&Node) -> Result<Seed>,
        at: &str,
    ) -> Result<()> {
        // First: an unknown profile is said as such, not as missing artifacts.
        let seed =
            seed_of(node).with_context(|| format!("{at}: the seed of node {:?}", node.name))?;
        let boot = self.boot_of(node, &seed.network_config, images, sets, at)?;
        self.boots.insert(node.name.clone(), boot);
        self.seeds.insert(node.name.clone(), seed);
        Ok(())
    }

    /// `node`'s boot from its profile's artifact set (loaded once per profile), with its seed's
    /// `network_config` on the kernel line.
    fn boot_of(
        &self,
        node: &Node,
        network_config: &str,
        images: &Path,
        sets: &mut BTreeMap<String, ArtifactSet>,
        at: &str,
    ) -> Result<NodeBoot> {
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
        let m = &sets[&node.profile].manifest;
        let name = |f: &str| format!("{}/{f}", node.profile);
        Ok(NodeBoot {
            node: node.name.clone(),
            profile: node.profile.clone(),
            kernel: name(&m.kernel),
            initrds: m.initrds.iter().map(|i| name(i)).collect(),
            cmdline: m.cmdline.clone(),
            network_config: netcfg::network_config_arg(network_config),
        })
    }

    /// The default profile: its artifact set, and one seed rendered now so that a problem with
    /// it (a missing secret) shows at start, not at the first unknown machine.
    fn add_fallback(
        &mut self,
        d: DefaultProfile,
        images: &Path,
        sets: &mut BTreeMap<String, ArtifactSet>,
    ) -> Result<()> {
        let at = format!("--unknown-profile {}", d.profile);
        let probe = fallback_node(&d.profile, Mac([0; 6]))?;
        let seed =
            (d.render)(&probe).with_context(|| format!("{at}: the seed of an unknown machine"))?;
        // With the probe's network-config, for the start-up length check; each machine gets
        // its own.
        let boot = self.boot_of(&probe, &seed.network_config, images, sets, &at)?;
        self.fallback = Some(Fallback {
            profile: d,
            boot,
            seeds: Mutex::default(),
        });
        Ok(())
    }

    /// The boot of an unknown machine with `mac` under the default profile, its seed rendered
    /// (once per machine), and why; or why not, for the log.
    fn fallback_boot(&self, mac: Mac) -> Result<(NodeBoot, String), String> {
        let f = self.fallback.as_ref().ok_or("MAC not in the inventory")?;
        let node = fallback_node(&f.profile.profile, mac).map_err(|e| format!("{e:#}"))?;
        let mut seeds = f.seeds.lock().expect("lock");
        if !seeds.contains_key(&node.name) {
            let seed = (f.profile.render)(&node).map_err(|e| {
                format!(
                    "MAC not in the inventory, and its seed under --unknown-profile failed: {e:#}"
                )
            })?;
            seeds.insert(node.name.clone(), seed);
        }
        let why = format!(
            "MAC not in the inventory: --unknown-profile {} boots it as node {}",
            f.profile.profile, node.name
        );
        let boot = NodeBoot {
            network_config: netcfg::network_config_arg(&seeds[&node.name].network_config),
            node: node.name,
            ..f.boot.clone()
        };
        Ok((boot, why))
    }

    /// A node with a `serial` whose profile's set has a Pi tree: `<folder>/X` resolves to the
    /// node's own `pi/<folder>/X` if the set has it, else to the shared `pi/X` (map entries, no
    /// copies); its `cmdline.txt` is served from memory, a new seed token in its slot each time.
    /// Called after [`Self::add_node`] rendered its seed and loaded its set.
    fn add_pi_node(
        &mut self,
        node: &Node,
        at: &str,
        sets: &BTreeMap<String, ArtifactSet>,
        summary: &mut Summary,
    ) -> Result<()> {
        // Loaded by `boot_of` for this node.
        let set = &sets[&node.profile];
        let network_config = &self.seeds[&node.name].network_config;
        let Some((folder, cmdline)) = pi_node_cmdline(node, set, Some(network_config), at)? else {
            return Ok(());
        };
        let Some(pi) = &set.manifest.pi else {
            return Ok(());
        };
        for f in &pi.shared {
            let a = &set.files[&format!("{}/{f}", pitree::PI_DIR)];
            self.artifacts.insert(format!("{folder}/{f}"), a.clone());
        }
        for f in &pi.set_files {
            self.artifacts
                .insert(format!("{folder}/{f}"), set.files[f].clone());
        }
        self.pi_cmdlines.insert(
            format!("{folder}/{}", pitree::CMDLINE),
            SeedTemplate {
                node: node.name.clone(),
                text: cmdline,
            },
        );
        summary
            .pi
            .push((node.name.clone(), folder, node.profile.clone()));
        Ok(())
    }

    /// Every Pi node's built cmdline.txt names `base_url` (`http://ADDR:PORT`, where serve
    /// listens) for its seed; asked once the ports are bound (port 0 is known only then).
    pub fn check_pi_seed_server(&self, base_url: &str) -> Result<()> {
        for (name, t) in &self.pi_cmdlines {
            let built = pitree::seed_server(&t.text).unwrap_or_default();
            if built != base_url {
                bail!(
                    "node {:?}: its built {name} names the seed server {built}, but this server is {base_url}\n  help: rebuild its profile with `imgbuild netboot build PROFILE` and the --listen and --http-port given here",
                    t.node
                );
            }
        }
        Ok(())
    }

    /// Every node's iPXE kernel command line, with `base_url` (`http://ADDR:PORT`) and its
    /// `network-config=`, fits the kernel's buffer; asked once the ports are bound. The default
    /// profile is checked with its probe machine's (one MAC's config differs from another's by
    /// a few bytes at most; a machine over the limit gets an HTTP 500 and a logged error).
    pub fn check_cmdline_sizes(&self, base_url: &str) -> Result<()> {
        // By node name, so the first one reported does not depend on the map's order.
        let mut boots: Vec<(String, &NodeBoot)> =
            self.boots.values().map(|b| (String::new(), b)).collect();
        boots.sort_by(|a, b| a.1.node.cmp(&b.1.node));
        boots.extend(self.fallback.iter().map(|f| {
            let what = format!(
                "--unknown-profile {} (a machine not in the inventory): ",
                f.profile.profile
            );
            (what, &f.boot)
        }));
        for (what, boot) in boots {
            if let Err(e) = ipxe::kernel_cmdline(base_url, boot, TOKEN_SLOT) {
                bail!(
                    "{what}{e}\n  help: shorten the kernel arguments of profile {:?} or the node's network-config (its address, gateway, dns in the inventory)",
                    boot.profile
                );
            }
        }
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

    /// Why `node`'s policy refuses it now, if it does.
    fn refusal(&self, node: &Node) -> Option<String> {
        match node.netboot {
            NetbootPolicy::Always => None,
            NetbootPolicy::Never => Some("netboot = \"never\" in the inventory".into()),
            NetbootPolicy::Once => match self.state.is_spent(&node.name) {
                Ok(false) => None,
                Ok(true) => Some(format!(
                    "netboot = \"once\" and it fetched its seed already; `imgbuild netboot arm {}` lets it boot again",
                    node.name
                )),
                // Fail closed: a `once` node must not boot twice because the disk is unreadable.
                Err(e) => Some(format!(
                    "netboot = \"once\" and its state cannot be read ({e}); refused to be safe"
                )),
            },
        }
    }

    /// The MAC behind a TFTP or HTTP client address.
    fn mac_at(&self, ip: IpAddr) -> Option<Mac> {
        (self.neighbours)(ip).or_else(|| self.learnt.lock().expect("lock").get(&ip).copied())
    }

    fn named(&self, node: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == node)
    }
}

/// The serial folder and built `cmdline.txt` of `node` when its profile's set has a Pi tree,
/// checked against the inventory: the node has its folder, the file names one seed URL with
/// the token slot, and it carries `network_config` (the node's seed's, rendered now; None: not
/// compared). None for a node with no Pi serial or a set with no Pi tree. `at` is the node's
/// `file:line`. (`netboot serve` at start, and `netboot doctor`.)
pub fn pi_node_cmdline(
    node: &Node,
    set: &ArtifactSet,
    network_config: Option<&str>,
    at: &str,
) -> Result<Option<(String, String)>> {
    let Some(serial) = node.serial.as_deref() else {
        return Ok(None);
    };
    let Ok(folder) = pitree::serial_folder(&node.name, serial) else {
        // A serial that is no Pi's (an SMBIOS UUID): not a Pi node.
        return Ok(None);
    };
    let Some(pi) = &set.manifest.pi else {
        return Ok(None);
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
    let cmdline = std::fs::read_to_string(&set.files[&own].path)
        .with_context(|| format!("reading {own} of profile {:?}", node.profile))?;
    pitree::seed_server(&cmdline).with_context(|| {
        format!(
            "{at}: node {:?}: {own} of profile {:?}",
            node.name, node.profile
        )
    })?;
    if let Some(net) = network_config {
        check_network_config(node, &cmdline, net, at)?;
    }
    Ok(Some((folder, cmdline)))
}

/// The built `cmdline.txt` of Pi node `node` carries the `network-config=` its seed has now
/// (`network_config`); it differs when the inventory changed the node's MAC or address since
/// the build, and the node would come up with the old one.
pub fn check_network_config(
    node: &Node,
    cmdline: &str,
    network_config: &str,
    at: &str,
) -> Result<()> {
    if !netcfg::has_network_config(cmdline, network_config) {
        bail!(
            "{at}: node {:?}: the network-config in its built cmdline.txt is not the one the inventory gives it now (its MAC or address changed since the build)\n  help: rebuild with `imgbuild netboot build {} --listen ADDR --http-port N` as given to serve",
            node.name,
            node.profile
        );
    }
    Ok(())
}

/// The node an unknown machine is under the default profile, made (and checked) like an
/// inventory entry.
fn fallback_node(profile: &str, mac: Mac) -> Result<Node> {
    let hex: String = mac.0.iter().map(|b| format!("{b:02x}")).collect();
    let text =
        format!("[[node]]\nname = \"{profile}-{hex}\"\nprofile = \"{profile}\"\nmac = \"{mac}\"\n");
    let inv = Inventory::parse(&text, "--unknown-profile")?;
    Ok(inv.nodes.into_iter().next().expect("one node"))
}

/// How a node is matched, for the start-up log; None for a node that cannot netboot.
fn identifiers(n: &Node) -> Option<String> {
    let mut ids = Vec::new();
    if let Some(m) = n.mac_address {
        ids.push(format!("mac {m}"));
    }
    if let Some(s) = n.pi_serial() {
        ids.push(format!("pi serial {s:08x}"));
    }
    if let Some(u) = &n.uuid {
        ids.push(format!("uuid {u}"));
    }
    (!ids.is_empty()).then(|| ids.join(", "))
}

impl Catalog for NetbootCatalog {
    fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.get(name)
    }

    fn node_boot(&self, mac: Mac) -> Option<NodeBoot> {
        let n = self.nodes.iter().find(|n| n.mac_address == Some(mac))?;
        self.boots.get(&n.name).cloned()
    }

    fn seed(&self, node: &str, file: SeedFile) -> Option<String> {
        let fallback = self
            .fallback
            .as_ref()
            .map(|f| f.seeds.lock().expect("lock"));
        let s = self
            .seeds
            .get(node)
            .or_else(|| fallback.as_ref()?.get(node))?;
        Some(match file {
            SeedFile::MetaData => s.meta_data.clone(),
            SeedFile::UserData => s.user_data.clone(),
            SeedFile::NetworkConfig => s.network_config.clone(),
            // Nothing vendor-specific: an empty vendor-data is what cloud-init expects then.
            SeedFile::VendorData => String::new(),
        })
    }

    fn admit(&self, ids: &ClientIds) -> Admission {
        let mut ids = ids.clone();
        match (ids.mac, ids.ip) {
            (Some(mac), Some(ip)) => {
                self.learnt.lock().expect("lock").insert(ip, mac);
            }
            (None, Some(ip)) => ids.mac = self.mac_at(ip),
            _ => {}
        }
        let Some(found) = matching::find(&self.nodes, &ids) else {
            return Admission::Unknown(match (ids.mac, ids.ip) {
                (Some(mac), _) => match self.fallback_boot(mac) {
                    Ok((boot, why)) => return Admission::Boot { boot, why },
                    Err(why) => why,
                },
                (None, Some(ip)) => format!("no MAC known for {ip}"),
                (None, None) => "no MAC, serial or UUID in the inventory".into(),
            });
        };
        let node = found.node;
        if let Some(why) = self.refusal(node) {
            return Admission::Refused {
                node: node.name.clone(),
                why: format!("{why} (matched by {})", found.why),
            };
        }
        match self.boots.get(&node.name) {
            Some(boot) => Admission::Boot {
                boot: boot.clone(),
                why: found.why,
            },
            None => Admission::Unknown(format!("node {} has no boot", node.name)),
        }
    }

    fn seed_template(&self, name: &str) -> Option<SeedTemplate> {
        self.pi_cmdlines.get(name).cloned()
    }

    fn seed_allowed(&self, node: &str) -> Result<(), String> {
        match self.named(node).and_then(|n| self.refusal(n)) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    fn seed_delivered(&self, node: &str, client: IpAddr) {
        if self.named(node).map(|n| n.netboot) != Some(NetbootPolicy::Once) {
            return;
        }
        match self.state.mark_spent(node, client) {
            Ok(()) => {
                tracing::info!(%node, %client, "netboot: node fetched its seed; netboot = \"once\": refused from now on until `imgbuild netboot arm {node}`")
            }
            Err(e) => {
                tracing::error!(%node, "netboot: recording that the node fetched its seed failed: {e:#}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "network:\n  version: 2\n  ethernets:\n    wired:\n      match:\n        macaddress: \"dc:a6:32:00:00:01\"\n      dhcp4: true\n";

    fn pi_node() -> Node {
        let text = "[[node]]\nname = \"pi-1\"\nprofile = \"pi-node\"\nserial = \"9ffefdef\"\n";
        let inv = Inventory::parse(text, "nodes.toml").unwrap();
        inv.nodes.into_iter().next().unwrap()
    }

    #[test]
    fn a_pi_cmdline_with_another_network_config_is_stale_and_says_how_to_rebuild() {
        let node = pi_node();
        let built = pitree::node_cmdline("console=tty1", "http://10.0.0.1:8080", NET);
        check_network_config(&node, &built, NET, "nodes.toml:3").unwrap();
        let moved = NET.replace("00:01", "00:02");
        let e = check_network_config(&node, &built, &moved, "nodes.toml:3").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("nodes.toml:3: node \"pi-1\": the network-config in its built cmdline.txt is not the one the inventory gives it now (its MAC or address changed since the build)"),
            "{text}"
        );
        assert!(
            text.contains("\n  help: rebuild with `imgbuild netboot build pi-node --listen ADDR"),
            "{text}"
        );
        // The MAC dropped from the inventory (no config now), or added since a build without.
        assert!(check_network_config(&node, &built, "# no MAC\n", "n:1").is_err());
        let bare = pitree::node_cmdline("console=tty1", "http://10.0.0.1:8080", "# no MAC\n");
        check_network_config(&node, &bare, "# no MAC\n", "n:1").unwrap();
        assert!(check_network_config(&node, &bare, NET, "n:1").is_err());
    }
}
