//! Overlays: folders of files layered onto a tree, and single files placed at a path.
//!
//! An overlay is a host folder (relative paths in a profile are relative to the profile's
//! folder) or a stock overlay shipped inside imgbuild (`stock:NAME`). It is applied in byte order
//! of paths, so the result does not depend on the host's directory listing order. Nothing of the
//! host's ownership, umask or timestamps reaches the tree:
//!
//! * owner `root:root`; mtime = the build's epoch (the caller passes SOURCE_DATE_EPOCH);
//! * files `0755` if the host file has any execute bit, else `0644`; directories `0755`
//!   (stock overlays carry no modes: `0644`/`0755` likewise, executables named in the mode file);
//! * a mode file `.imgbuild-modes` at the overlay's root overrides that per path, one line each:
//!   `MODE [UID:GID] /path` (e.g. `0600 0:0 /etc/rancher/k3s/registries.yaml`); a line naming a
//!   path the overlay does not contain is an error (typos must not pass silently);
//! * directories the tree already has keep their metadata unless the mode file names them;
//! * symlinks are copied as symlinks with their target verbatim, never followed;
//! * device nodes, FIFOs and sockets are errors;
//! * a file replacing a directory of the tree is an error (it would drop the whole subtree);
//! * `NAME.j2` is rendered with minijinja into `NAME`, with the resolved profile as context
//!   (`{{ k3s.version }}`, `{{ name }}`, `{{ arch }}`, `{{ board }}`); an undefined variable is an
//!   error naming the template and line.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::profile::Resolved;
use crate::tree::{Content, Entry, Tree, TreeError, TreePath};

/// Name of the optional per-overlay mode file.
pub const MODE_FILE: &str = ".imgbuild-modes";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    #[error("overlay {overlay}: {path}: {why}")]
    Entry {
        overlay: String,
        path: String,
        why: String,
    },
    #[error("overlay {overlay}: template {template}{line}: {why}")]
    Template {
        overlay: String,
        template: String,
        line: String,
        why: String,
    },
    #[error("overlay {overlay}: {path}: {source}")]
    Io {
        overlay: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("overlay {overlay}, {MODE_FILE} line {line}: {why}")]
    ModeFile {
        overlay: String,
        line: usize,
        why: String,
    },
    #[error("unknown stock overlay {0:?}; the stock overlays are listed in the README")]
    UnknownStock(String),
    #[error("overlay {overlay}: {source}")]
    Tree {
        overlay: String,
        #[source]
        source: TreeError,
    },
}

/// Where an overlay's files come from.
#[derive(Debug, Clone, Copy)]
pub enum OverlaySource<'a> {
    Host(&'a Path),
    Stock(&'static include_dir::Dir<'static>),
}

impl OverlaySource<'_> {
    /// Parses a profile's overlay entry: `stock:NAME` or a path (already resolved by the caller).
    pub fn stock(name: &str) -> Result<OverlaySource<'static>, OverlayError> {
        crate::stock::overlay(name)
            .map(OverlaySource::Stock)
            .ok_or_else(|| OverlayError::UnknownStock(name.to_string()))
    }
}

/// Applies every overlay of the profile in order (later ones win): `stock:NAME` entries from
/// the binary, the others as paths relative to the profile that names them.
pub fn apply_profile(tree: &mut Tree, resolved: &Resolved, mtime: i64) -> Result<(), OverlayError> {
    for (i, entry) in resolved.profile.overlays.iter().enumerate() {
        let host;
        let source = match entry.strip_prefix("stock:") {
            Some(name) => OverlaySource::stock(name)?,
            None => {
                host = resolved.path_for(&format!("overlays[{i}]"), entry, Path::new("."));
                OverlaySource::Host(&host)
            }
        };
        apply(tree, source, entry, resolved, mtime)?;
    }
    Ok(())
}

/// One overlay item before it is placed.
enum Item {
    Dir,
    File { data: FileData, exec: bool },
    Symlink(Vec<u8>),
}

enum FileData {
    Host { path: PathBuf, len: u64 },
    Bytes(Vec<u8>),
}

/// What applying an overlay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlayStats {
    pub files: usize,
    pub templates: usize,
    pub symlinks: usize,
    pub dirs: usize,
}

/// Applies an overlay to `tree`. `name` names the overlay in errors; `mtime` is the build epoch.
pub fn apply(
    tree: &mut Tree,
    source: OverlaySource<'_>,
    name: &str,
    resolved: &Resolved,
    mtime: i64,
) -> Result<OverlayStats, OverlayError> {
    let mut items = BTreeMap::new();
    let mut mode_text = None;
    match source {
        OverlaySource::Host(root) => collect_host(root, root, name, &mut items, &mut mode_text)?,
        OverlaySource::Stock(dir) => collect_stock(dir, dir, &mut items, &mut mode_text),
    }
    let modes = match mode_text {
        Some(t) => parse_modes(&t, name)?,
        None => BTreeMap::new(),
    };
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    let context = template_context(resolved);

    // Render templates first: `NAME.j2` becomes `NAME`.
    let mut placed: BTreeMap<TreePath, (Item, bool)> = BTreeMap::new();
    for (path, item) in items {
        let is_template = matches!(item, Item::File { .. }) && path.file_name().ends_with(b".j2");
        if !is_template {
            placed.insert(path, (item, false));
            continue;
        }
        let Item::File { data, exec } = item else {
            unreachable!("checked above")
        };
        let text = match &data {
            FileData::Bytes(b) => b.clone(),
            FileData::Host { path: hp, .. } => fs::read(hp).map_err(|source| OverlayError::Io {
                overlay: name.to_string(),
                path: hp.clone(),
                source,
            })?,
        };
        let template_name = path.display();
        let text = String::from_utf8(text).map_err(|_| OverlayError::Template {
            overlay: name.to_string(),
            template: template_name.clone(),
            line: String::new(),
            why: "not UTF-8 text".into(),
        })?;
        let rendered = env
            .render_named_str(&template_name, &text, &context)
            .map_err(|e| OverlayError::Template {
                overlay: name.to_string(),
                template: template_name.clone(),
                line: e.line().map(|l| format!(" line {l}")).unwrap_or_default(),
                why: e
                    .detail()
                    .map_or_else(|| e.kind().to_string(), str::to_string),
            })?;
        let stem = &path.file_name()[..path.file_name().len() - 3];
        let out = path
            .parent()
            .unwrap_or_default()
            .join(stem)
            .map_err(|source| OverlayError::Tree {
                overlay: name.to_string(),
                source,
            })?;
        placed.insert(
            out,
            (
                Item::File {
                    data: FileData::Bytes(rendered.into_bytes()),
                    exec,
                },
                true,
            ),
        );
    }

    for p in modes.keys() {
        if !placed.contains_key(p) {
            return Err(OverlayError::Entry {
                overlay: name.to_string(),
                path: p.display(),
                why: format!("named in {MODE_FILE} but not in the overlay"),
            });
        }
    }

    let mut stats = OverlayStats::default();
    let parent_dir = Entry::dir(0o755).at(mtime);
    for (path, (item, templated)) in placed {
        let entry_err = |why: String| OverlayError::Entry {
            overlay: name.to_string(),
            path: path.display(),
            why,
        };
        let over = modes.get(&path);
        let (mode, owner) = match over {
            Some((m, o)) => (Some(*m), *o),
            None => (None, None),
        };
        let existing_dir = tree.get(&path).is_some_and(Entry::is_dir);
        let entry = match item {
            Item::Dir => {
                stats.dirs += 1;
                if existing_dir && over.is_none() {
                    continue;
                }
                Entry::dir(mode.unwrap_or(0o755))
            }
            Item::File { data, exec } => {
                if existing_dir {
                    return Err(entry_err(
                        "a file here would replace a directory of the tree (and everything in it)"
                            .into(),
                    ));
                }
                if templated {
                    stats.templates += 1;
                } else {
                    stats.files += 1;
                }
                let content = match data {
                    FileData::Bytes(b) => Content::bytes(b),
                    FileData::Host { path, len } => Content::host_file(path, 0, len),
                };
                Entry::file(mode.unwrap_or(if exec { 0o755 } else { 0o644 }), content)
            }
            Item::Symlink(t) => {
                if existing_dir {
                    return Err(entry_err(
                        "a symlink here would replace a directory of the tree".into(),
                    ));
                }
                stats.symlinks += 1;
                Entry::symlink(t)
            }
        };
        let (uid, gid) = owner.unwrap_or((0, 0));
        let entry = entry.owned(uid, gid).at(mtime);
        tree.insert_with_parents(path.clone(), entry, &parent_dir)
            .map_err(|e| match e {
                TreeError::ParentNotDir { parent, .. } => entry_err(format!(
                    "{parent} is not a directory in the tree (a symlink in the base, such as \
                     /lib → usr/lib?); put the file under the real directory"
                )),
                e => entry_err(e.to_string()),
            })?;
    }
    Ok(stats)
}

/// Places a single host file (a downloaded binary) at `dest` with `mode`, owned by root.
pub fn add_host_file(
    tree: &mut Tree,
    dest: &TreePath,
    host: &Path,
    len: u64,
    mode: u32,
    mtime: i64,
) -> Result<(), TreeError> {
    let entry = Entry::file(mode, Content::host_file(host, 0, len)).at(mtime);
    tree.insert_with_parents(dest.clone(), entry, &Entry::dir(0o755).at(mtime))?;
    Ok(())
}

/// The template context: every top-level section of the resolved profile, plus `name`,
/// `image_name`, `arch` and `board`.
fn template_context(r: &Resolved) -> minijinja::Value {
    let mut map: BTreeMap<String, minijinja::Value> = BTreeMap::new();
    if let Ok(serde_json::Value::Object(o)) = serde_json::to_value(&r.profile) {
        for (k, v) in o {
            map.insert(k.replace('-', "_"), minijinja::Value::from_serialize(&v));
        }
    }
    map.insert("name".into(), r.name.clone().into());
    map.insert("image_name".into(), r.image_name().to_string().into());
    map.insert("arch".into(), r.arch().as_str().into());
    map.insert("board".into(), r.board().as_str().into());
    minijinja::Value::from(map)
}

fn collect_host(
    root: &Path,
    dir: &Path,
    name: &str,
    out: &mut BTreeMap<TreePath, Item>,
    mode_text: &mut Option<String>,
) -> Result<(), OverlayError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OverlayError::Io {
            overlay: name.to_string(),
            path,
            source,
        }
    };
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).expect("below the overlay root");
        if dir == root && rel.as_os_str() == MODE_FILE {
            // Never followed: a link to a host file would have its content read and quoted.
            if !fs::symlink_metadata(&p).map_err(io(&p))?.is_file() {
                return Err(OverlayError::Entry {
                    overlay: name.to_string(),
                    path: MODE_FILE.to_string(),
                    why: "is a symlink or not a regular file; write the modes into a plain file in the overlay".into(),
                });
            }
            *mode_text = Some(fs::read_to_string(&p).map_err(io(&p))?);
            continue;
        }
        let tp = TreePath::new(rel.as_os_str().as_encoded_bytes()).map_err(|source| {
            OverlayError::Tree {
                overlay: name.to_string(),
                source,
            }
        })?;
        let m = fs::symlink_metadata(&p).map_err(io(&p))?;
        let ft = m.file_type();
        let item = if ft.is_symlink() {
            let t = fs::read_link(&p).map_err(io(&p))?;
            Item::Symlink(t.into_os_string().into_encoded_bytes())
        } else if ft.is_dir() {
            collect_host(root, &p, name, out, mode_text)?;
            Item::Dir
        } else if ft.is_file() {
            Item::File {
                data: FileData::Host {
                    path: p.clone(),
                    len: m.len(),
                },
                exec: m.permissions().mode() & 0o111 != 0,
            }
        } else {
            let what = if ft.is_block_device() || ft.is_char_device() {
                "a device node"
            } else if ft.is_fifo() {
                "a FIFO"
            } else {
                "a socket"
            };
            return Err(OverlayError::Entry {
                overlay: name.to_string(),
                path: tp.display(),
                why: format!(
                    "is {what}; overlays hold files, folders and symlinks only (devices come from devtmpfs at boot)"
                ),
            });
        };
        out.insert(tp, item);
    }
    Ok(())
}

fn collect_stock(
    root: &'static include_dir::Dir<'static>,
    dir: &'static include_dir::Dir<'static>,
    out: &mut BTreeMap<TreePath, Item>,
    mode_text: &mut Option<String>,
) {
    let rel = |p: &Path| {
        let r = p.strip_prefix(root.path()).unwrap_or(p);
        TreePath::new(r.as_os_str().as_encoded_bytes()).expect("stock overlay paths are valid")
    };
    for d in dir.dirs() {
        out.insert(rel(d.path()), Item::Dir);
        collect_stock(root, d, out, mode_text);
    }
    for f in dir.files() {
        let r = rel(f.path());
        if r.as_bytes() == MODE_FILE.as_bytes() {
            *mode_text = f.contents_utf8().map(str::to_string);
            continue;
        }
        out.insert(
            r,
            Item::File {
                data: FileData::Bytes(f.contents().to_vec()),
                exec: false,
            },
        );
    }
}

type Modes = BTreeMap<TreePath, (u32, Option<(u32, u32)>)>;

/// `MODE [UID:GID] /path` lines; `#` starts a comment.
fn parse_modes(text: &str, name: &str) -> Result<Modes, OverlayError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: String| OverlayError::ModeFile {
            overlay: name.to_string(),
            line: i + 1,
            why,
        };
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, path) = match parts.as_slice() {
            [m, p] => (*m, None, *p),
            [m, o, p] => (*m, Some(*o), *p),
            _ => {
                return Err(bad(
                    "write `MODE [UID:GID] /path`, e.g. `0600 0:0 /etc/x`".into()
                ));
            }
        };
        let mode = u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| bad(format!("{mode:?} is not an octal mode like 0644")))?;
        let owner = match owner {
            None => None,
            Some(o) => {
                let (u, g) = o
                    .split_once(':')
                    .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                    .ok_or_else(|| bad(format!("{o:?} is not numeric UID:GID")))?;
                Some((u, g))
            }
        };
        let tp = TreePath::new(path).map_err(|e| bad(e.to_string()))?;
        if out.insert(tp, (mode, owner)).is_some() {
            return Err(bad(format!("{path} is listed twice")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_file_syntax() {
        let m = parse_modes("# c\n0600 0:0 /etc/a\n\n4755 /usr/bin/b # suid\n", "o").unwrap();
        assert_eq!(m[&TreePath::new("/etc/a").unwrap()], (0o600, Some((0, 0))));
        assert_eq!(m[&TreePath::new("/usr/bin/b").unwrap()], (0o4755, None));
        for bad in [
            "644x /a",
            "0600 root:root /a",
            "0600",
            "0600 /a\n0644 /a",
            "0600 /../x",
        ] {
            let e = parse_modes(bad, "o").unwrap_err();
            assert!(e.to_string().contains(MODE_FILE), "{bad}: {e}");
        }
    }

    #[test]
    fn stock_overlay_paths_are_relative_to_the_overlay() {
        let Some(dir) = crate::stock::overlays().dirs().next() else {
            return;
        };
        let mut items = BTreeMap::new();
        let mut modes = None;
        collect_stock(dir, dir, &mut items, &mut modes);
        assert!(!items.is_empty());
        let prefix = dir.path().as_os_str().as_encoded_bytes();
        for p in items.keys() {
            assert!(
                !p.as_bytes().starts_with(prefix),
                "{p} keeps the overlay's own name"
            );
        }
    }

    #[test]
    fn single_file_with_mode_and_parents() {
        let mut t = Tree::new();
        let dest = TreePath::new("/usr/local/bin/k3s").unwrap();
        add_host_file(&mut t, &dest, Path::new("/cache/sha256/x"), 42, 0o755, 9).unwrap();
        let e = t.get(&dest).unwrap();
        assert_eq!((e.mode, e.uid, e.mtime), (0o755, 0, 9));
        assert!(matches!(&e.kind, crate::tree::Kind::File(c) if c.len == 42));
        let d = t.get(&TreePath::new("/usr/local").unwrap()).unwrap();
        assert_eq!((d.mode, d.mtime), (0o755, 9));
    }
}
