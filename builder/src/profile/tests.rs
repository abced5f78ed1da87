use super::*;

fn store_with(files: &[(&str, &str)]) -> (tempfile::TempDir, ProfileStore) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
    }
    let store = ProfileStore::new(Some(dir.path().to_path_buf()));
    (dir, store)
}

#[test]
fn every_stock_profile_resolves() {
    let store = ProfileStore::stock_only();
    for l in store.list().unwrap() {
        let r = store
            .resolve(&l.name, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            r.profile.description.is_some(),
            "{} has no description",
            l.name
        );
    }
}

#[test]
fn user_profile_extends_stock_profile_of_same_name() {
    let (_d, store) = store_with(&[(
        "pi-worker",
        "extends = \"pi-worker\"\n[k3s]\nlabels = [\"site=home\"]\n",
    )]);
    let r = store.resolve("pi-worker", &[]).unwrap();
    assert_eq!(r.profile.k3s.labels, ["site=home"], "lists replace");
    assert_eq!(r.profile.k3s.role, Some(Role::Agent), "tables merge");
    assert_eq!(r.chain.len(), 4);
    assert!(matches!(
        r.locations["k3s.labels"].origin,
        Origin::User { .. }
    ));
    assert!(matches!(
        r.locations["k3s.role"].origin,
        Origin::Stock { .. }
    ));
}

#[test]
fn set_overrides_win_and_parse_toml_values() {
    let store = ProfileStore::stock_only();
    let r = store
        .resolve(
            "pi-worker",
            &[
                "k3s.version=v1.35.0+k3s2".into(),
                "k3s.labels=[\"a=b\", \"c=d\"]".into(),
            ],
        )
        .unwrap();
    assert_eq!(r.profile.k3s.version.as_deref(), Some("v1.35.0+k3s2"));
    assert_eq!(r.profile.k3s.labels, ["a=b", "c=d"]);
    let err = store
        .resolve("pi-worker", &["nonsense".into()])
        .unwrap_err();
    assert!(err.to_string().contains("--set"), "{err}");
}

#[test]
fn errors_point_at_file_line_and_column() {
    let (d, store) = store_with(&[(
        "bad",
        "extends = \"pi-worker\"\n\n[k3s]\nrole = \"agent\"\nserver = \"http://x:6443\"\n",
    )]);
    let err = store.resolve("bad", &[]).unwrap_err();
    let text = err.to_string();
    let file = d.path().join("bad.toml");
    assert!(text.contains(&format!("{}:5:1", file.display())), "{text}");
    assert!(text.contains("https://"), "{text}");
}

#[test]
fn extends_cycle_is_reported_with_the_path() {
    let (_d, store) = store_with(&[("a", "extends = \"b\"\n"), ("b", "extends = \"a\"\n")]);
    let err = store.resolve("a", &[]).unwrap_err().to_string();
    assert!(err.contains("a → b → a"), "{err}");
}

#[test]
fn override_parsing() {
    let (k, t) = parse_override("image.size=4GiB").unwrap();
    assert_eq!(k, "image.size");
    assert_eq!(t["image"]["size"].as_str(), Some("4GiB"));
    let (_, t) = parse_override("k3s.cluster-init=true").unwrap();
    assert_eq!(t["k3s"]["cluster-init"].as_bool(), Some(true));
    assert!(parse_override("a..b=1").is_err());
}

/// Values that would become two lines, or smuggle a list through one string, are refused at the
/// key that holds them; the same profile with clean values resolves.
#[test]
fn one_line_values_and_lists_cannot_be_smuggled() {
    let profile = |users: &str, cmdline: &str| {
        format!("extends = \"pi-worker\"\n[kernel]\ncmdline = [{cmdline}]\n[[users]]\n{users}\n")
    };
    let good = profile(
        "name = \"ops\"\ngroups = [\"adm\", \"docker\"]\nshell = \"/bin/bash\"\nssh-keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGoodKeyBlob ops@laptop\"]",
        "\"quiet\"",
    );
    let (_d, store) = store_with(&[("pi-worker", &good)]);
    store
        .resolve("pi-worker", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let cases = [
        (
            "name = \"ops\"\ngroups = [\"adm,root,docker\"]",
            "\"quiet\"",
            "users[0].groups[0]",
        ),
        (
            "name = \"ops\"\ngroups = [\"Root\"]",
            "\"quiet\"",
            "users[0].groups[0]",
        ),
        (
            "name = \"ops\"\nshell = \"/bin/bash\\nx\"",
            "\"quiet\"",
            "users[0].shell",
        ),
        (
            "name = \"ops\"\nshell = \"bash\"",
            "\"quiet\"",
            "users[0].shell",
        ),
        (
            "name = \"ops\"\nssh-keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGood a\\ncommand=\\\"sh\\\" ssh-rsa AAAAB3 x\"]",
            "\"quiet\"",
            "users[0].ssh-keys[0]",
        ),
        (
            "name = \"ops\"",
            "\"init=/bin/sh\\u001b\"",
            "kernel.cmdline[0]",
        ),
        ("name = \"ops\"", "\"a=\\\"b\"", "kernel.cmdline[0]"),
    ];
    for (users, cmdline, key) in cases {
        let (_d, store) = store_with(&[("pi-worker", &profile(users, cmdline))]);
        let err = store.resolve("pi-worker", &[]).unwrap_err();
        let text = err.to_string();
        assert!(
            err.problems.iter().any(|d| d.key.as_deref() == Some(key)),
            "{key}: {text}"
        );
    }
}

#[test]
fn download_urls_must_be_urls() {
    for (key, good) in [
        ("k3s.url", "https://mirror.lan/k3s/{version}/k3s-{arch}"),
        (
            "mesh.url",
            "http://mirror.lan/ts/tailscale_{version}_{arch}.tgz",
        ),
    ] {
        let store = ProfileStore::stock_only();
        store
            .resolve("pi-worker", &[format!("{key}={good}")])
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        for bad in [
            "https://x/$(touch /tmp/p)",
            "https://x/`id`",
            "https://x/a\"b",
            "ftp://x/k3s",
            "https://x/a\nb",
            "/local/path",
        ] {
            let err = store
                .resolve("pi-worker", &[format!("{key}={bad}")])
                .unwrap_err();
            assert!(
                err.problems.iter().any(|d| d.key.as_deref() == Some(key)),
                "{key}={bad:?}: {err}"
            );
        }
    }
}

#[test]
fn line_index_places_offsets_like_a_scan() {
    let text = "ä = 1\n\n[k3s]\nlabels = [\"é=1\"]\nx";
    let naive = |off: usize| {
        let before = &text[..off];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    };
    let idx = LineIndex::new(text);
    for off in (0..=text.len()).filter(|&o| text.is_char_boundary(o)) {
        assert_eq!(idx.line_col(off), naive(off), "offset {off}");
    }
    assert_eq!(idx.line_col(10_000), naive(text.len()));
    assert_eq!(idx.line_col(1), (1, 1), "inside a character: its start");
}
