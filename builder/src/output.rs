//! Writing outputs safely: every file is written under a temporary name in its destination
//! folder and renamed into place only when complete, so an interrupted build never leaves a file
//! that looks finished. A user's file that imgbuild did not create is never overwritten.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The marker imgbuild leaves in output folders it created, so a later build may replace files
/// there without clobbering anything else.
pub const MARKER: &str = ".imgbuild-output";

/// A file being written under a temporary name next to its final path.
#[derive(Debug)]
pub struct PendingFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl PendingFile {
    /// Starts writing `dest`. The temporary file lives in `dest`'s folder (same filesystem, so the
    /// final rename is atomic) and is deleted if this value is dropped without [`commit`](Self::commit).
    pub fn create(dest: impl Into<PathBuf>) -> Result<Self> {
        let dest = dest.into();
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // What a killed run left for this name (it may hold a node's secret) goes first.
        remove_stale_partials(dir, Some(&name))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .rand_bytes(PARTIAL_RAND)
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        Ok(PendingFile { tmp, dest })
    }

    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// The temporary path (for tools that need a path, such as `qemu-img`).
    pub fn tmp_path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flushes to disk and renames into place. With `replace = false` an existing destination is
    /// an error and is left untouched.
    pub fn commit(self, replace: bool) -> Result<PathBuf> {
        // Readers of build outputs expect ordinary permissions, whatever the umask.
        self.commit_with_mode(replace, 0o644)
    }

    /// [`commit`](Self::commit) with the given permissions, set before the file appears under
    /// its final name (files holding credentials are never readable by others, not even briefly).
    pub fn commit_with_mode(self, replace: bool, mode: u32) -> Result<PathBuf> {
        self.tmp
            .as_file()
            .sync_all()
            .with_context(|| format!("flushing {}", self.dest.display()))?;
        set_mode(self.tmp.path(), mode)?;
        let dest = self.dest.clone();
        if replace {
            self.tmp
                .persist(&dest)
                .map_err(|e| e.error)
                .with_context(|| format!("renaming the finished file to {}", dest.display()))?;
        } else {
            self.tmp.persist_noclobber(&dest).map_err(|e| {
                if e.error.kind() == io::ErrorKind::AlreadyExists {
                    anyhow::anyhow!(
                        "{} already exists and was not written by imgbuild; move it away or choose another --out",
                        dest.display()
                    )
                } else {
                    anyhow::Error::new(e.error)
                        .context(format!("renaming the finished file to {}", dest.display()))
                }
            })?;
        }
        Ok(dest)
    }
}

#[cfg(unix)]
/// Sets a file's or folder's permission bits (owner-only folders and files hold credentials).
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions of {}", path.display()))
}

#[cfg(not(unix))]
pub fn set_mode(_: &Path, _: u32) -> Result<()> {
    Ok(())
}

/// Writes `bytes` to `dest` through a [`PendingFile`], replacing what imgbuild wrote before.
pub fn write_file(dest: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let mut f = PendingFile::create(dest)?;
    io::Write::write_all(f.file(), bytes).with_context(|| format!("writing {}", dest.display()))?;
    f.commit(true)
}

/// An output folder imgbuild owns: created if missing and marked; an existing folder is accepted
/// only if it is empty or carries the marker (so we never mix our files into a user's folder).
#[derive(Debug, Clone)]
pub struct OutputDir {
    path: PathBuf,
}

impl OutputDir {
    pub fn prepare(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if path.exists() {
            if !path.is_dir() {
                bail!(
                    "output path {} exists and is not a folder; choose another --out",
                    path.display()
                );
            }
            let marked = path.join(MARKER).exists();
            let empty = fs::read_dir(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .next()
                .is_none();
            if !marked && !empty {
                bail!(
                    "output folder {} is not empty and was not created by imgbuild; \
                     choose an empty or new folder with --out",
                    path.display()
                );
            }
        } else {
            fs::create_dir_all(&path)
                .with_context(|| format!("creating output folder {}", path.display()))?;
        }
        let marker = path.join(MARKER);
        if marker.exists() {
            remove_stale_partials(&path, None)?;
            let nodes = path.join(NODES_DIR);
            if fs::symlink_metadata(&nodes).is_ok_and(|m| m.is_dir()) {
                remove_stale_partials(&nodes, None)?;
            }
        }
        if !marker.exists() {
            fs::write(&marker, "This folder holds imgbuild build outputs.\n")
                .with_context(|| format!("writing {}", marker.display()))?;
        }
        Ok(OutputDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a file in this folder; committing it replaces an earlier imgbuild output.
    pub fn create(&self, name: &str) -> Result<PendingFile> {
        PendingFile::create(self.path.join(name))
    }

    /// The owner-only folder (`nodes/`) for files that hold a node's credentials. An existing
    /// one must be a real folder: a symlink there would send the secrets elsewhere.
    pub fn private_subdir(&self) -> Result<PathBuf> {
        let p = self.path.join(NODES_DIR);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "{} is not a folder (a symlink or a file); it would receive node images, which hold credentials\n  help: remove it, or choose another --out",
                p.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
        set_mode(&p, 0o700)?;
        Ok(p)
    }
}

/// The subfolder of an output folder that holds per-node files.
pub const NODES_DIR: &str = "nodes";

/// Length of the random part of a partial file's name.
const PARTIAL_RAND: usize = 6;

/// Temporary files a killed run left behind (`.<name>.<random>.partial`, only ever created by
/// [`PendingFile`]): all of them in a folder that is ours, or those of one file name elsewhere.
fn remove_stale_partials(dir: &Path, only: Option<&str>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(target) = partial_target(&name) else {
            continue;
        };
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if is_file && only.is_none_or(|o| o == target) {
            fs::remove_file(e.path())
                .with_context(|| format!("removing the stale {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// `x.img` for `.x.img.AbC123.partial`: the file a partial was going to become.
fn partial_target(name: &str) -> Option<&str> {
    let inner = name.strip_prefix('.')?.strip_suffix(".partial")?;
    let (target, rand) = inner.rsplit_once('.')?;
    (rand.len() == PARTIAL_RAND && rand.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(target)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn uncommitted_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.img");
        {
            let mut p = PendingFile::create(&dest).unwrap();
            p.file().write_all(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn noclobber_keeps_the_users_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("precious");
        fs::write(&dest, "mine").unwrap();
        let mut p = PendingFile::create(&dest).unwrap();
        p.file().write_all(b"ours").unwrap();
        let err = p.commit(false).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(fs::read_to_string(&dest).unwrap(), "mine");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn output_dir_refuses_foreign_nonempty_folder() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert!(OutputDir::prepare(dir.path()).is_err());
        let fresh = dir.path().join("new");
        OutputDir::prepare(&fresh).unwrap();
        fs::write(fresh.join("a.img"), "x").unwrap();
        OutputDir::prepare(&fresh).expect("marked folder is ours");
    }

    #[test]
    fn stale_partials_of_a_killed_build_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::prepare(dir.path().join("o")).unwrap();
        let p = out.create("x.img").unwrap();
        let tmp = p.tmp_path().to_path_buf();
        std::mem::forget(p); // as if the process had been killed
        fs::write(out.path().join("keep.partial"), "not ours: no leading dot").unwrap();
        fs::write(out.path().join(".keep.partial"), "not ours: no random part").unwrap();
        assert!(tmp.exists());
        OutputDir::prepare(out.path()).unwrap();
        assert!(!tmp.exists());
        assert!(out.path().join("keep.partial").exists());
        assert!(out.path().join(".keep.partial").exists());
        // The node folder's partials too (they hold a node's secrets).
        let nodes = out.private_subdir().unwrap();
        let p = PendingFile::create(nodes.join("n.img")).unwrap();
        let tmp = p.tmp_path().to_path_buf();
        std::mem::forget(p);
        OutputDir::prepare(out.path()).unwrap();
        assert!(!tmp.exists());
    }

    #[test]
    fn a_partial_outside_our_folders_is_swept_by_the_next_write_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root.ext4");
        let p = PendingFile::create(&dest).unwrap();
        let stale = p.tmp_path().to_path_buf();
        std::mem::forget(p);
        let other = PendingFile::create(dir.path().join("other.ext4")).unwrap();
        let other_tmp = other.tmp_path().to_path_buf();
        std::mem::forget(other);
        let mut again = PendingFile::create(&dest).unwrap();
        again.file().write_all(b"x").unwrap();
        again.commit(false).unwrap();
        assert!(!stale.exists());
        assert!(
            other_tmp.exists(),
            "another file's partial is not ours to judge"
        );
    }

    #[test]
    fn node_folder_must_not_be_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::prepare(dir.path().join("o")).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.path().join(NODES_DIR)).unwrap();
        let err = out.private_subdir().unwrap_err().to_string();
        assert!(err.contains("not a folder"), "{err}");
        let mode = fs::metadata(&elsewhere).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "the symlink's target was not touched");
        fs::remove_file(out.path().join(NODES_DIR)).unwrap();
        let nodes = out.private_subdir().unwrap();
        assert_eq!(
            fs::metadata(&nodes).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
