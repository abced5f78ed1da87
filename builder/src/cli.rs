//! Command-line definition and dispatch. `main.rs` calls [`main`]; everything else is here so
//! tests can render help, completions and man pages from the same definition.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::cmd::{self, CheckFailed, Context};
use crate::progress::{Progress, ProgressMode};

/// Exit status for errors: bad input, missing capability, failed I/O.
pub const EXIT_ERROR: u8 = 2;
/// Exit status for a check that ran and found a difference.
pub const EXIT_CHECK_FAILED: u8 = 1;

/// Build immutable, reproducible k3s node images from declarative profiles.
///
/// `imgbuild PROFILE` is short for `imgbuild build PROFILE`.
#[derive(Parser, Debug)]
#[command(
    name = "imgbuild",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = "Examples:\n  imgbuild pi-worker                 build the Raspberry Pi worker image\n  imgbuild profiles list             list the profiles you can build\n  imgbuild profiles show pi-worker   the fully resolved profile"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// More output (repeat for more detail).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less output (errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
    /// How to show progress of long steps.
    #[arg(long, value_enum, default_value_t, global = true)]
    pub progress: ProgressMode,
    /// Folder of your own profiles, layered over the stock ones.
    #[arg(
        long,
        global = true,
        env = "IMGBUILD_PROFILES",
        default_value = "profiles",
        value_name = "DIR"
    )]
    pub profiles_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a profile's disk image and its checksums, block map and manifest.
    Build(cmd::build::Args),
    /// List, show and check profiles.
    #[command(subcommand)]
    Profiles(cmd::profiles::Command),
    /// Write a filesystem image from a folder or tarball, without root.
    Mkfs(cmd::mkfs::Args),
    /// Show a disk image's partitions and filesystems, and check it against its manifest.
    Inspect(cmd::inspect::Args),
    /// Print cloud-init user-data that turns a stock cloud VM into a profile's node.
    Userdata(cmd::userdata::Args),
    /// Write a node's first-boot seed (cloud-init NoCloud) to a folder.
    Seed(cmd::seed::Args),
    /// Create and check the secrets file (k3s tokens, mesh keys).
    Secrets(cmd::secrets::Args),
    /// Manage the download cache.
    Cache(cmd::cache::Args),
    /// Create or update the lockfile that pins every input.
    Lock(cmd::lock::Args),
    /// Serve images to nodes over the network (PXE, HTTP boot, Raspberry Pi).
    Netboot(cmd::netboot::Args),
    /// Write an image to an SD card or disk with a node's seed.
    Flash(cmd::flash::Args),
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
    /// `imgbuild PROFILE [BUILD OPTIONS]` builds PROFILE.
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

/// Parses `args`, treating an unknown first word as a profile name to build.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = Cli::command_for_env().try_get_matches_from(&args)?;
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&cli)?;
    if let Command::External(ext) = &cli.command {
        // Re-parse as `build PROFILE …`, keeping the global options where they stood.
        let pos = args
            .iter()
            .position(|a| Some(a) == ext.first())
            .unwrap_or(1);
        let mut again = args.clone();
        again.insert(pos, OsString::from("build"));
        return Cli::command_for_env()
            .try_get_matches_from(again)
            .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    }
    Ok(cli)
}

impl Cli {
    /// The command definition with colours switched off when `NO_COLOR` is set.
    pub fn command_for_env() -> clap::Command {
        let cmd = Cli::command();
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            cmd.color(clap::ColorChoice::Never)
        } else {
            cmd
        }
    }
}

/// Entry point of the binary: parse, dispatch, print the error chain.
pub fn main() -> ExitCode {
    let cli = match parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_ERROR } else { 0 });
        }
    };
    let verbosity = cli.global.verbose as i8 - cli.global.quiet as i8;
    // A server's log is its output: `netboot` logs what it serves unless told to be quiet.
    let server = matches!(cli.command, Command::Netboot(_));
    init_logging(verbosity + i8::from(server));
    let ctx = Context {
        progress: Progress::new(if verbosity < 0 {
            ProgressMode::None
        } else {
            cli.global.progress
        }),
        profiles_dir: cli.global.profiles_dir.clone(),
        verbosity,
    };
    match dispatch(cli.command, &ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.downcast_ref::<CheckFailed>().is_some() {
                EXIT_CHECK_FAILED
            } else {
                EXIT_ERROR
            };
            eprintln!("{}", render_error(&e));
            ExitCode::from(code)
        }
    }
}

/// `error: …` followed by one `  caused by: …` line per cause.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut out = format!("error: {e}");
    for cause in e.chain().skip(1) {
        out.push_str(&format!("\n  caused by: {cause}"));
    }
    out
}

fn init_logging(verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-1 => "error",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMGBUILD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
        .try_init();
}

fn dispatch(command: Command, ctx: &Context) -> anyhow::Result<()> {
    match command {
        Command::Build(a) => cmd::build::run(&a, ctx),
        Command::Profiles(c) => cmd::profiles::run(&c, ctx),
        Command::Mkfs(a) => cmd::mkfs::run(&a, ctx),
        Command::Inspect(a) => cmd::inspect::run(&a, ctx),
        Command::Userdata(a) => cmd::userdata::run(&a, ctx),
        Command::Seed(a) => cmd::seed::run(&a, ctx),
        Command::Secrets(a) => cmd::secrets::run(&a, ctx),
        Command::Cache(a) => cmd::cache::run(&a, ctx),
        Command::Lock(a) => cmd::lock::run(&a, ctx),
        Command::Netboot(a) => cmd::netboot::run(&a, ctx),
        Command::Flash(a) => cmd::flash::run(&a, ctx),
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "imgbuild", &mut out);
            Ok(())
        }
        Command::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
            std::io::stdout().lock().write_all(&buf)?;
            Ok(())
        }
        Command::External(_) => unreachable!("parse() rewrites a bare profile name to `build`"),
    }
}
