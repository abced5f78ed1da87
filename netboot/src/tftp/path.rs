//! Which requested names may be looked up at all. The catalog then serves only the files it lists,
//! so a name never reaches the filesystem; this check refuses the classic traversal forms early, by
//! path component (never by string prefix), and says why, for the log.

/// Why a requested name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the name is empty")]
    Empty,
    #[error("the name is not UTF-8")]
    NotUtf8,
    #[error("the name holds a NUL or control character")]
    Control,
    #[error("the name is absolute")]
    Absolute,
    #[error("the name holds a backslash")]
    Backslash,
    #[error("the name has a `..` component")]
    DotDot,
    #[error("the name is longer than 1024 bytes")]
    TooLong,
}

/// The name as a relative `/`-separated path with no empty or `.` components, or why not.
pub fn check(name: &[u8]) -> Result<String, BadPath> {
    if name.is_empty() {
        return Err(BadPath::Empty);
    }
    if name.len() > 1024 {
        return Err(BadPath::TooLong);
    }
    let s = std::str::from_utf8(name).map_err(|_| BadPath::NotUtf8)?;
    if s.chars().any(char::is_control) {
        return Err(BadPath::Control);
    }
    if s.contains('\\') {
        return Err(BadPath::Backslash);
    }
    if s.starts_with('/') || s.starts_with('~') || s.as_bytes().get(1) == Some(&b':') {
        return Err(BadPath::Absolute);
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(BadPath::DotDot),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(BadPath::Empty);
    }
    Ok(parts.join("/"))
}

/// The Raspberry Pi serial a checked name starts with: the bootloader asks for
/// `<serial>/<file>`, the serial as 8 lower-case hex digits.
pub fn serial_folder(name: &str) -> Option<u32> {
    let (first, _) = name.split_once('/')?;
    let hex = first.len() == 8
        && first
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| u32::from_str_radix(first, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pi_serial_folders() {
        assert_eq!(serial_folder("9ffefdef/start4.elf"), Some(0x9ffefdef));
        assert_eq!(serial_folder("01234567/a/b"), Some(0x01234567));
        for no in [
            "9ffefdef",
            "9FFEFDEF/x",
            "9ffefde/x",
            "bios/undionly.kpxe",
            "+ffefdef/x",
        ] {
            assert_eq!(serial_folder(no), None, "{no}");
        }
    }

    #[test]
    fn accepts_relative_names() {
        assert_eq!(check(b"undionly.kpxe").unwrap(), "undionly.kpxe");
        assert_eq!(check(b"pc-node//./vmlinuz").unwrap(), "pc-node/vmlinuz");
        assert_eq!(check(b"a..b/c..").unwrap(), "a..b/c..");
    }

    #[test]
    fn refuses_escapes() {
        let cases: [(&[u8], BadPath); 10] = [
            (b"", BadPath::Empty),
            (b"./", BadPath::Empty),
            (b"../etc/passwd", BadPath::DotDot),
            (b"a/../../b", BadPath::DotDot),
            (b"a/..", BadPath::DotDot),
            (b"/etc/passwd", BadPath::Absolute),
            (b"C:boot.ini", BadPath::Absolute),
            (b"..\\x", BadPath::Backslash),
            (b"a\0b", BadPath::Control),
            (b"\xff", BadPath::NotUtf8),
        ];
        for (name, why) in cases {
            assert_eq!(check(name), Err(why), "{name:?}");
        }
    }
}
