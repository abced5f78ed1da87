//! A scripted TFTP client (raw packets through the server's own packet module only for
//! building requests and parsing answers): for what tftp-hpa, atftp and curl cannot do, such as
//! a Raspberry Pi bootloader's probe, abort and retry.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use imgbuild_netboot::tftp::packet::{self, Packet};

/// A scripted client on loopback.
pub struct Client {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl Client {
    pub fn new(server: SocketAddr) -> Client {
        Client::from_ip(server, "127.0.0.1")
    }

    /// A client on another loopback address (all of 127/8 is local): another machine to the
    /// server.
    pub fn from_ip(server: SocketAddr, ip: &str) -> Client {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client { sock, server }
    }

    pub fn rrq(&self, name: &[u8], opts: &[(&str, &str)]) {
        self.sock
            .send_to(
                &packet::request(packet::RRQ, name, "octet", opts),
                self.server,
            )
            .unwrap();
    }

    pub fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut b = vec![0u8; 70000];
        let (n, from) = self
            .sock
            .recv_from(&mut b)
            .expect("no answer from the server");
        b.truncate(n);
        (b, from)
    }

    /// Nothing arrives within `ms`.
    pub fn silent(&self, ms: u64) -> bool {
        self.sock
            .set_read_timeout(Some(Duration::from_millis(ms)))
            .unwrap();
        let mut b = [0u8; 2048];
        let r = self.sock.recv_from(&mut b).is_err();
        self.sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        r
    }

    /// The rest of a lock-step transfer from `tid`, whose OACK (if any) has been received.
    pub fn finish(&self, tid: SocketAddr, blksize: usize) -> Vec<u8> {
        let mut data = Vec::new();
        let mut want: u16 = 1;
        loop {
            let (p, from) = self.recv();
            assert_eq!(from, tid, "a packet from another port");
            let Packet::Data { block, data: d } = packet::parse(&p).unwrap() else {
                panic!("expected DATA, got {:?}", packet::parse(&p));
            };
            self.sock.send_to(&packet::ack(block), tid).unwrap();
            if block == want {
                data.extend_from_slice(d);
                want = want.wrapping_add(1);
                if d.len() < blksize {
                    return data;
                }
            }
        }
    }

    pub fn expect_error(&self, what: &str) -> (u16, String) {
        let (p, from) = self.recv();
        assert_eq!(
            from, self.server,
            "{what}: errors come from the listening port"
        );
        match packet::parse(&p).unwrap() {
            Packet::Error { code, message } => (code, message),
            other => panic!("{what}: expected an ERROR, got {other:?}"),
        }
    }

    /// `finish` for a transfer whose DATA 1 was already taken, from block `want`.
    pub fn finish_from(&self, tid: SocketAddr, want: u16) -> Vec<u8> {
        let mut data = Vec::new();
        let mut want = want;
        loop {
            let (p, from) = self.recv();
            assert_eq!(from, tid);
            let Packet::Data { block, data: d } = packet::parse(&p).unwrap() else {
                panic!()
            };
            self.sock.send_to(&packet::ack(block), tid).unwrap();
            if block == want {
                data.extend_from_slice(d);
                want = want.wrapping_add(1);
                if d.len() < 512 {
                    return data;
                }
            }
        }
    }

    /// ACK 0 to `tid` and DATA 1 back: the one-block probe of a Raspberry Pi 5.
    pub fn first_block(&self, tid: SocketAddr) {
        self.sock.send_to(&packet::ack(0), tid).unwrap();
        let (d, _) = self.recv();
        assert!(matches!(
            packet::parse(&d).unwrap(),
            Packet::Data { block: 1, .. }
        ));
    }

    /// ERROR to `tid`: the client ends the transfer.
    pub fn end(&self, tid: SocketAddr, code: packet::ErrorCode, message: &str) {
        self.sock
            .send_to(&packet::error(code, message), tid)
            .unwrap();
    }
}
