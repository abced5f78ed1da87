//! Downloads, the cache and the lockfile, against a loopback HTTP server (no internet).

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use imgbuild::fetch::{
    self, Cache, Expected, FetchError, Fetcher, InputKind, Lock, Mirrors, PlannedInput, Refresh,
    Trust,
};
use imgbuild::progress::Progress;
use sha2::{Digest, Sha256};
use support::http::{Behavior, Server};

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Deterministic, incompressible-looking test data.
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn fetcher(cache: &Path, offline: bool) -> Fetcher {
    let mut f = Fetcher::new(
        Cache::open(cache).unwrap(),
        Mirrors::default(),
        offline,
        Progress::quiet(),
    );
    f.transport.backoff = Duration::from_millis(10);
    f
}

fn planned(name: &str, url: String, sums_url: String, file: &str) -> PlannedInput {
    PlannedInput {
        name: name.into(),
        kind: InputKind::K3s,
        url,
        trust: Trust::ChecksumFile {
            url: sums_url,
            file: file.into(),
        },
    }
}

fn blobs(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cache.join("sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn first_use_verifies_against_upstream_sums_then_pins() {
    let srv = Server::start();
    let body = data(300_000, 1);
    srv.add("/rel/k3s", body.clone());
    srv.add(
        "/rel/sha256sum-amd64.txt",
        format!(
            "{}  k3s\n{}  k3s-airgap-images-amd64.tar\n",
            sha(&body),
            "0".repeat(64)
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), false);
    let mut lock = Lock::default();
    let p = [planned(
        "k3s/v1/amd64",
        srv.url("/rel/k3s"),
        srv.url("/rel/sha256sum-amd64.txt"),
        "k3s",
    )];
    let got = fetch::resolve_planned(&p, &mut lock, &f, false, Refresh::None).unwrap();
    assert_eq!(got[0].sha256, sha(&body));
    assert_eq!(fs::read(&got[0].path).unwrap(), body);
    let e = lock.get("k3s/v1/amd64").unwrap();
    assert_eq!(
        (e.size, e.sha256.as_str()),
        (body.len() as u64, sha(&body).as_str())
    );
    assert_eq!(
        e.verified_by.as_deref(),
        Some(srv.url("/rel/sha256sum-amd64.txt").as_str())
    );

    // Pinned and cached: no request at all, even with --locked and --offline.
    srv.clear_seen();
    let off = fetcher(dir.path(), true);
    let again = fetch::resolve_planned(&p, &mut lock, &off, true, Refresh::None).unwrap();
    assert_eq!(again, got);
    assert!(srv.seen().is_empty(), "{:?}", srv.seen());
}

#[test]
fn resume_after_a_cut_connection() {
    let srv = Server::start();
    let body = data(1 << 20, 2);
    srv.add_with(
        "/big",
        body.clone(),
        Behavior::Cut {
            times: 2,
            after: 300_000,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), false);
    let (h, size, path) = f
        .fetch_verified(
            "big",
            &srv.url("/big"),
            Some(&Expected::Sha256(sha(&body))),
            "test",
        )
        .unwrap();
    assert_eq!((h, size), (sha(&body), body.len() as u64));
    assert_eq!(fs::read(path).unwrap(), body);
    let starts: Vec<Option<u64>> = srv.seen().iter().map(|s| s.range_start).collect();
    assert_eq!(
        starts,
        [None, Some(300_000), Some(600_000)],
        "resumed where each cut left off"
    );
    assert!(
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no leftovers"
    );
}

#[test]
fn resume_of_a_partial_left_by_an_earlier_run() {
    let srv = Server::start();
    let body = data(500_000, 3);
    srv.add("/b", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), false);
    // An earlier, interrupted run left the first 123456 bytes.
    fs::write(f.cache.partial_path(&srv.url("/b")), &body[..123_456]).unwrap();
    let (h, _, _) = f
        .fetch_verified(
            "b",
            &srv.url("/b"),
            Some(&Expected::Sha256(sha(&body))),
            "test",
        )
        .unwrap();
    assert_eq!(h, sha(&body));
    assert_eq!(srv.seen()[0].range_start, Some(123_456));
}

#[test]
fn servers_that_mishandle_range_restart_cleanly() {
    for behavior in [Behavior::IgnoreRange, Behavior::WrongRange] {
        let srv = Server::start();
        let body = data(200_000, 4);
        srv.add_with("/b", body.clone(), behavior.clone());
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(dir.path(), false);
        // A stale partial whose bytes are wrong: appending to it would corrupt the file.
        fs::write(f.cache.partial_path(&srv.url("/b")), vec![0xAA; 50_000]).unwrap();
        let (h, size, _) = f
            .fetch_verified(
                "b",
                &srv.url("/b"),
                Some(&Expected::Sha256(sha(&body))),
                "test",
            )
            .unwrap_or_else(|e| panic!("{behavior:?}: {e}"));
        assert_eq!((h, size), (sha(&body), body.len() as u64), "{behavior:?}");
    }
}

#[test]
fn wrong_bytes_are_a_named_mismatch_and_the_cache_is_untouched() {
    let srv = Server::start();
    let good = data(100_000, 5);
    let evil = data(100_000, 6);
    srv.add("/rel/k3s", evil.clone());
    srv.add("/rel/sums", format!("{}  k3s\n", sha(&good)));
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), false);
    let mut lock = Lock::default();
    let p = [planned(
        "k3s/v9/amd64",
        srv.url("/rel/k3s"),
        srv.url("/rel/sums"),
        "k3s",
    )];
    let err = fetch::resolve_planned(&p, &mut lock, &f, false, Refresh::None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::HashMismatch(_)), "{msg}");
    assert!(msg.contains("k3s/v9/amd64"), "{msg}");
    assert!(
        msg.contains(&sha(&good)) && msg.contains(&sha(&evil)),
        "{msg}"
    );
    assert!(blobs(dir.path()).is_empty());
    assert!(
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(lock.is_empty(), "nothing pinned");
}

#[test]
fn sha512_sums_are_checked_and_sha256_recorded() {
    use sha2::Sha512;
    let srv = Server::start();
    let body = data(70_000, 7);
    srv.add("/img/debian.raw", body.clone());
    let s512 = hex::encode(Sha512::digest(&body));
    srv.add(
        "/img/SHA512SUMS",
        format!("{s512}  debian.raw\n{}  other.raw\n", "1".repeat(128)),
    );
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), false);
    let mut lock = Lock::default();
    let p = [planned(
        "base/debian.raw",
        srv.url("/img/debian.raw"),
        srv.url("/img/SHA512SUMS"),
        "debian.raw",
    )];
    fetch::resolve_planned(&p, &mut lock, &f, false, Refresh::None).unwrap();
    assert_eq!(lock.get("base/debian.raw").unwrap().sha256, sha(&body));

    // A SHA-512 that does not match is reported as such.
    srv.add(
        "/img/SHA512SUMS",
        format!("{}  debian.raw\n", "2".repeat(128)),
    );
    let err = fetch::resolve_planned(&p, &mut lock, &f, false, Refresh::All).unwrap_err();
    assert!(err.to_string().contains("SHA-512 mismatch"), "{err}");
}

#[test]
fn not_found_and_not_listed() {
    let srv = Server::start();
    srv.add("/sums", format!("{}  other\n", "3".repeat(64)));
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), false);
    let err = f
        .fetch_verified("x", &srv.url("/missing"), None, "test")
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/missing"), "{err}");
    let partials = fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!(partials, 0, "no empty partial left");
    let mut lock = Lock::default();
    let p = [planned(
        "k3s/v1/amd64",
        srv.url("/k3s"),
        srv.url("/sums"),
        "k3s",
    )];
    let err = fetch::resolve_planned(&p, &mut lock, &f, false, Refresh::None).unwrap_err();
    assert!(matches!(err, FetchError::NotListed { .. }), "{err}");
    let p = [planned(
        "k3s/v1/amd64",
        srv.url("/k3s"),
        srv.url("/nosums"),
        "k3s",
    )];
    let err = fetch::resolve_planned(&p, &mut lock, &f, false, Refresh::None).unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err}"
    );
}

#[test]
fn offline_uses_the_cache_only() {
    let srv = Server::start();
    let body = data(10_000, 8);
    srv.add("/k", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut lock = Lock::default();
    lock.set(
        "k3s/v1/amd64",
        fetch::LockEntry {
            url: srv.url("/k"),
            size: body.len() as u64,
            sha256: sha(&body),
            verified_by: None,
        },
    );
    let p = [planned(
        "k3s/v1/amd64",
        srv.url("/k"),
        srv.url("/sums"),
        "k",
    )];
    let off = fetcher(dir.path(), true);
    let err = fetch::resolve_planned(&p, &mut lock, &off, false, Refresh::None).unwrap_err();
    assert!(matches!(err, FetchError::Offline { .. }), "{err}");
    assert!(err.to_string().contains(&sha(&body)), "{err}");
    assert!(
        srv.seen().is_empty(),
        "offline sent a request: {:?}",
        srv.seen()
    );

    // Online once (pinned by the lock, so no checksum file needed), then offline works.
    let on = fetcher(dir.path(), false);
    fetch::resolve_planned(&p, &mut lock, &on, false, Refresh::None).unwrap();
    srv.clear_seen();
    let got = fetch::resolve_planned(&p, &mut lock, &off, false, Refresh::None).unwrap();
    assert_eq!(fs::read(&got[0].path).unwrap(), body);
    assert!(srv.seen().is_empty());

    // An input the lock does not pin cannot be verified offline.
    let q = [planned(
        "k3s/v2/amd64",
        srv.url("/k2"),
        srv.url("/sums"),
        "k2",
    )];
    let err = fetch::resolve_planned(&q, &mut lock, &off, false, Refresh::None).unwrap_err();
    assert!(matches!(err, FetchError::Offline { .. }), "{err}");
}

#[test]
fn locked_refuses_a_stale_lock() {
    let srv = Server::start();
    let body = data(1000, 9);
    srv.add("/v2/k3s", body.clone());
    srv.add("/v2/sums", format!("{}  k3s\n", sha(&body)));
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), false);
    let mut lock = Lock::default();
    lock.set(
        "k3s/v1/amd64",
        fetch::LockEntry {
            url: srv.url("/v1/k3s"),
            size: 1,
            sha256: "4".repeat(64),
            verified_by: None,
        },
    );
    let before = lock.clone();
    // The profile moved on to a new URL under the same input name.
    let p = [planned(
        "k3s/v1/amd64",
        srv.url("/v2/k3s"),
        srv.url("/v2/sums"),
        "k3s",
    )];
    let err = fetch::resolve_planned(&p, &mut lock, &f, true, Refresh::None).unwrap_err();
    assert!(matches!(err, FetchError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("/v1/k3s"), "{err}");
    assert_eq!(lock, before);
    assert!(srv.seen().is_empty());
    // Missing entry.
    let q = [planned(
        "k3s/v3/amd64",
        srv.url("/v2/k3s"),
        srv.url("/v2/sums"),
        "k3s",
    )];
    let err = fetch::resolve_planned(&q, &mut lock, &f, true, Refresh::None).unwrap_err();
    assert!(err.to_string().contains("no entry"), "{err}");
    // Unlocked, the entry is replaced.
    fetch::resolve_planned(&p, &mut lock, &f, false, Refresh::None).unwrap();
    assert_eq!(lock.get("k3s/v1/amd64").unwrap().sha256, sha(&body));
}

#[test]
fn mirrors_and_file_urls() {
    let srv = Server::start();
    let body = data(5000, 10);
    srv.add(
        "/mirror/k3s-io/k3s/releases/download/v1.0.0%2Bk3s1/k3s",
        body.clone(),
    );
    srv.add(
        "/mirror/k3s-io/k3s/releases/download/v1.0.0%2Bk3s1/sha256sum-amd64.txt",
        format!("{}  k3s\n", sha(&body)),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut f = fetcher(dir.path(), false);
    f.mirrors =
        Mirrors::parse([format!("https://github.com/={}/mirror/", srv.base()).as_str()]).unwrap();
    let rel = "https://github.com/k3s-io/k3s/releases/download/v1.0.0%2Bk3s1";
    let p = [planned(
        "k3s/v1.0.0+k3s1/amd64",
        format!("{rel}/k3s"),
        format!("{rel}/sha256sum-amd64.txt"),
        "k3s",
    )];
    let mut lock = Lock::default();
    fetch::resolve_planned(&p, &mut lock, &f, false, Refresh::None).unwrap();
    assert_eq!(
        lock.get("k3s/v1.0.0+k3s1/amd64").unwrap().url,
        format!("{rel}/k3s"),
        "the lock keeps the real URL"
    );

    // file:// and plain paths.
    let src = dir.path().join("local base.img");
    fs::write(&src, &body[..100]).unwrap();
    for url in [
        format!("file://{}", src.display()).replace(' ', "%20"),
        src.display().to_string(),
    ] {
        let (h, size, _) = f
            .fetch_verified(
                "local",
                &url,
                Some(&Expected::Sha256(sha(&body[..100]))),
                "t",
            )
            .unwrap();
        assert_eq!((h, size), (sha(&body[..100]), 100));
    }
}

#[test]
fn truncated_xz_leaves_nothing_in_the_cache() {
    if !support::require_tool("xz") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = data(200_000, 11);
    let src = dir.path().join("base.img");
    fs::write(&src, &raw).unwrap();
    let (code, _, err) = support::run(
        std::process::Command::new("xz")
            .args(["-k", "-T1"])
            .arg(&src),
    );
    assert_eq!(code, 0, "{err}");
    let xz = fs::read(dir.path().join("base.img.xz")).unwrap();
    let cache_dir = dir.path().join("cache");
    let f = fetcher(&cache_dir, false);
    for (bytes, ok) in [(&xz[..xz.len() / 2], false), (&xz[..], true)] {
        let p = dir.path().join("in.xz");
        fs::write(&p, bytes).unwrap();
        let (h, _, _) = f
            .fetch_verified("base", p.to_str().unwrap(), None, "t")
            .unwrap();
        let r = f.cache.unxz(&h, &Default::default());
        if ok {
            assert_eq!(fs::read(r.unwrap()).unwrap(), raw);
            assert!(f.cache.verify(false).unwrap().is_empty());
        } else {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("truncated or corrupt"), "{e}");
            assert_eq!(fs::read_dir(cache_dir.join("unxz")).unwrap().count(), 0);
            assert_eq!(fs::read_dir(cache_dir.join("tmp")).unwrap().count(), 0);
        }
    }
}

/// The CLI end to end: `imgbuild lock` on a user profile served by the loopback server, then
/// `--locked` with a stale lock, `cache ls/verify/gc`.
#[test]
fn cli_lock_locked_and_cache_commands() {
    let srv = Server::start();
    let base = data(4096, 12);
    srv.add("/img/base.img", base.clone());
    srv.add("/img/SHA256SUMS", format!("{}  base.img\n", sha(&base)));
    let k3s = data(3000, 13);
    let rel = "/gh/k3s-io/k3s/releases/download/v1.0.0%2Bk3s1";
    srv.add(&format!("{rel}/k3s"), k3s.clone());
    srv.add(
        &format!("{rel}/sha256sum-amd64.txt"),
        format!("{}  k3s\n", sha(&k3s)),
    );

    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    fs::create_dir(&profiles).unwrap();
    let profile = |version: &str| {
        format!(
            "extends = \"amd64-worker\"\n[base]\nurl = \"{}\"\nchecksums-url = \"{}\"\n[k3s]\nversion = \"{version}\"\n[mesh]\nprovider = \"none\"\n",
            srv.url("/img/base.img"),
            srv.url("/img/SHA256SUMS"),
        )
    };
    fs::write(profiles.join("lab.toml"), profile("v1.0.0+k3s1")).unwrap();
    let cache = dir.path().join("cache");
    let run = |args: &[&str]| {
        support::run(
            support::imgbuild()
                .current_dir(dir.path())
                .env("IMGBUILD_CACHE_DIR", &cache)
                .env(
                    "IMGBUILD_MIRROR",
                    format!("https://github.com/={}/gh/", srv.base()),
                )
                .args(args),
        )
    };
    let (code, _, err) = run(&["--progress=json", "lock", "lab"]);
    assert_eq!(code, 0, "{err}");
    // One JSON line per progress event; the last one for the k3s download says it finished.
    let k3s_events: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["step"] == "fetch k3s/v1.0.0+k3s1/amd64")
        .collect();
    let last = k3s_events
        .last()
        .expect("progress events for the k3s download");
    assert_eq!(last["finished"], true, "{err}");
    assert_eq!(last["done"], k3s.len() as u64, "{err}");
    let text = fs::read_to_string(dir.path().join("imgbuild.lock")).unwrap();
    assert!(
        text.contains("name = \"base/base.img\"") && text.contains(&sha(&base)),
        "{text}"
    );
    assert!(
        text.contains("name = \"k3s/v1.0.0+k3s1/amd64\"") && text.contains(&sha(&k3s)),
        "{text}"
    );
    assert!(
        text.contains("https://github.com/k3s-io/k3s/releases/download/v1.0.0%2Bk3s1/k3s"),
        "{text}"
    );

    // Nothing changes on a second run; --locked is happy.
    let (code, _, err) = run(&["lock", "lab", "--locked", "--offline"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        fs::read_to_string(dir.path().join("imgbuild.lock")).unwrap(),
        text
    );

    // The profile moves to a new k3s: --locked refuses and names the input.
    fs::write(profiles.join("lab.toml"), profile("v1.0.1+k3s1")).unwrap();
    let (code, _, err) = run(&["lock", "lab", "--locked"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("k3s/v1.0.1+k3s1/amd64") && err.contains("--locked"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("imgbuild.lock")).unwrap(),
        text
    );

    let (code, out, err) = run(&["cache", "ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&sha(&base)) && out.contains(&sha(&k3s)),
        "{out}"
    );
    let (code, _, err) = run(&["cache", "verify"]);
    assert_eq!(code, 0, "{err}");

    // Corrupt a blob: verify exits 1 and names it; --repair removes it.
    let blob = cache.join("sha256").join(sha(&k3s));
    let mut perm = fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&blob, perm).unwrap();
    fs::write(&blob, b"bit rot").unwrap();
    let (code, out, _) = run(&["cache", "verify"]);
    assert_eq!(code, 1);
    assert!(out.contains(&sha(&k3s)), "{out}");
    let (code, _, _) = run(&["cache", "verify", "--repair"]);
    assert_eq!(code, 1);
    assert!(!blob.exists());

    // gc keeps what the lock pins and drops the rest.
    fs::write(cache.join("sha256").join("5".repeat(64)), b"stray").unwrap();
    let (code, _, err) = run(&["cache", "gc"]);
    assert_eq!(code, 0, "{err}");
    assert!(cache.join("sha256").join(sha(&base)).exists());
    assert!(!cache.join("sha256").join("5".repeat(64)).exists());
}
