//! doctor's outer layer: reads /proc, runs `ip` and `nft` (or `iptables-save`), reads the Pi-hole
//! config and the artifact sets, and hands what it got to the pure checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use super::firewall::{Proto, Ruleset};
use super::{Finding, Level, Sockets};
use crate::netboot::options::ServeArgs;
use crate::netboot::set::ArtifactSet;
use crate::node::inventory::{Inventory, Node};
use crate::node::seed::Seed;

/// What doctor looks at beyond serve's own options.
pub struct Options<'a> {
    pub serve: &'a ServeArgs,
    pub interface: Option<&'a str>,
    pub pihole_config: &'a Path,
}

/// Renders a node's seed as `netboot serve` would (the caller resolves profiles).
pub type RenderSeed<'a> = dyn FnMut(&Node) -> Result<Seed> + 'a;

/// Every check, in a fixed order. Errors are bad input (the inventory); the host's state
/// only ever gives findings.
pub fn examine(o: &Options, seed: &mut RenderSeed) -> Result<Vec<Finding>> {
    let s = o.serve;
    let e = &s.endpoint;
    let needs = super::needs(e.tftp_port, e.http_port, s.dhcp.dhcp);
    let mut out = inventory(&s.nodes.inventory, &s.images, &e.base_url(), seed)?;
    out.extend(super::check_ports(&needs, e.listen, &sockets()));
    out.extend(interface(o));
    out.extend(match firewall() {
        Ok(set) => super::check_firewall(&needs, &set),
        Err(why) => vec![Finding::new(
            Level::Info,
            "firewall",
            why,
            "nft, iptables-save",
        )],
    });
    let shown = o.pihole_config.display().to_string();
    let pihole = match std::fs::File::open(o.pihole_config) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.to_string())),
        Ok(f) => Some(super::pihole::parse(f).map_err(|e| e.to_string())),
    };
    out.extend(super::check_pihole(pihole, &shown, s.dhcp.dhcp));
    Ok(out)
}

/// The artifact sets, Pi trees and seeds of the inventory's netbooted nodes; `base_url` is where
/// serve would listen.
fn inventory(
    inventory: &Path,
    images: &Path,
    base_url: &str,
    seed: &mut RenderSeed,
) -> Result<Vec<Finding>> {
    let shown = inventory.display().to_string();
    let text = std::fs::read_to_string(inventory)
        .with_context(|| format!("reading the inventory {shown}"))?;
    let inv = Inventory::parse(&text, &shown)?;
    // Each set is loaded (every file hashed) once, for both checks.
    let mut sets = BTreeMap::new();
    let mut out = super::check_artifacts(&inv, &text, &shown, |profile| {
        let dir = images.join(profile).join("netboot");
        let set = ArtifactSet::load(&dir, profile)?;
        let n = set.files.len();
        sets.insert(profile.to_string(), set);
        Ok(n)
    });
    // Each seed is rendered once: `seeds` reports it, `pi` compares its network-config with
    // the built cmdline.txt; the findings stay in the order artifacts, pi, seeds.
    let mut rendered: HashMap<String, Seed> = HashMap::new();
    let seeds = super::check_seeds(&inv, &text, &shown, |node| {
        rendered.insert(node.name.clone(), seed(node)?);
        Ok(())
    });
    out.extend(super::check_pi(
        &inv,
        &text,
        &shown,
        base_url,
        |node, at| {
            let Some(set) = sets.get(&node.profile) else {
                return Ok(None);
            };
            // A seed that did not render is reported under `seeds`; the rest is still checked.
            let net = rendered.get(&node.name).map(|s| s.network_config.as_str());
            let built = crate::netboot::catalog::pi_node_cmdline(node, set, net, at)?;
            Ok(built.map(|(_, cmdline)| {
                crate::netboot::pitree::seed_server(&cmdline)
                    .unwrap_or_default()
                    .to_string()
            }))
        },
    ));
    out.extend(seeds);
    Ok(out)
}

/// The kernel's UDP and TCP tables of this network namespace and who holds each socket.
fn sockets() -> Sockets {
    let mut sockets = Vec::new();
    for (file, proto) in [
        ("/proc/net/udp", Proto::Udp),
        ("/proc/net/udp6", Proto::Udp),
        ("/proc/net/tcp", Proto::Tcp),
        ("/proc/net/tcp6", Proto::Tcp),
    ] {
        // udp6/tcp6 are absent when IPv6 is off; a table we cannot read holds nothing we see.
        let Ok(f) = std::fs::File::open(file) else {
            continue;
        };
        if let Ok(v) = super::procnet::parse(f, file) {
            sockets.extend(v.into_iter().map(|s| (proto, file.to_string(), s)));
        }
    }
    let wanted: BTreeSet<u64> = sockets.iter().map(|(_, _, s)| s.inode).collect();
    Sockets {
        sockets,
        holders: holders(&wanted),
    }
}

/// /proc/PID/fd/* links to `socket:[INODE]`, by pid (sorted, so the output does not depend on
/// readdir order). Processes we may not look into are left out.
fn holders(wanted: &BTreeSet<u64>) -> BTreeMap<u64, Vec<super::Holder>> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut out: BTreeMap<u64, Vec<super::Holder>> = BTreeMap::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut inodes: BTreeSet<u64> = BTreeSet::new();
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && let Some(i) = link.to_str().and_then(super::procnet::socket_inode)
                && wanted.contains(&i)
            {
                inodes.insert(i);
            }
        }
        if inodes.is_empty() {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        for i in inodes {
            out.entry(i).or_default().push(super::Holder {
                pid,
                comm: comm.trim().to_string(),
            });
        }
    }
    out
}

fn interface(o: &Options) -> Vec<Finding> {
    let out = match Command::new(tool("ip"))
        .args(["-j", "-d", "addr", "show"])
        .output()
    {
        Ok(out) if out.status.success() => out.stdout,
        Ok(out) => return vec![tool_failed("interface", "ip -j -d addr show", &out.stderr)],
        Err(e) => {
            let what = format!("cannot run `ip` ({e}): the interface is not checked");
            return vec![
                Finding::new(Level::Info, "interface", what, "ip").fix("install iproute2"),
            ];
        }
    };
    match super::iplink::parse(&out[..]) {
        Ok(links) => super::check_interface(
            &links,
            o.interface,
            o.serve.endpoint.listen,
            o.serve.max_blksize,
        ),
        Err(e) => vec![Finding::new(
            Level::Info,
            "interface",
            format!("cannot read the output of `ip -j -d addr show`: {e}"),
            "ip",
        )],
    }
}

fn tool_failed(check: &'static str, cmd: &str, stderr: &[u8]) -> Finding {
    let what = format!("`{cmd}` failed: {}", String::from_utf8_lossy(stderr).trim());
    Finding::new(
        Level::Info,
        check,
        what,
        cmd.split(' ').next().unwrap_or(cmd),
    )
    .fix("run doctor as root to check this")
}

/// nft's ruleset, else iptables-save's; Err says why neither could be read.
fn firewall() -> std::result::Result<Ruleset, String> {
    match Command::new(tool("nft"))
        .args(["-j", "list", "ruleset"])
        .output()
    {
        Ok(out) if out.status.success() => {
            return super::nft::parse(&out.stdout[..]).map_err(|e| e.to_string());
        }
        Ok(out) => return Err(tool_failed("firewall", "nft -j list ruleset", &out.stderr).what),
        Err(_) => {}
    }
    match Command::new(tool("iptables-save")).output() {
        Ok(out) if out.status.success() => {
            super::iptables::parse(&out.stdout[..]).map_err(|e| e.to_string())
        }
        Ok(out) => Err(tool_failed("firewall", "iptables-save", &out.stderr).what),
        Err(_) => {
            Err("neither nft nor iptables-save is installed: no firewall rules to check".into())
        }
    }
}

/// A tool from PATH, or the sbin folders a user's PATH often lacks.
fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}
