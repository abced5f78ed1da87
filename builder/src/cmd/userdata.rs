//! `imgbuild userdata PROFILE --node NAME`: `#cloud-config` for a stock cloud VM.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::{Context, NodeSelection};
use crate::fetch::{Lock, LockfileArg, MirrorArgs};
use crate::node::userdata::{self, CloudTarget, ExtraFile, Pin, Pins};
use crate::profile::{MeshProvider, Resolved};
use crate::source::overlay;
use crate::tree::{Kind, Tree};

#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = USAGE)]
pub struct Args {
    #[command(flatten)]
    pub node: NodeSelection,
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
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Add a unit that keeps pods away from the metadata service (169.254.169.254), which serves
    /// this user-data, credentials included, for the VM's lifetime.
    #[arg(long)]
    pub block_metadata: bool,
    #[command(flatten)]
    pub lockfile: LockfileArg,
}

const USAGE: &str = "\
The user-data holds the node's credentials and stays readable from the provider's metadata
service (169.254.169.254) for the VM's life: use one-off, short-expiry mesh keys and agent
tokens, and --block-metadata to keep pods away from it. The node deletes its key files and
cloud-init's copies once k3s runs.

DigitalOcean (doctl):
  imgbuild userdata droplet-worker --node do-1 --target digitalocean > do-1.yaml
  doctl compute droplet create do-1 --image debian-13-x64 --size s-2vcpu-4gb \\
    --region fra1 --ssh-keys <id> --user-data-file do-1.yaml --wait

Terraform (DigitalOcean; OpenStack alike with openstack_compute_instance_v2.user_data):
  data \"external\" \"do1\" {
    # external wants string values only: drop the numeric size.
    program = [\"sh\", \"-c\",
      \"imgbuild userdata droplet-worker --node do-1 --json | jq '{user_data, sha256}'\"]
  }
  resource \"digitalocean_droplet\" \"do1\" {
    name      = \"do-1\"
    image     = \"debian-13-x64\"
    region    = \"fra1\"
    size      = \"s-2vcpu-4gb\"
    user_data = data.external.do1.result.user_data
  }

OpenStack:
  imgbuild userdata droplet-worker --node os-1 --target openstack > os-1.yaml
  openstack server create --image debian-13 --flavor m1.small --network net \\
    --key-name me --config-drive True --user-data os-1.yaml os-1

Pulumi (Python):
  ud = subprocess.run([\"imgbuild\", \"userdata\", \"droplet-worker\", \"--node\", \"do-1\",
                       \"--target\", \"digitalocean\"], check=True, capture_output=True, text=True).stdout
  digitalocean.Droplet(\"do-1\", image=\"debian-13-x64\", region=\"fra1\",
                       size=\"s-2vcpu-4gb\", user_data=ud)";

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let mirrors = args.mirror.mirrors()?;
    let (resolved, inputs) = args.node.load(ctx)?;
    let mut pins = pins_from_lock(&args.lockfile.path(&ctx.profiles_dir), &resolved)?;
    pins.k3s.url = mirrors.rewrite(&pins.k3s.url);
    if let Some(m) = &mut pins.mesh {
        m.url = mirrors.rewrite(&m.url);
    }
    let extra = overlay_files(&resolved)?;
    let out = userdata::render(
        &userdata::Input {
            resolved: &resolved,
            node: &inputs.node,
            secrets: &inputs.secrets,
            pins: &pins,
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

/// The pinned k3s and mesh downloads of `resolved`, from the lockfile.
fn pins_from_lock(path: &Path, resolved: &Resolved) -> Result<Pins> {
    let shown = path.display().to_string();
    let help = format!("run `imgbuild lock {}` to pin it", resolved.name);
    if !path.exists() {
        bail!(
            "{shown} does not exist: the user-data installs only pinned downloads\n  help: run `imgbuild lock {}` first",
            resolved.name
        );
    }
    let lock = Lock::load(path)?;
    let find = |name: Option<String>, what: &str| -> Result<Pin> {
        let name = name.with_context(|| format!("the profile has no {what}.version"))?;
        let entry = lock
            .get(&name)
            .with_context(|| format!("{shown} has no pin for {name}\n  help: {help}"))?;
        Ok(Pin {
            url: entry.url.clone(),
            sha256: entry.sha256.clone(),
        })
    };
    let (k3s, mesh) = userdata::pin_names(resolved);
    Ok(Pins {
        k3s: find(k3s, "k3s")?,
        mesh: match resolved.profile.mesh.provider {
            MeshProvider::None => None,
            _ => Some(find(mesh, "mesh")?),
        },
    })
}

/// The files of the profile's overlays, for `write_files`: the overlays are applied exactly as
/// for an image (templates rendered, `.imgbuild-modes` honoured, later overlays win).
fn overlay_files(resolved: &Resolved) -> Result<Vec<ExtraFile>> {
    let mut tree = Tree::new();
    overlay::apply_profile(&mut tree, resolved, 0)?;
    let mut files = Vec::new();
    for (path, e) in tree.iter() {
        match &e.kind {
            Kind::Dir => {}
            Kind::File(c) if e.uid == 0 && e.gid == 0 => files.push(ExtraFile {
                path: path.display(),
                mode: e.mode,
                data: c
                    .read_all()
                    .with_context(|| format!("reading overlay file {path}"))?,
            }),
            Kind::File(_) => bail!(
                "overlay file {path} is owned by {}:{}; user-data writes files as root:root (cloud-init takes owner names, not numbers)\n  help: leave its owner to root in .imgbuild-modes, or build an image instead",
                e.uid,
                e.gid
            ),
            k => bail!(
                "overlay entry {path} is a {}; user-data can only carry regular files\n  help: replace it with a file, or build an image instead",
                k.name()
            ),
        }
    }
    Ok(files)
}
