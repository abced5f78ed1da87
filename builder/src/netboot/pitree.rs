//! The Raspberry Pi 4/5 TFTP tree of a netboot set (`images/<profile>/netboot/pi/`): what the
//! EEPROM bootloader fetches with `TFTP_PREFIX=0` (a folder per board serial).
//!
//! - `pi/<file>`: shared by every node — the firmware (Pi 4: `start4.elf`, `fixup4.dat`; the
//!   Pi 5 has it in its EEPROM), device trees, overlays, kernels and initramfs of the disk
//!   image's boot partition, and a `config.txt` that names each model's kernel and its
//!   initramfs followed by `imgbuild.cpio` (the root, as for a PC netboot);
//! - `pi/<serial>/cmdline.txt`: per node, the netboot command line with the node's seed URL.
//!
//! Shared files are not copied into the serial folders: the server resolves `<serial>/X` to
//! `pi/<serial>/X` when the node has its own X, else to `pi/X` (see `catalog`).
//!
//! The seed URL holds the token slot ([`TOKEN_SLOT`]), not a token: `netboot serve`'s TFTP
//! mints a one-shot token each time it serves the file and puts it there (same length, so the
//! Pi's size probe and its read agree). The build stays deterministic and needs no secrets, and
//! the file names no key to the seed: read from another TFTP server, its seed URL is a 404.

use imgbuild_netboot::tokens::TOKEN_SLOT;

use super::netcfg::network_config_arg;

use crate::tree::{Content, Kind, Tree};

/// The tree's folder inside the netboot set.
pub const PI_DIR: &str = "pi";
/// The per-node file.
pub const CMDLINE: &str = "cmdline.txt";
/// The shared, generated configuration.
pub const CONFIG: &str = "config.txt";

/// A Pi model the tree boots: its kernel, initramfs and device tree in the boot partition.
struct Model {
    section: &'static str,
    kernel: &'static str,
    initramfs: &'static str,
    dtb: &'static str,
}

const MODELS: &[Model] = &[
    Model {
        section: "pi4",
        kernel: "kernel8.img",
        initramfs: "initramfs8",
        dtb: "bcm2711-rpi-4-b.dtb",
    },
    Model {
        section: "pi5",
        kernel: "kernel_2712.img",
        initramfs: "initramfs_2712",
        dtb: "bcm2712-rpi-5-b.dtb",
    },
];

/// Why a node folder cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PiTreeError {
    #[error(
        "node {node}: serial {serial:?} is not a Raspberry Pi serial\n  help: write the 8 or 16 hex digits `cat /proc/device-tree/serial-number` (or `vcgencmd otp_dump | grep ^28:`) shows on the Pi"
    )]
    BadSerial { node: String, serial: String },
    #[error(
        "it names no seed URL `ds=nocloud-net;s=http://ADDR:PORT/seed/{TOKEN_SLOT}/` (built by an older imgbuild, or edited)\n  help: rebuild with `imgbuild netboot build PROFILE --listen ADDR`"
    )]
    NoTokenSlot,
    #[error(
        "the boot partition has neither kernel8.img with initramfs8 (Pi 4) nor kernel_2712.img with initramfs_2712 (Pi 5); the Pi netboot tree needs one of them"
    )]
    NoKernel,
}

/// The folder the bootloader asks for: the serial's low 32 bits as 8 lower-case hex digits
/// (`TFTP_PREFIX=0`; the EEPROM uses only these even where the serial is 64 bits).
pub fn serial_folder(node: &str, serial: &str) -> Result<String, PiTreeError> {
    let s = serial.trim_start_matches("0x").to_ascii_lowercase();
    if !(s.len() == 8 || s.len() == 16) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PiTreeError::BadSerial {
            node: node.into(),
            serial: serial.into(),
        });
    }
    Ok(s[s.len() - 8..].to_string())
}

/// Shared files of the tree, from the disk image's Pi boot partition: every regular file but
/// `config.txt` and `cmdline.txt` (generated here), the initramfs padded to 4 bytes (the next
/// archive, imgbuild.cpio, is found only at a 4-byte offset). Sorted by name.
pub fn shared_files(boot: &Tree) -> std::io::Result<Vec<(String, Content)>> {
    let mut out = Vec::new();
    for (path, entry) in boot.iter() {
        let Kind::File(c) = &entry.kind else {
            continue;
        };
        let name = String::from_utf8_lossy(path.as_bytes()).into_owned();
        if name == CONFIG || name == CMDLINE {
            continue;
        }
        let content = if MODELS.iter().any(|m| m.initramfs == name) && c.len % 4 != 0 {
            let mut data = c.read_all()?;
            data.resize(data.len().next_multiple_of(4), 0);
            Content::bytes(data)
        } else {
            c.clone()
        };
        out.push((name, content));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The netboot `config.txt`: the disk image's, then per model present its kernel, device tree
/// and initramfs list (`auto_initramfs` off: it would load the initramfs without the root).
pub fn config_txt(image_config: &str, boot: &Tree, cpio: &str) -> Result<String, PiTreeError> {
    let has = |n: &str| crate::boot::efi::file_content(boot, n).is_some();
    let models: Vec<&Model> = MODELS
        .iter()
        .filter(|m| has(m.kernel) && has(m.initramfs))
        .collect();
    if models.is_empty() {
        return Err(PiTreeError::NoKernel);
    }
    let mut out = image_config.trim_end().to_string();
    out.push_str("\n\n# Added by imgbuild netboot: each model's kernel, then its initramfs and the root\n[all]\nauto_initramfs=0\n");
    for m in models {
        out.push_str(&format!(
            "[{}]\nkernel={}\ndevice_tree={}\ninitramfs {},{cpio} followkernel\n",
            m.section, m.kernel, m.dtb, m.initramfs
        ));
    }
    out.push_str("[all]\n");
    Ok(out)
}

/// The netboot arguments as a Pi's `cmdline.txt` starts them (serial console as on the disk
/// image, the memory cgroup k3s needs), then `netboot` (root image and its hash).
pub fn shared_cmdline(netboot: &[String]) -> String {
    let mut args: Vec<String> = [
        "console=serial0,115200",
        "console=tty1",
        "cgroup_enable=memory",
        "cgroup_memory=1",
    ]
    .map(String::from)
    .to_vec();
    for a in netboot {
        if !args.contains(a) {
            args.push(a.clone());
        }
    }
    args.join(" ")
}

/// A node's `cmdline.txt` as built: the shared line, its seed URL on `base_url`
/// (`http://ADDR:PORT`) with the token slot, and its seed's `network-config` (see
/// [`super::netcfg`]).
pub fn node_cmdline(shared: &str, base_url: &str, network_config: &str) -> String {
    let mut line = format!("{shared} {}", seed_arg(base_url, TOKEN_SLOT));
    if let Some(arg) = network_config_arg(network_config) {
        line.push(' ');
        line.push_str(&arg);
    }
    line.push('\n');
    line
}

/// The server (`http://ADDR:PORT`) a built node `cmdline.txt` names for its seed, checked to be
/// one seed URL with the token slot (which appears nowhere else, so the server fills in only it).
pub fn seed_server(cmdline: &str) -> Result<&str, PiTreeError> {
    let mut urls = cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("ds=nocloud-net;s="));
    let (Some(url), None) = (urls.next(), urls.next()) else {
        return Err(PiTreeError::NoTokenSlot);
    };
    match url.strip_suffix(&format!("/seed/{TOKEN_SLOT}/")) {
        Some(base) if cmdline.matches(TOKEN_SLOT).count() == 1 => Ok(base),
        _ => Err(PiTreeError::NoTokenSlot),
    }
}

/// `ds=nocloud-net;s=URL/`, as the iPXE script names a PC node's seed.
pub fn seed_arg(base_url: &str, key: &str) -> String {
    format!("ds=nocloud-net;s={base_url}/seed/{key}/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netboot::netcfg::has_network_config;
    use crate::tree::{Entry, TreePath};

    #[test]
    fn serial_folders_use_the_low_32_bits() {
        assert_eq!(serial_folder("a", "9ffefdef").unwrap(), "9ffefdef");
        assert_eq!(serial_folder("a", "10000000ABCDEF01").unwrap(), "abcdef01");
        for bad in ["", "abc", "9ffefdeg", "123456789", "../x"] {
            assert!(serial_folder("a", bad).is_err(), "{bad}");
        }
    }

    fn boot(files: &[(&str, &[u8])]) -> Tree {
        let mut t = Tree::new();
        for (n, d) in files {
            if let Some((dir, _)) = n.rsplit_once('/') {
                let _ = t.insert(TreePath::new(dir).unwrap(), Entry::dir(0o755));
            }
            t.insert(
                TreePath::new(n).unwrap(),
                Entry::file(0o644, Content::bytes(d.to_vec())),
            )
            .unwrap();
        }
        t
    }

    #[test]
    fn config_names_each_present_model_and_shared_files_skip_generated_ones() {
        let t = boot(&[
            ("kernel8.img", b"k"),
            ("initramfs8", b"12345"),
            ("config.txt", b"x"),
            ("cmdline.txt", b"y"),
            ("overlays/a.dtbo", b"o"),
        ]);
        let c = config_txt("dtparam=audio=on\n", &t, "imgbuild.cpio").unwrap();
        assert!(c.starts_with("dtparam=audio=on\n"), "{c}");
        assert!(c.contains("[pi4]\nkernel=kernel8.img\ndevice_tree=bcm2711-rpi-4-b.dtb\ninitramfs initramfs8,imgbuild.cpio followkernel\n"), "{c}");
        assert!(!c.contains("[pi5]"), "{c}");
        assert!(c.ends_with("[all]\n"), "{c}");
        let files = shared_files(&t).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["initramfs8", "kernel8.img", "overlays/a.dtbo"]);
        assert_eq!(files[0].1.len, 8, "padded to 4 bytes");
        assert_eq!(
            config_txt("", &boot(&[("start4.elf", b"")]), "c"),
            Err(PiTreeError::NoKernel)
        );
    }

    #[test]
    fn node_cmdline_ends_with_its_seed_url_and_its_token_slot() {
        let shared = shared_cmdline(&["boot=imgbuild".into(), "cgroup_memory=1".into()]);
        assert_eq!(
            shared,
            "console=serial0,115200 console=tty1 cgroup_enable=memory cgroup_memory=1 boot=imgbuild"
        );
        let line = node_cmdline(&shared, "http://10.0.0.1:8080", "# no MAC: no config\n");
        assert_eq!(
            line,
            format!("{shared} ds=nocloud-net;s=http://10.0.0.1:8080/seed/{TOKEN_SLOT}/\n")
        );
        assert_eq!(seed_server(&line), Ok("http://10.0.0.1:8080"));
        // An older build's seed key, no seed URL, two of them, the slot elsewhere too: refused.
        let key = "0123456789abcdef0123456789abcdef";
        for bad in [
            format!("{shared} ds=nocloud-net;s=http://10.0.0.1:8080/seed/{key}/\n"),
            format!("{shared}\n"),
            format!("{} {line}", seed_arg("http://10.0.0.2:80", TOKEN_SLOT)),
            format!("x={TOKEN_SLOT} {line}"),
        ] {
            assert_eq!(seed_server(&bad), Err(PiTreeError::NoTokenSlot), "{bad}");
        }
        let net = "network:\n  version: 2\n";
        let with_net = node_cmdline(&shared, "http://10.0.0.1:8080", net);
        assert_eq!(
            with_net,
            format!(
                "{shared} ds=nocloud-net;s=http://10.0.0.1:8080/seed/{TOKEN_SLOT}/ {}\n",
                network_config_arg(net).unwrap()
            )
        );
        assert_eq!(seed_server(&with_net), Ok("http://10.0.0.1:8080"));
        assert!(has_network_config(&with_net, net));
        assert!(!has_network_config(&with_net, "network:\n  version: 1\n"));
        assert!(!has_network_config(&with_net, "# no MAC\n"));
        assert!(has_network_config(&line, "# no MAC\n"));
    }
}
