//! The Raspberry Pi OS Lite-like base the Pi tests build from (`tests/fixtures/pi/make-pi-base`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{require_tool, tests_dir};

/// Runs the fixture script and returns the base image it built (cached across runs). `variant`
/// is one of its flags (`--no-firmware`, `--no-pi5-kernel`). `None` (a skip) when the tools are
/// missing; under CI a failure is fatal.
pub fn pi_base(variant: Option<&str>) -> Option<PathBuf> {
    for t in [
        "apt-get",
        "dpkg-deb",
        "mmdebstrap",
        "sfdisk",
        "mkfs.vfat",
        "mcopy",
        "mkfs.ext4",
    ] {
        if !require_tool(t) {
            return None;
        }
    }
    // Its progress (a first run builds an arm64 root under emulation) goes to the test's output.
    let out = Command::new(tests_dir().join("fixtures/pi/make-pi-base"))
        .args(variant)
        .stderr(Stdio::inherit())
        .output()
        .expect("running make-pi-base");
    if !out.status.success() {
        let msg = format!(
            "make-pi-base {variant:?} failed ({}), see above",
            out.status
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("skipping: {msg}");
        return None;
    }
    Some(PathBuf::from(
        String::from_utf8(out.stdout).expect("utf-8 path").trim(),
    ))
}

/// The command line as the firmware hands it on: it replaces `console=serial0` with the board's
/// serial console. Here that is the virtio console QEMU logs (`hvc0`; see
/// [`VmBuilder::virtio_console`]), moved last so that it is `/dev/console`, where the observer
/// reports (a Pi's `console=tty1` is the HDMI screen, which this machine does not have).
pub fn firmware_cmdline(cmdline: &str) -> String {
    let mut serial = false;
    let mut args: Vec<&str> = Vec::new();
    for a in cmdline.split_whitespace() {
        if a.starts_with("console=serial0") {
            serial = true;
        } else {
            args.push(a);
        }
    }
    assert!(serial, "no console=serial0 in cmdline.txt: {cmdline:?}");
    format!("{} console=hvc0", args.join(" "))
}
