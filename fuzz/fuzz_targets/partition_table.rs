//! Arbitrary bytes as a disk: MBR/GPT parsing and filesystem probing must return partitions
//! inside the disk or an error, never panic.
#![no_main]

use imgbuild::source::raw;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok((_, parts)) = raw::read_partitions(data, len, "fuzz") {
        for p in &parts {
            assert!(p.offset + p.size <= len);
        }
        let _ = raw::select(&parts, None, None, "fuzz");
    }
});
