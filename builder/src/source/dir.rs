//! Host folders → tree entries.
//!
//! The walk is deterministic: names are visited in byte order (never `readdir` order), symlinks
//! are kept as symlinks (never followed), hard links are found by `(device, inode)` and the first
//! name in walk order becomes the file. Host ownership does not reach the tree unless asked for
//! ([`Ownership::Host`]): by default everything is `root:root`, so an unprivileged user's folder
//! makes a root-owned filesystem. Modes (`0o7777`) and mtimes come from the host; every time is
//! clamped to the build epoch later. File contents are referenced, not copied.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::tree::{Content, Entry, Kind, Source, Tree, TreePath};

/// Reading a folder failed; every variant names the host path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// Whose files these are in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Every entry gets this uid and gid (default `0:0`).
    Fixed { uid: u32, gid: u32 },
    /// Keep the host's uid/gid (for trees staged as root).
    Host,
}

impl Default for Ownership {
    fn default() -> Self {
        Ownership::Fixed { uid: 0, gid: 0 }
    }
}

/// How to read a folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirOptions {
    pub ownership: Ownership,
    /// Copy extended attributes (`user.*`, `security.*`, `trusted.*`) from the host.
    pub xattrs: bool,
}

/// Counts of what the folder held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    pub entries: u64,
    pub file_bytes: u64,
}

/// Adds the contents of `root` (a directory) to `tree` at `/`; `root`'s own mode and mtime become
/// the tree root's.
pub fn read_dir_into(
    root: &Path,
    tree: &mut Tree,
    opts: &DirOptions,
) -> Result<DirStats, DirError> {
    let md = fs::symlink_metadata(root).map_err(|source| DirError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    if !md.is_dir() {
        return Err(DirError::Invalid {
            path: root.to_path_buf(),
            why: "not a directory".into(),
        });
    }
    let mut walk = Walk {
        tree,
        opts,
        links: HashMap::new(),
        stats: DirStats::default(),
    };
    let root_entry = walk.entry(root, &md, Kind::Dir)?;
    walk.insert(root, TreePath::root(), root_entry)?;
    walk.dir(root, &TreePath::root())?;
    Ok(walk.stats)
}

struct Walk<'a> {
    tree: &'a mut Tree,
    opts: &'a DirOptions,
    links: HashMap<(u64, u64), TreePath>,
    stats: DirStats,
}

impl Walk<'_> {
    fn dir(&mut self, host: &Path, at: &TreePath) -> Result<(), DirError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DirError::Io { path, source }
        };
        let mut names = Vec::new();
        for e in fs::read_dir(host).map_err(io_err(host))? {
            names.push(e.map_err(io_err(host))?.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = host.join(&name);
            let tpath = at.join(name.as_bytes()).map_err(|e| DirError::Invalid {
                path: path.clone(),
                why: e.to_string(),
            })?;
            let md = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(io_err(&path))?;
                Kind::Symlink(target.as_os_str().as_bytes().to_vec())
            } else if ft.is_file() {
                let key = (md.dev(), md.ino());
                match self.links.get(&key) {
                    Some(first) if md.nlink() > 1 => Kind::Hardlink(first.clone()),
                    _ => {
                        // Fail now, naming the file, rather than midway through writing.
                        fs::File::open(&path).map_err(io_err(&path))?;
                        if md.nlink() > 1 {
                            self.links.insert(key, tpath.clone());
                        }
                        self.stats.file_bytes += md.len();
                        Kind::File(Content {
                            len: md.len(),
                            source: Source::HostFile {
                                path: path.clone(),
                                offset: 0,
                            },
                        })
                    }
                }
            } else if ft.is_char_device() || ft.is_block_device() {
                let (major, minor) = split_rdev(md.rdev());
                if ft.is_char_device() {
                    Kind::CharDevice { major, minor }
                } else {
                    Kind::BlockDevice { major, minor }
                }
            } else if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_socket() {
                Kind::Socket
            } else {
                return Err(DirError::Invalid {
                    path,
                    why: "unknown file type".into(),
                });
            };
            let is_dir = matches!(kind, Kind::Dir);
            let entry = self.entry(&path, &md, kind)?;
            self.insert(&path, tpath.clone(), entry)?;
            if is_dir {
                self.dir(&path, &tpath)?;
            }
        }
        Ok(())
    }

    fn entry(&self, path: &Path, md: &fs::Metadata, kind: Kind) -> Result<Entry, DirError> {
        let (uid, gid) = match self.opts.ownership {
            Ownership::Fixed { uid, gid } => (uid, gid),
            Ownership::Host => (md.uid(), md.gid()),
        };
        let mut e = Entry::new(kind, md.mode() & 0o7777)
            .owned(uid, gid)
            .at(md.mtime());
        if self.opts.xattrs {
            e.xattrs = read_xattrs(path).map_err(|source| DirError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(e)
    }

    fn insert(&mut self, host: &Path, at: TreePath, entry: Entry) -> Result<(), DirError> {
        self.tree.insert(at, entry).map_err(|e| DirError::Invalid {
            path: host.to_path_buf(),
            why: e.to_string(),
        })?;
        self.stats.entries += 1;
        Ok(())
    }
}

/// glibc's `dev_t` encoding (12-bit major, 20-bit minor split across the word).
fn split_rdev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

fn read_xattrs(path: &Path) -> io::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut names = vec![0u8; 64 << 10];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        // Filesystems without xattr support simply have none.
        Err(rustix::io::Errno::NOTSUP) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 64 << 10];
        let len = rustix::fs::lgetxattr(path, name, &mut value[..])?;
        value.truncate(len);
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::test_path as p;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn walk_is_sorted_root_owned_and_keeps_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir(r.join("b")).unwrap();
        fs::write(r.join("b/z"), "zz").unwrap();
        fs::write(r.join("a"), "aaa").unwrap();
        fs::set_permissions(r.join("a"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(r.join("a"), r.join("c")).unwrap();
        symlink("/does/not/exist", r.join("dangling")).unwrap();
        let mut t = Tree::new();
        let stats = read_dir_into(r, &mut t, &DirOptions::default()).unwrap();
        assert_eq!(stats.entries, 6);
        let order: Vec<String> = t.iter().map(|(p, _)| p.display()).collect();
        assert_eq!(order, ["/", "/a", "/b", "/b/z", "/c", "/dangling"]);
        let a = t.get(&p("a")).unwrap();
        assert_eq!((a.uid, a.gid, a.mode), (0, 0, 0o4755));
        assert!(matches!(&t.get(&p("c")).unwrap().kind, Kind::Hardlink(x) if *x == p("a")));
        assert!(
            matches!(&t.get(&p("dangling")).unwrap().kind, Kind::Symlink(x) if x == b"/does/not/exist")
        );
        let mut t2 = Tree::new();
        let opts = DirOptions {
            ownership: Ownership::Fixed { uid: 7, gid: 8 },
            xattrs: true,
        };
        read_dir_into(r, &mut t2, &opts).unwrap();
        assert_eq!(t2.get(&p("b/z")).unwrap().uid, 7);
    }

    #[test]
    fn rdev_split_matches_glibc() {
        // makedev(259, 65536)
        let rdev: u64 = (259 << 8) | (65536 << 12);
        assert_eq!(split_rdev(rdev), (259, 65536));
        assert_eq!(split_rdev(0x0103), (1, 3));
    }
}
