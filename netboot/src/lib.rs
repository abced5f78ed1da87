//! Netboot protocols for imgbuild nodes: TFTP ([`tftp`]), the boot HTTP routes ([`http`]), iPXE
//! scripts ([`ipxe`]), one-shot seed tokens ([`tokens`]) and the dnsmasq snippet that makes a
//! Pi-hole's DHCP send PXE clients here ([`dnsmasq`]).
//!
//! It knows nothing of profiles, trees or inventories: the builder answers the questions of the
//! [`Catalog`] trait (which file is this, which node has this MAC, what is its seed).

use std::net::IpAddr;
use std::path::PathBuf;

pub mod dhcp;
pub mod dnsmasq;
pub mod http;
pub mod ipxe;
pub mod mac;
pub mod minter;
pub mod tftp;
pub mod tokens;

pub use mac::Mac;

/// A file the server may send: checked when the catalog was made (a regular file inside its
/// artifact folder, of this size), never looked up by a client's raw name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Where it is on disk (canonical, no symlinks).
    pub path: PathBuf,
    pub size: u64,
    /// SHA-256, lower-case hex: the HTTP ETag.
    pub sha256: String,
}

/// How a node boots: the artifact names (as [`Catalog::artifact`] knows them) and the kernel
/// command line, in which `${base}` stands for the artifact folder's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBoot {
    pub node: String,
    pub profile: String,
    /// `<profile>/<file>` names.
    pub kernel: String,
    pub initrds: Vec<String>,
    pub cmdline: String,
    /// The `network-config=…` argument with the node's seed network-config (its secret-free
    /// part, encoded by the builder), appended to the command line; None: cloud-init's
    /// fallback applies.
    pub network_config: Option<String>,
}

/// The files of a cloud-init NoCloud seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeedFile {
    MetaData,
    UserData,
    NetworkConfig,
    VendorData,
}

impl SeedFile {
    pub const ALL: [SeedFile; 4] = [
        SeedFile::MetaData,
        SeedFile::UserData,
        SeedFile::NetworkConfig,
        SeedFile::VendorData,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SeedFile::MetaData => "meta-data",
            SeedFile::UserData => "user-data",
            SeedFile::NetworkConfig => "network-config",
            SeedFile::VendorData => "vendor-data",
        }
    }

    pub fn from_name(name: &str) -> Option<SeedFile> {
        SeedFile::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A file naming a node's seed URL, with [`tokens::TOKEN_SLOT`] where the token goes (exactly
/// once; checked when the catalog was made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedTemplate {
    pub node: String,
    pub text: String,
}

impl SeedTemplate {
    /// The file with `token` in the slot: the same length for every token.
    pub fn render(&self, token: &str) -> Vec<u8> {
        debug_assert_eq!(token.len(), tokens::TOKEN_SLOT.len());
        self.text
            .replacen(tokens::TOKEN_SLOT, token, 1)
            .into_bytes()
    }
}

/// What the server asks the builder.
pub trait Catalog: Send + Sync + 'static {
    /// The file served as `name` (TFTP) and `/a/<name>` (HTTP), e.g. `pc-node/vmlinuz` or
    /// `bios/undionly.kpxe`; None for anything not listed.
    fn artifact(&self, name: &str) -> Option<&Artifact>;
    /// The boot of the node with this MAC; None for a MAC not in the inventory.
    fn node_boot(&self, mac: Mac) -> Option<NodeBoot>;
    /// The content of one seed file of `node` (may hold secrets: never log it).
    fn seed(&self, node: &str, file: SeedFile) -> Option<String>;
    /// A file served from memory with a seed token minted for each request (a Raspberry Pi
    /// node's `<serial>/cmdline.txt`: the Pi runs no iPXE, so its TFTP read is its boot's
    /// moment); None for any other name. Default: none.
    fn seed_template(&self, _name: &str) -> Option<SeedTemplate> {
        None
    }
    /// Which node `ids` names and whether it may boot now. Asked on every route (DHCP, TFTP,
    /// HTTP) for every request, so a policy change shows at once. Default: by MAC, always.
    fn admit(&self, ids: &ClientIds) -> Admission {
        match ids.mac.and_then(|m| self.node_boot(m)) {
            Some(boot) => Admission::Boot {
                why: "MAC in the inventory".into(),
                boot,
            },
            None => Admission::Unknown("MAC not in the inventory".into()),
        }
    }
    /// Whether `node` may still fetch its seed (its token was minted when it could).
    fn seed_allowed(&self, _node: &str) -> Result<(), String> {
        Ok(())
    }
    /// `node`'s user-data went to `client`: the seed is delivered (`netboot = "once"` ends here).
    fn seed_delivered(&self, _node: &str, _client: IpAddr) {}
}

/// What one request tells about its sender; each route fills in what it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIds {
    pub mac: Option<Mac>,
    /// Option 97 of a PXE client: the SMBIOS UUID's 16 bytes as the firmware sent them.
    pub guid: Option<[u8; 16]>,
    /// A Raspberry Pi's serial (option 97, or the TFTP request's folder).
    pub pi_serial: Option<u32>,
    /// The source address (TFTP, HTTP), which the catalog may map to a MAC.
    pub ip: Option<IpAddr>,
}

/// The inventory's answer to [`ClientIds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A node that may boot now; `why` says which identifier matched, for the log.
    Boot { boot: NodeBoot, why: String },
    /// A node of the inventory whose netboot policy refuses it now, and why.
    Refused { node: String, why: String },
    /// No node matches (or the route could not tell who asks); why, for the log.
    Unknown(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::TOKEN_SLOT;

    #[test]
    fn a_template_keeps_its_length_for_every_token() {
        let t = SeedTemplate {
            node: "pi-1".into(),
            text: format!(
                "boot=imgbuild ds=nocloud-net;s=http://10.0.0.1:8080/seed/{TOKEN_SLOT}/\n"
            ),
        };
        let a = t.render(&"a".repeat(32));
        let b = t.render(&"0".repeat(32));
        assert_eq!(a.len(), t.text.len());
        assert_eq!(b.len(), a.len());
        assert_eq!(
            String::from_utf8(a).unwrap(),
            format!(
                "boot=imgbuild ds=nocloud-net;s=http://10.0.0.1:8080/seed/{}/\n",
                "a".repeat(32)
            )
        );
    }
}
