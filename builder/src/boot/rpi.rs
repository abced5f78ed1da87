//! The Raspberry Pi boot partition: the base's firmware, device trees, overlays, kernels and
//! initramfs, with our `config.txt` additions and a generated `cmdline.txt`; and the Raspberry Pi
//! Imager repository entry written next to every Pi image.
//!
//! One image can boot both a Pi 4 and a Pi 5 (board `rpi`), as Raspberry Pi OS does: the Pi 4
//! firmware loads `kernel8.img` and `bcm2711-*.dtb`, the Pi 5 bootloader `kernel_2712.img` and
//! `bcm2712-*.dtb`; `auto_initramfs=1` picks the matching `initramfs8` / `initramfs_2712`.

use serde_json::json;

use crate::profile::{Board, ConfigTxt};
use crate::tree::{Content, Entry, Kind, Tree, TreePath};

/// Why a Pi boot partition could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RpiError {
    #[error(
        "the base image has no boot partition; a Raspberry Pi base must be a disk image with a FAT boot partition (Raspberry Pi OS Lite: `bootfs`)"
    )]
    NoBootPartition,
    #[error(
        "the base's boot partition lacks {missing} needed for {model}; use a Raspberry Pi OS (trixie, arm64) image or another base with the Raspberry Pi firmware and kernel"
    )]
    MissingFirmware {
        model: &'static str,
        missing: String,
    },
    #[error(
        "pi.config-txt.{section}: `{line}` sets `{key}`, which imgbuild must control ({why}); remove it from the profile"
    )]
    Conflict {
        section: &'static str,
        line: String,
        key: String,
        why: &'static str,
    },
    #[error("kernel command line argument {0:?} contains white space or a newline")]
    BadCmdline(String),
}

/// The files a Pi model needs from the base's boot partition: (model, files).
fn required(board: Board) -> Vec<(&'static str, &'static [&'static str])> {
    const PI4: &[&str] = &[
        "start4.elf",
        "fixup4.dat",
        "kernel8.img",
        "bcm2711-rpi-4-b.dtb",
    ];
    // The Pi 5 firmware lives in its EEPROM: it needs only the kernel and device tree.
    const PI5: &[&str] = &["kernel_2712.img", "bcm2712-rpi-5-b.dtb"];
    match board {
        Board::Rpi4 => vec![("Raspberry Pi 4", PI4)],
        Board::Rpi5 => vec![("Raspberry Pi 5", PI5)],
        _ => vec![("Raspberry Pi 4", PI4), ("Raspberry Pi 5", PI5)],
    }
}

/// `config.txt` keys imgbuild sets itself, with the reason.
const OWNED_KEYS: &[(&str, &str)] = &[
    (
        "cmdline",
        "the kernel command line comes from cmdline.txt, which imgbuild generates",
    ),
    (
        "kernel",
        "each Pi model boots the kernel of the base (kernel8.img, kernel_2712.img)",
    ),
    (
        "initramfs",
        "auto_initramfs picks the initramfs matching each kernel",
    ),
    (
        "auto_initramfs",
        "the root filesystem is found by PARTUUID from the initramfs",
    ),
    (
        "os_prefix",
        "the boot files stay at the root of the boot partition",
    ),
    ("arm_64bit", "the image is arm64; only arm_64bit=1 works"),
    ("device_tree", "each Pi model loads its own device tree"),
];

/// What the builder writes itself; appended after the base's own `config.txt`.
const OWN_SETTINGS: &[&str] = &["arm_64bit=1", "auto_initramfs=1"];

/// Files of the base's boot partition that would seed or reconfigure every node identically
/// (Raspberry Pi OS ships a default cloud-init seed; Imager adds a first-run script). The node's
/// own seed replaces them at flash time.
const SEED_FILES: &[&str] = &[
    "user-data",
    "meta-data",
    "network-config",
    "firstrun.sh",
    "custom.toml",
    "rpi-preseed.toml",
];

/// What goes into the boot partition besides the base's files.
#[derive(Debug, Clone)]
pub struct PiSpec<'a> {
    pub board: Board,
    /// `root=PARTUUID=…` of the root partition.
    pub root_partuuid: &'a str,
    /// Arguments from composition and the profile (`init=…`, `cgroup_enable=memory`, …).
    pub cmdline: &'a [String],
    pub config_txt: &'a ConfigTxt,
    pub epoch: i64,
}

/// Builds the Pi boot partition from the base's.
pub fn boot_tree(base_boot: Option<&Tree>, spec: &PiSpec<'_>) -> Result<Tree, RpiError> {
    let base = base_boot.ok_or(RpiError::NoBootPartition)?;
    for (model, files) in required(spec.board) {
        let missing: Vec<&str> = files
            .iter()
            .copied()
            .filter(|f| !is_file(base, f))
            .collect();
        if !missing.is_empty() {
            return Err(RpiError::MissingFirmware {
                model,
                missing: missing.join(", "),
            });
        }
    }
    check_config_lines(spec.config_txt)?;

    let mut boot = base.clone();
    for f in SEED_FILES {
        boot.remove(&TreePath::new(f).expect("static name"));
    }
    let base_config = match boot.get(&path("config.txt")).map(|e| &e.kind) {
        Some(Kind::File(c)) => {
            String::from_utf8_lossy(&c.read_all().unwrap_or_default()).into_owned()
        }
        _ => String::new(),
    };
    let config = config_txt(&base_config, spec.config_txt);
    let cmdline = cmdline_txt(spec)?;
    for (name, text) in [("config.txt", config), ("cmdline.txt", cmdline)] {
        boot.insert(
            path(name),
            Entry::file(0o644, Content::bytes(text.into_bytes())).at(spec.epoch),
        )
        .expect("the root of a tree is a directory");
    }
    boot.clamp_mtimes(spec.epoch);
    Ok(boot)
}

fn path(name: &str) -> TreePath {
    TreePath::new(name).expect("static name")
}

fn is_file(t: &Tree, name: &str) -> bool {
    matches!(t.get(&path(name)).map(|e| &e.kind), Some(Kind::File(_)))
}

fn check_config_lines(ct: &ConfigTxt) -> Result<(), RpiError> {
    for (section, lines) in [("all", &ct.all), ("pi4", &ct.pi4), ("pi5", &ct.pi5)] {
        for line in lines {
            let l = line.trim();
            let key = l
                .split(['=', ' '])
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if let Some((_, why)) = OWNED_KEYS.iter().find(|(k, _)| *k == key) {
                // Saying what imgbuild says anyway is harmless.
                if OWN_SETTINGS.contains(&l.replace(' ', "").as_str()) {
                    continue;
                }
                return Err(RpiError::Conflict {
                    section,
                    line: line.clone(),
                    key,
                    why,
                });
            }
        }
    }
    Ok(())
}

/// The base's `config.txt`, then ours: the settings imgbuild needs, then the profile's
/// additions per section, ending in `[all]` so anything appended later applies to every model.
pub fn config_txt(base: &str, ct: &ConfigTxt) -> String {
    let mut out = base.trim_end().to_string();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str("# Added by imgbuild\n[all]\n");
    for s in OWN_SETTINGS {
        out.push_str(s);
        out.push('\n');
    }
    for l in &ct.all {
        if !OWN_SETTINGS.contains(&l.trim()) {
            out.push_str(l.trim());
            out.push('\n');
        }
    }
    for (section, lines) in [("pi4", &ct.pi4), ("pi5", &ct.pi5)] {
        if !lines.is_empty() {
            out.push_str(&format!("[{section}]\n"));
            for l in lines {
                out.push_str(l.trim());
                out.push('\n');
            }
        }
    }
    if !(ct.pi4.is_empty() && ct.pi5.is_empty()) {
        out.push_str("[all]\n");
    }
    out
}

/// One line: console, root by PARTUUID read-only, then composition's and the profile's
/// arguments (each once, in order).
pub fn cmdline_txt(spec: &PiSpec<'_>) -> Result<String, RpiError> {
    let mut args: Vec<String> = vec![
        "console=serial0,115200".into(),
        "console=tty1".into(),
        format!("root=PARTUUID={}", spec.root_partuuid),
        "rootfstype=ext4".into(),
        "ro".into(),
        "rootwait".into(),
        "cgroup_enable=memory".into(),
        "cgroup_memory=1".into(),
    ];
    for a in spec.cmdline {
        if a.is_empty() || a.chars().any(char::is_whitespace) {
            return Err(RpiError::BadCmdline(a.clone()));
        }
        if !args.contains(a) {
            args.push(a.clone());
        }
    }
    Ok(format!("{}\n", args.join(" ")))
}

/// The facts of a built image that the Imager entry records.
#[derive(Debug, Clone)]
pub struct ImagerFacts<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub board: Board,
    /// File name of the download (`pi-worker.img.xz`), relative to the JSON file.
    pub url: &'a str,
    pub extract_size: u64,
    pub extract_sha256: &'a str,
    pub download_size: u64,
    pub download_sha256: &'a str,
    /// `YYYY-MM-DD` of SOURCE_DATE_EPOCH.
    pub release_date: String,
}

/// A Raspberry Pi Imager repository file (`os_list`, as `rpi-imager --repo FILE` reads it) for
/// one image. `init_format: cloudinit` makes Imager offer its customisation (hostname, user, SSH
/// key, Wi-Fi) and write it as a NoCloud seed, which the image reads.
pub fn imager_os_list(entries: &[ImagerFacts<'_>]) -> serde_json::Value {
    let board = entries.first().map_or(Board::Rpi, |f| f.board);
    let devices: Vec<&str> = match board {
        Board::Rpi4 => vec!["pi4-64bit"],
        Board::Rpi5 => vec!["pi5-64bit"],
        _ => vec!["pi4-64bit", "pi5-64bit"],
    };
    let os_list: Vec<serde_json::Value> = entries
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "description": f.description,
                // Imager requires the key; with no icon of our own it shows its generic one.
                "icon": "",
                "url": f.url,
                "extract_size": f.extract_size,
                "extract_sha256": f.extract_sha256,
                "image_download_size": f.download_size,
                "image_download_sha256": f.download_sha256,
                "release_date": f.release_date,
                "init_format": "cloudinit",
                "devices": devices,
                "architecture": "armv8",
            })
        })
        .collect();
    json!({
        "imager": {
            "devices": devices.iter().map(|d| json!({
                "name": match *d { "pi4-64bit" => "Raspberry Pi 4", _ => "Raspberry Pi 5" },
                "description": match *d {
                    "pi4-64bit" => "Raspberry Pi 4, 400 and Compute Module 4",
                    _ => "Raspberry Pi 5, 500 and Compute Module 5",
                },
                "tags": [d],
                "default": false,
                "matching_type": "exclusive",
            })).collect::<Vec<_>>(),
        },
        "os_list": os_list,
    })
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn utc_date(epoch: i64) -> String {
    // Civil-from-days (Howard Hinnant), valid for all i64 days we will meet.
    let days = epoch.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{:02}-{:02}", if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firmware(files: &[&str]) -> Tree {
        let mut t = Tree::new();
        for f in files {
            t.insert(path(f), Entry::file(0o644, Content::bytes(*f)))
                .unwrap();
        }
        t.insert(
            path("config.txt"),
            Entry::file(0o644, Content::bytes("dtparam=audio=on\n")),
        )
        .unwrap();
        t.insert(
            path("user-data"),
            Entry::file(0o644, Content::bytes("#cloud-config\n")),
        )
        .unwrap();
        t
    }

    const ALL: &[&str] = &[
        "start4.elf",
        "fixup4.dat",
        "kernel8.img",
        "bcm2711-rpi-4-b.dtb",
        "kernel_2712.img",
        "bcm2712-rpi-5-b.dtb",
    ];

    fn spec<'a>(board: Board, ct: &'a ConfigTxt, cmd: &'a [String]) -> PiSpec<'a> {
        PiSpec {
            board,
            root_partuuid: "1a2b3c4d-02",
            cmdline: cmd,
            config_txt: ct,
            epoch: 1_700_000_000,
        }
    }

    #[test]
    fn boot_partition_gets_config_and_cmdline_and_loses_default_seed() {
        let ct = ConfigTxt {
            all: vec!["dtparam=audio=off".into()],
            pi4: vec![],
            pi5: vec!["dtparam=pciex1_gen=3".into()],
        };
        let cmd = vec!["init=/usr/lib/imgbuild/preinit".into(), "ro".into()];
        let t = boot_tree(Some(&firmware(ALL)), &spec(Board::Rpi, &ct, &cmd)).unwrap();
        let read = |n: &str| match &t.get(&path(n)).unwrap().kind {
            Kind::File(c) => String::from_utf8(c.read_all().unwrap()).unwrap(),
            _ => panic!(),
        };
        assert_eq!(
            read("cmdline.txt"),
            "console=serial0,115200 console=tty1 root=PARTUUID=1a2b3c4d-02 rootfstype=ext4 ro rootwait cgroup_enable=memory cgroup_memory=1 init=/usr/lib/imgbuild/preinit\n"
        );
        let config = read("config.txt");
        assert!(config.starts_with("dtparam=audio=on\n"), "{config}");
        assert!(config.ends_with("[all]\narm_64bit=1\nauto_initramfs=1\ndtparam=audio=off\n[pi5]\ndtparam=pciex1_gen=3\n[all]\n"), "{config}");
        assert!(
            t.get(&path("user-data")).is_none(),
            "the base's default seed is removed"
        );
        assert!(t.iter().all(|(_, e)| e.mtime <= 1_700_000_000));
    }

    #[test]
    fn missing_pi5_kernel_is_named() {
        let ct = ConfigTxt::default();
        let pi4_only = &ALL[..4];
        let err = boot_tree(Some(&firmware(pi4_only)), &spec(Board::Rpi5, &ct, &[])).unwrap_err();
        assert!(err.to_string().contains("kernel_2712.img"), "{err}");
        assert!(err.to_string().contains("Raspberry Pi 5"), "{err}");
        // The same base is fine for a Pi 4 only image.
        boot_tree(Some(&firmware(pi4_only)), &spec(Board::Rpi4, &ct, &[])).unwrap();
        let err = boot_tree(Some(&firmware(&[])), &spec(Board::Rpi4, &ct, &[])).unwrap_err();
        assert!(err.to_string().contains("start4.elf"), "{err}");
        assert_eq!(
            boot_tree(None, &spec(Board::Rpi4, &ct, &[])).unwrap_err(),
            RpiError::NoBootPartition
        );
    }

    #[test]
    fn conflicting_config_lines_are_refused() {
        let cmd: Vec<String> = vec![];
        for bad in [
            "kernel=my.img",
            "cmdline=other.txt",
            "arm_64bit=0",
            "os_prefix=a/",
        ] {
            let ct = ConfigTxt {
                all: vec![],
                pi4: vec![bad.into()],
                pi5: vec![],
            };
            let err = boot_tree(Some(&firmware(ALL)), &spec(Board::Rpi, &ct, &cmd)).unwrap_err();
            assert!(
                matches!(err, RpiError::Conflict { section: "pi4", .. }),
                "{bad}: {err}"
            );
        }
        let ok = ConfigTxt {
            all: vec!["arm_64bit=1".into()],
            ..ConfigTxt::default()
        };
        boot_tree(Some(&firmware(ALL)), &spec(Board::Rpi, &ok, &cmd)).unwrap();
    }

    #[test]
    fn imager_entry_and_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        let xz = ImagerFacts {
            name: "pi-worker",
            description: "d",
            board: Board::Rpi,
            url: "pi-worker.img.xz",
            extract_size: 10,
            extract_sha256: "aa",
            download_size: 5,
            download_sha256: "bb",
            release_date: utc_date(0),
        };
        let zst = ImagerFacts {
            name: "pi-worker (zstd)",
            url: "pi-worker.img.zst",
            ..xz.clone()
        };
        let v = imager_os_list(&[xz, zst]);
        assert_eq!(v["os_list"][1]["url"], "pi-worker.img.zst");
        assert_eq!(v["os_list"][0]["init_format"], "cloudinit");
        assert_eq!(
            v["os_list"][0]["devices"],
            json!(["pi4-64bit", "pi5-64bit"])
        );
    }
}
