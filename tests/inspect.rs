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
            bmap: false,
            qcow2: false,
        },
        xz: XzSettings {
            preset: 0,
            block_size: 1 << 20,
            threads: 2,
        },
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

#[test]
fn a_changed_file_is_named_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let img = build(&dir.path().join("out"));
    let mut bytes = fs::read(&img).unwrap();
    let at = bytes
        .windows(MARK.len())
        .position(|w| w == MARK)
        .expect("file content in the image");
    bytes[at] ^= 0x20;
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
    let (code, _, err) = run(imgbuild().arg("inspect").arg(img.with_extension("img.xz")));
    assert_eq!(code, 2);
    assert!(err.contains("xz -dk"), "{err}");
    let (code, _, err) = run(imgbuild()
        .arg("inspect")
        .arg(dir.path().join("missing.img")));
    assert_eq!(code, 2);
    assert!(err.contains("missing.img"), "{err}");
}
