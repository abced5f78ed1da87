//! The FAT32 writer judged by dosfstools (`fsck.fat -n -V`) and mtools (`mdir`, `mcopy`), which
//! read every name, time and byte back.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use imgbuild::blockio::region::SeekSink;
use imgbuild::fs::fat::{self, FatParams};
use imgbuild::progress::Progress;
use imgbuild::tree::{Content, Entry, Kind, Tree, TreePath};
use proptest::prelude::*;

/// 2023-11-14T22:13:20Z
const EPOCH: i64 = 1_700_000_000;

fn params() -> FatParams {
    FatParams {
        volume_id: 0x1A2B_3C4D,
        label: "boot".into(),
        epoch: EPOCH,
    }
}

fn p(s: impl AsRef<[u8]>) -> TreePath {
    TreePath::new(s).unwrap()
}

fn build(tree: &Tree, dir: &Path, params: &FatParams) -> PathBuf {
    let size = fat::auto_size(fat::required_size(tree, params).unwrap());
    let path = dir.join("boot.img");
    let mut f = File::create(&path).unwrap();
    f.set_len(size).unwrap();
    let mut sink = SeekSink::new(&mut f);
    fat::write(tree, size, params, &mut sink, &Progress::quiet()).unwrap();
    path
}

fn tools() -> bool {
    support::require_tool("fsck.fat")
        && support::require_tool("mcopy")
        && support::require_tool("mdir")
}

fn mtools(tool: &str) -> Command {
    let mut c = Command::new(support::find_tool(tool).unwrap());
    // mtools prints times as stored; a zone must not matter.
    c.env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "America/New_York");
    c
}

/// fsck.fat finds nothing to fix and reports FAT32 (32-bit FAT entries).
fn fsck_clean(img: &Path) {
    let (code, out, err) = support::run(
        Command::new(support::find_tool("fsck.fat").unwrap())
            .args(["-n", "-V", "-v"])
            .arg(img),
    );
    assert_eq!(code, 0, "fsck.fat -n -V:\n{out}\n{err}");
    assert!(out.contains("32 bit entries"), "not FAT32:\n{out}");
    for bad in [
        "Expected",
        "differ",
        "Free cluster summary wrong",
        "Dirty bit",
        "will be truncated",
    ] {
        assert!(
            !out.contains(bad) && !err.contains(bad),
            "fsck.fat complained ({bad}):\n{out}\n{err}"
        );
    }
}

/// Copies everything out with mcopy and compares it with the tree, byte for byte.
fn mcopy_matches(tree: &Tree, img: &Path, dir: &Path) {
    let out = dir.join("mcopy-out");
    std::fs::create_dir(&out).unwrap();
    let (code, _, err) = support::run(
        mtools("mcopy")
            .args(["-s", "-n", "-i"])
            .arg(img)
            .arg("::/")
            .arg(&out),
    );
    assert_eq!(code, 0, "mcopy: {err}");
    let mut expected = 0;
    for (path, e) in tree.iter() {
        let host = out.join(String::from_utf8(path.as_bytes().to_vec()).unwrap());
        match &e.kind {
            Kind::Dir => assert!(host.is_dir(), "{path} missing"),
            Kind::File(c) => {
                assert_eq!(
                    std::fs::read(&host).unwrap_or_else(|e| panic!("{path}: {e}")),
                    c.read_all().unwrap(),
                    "{path}"
                );
            }
            Kind::Hardlink(t) => {
                let Kind::File(c) = &tree.get(t).unwrap().kind else {
                    panic!()
                };
                assert_eq!(
                    std::fs::read(&host).unwrap(),
                    c.read_all().unwrap(),
                    "{path}"
                );
            }
            _ => unreachable!(),
        }
        expected += 1;
    }
    let copied = walk_count(&out);
    assert_eq!(
        copied + 1,
        expected,
        "mcopy found a different number of entries"
    );
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            1 + if e.file_type().unwrap().is_dir() {
                walk_count(&e.path())
            } else {
                0
            }
        })
        .sum()
}

fn fixture() -> Tree {
    let mut t = Tree::new();
    let d = Entry::dir(0o755);
    let files: &[(&str, usize)] = &[
        ("config.txt", 120),
        ("CMDLINE.TXT", 1),
        ("empty", 0),
        ("start4.elf", 2_300_000),
        ("overlays/vc4-kms-v3d-pi4.dtbo", 511),
        ("overlays/vc4-kms-v3d-pi5.dtbo", 512),
        ("overlays/README", 513),
        ("EFI/BOOT/BOOTAA64.EFI", 4097),
        ("Ünïcödé names/ça marche.txt", 5),
        (".hidden", 3),
        ("many.dots.in.name.tar.gz", 7),
        ("spaces in name", 9),
    ];
    for (path, len) in files {
        let Ok(tp) = TreePath::new(path) else {
            continue;
        };
        let data: Vec<u8> = (0..*len).map(|i| (i % 253) as u8).collect();
        t.insert_with_parents(tp, Entry::file(0o644, Content::bytes(data)), &d)
            .unwrap();
    }
    for i in 0..300 {
        t.insert_with_parents(
            p(format!("many/file-with-a-long-name-{i:03}.dat")),
            Entry::file(0o644, Content::bytes(vec![i as u8; i])),
            &d,
        )
        .unwrap();
    }
    t.insert(
        p("many/alias"),
        Entry::new(Kind::Hardlink(p("config.txt")), 0),
    )
    .unwrap();
    t
}

#[test]
fn fsck_and_mtools_read_back_everything() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = fixture();
    let img = build(&tree, dir.path(), &params());
    fsck_clean(&img);
    mcopy_matches(&tree, &img, dir.path());
    let (code, out, err) = support::run(mtools("mdir").arg("-i").arg(&img).arg("::/"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Volume in drive : is BOOT"), "{out}");
    assert!(out.contains("Volume Serial Number is 1A2B-3C4D"), "{out}");
    // The epoch in UTC fields, whatever TZ says.
    assert!(out.contains("2023-11-14  22:13"), "{out}");
    assert!(out.contains("start4.elf"), "{out}");
}

#[test]
fn bytes_depend_on_the_epoch_only() {
    let dir = tempfile::tempdir().unwrap();
    let tree = fixture();
    let a = std::fs::read(build(&tree, dir.path(), &params())).unwrap();
    let b = std::fs::read(build(&tree, dir.path(), &params())).unwrap();
    assert!(a == b, "two writes differ");
    let mut later = params();
    later.epoch += 3600;
    let c = std::fs::read(build(&tree, dir.path(), &later)).unwrap();
    assert!(a != c, "the epoch must reach the bytes");
}

#[test]
fn too_small_says_how_much_is_needed() {
    let mut t = Tree::new();
    t.insert(
        p("big"),
        Entry::file(0o644, Content::bytes(vec![1u8; 40 << 20])),
    )
    .unwrap();
    let need = fat::required_size(&t, &params()).unwrap();
    let err = fat::write(
        &t,
        34 << 20,
        &params(),
        &mut imgbuild::blockio::region::VecSink::default(),
        &Progress::quiet(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!("at least {need} bytes")),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_survive_fsck_and_mcopy(items in prop::collection::vec(
        (any::<usize>(), "[a-zA-Z0-9éü _-]{1,20}(\\.[a-z]{1,5})?", any::<bool>(), prop_oneof![Just(0usize), Just(1), Just(512), Just(4097), 0usize..20_000]),
        1..80,
    )) {
        if !tools() {
            return Ok(());
        }
        let mut t = Tree::new();
        let mut dirs = vec![TreePath::root()];
        let mut seen = std::collections::HashSet::new();
        for (n, (parent, name, is_dir, len)) in items.iter().enumerate() {
            let name = name.trim_end_matches([' ', '.']);
            if name.is_empty() { continue; }
            let parent = dirs[parent % dirs.len()].clone();
            let path = parent.join(name).unwrap();
            // FAT names are case-insensitive: skip case-only duplicates (refused by design).
            if !seen.insert(path.display().to_uppercase()) { continue; }
            if *is_dir {
                t.insert(path.clone(), Entry::dir(0o755)).unwrap();
                dirs.push(path);
            } else {
                let data: Vec<u8> = (0..*len).map(|i| (i + n) as u8).collect();
                t.insert(path, Entry::file(0o644, Content::bytes(data))).unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let img = build(&t, dir.path(), &params());
        fsck_clean(&img);
        mcopy_matches(&t, &img, dir.path());
    }
}
