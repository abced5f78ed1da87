use super::*;

fn udp(addr: &str, port: u16, inode: u64) -> (Proto, String, Socket) {
    let s = Socket {
        local: addr.parse().unwrap(),
        port,
        state: 7,
        inode,
    };
    (Proto::Udp, "/proc/net/udp".into(), s)
}

fn holders(v: &[(u64, u32, &str)]) -> BTreeMap<u64, Vec<Holder>> {
    v.iter()
        .map(|&(i, pid, comm)| {
            (
                i,
                vec![Holder {
                    pid,
                    comm: comm.into(),
                }],
            )
        })
        .collect()
}

#[test]
fn port_holders_are_named_and_dnsmasq_on_67_is_no_problem() {
    let listen: IpAddr = "10.0.0.1".parse().unwrap();
    let socks = Sockets {
        sockets: vec![
            udp("0.0.0.0", 67, 1),
            udp("0.0.0.0", 69, 2),
            // Another address's socket on 4011 is not in the way.
            udp("10.9.9.9", 4011, 3),
        ],
        holders: holders(&[(1, 400, "dnsmasq"), (2, 400, "dnsmasq"), (3, 9, "x")]),
    };
    let f = check_ports(&needs(69, 8080, DhcpMode::Proxy), listen, &socks);
    let lines: Vec<String> = f.iter().map(ToString::to_string).collect();
    assert_eq!(f.len(), 4, "{lines:#?}");
    assert_eq!(f[0].level, Level::Problem);
    assert!(
        lines[0].starts_with("problem port: UDP 69 (TFTP) is held by dnsmasq (pid 400)"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("[/proc/net/udp: 0.0.0.0:69]; fix: stop that program"),
        "{}",
        lines[0]
    );
    assert_eq!(f[1].level, Level::Ok);
    assert_eq!(f[2].level, Level::Info);
    assert!(
        lines[2].contains(
            "held by dnsmasq (pid 400): the Pi-hole/dnsmasq DHCP server: `--dhcp proxy` still works"
        ),
        "{}",
        lines[2]
    );
    assert_eq!(f[3].level, Level::Ok, "{}", lines[3]);
    // Our own running server is not a conflict; --dhcp none needs neither 67 nor 4011.
    let socks = Sockets {
        sockets: vec![udp("10.0.0.1", 69, 5), udp("0.0.0.0", 67, 1)],
        holders: holders(&[(5, 77, "imgbuild"), (1, 400, "dnsmasq")]),
    };
    let f = check_ports(&needs(69, 8080, DhcpMode::None), listen, &socks);
    assert_eq!(
        f.iter().map(|f| f.level).collect::<Vec<_>>(),
        [Level::Info, Level::Ok]
    );
}

#[test]
fn pihole_dhcp_decides_the_mode() {
    use pihole::PiHole;
    let lv = |p: Option<PiHole>, m| check_pihole(p.map(Ok), "pihole.toml", m)[0].clone();
    let on = |d| {
        Some(PiHole {
            dhcp_active: true,
            etc_dnsmasq_d: d,
        })
    };
    let off = Some(PiHole {
        dhcp_active: false,
        etc_dnsmasq_d: true,
    });
    let f = lv(on(false), DhcpMode::None);
    assert_eq!(f.level, Level::Problem);
    assert_eq!(f.location, "pihole.toml: misc.etc_dnsmasq_d");
    assert!(
        f.fix
            .unwrap()
            .contains("pihole-FTL --config misc.etc_dnsmasq_d true")
    );
    assert_eq!(lv(on(true), DhcpMode::None).level, Level::Ok);
    assert_eq!(lv(on(false), DhcpMode::Proxy).level, Level::Info);
    let f = lv(off, DhcpMode::None);
    assert_eq!(
        (
            f.level,
            f.fix.unwrap().starts_with("serve with --dhcp proxy")
        ),
        (Level::Problem, true)
    );
    assert_eq!(lv(off, DhcpMode::Proxy).level, Level::Ok);
    assert_eq!(lv(None, DhcpMode::None).level, Level::Ok);
    let bad = check_pihole(Some(Err("x".into())), "p", DhcpMode::None);
    assert_eq!(bad[0].level, Level::Problem);
}

#[test]
fn interface_state_and_mtu() {
    let links =
        iplink::parse(include_str!("../../../../tests/fixtures/doctor/ip-addr.json").as_bytes())
            .unwrap();
    let check = |name: Option<&str>, listen: &str| {
        let f = check_interface(&links, name, listen.parse().unwrap(), 65464);
        f.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    let br = check(None, "10.9.0.1");
    assert_eq!(br.len(), 1, "{br:?}");
    assert!(
        br[0].starts_with(
            "problem interface: MTU 1400 is below 1500: TFTP blocks shrink to 1368 bytes"
        ),
        "{br:?}"
    );
    assert!(
        br[0].ends_with("fix: raise it if the network allows: ip link set br0 mtu 1500"),
        "{br:?}"
    );
    let v0 = check(None, "10.8.0.1");
    assert!(v0[0].contains("v0 has no carrier"), "{v0:?}");
    let v1 = check(Some("v1"), "10.8.0.1");
    assert!(
        v1[0].contains("v1 is down") && v1[1].contains("no IPv4 address"),
        "{v1:?}"
    );
    assert!(check(Some("eth9"), "10.8.0.1")[0].contains("eth9 does not exist"));
    let br1 = check(Some("br1"), "10.8.0.1");
    assert!(
        br1.iter().any(|l| l.contains("br1 is a bridge running STP with a 15 s forward delay: a booting machine's port forwards nothing for 30 s")),
        "{br1:?}"
    );
    assert!(check(None, "10.7.0.1")[0].contains("no interface has the --listen address 10.7.0.1"));
    assert!(check(Some("lo"), "127.0.0.1")[0].starts_with("ok interface: lo is up"));
}

#[test]
fn firewall_findings_name_the_rule() {
    let set =
        nft::parse(include_str!("../../../../tests/fixtures/doctor/nft-ruleset.json").as_bytes())
            .unwrap();
    let f = check_firewall(&needs(69, 22, DhcpMode::None), &set);
    let lines: Vec<String> = f.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "problem firewall: UDP 69 (TFTP) is dropped by the nft rule `udp dport 69 counter drop` [table inet filter chain input handle 6]; fix: delete that rule or add `udp dport 69 accept` before it",
            "ok firewall: TCP 22 (HTTP) passes the nft rules [nft]",
        ]
    );
}

#[test]
fn errors_split_into_what_and_fix() {
    let (what, fix) = split_help("a is missing\n  help: add a\nb is missing\n  help: add b");
    assert_eq!(what, "a is missing; b is missing");
    assert_eq!(fix.as_deref(), Some("add a; add b"));
    assert_eq!(split_help("plain"), ("plain".to_string(), None));
}

#[test]
fn pi_nodes_need_their_folder_and_this_server_in_their_cmdline() {
    let text = "[[node]]\nname = \"pi-1\"\nprofile = \"p\"\nserial = \"9ffefdef\"\n\n\
                [[node]]\nname = \"pi-2\"\nprofile = \"p\"\nserial = \"1234abcd\"\n\n\
                [[node]]\nname = \"pi-3\"\nprofile = \"p\"\nserial = \"0badcafe\"\n\n\
                [[node]]\nname = \"pi-4\"\nprofile = \"p\"\nserial = \"4444abcd\"\n\n\
                [[node]]\nname = \"pc-1\"\nprofile = \"p\"\nmac = \"52:54:00:00:00:01\"\n";
    let inv = crate::node::inventory::Inventory::parse(text, "nodes.toml").unwrap();
    let mut asked = Vec::new();
    let f = check_pi(
        &inv,
        text,
        "nodes.toml",
        "http://10.0.0.1:8080",
        |node, at| {
            asked.push(node.name.clone());
            match node.name.as_str() {
                "pi-1" => Ok(Some("http://10.0.0.1:8080".into())),
                "pi-2" => Ok(Some("http://10.0.0.9:8080".into())),
                "pi-3" => anyhow::bail!("{at}: node \"pi-3\" has no folder\n  help: rebuild it"),
                // Built with another network-config than its seed has now: serve's own check.
                _ => {
                    let built = crate::netboot::pitree::node_cmdline(
                        "quiet",
                        "http://10.0.0.1:8080",
                        "# no MAC\n",
                    );
                    let now = "network:\n  version: 2\n";
                    crate::netboot::catalog::check_network_config(node, &built, now, at)?;
                    Ok(Some("http://10.0.0.1:8080".into()))
                }
            }
        },
    );
    assert_eq!(
        asked,
        ["pi-1", "pi-2", "pi-3", "pi-4"],
        "the PC is no Pi node"
    );
    let lines: Vec<String> = f.iter().map(ToString::to_string).collect();
    assert_eq!(f[0].level, Level::Ok, "{lines:?}");
    assert!(lines[0].contains("nodes.toml:3"), "{lines:?}");
    assert_eq!(f[1].level, Level::Problem, "{lines:?}");
    assert!(
        lines[1].contains("names the seed server http://10.0.0.9:8080, but serve would listen at http://10.0.0.1:8080"),
        "{lines:?}"
    );
    assert_eq!(f[2].level, Level::Problem, "{lines:?}");
    assert_eq!(f[2].fix.as_deref(), Some("rebuild it"), "{lines:?}");
    assert_eq!(
        (f[3].level, f[3].check),
        (Level::Problem, "pi"),
        "{lines:?}"
    );
    assert!(
        f[3].what.starts_with("nodes.toml:18: node \"pi-4\": the network-config in its built cmdline.txt is not the one the inventory gives it now (its MAC or address changed since the build)"),
        "{lines:?}"
    );
    assert!(
        f[3].fix
            .as_deref()
            .unwrap()
            .starts_with("rebuild with `imgbuild netboot build p --listen ADDR"),
        "{lines:?}"
    );
}
