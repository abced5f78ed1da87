//! The TFTP wire format (RFC 1350, options RFC 2347): datagrams in, packets out. No sockets.

use std::fmt;

pub const RRQ: u16 = 1;
pub const WRQ: u16 = 2;
pub const DATA: u16 = 3;
pub const ACK: u16 = 4;
pub const ERROR: u16 = 5;
pub const OACK: u16 = 6;

/// TFTP error codes (RFC 1350 §5, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTid = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionRefused = 8,
}

/// A parsed datagram. Borrowed from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: u16, message: String },
    Oack(Vec<(String, String)>),
}

/// A read or write request: file name, transfer mode and options, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The name as sent; not yet checked (see [`super::path`]).
    pub filename: &'a [u8],
    pub mode: String,
    pub options: Vec<(String, String)>,
}

/// A datagram that is not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("datagram of {0} bytes is too short for a TFTP packet")]
    Short(usize),
    #[error("unknown TFTP opcode {0}")]
    Opcode(u16),
    #[error("a request field is not NUL-terminated")]
    Unterminated,
    #[error("a request field is not UTF-8")]
    NotUtf8,
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} ({})", *self as u16)
    }
}

/// Parses one datagram.
pub fn parse(d: &[u8]) -> Result<Packet<'_>, ParseError> {
    if d.len() < 4 {
        return Err(ParseError::Short(d.len()));
    }
    let op = u16::from_be_bytes([d[0], d[1]]);
    let num = u16::from_be_bytes([d[2], d[3]]);
    Ok(match op {
        RRQ => Packet::Rrq(parse_request(&d[2..])?),
        WRQ => Packet::Wrq(parse_request(&d[2..])?),
        DATA => Packet::Data {
            block: num,
            data: &d[4..],
        },
        ACK => Packet::Ack { block: num },
        ERROR => {
            let msg = d[4..].split(|&b| b == 0).next().unwrap_or(&[]);
            Packet::Error {
                code: num,
                message: String::from_utf8_lossy(msg).into_owned(),
            }
        }
        OACK => Packet::Oack(pairs(fields(&d[2..])?)?),
        other => return Err(ParseError::Opcode(other)),
    })
}

/// NUL-terminated fields; the last one must be terminated too.
fn fields(d: &[u8]) -> Result<Vec<&[u8]>, ParseError> {
    if d.last() != Some(&0) {
        return Err(ParseError::Unterminated);
    }
    Ok(d[..d.len() - 1].split(|&b| b == 0).collect())
}

fn text(f: &[u8]) -> Result<String, ParseError> {
    std::str::from_utf8(f)
        .map(str::to_string)
        .map_err(|_| ParseError::NotUtf8)
}

fn pairs(f: Vec<&[u8]>) -> Result<Vec<(String, String)>, ParseError> {
    let mut out = Vec::new();
    // Some clients pad the request with extra NULs; empty trailing names are not options.
    let f: Vec<&[u8]> = f.into_iter().collect();
    let mut i = 0;
    while i < f.len() {
        let name = text(f[i])?;
        if name.is_empty() && f[i..].iter().all(|x| x.is_empty()) {
            break;
        }
        let value = f
            .get(i + 1)
            .ok_or_else(|| ParseError::OptionWithoutValue(name.clone()))?;
        out.push((name.to_ascii_lowercase(), text(value)?));
        i += 2;
    }
    Ok(out)
}

fn parse_request(d: &[u8]) -> Result<Request<'_>, ParseError> {
    let f = fields(d)?;
    if f.len() < 2 {
        return Err(ParseError::Unterminated);
    }
    Ok(Request {
        filename: f[0],
        mode: text(f[1])?.to_ascii_lowercase(),
        options: pairs(f[2..].to_vec())?,
    })
}

/// Writes the DATA header for `block` into `buf` (cleared first); the caller appends the data.
pub fn data_header(buf: &mut Vec<u8>, block: u16) {
    buf.clear();
    buf.extend_from_slice(&DATA.to_be_bytes());
    buf.extend_from_slice(&block.to_be_bytes());
}

pub fn ack(block: u16) -> Vec<u8> {
    let mut v = ACK.to_be_bytes().to_vec();
    v.extend_from_slice(&block.to_be_bytes());
    v
}

pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut v = ERROR.to_be_bytes().to_vec();
    v.extend_from_slice(&(code as u16).to_be_bytes());
    // A NUL inside the message would end it early on the wire.
    v.extend(message.bytes().filter(|&b| b != 0));
    v.push(0);
    v
}

pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut v = OACK.to_be_bytes().to_vec();
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// A request datagram (for clients and tests).
pub fn request(op: u16, filename: &[u8], mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut v = op.to_be_bytes().to_vec();
    for f in [filename, mode.as_bytes()] {
        v.extend_from_slice(f);
        v.push(0);
    }
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let rrq = request(
            RRQ,
            b"pc/vmlinuz",
            "OCTET",
            &[("BlkSize", "1468"), ("tsize", "0")],
        );
        let Packet::Rrq(r) = parse(&rrq).unwrap() else {
            panic!()
        };
        assert_eq!(r.filename, b"pc/vmlinuz");
        assert_eq!(r.mode, "octet");
        assert_eq!(
            r.options,
            vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), "0".into())
            ]
        );
        assert_eq!(parse(&ack(65535)).unwrap(), Packet::Ack { block: 65535 });
        let e = error(ErrorCode::FileNotFound, "no\0such");
        assert_eq!(
            parse(&e).unwrap(),
            Packet::Error {
                code: 1,
                message: "nosuch".into()
            }
        );
        let o = oack(&[("tsize".into(), "9".into())]);
        assert_eq!(
            parse(&o).unwrap(),
            Packet::Oack(vec![("tsize".into(), "9".into())])
        );
        let mut d = Vec::new();
        data_header(&mut d, 7);
        d.extend_from_slice(b"xyz");
        assert_eq!(
            parse(&d).unwrap(),
            Packet::Data {
                block: 7,
                data: b"xyz"
            }
        );
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse(&[0, 1]), Err(ParseError::Short(2)));
        assert_eq!(parse(&[0, 9, 0, 0]), Err(ParseError::Opcode(9)));
        assert_eq!(parse(b"\0\x01file\0octet"), Err(ParseError::Unterminated));
        assert_eq!(
            parse(b"\0\x01file\0\0"),
            Ok(Packet::Rrq(Request {
                filename: b"file",
                mode: String::new(),
                options: vec![]
            }))
        );
        assert_eq!(
            parse(b"\0\x01f\0octet\0blksize\0"),
            Err(ParseError::OptionWithoutValue("blksize".into()))
        );
        assert_eq!(parse(b"\0\x01f\0oc\xfft\0"), Err(ParseError::NotUtf8));
        // Trailing NUL padding is tolerated.
        let Packet::Rrq(r) = parse(b"\0\x01f\0octet\0tsize\x000\0\0\0").unwrap() else {
            panic!()
        };
        assert_eq!(r.options, vec![("tsize".into(), "0".into())]);
    }
}
