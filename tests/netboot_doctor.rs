//! `imgbuild netboot doctor` in a network namespace with a bridge (our host, 10.33.0.1): clean
//! first (exit 0), then each thing that stops boot clients is set up for real and must be named,
//! judged against the tools that made it: a dnsmasq holding UDP 67 and 69 (its pid as `ss -ulpn`
//! shows it), an nft rule dropping udp dport 69 (its handle as `nft -a list` shows it), a bridge
//! running STP, MTU 1400 (curl then gets the block size doctor predicted from our running
//! server), a pihole.toml with misc.etc_dnsmasq_d = false, a missing and an altered artifact.
//! Each is undone and doctor is clean again, so the finding came from that change alone; our own
//! running server holding the ports is no problem.

mod support;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use support::netboot::{Server, secret_values, serve_command, set_dir, workdir};
use support::netns::NetNs;
use support::proxy::udp_sockets;
use support::{find_tool, require_tool, run, tests_dir};

/// `imgbuild netboot doctor` inside `ns`, in `work`, with serve's options for our address.
fn doctor(ns: &NetNs, work: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut c = ns.cmd(env!("CARGO_BIN_EXE_imgbuild"));
    c.current_dir(work)
        .args([
            "netboot",
            "doctor",
            "--listen",
            "10.33.0.1",
            "--images",
            "images",
        ])
        .arg("--pihole-config")
        .arg(work.join("pihole.toml"))
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("IMGBUILD_INVENTORY")
        .env_remove("IMGBUILD_SECRETS")
        .env_remove("IMGBUILD_PROFILES");
    for k in ["K3S_TOKEN", "K3S_AGENT_TOKEN", "TAILSCALE_AUTHKEY"] {
        c.env_remove(format!("IMGBUILD_SECRET_{k}"));
    }
    let (code, out, err) = run(&mut c);
    // Doctor renders every seed to check it, and shows none.
    for secret in secret_values() {
        assert!(
            !out.contains(&secret) && !err.contains(&secret),
            "a secret in:\n{out}{err}"
        );
    }
    (code, out, err)
}

/// Doctor finds nothing wrong: exit 0, no problem line.
fn clean(ns: &NetNs, work: &Path, extra: &[&str]) -> String {
    let (code, out, err) = doctor(ns, work, extra);
    assert_eq!(code, 0, "doctor is not clean:\n{out}\n{err}");
    assert!(!out.contains("problem "), "{out}");
    assert!(err.contains("netboot doctor: clean"), "{err}");
    out
}

/// Doctor finds problems (exit 1) and prints `want` as one of its lines' starts.
fn finds(ns: &NetNs, work: &Path, extra: &[&str], want: &str) -> String {
    let (code, out, err) = doctor(ns, work, extra);
    assert_eq!(code, 1, "doctor should have found a problem:\n{out}\n{err}");
    assert!(
        out.lines().any(|l| l.starts_with(want)),
        "no line starting {want:?} in:\n{out}"
    );
    assert!(err.contains("problem(s) found"), "{err}");
    out
}

/// Runs a `netboot serve` that should refuse to start: its exit code and output. One that
/// starts after all is killed (the namespace's drop would too) and fails the test.
fn refused(mut cmd: std::process::Command, work: &Path) -> (i32, String) {
    let log = work.join("refused.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started:\n{}", std::fs::read_to_string(&log).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&log).unwrap(),
    )
}

fn ready() -> bool {
    support::netns::available()
        && require_tool("nft")
        && require_tool("dnsmasq")
        && require_tool("ss")
        && require_tool("curl")
}

/// A dnsmasq, killed and reaped when dropped (also when the test fails).
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A dnsmasq as Pi-hole runs it: DHCP and TFTP on 0.0.0.0 (no --bind-interfaces).
fn dnsmasq(ns: &NetNs, work: &Path) -> Dnsmasq {
    let mut d = ns.cmd(find_tool("dnsmasq").unwrap());
    d.args([
        "--keep-in-foreground",
        "--port=0",
        "--dhcp-range=10.33.0.100,10.33.0.150,255.255.255.0,10m",
        "--enable-tftp",
        "--leasefile-ro",
        "--log-facility=-",
        "--user=root",
        "--conf-file=/dev/null",
        "--interface=br0",
    ])
    .arg(format!("--tftp-root={}", work.display()));
    let child = Dnsmasq(ns.spawn(d, &work.join("dnsmasq.log")));
    let t0 = Instant::now();
    loop {
        let ss = udp_sockets(ns);
        if ss.contains(":67 ") && ss.contains(":69 ") {
            return child;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "dnsmasq did not bind 67 and 69:\n{ss}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn nft(ns: &NetNs, args: &[&str]) -> String {
    let (code, out, err) = run(ns.cmd(find_tool("nft").unwrap()).args(args));
    assert_eq!(code, 0, "nft {args:?}: {err}");
    out
}

#[test]
fn doctor_names_each_problem_and_is_clean_without_them() {
    if !ready() {
        return;
    }
    let work = workdir(1);
    let w = work.path();
    let ns = NetNs::new("doctor");
    ns.bridge("br0", "10.33.0.1/24");
    // A second host on the bridge: br0 has carrier, and a TFTP client is a real remote peer.
    let client = NetNs::new("doctor-client");
    ns.veth_to(&client, "lan0", "lan1", "br0", "10.33.0.9/24");
    let proxy = ["--dhcp", "proxy"];

    let out = clean(&ns, w, &proxy);
    for line in [
        "ok port: UDP 69 (TFTP) is free on 10.33.0.1",
        "ok port: UDP 67 (proxyDHCP) is free on 10.33.0.1",
        "ok port: TCP 8080 (HTTP) is free",
        "ok interface: br0 is up with carrier and IPv4, MTU 1500 (TFTP blocks up to 1468 bytes)",
        "ok firewall: UDP 69 (TFTP) passes the nft rules",
        "ok artifacts: node(s) pc-1, pc-2 netboot profile amd64-worker: its 7 files are present",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let (_, json, _) = doctor(&ns, w, &["--dhcp", "proxy", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["clean"], true, "{json}");

    // dnsmasq on 67 and 69: 69 is a conflict, 67 the Pi-hole case (raw socket, not an error).
    let d = dnsmasq(&ns, w);
    let pid = d.0.id();
    let ss = udp_sockets(&ns);
    assert!(
        ss.contains(&format!("(\"dnsmasq\",pid={pid},")),
        "ss does not show pid {pid}:\n{ss}"
    );
    let out = finds(
        &ns,
        w,
        &proxy,
        &format!("problem port: UDP 69 (TFTP) is held by dnsmasq (pid {pid})"),
    );
    assert!(
        out.contains(&format!("info port: UDP 67 (proxyDHCP) is held by dnsmasq (pid {pid}): the Pi-hole/dnsmasq DHCP server: `--dhcp proxy` still works, it listens with a raw socket")),
        "{out}"
    );
    assert!(!out.contains("problem port: UDP 67"), "{out}");
    let (_, json, _) = doctor(&ns, w, &["--dhcp", "proxy", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["clean"], false);
    let held = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["level"] == "problem")
        .unwrap();
    assert_eq!(held["check"], "port");
    assert!(
        held["fix"].as_str().unwrap().contains("enable-tftp"),
        "{held}"
    );
    drop(d);
    clean(&ns, w, &proxy);

    // An nft rule dropping TFTP, named with the handle nft itself lists.
    nft(&ns, &["add", "table", "inet", "doc"]);
    nft(
        &ns,
        &[
            "add",
            "chain",
            "inet",
            "doc",
            "input",
            "{ type filter hook input priority 0; }",
        ],
    );
    nft(
        &ns,
        &[
            "add",
            "rule",
            "inet",
            "doc",
            "input",
            "ct",
            "state",
            "established",
            "accept",
        ],
    );
    nft(
        &ns,
        &[
            "add", "rule", "inet", "doc", "input", "udp", "dport", "69", "drop",
        ],
    );
    let listed = nft(&ns, &["-a", "list", "chain", "inet", "doc", "input"]);
    let handle = listed
        .lines()
        .find(|l| l.contains("udp dport 69 drop"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap_or_else(|| panic!("{listed}"))
        .trim()
        .to_string();
    let out = finds(
        &ns,
        w,
        &proxy,
        "problem firewall: UDP 69 (TFTP) is dropped by the nft rule `udp dport 69 drop`",
    );
    assert!(
        out.contains(&format!("[table inet doc chain input handle {handle}]")),
        "handle {handle} not named:\n{out}"
    );
    assert!(
        out.contains("ok firewall: UDP 67 (proxyDHCP) passes"),
        "{out}"
    );
    nft(&ns, &["delete", "table", "inet", "doc"]);
    clean(&ns, w, &proxy);

    // STP with a forward delay: a booting machine's port is mute for twice that.
    ns.ip(&[
        "link",
        "set",
        "br0",
        "type",
        "bridge",
        "stp_state",
        "1",
        "forward_delay",
        "400",
    ]);
    finds(
        &ns,
        w,
        &proxy,
        "problem interface: br0 is a bridge running STP with a 4 s forward delay",
    );
    // Off first: with STP on, the kernel refuses a forward delay below 2 s.
    ns.ip(&["link", "set", "br0", "type", "bridge", "stp_state", "0"]);
    ns.ip(&["link", "set", "br0", "type", "bridge", "forward_delay", "0"]);

    // Our own running server holds the ports: that is no conflict.
    let server = Server::start(Some(&ns), w, "10.33.0.1", &proxy);
    let out = clean(&ns, w, &proxy);
    for need in [
        "UDP 69 (TFTP)",
        "TCP 8080 (HTTP)",
        "UDP 67 (proxyDHCP)",
        "UDP 4011 (PXE boot server)",
    ] {
        assert!(
            out.contains(&format!("info port: {need} is held by imgbuild (pid ")),
            "{need}:\n{out}"
        );
    }

    // MTU 1400: TFTP blocks shrink from the 1468 bytes Pis ask for, to what doctor says; curl
    // asking the running server for 1468 gets exactly that in the OACK.
    ns.ip(&["link", "set", "br0", "mtu", "1400"]);
    finds(
        &ns,
        w,
        &proxy,
        "problem interface: MTU 1400 is below 1500: TFTP blocks shrink to 1368 bytes",
    );
    let got = w.join("got");
    let (code, _, err) = run(client
        .cmd("curl")
        .args([
            "-v",
            "--tftp-blksize",
            "1468",
            "tftp://10.33.0.1/amd64-worker/vmlinuz",
            "-o",
        ])
        .arg(&got));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("blksize parsed from OACK (1368) requested (1468)"),
        "{err}"
    );
    std::fs::remove_file(&got).unwrap();
    ns.ip(&["link", "set", "br0", "mtu", "1500"]);
    server.stop();
    clean(&ns, w, &proxy);

    // Pi-hole runs DHCP but ignores /etc/dnsmasq.d: with --dhcp none our snippet is not loaded.
    let fixtures = tests_dir().join("fixtures/doctor");
    std::fs::copy(fixtures.join("pihole-dhcp-on.toml"), w.join("pihole.toml")).unwrap();
    let none = ["--dhcp", "none"];
    let out = finds(&ns, w, &none, "problem pihole: misc.etc_dnsmasq_d is false");
    assert!(
        out.contains("pihole-FTL --config misc.etc_dnsmasq_d true"),
        "{out}"
    );
    // The proxy works beside Pi-hole's DHCP either way.
    clean(&ns, w, &proxy);
    std::fs::copy(
        fixtures.join("pihole-dhcp-on-dnsmasq-d.toml"),
        w.join("pihole.toml"),
    )
    .unwrap();
    clean(&ns, w, &none);
    // Pi-hole without DHCP: --dhcp none cannot work, proxy is advised.
    std::fs::copy(fixtures.join("pihole-dhcp-off.toml"), w.join("pihole.toml")).unwrap();
    finds(&ns, w, &none, "problem pihole: Pi-hole's DHCP is off");
    std::fs::remove_file(w.join("pihole.toml")).unwrap();

    // A missing artifact is named, with the node, inventory line and the rebuild command.
    let kernel = set_dir(w).join("vmlinuz");
    let saved = std::fs::read(&kernel).unwrap();
    std::fs::remove_file(&kernel).unwrap();
    let out = finds(
        &ns,
        w,
        &proxy,
        "problem artifacts: node(s) pc-1, pc-2 netboot profile amd64-worker:",
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("problem artifacts"))
        .unwrap();
    assert!(
        line.contains("file \"vmlinuz\"") && line.contains("[nodes.toml:3]"),
        "{line}"
    );
    assert!(
        line.contains("fix: rebuild the set with `imgbuild netboot build amd64-worker`"),
        "{line}"
    );
    // Present but altered: the hash is checked, not only the name.
    let mut altered = saved.clone();
    altered[0] ^= 1;
    std::fs::write(&kernel, &altered).unwrap();
    let out = finds(&ns, w, &proxy, "problem artifacts:");
    assert!(out.contains("has SHA-256"), "{out}");
    std::fs::write(&kernel, &saved).unwrap();
    clean(&ns, w, &proxy);

    // A secret missing: `netboot serve` would refuse to start (it does, the same way), and
    // doctor says so first.
    let secrets = w.join("secrets.toml");
    let away = w.join("secrets.away");
    std::fs::rename(&secrets, &away).unwrap();
    let out = finds(
        &ns,
        w,
        &proxy,
        "problem seeds: node pc-1: `netboot serve` would not start, its seed cannot be rendered: secret",
    );
    assert!(out.contains("[nodes.toml:3]; fix: add `"), "{out}");
    let (code, err) = refused(serve_command(Some(&ns), w, "10.33.0.1", &proxy), w);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("nodes.toml:3: the seed of node \"pc-1\""),
        "{err}"
    );
    std::fs::rename(&away, &secrets).unwrap();
    let out = clean(&ns, w, &proxy);
    assert!(
        out.contains("ok seeds: node pc-2: its seed renders"),
        "{out}"
    );

    // Bad input is exit 2, not a finding.
    std::fs::write(w.join("nodes.toml"), "[[node]]\nname = 1\n").unwrap();
    let (code, _, err) = doctor(&ns, w, &proxy);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nodes.toml:"), "{err}");
}
