//! Disk images judged by tools nobody here wrote: sgdisk, sfdisk, blkid, bmaptool, sha256sum, xz,
//! zstd, bsdcat (libarchive), qemu-img (and fsck.fat / e2fsck on the filesystems inside).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use imgbuild::blockio::region::Sink;
use imgbuild::disk::blocks::BlockStore;
use imgbuild::disk::compare::compare_dirs;
use imgbuild::disk::contents::{Ext4Content, FatContent};
use imgbuild::disk::layout::{
    ContentError, ContentInfo, EmptyContent, Layout, MIB, PartType, Partition, PartitionContent,
    RawContent, Size, WriteParams,
};
use imgbuild::disk::manifest::{InputRecord, Manifest};
use imgbuild::disk::outputs::{
    BuiltOutputs, Compressed, Formats, OutputRequest, build_outputs, scan,
};
use imgbuild::disk::xz::XzSettings;
use imgbuild::disk::zst::ZstSettings;
use imgbuild::fetch::xzblocks::BlockCache;
use imgbuild::fs::FileRecord;
use imgbuild::ids::ImageSeed;
use imgbuild::output::OutputDir;
use imgbuild::progress::Progress;
use support::{ext4_root, find_tool, require_tool, run};

/// Content that writes a few scattered regions (so partitions have holes inside), derived from
/// the epoch and the partition's identifiers so both reach the bytes.
struct Scattered {
    regions: Vec<(u64, usize)>,
}

impl PartitionContent for Scattered {
    fn required_size(&self) -> Result<u64, ContentError> {
        Ok(self
            .regions
            .iter()
            .map(|(o, l)| o + *l as u64)
            .max()
            .unwrap_or(0))
    }

    fn write(
        &self,
        p: &WriteParams,
        sink: &mut dyn Sink,
        _: &Progress,
    ) -> Result<Vec<FileRecord>, ContentError> {
        for (i, (off, len)) in self.regions.iter().enumerate() {
            let mut x = p.epoch ^ u64::from(p.ids.volume_id) ^ (i as u64) << 40;
            let data: Vec<u8> = (0..*len)
                .map(|_| {
                    // xorshift: incompressible enough to exercise xz, deterministic.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            sink.write_at(*off, &data)?;
        }
        Ok(vec![FileRecord {
            path: "/blob".into(),
            kind: "file",
            mode: "0644".into(),
            uid: 0,
            gid: 0,
            size: Some(0),
            sha256: Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()),
            target: None,
            links: None,
            xattrs: Vec::new(),
        }])
    }

    fn describe(&self) -> ContentInfo {
        ContentInfo {
            fs: "raw",
            detail: None,
            label: None,
            label_max: None,
        }
    }
}

/// Fails while writing: an interrupted build.
struct Failing;

impl PartitionContent for Failing {
    fn required_size(&self) -> Result<u64, ContentError> {
        Ok(4096)
    }
    fn write(
        &self,
        _: &WriteParams,
        sink: &mut dyn Sink,
        _: &Progress,
    ) -> Result<Vec<FileRecord>, ContentError> {
        sink.write_at(0, &[1; 4096])?;
        Err("source file vanished".into())
    }
    fn describe(&self) -> ContentInfo {
        ContentInfo {
            fs: "raw",
            detail: None,
            label: None,
            label_max: None,
        }
    }
}

fn scattered() -> Box<dyn PartitionContent> {
    Box::new(Scattered {
        regions: vec![(0, 70_000), (300 << 10, 5000), ((3 << 20) + 17, 100_000)],
    })
}

/// An empty data partition taking the rest of the disk: a hole.
fn data_grow() -> Partition {
    Partition {
        label: "data".into(),
        ptype: PartType::LinuxGeneric,
        size: Size::Grow,
        offset: None,
        content: Box::new(EmptyContent),
    }
}

fn gpt_layout() -> Layout {
    let mut l = Layout::gpt(vec![
        Partition {
            label: "esp".into(),
            ptype: PartType::Esp,
            size: Size::Bytes(8 * MIB),
            offset: None,
            content: scattered(),
        },
        Partition {
            label: "root".into(),
            ptype: PartType::RootX86_64,
            size: Size::Auto,
            offset: None,
            content: scattered(),
        },
        data_grow(),
    ]);
    l.disk_size = Some(40 * MIB);
    l
}

fn mbr_layout() -> Layout {
    Layout::mbr_pi(vec![
        Partition {
            label: "boot".into(),
            ptype: PartType::Fat32,
            size: Size::Bytes(16 * MIB),
            offset: None,
            content: Box::new(RawContent(vec![0xAB; 1000])),
        },
        Partition {
            label: "root".into(),
            ptype: PartType::LinuxGeneric,
            size: Size::Auto,
            offset: None,
            content: scattered(),
        },
    ])
}

fn seed(n: u8) -> ImageSeed {
    ImageSeed::new([n; 32])
}

fn all_formats(qcow2: bool) -> Formats {
    Formats {
        raw: true,
        xz: true,
        zst: true,
        bmap: true,
        qcow2,
    }
}

fn build(
    dir: &Path,
    layout: &Layout,
    seed: &ImageSeed,
    epoch: u64,
    formats: Formats,
    threads: u32,
    blocks: Option<&dyn BlockStore>,
) -> anyhow::Result<BuiltOutputs> {
    let out = OutputDir::prepare(dir)?;
    let profile = serde_json::json!({"name": "test", "k3s": {"token": {"secret": "k3s-token"}}});
    let inputs = vec![InputRecord {
        name: "base".into(),
        url: "http://127.0.0.1/base.img.xz".into(),
        sha256: "00".repeat(32),
    }];
    let req = OutputRequest {
        name: "node",
        formats,
        xz: XzSettings {
            preset: 6,
            block_size: 1 << 20,
            threads,
        },
        blocks,
        epoch,
        profile: &profile,
        inputs: &inputs,
    };
    build_outputs(&out, layout, seed, &req, &Progress::quiet())
}

fn tool(name: &str) -> Command {
    Command::new(find_tool(name).expect("checked with require_tool"))
}

fn sfdisk_json(img: &Path) -> serde_json::Value {
    let (code, out, err) = run(tool("sfdisk").arg("--json").arg(img));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn assert_tables_clean(img: &Path, gpt: bool) {
    if gpt && require_tool("sgdisk") {
        let (code, out, err) = run(tool("sgdisk").arg("-v").arg(img));
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("No problems found"),
            "sgdisk -v:\n{out}\n{err}"
        );
    }
    if require_tool("sfdisk") {
        let (code, out, err) = run(tool("sfdisk").arg("--verify").arg(img));
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("No errors detected"), "{out}");
        assert!(
            !err.contains("mismatch") && !err.contains("ERROR"),
            "sfdisk:\n{out}\n{err}"
        );
    }
}

#[test]
fn gpt_image_is_valid_and_carries_derived_guids() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let built = build(
        &out,
        &gpt_layout(),
        &seed(1),
        1_700_000_000,
        all_formats(false),
        2,
        None,
    )
    .unwrap();
    let img = out.join("node.img");
    assert_eq!(fs::metadata(&img).unwrap().len(), 40 * MIB);
    assert_tables_clean(&img, true);
    if !require_tool("sfdisk") {
        return;
    }
    let j = sfdisk_json(&img);
    let t = &j["partitiontable"];
    assert_eq!(t["label"], "gpt");
    assert_eq!(t["id"], seed(1).disk_guid().to_upper());
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    for (p, r) in parts.iter().zip(&built.report.partitions) {
        assert_eq!(p["uuid"], r.partuuid.to_uppercase());
        assert_eq!(p["name"], r.label);
        assert_eq!(p["start"], r.offset / 512);
        assert_eq!(p["size"], r.size / 512);
        assert_eq!(p["type"], r.type_id.to_uppercase());
        assert_eq!(p["start"].as_u64().unwrap() % 2048, 0, "1 MiB aligned");
    }
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    // The grown partition ends right before the backup table.
    let last = &parts[2];
    assert_eq!(
        last["start"].as_u64().unwrap() + last["size"].as_u64().unwrap(),
        t["lastlba"].as_u64().unwrap() + 1
    );
    if require_tool("blkid") {
        let (code, out, err) = run(tool("blkid").args(["-p", "-o", "export"]).arg(&img));
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("PTTYPE=gpt"), "{out}");
        assert!(
            out.contains(&format!("PTUUID={}", seed(1).disk_guid())),
            "{out}"
        );
    }
}

#[test]
fn mbr_image_for_the_pi_is_valid_with_known_partuuid() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let built = build(
        &out,
        &mbr_layout(),
        &seed(2),
        1,
        all_formats(false),
        1,
        None,
    )
    .unwrap();
    let img = out.join("node.img");
    assert_tables_clean(&img, false);
    let sig = format!("{:08x}", seed(2).mbr_disk_signature());
    assert_eq!(built.report.partuuid("root"), Some(&*format!("{sig}-02")));
    // Known before assembly, for cmdline.txt inside the boot partition.
    let ids = imgbuild::disk::image::partition_ids(&mbr_layout(), &seed(2));
    assert_eq!(ids[1].partuuid, format!("{sig}-02"));
    if !require_tool("sfdisk") {
        return;
    }
    let j = sfdisk_json(&img);
    let t = &j["partitiontable"];
    assert_eq!(t["label"], "dos");
    assert_eq!(t["id"], format!("0x{sig}"));
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts[0]["start"], 8192, "boot partition at 4 MiB");
    assert_eq!(parts[0]["type"], "c");
    assert_eq!(parts[1]["type"], "83");
    if require_tool("blkid") {
        let (_, out, _) = run(tool("blkid").args(["-p", "-o", "export"]).arg(&img));
        assert!(out.contains(&format!("PTUUID={sig}")), "{out}");
        assert!(out.contains("PTTYPE=dos"), "{out}");
    }
}

#[test]
fn outputs_pass_bmaptool_sha256sum_xz_and_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let qcow = find_tool("qemu-img").is_some();
    let built = build(&out, &gpt_layout(), &seed(3), 5, all_formats(qcow), 2, None).unwrap();
    let img = out.join("node.img");
    let raw = fs::read(&img).unwrap();

    // The manifest names the image by hash; secrets stay out.
    let text = fs::read_to_string(out.join("manifest.json")).unwrap();
    let m: Manifest = serde_json::from_str(&text).unwrap();
    assert_eq!(m.image.sha256, built.image_sha256);
    assert_eq!(m.partitions.len(), 3);
    assert_eq!(m.partitions[0].files[0].path, "/blob");
    assert!(text.contains("<redacted>") && !text.contains("k3s-token"));

    // Sparse: the data partition and the gaps are holes on disk.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let allocated = fs::metadata(&img).unwrap().blocks() * 512;
        assert!(allocated < 4 * MIB, "raw image allocates {allocated} bytes");
    }

    if require_tool("sha256sum") {
        let (code, o, e) = run(tool("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(&out));
        assert_eq!(code, 0, "{o}{e}");
        let names: Vec<&str> = o.lines().map(|l| l.split(':').next().unwrap()).collect();
        let mut want = vec![
            "manifest.json",
            "node.img",
            "node.img.bmap",
            "node.img.xz",
            "node.img.zst",
        ];
        if qcow {
            want.push("node.qcow2");
        }
        assert_eq!(names, want);
    }
    if require_tool("xz") {
        let (code, _, e) = run(tool("xz").arg("-t").arg(out.join("node.img.xz")));
        assert_eq!(code, 0, "{e}");
        let o = tool("xz")
            .arg("-dc")
            .arg(out.join("node.img.xz"))
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(o.stdout == raw, "xz -dc does not reproduce the raw image");
        // Compressed block by block, holes from one memoised zero block: still exactly the
        // stream xz's own multithreaded encoder writes for the raw image.
        let o = tool("xz")
            .args(["-T0", "--block-size=1MiB", "-6", "-c"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(
            o.stdout == fs::read(out.join("node.img.xz")).unwrap(),
            "node.img.xz differs from xz -T0 --block-size=1MiB -6 of node.img"
        );
        let (_, list, _) = run(tool("xz")
            .args(["-l", "--robot"])
            .arg(out.join("node.img.xz")));
        let blocks: u64 = list
            .lines()
            .find(|l| l.starts_with("totals"))
            .and_then(|l| l.split('\t').nth(2))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(blocks, 40, "one xz block per MiB of image");
    }
    if require_tool("zstd") {
        let zst = out.join("node.img.zst");
        let (code, _, e) = run(tool("zstd").arg("-t").arg(&zst));
        assert_eq!(code, 0, "zstd -t: {e}");
        let o = tool("zstd").arg("-dc").arg(&zst).output().unwrap();
        assert!(o.status.success());
        assert!(o.stdout == raw, "zstd -dc does not reproduce the raw image");
        // One independent frame per 1 MiB unit, every one with its content size (else zstd
        // cannot total it) and an XXH64 checksum.
        let (code, list, e) = run(tool("zstd").arg("-lv").arg(&zst));
        assert_eq!(code, 0, "zstd -lv: {e}");
        let field = |name: &str| {
            list.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in zstd -lv:\n{list}"))
                .trim()
                .to_string()
        };
        assert_eq!(field("# Zstandard Frames:"), "40");
        assert!(
            field("Decompressed Size:").ends_with(&format!("({} B)", 40 * MIB)),
            "{list}"
        );
        assert_eq!(field("Check:"), "XXH64");
    }
    // libarchive, which Raspberry Pi Imager decompresses with, reads the frames as one stream.
    if require_tool("bsdcat") {
        let o = tool("bsdcat")
            .arg(out.join("node.img.zst"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout == raw, "bsdcat does not reproduce the raw image");
    }
    // The thread count changes no byte of either stream.
    let one = dir.path().join("one-thread");
    build(
        &one,
        &gpt_layout(),
        &seed(3),
        5,
        all_formats(false),
        1,
        None,
    )
    .unwrap();
    for f in ["node.img.xz", "node.img.zst"] {
        assert!(
            fs::read(one.join(f)).unwrap() == fs::read(out.join(f)).unwrap(),
            "{f} differs with 1 thread"
        );
    }
    if require_tool("bmaptool") {
        for src in ["node.img", "node.img.xz", "node.img.zst"] {
            let dest = dir.path().join(format!("copy-of-{src}"));
            // A fresh file: bmaptool writes only the mapped blocks (checking each range's
            // SHA-256), so this proves the map covers every byte that is not zero.
            let (code, o, e) = run(tool("bmaptool")
                .arg("copy")
                .arg("--bmap")
                .arg(out.join("node.img.bmap"))
                .arg(out.join(src))
                .arg(&dest));
            assert_eq!(code, 0, "bmaptool copy {src}: {o}{e}");
            assert!(
                fs::read(&dest).unwrap() == raw,
                "bmaptool copy of {src} differs"
            );
        }
    }
    if qcow {
        let q = out.join("node.qcow2");
        let (code, o, e) = run(tool("qemu-img").arg("check").arg(&q));
        assert_eq!(code, 0, "{o}{e}");
        let (code, o, e) = run(tool("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(&img)
            .arg(&q));
        assert_eq!(code, 0, "qemu-img compare: {o}{e}");
    } else {
        require_tool("qemu-img");
    }
}

#[test]
fn failed_build_leaves_nothing_that_looks_complete() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let layout = Layout::gpt(vec![Partition {
        label: "root".into(),
        ptype: PartType::LinuxGeneric,
        size: Size::Auto,
        offset: None,
        content: Box::new(Failing),
    }]);
    let err = build(&out, &layout, &seed(1), 0, all_formats(false), 1, None).unwrap_err();
    assert!(
        format!("{err:#}").contains("source file vanished"),
        "{err:#}"
    );
    let left: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![imgbuild::output::MARKER.to_string()]);

    // A layout that does not fit says how much is needed, and writes nothing.
    let layout = Layout::gpt(vec![Partition {
        label: "root".into(),
        ptype: PartType::LinuxGeneric,
        size: Size::Bytes(MIB),
        offset: None,
        content: Box::new(RawContent(vec![1; 3 << 20])),
    }]);
    let err = build(&out, &layout, &seed(1), 0, all_formats(false), 1, None).unwrap_err();
    assert!(format!("{err:#}").contains("3 MiB"), "{err:#}");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1);
}

/// Files and their bytes in an output folder.
fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Runs [`repro_child`] in a separate process with another environment.
fn build_in_child(
    out: &Path,
    cwd: &Path,
    tz: &str,
    lc: &str,
    umask: &str,
    threads: u32,
    epoch: u64,
) {
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask {umask} && exec \"$0\" --exact repro_child --include-ignored --nocapture"
        ))
        .arg(&exe)
        .current_dir(cwd)
        .env("IMGBUILD_TEST_OUT", out)
        .env("IMGBUILD_TEST_THREADS", threads.to_string())
        .env("IMGBUILD_TEST_EPOCH", epoch.to_string())
        .env("TZ", tz)
        .env("LC_ALL", lc)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(out.join("SHA256SUMS").exists(), "child built nothing");
}

/// Builds into `$IMGBUILD_TEST_OUT`; run by [`reproducible_under_other_environments`].
#[test]
#[ignore = "helper: run in a child process by reproducible_under_other_environments"]
fn repro_child() {
    let Some(out) = std::env::var_os("IMGBUILD_TEST_OUT") else {
        return;
    };
    let threads: u32 = std::env::var("IMGBUILD_TEST_THREADS")
        .unwrap()
        .parse()
        .unwrap();
    let epoch: u64 = std::env::var("IMGBUILD_TEST_EPOCH")
        .unwrap()
        .parse()
        .unwrap();
    build(
        &PathBuf::from(out),
        &gpt_layout(),
        &seed(9),
        epoch,
        all_formats(find_tool("qemu-img").is_some()),
        threads,
        None,
    )
    .unwrap();
}

#[test]
fn reproducible_under_other_environments() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let cwd2 = dir.path().join("elsewhere");
    fs::create_dir(&cwd2).unwrap();
    build_in_child(&a, dir.path(), "UTC", "C", "022", 1, 1_700_000_000);
    build_in_child(
        &b,
        &cwd2,
        "Asia/Tokyo",
        "de_DE.UTF-8",
        "077",
        4,
        1_700_000_000,
    );
    let (fa, fb) = (folder_bytes(&a), folder_bytes(&b));
    assert_eq!(
        fa.iter().map(|f| &f.0).collect::<Vec<_>>(),
        fb.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{name} differs between the two builds");
    }
    // Another epoch changes the bytes.
    build_in_child(&c, dir.path(), "UTC", "C", "022", 2, 1_700_000_001);
    let fc = folder_bytes(&c);
    let img = |f: &[(String, Vec<u8>)]| f.iter().find(|x| x.0 == "node.img").unwrap().1.clone();
    assert!(img(&fa) != img(&fc), "the epoch does not reach the image");
    // --verify-repro's comparison: silent on identical builds, names partition and file otherwise.
    assert_eq!(compare_dirs(&a, &b).unwrap(), None);
    let d = compare_dirs(&a, &c).unwrap().expect("builds differ");
    assert_eq!(d.file, "node.img", "{d}");
    assert!(d.detail.contains("in partition 1 (\"esp\")"), "{d}");
    assert!(d.detail.contains("SOURCE_DATE_EPOCH differs"), "{d}");
    // Another seed changes them too.
    let d = dir.path().join("d");
    let built = build(
        &d,
        &gpt_layout(),
        &seed(10),
        1_700_000_000,
        all_formats(false),
        2,
        None,
    )
    .unwrap();
    assert_ne!(built.report.partitions[0].partuuid, {
        let m: Manifest =
            serde_json::from_slice(&fs::read(a.join("manifest.json")).unwrap()).unwrap();
        m.partitions[0].partuuid.clone()
    });
}

fn tree(files: &[(&str, &[u8])]) -> std::sync::Arc<imgbuild::tree::Tree> {
    use imgbuild::tree::{Content, Entry, Tree, TreePath};
    let mut t = Tree::new();
    for (path, data) in files {
        t.insert_with_parents(
            TreePath::new(path).unwrap(),
            Entry::file(0o644, Content::bytes(data.to_vec())),
            &Entry::dir(0o755),
        )
        .unwrap();
    }
    std::sync::Arc::new(t)
}

/// Copies one partition out of an image (what a loop device with an offset would show).
fn extract(img: &[u8], offset: u64, size: u64, to: &Path) {
    fs::write(to, &img[offset as usize..(offset + size) as usize]).unwrap();
}

fn blkid_export(dev: &Path) -> String {
    let (code, out, err) = run(tool("blkid").args(["-p", "-o", "export"]).arg(dev));
    assert_eq!(code, 0, "blkid -p {}: {err}", dev.display());
    out
}

/// ESP (FAT32) + root (ext4) on GPT, and boot (FAT32) + root (ext4) on the Pi's MBR: each
/// filesystem extracted by offset passes fsck.fat / e2fsck, and blkid sees the identifiers the
/// seed derived.
#[test]
fn filesystems_inside_images_pass_fsck_and_carry_derived_ids() {
    for table in ["gpt", "mbr"] {
        let boot = tree(&[
            ("EFI/BOOT/BOOTX64.EFI", b"not really a loader"),
            ("config.txt", b"arm_64bit=1\n"),
        ]);
        let root = tree(&[("etc/hostname", b"node\n"), ("usr/bin/k3s", &[7u8; 70_000])]);
        let parts = vec![
            Partition {
                label: if table == "gpt" { "esp" } else { "boot" }.into(),
                ptype: if table == "gpt" {
                    PartType::Esp
                } else {
                    PartType::Fat32
                },
                size: Size::Auto,
                offset: None,
                content: Box::new(FatContent {
                    tree: boot,
                    label: "BOOT".into(),
                }),
            },
            Partition {
                label: "root".into(),
                ptype: PartType::RootArm64,
                size: Size::Auto,
                offset: None,
                content: Box::new(Ext4Content {
                    tree: root,
                    label: Some("root".into()),
                }),
            },
        ];
        let layout = if table == "gpt" {
            Layout::gpt(parts)
        } else {
            Layout::mbr_pi(parts)
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let built = build(
            &out,
            &layout,
            &seed(4),
            1_700_000_000,
            all_formats(false),
            2,
            None,
        )
        .unwrap();
        let img_path = out.join("node.img");
        assert_tables_clean(&img_path, table == "gpt");
        let img = fs::read(&img_path).unwrap();
        let r = &built.report;
        assert!(
            r.partitions[1]
                .files
                .iter()
                .any(|f| f.path == "/usr/bin/k3s")
        );

        let fat = dir.path().join("boot.part");
        extract(&img, r.partitions[0].offset, r.partitions[0].size, &fat);
        if require_tool("fsck.fat") {
            let (code, o, e) = run(tool("fsck.fat").args(["-n", "-v", "-V"]).arg(&fat));
            assert_eq!(code, 0, "fsck.fat ({table}):\n{o}{e}");
            assert!(o.contains("32 bit entries"), "not FAT32:\n{o}");
        }
        let ext = dir.path().join("root.part");
        extract(&img, r.partitions[1].offset, r.partitions[1].size, &ext);
        if require_tool("e2fsck") {
            let (code, o, e) = run(tool("e2fsck").args(["-fn"]).arg(&ext));
            assert_eq!(code, 0, "e2fsck ({table}):\n{o}{e}");
        }
        if require_tool("blkid") {
            let b = blkid_export(&fat);
            assert!(b.contains("TYPE=vfat"), "{b}");
            assert!(b.contains("LABEL=BOOT"), "{b}");
            let want = r.partitions[0].fs.uuid.as_deref().unwrap();
            assert!(b.contains(&format!("UUID={want}")), "{want} not in {b}");
            let b = blkid_export(&ext);
            assert!(b.contains("TYPE=ext4") && b.contains("LABEL=root"), "{b}");
            let want = r.partitions[1].fs.uuid.as_deref().unwrap();
            assert!(b.contains(&format!("UUID={want}")), "{want} not in {b}");
        }
    }
}

/// Benchmark (not a timed test): assembles an image of `$IMGBUILD_BENCH_ROOT` (ext4 root) and
/// `$IMGBUILD_BENCH_ESP` (FAT32 ESP) into `$IMGBUILD_BENCH_OUT` and prints the time of each
/// step as `bench <step> <seconds>`. `scripts/bench-image` runs it in release mode and times the
/// standard shell pipeline on the same trees.
#[test]
#[ignore = "benchmark: run by scripts/bench-image"]
fn bench_assemble() {
    use imgbuild::disk::image;
    use imgbuild::disk::outputs::write_outputs;
    use imgbuild::source::dir::{DirOptions, read_dir_into};
    use imgbuild::tree::Tree;
    use std::time::Instant;

    let var = |k: &str| std::env::var_os(k).unwrap_or_else(|| panic!("set {k}"));
    let read = |dir: std::ffi::OsString| {
        let mut t = Tree::new();
        read_dir_into(Path::new(&dir), &mut t, &DirOptions::default()).unwrap();
        std::sync::Arc::new(t)
    };
    let (root, esp) = (
        read(var("IMGBUILD_BENCH_ROOT")),
        read(var("IMGBUILD_BENCH_ESP")),
    );
    let block: u64 = std::env::var("IMGBUILD_BENCH_XZ_BLOCK")
        .map(|s| s.parse().unwrap())
        .unwrap_or(imgbuild::disk::xz::DEFAULT_BLOCK_SIZE);
    let layout = Layout::gpt(vec![
        Partition {
            label: "esp".into(),
            ptype: PartType::Esp,
            size: Size::Auto,
            offset: None,
            content: Box::new(FatContent {
                tree: esp,
                label: "ESP".into(),
            }),
        },
        ext4_root(root),
    ]);
    let mut layout = layout;
    // A larger disk than the content needs: the rest is holes (scripts/bench-image DISK_SIZE).
    layout.disk_size = std::env::var("IMGBUILD_BENCH_DISK")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap());
    let out = OutputDir::prepare(PathBuf::from(var("IMGBUILD_BENCH_OUT"))).unwrap();
    let t = Instant::now();
    let plan = layout.plan().unwrap();
    println!("bench plan {:.3}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut raw = out.create("bench.img").unwrap();
    raw.file().set_len(plan.disk_size).unwrap();
    let report = {
        let mut sink = imgbuild::blockio::region::SeekSink::new(&mut *raw.file());
        image::assemble(
            &layout,
            &plan,
            &seed(1),
            1_700_000_000,
            &mut sink,
            &Progress::quiet(),
        )
        .unwrap()
    };
    raw.file().sync_all().unwrap();
    println!("bench assemble {:.3}", t.elapsed().as_secs_f64());
    for p in &report.partitions {
        println!("bench partition {} {} {}", p.label, p.offset, p.size);
    }
    println!("bench disk_size {}", report.size);
    let profile = serde_json::json!({});
    let req = OutputRequest {
        name: "bench",
        formats: Formats {
            raw: true,
            xz: true,
            zst: false,
            bmap: true,
            qcow2: false,
        },
        xz: XzSettings {
            block_size: block,
            ..XzSettings::default()
        },
        blocks: None,
        epoch: 1_700_000_000,
        profile: &profile,
        inputs: &[],
    };
    let t = Instant::now();
    let written = report.written.clone();
    let size = report.size;
    write_outputs(&out, raw, report, &req, &Progress::quiet()).unwrap();
    println!("bench outputs {:.3}", t.elapsed().as_secs_f64());

    // The same pass without compression (reading, SHA-256 of the image and of the bmap ranges),
    // and with only .img.zst.
    let mut img = fs::File::open(out.path().join("bench.img")).unwrap();
    let xz = req.xz;
    for (name, zst) in [("hash_only", false), ("zst", true)] {
        let t = Instant::now();
        let mut f = fs::File::create(out.path().join("bench.img.zst")).unwrap();
        let c = Compressed {
            xz: None,
            zst: zst.then(|| std::io::BufWriter::new(&mut f)),
            xz_settings: &xz,
            zst_settings: ZstSettings::default(),
            blocks: None,
        };
        scan(&mut img, size, &written, c, &Progress::quiet()).unwrap();
        println!("bench {name} {:.3}", t.elapsed().as_secs_f64());
    }
}

/// A GPT image with an ext4 root made from `files` and an empty data partition (holes).
fn ext4_layout(files: &Path) -> Layout {
    use imgbuild::source::dir::{DirOptions, read_dir_into};
    let mut tree = imgbuild::tree::Tree::new();
    read_dir_into(files, &mut tree, &DirOptions::default()).unwrap();
    let mut l = Layout::gpt(vec![ext4_root(std::sync::Arc::new(tree)), data_grow()]);
    l.disk_size = Some(128 * MIB);
    l
}

/// Words with a little noise: compressible like real files, different per `seed`.
fn file_bytes(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "kube", "node ", "imgbuild", " label", "\n", "mesh", "0x7f3a", "token ",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % 8) as usize].as_bytes());
        out.push((x >> 32) as u8);
    }
    out.truncate(len);
    out
}

/// The `.img.xz` and `.img.zst` of the ext4 layout, built with `blocks` (or none) into a fresh
/// folder.
fn compressed_of(files: &Path, scratch: &Path, blocks: Option<&dyn BlockStore>) -> [Vec<u8>; 2] {
    let out = tempfile::tempdir_in(scratch).unwrap();
    let formats = Formats {
        raw: false,
        xz: true,
        zst: true,
        bmap: false,
        qcow2: false,
    };
    let dir = out.path().join("o");
    build(&dir, &ext4_layout(files), &seed(7), 9, formats, 2, blocks).unwrap();
    ["node.img.xz", "node.img.zst"].map(|f| fs::read(dir.join(f)).unwrap())
}

/// (hits, misses, damaged) of the xz blocks and of the zstd frames.
fn counts(c: &BlockCache) -> [(u64, u64, u64); 2] {
    [c.xz.get(), c.zst.get()]
}

#[test]
fn block_cache_rebuilds_equal_cold_builds_after_a_change_a_gc_and_a_bit_flip() {
    let work = tempfile::tempdir().unwrap();
    let (files, cache_dir) = (work.path().join("files"), work.path().join("cache"));
    fs::create_dir_all(files.join("etc")).unwrap();
    for i in 0..24u64 {
        fs::write(files.join(format!("etc/f{i:02}")), file_bytes(i, 150_000)).unwrap();
    }
    let open = || BlockCache::open(&cache_dir).unwrap();
    let build = |c: &BlockCache| compressed_of(&files, work.path(), Some(c));

    // Cold, with an empty cache: the same bytes as without one.
    let cold = compressed_of(&files, work.path(), None);
    let c = open();
    assert!(build(&c) == cold, "cold build with a cache differs");
    let [(xz_hits, compressed, _), zst] = counts(&c);
    assert_eq!(xz_hits, 0);
    assert_eq!(zst, (0, compressed, 0), "one zstd frame per xz block");
    // Warm: nothing compressed.
    let c = open();
    assert!(build(&c) == cold, "warm build differs");
    assert_eq!(
        counts(&c),
        [(compressed, 0, 0); 2],
        "a warm build compressed blocks"
    );

    // One file changed: only the units it touches are compressed; bytes as a cold build's.
    fs::write(files.join("etc/f13"), file_bytes(1013, 150_000)).unwrap();
    let c = open();
    let changed = build(&c);
    assert!(changed[0] != cold[0] && changed[1] != cold[1]);
    assert!(
        changed == compressed_of(&files, work.path(), None),
        "incremental build differs from cold"
    );
    let [(_, touched, _), (_, zst_touched, _)] = counts(&c);
    println!("one 150 kB file changed: {touched} of {compressed} 1 MiB units compressed again");
    assert!(
        (1..=3).contains(&touched),
        "{touched} blocks compressed again"
    );
    assert_eq!(zst_touched, touched);

    // A flipped bit in every cached block and frame: found by its hash (cache verify, then the
    // build), compressed again, the output still right.
    let entries: Vec<PathBuf> = fs::read_dir(cache_dir.join("xz-blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let frames = entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "zst"));
    assert!(frames.count() as u64 >= compressed);
    assert!(entries.len() as u64 >= 2 * compressed);
    for e in &entries {
        let mut b = fs::read(e).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x10;
        fs::write(e, b).unwrap();
    }
    let verify = || {
        run(support::imgbuild()
            .args(["cache", "verify"])
            .env("IMGBUILD_CACHE_DIR", &cache_dir))
    };
    let (code, o, e) = verify();
    assert_eq!(code, 1, "{o}{e}");
    assert!(o.contains("corrupt") && o.contains("xz-blocks"), "{o}");
    assert!(o.contains(".zst"), "damaged zstd frames not reported: {o}");
    let c = open();
    assert!(build(&c) == changed, "build with damaged blocks differs");
    for (hits, _, damaged) in counts(&c) {
        assert_eq!((hits, damaged), (0, compressed), "a damaged block was used");
    }
    // The build replaced the blocks it needed; the old file's blocks stay damaged until
    // `cache verify --repair` removes them.
    let (code, o, e) = verify();
    assert_eq!(code, 1, "{o}{e}");
    assert_eq!(
        o.lines().count() as u64,
        entries.len() as u64 - 2 * compressed,
        "{o}"
    );
    let (code, o, e) = run(support::imgbuild()
        .args(["cache", "verify", "--repair"])
        .env("IMGBUILD_CACHE_DIR", &cache_dir));
    assert_eq!(code, 1, "{o}{e}");
    let (code, o, e) = verify();
    assert_eq!(code, 0, "{o}{e}");

    // cache gc empties the block folder; the next build is cold and still the same bytes.
    let (code, o, e) = run(support::imgbuild()
        .args(["cache", "gc", "--all"])
        .env("IMGBUILD_CACHE_DIR", &cache_dir));
    assert_eq!(code, 0, "{o}{e}");
    assert!(o.contains("xz-blocks") && o.contains(".zst"), "{o}");
    assert_eq!(
        fs::read_dir(cache_dir.join("xz-blocks")).unwrap().count(),
        0
    );
    let c = open();
    assert!(build(&c) == changed, "build after gc differs");
    assert_eq!(counts(&c).map(|k| k.0), [0, 0]);
}

/// Every output of the ext4 layout on a `disk` of that many bytes (24 MiB xz blocks, as built).
fn outputs_on_disk(files: &Path, dir: &Path, disk: u64) -> (f64, BuiltOutputs) {
    let mut layout = ext4_layout(files);
    layout.disk_size = Some(disk);
    outputs_with(&layout, dir, None)
}

/// Every output of `layout` with the default xz settings, timed.
fn outputs_with(
    layout: &Layout,
    dir: &Path,
    blocks: Option<&dyn BlockStore>,
) -> (f64, BuiltOutputs) {
    let out = OutputDir::prepare(dir).unwrap();
    let profile = serde_json::json!({});
    let req = OutputRequest {
        name: "node",
        formats: all_formats(false),
        xz: XzSettings::default(),
        blocks,
        epoch: 9,
        profile: &profile,
        inputs: &[],
    };
    let t = std::time::Instant::now();
    let built = build_outputs(&out, layout, &seed(7), &req, &Progress::quiet()).unwrap();
    (t.elapsed().as_secs_f64(), built)
}

#[test]
fn a_32_gib_image_has_the_outputs_of_the_minimal_one_plus_its_holes() {
    let work = tempfile::tempdir().unwrap();
    let files = work.path().join("files");
    fs::create_dir_all(&files).unwrap();
    for i in 0..8u64 {
        fs::write(files.join(format!("f{i}")), file_bytes(i, 300_000)).unwrap();
    }
    let (small, big) = (work.path().join("small"), work.path().join("big"));
    let (t_small, _) = outputs_on_disk(&files, &small, 128 * MIB);
    let (t_big, _) = outputs_on_disk(&files, &big, 32 << 30);
    println!("outputs pass: 128 MiB disk {t_small:.1} s, 32 GiB disk {t_big:.1} s");
    let len = |d: &Path, f: &str| fs::metadata(d.join(f)).unwrap().len();
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let alloc = |d: &Path| fs::metadata(d.join("node.img")).unwrap().blocks() * 512;
        // The holes stay holes: only the backup GPT (at the new end) is extra.
        let (a, b) = (alloc(&small), alloc(&big));
        assert!(
            b <= a + 64 * 1024,
            "raw image allocates {b} bytes at 32 GiB, {a} at 128 MiB"
        );
    }
    // xz and zstd cannot say "hole": every block of zeros costs a few bytes. That is bounded
    // per GiB of holes, not by the data.
    let holes_gib = 32 - 1;
    for (f, per_gib) in [("node.img.xz", 200_000), ("node.img.zst", 64_000)] {
        let (a, b) = (len(&small, f), len(&big, f));
        println!("{f}: {a} bytes at 128 MiB, {b} at 32 GiB");
        assert!(b <= a + holes_gib * per_gib, "{f}: {b} bytes vs {a}");
    }
    // The block map lists the same ranges; only the image size and block count differ.
    let ranges = |d: &Path| {
        let x = fs::read_to_string(d.join("node.img.bmap")).unwrap();
        x.lines().filter(|l| l.contains("<Range")).count()
    };
    assert_eq!(ranges(&small), ranges(&big));
    if require_tool("bmaptool") {
        // And it is right: bmaptool copies the 32 GiB image from its .img.zst, checking every
        // range's SHA-256, into a sparse file.
        let dest = work.path().join("copy.img");
        let (code, o, e) = run(tool("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(big.join("node.img.bmap"))
            .arg(big.join("node.img.zst"))
            .arg(&dest));
        assert_eq!(code, 0, "{o}{e}");
        assert_eq!(fs::metadata(&dest).unwrap().len(), 32 << 30);
    }
}

#[test]
#[ignore = "benchmark: run by scripts/bench-rebuild"]
fn bench_rebuild() {
    use imgbuild::source::dir::{DirOptions, read_dir_into};
    let root =
        PathBuf::from(std::env::var_os("IMGBUILD_BENCH_ROOT").expect("set IMGBUILD_BENCH_ROOT"));
    let work = tempfile::tempdir().unwrap();
    let (extra, cache) = (work.path().join("extra"), work.path().join("cache"));
    fs::create_dir_all(extra.join("etc/imgbuild")).unwrap();
    let layout = |label: &str| {
        fs::write(extra.join("etc/imgbuild/label"), format!("site={label}\n")).unwrap();
        let mut tree = imgbuild::tree::Tree::new();
        read_dir_into(&root, &mut tree, &DirOptions::default()).unwrap();
        read_dir_into(&extra, &mut tree, &DirOptions::default()).unwrap();
        Layout::gpt(vec![ext4_root(std::sync::Arc::new(tree)), data_grow()])
    };
    let run_once = |name: &str, label: &str| {
        let blocks = BlockCache::open(&cache).unwrap();
        let mut l = layout(label);
        l.disk_size = Some(2 << 30);
        let out = work.path().join(name);
        let (secs, built) = outputs_with(&l, &out, Some(&blocks));
        let [(hits, misses, _), (zst_hits, zst_misses, _)] = counts(&blocks);
        println!("bench {name} {secs:.3} {misses} {hits} {zst_misses} {zst_hits}");
        let files = ["node.img.xz", "node.img.zst"].map(|f| fs::read(out.join(f)).unwrap());
        (files, built)
    };
    let (cold, _) = run_once("cold", "home");
    assert!(run_once("warm", "home").0 == cold);
    let (_, built) = run_once("change", "lab");

    // What is left that grows with the image: reading the data, the SHA-256 of every byte
    // (holes included: the manifest records the image's hash) and of the mapped ranges.
    let mut img = fs::File::open(work.path().join("change/node.img")).unwrap();
    let c = Compressed::<fs::File> {
        xz: None,
        zst: None,
        xz_settings: &XzSettings::default(),
        zst_settings: ZstSettings::default(),
        blocks: None,
    };
    let t = std::time::Instant::now();
    let size = built.report.size;
    scan(&mut img, size, &built.report.written, c, &Progress::quiet()).unwrap();
    println!("bench hash_only {:.3} {size}", t.elapsed().as_secs_f64());
}
