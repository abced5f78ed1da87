//! `ip -j addr show` (iproute2's JSON): each interface's name, flags, MTU and IPv4 addresses.

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

    /// Captured from `ip -j addr show` by tests/fixtures/doctor/make-fixtures.
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
        assert!(parse(&b"{}"[..]).is_err());
    }
}
