//! k3s settings checked against the pinned release before an image exists, and by the stand-in
//! k3s in the booted node: a server-only `[k3s.config]` key (`kube-apiserver-arg`) on a server
//! builds and the server boots (the stand-in, holding the same flag data, checked every key it was
//! given and started); the same key on an agent is refused by `imgbuild build` with exit 2, the
//! file, line and column, and nothing written.

mod support;

use support::node::{NodeProfile, Setup, boot_uefi, grown_copy};
use support::qemu::{self, Arch};
use support::{imgbuild, require_tool, run};

const SERVER_ONLY: &str = "kube-apiserver-arg = [\"audit-log-maxage=30\"]";

#[test]
fn server_only_key_boots_on_a_server_and_is_refused_for_an_agent() {
    if !(qemu::require_qemu(Arch::X86_64, true)
        && require_tool("mkfs.vfat")
        && require_tool("mtype"))
    {
        return;
    }
    let Some(base) = qemu::debian_base() else {
        return;
    };
    let tmp = support::scratch();
    let work = tmp.path();

    // The agent: refused before anything is written, at the key's line in the profile.
    let agent = NodeProfile {
        k3s_config: SERVER_ONLY,
        ..NodeProfile::pc_node(&base)
    };
    let refused = Setup::new(&work.join("agent"), &agent, "pc");
    let (code, out, err) = run(imgbuild()
        .current_dir(&refused.dir)
        .args(["build", &refused.profile, "--node", "pc-1", "--out"])
        .arg(&refused.out)
        .arg("--cache-dir")
        .arg(refused.dir.join("cache")));
    assert_eq!(code, 2, "{out}{err}");
    let file = refused.dir.join("profiles/pc-node.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = 1 + text.lines().position(|l| l == SERVER_ONLY).unwrap();
    assert!(
        err.contains(&format!(
            "profiles/pc-node.toml:{line}:1: k3s.config.kube-apiserver-arg is a k3s server setting"
        )),
        "{err}"
    );
    assert!(err.contains("k3s.role = \"server\""), "{err}");
    assert!(
        !refused.out.exists(),
        "the refused build wrote {}",
        refused.out.display()
    );
    assert!(
        !refused.dir.join("cache").exists(),
        "the refused build fetched its inputs"
    );
    assert!(
        !refused.dir.join("imgbuild.lock").exists(),
        "the refused build wrote a lock"
    );

    // The server with the same key: builds, boots, and the stand-in k3s accepted its config.
    let server = NodeProfile {
        k3s_config: SERVER_ONLY,
        ..NodeProfile::pc_server(&base)
    };
    let setup = Setup::new(&work.join("server"), &server, "pc");
    let img = setup.build_node("pc-1");
    setup.assert_secrets_only_in_node_image(&img);
    let disk = grown_copy(&img, &work.join("pc-1.img"));
    let seen = boot_uefi(&disk, work, "pc-1", None);
    seen.assert_first_boot_as("pc-1", server.boot_mount, "server");
    let show = seen.show();
    assert!(seen.standin.contains("- \"audit-log-maxage=30\""), "{show}");
    assert!(seen.standin.contains("kube-apiserver-arg:"), "{show}");
}
