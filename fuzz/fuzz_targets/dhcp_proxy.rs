//! Arbitrary bytes as a DHCP request on port 67 and 4011: the proxy answers or stays silent,
//! never panics, and any answer is a BOOTREPLY to the same transaction with no address and no
//! lease, small enough for old PXE ROMs.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use imgbuild_netboot::dhcp::client::Answer;
use imgbuild_netboot::dhcp::reply::{Config, Port, answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = Config {
        server: Ipv4Addr::new(10, 33, 0, 1),
        http_base: "http://10.33.0.1:8080".into(),
    };
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 33, 0, 9), 68);
    for port in [Port::Dhcp, Port::Pxe] {
        let Ok(r) = answer(data, from, port, &cfg, &|_| true, &|_, _| None) else {
            continue;
        };
        assert!(r.bytes.len() <= 576, "{} bytes", r.bytes.len());
        let a = Answer::parse(&r.bytes).expect("our reply parses");
        assert_eq!(a.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(a.lease_time, None);
        assert_eq!(a.xid, u32::from_be_bytes(data[4..8].try_into().unwrap()));
    }
});
