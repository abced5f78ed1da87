//! The two block-device ioctls no safe wrapper covers.
//!
//! rustix has safe wrappers for `BLKSSZGET`/`BLKPBSZGET` only; nix's `ioctl_none!` generates
//! `unsafe fn`s too. So these two calls go through `rustix::ioctl::ioctl` with a `NoArg`
//! opcode, each in a function of its own with the narrowest possible `#[allow(unsafe_code)]`.
//! (util-linux's `blockdev --rereadpt/--flushbufs` would avoid the `unsafe`, at the cost of a
//! process per call and of depending on its output.) Both take no argument, so there is no
//! pointer for the kernel to write through.

use std::os::fd::AsFd;

use rustix::ioctl::{NoArg, ioctl, opcode};

/// `BLKRRPART` = `_IO(0x12, 95)`: re-read the partition table.
const BLKRRPART: rustix::ioctl::Opcode = opcode::none(0x12, 95);
/// `BLKFLSBUF` = `_IO(0x12, 97)`: flush and drop the device's buffer cache.
const BLKFLSBUF: rustix::ioctl::Opcode = opcode::none(0x12, 97);

/// Asks the kernel to re-read the partition table. Fails with EBUSY when a partition is in
/// use, EINVAL on devices without partition support (a loop device without `-P`).
#[allow(unsafe_code)]
pub fn reread_partitions(fd: impl AsFd) -> std::io::Result<()> {
    // SAFETY: BLKRRPART takes no argument (`_IO`); `NoArg` passes none, and the opcode is the
    // kernel's (include/uapi/linux/fs.h). The fd is a valid open descriptor borrowed for the call.
    unsafe { ioctl(fd, NoArg::<BLKRRPART>::new()) }.map_err(Into::into)
}

/// Writes back and drops the block device's buffer cache, so a read-back comes from the device.
#[allow(unsafe_code)]
pub fn flush_buffers(fd: impl AsFd) -> std::io::Result<()> {
    // SAFETY: BLKFLSBUF takes no argument (`_IO`); `NoArg` passes none, and the opcode is the
    // kernel's (include/uapi/linux/fs.h). The fd is a valid open descriptor borrowed for the call.
    unsafe { ioctl(fd, NoArg::<BLKFLSBUF>::new()) }.map_err(Into::into)
}
