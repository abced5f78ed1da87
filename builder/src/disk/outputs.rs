//! Every file around a disk image: raw `.img`, `.img.xz`, `.img.zst`, `.bmap`, `.qcow2`, `manifest.json`,
//! `SHA256SUMS` — written under temporary names and renamed into place only when all are
//! complete, `SHA256SUMS` last, so an interrupted build never leaves a file that looks finished
//! and never leaves a `SHA256SUMS` vouching for a mix of old and new files.
//!
//! The image is read once: the same pass hashes it, compresses it (unit by unit, in parallel,
//! into xz blocks and zstd frames: [`blocks`]) and hashes each mapped block range for the block
//! map. Holes are not read at all: their zeros come from memory, and an all-zero unit is
//! compressed once per pass.
//!
//! qcow2 is converted by `qemu-img convert` (qemu-utils) rather than written by us: it is on
//! every machine that runs the VMs, its output is deterministic for a given input, and
//! `qemu-img check` judges it anyway. Without `qemu-img` a qcow2 request is a clear error.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::blockio::region::Ranges;
use crate::disk::blocks::{self, BlockStore, Encoders};
use crate::disk::bmap::{self, BlockMap};
use crate::disk::image::{self, ImageReport};
use crate::disk::layout::Layout;
use crate::disk::manifest::{self, ImageEntry, InputRecord, Manifest};
use crate::disk::xz::XzSettings;
use crate::disk::xzstream::StreamWriter;
use crate::disk::zst::ZstSettings;
use crate::ids::ImageSeed;
use crate::output::{OutputDir, PendingFile};
use crate::progress::Progress;

pub const SUMS_FILE: &str = "SHA256SUMS";

/// Which image files to write (manifest.json and SHA256SUMS are always written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    pub raw: bool,
    pub xz: bool,
    /// `.img.zst` (zstd frames, one per xz block's worth, fixed level).
    pub zst: bool,
    pub bmap: bool,
    pub qcow2: bool,
}

impl Default for Formats {
    fn default() -> Self {
        Formats {
            raw: false,
            xz: true,
            zst: false,
            bmap: true,
            qcow2: false,
        }
    }
}

/// What to write and what to record.
#[derive(Debug, Clone)]
pub struct OutputRequest<'a> {
    /// Base file name: `<name>.img`, `<name>.img.xz`, …
    pub name: &'a str,
    pub formats: Formats,
    pub xz: XzSettings,
    /// Compressed xz blocks and zstd frames of earlier builds, reused when their input is the
    /// same.
    pub blocks: Option<&'a dyn BlockStore>,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// The resolved profile (redacted again before it is written).
    pub profile: &'a serde_json::Value,
    pub inputs: &'a [InputRecord],
}

/// The files written (final paths) and the assembly report.
#[derive(Debug)]
pub struct BuiltOutputs {
    pub files: Vec<PathBuf>,
    pub report: ImageReport,
    pub image_sha256: String,
}

/// Assembles the image of `layout` and writes every requested output into `out`.
pub fn build_outputs(
    out: &OutputDir,
    layout: &Layout,
    seed: &ImageSeed,
    req: &OutputRequest<'_>,
    progress: &Progress,
) -> Result<BuiltOutputs> {
    let img_name = format!("{}.img", req.name);
    let mut raw = out.create(&img_name)?;
    let report = image::write_raw(layout, seed, req.epoch, raw.file(), progress)
        .with_context(|| format!("assembling {img_name}"))?;
    write_outputs(out, raw, report, req, progress)
}

/// Writes every output around an assembled raw image (`raw`, not yet committed, as
/// [`image::write_raw`] left it), then commits them all.
pub fn write_outputs(
    out: &OutputDir,
    mut raw: PendingFile,
    report: ImageReport,
    req: &OutputRequest<'_>,
    progress: &Progress,
) -> Result<BuiltOutputs> {
    let img_name = format!("{}.img", req.name);
    let mut pending: Vec<(String, PendingFile)> = Vec::new();

    let mut xz_file = req
        .formats
        .xz
        .then(|| out.create(&format!("{img_name}.xz")))
        .transpose()?;
    let mut zst_file = req
        .formats
        .zst
        .then(|| out.create(&format!("{img_name}.zst")))
        .transpose()?;
    let (image_sha256, ranges) = {
        let compressed = Compressed {
            xz: xz_file.as_mut().map(|p| io::BufWriter::new(p.file())),
            zst: zst_file.as_mut().map(|p| io::BufWriter::new(p.file())),
            xz_settings: &req.xz,
            zst_settings: ZstSettings::default(),
            blocks: req.blocks,
        };
        scan(
            raw.file(),
            report.size,
            &report.written,
            compressed,
            progress,
        )
        .with_context(|| format!("reading back {img_name}"))?
    };
    for (ext, f) in [("xz", xz_file), ("zst", zst_file)] {
        if let Some(f) = f {
            pending.push((format!("{img_name}.{ext}"), f));
        }
    }

    if req.formats.bmap {
        let name = format!("{img_name}.bmap");
        let mut f = out.create(&name)?;
        let map = BlockMap {
            image_size: report.size,
            block_size: bmap::BLOCK_SIZE,
            ranges,
        };
        f.file()
            .write_all(map.to_xml().as_bytes())
            .with_context(|| format!("writing {name}"))?;
        pending.push((name, f));
    }

    if req.formats.qcow2 {
        let name = format!("{}.qcow2", req.name);
        let f = out.create(&name)?;
        qemu_img_convert(raw.tmp_path(), f.tmp_path())?;
        pending.push((name, f));
    }

    let manifest = Manifest::new(
        &report,
        ImageEntry {
            file: img_name.clone(),
            size: report.size,
            sha256: image_sha256.clone(),
        },
        req.epoch,
        req.profile,
        req.inputs,
    );
    let mut mf = out.create(manifest::FILE_NAME)?;
    mf.file()
        .write_all(manifest.to_json().as_bytes())
        .context("writing manifest.json")?;
    pending.push((manifest::FILE_NAME.to_string(), mf));

    // SHA256SUMS: every file written, by name, in byte order.
    let mut sums: Vec<(String, String)> = Vec::new();
    if req.formats.raw {
        sums.push((img_name.clone(), image_sha256.clone()));
    }
    for (name, f) in &mut pending {
        sums.push((name.clone(), sha256_file(f.file())?));
    }
    sums.sort();
    let text: String = sums.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    let mut sf = out.create(SUMS_FILE)?;
    sf.file()
        .write_all(text.as_bytes())
        .context("writing SHA256SUMS")?;

    // Everything is complete: first retire the old SHA256SUMS so it never vouches for a mix of
    // old and new files, then move the files into place, SHA256SUMS last.
    let old_sums = out.path().join(SUMS_FILE);
    if old_sums.exists() {
        std::fs::remove_file(&old_sums)
            .with_context(|| format!("removing the previous {}", old_sums.display()))?;
    }
    let mut files = Vec::new();
    if req.formats.raw {
        files.push(raw.commit(true)?);
    }
    for (_, f) in pending {
        files.push(f.commit(true)?);
    }
    files.push(sf.commit(true)?);
    Ok(BuiltOutputs {
        files,
        report,
        image_sha256,
    })
}

/// The compressed copies one pass over the image writes, and how.
pub struct Compressed<'a, W> {
    pub xz: Option<W>,
    pub zst: Option<W>,
    pub xz_settings: &'a XzSettings,
    pub zst_settings: ZstSettings,
    /// xz blocks and zstd frames of earlier builds.
    pub blocks: Option<&'a dyn BlockStore>,
}

/// One pass over a sparse image: its SHA-256, the per-range SHA-256 of the block map, and
/// (optionally) the `.xz` and `.zst` streams, in units of one xz block. Written ranges are read
/// from `image`; holes are zeros from memory, and a unit that holds only zeros is compressed
/// once and reused.
pub fn scan<R: Read + Seek, W: Write>(
    image: &mut R,
    size: u64,
    written: &Ranges,
    out: Compressed<'_, W>,
    progress: &Progress,
) -> io::Result<(String, Vec<bmap::MappedRange>)> {
    const CHUNK: u64 = 4 << 20;
    let mapped = bmap::mapped_blocks(written, bmap::BLOCK_SIZE);
    let enc = Encoders {
        xz: out.xz.is_some().then_some(out.xz_settings),
        zst: out.zst.is_some().then_some(&out.zst_settings),
        store: out.blocks,
        threads: out.xz_settings.threads,
    };
    let (unit, name) = match (&out.xz, &out.zst) {
        (None, None) => (CHUNK, "hash"),
        (Some(_), _) => (out.xz_settings.block_size, "xz"),
        (None, Some(_)) => (out.xz_settings.block_size, "zst"),
    };
    let step = progress.step(name, size);
    let mut units = Units::new(image, size, unit, &mapped, step)?;
    if enc.xz.is_none() && enc.zst.is_none() {
        while units.next_unit()?.is_some() {}
        return Ok(units.finish());
    }
    let mut xz = out.xz.map(StreamWriter::new).transpose()?;
    let mut zst = out.zst;
    let inputs = std::iter::from_fn(|| units.next_unit().transpose());
    blocks::compress_units(&enc, inputs, |u| {
        if let (Some(w), Some(b)) = (&mut xz, &u.xz) {
            w.push(b)?;
        }
        if let (Some(w), Some(f)) = (&mut zst, &u.zst) {
            w.write_all(&f.bytes)?;
        }
        Ok(())
    })?;
    if let Some(w) = xz {
        w.finish()?.flush()?;
    }
    if let Some(mut w) = zst {
        w.flush()?;
    }
    Ok(units.finish())
}

/// Reads a sparse image in units of one xz block, hashing the whole image and each mapped range
/// on the way.
struct Units<'a, R> {
    image: &'a mut R,
    size: u64,
    unit: u64,
    pos: u64,
    mapped: &'a [(u64, u64)],
    /// The next mapped range not yet hashed to its end, and its hash so far.
    next_range: usize,
    range_hash: Option<Sha256>,
    ranges: Vec<bmap::MappedRange>,
    whole: Sha256,
    zeros: Vec<u8>,
    step: crate::progress::Step,
}

impl<'a, R: Read + Seek> Units<'a, R> {
    fn new(
        image: &'a mut R,
        size: u64,
        unit: u64,
        mapped: &'a [(u64, u64)],
        step: crate::progress::Step,
    ) -> io::Result<Self> {
        let unit_len = usize::try_from(unit).map_err(|_| io::Error::other("xz block too large"))?;
        Ok(Units {
            image,
            size,
            unit,
            pos: 0,
            mapped,
            next_range: 0,
            range_hash: None,
            ranges: Vec::with_capacity(mapped.len()),
            whole: Sha256::new(),
            zeros: vec![0u8; unit_len],
            step,
        })
    }

    /// The next unit: zeros (nothing mapped in it, or all its bytes zero) or its data.
    fn next_unit(&mut self) -> io::Result<Option<blocks::Input>> {
        if self.pos >= self.size {
            return Ok(None);
        }
        let (start, end) = (self.pos, (self.pos + self.unit).min(self.size));
        let len = (end - start) as usize;
        let mut data: Option<Vec<u8>> = None;
        while let Some(&(first, last)) = self.mapped.get(self.next_range) {
            let bs = bmap::BLOCK_SIZE;
            let (rs, re) = (first * bs, ((last + 1) * bs).min(self.size));
            if rs >= end {
                break;
            }
            let (a, b) = (
                (rs.max(start) - start) as usize,
                (re.min(end) - start) as usize,
            );
            let buf = data.get_or_insert_with(|| vec![0u8; len]);
            self.image.seek(SeekFrom::Start(start + a as u64))?;
            self.image.read_exact(&mut buf[a..b])?;
            self.range_hash
                .get_or_insert_with(Sha256::new)
                .update(&buf[a..b]);
            if re > end {
                break;
            }
            let sum = self.range_hash.take().unwrap_or_default().finalize();
            self.ranges.push((first, last, hex::encode(sum)));
            self.next_range += 1;
        }
        let bytes = data.as_deref().unwrap_or(&self.zeros[..len]);
        self.whole.update(bytes);
        self.step.inc(len as u64);
        self.pos = end;
        Ok(Some(match data {
            Some(d) if d.iter().any(|&b| b != 0) => blocks::Input::Data(d),
            _ => blocks::Input::Zeros(len as u64),
        }))
    }

    /// The image's SHA-256 and the mapped ranges with theirs.
    fn finish(self) -> (String, Vec<bmap::MappedRange>) {
        (hex::encode(self.whole.finalize()), self.ranges)
    }
}

fn sha256_file(f: &mut File) -> Result<String> {
    f.flush()?;
    f.seek(SeekFrom::Start(0))?;
    Ok(crate::blockio::hash::sha256_reader(f)?)
}

fn qemu_img_convert(src: &Path, dst: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
        ])
        .arg(src)
        .arg(dst)
        .env("LC_ALL", "C")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "qcow2 output needs qemu-img, which is not installed (Debian/Ubuntu: apt install qemu-utils; \
             macOS: brew install qemu); or leave qcow2 out of the formats"
        ),
        Err(e) => return Err(e).context("running qemu-img"),
    };
    if !out.status.success() {
        bail!(
            "qemu-img convert failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
