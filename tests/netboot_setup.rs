//! `imgbuild netboot dnsmasq` and `imgbuild netboot install-unit`, judged by `dnsmasq --test`
//! and `systemd-analyze verify`; their refusals, next to the same command succeeding.

mod support;

use std::process::Command;

use support::{find_tool, imgbuild, require_tool, run};

#[test]
fn the_dnsmasq_snippet_passes_dnsmasq_test() {
    if !require_tool("dnsmasq") {
        return;
    }
    let dir = support::scratch();
    let conf = dir.path().join("50-imgbuild-netboot.conf");
    let (code, _, err) = run(imgbuild()
        .args(["netboot", "dnsmasq", "--listen", "192.168.1.10", "-o"])
        .arg(&conf));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("misc.etc_dnsmasq_d"),
        "the Pi-hole v6 note: {err}"
    );
    let text = std::fs::read_to_string(&conf).unwrap();
    for line in [
        "dhcp-boot=tag:imgbuild-ipxe,http://192.168.1.10:8080/boot.ipxe",
        "dhcp-boot=tag:!imgbuild-ipxe,tag:imgbuild-bios,tag:!imgbuild-rpi,bios/undionly.kpxe,,192.168.1.10",
        "dhcp-boot=tag:!imgbuild-ipxe,tag:imgbuild-efi64,efi-x64/snponly.efi,,192.168.1.10",
        "dhcp-userclass=set:imgbuild-ipxe,iPXE",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let dnsmasq = find_tool("dnsmasq").unwrap();
    let (code, out, err) = run(Command::new(&dnsmasq)
        .arg("--test")
        .arg(format!("--conf-file={}", conf.display())));
    assert_eq!(code, 0, "dnsmasq --test: {out}{err}");
    assert!(
        format!("{out}{err}").contains("syntax check OK"),
        "{out}{err}"
    );
    // Its own file is replaced; stdout works too.
    let (code, out, _) = run(imgbuild().args([
        "netboot",
        "dnsmasq",
        "--listen",
        "192.168.1.10",
        "--http-port",
        "8081",
    ]));
    assert_eq!(code, 0);
    assert!(out.contains("http://192.168.1.10:8081/boot.ipxe"), "{out}");
    let (code, _, err) = run(imgbuild()
        .args(["netboot", "dnsmasq", "--listen", "192.168.1.10", "-o"])
        .arg(&conf));
    assert_eq!(code, 0, "{err}");
    // Refusals: a user's file, a TFTP port PXE cannot use, IPv6.
    let theirs = dir.path().join("theirs.conf");
    std::fs::write(&theirs, "dhcp-range=10.0.0.10,10.0.0.99\n").unwrap();
    let (code, _, err) = run(imgbuild()
        .args(["netboot", "dnsmasq", "--listen", "192.168.1.10", "-o"])
        .arg(&theirs));
    assert_eq!(code, 2);
    assert!(err.contains("not written by imgbuild"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&theirs).unwrap(),
        "dhcp-range=10.0.0.10,10.0.0.99\n"
    );
    let (code, _, err) = run(imgbuild().args([
        "netboot",
        "dnsmasq",
        "--listen",
        "192.168.1.10",
        "--tftp-port",
        "1069",
    ]));
    assert_eq!(code, 2);
    assert!(err.contains("port 69"), "{err}");
    let (code, _, _) = run(imgbuild().args(["netboot", "dnsmasq", "--listen", "fd00::1"]));
    assert_eq!(code, 2);
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = support::scratch();
    let unit = dir.path().join("imgbuild-netboot.service");
    let bin = env!("CARGO_BIN_EXE_imgbuild");
    // --dhcp proxy adds the option and CAP_NET_RAW (the raw socket beside a dnsmasq on 67).
    for (dhcp, caps, exec_dhcp) in [
        (None, "CAP_NET_BIND_SERVICE\n", ""),
        (
            Some("proxy"),
            "CAP_NET_BIND_SERVICE CAP_NET_RAW\n",
            " --dhcp proxy",
        ),
    ] {
        let (code, _, err) = run(imgbuild()
            .args([
                "netboot",
                "install-unit",
                "--listen",
                "192.168.1.10",
                "--binary",
                bin,
            ])
            .args(dhcp.map(|d| ["--dhcp", d]).iter().flatten())
            .arg("-o")
            .arg(&unit));
        assert_eq!(code, 0, "{err}");
        let text = std::fs::read_to_string(&unit).unwrap();
        for want in [
            "DynamicUser=yes".to_string(),
            "StateDirectory=imgbuild-netboot".into(),
            format!("AmbientCapabilities={caps}"),
            format!("CapabilityBoundingSet={caps}"),
            "NoNewPrivileges=yes".into(),
            "Restart=on-failure".into(),
            "LoadCredential=secrets:/etc/imgbuild/secrets.toml".into(),
            "--secrets %d/secrets".into(),
            format!("--listen 192.168.1.10 --tftp-port 69 --http-port 8080{exec_dhcp} --inventory"),
        ] {
            assert!(text.contains(&want), "{want:?} missing:\n{text}");
        }
        let (code, out, err) = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit));
        assert_eq!(code, 0, "systemd-analyze verify:\n{out}{err}\n{text}");
        assert!(
            !err.contains(&unit.display().to_string()),
            "warnings about the unit:\n{err}"
        );
        // The unit's command line parses: the same options serve starts with.
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let args: Vec<&str> = exec
            .split_whitespace()
            .skip(1)
            .map(|a| {
                if a == "%d/secrets" {
                    "/nonexistent/secrets"
                } else {
                    a
                }
            })
            .collect();
        let (_, _, err) = run(imgbuild().args(&args));
        assert!(
            !err.contains("unexpected argument") && err.contains("/etc/imgbuild/nodes.toml"),
            "{err}"
        );
    }
    // A unit file that is not ours stays.
    let theirs = dir.path().join("other.service");
    std::fs::write(&theirs, "[Service]\nExecStart=/bin/true\n").unwrap();
    let (code, _, err) = run(imgbuild()
        .args(["netboot", "install-unit", "--listen", "192.168.1.10", "-o"])
        .arg(&theirs));
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        std::fs::read_to_string(&theirs).unwrap(),
        "[Service]\nExecStart=/bin/true\n"
    );
}
