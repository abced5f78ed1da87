//! The socket loop: requests on the listening port, one task with its own port (TID) per
//! transfer, caps on concurrent transfers (in all and per client address) and on each client's
//! byte rate, and a log line for every request and transfer.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::UdpSocket;

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::AbortHandle;

use super::pace::Bucket;
use super::packet::{self, ErrorCode, Packet, Request};
use super::path;
use super::transfer::{self, Limits, Outcome, Transfer};
use crate::minter::Minter;
use crate::{Artifact, Catalog, SeedTemplate};

/// TFTP server settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub limits: Limits,
    /// Transfers running at once; requests beyond get "server busy".
    pub max_transfers: usize,
    /// Transfers running at once from one client address; `None`: only `max_transfers`.
    pub max_per_client: Option<usize>,
    /// Bytes per second one client address gets, shared by its transfers; `None`: no cap.
    pub client_rate: Option<u64>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            max_transfers: 512,
            max_per_client: None,
            client_rate: None,
        }
    }
}

/// The rate buckets of clients with a transfer running (a bucket lives while one does).
type Buckets = Arc<Mutex<HashMap<IpAddr, Weak<Mutex<Bucket>>>>>;

/// A running transfer, by client address.
struct Entry {
    id: u64,
    abort: AbortHandle,
    /// The request datagram that started it.
    request: Vec<u8>,
    /// Set once the client sent anything to the transfer's port.
    heard: Arc<AtomicBool>,
    /// Set when the client repeated its request before it was heard (see [`Job::repeated`]).
    repeat_seen: Arc<AtomicBool>,
    /// Asks the transfer to resend its first reply now.
    nudge: Arc<Notify>,
    /// Tells the transfer a new request replaced it.
    replaced: Arc<Notify>,
    /// The transfer's socket: whether the client already sent it something not read yet.
    sock: Arc<UdpSocket>,
}

type Running = Arc<Mutex<HashMap<SocketAddr, Entry>>>;

/// Serves read requests on `socket` until `shutdown` turns true; `tokens` mints the seed token
/// of each [`Catalog::seed_template`] file served.
pub async fn serve(
    socket: UdpSocket,
    catalog: Arc<dyn Catalog>,
    tokens: Arc<Minter>,
    cfg: Config,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let local = socket.local_addr()?;
    let slots = Arc::new(Semaphore::new(cfg.max_transfers));
    let running: Running = Arc::default();
    let buckets: Buckets = Arc::default();
    let mut next_id = 0u64;
    let mut buf = vec![0u8; 65536];
    let (reinject, mut reinjected) = mpsc::unbounded_channel::<(Vec<u8>, SocketAddr)>();
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("tftp: receive failed: {e}");
                    continue;
                }
            },
            Some((raw, peer)) = reinjected.recv() => {
                buf[..raw.len()].copy_from_slice(&raw);
                (raw.len(), peer)
            }
            _ = shutdown.changed() => break,
        };
        let reply = match packet::parse(&buf[..n]) {
            Ok(Packet::Rrq(req)) => {
                next_id += 1;
                let job = Job {
                    catalog: &catalog,
                    tokens: &tokens,
                    cfg: &cfg,
                    slots: &slots,
                    running: &running,
                    buckets: &buckets,
                    reinject: &reinject,
                };
                let raw = buf[..n].to_vec();
                job.start(req, &raw, peer, local, next_id).await
            }
            Ok(Packet::Wrq(req)) => {
                tracing::warn!(client = %peer, file = %String::from_utf8_lossy(req.filename), "tftp: write request refused (read-only server)");
                Some(packet::error(
                    ErrorCode::AccessViolation,
                    "read-only server",
                ))
            }
            Ok(_) => Some(packet::error(
                ErrorCode::IllegalOperation,
                "expected a read request",
            )),
            Err(e) => {
                tracing::debug!(client = %peer, "tftp: not a TFTP request: {e}");
                Some(packet::error(ErrorCode::IllegalOperation, &e.to_string()))
            }
        };
        if let Some(r) = reply {
            let _ = socket.send_to(&r, peer).await;
        }
    }
    for (_, e) in running.lock().expect("lock").drain() {
        e.abort.abort();
    }
    Ok(())
}

struct Job<'a> {
    catalog: &'a Arc<dyn Catalog>,
    tokens: &'a Arc<Minter>,
    cfg: &'a Config,
    slots: &'a Arc<Semaphore>,
    running: &'a Running,
    buckets: &'a Buckets,
    /// Requests to handle again (a repeat that turned out to be a new request).
    reinject: &'a mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>,
}

impl Job<'_> {
    /// Starts a transfer, or returns the ERROR to send from the listening port.
    async fn start(
        &self,
        req: Request<'_>,
        raw: &[u8],
        peer: SocketAddr,
        local: SocketAddr,
        id: u64,
    ) -> Option<Vec<u8>> {
        let shown = String::from_utf8_lossy(req.filename).into_owned();
        if req.mode != "octet" {
            tracing::warn!(client = %peer, file = %shown, mode = %req.mode, "tftp: refused: only binary (octet) mode is served");
            return Some(packet::error(
                ErrorCode::IllegalOperation,
                "only binary (octet) mode is served",
            ));
        }
        let name = match path::check(req.filename) {
            Ok(n) => n,
            Err(why) => {
                tracing::warn!(client = %peer, file = %shown.escape_debug(), "tftp: refused: {why}");
                return Some(packet::error(
                    ErrorCode::AccessViolation,
                    &format!("refused: {why}"),
                ));
            }
        };
        if let Some(why) = refused(self.catalog.as_ref(), &name, peer) {
            tracing::info!(client = %peer, file = %name, "tftp: refused: {why}");
            return Some(packet::error(
                ErrorCode::AccessViolation,
                &format!("refused: {why}"),
            ));
        }
        let source = match self.catalog.artifact(&name) {
            Some(art) => Source::File(art.clone()),
            None => match self.catalog.seed_template(&name) {
                Some(t) => Source::Minted(t),
                None => {
                    tracing::info!(client = %peer, file = %name, "tftp: no such file");
                    return Some(packet::error(ErrorCode::FileNotFound, "no such file"));
                }
            },
        };
        if self.repeated(raw, peer, &name) {
            return None;
        }
        if let Some(max) = self.cfg.max_per_client {
            let r = self.running.lock().expect("lock");
            if r.keys().filter(|a| a.ip() == peer.ip()).count() >= max {
                tracing::warn!(client = %peer, file = %name, max, "tftp: refused: too many transfers at once from this client");
                return Some(packet::error(
                    ErrorCode::NotDefined,
                    "server busy, try again later",
                ));
            }
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, file = %name, max = self.cfg.max_transfers, "tftp: refused: too many transfers at once");
            return Some(packet::error(
                ErrorCode::NotDefined,
                "server busy, try again later",
            ));
        };
        // Minted only now: a repeat or a refusal above must not end the token being served.
        let (body, size) = match source.open(self.tokens, &name, peer) {
            Ok(b) => b,
            Err(reply) => return Some(reply),
        };
        let sock = match bind_transfer(local, peer).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(client = %peer, "tftp: cannot open a transfer port: {e}");
                return Some(packet::error(ErrorCode::NotDefined, "server error"));
            }
        };
        let limits = path_limits(&self.cfg.limits, &sock, peer);
        let n = transfer::negotiate(&req, size, &limits);
        let t = Transfer::new(body, size, &n, &limits, Instant::now());
        let running = self.running.clone();
        let heard = Arc::new(AtomicBool::new(false));
        let repeat_seen = Arc::new(AtomicBool::new(false));
        let nudge = Arc::new(Notify::new());
        let replaced = Arc::new(Notify::new());
        let link = Link {
            heard: heard.clone(),
            nudge: nudge.clone(),
            replaced: replaced.clone(),
            pace: self.bucket(peer.ip()),
        };
        let task_sock = sock.clone();
        let repeat_seen_end = repeat_seen.clone();
        let (reinject, request) = (self.reinject.clone(), raw.to_vec());
        let task = tokio::spawn(async move {
            let client_ended = run(t, task_sock, peer, &name, size, link).await;
            drop(permit);
            // Decided under the lock the listener holds while it takes a request for a repeat
            // (and sets `repeat_seen`): either it did so before this, and the request comes
            // back now, or it finds no transfer and starts a new one. Read outside the lock, a
            // request arriving as the transfer ended could be dropped by both sides.
            let asked_again = {
                let mut r = running.lock().expect("lock");
                let ours = r.get(&peer).is_some_and(|e| e.id == id);
                if ours {
                    r.remove(&peer);
                }
                ours && client_ended && repeat_seen_end.load(Ordering::Relaxed)
            };
            if asked_again {
                tracing::info!(client = %peer, file = %name, "tftp: the client ended the transfer after asking for it again; its new request starts a new one");
                let _ = reinject.send((request, peer));
            }
        });
        let entry = Entry {
            id,
            abort: task.abort_handle(),
            request: raw.to_vec(),
            heard,
            repeat_seen,
            nudge,
            replaced,
            sock,
        };
        self.running.lock().expect("lock").insert(peer, entry);
        None
    }

    /// The rate bucket `ip`'s transfers share, when rates are capped.
    fn bucket(&self, ip: IpAddr) -> Option<Arc<Mutex<Bucket>>> {
        let rate = self.cfg.client_rate?;
        let mut b = self.buckets.lock().expect("lock");
        if let Some(live) = b.get(&ip).and_then(Weak::upgrade) {
            return Some(live);
        }
        b.retain(|_, w| w.strong_count() > 0);
        let new = Arc::new(Mutex::new(Bucket::new(rate, Instant::now())));
        b.insert(ip, Arc::downgrade(&new));
        Some(new)
    }

    /// A request from a client port that has a transfer running. The same request before the
    /// client answered anything means our first reply was lost or slow: that transfer resends it
    /// (a second transfer would answer from a second port the client has not latched onto). Any
    /// other repeat means the client gave up on the old transfer (the Raspberry Pi after its
    /// size probe): the old one ends and a new one starts. The Pi's ERROR ending the probe
    /// is sent just before its identical new request, so a datagram waiting unread at the
    /// transfer's port counts as heard; and since the two may still arrive the other way round
    /// (another CPU's queue, another NIC queue), a transfer that the client ends with an ERROR
    /// after repeating its request hands that request back to the listener. True when handled.
    fn repeated(&self, raw: &[u8], peer: SocketAddr, name: &str) -> bool {
        let mut r = self.running.lock().expect("lock");
        let Some(e) = r.get(&peer) else { return false };
        if e.request == raw && !heard_from(e, peer) {
            e.repeat_seen.store(true, Ordering::Relaxed);
            // Resent a moment later, and only if the client's ERROR has not come meanwhile: a
            // Pi that took the stale resent reply for the answer to its new request would latch
            // onto the transfer it just ended.
            let (nudge, heard) = (e.nudge.clone(), e.heard.clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if !heard.load(Ordering::Relaxed) {
                    nudge.notify_one();
                }
            });
            tracing::info!(client = %peer, file = %name, "tftp: request repeated before any answer; first reply resent");
            return true;
        }
        if let Some(old) = r.remove(&peer) {
            // It ends itself after reading what the client already sent it (often the final
            // ACK: a client asks for its next file at once), so its log line is right.
            old.replaced.notify_one();
            tracing::info!(client = %peer, file = %name, "tftp: new request from the same port; the old transfer ends, a new one starts");
        }
        false
    }
}

/// Whether the transfer has read anything from `peer`, or has a datagram of it waiting unread.
/// The peek asks the kernel itself: tokio's `try_peek_sender` answers from its own readiness
/// flag, which lags behind the socket's queue until the reactor has run.
fn heard_from(e: &Entry, peer: SocketAddr) -> bool {
    use rustix::net::RecvFlags;
    if e.heard.load(Ordering::Relaxed) {
        return true;
    }
    let mut byte = [0u8; 1];
    match rustix::net::recvfrom(&*e.sock, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((_, _, Some(from))) => SocketAddr::try_from(from).is_ok_and(|a| a == peer),
        // A connected socket only queues its peer's datagrams.
        Ok((_, _, None)) => true,
        Err(_) => false,
    }
}

/// Why the inventory refuses this client now (its address, or the Pi serial folder it asks
/// in), if it does. A client the catalog cannot place is served: TFTP holds no secrets, and the
/// DHCP and boot-script routes already ignore unknown machines.
fn refused(catalog: &dyn Catalog, name: &str, peer: SocketAddr) -> Option<String> {
    let ids = crate::ClientIds {
        pi_serial: path::serial_folder(name),
        ip: Some(peer.ip()),
        ..Default::default()
    };
    match catalog.admit(&ids) {
        crate::Admission::Refused { node, why } => Some(format!("node {node}: {why}")),
        _ => None,
    }
}

/// Where a served file's bytes come from.
enum Source {
    File(Artifact),
    /// Made per request, with a new seed token.
    Minted(SeedTemplate),
}

impl Source {
    /// The bytes and their size, or the ERROR to answer.
    fn open(self, tokens: &Minter, name: &str, peer: SocketAddr) -> Result<(Body, u64), Vec<u8>> {
        match self {
            Source::File(art) => match open_nofollow(&art) {
                Ok(f) => Ok((
                    Body::File(io::BufReader::with_capacity(1 << 16, f)),
                    art.size,
                )),
                Err(e) => {
                    tracing::error!(client = %peer, file = %name, path = %art.path.display(), "tftp: cannot open: {e}");
                    Err(packet::error(ErrorCode::NotDefined, "cannot open the file"))
                }
            },
            Source::Minted(t) => {
                let bytes = t.render(&tokens.mint(&t.node));
                // The token itself is never logged: while it lives, it is a key to the seed.
                tracing::info!(client = %peer, file = %name, node = %t.node, seed_valid_s = tokens.ttl().as_secs(), "tftp: served with a new seed token (the node's older ones end)");
                let size = bytes.len() as u64;
                Ok((Body::Memory(io::Cursor::new(bytes)), size))
            }
        }
    }
}

/// A transfer's data: a listed file, or bytes made for this request.
enum Body {
    File(io::BufReader<std::fs::File>),
    Memory(io::Cursor<Vec<u8>>),
}

impl io::Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::File(f) => f.read(buf),
            Body::Memory(m) => m.read(buf),
        }
    }
}

impl io::Seek for Body {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        match self {
            Body::File(f) => f.seek(pos),
            Body::Memory(m) => m.seek(pos),
        }
    }
}

fn open_nofollow(art: &Artifact) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&art.path)?;
    let len = f.metadata()?.len();
    if len != art.size {
        return Err(io::Error::other(format!(
            "it is {len} bytes now, {} when the server started",
            art.size
        )));
    }
    Ok(f)
}

/// The limits with blksize capped so a DATA packet fits the path MTU to this client (what the
/// kernel knows for the route of the connected socket): no IP fragmentation.
fn path_limits(limits: &Limits, sock: &UdpSocket, peer: SocketAddr) -> Limits {
    let mut l = limits.clone();
    let (mtu, ip_header) = if peer.is_ipv4() {
        (rustix::net::sockopt::ip_mtu(sock), 20)
    } else {
        (rustix::net::sockopt::ipv6_mtu(sock), 40)
    };
    if let Ok(mtu) = mtu {
        let fits = mtu.saturating_sub(ip_header + 8 + 4).clamp(512, 65464);
        l.max_blksize = l.max_blksize.min(fits as u16);
    }
    l
}

/// What the listening loop shares with a transfer task.
struct Link {
    heard: Arc<AtomicBool>,
    nudge: Arc<Notify>,
    replaced: Arc<Notify>,
    /// The client's rate bucket, when rates are capped.
    pace: Option<Arc<Mutex<Bucket>>>,
}

async fn bind_transfer(local: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
    // Connected: the kernel drops datagrams from anyone but this client's TID.
    sock.connect(peer).await?;
    Ok(sock)
}

async fn run<R: io::Read + io::Seek>(
    mut t: Transfer<R>,
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    name: &str,
    size: u64,
    link: Link,
) -> bool {
    let start = Instant::now();
    let mut out = Vec::with_capacity(t.blksize() + 4);
    let mut inb = vec![0u8; 2048];
    let mut gone = None;
    let mut replaced = false;
    // One timer for the whole transfer, moved only when the deadline moves back or more than
    // 50 ms ahead: re-arming it for every packet costs more than the packet. Firing early is
    // harmless (`timeout` does nothing before the transfer's own deadline).
    let timer = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    'outer: loop {
        loop {
            if let Some(p) = &link.pace {
                let wait = p.lock().expect("lock").delay(Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            // Polled after the wait: the transfer's retransmission clock starts when it is sent.
            if !t.poll_transmit(&mut out, Instant::now()) {
                break;
            }
            if let Some(p) = &link.pace {
                p.lock().expect("lock").charge(out.len(), Instant::now());
            }
            if let Err(e) = sock.send(&out).await {
                gone = Some(e);
                break 'outer;
            }
        }
        let Some(deadline) = t.deadline() else { break };
        if armed.is_none_or(|a| deadline < a || deadline > a + std::time::Duration::from_millis(50))
        {
            timer.as_mut().reset(deadline.into());
            armed = Some(deadline);
        }
        tokio::select! {
            r = sock.recv(&mut inb) => match r {
                Ok(n) => {
                    link.heard.store(true, Ordering::Relaxed);
                    t.handle(&inb[..n]);
                }
                Err(e) => { gone = Some(e); break; }
            },
            _ = &mut timer => {
                armed = None;
                t.timeout(Instant::now());
            }
            _ = link.nudge.notified() => t.resend(),
            _ = link.replaced.notified() => {
                while let Ok(n) = sock.try_recv(&mut inb) {
                    t.handle(&inb[..n]);
                }
                replaced = t.outcome().is_none();
                break;
            }
        }
    }
    if replaced {
        let bytes = t.stats().bytes_acked;
        tracing::info!(client = %peer, file = %name, bytes, of = size, "tftp: transfer replaced by a new request from the same port");
        return false;
    }
    log_end(&t, peer, name, size, start.elapsed(), gone);
    // A client's ERROR after it asked again: that request was no repeat but a new transfer
    // (decided by the caller, under the lock).
    matches!(t.outcome(), Some(Outcome::ClientError { .. }))
}

fn log_end<R: io::Read + io::Seek>(
    t: &Transfer<R>,
    peer: SocketAddr,
    name: &str,
    size: u64,
    took: std::time::Duration,
    gone: Option<io::Error>,
) {
    let s = t.stats();
    let secs = took.as_secs_f64().max(1e-6);
    let rate = format!("{:.1} MiB/s", s.bytes_acked as f64 / secs / 1048576.0);
    let (bs, ws, re) = (t.blksize(), t.windowsize(), s.retransmits);
    match (t.outcome(), gone) {
        (Some(Outcome::Complete), _) => {
            tracing::info!(client = %peer, file = %name, bytes = size, ms = took.as_millis() as u64, %rate, blksize = bs, windowsize = ws, retransmits = re, "tftp: sent")
        }
        (Some(Outcome::ClientError { code, message }), _) => {
            let probe = if s.bytes_acked == 0 {
                " (a size probe: the client asked for tsize and stopped)"
            } else {
                ""
            };
            tracing::info!(client = %peer, file = %name, bytes = s.bytes_acked, code, said = %message.escape_debug(), "tftp: the client ended the transfer{probe}")
        }
        (Some(Outcome::TimedOut), _) if t.all_sent() => {
            tracing::warn!(client = %peer, file = %name, bytes = size, "tftp: every block sent but the final ACK never came")
        }
        (Some(Outcome::TimedOut), _) => {
            tracing::warn!(client = %peer, file = %name, bytes = s.bytes_acked, of = size, retransmits = re, "tftp: timed out: the client stopped answering")
        }
        (Some(Outcome::ReadFailed(e)), _) => {
            tracing::error!(client = %peer, file = %name, "tftp: {e}")
        }
        (None, Some(e)) => {
            tracing::warn!(client = %peer, file = %name, bytes = s.bytes_acked, of = size, "tftp: the client went away: {e}")
        }
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeedFile;
    use crate::tokens::{Refused, TOKEN_SLOT};
    use std::io::Read;

    fn served(src: Source, tokens: &Minter) -> Vec<u8> {
        let peer: SocketAddr = "10.0.0.5:1234".parse().unwrap();
        let (mut body, size) = src.open(tokens, "9ffefdef/cmdline.txt", peer).ok().unwrap();
        let mut out = Vec::new();
        body.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, size);
        out
    }

    #[test]
    fn a_seed_template_is_served_with_a_new_live_token_each_time() {
        let tokens = Minter::new(std::time::Duration::from_secs(60));
        let t = SeedTemplate {
            node: "pi-1".into(),
            text: format!(
                "boot=imgbuild ds=nocloud-net;s=http://10.0.0.1:8080/seed/{TOKEN_SLOT}/\n"
            ),
        };
        let token = |b: &[u8]| {
            let s = String::from_utf8(b.to_vec()).unwrap();
            s.rsplit("/seed/")
                .next()
                .unwrap()
                .trim_end_matches("/\n")
                .to_string()
        };
        let a = served(Source::Minted(t.clone()), &tokens);
        let b = served(Source::Minted(t.clone()), &tokens);
        // The size probe and the read agree; the read's token is the one that lives.
        assert_eq!(a.len(), t.text.len());
        assert_eq!(b.len(), a.len());
        let (ta, tb) = (token(&a), token(&b));
        assert_ne!(ta, tb);
        assert_ne!(tb, TOKEN_SLOT);
        assert_eq!(tokens.take(&ta, SeedFile::UserData), Err(Refused::Unknown));
        assert_eq!(tokens.take(&tb, SeedFile::UserData).unwrap(), "pi-1");
    }
}
