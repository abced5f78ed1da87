//! Every file around a disk image: raw `.img`, `.img.xz`, `.bmap`, `.qcow2`, `manifest.json`,
//! `SHA256SUMS` — written under temporary names and renamed into place only when all are
//! complete, `SHA256SUMS` last, so an interrupted build never leaves a file that looks finished
//! and never leaves a `SHA256SUMS` vouching for a mix of old and new files.
//!
//! The image is read once: the same pass hashes it, compresses it and hashes each mapped block
//! range for the block map. Holes are not read at all: their zeros come from memory.
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
use crate::disk::bmap::{self, BlockMap};
use crate::disk::image::{self, ImageReport};
use crate::disk::layout::Layout;
use crate::disk::manifest::{self, ImageEntry, InputRecord, Manifest};
use crate::disk::xz::{self, XzSettings};
use crate::ids::ImageSeed;
use crate::output::{OutputDir, PendingFile};
use crate::progress::Progress;

pub const SUMS_FILE: &str = "SHA256SUMS";

/// Which image files to write (manifest.json and SHA256SUMS are always written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    pub raw: bool,
    pub xz: bool,
    pub bmap: bool,
    pub qcow2: bool,
}

impl Default for Formats {
    fn default() -> Self {
        Formats {
            raw: false,
            xz: true,
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

    let mut xz_file = if req.formats.xz {
        Some(out.create(&format!("{img_name}.xz"))?)
    } else {
        None
    };
    let (image_sha256, ranges) = {
        let xz_out = xz_file.as_mut().map(|p| io::BufWriter::new(p.file()));
        scan(
            raw.file(),
            report.size,
            &report.written,
            xz_out,
            &req.xz,
            progress,
        )
        .with_context(|| format!("reading back {img_name}"))?
    };
    if let Some(x) = xz_file {
        pending.push((format!("{img_name}.xz"), x));
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

/// One pass over a sparse image: its SHA-256, the per-range SHA-256 of the block map, and
/// (optionally) the `.xz` stream. Written ranges are read from `image`; holes are zeros from
/// memory.
pub fn scan<R: Read + Seek, W: Write>(
    image: &mut R,
    size: u64,
    written: &Ranges,
    xz_out: Option<W>,
    xz: &XzSettings,
    progress: &Progress,
) -> io::Result<(String, Vec<bmap::MappedRange>)> {
    const CHUNK: usize = 1 << 20;
    let bs = bmap::BLOCK_SIZE;
    let mapped = bmap::mapped_blocks(written, bs);
    let mut enc = xz_out.map(|w| xz::encoder(w, xz)).transpose()?;
    let mut whole = Sha256::new();
    let mut ranges = Vec::with_capacity(mapped.len());
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut step = progress.step(if enc.is_some() { "xz" } else { "hash" }, size);
    let mut pos = 0u64;

    let mut feed = |data: &[u8], enc: &mut Option<liblzma::write::XzEncoder<W>>| {
        whole.update(data);
        if let Some(e) = enc {
            e.write_all(data)?;
        }
        io::Result::Ok(())
    };
    for (first, last) in mapped.iter().copied().chain([(u64::MAX, u64::MAX)]) {
        let (start, end) = if first == u64::MAX {
            (size, size)
        } else {
            (first * bs, ((last + 1) * bs).min(size))
        };
        // The hole before this range.
        while pos < start {
            let n = (start - pos).min(CHUNK as u64) as usize;
            feed(&zeros[..n], &mut enc)?;
            pos += n as u64;
            step.inc(n as u64);
        }
        if start == end {
            continue;
        }
        image.seek(SeekFrom::Start(start))?;
        let mut range = Sha256::new();
        while pos < end {
            let n = (end - pos).min(CHUNK as u64) as usize;
            image.read_exact(&mut buf[..n])?;
            range.update(&buf[..n]);
            feed(&buf[..n], &mut enc)?;
            pos += n as u64;
            step.inc(n as u64);
        }
        ranges.push((first, last, hex::encode(range.finalize())));
    }
    if let Some(e) = enc {
        e.finish()?.flush()?;
    }
    Ok((hex::encode(whole.finalize()), ranges))
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
