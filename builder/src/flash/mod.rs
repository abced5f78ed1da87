//! Flashing an image onto a card or disk, as pure logic over `Read`/`Write + Seek`.
//!
//! [`bmap`] reads and checks the block map, [`table`] the image's partitions from its first MiB,
//! [`plan`] decides what goes where (mapped ranges, zeroed metadata holes, the held-back head, a
//! rebuilt boot partition), [`write`] carries the plan out and verifies it, [`boot`] rebuilds a
//! node's boot partition with its seed. The device side (discovery, refusals, exclusive open,
//! ioctls) is [`crate::blockdev`]; the command that joins them is `cmd::flash`.

pub mod bmap;
pub mod boot;
pub mod plan;
pub mod table;
pub mod write;
