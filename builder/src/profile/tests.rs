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

/// A worker (agent) or server profile of ours with `[k3s.config]` lines, resolved.
fn with_config(role: &str, config: &str) -> (tempfile::TempDir, Result<Resolved, ProfileError>) {
    let extends = if role == "agent" {
        "amd64-worker"
    } else {
        "amd64-server"
    };
    let text = format!("extends = \"{extends}\"\n\n[k3s.config]\n{config}\n");
    let (d, store) = store_with(&[("p", &text)]);
    let r = store.resolve("p", &[]);
    (d, r)
}

/// The one problem of a refused `[k3s.config]`: its key, message and help, and that it points at
/// line 4 (the first config line) of the profile.
fn refused(role: &str, config: &str) -> (String, String, String) {
    let (d, r) = with_config(role, config);
    let err = r
        .err()
        .unwrap_or_else(|| panic!("{role}: {config:?} was accepted"));
    assert_eq!(err.problems.len(), 1, "{err}");
    let p = &err.problems[0];
    let at = format!("{}:4:1", d.path().join("p.toml").display());
    assert!(err.to_string().contains(&at), "{at}: {err}");
    (
        p.key.clone().unwrap_or_default(),
        p.message.clone(),
        p.help.clone().unwrap_or_default(),
    )
}

#[test]
fn k3s_config_valid_keys_of_each_role_resolve() {
    for (role, config) in [
        (
            "agent",
            "kubelet-arg = [\"max-pods=150\"]\nprotect-kernel-defaults = true",
        ),
        (
            "agent",
            "node-external-ip = [\"203.0.113.7\"]\nsnapshotter = \"native\"",
        ),
        ("agent", "\"kubelet-arg+\" = [\"v=2\"]"),
        (
            "server",
            "kube-apiserver-arg = [\"audit-log-maxage=30\"]\ndisable = [\"traefik\"]",
        ),
        (
            "server",
            "etcd-snapshot-retention = 10\ncluster-domain = \"home.arpa\"",
        ),
    ] {
        let (_d, r) = with_config(role, config);
        r.unwrap_or_else(|e| panic!("{role}: {config:?}: {e}"));
    }
}

#[test]
fn k3s_config_unknown_key_is_refused_with_the_nearest_name() {
    let (key, msg, help) = refused("agent", "node-lable = [\"a=b\"]");
    assert_eq!(key, "k3s.config.node-lable");
    assert!(msg.contains("not a setting of k3s v1.36.2+k3s1"), "{msg}");
    assert!(help.contains("did you mean `node-label`?"), "{help}");
    // Nothing near: no guess, but where the settings are listed.
    let (_, _, help) = refused("agent", "frobnicate-everything = true");
    assert!(!help.contains("did you mean"), "{help}");
    assert!(help.contains("k3s agent --help"), "{help}");
    // A one-letter alias is named by its full name.
    let (_, msg, help) = refused("agent", "d = \"/data\"");
    assert!(msg.contains("one-letter form of data-dir"), "{msg}");
    assert!(help.contains("data-dir"), "{help}");
}

#[test]
fn k3s_config_key_of_the_other_role_is_refused() {
    for key in [
        "kube-apiserver-arg = [\"x=y\"]",
        "cluster-reset = true",
        "disable = [\"traefik\"]",
    ] {
        let (_, msg, help) = refused("agent", key);
        assert!(
            msg.contains("is a k3s server setting; this profile's role is agent"),
            "{msg}"
        );
        assert!(help.contains("k3s.role = \"server\""), "{help}");
    }
    let (_, msg, _) = refused("server", "disable-apiserver-lb = true");
    assert!(msg.contains("is a k3s agent setting"), "{msg}");
    // A misspelt key on an agent is not pointed at a server-only flag.
    let (_, _, help) = refused("agent", "cluster-rest = true");
    assert!(!help.contains("cluster-reset"), "{help}");
}

#[test]
fn k3s_config_value_kinds_are_checked() {
    let (_, msg, help) = refused("agent", "kubelet-arg = \"max-pods=150\"");
    assert!(msg.contains("takes a list, but a single value"), "{msg}");
    assert!(help.contains("kubelet-arg = [\"max-pods=150\"]"), "{help}");
    let (_, msg, _) = refused("agent", "snapshotter = [\"native\", \"overlayfs\"]");
    assert!(msg.contains("takes one value"), "{msg}");
    let (_, msg, help) = refused("agent", "protect-kernel-defaults = \"yes\"");
    assert!(msg.contains("takes true or false"), "{msg}");
    assert!(help.contains("protect-kernel-defaults = true"), "{help}");
    let (_, msg, _) = refused("agent", "\"snapshotter+\" = \"native\"");
    assert!(msg.contains("`+` appends to a list"), "{msg}");
    let (_, msg, _) = refused("agent", "kubelet-arg = [[\"a\"]]");
    assert!(msg.contains("not of tables or lists"), "{msg}");
}

#[test]
fn k3s_config_keys_imgbuild_sets_point_at_their_field() {
    for (key, field) in [
        ("node-ip = [\"10.0.0.5\"]", "mesh address"),
        ("flannel-iface = \"eth0\"", "mesh.interface"),
        ("token-file = \"/t\"", "k3s.token"),
        ("server = \"https://x:6443\"", "k3s.server"),
        ("\"node-label+\" = [\"a=b\"]", "k3s.labels"),
        ("write-kubeconfig-mode = \"0644\"", "0600"),
    ] {
        let (_, msg, help) = refused("agent", key);
        assert!(msg.contains("managed by imgbuild"), "{key}: {msg}");
        assert!(help.contains(field), "{key}: {help}");
    }
}

#[test]
fn k3s_config_of_a_release_without_flag_data_is_warned_about() {
    let text = "extends = \"amd64-worker\"\n[k3s]\nversion = \"v1.20.0+k3s1\"\n[k3s.config]\nnode-lable = [\"a=b\"]\n";
    let (_d, store) = store_with(&[("p", text)]);
    let r = store.resolve("p", &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.warnings.iter().any(|w| w.message.contains("not checked")),
        "{:?}",
        r.warnings
    );
    // Keys imgbuild owns are refused whatever the release.
    let text = text.replace("node-lable", "node-ip");
    let (_d, store) = store_with(&[("p", &text)]);
    assert!(store.resolve("p", &[]).is_err());
}

#[test]
fn time_sync_wait_defaults_to_60_and_takes_1_to_3600_seconds() {
    let store = ProfileStore::stock_only();
    let r = store.resolve("pi-worker", &[]).unwrap();
    assert_eq!(r.profile.time.sync_wait(), 60);
    for good in [1, 5, 3600] {
        let r = store
            .resolve("pi-worker", &[format!("time.sync-wait={good}")])
            .unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(r.profile.time.sync_wait(), good);
    }
    for bad in ["0", "3601", "-1", "\"60s\""] {
        let err = store
            .resolve("pi-worker", &[format!("time.sync-wait={bad}")])
            .unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|d| d.key.as_deref() == Some("time.sync-wait")
                    || d.message.contains("sync-wait")),
            "{bad}: {err}"
        );
    }
}
