//! Benchmark (ignored; run by `scripts/bench-build`): the whole `imgbuild build` of the amd64 and
//! the Raspberry Pi node profiles (`.img.xz`, `.img.zst`, `.bmap`) from inputs already in the
//! download cache: cold (empty block cache), warm (the same build again) and after changing one
//! overlay file. Prints `bench PROFILE RUN SECONDS`; asserts only that the warm outputs equal the
//! cold ones.

mod support;

use std::fs;
use std::path::Path;
use std::time::Instant;

use support::node::{NodeProfile, Setup};

const FORMATS: &str = r#"["img.xz", "img.zst", "bmap"]"#;

/// Builds and prints `bench PROFILE RUN SECONDS` at once (a long run keeps what it measured).
fn timed_build(setup: &Setup, run: &str) {
    let t = Instant::now();
    setup.build_shared();
    let secs = t.elapsed().as_secs_f64();
    println!("bench {} {run} {secs:.3}", setup.profile);
}

fn outputs(setup: &Setup) -> [Vec<u8>; 2] {
    ["img.xz", "img.zst"]
        .map(|e| fs::read(setup.out.join(format!("{}.{e}", setup.profile))).unwrap())
}

fn bench(work: &Path, profile: NodeProfile<'_>) {
    // A raw-only build fills the download cache (the base, k3s, the mesh package); not timed.
    let setup = Setup::new(
        work,
        &NodeProfile {
            formats: r#"["img"]"#,
            ..profile
        },
        "bench",
    );
    let extra = work.join("profiles/observer/etc/imgbuild-bench");
    fs::write(&extra, "one\n").unwrap();
    setup.build_shared();
    let file = work.join(format!("profiles/{}.toml", setup.profile));
    let text = fs::read_to_string(&file).unwrap();
    let text = text.replace(r#"formats = ["img"]"#, &format!("formats = {FORMATS}"));
    assert!(text.contains(FORMATS), "{text}");
    fs::write(&file, text).unwrap();
    let blocks = fs::read_dir(work.join("cache/xz-blocks"));
    assert!(
        blocks.map_or(true, |mut d| d.next().is_none()),
        "the block cache is not empty before the cold run"
    );
    timed_build(&setup, "cold");
    let cold = outputs(&setup);
    timed_build(&setup, "warm");
    assert!(outputs(&setup) == cold, "warm outputs differ from cold");
    fs::write(&extra, "two\n").unwrap();
    timed_build(&setup, "change");
}

#[test]
#[ignore = "benchmark: run by scripts/bench-build"]
fn bench_build() {
    let Some(base) = support::qemu::debian_base() else {
        return;
    };
    let tmp = support::scratch();
    bench(tmp.path(), NodeProfile::pc_node(&base));
    drop(tmp);
    let Some(base) = support::pi::pi_base(None) else {
        return;
    };
    let tmp = support::scratch();
    bench(tmp.path(), NodeProfile::pi_node(&base));
}
