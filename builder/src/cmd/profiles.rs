//! `imgbuild profiles list|show|check`.

use std::io::Write;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::Context;
use crate::profile::{Origin, Profile};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List the profiles you can build (yours and the stock ones).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list abstract profiles (only meant to be extended).
        #[arg(long)]
        all: bool,
    },
    /// Print a profile fully resolved: its `extends` chain merged and defaults filled.
    Show {
        /// Profile name.
        profile: String,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
        /// Override a value, as `build --set` does.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Validate profiles (all of them when none are named); exit 2 if any has a problem.
    Check {
        /// Profile names.
        profiles: Vec<String>,
    },
}

/// The JSON form of `profiles show`.
#[derive(Serialize)]
struct Shown<'a> {
    name: &'a str,
    /// The files merged, the profile itself first.
    chain: &'a [Origin],
    profile: &'a Profile,
}

pub fn run(cmd: &Command, ctx: &Context) -> Result<()> {
    let store = ctx.profiles();
    let mut out = std::io::stdout().lock();
    match cmd {
        Command::List { json, all } => {
            let list: Vec<_> = store
                .list()?
                .into_iter()
                .filter(|l| *all || !l.r#abstract)
                .collect();
            if *json {
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else {
                let width = list.iter().map(|l| l.name.len()).max().unwrap_or(0);
                for l in &list {
                    let from = match &l.origin {
                        Origin::User { path } if l.overrides_stock => {
                            format!(" (yours: {}, replaces stock)", path.display())
                        }
                        Origin::User { path } => format!(" (yours: {})", path.display()),
                        _ => String::new(),
                    };
                    let tag = if l.r#abstract { " [abstract]" } else { "" };
                    writeln!(
                        out,
                        "{:width$}  {}{tag}{from}",
                        l.name,
                        l.description.as_deref().unwrap_or("")
                    )?;
                }
            }
        }
        Command::Show { profile, json, set } => {
            let r = store.resolve(profile, set)?;
            super::print_warnings(&r);
            if *json {
                serde_json::to_writer_pretty(
                    &mut out,
                    &Shown {
                        name: &r.name,
                        chain: &r.chain,
                        profile: &r.profile,
                    },
                )?;
                writeln!(out)?;
            } else {
                let chain: Vec<String> = r.chain.iter().map(ToString::to_string).collect();
                writeln!(out, "# {} — resolved from {}", r.name, chain.join(" ← "))?;
                let text = toml::to_string_pretty(&r.profile)
                    .context("rendering the resolved profile as TOML")?;
                write!(out, "{text}")?;
            }
        }
        Command::Check { profiles } => {
            let names: Vec<String> = if profiles.is_empty() {
                store.list()?.into_iter().map(|l| l.name).collect()
            } else {
                profiles.clone()
            };
            let mut failed = Vec::new();
            for name in &names {
                match store.resolve(name, &[]) {
                    Ok(r) => {
                        writeln!(out, "ok      {name}")?;
                        super::print_warnings(&r);
                    }
                    Err(e) => {
                        writeln!(out, "FAILED  {name}")?;
                        eprintln!("{e}");
                        failed.push(name.clone());
                    }
                }
            }
            if !failed.is_empty() {
                anyhow::bail!(
                    "{} of {} profiles have problems: {}",
                    failed.len(),
                    names.len(),
                    failed.join(", ")
                );
            }
        }
    }
    Ok(())
}
