//! `imgbuild userdata` run for real: a stock-like Debian cloud VM (the Debian test base with
//! nothing of imgbuild's baked in, its root written by `imgbuild mkfs ext4`) boots in QEMU with
//! the generated user-data as a NoCloud seed (a `CIDATA` FAT image made by `mkfs.vfat` and
//! `mcopy`). Its downloads go to a mirror on 10.0.2.100 inside QEMU's restricted user network,
//! which QEMU forwards to an HTTP server on the host's 127.0.0.1 serving the k3s and Tailscale
//! stand-ins (`tests/fixtures/standins`). Nothing else is reachable from the guest.
//!
//! With the right hashes the node must end up with the units and config the user-data carries,
//! tailscaled and the mesh join before k3s (on the mesh address, with the token file), and the
//! first-boot credentials removed. With a wrong hash cloud-init-output.log must say which
//! download did not match, and nothing may be installed or started.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::qemu::{self, Arch, GuestFwd, LoopbackHttp, ResultsDisk, VmBuilder};
use support::{find_tool, imgbuild, require_tool, run, tests_dir};

/// The mirror address inside the guest's user network (QEMU relays it to the host's loopback).
const MIRROR_ADDR: &str = "10.0.2.100";
const K3S_URL: &str = "https://github.com/k3s-io/k3s/releases/download/v1.36.2%2Bk3s1/";
const TAILSCALE_URL: &str = "https://pkgs.tailscale.com/stable/";
/// Boot, cloud-init (downloads, installs, a mesh join, k3s) and the observer's wait: about four
/// minutes under TCG on 2 idle cores.
const USERDATA_TIMEOUT: Duration = Duration::from_secs(900);

/// Runs in the guest after cloud-init: waits for the node to settle, then copies what the host
/// checks to the results disk and powers off (through its unit).
const OBSERVE: &str = r#"#!/bin/sh
set -u
fail() { echo "IMGBUILD-USERDATA-OBSERVE-FAILED: $*" > /dev/console; exit 1; }
cloud-init status --wait > /dev/null 2>&1
# k3s installed: wait (bounded) for the first-boot cleanup that follows its start.
n=0
while [ -e /usr/local/bin/k3s ] && [ ! -e /var/lib/imgbuild/firstboot-done ] && [ "$n" -lt 240 ]; do
    sleep 1
    n=$((n + 1))
done
@MOUNT@ || fail "cannot mount the results disk"
r=/run/results
{
    echo "cloud_init=$(cloud-init status 2>/dev/null | sed -n 's/^status: //p')"
    echo "hostname=$(hostname)"
    for u in k3s-agent tailscaled imgbuild-mesh-join imgbuild-nodeip imgbuild-firstboot-done; do
        echo "active.$u=$(systemctl is-active "$u.service")"
        echo "enabled.$u=$(systemctl is-enabled "$u.service" 2>/dev/null)"
    done
    for f in /usr/local/bin/k3s /usr/bin/tailscale /usr/sbin/tailscaled /run/imgbuild/mesh-authkey \
        /etc/rancher/k3s/token /etc/cloud/cloud-init.disabled /var/lib/imgbuild/firstboot-done \
        /var/lib/cloud/instance; do
        if [ -e "$f" ]; then echo "exists.$f=yes"; else echo "exists.$f=no"; fi
    done
    echo "user.admin=$(id -nG admin 2>/dev/null)"
    echo "mesh_ip=$(ip -4 -o addr show dev tailscale0 2>/dev/null | awk '{print $4}')"
} > "$r/status.txt"
cp /var/log/cloud-init-output.log "$r/cloud-init-output.log" 2>/dev/null
cp /var/log/imgbuild-standin.log "$r/standin.log" 2>/dev/null
mkdir -p "$r/files"
for f in /etc/systemd/system/k3s-agent.service /etc/systemd/system/tailscaled.service \
    /etc/systemd/system/imgbuild-mesh-join.service /etc/systemd/system/imgbuild-nodeip.service \
    /etc/rancher/k3s/config.yaml /etc/rancher/k3s/config.yaml.d/20-node.yaml \
    /etc/rancher/k3s/config.yaml.d/10-node-ip.yaml; do
    [ -e "$f" ] && cp "$f" "$r/files/$(echo "${f#/}" | tr / _)"
done
umount "$r" || fail "cannot unmount the results disk"
echo "IMGBUILD-USERDATA-OBSERVE-DONE" > /dev/console
"#;

const UNIT: &str = "[Unit]
Description=Observe the node set up by cloud-init (imgbuild test)
# cloud-final is ordered after multi-user.target: hang off cloud-init.target, not multi-user.
After=cloud-final.service
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/imgbuild-observe
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=600

[Install]
WantedBy=cloud-init.target
";

fn tools_present() -> bool {
    qemu::require_qemu(Arch::X86_64, false)
        && require_tool("socat")
        && require_tool("mkfs.vfat")
        && require_tool("mcopy")
        && require_tool("mtype")
}

/// What one boot saw.
struct Outcome {
    status: std::collections::BTreeMap<String, String>,
    results: ResultsDisk,
    user_data: String,
    requests: Vec<String>,
}

impl Outcome {
    fn get(&self, key: &str) -> &str {
        self.status.get(key).map(String::as_str).unwrap_or("")
    }

    fn file(&self, name: &str) -> String {
        self.results.read(name).unwrap_or_default()
    }
}

/// Builds the stock VM's root, generates user-data with `lock` pins, boots, and reads back.
fn boot_with_userdata(work: &Path, wrong_tailscale_hash: bool) -> Option<Outcome> {
    let base = qemu::debian_base()?;

    // The stand-ins, laid out like the upstream release assets, served on 127.0.0.1.
    let mirror = work.join("mirror");
    let (code, _, err) = run(Command::new("sh")
        .arg(tests_dir().join("fixtures/standins/package.sh"))
        .arg(&mirror));
    assert_eq!(code, 0, "package.sh: {err}");
    let http = LoopbackHttp::serve(&mirror);

    // A project folder: the node fixtures with a lock pinning the stand-ins' real hashes.
    let project = work.join("project");
    copy_dir(&tests_dir().join("fixtures/node"), &project);
    chmod(&project.join("secrets.toml"), 0o600);
    let sha = |f: &str| hex::encode(Sha256::digest(fs::read(mirror.join(f)).expect("artifact")));
    let tailscale_sha = if wrong_tailscale_hash {
        "0".repeat(64)
    } else {
        sha("tailscale_1.96.4_amd64.tgz")
    };
    fs::write(
        project.join("imgbuild.lock"),
        format!(
            "version = 1\n\n[[input]]\nname = \"k3s/v1.36.2+k3s1/amd64\"\nurl = \"{K3S_URL}k3s\"\nsize = 1\nsha256 = \"{}\"\n\n[[input]]\nname = \"tailscale/1.96.4/amd64\"\nurl = \"{TAILSCALE_URL}tailscale_1.96.4_amd64.tgz\"\nsize = 1\nsha256 = \"{tailscale_sha}\"\n",
            sha("k3s")
        ),
    )
    .expect("writing the lock");
    let mirror_url = format!("http://{MIRROR_ADDR}/");
    let (code, user_data, err) = run(imgbuild()
        .current_dir(&project)
        .env_remove("IMGBUILD_SECRETS")
        .env_remove("IMGBUILD_INVENTORY")
        .args(["userdata", "lab-worker", "--node", "lab-1"])
        .arg(format!("--mirror={K3S_URL}={mirror_url}"))
        .arg(format!("--mirror={TAILSCALE_URL}={mirror_url}")));
    assert_eq!(code, 0, "imgbuild userdata: {err}");

    // The NoCloud seed: user-data as generated, meta-data as a provider would give it.
    let seed_dir = work.join("seed");
    fs::create_dir_all(&seed_dir).expect("mkdir");
    fs::write(seed_dir.join("user-data"), &user_data).expect("user-data");
    fs::write(
        seed_dir.join("meta-data"),
        "instance-id: iid-imgbuild-userdata-test\nlocal-hostname: stock-vm\n",
    )
    .expect("meta-data");
    let seed = work.join("seed.img");
    fs::File::create(&seed)
        .and_then(|f| f.set_len(8 << 20))
        .expect("seed image");
    let (code, _, err) = run(Command::new(find_tool("mkfs.vfat").expect("mkfs.vfat"))
        .args(["-n", "CIDATA"])
        .arg(&seed));
    assert_eq!(code, 0, "mkfs.vfat: {err}");
    for f in ["user-data", "meta-data"] {
        let (code, _, err) = run(Command::new("mcopy")
            .arg("-i")
            .arg(&seed)
            .arg(seed_dir.join(f))
            .arg(format!("::/{f}")));
        assert_eq!(code, 0, "mcopy {f}: {err}");
    }

    // The stock VM's root: the base plus the observer (a test fixture, not part of the node).
    let extra = work.join("extra");
    let observe = OBSERVE.replace("@MOUNT@", ResultsDisk::GUEST_MOUNT);
    qemu::write_file(&extra, "usr/local/sbin/imgbuild-observe", &observe, 0o755);
    qemu::write_file(
        &extra,
        "etc/systemd/system/imgbuild-observe.service",
        UNIT,
        0o644,
    );
    let wants = extra.join("etc/systemd/system/cloud-init.target.wants");
    fs::create_dir_all(&wants).expect("mkdir");
    std::os::unix::fs::symlink(
        "/etc/systemd/system/imgbuild-observe.service",
        wants.join("imgbuild-observe.service"),
    )
    .expect("symlink");
    let root_tar = work.join("root.tar");
    qemu::tar_with_extra_files(&base, &extra, &root_tar);
    let root = work.join("root.ext4");
    let (code, out, err) = run(imgbuild()
        .args(["mkfs", "ext4", "--from"])
        .arg(&root_tar)
        .arg("-o")
        .arg(&root)
        .args(["--size", "3G", "--label", "root", "--epoch", "1700000000"]));
    assert_eq!(code, 0, "imgbuild mkfs ext4: {out}{err}");
    fs::remove_file(&root_tar).expect("rm root.tar");

    let boot = qemu::extract_boot_files(&base, &work.join("bootfiles"));
    let cmdline = format!(
        "root=/dev/vda rw console={} panic=-1 systemd.show_status=1",
        Arch::X86_64.console()
    );
    let results = ResultsDisk::create(&work.join("results.img"));
    let mut vm = VmBuilder::kernel(Arch::X86_64, &boot.kernel, Some(&boot.initrd), &cmdline)
        .disk(&root, "root")
        .disk(&seed, "cidata")
        .disk(&results.image, "results")
        .restricted_net(vec![GuestFwd {
            guest_addr: MIRROR_ADDR.into(),
            guest_port: 80,
            host_port: http.port,
        }])
        .start(&work.join("vm"));
    vm.wait_for_poweroff(
        "IMGBUILD-USERDATA-OBSERVE-DONE",
        &["IMGBUILD-USERDATA-OBSERVE-FAILED", "Kernel panic"],
        USERDATA_TIMEOUT,
    );
    eprintln!("boot, cloud-init, observe, poweroff: {:.1?}", vm.elapsed());
    drop(vm);
    Some(Outcome {
        status: results.read_kv("status.txt"),
        results,
        user_data,
        requests: http.requests(),
    })
}

#[test]
fn userdata_turns_a_stock_debian_vm_into_the_node() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let Some(o) = boot_with_userdata(tmp.path(), false) else {
        return;
    };
    eprintln!("whole test: {:.1?}", started.elapsed());
    let log = o.file("cloud-init-output.log");
    let standin = o.file("standin.log");
    let show = || {
        format!(
            "{:#?}\n--- cloud-init-output.log ---\n{log}\n--- stand-ins ---\n{standin}",
            o.status
        )
    };

    assert!(
        o.requests.iter().any(|r| r.starts_with("GET /k3s "))
            && o.requests
                .iter()
                .any(|r| r.starts_with("GET /tailscale_1.96.4_amd64.tgz ")),
        "the guest did not download from the mirror: {:?}\n{}",
        o.requests,
        show()
    );
    assert!(
        log.contains("every download matches imgbuild.lock"),
        "{}",
        show()
    );
    assert_eq!(o.get("hostname"), "lab-1", "{}", show());
    assert!(o.get("user.admin").contains("sudo"), "{}", show());
    for u in [
        "k3s-agent",
        "tailscaled",
        "imgbuild-mesh-join",
        "imgbuild-nodeip",
        "imgbuild-firstboot-done",
    ] {
        assert_eq!(o.get(&format!("active.{u}")), "active", "{u}: {}", show());
        assert_eq!(o.get(&format!("enabled.{u}")), "enabled", "{u}: {}", show());
    }
    for f in [
        "/usr/local/bin/k3s",
        "/usr/bin/tailscale",
        "/usr/sbin/tailscaled",
        "/etc/rancher/k3s/token",
    ] {
        assert_eq!(o.get(&format!("exists.{f}")), "yes", "{f}: {}", show());
    }
    // First boot is over: the one-off key and cloud-init's copy of the seed are gone.
    for (f, want) in [
        ("/run/imgbuild/mesh-authkey", "no"),
        ("/var/lib/cloud/instance", "no"),
        ("/etc/cloud/cloud-init.disabled", "yes"),
        ("/var/lib/imgbuild/firstboot-done", "yes"),
    ] {
        assert_eq!(o.get(&format!("exists.{f}")), want, "{f}: {}", show());
    }

    // Units and config on the node are byte for byte what the user-data carries.
    for (name, path) in [
        (
            "etc_systemd_system_k3s-agent.service",
            "/etc/systemd/system/k3s-agent.service",
        ),
        (
            "etc_systemd_system_tailscaled.service",
            "/etc/systemd/system/tailscaled.service",
        ),
        (
            "etc_systemd_system_imgbuild-mesh-join.service",
            "/etc/systemd/system/imgbuild-mesh-join.service",
        ),
        (
            "etc_systemd_system_imgbuild-nodeip.service",
            "/etc/systemd/system/imgbuild-nodeip.service",
        ),
        (
            "etc_rancher_k3s_config.yaml",
            "/etc/rancher/k3s/config.yaml",
        ),
        (
            "etc_rancher_k3s_config.yaml.d_20-node.yaml",
            "/etc/rancher/k3s/config.yaml.d/20-node.yaml",
        ),
    ] {
        let on_node = o.file(&format!("files/{name}"));
        assert!(
            !on_node.is_empty(),
            "{path} missing on the node: {}",
            show()
        );
        assert_eq!(
            on_node,
            write_files_content(&o.user_data, path),
            "{path} on the node differs from the user-data"
        );
    }

    // Order and arguments, as the stand-ins recorded them: the mesh joined with the key file and
    // tags before k3s started as an agent on the mesh address, with the token file present.
    let mesh_ip = o.get("mesh_ip").split('/').next().unwrap_or("").to_string();
    assert!(
        mesh_ip.starts_with("100.64.0."),
        "no mesh address: {}",
        show()
    );
    let node_ip = o.file("files/etc_rancher_k3s_config.yaml.d_10-node-ip.yaml");
    assert!(
        node_ip.contains(&format!("node-ip: \"{mesh_ip}\"")),
        "{node_ip}\n{}",
        show()
    );
    let pos = |needle: &str| {
        standin
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in the stand-in log: {}", show()))
    };
    let up = pos("tailscale up");
    let k3s = pos("k3s start role=agent");
    assert!(up < k3s, "k3s started before the mesh join: {}", show());
    let up_line = standin.lines().nth(up).unwrap_or("");
    assert!(
        up_line.contains("--auth-key=file:/run/imgbuild/mesh-authkey")
            && up_line.contains("--advertise-tags=tag:k3s")
            && up_line.contains("--hostname=lab-1")
            && up_line.contains("--accept-dns=false"),
        "{up_line}"
    );
    assert!(
        standin.contains("token-file /etc/rancher/k3s/token present mode=600"),
        "{}",
        show()
    );
    assert!(
        standin.contains(&format!("node-ip: \"{mesh_ip}\"")),
        "{}",
        show()
    );
    // The secrets never reach the logs (every fixture secret starts with FAKE-).
    assert!(
        !log.contains("FAKE-") && !standin.contains("FAKE-"),
        "a secret leaked into a log: {}",
        show()
    );
}

#[test]
fn a_wrong_artifact_hash_stops_the_install_with_nothing_started() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(o) = boot_with_userdata(tmp.path(), true) else {
        return;
    };
    let log = o.file("cloud-init-output.log");
    let show = || format!("{:#?}\n--- cloud-init-output.log ---\n{log}", o.status);
    assert!(
        log.contains("imgbuild: ERROR: SHA-256 mismatch for tailscale")
            && log.contains(&format!("imgbuild.lock pins {}", "0".repeat(64))),
        "{}",
        show()
    );
    assert!(
        log.contains("nothing was installed or started"),
        "{}",
        show()
    );
    assert_eq!(o.get("cloud_init"), "error", "{}", show());
    for f in [
        "/usr/local/bin/k3s",
        "/usr/bin/tailscale",
        "/usr/sbin/tailscaled",
    ] {
        assert_eq!(o.get(&format!("exists.{f}")), "no", "{f}: {}", show());
    }
    for u in [
        "k3s-agent",
        "tailscaled",
        "imgbuild-mesh-join",
        "imgbuild-nodeip",
    ] {
        assert_ne!(o.get(&format!("active.{u}")), "active", "{u}: {}", show());
        assert_ne!(o.get(&format!("enabled.{u}")), "enabled", "{u}: {}", show());
    }
    assert_eq!(o.file("standin.log"), "", "a stand-in ran");
    assert!(
        !log.contains("FAKE-"),
        "a secret leaked into cloud-init-output.log"
    );
}

/// The `content: |` block of the `write_files` entry for `path`, de-indented.
fn write_files_content(user_data: &str, path: &str) -> String {
    let lines: Vec<&str> = user_data.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == format!("- path: \"{path}\""))
        .unwrap_or_else(|| panic!("{path} is not in the user-data"));
    let content = start
        + lines[start..]
            .iter()
            .position(|l| l.trim() == "content: |")
            .expect("content block");
    let mut out = String::new();
    for l in &lines[content + 1..] {
        if let Some(body) = l.strip_prefix("      ") {
            out.push_str(body);
            out.push('\n');
        } else if l.is_empty() {
            out.push('\n');
        } else {
            break;
        }
    }
    // A `|` block keeps exactly one final newline; blank lines after it belong to the YAML.
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest: PathBuf = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}
