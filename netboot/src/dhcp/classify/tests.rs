use dhcproto::{Decodable, Decoder};

use super::*;
use crate::dhcp::client::Request;

const MAC: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);

fn classify_req(r: &Request) -> Result<(Class, String), Ignored> {
    let bytes = r.encode(MessageType::Discover, MAC, 7);
    let msg = Message::decode(&mut Decoder::new(&bytes)).unwrap();
    classify(&client(&msg)?)
}

fn class(r: &Request) -> Class {
    classify_req(r).unwrap().0
}

#[test]
fn each_firmware_gets_its_class() {
    assert_eq!(class(&Request::bios()), Class::Bios);
    assert_eq!(class(&Request::uefi_x64()), Class::UefiPxe(EfiArch::X64));
    let ebc = Request {
        arch: Some(9),
        ..Request::uefi_x64()
    };
    assert_eq!(class(&ebc), Class::UefiPxe(EfiArch::X64));
    let arm = Request {
        vendor_class: Some("PXEClient:Arch:00011:UNDI:003000".into()),
        arch: Some(11),
        ..Request::default()
    };
    assert_eq!(class(&arm), Class::UefiPxe(EfiArch::Arm64));
    assert_eq!(class(&Request::http_x64()), Class::UefiHttp(EfiArch::X64));
    let http_arm = Request {
        vendor_class: Some("HTTPClient:Arch:00019:UNDI:003000".into()),
        arch: Some(19),
        ..Request::default()
    };
    assert_eq!(class(&http_arm), Class::UefiHttp(EfiArch::Arm64));
}

#[test]
fn ipxe_gets_the_script_whatever_its_firmware() {
    assert_eq!(class(&Request::ipxe_bios()), Class::Ipxe);
    let efi = Request {
        user_class: Some(b"iPXE".to_vec()),
        ..Request::uefi_x64()
    };
    assert_eq!(class(&efi), Class::Ipxe);
    // RFC 3004 length-prefixed form too.
    let prefixed = Request {
        user_class: Some(b"\x04iPXE".to_vec()),
        ..Request::bios()
    };
    assert_eq!(class(&prefixed), Class::Ipxe);
}

#[test]
fn pis_by_guid_with_model_and_serial_and_by_oui_as_fallback() {
    let pi4 = Request::pi(false, MAC, 0x00c03111, 0x9ffefdef);
    let (c, why) = classify_req(&pi4).unwrap();
    assert_eq!(
        c,
        Class::Pi {
            model: Some(PiModel::Pi4),
            serial: Some(0x9ffefdef)
        }
    );
    assert!(why.contains("Pi4 serial 9ffefdef"), "{why}");
    assert_eq!(pi4.guid.as_ref().unwrap()[..5], [0, 0x52, 0x50, 0x69, 0x34]);
    let pi5 = Request::pi(true, MAC, 0x00d04170, 0x1234abcd);
    assert_eq!(
        class(&pi5),
        Class::Pi {
            model: Some(PiModel::Pi5),
            serial: Some(0x1234abcd)
        }
    );
    // A Pi 5 OUI Tinkerbell's list lacks, no GUID: still a Pi, no serial.
    let bytes = Request::bios().encode(MessageType::Discover, Mac([0x2c, 0xcf, 0x67, 1, 2, 3]), 1);
    let msg = Message::decode(&mut Decoder::new(&bytes)).unwrap();
    let (c, why) = classify(&client(&msg).unwrap()).unwrap();
    assert_eq!(
        c,
        Class::Pi {
            model: None,
            serial: None
        }
    );
    assert!(why.contains("OUI"), "{why}");
    // The same MAC as a PC (no Pi OUI) is a BIOS client.
    assert_eq!(class(&Request::bios()), Class::Bios);
    // A GUID that is not a Pi's does not make one.
    let pc_guid = Request {
        guid: Some([vec![0u8], vec![0x11; 16]].concat()),
        ..Request::bios()
    };
    assert_eq!(class(&pc_guid), Class::Bios);
}

#[test]
fn non_boot_clients_are_ignored_with_the_reason() {
    let phone = Request {
        vendor_class: Some("android-dhcp-14".into()),
        ..Request::default()
    };
    assert_eq!(
        classify_req(&phone),
        Err(Ignored::NotBootClient(Some("android-dhcp-14".into())))
    );
    assert_eq!(
        classify_req(&Request::default()),
        Err(Ignored::NotBootClient(None))
    );
    let no_arch = Request {
        arch: None,
        ..Request::bios()
    };
    assert_eq!(classify_req(&no_arch), Err(Ignored::NoArch));
    let ia32 = Request {
        arch: Some(6),
        ..Request::uefi_x64()
    };
    let e = classify_req(&ia32).unwrap_err();
    assert_eq!(e, Ignored::UnsupportedArch(6, "x86 UEFI"));
    assert!(e.to_string().contains("architecture 6 (x86 UEFI)"), "{e}");
    // HTTPClient with a PXE architecture is not an HTTP Boot we serve.
    let odd = Request {
        arch: Some(7),
        ..Request::http_x64()
    };
    assert!(matches!(
        classify_req(&odd),
        Err(Ignored::UnsupportedArch(7, _))
    ));
}

#[test]
fn a_bad_hardware_address_length_is_refused_not_a_panic() {
    let mut bytes = Request::bios().encode(MessageType::Discover, MAC, 1);
    bytes[2] = 200; // hlen: dhcproto's chaddr() would slice past its 16 bytes
    let msg = Message::decode(&mut Decoder::new(&bytes)).unwrap();
    assert!(matches!(
        client(&msg),
        Err(Ignored::NotEthernet { hlen: 200, .. })
    ));
}

#[test]
fn ids_carry_the_pi_serial_or_the_pxe_uuid() {
    let ids = |r: &Request| {
        let bytes = r.encode(MessageType::Discover, MAC, 7);
        let msg = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        let c = client(&msg).unwrap();
        c.ids(&classify(&c).unwrap().0)
    };
    let pi = ids(&Request::pi(true, MAC, 0x00c03111, 0x1234abcd));
    assert_eq!(
        (pi.mac, pi.pi_serial, pi.guid),
        (Some(MAC), Some(0x1234abcd), None)
    );
    let uuid: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
    let pxe = Request {
        guid: Some([&[0u8][..], &uuid].concat()),
        ..Request::uefi_x64()
    };
    let got = ids(&pxe);
    assert_eq!((got.guid, got.pi_serial), (Some(uuid), None));
    // A GUID of another type or length is no UUID.
    let odd = Request {
        guid: Some([&[1u8][..], &uuid].concat()),
        ..Request::uefi_x64()
    };
    assert_eq!(ids(&odd).guid, None);
    assert_eq!(ids(&Request::bios()).guid, None);
}
