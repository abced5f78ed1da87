//! One-shot seed tokens. A token is minted when a node's boot script (PC) or its `cmdline.txt`
//! (Raspberry Pi) is served and names that node; each seed file may be fetched with it once,
//! within `ttl`; then it is gone (404). Minting a new token for a node ends the node's older ones.
//! Pure: the caller passes the time and the random token text (see [`crate::minter`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::SeedFile;

/// A token's length: 128 bits as lower-case hex. Fixed, so a file holding one keeps its size from
/// one mint to the next (a Raspberry Pi asks a file's size, then reads it under a new mint).
pub const TOKEN_LEN: usize = 32;

/// What a built file holds where the server puts a freshly minted token when it serves it. Not
/// hex, so it is never a live token: a node that reads the built file from another TFTP server
/// gets 404 for its seed (and the log says why).
pub const TOKEN_SLOT: &str = "minted-by-imgbuild-netboot-serve";

const _: () = assert!(TOKEN_SLOT.len() == TOKEN_LEN);

#[derive(Debug)]
struct Grant {
    node: String,
    expires: Instant,
    served: Vec<SeedFile>,
}

/// Live tokens.
#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    live: HashMap<String, Grant>,
}

/// Why a seed request is refused (all answered 404; the log says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the token is unknown (never minted, or replaced by a newer boot)")]
    Unknown,
    #[error("the token has expired")]
    Expired,
    #[error("this file was already fetched with this token")]
    Replayed,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            live: HashMap::new(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Registers `token` for `node` from `now`; the node's earlier tokens stop working.
    pub fn mint(&mut self, node: &str, token: String, now: Instant) {
        self.live.retain(|_, g| g.node != node && g.expires > now);
        self.live.insert(
            token,
            Grant {
                node: node.to_string(),
                expires: now + self.ttl,
                served: Vec::new(),
            },
        );
    }

    /// The node whose `file` this token may fetch now; the fetch is recorded.
    pub fn take(&mut self, token: &str, file: SeedFile, now: Instant) -> Result<String, Refused> {
        let g = self.live.get_mut(token).ok_or(Refused::Unknown)?;
        if now >= g.expires {
            self.live.remove(token);
            return Err(Refused::Expired);
        }
        if g.served.contains(&file) {
            return Err(Refused::Replayed);
        }
        g.served.push(file);
        let node = g.node.clone();
        if g.served.len() == SeedFile::ALL.len() {
            self.live.remove(token);
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_file_then_gone() {
        let t0 = Instant::now();
        let mut t = Tokens::new(Duration::from_secs(60));
        t.mint("pc-1", "aa".into(), t0);
        assert_eq!(t.take("aa", SeedFile::MetaData, t0).unwrap(), "pc-1");
        assert_eq!(t.take("aa", SeedFile::MetaData, t0), Err(Refused::Replayed));
        for f in [
            SeedFile::UserData,
            SeedFile::NetworkConfig,
            SeedFile::VendorData,
        ] {
            assert_eq!(t.take("aa", f, t0).unwrap(), "pc-1");
        }
        // All four fetched: the token is forgotten.
        assert_eq!(t.take("aa", SeedFile::UserData, t0), Err(Refused::Unknown));
        assert_eq!(t.take("zz", SeedFile::UserData, t0), Err(Refused::Unknown));
    }

    #[test]
    fn expires_and_is_replaced_by_the_next_boot() {
        let t0 = Instant::now();
        let mut t = Tokens::new(Duration::from_secs(60));
        t.mint("pc-1", "aa".into(), t0);
        t.mint("pc-2", "bb".into(), t0);
        assert_eq!(
            t.take("aa", SeedFile::UserData, t0 + Duration::from_secs(60)),
            Err(Refused::Expired)
        );
        t.mint("pc-2", "cc".into(), t0);
        assert_eq!(t.take("bb", SeedFile::UserData, t0), Err(Refused::Unknown));
        assert_eq!(t.take("cc", SeedFile::UserData, t0).unwrap(), "pc-2");
    }
}
