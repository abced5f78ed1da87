//! The live seed tokens the HTTP route (a PC's iPXE script) and the TFTP route (a Raspberry Pi's
//! `cmdline.txt`) share: the pure [`Tokens`] behind a lock, with the system's random numbers and
//! clock (this is the outer layer; `tokens` stays pure).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::SeedFile;
use crate::tokens::{Refused, TOKEN_LEN, Tokens};

/// Mints and checks one-shot seed tokens for both routes.
#[derive(Debug)]
pub struct Minter {
    tokens: Mutex<Tokens>,
}

impl Minter {
    pub fn new(ttl: Duration) -> Minter {
        Minter {
            tokens: Mutex::new(Tokens::new(ttl)),
        }
    }

    /// How long a token works (for the log).
    pub fn ttl(&self) -> Duration {
        self.tokens.lock().expect("lock").ttl()
    }

    /// A new token for `node`, valid from now; the node's older tokens stop working.
    pub fn mint(&self, node: &str) -> String {
        let token = random_token();
        self.tokens
            .lock()
            .expect("lock")
            .mint(node, token.clone(), Instant::now());
        token
    }

    /// The node whose `file` this token may fetch now (the fetch is recorded).
    pub fn take(&self, token: &str, file: SeedFile) -> Result<String, Refused> {
        self.tokens
            .lock()
            .expect("lock")
            .take(token, file, Instant::now())
    }
}

/// 128 random bits, hex: the seed URL cannot be guessed.
fn random_token() -> String {
    let mut b = [0u8; TOKEN_LEN / 2];
    getrandom::fill(&mut b).expect("the system random number generator failed");
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fixed_length_hex_and_a_new_mint_ends_the_old() {
        let m = Minter::new(Duration::from_secs(60));
        let a = m.mint("pi-1");
        let b = m.mint("pi-1");
        for t in [&a, &b] {
            assert_eq!(t.len(), TOKEN_LEN);
            assert!(t.bytes().all(|c| c.is_ascii_hexdigit()), "{t}");
        }
        assert_ne!(a, b);
        assert_eq!(m.take(&a, SeedFile::MetaData), Err(Refused::Unknown));
        assert_eq!(m.take(&b, SeedFile::MetaData).unwrap(), "pi-1");
        assert_eq!(m.take(&b, SeedFile::MetaData), Err(Refused::Replayed));
    }
}
