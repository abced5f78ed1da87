//! Enabling and masking systemd units in a tree: the symlinks `systemctl enable` and
//! `systemctl mask` would make, without running anything.
//!
//! `enable` reads the unit's `[Install]` section and, as systemctl does, links
//! `/etc/systemd/system/<target>.wants/<unit>` (WantedBy=), `.requires/` (RequiredBy=),
//! `.upholds/` (UpheldBy=) and `/etc/systemd/system/<alias>` (Alias=) to the unit file, and enables
//! the units named by Also=. A template (`foo@.service`) is enabled as an instance
//! (`foo@bar.service`) or with its DefaultInstance=. Unit files are looked up in
//! `/etc/systemd/system`, `/usr/lib/systemd/system` and `/lib/systemd/system`, in that order; a
//! symlink is followed inside the tree (never on the host). A masked unit cannot be enabled.

use std::collections::BTreeSet;

use crate::tree::{Entry, Kind, Tree, TreeError, TreePath};

const SEARCH: [&str; 3] = [
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SystemdError {
    #[error("systemd unit {unit}: {why}")]
    Unit { unit: String, why: String },
    #[error("systemd unit {unit}: {source}")]
    Tree {
        unit: String,
        #[source]
        source: TreeError,
    },
}

fn valid_unit_name(n: &str) -> bool {
    const TYPES: [&str; 11] = [
        ".service",
        ".socket",
        ".target",
        ".timer",
        ".path",
        ".mount",
        ".automount",
        ".swap",
        ".slice",
        ".scope",
        ".device",
    ];
    !n.is_empty()
        && n.len() <= 255
        && !n.contains('/')
        && n != "."
        && n != ".."
        && TYPES.iter().any(|t| n.ends_with(t) && n.len() > t.len())
}

/// Follows symlinks inside the tree (at most 16 hops). Relative targets resolve against the
/// link's folder.
fn resolve(tree: &Tree, path: &TreePath) -> Option<(TreePath, Entry)> {
    let mut cur = path.clone();
    for _ in 0..16 {
        let e = tree.get(&cur)?;
        match &e.kind {
            Kind::Symlink(t) => {
                let joined = if t.starts_with(b"/") {
                    t.clone()
                } else {
                    let mut b = cur.parent()?.display().into_bytes();
                    b.push(b'/');
                    b.extend_from_slice(t);
                    b
                };
                cur = normalise(&joined)?;
            }
            _ => return Some((cur, e.clone())),
        }
    }
    None
}

/// Resolves `.` and `..` lexically (inside the tree, `..` at the root stays at the root).
fn normalise(p: &[u8]) -> Option<TreePath> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    TreePath::new(parts.join(&b'/')).ok()
}

/// The file that defines `unit`, and its path.
fn find_unit(tree: &Tree, file_name: &str) -> Result<(TreePath, Vec<u8>), SystemdError> {
    for dir in SEARCH {
        let Ok(p) = TreePath::new(format!("{dir}/{file_name}")) else {
            continue;
        };
        if let Some(e) = tree.get(&p) {
            if matches!(&e.kind, Kind::Symlink(t) if t == b"/dev/null") {
                return Err(SystemdError::Unit {
                    unit: file_name.to_string(),
                    why: format!("it is masked ({p} → /dev/null)"),
                });
            }
            let (real, entry) = resolve(tree, &p).ok_or_else(|| SystemdError::Unit {
                unit: file_name.to_string(),
                why: format!("{p} is a symlink that does not resolve inside the image"),
            })?;
            let Kind::File(c) = &entry.kind else {
                return Err(SystemdError::Unit {
                    unit: file_name.to_string(),
                    why: format!("{real} is not a regular file"),
                });
            };
            let text = c.read_all().map_err(|e| SystemdError::Unit {
                unit: file_name.to_string(),
                why: format!("reading {real}: {e}"),
            })?;
            return Ok((p, text));
        }
    }
    Err(SystemdError::Unit {
        unit: file_name.to_string(),
        why: format!("no unit file in {}", SEARCH.join(", ")),
    })
}

/// The `[Install]` settings of a unit file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Install {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub upheld_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

/// Parses the `[Install]` section (continuation lines, comments, empty assignments resetting a
/// list, as systemd does).
pub fn parse_install(text: &str) -> Install {
    let mut inst = Install::default();
    let mut in_install = false;
    let mut logical = String::new();
    let mut lines = Vec::new();
    for raw in text.lines() {
        let l = raw.trim_end();
        if let Some(stripped) = l.strip_suffix('\\') {
            logical.push_str(stripped);
            logical.push(' ');
            continue;
        }
        logical.push_str(l);
        lines.push(std::mem::take(&mut logical));
    }
    for l in lines {
        let l = l.trim();
        if l.starts_with('#') || l.starts_with(';') || l.is_empty() {
            continue;
        }
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let list = match k.trim() {
            "WantedBy" => &mut inst.wanted_by,
            "RequiredBy" => &mut inst.required_by,
            "UpheldBy" => &mut inst.upheld_by,
            "Alias" => &mut inst.alias,
            "Also" => &mut inst.also,
            "DefaultInstance" => {
                let v = v.trim();
                inst.default_instance = (!v.is_empty()).then(|| v.to_string());
                continue;
            }
            _ => continue,
        };
        if v.trim().is_empty() {
            list.clear();
        } else {
            list.extend(v.split_whitespace().map(str::to_string));
        }
    }
    inst
}

/// Enables `unit`; returns the symlinks made (or replaced).
pub fn enable(tree: &mut Tree, unit: &str, mtime: i64) -> Result<Vec<TreePath>, SystemdError> {
    let mut made = Vec::new();
    let mut seen = BTreeSet::new();
    enable_inner(tree, unit, mtime, &mut made, &mut seen)?;
    Ok(made)
}

fn enable_inner(
    tree: &mut Tree,
    unit: &str,
    mtime: i64,
    made: &mut Vec<TreePath>,
    seen: &mut BTreeSet<String>,
) -> Result<(), SystemdError> {
    if !seen.insert(unit.to_string()) {
        return Ok(());
    }
    let err = |why: String| SystemdError::Unit {
        unit: unit.to_string(),
        why,
    };
    if !valid_unit_name(unit) {
        return Err(err("not a unit name (e.g. k3s.service)".into()));
    }
    // foo@bar.service → file foo@.service, instance bar.
    let (file, instance) = match unit.split_once('@') {
        Some((prefix, rest)) => {
            let dot = rest.rfind('.').expect("valid names have a type suffix");
            let (inst, suffix) = rest.split_at(dot);
            (
                format!("{prefix}@{suffix}"),
                (!inst.is_empty()).then(|| inst.to_string()),
            )
        }
        None => (unit.to_string(), None),
    };
    let (path, text) = find_unit(tree, &file)?;
    let text = String::from_utf8_lossy(&text);
    let install = parse_install(&text);
    let link_name = match (&instance, unit.contains('@')) {
        (Some(_), _) | (None, false) => unit.to_string(),
        (None, true) => {
            let def = install.default_instance.as_ref().ok_or_else(|| {
                err(
                    "a template unit needs an instance (name@instance.service) or DefaultInstance="
                        .into(),
                )
            })?;
            file.replacen("@.", &format!("@{def}."), 1)
        }
    };
    if install.wanted_by.is_empty()
        && install.required_by.is_empty()
        && install.upheld_by.is_empty()
        && install.alias.is_empty()
        && install.also.is_empty()
    {
        return Err(err(format!(
            "{path} has no [Install] section with WantedBy=/RequiredBy=/Alias=; \
             systemctl would refuse to enable it too"
        )));
    }
    let target = path.display().into_bytes();
    let etc = "/etc/systemd/system";
    let dir = Entry::dir(0o755).at(mtime);
    let mut link = |tree: &mut Tree, at: String| -> Result<(), SystemdError> {
        let p = TreePath::new(&at).map_err(|source| SystemdError::Tree {
            unit: unit.to_string(),
            source,
        })?;
        tree.insert_with_parents(p.clone(), Entry::symlink(target.clone()).at(mtime), &dir)
            .map_err(|source| SystemdError::Tree {
                unit: unit.to_string(),
                source,
            })?;
        made.push(p);
        Ok(())
    };
    for (list, suffix) in [
        (&install.wanted_by, "wants"),
        (&install.required_by, "requires"),
        (&install.upheld_by, "upholds"),
    ] {
        for t in list {
            if !valid_unit_name(t) {
                return Err(err(format!("{path}: [Install] names {t:?}, not a unit")));
            }
            link(tree, format!("{etc}/{t}.{suffix}/{link_name}"))?;
        }
    }
    for a in &install.alias {
        if !valid_unit_name(a) {
            return Err(err(format!("{path}: Alias={a:?} is not a unit name")));
        }
        link(tree, format!("{etc}/{a}"))?;
    }
    for also in &install.also {
        enable_inner(tree, also, mtime, made, seen)?;
    }
    Ok(())
}

/// Masks `unit`: `/etc/systemd/system/<unit>` → `/dev/null`, replacing what was there.
pub fn mask(tree: &mut Tree, unit: &str, mtime: i64) -> Result<TreePath, SystemdError> {
    if !valid_unit_name(unit) {
        return Err(SystemdError::Unit {
            unit: unit.to_string(),
            why: "not a unit name (e.g. apt-daily.timer)".into(),
        });
    }
    let p = TreePath::new(format!("/etc/systemd/system/{unit}")).map_err(|source| {
        SystemdError::Tree {
            unit: unit.to_string(),
            source,
        }
    })?;
    tree.insert_with_parents(
        p.clone(),
        Entry::symlink(b"/dev/null".to_vec()).at(mtime),
        &Entry::dir(0o755).at(mtime),
    )
    .map_err(|source| SystemdError::Tree {
        unit: unit.to_string(),
        source,
    })?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Content;

    fn tree_with(unit_path: &str, text: &str) -> Tree {
        let mut t = Tree::new();
        t.insert_with_parents(
            TreePath::new(unit_path).unwrap(),
            Entry::file(0o644, Content::bytes(text)),
            &Entry::dir(0o755),
        )
        .unwrap();
        t
    }

    fn link(t: &Tree, p: &str) -> String {
        match &t.get(&TreePath::new(p).unwrap()).unwrap().kind {
            Kind::Symlink(x) => String::from_utf8(x.clone()).unwrap(),
            k => panic!("{p}: {}", k.name()),
        }
    }

    #[test]
    fn install_section_parsing() {
        let i = parse_install(
            "[Unit]\nWantedBy=nope.target\n[Install]\n# c\nWantedBy=a.target \\\n  b.target\nWantedBy=\nWantedBy=c.target\nAlias=x.service\nAlso=y.socket\n",
        );
        assert_eq!(i.wanted_by, ["c.target"]);
        assert_eq!(i.alias, ["x.service"]);
        assert_eq!(i.also, ["y.socket"]);
    }

    #[test]
    fn enable_makes_what_systemctl_makes() {
        let mut t = tree_with(
            "/usr/lib/systemd/system/k3s.service",
            "[Service]\nExecStart=/usr/local/bin/k3s server\n[Install]\nWantedBy=multi-user.target\nRequiredBy=x.target\nAlias=kube.service\n",
        );
        let made = enable(&mut t, "k3s.service", 7).unwrap();
        assert_eq!(made.len(), 3);
        let target = "/usr/lib/systemd/system/k3s.service";
        assert_eq!(
            link(
                &t,
                "/etc/systemd/system/multi-user.target.wants/k3s.service"
            ),
            target
        );
        assert_eq!(
            link(&t, "/etc/systemd/system/x.target.requires/k3s.service"),
            target
        );
        assert_eq!(link(&t, "/etc/systemd/system/kube.service"), target);
        let d = t
            .get(&TreePath::new("/etc/systemd/system/multi-user.target.wants").unwrap())
            .unwrap();
        assert_eq!((d.mode, d.mtime), (0o755, 7));
    }

    #[test]
    fn templates_also_masks_and_errors() {
        let mut t = tree_with(
            "/lib/systemd/system/getty@.service",
            "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
        );
        enable(&mut t, "getty@ttyS0.service", 0).unwrap();
        enable(&mut t, "getty@.service", 0).unwrap();
        assert!(
            t.get(
                &TreePath::new("/etc/systemd/system/getty.target.wants/getty@ttyS0.service")
                    .unwrap()
            )
            .is_some()
        );
        assert!(
            t.get(
                &TreePath::new("/etc/systemd/system/getty.target.wants/getty@tty1.service")
                    .unwrap()
            )
            .is_some()
        );

        let e = enable(&mut t, "missing.service", 0).unwrap_err();
        assert!(e.to_string().contains("no unit file"), "{e}");
        assert!(enable(&mut t, "../../etc/passwd", 0).is_err());

        mask(&mut t, "getty@.service", 0).unwrap();
        let e = enable(&mut t, "getty@ttyS1.service", 0).unwrap_err();
        assert!(e.to_string().contains("masked"), "{e}");

        let mut t = tree_with(
            "/etc/systemd/system/static.service",
            "[Service]\nExecStart=/x\n",
        );
        let e = enable(&mut t, "static.service", 0).unwrap_err();
        assert!(e.to_string().contains("[Install]"), "{e}");
    }
}
