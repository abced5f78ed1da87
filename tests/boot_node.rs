//! The proof that a profile becomes a k3s node: `imgbuild build amd64-worker --node …` from a real
//! Debian base, booted under QEMU (TCG, OVMF) with no network. Stand-in k3s and Tailscale
//! binaries (tests/fixtures/standins) go through the same pinned-artifact path a real build uses
//! and record how they were started.
//!
//! One disk boots twice (identity and state persist, first boot does not run again, the journal
//! keeps both boots, the inventory's static address is configured on the NIC); then its data
//! partition's raw bytes are searched for every secret. A second node from the same image gets
//! its own machine-id and SSH host keys. No boot has a failed unit.

mod support;

use support::node::{self as node, NodeProfile, Setup, boot_uefi as boot, grown_copy};
use support::qemu::{self, Arch};
use support::require_tool;

/// pc-1's NIC and the static address its inventory entry gives it (QEMU's user network).
const PC1_MAC: &str = "52:54:00:12:34:60";
const PC1_ADDRESS: &str = "10.0.2.50/24";
const PC1_GATEWAY: &str = "10.0.2.2";

fn tools_present() -> bool {
    qemu::require_qemu(Arch::X86_64, true)
        && require_tool("mkfs.vfat")
        && require_tool("mtype")
        && require_tool("setcap")
        && require_tool("debugfs")
        && require_tool("sfdisk")
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
    // The base carries a file capability (as ping's in a full Debian), which must survive.
    let base = node::base_with_capability(&base, work);
    let profile = NodeProfile::pc_node(&base);
    let setup = Setup::new(work, &profile, "pc");
    setup.set_static_address("pc-1", PC1_MAC, PC1_ADDRESS, PC1_GATEWAY);
    let img1 = setup.build_node("pc-1");
    setup.assert_secrets_only_in_node_image(&img1);

    // First boot, with a NIC: the seed's network-config gives it the inventory's address.
    let disk = grown_copy(&img1, &work.join("pc-1.img"));
    let first = boot(&disk, work, "pc-1-first", Some(PC1_MAC));
    first.assert_first_boot("pc-1", profile.boot_mount);
    first.assert_static_address(PC1_ADDRESS, PC1_GATEWAY);
    first.assert_capability(node::CAP_PROBE, node::CAP_PROBE_CAPS);

    // Second boot of the same disk: identity and k3s state persist, first boot does not run
    // again, the network config stays, the first boot's journal is readable.
    let second = boot(&disk, work, "pc-1-second", Some(PC1_MAC));
    second.assert_later_boot(&first, "pc-1", 2);
    second.assert_static_address(PC1_ADDRESS, PC1_GATEWAY);

    // After both boots the data partition's raw bytes (free blocks and journal included) hold
    // the token only in the token file (the upper layer of /etc), the mesh key nowhere.
    node::assert_secrets_only_in_files(&disk, &["/etc/upper/rancher/k3s/token"]);

    // A second node from the same image is a different machine (no NIC: nothing to configure,
    // and still no failed unit).
    let img2 = setup.build_node("pc-2");
    let disk2 = grown_copy(&img2, &work.join("pc-2.img"));
    let other = boot(&disk2, work, "pc-2-first", None);
    other.assert_clean_boot();
    let show3 = other.show();
    assert_eq!(other.get("hostname"), "pc-2", "{show3}");
    assert!(!other.get("machine_id").is_empty(), "{show3}");
    assert_ne!(other.get("machine_id"), first.get("machine_id"), "{show3}");
    assert!(!other.get("host_key").is_empty(), "{show3}");
    assert_ne!(other.get("host_key"), first.get("host_key"), "{show3}");
}
