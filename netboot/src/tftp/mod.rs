//! TFTP, read-only: RFC 1350 with options (RFC 2347), blksize (2348), tsize and timeout (2349)
//! and windowsize (7440). Our own rather than a crate: `async-tftp` ignores client ERROR packets
//! and drops re-requests from the same port, which is exactly what the Raspberry Pi bootloader
//! does (tsize probe, abort, RRQ again); see reference/flash-and-netboot.md.
//!
//! [`packet`] is the codec, [`path`] the name check, [`transfer`] one transfer's state machine,
//! [`pace`] the per-client rate cap (all pure); [`server`] is the thin tokio layer with the sockets and the clock.

pub mod pace;
pub mod packet;
pub mod path;
pub mod server;
pub mod transfer;
