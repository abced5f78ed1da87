//! Arbitrary bytes as an uncompressed tar stream: the reader must return entries or an error,
//! never panic, and never produce a path outside the tree.
#![no_main]

use imgbuild::source::tar;
use imgbuild::tree::{Source, Tree};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut tree = Tree::new();
    let source = |offset| Source::HostFile {
        path: "/nonexistent".into(),
        offset,
    };
    if tar::read_into(data, &mut tree, &source).is_ok() {
        for (path, _) in tree.iter() {
            assert!(!path.as_bytes().split(|&b| b == b'/').any(|c| c == b".."));
        }
    }
});
