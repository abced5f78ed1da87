//! Running `imgbuild netboot serve` in tests: a work folder with an inventory, the fixture
//! secrets and a stand-in artifact set (tests/fixtures/netboot/make-set), and the server process,
//! stopped with SIGTERM (and checked to stop cleanly) or killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::NetNs;

/// The profile of the stand-in artifact set (a stock profile, so seeds render).
pub const PROFILE: &str = "amd64-worker";

/// Two nodes with MACs, one without (not netbooted).
pub const NODES: &str = r#"[[node]]
name = "pc-1"
profile = "amd64-worker"
mac = "52:54:00:00:00:01"

[[node]]
name = "pc-2"
profile = "amd64-worker"
mac = "52:54:00:00:00:02"

[[node]]
name = "do-1"
profile = "droplet-worker"
"#;

/// A work folder: nodes.toml, secrets.toml (0600) and images/amd64-worker/netboot with a
/// root.squashfs of `root_mib` MiB.
pub fn workdir(root_mib: u32) -> tempfile::TempDir {
    workdir_with(root_mib, None, None)
}

/// [`workdir`], with the real iPXE binaries from `ipxe_dir` (Debian: /usr/lib/ipxe) and a real
/// kernel and initrd.
pub fn workdir_with(
    root_mib: u32,
    ipxe_dir: Option<&Path>,
    boot: Option<(&Path, &Path)>,
) -> tempfile::TempDir {
    let dir = super::scratch();
    std::fs::write(dir.path().join("nodes.toml"), NODES).unwrap();
    let secrets = dir.path().join("secrets.toml");
    std::fs::copy(
        super::tests_dir().join("fixtures/node/secrets.toml"),
        &secrets,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut make = Command::new(super::tests_dir().join("fixtures/netboot/make-set"));
    if let Some(d) = ipxe_dir {
        make.env("REAL_IPXE", d);
    }
    if let Some((kernel, initrd)) = boot {
        make.env("KERNEL", kernel).env("INITRD", initrd);
    }
    let status = make
        .arg(dir.path().join("images"))
        .arg(PROFILE)
        .arg(root_mib.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "make-set failed");
    dir
}

/// The artifact folder in a work folder.
pub fn set_dir(work: &Path) -> PathBuf {
    work.join("images").join(PROFILE).join("netboot")
}

/// The secret values of the fixture secrets file (each starts with FAKE).
pub fn secret_values() -> Vec<String> {
    let text =
        std::fs::read_to_string(super::tests_dir().join("fixtures/node/secrets.toml")).unwrap();
    text.lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
        })
        .filter(|v| v.starts_with("FAKE"))
        .collect()
}

/// The command line of `imgbuild netboot serve` for `work`, listening on `listen`.
pub fn serve_command(ns: Option<&NetNs>, work: &Path, listen: &str, extra: &[&str]) -> Command {
    let bin = env!("CARGO_BIN_EXE_imgbuild");
    let mut c = match ns {
        Some(ns) => ns.cmd(bin),
        None => Command::new(bin),
    };
    c.current_dir(work)
        .args(["netboot", "serve", "--listen", listen, "--images", "images"])
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("IMGBUILD_PROFILES")
        .env_remove("IMGBUILD_INVENTORY")
        .env_remove("IMGBUILD_SECRETS")
        .env_remove("IMGBUILD_LOG");
    for s in ["K3S_TOKEN", "K3S_AGENT_TOKEN", "TAILSCALE_AUTHKEY"] {
        c.env_remove(format!("IMGBUILD_SECRET_{s}"));
    }
    c
}

/// A running server.
pub struct Server {
    child: Option<Child>,
    log: PathBuf,
    pub tftp: SocketAddr,
    pub http: SocketAddr,
}

impl Server {
    /// Starts the server in `work` (inside `ns` when given) and waits until it listens. `listen`
    /// is the address; `extra` more options (pass `--tftp-port 0 --http-port 0` for any port).
    pub fn start(ns: Option<&NetNs>, work: &Path, listen: &str, extra: &[&str]) -> Server {
        let log = work.join(format!("serve-{}.log", std::process::id()));
        let f = std::fs::File::create(&log).unwrap();
        let child = serve_command(ns, work, listen, extra)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("starting imgbuild netboot serve");
        let mut s = Server {
            child: Some(child),
            log,
            tftp: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
        };
        let t0 = Instant::now();
        loop {
            let text = s.log();
            if let Some(line) = text
                .lines()
                .find(|l| l.contains("imgbuild netboot: serving"))
            {
                let url = |key: &str| -> SocketAddr {
                    let at = line.find(key).unwrap() + key.len();
                    line[at..]
                        .split([' ', ';'])
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                s.tftp = url("tftp://");
                s.http = url("http://");
                return s;
            }
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the server exited ({st}) before listening:\n{text}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the server did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://ADDR:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// SIGTERM; the server must exit 0 within 10 s, saying it stopped. Returns its log.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("the server did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = self.log();
        assert!(
            status.success(),
            "the server exited with {status} on SIGTERM:\n{log}"
        );
        assert!(log.contains("imgbuild netboot: stopped"), "{log}");
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The address of the PXE lab's bridge, where dnsmasq and our server listen.
pub const LAB_ADDR: &str = "10.33.0.1";
/// The router's address in [`Lab::router`].
pub const ROUTER_ADDR: &str = "10.33.0.2";

/// A PXE network: a namespace with bridge `br0` ([`LAB_ADDR`]/24) and tap devices on it, dnsmasq
/// as the LAN's DHCP server with the snippet `imgbuild netboot dnsmasq` writes (what Pi-hole
/// runs), and our server started in `dir` (which holds nodes.toml, secrets.toml and images/).
/// Dropping it stops both servers and deletes the namespace with its devices.
pub struct Lab {
    server: Option<Server>,
    dnsmasq: Option<Child>,
    pub ns: NetNs,
    /// The router's namespace, when dnsmasq runs there ([`Lab::router`]).
    router: Option<NetNs>,
    /// The interface dnsmasq serves (its log names it: `DHCPACK(IFACE)`).
    pub dhcp_iface: &'static str,
    pub dir: PathBuf,
}

impl Lab {
    pub fn new(dir: &Path, taps: &[&str]) -> Lab {
        let snippet = dir.join("50-imgbuild-netboot.conf");
        let (code, _, err) = super::run(
            super::imgbuild()
                .args(["netboot", "dnsmasq", "--listen", LAB_ADDR, "-o"])
                .arg(&snippet),
        );
        assert_eq!(code, 0, "{err}");
        let conf = format!("--conf-file={}", snippet.display());
        Lab::start(dir, taps, false, &["--bind-interfaces", &conf], &[])
    }

    /// The usual home LAN: the router's DHCP (dnsmasq in its own namespace, on a veth into the
    /// bridge, addresses only) and our server as the proxyDHCP on the Pi-hole host, where UDP
    /// 67 is free (a bound socket).
    pub fn router(dir: &Path, taps: &[&str]) -> Lab {
        Lab::start(
            dir,
            taps,
            true,
            &["--conf-file=/dev/null", "--no-ping", "--bind-interfaces"],
            &["--dhcp", "proxy"],
        )
    }

    /// The Pi-hole host whose DHCP knows nothing of PXE: dnsmasq on the same host gives
    /// addresses only and holds 0.0.0.0:67 (no `--bind-interfaces`), and our server answers
    /// the boot clients as a proxyDHCP (through its raw socket, since 67 is taken).
    pub fn proxy(dir: &Path, taps: &[&str]) -> Lab {
        Lab::start(
            dir,
            taps,
            false,
            &["--conf-file=/dev/null", "--no-ping"],
            &["--dhcp", "proxy"],
        )
    }

    fn start(
        dir: &Path,
        taps: &[&str],
        on_router: bool,
        dnsmasq_args: &[&str],
        serve_args: &[&str],
    ) -> Lab {
        let ns = NetNs::new("pxe");
        ns.bridge("br0", &format!("{LAB_ADDR}/24"));
        for t in taps {
            ns.tap(t, "br0");
        }
        let router = on_router.then(|| {
            let r = NetNs::new("router");
            ns.veth_to(&r, "rt0", "rt1", "br0", &format!("{ROUTER_ADDR}/24"));
            r
        });
        let mut lab = Lab {
            server: None,
            dnsmasq: None,
            ns,
            router,
            dhcp_iface: if on_router { "rt1" } else { "br0" },
            dir: dir.to_path_buf(),
        };
        let dhcp_ns = lab.router.as_ref().unwrap_or(&lab.ns);
        let mut d = dhcp_ns.cmd(super::find_tool("dnsmasq").expect("dnsmasq"));
        d.args([
            "--keep-in-foreground",
            "--port=0",
            &format!("--interface={}", lab.dhcp_iface),
            "--dhcp-range=10.33.0.100,10.33.0.150,255.255.255.0,10m",
            "--leasefile-ro",
            "--log-dhcp",
            "--log-facility=-",
            "--user=root",
        ])
        .args(dnsmasq_args);
        lab.dnsmasq = Some(dhcp_ns.spawn(d, &dir.join("dnsmasq.log")));
        // dnsmasq first: a proxy started before it would take 67 and leave it none.
        super::proxy::wait_for_port_67(dhcp_ns, dir);
        lab.server = Some(Server::start(Some(&lab.ns), dir, LAB_ADDR, serve_args));
        lab
    }

    /// Our server's log so far.
    pub fn log(&self) -> String {
        self.server.as_ref().map(Server::log).unwrap_or_default()
    }

    pub fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    /// The HTTP status `curl` gets for `url` from inside the namespace.
    pub fn http_status(&self, url: &str) -> String {
        let out = self
            .ns
            .cmd("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .expect("running curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// The `network-config=` of a kernel command line (a boot script's `kernel` line, a Pi's
/// cmdline.txt) decoded by coreutils `base64 -d` and `gzip -dc`, as cloud-init would read it;
/// None when the line has none.
pub fn cmdline_network_config(line: &str) -> Option<String> {
    let words: Vec<&str> = line
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("network-config="))
        .collect();
    assert!(words.len() <= 1, "more than one network-config=: {line}");
    let b64 = words.first()?;
    let mut sh = Command::new("sh");
    sh.args(["-c", "printf %s \"$1\" | base64 -d | gzip -dc", "sh", b64]);
    let (code, out, err) = super::run(&mut sh);
    assert_eq!(code, 0, "base64 -d | gzip -dc of {b64}: {err}");
    Some(out)
}
