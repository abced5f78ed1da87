//! `imgbuild flash SOURCE DEVICE [--node NAME]` and `imgbuild flash --list`.
//!
//! The outermost layer of flashing: finds the image and its block map, checks the target
//! ([`crate::blockdev::target`]), asks for confirmation, then runs the pure plan/write/verify of
//! [`crate::flash`] over the opened device and reports throughput.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use super::{CheckFailed, Context};
use crate::blockdev::target::{self, Allow, Target, human};
use crate::blockdev::{self, direct::DirectReader};
use crate::disk::bmap::BlockMap;
use crate::flash::boot::NodeBoot;
use crate::flash::plan::{self, Plan, Span};
use crate::flash::write::{self, FlashError, Seekable, Streamed};
use crate::flash::{bmap, table};
use crate::node::inputs::{NodeInputs, NodeSource};
use crate::profile::Resolved;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The image (`.img` or `.img.xz`, with its `.bmap` and `manifest.json` beside it) or a
    /// profile name (its image under images/<profile>/).
    #[arg(required_unless_present = "list")]
    pub source: Option<String>,
    /// The whole disk to write: /dev/sdX, /dev/mmcblkN, /dev/disk/by-id/… (`--list` shows them).
    #[arg(required_unless_present = "list")]
    pub device: Option<PathBuf>,
    /// List candidate disks: path, model, size, transport, removable, what is mounted from them.
    #[arg(long, conflicts_with_all = ["source", "device"])]
    pub list: bool,
    /// Add this node's first-boot seed (from the inventory and secrets) to the boot partition.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    #[command(flatten)]
    pub nodes: NodeSource,
    /// Do not ask: write the disk (does not imply --allow-large or --allow-internal).
    #[arg(long, short)]
    pub yes: bool,
    /// Skip reading the target back after writing.
    #[arg(long)]
    pub no_verify: bool,
    /// Run every check and show the plan; open nothing for writing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow a regular file as the target (created or extended to the image's size).
    #[arg(long)]
    pub allow_file: bool,
    /// Allow a target larger than 128 GiB.
    #[arg(long)]
    pub allow_large: bool,
    /// Allow a disk that is not removable (an internal SATA/NVMe/virtio disk).
    #[arg(long)]
    pub allow_internal: bool,
}

/// The image to flash and what is known about it.
struct Image {
    path: PathBuf,
    xz: bool,
    bmap: Option<BlockMap>,
    size: u64,
    /// SOURCE_DATE_EPOCH from manifest.json.
    epoch: Option<i64>,
    /// The profile SOURCE named, if it named one.
    profile: Option<String>,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    if args.list {
        return list();
    }
    let (Some(source), Some(device)) = (&args.source, &args.device) else {
        bail!("give SOURCE and DEVICE, or --list");
    };
    let img = resolve_image(source, ctx)?;
    let head = read_head(&img)?;
    let (gpt, parts) =
        table::partitions(&head).with_context(|| format!("reading {}", img.path.display()))?;
    let allow = Allow {
        file: args.allow_file,
        large: args.allow_large,
        internal: args.allow_internal,
    };
    let target = target::check(device, img.size, &img.path, allow)?;
    let node = match &args.node {
        Some(name) => Some(prepare_node(name, &img, &parts, args, ctx)?),
        None => None,
    };
    let mapped = match &img.bmap {
        Some(m) => plan::mapped_from_bmap(m),
        None => plan::mapped_whole(img.size),
    };
    if gpt && target.size > img.size {
        // The backup GPT must be movable before anything is written.
        crate::disk::gpt::relocate(&mut head.clone(), target.size / 512)
            .with_context(|| format!("the GPT of {}", img.path.display()))?;
    }
    let plan = plan::plan(
        img.size,
        target.size,
        mapped,
        &parts,
        node.as_ref().map(|n| n.index),
        gpt,
    )?;
    describe_plan(&img, &target, &plan, args, ctx);
    if args.dry_run {
        println!("dry run: every check passed; nothing was opened for writing");
        return Ok(());
    }
    confirm(&target, args)?;
    let mut dev = target::open(&target)?;
    let job = Job {
        img: &img,
        plan: &plan,
        t: &target,
        node: node.as_ref(),
        args,
        ctx,
    };
    flash(&job, &mut dev)
}

/// SOURCE as a path (`.img`, `.img.xz`) or as a profile whose image is built.
fn resolve_image(source: &str, ctx: &Context) -> Result<Image> {
    let as_path = Path::new(source);
    let looks_like_path =
        source.ends_with(".img") || source.ends_with(".img.xz") || source.contains('/');
    let (path, profile) = if looks_like_path || as_path.is_file() {
        (as_path.to_path_buf(), None)
    } else {
        let resolved = ctx.profiles().resolve(source, &[]).with_context(|| {
            format!(
                "SOURCE {source:?} is neither an image file (.img, .img.xz) nor a known profile"
            )
        })?;
        let dir = Path::new("images").join(resolved.image_name());
        let name = resolved.image_name();
        let found = [format!("{name}.img"), format!("{name}.img.xz")]
            .into_iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file());
        let Some(p) = found else {
            bail!(
                "profile {source} is not built: no {name}.img or {name}.img.xz in {}\n  help: build it with `imgbuild build {source}`",
                dir.display()
            );
        };
        (p, Some(source.to_string()))
    };
    if !path.is_file() {
        bail!("the image {} does not exist", path.display());
    }
    let xz = path.to_string_lossy().ends_with(".xz");
    let bmap = read_bmap(&path)?;
    let (epoch, manifest_size) = read_manifest(&path);
    let size = image_size(&path, xz, bmap.as_ref(), manifest_size)?;
    Ok(Image {
        path,
        xz,
        bmap,
        size,
        epoch,
        profile,
    })
}

/// `X.img.bmap` (what `imgbuild build` writes) or `X.bmap` beside the image.
fn read_bmap(image: &Path) -> Result<Option<BlockMap>> {
    let s = image.to_string_lossy();
    let raw = s.strip_suffix(".xz").unwrap_or(&s);
    let candidates = [
        format!("{raw}.bmap"),
        format!("{}.bmap", raw.strip_suffix(".img").unwrap_or(raw)),
    ];
    let Some(p) = candidates.iter().map(PathBuf::from).find(|p| p.is_file()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let map = bmap::parse(&text).with_context(|| {
        format!(
            "{} cannot be trusted, nothing was written\n  help: rebuild the image, or `bmaptool create` a new map",
            p.display()
        )
    })?;
    Ok(Some(map))
}

/// SOURCE_DATE_EPOCH and the image size from `manifest.json` beside the image, when present.
fn read_manifest(image: &Path) -> (Option<i64>, Option<u64>) {
    let p = image.with_file_name(crate::disk::manifest::FILE_NAME);
    let Some(v) = std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return (None, None);
    };
    (v["source_date_epoch"].as_i64(), v["image"]["size"].as_u64())
}

fn image_size(path: &Path, xz: bool, map: Option<&BlockMap>, manifest: Option<u64>) -> Result<u64> {
    if !xz {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if let Some(m) = map.filter(|m| m.image_size != len) {
            bail!(
                "{} is {len} bytes but its block map describes {} bytes: they do not belong together; nothing was written",
                path.display(),
                m.image_size
            );
        }
        return Ok(len);
    }
    if let Some(n) = map.map(|m| m.image_size).or(manifest) {
        return Ok(n);
    }
    // No map and no manifest: count the decompressed bytes once.
    let n = std::io::copy(&mut open_xz(path)?, &mut std::io::sink())
        .with_context(|| format!("decompressing {}", path.display()))?;
    Ok(n)
}

fn open_xz(path: &Path) -> Result<impl Read> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // Multithreaded decoding (liblzma's parallel decoder) keeps up with fast targets.
    Ok(liblzma::read::XzDecoder::new_parallel(
        BufReader::with_capacity(1 << 20, f),
    ))
}

/// The image's first MiB (its partition table).
fn read_head(img: &Image) -> Result<Vec<u8>> {
    let mut head = vec![0u8; plan::HEAD.min(img.size) as usize];
    let what = || format!("reading the start of {}", img.path.display());
    if img.xz {
        open_xz(&img.path)?
            .read_exact(&mut head)
            .with_context(what)?;
    } else {
        File::open(&img.path)
            .and_then(|mut f| f.read_exact(&mut head))
            .with_context(what)?;
    }
    Ok(head)
}

/// A node's rebuilt boot partition (and the scratch copy of the shared one it reads from).
struct NodePrep {
    name: String,
    index: usize,
    boot: NodeBoot,
    _scratch: Option<tempfile::NamedTempFile>,
}

fn prepare_node(
    name: &str,
    img: &Image,
    parts: &[Span],
    args: &Args,
    ctx: &Context,
) -> Result<NodePrep> {
    let (resolved, inputs) = load_node(name, img, args, ctx)?;
    let seed = crate::node::seed::render(
        &resolved,
        &inputs.node,
        &inputs.secrets,
        "",
        &inputs.templates,
    )?;
    let index = table::boot_index(parts).with_context(|| {
        format!(
            "the image {} has no FAT boot partition to put node {name}'s seed in",
            img.path.display()
        )
    })?;
    let p = &parts[index];
    let (file, scratch) = if img.xz {
        let s = boot_scratch(img, p.end)?;
        (s.path().to_path_buf(), Some(s))
    } else {
        (img.path.clone(), None)
    };
    let boot = NodeBoot::new(&file, p.number, p.start, p.end - p.start, &seed, img.epoch)
        .with_context(|| format!("preparing node {name}'s boot partition"))?;
    Ok(NodePrep {
        name: name.to_string(),
        index,
        boot,
        _scratch: scratch,
    })
}

/// The node's profile, inventory entry, secrets and templates. For an image path, the profile
/// is the one the inventory gives the node.
fn load_node(
    name: &str,
    img: &Image,
    args: &Args,
    ctx: &Context,
) -> Result<(Resolved, NodeInputs)> {
    let profile = match &img.profile {
        Some(p) => p.clone(),
        None => {
            let shown = args.nodes.inventory.display().to_string();
            let text = std::fs::read_to_string(&args.nodes.inventory)
                .with_context(|| format!("reading the inventory {shown} (for --node {name})"))?;
            let inv = crate::node::inventory::Inventory::parse(&text, &shown)?;
            inv.node(name, &shown)?.profile.clone()
        }
    };
    let resolved = ctx.resolve_concrete(&profile, &[])?;
    let inputs = args.nodes.load(&resolved, name, &super::env_var)?;
    Ok((resolved, inputs))
}

/// The first `end` bytes of a streamed image in a sparse scratch file, for the FAT reader. It
/// holds the shared image's bytes only (the seed is added in memory), and is deleted on drop.
fn boot_scratch(img: &Image, end: u64) -> Result<tempfile::NamedTempFile> {
    let mut s = tempfile::NamedTempFile::new().context("creating a scratch file")?;
    let mut limited = open_xz(&img.path)?.take(end);
    crate::disk::xz::decompress_sparse(&mut limited, s.as_file_mut())
        .with_context(|| format!("decompressing {}", img.path.display()))?;
    Ok(s)
}

fn describe_plan(img: &Image, t: &Target, p: &Plan, args: &Args, ctx: &Context) {
    if ctx.verbosity < 0 {
        return;
    }
    let how = match &img.bmap {
        Some(_) => format!("{} mapped by its block map", human(p.write_bytes())),
        None => "every byte (no block map beside it)".to_string(),
    };
    eprintln!(
        "image: {} ({}), writing {how}",
        img.path.display(),
        human(img.size)
    );
    eprintln!("target: {}", target::describe(t));
    if let Some(n) = &args.node {
        eprintln!("node: {n} (its seed goes into the boot partition)");
    }
}

/// Asks on the terminal unless --yes; without a terminal and without --yes, refuses.
fn confirm(t: &Target, args: &Args) -> Result<()> {
    if args.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to write {} without confirmation: there is no terminal to ask on\n  help: check the target above and add --yes",
            t.path.display()
        );
    }
    eprint!(
        "Everything on {} will be erased:\n  {}\nType yes to write it: ",
        t.path.display(),
        target::describe(t)
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the answer")?;
    if line.trim() != "yes" {
        bail!("not confirmed; nothing was written");
    }
    Ok(())
}

/// One flash: what is written, where, and how.
struct Job<'a> {
    img: &'a Image,
    plan: &'a Plan,
    t: &'a Target,
    node: Option<&'a NodePrep>,
    args: &'a Args,
    ctx: &'a Context,
}

fn flash(job: &Job<'_>, dev: &mut File) -> Result<()> {
    let Job {
        img,
        plan,
        t,
        node,
        ctx,
        ..
    } = *job;
    let started = Instant::now();
    write::wipe_table(plan, dev).map_err(|e| fail(e, plan, t, dev))?;
    let result = write_all(job, dev);
    let report = result.map_err(|e| fail(e, plan, t, dev))?;
    let note = target::reread(t, dev);
    if ctx.verbosity >= 0 {
        let total = started.elapsed().as_secs_f64();
        let who = node
            .map(|n| format!(" with node {}'s seed", n.name))
            .unwrap_or_default();
        println!(
            "flashed {} to {}{who} in {total:.1} s",
            img.path.display(),
            t.path.display()
        );
        println!("{}", report.summary());
        if let Some(n) = note {
            eprintln!("warning: {n}");
        }
        println!("it is safe to remove {}", t.path.display());
    }
    Ok(())
}

/// Throughput of the two passes.
struct Report {
    written: u64,
    write_secs: f64,
    verified: Option<(u64, f64)>,
}

impl Report {
    fn summary(&self) -> String {
        let rate = |b: u64, s: f64| {
            format!(
                "{} in {s:.1} s, {:.1} MiB/s",
                human(b),
                b as f64 / (1 << 20) as f64 / s.max(1e-6)
            )
        };
        let mut s = format!("wrote {}", rate(self.written, self.write_secs));
        match self.verified {
            Some((b, secs)) => s.push_str(&format!(
                "; verified {} (read back past the page cache)",
                rate(b, secs)
            )),
            None => s.push_str("; not verified (--no-verify)"),
        }
        s
    }
}

fn write_all(job: &Job<'_>, dev: &mut File) -> Result<Report, FlashError> {
    let Job {
        img,
        plan,
        t,
        node,
        args,
        ctx,
    } = *job;
    let t0 = Instant::now();
    let mut boot_fn = |s: &mut dyn crate::blockio::region::Sink| match node {
        Some(n) => n.boot.write(s),
        None => Err("no node".into()),
    };
    let boot: Option<&mut write::BootFn<'_>> = node.map(|_| &mut boot_fn as &mut write::BootFn<'_>);
    let written = if img.xz {
        let r = open_xz(&img.path).map_err(|e| FlashError::Boot(e.to_string()))?;
        write::write(plan, &mut Streamed::new(r), dev, boot, &ctx.progress)?
    } else {
        let f = File::open(&img.path).map_err(|source| FlashError::Io {
            what: format!("opening {}", img.path.display()),
            source,
        })?;
        let mut src = Seekable(BufReader::with_capacity(write::CHUNK, f));
        write::write(plan, &mut src, dev, boot, &ctx.progress)?
    };
    let write_secs = t0.elapsed().as_secs_f64();
    let mut checks = written.checks.clone();
    let mut verified = None;
    if !args.no_verify {
        let t1 = Instant::now();
        let n = read_back(t, dev, &written.checks, ctx)?;
        verified = Some((n, t1.elapsed().as_secs_f64()));
        checks.clear();
    }
    let t2 = Instant::now();
    let last = write::finish(&written, dev)?;
    let write_secs = write_secs + t2.elapsed().as_secs_f64();
    if let Some((n, secs)) = verified.as_mut() {
        let t3 = Instant::now();
        checks.extend(last);
        *n += read_back(t, dev, &checks, ctx)?;
        *secs += t3.elapsed().as_secs_f64();
    }
    Ok(Report {
        written: written.bytes + written.head.len() as u64,
        write_secs,
        verified,
    })
}

/// Syncs, drops the kernel's caches of the target and reads `checks` back through `O_DIRECT`.
fn read_back(
    t: &Target,
    dev: &File,
    checks: &[write::Check],
    ctx: &Context,
) -> Result<u64, FlashError> {
    let io = |what: &str| {
        let what = format!("{what} {}", t.path.display());
        move |source| FlashError::Io { what, source }
    };
    dev.sync_all().map_err(io("syncing"))?;
    target::drop_cache(t, dev).map_err(io("dropping the cached pages of"))?;
    let mut r = DirectReader::open(&t.path, t.size).map_err(io("opening for read-back"))?;
    write::verify(&mut r, checks, &ctx.progress)
}

/// After a failure: blank the partition table so the half-written disk looks empty, and say so.
fn fail(e: FlashError, plan: &Plan, t: &Target, dev: &mut File) -> anyhow::Error {
    let wiped = write::wipe_table(plan, dev).is_ok();
    let state = if wiped {
        format!(
            "the partition table of {} was wiped, so the half-written disk reads as blank; flash it again",
            t.path.display()
        )
    } else {
        format!(
            "wiping the partition table of {} failed too: do not boot from it",
            t.path.display()
        )
    };
    let msg = format!("{e}\n  {state}");
    match e {
        FlashError::Mismatch { .. } | FlashError::SourceMismatch { .. } => CheckFailed(msg).into(),
        _ => anyhow::anyhow!(msg),
    }
}

/// `imgbuild flash --list`.
fn list() -> Result<()> {
    let disks = blockdev::list();
    if disks.is_empty() {
        println!("no disks found");
    }
    for d in disks {
        let used: Vec<String> = blockdev::usage(&d)
            .iter()
            .map(ToString::to_string)
            .collect();
        let kind = if matches!(d.transport, blockdev::Transport::Loop) {
            "loop"
        } else if d.removable {
            "removable"
        } else {
            "internal"
        };
        println!(
            "{:<14} {:>10}  {:<7} {:<10} {}{}",
            d.path.display(),
            human(d.size),
            d.transport.name(),
            kind,
            d.model,
            if d.read_only { " (read-only)" } else { "" }
        );
        for u in &used {
            println!("               {u}");
        }
    }
    Ok(())
}
