use std::io::Cursor;

use super::*;

fn req<'a>(opts: &[(&str, &str)]) -> Request<'a> {
    Request {
        filename: b"f",
        mode: "octet".into(),
        options: opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Everything the transfer wants to send now.
fn drain(t: &mut Transfer<Cursor<Vec<u8>>>, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while t.poll_transmit(&mut buf, now) {
        out.push(buf.clone());
    }
    out
}

fn block_of(p: &[u8]) -> u16 {
    match packet::parse(p).unwrap() {
        Packet::Data { block, .. } => block,
        other => panic!("not DATA: {other:?}"),
    }
}

#[test]
fn negotiates_within_limits() {
    let l = Limits {
        max_blksize: 1468,
        ..Limits::default()
    };
    let n = negotiate(
        &req(&[
            ("blksize", "9000"),
            ("tsize", "0"),
            ("timeout", "3"),
            ("windowsize", "500"),
            ("multicast", ""),
        ]),
        1234,
        &l,
    );
    assert_eq!(n.blksize, 1468);
    assert_eq!(n.windowsize, 64);
    assert_eq!(n.timeout, Duration::from_secs(3));
    let names: Vec<_> = n.oack.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        names,
        ["blksize=1468", "tsize=1234", "timeout=3", "windowsize=64"]
    );
    // Out of range values are left out, not fatal.
    let n = negotiate(
        &req(&[("blksize", "7"), ("timeout", "0"), ("windowsize", "x")]),
        1,
        &l,
    );
    assert_eq!((n.blksize, n.windowsize, n.oack.len()), (512, 1, 0));
}

/// A whole lock-step transfer with no options crosses the 16-bit block-number rollover.
#[test]
fn rolls_over_past_65535_blocks() {
    let content = data(8 * 70_000 + 3);
    let n = negotiate(
        &req(&[("blksize", "8")]),
        content.len() as u64,
        &Limits::default(),
    );
    let now = Instant::now();
    let mut t = Transfer::new(
        Cursor::new(content.clone()),
        content.len() as u64,
        &n,
        &Limits::default(),
        now,
    );
    let oack = drain(&mut t, now);
    assert_eq!(
        packet::parse(&oack[0]).unwrap(),
        Packet::Oack(vec![("blksize".into(), "8".into())])
    );
    t.handle(&packet::ack(0));
    let mut got = Vec::new();
    let mut blocks = Vec::new();
    while t.outcome().is_none() {
        let out = drain(&mut t, now);
        assert_eq!(out.len(), 1, "lock-step sends one block at a time");
        let b = block_of(&out[0]);
        blocks.push(b);
        got.extend_from_slice(&out[0][4..]);
        t.handle(&packet::ack(b));
    }
    assert_eq!(t.outcome(), Some(&Outcome::Complete));
    assert_eq!(got, content);
    assert_eq!(blocks[65534], 65535);
    assert_eq!(blocks[65535], 0, "after 65535 comes 0");
    assert_eq!(blocks[65536], 1);
    assert_eq!(t.stats().bytes_acked, content.len() as u64);
}

#[test]
fn duplicate_acks_send_nothing() {
    let content = data(512 * 4);
    let n = negotiate(&req(&[]), content.len() as u64, &Limits::default());
    let now = Instant::now();
    let mut t = Transfer::new(Cursor::new(content), 2048, &n, &Limits::default(), now);
    assert_eq!(block_of(&drain(&mut t, now)[0]), 1);
    t.handle(&packet::ack(1));
    assert_eq!(block_of(&drain(&mut t, now)[0]), 2);
    // The client's ACK 1 arrives twice more (it re-sent it): no second DATA 2.
    t.handle(&packet::ack(1));
    t.handle(&packet::ack(1));
    assert!(drain(&mut t, now).is_empty());
    t.handle(&packet::ack(2));
    assert_eq!(drain(&mut t, now).len(), 1);
    assert_eq!(t.stats().retransmits, 0);
}

#[test]
fn windows_resend_from_the_first_lost_block() {
    let content = data(100 * 10);
    let n = negotiate(
        &req(&[("blksize", "100"), ("windowsize", "4")]),
        1000,
        &Limits::default(),
    );
    let now = Instant::now();
    let mut t = Transfer::new(
        Cursor::new(content.clone()),
        1000,
        &n,
        &Limits::default(),
        now,
    );
    drain(&mut t, now);
    t.handle(&packet::ack(0));
    let w: Vec<u16> = drain(&mut t, now).iter().map(|p| block_of(p)).collect();
    assert_eq!(w, [1, 2, 3, 4]);
    // Block 3 was lost: the client acknowledges 2, the server resends from 3.
    t.handle(&packet::ack(2));
    let w: Vec<u16> = drain(&mut t, now).iter().map(|p| block_of(p)).collect();
    assert_eq!(w, [3, 4, 5, 6]);
    t.handle(&packet::ack(6));
    let w: Vec<u16> = drain(&mut t, now).iter().map(|p| block_of(p)).collect();
    assert_eq!(w, [7, 8, 9, 10]);
    t.handle(&packet::ack(10));
    // 1000 bytes at 100 per block end with an empty block 11.
    let last = drain(&mut t, now);
    assert_eq!((block_of(&last[0]), last[0].len()), (11, 4));
    t.handle(&packet::ack(11));
    assert_eq!(t.outcome(), Some(&Outcome::Complete));
    assert_eq!(t.stats().retransmits, 2);
}

#[test]
fn timeouts_back_off_then_give_up() {
    let l = Limits::default();
    let n = negotiate(&req(&[]), 10, &l);
    let t0 = Instant::now();
    let mut t = Transfer::new(Cursor::new(data(10)), 10, &n, &l, t0);
    assert_eq!(drain(&mut t, t0).len(), 1);
    // Not yet due: nothing happens.
    t.timeout(t0 + Duration::from_millis(500));
    assert!(drain(&mut t, t0).is_empty());
    let mut now = t0;
    let mut gaps = Vec::new();
    while let Some(d) = t.deadline() {
        gaps.push((d - now).as_secs());
        now = d;
        t.timeout(now);
        let out = drain(&mut t, now);
        if t.outcome().is_none() {
            assert_eq!(block_of(&out[0]), 1);
        }
    }
    assert_eq!(gaps, [1, 2, 4, 8, 8, 8]);
    assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
    assert!(t.all_sent());
}

/// The Raspberry Pi asks for the size, reads the OACK and aborts; so does its one-block probe.
#[test]
fn client_errors_end_the_transfer() {
    let l = Limits {
        max_blksize: 1468,
        ..Limits::default()
    };
    let n = negotiate(&req(&[("tsize", "0"), ("blksize", "1468")]), 5000, &l);
    let now = Instant::now();
    let mut t = Transfer::new(Cursor::new(data(5000)), 5000, &n, &l, now);
    let oack = drain(&mut t, now);
    assert_eq!(
        packet::parse(&oack[0]).unwrap(),
        Packet::Oack(vec![
            ("tsize".into(), "5000".into()),
            ("blksize".into(), "1468".into())
        ])
    );
    t.handle(&packet::error(ErrorCode::OptionRefused, "Early terminate"));
    assert_eq!(
        t.outcome(),
        Some(&Outcome::ClientError {
            code: 8,
            message: "Early terminate".into()
        })
    );
    assert!(drain(&mut t, now).is_empty());
    assert_eq!(t.deadline(), None);
}

#[test]
fn a_short_file_is_an_error_packet() {
    let l = Limits::default();
    let n = negotiate(&req(&[]), 2000, &l);
    let now = Instant::now();
    // The file claims 2000 bytes but holds 100 (it changed under us).
    let mut t = Transfer::new(Cursor::new(data(100)), 2000, &n, &l, now);
    let out = drain(&mut t, now);
    assert!(matches!(
        packet::parse(&out[0]).unwrap(),
        Packet::Error { code: 0, .. }
    ));
    assert!(matches!(t.outcome(), Some(Outcome::ReadFailed(_))));
}
