//! The proxyDHCP answer, packets in → packets out: a request's bytes become the reply's bytes
//! and where to send them, or the logged reason for silence. Never an address (`yiaddr` stays
//! 0), never a lease (no option 51): the network's own DHCP server does that.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::classify::{self, Class, Client, EfiArch, Ignored};
use crate::dnsmasq::{BIOS_NBP, EFI_ARM64_NBP, EFI_X64_NBP};

/// The port a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67: DISCOVERs, answered with an OFFER.
    Dhcp,
    /// 4011, the PXE boot server: REQUESTs (UEFI, iPXE), answered with an ACK.
    Pxe,
}

/// Where this server is and what it has.
#[derive(Debug, Clone)]
pub struct Config {
    /// This host's address on the boot network: option 54, siaddr, option 66.
    pub server: Ipv4Addr,
    /// `http://ADDR:PORT` of our HTTP server.
    pub http_base: String,
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// 255.255.255.255:68 (the client has no address yet).
    Broadcast,
    /// A relay agent (giaddr), port 67.
    Relay(Ipv4Addr),
    /// Back to the request's source (port 4011 requests come from a configured client).
    Source(SocketAddrV4),
}

/// An answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub dest: Dest,
    pub client: Client,
    pub class: Class,
    /// Why the client got this class, for the log.
    pub reason: String,
}

/// Why nothing was sent (the log says it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Silence {
    #[error("not a DHCP packet: {0}")]
    Malformed(String),
    #[error("{0}")]
    Ignored(#[from] Ignored),
    /// The policy (inventory) said no; the client's facts are logged with it.
    #[error("{mac}: {why}")]
    Refused { mac: crate::Mac, why: String },
    #[error(
        "{mac}: {class:?} needs {file}, which this server does not have (build it into the netboot set)"
    )]
    NoFile {
        mac: crate::Mac,
        class: Class,
        file: &'static str,
    },
}

/// The answer to the datagram `packet` from `from` on `port`. `allow` is the policy: None lets
/// the client boot, Some(reason) refuses it; `has_file` says whether a TFTP name is served.
pub fn answer(
    packet: &[u8],
    from: SocketAddrV4,
    port: Port,
    cfg: &Config,
    has_file: &dyn Fn(&str) -> bool,
    allow: &dyn Fn(&Client, &Class) -> Option<String>,
) -> Result<Reply, Silence> {
    let msg = decode(packet)?;
    let client = classify::client(&msg)?;
    let wanted = match port {
        Port::Dhcp => matches!(client.msg_type, MessageType::Discover),
        Port::Pxe => matches!(client.msg_type, MessageType::Request | MessageType::Inform),
    };
    if !wanted {
        return Err(Ignored::WrongMessage(client.msg_type).into());
    }
    let (class, reason) = classify::classify(&client)?;
    if let Some(file) = nbp(class)
        && !has_file(file)
    {
        return Err(Silence::NoFile {
            mac: client.mac,
            class,
            file,
        });
    }
    if let Some(why) = allow(&client, &class) {
        return Err(Silence::Refused {
            mac: client.mac,
            why,
        });
    }
    let out = build(&msg, &client, class, port, cfg);
    let dest = if !msg.giaddr().is_unspecified() {
        Dest::Relay(msg.giaddr())
    } else if port == Port::Pxe && !from.ip().is_unspecified() {
        Dest::Source(from)
    } else {
        Dest::Broadcast
    };
    Ok(Reply {
        bytes: encode(&out),
        dest,
        client,
        class,
        reason,
    })
}

/// The TFTP name of the iPXE binary a class boots, if it boots one.
pub fn nbp(class: Class) -> Option<&'static str> {
    match class {
        Class::Bios => Some(BIOS_NBP),
        Class::UefiPxe(EfiArch::X64) | Class::UefiHttp(EfiArch::X64) => Some(EFI_X64_NBP),
        Class::UefiPxe(EfiArch::Arm64) | Class::UefiHttp(EfiArch::Arm64) => Some(EFI_ARM64_NBP),
        Class::Ipxe | Class::Pi { .. } => None,
    }
}

fn decode(packet: &[u8]) -> Result<Message, Silence> {
    // dhcproto does not check the magic cookie; a BOOTP packet without it is not DHCP.
    if packet.get(236..240) != Some(&[99, 130, 83, 99][..]) {
        return Err(Silence::Malformed("no DHCP magic cookie".into()));
    }
    check_option_lengths(&packet[240..]).map_err(Silence::Malformed)?;
    Message::decode(&mut Decoder::new(packet)).map_err(|e| Silence::Malformed(e.to_string()))
}

/// Refuses option lengths dhcproto 0.14 only `debug_assert!`s (or subtracts from unchecked):
/// 80 rapid commit (0), 81 client FQDN (≥ 3), 94 client NII (3), 151 BLQ status (≥ 1), 152–155
/// BLQ times (4). A debug build panics on them, a release build misreads; found by flooding the
/// server with malformed requests and by the fuzzer. Like dhcproto, adjacent options with the
/// same code are one option (RFC 3396 concatenation), so their lengths add up.
fn check_option_lengths(mut opts: &[u8]) -> Result<(), String> {
    let mut run: Option<(u8, usize)> = None;
    while let [code, rest @ ..] = opts {
        if run.is_some_and(|(c, _)| c != *code) {
            check_length(run.take())?;
        }
        if matches!(code, 0 | 255) {
            check_length(run.take())?;
            if *code == 255 {
                return Ok(());
            }
            opts = rest;
            continue;
        }
        let [len, rest @ ..] = rest else {
            return Err(format!("option {code} has no length"));
        };
        let len = usize::from(*len);
        if rest.len() < len {
            return Err(format!("option {code} runs past the packet"));
        }
        run = Some((*code, run.map_or(0, |(_, l)| l) + len));
        opts = &rest[len..];
    }
    check_length(run)
}

fn check_length(run: Option<(u8, usize)>) -> Result<(), String> {
    let Some((code, len)) = run else {
        return Ok(());
    };
    let ok = match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        151 => len >= 1,
        152..=155 => len == 4,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("option {code} has a bad length {len}"))
    }
}

fn encode(msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(576);
    // Encoding our own well-formed message into a Vec cannot fail.
    msg.encode(&mut Encoder::new(&mut out))
        .expect("encoding a DHCP reply into memory");
    out
}

/// The reply message: header copied from the request (xid, chaddr, flags, giaddr), no address.
fn build(req: &Message, c: &Client, class: Class, port: Port, cfg: &Config) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_chaddr(&c.mac.0)
        .set_xid(req.xid())
        .set_flags(Flags::default().set_broadcast())
        .set_giaddr(req.giaddr())
        .set_yiaddr(Ipv4Addr::UNSPECIFIED)
        .set_siaddr(cfg.server);
    if port == Port::Pxe {
        // A configured client asking the boot server: keep its address in ciaddr.
        m.set_ciaddr(req.ciaddr());
    }
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(match port {
        Port::Dhcp => MessageType::Offer,
        Port::Pxe => MessageType::Ack,
    }));
    opts.insert(DhcpOption::ServerIdentifier(cfg.server));
    let vendor: &[u8] = match class {
        Class::UefiHttp(_) => b"HTTPClient",
        _ => b"PXEClient",
    };
    opts.insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
    if let Some(g) = &c.guid {
        opts.insert(DhcpOption::ClientMachineIdentifier(g.clone()));
    }
    boot_fields(&mut m, class, cfg);
    m
}

/// The class's boot file (and option 43 where the class needs it).
fn boot_fields(m: &mut Message, class: Class, cfg: &Config) {
    let file = match class {
        Class::Bios => {
            // PXE discovery control 8: boot the file named here, skip boot server discovery.
            m.opts_mut()
                .insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
            BIOS_NBP.to_string()
        }
        // No option 43: UEFI firmware then asks port 4011, where the ACK carries the same file.
        Class::UefiPxe(_) => nbp(class).unwrap_or_default().to_string(),
        Class::UefiHttp(_) => format!("{}/a/{}", cfg.http_base, nbp(class).unwrap_or_default()),
        Class::Ipxe => format!("{}/boot.ipxe", cfg.http_base),
        Class::Pi { .. } => {
            m.opts_mut()
                .insert(DhcpOption::VendorExtensions(pi_option43()));
            // Option 66 as a dotted quad: the Pi's TFTP server when 54 came from elsewhere.
            let tftp = cfg.server.to_string().into_bytes();
            m.opts_mut().insert(DhcpOption::TFTPServerName(tftp));
            return;
        }
    };
    set_file(m, &file);
}

/// The file field holds 128 bytes (dhcproto panics past that): a longer name goes in option 67.
fn set_file(m: &mut Message, file: &str) {
    if file.len() < 128 {
        m.set_fname_str(file);
    } else {
        m.opts_mut()
            .insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    }
}

/// PXE vendor options as dnsmasq's `pxe-service=0,"Raspberry Pi Boot"` sends them: discovery
/// control 3, a zero-timeout prompt (10), and boot menu item 0 "Raspberry Pi Boot" (9: type(2),
/// length(1), text), the string the Pi bootloader looks for.
pub fn pi_option43() -> Vec<u8> {
    const TEXT: &[u8] = b"Raspberry Pi Boot";
    let mut v = vec![6, 1, 3, 10, 4, 0, b'P', b'X', b'E'];
    v.extend([9, (TEXT.len() + 3) as u8, 0, 0, TEXT.len() as u8]);
    v.extend_from_slice(TEXT);
    v.push(255);
    v
}

#[cfg(test)]
mod tests;
