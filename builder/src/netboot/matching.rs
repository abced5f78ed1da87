//! Which inventory node a netboot request comes from. The most specific identifier wins: the
//! SMBIOS UUID and the Raspberry Pi serial name one machine, while a MAC names a network card
//! (which moves between machines, and USB adapters boot several). The reason is returned for
//! the log, including a MAC that named another node.

use imgbuild_netboot::ClientIds;

use crate::node::inventory::{Node, uuid_swapped};

/// A node found for a request, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'a> {
    pub node: &'a Node,
    pub why: String,
}

/// The node `ids` names among `nodes`, or None.
pub fn find<'a>(nodes: &'a [Node], ids: &ClientIds) -> Option<Found<'a>> {
    let by_mac = ids
        .mac
        .and_then(|m| nodes.iter().find(|n| n.mac_address == Some(m)));
    let specific = by_uuid(nodes, ids).or_else(|| by_serial(nodes, ids));
    let Some((node, mut why)) = specific else {
        let node = by_mac?;
        let mac = ids.mac.map(|m| m.to_string()).unwrap_or_default();
        return Some(Found {
            node,
            why: format!("MAC {mac}"),
        });
    };
    if let Some(other) = by_mac.filter(|m| m.name != node.name) {
        why.push_str(&format!(
            ", which wins over its MAC (that is node {:?}'s)",
            other.name
        ));
    }
    Some(Found { node, why })
}

fn by_uuid<'a>(nodes: &'a [Node], ids: &ClientIds) -> Option<(&'a Node, String)> {
    let g = ids.guid?;
    nodes.iter().find_map(|n| {
        let u = n.uuid_bytes?;
        let how = if u == g {
            "as printed"
        } else if uuid_swapped(&u) == g {
            "SMBIOS byte order"
        } else {
            return None;
        };
        Some((n, format!("SMBIOS UUID {} ({how})", n.uuid.as_deref()?)))
    })
}

fn by_serial<'a>(nodes: &'a [Node], ids: &ClientIds) -> Option<(&'a Node, String)> {
    let s = ids.pi_serial?;
    let n = nodes.iter().find(|n| n.pi_serial() == Some(s))?;
    Some((n, format!("Raspberry Pi serial {s:08x}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::inventory::Inventory;
    use imgbuild_netboot::Mac;

    const NODES: &str = r#"
[[node]]
name = "card"
profile = "p"
mac = "52:54:00:00:00:01"

[[node]]
name = "pc"
profile = "p"
uuid = "00112233-4455-6677-8899-aabbccddeeff"

[[node]]
name = "pi"
profile = "p"
mac = "dc:a6:32:01:02:03"
serial = "10000000abcdef01"
"#;

    fn ids(mac: Option<&str>, guid: Option<[u8; 16]>, pi: Option<u32>) -> ClientIds {
        ClientIds {
            mac: mac.map(|m| m.parse::<Mac>().unwrap()),
            guid,
            pi_serial: pi,
            ip: None,
        }
    }

    fn found(ids: &ClientIds) -> Option<(String, String)> {
        let inv = Inventory::parse(NODES, "n.toml").unwrap();
        find(&inv.nodes, ids).map(|f| (f.node.name.clone(), f.why))
    }

    #[test]
    fn uuid_and_serial_win_over_the_mac() {
        let uuid = crate::node::inventory::parse_uuid("00112233-4455-6677-8899-aabbccddeeff");
        let (n, why) = found(&ids(Some("52:54:00:00:00:01"), uuid, None)).unwrap();
        assert_eq!(n, "pc");
        assert!(
            why.contains("SMBIOS UUID 00112233-4455-6677-8899-aabbccddeeff (as printed)"),
            "{why}"
        );
        assert!(
            why.contains("wins over its MAC (that is node \"card\"'s)"),
            "{why}"
        );
        // Firmware that sends the SMBIOS (little-endian) order matches the same node.
        let swapped = uuid.map(|u| uuid_swapped(&u));
        let (n, why) = found(&ids(None, swapped, None)).unwrap();
        assert_eq!(
            (n.as_str(), why.contains("SMBIOS byte order")),
            ("pc", true)
        );
        let (n, why) = found(&ids(Some("52:54:00:00:00:01"), None, Some(0xabcdef01))).unwrap();
        assert_eq!(n, "pi");
        assert!(why.starts_with("Raspberry Pi serial abcdef01"), "{why}");
        // A UUID beats a serial too (a PXE client sends no Pi serial; checked first anyway).
        assert_eq!(found(&ids(None, uuid, Some(0xabcdef01))).unwrap().0, "pc");
    }

    #[test]
    fn the_mac_alone_and_nothing_known() {
        let (n, why) = found(&ids(Some("DC-A6-32-01-02-03"), None, None)).unwrap();
        assert_eq!((n.as_str(), why.as_str()), ("pi", "MAC dc:a6:32:01:02:03"));
        // The Pi's own serial and MAC agree: no "wins over" note.
        let (_, why) = found(&ids(Some("dc:a6:32:01:02:03"), None, Some(0xabcdef01))).unwrap();
        assert!(!why.contains("wins over"), "{why}");
        // An unknown UUID or serial falls back to the MAC.
        let (n, _) = found(&ids(Some("52:54:00:00:00:01"), Some([9; 16]), Some(7))).unwrap();
        assert_eq!(n, "card");
        assert_eq!(
            found(&ids(Some("52:54:00:00:00:99"), Some([9; 16]), Some(7))),
            None
        );
        assert_eq!(found(&ids(None, None, None)), None);
    }
}
