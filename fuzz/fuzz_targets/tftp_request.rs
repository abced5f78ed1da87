//! Arbitrary bytes as a TFTP datagram: parsing, the path check and option negotiation never
//! panic; a name the path check accepts stays relative with no `..`, and the agreed block size
//! and window stay in the limits.
#![no_main]

use imgbuild_netboot::tftp::packet::{self, Packet};
use imgbuild_netboot::tftp::{path, transfer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Packet::Rrq(req)) = packet::parse(data) else {
        return;
    };
    if let Ok(name) = path::check(req.filename) {
        assert!(!name.starts_with('/'), "{name:?}");
        assert!(!name.split('/').any(|c| c == ".."), "{name:?}");
    }
    let limits = transfer::Limits {
        max_blksize: 1468,
        max_windowsize: 8,
        ..transfer::Limits::default()
    };
    let n = transfer::negotiate(&req, 123_456, &limits);
    assert!((8..=1468).contains(&n.blksize) || n.blksize == 512, "{}", n.blksize);
    assert!((1..=8).contains(&n.windowsize));
    let _ = packet::oack(&n.oack);
});
