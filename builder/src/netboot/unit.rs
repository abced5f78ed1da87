//! The systemd unit for the Pi-hole host: a dynamic user with one capability (binding ports 69
//! and 80), read-only everything, the secrets file handed over as a credential (it stays root's,
//! mode 0600), restart on failure.

use std::path::Path;

use super::{DhcpMode, Endpoint};

/// The unit's name.
pub const NAME: &str = "imgbuild-netboot.service";

/// What goes into the unit's command line.
pub struct UnitParams<'a> {
    pub binary: &'a Path,
    pub endpoint: &'a Endpoint,
    pub dhcp: DhcpMode,
    pub inventory: &'a Path,
    pub secrets: &'a Path,
    pub images: &'a Path,
    pub profiles_dir: &'a Path,
}

/// Quotes a word for a systemd command line (only when needed).
fn word(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        s
    } else {
        format!(
            "\"{}\"",
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('%', "%%")
        )
    }
}

/// The unit file's text.
pub fn render(p: &UnitParams<'_>) -> String {
    let e = p.endpoint;
    format!(
        "# Written by `imgbuild netboot install-unit`.
[Unit]
Description=imgbuild netboot server (TFTP and HTTP boot for PXE nodes)
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
Environment=NO_COLOR=1
ExecStart={bin} netboot serve --listen {addr} --tftp-port {tftp} --http-port {http}{dhcp} --inventory {inv} --secrets %d/secrets --images {images} --profiles-dir {profiles}
# The secrets file stays root's (mode 0600); systemd hands this service a private copy.
LoadCredential=secrets:{secrets}
DynamicUser=yes
# --state-dir: which netboot = \"once\" nodes fetched their seed (/var/lib/imgbuild-netboot).
StateDirectory=imgbuild-netboot
AmbientCapabilities={caps}
CapabilityBoundingSet={caps}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
Restart=on-failure
RestartSec=5s

[Install]
WantedBy=multi-user.target
",
        bin = word(p.binary),
        addr = e.listen,
        tftp = e.tftp_port,
        http = e.http_port,
        dhcp = match p.dhcp {
            DhcpMode::Proxy => " --dhcp proxy",
            DhcpMode::None => "",
        },
        // A raw socket is the proxyDHCP's way onto UDP 67 when dnsmasq holds it.
        caps = match p.dhcp {
            DhcpMode::Proxy => "CAP_NET_BIND_SERVICE CAP_NET_RAW",
            DhcpMode::None => "CAP_NET_BIND_SERVICE",
        },
        inv = word(p.inventory),
        secrets = word(p.secrets),
        images = word(p.images),
        profiles = word(p.profiles_dir),
    )
}
