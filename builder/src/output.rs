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
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
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
            remove_stale_partials(&path)?;
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
}

/// Temporary files a killed build left behind (`.<name>.<random>.partial`, only ever created by
/// [`PendingFile`]) in a folder that is ours.
fn remove_stale_partials(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".partial") && e.path().is_file() {
            fs::remove_file(e.path())
                .with_context(|| format!("removing the stale {}", e.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        assert!(tmp.exists());
        OutputDir::prepare(out.path()).unwrap();
        assert!(!tmp.exists());
        assert!(out.path().join("keep.partial").exists());
    }
}
