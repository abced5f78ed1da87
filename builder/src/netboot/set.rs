//! Reading a profile's netboot artifact set, `images/<profile>/netboot/netboot.json`, for serving:
//!
//! ```json
//! { "profile": "pc-node", "arch": "amd64",
//!   "kernel": "vmlinuz", "initrds": ["initrd.img", "imgbuild.cpio"],
//!   "cmdline": "ro console=ttyS0 imgbuild.root=${base}/root.squashfs imgbuild.root-sha256=<hex>",
//!   "files": [ { "name": "vmlinuz", "size": 123, "sha256": "<hex>" } ],
//!   "ipxe": { "bios": "ipxe/undionly.kpxe", "efi-x64": "ipxe/snponly.efi" } }
//! ```
//!
//! Every listed file must be a regular file inside the folder (symlinks are resolved and must stay
//! inside), of the listed size and SHA-256; nothing unlisted is ever served.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use imgbuild_netboot::Artifact;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The file name inside the artifact folder.
pub const MANIFEST: &str = "netboot.json";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SetFile {
    pub profile: String,
    pub arch: String,
    pub kernel: String,
    #[serde(default)]
    pub initrds: Vec<String>,
    pub cmdline: String,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub ipxe: BTreeMap<String, String>,
    /// The Raspberry Pi TFTP tree (`pi/`), for a Pi profile.
    #[serde(default)]
    pub pi: Option<PiSet>,
}

/// `pi`: shared file names under `pi/`, files of the set served in the Pi folders, and node
/// folders → node names.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PiSet {
    pub shared: Vec<String>,
    #[serde(default)]
    pub set_files: Vec<String>,
    pub nodes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// An artifact set checked against the disk.
#[derive(Debug, Clone)]
pub struct ArtifactSet {
    pub manifest: SetFile,
    /// Listed name → the checked file.
    pub files: BTreeMap<String, Artifact>,
}

/// What is wrong with an artifact set; `file` is the manifest (or the artifact) it is about.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error(
        "{file}: no netboot artifacts for profile {profile}\n  help: build them with `imgbuild netboot build {profile}`"
    )]
    Missing { file: String, profile: String },
    #[error(
        "{file}:{line}:{column}: {message}\n  help: rebuild the set with `imgbuild netboot build {profile}`"
    )]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
        profile: String,
    },
    #[error("{file}: {message}\n  help: rebuild the set with `imgbuild netboot build {profile}`")]
    Invalid {
        file: String,
        message: String,
        profile: String,
    },
    #[error("reading {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
}

impl ArtifactSet {
    /// Reads and checks the set in `dir` (`images/<profile>/netboot`), hashing every file.
    pub fn load(dir: &Path, profile: &str) -> Result<ArtifactSet, SetError> {
        let mpath = dir.join(MANIFEST);
        let shown = mpath.display().to_string();
        let text = match std::fs::read_to_string(&mpath) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SetError::Missing {
                    file: shown,
                    profile: profile.into(),
                });
            }
            Err(source) => {
                return Err(SetError::Io {
                    file: shown,
                    source,
                });
            }
        };
        let manifest: SetFile = serde_json::from_str(&text).map_err(|e| SetError::Syntax {
            file: shown.clone(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
            profile: profile.into(),
        })?;
        let invalid = |message: String| SetError::Invalid {
            file: shown.clone(),
            message,
            profile: profile.into(),
        };
        if manifest.profile != profile {
            return Err(invalid(format!(
                "it is the set of profile {:?}, not {profile:?}",
                manifest.profile
            )));
        }
        check_references(&manifest).map_err(invalid)?;
        let root = dir.canonicalize().map_err(|source| SetError::Io {
            file: dir.display().to_string(),
            source,
        })?;
        let mut files = BTreeMap::new();
        for f in &manifest.files {
            let a = check_file(&root, f).map_err(|m| invalid(format!("file {:?}: {m}", f.name)))?;
            files.insert(f.name.clone(), a);
        }
        Ok(ArtifactSet { manifest, files })
    }
}

/// Names are clean relative paths, listed once; kernel, initrds and iPXE binaries are listed files.
fn check_references(m: &SetFile) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for f in &m.files {
        let clean = imgbuild_netboot::tftp::path::check(f.name.as_bytes())
            .map_err(|e| format!("file name {:?} is not allowed: {e}", f.name))?;
        if clean != f.name {
            return Err(format!(
                "file name {:?} is not in its plain form {clean:?}",
                f.name
            ));
        }
        if !names.insert(f.name.as_str()) {
            return Err(format!("file {:?} is listed twice", f.name));
        }
        if f.sha256.len() != 64
            || !f
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "file {:?}: sha256 {:?} is not 64 lower-case hex digits",
                f.name, f.sha256
            ));
        }
    }
    let listed = |what: &str, n: &str| {
        if names.contains(n) {
            Ok(())
        } else {
            Err(format!("{what} {n:?} is not in \"files\""))
        }
    };
    listed("kernel", &m.kernel)?;
    let mut bases = std::collections::BTreeSet::new();
    for i in &m.initrds {
        listed("initrd", i)?;
        // The UEFI stub and iPXE tell initrds apart by their last name component.
        if !bases.insert(i.rsplit('/').next().unwrap_or(i)) {
            return Err(format!(
                "two initrds are called {:?}",
                i.rsplit('/').next().unwrap_or(i)
            ));
        }
    }
    for (k, v) in &m.ipxe {
        if !IPXE_KEYS.contains(&k.as_str()) {
            return Err(format!(
                "unknown iPXE key {k:?} (known: {})",
                IPXE_KEYS.join(", ")
            ));
        }
        listed(&format!("iPXE binary {k}"), v)?;
    }
    if let Some(pi) = &m.pi {
        for f in &pi.shared {
            listed("Pi file", &format!("{}/{f}", super::pitree::PI_DIR))?;
        }
        for f in &pi.set_files {
            listed("Pi folder file", f)?;
        }
        for folder in pi.nodes.keys() {
            if folder.len() != 8 || !folder.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("Pi node folder {folder:?} is not 8 hex digits"));
            }
            listed("Pi node file", &pi_node_file(folder))?;
        }
    }
    imgbuild_netboot::ipxe::check_cmdline(&m.cmdline).map_err(|e| format!("cmdline: {e}"))
}

/// `pi/<folder>/cmdline.txt`, the one file of a Pi node's own.
pub fn pi_node_file(folder: &str) -> String {
    use super::pitree::{CMDLINE, PI_DIR};
    format!("{PI_DIR}/{folder}/{CMDLINE}")
}

/// The iPXE keys `imgbuild netboot build` writes; `efi-x64-ipxe` (ipxe.efi, iPXE's own drivers)
/// is served under its name in the set only, for firmware whose network driver iPXE cannot use.
pub const IPXE_KEYS: &[&str] = &["bios", "efi-x64", "efi-x64-ipxe", "efi-arm64"];

fn check_file(root: &Path, f: &FileEntry) -> Result<Artifact, String> {
    let path: PathBuf = root.join(&f.name);
    let real = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !real.starts_with(root) {
        return Err(format!(
            "{} leads outside the artifact folder (to {}); refusing to serve it",
            path.display(),
            real.display()
        ));
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", real.display()));
    }
    if meta.len() != f.size {
        return Err(format!(
            "{} is {} bytes, the set says {}",
            real.display(),
            meta.len(),
            f.size
        ));
    }
    let sum = sha256_file(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if sum != f.sha256 {
        return Err(format!(
            "{} has SHA-256 {sum}, the set says {}",
            real.display(),
            f.sha256
        ));
    }
    Ok(Artifact {
        path: real,
        size: f.size,
        sha256: f.sha256.clone(),
    })
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> SetFile {
        let f = |n: &str| FileEntry {
            name: n.into(),
            size: 1,
            sha256: "ab".repeat(32),
        };
        SetFile {
            profile: "pc".into(),
            arch: "amd64".into(),
            kernel: "vmlinuz".into(),
            initrds: vec!["initrd.img".into(), "x/imgbuild.cpio".into()],
            cmdline: "ro imgbuild.root=${base}/root.squashfs".into(),
            files: [
                "vmlinuz",
                "initrd.img",
                "x/imgbuild.cpio",
                "ipxe/undionly.kpxe",
            ]
            .map(f)
            .to_vec(),
            ipxe: [("bios".to_string(), "ipxe/undionly.kpxe".to_string())].into(),
            pi: None,
        }
    }

    #[test]
    fn references_must_be_listed_and_clean() {
        assert_eq!(check_references(&set()), Ok(()));
        let bad = |edit: fn(&mut SetFile), want: &str| {
            let mut s = set();
            edit(&mut s);
            let err = check_references(&s).unwrap_err();
            assert!(err.contains(want), "{err}");
        };
        bad(
            |s| s.kernel = "bzImage".into(),
            "kernel \"bzImage\" is not in \"files\"",
        );
        bad(|s| s.files[0].name = "../vmlinuz".into(), "is not allowed");
        bad(
            |s| s.files[0].name = "./vmlinuz".into(),
            "not in its plain form",
        );
        bad(
            |s| s.files[1].sha256 = "AB".repeat(32),
            "not 64 lower-case hex",
        );
        bad(|s| s.files.push(s.files[0].clone()), "listed twice");
        bad(
            |s| s.initrds.push("initrd.img".into()),
            "two initrds are called",
        );
        bad(
            |s| {
                s.ipxe.insert("efi-ia32".into(), "vmlinuz".into());
            },
            "unknown iPXE key",
        );
        bad(|s| s.cmdline.push_str(" x=${y}"), "cmdline:");
    }
}
