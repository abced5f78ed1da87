//! The dnsmasq snippet for Pi-hole mode: Pi-hole's DHCP (pihole-FTL, an embedded dnsmasq) hands
//! out addresses as usual and sends PXE clients to us. BIOS gets `undionly.kpxe`, UEFI x64 and
//! arm64 get `snponly.efi` over our TFTP; iPXE (user class "iPXE") gets our HTTP boot script,
//! which breaks the chainload loop. Raspberry Pis also say "arch 0": they are kept out of the BIOS
//! answer by their option-97 GUID prefix (the Pi's own netboot is part 2).

use std::net::Ipv4Addr;

/// TFTP names of the iPXE binaries (the catalog serves them under these names).
pub const BIOS_NBP: &str = "bios/undionly.kpxe";
pub const EFI_X64_NBP: &str = "efi-x64/snponly.efi";
pub const EFI_ARM64_NBP: &str = "efi-arm64/snponly.efi";

/// The snippet for a server at `server` with HTTP on `http_port` (TFTP must be on 69: PXE
/// firmware has no way to be told another port).
pub fn snippet(server: Ipv4Addr, http_port: u16) -> String {
    format!(
        "# imgbuild netboot: Pi-hole's DHCP sends PXE clients to the imgbuild server at {server}.
# Written by `imgbuild netboot dnsmasq`. Install it as /etc/dnsmasq.d/50-imgbuild-netboot.conf;
# Pi-hole v6 reads that folder only when misc.etc_dnsmasq_d is on (off by default):
#   sudo pihole-FTL --config misc.etc_dnsmasq_d true
# then restart pihole-FTL. Leave Pi-hole's own TFTP off: imgbuild serves UDP 69 itself.
dhcp-match=set:imgbuild-bios,option:client-arch,0
dhcp-match=set:imgbuild-efi64,option:client-arch,7
dhcp-match=set:imgbuild-efi64,option:client-arch,9
dhcp-match=set:imgbuild-efiarm64,option:client-arch,11
# Raspberry Pi 4 and 5 bootloaders (GUID RPi4 / RPi5) also send arch 0; they are not PCs.
dhcp-match=set:imgbuild-rpi,97,00:52:50:69:34
dhcp-match=set:imgbuild-rpi,97,00:52:50:69:35
# iPXE identifies itself: it gets the HTTP script, never iPXE again (no chainload loop).
dhcp-userclass=set:imgbuild-ipxe,iPXE
dhcp-boot=tag:imgbuild-ipxe,http://{server}:{http_port}/boot.ipxe
dhcp-boot=tag:!imgbuild-ipxe,tag:imgbuild-bios,tag:!imgbuild-rpi,{BIOS_NBP},,{server}
dhcp-boot=tag:!imgbuild-ipxe,tag:imgbuild-efi64,{EFI_X64_NBP},,{server}
dhcp-boot=tag:!imgbuild-ipxe,tag:imgbuild-efiarm64,{EFI_ARM64_NBP},,{server}
"
    )
}
