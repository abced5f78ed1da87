//! One read transfer as a pure state machine: datagrams and the current time go in, datagrams come
//! out (`poll_transmit`), and `deadline` says when to call `timeout`. No sockets, no clock.
//!
//! Blocks are counted with a u64 index internally; the wire carries the low 16 bits, so block
//! numbers roll over from 65535 to 0 (what dnsmasq, U-Boot and the fixed Pi bootloader expect).
//! An ACK is matched only against blocks sent and not yet acknowledged: a duplicate or stale ACK
//! changes nothing (no Sorcerer's Apprentice, RFC 1123 §4.2.3.1); an ACK inside the window
//! moves the window there and resends what follows it (RFC 7440).

use std::io::{self, Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use super::packet::{self, ErrorCode, Packet, Request};

/// Server-side limits for every transfer.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest block size granted (RFC 2348); the server lowers it further to fit the path MTU.
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client asks for none (RFC 2349 `timeout`).
    pub timeout: Duration,
    /// Upper bound of the doubling retransmission timeout.
    pub max_timeout: Duration,
    /// Retransmissions of one window before the transfer is abandoned.
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_blksize: 65464,
            max_windowsize: 64,
            timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
            max_retries: 5,
        }
    }
}

/// The options agreed for one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub windowsize: u16,
    pub timeout: Duration,
    /// The OACK's options, in the order the client sent them; empty means no OACK.
    pub oack: Vec<(String, String)>,
}

/// Agrees on the options of `req` for a file of `size` bytes. Options out of range or unknown are
/// left out of the OACK, which RFC 2347 allows, rather than failing the transfer.
pub fn negotiate(req: &Request<'_>, size: u64, limits: &Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        windowsize: 1,
        timeout: limits.timeout,
        oack: Vec::new(),
    };
    for (name, value) in &req.options {
        let v: Option<u64> = value.trim().parse().ok();
        let granted = match (name.as_str(), v) {
            ("blksize", Some(b)) if (8..=65464).contains(&b) => {
                n.blksize = b.min(u64::from(limits.max_blksize)) as usize;
                n.blksize.to_string()
            }
            ("tsize", Some(_)) => size.to_string(),
            ("timeout", Some(t)) if (1..=255).contains(&t) => {
                n.timeout = Duration::from_secs(t);
                t.to_string()
            }
            ("windowsize", Some(w)) if (1..=65535).contains(&w) => {
                n.windowsize = w.min(u64::from(limits.max_windowsize)) as u16;
                n.windowsize.to_string()
            }
            _ => continue,
        };
        if !n.oack.iter().any(|(k, _)| k == name) {
            n.oack.push((name.clone(), granted));
        }
    }
    n
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client acknowledged the last block.
    Complete,
    /// The client sent an ERROR (e.g. the Raspberry Pi's tsize probe, then "early terminate").
    ClientError { code: u16, message: String },
    /// No acknowledgement after every retransmission.
    TimedOut,
    /// Reading the file failed; the client was sent an ERROR.
    ReadFailed(String),
}

/// Counters for the log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u64,
    pub retransmits: u64,
    /// Bytes the client acknowledged.
    pub bytes_acked: u64,
}

/// One read transfer.
pub struct Transfer<R> {
    src: R,
    pos: u64,
    size: u64,
    blksize: usize,
    window: u64,
    rto_base: Duration,
    rto: Duration,
    limits: Limits,
    retries: u32,
    last_block: u64,
    acked: u64,
    next: u64,
    /// Highest block index sent so far (the window rewinds `next` on loss, not this).
    sent_max: u64,
    window_end: u64,
    oack: Option<Vec<u8>>,
    send_oack: bool,
    deadline: Instant,
    outcome: Option<Outcome>,
    stats: Stats,
}

impl<R: Read + Seek> Transfer<R> {
    /// A transfer of `size` bytes from `src` with the agreed options; the first datagram (OACK or
    /// DATA 1) is ready in `poll_transmit`.
    pub fn new(src: R, size: u64, n: &Negotiated, limits: &Limits, now: Instant) -> Transfer<R> {
        let window = u64::from(n.windowsize.max(1));
        let last_block = size / n.blksize as u64 + 1;
        let has_oack = !n.oack.is_empty();
        Transfer {
            src,
            pos: 0,
            size,
            blksize: n.blksize,
            window,
            rto_base: n.timeout,
            rto: n.timeout,
            limits: limits.clone(),
            retries: 0,
            last_block,
            acked: 0,
            next: 1,
            sent_max: 0,
            window_end: if has_oack { 0 } else { window.min(last_block) },
            oack: has_oack.then(|| packet::oack(&n.oack)),
            send_oack: has_oack,
            deadline: now + n.timeout,
            outcome: None,
            stats: Stats::default(),
        }
    }

    /// The next datagram to send, written into `buf`; false when there is nothing to send now.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>, now: Instant) -> bool {
        if self.outcome.is_some() {
            return false;
        }
        if self.send_oack {
            self.send_oack = false;
            buf.clear();
            buf.extend_from_slice(self.oack.as_deref().unwrap_or_default());
            self.deadline = now + self.rto;
            self.stats.packets += 1;
            return true;
        }
        if self.oack.is_some() || self.next > self.window_end {
            return false;
        }
        let block = self.next;
        if let Err(e) = self.read_block(block, buf) {
            let msg = format!("reading the file failed: {e}");
            *buf = packet::error(ErrorCode::NotDefined, &msg);
            self.outcome = Some(Outcome::ReadFailed(msg));
            return true;
        }
        if block <= self.sent_max {
            self.stats.retransmits += 1;
        }
        self.sent_max = self.sent_max.max(block);
        self.next += 1;
        if self.next > self.window_end {
            self.deadline = now + self.rto;
        }
        self.stats.packets += 1;
        true
    }

    fn read_block(&mut self, block: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let offset = (block - 1) * self.blksize as u64;
        let len = (self.size - offset).min(self.blksize as u64) as usize;
        if self.pos != offset {
            self.src.seek(SeekFrom::Start(offset))?;
        }
        packet::data_header(buf, block as u16);
        buf.resize(4 + len, 0);
        self.src.read_exact(&mut buf[4..])?;
        self.pos = offset + len as u64;
        Ok(())
    }

    /// A datagram from the client.
    pub fn handle(&mut self, datagram: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        match packet::parse(datagram) {
            Ok(Packet::Ack { block }) => self.on_ack(block),
            Ok(Packet::Error { code, message }) => {
                self.outcome = Some(Outcome::ClientError { code, message });
            }
            // Anything else on a transfer's port is noise; the transfer goes on.
            _ => {}
        }
    }

    fn on_ack(&mut self, block: u16) {
        if self.oack.is_some() {
            if block == 0 {
                self.oack = None;
                self.window_end = self.window.min(self.last_block);
                self.progress();
            }
            return;
        }
        // Only blocks sent and not yet acknowledged can be meant; the window is at most 65535
        // blocks, so at most one of them carries these low 16 bits.
        let first = self.acked + 1;
        let Some(idx) = (first..self.next).find(|&i| i as u16 == block) else {
            return;
        };
        self.acked = idx;
        self.stats.bytes_acked = (idx * self.blksize as u64).min(self.size);
        if idx == self.last_block {
            self.outcome = Some(Outcome::Complete);
            return;
        }
        self.next = idx + 1;
        self.window_end = (idx + self.window).min(self.last_block);
        self.progress();
    }

    fn progress(&mut self) {
        self.retries = 0;
        self.rto = self.rto_base;
    }

    /// Call at or after [`Transfer::deadline`]: resends the unacknowledged window (or the OACK)
    /// with a doubled timeout, or gives up after `max_retries`.
    pub fn timeout(&mut self, now: Instant) {
        if self.outcome.is_some() || now < self.deadline {
            return;
        }
        self.retries += 1;
        if self.retries > self.limits.max_retries {
            self.outcome = Some(Outcome::TimedOut);
            return;
        }
        self.rto = (self.rto * 2).min(self.limits.max_timeout.max(self.rto_base));
        if self.oack.is_some() {
            self.stats.retransmits += 1;
            self.send_oack = true;
        } else {
            self.next = self.acked + 1;
        }
        self.deadline = now + self.rto;
    }

    /// Resends what is not acknowledged yet (the OACK, or the window) now, without counting a
    /// retry: for a client that repeated its request because our first reply was lost.
    pub fn resend(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        if self.oack.is_some() {
            self.send_oack = true;
            self.stats.retransmits += 1;
        } else {
            self.next = self.acked + 1;
        }
    }

    /// When to call [`Transfer::timeout`]; None once the transfer has ended.
    pub fn deadline(&self) -> Option<Instant> {
        self.outcome.is_none().then_some(self.deadline)
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn blksize(&self) -> usize {
        self.blksize
    }

    pub fn windowsize(&self) -> u64 {
        self.window
    }

    /// Whether every block was sent at least once (for "the final ACK never came").
    pub fn all_sent(&self) -> bool {
        self.sent_max == self.last_block
    }
}

#[cfg(test)]
mod tests;
