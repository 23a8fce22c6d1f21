//! StreamConn against byte streams cut every which way, a rustls client in memory (TLS 1.2 and
//! 1.3, a throwaway certificate), its output cap and its timers.

use super::*;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::OnceLock;
use uturn_proto::stun::{padded, Class, Encoder, MessageType, Method, TransactionId};

fn stun(n: u8, extra: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 200];
    let mut e = Encoder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId([n; 12]),
    )
    .unwrap();
    e.add_raw(0x8022, &vec![n; extra]).unwrap();
    let len = e.finish();
    buf.truncate(len);
    buf
}

/// A ChannelData message and its padded form on the wire.
fn channel(n: u8, len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut msg = vec![0x40, n, 0, len as u8];
    msg.extend((0..len).map(|i| i as u8 ^ n));
    let mut wire = msg.clone();
    wire.resize(padded(msg.len()), 0);
    (msg, wire)
}

/// A mixed stream and the messages it holds.
fn stream() -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut wire = Vec::new();
    let mut msgs = Vec::new();
    for (i, len) in [0usize, 1, 2, 3, 5, 64].into_iter().enumerate() {
        let s = stun(i as u8, len);
        wire.extend_from_slice(&s);
        msgs.push(s);
        let (m, w) = channel(i as u8, len);
        wire.extend_from_slice(&w);
        msgs.push(m);
    }
    (wire, msgs)
}

fn drain(c: &mut StreamConn, now: Instant) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    while let Some(m) = c.next_message(now) {
        match m.expect("well framed") {
            Frame::Stun(b) | Frame::ChannelData(b) => v.push(b.to_vec()),
        }
    }
    v
}

#[test]
fn messages_split_and_merged_at_every_byte_boundary() {
    let (wire, msgs) = stream();
    let t = Instant::now();
    for a in 0..=wire.len() {
        for b in (a..=wire.len()).step_by(5) {
            let mut c = StreamConn::plain(t, StreamLimits::default());
            let mut got = Vec::new();
            for part in [&wire[..a], &wire[a..b], &wire[b..]] {
                c.receive(t, part).unwrap();
                got.extend(drain(&mut c, t));
            }
            assert_eq!(got, msgs, "split at {a} and {b}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS.

struct Pki {
    server: Arc<rustls::ServerConfig>,
    root: CertificateDer<'static>,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["turn.test".into()]).unwrap();
        let server = crate::tls::server_config_from_pem(
            ck.cert.pem().as_bytes(),
            ck.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        Pki {
            server,
            root: ck.cert.der().clone(),
        }
    })
}

fn client(version: &'static rustls::SupportedProtocolVersion) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("turn.test").unwrap())
        .unwrap()
}

fn tls_conn(t: Instant) -> StreamConn {
    StreamConn::tls(t, StreamLimits::default(), pki().server.clone()).unwrap()
}

/// Everything the client wants to send.
fn client_out(c: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut v = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut v).unwrap();
    }
    v
}

/// Hands the server's output to the client.
fn to_client(s: &mut StreamConn, c: &mut rustls::ClientConnection, t: Instant) {
    let mut out = s.pending_output();
    let n = out.len();
    while !out.is_empty() {
        c.read_tls(&mut out).unwrap();
        c.process_new_packets().unwrap();
    }
    s.consumed(t, n);
}

fn handshake(s: &mut StreamConn, c: &mut rustls::ClientConnection, t: Instant) {
    for _ in 0..10 {
        let bytes = client_out(c);
        s.receive(t, &bytes).unwrap();
        assert!(drain(s, t).is_empty());
        to_client(s, c, t);
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() {
            return;
        }
    }
    panic!("handshake did not finish");
}

const VERSIONS: [(&rustls::SupportedProtocolVersion, rustls::ProtocolVersion); 2] = [
    (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
];

#[test]
fn tls_12_and_13_carry_messages_both_ways() {
    let (wire, msgs) = stream();
    for (version, expected) in VERSIONS {
        let t = Instant::now();
        let mut s = tls_conn(t);
        let mut c = client(version);
        handshake(&mut s, &mut c, t);
        assert_eq!(s.tls_version(), Some(expected));
        assert_eq!(c.protocol_version(), Some(expected));

        // Client to server: the mixed stream as one write, the ciphertext a byte at a time.
        c.writer().write_all(&wire).unwrap();
        let cipher = client_out(&mut c);
        let mut got = Vec::new();
        for byte in &cipher {
            s.receive(t, std::slice::from_ref(byte)).unwrap();
            got.extend(drain(&mut s, t));
        }
        assert_eq!(got, msgs, "{expected:?}");

        // Server to client.
        for m in &msgs {
            s.send(t, m).unwrap();
        }
        to_client(&mut s, &mut c, t);
        let mut plain = Vec::new();
        let mut buf = [0u8; 4096];
        // Until WouldBlock: everything sent so far, and no close_notify.
        while let Ok(n) = c.reader().read(&mut buf) {
            assert!(n > 0, "no close_notify from the server");
            plain.extend_from_slice(&buf[..n]);
        }
        assert_eq!(plain, msgs.concat());

        // A last message and the client's close_notify in one read: the message is still
        // delivered, then the connection closes; bytes after close_notify are not read.
        let last = &msgs[0];
        c.writer().write_all(last).unwrap();
        c.send_close_notify();
        let mut bytes = client_out(&mut c);
        bytes.extend_from_slice(&[0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
        s.receive(t, &bytes).unwrap();
        assert!(s.client_has_closed());
        match s.next_message(t) {
            Some(Ok(Frame::Stun(b) | Frame::ChannelData(b))) => assert_eq!(b, &last[..]),
            other => panic!("the message before close_notify, got {other:?}"),
        }
        assert!(s.next_message(t).is_none());
    }
}

/// The ciphertext of the messages, cut at every 11th byte: each cut needs a fresh connection,
/// because a TLS record stream cannot be replayed.
#[test]
fn tls_input_split_anywhere() {
    let (wire, msgs) = stream();
    for (version, _) in VERSIONS {
        let t = Instant::now();
        let mut cut = 1;
        loop {
            let mut c = client(version);
            let mut s = tls_conn(t);
            handshake(&mut s, &mut c, t);
            c.writer().write_all(&wire).unwrap();
            let cipher = client_out(&mut c);
            if cut >= cipher.len() {
                break;
            }
            let mut got = Vec::new();
            for part in [&cipher[..cut], &cipher[cut..]] {
                s.receive(t, part).unwrap();
                got.extend(drain(&mut s, t));
            }
            assert_eq!(got, msgs, "cut at {cut}");
            cut += 11;
        }
    }
}

#[test]
fn garbage_instead_of_tls_is_refused_with_an_alert() {
    let t = Instant::now();
    let mut s = tls_conn(t);
    let stun = stun(1, 4);
    let e = s.receive(t, &stun).unwrap_err();
    assert!(matches!(e, CloseReason::Tls(_)), "{e}");
    assert!(!s.pending_output().is_empty(), "an alert for the client");

    // And a TLS ClientHello on the plain TCP port: neither STUN nor ChannelData. (An HTTP
    // request would start like ChannelData, "GE" being channel 0x4745, and wait for its
    // 21,536-byte body until the partial-message timeout.)
    let mut p = StreamConn::plain(t, StreamLimits::default());
    p.receive(t, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .unwrap();
    assert!(matches!(
        p.next_message(t),
        Some(Err(CloseReason::Framing(FramingError::Garbage)))
    ));
}

// ---------------------------------------------------------------------------------------------
// Bounds and timers.

#[test]
fn output_is_capped_for_a_client_that_does_not_read() {
    let t = Instant::now();
    let limits = StreamLimits {
        max_outbound: 10_000,
        ..StreamLimits::default()
    };
    let mut c = StreamConn::plain(t, limits);
    let chunk = [7u8; 3000];
    for _ in 0..3 {
        c.send(t, &chunk).unwrap();
    }
    assert_eq!(c.outbound_room(), 1000);
    assert_eq!(c.send(t, &chunk), Err(CloseReason::OutboundFull(10_000)));
    assert_eq!(
        c.pending_output().len(),
        9000,
        "nothing of the refused send"
    );
    // The socket takes some: room again.
    c.consumed(t, 5000);
    assert_eq!(c.pending_output(), &[7u8; 4000][..]);
    c.send(t, &chunk).unwrap();
    assert_eq!(c.pending_output().len(), 7000);

    // Over TLS the cap counts ciphertext.
    let mut s = StreamConn::tls(t, limits, pki().server.clone()).unwrap();
    let mut cl = client(&rustls::version::TLS13);
    handshake(&mut s, &mut cl, t);
    let mut sent = 0;
    while s.send(t, &chunk).is_ok() {
        sent += chunk.len();
        assert!(s.pending_output().len() <= 10_000);
    }
    assert!(sent >= 6000, "{sent}");
}

#[test]
fn a_connection_must_speak_within_the_handshake_timeout() {
    let t = Instant::now();
    let l = StreamLimits::default();
    let mut c = StreamConn::plain(t, l);
    assert_eq!(c.poll_timeout(), Some(t + l.handshake_timeout));
    assert_eq!(
        c.handle_timeout(t + l.handshake_timeout - Duration::from_millis(1)),
        Ok(())
    );
    assert_eq!(
        c.handle_timeout(t + l.handshake_timeout),
        Err(CloseReason::HandshakeTimeout)
    );

    // A TLS client that stops halfway through its handshake.
    let mut s = tls_conn(t);
    let mut cl = client(&rustls::version::TLS13);
    let hello = client_out(&mut cl);
    s.receive(t, &hello).unwrap();
    assert!(s.is_handshaking());
    assert_eq!(
        s.handle_timeout(t + l.handshake_timeout),
        Err(CloseReason::HandshakeTimeout)
    );
}

#[test]
fn a_trickled_partial_message_times_out() {
    let t = Instant::now();
    let l = StreamLimits::default();
    let mut c = StreamConn::plain(t, l);
    let m = stun(1, 40);
    c.receive(t, &m).unwrap();
    assert_eq!(drain(&mut c, t).len(), 1);
    // Then a message one byte a second.
    let next = stun(2, 40);
    let s = Duration::from_secs(1);
    for (i, byte) in next.iter().take(9).enumerate() {
        let now = t + s * (i as u32 + 1);
        c.receive(now, std::slice::from_ref(byte)).unwrap();
        assert!(drain(&mut c, now).is_empty());
        assert_eq!(c.handle_timeout(now), Ok(()));
    }
    assert_eq!(c.poll_timeout(), Some(t + s + l.partial_timeout));
    assert_eq!(
        c.handle_timeout(t + s + l.partial_timeout),
        Err(CloseReason::PartialTimeout)
    );
}

#[test]
fn idle_connections_close_and_messages_keep_them_open() {
    let t = Instant::now();
    let l = StreamLimits::default();
    let mut c = StreamConn::plain(t, l);
    let m = stun(1, 4);
    c.receive(t, &m).unwrap();
    drain(&mut c, t);
    assert_eq!(c.poll_timeout(), Some(t + l.idle_timeout));
    let later = t + l.idle_timeout - Duration::from_secs(1);
    c.receive(later, &m).unwrap();
    drain(&mut c, later);
    assert_eq!(c.handle_timeout(t + l.idle_timeout), Ok(()));
    assert_eq!(
        c.handle_timeout(later + l.idle_timeout),
        Err(CloseReason::IdleTimeout)
    );
}

#[test]
fn output_the_socket_does_not_take_is_a_stall() {
    let t = Instant::now();
    let l = StreamLimits::default();
    let mut c = StreamConn::plain(t, l);
    let m = stun(1, 4);
    c.receive(t, &m).unwrap();
    drain(&mut c, t);
    c.send(t, &[1; 100]).unwrap();
    // Progress resets the timer; none for stall_timeout closes.
    let s = Duration::from_secs(20);
    c.consumed(t + s, 10);
    assert_eq!(c.handle_timeout(t + l.stall_timeout), Ok(()));
    assert_eq!(c.poll_timeout(), Some(t + s + l.stall_timeout));
    assert_eq!(
        c.handle_timeout(t + s + l.stall_timeout),
        Err(CloseReason::Stalled)
    );
    // All written: no stall timer.
    c.consumed(t + s, 90);
    assert_eq!(c.poll_timeout(), Some(t + l.idle_timeout));
}

/// RFC 6062 section 5.4: after ConnectionBind the bytes are the peer's, as they are.
#[test]
fn splice_hands_over_the_rest_and_passes_bytes_through() {
    let t = Instant::now();
    let l = StreamLimits::default();
    for tls in [false, true] {
        let mut c = if tls {
            tls_conn(t)
        } else {
            StreamConn::plain(t, l)
        };
        let mut cl = client(&rustls::version::TLS13);
        if tls {
            handshake(&mut c, &mut cl, t);
        }
        let bind = stun(9, 8);
        let mut first = bind.clone();
        first.extend_from_slice(b"\x00\x01peer bytes");
        let feed = |c: &mut StreamConn, cl: &mut rustls::ClientConnection, b: &[u8]| {
            if tls {
                cl.writer().write_all(b).unwrap();
                let cipher = client_out(cl);
                c.receive(t, &cipher).unwrap();
            } else {
                c.receive(t, b).unwrap();
            }
        };
        feed(&mut c, &mut cl, &first);
        let Some(Ok(Frame::Stun(m))) = c.next_message(t) else {
            panic!("the ConnectionBind request")
        };
        assert_eq!(m, &bind[..]);
        assert_eq!(c.splice(), b"\x00\x01peer bytes");
        assert!(c.is_spliced());
        assert!(c.next_message(t).is_none());
        feed(&mut c, &mut cl, b"\xffmore, not STUN");
        let mut raw = Vec::new();
        c.take_raw_into(&mut raw);
        assert_eq!(raw, b"\xffmore, not STUN");
        // Appended after bytes still waiting for the peer.
        feed(&mut c, &mut cl, b" again");
        c.take_raw_into(&mut raw);
        assert_eq!(raw, b"\xffmore, not STUN again");
        c.send(t, b"from the peer").unwrap();
        if tls {
            to_client(&mut c, &mut cl, t);
            let mut buf = [0u8; 64];
            let n = cl.reader().read(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"from the peer");
        } else {
            assert_eq!(c.pending_output(), b"from the peer");
            c.consumed(t, 13);
        }
        // A spliced connection may be idle as long as the peer likes.
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.handle_timeout(t + l.idle_timeout * 10), Ok(()));
    }
}
