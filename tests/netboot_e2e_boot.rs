//! Netboot end to end: PXE → iPXE → the node's first boot, with nothing but our own artifacts and
//! server. `imgbuild netboot build pc-node` from the cached Debian base; an inventory of two nodes
//! with MACs; in a network namespace, dnsmasq as the LAN's DHCP with the snippet `imgbuild netboot
//! dnsmasq` writes (what Pi-hole runs) and `imgbuild netboot serve` on the bridge; QEMU on taps.
//!
//! * pc-1, UEFI (OVMF, its own PXE, a blank data disk): DHCP arch 7 → snponly.efi over our TFTP
//!   → iPXE → our boot script over HTTP → kernel and initrds (root image included) over HTTP →
//!   the node's first boot, state on the data disk.
//! * pc-2, BIOS (SeaBIOS with QEMU's iPXE ROM, no disk): DHCP user class iPXE → our HTTP script →
//!   the same artifacts → the other node's first boot, state in RAM.
//!
//! The second test is the Pi-hole host whose DHCP knows nothing of PXE (dnsmasq on our host,
//! addresses only, holding UDP 67), with our server as the proxyDHCP; the third is the usual
//! home LAN, the router's DHCP (dnsmasq in its own namespace, addresses only) and our proxy on
//! the Pi-hole host, where 67 is free:
//!
//! * pc-1, OVMF's PXE: our offer and port-4011 ACK → snponly.efi over TFTP → the same path.
//! * pc-2, OVMF with its PXE switched off, so **UEFI HTTP Boot**: DHCP vendor class HTTPClient →
//!   our offer with snponly.efi's URL → iPXE by HTTP → the same path, no TFTP at all.
//!
//! Each must reach the first-boot checks of the other node boot tests (identity from the seed,
//! read-only squashfs root, mesh before k3s, no secret logged, nothing waiting for an ESP), and
//! the seed URL of a finished boot, replayed, gets 404.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::netboot::{LAB_ADDR, Lab};
use support::node::{self, Seen};
use support::qemu::{self, Arch, Firmware, ResultsDisk, VmBuilder};
use support::{netbuild, netns, require_tool};

const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);
const UEFI_MAC: &str = "52:54:00:13:00:01";
const BIOS_MAC: &str = "52:54:00:13:00:02";

fn ready() -> bool {
    netns::available()
        && qemu::require_qemu(Arch::X86_64, true)
        && [
            "dnsmasq",
            "flock",
            "curl",
            "mksquashfs",
            "sgdisk",
            "mkfs.ext4",
        ]
        .iter()
        .all(|t| require_tool(t))
        && require_tool("mkfs.vfat")
        && require_tool("mtype")
}

/// The inventory the server reads: the setup's two nodes, now with MACs.
fn inventory(work: &Path, profile: &str) {
    let text = format!(
        "[[node]]\nname = \"pc-1\"\nprofile = \"{profile}\"\nmac = \"{UEFI_MAC}\"\n\n\
         [[node]]\nname = \"pc-2\"\nprofile = \"{profile}\"\nmac = \"{BIOS_MAC}\"\n"
    );
    std::fs::write(work.join("nodes.toml"), text).unwrap();
}

/// `netboot build pc-node` from the Debian base into `work`, and the two-node inventory.
fn built_set(work: &Path, base: &Path, deb: &Path) {
    let (setup, mirror) = netbuild::pc_node(work, base, deb);
    let art = setup.out.join(&setup.profile).join("netboot");
    netbuild::build(&setup, &mirror, &art, "022", "UTC");
    drop(mirror);
    inventory(work, &setup.profile);
}

/// PXE-boots a VM on `tap` (with `extra` QEMU arguments) to the observer's verdict; returns
/// what it saw and its console.
fn pxe_boot(
    lab: &Lab,
    fw: Firmware,
    (tap, mac): (&str, &str),
    data: Option<&Path>,
    extra: &[&str],
) -> (Seen, String) {
    let name = format!("{fw:?}-{tap}").to_lowercase();
    let results = ResultsDisk::create(&lab.dir.join(format!("results-{name}.img")));
    let mut b = VmBuilder::pxe(Arch::X86_64, fw)
        .tap(tap, mac)
        .in_netns(&lab.ns.name)
        .host_lock()
        .memory_mib(2048);
    for a in extra {
        b = b.arg(a);
    }
    if let Some(d) = data {
        b = b.disk(d, "data");
    }
    let mut vm = b
        .disk(&results.image, "results")
        .start(&lab.dir.join(format!("vm-{name}")));
    vm.wait_for_poweroff(node::DONE, node::FAILED, BOOT_TIMEOUT);
    eprintln!("PXE boot {name} ({mac}): {:.1?}", vm.elapsed());
    let console = vm.serial();
    drop(vm);
    let seen = Seen::read(&results);
    let state = if data.is_some() { "data disk" } else { "tmpfs" };
    eprintln!(
        "RAM with state on {state} (2048 MiB VM): total {} MiB, used {}, shared {}, available {}",
        seen.get("mem_total_mib"),
        seen.get("mem_used_mib"),
        seen.get("mem_shared_mib"),
        seen.get("mem_available_mib")
    );
    (seen, console)
}

/// The seed URL (`http://…/seed/TOKEN/`) the kernel got on its command line.
fn seed_url(console: &str) -> String {
    let prefix = format!("ds=nocloud-net;s=http://{LAB_ADDR}:8080/seed/");
    let at = console
        .find(&prefix)
        .unwrap_or_else(|| panic!("no seed URL on the kernel command line:\n{console}"));
    let url = &console[at + "ds=nocloud-net;s=".len()..];
    url[..url.find(char::is_whitespace).unwrap_or(url.len())].to_string()
}

/// Our server's log shows `node`'s boot in order: `first` (how the firmware reached iPXE), the
/// boot script (a seed token minted), kernel and initrds sent in full, then its seed.
fn assert_timeline(log: &str, node: &str, first: &str) {
    let lines: Vec<&str> = log.lines().collect();
    let mut from = 0;
    let steps = [
        vec![first.to_string()],
        vec!["seed token minted".into(), format!("node={node} ")],
        vec![
            "http: sent".into(),
            format!("node={node} file=pc-node/vmlinuz "),
        ],
        vec![
            "http: sent".into(),
            format!("node={node} file=pc-node/initrd.img "),
        ],
        vec![
            "http: sent".into(),
            format!("node={node} file=pc-node/imgbuild.cpio "),
        ],
        vec!["seed served".into(), format!("node={node} file=user-data ")],
    ];
    for step in steps {
        let i = lines[from..]
            .iter()
            .position(|l| step.iter().all(|s| l.contains(s.as_str())))
            .unwrap_or_else(|| panic!("no line with {step:?} after line {from}:\n{log}"));
        from += i + 1;
    }
}

#[test]
fn pxe_boots_uefi_and_bios_nodes_to_their_first_boot() {
    if !ready() {
        return;
    }
    let (Some(base), Some(deb)) = (qemu::debian_base(), netbuild::ipxe_deb()) else {
        return;
    };
    let t0 = Instant::now();
    let tmp = support::scratch();
    let work = tmp.path();
    built_set(work, &base, &deb);
    eprintln!("artifacts built: {:.1?}", t0.elapsed());
    let lab = Lab::new(work, &["tap1", "tap2"]);

    // UEFI: OVMF's PXE, TFTP for iPXE, the rest over HTTP; a blank data disk keeps the state.
    let data = work.join("data.img");
    node::blank_data_disk(&data);
    let (uefi, console) = pxe_boot(&lab, Firmware::Uefi, ("tap1", UEFI_MAC), Some(&data), &[]);
    let seed_prefix = format!("http://{LAB_ADDR}:8080/seed/");
    uefi.assert_first_netboot("pc-1", &seed_prefix, true);
    // The local stage (no seed yet: it comes over HTTP later) took the iPXE line's network-config.
    assert!(
        uefi.cloud_init
            .contains("Applying network configuration from cmdline"),
        "{}",
        uefi.cloud_init
    );
    let log = lab.log();
    assert_timeline(&log, "pc-1", "tftp: sent");
    let tftp = log
        .lines()
        .find(|l| l.contains("tftp: sent"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(tftp.contains("file=efi-x64/snponly.efi"), "{tftp}");

    // The seed URL of that boot worked once; replayed now, every file of it is gone.
    let url = seed_url(&console);
    for f in ["user-data", "meta-data"] {
        assert!(
            log.contains(&format!("node=pc-1 file={f} bytes=")),
            "{f} was not served to pc-1:\n{log}"
        );
        assert_eq!(lab.http_status(&format!("{url}{f}")), "404", "{url}{f}");
    }
    assert!(
        lab.log().contains("http: 404 seed refused"),
        "{}",
        lab.log()
    );

    // BIOS: iPXE from the NIC's ROM goes to our HTTP script at once; no disk, state in RAM.
    let (bios, _) = pxe_boot(&lab, Firmware::Bios, ("tap2", BIOS_MAC), None, &[]);
    bios.assert_first_netboot("pc-2", &seed_prefix, false);
    let log = lab.log();
    let after_uefi = log.find("node=pc-1 file=user-data").unwrap();
    assert_timeline(&log[after_uefi..], "pc-2", "boot.ipxe without a MAC");
    assert_ne!(bios.get("machine_id"), uefi.get("machine_id"));
    let d = lab.dnsmasq_log();
    assert!(
        d.contains("tags: imgbuild-efi64") && d.contains("tags: imgbuild-ipxe"),
        "{d}"
    );
    drop(lab);
    eprintln!("netboot e2e wall time: {:.1?}", t0.elapsed());
}

#[test]
fn proxy_dhcp_on_the_pihole_host_boots_uefi_pxe_and_http_boot_nodes_to_their_first_boot() {
    proxy_boots_uefi_pxe_and_http_boot(Lab::proxy, "raw");
}

#[test]
fn proxy_dhcp_beside_the_routers_dhcp_boots_uefi_pxe_and_http_boot_nodes_to_their_first_boot() {
    proxy_boots_uefi_pxe_and_http_boot(Lab::router, "udp");
}

/// Our server as the proxyDHCP beside a DHCP server that gives addresses only (`lab`: on the
/// same host, or the router); `socket`: how it must receive on 67 there (`raw` when dnsmasq
/// holds the port, `udp` when it is free).
fn proxy_boots_uefi_pxe_and_http_boot(lab: fn(&Path, &[&str]) -> Lab, socket: &str) {
    if !ready() {
        return;
    }
    let (Some(base), Some(deb)) = (qemu::debian_base(), netbuild::ipxe_deb()) else {
        return;
    };
    let t0 = Instant::now();
    let tmp = support::scratch();
    let work = tmp.path();
    built_set(work, &base, &deb);
    let lab = lab(work, &["tap1", "tap2"]);
    assert!(
        lab.log()
            .contains(&format!("proxyDHCP on UDP 67: {socket}")),
        "{}",
        lab.log()
    );
    let seed_prefix = format!("http://{LAB_ADDR}:8080/seed/");

    // OVMF's PXE through the proxy: offer, 4011 ACK, TFTP of snponly.efi, then HTTP.
    let data = work.join("data.img");
    node::blank_data_disk(&data);
    let (pxe, _) = pxe_boot(&lab, Firmware::Uefi, ("tap1", UEFI_MAC), Some(&data), &[]);
    pxe.assert_first_netboot("pc-1", &seed_prefix, true);
    let log = lab.log();
    assert!(log.contains("class=UefiPxe(X64) port=Pxe"), "{log}");
    assert_timeline(&log, "pc-1", "tftp: sent");

    // UEFI HTTP Boot: OVMF's PXE options switched off; snponly.efi by URL, no TFTP.
    let no_pxe = [
        "-fw_cfg",
        "name=opt/org.tianocore/IPv4PXESupport,string=n",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv6PXESupport,string=n",
    ];
    let tftp_before = log.matches("tftp: sent").count();
    let (http, _) = pxe_boot(&lab, Firmware::Uefi, ("tap2", BIOS_MAC), None, &no_pxe);
    http.assert_first_netboot("pc-2", &seed_prefix, false);
    let log = lab.log();
    let after_pxe = log.find("node=pc-1 file=user-data").unwrap();
    let rest = &log[after_pxe..];
    assert!(
        rest.contains(&format!(
            "dhcp: answered (arch 16: UEFI HTTP Boot X64) mac={BIOS_MAC} class=UefiHttp(X64)"
        )),
        "{log}"
    );
    assert_timeline(rest, "pc-2", "http: sent client=10.33.0.");
    assert!(
        rest.contains("file=efi-x64/snponly.efi bytes=173792"),
        "{log}"
    );
    assert_eq!(log.matches("tftp: sent").count(), tftp_before, "{log}");
    assert_ne!(http.get("machine_id"), pxe.get("machine_id"));
    // Addresses came from dnsmasq alone (the proxy never offers one).
    let d = lab.dnsmasq_log();
    for mac in [UEFI_MAC, BIOS_MAC] {
        assert!(
            d.lines().any(
                |l| l.contains(&format!("DHCPACK({}) 10.33.0.", lab.dhcp_iface)) && l.contains(mac)
            ),
            "{d}"
        );
    }
    drop(lab);
    eprintln!("proxy netboot e2e wall time: {:.1?}", t0.elapsed());
}
