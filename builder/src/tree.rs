//! The tree: an in-memory, path-sorted model of a root filesystem.
//!
//! Every reader (host folder, tarball, base image, `.deb`, overlay) produces entries of a [`Tree`];
//! every writer (ext4, FAT, cpio) consumes one. Nothing here touches the host filesystem: file
//! contents are *references* ([`Source`]) that a writer opens when it streams the bytes.
//!
//! Iteration order is depth-first with the children of each directory in byte order of their
//! names, so a writer that assigns inode numbers while iterating is deterministic by construction.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

/// Longest name of one path component, in bytes (ext4 and most Linux filesystems).
pub const NAME_MAX: usize = 255;
/// Longest path, as Linux's `PATH_MAX` (4096 with the terminating NUL). Deeper entries cannot be
/// opened by path on the node, and bounding them keeps hostile archives (tens of thousands of
/// nested folders, each stored with its whole path) from costing time quadratic in their depth.
pub const PATH_MAX: usize = 4095;

/// Errors from building or editing a tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TreeError {
    #[error("invalid path {path:?}: {why}")]
    InvalidPath { path: String, why: &'static str },
    #[error("cannot add {path}: parent directory {parent} does not exist")]
    ParentMissing { path: TreePath, parent: TreePath },
    #[error("cannot add {path}: {parent} is not a directory")]
    ParentNotDir { path: TreePath, parent: TreePath },
    #[error("hard link {path} points to {target}, which is not a regular file in the tree")]
    BadHardlink { path: TreePath, target: TreePath },
    #[error("cannot replace the root directory with a non-directory")]
    RootNotDir,
}

/// A path for a message: at most 200 bytes of it, so a hostile one does not flood the terminal.
pub fn shown(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
    if raw.len() > 200 {
        format!("{text}… ({} bytes)", raw.len())
    } else {
        text
    }
}

/// A normalised absolute path inside the tree, stored without the leading `/`.
///
/// The root is the empty path. Components are never empty, `.` or `..`, never contain NUL and are
/// at most [`NAME_MAX`] bytes. Names are bytes, not UTF-8: base images may hold any name.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct TreePath(Vec<u8>);

impl TreePath {
    /// The root directory.
    pub fn root() -> Self {
        TreePath(Vec::new())
    }

    /// Parses and normalises a path: leading `/` optional, `.` and empty components dropped.
    /// `..` is refused rather than resolved, so hostile archive paths cannot climb out.
    pub fn new(path: impl AsRef<[u8]>) -> Result<Self, TreeError> {
        let raw = path.as_ref();
        let bad = |why| TreeError::InvalidPath {
            path: shown(raw),
            why,
        };
        let mut out = Vec::with_capacity(raw.len());
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => continue,
                b".." => return Err(bad("`..` components are not allowed")),
                _ if comp.contains(&0) => return Err(bad("names may not contain NUL")),
                _ if comp.len() > NAME_MAX => return Err(bad("a name is longer than 255 bytes")),
                _ => {}
            }
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(comp);
            if out.len() >= PATH_MAX {
                return Err(bad("the path is longer than 4095 bytes (Linux's PATH_MAX)"));
            }
        }
        Ok(TreePath(out))
    }

    /// Is this the root directory?
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as bytes, without a leading `/` (empty for the root).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path with a leading `/`, lossily decoded for messages and manifests.
    pub fn display(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.0))
    }

    /// Components, root first.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// The last component (empty for the root).
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// The parent directory; `None` for the root.
    pub fn parent(&self) -> Option<TreePath> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => TreePath(self.0[..i].to_vec()),
            None => TreePath::root(),
        })
    }

    /// `self/name`, where `name` is one valid component.
    pub fn join(&self, name: impl AsRef<[u8]>) -> Result<TreePath, TreeError> {
        let name = name.as_ref();
        if name.contains(&b'/') {
            return Err(TreeError::InvalidPath {
                path: String::from_utf8_lossy(name).into_owned(),
                why: "a single name may not contain `/`",
            });
        }
        let mut joined = self.0.clone();
        joined.push(b'/');
        joined.extend_from_slice(name);
        TreePath::new(joined)
    }

    /// Is `self` equal to `other` or inside it?
    pub fn starts_with(&self, other: &TreePath) -> bool {
        other.is_root()
            || (self.0.starts_with(&other.0)
                && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/'))
    }
}

/// Depth-first order: compare component by component, so every directory is followed directly by
/// its whole subtree and siblings are in byte order of their names.
impl Ord for TreePath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.components().cmp(other.components())
    }
}

impl PartialOrd for TreePath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

impl fmt::Debug for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

/// Opens the bytes of a file that live somewhere other than the host filesystem or memory
/// (a partition of a base image, a member of a compressed archive).
pub trait ContentReader: Send + Sync + fmt::Debug {
    /// A reader positioned at the first byte of the content.
    fn open(&self) -> io::Result<Box<dyn Read + '_>>;

    /// The byte ranges `[start, end)` that hold data, ascending, when the source knows where its
    /// holes are (a sparse file of a base image); everything else reads as zeros. `None`: no
    /// map, treat it all as data.
    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        None
    }
}

/// Where the bytes of a regular file come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Bytes held in memory (generated config, small files).
    Bytes(Arc<[u8]>),
    /// A range of a host file (a cache blob, an overlay file, a member of an uncompressed tar).
    HostFile { path: PathBuf, offset: u64 },
    /// Anything else that can produce a reader.
    Reader(Arc<dyn ContentReader>),
}

/// The content of a regular file: its length is known before any byte is read, because
/// filesystem writers lay out every extent before streaming data.
#[derive(Clone, Debug)]
pub struct Content {
    pub len: u64,
    pub source: Source,
}

impl Content {
    /// Content held in memory.
    pub fn bytes(data: impl Into<Vec<u8>>) -> Self {
        let data: Vec<u8> = data.into();
        Content {
            len: data.len() as u64,
            source: Source::Bytes(data.into()),
        }
    }

    /// `len` bytes of a host file starting at `offset`.
    pub fn host_file(path: impl Into<PathBuf>, offset: u64, len: u64) -> Self {
        Content {
            len,
            source: Source::HostFile {
                path: path.into(),
                offset,
            },
        }
    }

    /// A reader over exactly `len` bytes of the content. A source that yields fewer bytes is an
    /// error when read, not silently short.
    pub fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        let inner: Box<dyn Read + '_> = match &self.source {
            Source::Bytes(b) => Box::new(&b[..]),
            Source::HostFile { path, offset } => {
                let mut f = std::fs::File::open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
                })?;
                f.seek(SeekFrom::Start(*offset))?;
                Box::new(f)
            }
            Source::Reader(r) => r.open()?,
        };
        Ok(Box::new(ExactLen {
            inner: inner.take(self.len),
            left: self.len,
        }))
    }

    /// Reads the whole content into memory (for small files: templates, config).
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0).min(1 << 20));
        self.open()?.read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// Turns a premature end of the source into an error instead of a short file.
struct ExactLen<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactLen<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file content ended {} bytes early", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// What an entry is.
#[derive(Clone, Debug)]
pub enum Kind {
    Dir,
    File(Content),
    /// Target bytes exactly as stored; never resolved on the host.
    Symlink(Vec<u8>),
    /// A second name for the regular file at the given path (which must exist in the tree).
    Hardlink(TreePath),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

impl Kind {
    /// Short name for manifests and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::File(_) => "file",
            Kind::Symlink(_) => "symlink",
            Kind::Hardlink(_) => "hardlink",
            Kind::CharDevice { .. } => "char",
            Kind::BlockDevice { .. } => "block",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }
}

/// One entry: its kind and metadata. `mode` holds permission bits only (`0o7777`); the file type
/// is [`Kind`].
#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the Unix epoch (UTC).
    pub mtime: i64,
    /// Full names (`security.capability`, `user.foo`) to values, sorted.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Entry {
    /// A directory owned by root.
    pub fn dir(mode: u32) -> Self {
        Entry::new(Kind::Dir, mode)
    }

    /// A regular file owned by root.
    pub fn file(mode: u32, content: Content) -> Self {
        Entry::new(Kind::File(content), mode)
    }

    /// A symlink owned by root (mode 0777, as Linux reports it).
    pub fn symlink(target: impl Into<Vec<u8>>) -> Self {
        Entry::new(Kind::Symlink(target.into()), 0o777)
    }

    /// An entry of the given kind owned by root with mtime 0 (clamped later).
    pub fn new(kind: Kind, mode: u32) -> Self {
        Entry {
            kind,
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }

    /// Sets owner and group.
    pub fn owned(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Sets the modification time.
    pub fn at(mut self, mtime: i64) -> Self {
        self.mtime = mtime;
        self
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }
}

/// A root filesystem as data. Always contains the root directory.
#[derive(Clone, Debug)]
pub struct Tree {
    entries: BTreeMap<TreePath, Entry>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// A tree holding only the root directory (mode 0755, owned by root).
    pub fn new() -> Self {
        let mut entries = BTreeMap::new();
        entries.insert(TreePath::root(), Entry::dir(0o755));
        Tree { entries }
    }

    /// Number of entries, the root included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Only the root directory?
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 1
    }

    pub fn get(&self, path: &TreePath) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn get_mut(&mut self, path: &TreePath) -> Option<&mut Entry> {
        self.entries.get_mut(path)
    }

    /// The root directory's entry.
    pub fn root(&self) -> &Entry {
        &self.entries[&TreePath::root()]
    }

    /// Adds or replaces an entry; the parent must exist and be a directory. Replacing a
    /// directory with a non-directory removes the directory's subtree; replacing a directory with
    /// a directory keeps its children (only the metadata changes). Returns the replaced entry.
    pub fn insert(&mut self, path: TreePath, entry: Entry) -> Result<Option<Entry>, TreeError> {
        match path.parent() {
            None if !entry.is_dir() => return Err(TreeError::RootNotDir),
            None => {}
            Some(parent) => match self.entries.get(&parent) {
                None => return Err(TreeError::ParentMissing { path, parent }),
                Some(p) if !p.is_dir() => return Err(TreeError::ParentNotDir { path, parent }),
                Some(_) => {}
            },
        }
        if !entry.is_dir() && self.entries.get(&path).is_some_and(Entry::is_dir) {
            self.remove_children(&path);
        }
        let old = self.entries.insert(path.clone(), entry);
        if let Some(o) = &old
            && matches!(o.kind, Kind::File(_))
        {
            // Like a package manager replacing a file (unlink, then create): the file's other
            // names keep the old content.
            self.rehome_links(BTreeMap::from([(path, o.clone())]));
        }
        Ok(old)
    }

    /// Like [`insert`](Self::insert), creating missing parent directories as copies of `dir`.
    /// A non-directory standing where a parent must be is an error, never silently replaced.
    pub fn insert_with_parents(
        &mut self,
        path: TreePath,
        entry: Entry,
        dir: &Entry,
    ) -> Result<Option<Entry>, TreeError> {
        if let Some(parent) = path.parent() {
            self.mkdir_p(&parent, dir)?;
        }
        self.insert(path, entry)
    }

    /// Creates `path` and its missing ancestors as copies of `dir` (existing ones are kept).
    /// It looks upwards for the nearest existing folder (usually the parent itself), so a deep
    /// tree costs one lookup per entry, not one per ancestor.
    pub fn mkdir_p(&mut self, path: &TreePath, dir: &Entry) -> Result<(), TreeError> {
        let mut missing = Vec::new();
        let mut cur = path.clone();
        loop {
            match self.entries.get(&cur) {
                Some(e) if e.is_dir() => break,
                Some(_) => {
                    return Err(TreeError::ParentNotDir {
                        path: path.clone(),
                        parent: cur,
                    });
                }
                None => {
                    // The root always exists, so this ends.
                    let parent = cur.parent().unwrap_or_default();
                    missing.push(cur);
                    cur = parent;
                }
            }
        }
        for p in missing.into_iter().rev() {
            self.entries.insert(p, dir.clone());
        }
        Ok(())
    }

    /// Removes an entry and everything below it. Returns the removed entry.
    pub fn remove(&mut self, path: &TreePath) -> Option<Entry> {
        if path.is_root() {
            self.remove_children(path);
            return None;
        }
        self.remove_children(path);
        let old = self.entries.remove(path);
        if let Some(o) = &old
            && matches!(o.kind, Kind::File(_))
        {
            self.rehome_links(BTreeMap::from([(path.clone(), o.clone())]));
        }
        old
    }

    fn remove_children(&mut self, dir: &TreePath) {
        let doomed: Vec<TreePath> = self
            .entries
            .range(dir.clone()..)
            .skip(1)
            .take_while(|(p, _)| p.starts_with(dir))
            .map(|(p, _)| p.clone())
            .collect();
        let mut files = BTreeMap::new();
        for p in doomed {
            if let Some(e) = self.entries.remove(&p)
                && matches!(e.kind, Kind::File(_))
            {
                files.insert(p, e);
            }
        }
        self.rehome_links(files);
    }

    /// Regular files that left the tree (removed or replaced) may have had other names: the first
    /// remaining name in tree order takes over the file, the others point at it. Without this a
    /// hard link would dangle, or silently take the replacement's content.
    fn rehome_links(&mut self, gone: BTreeMap<TreePath, Entry>) {
        if gone.is_empty() {
            return;
        }
        let mut names: BTreeMap<TreePath, Vec<TreePath>> = BTreeMap::new();
        for (p, e) in &self.entries {
            if let Kind::Hardlink(t) = &e.kind
                && gone.contains_key(t)
            {
                names.entry(t.clone()).or_default().push(p.clone());
            }
        }
        for (target, names) in names {
            let (first, rest) = names.split_first().expect("grouped names are not empty");
            self.entries.insert(first.clone(), gone[&target].clone());
            for n in rest {
                if let Some(e) = self.entries.get_mut(n) {
                    e.kind = Kind::Hardlink(first.clone());
                }
            }
        }
    }

    /// All entries, depth-first, siblings in byte order, the root first.
    pub fn iter(&self) -> impl Iterator<Item = (&TreePath, &Entry)> {
        self.entries.iter()
    }

    /// Mutable access to every entry, in [`iter`](Self::iter) order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&TreePath, &mut Entry)> {
        self.entries.iter_mut()
    }

    /// The direct children of a directory, in byte order of their names.
    pub fn children<'a>(
        &'a self,
        dir: &'a TreePath,
    ) -> impl Iterator<Item = (&'a TreePath, &'a Entry)> + 'a {
        self.descendants(dir)
            .filter(move |(p, _)| p.parent().as_ref() == Some(dir))
    }

    /// The subtree below `dir` (excluded), depth-first.
    pub fn descendants<'a>(
        &'a self,
        dir: &'a TreePath,
    ) -> impl Iterator<Item = (&'a TreePath, &'a Entry)> + 'a {
        self.entries
            .range(dir.clone()..)
            .skip(1)
            .take_while(move |(p, _)| p.starts_with(dir))
    }

    /// Clamps every mtime to `epoch` (SOURCE_DATE_EPOCH): later times become `epoch`, earlier
    /// ones are kept, as reproducible-builds.org recommends.
    pub fn clamp_mtimes(&mut self, epoch: i64) {
        for e in self.entries.values_mut() {
            e.mtime = e.mtime.min(epoch);
        }
    }

    /// Checks invariants writers rely on: every hard link points at a regular file.
    pub fn validate(&self) -> Result<(), TreeError> {
        for (path, e) in &self.entries {
            if let Kind::Hardlink(target) = &e.kind
                && !matches!(
                    self.entries.get(target).map(|t| &t.kind),
                    Some(Kind::File(_))
                )
            {
                return Err(TreeError::BadHardlink {
                    path: path.clone(),
                    target: target.clone(),
                });
            }
        }
        Ok(())
    }

    /// Resolves `path` inside the tree component by component, following symlinks in every
    /// component (at most 40, like Linux) and `..` lexically; never touches the host. `None` if a
    /// component is missing or the path does not resolve.
    pub fn resolve(&self, path: &[u8]) -> Option<TreePath> {
        let mut pending: Vec<Vec<u8>> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .rev()
            .collect();
        let mut cur: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            match c.as_slice() {
                b"." => continue,
                b".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            let here = TreePath::new(cur.join(&b'/')).ok()?;
            if let Kind::Symlink(target) = &self.get(&here)?.kind {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                cur.pop();
                if target.starts_with(b"/") {
                    cur.clear();
                }
                pending.extend(
                    target
                        .split(|&b| b == b'/')
                        .filter(|c| !c.is_empty())
                        .map(<[u8]>::to_vec)
                        .rev(),
                );
            }
        }
        TreePath::new(cur.join(&b'/')).ok()
    }

    /// Total bytes of regular-file content (hard links counted once).
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match &e.kind {
                Kind::File(c) => c.len,
                _ => 0,
            })
            .sum()
    }
}

/// A path for tests, which only use valid ones.
#[cfg(test)]
pub(crate) fn test_path(s: &str) -> TreePath {
    TreePath::new(s).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_path as p;

    #[test]
    fn paths_are_bounded_by_path_max_and_errors_stay_short() {
        let deep = "d/".repeat(2047); // 4094 bytes: the longest allowed
        assert!(TreePath::new(&deep).is_ok());
        let err = TreePath::new(format!("{deep}x")).unwrap_err().to_string();
        assert!(err.contains("PATH_MAX"), "{err}");
        assert!(err.len() < 400, "{err}");
        let p = TreePath::new(&deep).unwrap();
        assert!(p.join("x").is_err());
    }

    #[test]
    fn paths_normalise_and_refuse_escapes() {
        assert_eq!(p("/etc//./hostname").as_bytes(), b"etc/hostname");
        assert!(p("/").is_root());
        assert!(TreePath::new("a/../b").is_err());
        assert!(TreePath::new(b"a\0b").is_err());
        assert!(TreePath::new("x".repeat(256)).is_err());
        assert!(TreePath::new("x".repeat(255)).is_ok());
        assert_eq!(p("/a/b").parent(), Some(p("/a")));
        assert_eq!(p("/a").parent(), Some(TreePath::root()));
        assert_eq!(p("/a/b").file_name(), b"b");
        assert!(TreePath::root().join("a/b").is_err());
    }

    #[test]
    fn iteration_is_depth_first_in_byte_order() {
        let mut t = Tree::new();
        for d in ["/a", "/a.b", "/a/z", "/a/b", "/B"] {
            t.insert_with_parents(p(d), Entry::dir(0o755), &Entry::dir(0o755))
                .unwrap();
        }
        let order: Vec<String> = t.iter().map(|(p, _)| p.display()).collect();
        assert_eq!(order, ["/", "/B", "/a", "/a/b", "/a/z", "/a.b"]);
        let kids: Vec<String> = t.children(&p("/a")).map(|(p, _)| p.display()).collect();
        assert_eq!(kids, ["/a/b", "/a/z"]);
    }

    #[test]
    fn insert_requires_a_directory_parent() {
        let mut t = Tree::new();
        let err = t.insert(p("/etc/x"), Entry::dir(0o755)).unwrap_err();
        assert!(matches!(err, TreeError::ParentMissing { .. }));
        t.insert(p("/f"), Entry::file(0o644, Content::bytes("x")))
            .unwrap();
        let err = t.insert(p("/f/x"), Entry::dir(0o755)).unwrap_err();
        assert!(matches!(err, TreeError::ParentNotDir { .. }));
        let err = t
            .insert_with_parents(p("/f/x/y"), Entry::dir(0o755), &Entry::dir(0o755))
            .unwrap_err();
        assert!(matches!(err, TreeError::ParentNotDir { .. }));
    }

    #[test]
    fn replacing_a_directory_with_a_file_drops_its_subtree() {
        let mut t = Tree::new();
        let d = Entry::dir(0o755);
        t.insert_with_parents(p("/a/b/c"), d.clone(), &d).unwrap();
        t.insert(p("/a"), Entry::file(0o644, Content::bytes("x")))
            .unwrap();
        assert_eq!(t.len(), 2);
        t.insert_with_parents(p("/x/y"), d.clone(), &d).unwrap();
        t.insert(p("/x"), Entry::dir(0o700)).unwrap();
        assert!(t.get(&p("/x/y")).is_some(), "dir over dir keeps children");
        t.remove(&p("/x"));
        assert!(t.get(&p("/x/y")).is_none());
    }

    #[test]
    fn content_shorter_than_declared_is_an_error() {
        let c = Content {
            len: 10,
            source: Source::Bytes(Arc::from(&b"abc"[..])),
        };
        let mut buf = Vec::new();
        let err = c.open().unwrap().read_to_end(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let c = Content {
            len: 2,
            source: Source::Bytes(Arc::from(&b"abc"[..])),
        };
        assert_eq!(c.read_all().unwrap(), b"ab");
    }

    #[test]
    fn hardlinks_must_point_at_files() {
        let mut t = Tree::new();
        t.insert(p("/l"), Entry::new(Kind::Hardlink(p("/missing")), 0o644))
            .unwrap();
        assert!(t.validate().is_err());
        t.insert(p("/missing"), Entry::file(0o644, Content::bytes("")))
            .unwrap();
        t.validate().unwrap();
    }

    #[test]
    fn hard_links_survive_removing_or_replacing_their_first_name() {
        let mut t = Tree::new();
        let d = Entry::dir(0o755);
        t.insert_with_parents(p("/a/perl"), Entry::file(0o755, Content::bytes("old")), &d)
            .unwrap();
        t.insert_with_parents(
            p("/b/perl5"),
            Entry::new(Kind::Hardlink(p("/a/perl")), 0),
            &d,
        )
        .unwrap();
        t.insert_with_parents(
            p("/c/perl6"),
            Entry::new(Kind::Hardlink(p("/a/perl")), 0),
            &d,
        )
        .unwrap();
        // Replaced: the other names keep the old content, as after unlink + create.
        t.insert(p("/a/perl"), Entry::file(0o755, Content::bytes("new")))
            .unwrap();
        t.validate().unwrap();
        let Kind::File(c) = &t.get(&p("/b/perl5")).unwrap().kind else {
            panic!("/b/perl5 holds the file now")
        };
        assert_eq!(c.read_all().unwrap(), b"old");
        assert!(
            matches!(&t.get(&p("/c/perl6")).unwrap().kind, Kind::Hardlink(x) if *x == p("/b/perl5"))
        );
        // Removed with its folder: the last name holds the file.
        t.remove(&p("/b"));
        t.validate().unwrap();
        assert!(matches!(t.get(&p("/c/perl6")).unwrap().kind, Kind::File(_)));
    }

    #[test]
    fn resolve_follows_symlinks_in_every_component() {
        let mut t = Tree::new();
        let d = Entry::dir(0o755);
        t.insert_with_parents(p("/usr/lib/x"), d.clone(), &d)
            .unwrap();
        t.insert(p("/lib"), Entry::symlink("usr/lib")).unwrap();
        t.insert(p("/usr/lib/x/up"), Entry::symlink("../../lib/x"))
            .unwrap();
        t.insert(p("/loop"), Entry::symlink("loop")).unwrap();
        assert_eq!(t.resolve(b"/lib/x"), Some(p("/usr/lib/x")));
        assert_eq!(t.resolve(b"/lib/x/up/up/up"), Some(p("/usr/lib/x")));
        assert_eq!(t.resolve(b"/loop"), None);
        assert_eq!(t.resolve(b"/missing/x"), None);
    }

    #[test]
    fn clamp_keeps_older_times() {
        let mut t = Tree::new();
        t.insert(p("/old"), Entry::dir(0o755).at(10)).unwrap();
        t.insert(p("/new"), Entry::dir(0o755).at(5000)).unwrap();
        t.clamp_mtimes(100);
        assert_eq!(t.get(&p("/old")).unwrap().mtime, 10);
        assert_eq!(t.get(&p("/new")).unwrap().mtime, 100);
    }
}
