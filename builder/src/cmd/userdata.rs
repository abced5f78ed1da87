//! `imgbuild userdata PROFILE --node NAME`: `#cloud-config` for a stock cloud VM.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::Context;
use super::seed::NodeArgs;
use crate::node::userdata::{self, CloudTarget, ExtraFile, Pin, Pins};
use crate::profile::{Arch, MeshProvider, Resolved};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Where the user-data goes; sets the size limit (digitalocean: 64 KiB plain text;
    /// openstack: 65,535 bytes base64-encoded).
    #[arg(long, value_enum, default_value_t = CloudTarget::Generic)]
    pub target: CloudTarget,
    /// Print `{ "user_data", "sha256", "size" }` (for Terraform's `external` data source).
    #[arg(long)]
    pub json: bool,
    /// Run every check (secrets, templates, size limit) and print nothing.
    #[arg(long)]
    pub check: bool,
    /// Download artifacts from another place: replace URL prefix FROM with TO (repeatable).
    #[arg(
        long = "mirror",
        value_name = "FROM=TO",
        env = "IMGBUILD_MIRROR",
        value_delimiter = ' '
    )]
    pub mirror: Vec<String>,
    /// Add a unit that keeps pods away from the metadata service (169.254.169.254), which serves
    /// this user-data, credentials included, for the VM's lifetime.
    #[arg(long)]
    pub block_metadata: bool,
    /// The lockfile pinning the k3s and mesh downloads.
    #[arg(long, default_value = "imgbuild.lock", value_name = "FILE")]
    pub lock: PathBuf,
}

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let mirrors = args
        .mirror
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| userdata::parse_mirror(m))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = args.node.load(ctx)?;
    let pins = pins_from_lock(&args.lock, &inputs.resolved)?;
    let extra = overlay_files(&inputs.resolved)?;
    let out = userdata::render(
        &userdata::Input {
            resolved: &inputs.resolved,
            node: &inputs.node,
            secrets: &inputs.secrets,
            pins: &pins,
            mirrors: &mirrors,
            block_metadata: args.block_metadata,
            extra_files: &extra,
            target: args.target,
        },
        &inputs.templates,
    )?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    if args.check {
        eprintln!(
            "ok: user-data for node {} is {} bytes, within the {} limit",
            inputs.node.name,
            out.text.len(),
            args.target
        );
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", out.json())?;
    } else {
        stdout.write_all(out.text.as_bytes())?;
    }
    stdout.flush()?;
    Ok(())
}

/// Lock entry names of the artifacts: `<input>/<version>/<arch>`.
fn lock_name(input: &str, version: &str, arch: Arch) -> String {
    format!("{input}/{version}/{arch}")
}

/// The pinned k3s and mesh downloads of `resolved`, from the lockfile (`[[input]]` tables with
/// `name`, `url`, `sha256`).
fn pins_from_lock(path: &Path, resolved: &Resolved) -> Result<Pins> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{shown} does not exist: the user-data installs only pinned downloads\n  help: run `imgbuild lock {}` first",
            resolved.name
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {shown}")),
    };
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{shown} is not a valid lockfile"))?;
    let find = |name: &str| -> Result<Pin> {
        let entry = doc
            .get("input")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(toml::Value::as_table)
            .find(|t| t.get("name").and_then(toml::Value::as_str) == Some(name));
        let pin = entry.and_then(|t| {
            Some(Pin {
                url: t.get("url")?.as_str()?.to_string(),
                sha256: t.get("sha256")?.as_str()?.to_string(),
            })
        });
        match pin {
            Some(p) if p.sha256.len() == 64 && p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(p)
            }
            _ => bail!(
                "{shown} has no pin for {name}\n  help: run `imgbuild lock {}` to pin it",
                resolved.name
            ),
        }
    };
    let arch = resolved.arch();
    let k3s_version = resolved
        .profile
        .k3s
        .version
        .as_deref()
        .context("the profile has no k3s.version")?;
    let k3s = find(&lock_name("k3s", k3s_version, arch))?;
    let mesh = match resolved.profile.mesh.provider {
        MeshProvider::None => None,
        p => {
            let v = resolved
                .profile
                .mesh
                .version
                .as_deref()
                .context("the profile has no mesh.version")?;
            Some(find(&lock_name(p.as_str(), v, arch))?)
        }
    };
    Ok(Pins { k3s, mesh })
}

/// The files of the profile's overlays, for `write_files`. Later overlays win.
fn overlay_files(resolved: &Resolved) -> Result<Vec<ExtraFile>> {
    let mut files: Vec<ExtraFile> = Vec::new();
    for (i, o) in resolved.profile.overlays.iter().enumerate() {
        let mut found = Vec::new();
        if let Some(name) = o.strip_prefix("stock:") {
            let dir = crate::stock::overlay(name).with_context(|| {
                format!("overlays[{i}]: imgbuild has no stock overlay {name:?}")
            })?;
            collect_stock(dir, dir.path(), &mut found);
        } else {
            let root = resolved.path_for(&format!("overlays[{i}]"), o, Path::new("."));
            collect_dir(&root, &root, &mut found)
                .with_context(|| format!("reading overlay {}", root.display()))?;
        }
        for f in found {
            if f.path.ends_with(".j2") {
                bail!(
                    "overlay file {} is a template: `imgbuild userdata` copies overlay files as they are and cannot render it\n  help: render it into a plain file, or build an image instead",
                    f.path
                );
            }
            files.retain(|g| g.path != f.path);
            files.push(f);
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn collect_stock(dir: &include_dir::Dir<'static>, root: &Path, out: &mut Vec<ExtraFile>) {
    for f in dir.files() {
        let rel = f.path().strip_prefix(root).unwrap_or(f.path());
        out.push(ExtraFile {
            path: format!("/{}", rel.display()),
            mode: 0o644,
            data: f.contents().to_vec(),
        });
    }
    for d in dir.dirs() {
        collect_stock(d, root, out);
    }
}

fn collect_dir(dir: &Path, root: &Path, out: &mut Vec<ExtraFile>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            collect_dir(&path, root, out)?;
        } else if meta.is_file() {
            #[cfg(unix)]
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                meta.permissions().mode() & 0o7777
            };
            #[cfg(not(unix))]
            let mode = 0o644;
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(ExtraFile {
                path: format!("/{}", rel.display()),
                mode,
                data: std::fs::read(&path)?,
            });
        } else {
            bail!(
                "{} is not a regular file or folder; user-data can only carry files",
                path.display()
            );
        }
    }
    Ok(())
}
