//! The command line as a user meets it: help, exit codes, shortcuts, generated docs.

mod support;

use support::{imgbuild, run};

fn help_of(args: &[&str]) -> String {
    let (code, out, err) = run(imgbuild().args(args).arg("--help"));
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn top_level_help() {
    insta::assert_snapshot!(help_of(&[]));
}

#[test]
fn subcommand_help() {
    for cmd in [
        &["build"][..],
        &["profiles"],
        &["profiles", "show"],
        &["profiles", "list"],
    ] {
        let name = cmd.join("_");
        insta::assert_snapshot!(format!("help_{name}"), help_of(cmd));
    }
}

#[test]
fn bare_profile_name_means_build() {
    let (code, _, err) = run(imgbuild().arg("pi-worker"));
    let (code2, _, err2) = run(imgbuild().args(["build", "pi-worker"]));
    assert_eq!((code, &err), (code2, &err2));
    assert_ne!(code, 0);
    let (code, _, err) = run(imgbuild().arg("no-such-profile"));
    assert_eq!(code, 2);
    assert!(
        err.contains("no profile named \"no-such-profile\""),
        "{err}"
    );
    assert!(err.contains("imgbuild profiles list"), "{err}");
}

#[test]
fn unknown_option_is_a_usage_error() {
    let (code, _, err) = run(imgbuild().args(["profiles", "list", "--bogus"]));
    assert_eq!(code, 2);
    assert!(err.contains("--bogus"), "{err}");
}

#[test]
fn version_and_generated_docs() {
    let (code, out, _) = run(imgbuild().arg("--version"));
    assert_eq!(code, 0);
    assert!(out.starts_with("imgbuild "), "{out}");
    let (code, out, _) = run(imgbuild().args(["completions", "bash"]));
    assert_eq!(code, 0);
    assert!(out.contains("_imgbuild()"), "{out}");
    let (code, out, _) = run(imgbuild().arg("man"));
    assert_eq!(code, 0);
    assert!(out.contains(".TH imgbuild"), "{out}");
}
