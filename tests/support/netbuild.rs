//! What the netboot tests share: Debian's `ipxe` package served from loopback as the pinned
//! input's mirror, and `imgbuild netboot build`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::node::Setup;
use super::qemu::LoopbackHttp;
use super::{imgbuild, run};

/// The default iPXE input's URL prefix, rewritten to the loopback mirror.
pub const DEBIAN: &str = "https://deb.debian.org/debian/";

/// The cached `ipxe_*.deb` (`.ci/run` puts it there with `apt-get download ipxe`). `None`
/// (skip) when missing outside CI.
pub fn ipxe_deb() -> Option<PathBuf> {
    let dir = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/imgbuild-test/ipxe");
    let found = fs::read_dir(&dir).ok().and_then(|rd| {
        rd.flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
    });
    if found.is_none() {
        let msg = format!(
            "no ipxe_*.deb in {} (run: cd {0} && apt-get download ipxe)",
            dir.display()
        );
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipping: {msg}");
    }
    found
}

/// A Debian mirror on loopback holding the ipxe package at its pool path and a
/// `Packages.xz` that lists it with its SHA-256.
pub struct IpxeMirror {
    pub http: LoopbackHttp,
    pub deb_sha256: String,
}

impl IpxeMirror {
    pub fn serve(deb: &Path, root: &Path) -> IpxeMirror {
        let name = deb.file_name().unwrap().to_str().unwrap();
        let pool = root.join("pool/main/i/ipxe");
        fs::create_dir_all(&pool).unwrap();
        fs::copy(deb, pool.join(name)).unwrap();
        let bytes = fs::read(deb).unwrap();
        let sha = hex::encode(Sha256::digest(&bytes));
        let index = root.join("dists/bookworm/main/binary-all");
        fs::create_dir_all(&index).unwrap();
        let stanza = format!(
            "Package: ipxe\nArchitecture: all\nFilename: pool/main/i/ipxe/{name}\nSize: {}\nSHA256: {sha}\n\n",
            bytes.len()
        );
        fs::write(index.join("Packages"), stanza).unwrap();
        let (code, _, err) = run(Command::new("xz")
            .args(["-kf", "-T1"])
            .arg(index.join("Packages")));
        assert_eq!(code, 0, "xz: {err}");
        IpxeMirror {
            http: LoopbackHttp::serve(root),
            deb_sha256: sha,
        }
    }

    pub fn mirror_arg(&self) -> String {
        format!("--mirror={DEBIAN}=http://127.0.0.1:{}/", self.http.port)
    }
}

/// `imgbuild netboot build PROFILE --out OUT` in the setup's folder; `env` adds variables
/// (TZ, …) and `umask` runs it under that umask.
/// The `pc-node` workspace on the Debian base, with Debian's iPXE package served from loopback
/// under `work/mirror`.
pub fn pc_node(work: &Path, base: &Path, deb: &Path) -> (Setup, IpxeMirror) {
    let setup = Setup::new(work, &super::node::NodeProfile::pc_node(base), "pc");
    let mirror = IpxeMirror::serve(deb, &work.join("mirror"));
    (setup, mirror)
}

pub fn build(setup: &Setup, mirror: &IpxeMirror, out: &Path, umask: &str, tz: &str) -> String {
    build_with(setup, out, umask, tz, &[mirror.mirror_arg()])
}

/// [`build`] with `extra` arguments instead of the iPXE mirror (an arm64 set has no iPXE).
pub fn build_with(setup: &Setup, out: &Path, umask: &str, tz: &str, extra: &[String]) -> String {
    let bin = imgbuild().get_program().to_owned();
    let mut cmd = Command::new("sh");
    cmd.current_dir(&setup.dir)
        .env_remove("IMGBUILD_PROFILES")
        .env_remove("IMGBUILD_MIRROR")
        .env_remove("IMGBUILD_INVENTORY")
        .env_remove("IMGBUILD_SECRETS")
        .env("NO_COLOR", "1")
        .env("TZ", tz)
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(bin)
        .args(["netboot", "build", &setup.profile, "--out"])
        .arg(out)
        .arg("--cache-dir")
        .arg(setup.dir.join("cache"))
        .args(extra);
    let (code, stdout, err) = run(&mut cmd);
    assert_eq!(code, 0, "imgbuild netboot build: {stdout}{err}");
    stdout
}

/// `netboot.json` of an artifact folder.
pub fn netboot_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join("netboot.json")).unwrap()).unwrap()
}

/// The initrds concatenated into one file, as a boot loader lays several out in memory (QEMU's
/// `-initrd` takes one file for a Linux kernel).
pub fn combined_initrd(dir: &Path, to: &Path) -> PathBuf {
    let json = netboot_json(dir);
    let mut all = Vec::new();
    for name in json["initrds"].as_array().unwrap() {
        all.extend(fs::read(dir.join(name.as_str().unwrap())).unwrap());
        // Boot loaders start each initrd 4-byte aligned (iPXE: 4 KiB); the kernel looks for the
        // next archive only at such an offset, skipping the zeros between.
        all.resize(all.len().next_multiple_of(4), 0);
    }
    fs::write(to, all).unwrap();
    to.to_path_buf()
}
