//! `imgbuild netboot serve`, TFTP: judged by clients nobody here wrote (tftp-hpa, atftp, curl)
//! and by scripted clients for what those cannot do (a Raspberry Pi's probe-abort-retry, raw
//! traversal names, a repeated request, the transfer cap).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use imgbuild_netboot::tftp::packet::{self, Packet};
use support::netboot::{PROFILE, Server, set_dir, workdir};
use support::netns::{self, NetNs};
use support::tftp::Client;
use support::{require_tool, run};

/// Every name the server offers for the fixture set, with its file.
fn served_files(work: &Path) -> Vec<(String, std::path::PathBuf)> {
    let dir = set_dir(work);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("netboot.json")).unwrap()).unwrap();
    let mut out: Vec<_> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let n = f["name"].as_str().unwrap();
            (format!("{PROFILE}/{n}"), dir.join(n))
        })
        .collect();
    out.push(("bios/undionly.kpxe".into(), dir.join("ipxe/undionly.kpxe")));
    out.push(("efi-x64/snponly.efi".into(), dir.join("ipxe/snponly.efi")));
    out
}

fn same_bytes(got: &Path, want: &Path, what: &str) {
    let g = std::fs::read(got).unwrap_or_default();
    let w = std::fs::read(want).unwrap();
    assert!(
        g == w,
        "{what}: {} bytes received, {} expected (or different bytes)",
        g.len(),
        w.len()
    );
}

/// tftp-hpa (lock-step, 512), curl (blksize 512/1428/1468) and atftp (blksize × windowsize
/// 1/4/16) fetch every served file byte for byte, in a namespace, from port 69; the server's log
/// shows each agreed block and window size.
#[test]
fn clients_fetch_every_artifact_byte_identically() {
    if !netns::available()
        || !require_tool("tftp")
        || !require_tool("atftp")
        || !require_tool("curl")
    {
        return;
    }
    let work = workdir(1);
    let ns = NetNs::new("tftp");
    let server = Server::start(Some(&ns), work.path(), "127.0.0.1", &[]);
    assert_eq!(server.tftp.port(), 69);
    let out = work.path().join("got");
    for (name, file) in served_files(work.path()) {
        let get = |mut c: Command, what: &str| {
            let _ = std::fs::remove_file(&out);
            let (code, so, se) = run(&mut c);
            assert_eq!(code, 0, "{what} {name}: {so}{se}");
            same_bytes(&out, &file, &format!("{what} {name}"));
        };
        let mut c = ns.cmd("tftp");
        c.args(["-m", "binary", "127.0.0.1", "-c", "get", &name])
            .arg(&out);
        get(c, "tftp-hpa");
        let empty = std::fs::metadata(&file).unwrap().len() == 0;
        for bs in ["512", "1428", "1468"] {
            // curl fails on an empty TFTP file whoever serves it (dnsmasq too: "getpeername()
            // failed with errno 107"); tftp-hpa and atftp fetch it.
            if empty {
                continue;
            }
            let mut c = ns.cmd("curl");
            c.args([
                "-sS",
                "--tftp-blksize",
                bs,
                &format!("tftp://127.0.0.1/{name}"),
                "-o",
            ])
            .arg(&out);
            get(c, &format!("curl blksize {bs}"));
        }
        for bs in ["512", "1428", "1468"] {
            for ws in ["1", "4", "16"] {
                let mut c = ns.cmd("atftp");
                c.args([
                    "--option",
                    &format!("blksize {bs}"),
                    "--option",
                    &format!("windowsize {ws}"),
                    "-g",
                    "-r",
                    &name,
                    "-l",
                ])
                .arg(&out)
                .args(["127.0.0.1", "69"]);
                get(c, &format!("atftp blksize {bs} windowsize {ws}"));
            }
        }
    }
    let log = server.stop();
    for bs in ["512", "1428", "1468"] {
        for ws in ["1", "4", "16"] {
            let agreed = format!("blksize={bs} windowsize={ws}");
            assert!(
                log.lines()
                    .any(|l| l.contains("tftp: sent") && l.contains(&agreed)),
                "no transfer at {agreed}:\n{log}"
            );
        }
    }
    assert!(
        !log.contains("retransmits=1"),
        "loopback transfers should not need retransmits:\n{log}"
    );
}

/// A 100 MiB file crosses the 16-bit block number (65535 blocks at 1468 bytes are 91.8 MiB).
#[test]
fn a_100_mib_file_crosses_the_block_number_rollover() {
    if !require_tool("curl") || !require_tool("atftp") {
        return;
    }
    let work = workdir(100);
    let server = Server::start(
        None,
        work.path(),
        "127.0.0.1",
        &["--tftp-port", "0", "--http-port", "0"],
    );
    let root = set_dir(work.path()).join("root.squashfs");
    let out = work.path().join("root.got");
    let name = format!("{PROFILE}/root.squashfs");
    let (code, _, se) = run(Command::new("curl")
        .args([
            "-sS",
            "--tftp-blksize",
            "1468",
            &format!("tftp://{}/{name}", server.tftp),
            "-o",
        ])
        .arg(&out));
    assert_eq!(code, 0, "curl: {se}");
    same_bytes(&out, &root, "curl, 1468 × 71 431 blocks");
    let _ = std::fs::remove_file(&out);
    let (code, _, se) = run(Command::new("atftp")
        .args([
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 16",
            "-g",
            "-r",
            &name,
            "-l",
        ])
        .arg(&out)
        .args(["127.0.0.1", &server.tftp.port().to_string()]));
    assert_eq!(code, 0, "atftp: {se}");
    same_bytes(&out, &root, "atftp, 1468, windowsize 16");
    let log = server.stop();
    assert_eq!(log.matches("tftp: sent").count(), 2, "{log}");
}

fn host_server(work: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--tftp-port", "0", "--http-port", "0"];
    args.extend_from_slice(extra);
    Server::start(None, work, "127.0.0.1", &args)
}

/// `..`, absolute names, NUL and backslashes get an ERROR and a log line; a symlink in the
/// artifact folder that points out of it is not served; the same client then gets a real file.
#[test]
fn escapes_are_refused_with_an_error_and_logged() {
    let work = workdir(1);
    let dir = set_dir(work.path());
    assert!(
        dir.join("escape").is_symlink(),
        "make-set leaves a symlink to /etc/passwd"
    );
    let server = host_server(work.path(), &[]);
    let c = Client::new(server.tftp);
    let cases: [(&[u8], u16, &str); 6] = [
        (b"../../../../etc/passwd", 2, "`..` component"),
        (b"amd64-worker/../../nodes.toml", 2, "`..` component"),
        (b"/etc/passwd", 2, "absolute"),
        (b"amd64-worker\\vmlinuz", 2, "backslash"),
        (b"amd64-worker/\x01vmlinuz", 2, "control character"),
        (b"amd64-worker/escape", 1, "no such file"),
    ];
    for (name, code, why) in cases {
        c.rrq(name, &[]);
        let (got, msg) = c.expect_error(why);
        assert_eq!(got, code, "{name:?}: {msg}");
    }
    // A NUL inside the name ends the name early: what follows is no valid request.
    c.sock
        .send_to(b"\0\x01amd64-worker/vmlinuz\0../x\0octet\0", server.tftp)
        .unwrap();
    c.expect_error("NUL");
    // A write request is refused: the server is read-only.
    c.sock
        .send_to(
            &packet::request(packet::WRQ, b"amd64-worker/vmlinuz", "octet", &[]),
            server.tftp,
        )
        .unwrap();
    assert_eq!(c.expect_error("WRQ").0, 2);
    // And the same client gets a listed file.
    c.rrq(b"amd64-worker/vmlinuz", &[]);
    let (first, tid) = c.recv();
    assert!(matches!(
        packet::parse(&first).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    let mut got = first[4..].to_vec();
    c.sock.send_to(&packet::ack(1), tid).unwrap();
    got.extend(c.finish_from(tid, 2));
    assert_eq!(got, std::fs::read(dir.join("vmlinuz")).unwrap());
    let log = server.stop();
    for why in [
        "the name has a `..` component",
        "the name is absolute",
        "the name holds a backslash",
        "the name holds a NUL or control character",
    ] {
        assert!(
            log.contains(&format!("tftp: refused: {why}")),
            "{why:?} not logged:\n{log}"
        );
    }
    assert!(
        log.contains("file=amd64-worker/escape") && log.contains("tftp: no such file"),
        "{log}"
    );
    assert!(log.contains("write request refused"), "{log}");
    assert!(!log.contains("root:x:0:0"), "{log}");
}

/// The Raspberry Pi bootloader: RRQ with tsize → OACK → ERROR (it only wanted the size) → RRQ
/// again from the same port; and its one-block probe: ACK 0, DATA 1, ERROR, RRQ again. Both end
/// with the whole file, and the log says what happened.
#[test]
fn a_pi_like_client_probes_aborts_and_asks_again() {
    let work = workdir(1);
    let file = std::fs::read(set_dir(work.path()).join("initrd.img")).unwrap();
    let server = host_server(work.path(), &[]);
    let c = Client::new(server.tftp);
    let name = b"amd64-worker/initrd.img";
    for one_block in [false, true] {
        c.rrq(name, &[("tsize", "0"), ("blksize", "1468")]);
        let (p, tid) = c.recv();
        assert_eq!(
            packet::parse(&p).unwrap(),
            Packet::Oack(vec![
                ("tsize".into(), file.len().to_string()),
                ("blksize".into(), "1468".into())
            ])
        );
        if one_block {
            c.first_block(tid);
        }
        c.end(tid, packet::ErrorCode::NotDefined, "Early terminate");
        // The old transfer is over: nothing more comes from it.
        assert!(c.silent(1500), "the aborted transfer went on sending");
        c.rrq(name, &[("blksize", "1468")]);
        let (p, tid2) = c.recv();
        assert_ne!(tid2, tid, "a new transfer has a new port");
        assert_eq!(
            packet::parse(&p).unwrap(),
            Packet::Oack(vec![("blksize".into(), "1468".into())])
        );
        c.sock.send_to(&packet::ack(0), tid2).unwrap();
        assert_eq!(c.finish(tid2, 1468), file);
    }
    let log = server.stop();
    assert_eq!(
        log.matches("tftp: the client ended the transfer").count(),
        2,
        "{log}"
    );
    assert!(log.contains("a size probe"), "{log}");
    assert!(log.contains(r#"said=Early terminate"#), "{log}");
    assert_eq!(log.matches("tftp: sent").count(), 2, "{log}");
}

/// The Pi's habit as it really is: the ERROR that ends its size probe and the identical new
/// request go out back to back. The new request gets a new transfer from a new port (the
/// aborted one must not take it for a lost-reply repeat and go silent), every time.
#[test]
fn a_pi_abort_then_the_identical_request_at_once_gets_a_new_transfer() {
    let work = workdir(1);
    let file = std::fs::read(set_dir(work.path()).join("ipxe/undionly.kpxe")).unwrap();
    let server = host_server(work.path(), &[]);
    let c = Client::new(server.tftp);
    let name = format!("{PROFILE}/ipxe/undionly.kpxe");
    let opts = [("tsize", "0"), ("blksize", "1468")];
    for _ in 0..20 {
        c.rrq(name.as_bytes(), &opts);
        let (_, tid) = c.recv();
        c.end(tid, packet::ErrorCode::OptionRefused, "abort");
        c.rrq(name.as_bytes(), &opts);
        let (p, tid2) = c.recv();
        assert!(matches!(packet::parse(&p).unwrap(), Packet::Oack(_)));
        assert_ne!(tid2, tid, "the aborted transfer answered");
        c.sock.send_to(&packet::ack(0), tid2).unwrap();
        assert_eq!(c.finish(tid2, 1468), file);
    }
    let log = server.stop();
    assert_eq!(log.matches("tftp: sent").count(), 20, "{log}");
}

/// The same habit with the two datagrams arriving the other way round (they go to two ports, so
/// two CPUs or two NIC queues may swap them): the new request first looks like a lost-reply
/// repeat, then the ERROR ends the old transfer, and the request gets its new transfer anyway.
#[test]
fn a_pi_abort_that_arrives_after_its_new_request_still_gets_a_new_transfer() {
    let work = workdir(1);
    let file = std::fs::read(set_dir(work.path()).join("ipxe/undionly.kpxe")).unwrap();
    let server = host_server(work.path(), &[]);
    let c = Client::new(server.tftp);
    let name = format!("{PROFILE}/ipxe/undionly.kpxe");
    let opts = [("tsize", "0"), ("blksize", "1468")];
    c.rrq(name.as_bytes(), &opts);
    let (_, tid) = c.recv();
    c.rrq(name.as_bytes(), &opts);
    std::thread::sleep(std::time::Duration::from_millis(200));
    c.end(tid, packet::ErrorCode::OptionRefused, "abort");
    // The old transfer may resend its OACK once (it took the request for a repeat): skip it.
    let tid2 = loop {
        let (p, from) = c.recv();
        assert!(matches!(packet::parse(&p).unwrap(), Packet::Oack(_)));
        if from != tid {
            break from;
        }
    };
    c.sock.send_to(&packet::ack(0), tid2).unwrap();
    assert_eq!(c.finish(tid2, 1468), file);
    let log = server.stop();
    assert!(log.contains("request repeated before any answer"), "{log}");
    assert!(
        log.contains("after asking for it again; its new request starts a new one"),
        "{log}"
    );
    assert_eq!(log.matches("tftp: sent").count(), 1, "{log}");
}

/// A request repeated before the client heard anything is answered by the same transfer, from
/// the same port (the client latches onto the first reply it gets); one transfer, one log line.
#[test]
fn a_repeated_request_is_answered_from_the_same_port() {
    let work = workdir(1);
    let file = std::fs::read(set_dir(work.path()).join("vmlinuz")).unwrap();
    let server = host_server(work.path(), &[]);
    let c = Client::new(server.tftp);
    c.rrq(b"amd64-worker/vmlinuz", &[("blksize", "1428")]);
    c.rrq(b"amd64-worker/vmlinuz", &[("blksize", "1428")]);
    let (p1, tid) = c.recv();
    let (p2, tid2) = c.recv();
    assert_eq!(
        (tid, &p1),
        (tid2, &p2),
        "both OACKs come from the one transfer"
    );
    c.sock.send_to(&packet::ack(0), tid).unwrap();
    assert_eq!(c.finish(tid, 1428), file);
    let log = server.stop();
    assert!(log.contains("request repeated before any answer"), "{log}");
    assert_eq!(log.matches("tftp: sent").count(), 1, "{log}");
}

/// With a cap of one transfer, a second request while one runs gets "server busy"; after the
/// first ends, the next is served.
#[test]
fn the_transfer_cap_refuses_then_recovers() {
    let work = workdir(1);
    let server = host_server(work.path(), &["--max-transfers", "1"]);
    let a = Client::new(server.tftp);
    a.rrq(b"amd64-worker/vmlinuz", &[("blksize", "1468")]);
    let (_, tid) = a.recv(); // OACK, not acknowledged yet: the transfer holds its slot
    let b = Client::new(server.tftp);
    b.rrq(b"amd64-worker/initrd.img", &[]);
    let (code, msg) = b.expect_error("over the cap");
    assert_eq!(code, 0);
    assert!(msg.contains("busy"), "{msg}");
    a.sock
        .send_to(&packet::error(packet::ErrorCode::NotDefined, "done"), tid)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    b.rrq(b"amd64-worker/initrd.img", &[]);
    let (p, tid) = b.recv();
    assert!(matches!(
        packet::parse(&p).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    b.sock.send_to(&packet::ack(1), tid).unwrap();
    let rest = b.finish_from(tid, 2);
    assert_eq!(
        p[4..].len() + rest.len(),
        std::fs::read(set_dir(work.path()).join("initrd.img"))
            .unwrap()
            .len()
    );
    let log = server.stop();
    assert!(log.contains("too many transfers at once"), "{log}");
}

/// One `curl tftp://` per block size in `blksizes`, all at once, into `dir`; each must get `want`.
fn curls_at_once(url: &str, blksizes: &[&str], dir: &Path, want: &[u8]) {
    let children: Vec<_> = blksizes
        .iter()
        .enumerate()
        .map(|(i, bs)| {
            let out = dir.join(format!("c{i}"));
            let child = Command::new("curl")
                .args(["-sS", "--tftp-blksize", bs, url, "-o"])
                .arg(&out)
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    for (mut child, out) in children {
        assert!(child.wait().unwrap().success());
        assert!(
            std::fs::read(&out).unwrap() == want,
            "{} differs",
            out.display()
        );
    }
}

/// 50 curl clients at once all get the right bytes.
#[test]
fn fifty_concurrent_transfers_complete() {
    if !require_tool("curl") {
        return;
    }
    let work = workdir(1);
    let server = host_server(work.path(), &[]);
    let want = std::fs::read(set_dir(work.path()).join("initrd.img")).unwrap();
    let url = format!("tftp://{}/{PROFILE}/initrd.img", server.tftp);
    let sizes: Vec<&str> = (0..50)
        .map(|i| if i % 2 == 0 { "1468" } else { "512" })
        .collect();
    curls_at_once(&url, &sizes, work.path(), &want);
    let log = server.stop();
    assert_eq!(log.matches("tftp: sent").count(), 50, "{log}");
}

/// With a cap of two transfers per client, a client's third request while two run gets "server
/// busy", another client at the same moment is served, and once one of the first two ends the
/// third is served too.
#[test]
fn the_per_client_cap_refuses_only_that_client() {
    let work = workdir(1);
    let server = host_server(work.path(), &["--max-transfers-per-client", "2"]);
    let name = b"amd64-worker/vmlinuz";
    let opts = [("blksize", "1468")];
    // Two transfers held open: their OACKs are not acknowledged.
    let held: Vec<(Client, SocketAddr)> = (0..2)
        .map(|_| {
            let c = Client::from_ip(server.tftp, "127.0.0.2");
            c.rrq(name, &opts);
            let (_, tid) = c.recv();
            (c, tid)
        })
        .collect();
    let third = Client::from_ip(server.tftp, "127.0.0.2");
    third.rrq(name, &opts);
    let (code, msg) = third.expect_error("over the per-client cap");
    assert_eq!((code, msg.contains("busy")), (0, true), "{msg}");
    let want = std::fs::read(set_dir(work.path()).join("vmlinuz")).unwrap();
    let other = Client::from_ip(server.tftp, "127.0.0.3");
    other.rrq(name, &opts);
    let (_, tid) = other.recv();
    other.sock.send_to(&packet::ack(0), tid).unwrap();
    assert_eq!(other.finish(tid, 1468), want, "the other client");
    let (first, tid) = &held[0];
    first
        .sock
        .send_to(&packet::error(packet::ErrorCode::NotDefined, "done"), *tid)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    third.rrq(name, &opts);
    let (_, tid) = third.recv();
    third.sock.send_to(&packet::ack(0), tid).unwrap();
    assert_eq!(third.finish(tid, 1468), want, "the third, after one ended");
    let log = server.stop();
    assert_eq!(
        log.matches("too many transfers at once from this client")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("client=127.0.0.2:"), "{log}");
}

/// A rate cap of 2 MB/s per client: two curl transfers of a 4 MiB file from one client share it,
/// so together they take at least (8 MiB − the bucket's burst) / 2 MB/s; the bytes are right.
/// (A lower bound: a slow machine only makes it longer.)
#[test]
fn the_rate_cap_is_shared_by_a_clients_transfers() {
    if !require_tool("curl") {
        return;
    }
    let work = workdir(4);
    let rate = 2_000_000u64;
    let server = host_server(work.path(), &["--max-rate-per-client", &rate.to_string()]);
    let want = std::fs::read(set_dir(work.path()).join("root.squashfs")).unwrap();
    let url = format!("tftp://{}/{PROFILE}/root.squashfs", server.tftp);
    let t0 = std::time::Instant::now();
    curls_at_once(&url, &["1468", "1468"], work.path(), &want);
    let took = t0.elapsed().as_secs_f64();
    let burst = imgbuild_netboot::tftp::pace::burst(rate) as f64;
    let floor = (2.0 * want.len() as f64 - burst) / rate as f64;
    assert!(
        took >= floor * 0.98,
        "two capped transfers took {took:.2} s, under the {floor:.2} s the cap allows"
    );
    let log = server.stop();
    assert_eq!(log.matches("tftp: sent").count(), 2, "{log}");
}
