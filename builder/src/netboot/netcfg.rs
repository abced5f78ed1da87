//! A node's seed `network-config` on its kernel command line (`network-config=`, gzip then
//! base64, as cloud-init reads it), for both netboot paths: a Raspberry Pi's built
//! `cmdline.txt` ([`super::pitree`]) and a PC's iPXE boot script ([`super::catalog`]).
//!
//! cloud-init's local stage runs before the network, so it cannot fetch the HTTP seed and would
//! configure its fallback, DHCP v4 *and* v6 (cloud-init 24+), which ifupdown without a DHCPv6
//! client fails (a failed networking.service). On the command line the node's own config
//! applies from the local stage on; it is the seed's, so it agrees with the datasource it takes
//! precedence over. It holds no secret (never user-data or meta-data).

/// `network-config=<base64 of gzip>` of the seed's `network-config`; `None` when that has no
/// config (comment-only: no MAC in the inventory), so cloud-init's fallback applies as before.
pub fn network_config_arg(network_config: &str) -> Option<String> {
    use base64::Engine;
    use flate2::{Compression, GzBuilder};
    use std::io::Write;
    let has_config = network_config
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    if !has_config {
        return None;
    }
    // mtime 0 (GzBuilder's default) and no file name: the same config gives the same bytes.
    let mut gz = GzBuilder::new().write(Vec::new(), Compression::best());
    gz.write_all(network_config.as_bytes()).ok()?;
    let bytes = gz.finish().ok()?;
    Some(format!(
        "network-config={}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// Whether a built command line carries exactly this `network-config` (or none, if it has no
/// config): the inventory may have changed the node's MAC or address since the build.
pub fn has_network_config(cmdline: &str, network_config: &str) -> bool {
    let built = cmdline
        .split_whitespace()
        .find(|a| a.starts_with("network-config="));
    built.map(str::to_string) == network_config_arg(network_config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_config_arg_is_gzip_base64_of_the_config_and_stable() {
        use base64::Engine;
        use std::io::Read;
        assert_eq!(network_config_arg("\n# only a comment\n  \n"), None);
        let net = "# wired\nnetwork:\n  version: 2\n  ethernets: {}\n";
        let arg = network_config_arg(net).unwrap();
        assert_eq!(network_config_arg(net).unwrap(), arg);
        let b64 = arg.strip_prefix("network-config=").unwrap();
        assert!(!b64.contains(char::is_whitespace));
        let gz = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, net);
    }
}
