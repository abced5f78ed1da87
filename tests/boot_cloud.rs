//! The cloud image as a provider runs it: `imgbuild build` of a profile extending the stock
//! `droplet-worker` writes the shared qcow2; `imgbuild seed` gives the node's user-data, which goes
//! on an OpenStack ConfigDrive (an ISO 9660 labelled `config-2` made by `xorriso`, with
//! `openstack/latest/{meta_data.json,user_data}`). The qcow2 (grown with `qemu-img resize`) boots
//! under QEMU (TCG, OVMF) with the ConfigDrive attached and no network.
//!
//! First boot: cloud-init takes the seed from the ConfigDrive datasource (its instance id is the
//! drive's uuid), the node joins the mesh, then k3s starts, the one-off key is gone, no unit
//! failed. Second boot of the same qcow2, the ConfigDrive still attached: cloud-init stays
//! disabled (its own status says so, its log shows one run), the mesh join and the first-boot
//! cleanup do not run again, k3s finds its state, hostname, machine-id and host keys are kept,
//! and the first boot's journal is still there. Then the disk's raw data partition holds the
//! agent token only in the token file, and the mesh key nowhere.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::node::{self as node, NodeProfile, Seen, Setup, boot_vm};
use support::qemu::{self, Arch, VmBuilder};
use support::{require_tool, run};

/// The ConfigDrive's instance uuid (OpenStack's `uuid` in meta_data.json).
const INSTANCE_UUID: &str = "8d1a4c0e-6b7f-4f0c-9a35-2f1d0c7e5b11";

fn tools_present() -> bool {
    qemu::require_qemu(Arch::X86_64, true)
        && require_tool("xorriso")
        && require_tool("qemu-img")
        && require_tool("debugfs")
        && require_tool("sfdisk")
}

/// An OpenStack ConfigDrive at `work/config-2.iso` carrying `user_data` for `hostname`.
fn config_drive(work: &Path, user_data: &Path, hostname: &str) -> PathBuf {
    let root = work.join("config-drive");
    let latest = root.join("openstack/latest");
    fs::create_dir_all(&latest).unwrap();
    fs::copy(user_data, latest.join("user_data")).unwrap();
    let meta = serde_json::json!({
        "uuid": INSTANCE_UUID,
        "name": hostname,
        "hostname": hostname,
        "availability_zone": "nova",
        "launch_index": 0,
    });
    fs::write(latest.join("meta_data.json"), meta.to_string()).unwrap();
    let iso = work.join("config-2.iso");
    let (code, _, err) = run(Command::new("xorriso")
        .args([
            "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "config-2", "-o",
        ])
        .arg(&iso)
        .arg(&root));
    assert_eq!(code, 0, "xorriso: {err}");
    fs::remove_dir_all(&root).unwrap();
    iso
}

/// Boots the qcow2 `disk` with the ConfigDrive `iso` attached.
fn boot(disk: &Path, iso: &Path, work: &Path, name: &str) -> Seen {
    let vm = VmBuilder::uefi(Arch::X86_64)
        .qcow2_disk(disk, "disk")
        .disk(iso, "config-drive");
    boot_vm(vm, work, name)
}

/// The first boot's checks that differ from a NoCloud node's: the ConfigDrive was the seed.
fn assert_first_cloud_boot(seen: &Seen, node: &str) {
    let show = seen.show();
    assert_eq!(seen.get("hostname"), node, "{show}");
    assert_eq!(seen.get("boots"), "1", "{show}");
    seen.assert_clean_boot();
    // cloud-init ran for the ConfigDrive's instance, and is off now that the node has joined.
    assert_eq!(seen.get("cloud_instance_id"), INSTANCE_UUID, "{show}");
    assert!(
        seen.cloud_init
            .contains("Loaded datasource DataSourceConfigDrive - DataSourceConfigDrive"),
        "cloud-init did not use the ConfigDrive: {show}\n{}",
        seen.cloud_init
    );
    assert_eq!(seen.get("cloud_init_status"), "disabled", "{show}");
    assert_eq!(seen.get("cloud_state_fs"), "tmpfs", "{show}");
    assert_eq!(seen.get("disk_size"), node::DISK_SIZE.to_string(), "{show}");
    for u in [
        "k3s-agent",
        "tailscaled",
        "imgbuild-mesh-join",
        "imgbuild-nodeip",
    ] {
        assert_eq!(seen.get(&format!("active.{u}")), "active", "{u}: {show}");
    }
    for (f, want) in [
        ("/run/imgbuild/mesh-authkey", "no"),
        ("/etc/cloud/cloud-init.disabled", "yes"),
        ("/var/lib/imgbuild/firstboot-done", "yes"),
        ("/etc/rancher/k3s/token", "yes"),
    ] {
        assert_eq!(seen.get(&format!("exists.{f}")), want, "{f}: {show}");
    }
    let pos = |needle: &str| {
        seen.standin
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in the stand-in log: {show}"))
    };
    assert!(
        pos("tailscale up flags=") < pos("k3s start role=agent"),
        "k3s started before the mesh was up: {show}"
    );
    assert!(!seen.standin.contains(" refused: "), "{show}");
    for (name, value) in node::SECRETS {
        assert!(
            !seen.standin.contains(value)
                && !seen.journal.contains(value)
                && !seen.cloud_init.contains(value),
            "secret {name} was logged"
        );
    }
}

#[test]
fn cloud_qcow2_becomes_the_node_from_a_config_drive_and_boots_again_without_a_first_boot() {
    if !tools_present() {
        return;
    }
    let Some(base) = qemu::debian_base() else {
        return;
    };
    let started = std::time::Instant::now();
    let tmp = support::scratch();
    let work = tmp.path();
    let profile = NodeProfile {
        name: "cloud-node",
        extends: "droplet-worker",
        formats: r#"["qcow2"]"#,
        ..NodeProfile::pc_node(&base)
    };
    let setup = Setup::new(work, &profile, "d");
    let out = setup.build_shared();
    let seed = setup.seed("d-1");
    let iso = config_drive(work, &seed.join("user-data"), "d-1");

    let disk = work.join("d-1.qcow2");
    fs::copy(out.join("cloud-node.qcow2"), &disk).unwrap();
    let (code, _, err) = run(Command::new("qemu-img")
        .args(["resize", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg(node::DISK_SIZE.to_string()));
    assert_eq!(code, 0, "qemu-img resize: {err}");

    let first = boot(&disk, &iso, work, "d-1-first");
    assert_first_cloud_boot(&first, "d-1");

    // The ConfigDrive stays attached (a provider keeps serving it): nothing of the first boot
    // runs again.
    let second = boot(&disk, &iso, work, "d-1-second");
    second.assert_later_boot(&first, "d-1", 2);
    let show = second.show();
    // cloud-init did not run this boot, and its log (on the data partition) shows the one run
    // of the first boot, for the ConfigDrive's instance.
    assert_eq!(second.get("cloud_init_status"), "disabled", "{show}");
    assert_eq!(second.get("cloud_instance_id"), "", "{show}");
    let ci = &second.cloud_init;
    assert_eq!(
        ci.matches("running 'init-local'").count(),
        1,
        "{show}\n{ci}"
    );
    let target = format!("init will now be targeting instance id: {INSTANCE_UUID}. new=True");
    assert_eq!(ci.matches(target.as_str()).count(), 1, "{show}\n{ci}");

    // The raw bytes of the data partition, read from a raw copy of the qcow2.
    let raw = work.join("d-1.raw");
    let (code, _, err) = run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&disk)
        .arg(&raw));
    assert_eq!(code, 0, "qemu-img convert: {err}");
    node::assert_secrets_only_in_files(&raw, &["/etc/upper/rancher/k3s/token"]);
    eprintln!("whole test: {:.1?}", started.elapsed());
}
