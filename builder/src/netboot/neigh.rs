//! The kernel's ARP table (`/proc/net/arp`): which MAC an IPv4 address on the LAN has. TFTP and
//! HTTP carry no MAC, and a PXE ROM fetches its first file before it ever names itself over
//! HTTP; the kernel learnt the MAC when the client asked for ours by ARP. Pure parser; the
//! server reads the file.

use std::net::IpAddr;

use imgbuild_netboot::Mac;

/// The MAC of `ip` in `table` (the text of /proc/net/arp), if the entry is complete.
///
/// ```text
/// IP address       HW type     Flags       HW address            Mask     Device
/// 10.33.0.50       0x1         0x2         52:54:00:00:00:01     *        br0
/// ```
pub fn mac_of(table: &str, ip: IpAddr) -> Option<Mac> {
    let IpAddr::V4(ip) = ip else { return None };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, _hw, flags, mac, ..] = f.as_slice() else {
            return None;
        };
        // ATF_COM (0x2): resolved; an incomplete entry shows 00:00:00:00:00:00.
        let complete =
            u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|v| v & 0x2 != 0);
        (complete && addr.parse() == Ok(ip)).then(|| mac.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_entries_only() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.33.0.50       0x1         0x2         52:54:00:00:00:01     *        br0\n\
                 10.33.0.51       0x1         0x0         00:00:00:00:00:00     *        br0\n\
                 10.33.0.5        0x1         0x6         52:54:00:00:00:05     *        br0\n";
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            mac_of(t, ip("10.33.0.50")),
            Some(Mac([0x52, 0x54, 0, 0, 0, 1]))
        );
        assert_eq!(
            mac_of(t, ip("10.33.0.5")),
            Some(Mac([0x52, 0x54, 0, 0, 0, 5]))
        );
        assert_eq!(mac_of(t, ip("10.33.0.51")), None);
        assert_eq!(mac_of(t, ip("10.33.0.52")), None);
        assert_eq!(mac_of(t, ip("fd00::1")), None);
        assert_eq!(mac_of("", ip("10.33.0.50")), None);
    }
}
