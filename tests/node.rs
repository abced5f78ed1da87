//! Node composition: the tree a profile adds to a base OS, checked for every role and mesh, with
//! external judges where there are some (PyYAML for the YAML, dash for the scripts,
//! systemd-analyze for the units).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use imgbuild::node::compose::{self, Artifacts, ComposeError, MeshArtifacts};
use imgbuild::node::files::BoardFacts;
use imgbuild::node::templates::Templates;
use imgbuild::profile::{ProfileStore, Resolved};
use imgbuild::tree::{Content, Entry, Kind, Tree, TreePath};

const EPOCH: i64 = 1_700_000_000;
const FAKE: &str = "FAKE-";

fn p(s: &str) -> TreePath {
    TreePath::new(s).unwrap()
}

/// A small merged-/usr Debian-like base: what composition needs, plus identity and state files
/// that must not survive into the image.
fn base() -> Tree {
    let mut t = Tree::new();
    let d = Entry::dir(0o755);
    for dir in [
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib/systemd/system",
        "/etc/ssh",
        "/etc/systemd/system",
        "/var/lib/dbus",
        "/var/lib/cloud/instances/old",
        "/var/lib/tailscale",
        "/etc/rancher/node",
        "/etc/rancher/k3s",
        "/var/lib/imgbuild",
    ] {
        t.mkdir_p(&p(dir), &d).unwrap();
    }
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
    ] {
        t.insert(p(link), Entry::symlink(target)).unwrap();
    }
    let file = |t: &mut Tree, path: &str, mode: u32, data: &str| {
        t.insert(
            p(path),
            Entry::file(mode, Content::bytes(data.as_bytes().to_vec())),
        )
        .unwrap();
    };
    file(&mut t, "/usr/lib/systemd/systemd", 0o755, "ELF");
    file(&mut t, "/usr/bin/cloud-init", 0o755, "#!/usr/bin/python3\n");
    file(&mut t, "/usr/sbin/findfs", 0o755, "ELF");
    file(&mut t, "/usr/bin/sh", 0o755, "ELF");
    file(
        &mut t,
        "/usr/lib/systemd/system/systemd-time-wait-sync.service",
        0o644,
        "[Unit]\n[Install]\nWantedBy=sysinit.target\n",
    );
    file(
        &mut t,
        "/etc/machine-id",
        0o444,
        "0123456789abcdef0123456789abcdef\n",
    );
    file(
        &mut t,
        "/var/lib/dbus/machine-id",
        0o444,
        "0123456789abcdef0123456789abcdef\n",
    );
    file(
        &mut t,
        "/etc/ssh/ssh_host_ed25519_key",
        0o600,
        "FAKE-host-key\n",
    );
    file(
        &mut t,
        "/etc/ssh/ssh_host_ed25519_key.pub",
        0o644,
        "ssh-ed25519 AAAA\n",
    );
    file(
        &mut t,
        "/etc/ssh/sshd_config",
        0o644,
        "Include /etc/ssh/sshd_config.d/*.conf\n",
    );
    file(
        &mut t,
        "/var/lib/cloud/instances/old/user-data.txt",
        0o600,
        "FAKE-old-user-data\n",
    );
    file(
        &mut t,
        "/var/lib/tailscale/tailscaled.state",
        0o600,
        "FAKE-state\n",
    );
    file(
        &mut t,
        "/etc/rancher/node/password",
        0o600,
        "FAKE-node-password\n",
    );
    file(
        &mut t,
        "/etc/rancher/k3s/token",
        0o600,
        "FAKE-baked-token\n",
    );
    file(
        &mut t,
        "/var/lib/imgbuild/mesh-authkey",
        0o600,
        "FAKE-baked-key\n",
    );
    t
}

fn artifacts() -> Artifacts {
    Artifacts {
        k3s: Content::bytes(b"k3s-binary".to_vec()),
        mesh: MeshArtifacts::Tailscale {
            tailscale: Content::bytes(b"tailscale-binary".to_vec()),
            tailscaled: Content::bytes(b"tailscaled-binary".to_vec()),
        },
        airgap_images: None,
    }
}

fn resolve(name: &str, set: &[&str]) -> Resolved {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    ProfileStore::stock_only().resolve(name, &set).unwrap()
}

fn composed(name: &str) -> (Tree, compose::Composed, Resolved) {
    composed_with(name, &[])
}

/// The stock profile `name` with `--set` overrides, composed onto the fixture base.
fn composed_with(name: &str, set: &[&str]) -> (Tree, compose::Composed, Resolved) {
    let r = resolve(name, set);
    let mut t = base();
    let c = compose::compose(
        &mut t,
        &r,
        &artifacts(),
        &BoardFacts::for_profile(&r),
        &Templates::stock(),
        EPOCH,
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    (t, c, r)
}

fn text(t: &Tree, path: &str) -> String {
    match &t
        .get(&p(path))
        .unwrap_or_else(|| panic!("{path} missing"))
        .kind
    {
        Kind::File(c) => String::from_utf8(c.read_all().unwrap()).unwrap(),
        k => panic!("{path} is a {}", k.name()),
    }
}

/// YAML → JSON through PyYAML (a YAML 1.1 reader: the one that turns `on` into true).
fn yaml_to_json(yaml: &str) -> Option<serde_json::Value> {
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        assert!(support::require_tool("python3-yaml"), "PyYAML is needed");
        return None;
    };
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML refused:\n{yaml}");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

const STOCK: &[&str] = &[
    "amd64-server",
    "amd64-worker",
    "pi-server",
    "pi-worker",
    "droplet-server",
    "droplet-worker",
];

#[test]
fn every_role_gets_its_units_enabled() {
    for name in STOCK {
        let (t, c, r) = composed(name);
        let server = name.ends_with("-server");
        let unit = if server {
            "k3s.service"
        } else {
            "k3s-agent.service"
        };
        let other = if server {
            "k3s-agent.service"
        } else {
            "k3s.service"
        };
        assert!(
            t.get(&p(&format!("/etc/systemd/system/{unit}"))).is_some(),
            "{name}"
        );
        assert!(
            t.get(&p(&format!("/etc/systemd/system/{other}"))).is_none(),
            "{name}"
        );
        let unit_text = text(&t, &format!("/etc/systemd/system/{unit}"));
        for line in [
            "Type=notify",
            "Delegate=yes",
            "KillMode=process",
            "ExecStartPre=-/sbin/modprobe br_netfilter",
            "ExecStartPre=-/sbin/modprobe overlay",
            "Requires=imgbuild-nodeip.service",
        ] {
            assert!(unit_text.lines().any(|l| l == line), "{name}: {line}");
        }
        let cmd = if server { "server" } else { "agent" };
        assert!(unit_text.contains(&format!("ExecStart=/usr/local/bin/k3s {cmd}\n")));

        for (target, u) in [
            ("multi-user.target", unit),
            ("multi-user.target", "tailscaled.service"),
            ("multi-user.target", "imgbuild-mesh-join.service"),
            ("multi-user.target", "imgbuild-nodeip.service"),
            ("cloud-init.target", "imgbuild-firstboot-done.service"),
            ("sysinit.target", "imgbuild-grow-data.service"),
            ("sysinit.target", "systemd-time-wait-sync.service"),
        ] {
            let link = format!("/etc/systemd/system/{target}.wants/{u}");
            let e = t
                .get(&p(&link))
                .unwrap_or_else(|| panic!("{name}: {link} missing"));
            let Kind::Symlink(to) = &e.kind else {
                panic!("{link} is not a symlink")
            };
            let to = String::from_utf8(to.clone()).unwrap();
            assert!(to.ends_with(&format!("/{u}")), "{link} → {to}");
            // The link resolves inside the image (through /lib → usr/lib where needed).
            let real = to.replacen("/lib/", "/usr/lib/", usize::from(to.starts_with("/lib/")));
            assert!(t.get(&p(&real)).is_some(), "{name}: {link} → {to} dangles");
            assert!(c.enabled.contains(&u.to_string()), "{name}: {u}");
        }
        // The binaries, as upstream installs them.
        assert_eq!(t.get(&p("/usr/local/bin/k3s")).unwrap().mode, 0o755);
        for l in ["kubectl", "crictl", "ctr"] {
            assert!(matches!(
                &t.get(&p(&format!("/usr/local/bin/{l}"))).unwrap().kind,
                Kind::Symlink(to) if to == b"k3s"
            ));
        }
        assert_eq!(text(&t, "/usr/bin/tailscale"), "tailscale-binary");
        assert_eq!(text(&t, "/usr/sbin/tailscaled"), "tailscaled-binary");
        assert!(
            t.get(&p("/etc/rancher/k3s/config.yaml.d"))
                .unwrap()
                .is_dir()
        );
        // Read-only root: the kernel is told, and so is fstab.
        assert_eq!(c.cmdline[0], "ro");
        assert_eq!(c.cmdline[1], "init=/usr/local/lib/imgbuild/preinit");
        if r.board().is_raspberry_pi() {
            assert!(c.cmdline.iter().any(|a| a == "cgroup_enable=memory"));
        }
        let fstab = text(&t, "/etc/fstab");
        let root: Vec<&str> = fstab
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("/"))
            .unwrap()
            .split_whitespace()
            .collect();
        assert!(root[3].split(',').any(|o| o == "ro"), "{fstab}");
        assert!(t.get(&p("/persist")).unwrap().is_dir());
        let boot = if r.board().is_raspberry_pi() {
            "/boot/firmware"
        } else {
            "/boot/efi"
        };
        assert!(t.get(&p(boot)).unwrap().is_dir(), "{name}: {boot}");
        assert!(
            text(
                &t,
                "/etc/systemd/system/systemd-time-wait-sync.service.d/10-imgbuild.conf"
            )
            .contains("TimeoutStartSec=")
        );
        let ssh = text(
            &t,
            "/etc/systemd/system/ssh.service.d/10-imgbuild-hostkeys.conf",
        );
        let pre: Vec<&str> = ssh
            .lines()
            .filter(|l| l.starts_with("ExecStartPre="))
            .collect();
        assert_eq!(
            pre,
            [
                "ExecStartPre=",
                "ExecStartPre=-/usr/bin/ssh-keygen -A",
                "ExecStartPre=/usr/sbin/sshd -t"
            ]
        );
        // Every entry we added carries the epoch, none the clock.
        assert!(t.iter().all(|(_, e)| e.mtime <= EPOCH));
    }
}

/// Every key imgbuild itself writes into config.yaml is a flag of the pinned k3s release for
/// the node's role, with a value of that flag's kind (read back by PyYAML, not our writer).
#[test]
fn k3s_config_keys_we_write_are_flags_of_the_pinned_release() {
    use imgbuild::flags::Kind as FlagKind;
    for name in STOCK {
        let (t, _, r) = composed_with(name, &["k3s.taints=[\"dedicated=x:NoSchedule\"]"]);
        let Some(v) = yaml_to_json(&text(&t, "/etc/rancher/k3s/config.yaml")) else {
            return;
        };
        let version = r.profile.k3s.version.as_deref().unwrap();
        let set = imgbuild::flags::k3s(version).expect("stock profiles pin a release we have");
        let role = r.profile.k3s.role.unwrap().as_str();
        let map = v.as_object().unwrap();
        assert!(map.len() >= 5, "{name}: {map:?}");
        for (key, value) in map {
            let flag = set
                .get(key.trim_end_matches('+'))
                .unwrap_or_else(|| panic!("{name}: {key}"));
            assert!(
                flag.role.unwrap().accepts(role),
                "{name}: {key} on a {role}"
            );
            let ok = match flag.kind {
                FlagKind::List => value.is_array(),
                FlagKind::Bool => value.is_boolean(),
                FlagKind::Scalar => value.is_string() || value.is_number(),
            };
            assert!(ok, "{name}: {key} = {value}");
        }
    }
}

#[test]
fn k3s_config_reads_back_with_the_right_types() {
    for name in STOCK {
        let (t, _, r) = composed(name);
        let yaml = text(&t, "/etc/rancher/k3s/config.yaml");
        let Some(v) = yaml_to_json(&yaml) else { return };
        let k = &r.profile.k3s;
        assert_eq!(v["token-file"], "/etc/rancher/k3s/token", "{name}");
        assert_eq!(v["flannel-iface"], "tailscale0", "{name}");
        assert_eq!(v["node-label"], serde_json::json!(k.labels), "{name}");
        assert_eq!(
            v["kubelet-arg"],
            serde_json::json!(["volume-plugin-dir=/var/lib/kubelet/volumeplugins"])
        );
        if k.cluster_init {
            assert_eq!(v["cluster-init"], true);
            assert!(v.get("server").is_none());
        } else {
            assert_eq!(v["server"], "https://k3s-1:6443", "{name}");
        }
        if name.ends_with("-server") {
            assert_eq!(v["agent-token-file"], "/etc/rancher/k3s/agent-token");
            assert_eq!(v["write-kubeconfig-mode"], "0600");
        } else {
            assert!(v.get("agent-token-file").is_none());
        }
        // Nothing per node in the image.
        for k in ["node-ip", "node-name", "token", "agent-token"] {
            assert!(v.get(k).is_none(), "{name}: {k}");
        }
    }
    // YAML 1.1 traps in the profile's extra keys stay strings.
    let (t, _, _) = composed_with(
        "amd64-worker",
        &[
            "k3s.config.node-external-ip=[\"on\"]",
            "k3s.config.pause-image=\"0600\"",
            "k3s.config.kubelet-arg=[\"max-pods=150\"]",
            "k3s.config.protect-kernel-defaults=true",
        ],
    );
    let Some(v) = yaml_to_json(&text(&t, "/etc/rancher/k3s/config.yaml")) else {
        return;
    };
    assert_eq!(v["node-external-ip"], serde_json::json!(["on"]));
    assert_eq!(v["pause-image"], "0600");
    assert_eq!(v["protect-kernel-defaults"], true);
    assert_eq!(
        v["kubelet-arg"],
        serde_json::json!([
            "volume-plugin-dir=/var/lib/kubelet/volumeplugins",
            "max-pods=150"
        ])
    );
}

#[test]
fn identity_and_secrets_never_reach_the_image() {
    for name in STOCK {
        let (t, _, _) = composed(name);
        assert_eq!(
            text(&t, "/etc/machine-id"),
            "",
            "{name}: machine-id must be empty"
        );
        assert!(matches!(
            &t.get(&p("/var/lib/dbus/machine-id")).unwrap().kind,
            Kind::Symlink(to) if to == b"/etc/machine-id"
        ));
        for gone in [
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/var/lib/tailscale",
            "/var/lib/cloud",
            "/etc/rancher/node",
            "/etc/rancher/k3s/token",
            "/var/lib/imgbuild/mesh-authkey",
        ] {
            assert!(
                t.get(&p(gone)).is_none(),
                "{name}: {gone} is still in the image"
            );
        }
        assert!(t.get(&p("/etc/ssh/sshd_config")).is_some());
        for (path, e) in t.iter() {
            if let Kind::File(c) = &e.kind {
                let data = c.read_all().unwrap();
                assert!(
                    !String::from_utf8_lossy(&data).contains(FAKE),
                    "{name}: {path} holds a secret"
                );
            }
        }
    }
}

#[test]
fn scripts_pass_the_shell_and_units_pass_systemd() {
    let (t, _, _) = composed("amd64-worker");
    let dir = tempfile::tempdir().unwrap();
    let mut scripts = 0;
    for (path, e) in t.iter() {
        let Kind::File(c) = &e.kind else { continue };
        let shown = path.display();
        let data = c.read_all().unwrap();
        if shown.starts_with("/usr/local/lib/imgbuild/") {
            assert!(data.starts_with(b"#!/bin/sh\n"), "{shown}");
            assert_eq!(e.mode, 0o755, "{shown}");
            if support::require_tool("dash") {
                let f = dir.path().join(
                    path.file_name()
                        .iter()
                        .map(|&b| b as char)
                        .collect::<String>(),
                );
                std::fs::write(&f, &data).unwrap();
                let (code, _, err) = support::run(Command::new("dash").arg("-n").arg(&f));
                assert_eq!(code, 0, "{shown}: {err}");
                // Tracing would copy secrets into logs (cloud-init-output.log, the journal).
                let traces = String::from_utf8_lossy(&data).lines().any(|l| {
                    let mut w = l.split_whitespace();
                    w.next() == Some("set")
                        && w.next()
                            .is_some_and(|f| f.starts_with('-') && f.contains('x'))
                });
                assert!(!traces, "{shown} traces its commands");
            }
            scripts += 1;
        }
    }
    assert!(scripts >= 5);
    if !support::require_tool("systemd-analyze") {
        return;
    }
    // Materialise the tree's units and the executables they name, then let systemd judge them.
    let root = dir.path().join("root");
    // The host's own units (targets, sockets) stand in for the base's.
    let host_units = Path::new("/usr/lib/systemd/system");
    let units_dir = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units_dir).unwrap();
    for e in std::fs::read_dir(host_units).unwrap().flatten() {
        if e.path().is_file() {
            let _ = std::fs::copy(e.path(), units_dir.join(e.file_name()));
        }
    }
    for (path, e) in t.iter() {
        let shown = path.display();
        let dest = root.join(&shown[1..]);
        match &e.kind {
            Kind::Dir => {
                let _ = std::fs::create_dir_all(&dest);
            }
            Kind::File(c) => {
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                let _ = std::fs::remove_file(&dest);
                std::fs::write(&dest, c.read_all().unwrap()).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(e.mode | 0o200))
                    .unwrap();
            }
            Kind::Symlink(to) => {
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                let _ = std::os::unix::fs::symlink(String::from_utf8_lossy(to).as_ref(), &dest);
            }
            _ => {}
        }
    }
    let units: Vec<String> = [
        "k3s-agent.service",
        "tailscaled.service",
        "imgbuild-mesh-join.service",
        "imgbuild-nodeip.service",
        "imgbuild-firstboot-done.service",
        "imgbuild-grow-data.service",
    ]
    .iter()
    .map(|u| {
        root.join("etc/systemd/system")
            .join(u)
            .display()
            .to_string()
    })
    .collect();
    let (code, out, err) = support::run(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg("--man=no")
            .arg(format!("--root={}", root.display()))
            .args(&units),
    );
    // Only problems in our own units count; the host's units are not ours to judge.
    let ours: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| {
            ["k3s-agent", "tailscaled", "imgbuild-"]
                .iter()
                .any(|u| l.contains(u))
        })
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify (exit {code}):\n{}",
        ours.join("\n")
    );
}

#[test]
fn composition_is_deterministic() {
    let digest = |t: &Tree| -> BTreeMap<String, (u32, i64, String, Vec<u8>)> {
        t.iter()
            .map(|(p, e)| {
                let data = match &e.kind {
                    Kind::File(c) => c.read_all().unwrap(),
                    Kind::Symlink(to) => to.clone(),
                    _ => Vec::new(),
                };
                (
                    p.display(),
                    (e.mode, e.mtime, e.kind.name().to_string(), data),
                )
            })
            .collect()
    };
    let (a, ca, _) = composed("pi-server");
    let (b, cb, _) = composed("pi-server");
    assert_eq!(digest(&a), digest(&b));
    assert_eq!(ca, cb);
}

#[test]
fn zerotier_uses_the_package_and_never_an_identity() {
    // A resolved Tailscale profile switched to ZeroTier (--set cannot remove the auth key).
    let mut r = resolve("amd64-worker", &[]);
    r.profile.mesh = imgbuild::profile::MeshSpec {
        provider: imgbuild::profile::MeshProvider::Zerotier,
        version: Some("1.14.2".into()),
        network: Some("8056c2e21c000001".into()),
        ..Default::default()
    };
    let mut deb = Tree::new();
    let d = Entry::dir(0o755);
    deb.mkdir_p(&p("/lib/systemd/system"), &d).unwrap();
    deb.mkdir_p(&p("/usr/sbin"), &d).unwrap();
    deb.mkdir_p(&p("/var/lib/zerotier-one"), &d).unwrap();
    deb.insert(
        p("/usr/sbin/zerotier-one"),
        Entry::file(0o755, Content::bytes(b"zt".to_vec())),
    )
    .unwrap();
    deb.insert(p("/usr/sbin/zerotier-cli"), Entry::symlink("zerotier-one"))
        .unwrap();
    deb.insert(
        p("/lib/systemd/system/zerotier-one.service"),
        Entry::file(
            0o644,
            Content::bytes(b"[Service]\nExecStart=/usr/sbin/zerotier-one\n[Install]\nWantedBy=multi-user.target\n".to_vec()),
        ),
    )
    .unwrap();
    deb.insert(
        p("/var/lib/zerotier-one/identity.secret"),
        Entry::file(0o600, Content::bytes(b"FAKE-identity".to_vec())),
    )
    .unwrap();
    let mut t = base();
    let arts = Artifacts {
        mesh: MeshArtifacts::Zerotier(deb),
        ..artifacts()
    };
    let c = compose::compose(
        &mut t,
        &r,
        &arts,
        &BoardFacts::for_profile(&r),
        &Templates::stock(),
        EPOCH,
    )
    .unwrap();
    // The package's unit (under the merged /usr) is enabled, with our pre-join drop-in.
    assert!(
        t.get(&p("/usr/lib/systemd/system/zerotier-one.service"))
            .is_some()
    );
    assert!(c.enabled.contains(&"zerotier-one.service".to_string()));
    let dropin = text(
        &t,
        "/etc/systemd/system/zerotier-one.service.d/10-imgbuild.conf",
    );
    assert!(dropin.contains("ExecStartPre=/usr/local/lib/imgbuild/mesh-join"));
    let join = text(&t, "/usr/local/lib/imgbuild/mesh-join");
    assert!(join.contains("nwid=8056c2e21c000001"));
    assert!(join.contains("\"$nwid=\"zt0"));
    assert!(t.get(&p("/var/lib/zerotier-one/identity.secret")).is_none());
    assert!(
        t.get(&p("/etc/systemd/system/tailscaled.service"))
            .is_none()
    );
    let nodeip = text(&t, "/usr/local/lib/imgbuild/k3s-nodeip");
    assert!(nodeip.contains("iface=zt0"));
}

#[test]
fn a_base_without_cloud_init_or_systemd_is_refused() {
    let r = resolve("amd64-worker", &[]);
    for missing in ["/usr/bin/cloud-init", "/usr/lib/systemd/systemd"] {
        let mut t = base();
        t.remove(&p(missing));
        let err = compose::compose(
            &mut t,
            &r,
            &artifacts(),
            &BoardFacts::for_profile(&r),
            &Templates::stock(),
            EPOCH,
        )
        .unwrap_err();
        assert!(matches!(err, ComposeError::BaseLacks { .. }), "{err}");
        assert!(err.to_string().contains(missing), "{err}");
    }
    // The mesh artifacts must match the profile's provider.
    let mut t = base();
    let arts = Artifacts {
        mesh: MeshArtifacts::None,
        ..artifacts()
    };
    let err = compose::compose(
        &mut t,
        &r,
        &arts,
        &BoardFacts::for_profile(&r),
        &Templates::stock(),
        EPOCH,
    )
    .unwrap_err();
    assert!(err.to_string().contains("tailscale"), "{err}");
}

#[test]
fn seed_location_and_datasources_follow_the_board() {
    let (t, _, _) = composed("pi-worker");
    let cfg = text(&t, "/etc/cloud/cloud.cfg.d/90-imgbuild.cfg");
    let dropin = text(
        &t,
        "/etc/systemd/system/cloud-init-local.service.d/10-imgbuild-seed.conf",
    );
    assert!(dropin.contains("RequiresMountsFor=/boot/firmware"));
    if let Some(v) = yaml_to_json(&cfg) {
        assert_eq!(v["datasource_list"], serde_json::json!(["NoCloud", "None"]));
        // The seed is named on the kernel command line only (a seedfrom here would win).
        assert!(v["datasource"]["NoCloud"]["seedfrom"].is_null(), "{cfg}");
        assert_eq!(v["resize_rootfs"], false);
        assert_eq!(v["growpart"]["mode"], "off");
    }
    let (t, _, _) = composed("droplet-worker");
    let cfg = text(&t, "/etc/cloud/cloud.cfg.d/90-imgbuild.cfg");
    assert!(
        t.get(&p("/etc/systemd/system/cloud-init-local.service.d"))
            .is_none()
    );
    if let Some(v) = yaml_to_json(&cfg) {
        assert_eq!(
            v["datasource_list"],
            serde_json::json!([
                "DigitalOcean",
                "ConfigDrive",
                "OpenStack",
                "NoCloud",
                "None"
            ])
        );
        assert!(v.get("datasource").is_none());
    }
    // Cloud images keep pods away from the metadata service; bare metal has none.
    let (t, c, _) = composed("droplet-worker");
    assert!(
        c.enabled
            .contains(&"imgbuild-block-metadata.service".to_string())
    );
    assert!(
        t.get(&p("/usr/local/lib/imgbuild/block-metadata"))
            .is_some()
    );
    let (t, c, _) = composed("pi-worker");
    assert!(
        !c.enabled
            .contains(&"imgbuild-block-metadata.service".to_string())
    );
    assert!(
        t.get(&p("/usr/local/lib/imgbuild/block-metadata"))
            .is_none()
    );
    // The firstboot cleanup removes the seed from where the board keeps it.
    let (t, _, _) = composed("amd64-worker");
    assert!(text(&t, "/usr/local/lib/imgbuild/firstboot-done").contains("/boot/efi/user-data"));
}

/// The kernel command line names the NoCloud seed where the board keeps it; cloud boards (their
/// datasources come from the provider) and a profile's own `ds=` get no second one.
#[test]
fn kernel_cmdline_names_the_seed_once() {
    let ds = |c: &compose::Composed| -> Vec<String> {
        c.cmdline
            .iter()
            .filter(|a| a.starts_with("ds="))
            .cloned()
            .collect()
    };
    let (_, c, _) = composed("pi-worker");
    assert_eq!(ds(&c), ["ds=nocloud;s=file:///boot/firmware/"]);
    let (_, c, _) = composed("amd64-worker");
    assert_eq!(ds(&c), ["ds=nocloud;s=file:///boot/efi/"]);
    let (_, c, _) = composed("droplet-worker");
    assert!(ds(&c).is_empty(), "{:?}", c.cmdline);
    let own = "ds=nocloud;s=http://10.0.0.2/seeds/pi-1/";
    let (_, c, _) = composed_with("pi-worker", &[&format!("kernel.cmdline=[\"{own}\"]")]);
    assert_eq!(ds(&c), [own]);
}

/// Runs the first boot's scripts for real, in order, against the stand-ins: in a private mount,
/// network, UTS and PID namespace, with /etc, /var/lib, /run and /usr/local replaced by scratch
/// copies, so nothing on this machine changes. systemctl and cloud-init are recorders.
#[test]
fn first_boot_scripts_run_against_the_stand_ins() {
    if !support::require_tool("unshare") {
        return;
    }
    let (uid, _, _) = support::run(Command::new("sh").args(["-c", "exit $(id -u)"]));
    if uid != 0 {
        eprintln!("skipping: needs root for namespaces and mounts");
        return;
    }
    let (t, _, r) = composed("amd64-worker");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stage = |path: &str, mode: u32, data: &[u8]| {
        let dest = d.join("stage").join(&path[1..]);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // The image's scripts and k3s config.
    for (path, e) in t.iter() {
        let shown = path.display();
        if let Kind::File(c) = &e.kind
            && (shown.starts_with("/usr/local/lib/imgbuild/")
                || shown == "/etc/rancher/k3s/config.yaml")
        {
            stage(&shown, e.mode, &c.read_all().unwrap());
        }
    }
    // The stand-ins (as packaged, with their flag data) where the artifacts go, and recorders
    // for systemctl and cloud-init.
    let standins = packaged_standins(&d.join("pkg"));
    for b in ["k3s", "tailscale", "tailscaled"] {
        stage(
            &format!("/usr/local/bin/{b}"),
            0o755,
            &std::fs::read(standins.join(b)).unwrap(),
        );
    }
    for tool in ["systemctl", "cloud-init"] {
        let rec = format!(
            "#!/bin/sh\necho \"{tool} $*\" >> /var/log/calls.log\n{}",
            if tool == "systemctl" {
                "[ \"$1 $2\" = \"is-active --quiet\" ] && pgrep -f 'k3s agent' >/dev/null\n"
            } else {
                ""
            }
        );
        stage(&format!("/usr/local/bin/{tool}"), 0o755, rec.as_bytes());
    }
    // What cloud-init writes from the node's seed (write_files).
    let inventory = imgbuild::node::inventory::Inventory::parse(
        &std::fs::read_to_string(support::tests_dir().join("fixtures/node/nodes.toml")).unwrap(),
        "nodes.toml",
    )
    .unwrap();
    let node = inventory.node("pc-1", "nodes.toml").unwrap();
    let secrets: Vec<_> = imgbuild::node::secrets::needed(&r)
        .into_iter()
        .map(|need| imgbuild::node::seed::SecretValue {
            value: format!("FAKE-{}", need.name),
            need,
        })
        .collect();
    for f in imgbuild::node::seed::seed_write_files(&r, node, &secrets) {
        let mode = u32::from_str_radix(f["mode"].as_str().unwrap(), 8).unwrap();
        stage(
            f["path"].as_str().unwrap(),
            mode,
            f["content"].as_str().unwrap().as_bytes(),
        );
    }
    stage(
        "/etc/machine-id",
        0o444,
        b"5e1f00aa00000000000000000000beef\n",
    );

    let script = r#"
set -u
S=$1
mount --make-rprivate /
cp -a /etc/. "$S/etc-base/"
cp -a "$S/stage/etc/." "$S/etc-base/"
mkdir -p "$S/varlib" "$S/usrlocal" "$S/var-log"
cp -a "$S/stage/var/lib/." "$S/varlib/"
cp -a "$S/stage/usr/local/." "$S/usrlocal/"
mount --bind "$S/etc-base" /etc
mount --bind "$S/varlib" /var/lib
mount --bind "$S/var-log" /var/log
mount --bind "$S/usrlocal" /usr/local
mount -t tmpfs tmpfs /run
cp -a "$S/stage/run/." /run/
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
hostname pc-1
ip link set lo up
tailscaled --state=/var/lib/tailscale/tailscaled.state --socket=/run/tailscale/tailscaled.sock --port=41641 &
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /run/tailscale/standin-running ] && break; sleep 0.2; done
echo "== mesh-join"; /usr/local/lib/imgbuild/mesh-join; echo "rc=$?"
echo "== nodeip"; /usr/local/lib/imgbuild/k3s-nodeip; echo "rc=$?"
k3s agent &
for i in 1 2 3 4 5 6 7 8 9 10; do grep -q ready /var/log/imgbuild-standin.log && break; sleep 0.2; done
echo "== firstboot-done"; /usr/local/lib/imgbuild/firstboot-done; echo "rc=$?"
echo "== second mesh-join"; /usr/local/lib/imgbuild/mesh-join; echo "rc=$?"
echo "== files"
ls /var/lib/imgbuild/ /run/imgbuild/
ls /etc/cloud/
echo "== node-ip"; cat /etc/rancher/k3s/config.yaml.d/10-node-ip.yaml
echo "== log"; cat /var/log/imgbuild-standin.log
echo "== calls"; cat /var/log/calls.log
"#;
    std::fs::create_dir_all(d.join("etc-base")).unwrap();
    let (code, out, err) = support::run(
        Command::new("unshare")
            .args([
                "--mount",
                "--net",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(d),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let section = |name: &str| -> String {
        out.split(&format!("== {name}\n"))
            .nth(1)
            .and_then(|s| s.split("\n== ").next())
            .unwrap_or_else(|| panic!("no section {name} in:\n{out}\n{err}"))
            .to_string()
    };
    assert!(section("mesh-join").contains("rc=0"), "{out}\n{err}");
    assert!(
        out.contains("tailscale up flags=--auth-key=file:/run/imgbuild/mesh-authkey --accept-dns=false --hostname=pc-1 --advertise-tags=tag:k3s,tag:home"),
        "{out}"
    );
    assert!(
        out.contains("auth-key-file /run/imgbuild/mesh-authkey readable"),
        "{out}"
    );
    assert!(section("nodeip").contains("rc=0"), "{out}\n{err}");
    let ip = section("node-ip");
    assert!(ip.contains("node-ip: \"100.64.0."), "{ip}");
    // k3s saw its config, the node's drop-ins and the token file; never a token value.
    assert!(out.contains("k3s start role=agent argv=agent"), "{out}");
    assert!(out.contains("20-node.yaml: node-name: \"pc-1\""), "{out}");
    assert!(
        out.contains("10-node-ip.yaml: node-ip: \"100.64.0."),
        "{out}"
    );
    assert!(
        out.contains("token-file /etc/rancher/k3s/token present mode=600"),
        "{out}"
    );
    assert!(!section("log").contains("FAKE-"), "{out}");
    // First boot done: the key is gone, cloud-init is off, the marker is there.
    assert!(section("firstboot-done").contains("rc=0"), "{out}\n{err}");
    let files = section("files");
    assert!(!files.contains("mesh-authkey"), "{files}");
    assert!(files.contains("firstboot-done"), "{files}");
    assert!(files.contains("cloud-init.disabled"), "{files}");
    assert!(
        section("calls").contains("cloud-init clean --seed"),
        "{out}"
    );
    // Later boots: the key is gone, the node is already on the tailnet.
    assert!(
        section("second mesh-join").contains("already on the tailnet"),
        "{out}"
    );
}

#[test]
fn a_base_or_artifact_of_another_architecture_is_refused() {
    // An ELF header for arm64 (e_machine 0xb7), little-endian.
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(18, 0);
    elf.extend_from_slice(&[0xb7, 0x00, 0, 0]);
    let r = resolve("amd64-worker", &[]);
    let mut t = base();
    t.insert(
        p("/usr/lib/systemd/systemd"),
        Entry::file(0o755, Content::bytes(elf.clone())),
    )
    .unwrap();
    let err = compose::compose(
        &mut t,
        &r,
        &artifacts(),
        &BoardFacts::for_profile(&r),
        &Templates::stock(),
        EPOCH,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the base OS is built for arm64, but the profile's image.arch is amd64\n  help: use the amd64 build, or set image.arch = \"arm64\""
    );
    let mut t = base();
    let arts = Artifacts {
        k3s: Content::bytes(elf),
        ..artifacts()
    };
    let err = compose::compose(
        &mut t,
        &r,
        &arts,
        &BoardFacts::for_profile(&r),
        &Templates::stock(),
        EPOCH,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the k3s binary is built for arm64"),
        "{err}"
    );
}

/// The stand-ins as `package.sh` lays them out (flag data appended), the tailscale binaries
/// unpacked from their tarball by GNU tar: a folder with `k3s`, `tailscale` and `tailscaled`.
fn packaged_standins(dir: &Path) -> std::path::PathBuf {
    let (code, _, err) = support::run(
        Command::new("sh")
            .arg(support::tests_dir().join("fixtures/standins/package.sh"))
            .arg(dir),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = support::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(dir.join("tailscale_1.96.4_amd64.tgz"))
            .arg("-C")
            .arg(dir),
    );
    assert_eq!(code, 0, "{err}");
    for b in ["tailscale", "tailscaled"] {
        std::fs::rename(dir.join("tailscale_1.96.4_amd64").join(b), dir.join(b)).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn tailscale_binaries_come_from_the_release_tarball() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = support::run(
        Command::new("sh")
            .arg(support::tests_dir().join("fixtures/standins/package.sh"))
            .arg(dir.path()),
    );
    assert_eq!(code, 0, "{err}");
    let mut tgz = Tree::new();
    let _keep = imgbuild::source::tar::read_archive_file(
        &dir.path().join("tailscale_1.96.4_amd64.tgz"),
        dir.path(),
        &imgbuild::unpack::UnpackLimit::default(),
        &mut tgz,
    )
    .unwrap();
    let mesh = MeshArtifacts::tailscale_from_tarball(&tgz).unwrap();
    // The binaries as GNU tar unpacks them from the same tarball.
    let standins = packaged_standins(&dir.path().join("unpacked"));
    let r = resolve("amd64-worker", &[]);
    let mut t = base();
    let arts = Artifacts {
        k3s: Content::bytes(std::fs::read(standins.join("k3s")).unwrap()),
        mesh,
        airgap_images: None,
    };
    compose::compose(
        &mut t,
        &r,
        &arts,
        &BoardFacts::for_profile(&r),
        &Templates::stock(),
        EPOCH,
    )
    .unwrap();
    assert_eq!(
        text(&t, "/usr/sbin/tailscaled").into_bytes(),
        std::fs::read(standins.join("tailscaled")).unwrap()
    );
    assert_eq!(
        text(&t, "/usr/bin/tailscale").into_bytes(),
        std::fs::read(standins.join("tailscale")).unwrap()
    );
    // A tarball without the daemon is refused by name.
    let mut partial = Tree::new();
    let d = Entry::dir(0o755);
    partial.mkdir_p(&p("/tailscale_1_amd64"), &d).unwrap();
    partial
        .insert(
            p("/tailscale_1_amd64/tailscale"),
            Entry::file(0o755, Content::bytes(b"x".to_vec())),
        )
        .unwrap();
    let err = MeshArtifacts::tailscale_from_tarball(&partial).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the Tailscale tarball has no tailscale_*/tailscaled"
    );
}

#[test]
fn image_only_files_snapshot() {
    for name in ["amd64-worker", "pi-server", "droplet-worker"] {
        let (t, c, _) = composed(name);
        let mut out = format!("cmdline: {}\n", c.cmdline.join(" "));
        for f in [
            "/etc/fstab",
            "/etc/cloud/cloud.cfg.d/90-imgbuild.cfg",
            "/etc/rancher/k3s/config.yaml",
            "/usr/local/lib/imgbuild/preinit",
            "/usr/local/lib/imgbuild/grow-data",
        ] {
            out.push_str(&format!("\n===== {f}\n{}", text(&t, f)));
        }
        insta::assert_snapshot!(format!("image_{name}"), out);
    }
}

#[test]
fn nocloud_before_configdrive_is_flagged() {
    let r = resolve("droplet-worker", &[]);
    let mut board = BoardFacts::for_profile(&r);
    board.datasources = vec!["NoCloud".into(), "ConfigDrive".into()];
    let mut t = base();
    let c = compose::compose(&mut t, &r, &artifacts(), &board, &Templates::stock(), EPOCH).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("NoCloud before ConfigDrive")),
        "{:?}",
        c.warnings
    );
    let (_, c, _) = composed("droplet-worker");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn time_sync_wait_of_the_profile_bounds_the_clock_wait() {
    const DROP_IN: &str = "/etc/systemd/system/systemd-time-wait-sync.service.d/10-imgbuild.conf";
    let (t, _, _) = composed("pi-worker");
    let stock = text(&t, DROP_IN);
    assert!(
        stock.contains("ExecStart=-/usr/bin/timeout 60 /lib/systemd/systemd-time-wait-sync\n"),
        "{stock}"
    );
    assert!(stock.contains("TimeoutStartSec=90s\n"), "{stock}");
    let (t, _, _) = composed_with("pi-worker", &["time.sync-wait=7"]);
    let short = text(&t, DROP_IN);
    assert!(
        short.contains("ExecStart=-/usr/bin/timeout 7 /lib/systemd/systemd-time-wait-sync\n"),
        "{short}"
    );
    assert!(short.contains("TimeoutStartSec=37s\n"), "{short}");
}
