//! Who is asking: a DHCP request's boot-relevant options (60 vendor class, 77 user class, 93
//! architecture, 97 client GUID) turned into one [`Class`], or the reason it is not ours to answer.
//!
//! Option 93 is read as a number, not through `dhcproto::v4::Architecture`: that enum follows the
//! pre-errata RFC 4578 table (it calls 7 "BC" and 9 "X86_64"; IANA has 7 = x64 UEFI).

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};

use crate::Mac;

/// Raspberry Pi boards the EEPROM bootloader identifies in option 97.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiModel {
    Pi4,
    Pi5,
}

/// CPU of a UEFI client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EfiArch {
    X64,
    Arm64,
}

/// What a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// PC BIOS PXE ROM: undionly.kpxe over TFTP.
    Bios,
    /// UEFI PXE: snponly.efi over TFTP (file on port 4011).
    UefiPxe(EfiArch),
    /// UEFI HTTP Boot: snponly.efi by URL in the file field, option 60 "HTTPClient".
    UefiHttp(EfiArch),
    /// iPXE (user class "iPXE"): our HTTP boot script, so it never chainloads iPXE again.
    Ipxe,
    /// A Raspberry Pi bootloader: option 43 "Raspberry Pi Boot", then TFTP from its serial's
    /// directory. `serial` is None when the Pi was recognised by its OUI only.
    Pi {
        model: Option<PiModel>,
        serial: Option<u32>,
    },
}

/// The boot-relevant facts of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub mac: Mac,
    pub msg_type: MessageType,
    pub arch: Option<u16>,
    pub vendor_class: Option<String>,
    pub ipxe: bool,
    /// Option 97 as sent (type byte included), echoed in the reply.
    pub guid: Option<Vec<u8>>,
}

/// Why a request gets no answer: logged, never sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("not Ethernet (htype {htype:?}, hlen {hlen})")]
    NotEthernet { htype: String, hlen: u8 },
    #[error("no DHCP message type (option 53)")]
    NoMessageType,
    #[error(
        "a {0:?}: only a DISCOVER on port 67 or a REQUEST/INFORM on 4011 is a proxyDHCP's to answer"
    )]
    WrongMessage(MessageType),
    #[error("no option 60 PXEClient/HTTPClient (vendor class {0:?}): not a network boot")]
    NotBootClient(Option<String>),
    #[error("no option 93 (client architecture)")]
    NoArch,
    #[error("architecture {0} ({1}) has no boot file here")]
    UnsupportedArch(u16, &'static str),
}

/// OUIs of Raspberry Pi Ltd (the fallback when a Pi sends no RPi GUID; 2c:cf:67 is a Pi 5's
/// that Tinkerbell's list lacks).
const PI_OUIS: [[u8; 3]; 6] = [
    [0xb8, 0x27, 0xeb],
    [0xdc, 0xa6, 0x32],
    [0xe4, 0x5f, 0x01],
    [0x28, 0xcd, 0xc1],
    [0xd8, 0x3a, 0xdd],
    [0x2c, 0xcf, 0x67],
];

/// The facts of `msg`, or why it is not a boot request at all.
pub fn client(msg: &Message) -> Result<Client, Ignored> {
    if msg.opcode() != Opcode::BootRequest {
        return Err(Ignored::NotRequest);
    }
    // Check hlen before chaddr(): dhcproto slices chaddr by the wire's hlen and panics past 16.
    if msg.htype() != dhcproto::v4::HType::Eth || msg.hlen() != 6 {
        return Err(Ignored::NotEthernet {
            htype: format!("{:?}", msg.htype()),
            hlen: msg.hlen(),
        });
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(msg.chaddr());
    let opts = msg.opts();
    let bytes = |code| match opts.get(code) {
        Some(DhcpOption::ClassIdentifier(v))
        | Some(DhcpOption::UserClass(v))
        | Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
        _ => None,
    };
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    Ok(Client {
        mac: Mac(mac),
        msg_type: opts.msg_type().ok_or(Ignored::NoMessageType)?,
        arch,
        vendor_class: bytes(OptionCode::ClassIdentifier)
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
        // iPXE sends "iPXE" bare, not RFC 3004 length-prefixed: match anywhere.
        ipxe: bytes(OptionCode::UserClass).is_some_and(|v| v.windows(4).any(|w| w == b"iPXE")),
        guid: bytes(OptionCode::ClientMachineIdentifier),
    })
}

impl Client {
    /// The identifiers the inventory matches: the MAC, a Pi's serial (from `class`), or else
    /// the option-97 UUID (type 0 and 16 bytes, RFC 4578).
    pub fn ids(&self, class: &Class) -> crate::ClientIds {
        let pi_serial = match class {
            Class::Pi { serial, .. } => *serial,
            _ => None,
        };
        let guid = match self.guid.as_deref() {
            Some([0, rest @ ..]) if pi_serial.is_none() => <[u8; 16]>::try_from(rest).ok(),
            _ => None,
        };
        crate::ClientIds {
            mac: Some(self.mac),
            guid,
            pi_serial,
            ip: None,
        }
    }
}

/// The Pi model and serial in an option-97 GUID: type 0, FourCC "RPi4"/"RPi5", board revision
/// (4), the MAC's low 4 bytes, the serial (4, little-endian like the FourCC).
pub fn pi_guid(guid: &[u8]) -> Option<(PiModel, u32)> {
    if guid.len() != 17 || guid[0] != 0 {
        return None;
    }
    let model = match &guid[1..5] {
        b"RPi4" => PiModel::Pi4,
        b"RPi5" => PiModel::Pi5,
        _ => return None,
    };
    let serial = u32::from_le_bytes(guid[13..17].try_into().ok()?);
    Some((model, serial))
}

/// What `c` gets, with the reason for the log, or why it gets nothing.
pub fn classify(c: &Client) -> Result<(Class, String), Ignored> {
    let vendor = c.vendor_class.as_deref().unwrap_or("");
    let http = vendor.starts_with("HTTPClient");
    // The Pi's REQUEST lacks option 60, but only its DISCOVER needs our answer.
    if !http && !vendor.starts_with("PXEClient") {
        return Err(Ignored::NotBootClient(c.vendor_class.clone()));
    }
    let arch = c.arch.ok_or(Ignored::NoArch)?;
    if let Some((model, serial)) = c.guid.as_deref().and_then(pi_guid) {
        let why = format!("option 97 GUID says {model:?} serial {serial:08x}");
        return Ok((
            Class::Pi {
                model: Some(model),
                serial: Some(serial),
            },
            why,
        ));
    }
    if c.ipxe {
        return Ok((Class::Ipxe, "user class iPXE: the HTTP boot script".into()));
    }
    let efi = match arch {
        0 if PI_OUIS.contains(&[c.mac.0[0], c.mac.0[1], c.mac.0[2]]) => {
            let why = "arch 0 with a Raspberry Pi OUI and no RPi GUID".to_string();
            let pi = Class::Pi {
                model: None,
                serial: None,
            };
            return Ok((pi, why));
        }
        0 if !http => return Ok((Class::Bios, "arch 0: PC BIOS PXE".into())),
        7 | 9 if !http => EfiArch::X64,
        11 if !http => EfiArch::Arm64,
        16 if http => EfiArch::X64,
        19 if http => EfiArch::Arm64,
        _ => return Err(Ignored::UnsupportedArch(arch, arch_name(arch))),
    };
    let class = if http {
        Class::UefiHttp(efi)
    } else {
        Class::UefiPxe(efi)
    };
    let kind = if http { "UEFI HTTP Boot" } else { "UEFI PXE" };
    Ok((class, format!("arch {arch}: {kind} {efi:?}")))
}

/// IANA's name for an option-93 value (after the RFC 4578 errata).
pub fn arch_name(arch: u16) -> &'static str {
    match arch {
        0 => "x86 BIOS",
        6 => "x86 UEFI",
        7 => "x64 UEFI",
        9 => "EBC (x64 UEFI)",
        10 => "ARM32 UEFI",
        11 => "ARM64 UEFI",
        15 => "x86 UEFI HTTP",
        16 => "x64 UEFI HTTP",
        18 => "ARM32 UEFI HTTP",
        19 => "ARM64 UEFI HTTP",
        20 => "BIOS HTTP",
        41 => "arm rpiboot",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests;
