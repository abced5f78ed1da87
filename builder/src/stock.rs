//! The stock profiles and overlays, embedded so `imgbuild pi-worker` works from any folder.

use include_dir::{Dir, include_dir};

static PROFILES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../profiles");
static OVERLAYS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../overlays");

/// The text of the stock profile `name`.
pub fn profile(name: &str) -> Option<&'static str> {
    PROFILES
        .get_file(format!("{name}.toml"))
        .and_then(|f| f.contents_utf8())
}

/// Names of all stock profiles, sorted.
pub fn profile_names() -> Vec<String> {
    let mut names: Vec<String> = PROFILES
        .files()
        .filter_map(|f| {
            let p = f.path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    names.sort();
    names
}

/// The stock overlay folder `name` (`stock:NAME` in a profile).
pub fn overlay(name: &str) -> Option<&'static Dir<'static>> {
    OVERLAYS.get_dir(name)
}

/// All stock overlays and templates.
pub fn overlays() -> &'static Dir<'static> {
    &OVERLAYS
}
