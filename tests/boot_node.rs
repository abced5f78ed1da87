//! The proof that a profile becomes a k3s node: `imgbuild build amd64-worker --node …` from a real
//! Debian base, booted under QEMU (TCG, OVMF) with no network. Stand-in k3s and Tailscale
//! binaries (tests/fixtures/standins) go through the same pinned-artifact path a real build uses
//! and record how they were started.
//!
//! One disk boots twice (identity and state persist, first boot does not run again); a second
//! node from the same image gets its own machine-id and SSH host keys.

mod support;

use support::node::{NodeProfile, Setup, boot_uefi as boot, grown_copy};
use support::qemu::{self, Arch};
use support::require_tool;

fn tools_present() -> bool {
    qemu::require_qemu(Arch::X86_64, true) && require_tool("mkfs.vfat") && require_tool("mtype")
}

#[test]
fn node_image_boots_joins_the_mesh_starts_k3s_and_keeps_its_state() {
    if !tools_present() {
        return;
    }
    let Some(base) = qemu::debian_base() else {
        return;
    };
    let tmp = support::scratch();
    let work = tmp.path();
    let profile = NodeProfile::pc_node(&base);
    let setup = Setup::new(work, &profile, "pc");
    let img1 = setup.build_node("pc-1");
    setup.assert_secrets_only_in_node_image(&img1);

    // First boot.
    let disk = grown_copy(&img1, &work.join("pc-1.img"));
    let first = boot(&disk, work, "pc-1-first");
    first.assert_first_boot("pc-1", profile.boot_mount);

    // Second boot of the same disk: identity and k3s state persist, first boot does not run again.
    let second = boot(&disk, work, "pc-1-second");
    second.assert_later_boot(&first, "pc-1", 2);

    // A second node from the same image is a different machine.
    let img2 = setup.build_node("pc-2");
    let disk2 = grown_copy(&img2, &work.join("pc-2.img"));
    let other = boot(&disk2, work, "pc-2-first");
    let show3 = other.show();
    assert_eq!(other.get("hostname"), "pc-2", "{show3}");
    assert!(!other.get("machine_id").is_empty(), "{show3}");
    assert_ne!(other.get("machine_id"), first.get("machine_id"), "{show3}");
    assert!(!other.get("host_key").is_empty(), "{show3}");
    assert_ne!(other.get("host_key"), first.get("host_key"), "{show3}");
}
