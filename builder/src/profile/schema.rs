//! The profile schema: one struct for a profile file and for the resolved profile.
//!
//! Every section has defaults so a profile that `extends` another may set only what it changes;
//! fields that are required for some boards or roles are `Option` and checked by
//! [`super::validate`] after the `extends` chain is merged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node profile as written in TOML (and, after resolution, the merged result).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Profile {
    /// One line saying what the profile is for (shown by `profiles list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The profile this one builds on; its values are merged under ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// An abstract profile only exists to be extended: it is not built and not listed as buildable.
    #[serde(default, skip_serializing_if = "is_false")]
    pub r#abstract: bool,
    #[serde(default)]
    pub image: ImageSpec,
    #[serde(default)]
    pub base: BaseSpec,
    #[serde(default)]
    pub k3s: K3sSpec,
    #[serde(default)]
    pub mesh: MeshSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserSpec>,
    /// Folders of files layered onto the root tree, in order (later wins). Relative paths are
    /// relative to the profile's folder; `stock:NAME` names an overlay shipped with imgbuild.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<String>,
    #[serde(default)]
    pub cloud_init: CloudInitSpec,
    #[serde(default)]
    pub kernel: KernelSpec,
    #[serde(default)]
    pub pi: PiSpec,
    #[serde(default)]
    pub time: TimeSpec,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageSpec {
    /// Output file stem; defaults to the profile name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<Board>,
    /// Total image size, or `auto` (content plus headroom).
    #[serde(default)]
    pub size: Size,
    /// Output formats; empty means the board's default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<Format>,
    /// Partition table; defaults to `mbr` for Raspberry Pi boards and `gpt` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_table: Option<PartitionTable>,
    /// Size of the boot partition (FAT32 / ESP).
    #[serde(default = "default_boot_size")]
    pub boot_size: Size,
    /// Initial size of the data partition; it grows to fill the disk at first boot.
    #[serde(default = "default_data_size")]
    pub data_size: Size,
    /// SOURCE_DATE_EPOCH for every timestamp in the image; defaults to one derived from the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<i64>,
}

fn default_boot_size() -> Size {
    Size::Bytes(512 << 20)
}

fn default_data_size() -> Size {
    Size::Bytes(256 << 20)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BaseSpec {
    /// Where to download the base OS (raw image, `.img.xz`, rootfs tarball).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A local base file instead of a URL (relative to the profile's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Expected SHA-256 (hex); otherwise the lockfile pins it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Upstream checksum file to create the lock from (`sha256sum` format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksums_url: Option<String>,
    /// Partition of a raw base image that holds the boot files (label or 1-based number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_partition: Option<String>,
    /// Partition of a raw base image that holds the root filesystem (label or 1-based number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_partition: Option<String>,
    /// The most a compressed base may decompress to; `auto`: four times `image.size`, at least
    /// 16 GiB (256 GiB when `image.size` is `auto`). Stops decompression bombs.
    #[serde(default, skip_serializing_if = "Size::is_auto")]
    pub max_unpacked: Size,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct K3sSpec {
    /// k3s release, e.g. `v1.33.5+k3s1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Server only: start a new cluster with embedded etcd instead of joining `server`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cluster_init: bool,
    /// URL of an existing server to join (`https://host:6443`); required for agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The cluster token, by secret name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
    /// Server only: a separate token agents join with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<SecretRef>,
    /// Node labels (`key=value`), baked for every node of the profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Node taints (`key=value:Effect`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<String>,
    /// Extra keys for `/etc/rancher/k3s/config.yaml`, written as given.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub config: toml::Table,
    /// Bake the airgap images tarball into the image.
    #[serde(default, skip_serializing_if = "is_false")]
    pub airgap_images: bool,
    /// Override the download URL of the k3s binary (`{version}` and `{arch}` are substituted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MeshSpec {
    #[serde(default)]
    pub provider: MeshProvider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Tailscale ACL tags (`tag:k3s`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Tailscale only: a headscale (or other) control server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_server: Option<String>,
    /// ZeroTier only: the 16-hex-digit network id to join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Tailscale only: the one-off auth key, by secret name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key: Option<SecretRef>,
    /// Interface the mesh creates (`tailscale0`, `zt…`), used for `flannel-iface`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Override the download URL of the agent (`{version}` and `{arch}` are substituted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Public keys, one OpenSSH `authorized_keys` line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// Passwordless sudo.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sudo: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CloudInitSpec {
    /// Folder of seed templates (`user-data.j2`, `meta-data.j2`, `network-config.j2`) replacing
    /// the stock ones; relative to the profile's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<String>,
    /// Datasources cloud-init may probe; empty means the board's default (NoCloud on bare metal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasources: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KernelSpec {
    /// Kernel command line additions, one argument each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TimeSpec {
    /// Seconds the boot waits for a synchronised clock (NTP) before the mesh join and k3s start
    /// without it; 60 when unset. A Raspberry Pi has no RTC: too short a wait starts TLS on a
    /// clock still in 1970.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_wait: Option<u32>,
}

impl TimeSpec {
    /// The default of `time.sync-wait`.
    pub const DEFAULT_SYNC_WAIT: u32 = 60;
    /// The longest wait a profile may set (an hour).
    pub const MAX_SYNC_WAIT: u32 = 3600;

    pub fn sync_wait(&self) -> u32 {
        self.sync_wait.unwrap_or(Self::DEFAULT_SYNC_WAIT)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PiSpec {
    /// Lines added to `config.txt`, per section.
    #[serde(default)]
    pub config_txt: ConfigTxt,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigTxt {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pi4: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pi5: Vec<String>,
}

macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The keyword as written in profiles.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(
    /// CPU architecture of the image.
    Arch { Arm64 = "arm64", Amd64 = "amd64" }
);
keyword_enum!(
    /// What the image boots on.
    Board {
        /// Raspberry Pi 4 (and 400, CM4).
        Rpi4 = "rpi4",
        /// Raspberry Pi 5 (and 500, CM5).
        Rpi5 = "rpi5",
        /// One image for both Raspberry Pi 4 and 5.
        Rpi = "rpi",
        /// Generic UEFI machine (PC, VM).
        Efi = "efi",
        /// A cloud VM (OpenStack qcow2, droplet user-data).
        Cloud = "cloud",
    }
);
keyword_enum!(
    /// k3s role.
    Role { Server = "server", Agent = "agent" }
);
keyword_enum!(
    /// Mesh VPN agent.
    MeshProvider { Tailscale = "tailscale", Zerotier = "zerotier", None = "none" }
);
keyword_enum!(
    /// Partition table of a disk image.
    PartitionTable { Mbr = "mbr", Gpt = "gpt" }
);
keyword_enum!(
    /// Output formats of a build.
    Format {
        /// Raw sparse disk image.
        Img = "img",
        /// xz-compressed raw image (multithreaded, fixed block size).
        ImgXz = "img.xz",
        /// zstd-compressed raw image (one frame per 24 MiB, fixed level): much faster, a little
        /// larger.
        ImgZst = "img.zst",
        /// bmaptool block map.
        Bmap = "bmap",
        /// qcow2 for OpenStack and QEMU.
        Qcow2 = "qcow2",
    }
);

// Not derived: the variants come from `keyword_enum!`, which cannot carry `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for MeshProvider {
    fn default() -> Self {
        MeshProvider::None
    }
}

impl Board {
    /// The architecture a board implies, if it implies one.
    pub fn implied_arch(self) -> Option<Arch> {
        match self {
            Board::Rpi4 | Board::Rpi5 | Board::Rpi => Some(Arch::Arm64),
            Board::Efi | Board::Cloud => None,
        }
    }

    pub fn is_raspberry_pi(self) -> bool {
        matches!(self, Board::Rpi4 | Board::Rpi5 | Board::Rpi)
    }

    /// Partition table used when the profile does not choose one.
    pub fn default_partition_table(self) -> PartitionTable {
        if self.is_raspberry_pi() {
            PartitionTable::Mbr
        } else {
            PartitionTable::Gpt
        }
    }

    /// Output formats written when the profile does not list any.
    pub fn default_formats(self) -> &'static [Format] {
        match self {
            Board::Cloud => &[Format::Img, Format::Qcow2],
            _ => &[Format::Img, Format::ImgXz, Format::Bmap],
        }
    }
}

/// A size in bytes, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Size {
    #[default]
    Auto,
    Bytes(u64),
}

/// Why a size string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid size {0:?}: write `auto`, a number of bytes, or a number with a unit (512MiB, 4GiB, 2G)"
)]
pub struct SizeError(pub String);

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, SizeError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(Size::Auto);
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: u64 = num.parse().map_err(|_| SizeError(s.to_string()))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "KB" | "kB" => 1000,
            "MB" => 1000_u64.pow(2),
            "GB" => 1000_u64.pow(3),
            "TB" => 1000_u64.pow(4),
            _ => return Err(SizeError(s.to_string())),
        };
        let bytes = num
            .checked_mul(mult)
            .ok_or_else(|| SizeError(s.to_string()))?;
        if bytes == 0 {
            return Err(SizeError(s.to_string()));
        }
        Ok(Size::Bytes(bytes))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Size::Auto => f.write_str("auto"),
            Size::Bytes(b) => {
                for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
                    if b >= 1 << shift && b % (1 << shift) == 0 {
                        return write!(f, "{}{unit}", b >> shift);
                    }
                }
                write!(f, "{b}")
            }
        }
    }
}

impl Size {
    pub fn is_auto(&self) -> bool {
        *self == Size::Auto
    }

    /// The bytes, or `None` for `auto`.
    pub fn bytes(&self) -> Option<u64> {
        match self {
            Size::Auto => None,
            Size::Bytes(b) => Some(*b),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom(SizeError("<not a string or number>".into())))?
        {
            Raw::Int(n) if n > 0 => Ok(Size::Bytes(n as u64)),
            Raw::Int(n) => Err(serde::de::Error::custom(SizeError(n.to_string()))),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A reference to a secret by name. Secrets live in the secrets file or the environment, never in
/// a profile: a literal string where a secret belongs is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub secret: String,
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        #[allow(dead_code)] // the payloads only select the variant
        enum Raw {
            Ref { secret: String },
            Literal(String),
            Other(toml::Value),
        }
        match Raw::deserialize(d)? {
            Raw::Ref { secret } if is_secret_name(&secret) => Ok(SecretRef { secret }),
            Raw::Ref { secret } => Err(serde::de::Error::custom(format!(
                "invalid secret name {secret:?}: use letters, digits, `-` and `_` (e.g. \"k3s-token\")"
            ))),
            Raw::Literal(_) => Err(serde::de::Error::custom(
                "a literal secret is not allowed in a profile (profiles are shared and end up in manifests)",
            )),
            Raw::Other(_) => Err(serde::de::Error::custom(
                "expected a secret reference like `{ secret = \"k3s-token\" }`",
            )),
        }
    }
}

/// Secret names map to file keys and environment variables, so keep them simple.
pub fn is_secret_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("auto".parse(), Ok(Size::Auto));
        assert_eq!("4GiB".parse(), Ok(Size::Bytes(4 << 30)));
        assert_eq!("512M".parse(), Ok(Size::Bytes(512 << 20)));
        assert_eq!("1GB".parse(), Ok(Size::Bytes(1_000_000_000)));
        assert_eq!("4096".parse(), Ok(Size::Bytes(4096)));
        for bad in [
            "",
            "0",
            "4XB",
            "-1G",
            "GiB",
            "99999999999999999999T",
            "1.5G",
        ] {
            assert!(bad.parse::<Size>().is_err(), "{bad} should be refused");
        }
        assert_eq!(Size::Bytes(4 << 30).to_string(), "4GiB");
        assert_eq!(Size::Bytes(1000).to_string(), "1000");
    }

    #[test]
    fn literal_secret_is_refused() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            token: SecretRef,
        }
        let err = toml::from_str::<T>("token = \"K10abc\"").unwrap_err();
        assert!(err.to_string().contains("literal secret"), "{err}");
        let ok: T = toml::from_str("token = { secret = \"k3s-token\" }").unwrap();
        assert_eq!(ok.token.secret, "k3s-token");
        assert!(toml::from_str::<T>("token = { secret = \"a b\" }").is_err());
    }
}
