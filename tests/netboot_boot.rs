//! The netboot artifacts of a node profile boot a node: `imgbuild netboot build pc-node` from
//! the cached Debian base, then QEMU boots `vmlinuz` directly with `initrd.img` + `imgbuild.cpio`
//! (concatenated, as a boot loader loads several initrds) and the artifact set's command line,
//! plus the node's NoCloud seed served over HTTP from the host's loopback, reached through
//! QEMU's restricted user network (`guestfwd`; nothing else is reachable).
//!
//! With a blank data partition attached, the first boot must give the node its identity from the
//! seed, a read-only squashfs root, the mesh before k3s and no secret in the logs; a second boot
//! of the same VM keeps its identity from the data partition (the boots without one, state in
//! RAM, are in `netboot_e2e_boot.rs`). A root image whose SHA-256 does not match the command line
//! stops the boot with the hook's message.

mod support;

use std::path::Path;
use std::time::Duration;

use support::netbuild;
use support::node::{self, Seen, Setup};
use support::qemu::{self, Arch, GuestFwd, LoopbackHttp, ResultsDisk, VmBuilder};
use support::{imgbuild, require_tool, run};

const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);
const SEED_ADDR: &str = "10.0.2.100";

fn tools_present() -> bool {
    qemu::require_qemu(Arch::X86_64, false)
        && require_tool("socat")
        && require_tool("mksquashfs")
        && require_tool("sgdisk")
        && require_tool("mkfs.ext4")
        && require_tool("mtype")
}

/// Writes the node's seed (`imgbuild seed`) where the loopback server serves it.
fn write_seed(setup: &Setup, node: &str, dir: &Path) {
    let (code, out, err) = run(imgbuild()
        .current_dir(&setup.dir)
        .args(["seed", &setup.profile, "--node", node, "--out"])
        .arg(dir));
    assert_eq!(code, 0, "imgbuild seed: {out}{err}");
}

struct Artifacts<'a> {
    dir: &'a Path,
    initrd: &'a Path,
    cmdline: String,
}

fn start(
    a: &Artifacts<'_>,
    cmdline: &str,
    disks: &[(&Path, &str)],
    http: u16,
    vm: &Path,
) -> qemu::Vm {
    let mut b = VmBuilder::kernel(
        Arch::X86_64,
        &a.dir.join("vmlinuz"),
        Some(a.initrd),
        cmdline,
    )
    .memory_mib(2048)
    .restricted_net(vec![GuestFwd {
        guest_addr: SEED_ADDR.into(),
        guest_port: 80,
        host_port: http,
    }]);
    for (d, serial) in disks {
        b = b.disk(d, serial);
    }
    b.start(vm)
}

/// Boots with `data` (the data disk) attached, or none (state in RAM).
fn boot(a: &Artifacts<'_>, data: Option<&Path>, work: &Path, name: &str, http: u16) -> Seen {
    let results = ResultsDisk::create(&work.join(format!("results-{name}.img")));
    // `nocloud-net`: cloud-init 22.4 (Debian 12) treats `ds=nocloud` as a local-only seed and,
    // with an http:// seed, then skips the modules that apply it.
    let cmdline = format!(
        "{} ds=nocloud-net;s=http://{SEED_ADDR}/seed/pc-1/ panic=-1",
        a.cmdline
    );
    let mut disks: Vec<(&Path, &str)> = data.map(|d| (d, "data")).into_iter().collect();
    disks.push((&results.image, "results"));
    let mut vm = start(a, &cmdline, &disks, http, &work.join(format!("vm-{name}")));
    vm.wait_for_poweroff(node::DONE, node::FAILED, BOOT_TIMEOUT);
    eprintln!("boot {name}: {:.1?}", vm.elapsed());
    drop(vm);
    Seen::read(&results)
}

fn assert_seed_served(requests: &[String]) {
    assert!(
        requests.iter().any(|r| r.contains("/seed/pc-1/user-data")),
        "{requests:?}"
    );
}

#[test]
fn netboot_artifacts_boot_the_node_and_refuse_a_wrong_root() {
    if !tools_present() {
        return;
    }
    let (Some(base), Some(deb)) = (qemu::debian_base(), netbuild::ipxe_deb()) else {
        return;
    };
    let tmp = support::scratch();
    let work = tmp.path();
    let (setup, mirror) = netbuild::pc_node(work, &base, &deb);
    let art = work.join("netboot");
    netbuild::build(&setup, &mirror, &art, "022", "UTC");
    let json = netbuild::netboot_json(&art);
    let initrd = netbuild::combined_initrd(&art, &work.join("initrds.img"));
    let a = Artifacts {
        dir: &art,
        initrd: &initrd,
        cmdline: json["cmdline"].as_str().unwrap().to_string(),
    };

    // The seed, served where the command line says.
    let www = work.join("www");
    write_seed(&setup, "pc-1", &www.join("seed/pc-1"));
    let http = LoopbackHttp::serve(&www);
    let seed_url = format!("http://{SEED_ADDR}/seed/pc-1/");

    // A wrong root hash stops the boot in the initramfs, before anything mounts the root.
    let sha = a
        .cmdline
        .split(' ')
        .find_map(|w| w.strip_prefix("imgbuild.root-sha256="))
        .expect("the command line names the root's SHA-256")
        .to_string();
    let bad = a.cmdline.replace(&sha, &"0".repeat(64));
    assert_ne!(bad, a.cmdline);
    let mut vm = start(&a, &bad, &[], http.port, &work.join("vm-bad"));
    vm.wait_for(
        "imgbuild: root image SHA-256 mismatch",
        &["Kernel panic", "imgbuild-preinit", "Welcome to"],
        Duration::from_secs(600),
    );
    drop(vm);

    // First boot with a blank data partition, then a second boot of the same VM.
    let data = work.join("data.img");
    node::blank_data_disk(&data);
    let first = boot(&a, Some(&data), work, "first", http.port);
    first.assert_first_netboot("pc-1", &seed_url, true);
    assert_seed_served(&http.requests());
    eprintln!(
        "RAM after the first boot (2048 MiB VM): total {} MiB, used {}, shared {}, available {}",
        first.get("mem_total_mib"),
        first.get("mem_used_mib"),
        first.get("mem_shared_mib"),
        first.get("mem_available_mib")
    );
    let second = boot(&a, Some(&data), work, "second", http.port);
    second.assert_later_boot(&first, "pc-1", 2);
    assert_eq!(second.get("root_fstype"), "squashfs", "{}", second.show());
    // A node with no data partition (state in RAM) is booted by netboot_e2e_boot: BIOS PXE and
    // UEFI HTTP Boot.
}
