//! PAX sparse files, format 1.0 (what bsdtar and `tar --sparse --sparse-version=1.0` write): the
//! member's data starts with a map (decimal lines: the number of data regions, then offset and
//! length of each, padded to 512 bytes), followed by the regions' bytes back to back. The real
//! name and size are in `GNU.sparse.name` / `GNU.sparse.realsize`. Read into a content whose holes
//! the ext4 writer keeps as holes. Formats 0.0 and 0.1 are refused by name.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use crate::tree::{Content, ContentReader, Source};

/// Most data regions accepted in one map.
const MAX_REGIONS: u64 = 1 << 20;

/// The `GNU.sparse.*` PAX keys of one member.
#[derive(Debug, Default)]
pub struct Keys {
    major: Option<Vec<u8>>,
    minor: Option<Vec<u8>>,
    name: Option<Vec<u8>>,
    realsize: Option<Vec<u8>>,
    old: bool,
}

impl Keys {
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let v = Some(value.to_vec());
        match key {
            b"GNU.sparse.major" => self.major = v,
            b"GNU.sparse.minor" => self.minor = v,
            b"GNU.sparse.name" => self.name = v,
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => self.realsize = v,
            b"GNU.sparse.map"
            | b"GNU.sparse.offset"
            | b"GNU.sparse.numbytes"
            | b"GNU.sparse.numblocks" => self.old = true,
            _ => return Err(format!("unknown PAX key {}", String::from_utf8_lossy(key))),
        }
        Ok(())
    }

    /// The sparse header, if the member is sparse.
    pub fn header(self) -> Result<Option<SparseHeader>, String> {
        if self.old {
            return Err(
                "PAX sparse format 0.x is not supported; recreate the archive with \
                 `tar --sparse-version=1.0`, or without sparse files"
                    .into(),
            );
        }
        let (Some(major), Some(name), Some(size)) = (self.major, self.name, self.realsize) else {
            return Ok(None);
        };
        if major != b"1" || self.minor.as_deref().is_some_and(|m| m != b"0") {
            return Err(format!(
                "PAX sparse format {}.x is not supported (only 1.0)",
                String::from_utf8_lossy(&major)
            ));
        }
        let realsize = std::str::from_utf8(&size)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("malformed GNU.sparse.realsize")?;
        Ok(Some(SparseHeader { name, realsize }))
    }
}

#[derive(Debug)]
pub struct SparseHeader {
    pub name: Vec<u8>,
    pub realsize: u64,
}

/// Reads the map at the start of the member's data (`stored` bytes, starting where `at` points)
/// and returns the file's content.
pub fn content(
    data: &mut impl Read,
    h: &SparseHeader,
    stored: u64,
    at: Source,
) -> Result<Content, String> {
    let Source::HostFile { path, offset } = at else {
        return Err("sparse members can be read only from tar files".into());
    };
    let (map, map_len) = read_map(data, stored)?;
    let mut end = 0;
    let mut total = 0u64;
    for &(o, l) in &map {
        if o < end || o.checked_add(l).is_none_or(|e| e > h.realsize) {
            return Err(format!(
                "sparse map region {o}+{l} is out of order or past the size {}",
                h.realsize
            ));
        }
        end = o + l;
        total += l;
    }
    if map_len + total > stored {
        return Err(format!(
            "the sparse map claims {total} bytes of data but the member holds {}",
            stored - map_len
        ));
    }
    Ok(Content {
        len: h.realsize,
        source: Source::Reader(Arc::new(Sparse {
            path,
            offset: offset + map_len,
            map,
            len: h.realsize,
        })),
    })
}

/// The map's regions and its length in the member (whole 512-byte blocks).
fn read_map(data: &mut impl Read, stored: u64) -> Result<(Vec<(u64, u64)>, u64), String> {
    let mut read = 0u64;
    let mut line = || -> Result<u64, String> {
        let mut digits = Vec::new();
        loop {
            let mut b = [0u8; 1];
            data.read_exact(&mut b)
                .map_err(|e| format!("reading the sparse map: {e}"))?;
            read += 1;
            if read > stored || digits.len() > 20 {
                return Err("the sparse map is malformed".into());
            }
            if b[0] == b'\n' {
                break;
            }
            digits.push(b[0]);
        }
        std::str::from_utf8(&digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "the sparse map holds a non-number".to_string())
    };
    let n = line()?;
    if n > MAX_REGIONS {
        return Err(format!("the sparse map lists {n} regions"));
    }
    let mut map = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let o = line()?;
        let l = line()?;
        map.push((o, l));
    }
    Ok((map, read.next_multiple_of(512)))
}

/// A sparse member's content: zeros between the regions, the regions' bytes from the archive.
#[derive(Debug)]
struct Sparse {
    path: PathBuf,
    /// Where the first region's bytes are in the archive.
    offset: u64,
    map: Vec<(u64, u64)>,
    len: u64,
}

impl ContentReader for Sparse {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        let mut f = File::open(&self.path).map_err(|e| {
            io::Error::new(e.kind(), format!("opening {}: {e}", self.path.display()))
        })?;
        f.seek(SeekFrom::Start(self.offset))?;
        Ok(Box::new(SparseReader {
            file: f,
            map: &self.map,
            len: self.len,
            pos: 0,
        }))
    }

    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        Some(self.map.iter().map(|&(o, l)| (o, o + l)).collect())
    }
}

struct SparseReader<'a> {
    file: File,
    map: &'a [(u64, u64)],
    len: u64,
    pos: u64,
}

impl Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(o, l)) = self.map.first()
            && o + l <= self.pos
        {
            self.map = &self.map[1..];
        }
        let left = (self.len - self.pos).min(buf.len() as u64);
        if left == 0 {
            return Ok(0);
        }
        let n = match self.map.first() {
            // Inside a region: its bytes come next in the archive.
            Some(&(o, l)) if o <= self.pos => {
                let n = (o + l - self.pos).min(left) as usize;
                self.file.read_exact(&mut buf[..n])?;
                n
            }
            next => {
                let hole_end = next.map_or(self.len, |&(o, _)| o);
                let n = (hole_end - self.pos).min(left) as usize;
                buf[..n].fill(0);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parse_and_refuse_garbage() {
        let mut m = b"2\n0\n4\n1000\n3\n".to_vec();
        m.resize(512, 0);
        let (map, len) = read_map(&mut &m[..], 4096).unwrap();
        assert_eq!((map, len), (vec![(0, 4), (1000, 3)], 512));
        assert!(read_map(&mut &b"x\n"[..], 512).is_err());
        assert!(read_map(&mut &b"99999999999\n"[..], 512).is_err());
        assert!(read_map(&mut &b"1\n5"[..], 512).is_err());
    }
}
