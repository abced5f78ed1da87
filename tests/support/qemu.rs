//! Booting images under QEMU for the integration tests.
//!
//! Always software emulation (`-accel tcg`): KVM is not assumed. The guest's serial console goes
//! to a log file; tests wait for marker lines on it, and every failure prints the log's tail.
//! Networking is off unless asked for, and then it is QEMU user networking with `restrict=on`
//! (the guest reaches nothing but explicit `guestfwd` targets, which the harness points at
//! 127.0.0.1 on the host). QEMU is killed when the [`Vm`] is dropped.
//!
//! Also here: the cached Debian base (`scripts/make-test-base`), extracting boot files from it,
//! a FAT "results disk" the guest writes to and the host reads with mtools, and a tiny HTTP file
//! server on 127.0.0.1.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{find_tool, repo_root, require_tool, run};

/// A generous bound for one TCG boot of a Debian system to a marker (typically one to two
/// minutes on 2 cores; several times that when the machine is busy).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// UEFI firmware code and the template of its variable store, from Debian's `ovmf` and
    /// `qemu-efi-aarch64` packages (no Secure Boot: the test images are not signed).
    fn firmware(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => (
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
            ),
            Arch::Aarch64 => (
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
            ),
        }
    }

    /// Serial console device name for the kernel command line.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }
}

/// Checks that QEMU for `arch` (and, with `uefi`, its firmware) is installed: fails under CI,
/// skips elsewhere (see [`require_tool`]).
pub fn require_qemu(arch: Arch, uefi: bool) -> bool {
    if !require_tool(arch.qemu()) {
        return false;
    }
    if uefi {
        let (code, vars) = arch.firmware();
        for f in [code, vars] {
            if !Path::new(f).is_file() {
                if std::env::var_os("CI").is_some() {
                    panic!("{f} is required under CI; .ci/install-qemu.sh installs it");
                }
                eprintln!("skipping: {f} is not installed (.ci/install-qemu.sh installs it)");
                return false;
            }
        }
    }
    true
}

/// How the guest starts.
#[derive(Debug, Clone)]
enum Boot {
    /// UEFI firmware boots from the disks (OVMF / AAVMF).
    Uefi,
    /// The firmware boots from the network (the NIC first in the boot order, disks after).
    Pxe(Firmware),
    /// QEMU loads a kernel and initrd directly (no firmware, no boot loader).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
}

/// The firmware of a machine that boots from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with QEMU's iPXE option ROM on the NIC: DHCP, then iPXE at once.
    Bios,
    /// OVMF with the NIC's option ROM off (`romfile=`): EDK2's own PXE fetches an NBP over TFTP.
    Uefi,
}

/// The guest's network.
#[derive(Debug, Clone)]
enum Net {
    None,
    /// QEMU user networking with `restrict=on` and these forwards.
    User(Vec<GuestFwd>),
    /// A tap device (made by the test, usually inside a [`super::netns::NetNs`]) with this MAC.
    Tap {
        ifname: String,
        mac: String,
    },
}

/// Held while a VM runs (`flock`), so one VM runs on the machine at a time, across test runs.
pub const HOST_LOCK: &str = "/tmp/imgbuild-qemu.lock";

/// A forward from an address inside the guest's user network to a TCP port on the host's
/// loopback: the guest connects to `guest_addr:guest_port`, QEMU relays it to
/// `127.0.0.1:host_port` (one `socat` per connection).
#[derive(Debug, Clone)]
pub struct GuestFwd {
    pub guest_addr: String,
    pub guest_port: u16,
    pub host_port: u16,
}

/// A virtual machine to start: see [`VmBuilder::start`].
#[derive(Debug)]
pub struct VmBuilder {
    arch: Arch,
    boot: Boot,
    /// Image, serial, QEMU image format.
    disks: Vec<(PathBuf, String, &'static str)>,
    memory_mib: u32,
    cpus: u32,
    net: Net,
    mac: Option<String>,
    extra: Vec<String>,
    virtio_console: bool,
    netns: Option<String>,
    host_lock: bool,
}

impl VmBuilder {
    /// A UEFI machine (q35 + OVMF, or `virt` + AAVMF) booting from its disks.
    pub fn uefi(arch: Arch) -> Self {
        Self::new(arch, Boot::Uefi)
    }

    /// A machine (q35) whose firmware boots from its NIC: give it one with [`VmBuilder::tap`].
    pub fn pxe(arch: Arch, firmware: Firmware) -> Self {
        Self::new(arch, Boot::Pxe(firmware))
    }

    /// A machine that boots `kernel` (+ `initrd`) directly with `cmdline`.
    pub fn kernel(arch: Arch, kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> Self {
        Self::new(
            arch,
            Boot::Kernel {
                kernel: kernel.to_path_buf(),
                initrd: initrd.map(Path::to_path_buf),
                cmdline: cmdline.to_string(),
            },
        )
    }

    fn new(arch: Arch, boot: Boot) -> Self {
        Self {
            arch,
            boot,
            disks: Vec::new(),
            memory_mib: 2048,
            cpus: 2,
            net: Net::None,
            mac: None,
            extra: Vec::new(),
            virtio_console: false,
            netns: None,
            host_lock: false,
        }
    }

    /// Adds a raw virtio disk. `serial` names it inside the guest
    /// (`/dev/disk/by-id/virtio-<serial>`); disks appear as vda, vdb, … in the order added.
    pub fn disk(mut self, image: &Path, serial: &str) -> Self {
        self.disks
            .push((image.to_path_buf(), serial.to_string(), "raw"));
        self
    }

    /// [`VmBuilder::disk`] of a qcow2 image (a cloud image as a provider boots it).
    pub fn qcow2_disk(mut self, image: &Path, serial: &str) -> Self {
        self.disks
            .push((image.to_path_buf(), serial.to_string(), "qcow2"));
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Gives the guest one virtio NIC on QEMU's user network with `restrict=on`: DHCP works,
    /// nothing outside the VM is reachable except the given forwards to host loopback ports.
    pub fn restricted_net(mut self, forwards: Vec<GuestFwd>) -> Self {
        self.net = Net::User(forwards);
        self
    }

    /// Gives the guest one virtio NIC on the tap device `ifname` with `mac`; with
    /// [`VmBuilder::pxe`] it is the first boot device.
    pub fn tap(mut self, ifname: &str, mac: &str) -> Self {
        self.net = Net::Tap {
            ifname: ifname.to_string(),
            mac: mac.to_string(),
        };
        self
    }

    /// Runs QEMU inside the network namespace `name` (where its tap device is).
    pub fn in_netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    /// Runs QEMU under `flock` [`HOST_LOCK`]; [`VmBuilder::start`] then returns once QEMU has
    /// started, and the VM's clock starts there, not while it waited for another test's VM.
    pub fn host_lock(mut self) -> Self {
        self.host_lock = true;
        self
    }

    /// The MAC address of the NIC [`Self::restricted_net`] adds.
    pub fn mac(mut self, mac: &str) -> Self {
        self.mac = Some(mac.to_string());
        self
    }

    /// Logs a virtio console (`hvc0` in the guest) instead of the board's UART. QEMU's PL011
    /// under multi-threaded TCG sometimes stops taking the guest's output for good (the guest
    /// then spins in the console driver), so arm64 guests that print a lot use `console=hvc0`.
    pub fn virtio_console(mut self) -> Self {
        self.virtio_console = true;
        self
    }

    /// Extra raw QEMU arguments.
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_string());
        self
    }

    /// The QEMU command line (without the program), with the serial console going to `serial_log`
    /// and the firmware variable store copied into `work`.
    fn args(&self, work: &Path, serial_log: &Path) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&["-accel", "tcg,thread=multi"]);
        match self.arch {
            Arch::X86_64 => push(&["-machine", "q35", "-cpu", "max"]),
            // The Raspberry Pi 4's core; `max` would add pointer authentication, which TCG
            // emulates slowly.
            Arch::Aarch64 => push(&["-machine", "virt", "-cpu", "cortex-a72"]),
        }
        let (mem, cpus) = (self.memory_mib.to_string(), self.cpus.to_string());
        push(&["-m", &mem, "-smp", &cpus]);
        // No display, no monitor, no default devices (no stray NIC): only what is listed here.
        push(&["-nodefaults", "-display", "none", "-monitor", "none"]);
        if self.virtio_console {
            push(&[
                "-chardev",
                &format!(
                    "file,id=console,path={}",
                    qemu_escape(&serial_log.display().to_string())
                ),
                "-device",
                "virtio-serial-pci",
                "-device",
                "virtconsole,chardev=console",
            ]);
        } else {
            push(&["-serial", &format!("file:{}", serial_log.display())]);
        }
        // A guest reboot (or a kernel panic with panic=N) ends QEMU instead of looping.
        push(&["-no-reboot"]);
        match &self.boot {
            Boot::Uefi | Boot::Pxe(Firmware::Uefi) => {
                let (code, vars) = self.arch.firmware();
                let vars_copy = work.join("efivars.fd");
                fs::copy(vars, &vars_copy)
                    .unwrap_or_else(|e| panic!("copying {vars} to {}: {e}", vars_copy.display()));
                push(&[
                    "-drive",
                    &format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", vars_copy.display()),
                ]);
            }
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                push(&["-kernel", &kernel.display().to_string()]);
                if let Some(initrd) = initrd {
                    push(&["-initrd", &initrd.display().to_string()]);
                }
                push(&["-append", cmdline]);
            }
            // SeaBIOS is QEMU's default firmware.
            Boot::Pxe(Firmware::Bios) => {}
        }
        let uefi = matches!(self.boot, Boot::Uefi);
        for (i, (image, serial, format)) in self.disks.iter().enumerate() {
            // With -kernel, QEMU's loader option ROM holds boot index 0; the firmware boot order
            // matters only for UEFI.
            let bootindex = if uefi {
                format!(",bootindex={i}")
            } else {
                String::new()
            };
            push(&[
                "-drive",
                &format!(
                    "if=none,id=disk{i},format={format},cache=unsafe,file={}",
                    qemu_escape(&image.display().to_string())
                ),
                "-device",
                &format!("virtio-blk-pci,drive=disk{i},serial={serial}{bootindex}"),
            ]);
        }
        match &self.net {
            Net::None => push(&["-nic", "none"]),
            Net::Tap { ifname, mac } => {
                // EDK2's own PXE (no option ROM) is what fetches an NBP over TFTP under UEFI.
                let rom = match self.boot {
                    Boot::Pxe(Firmware::Uefi) => ",romfile=",
                    _ => "",
                };
                let boot = if matches!(self.boot, Boot::Pxe(_)) {
                    ",bootindex=0"
                } else {
                    ""
                };
                push(&[
                    "-netdev",
                    &format!("tap,id=n0,ifname={ifname},script=no,downscript=no"),
                    "-device",
                    &format!("virtio-net-pci,netdev=n0,mac={mac}{boot}{rom}"),
                ]);
            }
            Net::User(forwards) => {
                let mut nic = String::from("user,model=virtio-net-pci,restrict=on");
                if let Some(mac) = &self.mac {
                    nic.push_str(&format!(",mac={mac}"));
                }
                for f in forwards {
                    let socat = find_tool("socat").expect(
                        "socat is needed for guest forwards (call require_tool(\"socat\"))",
                    );
                    nic.push_str(&format!(
                        ",guestfwd=tcp:{}:{}-cmd:{} STDIO TCP:127.0.0.1:{}",
                        f.guest_addr,
                        f.guest_port,
                        socat.display(),
                        f.host_port
                    ));
                }
                push(&["-nic", &nic]);
            }
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts QEMU. Its serial console is logged to `<work>/serial.log`, its own messages to
    /// `<work>/qemu.log`.
    pub fn start(self, work: &Path) -> Vm {
        fs::create_dir_all(work).expect("creating the VM work folder");
        let serial_log = work.join("serial.log");
        let qemu_log = work.join("qemu.log");
        // QEMU creates it when it starts: the sign that the host lock was taken.
        let _ = fs::remove_file(&serial_log);
        let args = self.args(work, &serial_log);
        let qemu = find_tool(self.arch.qemu())
            .unwrap_or_else(|| panic!("{} is not installed", self.arch.qemu()));
        let log = fs::File::create(&qemu_log).expect("creating qemu.log");
        let mut wrap: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            wrap.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if self.host_lock {
            wrap.extend(["flock".to_string(), HOST_LOCK.to_string()]);
        }
        wrap.push("sh".into());
        // QEMU runs under a small shell that kills it when our end of its stdin pipe closes:
        // on drop, and also when the test process itself is killed (a harness timeout), so no
        // emulator is left running (`ip netns exec` and `flock` pass stdin on).
        let child = Command::new(&wrap[0])
            .args(&wrap[1..])
            .arg("-c")
            .arg(GUARD)
            .arg("qemu-guard")
            .arg(&qemu)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("dup qemu.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", qemu.display()));
        eprintln!(
            "qemu: {} {} {}",
            wrap.join(" "),
            qemu.display(),
            args.join(" ")
        );
        let mut vm = Vm {
            child,
            serial_log,
            qemu_log,
            started: Instant::now(),
        };
        if self.host_lock {
            vm.wait_started(Duration::from_secs(3600));
        }
        vm
    }
}

/// Runs `"$@"` (QEMU) and kills it once stdin reaches EOF; exits with QEMU's status.
/// (Background jobs of a non-interactive shell read /dev/null unless redirected: hence fd 3.)
const GUARD: &str = r#"exec 3<&0
"$@" </dev/null &
q=$!
{ read -r _ <&3; kill "$q" 2>/dev/null; } &
w=$!
wait "$q"
s=$?
kill "$w" 2>/dev/null
exit "$s""#;

/// QEMU's option parser treats `,` as a separator; a literal comma is written `,,`.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// A running QEMU; killed on drop.
pub struct Vm {
    child: Child,
    serial_log: PathBuf,
    qemu_log: PathBuf,
    started: Instant,
}

impl Vm {
    /// Everything the guest wrote to its serial console so far.
    pub fn serial(&self) -> String {
        fs::read(&self.serial_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until QEMU has created its serial log (it waited for [`HOST_LOCK`] until then) and
    /// restarts the VM's clock.
    fn wait_started(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.serial_log.exists() {
            if let Some(status) = self.child.try_wait().expect("polling qemu") {
                self.fail(&format!("QEMU exited ({status}) at start"));
            }
            if Instant::now() > deadline {
                self.fail(&format!("waited {timeout:?} for {HOST_LOCK}"));
            }
            thread::sleep(Duration::from_millis(250));
        }
        self.started = Instant::now();
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Panics with `msg`, the last lines of the serial console and QEMU's own messages.
    pub fn fail(&self, msg: &str) -> ! {
        let serial = self.serial();
        let lines: Vec<&str> = serial.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let qemu = fs::read_to_string(&self.qemu_log).unwrap_or_default();
        panic!(
            "{msg} (after {:.0?})\n--- serial console, last 80 lines ({}) ---\n{tail}\n--- qemu ---\n{qemu}",
            self.started.elapsed(),
            self.serial_log.display()
        );
    }

    /// Waits until a serial console line contains `marker` and returns that line. Fails (with the
    /// log tail) if a line contains one of `failures` first, if QEMU exits, or after `timeout`.
    ///
    /// The kernel echoes its command line on the console: a marker must not appear literally in
    /// the command line, or it matches at once.
    pub fn wait_for(&mut self, marker: &str, failures: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let serial = self.serial();
            for line in serial.lines() {
                if let Some(f) = failures.iter().find(|f| line.contains(*f)) {
                    self.fail(&format!("the guest printed {f:?}: {line}"));
                }
                if line.contains(marker) {
                    return line.to_string();
                }
            }
            if let Some(status) = self.child.try_wait().expect("polling qemu") {
                // The file may have grown between the read above and the exit.
                if let Some(line) = self.serial().lines().find(|l| l.contains(marker)) {
                    return line.to_string();
                }
                self.fail(&format!(
                    "QEMU exited ({status}) before {marker:?} appeared"
                ));
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "no {marker:?} on the serial console within {timeout:?}"
                ));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits for QEMU to exit by itself (the guest powered off), at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling qemu") {
                return status;
            }
            if Instant::now() > deadline {
                self.fail(&format!("the guest did not power off within {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits (at most `timeout`) for `marker`, then for the guest to power off cleanly; returns
    /// the marker line.
    pub fn wait_for_poweroff(
        &mut self,
        marker: &str,
        failures: &[&str],
        timeout: Duration,
    ) -> String {
        let line = self.wait_for(marker, failures, timeout);
        let status = self.wait_exit(Duration::from_secs(120));
        if !status.success() {
            self.fail(&format!("QEMU exited with {status} after {marker:?}"));
        }
        eprintln!("guest powered off after {:.1?}", self.elapsed());
        line
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Closing the guard's stdin makes it kill QEMU and exit with QEMU's status.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The cached Debian base tarball (`scripts/make-test-base`: built once with mmdebstrap from
/// Debian's packages, then reused from `~/.cache/imgbuild-test/`). `None` (skip) when it is not
/// cached and mmdebstrap is missing outside CI.
pub fn debian_base() -> Option<PathBuf> {
    let script = repo_root().join("scripts/make-test-base");
    let key = run(Command::new(&script).arg("--print-key"));
    assert_eq!(key.0, 0, "make-test-base --print-key failed: {}", key.2);
    if !require_tool("mmdebstrap") {
        return None;
    }
    let started = Instant::now();
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/make-test-base");
    assert!(
        out.status.success(),
        "scripts/make-test-base failed (see above)"
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim());
    assert!(
        path.is_file(),
        "make-test-base printed {path:?}, not a file"
    );
    eprintln!(
        "debian base: {} ({:.1?})",
        path.display(),
        started.elapsed()
    );
    Some(path)
}

/// Kernel and initrd found under `boot/` of a base tarball, extracted into `dest`.
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel release, e.g. `6.1.0-28-amd64`.
    pub release: String,
}

/// Extracts `/boot/vmlinuz-*` and `/boot/initrd.img-*` from a rootfs tarball with `tar`.
pub fn extract_boot_files(base: &Path, dest: &Path) -> BootFiles {
    fs::create_dir_all(dest).expect("creating the boot files folder");
    let (code, _, err) = run(Command::new("tar")
        .arg("-xf")
        .arg(base)
        .arg("-C")
        .arg(dest)
        .args(["--wildcards", "./boot/vmlinuz-*", "./boot/initrd.img-*"]));
    assert_eq!(
        code,
        0,
        "extracting the kernel from {}: {err}",
        base.display()
    );
    let boot = dest.join("boot");
    let mut release = None;
    for entry in fs::read_dir(&boot).expect("reading boot/") {
        let name = entry.expect("boot/ entry").file_name();
        if let Some(r) = name.to_str().and_then(|n| n.strip_prefix("vmlinuz-")) {
            assert!(
                release.is_none(),
                "more than one kernel in {}",
                base.display()
            );
            release = Some(r.to_string());
        }
    }
    let release = release.unwrap_or_else(|| panic!("no /boot/vmlinuz-* in {}", base.display()));
    let files = BootFiles {
        kernel: boot.join(format!("vmlinuz-{release}")),
        initrd: boot.join(format!("initrd.img-{release}")),
        release,
    };
    assert!(files.initrd.is_file(), "no initrd for {}", files.release);
    files
}

/// Extracts single files from a rootfs tarball (paths as in the tarball, `./usr/...`) into `dest`.
pub fn extract_from_tar(base: &Path, dest: &Path, members: &[&str]) {
    fs::create_dir_all(dest).expect("creating the extraction folder");
    let (code, _, err) = run(Command::new("tar")
        .arg("-xf")
        .arg(base)
        .arg("-C")
        .arg(dest)
        .args(members));
    assert_eq!(
        code,
        0,
        "extracting {members:?} from {}: {err}",
        base.display()
    );
}

/// Copies `base` to `out` and appends the files under `extra` (paths relative to it, owned by
/// root, with their `security.capability`), so a test can add a script or unit to a root filesystem without changing the cached
/// base. Only files and symlinks are appended: their parent folders must exist in the base.
pub fn tar_with_extra_files(base: &Path, extra: &Path, out: &Path) {
    fs::copy(base, out).unwrap_or_else(|e| panic!("copying {}: {e}", base.display()));
    let mut members = Vec::new();
    collect_files(extra, extra, &mut members);
    members.sort();
    // The extras go into a POSIX tar of their own, concatenated (`-A`) onto the copy: `tar -r`
    // keeps the base's header format, which drops xattrs, while a file capability set on an
    // extra file must travel as a PAX SCHILY.xattr record, as in a real base's tarball.
    let extras = out.with_extension("extras.tar");
    let (code, _, err) = run(Command::new("tar")
        .args([
            "--format=posix",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--no-recursion",
            "--xattrs",
            "--xattrs-include=security.capability",
        ])
        .arg("-cf")
        .arg(&extras)
        .arg("-C")
        .arg(extra)
        .args(&members));
    assert_eq!(code, 0, "archiving {members:?}: {err}");
    let (code, _, err) = run(Command::new("tar").arg("-Af").arg(out).arg(&extras));
    assert_eq!(code, 0, "appending {members:?} to {}: {err}", out.display());
    fs::remove_file(&extras).unwrap();
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).expect("reading extra files") {
        let entry = entry.expect("extra file entry");
        let path = entry.path();
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            collect_files(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("under root");
            out.push(format!("./{}", rel.display()));
        }
    }
}

/// Writes `content` to `root/rel` with `mode`, creating parent folders.
pub fn write_file(root: &Path, rel: &str, content: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("has a parent")).expect("creating parents");
    fs::write(&path, content).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A small FAT disk the guest mounts (label `RESULTS`, at `/run/results`) and writes files to; the host reads them
/// back with mtools after the guest powered off.
pub struct ResultsDisk {
    pub image: PathBuf,
}

impl ResultsDisk {
    /// Creates a 32 MiB FAT image at `image` (needs `mkfs.vfat`, `mtype`: check with
    /// `require_tool`).
    pub fn create(image: &Path) -> Self {
        let f = fs::File::create(image).expect("creating the results disk");
        f.set_len(32 << 20).expect("sizing the results disk");
        let (code, _, err) = run(Command::new(find_tool("mkfs.vfat").expect("mkfs.vfat"))
            .args(["-n", "RESULTS"])
            .arg(image));
        assert_eq!(code, 0, "mkfs.vfat: {err}");
        Self {
            image: image.to_path_buf(),
        }
    }

    /// The shell command (for the guest) that mounts this disk at `/run/results` (under /run so
    /// it works with a read-only root).
    pub const GUEST_MOUNT: &'static str =
        "mkdir -p /run/results && mount -t vfat /dev/disk/by-label/RESULTS /run/results";

    /// Reads a file the guest wrote at `/run/results/<name>`, or `None` if it is not there.
    pub fn read(&self, name: &str) -> Option<String> {
        let out = Command::new("mtype")
            .arg("-i")
            .arg(&self.image)
            .arg(format!("::/{name}"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .expect("running mtype");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every `key=value` line of `/run/results/<name>`.
    pub fn read_kv(&self, name: &str) -> BTreeMap<String, String> {
        self.read(name)
            .unwrap_or_else(|| panic!("the guest did not write /run/results/{name}"))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }
}

/// A minimal HTTP/1.0 file server on 127.0.0.1 (never any other address) serving `root`, for
/// guests that fetch artifacts through a [`GuestFwd`]. Records every request line.
pub struct LoopbackHttp {
    pub port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl LoopbackHttp {
    pub fn serve(root: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (root, log) = (root.to_path_buf(), Arc::clone(&requests));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, log) = (root.clone(), Arc::clone(&log));
                thread::spawn(move || serve_one(stream, &root, &log));
            }
        });
        Self { port, requests }
    }

    /// Request lines received so far (`GET /path HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("request log").clone()
    }
}

fn serve_one(stream: TcpStream, root: &Path, log: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let request = request.trim().to_string();
    log.lock().expect("request log").push(request.clone());
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let rel = target
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches('/');
    let path = root.join(rel);
    let safe = !rel.split('/').any(|c| c == ".." || c.is_empty());
    let mut stream = stream;
    match (method, safe, fs::File::open(&path)) {
        ("GET" | "HEAD", true, Ok(mut f)) if path.is_file() => {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            );
            if method == "GET" {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        _ => {
            let body = format!("not found: {target}\n");
            let _ = write!(
                stream,
                "HTTP/1.0 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    }
    let _ = stream.flush();
}
