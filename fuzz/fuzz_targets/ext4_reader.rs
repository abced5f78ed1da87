//! The ext4 base reader over hostile filesystems: open, walk every directory, read every xattr,
//! symlink and file: data or an error, never a panic or a hang.
//!
//! Most inputs are patches onto a valid filesystem (built once, in memory, by the ext4 writer
//! from a tree with every kind of entry: xattrs in the inode and in a block, an ACL, hard links,
//! devices, a FIFO, a socket, fast and slow symlinks, a sparse file, a directory big enough for
//! an htree), so mutations reach deep into the structures instead of failing at the magic
//! number. An input starting with 0xFF is taken as a whole filesystem image instead (seed the
//! corpus with small images from tests/fixtures/inputs/make-faithful-base.sh to cover ext2/3
//! block maps and 1 KiB blocks).
#![no_main]

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, OnceLock};

use imgbuild::fs::ext4::{self, Ext4Params};
use imgbuild::fs::ext4_read::{Ext4, read_tree};
use imgbuild::progress::Progress;
use imgbuild::tree::{Content, Entry, Kind, Tree, TreePath};
use libfuzzer_sys::fuzz_target;

fn sample() -> &'static [u8] {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let p = |s: &str| TreePath::new(s).unwrap();
        let mut t = Tree::new();
        let d = Entry::dir(0o755);
        t.insert(p("bin"), d.clone()).unwrap();
        t.insert(p("dev"), d.clone()).unwrap();
        t.insert(p("many"), d.clone()).unwrap();
        let mut ping = Entry::file(0o755, Content::bytes(b"#!/bin/sh\n".to_vec()));
        ping.xattrs = BTreeMap::from([
            (b"security.capability".to_vec(), vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (b"user.big".to_vec(), vec![b'x'; 600]),
        ]);
        t.insert(p("bin/ping"), ping).unwrap();
        t.insert(p("bin/zcat"), Entry::new(Kind::Hardlink(p("bin/ping")), 0)).unwrap();
        t.insert(p("bin/fast"), Entry::symlink("ping")).unwrap();
        t.insert(p("bin/slow"), Entry::symlink("s/".repeat(60))).unwrap();
        t.insert(p("dev/null"), Entry::new(Kind::CharDevice { major: 1, minor: 3 }, 0o666)).unwrap();
        t.insert(p("dev/wide"), Entry::new(Kind::BlockDevice { major: 259, minor: 300_000 }, 0o600)).unwrap();
        t.insert(p("dev/fifo"), Entry::new(Kind::Fifo, 0o644)).unwrap();
        t.insert(p("dev/sock"), Entry::new(Kind::Socket, 0o755)).unwrap();
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [(1u16, 7u16, u32::MAX), (2, 5, 1000), (4, 5, u32::MAX), (0x10, 5, u32::MAX), (0x20, 0, u32::MAX)] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let mut m = t.get(&p("many")).unwrap().clone();
        m.xattrs.insert(b"system.posix_acl_access".to_vec(), acl);
        t.insert(p("many"), m).unwrap();
        for i in 0..300 {
            t.insert(p(&format!("many/f{i:03}")), Entry::file(0o644, Content::bytes(vec![i as u8; i * 37]))).unwrap();
        }
        let params = Ext4Params { uuid: [1; 16], hash_seed: [2; 16], label: None, epoch: 1_700_000_000 };
        let size = ext4::required_size(&t, &params).unwrap();
        let mut sink = imgbuild::blockio::region::VecSink::default();
        ext4::write(&t, size, &params, &mut sink, &Progress::quiet()).unwrap();
        let mut img = sink.buf;
        img.resize(size as usize, 0);
        img
    })
}

fuzz_target!(|data: &[u8]| {
    let img: Vec<u8> = match data.first() {
        Some(0xFF) => data[1..].to_vec(),
        _ => {
            // Patches: (le32 offset into the metadata-dense first 2 MiB, byte) pairs.
            let mut img = sample().to_vec();
            for c in data.chunks_exact(5) {
                let at = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize % (2 << 20);
                img[at] = c[4];
            }
            img
        }
    };
    let len = img.len() as u64;
    let src: Arc<[u8]> = Arc::from(img);
    let Ok(fs) = Ext4::open(src, len) else { return };
    let Ok((tree, _)) = read_tree(&Arc::new(fs)) else { return };
    for (_, e) in tree.iter() {
        // The first MiB of each file: enough to reach every run, bounded time per input.
        if let Kind::File(c) = &e.kind
            && let Ok(r) = c.open()
        {
            let mut sink = Vec::new();
            let _ = r.take(1 << 20).read_to_end(&mut sink);
        }
    }
});
