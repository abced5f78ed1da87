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

fn timed_build(setup: &Setup) -> f64 {
    let t = Instant::now();
    setup.build_shared();
    t.elapsed().as_secs_f64()
}

fn outputs(setup: &Setup) -> [Vec<u8>; 2] {
    ["img.xz", "img.zst"]
        .map(|e| fs::read(setup.out.join(format!("{}.{e}", setup.profile))).unwrap())
}

fn bench(work: &Path, profile: &NodeProfile<'_>) {
    let setup = Setup::new(work, profile, "bench");
    let extra = work.join("profiles/observer/etc/imgbuild-bench");
    fs::write(&extra, "one\n").unwrap();
    // Fills the download cache (the base, k3s, the mesh package); not timed.
    setup.build_shared();
    fs::remove_dir_all(work.join("cache/xz-blocks")).unwrap();
    let cold = timed_build(&setup);
    let cold_out = outputs(&setup);
    let warm = timed_build(&setup);
    assert!(outputs(&setup) == cold_out, "warm outputs differ from cold");
    fs::write(&extra, "two\n").unwrap();
    let change = timed_build(&setup);
    for (run, secs) in [("cold", cold), ("warm", warm), ("change", change)] {
        println!("bench {} {run} {secs:.3}", setup.profile);
    }
}

#[test]
#[ignore = "benchmark: run by scripts/bench-build"]
fn bench_build() {
    let Some(base) = support::qemu::debian_base() else {
        return;
    };
    let tmp = support::scratch();
    bench(
        tmp.path(),
        &NodeProfile {
            formats: FORMATS,
            ..NodeProfile::pc_node(&base)
        },
    );
    drop(tmp);
    let Some(base) = support::pi::pi_base(None) else {
        return;
    };
    let tmp = support::scratch();
    bench(
        tmp.path(),
        &NodeProfile {
            formats: FORMATS,
            ..NodeProfile::pi_node(&base)
        },
    );
}
