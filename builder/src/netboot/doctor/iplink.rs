//! `ip -j -d addr show` (iproute2's JSON): each interface's name, flags, MTU, IPv4 addresses
//! and, for a bridge, its spanning tree settings.

use std::io::Read;
use std::net::Ipv4Addr;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: String,
    #[serde(default)]
    info_data: Option<BridgeData>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct BridgeData {
    stp_state: Option<u32>,
    /// Centiseconds.
    forward_delay: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct AddrInfo {
    family: String,
    local: Option<String>,
    prefixlen: Option<u8>,
}

impl Link {
    /// Administratively up (`ip link set … up`).
    pub fn up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }

    /// A cable or peer is there (no `NO-CARRIER`).
    pub fn carrier(&self) -> bool {
        !self.flags.iter().any(|f| f == "NO-CARRIER")
    }

    /// For a bridge running STP: its forward delay in seconds (a port that comes up, like a
    /// booting PC's, forwards only after twice that).
    pub fn stp_forward_delay(&self) -> Option<u32> {
        let li = self.linkinfo.as_ref().filter(|l| l.info_kind == "bridge")?;
        let d = li.info_data.as_ref()?;
        (d.stp_state.unwrap_or(0) != 0).then(|| d.forward_delay.unwrap_or(0) / 100)
    }

    /// IPv4 addresses with their prefix lengths.
    pub fn ipv4(&self) -> Vec<(Ipv4Addr, u8)> {
        self.addr_info
            .iter()
            .filter(|a| a.family == "inet")
            .filter_map(|a| Some((a.local.as_deref()?.parse().ok()?, a.prefixlen.unwrap_or(32))))
            .collect()
    }
}

pub fn parse(r: impl Read) -> Result<Vec<Link>, serde_json::Error> {
    serde_json::from_reader(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `ip -j -d addr show` by tests/fixtures/doctor/make-fixtures.
    const ADDR: &str = include_str!("../../../../tests/fixtures/doctor/ip-addr.json");

    #[test]
    fn reads_the_captured_links() {
        let links = parse(ADDR.as_bytes()).unwrap();
        let by = |n: &str| links.iter().find(|l| l.ifname == n).unwrap();
        let br = by("br0");
        assert!(br.up() && br.carrier());
        assert_eq!(br.mtu, 1400);
        assert_eq!(br.ipv4(), [("10.9.0.1".parse().unwrap(), 24)]);
        let v0 = by("v0");
        assert!(v0.up() && !v0.carrier());
        let v1 = by("v1");
        assert!(!v1.up() && v1.ipv4().is_empty());
        assert_eq!(br.stp_forward_delay(), None);
        assert_eq!(by("br1").stp_forward_delay(), Some(15));
        assert_eq!(v0.stp_forward_delay(), None);
        assert!(parse(&b"{}"[..]).is_err());
    }
}
