//! ProxyDHCP: boot information for PXE, UEFI HTTP Boot, iPXE and Raspberry Pi clients, beside
//! the network's own DHCP server, which alone assigns addresses.
//!
//! * [`classify`]: who asks (options 60, 77, 93, 97, OUI) and why.
//! * [`client`]: requests as firmware sends them, for scripted clients.
//! * [`reply`]: packets in → packets out.
//! * [`frame`]: IPv4/UDP framing for the raw-socket listener.
//! * [`server`]: the sockets on UDP 67 and 4011.
//!
//! DHCP encoding and decoding is the `dhcproto` crate's.

pub mod classify;
pub mod client;
pub mod frame;
pub mod reply;
pub mod server;

/// The message types scripted clients send (dhcproto's).
pub use dhcproto::v4::MessageType;
