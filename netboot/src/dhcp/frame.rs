//! IPv4/UDP framing for the raw-socket listener (used when another process, typically dnsmasq,
//! holds UDP 67 without SO_REUSEADDR): a raw `IPPROTO_UDP` socket reads whole IPv4 packets and
//! writes UDP header + payload (the kernel adds the IP header). Parsing is etherparse's.

use std::net::SocketAddrV4;

use etherparse::{IpNumber, Ipv4Slice, UdpHeader, UdpSlice};

/// The UDP payload of `packet` (an IPv4 packet as a raw socket reads it) when it is addressed to
/// `port`, with its source; None for anything else (other ports, fragments, garbage).
pub fn udp_to_port(packet: &[u8], port: u16) -> Option<(SocketAddrV4, &[u8])> {
    let ip = Ipv4Slice::from_slice(packet).ok()?;
    if ip.payload_ip_number() != IpNumber::UDP || ip.is_payload_fragmented() {
        return None;
    }
    let udp = UdpSlice::from_slice(ip.payload().payload).ok()?;
    if udp.destination_port() != port {
        return None;
    }
    let from = SocketAddrV4::new(ip.header().source_addr(), udp.source_port());
    Some((from, udp.payload()))
}

/// UDP header + `payload` from `src_port` to `dst_port`, for a raw socket's sendto. Checksum 0
/// ("none"), which IPv4 allows and every DHCP client accepts.
pub fn udp_datagram(src_port: u16, dst_port: u16, payload: &[u8]) -> Option<Vec<u8>> {
    let h = UdpHeader::without_ipv4_checksum(src_port, dst_port, payload.len()).ok()?;
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(payload);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn packet(dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 0, 0, 9], [255, 255, 255, 255], 64).udp(68, dst_port);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn picks_the_port_and_source() {
        let p = packet(67, b"hello");
        let (from, data) = udp_to_port(&p, 67).unwrap();
        assert_eq!(from, "10.0.0.9:68".parse().unwrap());
        assert_eq!(data, b"hello");
        assert!(udp_to_port(&p, 4011).is_none());
        assert!(udp_to_port(&p[..p.len() - 3], 67).is_none(), "truncated");
        assert!(udp_to_port(b"\x45garbage", 67).is_none());
    }

    #[test]
    fn builds_a_header_etherparse_reads_back() {
        let d = udp_datagram(67, 68, b"offer").unwrap();
        let u = UdpSlice::from_slice(&d).unwrap();
        assert_eq!((u.source_port(), u.destination_port()), (67, 68));
        assert_eq!(u.length() as usize, d.len());
        assert_eq!(u.payload(), b"offer");
    }
}
