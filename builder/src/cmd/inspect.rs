//! `imgbuild inspect`: what a disk image holds, and whether it still matches its manifest.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use super::{CheckFailed, Context};
use crate::disk::manifest::{self, Manifest};
use crate::disk::probe::{self, ProbedImage, Verification};
use crate::disk::xz;

/// Show a raw disk image's partition table, partitions and filesystems; when a `manifest.json`
/// sits beside it, check the image against it (exit 1 on a mismatch).
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  imgbuild inspect images/pi-worker/pi-worker.img\n  \
                        imgbuild inspect images/pi-worker/pi-worker.img.xz\n  \
                        imgbuild inspect --json node.img | jq .partitions"
)]
pub struct Args {
    /// The disk image: raw (`.img`) or xz-compressed (`.img.xz`, decompressed to a temporary
    /// file first).
    pub image: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The manifest to check against (default: `manifest.json` beside the image, if any).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
}

fn human(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} B")
    }
}

fn print_text(args: &Args, img: &ProbedImage, check: Option<(&PathBuf, &Verification)>) {
    let id = match img.table {
        crate::disk::layout::TableKind::Gpt => format!("GPT, disk GUID {}", img.disk_id),
        crate::disk::layout::TableKind::Mbr => format!("MBR, disk signature {}", img.disk_id),
    };
    println!(
        "{}: {id}, {} ({} bytes)",
        args.image.display(),
        human(img.size),
        img.size
    );
    for p in &img.partitions {
        println!(
            "  {}  {:<12} {:<13} offset {:>12}  size {:>9}  PARTUUID {}",
            p.number,
            p.label.as_deref().unwrap_or("-"),
            p.ptype.as_deref().unwrap_or(&p.type_id),
            p.offset,
            human(p.size),
            p.partuuid
        );
        match &p.fs {
            Some(fs) => println!(
                "     {}{}  label {}  UUID {}",
                fs.kind,
                fs.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                fs.label.as_deref().unwrap_or("-"),
                fs.uuid.as_deref().unwrap_or("-")
            ),
            None => println!("     no filesystem recognised"),
        }
    }
    match check {
        None => println!("no manifest.json beside the image: nothing to check against"),
        Some((path, v)) if v.mismatches.is_empty() => println!(
            "matches {}: image SHA-256, partition table, {} ext4 files",
            path.display(),
            v.files_checked
        ),
        Some((path, v)) => {
            println!(
                "DOES NOT MATCH {} ({} differences):",
                path.display(),
                v.mismatches.len()
            );
            for m in v.mismatches.iter().take(50) {
                println!("  {}: {}", m.what, m.detail);
            }
            if v.mismatches.len() > 50 {
                println!("  … and {} more", v.mismatches.len() - 50);
            }
        }
    }
}

/// The raw image behind `file`: itself, or an `.xz` decompressed into an anonymous temporary
/// file (holes kept, gone when closed).
fn raw_image(mut file: File, args: &Args) -> Result<(File, u64, bool)> {
    let what = || format!("reading {}", args.image.display());
    let mut magic = [0u8; 6];
    let n = file.read(&mut magic).with_context(what)?;
    file.seek(SeekFrom::Start(0)).with_context(what)?;
    if n < magic.len() || magic != xz::MAGIC {
        let size = file.metadata().with_context(what)?.len();
        return Ok((file, size, false));
    }
    let mut raw = tempfile::tempfile().context(
        "creating a temporary file to decompress into (set TMPDIR to a folder with room)",
    )?;
    let size = xz::decompress_sparse(&file, &mut raw).with_context(|| {
        format!(
            "decompressing {} (a damaged or truncated .xz; check it with `xz -t`)",
            args.image.display()
        )
    })?;
    Ok((raw, size, true))
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let file =
        File::open(&args.image).with_context(|| format!("opening {}", args.image.display()))?;
    let (mut file, size, decompressed) = raw_image(file, args)?;
    let img = probe::probe(&mut file, size)
        .with_context(|| format!("reading {}", args.image.display()))?;

    let beside = args
        .image
        .parent()
        .map(|d| d.join(manifest::FILE_NAME))
        .filter(|p| p.is_file());
    let manifest_path = args.manifest.clone().or(beside);
    let mut check = None;
    if let Some(path) = &manifest_path {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let m: Manifest = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{} is not an imgbuild manifest; pass another with --manifest",
                path.display()
            )
        })?;
        // An .img.xz is checked as the .img it decompresses to.
        let name = args.image.file_name().map(|n| {
            let n = n.to_string_lossy();
            match n.strip_suffix(".xz") {
                Some(raw) if decompressed => raw.to_string(),
                _ => n.into_owned(),
            }
        });
        if args.manifest.is_none() && name.as_deref() != Some(m.image.file.as_str()) {
            // A manifest of another image (say the .img.xz's) is not this image's.
            eprintln!(
                "note: {} describes {}, not this file; not checked",
                path.display(),
                m.image.file
            );
        } else {
            let v = probe::verify(&file, &img, &m, &ctx.progress)
                .with_context(|| format!("checking {}", args.image.display()))?;
            check = Some((path.clone(), v));
        }
    }

    if args.json {
        let out = serde_json::json!({
            "image": args.image.display().to_string(),
            "disk": &img,
            "manifest": check.as_ref().map(|(p, v)| serde_json::json!({
                "path": p.display().to_string(),
                "matches": v.mismatches.is_empty(),
                "check": v,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(args, &img, check.as_ref().map(|(p, v)| (p, v)));
    }
    if let Some((path, v)) = &check {
        if !v.mismatches.is_empty() {
            return Err(CheckFailed(format!(
                "{} does not match {} ({} differences)",
                args.image.display(),
                path.display(),
                v.mismatches.len()
            ))
            .into());
        }
    }
    Ok(())
}
