//! Pi-hole v6's `/etc/pihole/pihole.toml`: whether its DHCP server runs (`dhcp.active`) and
//! whether FTL loads `/etc/dnsmasq.d` (`misc.etc_dnsmasq_d`, where our snippet goes). Both are
//! false when absent, FTL's defaults.

use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PiHole {
    pub dhcp_active: bool,
    pub etc_dnsmasq_d: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PiHoleError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("{key} is {value}, not true or false")]
    NotBool { key: &'static str, value: String },
}

pub fn parse(mut r: impl Read) -> Result<PiHole, PiHoleError> {
    let mut text = String::new();
    r.read_to_string(&mut text)?;
    let doc: toml::Table = toml::from_str(&text)?;
    let flag = |section: &str, key: &str, full: &'static str| -> Result<bool, PiHoleError> {
        match doc.get(section).and_then(|s| s.get(key)) {
            None => Ok(false),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(other) => Err(PiHoleError::NotBool {
                key: full,
                value: other.to_string(),
            }),
        }
    };
    Ok(PiHole {
        dhcp_active: flag("dhcp", "active", "dhcp.active")?,
        etc_dnsmasq_d: flag("misc", "etc_dnsmasq_d", "misc.etc_dnsmasq_d")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixtures() {
        let off = include_str!("../../../../tests/fixtures/doctor/pihole-dhcp-off.toml");
        let on = include_str!("../../../../tests/fixtures/doctor/pihole-dhcp-on.toml");
        let both = include_str!("../../../../tests/fixtures/doctor/pihole-dhcp-on-dnsmasq-d.toml");
        let p = |t: &str| parse(t.as_bytes()).unwrap();
        assert_eq!(
            p(off),
            PiHole {
                dhcp_active: false,
                etc_dnsmasq_d: false
            }
        );
        assert_eq!(
            p(on),
            PiHole {
                dhcp_active: true,
                etc_dnsmasq_d: false
            }
        );
        assert_eq!(
            p(both),
            PiHole {
                dhcp_active: true,
                etc_dnsmasq_d: true
            }
        );
        assert_eq!(
            p(""),
            PiHole {
                dhcp_active: false,
                etc_dnsmasq_d: false
            }
        );
        let err = parse(&b"[misc]\n etc_dnsmasq_d = \"yes\"\n"[..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "misc.etc_dnsmasq_d is \"yes\", not true or false"
        );
        assert!(matches!(parse(&b"[misc\n"[..]), Err(PiHoleError::Toml(_))));
    }
}
