//! The kernel's socket tables, `/proc/net/{udp,udp6,tcp,tcp6}`: each socket's local address,
//! state and inode (which `/proc/PID/fd/*` links name as `socket:[INODE]`). Addresses are the
//! kernel's `%08X` of the network-order words, so they read in this host's byte order.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One socket of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub local: IpAddr,
    pub port: u16,
    /// The kernel's TCP state number (`0A` listen, `07` close: an unconnected UDP socket).
    pub state: u8,
    pub inode: u64,
}

/// TCP_LISTEN in the tcp tables.
pub const LISTEN: u8 = 0x0A;

#[derive(Debug, thiserror::Error)]
pub enum ProcNetError {
    #[error("{file}:{line}: {message}")]
    Line {
        file: String,
        line: usize,
        message: String,
    },
    #[error("reading {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
}

/// Every socket in one table; `file` names it in errors.
pub fn parse(r: impl Read, file: &str) -> Result<Vec<Socket>, ProcNetError> {
    let mut out = Vec::new();
    for (i, line) in BufReader::new(r).lines().enumerate() {
        let line = line.map_err(|source| ProcNetError::Io {
            file: file.into(),
            source,
        })?;
        // The first line is the header.
        if i == 0 || line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| ProcNetError::Line {
            file: file.into(),
            line: i + 1,
            message,
        };
        out.push(socket(&line).map_err(bad)?);
    }
    Ok(out)
}

fn socket(line: &str) -> Result<Socket, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return Err(format!("{} fields, expected at least 10", f.len()));
    }
    let (addr, port) = f[1]
        .split_once(':')
        .ok_or_else(|| format!("local address {:?} has no ':'", f[1]))?;
    let port = u16::from_str_radix(port, 16).map_err(|e| format!("port {port:?}: {e}"))?;
    let state = u8::from_str_radix(f[3], 16).map_err(|e| format!("state {:?}: {e}", f[3]))?;
    let inode = f[9].parse().map_err(|e| format!("inode {:?}: {e}", f[9]))?;
    Ok(Socket {
        local: address(addr)?,
        port,
        state,
        inode,
    })
}

/// 8 or 32 hex digits: one or four native-order words of network-order bytes.
fn address(hex: &str) -> Result<IpAddr, String> {
    let word = |s: &str| {
        u32::from_str_radix(s, 16)
            .map(u32::to_ne_bytes)
            .map_err(|e| format!("address {hex:?}: {e}"))
    };
    match hex.len() {
        8 => Ok(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut b = [0u8; 16];
            for k in 0..4 {
                b[k * 4..k * 4 + 4].copy_from_slice(&word(&hex[k * 8..k * 8 + 8])?);
            }
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        n => Err(format!(
            "address {hex:?} has {n} hex digits, expected 8 or 32"
        )),
    }
}

/// The inode of a `/proc/PID/fd/N` link target, `socket:[INODE]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    // Captured by tests/fixtures/doctor/make-fixtures on a little-endian host.
    const UDP: &str = include_str!("../../../../tests/fixtures/doctor/proc-net-udp");
    const UDP6: &str = include_str!("../../../../tests/fixtures/doctor/proc-net-udp6");
    const TCP: &str = include_str!("../../../../tests/fixtures/doctor/proc-net-tcp");

    #[test]
    fn reads_the_captured_tables() {
        let udp = parse(UDP.as_bytes(), "udp").unwrap();
        let got: Vec<(IpAddr, u16)> = udp.iter().map(|s| (s.local, s.port)).collect();
        assert_eq!(
            got,
            [
                ("0.0.0.0".parse().unwrap(), 67),
                ("10.9.0.1".parse().unwrap(), 69)
            ]
        );
        assert!(udp.iter().all(|s| s.inode > 0 && s.state == 7));
        let udp6 = parse(UDP6.as_bytes(), "udp6").unwrap();
        assert_eq!(udp6.len(), 1);
        assert_eq!((udp6[0].local, udp6[0].port), ("::".parse().unwrap(), 4011));
        let tcp = parse(TCP.as_bytes(), "tcp").unwrap();
        let listening: Vec<_> = tcp.iter().filter(|s| s.state == LISTEN).collect();
        assert_eq!(listening.len(), 1);
        assert_eq!(listening[0].port, 8080);
        // The accepted end of the loopback connection has its own line, not listening.
        assert_eq!(tcp.iter().filter(|s| s.port == 8080).count(), 2);
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let text = format!("{UDP}  9: 0100007F 00000000:0000 07 0 0 0 0 0 1\n");
        let err = parse(text.as_bytes(), "/proc/net/udp")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/proc/net/udp:4: local address"), "{err}");
        assert_eq!(socket_inode("socket:[33830986]"), Some(33830986));
        assert_eq!(socket_inode("pipe:[5]"), None);
    }
}
