//! Arbitrary bytes as a base disk image: the table, FAT and ext4 readers and every file's
//! content must yield data or errors, never a panic that escapes.
//!
//! Seed the corpus with small images from tests/fixtures/inputs/make-base-image.sh (truncate
//! them to the first few MiB, or shrink the partitions) for useful coverage.
#![no_main]

use std::io::Read;
use std::sync::Arc;

use imgbuild::source::raw;
use imgbuild::tree::Kind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let disk: Arc<[u8]> = Arc::from(data);
    let Ok(img) = raw::read_disk(disk, data.len() as u64, "fuzz", None, None) else {
        return;
    };
    let trees = img.boot.iter().map(|(_, t)| t).chain([&img.root.1]);
    for tree in trees {
        for (_, e) in tree.iter() {
            if let Kind::File(c) = &e.kind
                && let Ok(mut r) = c.open()
            {
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink);
            }
        }
    }
});
