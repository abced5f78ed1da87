//! Getting bytes: HTTP(S) with retries and resume, `file://` URLs and plain paths.
//!
//! Every byte passes through the hashers on its way to a temporary file in the cache; the caller
//! checks the digests before the file becomes a cache blob. An interrupted HTTP download is kept
//! as a `.part` file (named by the URL) and resumed with a `Range` request; the server's
//! `Content-Range` must start exactly where the partial file ends, otherwise the download starts
//! over, so a server that ignores or misreads Range can never splice wrong bytes in.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest as _, Sha256, Sha512};

use super::FetchError;
use super::cache::BUF;
use crate::progress::Progress;

/// SHA-256 always (the cache key and the lock), SHA-512 when an upstream checksum file lists
/// SHA-512 (Debian's `SHA512SUMS`).
#[derive(Clone)]
pub struct Hashers {
    pub sha256: Sha256,
    pub sha512: Option<Sha512>,
}

impl Hashers {
    pub fn new(want_sha512: bool) -> Self {
        Hashers {
            sha256: Sha256::new(),
            sha512: want_sha512.then(Sha512::new),
        }
    }

    fn update(&mut self, b: &[u8]) {
        self.sha256.update(b);
        if let Some(h) = &mut self.sha512 {
            h.update(b);
        }
    }

    /// (SHA-256 hex, SHA-512 hex if asked for).
    pub fn finish(self) -> (String, Option<String>) {
        (
            hex::encode(self.sha256.finalize()),
            self.sha512.map(|h| hex::encode(h.finalize())),
        )
    }
}

/// A finished transfer: the bytes are in `path` (a file in the cache's `tmp/`).
pub struct Downloaded {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub sha512: Option<String>,
}

/// Retry policy and the lazily built HTTP client.
pub struct Transport {
    client: OnceLock<Result<reqwest::blocking::Client, String>>,
    pub attempts: u32,
    pub backoff: Duration,
    pub progress: Progress,
}

/// Is this URL fetched over HTTP(S)?
pub fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// The local path of a `file://` URL or a plain path; `None` for HTTP(S) and other schemes.
pub fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        // file:///abs/path (empty host) or file://localhost/abs/path.
        let rest = rest.strip_prefix("localhost").unwrap_or(rest);
        return Some(PathBuf::from(percent_decode(rest)));
    }
    if url.contains("://") {
        return None;
    }
    Some(PathBuf::from(url))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Why one attempt failed, and whether another may help.
enum Attempt {
    Retry(String),
    Fatal(FetchError),
}

impl Transport {
    pub fn new(progress: Progress) -> Self {
        Transport {
            client: OnceLock::new(),
            attempts: 5,
            backoff: Duration::from_millis(500),
            progress,
        }
    }

    fn client(&self) -> Result<&reqwest::blocking::Client, FetchError> {
        self.client
            .get_or_init(|| {
                reqwest::blocking::Client::builder()
                    .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
                    .connect_timeout(Duration::from_secs(30))
                    // The blocking client applies this to each wait (headers, every body
                    // read), not the whole transfer: a stalled server fails, a slow big base
                    // does not.
                    .timeout(Duration::from_secs(60))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| FetchError::Client(e.clone()))
    }

    /// Fetches a small text file (a checksum list) into memory, with the same retries.
    pub fn get_text(&self, input: &str, url: &str) -> Result<String, FetchError> {
        if let Some(p) = local_path(url) {
            return fs::read(&p)
                .map(decode_text)
                .map_err(|source| FetchError::Io { path: p, source });
        }
        let mut last = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                std::thread::sleep(self.backoff * 2u32.pow(attempt - 1));
            }
            let resp = match self.client()?.get(url).send() {
                Ok(r) => r,
                Err(e) => {
                    last = error_chain(&e);
                    continue;
                }
            };
            let status = resp.status();
            if !status.is_success() {
                if status.is_server_error() || status.as_u16() == 429 {
                    last = format!("HTTP {status}");
                    continue;
                }
                return Err(FetchError::Status {
                    input: input.to_string(),
                    url: url.to_string(),
                    status: status.as_u16(),
                });
            }
            // Checksum lists are small; refuse anything that is not.
            let mut body = Vec::new();
            match resp.take(64 << 20).read_to_end(&mut body) {
                Ok(_) => return Ok(decode_text(body)),
                Err(e) => last = e.to_string(),
            }
        }
        Err(FetchError::Network {
            input: input.to_string(),
            url: url.to_string(),
            attempts: self.attempts,
            last,
        })
    }

    /// Copies `url` into a temporary file in `tmp_dir` (or resumes `partial`), hashing it.
    pub fn download(
        &self,
        input: &str,
        url: &str,
        partial: &Path,
        tmp_dir: &Path,
        want_sha512: bool,
    ) -> Result<Downloaded, FetchError> {
        if let Some(src) = local_path(url) {
            return self.copy_local(input, &src, tmp_dir, want_sha512);
        }
        if !is_http(url) {
            return Err(FetchError::Scheme {
                input: input.to_string(),
                url: url.to_string(),
            });
        }
        let io_at = |source| FetchError::Io {
            path: partial.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(partial)
            .map_err(io_at)?;
        // Hash what an earlier run left, so resuming still hashes every byte.
        let mut hashers = Hashers::new(want_sha512);
        let mut have = hash_prefix(&mut file, &mut hashers).map_err(io_at)?;
        let mut step = self.progress.step(&format!("fetch {input}"), 0);
        step.inc(have);
        let mut failures = 0;
        let mut last = String::new();
        loop {
            if failures >= self.attempts {
                if have == 0 {
                    drop(file);
                    let _ = fs::remove_file(partial);
                }
                return Err(FetchError::Network {
                    input: input.to_string(),
                    url: url.to_string(),
                    attempts: failures,
                    last,
                });
            }
            if failures > 0 {
                std::thread::sleep(self.backoff * 2u32.pow((failures - 1).min(6)));
            }
            let before = have;
            match self.attempt(input, url, &mut file, &mut have, &mut hashers, &mut step) {
                Ok(()) => break,
                Err(Attempt::Fatal(e)) => {
                    // Keep a resumable partial, but not an empty file for a URL that failed.
                    if have == 0 {
                        drop(file);
                        let _ = fs::remove_file(partial);
                    }
                    return Err(e);
                }
                Err(Attempt::Retry(why)) => {
                    tracing::info!("{input}: {why}; retrying");
                    last = why;
                    // An attempt that made progress does not count against the limit: a
                    // flaky link that keeps delivering will finish.
                    if have <= before {
                        failures += 1;
                    } else {
                        failures = failures.max(1);
                    }
                }
            }
        }
        file.sync_all().map_err(io_at)?;
        drop(file);
        let (sha256, sha512) = hashers.finish();
        Ok(Downloaded {
            path: partial.to_path_buf(),
            size: have,
            sha256,
            sha512,
        })
    }

    fn attempt(
        &self,
        input: &str,
        url: &str,
        file: &mut File,
        have: &mut u64,
        hashers: &mut Hashers,
        step: &mut crate::progress::Step,
    ) -> Result<(), Attempt> {
        let io_fatal = |e: io::Error| {
            Attempt::Fatal(FetchError::Io {
                path: PathBuf::from(format!("partial download of {url}")),
                source: e,
            })
        };
        let client = self.client().map_err(Attempt::Fatal)?;
        let mut req = client.get(url);
        if *have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let resp = req.send().map_err(|e| Attempt::Retry(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let restart =
            |file: &mut File, have: &mut u64, hashers: &mut Hashers| -> Result<(), Attempt> {
                file.set_len(0).map_err(io_fatal)?;
                file.seek(SeekFrom::Start(0)).map_err(io_fatal)?;
                *have = 0;
                *hashers = Hashers::new(hashers.sha512.is_some());
                Ok(())
            };
        let total = match status {
            200 => {
                if *have > 0 {
                    // The server ignored Range: start over rather than append a second copy.
                    restart(file, have, hashers)?;
                    *step = self.progress.step(&format!("fetch {input}"), 0);
                }
                resp.content_length()
            }
            206 => {
                let range = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                match range {
                    Some((start, total)) if start == *have => total,
                    _ => {
                        restart(file, have, hashers)?;
                        return Err(Attempt::Retry(
                            "the server answered the resume request with a different range".into(),
                        ));
                    }
                }
            }
            416 if *have > 0 => {
                // The partial file is as long as (or longer than) the resource: start over.
                restart(file, have, hashers)?;
                return Err(Attempt::Retry(
                    "the server refused to resume (HTTP 416)".into(),
                ));
            }
            408 | 429 | 500..=599 => return Err(Attempt::Retry(format!("HTTP {status}"))),
            _ => {
                return Err(Attempt::Fatal(FetchError::Status {
                    input: input.to_string(),
                    url: url.to_string(),
                    status,
                }));
            }
        };
        if let Some(t) = total {
            step.set_total(t);
        }
        file.seek(SeekFrom::Start(*have)).map_err(io_fatal)?;
        let mut resp = resp;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Attempt::Retry(format!("connection lost: {e}"))),
            };
            file.write_all(&buf[..n]).map_err(io_fatal)?;
            hashers.update(&buf[..n]);
            *have += n as u64;
            step.inc(n as u64);
        }
        if let Some(t) = total
            && *have < t
        {
            return Err(Attempt::Retry(format!(
                "connection closed after {have} of {t} bytes"
            )));
        }
        Ok(())
    }

    fn copy_local(
        &self,
        input: &str,
        src: &Path,
        tmp_dir: &Path,
        want_sha512: bool,
    ) -> Result<Downloaded, FetchError> {
        let io_at = |p: &Path| {
            let p = p.to_path_buf();
            move |source| FetchError::Io { path: p, source }
        };
        let mut from = File::open(src).map_err(io_at(src))?;
        let len = from.metadata().map_err(io_at(src))?.len();
        let tmp = tempfile::Builder::new()
            .prefix("new.")
            .tempfile_in(tmp_dir)
            .map_err(io_at(tmp_dir))?;
        let mut step = self.progress.step(&format!("copy {input}"), len);
        let mut hashers = Hashers::new(want_sha512);
        let mut buf = vec![0u8; BUF];
        let mut size = 0u64;
        let mut out = tmp.as_file();
        loop {
            let n = from.read(&mut buf).map_err(io_at(src))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io_at(tmp.path()))?;
            hashers.update(&buf[..n]);
            size += n as u64;
            step.inc(n as u64);
        }
        out.sync_all().map_err(io_at(tmp.path()))?;
        let (_, path) = tmp.keep().map_err(|e| FetchError::Io {
            path: tmp_dir.to_path_buf(),
            source: e.error,
        })?;
        let (sha256, sha512) = hashers.finish();
        Ok(Downloaded {
            path,
            size,
            sha256,
            sha512,
        })
    }
}

fn hash_prefix(file: &mut File, hashers: &mut Hashers) -> io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; BUF];
    let mut n_total = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(n_total);
        }
        hashers.update(&buf[..n]);
        n_total += n as u64;
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL if known).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

/// reqwest hides the interesting part (connection refused, DNS, TLS) in its source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A checksum list as text; an `.xz` one (Debian's `Packages.xz`) is decompressed first (at most
/// 256 MiB; a damaged stream yields what decoded, which then lists nothing).
fn decode_text(body: Vec<u8>) -> String {
    const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
    if !body.starts_with(XZ_MAGIC) {
        return String::from_utf8_lossy(&body).into_owned();
    }
    let mut out = Vec::new();
    let _ = liblzma::read::XzDecoder::new(&body[..])
        .take(256 << 20)
        .read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_paths() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(local_path("file:///a/b%20c"), Some(PathBuf::from("/a/b c")));
        assert_eq!(local_path("file://localhost/x"), Some(PathBuf::from("/x")));
        assert_eq!(
            local_path("rel/base.img"),
            Some(PathBuf::from("rel/base.img"))
        );
        assert_eq!(local_path("https://x/y"), None);
        assert_eq!(local_path("ftp://x/y"), None);
        assert_eq!(percent_decode("%4"), "%4");
    }
}
