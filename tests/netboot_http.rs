//! `imgbuild netboot serve`, HTTP, judged by curl: Range requests, ETag round trips, the boot
//! script per MAC (known, unknown, missing), the one-shot seed URLs and what the log holds; and
//! the start-up refusals (bad inventory, missing or altered artifacts), each next to a good start.

mod support;

use std::path::Path;
use std::process::Command;

use support::netboot::{
    PROFILE, Server, cmdline_network_config, secret_values, serve_command, set_dir, workdir,
};
use support::{require_tool, run};

fn server(work: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--tftp-port", "0", "--http-port", "0"];
    args.extend_from_slice(extra);
    Server::start(None, work, "127.0.0.1", &args)
}

/// curl URL with `args` → (HTTP status, body bytes, headers).
fn curl(url: &str, args: &[&str]) -> (u16, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (body, head) = (dir.path().join("b"), dir.path().join("h"));
    let (code, out, err) = run(Command::new("curl")
        .args(["-sS", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(url));
    assert_eq!(code, 0, "curl {url}: {err}");
    (
        out.trim().parse().unwrap(),
        std::fs::read(&body).unwrap_or_default(),
        std::fs::read_to_string(&head).unwrap(),
    )
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[test]
fn ranges_and_etags() {
    if !require_tool("curl") {
        return;
    }
    let work = workdir(1);
    let file = std::fs::read(set_dir(work.path()).join("initrd.img")).unwrap();
    let s = server(work.path(), &[]);
    let url = format!("{}/a/{PROFILE}/initrd.img", s.url());
    let (st, body, head) = curl(&url, &[]);
    assert_eq!((st, body.len()), (200, file.len()));
    assert!(body == file);
    let n = file.len();
    for (range, from, to) in [
        ("0-99", 0, 100),
        ("1000-", 1000, n),
        ("-500", n - 500, n),
        ("2097000-2097152", 2_097_000, n),
    ] {
        let (st, body, head) = curl(&url, &["-r", range]);
        assert_eq!(st, 206, "{range}");
        assert!(body == file[from..to], "range {range}: wrong bytes");
        assert_eq!(
            header(&head, "content-range").unwrap(),
            format!("bytes {from}-{}/{n}", to - 1)
        );
    }
    let (st, _, _) = curl(&url, &["-r", "9999999-"]);
    assert_eq!(st, 416);
    // The ETag is the SHA-256 from the set; If-None-Match with it is 304, with another one 200.
    let etag = header(&head, "etag").expect("an ETag");
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(set_dir(work.path()).join("netboot.json")).unwrap(),
    )
    .unwrap();
    let sum = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "initrd.img")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(etag, format!("\"{sum}\""));
    let (st, body, h304) = curl(&url, &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!((st, body.len()), (304, 0));
    assert_eq!(header(&h304, "etag").as_deref(), Some(etag.as_str()));
    let (st, body, _) = curl(&url, &["-H", "If-None-Match: \"0000\""]);
    assert_eq!((st, body.len()), (200, n));
    // Unlisted names are 404, even when the file exists in the folder.
    for bad in [
        "escape",
        "netboot.json",
        "../../nodes.toml",
        "%2e%2e/%2e%2e/nodes.toml",
    ] {
        let (st, _, _) = curl(&format!("{}/a/{PROFILE}/{bad}", s.url()), &["--path-as-is"]);
        assert_eq!(st, 404, "{bad}");
    }
    let log = s.stop();
    assert!(log.contains("http: 304 not modified"), "{log}");
    assert!(log.contains("status=206"), "{log}");
}

/// The seed URL in a node's boot script, and the script's kernel and initrd URLs.
fn script_urls(script: &str) -> (String, Vec<String>) {
    let seed = script
        .split("ds=nocloud-net;s=")
        .nth(1)
        .expect("a seed URL")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let files = script
        .lines()
        .filter(|l| l.starts_with("kernel ") || l.starts_with("initrd "))
        .map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("http://"))
                .unwrap()
                .to_string()
        })
        .collect();
    (seed, files)
}

#[test]
fn boot_scripts_and_one_shot_seeds() {
    if !require_tool("curl") {
        return;
    }
    let work = workdir(1);
    let s = server(work.path(), &[]);
    let boot = |mac: &str| curl(&format!("{}/boot.ipxe?mac={mac}", s.url()), &[]);
    // Without a MAC: a chain that adds it.
    let (st, body, _) = curl(&format!("{}/boot.ipxe", s.url()), &[]);
    assert_eq!(st, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!(
            "#!ipxe\nchain {}/boot.ipxe?mac=${{mac:hexhyp}} || exit 1\n",
            s.url()
        )
    );
    // An unknown MAC: the configured answer (default: exit to the next boot device).
    let (st, body, _) = boot("52-54-00-00-00-99");
    assert_eq!(st, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.starts_with("#!ipxe\n") && text.ends_with("\nexit\n"),
        "{text}"
    );
    let (st, _, _) = boot("not-a-mac");
    assert_eq!(st, 400);
    // pc-1, as iPXE's ${mac:hexhyp} writes it.
    let (st, body, head) = boot("52-54-00-00-00-01");
    assert_eq!(st, 200);
    assert_eq!(header(&head, "cache-control").as_deref(), Some("no-store"));
    let script = String::from_utf8(body).unwrap();
    assert!(
        script.contains("# imgbuild: node pc-1, profile amd64-worker"),
        "{script}"
    );
    let (seed, files) = script_urls(&script);
    assert!(
        seed.starts_with(&format!("{}/seed/", s.url())) && seed.ends_with('/'),
        "{seed}"
    );
    assert!(
        script.contains(&format!(
            "imgbuild.root={}/a/{PROFILE}/root.squashfs",
            s.url()
        )),
        "{script}"
    );
    assert!(
        script.contains(" initrd=initrd.img initrd=imgbuild.cpio "),
        "{script}"
    );
    let dir = set_dir(work.path());
    for (url, name) in files.iter().zip(["vmlinuz", "initrd.img", "imgbuild.cpio"]) {
        let (st, body, _) = curl(url, &[]);
        assert_eq!(st, 200, "{url}");
        assert!(body == std::fs::read(dir.join(name)).unwrap(), "{url}");
    }
    // Each seed file once; the same URL again is 404.
    let mut seen = String::new();
    let mut served_net = String::new();
    for f in ["meta-data", "user-data", "network-config", "vendor-data"] {
        let (st, body, _) = curl(&format!("{seed}{f}"), &[]);
        assert_eq!(st, 200, "{f}");
        let text = String::from_utf8(body).unwrap();
        if f == "network-config" {
            served_net = text.clone();
        }
        seen.push_str(&text);
        let (st, _, _) = curl(&format!("{seed}{f}"), &[]);
        assert_eq!(st, 404, "{f} replayed");
    }
    // The kernel line carries the seed's own network-config (decoded by base64 and gzip), for
    // cloud-init's local stage, which runs before the network; and nothing else of the seed.
    let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
    let net = cmdline_network_config(kernel).expect("a network-config= on the kernel line");
    assert_eq!(net, served_net);
    assert!(net.contains("macaddress: \"52:54:00:00:00:01\""), "{net}");
    assert!(seen.contains("pc-1"), "the seed names its node:\n{seen}");
    let secrets = secret_values();
    assert!(
        secrets.iter().any(|v| seen.contains(v.as_str())),
        "the seed carries the node's credentials"
    );
    // A new boot of the node gets a new token; an unused file of the old one is gone too.
    let (_, body, _) = boot("52:54:00:00:00:02");
    let (seed2, _) = script_urls(&String::from_utf8(body).unwrap());
    let (_, body, _) = boot("52:54:00:00:00:02");
    let (seed3, _) = script_urls(&String::from_utf8(body).unwrap());
    assert_ne!(seed2, seed3);
    assert_eq!(curl(&format!("{seed2}user-data"), &[]).0, 404);
    assert_eq!(curl(&format!("{seed3}user-data"), &[]).0, 200);
    let log = s.stop();
    for f in ["meta-data", "user-data", "network-config", "vendor-data"] {
        assert!(
            log.contains(&format!("node=pc-1 file={f}"))
                && log.contains("seed served (content not logged)"),
            "{f}:\n{log}"
        );
    }
    assert!(
        log.contains("404 seed refused: this file was already fetched with this token"),
        "{log}"
    );
    assert!(
        log.contains("mac=52:54:00:00:00:99") && log.contains("MAC not in the inventory"),
        "{log}"
    );
    // The timeline: script, then kernel and initrds to the same node.
    assert!(
        log.contains("node=pc-1 file=amd64-worker/vmlinuz bytes=1048613"),
        "{log}"
    );
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a secret is in the log:\n{log}"
        );
    }
    let token = seed.trim_end_matches('/').rsplit('/').next().unwrap();
    assert!(!log.contains(token), "the seed token is in the log");
}

#[test]
fn seed_urls_expire_and_unknown_policy_shell() {
    if !require_tool("curl") {
        return;
    }
    let work = workdir(1);
    let s = server(work.path(), &["--seed-ttl", "1", "--unknown", "shell"]);
    let (_, body, _) = curl(&format!("{}/boot.ipxe?mac=52:54:00:00:00:01", s.url()), &[]);
    let (seed, _) = script_urls(&String::from_utf8(body).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(curl(&format!("{seed}meta-data"), &[]).0, 404);
    let (_, body, _) = curl(&format!("{}/boot.ipxe?mac=52:54:00:00:00:77", s.url()), &[]);
    assert!(String::from_utf8(body).unwrap().ends_with("\nshell\n"));
    let log = s.stop();
    assert!(log.contains("the token has expired"), "{log}");
}

/// Start-up refusals name the file and line and exit 2; the same work folder starts when fixed.
#[test]
fn bad_inventories_and_artifacts_are_refused_at_start() {
    let work = workdir(1);
    let start = |what: &str| {
        let (code, _, err) = run(&mut serve_command(
            None,
            work.path(),
            "127.0.0.1",
            &["--tftp-port", "0", "--http-port", "0"],
        ));
        assert_eq!(code, 2, "{what}: {err}");
        err
    };
    let inv = work.path().join("nodes.toml");
    let good = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(&inv, good.replace("52:54:00:00:00:02", "52:54:00:00:00")).unwrap();
    let err = start("bad MAC");
    assert!(
        err.contains("nodes.toml:9:7") && err.contains("is not a MAC address"),
        "{err}"
    );
    std::fs::write(
        &inv,
        good.replace(
            "profile = \"amd64-worker\"\nmac = \"52:54:00:00:00:02\"",
            "profile = \"amd64-server\"\nmac = \"52:54:00:00:00:02\"",
        ),
    )
    .unwrap();
    let err = start("missing set");
    assert!(
        err.contains("nodes.toml:8:")
            && err.contains("pc-2")
            && err.contains("images/amd64-server/netboot/netboot.json")
            && err.contains("imgbuild netboot build amd64-server"),
        "{err}"
    );
    std::fs::write(&inv, &good).unwrap();
    let set = set_dir(work.path());
    let manifest = set.join("netboot.json");
    let m = std::fs::read_to_string(&manifest).unwrap();
    // A listed file that is a symlink out of the folder.
    std::fs::rename(set.join("empty"), set.join("empty.real")).unwrap();
    std::os::unix::fs::symlink("/dev/null", set.join("empty")).unwrap();
    let err = start("symlink escape");
    assert!(err.contains("leads outside the artifact folder"), "{err}");
    std::fs::remove_file(set.join("empty")).unwrap();
    std::fs::rename(set.join("empty.real"), set.join("empty")).unwrap();
    // An altered file.
    let v = set.join("vmlinuz");
    let mut bytes = std::fs::read(&v).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&v, &bytes).unwrap();
    let err = start("altered file");
    assert!(
        err.contains("has SHA-256") && err.contains("the set says"),
        "{err}"
    );
    bytes[100] ^= 1;
    std::fs::write(&v, &bytes).unwrap();
    // A broken manifest: file and line.
    std::fs::write(&manifest, m.replacen("\"files\"", "\"files\" x", 1)).unwrap();
    let err = start("bad JSON");
    assert!(err.contains("netboot.json:4:"), "{err}");
    std::fs::write(&manifest, &m).unwrap();
    // A command line that fits alone but not with the seed URL and network-config= added.
    let pad = format!(" x={}\",", "y".repeat(1900));
    let long = m.replacen("\",\n  \"files\"", &format!("{pad}\n  \"files\""), 1);
    assert_ne!(long, m);
    std::fs::write(&manifest, long).unwrap();
    let err = start("command line too long");
    assert!(
        err.contains("node \"pc-1\": its kernel command line would be ")
            && err.contains("over the 2047 the kernel takes (COMMAND_LINE_SIZE 2048")
            && err.contains("help: shorten the kernel arguments of profile \"amd64-worker\""),
        "{err}"
    );
    std::fs::write(&manifest, &m).unwrap();
    // Fixed: it starts, and stops cleanly on SIGTERM.
    let s = server(work.path(), &[]);
    s.stop();
}
