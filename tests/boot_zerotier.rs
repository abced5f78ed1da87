//! A ZeroTier node: `mesh.provider = "zerotier"` on the stock amd64 worker, composed from the
//! stand-in `zerotier-one` package (tests/fixtures/standins, packed with `dpkg-deb` like the
//! download.zerotier.com one) and booted once under QEMU (TCG, OVMF) with no network.
//!
//! The shared image holds no ZeroTier identity (read from its root filesystem with `debugfs`);
//! after the boot the node has one, generated there at zerotier-one's first start, owner-only.
//! It joined the profile's network id on zt0, k3s started after it on the zt0 address (unit
//! start times and the stand-ins' log), the seed is gone, and no unit failed.

mod support;

use std::path::Path;
use std::process::Command;

use support::node::{self as node, Mesh, NodeProfile, Setup, boot_uefi, grown_copy};
use support::qemu::{self, Arch};
use support::{require_tool, run};

fn tools_present() -> bool {
    qemu::require_qemu(Arch::X86_64, true)
        && require_tool("mkfs.vfat")
        && require_tool("mtype")
        && require_tool("debugfs")
        && require_tool("sfdisk")
        && require_tool("dpkg-deb")
}

/// `debugfs -R "stat PATH"` on every ext4 partition of `image`: whether PATH is there, per
/// partition that has `/usr/sbin/zerotier-one` (the root: found, or the check proves nothing).
fn in_root_fs(image: &Path, path: &str) -> bool {
    let stat = |dev: &str, p: &str| {
        let (_, out, err) = run(Command::new("debugfs").args(["-R", &format!("stat {p}"), dev]));
        out.contains("Inode:") && !err.contains("not found")
    };
    let roots: Vec<String> = support::flash::partitions(image)
        .iter()
        .map(|part| format!("{}?offset={}", image.display(), part.start))
        .filter(|dev| stat(dev, "/usr/sbin/zerotier-one"))
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "no root filesystem with zerotier-one in {}",
        image.display()
    );
    stat(&roots[0], path)
}

#[test]
fn zerotier_node_generates_its_identity_joins_and_starts_k3s_after_the_mesh() {
    if !tools_present() {
        return;
    }
    let Some(base) = qemu::debian_base() else {
        return;
    };
    let tmp = support::scratch();
    let work = tmp.path();
    let profile = NodeProfile {
        name: "zt-node",
        mesh: Mesh::Zerotier,
        ..NodeProfile::pc_node(&base)
    };
    let setup = Setup::new(work, &profile, "zt");
    let img = setup.build_node("zt-1");
    setup.assert_secrets_only_in_node_image(&img);

    // The package and the shared image carry the daemon, never an identity.
    let shared = setup.out.join("zt-node.img");
    assert!(in_root_fs(
        &shared,
        "/usr/lib/systemd/system/zerotier-one.service"
    ));
    for f in ["identity.secret", "identity.public", "authtoken.secret"] {
        assert!(
            !in_root_fs(&shared, &format!("/var/lib/zerotier-one/{f}")),
            "the shared image holds a ZeroTier {f}"
        );
    }

    let disk = grown_copy(&img, &work.join("zt-1.img"));
    let seen = boot_uefi(&disk, work, "zt-1", None);
    seen.assert_first_boot_on("zt-1", profile.boot_mount, "agent", Mesh::Zerotier);

    // Only the token file holds a secret on the data partition, its raw bytes included.
    node::assert_secrets_only_in_files(&disk, &["/etc/upper/rancher/k3s/token"]);
}
