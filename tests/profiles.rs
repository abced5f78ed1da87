//! Profiles as a user meets them: listing, resolving, and precise errors for broken profiles.

mod support;

use std::path::Path;

use support::{imgbuild, run, tests_dir};

fn broken_dir() -> std::path::PathBuf {
    tests_dir().join("fixtures/profiles/broken")
}

/// Every broken fixture fails `profiles check` with exit 2, no panic, and an error that names the
/// file with line and column and carries a `help:` line. The full messages are snapshotted.
#[test]
fn broken_profiles_get_precise_errors() {
    let dir = broken_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    assert!(names.len() >= 15, "only {} fixtures", names.len());
    for name in &names {
        let (code, _out, err) = run(imgbuild()
            .arg("--profiles-dir")
            .arg(&dir)
            .args(["profiles", "check", name]));
        assert_eq!(code, 2, "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        let file = format!("{}/", dir.display());
        assert!(
            err.contains(&file),
            "{name}: error does not name the file: {err}"
        );
        assert!(
            err.lines().any(|l| l.trim_start().starts_with("help:")),
            "{name}: no help line: {err}"
        );
        let shown = err.replace(&file, "[DIR]/");
        insta::assert_snapshot!(format!("broken_{name}"), shown);
    }
}

#[test]
fn stock_profiles_all_pass_check() {
    let (code, out, err) = run(imgbuild().args(["profiles", "check"]));
    assert_eq!(code, 0, "{out}{err}");
    for name in [
        "pi-worker",
        "pi-server",
        "amd64-worker",
        "amd64-server",
        "droplet-worker",
        "droplet-server",
    ] {
        assert!(out.contains(&format!("ok      {name}")), "{out}");
    }
}

#[test]
fn list_shows_buildable_profiles_and_json() {
    let (code, out, _) = run(imgbuild().args(["profiles", "list"]));
    assert_eq!(code, 0);
    insta::assert_snapshot!("profiles_list", out);
    let (code, out, _) = run(imgbuild().args(["profiles", "list", "--json", "--all"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"base") && names.contains(&"pi-worker"),
        "{names:?}"
    );
}

#[test]
fn show_resolves_extends_chain() {
    for name in ["pi-worker", "pi-server", "amd64-worker", "droplet-worker"] {
        let (code, out, err) = run(imgbuild().args(["profiles", "show", name]));
        assert_eq!(code, 0, "{err}");
        insta::assert_snapshot!(format!("show_{name}"), out);
    }
    let (code, out, _) = run(imgbuild().args(["profiles", "show", "pi-worker", "--json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["profile"]["image"]["board"], "rpi");
    assert_eq!(
        v["profile"]["image"]["arch"], "arm64",
        "arch filled in from the board"
    );
    assert_eq!(v["profile"]["k3s"]["role"], "agent");
    assert_eq!(v["profile"]["k3s"]["token"]["secret"], "k3s-agent-token");
    assert_eq!(v["chain"].as_array().unwrap().len(), 3);
}

/// A user's `profiles/pi-worker.toml` that extends `pi-worker` layers over the stock profile of
/// the same name, and `--set` layers over both.
#[test]
fn user_profile_overrides_stock_and_set_overrides_both() {
    let work = tempfile::tempdir().unwrap();
    let profiles = work.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(
        profiles.join("pi-worker.toml"),
        "description = \"Mine\"\nextends = \"pi-worker\"\n[k3s]\nserver = \"https://cp.example.ts.net:6443\"\n",
    )
    .unwrap();
    let (code, out, err) = run(imgbuild().current_dir(work.path()).args([
        "profiles",
        "show",
        "pi-worker",
        "--json",
        "--set",
        "image.size=8GiB",
    ]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["profile"]["k3s"]["server"],
        "https://cp.example.ts.net:6443"
    );
    assert_eq!(v["profile"]["image"]["size"], "8GiB");
    assert_eq!(v["profile"]["description"], "Mine");
    let (_, list, _) = run(imgbuild()
        .current_dir(work.path())
        .args(["profiles", "list"]));
    assert!(list.contains("replaces stock"), "{list}");
}

#[test]
fn abstract_profiles_are_not_built() {
    let (code, _, err) = run(imgbuild().arg("pi-base"));
    assert_eq!(code, 2);
    assert!(err.contains("abstract"), "{err}");
}

#[test]
fn profiles_dir_from_environment() {
    let (code, out, _) = run(imgbuild()
        .env("IMGBUILD_PROFILES", broken_dir())
        .args(["profiles", "list"]));
    // Broken profiles make listing fail only for those that do not parse.
    assert_eq!(code, 2, "{out}");
    let _ = Path::new("");
}

/// A profile that names its own base (a local file instead of the parent's URL) starts `[base]`
/// afresh: the parent's checksum URL and partition names must not be inherited.
#[test]
fn own_base_path_replaces_the_inherited_base_table() {
    let work = tempfile::tempdir().unwrap();
    let profiles = work.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(
        profiles.join("pi-local.toml"),
        "description = \"local base\"\nextends = \"pi-worker\"\n[base]\npath = \"base.img\"\n",
    )
    .unwrap();
    let (code, out, err) = run(imgbuild()
        .current_dir(work.path())
        .args(["profiles", "show", "pi-local", "--json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["profile"]["base"],
        serde_json::json!({ "path": "base.img" })
    );
}

/// A profile with tens of thousands of labels and megabytes of comments: checked in time linear
/// in its size (each key's position used to rescan the file from its start).
#[test]
fn large_profiles_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let mut text = String::from("extends = \"pi-worker\"\n");
    for i in 0..20_000 {
        text.push_str(&format!(
            "# comment line {i} padding padding padding padding padding\n"
        ));
    }
    text.push_str("[k3s]\nlabels = [\n");
    for i in 0..20_000 {
        text.push_str(&format!("  \"example.com/l{i}=v\",\n"));
    }
    text.push_str("]\n");
    std::fs::write(profiles.join("big.toml"), &text).unwrap();
    let (code, out, err) = run(imgbuild()
        .current_dir(dir.path())
        .args(["profiles", "check", "big"]));
    assert_eq!(code, 0, "{out}{err}");
}

/// `scripts/gen-flags --check` regenerates builder/data/flags byte for byte from the pinned
/// upstream commits, and reports a file that differs. It needs git directories holding those
/// commits (IMGBUILD_FLAGS_K3S_GIT, IMGBUILD_FLAGS_TAILSCALE_GIT: clones or bare mirrors of
/// k3s-io/k3s and tailscale/tailscale); without them it is skipped with a note.
#[test]
fn flag_data_regenerates_byte_identically() {
    let (Some(k3s), Some(ts)) = (
        std::env::var_os("IMGBUILD_FLAGS_K3S_GIT"),
        std::env::var_os("IMGBUILD_FLAGS_TAILSCALE_GIT"),
    ) else {
        eprintln!("skipped: set IMGBUILD_FLAGS_K3S_GIT and IMGBUILD_FLAGS_TAILSCALE_GIT");
        return;
    };
    let data = support::repo_root().join("builder/data/flags");
    let regenerate = |out: &Path| {
        run(
            std::process::Command::new(support::repo_root().join("scripts/gen-flags"))
                .arg("--check")
                .arg("--k3s-git")
                .arg(&k3s)
                .arg("--tailscale-git")
                .arg(&ts)
                .arg("--out")
                .arg(out),
        )
    };
    let (code, out, err) = regenerate(&data);
    assert_eq!(code, 0, "{out}{err}");
    // A copy with one flag's kind changed is reported as out of date.
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    let f = tmp.path().join("k3s-v1.36.2+k3s1.toml");
    let text = std::fs::read_to_string(&f).unwrap();
    let changed = text.replacen("kind = \"list\"", "kind = \"scalar\"", 1);
    assert_ne!(text, changed);
    std::fs::write(&f, changed).unwrap();
    let (code, _, err) = regenerate(tmp.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("out of date") && err.contains("k3s-v1.36.2+k3s1.toml"),
        "{err}"
    );
}
