//! The netboot server's state folder (`--state-dir`): which `netboot = "once"` nodes have
//! fetched their seed. One file per spent node, `spent/<node>`, written atomically (temporary
//! name, then rename) and holding only the node's name and the address it booted from, never a
//! secret. `imgbuild netboot arm NODE` deletes the file; the server looks for it on every
//! request, so re-arming works while it runs and a restart keeps what was spent.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The state folder.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }

    /// Node names are DNS labels (checked by the inventory), so they are plain file names.
    fn spent_file(&self, node: &str) -> PathBuf {
        self.dir.join("spent").join(node)
    }

    /// Whether `node` fetched its seed since it was last armed.
    pub fn is_spent(&self, node: &str) -> std::io::Result<bool> {
        self.spent_file(node).try_exists()
    }

    /// Records that `node`'s seed went to `client`.
    pub fn mark_spent(&self, node: &str, client: IpAddr) -> Result<()> {
        let path = self.spent_file(node);
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the state folder {}", parent.display()))?;
        let text = format!(
            "# imgbuild netboot: node {node} fetched its seed (netboot = \"once\").\n# `imgbuild netboot arm {node}` deletes this file and lets it boot again.\nnode = \"{node}\"\nclient = \"{client}\"\n"
        );
        crate::output::write_file(&path, text.as_bytes())?;
        Ok(())
    }

    /// Checks at start that spent nodes can be recorded: a `once` node whose seed went out
    /// unrecorded would boot again.
    pub fn check_writable(&self) -> Result<()> {
        let spent = self.dir.join("spent");
        std::fs::create_dir_all(&spent)
            .and_then(|()| tempfile::tempfile_in(&spent).map(drop))
            .with_context(|| {
                format!(
                    "the state folder {} is not writable, and the inventory has netboot = \"once\" nodes\n  help: run as the systemd unit does (its StateDirectory), or pass --state-dir DIR",
                    self.dir.display()
                )
            })
    }

    /// Lets `node` netboot again; false when it was armed already.
    pub fn arm(&self, node: &str) -> Result<bool> {
        let path = self.spent_file(node);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spent_until_armed_and_kept_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let s = StateDir::new(&dir);
        assert!(!s.is_spent("pc-1").unwrap());
        s.check_writable().unwrap();
        let file = tmp.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let err = StateDir::new(&file).check_writable().unwrap_err();
        assert!(format!("{err:#}").contains("is not writable"), "{err:#}");
        s.mark_spent("pc-1", "10.0.0.5".parse().unwrap()).unwrap();
        // Another handle on the folder (a restarted server, `netboot arm`) sees it.
        let again = StateDir::new(&dir);
        assert!(again.is_spent("pc-1").unwrap());
        assert!(!again.is_spent("pc-2").unwrap());
        let text = std::fs::read_to_string(dir.join("spent/pc-1")).unwrap();
        assert!(text.contains("client = \"10.0.0.5\""), "{text}");
        assert!(again.arm("pc-1").unwrap());
        assert!(!s.is_spent("pc-1").unwrap());
        assert!(!again.arm("pc-1").unwrap());
        // Nothing but the (removed) file was left behind: no temporary names.
        assert_eq!(std::fs::read_dir(dir.join("spent")).unwrap().count(), 0);
    }
}
