//! Which inputs a resolved profile needs, where they come from, and how each is verified the
//! first time (before the lock pins it).
//!
//! | input | name in the lock | default URL | verified by |
//! |---|---|---|---|
//! | base OS | `base/<file name>` | `base.url` or `base.path` | `base.sha256`, else `base.checksums-url` |
//! | k3s | `k3s/<version>/<arch>` | GitHub release `k3s` / `k3s-arm64` | `sha256sum-<arch>.txt` beside it |
//! | airgap images | `k3s-airgap-images/<version>/<arch>` | `k3s-airgap-images-<arch>.tar.zst` | same |
//! | Tailscale | `tailscale/<version>/<arch>` | `pkgs.tailscale.com/stable/tailscale_<v>_<arch>.tgz` | `<url>.sha256` |
//! | ZeroTier | `zerotier/<version>/<arch>` | `download.zerotier.com/debian/bookworm/…/zerotier-one_<v>_<arch>.deb` | the repository's `Packages` index |
//!
//! `k3s.url` and `mesh.url` replace the default URL (`{version}` and `{arch}` are substituted);
//! the checksum file is then looked up next to the replacement in the same way.

use std::path::Path;

use super::FetchError;
use crate::profile::{Arch, MeshProvider, Resolved};

/// What an input is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    Base,
    K3s,
    K3sAirgapImages,
    Tailscale,
    Zerotier,
    /// Debian's `ipxe` package (netboot artifacts only).
    Ipxe,
}

/// How the first download of an input is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The profile states the SHA-256 (`base.sha256`).
    Profile(String),
    /// An upstream checksum list; `file` is the name to look up in it.
    ChecksumFile { url: String, file: String },
    /// A file on the user's own disk: hashed on first use, then pinned by the lock.
    LocalFile,
}

/// One input of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedInput {
    pub name: String,
    pub kind: InputKind,
    /// The URL (or local path) as the lock records it, before mirrors rewrite it.
    pub url: String,
    pub trust: Trust,
}

/// A digest an upstream checksum list gives for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Sha256(String),
    Sha512(String),
}

impl Expected {
    pub fn algorithm(&self) -> &'static str {
        match self {
            Expected::Sha256(_) => "SHA-256",
            Expected::Sha512(_) => "SHA-512",
        }
    }

    pub fn hex(&self) -> &str {
        match self {
            Expected::Sha256(h) | Expected::Sha512(h) => h,
        }
    }
}

fn arch_names(arch: Arch) -> (&'static str, &'static str) {
    // (Debian/Go architecture name, k3s binary suffix)
    match arch {
        Arch::Amd64 => ("amd64", ""),
        Arch::Arm64 => ("arm64", "-arm64"),
    }
}

/// `{version}` and `{arch}` substitution for `k3s.url` / `mesh.url`.
fn substitute(template: &str, version: &str, arch: &str) -> String {
    template
        .replace("{version}", version)
        .replace("{arch}", arch)
}

/// The last path segment of a URL or path (query and fragment dropped).
pub fn file_name(url: &str) -> &str {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    no_query.rsplit('/').next().unwrap_or(no_query)
}

/// The URL of a sibling file in the same folder.
fn sibling(url: &str, name: &str) -> String {
    match url.rfind('/') {
        Some(i) => format!("{}/{name}", &url[..i]),
        None => name.to_string(),
    }
}

/// The inputs `resolved` needs. Relative `base.path` values are resolved against the folder of
/// the profile file that set them (stock profiles: `fallback_dir`).
pub fn plan(resolved: &Resolved, fallback_dir: &Path) -> Result<Vec<PlannedInput>, FetchError> {
    let p = &resolved.profile;
    let (arch, suffix) = arch_names(resolved.arch());
    let mut out = Vec::new();

    match (&p.base.url, &p.base.path) {
        (Some(_), Some(_)) => {
            return Err(FetchError::Plan(
                "base.url and base.path are both set; keep one".into(),
            ));
        }
        (None, None) => {
            return Err(FetchError::Plan(
                "the profile names no base OS: set base.url (or base.path)".into(),
            ));
        }
        (url, path) => {
            let url = match (url, path) {
                (Some(u), _) => u.clone(),
                (None, Some(p)) => resolved
                    .path_for("base.path", p, fallback_dir)
                    .to_string_lossy()
                    .into_owned(),
                (None, None) => unreachable!("handled above"),
            };
            let trust = if let Some(sha) = &p.base.sha256 {
                Trust::Profile(sha.to_ascii_lowercase())
            } else if let Some(sums) = &p.base.checksums_url {
                Trust::ChecksumFile {
                    url: sums.clone(),
                    file: file_name(&url).to_string(),
                }
            } else if super::http::local_path(&url).is_some() {
                Trust::LocalFile
            } else {
                return Err(FetchError::Plan(format!(
                    "base.url {url} has nothing to verify it against: set base.sha256 or \
                     base.checksums-url (the upstream SHA256SUMS / SHA512SUMS / .sha256 file)"
                )));
            };
            out.push(PlannedInput {
                name: format!("base/{}", file_name(&url)),
                kind: InputKind::Base,
                url,
                trust,
            });
        }
    }

    if let Some(version) = &p.k3s.version {
        let encoded = version.replace('+', "%2B");
        let release = format!("https://github.com/k3s-io/k3s/releases/download/{encoded}");
        let url = match &p.k3s.url {
            Some(t) => substitute(t, &encoded, arch),
            None => format!("{release}/k3s{suffix}"),
        };
        let sums = sibling(&url, &format!("sha256sum-{arch}.txt"));
        out.push(PlannedInput {
            name: format!("k3s/{version}/{arch}"),
            kind: InputKind::K3s,
            trust: Trust::ChecksumFile {
                url: sums.clone(),
                file: file_name(&url).to_string(),
            },
            url,
        });
        if p.k3s.airgap_images {
            let file = format!("k3s-airgap-images-{arch}.tar.zst");
            out.push(PlannedInput {
                name: format!("k3s-airgap-images/{version}/{arch}"),
                kind: InputKind::K3sAirgapImages,
                url: sibling(&sums, &file),
                trust: Trust::ChecksumFile { url: sums, file },
            });
        }
    }

    let mesh_version = || {
        p.mesh.version.clone().ok_or_else(|| {
            FetchError::Plan(format!(
                "mesh.provider = \"{}\" needs mesh.version (the agent release to pin)",
                p.mesh.provider
            ))
        })
    };
    match p.mesh.provider {
        MeshProvider::None => {}
        MeshProvider::Tailscale => {
            let v = mesh_version()?;
            let url = match &p.mesh.url {
                Some(t) => substitute(t, &v, arch),
                None => format!("https://pkgs.tailscale.com/stable/tailscale_{v}_{arch}.tgz"),
            };
            out.push(PlannedInput {
                name: format!("tailscale/{v}/{arch}"),
                kind: InputKind::Tailscale,
                trust: Trust::ChecksumFile {
                    url: format!("{url}.sha256"),
                    file: file_name(&url).to_string(),
                },
                url,
            });
        }
        MeshProvider::Zerotier => {
            let v = mesh_version()?;
            let repo = "https://download.zerotier.com/debian/bookworm";
            let url = match &p.mesh.url {
                Some(t) => substitute(t, &v, arch),
                None => format!("{repo}/pool/main/z/zerotier-one/zerotier-one_{v}_{arch}.deb"),
            };
            // The apt index lists every .deb of the repository with its SHA-256.
            let index = match url.find("/pool/") {
                Some(i) => format!("{}/dists/bookworm/main/binary-{arch}/Packages", &url[..i]),
                None => format!("{repo}/dists/bookworm/main/binary-{arch}/Packages"),
            };
            out.push(PlannedInput {
                name: format!("zerotier/{v}/{arch}"),
                kind: InputKind::Zerotier,
                trust: Trust::ChecksumFile {
                    url: index,
                    file: file_name(&url).to_string(),
                },
                url,
            });
        }
    }
    Ok(out)
}

/// Debian's `ipxe` package: the iPXE boot loaders a netboot artifact set ships. One pinned
/// release (bookworm's), verified by the archive's `Packages` index; `--mirror` points both at a
/// local mirror.
pub const IPXE_DEB: &str =
    "https://deb.debian.org/debian/pool/main/i/ipxe/ipxe_1.0.0+git-20190125.36a4c85-5.1_all.deb";
pub const IPXE_PACKAGES: &str =
    "https://deb.debian.org/debian/dists/bookworm/main/binary-all/Packages.xz";

/// The iPXE input of a netboot build. Debian packages iPXE for x86 clients only (BIOS and x64
/// UEFI), so arm64 profiles get none.
pub fn plan_ipxe(resolved: &Resolved) -> Option<PlannedInput> {
    (resolved.arch() == Arch::Amd64).then(|| PlannedInput {
        name: "ipxe/1.0.0+git-20190125.36a4c85-5.1".into(),
        kind: InputKind::Ipxe,
        url: IPXE_DEB.into(),
        trust: Trust::ChecksumFile {
            url: IPXE_PACKAGES.into(),
            file: file_name(IPXE_DEB).into(),
        },
    })
}

/// Finds `file` in an upstream checksum list: `sha256sum`/`sha512sum` output (`<hex>  name`,
/// `<hex> *name`), a bare digest (Tailscale's `.sha256`), or a Debian `Packages` index
/// (`Filename:` + `SHA256:` stanzas). Names match on their last path component.
pub fn find_checksum(text: &str, file: &str) -> Option<Expected> {
    let classify = |h: &str| {
        let h = h.to_ascii_lowercase();
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        match h.len() {
            64 => Some(Expected::Sha256(h)),
            128 => Some(Expected::Sha512(h)),
            _ => None,
        }
    };
    if text.lines().any(|l| l.starts_with("Package:")) {
        for stanza in text.split("\n\n") {
            let field = |k: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(str::trim))
            };
            if field("Filename:").is_some_and(|f| file_name(f) == file)
                && let Some(h) = field("SHA256:")
            {
                return classify(h);
            }
        }
        return None;
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if let [only] = lines.as_slice()
        && !only.contains(char::is_whitespace)
    {
        return classify(only);
    }
    for l in lines {
        let Some((hash, name)) = l.split_once(char::is_whitespace) else {
            continue;
        };
        let name = name.trim_start().trim_start_matches('*');
        if file_name(name) == file {
            return classify(hash);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileStore;

    #[test]
    fn checksum_formats() {
        let a = "a".repeat(64);
        let b = "B".repeat(128);
        let sums = format!("{a}  k3s\n{a}  k3s-airgap-images-amd64.tar\n{a} *./sub/k3s-arm64\n");
        assert_eq!(
            find_checksum(&sums, "k3s"),
            Some(Expected::Sha256(a.clone()))
        );
        assert_eq!(
            find_checksum(&sums, "k3s-arm64"),
            Some(Expected::Sha256(a.clone()))
        );
        assert_eq!(find_checksum(&sums, "k3s-arm"), None);
        let sha512 = format!("{b}  debian-13-generic-amd64.raw\n");
        assert_eq!(
            find_checksum(&sha512, "debian-13-generic-amd64.raw"),
            Some(Expected::Sha512(b.to_ascii_lowercase()))
        );
        assert_eq!(
            find_checksum(&format!("{a}\n"), "x.tgz"),
            Some(Expected::Sha256(a.clone()))
        );
        assert_eq!(find_checksum("not-a-hash\n", "x"), None);
        let packages = format!(
            "Package: zerotier-one\nVersion: 1.14.2\nFilename: pool/main/z/zerotier-one/zerotier-one_1.14.2_arm64.deb\nSHA256: {a}\n\nPackage: other\nFilename: pool/o.deb\nSHA256: {}\n",
            "c".repeat(64)
        );
        assert_eq!(
            find_checksum(&packages, "zerotier-one_1.14.2_arm64.deb"),
            Some(Expected::Sha256(a))
        );
        assert_eq!(find_checksum(&packages, "missing.deb"), None);
    }

    #[test]
    fn stock_pi_worker_plan() {
        let r = ProfileStore::stock_only()
            .resolve("pi-worker", &[])
            .unwrap();
        let plan = plan(&r, Path::new(".")).unwrap();
        let names: Vec<&str> = plan.iter().map(|i| i.name.as_str()).collect();
        let version = r.profile.k3s.version.clone().unwrap();
        assert_eq!(names[1], format!("k3s/{version}/arm64"));
        assert!(names[0].starts_with("base/") && names[0].ends_with(".img.xz"));
        let k3s = &plan[1];
        assert_eq!(
            k3s.url,
            format!(
                "https://github.com/k3s-io/k3s/releases/download/{}/k3s-arm64",
                version.replace('+', "%2B")
            )
        );
        assert!(matches!(&k3s.trust, Trust::ChecksumFile { url, file }
            if url.ends_with("/sha256sum-arm64.txt") && file == "k3s-arm64"));
        let ts = plan
            .iter()
            .find(|i| i.kind == InputKind::Tailscale)
            .unwrap();
        assert!(
            ts.url
                .starts_with("https://pkgs.tailscale.com/stable/tailscale_")
        );
        assert!(ts.url.ends_with("_arm64.tgz"));
    }
}
