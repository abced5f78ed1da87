//! Carrying out a [`Plan`]: read the image forward once, write the target, record what every
//! written range must read back as; then verify by reading it all back.
//!
//! Generic over the image (any forward reader: a file, an xz decoder) and the target (any
//! `Write + Seek`), so the whole flash runs in unit tests on byte vectors. Order on the target:
//! the first MiB and the end of the target are zeroed and synced first (the old partition table
//! is gone before anything else changes); then everything above the first MiB ascending; the
//! first MiB (and a relocated backup GPT) only in [`finish`], after the body has been verified.

use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use crate::blockio::region::{Ranges, Sink};
use crate::flash::plan::{Boot, HEAD, Mapped, Plan};
use crate::progress::Progress;

/// Large writes: 4 MiB at a time.
pub const CHUNK: usize = 4 << 20;
/// Dirty data is pushed to the device every this many bytes, so an interrupt or the final sync
/// does not wait minutes on a slow card (bmaptool's lesson).
const SYNC_EVERY: u64 = 64 << 20;

/// A target: bytes in, and a way to make them durable.
pub trait Target: Write + Seek {
    fn sync(&mut self) -> io::Result<()>;
}

impl Target for std::fs::File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Target for io::Cursor<Vec<u8>> {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: Target + ?Sized> Target for &mut T {
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
}

/// What a range of the target must read back as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub start: u64,
    pub end: u64,
    pub expect: Expect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// SHA-256 hex of the bytes (the block map's, or of what we wrote).
    Sha256(String),
    Zeros,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlashError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the image does not match its block map at range {index} (bytes {start}..{end}): the image or its .bmap is damaged or they do not belong together"
    )]
    SourceMismatch { index: usize, start: u64, end: u64 },
    #[error(
        "the image ends early (at or before byte {got}); it should be {want} bytes: a truncated download or a damaged file"
    )]
    Truncated { got: u64, want: u64 },
    #[error(
        "verification failed: bytes {start}..{end} of the target read back differently from what was written (a failing or fake card, or a bad reader)"
    )]
    Mismatch { start: u64, end: u64 },
    #[error("rebuilding the boot partition with the seed: {0}")]
    Boot(String),
    #[error("moving the backup GPT to the end of the target: {0}")]
    Gpt(#[from] crate::disk::gpt::GptError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FlashError {
    let what = what.into();
    move |source| FlashError::Io { what, source }
}

/// The image, read forward only.
pub trait Forward {
    /// Fills `buf` from image offset `at`, which never goes backwards.
    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Bytes the image holds in all (reads to the end of a stream).
    fn total(&mut self) -> io::Result<u64>;
}

/// A seekable image (a `.img` file).
pub struct Seekable<R>(pub R);

impl<R: Read + Seek> Forward for Seekable<R> {
    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.seek(SeekFrom::Start(at))?;
        self.0.read_exact(buf)
    }
    fn total(&mut self) -> io::Result<u64> {
        self.0.seek(SeekFrom::End(0))
    }
}

/// A streamed image (an xz decoder): holes are read and dropped.
pub struct Streamed<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Streamed<R> {
    pub fn new(inner: R) -> Self {
        Streamed { inner, pos: 0 }
    }
    fn skip_to(&mut self, at: u64) -> io::Result<u64> {
        let n = io::copy(&mut (&mut self.inner).take(at - self.pos), &mut io::sink())?;
        self.pos += n;
        Ok(n)
    }
}

impl<R: Read> Forward for Streamed<R> {
    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        if at < self.pos {
            return Err(io::Error::other(
                "a streamed image cannot be read backwards",
            ));
        }
        self.skip_to(at)?;
        if self.pos < at {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn total(&mut self) -> io::Result<u64> {
        self.skip_to(u64::MAX)?;
        Ok(self.pos)
    }
}

/// How a write is checked later.
#[derive(Clone, Copy)]
enum Record {
    /// By the SHA-256 of what was written.
    Hash,
    Zeros,
    /// By a check the caller adds for a larger range.
    Later,
}

/// Writes into the target, recording a check per write and reporting progress.
struct Writer<'a, T: Target> {
    dev: &'a mut T,
    checks: Vec<Check>,
    written: u64,
    unsynced: u64,
    step: crate::progress::Step,
}

impl<'a, T: Target> Writer<'a, T> {
    fn new(dev: &'a mut T, step: crate::progress::Step) -> Self {
        Writer {
            dev,
            checks: Vec::new(),
            written: 0,
            unsynced: 0,
            step,
        }
    }

    fn put(&mut self, at: u64, data: &[u8], record: Record) -> Result<(), FlashError> {
        let what = || format!("writing {} bytes at offset {at} of the target", data.len());
        self.dev.seek(SeekFrom::Start(at)).map_err(io_err(what()))?;
        self.dev.write_all(data).map_err(io_err(what()))?;
        let expect = match record {
            Record::Hash => Some(Expect::Sha256(hex::encode(Sha256::digest(data)))),
            Record::Zeros => Some(Expect::Zeros),
            // The caller records one check for the whole range.
            Record::Later => None,
        };
        if let Some(expect) = expect {
            self.checks.push(Check {
                start: at,
                end: at + data.len() as u64,
                expect,
            });
        }
        self.written += data.len() as u64;
        self.unsynced += data.len() as u64;
        self.step.inc(data.len() as u64);
        if self.unsynced >= SYNC_EVERY {
            self.dev.sync().map_err(io_err("syncing the target"))?;
            self.unsynced = 0;
        }
        Ok(())
    }

    fn zeros(&mut self, start: u64, end: u64) -> Result<(), FlashError> {
        let z = vec![0u8; CHUNK.min((end - start) as usize)];
        let mut at = start;
        while at < end {
            let n = (end - at).min(CHUNK as u64) as usize;
            self.put(at, &z[..n], Record::Zeros)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// The FAT writer's output, streamed into the target inside the boot partition.
struct BootSink<'w, 'a, T: Target> {
    w: &'w mut Writer<'a, T>,
    boot: Boot,
    written: Ranges,
    error: Option<FlashError>,
}

impl<T: Target> Sink for BootSink<'_, '_, T> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let at = self.boot.start + offset;
        if at + data.len() as u64 > self.boot.end {
            return Err(io::Error::other(
                "the boot filesystem outgrew its partition",
            ));
        }
        self.w.put(at, data, Record::Hash).map_err(|e| {
            let msg = e.to_string();
            self.error = Some(e);
            io::Error::other(msg)
        })?;
        self.written.add(offset, offset + data.len() as u64);
        Ok(())
    }
}

/// Rebuilds the boot partition into the sink it is given (offsets relative to the partition).
pub type BootFn<'a> = dyn FnMut(&mut dyn Sink) -> Result<(), String> + 'a;

/// What the write pass leaves for [`finish`] and [`verify`].
#[derive(Debug)]
pub struct Written {
    pub checks: Vec<Check>,
    /// The image's first bytes, patched for the target (GPT relocated).
    pub head: Vec<u8>,
    /// A relocated backup GPT: where it goes and its bytes.
    pub gpt_tail: Option<(u64, Vec<u8>)>,
    pub bytes: u64,
}

/// Zeroes the first MiB and the end of the target and syncs: from here on the target has no
/// partition table until [`finish`] writes it.
pub fn wipe_table<T: Target>(plan: &Plan, dev: &mut T) -> Result<(), FlashError> {
    let mut w = Writer::new(dev, Progress::quiet().step("wipe", 0));
    w.zeros(0, HEAD.min(plan.target_size))?;
    if let Some((s, e)) = plan.tail_wipe {
        w.zeros(s, e)?;
    }
    w.dev.sync().map_err(io_err("syncing the target"))
}

/// Runs the write pass: every mapped range read once (and checked against the block map), the
/// holes of the plan zeroed, the boot partition rebuilt by `boot`.
pub fn write<F: Forward, T: Target>(
    plan: &Plan,
    image: &mut F,
    dev: &mut T,
    mut boot: Option<&mut BootFn<'_>>,
    progress: &Progress,
) -> Result<Written, FlashError> {
    let mut w = Writer::new(dev, progress.step("write", plan.write_bytes()));
    let mut head = vec![0u8; plan.head as usize];
    let mut zeros = plan.zeros.iter().copied().peekable();
    let mut boot_done = plan.boot.is_none();
    let mut buf = vec![0u8; CHUNK];
    for (index, m) in plan.mapped.iter().enumerate() {
        while let Some((s, e)) = zeros.next_if(|z| z.0 < m.start) {
            w.zeros(s, e)?;
        }
        if let Some(b) = plan.boot.filter(|b| !boot_done && b.start <= m.start) {
            rebuild_boot(&mut w, b, boot.as_deref_mut())?;
            boot_done = true;
        }
        copy_range(&mut w, plan, index, m, image, &mut head, &mut buf)?;
    }
    for (s, e) in zeros {
        w.zeros(s, e)?;
    }
    if let Some(b) = plan.boot.filter(|_| !boot_done) {
        rebuild_boot(&mut w, b, boot)?;
    }
    let got = image.total().map_err(io_err("reading the image"))?;
    if got != plan.image_size {
        return Err(FlashError::Truncated {
            got,
            want: plan.image_size,
        });
    }
    w.dev.sync().map_err(io_err("syncing the target"))?;
    let gpt_tail = relocate(plan, &mut head)?;
    Ok(Written {
        checks: w.checks,
        head,
        gpt_tail,
        bytes: w.written,
    })
}

fn relocate(plan: &Plan, head: &mut [u8]) -> Result<Option<(u64, Vec<u8>)>, FlashError> {
    if !plan.gpt || plan.target_size == plan.image_size {
        return Ok(None);
    }
    Ok(Some(crate::disk::gpt::relocate(
        head,
        plan.target_size / 512,
    )?))
}

/// Reads one mapped range in chunks, hashing it for the block map; each chunk goes into the
/// held-back head, nowhere (inside a rebuilt boot partition), or to the target.
fn copy_range<F: Forward, T: Target>(
    w: &mut Writer<'_, T>,
    plan: &Plan,
    index: usize,
    m: &Mapped,
    image: &mut F,
    head: &mut [u8],
    buf: &mut [u8],
) -> Result<(), FlashError> {
    let in_boot = |at: u64| plan.boot.is_some_and(|b| at >= b.start && at < b.end);
    // A range written as one piece is checked with the block map's own checksum.
    let whole =
        m.sha256.is_some() && m.start >= plan.head && !in_boot(m.start) && !in_boot(m.end - 1);
    let mut hash = Sha256::new();
    let mut at = m.start;
    while at < m.end {
        let mut n = ((m.end - at) as usize).min(buf.len());
        // Never let a chunk straddle the head or a boot-partition boundary.
        for edge in [
            Some(plan.head),
            plan.boot.map(|b| b.start),
            plan.boot.map(|b| b.end),
        ] {
            if let Some(e) = edge.filter(|&e| e > at && e < at + n as u64) {
                n = (e - at) as usize;
            }
        }
        let chunk = &mut buf[..n];
        image.read_at(at, chunk).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FlashError::Truncated {
                got: at,
                want: plan.image_size,
            },
            _ => io_err(format!("reading the image at offset {at}"))(e),
        })?;
        hash.update(&*chunk);
        if at < plan.head {
            head[at as usize..at as usize + n].copy_from_slice(chunk);
        } else if !in_boot(at) {
            w.put(at, chunk, if whole { Record::Later } else { Record::Hash })?;
        }
        at += n as u64;
    }
    let sum = hex::encode(hash.finalize());
    match &m.sha256 {
        Some(want) if *want != sum => Err(FlashError::SourceMismatch {
            index,
            start: m.start,
            end: m.end,
        }),
        Some(want) if whole => {
            w.checks.push(Check {
                start: m.start,
                end: m.end,
                expect: Expect::Sha256(want.clone()),
            });
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Streams the rebuilt boot filesystem into its partition, then zeroes the holes it left in the
/// partition's metadata zone.
fn rebuild_boot<T: Target>(
    w: &mut Writer<'_, T>,
    b: Boot,
    boot: Option<&mut BootFn<'_>>,
) -> Result<(), FlashError> {
    let f = boot.ok_or_else(|| FlashError::Boot("no boot partition writer".into()))?;
    let mut sink = BootSink {
        w,
        boot: b,
        written: Ranges::default(),
        error: None,
    };
    if let Err(e) = f(&mut sink) {
        return Err(sink.error.take().unwrap_or(FlashError::Boot(e)));
    }
    let written = sink.written.shifted(b.start);
    let tail = (b.end.saturating_sub(crate::flash::plan::EDGE_ZONE)).max(b.zone_end);
    zero_holes(w, (b.start, b.zone_end), &written)?;
    zero_holes(w, (tail, b.end), &written)
}

/// Zeroes `[zone.0, zone.1)` minus the `written` ranges.
fn zero_holes<T: Target>(
    w: &mut Writer<'_, T>,
    zone: (u64, u64),
    written: &Ranges,
) -> Result<(), FlashError> {
    let (mut at, end) = zone;
    for (s, e) in written.iter().chain([(end, end)]) {
        if e <= at {
            continue;
        }
        let stop = s.min(end);
        if at < stop {
            w.zeros(at, stop)?;
        }
        at = at.max(e);
        if at >= end {
            break;
        }
    }
    Ok(())
}

/// Writes the relocated backup GPT, then the first MiB, and syncs. Returns their checks.
pub fn finish<T: Target>(written: &Written, dev: &mut T) -> Result<Vec<Check>, FlashError> {
    let mut w = Writer::new(dev, Progress::quiet().step("table", 0));
    if let Some((at, bytes)) = &written.gpt_tail {
        w.put(*at, bytes, Record::Hash)?;
    }
    if !written.head.is_empty() {
        w.put(0, &written.head, Record::Hash)?;
    }
    w.dev.sync().map_err(io_err("syncing the target"))?;
    Ok(w.checks)
}

/// Reads every checked range back and compares. Returns the bytes read.
pub fn verify<R: Read + Seek>(
    dev: &mut R,
    checks: &[Check],
    progress: &Progress,
) -> Result<u64, FlashError> {
    let total: u64 = checks.iter().map(|c| c.end - c.start).sum();
    let mut step = progress.step("verify", total);
    let mut buf = vec![0u8; CHUNK];
    for c in checks {
        let what = || format!("reading back bytes {}..{} of the target", c.start, c.end);
        dev.seek(SeekFrom::Start(c.start)).map_err(io_err(what()))?;
        let mut hash = Sha256::new();
        let mut zeros = true;
        let mut at = c.start;
        while at < c.end {
            let n = ((c.end - at) as usize).min(buf.len());
            dev.read_exact(&mut buf[..n]).map_err(io_err(what()))?;
            match c.expect {
                Expect::Zeros => zeros &= buf[..n].iter().all(|&b| b == 0),
                Expect::Sha256(_) => hash.update(&buf[..n]),
            }
            at += n as u64;
            step.inc(n as u64);
        }
        let ok = match &c.expect {
            Expect::Zeros => zeros,
            Expect::Sha256(want) => *want == hex::encode(hash.finalize()),
        };
        if !ok {
            return Err(FlashError::Mismatch {
                start: c.start,
                end: c.end,
            });
        }
    }
    Ok(total)
}

#[cfg(test)]
#[path = "write_tests.rs"]
mod tests;
