//! The inventory, `nodes.toml`: one `[[node]]` per machine, with its name, profile, hardware
//! identifiers (MAC, serial) and per-node labels, taints and mesh tags. Problems are reported with
//! the file, line and column, like profile problems.
//!
//! ```toml
//! [[node]]
//! name = "pi-03"
//! profile = "pi-worker"
//! mac = "dc:a6:32:01:02:03"
//! serial = "10000000abcdef01"
//! labels = ["topology.kubernetes.io/zone=shelf-1"]
//! mesh-tags = ["tag:k3s", "tag:home"]
//! address = "192.168.1.23/24"    # static, on the interface with `mac` (else DHCP)
//! gateway = "192.168.1.1"
//! dns = ["192.168.1.1"]
//! ```

use crate::profile::line_col;
use crate::profile::validate::{is_label, is_taint};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// One node of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Node {
    /// Unique name; also the k3s node name and, unless `hostname` says otherwise, the host name.
    pub name: String,
    /// The profile this node runs.
    pub profile: String,
    /// MAC address of the wired interface (netboot matching, network-config), as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// `mac`, parsed once when the inventory is loaded.
    #[serde(skip)]
    pub mac_address: Option<Mac>,
    /// Board serial (Raspberry Pi: its netboot folder is the last 8 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// SMBIOS system UUID, as `dmidecode -s system-uuid` prints it (PXE option 97).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// `uuid`, parsed once when the inventory is loaded (RFC 4122 byte order, as printed).
    #[serde(skip)]
    pub uuid_bytes: Option<[u8; 16]>,
    /// When the node may boot from the network.
    #[serde(default, skip_serializing_if = "NetbootPolicy::is_default")]
    pub netboot: NetbootPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Extra node labels (`key=value`), added to the profile's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Extra taints (`key=value:Effect`), added to the profile's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<String>,
    /// Tailscale tags for this node, replacing the profile's `mesh.tags`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mesh_tags: Vec<String>,
    /// Static address with prefix length (`192.168.1.23/24`) of the interface with `mac`;
    /// without it that interface uses DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Default gateway for `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Name servers for `address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

impl Node {
    /// The host name: `hostname`, or the node name.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.name)
    }

    /// Whether the netboot server serves this node: it has a MAC, Pi serial or UUID to be
    /// matched by, and `netboot` is not `never`.
    pub fn netboots(&self) -> bool {
        let identified =
            self.mac_address.is_some() || self.pi_serial().is_some() || self.uuid_bytes.is_some();
        identified && self.netboot != NetbootPolicy::Never
    }

    /// The Raspberry Pi serial the bootloader sends (option 97, TFTP folder): the low 32 bits
    /// of `serial` when it is 8 or 16 hex digits (`/proc/cpuinfo` prints 16).
    pub fn pi_serial(&self) -> Option<u32> {
        let s = self.serial.as_deref()?;
        let hex = (s.len() == 8 || s.len() == 16) && s.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| u32::from_str_radix(&s[s.len() - 8..], 16).ok())
            .flatten()
    }
}

/// `netboot = "always" | "once" | "never"`: when the netboot server answers a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetbootPolicy {
    /// Every boot (the default: a netbooted node has no disk to fall back to).
    #[default]
    Always,
    /// Until the node fetched its seed; then refused until `imgbuild netboot arm NODE`.
    Once,
    /// Never: the node is ignored on every route.
    Never,
}

impl NetbootPolicy {
    fn is_default(&self) -> bool {
        *self == NetbootPolicy::Always
    }
}

/// A UUID in its text form (`8-4-4-4-12` hex digits, either case) as 16 bytes in that order.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12]
        || !groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The other spelling of a UUID: its first three fields byte-swapped. SMBIOS 2.6+ stores them
/// little-endian and PXE firmware sends those bytes in option 97, while some firmware sends the
/// printed (big-endian) order; matching either finds the node both ways.
pub fn uuid_swapped(u: &[u8; 16]) -> [u8; 16] {
    let mut s = *u;
    s[..4].reverse();
    s[4..6].reverse();
    s[6..8].reverse();
    s
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    node: Vec<Node>,
}

/// A validated inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub nodes: Vec<Node>,
}

/// One problem, with its position (1-based) in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
}

/// Everything wrong with an inventory file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InventoryError {
    /// The file, as it should be shown.
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "inventory {} has {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n{}:{}:{}: {}", self.file, p.line, p.column, p.message)?;
            if let Some(h) = &p.help {
                write!(f, "\n  help: {h}")?;
            }
        }
        Ok(())
    }
}

/// A node name that is not in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {name:?} is not in {file}{}", known_list(.known))]
pub struct UnknownNode {
    pub name: String,
    pub file: String,
    pub known: Vec<String>,
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "; it has no [[node]] entries yet\n  help: add one: [[node]] name = \"…\" profile = \"…\""
            .into()
    } else {
        format!(
            "; the nodes there are: {}\n  help: add a [[node]] entry for it, or use one of these names",
            known.join(", ")
        )
    }
}

/// A node label the node cannot set on itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node label {label:?} cannot be set by the node itself: the NodeRestriction admission plugin \
     rejects kubernetes.io / k8s.io labels other than node.kubernetes.io/*, kubelet.kubernetes.io/* \
     and topology.kubernetes.io/{{region,zone}}, and k3s then exits (k3s #10916)\n  help: use \
     e.g. node.kubernetes.io/role=<role>, or set {label:?} with kubectl after the node joined"
)]
pub struct LabelError {
    pub label: String,
}

/// Refuses labels the kubelet may not set on its own node (pitfall: `node-role.kubernetes.io/x`).
pub fn check_self_label(label: &str) -> Result<(), LabelError> {
    let key = label.split_once('=').map_or(label, |(k, _)| k);
    let Some((prefix, _)) = key.rsplit_once('/') else {
        return Ok(());
    };
    let under = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if !(under("kubernetes.io") || under("k8s.io")) {
        return Ok(());
    }
    const ALLOWED_KEYS: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    if under("kubelet.kubernetes.io") || under("node.kubernetes.io") || ALLOWED_KEYS.contains(&key)
    {
        Ok(())
    } else {
        Err(LabelError {
            label: label.to_string(),
        })
    }
}

impl Inventory {
    /// Parses and validates `text`; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<Inventory, InventoryError> {
        let err = |problems| InventoryError {
            file: file.to_string(),
            problems,
        };
        let parsed: File = toml::from_str(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            err(vec![Problem {
                line,
                column,
                message: e.message().trim().to_string(),
                help: Some(
                    "each node is a [[node]] table with name, profile and optionally mac, serial, \
                     uuid, netboot, hostname, labels, taints, mesh-tags, address, gateway, dns"
                        .into(),
                ),
            }])
        })?;
        let spans = node_spans(text);
        let lines = crate::profile::LineIndex::new(text);
        let mut problems = Vec::new();
        let mut problem = |i: usize, key: &str, message: String, help: &str| {
            let at = spans
                .get(&(i, key.to_string()))
                .or_else(|| spans.get(&(i, String::new())))
                .map_or(0, |s| s.start);
            let (line, column) = lines.line_col(at);
            problems.push(Problem {
                line,
                column,
                message,
                help: Some(help.to_string()),
            });
        };
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, n) in parsed.node.iter().enumerate() {
            if !is_dns_label(&n.name) {
                problem(
                    i,
                    "name",
                    format!("node name {:?} is not a valid host name", n.name),
                    "use lowercase letters, digits and `-`, at most 63 characters, not starting or ending with `-`",
                );
            } else if names.insert(&n.name, i).is_some() {
                problem(
                    i,
                    "name",
                    format!("node {:?} is listed twice", n.name),
                    "give every node its own name",
                );
            }
            if !crate::profile::is_profile_name(&n.profile) {
                problem(
                    i,
                    "profile",
                    format!("{:?} is not a profile name", n.profile),
                    "name a profile from `imgbuild profiles list`",
                );
            }
            if let Some(h) = &n.hostname
                && !is_host_name(h)
            {
                problem(
                    i,
                    "hostname",
                    format!("host name {h:?} is not valid"),
                    "use dot-separated labels of lowercase letters, digits and `-` (each at most 63 characters, at most 253 in all; RFC 1123)",
                );
            }
            if let Some(mac) = &n.mac
                && mac.parse::<Mac>().is_err()
            {
                problem(
                    i,
                    "mac",
                    format!("{mac:?} is not a MAC address"),
                    "write six hex pairs, e.g. \"dc:a6:32:01:02:03\"",
                );
            }
            if let Some(serial) = &n.serial {
                let ok = !serial.is_empty()
                    && serial.len() <= 64
                    && serial
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !ok {
                    problem(
                        i,
                        "serial",
                        format!("serial {serial:?} is not valid"),
                        "write the board serial (Raspberry Pi: 8 or 16 hex digits, from /proc/cpuinfo)",
                    );
                }
            }
            if let Some(uuid) = &n.uuid
                && parse_uuid(uuid).is_none()
            {
                problem(
                    i,
                    "uuid",
                    format!("uuid {uuid:?} is not a UUID"),
                    "write the SMBIOS UUID as `dmidecode -s system-uuid` prints it, e.g. \"4c4c4544-0042-3510-8048-b4c04f565931\"",
                );
            }
            for (j, l) in n.labels.iter().enumerate() {
                let key = format!("labels[{j}]");
                if !is_label(l) {
                    problem(
                        i,
                        &key,
                        format!("node label {l:?} is not key=value"),
                        "write labels as \"key=value\", e.g. \"topology.kubernetes.io/zone=shelf-1\"",
                    );
                } else if let Err(e) = check_self_label(l) {
                    let msg = e.to_string();
                    let (m, h) = msg.split_once("\n  help: ").unwrap_or((&msg, ""));
                    problem(i, &key, m.to_string(), h);
                }
            }
            for (j, t) in n.taints.iter().enumerate() {
                if !is_taint(t) {
                    problem(
                        i,
                        &format!("taints[{j}]"),
                        format!("taint {t:?} is not key=value:Effect"),
                        "write taints as \"key=value:NoSchedule\" (effects: NoSchedule, PreferNoSchedule, NoExecute)",
                    );
                }
            }
            for (key, message, help) in network_problems(n) {
                problem(i, &key, message, help);
            }
            for (j, t) in n.mesh_tags.iter().enumerate() {
                let ok = t.strip_prefix("tag:").is_some_and(|r| {
                    !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
                if !ok {
                    problem(
                        i,
                        &format!("mesh-tags[{j}]"),
                        format!("Tailscale tag {t:?} is not valid"),
                        "write tags as \"tag:name\" (letters, digits and `-`)",
                    );
                }
            }
        }
        for (i, key, message, help) in duplicate_ids(&parsed.node) {
            problem(i, key, message, help);
        }
        if !problems.is_empty() {
            problems.sort_by_key(|p| (p.line, p.column));
            return Err(err(problems));
        }
        let mut nodes = parsed.node;
        for n in &mut nodes {
            n.mac_address = n.mac.as_deref().and_then(|m| m.parse().ok());
            n.uuid_bytes = n.uuid.as_deref().and_then(parse_uuid);
        }
        Ok(Inventory { nodes })
    }

    /// The node called `name`.
    pub fn node(&self, name: &str, file: &str) -> Result<&Node, UnknownNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| UnknownNode {
                name: name.to_string(),
                file: file.to_string(),
                known: self.nodes.iter().map(|n| n.name.clone()).collect(),
            })
    }
}

impl Inventory {
    /// The node with this MAC address, for netboot matching.
    pub fn by_mac(&self, mac: Mac) -> Option<&Node> {
        self.nodes.iter().find(|n| n.mac_address == Some(mac))
    }

    /// The node with this board serial or SMBIOS UUID (case-insensitive).
    pub fn by_serial(&self, serial: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| {
            n.serial
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case(serial))
        })
    }
}

/// Identifiers two nodes share (the netboot server could not tell them apart): (node index,
/// key, message, help) for the later node. MACs compare parsed, serials case-insensitively and
/// by the Pi folder they select, UUIDs in both byte orders.
fn duplicate_ids(nodes: &[Node]) -> Vec<(usize, &'static str, String, &'static str)> {
    let mut out = Vec::new();
    let mut macs: BTreeMap<Mac, &str> = BTreeMap::new();
    let mut serials: BTreeMap<String, &str> = BTreeMap::new();
    let mut pi: BTreeMap<u32, &str> = BTreeMap::new();
    let mut uuids: BTreeMap<[u8; 16], &str> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if let Some(m) = n.mac.as_deref().and_then(|m| m.parse::<Mac>().ok())
            && let Some(other) = macs.insert(m, &n.name)
        {
            let msg = format!("MAC {m} is also given for node {other:?}");
            out.push((i, "mac", msg, "each MAC belongs to one node"));
        }
        if let Some(serial) = &n.serial {
            let same = serials.insert(serial.to_ascii_lowercase(), &n.name);
            let folder = n.pi_serial().and_then(|p| pi.insert(p, &n.name));
            if let Some(other) = same.or(folder) {
                let msg = format!("serial {serial} is also given for node {other:?}");
                let help = "each serial belongs to one node (a Raspberry Pi is told apart by its serial's last 8 hex digits)";
                out.push((i, "serial", msg, help));
            }
        }
        if let Some(u) = n.uuid.as_deref().and_then(parse_uuid) {
            let other = uuids
                .get(&u)
                .or_else(|| uuids.get(&uuid_swapped(&u)))
                .copied();
            uuids.insert(u, &n.name);
            if let Some(other) = other {
                let msg = format!(
                    "uuid {} is also given for node {other:?} (or is its byte-swapped spelling)",
                    n.uuid.as_deref().unwrap_or_default()
                );
                out.push((i, "uuid", msg, "each UUID belongs to one node"));
            }
        }
    }
    out
}

/// The line (1-based) where node `index` (or its `key`, when given) is written in `text`, for
/// messages about a node found valid here but refused later (e.g. its netboot artifacts are missing).
pub fn node_line(text: &str, index: usize, key: &str) -> usize {
    let spans = node_spans(text);
    let at = spans
        .get(&(index, key.to_string()))
        .or_else(|| spans.get(&(index, String::new())))
        .map_or(0, |s| s.start);
    line_col(text, at).0
}

/// What is wrong with a node's static network settings: (key, message, help).
fn network_problems(n: &Node) -> Vec<(String, String, &'static str)> {
    use std::net::IpAddr;
    let mut out = Vec::new();
    let mut family = None;
    if let Some(a) = &n.address {
        let parsed = a.split_once('/').and_then(|(ip, len)| {
            let ip: IpAddr = ip.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            (len <= if ip.is_ipv4() { 32 } else { 128 }).then_some(ip)
        });
        match parsed {
            None => out.push((
                "address".into(),
                format!("address {a:?} is not an IP address with a prefix length"),
                "write it as \"192.168.1.23/24\" (or an IPv6 address with /64)",
            )),
            Some(ip) => family = Some(ip.is_ipv4()),
        }
        if n.mac.is_none() {
            out.push((
                "address".into(),
                format!("node {:?} has a static address but no mac", n.name),
                "add the MAC of the interface the address belongs to: mac = \"dc:a6:32:01:02:03\"",
            ));
        }
    } else if n.gateway.is_some() || !n.dns.is_empty() {
        let key = if n.gateway.is_some() {
            "gateway"
        } else {
            "dns"
        };
        out.push((
            key.into(),
            format!("node {:?} has {key} but no address", n.name),
            "gateway and dns go with a static address; without one DHCP provides them",
        ));
    }
    let mut ip = |key: String, v: &str, same_family: bool| match v.parse::<IpAddr>() {
        Err(_) => out.push((
            key,
            format!("{v:?} is not an IP address"),
            "write an address without a prefix, e.g. \"192.168.1.1\"",
        )),
        Ok(g) if same_family && family.is_some_and(|f| f != g.is_ipv4()) => out.push((
            key,
            format!("gateway {v} is not of the same IP version as the address"),
            "use a gateway in the address's subnet",
        )),
        Ok(_) => {}
    };
    if let Some(g) = &n.gateway {
        ip("gateway".into(), g, true);
    }
    for (j, d) in n.dns.iter().enumerate() {
        ip(format!("dns[{j}]"), d, false);
    }
    out
}

/// MAC addresses are parsed once, by the netboot crate's type (iPXE sends them the same way).
pub use imgbuild_netboot::mac::{BadMac, Mac};

/// RFC 1123 host name (as an FQDN): labels of at most 63, at most 253 characters in all.
fn is_host_name(h: &str) -> bool {
    h.len() <= 253 && h.split('.').all(is_dns_label)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Spans of `[[node]]` tables and their keys: (index, key) → span; key "" is the table itself.
/// Array elements are keyed `labels[0]`.
fn node_spans(text: &str) -> BTreeMap<(usize, String), Range<usize>> {
    let mut out = BTreeMap::new();
    let Ok(doc) = text.parse::<toml_edit::Document<String>>() else {
        return out;
    };
    let Some(toml_edit::Item::ArrayOfTables(nodes)) = doc.as_table().get("node") else {
        return out;
    };
    for (i, t) in nodes.iter().enumerate() {
        if let Some(s) = t.span() {
            out.insert((i, String::new()), s);
        }
        for (k, item) in t.iter() {
            if let Some(s) = item.span().or_else(|| t.key(k).and_then(|key| key.span())) {
                out.insert((i, k.to_string()), s);
            }
            if let Some(arr) = item.as_array() {
                for (j, v) in arr.iter().enumerate() {
                    if let Some(s) = v.span() {
                        out.insert((i, format!("{k}[{j}]")), s);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[node]]
name = "pi-03"
profile = "pi-worker"
mac = "DC-A6-32-01-02-03"
serial = "10000000abcdef01"
labels = ["topology.kubernetes.io/zone=shelf-1"]
mesh-tags = ["tag:k3s"]

[[node]]
name = "do-1"
profile = "droplet-worker"
"#;

    #[test]
    fn parses_and_finds_nodes() {
        let inv = Inventory::parse(GOOD, "nodes.toml").unwrap();
        assert_eq!(inv.nodes.len(), 2);
        assert_eq!(inv.node("do-1", "nodes.toml").unwrap().hostname(), "do-1");
        let err = inv.node("pi-9", "nodes.toml").unwrap_err().to_string();
        assert!(err.contains("pi-03, do-1"), "{err}");
        let mac: Mac = "DC-A6-32-01-02-03".parse().unwrap();
        assert_eq!(mac.to_string(), "dc:a6:32:01:02:03");
        assert_eq!(inv.by_mac(mac).unwrap().name, "pi-03");
        for bad in [
            "dc:a6:32:01:02",
            "dc:a6:32:01:02:03:04",
            "dc:a6:32:01:02:0g",
            "+c:a6:32:01:02:03",
            "",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn problems_have_positions() {
        let text = "[[node]]\nname = \"a\"\nprofile = \"pi-worker\"\nlabels = [\"ok=1\", \"node-role.kubernetes.io/worker=true\"]\nmac = \"zz\"\n\n[[node]]\nname = \"a\"\nprofile = \"x\"\n";
        let err = Inventory::parse(text, "nodes.toml").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(
                "nodes.toml:4:19: node label \"node-role.kubernetes.io/worker=true\" cannot be set"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("nodes.toml:5:7: \"zz\" is not a MAC address"),
            "{msg}"
        );
        assert!(
            msg.contains("nodes.toml:8:8: node \"a\" is listed twice"),
            "{msg}"
        );
        let err = Inventory::parse("[[node]]\nname = \"a\"\nprofil = \"x\"\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("n.toml:3:1: unknown field `profil`"), "{err}");
    }

    #[test]
    fn shared_identifiers_are_refused_at_the_later_node() {
        let text = "[[node]]\nname = \"a\"\nprofile = \"p\"\nmac = \"52:54:00:00:00:01\"\nserial = \"10000000ABCDEF01\"\nuuid = \"00112233-4455-6677-8899-aabbccddeeff\"\n\n[[node]]\nname = \"b\"\nprofile = \"p\"\nmac = \"52-54-00-00-00-01\"\nserial = \"abcdef01\"\nuuid = \"33221100-5544-7766-8899-AABBCCDDEEFF\"\n";
        let msg = Inventory::parse(text, "nodes.toml")
            .unwrap_err()
            .to_string();
        for want in [
            "nodes.toml:11:7: MAC 52:54:00:00:00:01 is also given for node \"a\"",
            "nodes.toml:12:10: serial abcdef01 is also given for node \"a\"",
            "nodes.toml:13:8: uuid 33221100-5544-7766-8899-AABBCCDDEEFF is also given for node \"a\" (or is its byte-swapped spelling)",
        ] {
            assert!(msg.contains(want), "{want}\n{msg}");
        }
        // The same nodes with their own identifiers load, parsed once.
        let fixed = text
            .replace("52-54-00-00-00-01", "52:54:00:00:00:02")
            .replace("\"abcdef01\"", "\"abcdef02\"")
            .replace("33221100-5544", "33221100-5545");
        let inv = Inventory::parse(&fixed, "nodes.toml").unwrap();
        assert_eq!(inv.nodes[0].pi_serial(), Some(0xabcdef01));
        assert_eq!(inv.nodes[1].pi_serial(), Some(0xabcdef02));
        let u = inv.nodes[0].uuid_bytes.unwrap();
        assert_eq!(u[0], 0x00);
        assert_eq!(
            uuid_swapped(&u)[..8],
            [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66]
        );
        assert_eq!(inv.nodes[0].netboot, NetbootPolicy::Always);
    }

    #[test]
    fn netboot_policy_and_uuid_are_checked() {
        let inv = |extra: &str| {
            Inventory::parse(
                &format!("[[node]]\nname = \"a\"\nprofile = \"p\"\n{extra}"),
                "n.toml",
            )
        };
        assert_eq!(
            inv("netboot = \"once\"\n").unwrap().nodes[0].netboot,
            NetbootPolicy::Once
        );
        assert_eq!(
            inv("netboot = \"never\"\n").unwrap().nodes[0].netboot,
            NetbootPolicy::Never
        );
        let netboots = |extra: &str| inv(extra).unwrap().nodes[0].netboots();
        assert!(!netboots(""), "no MAC, serial or UUID");
        assert!(!netboots("serial = \"ABC-1\"\n"), "not a Pi serial");
        assert!(netboots("serial = \"abcdef01\"\n"));
        assert!(netboots(
            "uuid = \"00112233-4455-6677-8899-aabbccddeeff\"\n"
        ));
        assert!(netboots(
            "mac = \"52:54:00:00:00:01\"\nnetboot = \"once\"\n"
        ));
        assert!(!netboots(
            "mac = \"52:54:00:00:00:01\"\nnetboot = \"never\"\n"
        ));
        let err = inv("netboot = \"sometimes\"\n").unwrap_err().to_string();
        assert!(
            err.contains("n.toml:4:11: unknown variant `sometimes`"),
            "{err}"
        );
        let err = inv("uuid = \"0011-2233\"\n").unwrap_err().to_string();
        assert!(
            err.contains("n.toml:4:8: uuid \"0011-2233\" is not a UUID"),
            "{err}"
        );
        assert_eq!(
            parse_uuid("00112233-4455-6677-8899-aabbccddeeff").unwrap()[15],
            0xff
        );
        assert_eq!(parse_uuid("00112233-4455-6677-8899-aabbccddeefg"), None);
        assert_eq!(parse_uuid("001122334455-6677-8899-aabb-ccddeeff"), None);
        assert_eq!(parse_uuid("+0112233-4455-6677-8899-aabbccddeeff"), None);
    }

    #[test]
    fn static_addresses_are_checked_at_their_key() {
        let inv = |extra: &str| {
            Inventory::parse(
                &format!("[[node]]\nname = \"a\"\nprofile = \"p\"\n{extra}"),
                "n.toml",
            )
        };
        let good = "mac = \"52:54:00:12:34:56\"\naddress = \"10.0.2.50/24\"\ngateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\", \"fd00::1\"]\n";
        let n = &inv(good).unwrap().nodes[0];
        assert_eq!(n.address.as_deref(), Some("10.0.2.50/24"));
        assert!(
            inv("mac = \"52:54:00:12:34:56\"\naddress = \"fd00::5/64\"\ngateway = \"fd00::1\"\n")
                .is_ok()
        );
        for (extra, want) in [
            (
                "mac = \"52:54:00:12:34:56\"\naddress = \"10.0.2.50\"\n",
                "n.toml:5:11: address \"10.0.2.50\" is not an IP address with a prefix length",
            ),
            (
                "mac = \"52:54:00:12:34:56\"\naddress = \"10.0.2.50/33\"\n",
                "n.toml:5:11: address \"10.0.2.50/33\"",
            ),
            (
                "address = \"10.0.2.50/24\"\n",
                "n.toml:4:11: node \"a\" has a static address but no mac",
            ),
            (
                "mac = \"52:54:00:12:34:56\"\naddress = \"10.0.2.50/24\"\ngateway = \"fd00::1\"\n",
                "n.toml:6:11: gateway fd00::1 is not of the same IP version",
            ),
            (
                "mac = \"52:54:00:12:34:56\"\naddress = \"10.0.2.50/24\"\ndns = [\"1.1.1.1\", \"x; rm\"]\n",
                "n.toml:6:19: \"x; rm\" is not an IP address",
            ),
            (
                "gateway = \"10.0.2.2\"\n",
                "n.toml:4:11: node \"a\" has gateway but no address",
            ),
        ] {
            let err = inv(extra).unwrap_err().to_string();
            assert!(err.contains(want), "{extra}: {err}");
        }
    }

    #[test]
    fn host_names_follow_rfc_1123() {
        let inv = |h: &str| {
            Inventory::parse(
                &format!("[[node]]\nname = \"a\"\nprofile = \"p\"\nhostname = \"{h}\"\n"),
                "n.toml",
            )
        };
        let label = "a".repeat(63);
        let long = [label.as_str(); 4].join("."); // 255 characters
        assert!(inv(&long[..253]).is_ok());
        for bad in [
            long.as_str(),
            &"b".repeat(64),
            "a..b",
            "-a.b",
            "a_b",
            "A.b",
            "",
        ] {
            let err = inv(bad).unwrap_err().to_string();
            assert!(err.contains("n.toml:4:12: host name"), "{bad}: {err}");
        }
    }

    #[test]
    fn self_labels() {
        for ok in [
            "node.kubernetes.io/role=worker",
            "topology.kubernetes.io/region=home",
            "example.com/x=y",
            "plain=1",
            "x.node.kubernetes.io/a=b",
        ] {
            assert!(check_self_label(ok).is_ok(), "{ok}");
        }
        for bad in [
            "node-role.kubernetes.io/worker=true",
            "kubernetes.io/role=x",
            "k8s.io/x=y",
        ] {
            assert!(check_self_label(bad).is_err(), "{bad}");
        }
    }
}
