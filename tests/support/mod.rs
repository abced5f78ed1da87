//! Shared helpers for the integration tests in this folder.
#![allow(dead_code)] // each test binary uses a different subset

pub mod flash;
pub mod http;
pub mod netboot;
pub mod netbuild;
pub mod netns;
pub mod node;
pub mod pi;
pub mod pi_client;
pub mod proxy;
pub mod qemu;
pub mod tftp;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `imgbuild` binary built for this test run.
pub fn imgbuild() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.env_remove("IMGBUILD_PROFILES")
        .env_remove("IMGBUILD_MIRROR")
        .env("NO_COLOR", "1");
    c
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("builder/ has a parent")
        .to_path_buf()
}

/// This folder (`tests/`).
pub fn tests_dir() -> PathBuf {
    repo_root().join("tests")
}

/// Is an external tool on PATH (or in /sbin, /usr/sbin)? Missing tools fail the test under CI
/// (where `.ci/run` installs them) and skip it elsewhere with a note.
pub fn require_tool(name: &str) -> bool {
    if find_tool(name).is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} is required under CI but is not installed; add its package to .ci/run");
    }
    eprintln!("skipping: {name} is not installed (CI installs it)");
    false
}

/// Full path of a tool, looking in PATH and the sbin folders a non-root PATH may miss.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs a command, returning (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch folder for a test, removed when dropped — unless `IMGBUILD_TEST_KEEP` is set, so a
/// failed boot test leaves its disks, serial logs and results for a look.
pub fn scratch() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().expect("creating a scratch folder");
    if std::env::var_os("IMGBUILD_TEST_KEEP").is_some() {
        eprintln!("keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}

/// An x86-64 root partition: ext4 of `tree`, as small as it fits.
pub fn ext4_root(tree: std::sync::Arc<imgbuild::tree::Tree>) -> imgbuild::disk::layout::Partition {
    use imgbuild::disk::layout::{PartType, Partition, Size};
    Partition {
        label: "root".into(),
        ptype: PartType::RootX86_64,
        size: Size::Auto,
        offset: None,
        content: Box::new(imgbuild::disk::contents::Ext4Content {
            tree,
            label: Some("root".into()),
        }),
    }
}
