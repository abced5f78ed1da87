//! Raspberry Pi images (`pi-worker`, `pi-server`; boards `rpi`, `rpi4`, `rpi5`) built offline from
//! a base laid out like Raspberry Pi OS Lite (`tests/fixtures/pi/make-pi-base`: Debian's real Pi
//! firmware, arm64 kernel and device trees) with the k3s and Tailscale stand-ins, judged by tools
//! nobody here wrote: sfdisk, fsck.fat, e2fsck, blkid, mtools, debugfs, and python3-jsonschema
//! for the Raspberry Pi Imager repository file.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use imgbuild::node::files::{BOOT_LABEL, ROOT_LABEL};
use support::pi::pi_base;
use support::{find_tool, require_tool, run};

const MIB: u64 = 1 << 20;

/// What every build shares: the stand-ins laid out like the upstream arm64 release assets, and
/// one download cache (a base is copied into it once, then found by its SHA-256).
/// Owned by the test (a static would never be dropped, and its folder would outlive the run).
struct Shared {
    standins: PathBuf,
    cache: PathBuf,
    _dir: tempfile::TempDir,
}

impl Shared {
    fn new() -> Shared {
        let dir = tempfile::tempdir().unwrap();
        let standins = dir.path().join("standins");
        let (code, _, err) = run(Command::new("sh")
            .arg(support::tests_dir().join("fixtures/standins/package.sh"))
            .arg(&standins)
            .arg("1.96.4")
            .arg("arm64"));
        assert_eq!(code, 0, "package.sh: {err}");
        Shared {
            standins,
            cache: dir.path().join("cache"),
            _dir: dir,
        }
    }
}

fn sha256_file(p: &Path) -> String {
    sh(Command::new("sha256sum").arg(p))[..64].to_string()
}

/// A finished build: its output folder and the profile's settings.
struct Built {
    out: PathBuf,
    image: PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs `imgbuild build PROFILE` from `base` with the stand-ins, a private lockfile and the
/// shared cache; only the raw image is written unless `sets` asks for more formats.
/// `Err((exit code, stderr, output folder))` when the build fails.
fn build(
    sh: &Shared,
    profile: &str,
    sets: &[&str],
    base: &Path,
) -> Result<Built, (i32, String, PathBuf)> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cmd = support::imgbuild();
    cmd.arg("build")
        .arg(profile)
        .arg("--out")
        .arg(&out)
        .arg("--cache-dir")
        .arg(&sh.cache)
        .arg("--lockfile")
        .arg(dir.path().join("imgbuild.lock"))
        .arg("--set")
        .arg(format!("base.url=file://{}", base.display()))
        .arg("--set")
        .arg(format!("base.sha256={}", sha256_file(base)))
        .arg("--set")
        .arg(format!(
            "k3s.url=file://{}/k3s-{{arch}}",
            sh.standins.display()
        ))
        .arg("--set")
        .arg(format!(
            "mesh.url=file://{}/tailscale_{{version}}_{{arch}}.tgz",
            sh.standins.display()
        ));
    if !sets.iter().any(|s| s.starts_with("image.formats=")) {
        cmd.args(["--set", "image.formats=[\"img\"]"]);
    }
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    let (code, stdout, stderr) = run(&mut cmd);
    if code != 0 {
        return Err((code, format!("{stdout}{stderr}"), out));
    }
    let name = sets
        .iter()
        .find_map(|s| s.strip_prefix("image.name="))
        .unwrap_or(profile);
    let image = out.join(format!("{name}.img"));
    assert!(
        image.is_file(),
        "{} after: {stdout}{stderr}",
        image.display()
    );
    Ok(Built {
        out,
        image,
        _dir: dir,
    })
}

/// A build that must fail: exit 2, a message containing each of `want`, and no output left.
fn refused(sh: &Shared, profile: &str, sets: &[&str], base: &Path, want: &[&str]) -> String {
    let Err((code, msg, out)) = build(sh, profile, sets, base) else {
        panic!("{profile} {sets:?} built, but should have been refused");
    };
    assert_eq!(code, 2, "exit code of a refused build: {msg}");
    for w in want {
        assert!(msg.contains(w), "the error names {w:?}: {msg}");
    }
    assert!(!msg.contains("panicked"), "{msg}");
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a refused build left {left:?} in {}",
        out.display()
    );
    msg
}

fn sh(cmd: &mut Command) -> String {
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{cmd:?} failed:\n{out}\n{err}");
    out
}

/// `sfdisk -J` of an image: (label, disk id, [(start sector, size, type)]).
fn table(img: &Path) -> (String, String, Vec<(u64, u64, String)>) {
    let j: serde_json::Value =
        serde_json::from_str(&sh(Command::new("sfdisk").arg("-J").arg(img))).unwrap();
    let t = &j["partitiontable"];
    let parts = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (
        t["label"].as_str().unwrap().into(),
        t["id"].as_str().unwrap().into(),
        parts,
    )
}

/// Copies partition `n` (1-based) out of the image with dd, sparse.
fn extract(img: &Path, n: usize, dest: &Path) -> PathBuf {
    let (_, _, parts) = table(img);
    let (start, size, _) = parts[n - 1];
    let out = dest.join(format!("part{n}"));
    sh(Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", out.display()))
        .args(["bs=512", "conv=sparse", "status=none"])
        .arg(format!("skip={start}"))
        .arg(format!("count={size}")));
    out
}

/// `mtools` image spec of the boot partition (`img@@offset`).
fn mtools_img(img: &Path) -> String {
    let (_, _, parts) = table(img);
    format!("{}@@{}", img.display(), parts[0].0 * 512)
}

fn boot_files(img: &Path) -> Vec<String> {
    sh(Command::new("mdir").args(["-b", "-i", &mtools_img(img), "::/"]))
        .lines()
        .map(|l| l.trim_start_matches("::/").to_string())
        .collect()
}

fn boot_file(img: &Path, name: &str) -> String {
    sh(Command::new("mtype").args(["-i", &mtools_img(img), &format!("::{name}")]))
}

/// `config.txt` as Raspberry Pi firmware reads it: lines grouped by the `[filter]` in force.
fn config_sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = vec![("all".into(), vec![])];
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(f) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // A filter with nothing under it has no effect: the next one replaces it.
            if out.last().is_some_and(|(_, lines)| lines.is_empty()) {
                out.pop();
            }
            out.push((f.to_string(), vec![]));
        } else {
            out.last_mut().unwrap().1.push(l.to_string());
        }
    }
    out
}

/// The files each board must find on the boot partition (Pi 4: firmware, kernel8.img, its
/// device tree; Pi 5: its bootloader is in EEPROM, so kernel_2712.img and its device tree).
fn needed(board: &str) -> Vec<&'static str> {
    let pi4 = [
        "start4.elf",
        "fixup4.dat",
        "kernel8.img",
        "bcm2711-rpi-4-b.dtb",
    ];
    let pi5 = ["kernel_2712.img", "bcm2712-rpi-5-b.dtb"];
    match board {
        "rpi4" => pi4.to_vec(),
        "rpi5" => pi5.to_vec(),
        _ => pi4.iter().chain(&pi5).copied().collect(),
    }
}

/// Every structural check of a Pi image; `extra` are the profile's `config.txt` lines per
/// section.
fn check_image(b: &Built, board: &str, base: &Path, extra: &[(&str, &[&str])]) {
    let img = &b.image;
    let work = tempfile::tempdir().unwrap();
    // The table: sfdisk finds nothing wrong; FAT32 LBA at 4 MiB, then root and data (Linux).
    sh(Command::new("sfdisk").arg("--verify").arg(img));
    let (label, id, parts) = table(img);
    assert_eq!(label, "dos");
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!(parts[0].0 * 512, 4 * MIB, "boot partition at 4 MiB");
    assert_eq!(parts[0].2, "c", "boot partition type 0x0c (FAT32 LBA)");
    assert_eq!(parts[1].2, "83");
    assert_eq!(parts[2].2, "83");

    // Each filesystem passes its own checker.
    let bootp = extract(img, 1, work.path());
    let (code, out, err) = run(Command::new("fsck.fat").arg("-n").arg(&bootp));
    assert_eq!(code, 0, "fsck.fat -n: {out}{err}");
    // blkid sees the labels.
    let probe = |args: &[&str], p: &Path| {
        let out = sh(Command::new("blkid")
            .args(["-p", "-o", "export"])
            .args(args)
            .arg(p));
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(probe(&[], &bootp)["TYPE"], "vfat");
    assert_eq!(probe(&[], &bootp)["LABEL"], BOOT_LABEL);
    let root_off = (parts[1].0 * 512).to_string();
    let root = probe(&["-O", &root_off], img);
    assert_eq!(root["TYPE"], "ext4");
    assert_eq!(root["LABEL"], ROOT_LABEL);

    // cmdline.txt names the root partition by the PARTUUID blkid derives from the disk id.
    let disk = probe(&[], img);
    assert_eq!(disk["PTTYPE"], "dos");
    assert_eq!(
        format!("0x{}", disk["PTUUID"]),
        id,
        "blkid and sfdisk agree on the disk id"
    );
    let want_partuuid = format!("{}-02", disk["PTUUID"]);
    let cmdline = boot_file(img, "cmdline.txt");
    assert_eq!(
        cmdline.lines().count(),
        1,
        "cmdline.txt is one line: {cmdline:?}"
    );
    let args: Vec<&str> = cmdline.split_whitespace().collect();
    for want in [
        format!("root=PARTUUID={want_partuuid}"),
        "ro".into(),
        "rootwait".into(),
        "cgroup_enable=memory".into(),
        "cgroup_memory=1".into(),
        "console=serial0,115200".into(),
        "ds=nocloud;s=file:///boot/firmware/".into(),
    ] {
        assert!(args.contains(&want.as_str()), "{want} in {cmdline:?}");
    }
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("init=/usr/lib/raspberrypi-sys-mods")),
        "the base's first-boot hook is not carried over: {cmdline:?}"
    );

    // The firmware, kernels and device trees this board needs, byte-for-byte the base's.
    let files = boot_files(img);
    for f in needed(board) {
        assert!(
            files.iter().any(|x| x == f),
            "{f} on the boot partition: {files:?}"
        );
        let ours = sh(Command::new("sh")
            .arg("-c")
            .arg(format!("mtype -i '{}' ::{f} | sha256sum", mtools_img(img))));
        let theirs = sh(Command::new("sh").arg("-c").arg(format!(
            "mtype -i '{}@@{}' ::{f} | sha256sum",
            base.display(),
            4 * MIB
        )));
        assert_eq!(ours, theirs, "{f} is the base's");
    }
    // The default seed of the base is gone: every node gets its own at flash time.
    for f in ["user-data", "meta-data", "network-config"] {
        assert!(
            !files.iter().any(|x| x == f),
            "{f} left on the boot partition"
        );
    }

    // config.txt: the base's settings, then ours in [all], the profile's per model, ending in
    // [all] so anything appended later applies to every model.
    let config = boot_file(img, "config.txt");
    let sections = config_sections(&config);
    assert!(
        sections[0].1.contains(&"dtparam=audio=on".to_string()),
        "base settings kept: {config}"
    );
    let added = config
        .split("# Added by imgbuild")
        .nth(1)
        .unwrap_or_else(|| panic!("config.txt has no imgbuild section: {config}"));
    let ours = config_sections(added);
    let all = &ours.iter().find(|(s, _)| s == "all").unwrap().1;
    for want in ["arm_64bit=1", "auto_initramfs=1"] {
        assert!(all.contains(&want.to_string()), "{want} in [all]: {config}");
    }
    assert_eq!(ours.last().unwrap().0, "all", "ends in [all]: {config}");
    for (name, lines) in extra {
        let got = &ours
            .iter()
            .find(|(s, _)| s == name)
            .unwrap_or_else(|| panic!("no [{name}] in {config}"))
            .1;
        assert_eq!(got, lines, "[{name}] in {config}");
    }
    // Last, so every check above has run when this one fails.
    for n in [2, 3] {
        let p = extract(img, n, work.path());
        let (code, out, err) = run(Command::new("e2fsck").arg("-fn").arg(&p));
        assert_eq!(code, 0, "e2fsck -fn partition {n}: {out}{err}");
        std::fs::remove_file(p).unwrap();
    }
}

/// The node's files in the root filesystem, read with debugfs.
fn root_file(img: &Path, path: &str) -> Option<String> {
    let work = tempfile::tempdir().unwrap();
    let root = extract(img, 2, work.path());
    let (code, out, err) = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(&root));
    (code == 0 && !err.contains("File not found")).then_some(out)
}

const ORACLES: &[&str] = &[
    "sfdisk",
    "mdir",
    "mtype",
    "fsck.fat",
    "e2fsck",
    "blkid",
    "debugfs",
    "dd",
    "sha256sum",
];

fn have_oracles() -> bool {
    ORACLES.iter().all(|t| require_tool(t))
}

#[test]
fn pi_worker_for_pi4_and_pi5_passes_the_oracles() {
    if !have_oracles() {
        return;
    }
    let Some(base) = pi_base(None) else { return };
    let shared = Shared::new();
    let b = build(
        &shared,
        "pi-worker",
        &["pi.config-txt.pi5=[\"dtparam=pciex1_gen=3\"]"],
        &base,
    )
    .unwrap_or_else(|(_, msg, _)| panic!("{msg}"));
    let k3s = root_file(&b.image, "/usr/local/bin/k3s").expect("k3s in the root");
    let standin = std::fs::read_to_string(shared.standins.join("k3s-arm64")).unwrap();
    assert_eq!(k3s, standin, "the pinned k3s binary is in the root");
    // The boot partition holds the seed at flash time, and FAT has no modes: it is mounted
    // readable by root only.
    let fstab = root_file(&b.image, "/etc/fstab").expect("/etc/fstab");
    let boot = fstab
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/boot/firmware"))
        .unwrap_or_else(|| panic!("no /boot/firmware in fstab:\n{fstab}"));
    for opt in ["fmask=0077", "dmask=0077"] {
        assert!(boot.contains(opt), "{opt} on /boot/firmware: {boot}");
    }
    check_image(&b, "rpi", &base, &[("pi5", &["dtparam=pciex1_gen=3"])]);
}

#[test]
fn pi_server_passes_the_oracles() {
    if !have_oracles() {
        return;
    }
    let Some(base) = pi_base(None) else { return };
    let shared = Shared::new();
    let b = build(&shared, "pi-server", &[], &base).unwrap_or_else(|(_, msg, _)| panic!("{msg}"));
    check_image(&b, "rpi", &base, &[]);
}

#[test]
fn single_board_images_carry_what_that_board_needs() {
    if !have_oracles() {
        return;
    }
    let Some(base) = pi_base(None) else { return };
    let shared = Shared::new();
    for board in ["rpi4", "rpi5"] {
        let b = build(
            &shared,
            "pi-worker",
            &[
                &format!("image.board={board}"),
                "pi.config-txt.pi4=[\"dtoverlay=disable-bt\"]",
            ],
            &base,
        )
        .unwrap_or_else(|(_, msg, _)| panic!("{board}: {msg}"));
        check_image(&b, board, &base, &[("pi4", &["dtoverlay=disable-bt"])]);
    }
}

#[test]
fn bases_without_what_the_board_needs_are_refused_by_name() {
    let Some(no_fw) = pi_base(Some("--no-firmware")) else {
        return;
    };
    let shared = Shared::new();
    refused(
        &shared,
        "pi-worker",
        &[],
        &no_fw,
        &["start4.elf", "Raspberry Pi 4"],
    );
    let Some(no_2712) = pi_base(Some("--no-pi5-kernel")) else {
        return;
    };
    refused(
        &shared,
        "pi-worker",
        &["image.board=rpi5"],
        &no_2712,
        &["kernel_2712.img", "Raspberry Pi 5"],
    );
}

#[test]
fn config_txt_additions_that_conflict_are_refused_by_key() {
    let Some(base) = pi_base(None) else { return };
    let shared = Shared::new();
    for (set, section, key) in [
        ("pi.config-txt.pi4=[\"kernel=my.img\"]", "pi4", "kernel"),
        (
            "pi.config-txt.all=[\"cmdline=other.txt\"]",
            "all",
            "cmdline",
        ),
        ("pi.config-txt.pi5=[\"arm_64bit=0\"]", "pi5", "arm_64bit"),
    ] {
        refused(
            &shared,
            "pi-worker",
            &[set],
            &base,
            &[&format!("pi.config-txt.{section}"), &format!("`{key}`")],
        );
    }
}

#[test]
fn an_image_size_below_the_content_is_refused() {
    let Some(base) = pi_base(None) else { return };
    let shared = Shared::new();
    // Caught by the profile check: no room next to the boot partition.
    refused(
        &shared,
        "pi-worker",
        &["image.size=\"64MiB\""],
        &base,
        &["image.size", "64MiB"],
    );
    // Caught when the root filesystem is measured: the base does not fit in 768 MiB.
    refused(
        &shared,
        "pi-worker",
        &["image.size=\"768MiB\""],
        &base,
        &["805306368", "need"],
    );
}

/// The Raspberry Pi Imager repository entry for a built image validates against the fields
/// Imager reads (tests/fixtures/pi/os-list.schema.json), and its sizes and hashes are the files'.
#[test]
fn imager_os_list_validates_and_matches_the_files() {
    // Debian's python3, where python3-jsonschema installs, before any other on PATH.
    let system = std::path::PathBuf::from("/usr/bin/python3");
    let Some(python) = system
        .is_file()
        .then_some(system)
        .or_else(|| find_tool("python3"))
    else {
        require_tool("python3");
        return;
    };
    let has_jsonschema = run(Command::new(&python).args(["-c", "import jsonschema"])).0 == 0;
    if !has_jsonschema {
        if std::env::var_os("CI").is_some() {
            panic!("python3-jsonschema is required under CI");
        }
        eprintln!("skipping: python3 jsonschema is not installed");
        return;
    }
    let Some(base) = pi_base(None) else { return };
    let shared = Shared::new();
    let b = build(
        &shared,
        "pi-worker",
        &["image.formats=[\"img\", \"img.xz\", \"bmap\"]"],
        &base,
    )
    .unwrap_or_else(|(_, msg, _)| panic!("{msg}"));
    let json = b.out.join("pi-worker.rpi-imager.json");
    assert!(
        json.is_file(),
        "{} is written next to the image",
        json.display()
    );
    validate_imager_json(&python, &json);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let entry = &doc["os_list"][0];
    assert_eq!(entry["init_format"], "cloudinit");
    assert_eq!(entry["url"], "pi-worker.img.xz");
    let mut devices: Vec<&str> = entry["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    devices.sort();
    assert_eq!(devices, ["pi4-64bit", "pi5-64bit"], "board rpi boots both");
}

/// Validates an Imager repository file with python3-jsonschema and checks each entry's sizes and
/// hashes against the files it names (relative to the JSON file).
fn validate_imager_json(python: &Path, json: &Path) {
    let schema = support::tests_dir().join("fixtures/pi/os-list.schema.json");
    let script = r#"
import hashlib, json, os, sys, jsonschema
schema = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
jsonschema.Draft7Validator.check_schema(schema)
jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)
here = os.path.dirname(sys.argv[2])
def sha(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        for b in iter(lambda: f.read(1 << 20), b''):
            h.update(b)
    return h.hexdigest()
import lzma
for e in doc['os_list']:
    dl = os.path.join(here, e['url'])
    assert os.path.getsize(dl) == e['image_download_size'], 'image_download_size'
    assert sha(dl) == e['image_download_sha256'], 'image_download_sha256'
    h = hashlib.sha256(); n = 0
    with (lzma.open(dl) if dl.endswith('.xz') else open(dl, 'rb')) as f:
        for b in iter(lambda: f.read(1 << 20), b''):
            h.update(b); n += len(b)
    assert n == e['extract_size'], 'extract_size'
    assert h.hexdigest() == e['extract_sha256'], 'extract_sha256'
print('ok', len(doc['os_list']))
"#;
    let out = sh(Command::new(python)
        .args(["-c", script])
        .arg(&schema)
        .arg(json));
    assert_eq!(out.trim(), "ok 1");
}

/// `partition-table = "gpt"` (SSDs over 2 TiB): sgdisk finds the table sound, and cmdline.txt
/// names the root partition by its GPT unique GUID.
#[test]
fn gpt_layout_names_root_by_its_guid() {
    if !have_oracles() || !require_tool("sgdisk") {
        return;
    }
    let Some(base) = pi_base(None) else { return };
    let shared = Shared::new();
    let b = build(&shared, "pi-worker", &["image.partition-table=gpt"], &base)
        .unwrap_or_else(|(_, msg, _)| panic!("{msg}"));
    let (code, out, err) = run(Command::new("sgdisk").arg("-v").arg(&b.image));
    assert!(
        code == 0 && out.contains("No problems found"),
        "sgdisk -v: {out}{err}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&sh(Command::new("sfdisk").arg("-J").arg(&b.image))).unwrap();
    let parts = j["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(j["partitiontable"]["label"], "gpt");
    let root_guid = parts[1]["uuid"].as_str().unwrap().to_ascii_lowercase();
    let img = format!(
        "{}@@{}",
        b.image.display(),
        parts[0]["start"].as_u64().unwrap() * 512
    );
    let cmdline = sh(Command::new("mtype").args(["-i", &img, "::cmdline.txt"]));
    assert!(
        cmdline
            .split_whitespace()
            .any(|a| a.eq_ignore_ascii_case(&format!("root=PARTUUID={root_guid}"))),
        "root=PARTUUID={root_guid} in {cmdline:?}"
    );
    let (code, out, err) =
        run(Command::new("fsck.fat")
            .arg("-n")
            .arg(extract(&b.image, 1, b.out.parent().unwrap())));
    assert_eq!(code, 0, "fsck.fat -n: {out}{err}");
}
