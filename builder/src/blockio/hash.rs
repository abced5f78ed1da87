//! SHA-256 in lowercase hex over readers: the one helper set for files, ranges and streams.

use std::io::{self, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

const BUF: usize = 1 << 20;

/// SHA-256 of everything `r` yields.
pub fn sha256_reader<R: Read + ?Sized>(r: &mut R) -> io::Result<String> {
    sha256_counted(r, u64::MAX, |_| {}).map(|(hex, _)| hex)
}

/// SHA-256 of exactly `len` bytes from `offset`; `on_bytes` sees each chunk's size (progress).
pub fn sha256_range<R: Read + Seek + ?Sized>(
    r: &mut R,
    offset: u64,
    len: u64,
    on_bytes: impl FnMut(u64),
) -> io::Result<String> {
    r.seek(SeekFrom::Start(offset))?;
    let (hex, got) = sha256_counted(r, len, on_bytes)?;
    if got != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("expected {len} bytes from offset {offset}, got {got}"),
        ));
    }
    Ok(hex)
}

/// SHA-256 of a whole file.
pub fn sha256_path(path: &std::path::Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    sha256_reader(&mut f)
}

/// Hashes up to `limit` bytes; returns the digest and how many bytes there were.
fn sha256_counted<R: Read + ?Sized>(
    r: &mut R,
    limit: u64,
    mut on_bytes: impl FnMut(u64),
) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    while total < limit {
        let want = (limit - total).min(BUF as u64) as usize;
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        on_bytes(n as u64);
        total += n as u64;
    }
    Ok((hex::encode(h.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_digests() {
        assert_eq!(sha256_reader(&mut &b"abc"[..]).unwrap(), ABC);
        let mut c = io::Cursor::new(b"xxabcyy".to_vec());
        assert_eq!(sha256_range(&mut c, 2, 3, |_| {}).unwrap(), ABC);
        assert!(sha256_range(&mut c, 5, 3, |_| {}).is_err());
    }
}
