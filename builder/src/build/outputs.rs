//! A profile's outputs, from fetched inputs to files in the output folder: the shared image in
//! every format, the Raspberry Pi Imager list, and a node's own image with its seed.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::disk::outputs::{self, Formats, OutputRequest};
use crate::disk::xz::XzSettings;
use crate::fetch::xzblocks::BlockCache;
use crate::fetch::{self, Fetcher};
use crate::node::inputs::NodeInputs;
use crate::node::templates::Templates;
use crate::output::{OutputDir, PendingFile};
use crate::profile::{Format, Resolved};
use crate::progress::Progress;

/// What a build wrote, and what it warned of.
pub struct Written {
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

#[allow(clippy::too_many_arguments)] // one call site per mode; a struct would only rename them
/// Builds `resolved` from its fetched `inputs` into `out`: the shared image in every format the
/// profile asks for, the Imager list for a Raspberry Pi, and with `node` that node's own image.
pub fn build_into(
    resolved: &Resolved,
    inputs: &[fetch::FetchedInput],
    fetcher: &Fetcher,
    templates: &Templates,
    node: Option<&NodeInputs>,
    out: &OutputDir,
    threads: u32,
    progress: &Progress,
) -> Result<Written> {
    let scratch = tempfile::Builder::new()
        .prefix("imgbuild-scratch-")
        .tempdir_in(fetcher.cache.root())
        .context("creating a scratch folder in the cache")?;
    let super::Prepared {
        opened,
        epoch,
        seed,
        trees,
    } = super::prepare(resolved, inputs, &fetcher.cache, scratch.path(), templates)?;
    let warnings = trees.warnings.clone();
    let node_trees = node.map(|n| (n, trees.clone()));
    let layout = super::layout(resolved, trees, epoch)?;
    let fmts = &resolved.profile.image.formats;
    let formats = Formats {
        raw: fmts.contains(&Format::Img),
        xz: fmts.contains(&Format::ImgXz),
        zst: fmts.contains(&Format::ImgZst),
        bmap: fmts.contains(&Format::Bmap),
        qcow2: fmts.contains(&Format::Qcow2),
    };
    let profile_json = serde_json::to_value(&resolved.profile)?;
    let blocks = BlockCache::open(fetcher.cache.root()).with_context(|| {
        format!(
            "opening the compressed-block cache in {}",
            fetcher.cache.root().display()
        )
    })?;
    let req = OutputRequest {
        name: resolved.image_name(),
        formats,
        xz: XzSettings {
            threads,
            ..XzSettings::default()
        },
        blocks: Some(&blocks),
        epoch: epoch.max(0) as u64,
        profile: &profile_json,
        inputs: &opened.records,
    };
    let built = outputs::build_outputs(out, &layout, &seed, &req, progress)?;
    report_blocks(&blocks);
    let mut files = built.files;
    if resolved.board().is_raspberry_pi() && (formats.xz || formats.zst) {
        files.push(write_imager_list(
            resolved,
            &built.image_sha256,
            built.report.size,
            epoch,
            formats,
            out,
        )?);
    }
    if let Some((n, trees)) = node_trees {
        files.push(write_node_image(
            resolved, n, trees, &seed, epoch, out, progress,
        )?);
    }
    Ok(Written { files, warnings })
}

/// Logs what the block cache gave and trims it to its bound (a failure only costs disk space).
fn report_blocks(blocks: &BlockCache) {
    for (what, counts) in [("xz blocks", &blocks.xz), ("zstd frames", &blocks.zst)] {
        let (hits, misses, damaged) = counts.get();
        if hits + misses + damaged > 0 {
            tracing::info!(
                reused = hits,
                compressed = misses + damaged,
                damaged,
                "{what}"
            );
        }
    }
    if let Err(e) = blocks.trim() {
        tracing::warn!("could not trim the compressed-block cache: {e}");
    }
}

/// `<name>.rpi-imager.json`: a Raspberry Pi Imager repository (`rpi-imager --repo FILE`) that
/// lists the `.img.xz` and the `.img.zst` (those built), so the image can be flashed from Imager
/// with its own customisation.
fn write_imager_list(
    resolved: &Resolved,
    image_sha256: &str,
    image_size: u64,
    epoch: i64,
    formats: Formats,
    out: &OutputDir,
) -> Result<PathBuf> {
    use crate::boot::rpi::{ImagerFacts, imager_os_list, utc_date};
    let name = resolved.image_name();
    let zst_title = format!("{name} (zstd)");
    let mut downloads = Vec::new();
    for (on, ext, title) in [(formats.xz, "xz", name), (formats.zst, "zst", &zst_title)] {
        if !on {
            continue;
        }
        let file = format!("{name}.img.{ext}");
        let path = out.path().join(&file);
        let sha256 = crate::fetch::cache::sha256_file(&path)?;
        let size = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        downloads.push((title, file, size, sha256));
    }
    let entries: Vec<ImagerFacts<'_>> = downloads
        .iter()
        .map(|(title, file, size, sha256)| ImagerFacts {
            name: title,
            description: resolved.profile.description.as_deref().unwrap_or(""),
            board: resolved.board(),
            url: file,
            extract_size: image_size,
            extract_sha256: image_sha256,
            download_size: *size,
            download_sha256: sha256,
            release_date: utc_date(epoch),
        })
        .collect();
    let list = imager_os_list(&entries);
    let mut f = out.create(&format!("{name}.rpi-imager.json"))?;
    let mut text = serde_json::to_string_pretty(&list)?;
    text.push('\n');
    std::io::Write::write_all(f.file(), text.as_bytes()).context("writing the Imager list")?;
    f.commit(true)
}

/// The node's own copy: the same trees with its seed in the boot partition. It carries the
/// node's credentials, so it is owner-only and gets no manifest or checksum file.
fn write_node_image(
    resolved: &Resolved,
    n: &NodeInputs,
    mut trees: super::ImageTrees,
    seed: &crate::ids::ImageSeed,
    epoch: i64,
    out: &OutputDir,
    progress: &Progress,
) -> Result<PathBuf> {
    let node_seed = crate::node::seed::render(resolved, &n.node, &n.secrets, "", &n.templates)?;
    node_seed.add_to(&mut trees.boot, epoch)?;
    let layout = super::layout(resolved, trees, epoch)?;
    let dir = out.private_subdir()?;
    let mut f =
        PendingFile::create(dir.join(format!("{}-{}.img", resolved.image_name(), n.node.name)))?;
    crate::disk::image::write_raw(&layout, seed, epoch.max(0) as u64, f.file(), progress)
        .with_context(|| format!("assembling the image of node {}", n.node.name))?;
    f.commit_with_mode(true, 0o600)
}
