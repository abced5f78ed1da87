//! The EFI System Partition of `efi` and `cloud` images: systemd-boot, the base's kernel and
//! initrd, and one loader entry that names the root partition by PARTUUID.
//!
//! systemd-boot is installed at the removable-media path (`/EFI/BOOT/BOOTX64.EFI`), so firmware
//! boots it without an NVRAM entry — a fresh VM, a replaced disk or a cloned image all boot the
//! same way, and nothing has to run `bootctl install` on the target.

use crate::profile::Arch;
use crate::tree::{Content, Entry, Kind, Tree, TreePath};

/// Why an ESP could not be made from the base.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EfiError {
    #[error(
        "the base has no kernel: no /boot/vmlinuz-<version> in its root filesystem; use a base with a kernel package installed (linux-image-{arch} on Debian)"
    )]
    NoKernel { arch: &'static str },
    #[error(
        "the base has no initrd for kernel {version}: expected /boot/initrd.img-{version}; install initramfs-tools (or dracut) in the base"
    )]
    NoInitrd { version: String },
    #[error(
        "the base has no systemd-boot EFI binary (looked for {looked}); install systemd-boot-efi in the base"
    )]
    NoBootloader { looked: String },
    #[error("kernel command line argument {0:?} contains white space or a newline")]
    BadCmdline(String),
}

/// The boot loader binary names for an architecture: (systemd-boot file, removable-media name).
fn loader_names(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Amd64 => ("systemd-bootx64.efi", "BOOTX64.EFI"),
        Arch::Arm64 => ("systemd-bootaa64.efi", "BOOTAA64.EFI"),
    }
}

/// Where the kernel and initrd are copied on the ESP.
pub const KERNEL_PATH: &str = "/imgbuild/vmlinuz";
pub const INITRD_PATH: &str = "/imgbuild/initrd.img";
/// The loader entry file.
pub const ENTRY_PATH: &str = "/loader/entries/imgbuild.conf";

/// The kernel found in a root tree.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub version: String,
    pub image: Content,
    pub initrd: Content,
}

/// Finds the newest kernel (`/boot/vmlinuz-<version>`) with its initrd in a root tree.
pub fn find_kernel(root: &Tree, arch: Arch) -> Result<Kernel, EfiError> {
    let boot = TreePath::new("/boot").expect("static path");
    let mut versions: Vec<String> = root
        .children(&boot)
        .filter_map(|(p, _)| {
            let name = std::str::from_utf8(p.file_name()).ok()?;
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    let version = versions.pop().ok_or(EfiError::NoKernel {
        arch: arch.as_str(),
    })?;
    let image =
        file_content(root, &format!("/boot/vmlinuz-{version}")).ok_or(EfiError::NoKernel {
            arch: arch.as_str(),
        })?;
    let initrd = file_content(root, &format!("/boot/initrd.img-{version}")).ok_or_else(|| {
        EfiError::NoInitrd {
            version: version.clone(),
        }
    })?;
    Ok(Kernel {
        version,
        image,
        initrd,
    })
}

/// The content of a regular file, following symlinks inside the tree — in the last component
/// and in intermediate ones (`/lib` → `usr/lib` on merged-/usr systems) — never on the host.
pub fn file_content(root: &Tree, path: &str) -> Option<Content> {
    let p = root.resolve(path.as_bytes())?;
    match &root.get(&p)?.kind {
        Kind::File(c) => Some(c.clone()),
        Kind::Hardlink(target) => match &root.get(target)?.kind {
            Kind::File(c) => Some(c.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Compares kernel version strings the way `sort -V` does for the cases that matter: runs of
/// digits compare numerically, everything else byte-wise.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => x
                .trim_start_matches('0')
                .len()
                .cmp(&y.trim_start_matches('0').len())
                .then_with(|| x.trim_start_matches('0').cmp(y.trim_start_matches('0'))),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// What goes on the ESP besides the seed.
#[derive(Debug, Clone)]
pub struct EspSpec<'a> {
    pub arch: Arch,
    /// Shown in the boot menu.
    pub title: &'a str,
    /// `root=PARTUUID=…` value of the root partition.
    pub root_partuuid: &'a str,
    /// Arguments after `root=… ro rootwait`.
    pub cmdline: &'a [String],
    pub epoch: i64,
}

/// Builds the ESP tree from the base's root tree.
pub fn esp_tree(root: &Tree, spec: &EspSpec<'_>) -> Result<Tree, EfiError> {
    let (sdboot, removable) = loader_names(spec.arch);
    let looked: Vec<String> = ["/usr/lib/systemd/boot/efi", "/lib/systemd/boot/efi"]
        .iter()
        .flat_map(|d| [format!("{d}/{sdboot}.signed"), format!("{d}/{sdboot}")])
        .collect();
    // A signed binary (Secure Boot) is preferred when the base ships one.
    let loader = looked
        .iter()
        .find_map(|p| file_content(root, p))
        .ok_or_else(|| EfiError::NoBootloader {
            looked: looked.join(", "),
        })?;
    let kernel = find_kernel(root, spec.arch)?;
    for a in spec.cmdline {
        if a.is_empty() || a.chars().any(char::is_whitespace) {
            return Err(EfiError::BadCmdline(a.clone()));
        }
    }

    let mut options = vec![
        format!("root=PARTUUID={}", spec.root_partuuid),
        "ro".to_string(),
        "rootwait".to_string(),
    ];
    options.extend(spec.cmdline.iter().cloned());
    let entry = format!(
        "title {}\nversion {}\nlinux {KERNEL_PATH}\ninitrd {INITRD_PATH}\noptions {}\n",
        spec.title,
        kernel.version,
        options.join(" ")
    );
    // No menu, no editor: the node boots its one entry; the editor would let anyone at the
    // console add `init=/bin/sh`.
    let loader_conf = "default imgbuild.conf\ntimeout 0\neditor no\nconsole-mode keep\n";

    let mut esp = Tree::new();
    let dir = Entry::dir(0o755).at(spec.epoch);
    let file = |c: Content| Entry::file(0o644, c).at(spec.epoch);
    let mut put = |path: &str, content: Content| {
        esp.insert_with_parents(
            TreePath::new(path).expect("static path"),
            file(content),
            &dir,
        )
        .expect("a fresh tree has no conflicting entries");
    };
    put(&format!("/EFI/BOOT/{removable}"), loader.clone());
    put(&format!("/EFI/systemd/{sdboot}"), loader);
    put("/loader/loader.conf", Content::bytes(loader_conf));
    put(ENTRY_PATH, Content::bytes(entry));
    put(KERNEL_PATH, kernel.image);
    put(INITRD_PATH, kernel.initrd);
    Ok(esp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(files: &[(&str, &str)], links: &[(&str, &str)]) -> Tree {
        let mut t = Tree::new();
        let d = Entry::dir(0o755);
        for (p, c) in files {
            t.insert_with_parents(
                TreePath::new(p).unwrap(),
                Entry::file(0o644, Content::bytes(*c)),
                &d,
            )
            .unwrap();
        }
        for (p, target) in links {
            t.insert_with_parents(TreePath::new(p).unwrap(), Entry::symlink(*target), &d)
                .unwrap();
        }
        t
    }

    #[test]
    fn newest_kernel_wins_by_version_not_bytes() {
        let t = base(
            &[
                ("/boot/vmlinuz-6.1.0-9-amd64", "old"),
                ("/boot/initrd.img-6.1.0-9-amd64", "old-i"),
                ("/boot/vmlinuz-6.1.0-10-amd64", "new"),
                ("/boot/initrd.img-6.1.0-10-amd64", "new-i"),
            ],
            &[],
        );
        let k = find_kernel(&t, Arch::Amd64).unwrap();
        assert_eq!(k.version, "6.1.0-10-amd64");
        assert_eq!(k.image.read_all().unwrap(), b"new");
    }

    #[test]
    fn missing_pieces_are_named() {
        let t = base(&[], &[]);
        assert_eq!(
            find_kernel(&t, Arch::Amd64).unwrap_err(),
            EfiError::NoKernel { arch: "amd64" }
        );
        let t = base(&[("/boot/vmlinuz-6.1", "k")], &[]);
        assert!(matches!(
            find_kernel(&t, Arch::Amd64),
            Err(EfiError::NoInitrd { .. })
        ));
        let t = base(
            &[("/boot/vmlinuz-6.1", "k"), ("/boot/initrd.img-6.1", "i")],
            &[],
        );
        let spec = EspSpec {
            arch: Arch::Amd64,
            title: "t",
            root_partuuid: "x",
            cmdline: &[],
            epoch: 0,
        };
        let err = esp_tree(&t, &spec).unwrap_err();
        assert!(err.to_string().contains("systemd-boot-efi"), "{err}");
    }

    #[test]
    fn esp_has_loader_entry_with_partuuid() {
        let t = base(
            &[
                ("/boot/vmlinuz-6.1", "k"),
                ("/boot/initrd.img-6.1", "i"),
                ("/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "sd"),
            ],
            &[],
        );
        let cmdline = vec!["console=ttyS0".to_string()];
        let spec = EspSpec {
            arch: Arch::Amd64,
            title: "amd64-worker",
            root_partuuid: "1234-abcd",
            cmdline: &cmdline,
            epoch: 7,
        };
        let esp = esp_tree(&t, &spec).unwrap();
        let get = |p: &str| file_content(&esp, p).unwrap().read_all().unwrap();
        assert_eq!(get("/EFI/BOOT/BOOTX64.EFI"), b"sd");
        let entry = String::from_utf8(get(ENTRY_PATH)).unwrap();
        assert!(
            entry.contains("options root=PARTUUID=1234-abcd ro rootwait console=ttyS0\n"),
            "{entry}"
        );
        assert!(esp.iter().all(|(_, e)| e.mtime == 7 || e.mtime == 0));
    }

    #[test]
    fn symlinks_are_followed_inside_the_tree() {
        let t = base(
            &[("/usr/lib/x/real", "data")],
            &[("/lib", "usr/lib"), ("/usr/lib/x/link", "../x/real")],
        );
        assert_eq!(
            file_content(&t, "/lib/x/link").unwrap().read_all().unwrap(),
            b"data"
        );
    }
}
