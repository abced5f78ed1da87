//! `imgbuild flash --node` of a Raspberry Pi image (MBR, FAT boot partition at 4 MiB) onto loop
//! devices: byte for byte `build --node`'s image, fsck-clean on reused media, no partition table
//! after SIGKILL. A `pi_*` binary, so CI runs it after the arm64 Pi base is built.

mod support;

#[test]
fn pi_node_flash_equals_build_node_and_survives_reuse_and_sigkill() {
    for t in ["sfdisk", "mtype", "fsck.fat", "e2fsck", "losetup", "blkid"] {
        if !support::require_tool(t) {
            return;
        }
    }
    let Some(base) = support::pi::pi_base(None) else {
        return;
    };
    support::flash::node_flash(&base, true);
}
