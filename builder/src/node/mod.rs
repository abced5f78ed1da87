//! Node composition: k3s, mesh agent, users, immutable root, per-node seeds, cloud user-data.
//!
//! * [`files`] renders the node's units, scripts and k3s config from the templates in
//!   `overlays/node/` ([`templates`]); [`compose`] puts them into an image tree with the pinned
//!   binaries, [`userdata`] into a cloud VM's `#cloud-config`. One source, two outputs.
//! * [`seed`] renders a node's NoCloud seed from the inventory ([`inventory`]) and the secrets
//!   file ([`secrets`]); [`inputs`] loads those for the commands that take `--node`.

pub mod compose;
pub mod files;
pub mod inputs;
pub mod inventory;
pub mod secrets;
pub mod seed;
pub mod systemd;
pub mod templates;
pub mod userdata;
pub mod yaml;
