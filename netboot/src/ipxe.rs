//! iPXE scripts: a node's boot (kernel, initrds, command line with its seed URL), the chain that
//! adds the MAC to a request that came without one, and the answer for a MAC we do not know.
//!
//! The seed is `ds=nocloud-net;s=URL`: cloud-init 22.4 (Debian 12) takes `ds=nocloud` for a
//! local-only seed and, given an http URL there, fetches it but skips the modules that apply it.
//! `;` needs no quoting: iPXE splits a line into words at white space and
//! only a word that *is* `||`, `&&` or `;` separates commands. `$` would be expanded by iPXE, so a
//! command line may hold no `$` other than the `${base}` the server replaces.

use crate::{Mac, NodeBoot};

/// What `/boot.ipxe` answers for a MAC that is not in the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unknown {
    /// `exit`: the firmware goes on to its next boot device (never a bogus file).
    #[default]
    Ignore,
    /// Drop to the iPXE shell on the machine's console (for debugging).
    Shell,
}

/// A command line the script cannot carry as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCmdline {
    #[error(
        "it holds {0:?}, which iPXE would expand or treat as script syntax; only `${{base}}` may appear"
    )]
    Char(char),
    #[error("it holds `{0}`, an iPXE command separator, as a word")]
    Separator(String),
}

/// Checks a command line from an artifact set for what the iPXE `kernel` line cannot carry.
pub fn check_cmdline(cmdline: &str) -> Result<(), BadCmdline> {
    let rest = cmdline.replace("${base}", "");
    if let Some(c) = rest
        .chars()
        .find(|c| matches!(c, '$' | '"' | '\'' | '\\' | '#') || c.is_control())
    {
        return Err(BadCmdline::Char(c));
    }
    if let Some(w) = rest
        .split_whitespace()
        .find(|w| matches!(*w, "||" | "&&" | ";"))
    {
        return Err(BadCmdline::Separator(w.to_string()));
    }
    Ok(())
}

/// The last path component: the name iPXE gives the image, and the UEFI stub's `initrd=`.
fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The kernel's command line buffer (x86 and arm64 `COMMAND_LINE_SIZE`), its NUL included.
/// iPXE cuts a longer line to the size the bzImage header gives (2047), silently.
pub const COMMAND_LINE_SIZE: usize = 2048;

/// A node's command line that the kernel would not take whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node {node:?}: its kernel command line would be {len} bytes, over the {max} the kernel takes (COMMAND_LINE_SIZE {COMMAND_LINE_SIZE}, with its NUL)",
    max = COMMAND_LINE_SIZE - 1
)]
pub struct TooLong {
    pub node: String,
    pub len: usize,
}

/// The kernel command line of a node's boot: the artifact set's line (`${base}` filled in), the
/// seed URL with `token`, the node's `network-config=` and the initrd names. Checked against
/// [`COMMAND_LINE_SIZE`] as the kernel gets it: iPXE's EFI loader puts the image name first.
pub fn kernel_cmdline(http: &str, boot: &NodeBoot, token: &str) -> Result<String, TooLong> {
    let base = format!("{http}/a/{}", boot.profile);
    let mut cmdline = boot.cmdline.replace("${base}", &base);
    cmdline.push_str(&format!(" ds=nocloud-net;s={http}/seed/{token}/"));
    if let Some(net) = &boot.network_config {
        cmdline.push(' ');
        cmdline.push_str(net);
    }
    // The UEFI stub finds initrds by these names (older kernels, and iPXE builds without
    // LoadFile2); on BIOS the kernel ignores them.
    for i in &boot.initrds {
        cmdline.push_str(&format!(" initrd={}", base_name(i)));
    }
    let len = base_name(&boot.kernel).len() + 1 + cmdline.len();
    if len >= COMMAND_LINE_SIZE {
        return Err(TooLong {
            node: boot.node.clone(),
            len,
        });
    }
    Ok(cmdline)
}

/// The boot script of a node. `http` is the server's base URL (`http://ADDR:PORT`), `token` the
/// one-shot seed token minted for this boot.
pub fn node_script(http: &str, boot: &NodeBoot, token: &str) -> Result<String, TooLong> {
    let cmdline = kernel_cmdline(http, boot, token)?;
    let mut s = format!(
        "#!ipxe\n# imgbuild: node {node}, profile {profile}\necho imgbuild: booting node {node} (profile {profile})\n",
        node = boot.node,
        profile = boot.profile
    );
    s.push_str(&format!(
        "kernel {http}/a/{} {cmdline} || goto failed\n",
        boot.kernel
    ));
    for i in &boot.initrds {
        s.push_str(&format!(
            "initrd --name {} {http}/a/{i} || goto failed\n",
            base_name(i)
        ));
    }
    s.push_str(&format!(
        "boot || goto failed\n:failed\necho imgbuild: the network boot of node {} failed, trying the next boot device in 10 s\nsleep 10\nexit 1\n",
        boot.node
    ));
    Ok(s)
}

/// The answer to `/boot.ipxe` without a MAC (dnsmasq's `dhcp-boot` URL): ask again with it.
pub fn chain_script(http: &str) -> String {
    format!("#!ipxe\nchain {http}/boot.ipxe?mac=${{mac:hexhyp}} || exit 1\n")
}

/// The answer for a MAC that is not in the inventory.
pub fn unknown_script(policy: Unknown, mac: Mac) -> String {
    match policy {
        Unknown::Ignore => format!(
            "#!ipxe\necho imgbuild: {mac} is not in the inventory, trying the next boot device\nexit\n"
        ),
        Unknown::Shell => format!(
            "#!ipxe\necho imgbuild: {mac} is not in the inventory, here is the iPXE shell\nshell\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> NodeBoot {
        NodeBoot {
            node: "pc-1".into(),
            profile: "pc-node".into(),
            kernel: "pc-node/vmlinuz".into(),
            initrds: vec!["pc-node/initrd.img".into(), "pc-node/imgbuild.cpio".into()],
            cmdline: "ro console=ttyS0 imgbuild.root=${base}/root.squashfs".into(),
            network_config: Some(
                "network-config=H4sIAAAAAAACA8tLLSnPL8q24lJQKEstKs7Mz7NSMOICAOi/ytoWAAAA".into(),
            ),
        }
    }

    #[test]
    fn node_script_has_kernel_initrds_seed_and_network_config() {
        let s = node_script("http://10.0.0.1:8080", &boot(), "ab12").unwrap();
        assert_eq!(
            s,
            "#!ipxe\n# imgbuild: node pc-1, profile pc-node\necho imgbuild: booting node pc-1 (profile pc-node)\n\
             kernel http://10.0.0.1:8080/a/pc-node/vmlinuz ro console=ttyS0 imgbuild.root=http://10.0.0.1:8080/a/pc-node/root.squashfs \
             ds=nocloud-net;s=http://10.0.0.1:8080/seed/ab12/ \
             network-config=H4sIAAAAAAACA8tLLSnPL8q24lJQKEstKs7Mz7NSMOICAOi/ytoWAAAA \
             initrd=initrd.img initrd=imgbuild.cpio || goto failed\n\
             initrd --name initrd.img http://10.0.0.1:8080/a/pc-node/initrd.img || goto failed\n\
             initrd --name imgbuild.cpio http://10.0.0.1:8080/a/pc-node/imgbuild.cpio || goto failed\n\
             boot || goto failed\n:failed\necho imgbuild: the network boot of node pc-1 failed, trying the next boot device in 10 s\nsleep 10\nexit 1\n"
        );
    }

    #[test]
    fn a_node_without_network_config_gets_none() {
        let b = NodeBoot {
            network_config: None,
            ..boot()
        };
        let line = kernel_cmdline("http://h:1", &b, "ab12").unwrap();
        assert_eq!(
            line,
            "ro console=ttyS0 imgbuild.root=http://h:1/a/pc-node/root.squashfs ds=nocloud-net;s=http://h:1/seed/ab12/ initrd=initrd.img initrd=imgbuild.cpio"
        );
    }

    #[test]
    fn the_command_line_must_fit_the_kernels_buffer_with_the_efi_image_name() {
        let b = NodeBoot {
            network_config: None,
            ..boot()
        };
        let used = "vmlinuz ".len() + kernel_cmdline("http://h:1", &b, "ab12").unwrap().len();
        // Padded to 2047 bytes as the EFI stub gets it ("vmlinuz " first): fits, NUL included.
        let pad = |n: usize| NodeBoot {
            cmdline: format!("{} x={}", b.cmdline, "y".repeat(n - 3)),
            ..b.clone()
        };
        let fits = pad(COMMAND_LINE_SIZE - 1 - used);
        assert!(node_script("http://h:1", &fits, "ab12").is_ok());
        let over = pad(COMMAND_LINE_SIZE - used);
        assert_eq!(
            node_script("http://h:1", &over, "ab12"),
            Err(TooLong {
                node: "pc-1".into(),
                len: COMMAND_LINE_SIZE
            })
        );
        let e = kernel_cmdline("http://h:1", &over, "ab12").unwrap_err();
        assert_eq!(
            e.to_string(),
            "node \"pc-1\": its kernel command line would be 2048 bytes, over the 2047 the kernel takes (COMMAND_LINE_SIZE 2048, with its NUL)"
        );
    }

    #[test]
    fn cmdline_check() {
        assert!(check_cmdline(&boot().cmdline).is_ok());
        assert_eq!(check_cmdline("a=${x}"), Err(BadCmdline::Char('$')));
        assert_eq!(check_cmdline("a=\"b c\""), Err(BadCmdline::Char('"')));
        assert_eq!(
            check_cmdline("a ; b"),
            Err(BadCmdline::Separator(";".into()))
        );
        assert!(check_cmdline("a=1;b=2").is_ok());
    }

    #[test]
    fn unknown_and_chain() {
        let mac: Mac = "52:54:00:00:00:09".parse().unwrap();
        assert!(unknown_script(Unknown::Ignore, mac).ends_with("\nexit\n"));
        assert_eq!(
            chain_script("http://h:1"),
            "#!ipxe\nchain http://h:1/boot.ipxe?mac=${mac:hexhyp} || exit 1\n"
        );
    }
}
