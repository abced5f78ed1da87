//! How far a compressed input may unpack: its declared size is checked before the first byte is
//! written, and the bytes written and the free space of the disk receiving them while it is
//! written. Every decompressed copy (a cached base, a scratch copy of an archive or an image)
//! goes through [`UnpackLimit::copy`], so a small download that declares or yields 100 GiB stops
//! with the input's name instead of filling the disk, and zeros stay holes.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::blockio::sparse::copy_sparse;

/// The cap when nothing better is known (an `auto`-sized image, `mkfs --size auto`).
pub const DEFAULT_MAX: u64 = 256 << 30;
/// The smallest cap derived from an image size: bases carry free space of their own.
const FLOOR: u64 = 16 << 30;
/// Stop when the receiving disk has less than this left.
const FREE_MARGIN: u64 = 1 << 30;
/// How often (in decompressed bytes) the free space is looked at.
const FREE_CHECK_EVERY: u64 = 256 << 20;

/// The most bytes one compressed input may decompress to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimit {
    pub max: u64,
}

impl Default for UnpackLimit {
    fn default() -> Self {
        UnpackLimit { max: DEFAULT_MAX }
    }
}

/// A decompression stopped (or refused to start) at a limit.
#[derive(Debug, thiserror::Error)]
#[error(
    "decompressing {}: {what}: {why}\n  help: check that this is the input you meant (a small file that unpacks to more than the disk can hold is a decompression bomb); for a larger input raise the limit (`base.max-unpacked` in the profile, `--max-unpacked` for mkfs) or free space on that disk",
    path.display()
)]
pub struct TooLarge {
    pub path: PathBuf,
    /// What was seen: "it declares N bytes" or "stopped after N bytes".
    pub what: String,
    pub why: String,
}

impl UnpackLimit {
    /// The cap for a build whose image is `image_size` bytes (`None`: `auto`): a base's files
    /// must fit the image, so four times its size, at least 16 GiB, leaves room for a base's
    /// own free space without letting a bomb run for long.
    pub fn for_image(image_size: Option<u64>) -> Self {
        match image_size {
            Some(s) => UnpackLimit {
                max: s.saturating_mul(4).max(FLOOR),
            },
            None => UnpackLimit::default(),
        }
    }

    /// Decompresses `input` (named `path` in messages) into `out`, a file on the disk holding
    /// `dir`, with holes for zeros; `declared` is the size the input's own index states, if it
    /// has one. `on_data` sees every decompressed byte. Returns the length written.
    pub fn copy(
        &self,
        path: &Path,
        declared: Option<u64>,
        input: &mut dyn Read,
        out: &mut File,
        dir: &Path,
        on_data: impl FnMut(&[u8]),
    ) -> Result<u64, CopyError> {
        if let Some(d) = declared.filter(|&d| d > self.max) {
            return Err(CopyError::TooLarge(
                self.stop(path, format!("it declares {d} bytes")),
            ));
        }
        let mut checked = 0u64;
        let guard = |written: u64| -> io::Result<()> {
            if written > self.max {
                let what = format!("stopped after {} bytes", written.min(self.max));
                return Err(io::Error::other(self.stop(path, what)));
            }
            if written - checked >= FREE_CHECK_EVERY {
                checked = written;
                let free = free_bytes(dir)?;
                if free < FREE_MARGIN {
                    return Err(io::Error::other(TooLarge {
                        path: path.to_path_buf(),
                        what: format!("stopped after {written} bytes"),
                        why: format!(
                            "the disk holding {} has only {free} bytes left",
                            dir.display()
                        ),
                    }));
                }
            }
            Ok(())
        };
        copy_sparse(input, out, on_data, guard).map_err(|e| {
            match e.get_ref().is_some_and(|i| i.is::<TooLarge>()) {
                true => CopyError::TooLarge(*e.into_inner().unwrap().downcast().unwrap()),
                false => CopyError::Io(e),
            }
        })
    }

    fn stop(&self, path: &Path, what: String) -> TooLarge {
        TooLarge {
            path: path.to_path_buf(),
            what,
            why: format!("a decompressed input may be at most {} bytes", self.max),
        }
    }
}

/// Why [`UnpackLimit::copy`] failed: a limit, or reading/writing (a truncated or corrupt input).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    TooLarge(TooLarge),
    #[error(transparent)]
    Io(io::Error),
}

fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_follows_the_image_size() {
        assert_eq!(UnpackLimit::for_image(None).max, DEFAULT_MAX);
        assert_eq!(UnpackLimit::for_image(Some(1 << 30)).max, FLOOR);
        assert_eq!(UnpackLimit::for_image(Some(32 << 30)).max, 128 << 30);
        assert_eq!(UnpackLimit::for_image(Some(u64::MAX)).max, u64::MAX);
    }

    #[test]
    fn declared_and_actual_sizes_are_both_capped() {
        let d = tempfile::tempdir().unwrap();
        let lim = UnpackLimit { max: 1 << 20 };
        let p = Path::new("bomb.xz");
        let mut out = tempfile::tempfile_in(d.path()).unwrap();
        let data = vec![7u8; 2 << 20];
        let e = lim
            .copy(p, Some(5 << 30), &mut &data[..], &mut out, d.path(), |_| {})
            .unwrap_err();
        assert!(e.to_string().contains("declares 5368709120 bytes"), "{e}");
        assert_eq!(out.metadata().unwrap().len(), 0);
        let e = lim
            .copy(p, None, &mut &data[..], &mut out, d.path(), |_| {})
            .unwrap_err();
        assert!(matches!(e, CopyError::TooLarge(_)), "{e}");
        assert!(
            e.to_string()
                .contains("bomb.xz: stopped after 1048576 bytes"),
            "{e}"
        );
        let mut out = tempfile::tempfile_in(d.path()).unwrap();
        let n = lim
            .copy(
                p,
                Some(1 << 20),
                &mut &data[..1 << 20],
                &mut out,
                d.path(),
                |_| {},
            )
            .unwrap();
        assert_eq!(n, 1 << 20);
    }
}
