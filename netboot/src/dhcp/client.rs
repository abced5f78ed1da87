//! DHCP requests as boot firmware sends them, for scripted clients (tests, the fuzz corpus, a
//! Pi stand-in): the same options, byte for byte, as the client kinds this server classifies.

use std::net::Ipv4Addr;

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use crate::Mac;

/// The boot-relevant options of a request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub vendor_class: Option<String>,
    pub arch: Option<u16>,
    pub user_class: Option<Vec<u8>>,
    pub guid: Option<Vec<u8>>,
}

impl Request {
    /// A PC BIOS PXE ROM.
    pub fn bios() -> Request {
        Request::pxe("PXEClient:Arch:00000:UNDI:002001", 0)
    }

    /// EDK2 PXE on x64 (OVMF sends arch 7).
    pub fn uefi_x64() -> Request {
        Request::pxe("PXEClient:Arch:00007:UNDI:003001", 7)
    }

    /// EDK2 HTTP Boot on x64.
    pub fn http_x64() -> Request {
        Request::pxe("HTTPClient:Arch:00016:UNDI:003001", 16)
    }

    /// iPXE on a BIOS machine (QEMU's option ROM).
    pub fn ipxe_bios() -> Request {
        Request {
            user_class: Some(b"iPXE".to_vec()),
            ..Request::bios()
        }
    }

    /// A Raspberry Pi 4/5 EEPROM bootloader's DISCOVER: option 60 as on a PC BIOS, arch 0, and
    /// the GUID "RPi4"/"RPi5" + board revision + MAC low bytes + serial.
    pub fn pi(pi5: bool, mac: Mac, revision: u32, serial: u32) -> Request {
        let mut guid = vec![0u8];
        guid.extend_from_slice(if pi5 { b"RPi5" } else { b"RPi4" });
        guid.extend_from_slice(&revision.to_le_bytes());
        guid.extend_from_slice(&mac.0[2..]);
        guid.extend_from_slice(&serial.to_le_bytes());
        Request {
            guid: Some(guid),
            ..Request::bios()
        }
    }

    fn pxe(vendor: &str, arch: u16) -> Request {
        Request {
            vendor_class: Some(vendor.into()),
            arch: Some(arch),
            ..Request::default()
        }
    }

    /// The encoded message of type `t` from `mac` with transaction id `xid`.
    pub fn encode(&self, t: MessageType, mac: Mac, xid: u32) -> Vec<u8> {
        self.encode_with(t, mac, xid, None)
    }

    /// The REQUEST that takes `server`'s offer of `addr` (options 50 and 54, as RFC 2131
    /// SELECTING has it).
    pub fn encode_select(&self, mac: Mac, xid: u32, addr: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
        self.encode_with(MessageType::Request, mac, xid, Some((addr, server)))
    }

    fn encode_with(
        &self,
        t: MessageType,
        mac: Mac,
        xid: u32,
        select: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Vec<u8> {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_chaddr(&mac.0)
            .set_xid(xid)
            .set_flags(Flags::default().set_broadcast());
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(t));
        if let Some((addr, server)) = select {
            o.insert(DhcpOption::RequestedIpAddress(addr));
            o.insert(DhcpOption::ServerIdentifier(server));
        }
        if let Some(v) = &self.vendor_class {
            o.insert(DhcpOption::ClassIdentifier(v.as_bytes().to_vec()));
        }
        if let Some(a) = self.arch {
            o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
        }
        if let Some(u) = &self.user_class {
            o.insert(DhcpOption::UserClass(u.clone()));
        }
        if let Some(g) = &self.guid {
            o.insert(DhcpOption::ClientMachineIdentifier(g.clone()));
        }
        o.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail.
        m.encode(&mut Encoder::new(&mut out))
            .expect("encoding a DHCP request into memory");
        out
    }
}

/// What a client reads in a server's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub msg_type: Option<MessageType>,
    pub xid: u32,
    pub mac: Vec<u8>,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    /// The file field, or option 67.
    pub file: Option<String>,
    pub vendor_class: Option<Vec<u8>>,
    pub option43: Option<Vec<u8>>,
    pub option66: Option<Vec<u8>>,
    pub guid: Option<Vec<u8>>,
    pub lease_time: Option<u32>,
}

impl Answer {
    /// A BOOTREPLY's contents; None for anything else.
    pub fn parse(bytes: &[u8]) -> Option<Answer> {
        let m = Message::decode(&mut Decoder::new(bytes)).ok()?;
        if m.opcode() != Opcode::BootReply || m.hlen() > 16 {
            return None;
        }
        let o = m.opts();
        let raw = |code| match o.get(code) {
            Some(DhcpOption::ClassIdentifier(v))
            | Some(DhcpOption::VendorExtensions(v))
            | Some(DhcpOption::TFTPServerName(v))
            | Some(DhcpOption::BootfileName(v))
            | Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
            _ => None,
        };
        let text = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .trim_end_matches('\0')
                .to_string()
        };
        let file = m
            .fname()
            .map(text)
            .filter(|f| !f.is_empty())
            .or_else(|| raw(OptionCode::BootfileName).map(|b| text(&b)));
        Some(Answer {
            msg_type: o.msg_type(),
            xid: m.xid(),
            mac: m.chaddr().to_vec(),
            yiaddr: m.yiaddr(),
            siaddr: m.siaddr(),
            server_id: match o.get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
                _ => None,
            },
            file,
            vendor_class: raw(OptionCode::ClassIdentifier),
            option43: raw(OptionCode::VendorExtensions),
            option66: raw(OptionCode::TFTPServerName),
            guid: raw(OptionCode::ClientMachineIdentifier),
            lease_time: match o.get(OptionCode::AddressLeaseTime) {
                Some(DhcpOption::AddressLeaseTime(t)) => Some(*t),
                _ => None,
            },
        })
    }
}
