//! Pinned downloads: HTTP/file fetch with resume, the content-addressed cache, the lockfile.
//!
//! [`resolve_inputs`] is what a build calls: it works out the inputs of a resolved profile
//! ([`plan`]), and for each one returns a verified file in the cache. The rules:
//!
//! * An input pinned by the lock (same name, same URL) is taken from the cache by its SHA-256,
//!   or downloaded and checked against that SHA-256.
//! * An input the lock does not pin yet is verified against its upstream checksum file (or the
//!   profile's `base.sha256`), then pinned: its URL, size and the SHA-256 we computed go into
//!   the lock. With `--locked` that is an error instead (CI must not change the lock).
//! * `--offline` never opens a connection: pinned inputs must be in the cache.
//! * Nothing enters the cache before its hash matched; a mismatch names the input, the expected
//!   and the actual hash, and leaves the cache as it was.

pub mod cache;
pub mod http;
pub mod lock;
pub mod plan;
pub mod xzblocks;

use std::path::{Path, PathBuf};

pub use cache::Cache;
pub use lock::{Lock, LockEntry};
pub use plan::{Expected, InputKind, PlannedInput, Trust};

use crate::progress::Progress;

/// Everything that can go wrong getting an input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("{0}")]
    HashMismatch(Box<Mismatch>),
    #[error("{input}: {url} answered HTTP {status}; check the URL (or the version in the profile)")]
    Status {
        input: String,
        url: String,
        status: u16,
    },
    #[error(
        "{input}: downloading {url} failed after {attempts} attempts: {last}\n  help: {}",
        network_help(.last)
    )]
    Network {
        input: String,
        url: String,
        attempts: u32,
        last: String,
    },
    #[error(
        "{input}: {url} uses a scheme imgbuild cannot fetch (use https://, http://, file:// or a path)"
    )]
    Scheme { input: String, url: String },
    #[error(
        "{input}: --offline, and the download cache ({cache}) does not hold {what}; \
         run once without --offline (or copy the cache from a connected machine)"
    )]
    Offline {
        input: String,
        what: String,
        cache: PathBuf,
    },
    #[error(
        "{input}: {why}, and --locked forbids changing the lock; run `imgbuild lock` and commit imgbuild.lock"
    )]
    Locked { input: String, why: String },
    #[error(
        "{input}: the checksum file {checksums} does not list {file}; check base.checksums-url / the version"
    )]
    NotListed {
        input: String,
        checksums: String,
        file: String,
    },
    #[error("{input}: {what} is {actual} bytes, but the lock says {expected}")]
    Size {
        input: String,
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("lockfile {path}: {why}")]
    LockFile { path: String, why: String },
    #[error("{0}")]
    Plan(String),
    #[error(
        "invalid mirror {0:?}: write FROM=TO where TO is an http(s):// or file:// URL (no spaces, quotes or backticks), e.g. https://github.com/=http://mirror.lan/github/"
    )]
    Mirror(String),
    #[error("setting up the HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    TooLarge(crate::unpack::TooLarge),
    #[error("decompressing {path}: {source} (the file is truncated or corrupt)")]
    Decompress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Downloaded bytes whose hash is not the expected one.
#[derive(Debug, thiserror::Error)]
#[error(
    "{input}: {algorithm} mismatch for {url}\n  expected: {expected} ({from})\n  actual:   {actual}\n\
     the download was discarded and the cache is unchanged; if upstream republished the file, \
     run `imgbuild lock --update {input}`"
)]
pub struct Mismatch {
    pub input: String,
    pub url: String,
    pub algorithm: &'static str,
    pub expected: String,
    pub actual: String,
    pub from: String,
}

/// What to do when a download could not reach its server (as a new user offline would see it).
fn network_help(last: &str) -> &'static str {
    let unreachable = [
        "dns error",
        "Name or service not known",
        "failed to lookup",
        "Connection refused",
        "timed out",
        "Network is unreachable",
        "No route to host",
    ]
    .iter()
    .any(|s| last.contains(s));
    if unreachable {
        "the server could not be reached: check the network (or a proxy); or fetch from elsewhere with --mirror FROM=TO, point base.path at a file you downloaded by hand, or build with --offline from a cache that already holds every input (`imgbuild cache ls`)"
    } else {
        "try again; if it keeps failing, fetch from elsewhere with --mirror FROM=TO or point base.path at a local copy"
    }
}

/// Download options shared by `build` and `lock`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FetchArgs {
    /// Download cache [default: $XDG_CACHE_HOME/imgbuild, else ~/.cache/imgbuild].
    #[arg(long, env = "IMGBUILD_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Use only the download cache; never touch the network.
    #[arg(long)]
    pub offline: bool,
    /// Refuse to add or change entries of imgbuild.lock (for CI).
    #[arg(long)]
    pub locked: bool,
    #[command(flatten)]
    pub lockfile: LockfileArg,
}

/// URL rewrites, for every command that downloads or hands out download URLs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MirrorArgs {
    /// Rewrite URLs that start with FROM to start with TO instead (repeatable; also
    /// IMGBUILD_MIRROR, comma- or space-separated). The lock keeps the original URLs.
    #[arg(long, value_name = "FROM=TO")]
    pub mirror: Vec<String>,
}

impl MirrorArgs {
    /// `IMGBUILD_MIRROR` first, then every `--mirror`; read here and nowhere else.
    pub fn mirrors(&self) -> Result<Mirrors, FetchError> {
        let env = std::env::var("IMGBUILD_MIRROR").unwrap_or_default();
        Mirrors::parse(std::iter::once(env.as_str()).chain(self.mirror.iter().map(String::as_str)))
    }
}

/// Which lockfile pins the inputs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LockfileArg {
    /// The lockfile [default: imgbuild.lock next to the profiles folder].
    #[arg(long, alias = "lock", value_name = "FILE")]
    pub lockfile: Option<PathBuf>,
}

impl LockfileArg {
    /// The lockfile: `--lockfile`, else `imgbuild.lock` in the folder that holds `profiles_dir`.
    pub fn path(&self, profiles_dir: &Path) -> PathBuf {
        if let Some(p) = &self.lockfile {
            return p.clone();
        }
        let parent = profiles_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        parent.join("imgbuild.lock")
    }
}

impl FetchArgs {
    /// The lockfile these options select.
    pub fn lock_path(&self, profiles_dir: &Path) -> PathBuf {
        self.lockfile.path(profiles_dir)
    }

    /// The cache folder these options select.
    pub fn cache_dir(&self) -> Result<PathBuf, FetchError> {
        self.cache_dir
            .clone()
            .or_else(Cache::default_dir)
            .ok_or_else(|| {
                FetchError::Plan(
                    "no cache folder: HOME and XDG_CACHE_HOME are unset; pass --cache-dir".into(),
                )
            })
    }
}

/// URL prefix rewrites, longest `from` first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrors(Vec<(String, String)>);

impl Mirrors {
    /// Parses `FROM=TO` items; each item of `env` may itself hold several, split on commas and
    /// whitespace.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Mirrors, FetchError> {
        let mut v = Vec::new();
        for item in items {
            for one in item.split([',', ' ', '\t', '\n']).filter(|s| !s.is_empty()) {
                match one.split_once('=') {
                    Some((from, to))
                        if !from.is_empty()
                            && crate::profile::is_url(to, &["https", "http", "file"]) =>
                    {
                        v.push((from.to_string(), to.to_string()));
                    }
                    _ => return Err(FetchError::Mirror(one.to_string())),
                }
            }
        }
        // Longest prefix wins; ties keep the order given.
        v.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        Ok(Mirrors(v))
    }

    /// The URL to actually fetch.
    pub fn rewrite(&self, url: &str) -> String {
        for (from, to) in &self.0 {
            if let Some(rest) = url.strip_prefix(from.as_str()) {
                return format!("{to}{rest}");
            }
        }
        url.to_string()
    }
}

/// Gets inputs into the cache.
pub struct Fetcher {
    pub cache: Cache,
    pub mirrors: Mirrors,
    pub offline: bool,
    pub transport: http::Transport,
}

/// An input ready to read: a verified file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedInput {
    pub name: String,
    pub kind: InputKind,
    /// The URL as pinned (before mirrors).
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub path: PathBuf,
}

impl Fetcher {
    pub fn new(cache: Cache, mirrors: Mirrors, offline: bool, progress: Progress) -> Self {
        Fetcher {
            cache,
            mirrors,
            offline,
            transport: http::Transport::new(progress),
        }
    }

    /// From command-line options and `IMGBUILD_MIRROR`.
    pub fn from_args(args: &FetchArgs, progress: Progress) -> Result<Fetcher, FetchError> {
        let mirrors = args.mirror.mirrors()?;
        let cache = Cache::open(args.cache_dir()?)?;
        Ok(Fetcher::new(cache, mirrors, args.offline, progress))
    }

    /// Downloads `url` (through the mirrors) and checks it against `expected`; on success the
    /// bytes become a cache blob. On a mismatch nothing is kept.
    pub fn fetch_verified(
        &self,
        input: &str,
        url: &str,
        expected: Option<&Expected>,
        from: &str,
    ) -> Result<(String, u64, PathBuf), FetchError> {
        let real = self.mirrors.rewrite(url);
        if self.offline && http::local_path(&real).is_none() {
            return Err(FetchError::Offline {
                input: input.to_string(),
                what: format!("a copy of {url}"),
                cache: self.cache.root().to_path_buf(),
            });
        }
        let want512 = matches!(expected, Some(Expected::Sha512(_)));
        let partial = self.cache.partial_path(&real);
        let tmp_dir = self.cache.root().join("tmp");
        let got = self
            .transport
            .download(input, &real, &partial, &tmp_dir, want512)?;
        let actual = match expected {
            Some(Expected::Sha512(_)) => got.sha512.clone().unwrap_or_default(),
            _ => got.sha256.clone(),
        };
        if let Some(exp) = expected
            && actual != exp.hex()
        {
            // A wrong file must not be resumed or reused.
            let _ = std::fs::remove_file(&got.path);
            return Err(FetchError::HashMismatch(Box::new(Mismatch {
                input: input.to_string(),
                url: real,
                algorithm: exp.algorithm(),
                expected: exp.hex().to_string(),
                actual,
                from: from.to_string(),
            })));
        }
        let path = self.cache.insert(&got.path, &got.sha256)?;
        Ok((got.sha256, got.size, path))
    }
}

/// Which lock entries `imgbuild lock --update` re-verifies from upstream.
#[derive(Debug, Clone, Copy)]
pub enum Refresh<'a> {
    None,
    All,
    /// One input: its full name or a prefix ending before a `/` (`k3s`, `base`).
    Only(&'a str),
}

impl Refresh<'_> {
    fn covers(&self, name: &str) -> bool {
        match self {
            Refresh::None => false,
            Refresh::All => true,
            Refresh::Only(sel) => {
                name == *sel
                    || name
                        .strip_prefix(sel)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }
}

/// The `planned` inputs, verified and in the cache, pinning new ones in `lock`; the entries
/// `refresh` selects are verified again.
pub fn resolve_planned(
    planned: &[PlannedInput],
    lock: &mut Lock,
    fetcher: &Fetcher,
    locked: bool,
    refresh: Refresh<'_>,
) -> Result<Vec<FetchedInput>, FetchError> {
    if let Refresh::Only(sel) = refresh
        && !planned.iter().any(|p| refresh.covers(&p.name))
    {
        let names: Vec<&str> = planned.iter().map(|p| p.name.as_str()).collect();
        return Err(FetchError::Plan(format!(
            "no input named {sel:?}; the inputs are: {}",
            names.join(", ")
        )));
    }
    planned
        .iter()
        .map(|p| resolve_one(p, lock, fetcher, locked, refresh.covers(&p.name)))
        .collect()
}

fn resolve_one(
    p: &PlannedInput,
    lock: &mut Lock,
    fetcher: &Fetcher,
    locked: bool,
    refresh: bool,
) -> Result<FetchedInput, FetchError> {
    let done = |sha256: String, size: u64, path: PathBuf| FetchedInput {
        name: p.name.clone(),
        kind: p.kind,
        url: p.url.clone(),
        sha256,
        size,
        path,
    };
    let pinned = lock.get(&p.name).filter(|e| e.url == p.url).cloned();
    if let Some(e) = pinned.as_ref().filter(|_| !refresh) {
        if let Some(path) = fetcher.cache.get(&e.sha256) {
            return Ok(done(e.sha256.clone(), e.size, path));
        }
        if fetcher.offline && http::local_path(&fetcher.mirrors.rewrite(&p.url)).is_none() {
            return Err(FetchError::Offline {
                input: p.name.clone(),
                what: format!("its pinned SHA-256 {}", e.sha256),
                cache: fetcher.cache.root().to_path_buf(),
            });
        }
        let expected = Expected::Sha256(e.sha256.clone());
        let (sha, size, path) =
            fetcher.fetch_verified(&p.name, &p.url, Some(&expected), "imgbuild.lock")?;
        if size != e.size {
            return Err(FetchError::Size {
                input: p.name.clone(),
                what: p.url.clone(),
                expected: e.size,
                actual: size,
            });
        }
        return Ok(done(sha, size, path));
    }

    if locked {
        let why = match lock.get(&p.name) {
            None => "imgbuild.lock has no entry for it".to_string(),
            Some(e) if e.url != p.url => {
                format!(
                    "imgbuild.lock pins {} but the profile now says {}",
                    e.url, p.url
                )
            }
            Some(_) => "an update was asked for".to_string(),
        };
        return Err(FetchError::Locked {
            input: p.name.clone(),
            why,
        });
    }

    let (expected, from) = match &p.trust {
        Trust::Profile(sha) => (
            Some(Expected::Sha256(sha.clone())),
            "base.sha256".to_string(),
        ),
        Trust::LocalFile => (None, "first-use".to_string()),
        Trust::ChecksumFile { url, file } => {
            if fetcher.offline {
                return Err(FetchError::Offline {
                    input: p.name.clone(),
                    what: format!("a lock entry, and verifying it needs {url}"),
                    cache: fetcher.cache.root().to_path_buf(),
                });
            }
            let text = fetcher
                .transport
                .get_text(&p.name, &fetcher.mirrors.rewrite(url))?;
            let exp = plan::find_checksum(&text, file).ok_or_else(|| FetchError::NotListed {
                input: p.name.clone(),
                checksums: url.clone(),
                file: file.clone(),
            })?;
            (Some(exp), url.clone())
        }
    };
    let (sha, size, path) = match expected.as_ref().and_then(|e| match e {
        Expected::Sha256(h) => fetcher.cache.get(h).map(|p| (h.clone(), p)),
        Expected::Sha512(_) => None,
    }) {
        Some((sha, path)) => {
            let size = std::fs::metadata(&path)
                .map_err(|source| FetchError::Io {
                    path: path.clone(),
                    source,
                })?
                .len();
            (sha, size, path)
        }
        None => fetcher.fetch_verified(&p.name, &p.url, expected.as_ref(), &from)?,
    };
    lock.set(
        &p.name,
        LockEntry {
            url: p.url.clone(),
            size,
            sha256: sha.clone(),
            verified_by: Some(from),
        },
    );
    Ok(done(sha, size, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_rewrite_longest_prefix() {
        let m = Mirrors::parse([
            "https://github.com/=http://m/gh/, https://github.com/k3s-io/=http://m/k3s/",
            "https://a/=file:///srv/a/",
        ])
        .unwrap();
        assert_eq!(
            m.rewrite("https://github.com/k3s-io/k3s"),
            "http://m/k3s/k3s"
        );
        assert_eq!(m.rewrite("https://github.com/x"), "http://m/gh/x");
        assert_eq!(m.rewrite("https://a/b"), "file:///srv/a/b");
        assert_eq!(m.rewrite("https://other/"), "https://other/");
        assert!(Mirrors::parse(["nothing"]).is_err());
        assert!(Mirrors::parse(["=x"]).is_err());
        assert_eq!(Mirrors::parse([""]).unwrap(), Mirrors::default());
    }

    #[test]
    fn refresh_selects_by_name_or_prefix() {
        assert!(Refresh::Only("k3s").covers("k3s/v1/arm64"));
        assert!(!Refresh::Only("k3s").covers("k3s-airgap-images/v1/arm64"));
        assert!(Refresh::Only("base/x.img").covers("base/x.img"));
        assert!(Refresh::All.covers("anything"));
        assert!(!Refresh::None.covers("anything"));
    }

    #[test]
    fn lock_path_is_beside_the_profiles_folder() {
        let a = FetchArgs::default();
        assert_eq!(
            a.lock_path(Path::new("profiles")),
            PathBuf::from("./imgbuild.lock")
        );
        assert_eq!(
            a.lock_path(Path::new("/srv/x/profiles")),
            PathBuf::from("/srv/x/imgbuild.lock")
        );
    }

    #[test]
    fn an_unreachable_server_says_what_to_do() {
        let e = FetchError::Network {
            input: "base".into(),
            url: "https://downloads.raspberrypi.com/x.img.xz".into(),
            attempts: 4,
            last: "error sending request: client error (Connect): dns error: failed to lookup address information: Name or service not known".into(),
        };
        let msg = e.to_string();
        for want in [
            "downloading https://downloads.raspberrypi.com/x.img.xz failed",
            "check the network",
            "--mirror",
            "base.path",
            "--offline",
        ] {
            assert!(msg.contains(want), "{want}: {msg}");
        }
    }

    #[test]
    fn mirrors_must_point_at_urls() {
        let m = Mirrors::parse(["https://github.com/=http://mirror.lan/gh/"]).unwrap();
        assert_eq!(m.rewrite("https://github.com/a"), "http://mirror.lan/gh/a");
        for bad in [
            "https://github.com/=http://x/$(id)`x`",
            "https://github.com/=http://x/\"",
            "https://github.com/=/no/scheme",
            "https://github.com/=",
            "=http://x/",
        ] {
            assert!(Mirrors::parse([bad]).is_err(), "{bad}");
        }
    }
}
