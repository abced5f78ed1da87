//! The stand-in k3s and tailscale (tests/fixtures/standins/), packaged as the tests package them,
//! refuse what the real binaries of the pinned releases refuse or silently ignore: they carry the
//! same flag data (builder/data/flags/) as imgbuild's own checks. Each refusal sits beside the
//! same call succeeding once the input is fixed.

mod support;

use std::path::Path;
use std::process::Command;

use support::{run, tests_dir};

fn package(out: &Path) {
    let (code, _, err) = run(Command::new("sh")
        .arg(tests_dir().join("fixtures/standins/package.sh"))
        .arg(out)
        .args(["1.96.4", "amd64", "v1.36.2+k3s1"]));
    assert_eq!(code, 0, "package.sh: {err}");
}

/// Runs the k3s stand-in as `k3s ROLE ARGS…` over a config folder holding `config.yaml` and
/// `config.yaml.d/20-node.yaml`, checking only (it does not start).
fn k3s(dir: &Path, role: &str, args: &[&str], config: &str, drop_in: &str) -> (i32, String) {
    let conf = dir.join("conf");
    std::fs::create_dir_all(conf.join("config.yaml.d")).unwrap();
    std::fs::write(conf.join("config.yaml"), config).unwrap();
    std::fs::write(conf.join("config.yaml.d/20-node.yaml"), drop_in).unwrap();
    let log = dir.join("log");
    let (code, _, err) = run(Command::new(dir.join("pkg/k3s"))
        .arg(role)
        .args(args)
        .env("IMGBUILD_STANDIN_LOG", &log)
        .env("IMGBUILD_STANDIN_K3S_CONFIG_DIR", &conf)
        .env("IMGBUILD_STANDIN_CHECK_ONLY", "1"));
    (code, err)
}

const SERVER: &str = "cluster-init: true\ntoken-file: \"/etc/rancher/k3s/token\"\nkube-apiserver-arg:\n  - \"audit-log-maxage=30\"\nwrite-kubeconfig-mode: \"0600\"\n";
const AGENT: &str = "server: \"https://k3s-1:6443\"\ntoken-file: \"/etc/rancher/k3s/token\"\nkubelet-arg:\n  - \"max-pods=150\"\n";
const NODE: &str = "node-name: \"pc-1\"\nnode-label+:\n  - \"site=home\"\n";

#[test]
fn k3s_standin_refuses_keys_and_flags_the_release_would_not_take() {
    let d = tempfile::tempdir().unwrap();
    package(&d.path().join("pkg"));
    let ok = |role, args: &[&str], config, drop_in| {
        let (code, err) = k3s(d.path(), role, args, config, drop_in);
        assert_eq!(code, 0, "{role} {args:?}: {err}");
    };
    ok("server", &[], SERVER, NODE);
    ok("agent", &[], AGENT, NODE);
    ok(
        "agent",
        &["--node-label", "a=b", "--debug", "-s", "https://x:6443"],
        AGENT,
        NODE,
    );
    // node-ip is a list flag; k3s (and the stand-in) take a single value for it too.
    ok("agent", &[], AGENT, "node-ip: \"100.64.0.3\"\n");
    for (role, args, config, drop_in, why) in [
        (
            "agent",
            &[][..],
            SERVER,
            NODE,
            "cluster-init is a server flag, not for k3s agent",
        ),
        (
            "server",
            &[],
            AGENT,
            "node-nmae: \"pc-1\"\n",
            "unknown flag node-nmae",
        ),
        (
            "agent",
            &[],
            "server:\n  - \"https://a:6443\"\n",
            NODE,
            "server takes one value",
        ),
        (
            "agent",
            &[],
            "selinux: \"yes\"\n",
            NODE,
            "selinux takes true or false",
        ),
        (
            "agent",
            &[],
            "\"node-name+\": \"x\"\n",
            NODE,
            "node-name+ appends",
        ),
        (
            "agent",
            &["--node-lable=a=b"],
            AGENT,
            NODE,
            "unknown flag node-lable",
        ),
        (
            "agent",
            &["--disable=traefik"],
            AGENT,
            NODE,
            "disable is a server flag",
        ),
    ] {
        let (code, err) = k3s(d.path(), role, args, config, drop_in);
        assert_eq!(code, 1, "{why}: {err}");
        assert!(err.contains(why), "{why}: {err}");
        let log = std::fs::read_to_string(d.path().join("log")).unwrap();
        let last = log.lines().last().unwrap_or_default();
        assert!(last.contains("refused: ") && last.contains(why), "{log}");
    }
}

#[test]
fn tailscale_standin_refuses_up_flags_the_release_does_not_have() {
    let d = tempfile::tempdir().unwrap();
    let pkg = d.path().join("pkg");
    package(&pkg);
    let (code, _, err) = run(Command::new("tar")
        .arg("-xzf")
        .arg(pkg.join("tailscale_1.96.4_amd64.tgz"))
        .arg("-C")
        .arg(d.path()));
    assert_eq!(code, 0, "{err}");
    let up = |args: &[&str]| {
        let (code, _, err) = run(
            Command::new(d.path().join("tailscale_1.96.4_amd64/tailscale"))
                .arg("up")
                .args(args)
                .env("IMGBUILD_STANDIN_LOG", d.path().join("log")),
        );
        (code, err)
    };
    // What our join script passes gets past the flag check (and stops at "no tailscaled").
    for good in [
        &[
            "--auth-key=file:/k",
            "--accept-dns=false",
            "--hostname=pc-1",
            "--advertise-tags=tag:k3s",
        ][..],
        &[
            "--authkey=file:/k",
            "--ssh",
            "--login-server",
            "https://hs.lan",
        ],
    ] {
        let (code, err) = up(good);
        assert_eq!(code, 1, "{good:?}: {err}");
        assert!(
            err.contains("failed to connect to local tailscaled"),
            "{err}"
        );
    }
    for (bad, why) in [
        (
            &["--accept-dsn=false"][..],
            "flag provided but not defined: -accept-dsn",
        ),
        (
            &["--unattended"],
            "flag provided but not defined: -unattended",
        ),
        (
            &["--accept-dns=maybe"],
            "invalid boolean value for -accept-dns",
        ),
        (&["--hostname"], "flag needs an argument: -hostname"),
        (&["--ssh", "pc-1"], "too many non-flag arguments"),
    ] {
        let (code, err) = up(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}
