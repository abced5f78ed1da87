//! Private networks for tests: a network namespace with its own loopback, bridges, veth pairs and
//! tap devices (for QEMU). Everything lives inside the namespace, so nothing reaches the host's
//! interfaces; dropping the [`NetNs`] kills what still runs in it and deletes it, which removes
//! its devices too, even when the test failed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace owned by a test.
pub struct NetNs {
    pub name: String,
}

/// Are we allowed to make namespaces (root and `ip`)? Under CI a missing capability fails.
pub fn available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        if std::env::var_os("CI").is_some() {
            panic!("network namespace tests need root under CI");
        }
        eprintln!("skipping: network namespaces need root");
        return false;
    }
    super::require_tool("ip")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A new namespace with its loopback up. `tag` shows in its name (`imgb-TAG-PID-N`).
    pub fn new(tag: &str) -> NetNs {
        remove_orphans();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("imgb-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS…`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A bridge with `cidr` (e.g. `10.33.0.1/24`) as its address, up.
    pub fn bridge(&self, name: &str, cidr: &str) {
        self.ip(&["link", "add", name, "type", "bridge"]);
        // No STP delay: a port forwards at once (PXE firmware gives up quickly).
        self.ip(&[
            "link",
            "set",
            name,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ]);
        self.ip(&["addr", "add", cidr, "dev", name]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// A tap device on `bridge`, for `-netdev tap,ifname=NAME,script=no,downscript=no`.
    pub fn tap(&self, name: &str, bridge: &str) {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        self.ip(&["link", "set", name, "master", bridge]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// A veth pair `a`–`b`, `a` on `bridge`, `b` with `cidr`: a second host on the bridge.
    pub fn veth(&self, a: &str, b: &str, bridge: &str, cidr: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["link", "set", a, "master", bridge]);
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["addr", "add", cidr, "dev", b]);
        self.ip(&["link", "set", b, "up"]);
    }

    /// A veth pair `a`–`b`, `a` on this namespace's `bridge`, `b` in `other` with `cidr` and a
    /// default route: another host on the same LAN.
    pub fn veth_to(&self, other: &NetNs, a: &str, b: &str, bridge: &str, cidr: &str) {
        self.ip(&[
            "link",
            "add",
            a,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            &other.name,
        ]);
        self.ip(&["link", "set", a, "master", bridge]);
        self.ip(&["link", "set", a, "up"]);
        other.ip(&["addr", "add", cidr, "dev", b]);
        other.ip(&["link", "set", b, "up"]);
        other.ip(&["route", "add", "default", "dev", b]);
    }

    /// Runs `f` on a thread inside the namespace (setns affects only that thread; sockets it
    /// opens stay in the namespace).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("setns into the test namespace");
                f()
            })
            .join()
            .expect("the namespace thread panicked")
        })
    }

    /// Starts `cmd` (made with [`NetNs::cmd`]) with its output in `log`.
    pub fn spawn(&self, mut cmd: Command, log: &std::path::Path) -> Child {
        let f = std::fs::File::create(log).expect("creating a log file");
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
    }

    /// Process ids still running inside the namespace.
    pub fn pids(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
    }
}

/// Deletes the namespaces of test processes that are gone (a harness timeout kills a test
/// without running its drops): `imgb-TAG-PID-N` whose PID no longer runs. Their processes died
/// with the test (QEMU's guard, the servers' process group); only the name and devices remain.
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("imgb-") else {
            continue;
        };
        let parts: Vec<&str> = rest.rsplitn(3, '-').collect();
        let pid = parts.get(1).and_then(|p| p.parse::<u32>().ok());
        let empty = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .is_ok_and(|o| o.stdout.is_empty());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) && empty {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Only processes this test started live in its namespace.
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
