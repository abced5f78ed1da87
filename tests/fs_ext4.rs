//! The ext4 writer judged by tools nobody here wrote: `e2fsck -fn`, `debugfs` (rdump, stat,
//! ea_list, htree) and the `ext4-view` crate, which walks every image and compares it with the
//! tree it was made from.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use ext4_view::Ext4;
use imgbuild::blockio::region::SeekSink;
use imgbuild::fs::ext4::{self, Ext4Params};
use imgbuild::progress::Progress;
use imgbuild::tree::{Content, Entry, Kind, Tree, TreePath};
use proptest::prelude::*;

const EPOCH: i64 = 1_700_000_000;
/// `security.capability` v2 for cap_net_raw+ep.
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn params() -> Ext4Params {
    Ext4Params {
        uuid: *b"0123456789abcdef",
        hash_seed: *b"fedcba9876543210",
        label: Some("fs-test".into()),
        epoch: EPOCH,
    }
}

fn p(s: impl AsRef<[u8]>) -> TreePath {
    TreePath::new(s).unwrap()
}

/// Writes `tree` into a sparse file in `dir`, sized `auto` unless given.
fn build(tree: &Tree, dir: &Path, size: Option<u64>) -> PathBuf {
    let size =
        size.unwrap_or_else(|| ext4::auto_size(ext4::required_size(tree, &params()).unwrap()));
    let path = dir.join("fs.img");
    let mut f = File::create(&path).unwrap();
    f.set_len(size).unwrap();
    let mut sink = SeekSink::new(&mut f);
    ext4::write(tree, size, &params(), &mut sink, &Progress::quiet()).unwrap();
    path
}

fn e2fsck_clean(img: &Path) {
    let (code, out, err) = support::run(
        Command::new(support::find_tool("e2fsck").unwrap())
            .arg("-fn")
            .arg(img),
    );
    assert_eq!(code, 0, "e2fsck -fn failed:\n{out}\n{err}");
}

fn debugfs(img: &Path, request: &str) -> String {
    let (code, out, err) = support::run(
        Command::new(support::find_tool("debugfs").unwrap())
            .arg("-R")
            .arg(request)
            .arg(img),
    );
    assert_eq!(code, 0, "debugfs -R {request:?}: {err}");
    out
}

/// Walks the image with ext4-view and compares every entry with the tree (and the tree with the
/// image: nothing missing, nothing extra besides lost+found).
fn compare_with_ext4_view(tree: &Tree, img: &Path) {
    let fs = Ext4::load_from_path(img).unwrap();
    for (path, e) in tree.iter() {
        let ipath = format!("/{}", String::from_utf8(path.as_bytes().to_vec()).unwrap());
        let md = fs
            .symlink_metadata(ipath.as_str())
            .unwrap_or_else(|err| panic!("{ipath}: {err}"));
        let inode_entry = match &e.kind {
            Kind::Hardlink(t) => tree.get(t).unwrap(),
            _ => e,
        };
        if !path.is_root() {
            assert_eq!(md.mode(), inode_entry.mode as u16, "{ipath} mode");
            assert_eq!(
                (md.uid(), md.gid()),
                (inode_entry.uid, inode_entry.gid),
                "{ipath} owner"
            );
            assert_eq!(
                md.modified().seconds(),
                inode_entry.mtime.min(EPOCH),
                "{ipath} mtime"
            );
        }
        let ft = md.file_type();
        match &inode_entry.kind {
            Kind::Dir => {
                assert!(ft.is_dir(), "{ipath}");
                let mut names: Vec<Vec<u8>> = fs
                    .read_dir(ipath.as_str())
                    .unwrap()
                    .map(|d| d.unwrap().file_name().as_ref().to_vec())
                    .filter(|n| n != b"." && n != b".." && !(path.is_root() && n == b"lost+found"))
                    .collect();
                names.sort();
                let want: Vec<Vec<u8>> = tree
                    .children(path)
                    .map(|(c, _)| c.file_name().to_vec())
                    .collect();
                assert_eq!(names, want, "{ipath} children");
            }
            Kind::File(c) => {
                assert!(ft.is_regular_file(), "{ipath}");
                assert_eq!(md.len(), c.len, "{ipath} size");
                if c.len <= 1 << 20 {
                    assert_eq!(
                        fs.read(ipath.as_str()).unwrap(),
                        c.read_all().unwrap(),
                        "{ipath} content"
                    );
                }
            }
            Kind::Symlink(t) => {
                assert!(ft.is_symlink(), "{ipath}");
                assert_eq!(
                    fs.read_link(ipath.as_str()).unwrap().as_ref(),
                    &t[..],
                    "{ipath} target"
                );
            }
            Kind::CharDevice { .. } => assert!(ft.is_char_dev(), "{ipath}"),
            Kind::BlockDevice { .. } => assert!(ft.is_block_dev(), "{ipath}"),
            Kind::Fifo => assert!(ft.is_fifo(), "{ipath}"),
            Kind::Socket => assert!(ft.is_socket(), "{ipath}"),
            Kind::Hardlink(_) => unreachable!(),
        }
    }
}

#[derive(Debug, Clone)]
enum Gen {
    Dir,
    File(usize),
    Sparse(u64, u64),
    Symlink(usize),
    Hardlink(usize),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    Socket,
}

fn name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._-]{1,24}",
        "[a-zé€😀 ]{1,12}",
        Just("x".repeat(255)),
        Just(format!("{}é", "y".repeat(253))),
    ]
    .prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn gen_strategy() -> impl Strategy<Value = Gen> {
    prop_oneof![
        3 => Just(Gen::Dir),
        4 => prop_oneof![Just(0usize), Just(1), Just(4095), Just(4096), Just(4097), 0usize..70_000].prop_map(Gen::File),
        1 => (0u64..8, 1u64..4).prop_map(|(a, b)| Gen::Sparse(a, b)),
        2 => prop_oneof![1usize..60, 60usize..300].prop_map(Gen::Symlink),
        1 => any::<usize>().prop_map(Gen::Hardlink),
        1 => (0u32..4096, 0u32..1_048_576).prop_map(|(a, b)| Gen::Char(a, b)),
        1 => (0u32..300, 0u32..300).prop_map(|(a, b)| Gen::Block(a, b)),
        1 => Just(Gen::Fifo),
        1 => Just(Gen::Socket),
    ]
}

/// Builds a tree from generated entries; each goes into a previously made directory.
fn make_tree(items: &[(usize, String, Gen, u32, u32, i64, bool)], scratch: &Path) -> Tree {
    let mut t = Tree::new();
    let mut dirs = vec![TreePath::root()];
    let mut files: Vec<TreePath> = Vec::new();
    for (n, (parent, name, g, mode, uid, mtime, caps)) in items.iter().enumerate() {
        let parent = &dirs[parent % dirs.len()];
        let path = parent.join(name.as_bytes()).unwrap();
        if t.get(&path).is_some() {
            continue;
        }
        let kind = match g {
            Gen::Dir => Kind::Dir,
            Gen::File(len) => Kind::File(Content::bytes(
                (0..*len).map(|i| (i * 7 + n) as u8).collect::<Vec<u8>>(),
            )),
            Gen::Sparse(hole_mib, data_blocks) => {
                // A host file with a hole before and after its data, as the writer probes them.
                let host = scratch.join(format!("sparse-{n}"));
                let mut f = File::create(&host).unwrap();
                f.seek(SeekFrom::Start(hole_mib << 20)).unwrap();
                f.write_all(&vec![0xA5; (*data_blocks * 4096) as usize])
                    .unwrap();
                let len = (hole_mib << 20) + data_blocks * 4096 + (1 << 20) + 123;
                f.set_len(len).unwrap();
                Kind::File(Content::host_file(host, 0, len))
            }
            Gen::Symlink(len) => Kind::Symlink("t/".repeat(len / 2 + 1).into_bytes()),
            Gen::Hardlink(i) if !files.is_empty() => Kind::Hardlink(files[i % files.len()].clone()),
            Gen::Hardlink(_) => Kind::Fifo,
            Gen::Char(a, b) => Kind::CharDevice {
                major: *a,
                minor: *b,
            },
            Gen::Block(a, b) => Kind::BlockDevice {
                major: *a,
                minor: *b,
            },
            Gen::Fifo => Kind::Fifo,
            Gen::Socket => Kind::Socket,
        };
        let is_dir = matches!(kind, Kind::Dir);
        let is_file = matches!(kind, Kind::File(_));
        let mut e = Entry::new(kind, *mode).owned(*uid, uid / 2).at(*mtime);
        if *caps && is_file {
            e.xattrs
                .insert(b"security.capability".to_vec(), CAP_NET_RAW.to_vec());
            e.xattrs
                .insert(b"user.note".to_vec(), name.as_bytes().to_vec());
        }
        t.insert(path.clone(), e).unwrap();
        if is_dir {
            dirs.push(path);
        } else if is_file {
            files.push(path);
        }
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_read_back_exactly(items in prop::collection::vec(
        (any::<usize>(), name_strategy(), gen_strategy(), 0u32..0o10000, prop_oneof![Just(0u32), 1u32..70_000], prop_oneof![Just(0i64), 1_000_000_000i64..2_000_000_000], any::<bool>()),
        1..60,
    )) {
        if !support::require_tool("e2fsck") {
            return Ok(());
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = make_tree(&items, dir.path());
        let img = build(&tree, dir.path(), None);
        e2fsck_clean(&img);
        compare_with_ext4_view(&tree, &img);
        // xattrs and device numbers are not in ext4-view's API: ask debugfs.
        for (path, e) in tree.iter() {
            let ipath = path.display();
            if let Some(cap) = e.xattrs.get(&b"security.capability"[..]) {
                let out = debugfs(&img, &format!("ea_get \"{ipath}\" security.capability"));
                let hex: String = cap.iter().map(|b| format!("{b:02x} ")).collect();
                prop_assert!(out.contains(hex.trim_end()), "{ipath}: {out}");
            }
            if let Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } = e.kind {
                let out = debugfs(&img, &format!("stat \"{ipath}\""));
                prop_assert!(out.contains(&format!("Device major/minor number: {major:02}:{minor:02}")), "{ipath}: {out}");
            }
        }
    }
}

fn fixture_tree(scratch: &Path) -> Tree {
    let mut t = Tree::new();
    let d = Entry::dir(0o755);
    for (path, len) in [
        ("empty", 0usize),
        ("one", 1),
        ("a/b/4095", 4095),
        ("a/b/4096", 4096),
        ("a/4097", 4097),
        ("big", 3 << 20),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        t.insert_with_parents(p(path), Entry::file(0o644, Content::bytes(data)), &d)
            .unwrap();
    }
    let host = scratch.join("host-file");
    std::fs::write(&host, b"from the host\n").unwrap();
    t.insert(
        p("hostfile"),
        Entry::file(0o600, Content::host_file(&host, 5, 9)).owned(1000, 1000),
    )
    .unwrap();
    t.insert(p("link-fast"), Entry::symlink("a/b/4096"))
        .unwrap();
    t.insert(
        p("link-slow"),
        Entry::symlink(format!("{}/4096", "./a/b/../b".repeat(10))),
    )
    .unwrap();
    t.insert(p("a/hard"), Entry::new(Kind::Hardlink(p("big")), 0))
        .unwrap();
    t.insert(
        p("n".repeat(255)),
        Entry::file(0o644, Content::bytes("255")),
    )
    .unwrap();
    t
}

/// `debugfs rdump` extracts every file; contents must match byte for byte.
#[test]
fn debugfs_rdump_matches_the_tree() {
    if !support::require_tool("debugfs") || !support::require_tool("e2fsck") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = fixture_tree(dir.path());
    let img = build(&tree, dir.path(), None);
    e2fsck_clean(&img);
    let out = dir.path().join("rdump");
    std::fs::create_dir(&out).unwrap();
    debugfs(&img, &format!("rdump / {}", out.display()));
    let mut seen = 0;
    for (path, e) in tree.iter() {
        let host = out.join(String::from_utf8(path.as_bytes().to_vec()).unwrap());
        match &e.kind {
            Kind::File(c) => {
                assert_eq!(
                    std::fs::read(&host).unwrap(),
                    c.read_all().unwrap(),
                    "{path}"
                );
                seen += 1;
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
            Kind::Symlink(t) => {
                assert_eq!(
                    std::fs::read_link(&host)
                        .unwrap()
                        .as_os_str()
                        .as_encoded_bytes(),
                    &t[..],
                    "{path}"
                );
            }
            _ => {}
        }
    }
    assert_eq!(seen, 8);
    compare_with_ext4_view(&tree, &img);
}

/// 50,000 names in one directory: indexed (htree), e2fsck-clean, all found.
#[test]
fn fifty_thousand_entry_directory() {
    if !support::require_tool("e2fsck") || !support::require_tool("debugfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::new();
    t.insert(p("d"), Entry::dir(0o755)).unwrap();
    for i in 0..50_000 {
        t.insert(
            p(format!("d/entry-{i:05}-{}", "z".repeat(i % 40))),
            Entry::file(0o644, Content::bytes(Vec::new())),
        )
        .unwrap();
    }
    let img = build(&t, dir.path(), None);
    e2fsck_clean(&img);
    let htree = debugfs(&img, "htree /d");
    assert!(
        !htree.contains("Not a hash-indexed directory"),
        "{}",
        &htree[..htree.len().min(500)]
    );
    let fs = Ext4::load_from_path(&img).unwrap();
    assert_eq!(fs.read_dir("/d").unwrap().count(), 50_002);
    assert!(
        fs.exists(format!("/d/entry-49999-{}", "z".repeat(49_999 % 40)).as_str())
            .unwrap()
    );
}

/// A multi-GiB file with holes: the image stays small (holes are not allocated, not written)
/// and the data lands where it belongs.
#[test]
fn multi_gib_sparse_file() {
    if !support::require_tool("e2fsck") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("disk.raw");
    let len: u64 = 5 << 30;
    {
        let mut f = File::create(&host).unwrap();
        f.set_len(len).unwrap();
        for at in [0u64, 2 << 30, (4 << 30) + 12345] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(b"data here").unwrap();
        }
    }
    let mut t = Tree::new();
    t.insert(
        p("disk.raw"),
        Entry::file(0o644, Content::host_file(&host, 0, len)),
    )
    .unwrap();
    let need = ext4::required_size(&t, &params()).unwrap();
    assert!(
        need < 64 << 20,
        "holes must not count towards the size: {need}"
    );
    let img = build(&t, dir.path(), Some(6 << 30));
    e2fsck_clean(&img);
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&img).unwrap().blocks() * 512;
    assert!(allocated < 256 << 20, "image allocates {allocated} bytes");
    let fs = Ext4::load_from_path(&img).unwrap();
    assert_eq!(fs.metadata("/disk.raw").unwrap().len(), len);
    let mut f = fs.open("/disk.raw").unwrap();
    for at in [0u64, 2 << 30, (4 << 30) + 12345, 3 << 30] {
        let mut buf = [0u8; 9];
        f.seek(SeekFrom::Start(at)).unwrap();
        std::io::Read::read_exact(&mut f, &mut buf).unwrap();
        let want: &[u8] = if at == 3 << 30 { &[0; 9] } else { b"data here" };
        assert_eq!(&buf, want, "at {at}");
    }
}

/// The writer's records list every entry once, with the content's SHA-256.
#[test]
fn records_hash_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let tree = fixture_tree(dir.path());
    let size = ext4::auto_size(ext4::required_size(&tree, &params()).unwrap());
    let mut sink = imgbuild::blockio::region::VecSink::default();
    let recs = ext4::write(&tree, size, &params(), &mut sink, &Progress::quiet()).unwrap();
    assert_eq!(recs.len(), tree.len());
    let by: BTreeMap<_, _> = recs.iter().map(|r| (r.path.clone(), r)).collect();
    use sha2::Digest;
    let big = by["/big"];
    let Kind::File(c) = &tree.get(&p("big")).unwrap().kind else {
        panic!()
    };
    assert_eq!(
        big.sha256.as_deref(),
        Some(hex::encode(sha2::Sha256::digest(c.read_all().unwrap())).as_str())
    );
    assert_eq!(by["/a/hard"].sha256, big.sha256);
    assert_eq!(by["/hostfile"].uid, 1000);
    assert_eq!(by["/link-fast"].target.as_deref(), Some("a/b/4096"));
}

/// Every base image read from an ext4 has a `/lost+found`; the writer makes its own. Writing both
/// gave a root directory with two `lost+found` entries that e2fsck rejects.
#[test]
fn a_trees_lost_and_found_does_not_duplicate_the_writers() {
    if !support::require_tool("e2fsck") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::new();
    t.insert(p("/lost+found"), Entry::dir(0o700)).unwrap();
    t.insert(
        p("/lost+found/#1234"),
        Entry::file(0o644, Content::bytes("debris")),
    )
    .unwrap();
    t.insert(p("/etc"), Entry::dir(0o755)).unwrap();
    let img = build(&t, dir.path(), None);
    e2fsck_clean(&img);
    let listing = debugfs(&img, "ls -l /");
    assert_eq!(listing.matches("lost+found").count(), 1, "{listing}");
    assert!(!debugfs(&img, "ls -l /lost+found").contains("#1234"));
}
