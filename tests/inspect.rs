//! `imgbuild inspect`: reads images we built (checked against what sfdisk and blkid say in
//! tests/disk_image.rs), checks them against their manifest, refuses foreign input cleanly.

mod support;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use imgbuild::disk::contents::{Ext4Content, FatContent};
use imgbuild::disk::layout::{Layout, PartType, Partition, Size};
use imgbuild::disk::outputs::{Formats, OutputRequest, build_outputs};
use imgbuild::disk::xz::XzSettings;
use imgbuild::ids::ImageSeed;
use imgbuild::output::OutputDir;
use imgbuild::progress::Progress;
use imgbuild::tree::{Content, Entry, Tree, TreePath};
use support::{imgbuild, run};

const MARK: &[u8] = b"inspect-me: a line only this file holds\n";

fn tree(files: &[(&str, &[u8])]) -> Arc<Tree> {
    let mut t = Tree::new();
    for (path, data) in files {
        t.insert_with_parents(
            TreePath::new(path).unwrap(),
            Entry::file(0o640, Content::bytes(data.to_vec())).owned(0, 4),
            &Entry::dir(0o755),
        )
        .unwrap();
    }
    Arc::new(t)
}

/// Builds a GPT image (ESP + ext4 root) into `dir`; returns the raw image path.
fn build(dir: &Path) -> std::path::PathBuf {
    let layout = Layout::gpt(vec![
        Partition {
            label: "esp".into(),
            ptype: PartType::Esp,
            size: Size::Auto,
            offset: None,
            content: Box::new(FatContent {
                tree: tree(&[("EFI/BOOT/BOOTAA64.EFI", b"x")]),
                label: "ESP".into(),
            }),
        },
        Partition {
            label: "root".into(),
            ptype: PartType::RootArm64,
            size: Size::Auto,
            offset: None,
            content: Box::new(Ext4Content {
                tree: tree(&[("etc/motd", MARK), ("etc/hostname", b"n1\n")]),
                label: Some("root".into()),
            }),
        },
    ]);
    let out = OutputDir::prepare(dir).unwrap();
    let profile = serde_json::json!({"name": "t"});
    let req = OutputRequest {
        name: "node",
        formats: Formats {
            raw: true,
            xz: true,
            zst: false,
            bmap: false,
            qcow2: false,
        },
        xz: XzSettings {
            preset: 0,
            block_size: 1 << 20,
            threads: 2,
        },
        blocks: None,
        epoch: 1_700_000_000,
        profile: &profile,
        inputs: &[],
    };
    build_outputs(
        &out,
        &layout,
        &ImageSeed::new([5; 32]),
        &req,
        &Progress::quiet(),
    )
    .unwrap();
    dir.join("node.img")
}

/// The image's bytes with one byte of `/etc/motd`'s content flipped.
fn with_motd_changed(img: &Path) -> Vec<u8> {
    let mut bytes = fs::read(img).unwrap();
    let at = bytes
        .windows(MARK.len())
        .position(|w| w == MARK)
        .expect("file content in the image");
    bytes[at] ^= 0x20;
    bytes
}

#[test]
fn shows_partitions_and_matches_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let img = build(&dir.path().join("out"));
    let (code, out, err) = run(imgbuild().arg("inspect").arg(&img));
    assert_eq!(code, 0, "{out}{err}");
    let seed = ImageSeed::new([5; 32]);
    assert!(out.contains(&seed.disk_guid().to_string()), "{out}");
    assert!(
        out.contains("root-arm64") && out.contains("vfat (FAT32)"),
        "{out}"
    );
    assert!(out.contains("matches"), "{out}");

    let (code, out, err) = run(imgbuild().args(["inspect", "--json"]).arg(&img));
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["manifest"]["matches"], true);
    assert_eq!(j["manifest"]["check"]["files_checked"], 2);
    let parts = j["disk"]["partitions"].as_array().unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(img.with_file_name("manifest.json")).unwrap()).unwrap();
    for (p, mp) in parts.iter().zip(m["partitions"].as_array().unwrap()) {
        assert_eq!(p["partuuid"], mp["partuuid"]);
        assert_eq!(p["offset"], mp["offset"]);
        assert_eq!(p["fs"]["uuid"], mp["fs"]["uuid"]);
        assert_eq!(p["fs"]["label"], mp["fs"]["label"]);
    }
}

/// The shipped `.img.xz` is inspected as the `.img` it decompresses to, and checked against the
/// manifest beside it.
#[test]
fn an_img_xz_is_inspected_as_its_raw_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = build(&dir.path().join("out"));
    let xz = img.with_extension("img.xz");
    let (code, raw, err) = run(imgbuild().args(["inspect", "--json"]).arg(&img));
    assert_eq!(code, 0, "{err}");
    let (code, packed, err) = run(imgbuild().args(["inspect", "--json"]).arg(&xz));
    assert_eq!(code, 0, "{err}");
    let mut raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut packed: serde_json::Value = serde_json::from_str(&packed).unwrap();
    assert_eq!(packed["manifest"]["matches"], true, "{packed:#}");
    assert_eq!(packed["manifest"]["check"]["files_checked"], 2);
    // Everything but the file name agrees.
    raw["image"] = serde_json::Value::Null;
    packed["image"] = serde_json::Value::Null;
    assert_eq!(raw, packed);
    // A changed .img.xz (here: another image's) fails the check with exit 1.
    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let bytes = with_motd_changed(&img);
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    std::io::Write::write_all(&mut e, &bytes).unwrap();
    fs::write(other.join("node.img.xz"), e.finish().unwrap()).unwrap();
    fs::copy(
        img.with_file_name("manifest.json"),
        other.join("manifest.json"),
    )
    .unwrap();
    let (code, out, err) = run(imgbuild().arg("inspect").arg(other.join("node.img.xz")));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("partition 2: /etc/motd"), "{out}");
}

#[test]
fn a_changed_file_is_named_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let img = build(&dir.path().join("out"));
    let bytes = with_motd_changed(&img);
    fs::write(&img, &bytes).unwrap();
    let (code, out, err) = run(imgbuild().arg("inspect").arg(&img));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("partition 2: /etc/motd"), "{out}");
    assert!(out.contains("SHA-256"), "{out}");
    assert!(!out.contains("/etc/hostname"), "{out}");
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let img = build(&dir.path().join("out"));
    let bytes = fs::read(&img).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "notes.img",
            b"just some text\n".repeat(100),
            "not a disk image",
        ),
        ("cut.img", bytes[..bytes.len() / 2].to_vec(), "truncated"),
        ("empty.img", vec![], "not a disk image"),
    ];
    for (name, data, want) in cases {
        let p = dir.path().join(name);
        fs::write(&p, data).unwrap();
        let (code, out, err) = run(imgbuild().arg("inspect").arg(&p));
        assert_eq!(code, 2, "{name}: {out}{err}");
        assert!(err.contains(want), "{name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A damaged .xz: named, with the tool to check it, and nothing printed as if it were fine.
    let mut xz = fs::read(img.with_extension("img.xz")).unwrap();
    let mid = xz.len() / 2;
    xz[mid] ^= 0xff;
    let bad = dir.path().join("bad.img.xz");
    fs::write(&bad, &xz).unwrap();
    let (code, out, err) = run(imgbuild().arg("inspect").arg(&bad));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("bad.img.xz") && err.contains("xz -t"), "{err}");
    assert!(out.is_empty(), "{out}");
    let (code, _, err) = run(imgbuild()
        .arg("inspect")
        .arg(dir.path().join("missing.img")));
    assert_eq!(code, 2);
    assert!(err.contains("missing.img"), "{err}");
}
