//! `imgbuild netboot doctor`: why would boot clients not reach this server? Each check here is
//! pure: it gets what the outer layer ([`host`]) read from /proc, `ip`, `nft` and the files, and
//! returns [`Finding`]s, each with what is wrong, where, and the fix.

pub mod firewall;
pub mod host;
pub mod iplink;
pub mod iptables;
pub mod nft;
pub mod pihole;
pub mod procnet;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use self::firewall::{Proto, Ruleset, Verdict};
use self::procnet::Socket;
use super::DhcpMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Checked and fine.
    Ok,
    /// Worth knowing; nothing to fix.
    Info,
    /// Boot clients will (or may) fail until it is fixed: exit status 1.
    Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    /// Which check: `port`, `pihole`, `interface`, `firewall`, `artifacts`.
    pub check: &'static str,
    pub what: String,
    /// The file, rule, interface or socket it is about.
    #[serde(rename = "where")]
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn new(level: Level, check: &'static str, what: String, location: impl Into<String>) -> Self {
        Finding {
            level,
            check,
            what,
            location: location.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    fn with_fix(mut self, fix: Option<String>) -> Self {
        self.fix = fix;
        self
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok",
            Level::Info => "info",
            Level::Problem => "problem",
        };
        write!(
            f,
            "{level} {}: {} [{}]",
            self.check, self.what, self.location
        )?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// A port the server needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub proto: Proto,
    pub port: u16,
    pub role: &'static str,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.proto.name().to_uppercase();
        write!(f, "{p} {} ({})", self.port, self.role)
    }
}

/// The ports `netboot serve` with these options binds (port 0, any free port, needs no check).
pub fn needs(tftp_port: u16, http_port: u16, dhcp: DhcpMode) -> Vec<Need> {
    let mut v = vec![
        Need {
            proto: Proto::Udp,
            port: tftp_port,
            role: "TFTP",
        },
        Need {
            proto: Proto::Tcp,
            port: http_port,
            role: "HTTP",
        },
    ];
    if dhcp == DhcpMode::Proxy {
        v.push(Need {
            proto: Proto::Udp,
            port: 67,
            role: "proxyDHCP",
        });
        v.push(Need {
            proto: Proto::Udp,
            port: 4011,
            role: "PXE boot server",
        });
    }
    v.retain(|n| n.port != 0);
    v
}

/// A process with a socket open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

/// The sockets of the kernel's tables, with the table each came from.
pub struct Sockets {
    pub sockets: Vec<(Proto, String, Socket)>,
    /// Socket inode → the processes holding it, by pid.
    pub holders: BTreeMap<u64, Vec<Holder>>,
}

/// Is `s` in the way of binding `need` on `listen`: same port, bound to any address (v4 or v6,
/// which may be dual-stack) or to `listen`; for TCP only listening sockets.
fn in_the_way(s: &Socket, proto: Proto, need: &Need, listen: IpAddr) -> bool {
    s.port == need.port
        && proto == need.proto
        && (proto == Proto::Udp || s.state == procnet::LISTEN)
        && (s.local.is_unspecified() || s.local == listen || listen.is_unspecified())
}

fn names(holders: &[Holder]) -> String {
    let v: Vec<String> = holders
        .iter()
        .map(|h| format!("{} (pid {})", h.comm, h.pid))
        .collect();
    v.join(", ")
}

/// Who holds each needed port, and what that means.
pub fn check_ports(needs: &[Need], listen: IpAddr, socks: &Sockets) -> Vec<Finding> {
    let mut out = Vec::new();
    for need in needs {
        let held: Vec<_> = socks
            .sockets
            .iter()
            .filter(|(p, _, s)| in_the_way(s, *p, need, listen))
            .collect();
        if held.is_empty() {
            let what = format!("{need} is free on {listen}");
            out.push(Finding::new(Level::Ok, "port", what, "/proc/net"));
        }
        for (_, table, s) in held {
            let holders = socks.holders.get(&s.inode).cloned().unwrap_or_default();
            out.push(port_finding(need, s, table, &holders));
        }
    }
    out
}

fn port_finding(need: &Need, s: &Socket, table: &str, holders: &[Holder]) -> Finding {
    let at = format!("{table}: {}", std::net::SocketAddr::new(s.local, s.port));
    let who = if holders.is_empty() {
        format!("a process this user cannot see (socket inode {})", s.inode)
    } else {
        names(holders)
    };
    let what = format!("{need} is held by {who}");
    let all = |name: &str| !holders.is_empty() && holders.iter().all(|h| h.comm == name);
    if all("imgbuild") {
        return Finding::new(Level::Info, "port", what, at)
            .fix("that is a running `imgbuild netboot serve`; stop it before starting another");
    }
    match need.port {
        67 if need.role == "proxyDHCP" => {
            let why = if all("dnsmasq") || all("pihole-FTL") {
                "the Pi-hole/dnsmasq DHCP server: "
            } else {
                ""
            };
            let what = format!(
                "{what}: {why}`--dhcp proxy` still works, it listens with a raw socket beside it (needs CAP_NET_RAW, which the unit from `netboot install-unit` grants)"
            );
            Finding::new(Level::Info, "port", what, at)
        }
        4011 if need.role == "PXE boot server" => Finding::new(Level::Problem, "port", format!("{what}: another PXE boot server answers UEFI clients there"), at)
            .fix("remove `pxe-service`/`dhcp-range=…,proxy` from that server (dnsmasq binds 4011 only for them), or stop it"),
        _ if need.proto == Proto::Tcp => Finding::new(Level::Problem, "port", format!("{what}: `netboot serve` cannot listen"), at)
            .fix("stop that program, or choose another --http-port"),
        _ => Finding::new(Level::Problem, "port", format!("{what}: `netboot serve` cannot listen"), at)
            .fix("stop that program; if it is dnsmasq or Pi-hole with `enable-tftp`, remove enable-tftp (imgbuild serves TFTP itself)"),
    }
}

/// Pi-hole's DHCP decides the mode: off (the router does DHCP) needs `--dhcp proxy`; on works
/// with `--dhcp none` only when FTL loads our dnsmasq snippet. `None`: no pihole.toml.
pub fn check_pihole(
    config: Option<Result<pihole::PiHole, String>>,
    file: &str,
    mode: DhcpMode,
) -> Vec<Finding> {
    let f = |level, what: String, key: &str| {
        Finding::new(level, "pihole", what, format!("{file}: {key}"))
    };
    let enable = "sudo pihole-FTL --config misc.etc_dnsmasq_d true && sudo systemctl restart pihole-FTL, then `imgbuild netboot dnsmasq -o /etc/dnsmasq.d/50-imgbuild-netboot.conf`";
    let p = match config {
        None => {
            let what = "no Pi-hole configuration (not a Pi-hole v6 host)".to_string();
            return vec![Finding::new(Level::Ok, "pihole", what, file)];
        }
        Some(Err(e)) => {
            return vec![
                Finding::new(
                    Level::Problem,
                    "pihole",
                    format!("cannot read it: {e}"),
                    file,
                )
                .fix("repair the file, or point --pihole-config at the right one"),
            ];
        }
        Some(Ok(p)) => p,
    };
    let v = match (p.dhcp_active, mode, p.etc_dnsmasq_d) {
        (false, DhcpMode::None, _) => f(Level::Problem, "Pi-hole's DHCP is off (the router hands out addresses), so with --dhcp none nothing sends boot clients here".into(), "dhcp.active")
            .fix("serve with --dhcp proxy: our proxyDHCP answers boot clients beside the router's DHCP"),
        (false, DhcpMode::Proxy, _) => f(Level::Ok, "Pi-hole's DHCP is off and --dhcp proxy answers boot clients beside the router's DHCP".into(), "dhcp.active"),
        (true, DhcpMode::None, false) => f(Level::Problem, "misc.etc_dnsmasq_d is false: Pi-hole's DHCP ignores /etc/dnsmasq.d, so the snippet of `imgbuild netboot dnsmasq` that sends boot clients here is not loaded".into(), "misc.etc_dnsmasq_d")
            .fix(format!("{enable}; or serve with --dhcp proxy")),
        (true, DhcpMode::None, true) => f(Level::Ok, "Pi-hole runs DHCP and loads /etc/dnsmasq.d (misc.etc_dnsmasq_d = true): put the snippet of `imgbuild netboot dnsmasq` there".into(), "misc.etc_dnsmasq_d"),
        (true, DhcpMode::Proxy, _) => f(Level::Info, "Pi-hole runs DHCP; --dhcp proxy answers boot clients beside it (raw socket on UDP 67); --dhcp none with the dnsmasq snippet is the other way".into(), "dhcp.active"),
    };
    vec![v]
}

/// The TFTP block that fits one Ethernet frame of `mtu` (IPv4 + UDP + TFTP headers), as the
/// server computes it.
pub fn blksize_for(mtu: u32) -> u32 {
    mtu.saturating_sub(20 + 8 + 4)
}

/// What the boot interface looks like: `name` from --interface, else the one with `listen`.
pub fn check_interface(
    links: &[iplink::Link],
    name: Option<&str>,
    listen: IpAddr,
    max_blksize: u16,
) -> Vec<Finding> {
    let p = |what: String, at: &str| Finding::new(Level::Problem, "interface", what, at);
    let has = |l: &iplink::Link| l.ipv4().iter().any(|(a, _)| IpAddr::V4(*a) == listen);
    let link = match name {
        Some(n) => links.iter().find(|l| l.ifname == n),
        None => links.iter().find(|l| has(l)),
    };
    let Some(link) = link else {
        return vec![match name {
            Some(n) => p(format!("interface {n} does not exist"), n)
                .fix("name one that `ip -br link` lists"),
            None if listen.is_unspecified() => Finding::new(Level::Info, "interface", format!("--listen {listen} is on every interface; not checked"), "--listen")
                .fix("say --interface NAME to check the boot network's interface"),
            None => p(format!("no interface has the --listen address {listen}: `netboot serve` cannot bind it"), "--listen")
                .fix("use an address `ip -br addr` shows, or add it (`ip addr add ADDR/PREFIX dev IFACE`)"),
        }];
    };
    link_findings(link, has(link), listen, max_blksize)
}

/// The state of the boot interface `link`; `has_listen`: it holds the --listen address.
fn link_findings(
    link: &iplink::Link,
    has_listen: bool,
    listen: IpAddr,
    max_blksize: u16,
) -> Vec<Finding> {
    let p = |what: String, at: &str| Finding::new(Level::Problem, "interface", what, at);
    let at = format!("interface {}", link.ifname);
    let mut out = Vec::new();
    let n = &link.ifname;
    if !link.up() {
        out.push(p(format!("{n} is down"), &at).fix(format!("ip link set {n} up")));
    } else if !link.carrier() {
        out.push(
            p(
                format!("{n} has no carrier (no cable, or the switch port or peer is down)"),
                &at,
            )
            .fix("plug it in, or check the switch"),
        );
    }
    if link.ipv4().is_empty() {
        out.push(
            p(
                format!("{n} has no IPv4 address: DHCPv4 boot clients cannot reach it"),
                &at,
            )
            .fix(format!(
                "give {n} an address on the boot network, and --listen it"
            )),
        );
    } else if !listen.is_unspecified() && !has_listen {
        out.push(
            p(format!("--listen {listen} is not an address of {n}"), &at).fix(format!(
                "--listen one of {n}'s addresses (`ip -br addr show {n}`)"
            )),
        );
    }
    if let Some(delay) = link.stp_forward_delay().filter(|&d| d > 0) {
        out.push(p(format!("{n} is a bridge running STP with a {delay} s forward delay: a booting machine's port forwards nothing for {} s, and PXE firmware gives up sooner", 2 * delay), &at)
            .fix(format!("ip link set {n} type bridge stp_state 0 (or forward_delay 0)")));
    }
    let fits = blksize_for(link.mtu).min(u32::from(max_blksize));
    if link.mtu < 1500 {
        out.push(p(format!("MTU {} is below 1500: TFTP blocks shrink to {fits} bytes (Raspberry Pis and most UEFI firmware ask for 1468); transfers get slower and some firmware gives up on a smaller block than it asked", link.mtu), &at)
            .fix(format!("raise it if the network allows: ip link set {n} mtu 1500")));
    }
    if out.is_empty() {
        let what = format!(
            "{n} is up with carrier and IPv4, MTU {} (TFTP blocks up to {fits} bytes)",
            link.mtu
        );
        out.push(Finding::new(Level::Ok, "interface", what, at));
    }
    out
}

/// Whether the firewall lets each needed port's first packet in.
pub fn check_firewall(needs: &[Need], set: &Ruleset) -> Vec<Finding> {
    let mut out = Vec::new();
    for need in needs {
        let f = |level, what: String, at: &str| Finding::new(level, "firewall", what, at);
        let (proto, port) = (need.proto.name(), need.port);
        let accept = format!("add `{proto} dport {port} accept` before it");
        match firewall::verdict(set, need.proto, port) {
            Verdict::Dropped(r) => out.push(
                f(
                    Level::Problem,
                    format!("{need} is dropped by the {} rule `{}`", set.source, r.text),
                    &r.location,
                )
                .fix(format!("delete that rule or {accept}")),
            ),
            Verdict::Policy(chain) => out.push(
                f(
                    Level::Problem,
                    format!("{need} is dropped by the drop policy of {chain}: no rule accepts it"),
                    &chain,
                )
                .fix(format!("add `{proto} dport {port} accept` to that chain")),
            ),
            Verdict::Passes { maybe } if maybe.is_empty() => {
                out.push(f(
                    Level::Ok,
                    format!("{need} passes the {} rules", set.source),
                    set.source,
                ));
            }
            Verdict::Passes { maybe } => {
                for r in maybe {
                    out.push(f(Level::Info, format!("{need} may be dropped by the {} rule `{}` (it has conditions doctor cannot judge)", set.source, r.text), &r.location));
                }
            }
        }
    }
    out
}

/// Every profile an inventory node netboots (`Node::netboots`) has a complete, unaltered set; `load`
/// checks one profile's set (files present, sizes and SHA-256 as listed) and counts its files.
pub fn check_artifacts(
    inv: &crate::node::inventory::Inventory,
    text: &str,
    file: &str,
    mut load: impl FnMut(&str) -> Result<usize, super::set::SetError>,
) -> Vec<Finding> {
    // Profile → (nodes, inventory line of the first).
    let mut profiles: BTreeMap<&str, (Vec<&str>, usize)> = BTreeMap::new();
    for (i, node) in inv.nodes.iter().enumerate() {
        if node.netboots() {
            let line = crate::node::inventory::node_line(text, i, "profile");
            let e = profiles.entry(&node.profile).or_insert((Vec::new(), line));
            e.0.push(&node.name);
        }
    }
    if profiles.is_empty() {
        return vec![
            Finding::new(Level::Problem, "artifacts", "no node has a `mac`, so nothing is netbooted".into(), file)
                .fix("add mac = \"…\" to the [[node]] entries of the machines that boot from the network"),
        ];
    }
    let mut out = Vec::new();
    for (profile, (nodes, line)) in profiles {
        let at = format!("{file}:{line}");
        let who = format!("node(s) {} netboot profile {profile}", nodes.join(", "));
        out.push(match load(profile) {
            Ok(n) => Finding::new(
                Level::Ok,
                "artifacts",
                format!("{who}: its {n} files are present with the listed SHA-256"),
                at,
            ),
            Err(e) => {
                let (what, fix) = split_help(&e.to_string());
                Finding::new(Level::Problem, "artifacts", format!("{who}: {what}"), at)
                    .with_fix(fix)
            }
        });
    }
    out
}

/// Every node that netboots gets its seed rendered as `netboot serve` does at start (`render`:
/// profile, secrets, templates), so a missing secret shows here and not as a server that will
/// not start.
pub fn check_seeds(
    inv: &crate::node::inventory::Inventory,
    text: &str,
    file: &str,
    mut render: impl FnMut(&crate::node::inventory::Node) -> anyhow::Result<()>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, node) in inv.nodes.iter().enumerate() {
        if !node.netboots() {
            continue;
        }
        let at = format!(
            "{file}:{}",
            crate::node::inventory::node_line(text, i, "profile")
        );
        let n = &node.name;
        out.push(match render(node) {
            Ok(()) => Finding::new(
                Level::Ok,
                "seeds",
                format!("node {n}: its seed renders (profile, secrets, templates)"),
                at,
            ),
            Err(e) => {
                let mut text = e.to_string();
                for cause in e.chain().skip(1) {
                    text.push_str(&format!(": {cause}"));
                }
                let (what, fix) = split_help(&text);
                let what = format!(
                    "node {n}: `netboot serve` would not start, its seed cannot be rendered: {what}"
                );
                Finding::new(Level::Problem, "seeds", what, at).with_fix(fix)
            }
        });
    }
    out
}

/// Every Raspberry Pi node (a netbooting node with a serial, in a set with a Pi tree) has its
/// serial folder, and its built cmdline.txt names the seed URL `base_url` (where serve listens)
/// with the token slot serve fills in, and the network-config its seed has now. `check(node,
/// at)`: the seed server its cmdline.txt names, or serve's error (each a problem with its fix);
/// None for a node that is no Pi node (or whose set failed to load: `artifacts` says so).
pub fn check_pi(
    inv: &crate::node::inventory::Inventory,
    text: &str,
    file: &str,
    base_url: &str,
    mut check: impl FnMut(&crate::node::inventory::Node, &str) -> anyhow::Result<Option<String>>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, node) in inv.nodes.iter().enumerate() {
        if !node.netboots() || node.serial.is_none() {
            continue;
        }
        let line = crate::node::inventory::node_line(text, i, "profile");
        let at = format!("{file}:{line}");
        let n = &node.name;
        let f = match check(node, &at) {
            Ok(None) => continue,
            Ok(Some(built)) if built == base_url => Finding::new(
                Level::Ok,
                "pi",
                format!("node {n}: its serial folder is built, cmdline.txt names the seed URL on {built}, its token minted when served"),
                at,
            ),
            Ok(Some(built)) => Finding::new(
                Level::Problem,
                "pi",
                format!("node {n}: its cmdline.txt names the seed server {built}, but serve would listen at {base_url}"),
                at,
            )
            .fix(format!("rebuild with `imgbuild netboot build {} --listen ADDR --http-port N` as given to serve", node.profile)),
            Err(e) => {
                let (what, fix) = split_help(&format!("{e:#}"));
                Finding::new(Level::Problem, "pi", what, at).with_fix(fix)
            }
        };
        out.push(f);
    }
    out
}

/// Our errors' lines, split into what went wrong and the `  help: ` lines, each joined by "; ".
fn split_help(text: &str) -> (String, Option<String>) {
    let (mut what, mut help) = (Vec::new(), Vec::new());
    for line in text.lines() {
        match line.trim_start().strip_prefix("help: ") {
            Some(h) => help.push(h.trim()),
            None if !line.trim().is_empty() => what.push(line.trim()),
            None => {}
        }
    }
    (what.join("; "), (!help.is_empty()).then(|| help.join("; ")))
}

#[cfg(test)]
mod tests;
