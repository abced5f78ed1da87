//! The proof that a flashed card boots as its node: the shared amd64 image flashed with
//! `--node pc-1` onto a loop device that held another node's flash before, then the loop device
//! itself booted under QEMU (OVMF, TCG) to the first-boot assertions. The identity it reports
//! (hostname, k3s node name, mesh join) can only have come from the seed `imgbuild flash` wrote.

mod support;

use std::time::Duration;

use support::flash::{Loop, flash, node_build, target_file};
use support::node::{self, DISK_SIZE, Seen};
use support::qemu::{self, Arch, ResultsDisk, VmBuilder};
use support::require_tool;

const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);
const BOOT_MOUNT: &str = "/boot/efi";

#[test]
fn a_flashed_loop_device_boots_as_the_node_its_seed_names() {
    if !(qemu::require_qemu(Arch::X86_64, true) && require_tool("losetup") && require_tool("mtype"))
    {
        return;
    }
    let Some(base) = qemu::debian_base() else {
        return;
    };
    let tmp = support::scratch();
    let work = tmp.path();
    let (setup, _) = node_build(work, &base, false);
    let shared = setup.out.join("pc-node.img");
    let shared = shared.to_str().unwrap();

    let file = target_file(&work.join("card.bin"), DISK_SIZE, false);
    let card = Loop::attach(&file, &[]);
    let dev = card.path().to_str().unwrap();
    // Another node's flash first (reused media), then pc-1's.
    for n in ["pc-2", "pc-1"] {
        let (code, out, err) = flash(work, &[shared, dev, "--node", n, "--yes"]);
        assert_eq!(code, 0, "flash --node {n}: {out}{err}");
    }

    let results = ResultsDisk::create(&work.join("results.img"));
    let mut vm = VmBuilder::uefi(Arch::X86_64)
        .disk(card.path(), "disk")
        .disk(&results.image, "results")
        .memory_mib(2048)
        .start(&work.join("vm"));
    vm.wait_for_poweroff(node::DONE, node::FAILED, BOOT_TIMEOUT);
    eprintln!("boot: {:.1?}", vm.elapsed());
    drop(vm);
    let seen = Seen::read(&results);
    seen.assert_first_boot("pc-1", BOOT_MOUNT);
}
