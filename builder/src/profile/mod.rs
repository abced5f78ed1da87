//! Profiles: finding them (the user's `profiles/` folder over the stock ones embedded in the
//! binary), resolving `extends` chains by deep merge, and validating the result with errors that
//! name the file, line and column and say how to fix the problem.
//!
//! Merge rules: tables merge key by key; arrays and scalars replace. `extends`, `abstract` and
//! `description` belong to the file that says them and are never inherited. A profile that
//! changes `mesh.provider` replaces the inherited `[mesh]` table instead of merging into it, and
//! one that sets `base.url` or `base.path` replaces the inherited `[base]` table.

mod schema;
pub(crate) mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use schema::*;

use crate::stock;

/// Where a profile file came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    /// Shipped inside the binary (`profiles/NAME.toml` of the source tree).
    Stock { name: String },
    /// A file of the user's profiles folder.
    User { path: PathBuf },
    /// A `--set KEY=VALUE` override.
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Stock { name } => write!(f, "stock profile {name}.toml"),
            Origin::User { path } => write!(f, "{}", path.display()),
            Origin::CommandLine => f.write_str("--set"),
        }
    }
}

/// A position in a profile file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub origin: Origin,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin {
            Origin::CommandLine => write!(f, "--set"),
            _ => write!(f, "{}:{}:{}", self.origin, self.line, self.column),
        }
    }
}

/// One problem found in a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub location: Option<Location>,
    /// Dotted key the problem is about (`k3s.server`), when there is one.
    pub key: Option<String>,
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Everything wrong with a profile (at least one problem).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProfileError {
    pub profile: String,
    pub problems: Vec<Diagnostic>,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "profile {} has {n} problem{}",
            self.profile,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n{p}")?;
        }
        Ok(())
    }
}

impl ProfileError {
    fn one(profile: &str, d: Diagnostic) -> Self {
        ProfileError {
            profile: profile.to_string(),
            problems: vec![d],
        }
    }
}

/// A profile with its `extends` chain merged, defaults filled and every check passed.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    /// The merged profile; `image.name`, `image.arch`, `image.board`, `image.formats` and
    /// `image.partition-table` are always set.
    pub profile: Profile,
    /// The files merged, the profile itself first, its furthest ancestor last.
    pub chain: Vec<Origin>,
    /// Where each dotted key got its value (the file that set it last).
    pub locations: BTreeMap<String, Location>,
    /// Non-fatal remarks (shown by `profiles check` and at build time).
    pub warnings: Vec<Diagnostic>,
}

impl Resolved {
    pub fn arch(&self) -> Arch {
        self.profile.image.arch.unwrap_or(Arch::Amd64)
    }

    pub fn board(&self) -> Board {
        self.profile.image.board.unwrap_or(Board::Efi)
    }

    pub fn partition_table(&self) -> PartitionTable {
        self.profile
            .image
            .partition_table
            .unwrap_or_else(|| self.board().default_partition_table())
    }

    pub fn image_name(&self) -> &str {
        self.profile.image.name.as_deref().unwrap_or(&self.name)
    }

    /// Resolves a path-valued setting relative to the folder of the profile file that set `key`.
    /// Stock profiles have no folder: their relative paths are resolved against `fallback`.
    pub fn path_for(&self, key: &str, value: &str, fallback: &Path) -> PathBuf {
        let v = Path::new(value);
        if v.is_absolute() {
            return v.to_path_buf();
        }
        match self.locations.get(key).map(|l| &l.origin) {
            Some(Origin::User { path }) => path.parent().unwrap_or(Path::new(".")).join(v),
            _ => fallback.join(v),
        }
    }
}

/// Summary line for `profiles list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub name: String,
    pub description: Option<String>,
    pub origin: Origin,
    /// Also shipped with imgbuild, and this user file takes its place.
    pub overrides_stock: bool,
    pub r#abstract: bool,
}

/// The user's profiles folder layered over the stock profiles.
#[derive(Debug, Clone)]
pub struct ProfileStore {
    user_dir: Option<PathBuf>,
}

/// One profile file's text and where it came from.
#[derive(Debug, Clone)]
struct Source {
    name: String,
    origin: Origin,
    text: String,
}

impl ProfileStore {
    pub fn new(user_dir: Option<PathBuf>) -> Self {
        ProfileStore { user_dir }
    }

    /// Only the stock profiles.
    pub fn stock_only() -> Self {
        ProfileStore { user_dir: None }
    }

    fn user_file(&self, name: &str) -> Option<PathBuf> {
        let p = self.user_dir.as_ref()?.join(format!("{name}.toml"));
        p.is_file().then_some(p)
    }

    /// Finds `name`; with `skip_user`, only among the stock profiles (a user profile that extends
    /// the stock profile of the same name).
    fn find(&self, name: &str, skip_user: bool) -> Result<Source, Diagnostic> {
        if !is_profile_name(name) {
            return Err(Diagnostic {
                location: None,
                key: None,
                message: format!("{name:?} is not a valid profile name"),
                help: Some(
                    "profile names use lowercase letters, digits and `-` (e.g. pi-worker)".into(),
                ),
            });
        }
        if !skip_user && let Some(path) = self.user_file(name) {
            let text = std::fs::read_to_string(&path).map_err(|e| Diagnostic {
                location: None,
                key: None,
                message: format!("cannot read {}: {e}", path.display()),
                help: None,
            })?;
            return Ok(Source {
                name: name.to_string(),
                origin: Origin::User { path },
                text,
            });
        }
        match stock::profile(name) {
            Some(text) => Ok(Source {
                name: name.to_string(),
                origin: Origin::Stock {
                    name: name.to_string(),
                },
                text: text.to_string(),
            }),
            None => Err(Diagnostic {
                location: None,
                key: None,
                message: format!("no profile named {name:?}"),
                help: Some(format!(
                    "`imgbuild profiles list` shows the profiles there are; your own go in {}/{name}.toml",
                    self.user_dir
                        .as_deref()
                        .unwrap_or(Path::new("profiles"))
                        .display()
                )),
            }),
        }
    }

    /// Every profile name, the user's and the stock ones, sorted.
    pub fn list(&self) -> Result<Vec<Listing>, ProfileError> {
        let mut names: BTreeMap<String, bool> = stock::profile_names()
            .into_iter()
            .map(|n| (n, false))
            .collect();
        if let Some(dir) = &self.user_dir
            && let Ok(rd) = std::fs::read_dir(dir)
        {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml")
                    && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                {
                    names.entry(stem.to_string()).or_insert(true);
                }
            }
        }
        let mut out = Vec::new();
        for name in names.keys() {
            let src = self
                .find(name, false)
                .map_err(|d| ProfileError::one(name, d))?;
            let file = parse_file(&src).map_err(|d| ProfileError::one(name, d))?;
            out.push(Listing {
                name: name.clone(),
                description: file.description,
                overrides_stock: matches!(src.origin, Origin::User { .. })
                    && stock::profile(name).is_some(),
                origin: src.origin,
                r#abstract: file.r#abstract,
            });
        }
        Ok(out)
    }

    /// Resolves a profile: merge its chain, apply `--set` overrides, fill defaults, validate.
    pub fn resolve(&self, name: &str, overrides: &[String]) -> Result<Resolved, ProfileError> {
        let err = |d| ProfileError::one(name, d);
        // Walk the chain, the profile itself first.
        let mut chain: Vec<(Source, Profile, toml::Table)> = Vec::new();
        let mut next = Some((name.to_string(), false));
        while let Some((n, skip_user)) = next.take() {
            let src = match self.find(&n, skip_user) {
                Ok(s) => s,
                Err(mut d) => {
                    if let Some((prev, _, _)) = chain.last() {
                        d.location = locate_key(prev, "extends");
                        d.key = Some("extends".into());
                    }
                    return Err(err(d));
                }
            };
            if chain.iter().any(|(s, _, _)| s.origin == src.origin) {
                let path: Vec<String> = chain
                    .iter()
                    .map(|(s, _, _)| s.name.clone())
                    .chain([n.clone()])
                    .collect();
                let last = &chain.last().expect("a cycle needs a previous profile").0;
                return Err(err(Diagnostic {
                    location: locate_key(last, "extends"),
                    key: Some("extends".into()),
                    message: format!("`extends` forms a cycle: {}", path.join(" → ")),
                    help: Some("remove `extends` from one of these profiles".into()),
                }));
            }
            let typed = parse_file(&src).map_err(err)?;
            let mut raw: toml::Table = toml::from_str(&src.text).expect("parsed once already");
            for k in ["extends", "abstract", "description"] {
                if chain.is_empty() && k == "description" {
                    continue;
                }
                raw.remove(k);
            }
            if let Some(parent) = &typed.extends {
                // A user profile may extend the stock profile of its own name.
                let same = parent == &src.name && matches!(src.origin, Origin::User { .. });
                next = Some((parent.clone(), same));
            }
            chain.push((src, typed, raw));
        }

        // Merge from the furthest ancestor to the profile itself, recording who set each key.
        let mut merged = toml::Table::new();
        let mut locations = BTreeMap::new();
        for (src, _, raw) in chain.iter().rev() {
            let spans = key_spans(&src.text);
            let lines = LineIndex::new(&src.text);
            for key in leaf_keys(raw, "") {
                if let Some(span) = spans.get(&key) {
                    let (line, column) = lines.line_col(span.start);
                    let origin = src.origin.clone();
                    locations.insert(
                        key,
                        Location {
                            origin,
                            line,
                            column,
                        },
                    );
                }
            }
            let mut raw = raw.clone();
            replace_tables_that_start_afresh(&mut merged, &raw);
            deep_merge(&mut merged, std::mem::take(&mut raw));
        }
        let top = &chain[0];
        let r#abstract = top.1.r#abstract;
        for (i, ov) in overrides.iter().enumerate() {
            let (key, table) = parse_override(ov).map_err(|m| {
                err(Diagnostic {
                    location: None,
                    key: None,
                    message: format!("--set {ov:?}: {m}"),
                    help: Some("write --set KEY=VALUE, e.g. --set k3s.version=v1.33.5+k3s1 or --set 'k3s.labels=[\"a=b\"]'".into()),
                })
            })?;
            let _ = i;
            locations.insert(
                key,
                Location {
                    origin: Origin::CommandLine,
                    line: 0,
                    column: 0,
                },
            );
            replace_tables_that_start_afresh(&mut merged, &table);
            deep_merge(&mut merged, table);
        }
        merged.remove("abstract");
        let mut profile: Profile = Profile::deserialize_table(merged).map_err(|e| {
            err(Diagnostic {
                location: None,
                key: None,
                message: format!("after merging the extends chain and --set overrides: {e}"),
                help: Some("check the types of the values given with --set".into()),
            })
        })?;
        profile.r#abstract = r#abstract;
        profile.extends = None;

        let mut resolved = Resolved {
            name: name.to_string(),
            profile,
            chain: chain.iter().map(|(s, _, _)| s.origin.clone()).collect(),
            locations,
            warnings: Vec::new(),
        };
        let top_origin = chain[0].0.origin.clone();
        let problems = validate::validate(&mut resolved, &top_origin);
        if !problems.is_empty() {
            return Err(ProfileError {
                profile: name.to_string(),
                problems,
            });
        }
        Ok(resolved)
    }
}

impl Profile {
    fn deserialize_table(t: toml::Table) -> Result<Profile, toml::de::Error> {
        use serde::Deserialize;
        Profile::deserialize(toml::Value::Table(t))
    }
}

/// Profile names double as file names and output folder names.
pub fn is_profile_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Type-checks one file on its own, so unknown keys and wrong types are reported with the
/// position in that file.
fn parse_file(src: &Source) -> Result<Profile, Diagnostic> {
    toml::from_str::<Profile>(&src.text).map_err(|e| {
        let at = e.span().map(|s| s.start).unwrap_or(0);
        let message = e.message().trim().to_string();
        let help = help_for_toml_error(&message);
        Diagnostic {
            location: Some(location(&src.origin, &src.text, at)),
            key: None,
            message,
            help,
        }
    })
}

fn help_for_toml_error(message: &str) -> Option<String> {
    if message.starts_with("unknown field") {
        Some("remove the key or fix its spelling; `imgbuild profiles show <profile>` shows every valid key in context".into())
    } else if message.starts_with("unknown variant") {
        Some("use one of the values listed".into())
    } else if message.starts_with("invalid type") {
        Some("check the value's type: strings are quoted, lists use [ ], tables use { } or [section]".into())
    } else if message.starts_with("missing field") {
        Some("add the missing key".into())
    } else if message.starts_with("a literal secret") {
        Some("reference the secret by name, e.g. `token = { secret = \"k3s-token\" }`, and put its value in the secrets file (`imgbuild secrets init`) or the environment".into())
    } else if message.starts_with("invalid size") {
        Some("e.g. size = \"4GiB\", or size = \"auto\" to fit the content".into())
    } else if message.starts_with("invalid secret name")
        || message.starts_with("expected a secret reference")
    {
        Some("e.g. `auth-key = { secret = \"tailscale-authkey\" }`".into())
    } else if message.contains("expected") || message.contains("invalid") {
        Some("fix the TOML at this position; `imgbuild profiles show pi-worker` is a complete, valid example".into())
    } else {
        None
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(offset)
}

/// Where each line of a text starts, so that many offsets can be placed without rescanning the
/// text for each (a profile with 80,000 labels was quadratic).
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }
}

fn location(origin: &Origin, text: &str, offset: usize) -> Location {
    let (line, column) = line_col(text, offset);
    Location {
        origin: origin.clone(),
        line,
        column,
    }
}

fn locate_key(src: &Source, key: &str) -> Option<Location> {
    key_spans(&src.text)
        .get(key)
        .map(|s| location(&src.origin, &src.text, s.start))
}

/// Byte spans of every key in a TOML document, by dotted path (`k3s.server`, `users[0].name`).
fn key_spans(text: &str) -> BTreeMap<String, Range<usize>> {
    let mut out = BTreeMap::new();
    if let Ok(doc) = text.parse::<toml_edit::Document<String>>() {
        walk_table(doc.as_table(), "", &mut out);
    }
    out
}

fn walk_table(t: &toml_edit::Table, prefix: &str, out: &mut BTreeMap<String, Range<usize>>) {
    for (k, item) in t.iter() {
        let path = join_key(prefix, k);
        let span = t
            .key(k)
            .and_then(|key| key.span())
            .or_else(|| item.span())
            .or_else(|| t.span());
        if let Some(s) = span {
            out.insert(path.clone(), s);
        }
        walk_item(item, &path, out);
    }
}

fn walk_item(item: &toml_edit::Item, path: &str, out: &mut BTreeMap<String, Range<usize>>) {
    match item {
        toml_edit::Item::Table(t) => walk_table(t, path, out),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if let Some(s) = t.span() {
                    out.insert(p.clone(), s);
                }
                walk_table(t, &p, out);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
            for (k, v) in t.iter() {
                let p = join_key(path, k);
                if let Some(s) = t.key(k).and_then(|key| key.span()).or_else(|| v.span()) {
                    out.insert(p.clone(), s);
                }
                if let toml_edit::Value::InlineTable(_) = v {
                    walk_item(&toml_edit::Item::Value(v.clone()), &p, out);
                }
            }
        }
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if let Some(s) = v.span() {
                    out.insert(p.clone(), s);
                }
                if let toml_edit::Value::InlineTable(_) = v {
                    walk_item(&toml_edit::Item::Value(v.clone()), &p, out);
                }
            }
        }
        _ => {}
    }
}

fn join_key(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

/// The dotted paths a table sets: every table key and every array element path.
fn leaf_keys(t: &toml::Table, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in t {
        let p = join_key(prefix, k);
        out.push(p.clone());
        match v {
            toml::Value::Table(sub) => out.extend(leaf_keys(sub, &p)),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    out.push(ip.clone());
                    if let toml::Value::Table(sub) = item {
                        out.extend(leaf_keys(sub, &ip));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Tables that start afresh instead of merging, because TOML cannot unset inherited keys: a
/// profile that switches the mesh provider gets a new `[mesh]` (the parent's Tailscale tags and
/// auth key mean nothing to ZeroTier), and one that names its own base (`url` or `path`) gets a
/// new `[base]` (the parent's checksums and partition names belong to the parent's base).
fn replace_tables_that_start_afresh(merged: &mut toml::Table, over: &toml::Table) {
    if over
        .get("base")
        .and_then(|b| b.as_table())
        .is_some_and(|b| b.contains_key("url") || b.contains_key("path"))
    {
        merged.remove("base");
    }
    let provider = |t: &toml::Table| {
        t.get("mesh")
            .and_then(|m| m.get("provider"))
            .and_then(|p| p.as_str())
            .map(str::to_string)
    };
    if let Some(new) = provider(over)
        && provider(merged).is_some_and(|old| old != new)
    {
        merged.remove("mesh");
    }
}

/// Tables merge key by key; everything else (arrays included) replaces.
pub fn deep_merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `a.b.c=VALUE` → (`a.b.c`, `{a = {b = {c = VALUE}}}`). VALUE is TOML if it parses as a TOML
/// value, otherwise a plain string.
fn parse_override(s: &str) -> Result<(String, toml::Table), String> {
    let (key, value) = s.split_once('=').ok_or("missing `=`")?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| {
        p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }) {
        return Err(format!("{key:?} is not a dotted key like k3s.version"));
    }
    let value = value.trim();
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut v = parsed;
    for p in parts.iter().rev() {
        let mut t = toml::Table::new();
        t.insert(p.to_string(), v);
        v = toml::Value::Table(t);
    }
    match v {
        toml::Value::Table(t) => Ok((key.to_string(), t)),
        _ => Err("empty key".into()),
    }
}

#[cfg(test)]
mod tests;

/// A URL we may fetch or hand to a node: one of `schemes`, a host unless `file://`, and only
/// the characters RFC 3986 allows (no white space, control characters, quotes, backslashes or
/// backticks, which would change meaning in the shell script, unit or YAML it lands in).
pub fn is_url(url: &str, schemes: &[&str]) -> bool {
    const ALLOWED: &[u8] = b"-._~:/?#[]@!$&'()*+,;=%";
    url.split_once("://").is_some_and(|(scheme, rest)| {
        schemes.contains(&scheme)
            && (scheme == "file" || !rest.is_empty() && !rest.starts_with('/'))
            && url
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || ALLOWED.contains(&b))
    })
}
