//! TURN over TCP and TLS (RFC 8656 section 3.1) and TCP relaying (RFC 6062) with the relay as a
//! real process on loopback and the project's TURN client on real connections, on both
//! backends: the full flow over each transport with messages split across writes, TLS 1.2 and
//! 1.3 with a throwaway certificate, Connect and ConnectionBind with a real TCP peer (and the
//! peer connecting first), data connections moved between workers, slow and stalled
//! connections timed out, a client that never reads closed at its output cap, IPv6, and the
//! metrics of it all.

#[macro_use]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::stream::{tls_client_config, Conn, StreamClient};
use common::*;
use uturn_proto::client::{Event, Failure, RelayFamily};
use uturn_proto::stun::{Method, TransactionId};

both_backends!(
    tcp_flow,
    tls_flow,
    tls_12_and_13,
    rfc6062_connect_and_peer_initiated,
    rfc6062_data_connections_move_between_workers,
    rfc6062_peer_burst_then_close_reaches_the_client_whole,
    stalled_and_slow_connections_are_timed_out,
    client_that_never_reads_is_closed,
    connections_past_the_cap_are_closed_on_accept,
    ipv6_tcp,
);

/// Not the relay's own IP, so the peer policy's exception for relay addresses does not apply.
const OTHER_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn options(b: Backend) -> RelayOptions {
    let mut o = RelayOptions::new(b);
    o.tcp = true;
    o.tls = true;
    o.metrics = true;
    o
}

fn client(relay: &Relay, tls: Option<Arc<rustls::ClientConfig>>) -> StreamClient {
    let (u, p) = relay.opts.users.first().expect("a user");
    let addr = if tls.is_some() {
        relay.listen_tls.expect("TLS listener")
    } else {
        relay.listen_tcp.expect("TCP listener")
    };
    StreamClient::connect(addr, u, p, tls)
}

/// Allocate, CreatePermission, Send/Data, ChannelBind and ChannelData both ways with a UDP peer,
/// for payloads of every awkward size, with the client's writes cut into pieces of `split`
/// bytes; then Refresh 0.
fn turn_flow(c: &mut StreamClient, split: Option<usize>) {
    c.split = split;
    let a = c
        .allocate(RelayFamily::Ipv4)
        .expect("Allocate over a stream");
    assert!(!a.tcp);
    let peer = peer_socket(OTHER_LOOPBACK);
    let peer_addr = peer.local_addr().unwrap();
    c.create_permission(&[peer_addr.ip()]).expect("permission");
    for p in payloads() {
        c.send_indication(peer_addr, &p);
        let (got, from) = recv_within(&peer, IO_TIMEOUT).expect("Send payload at the peer");
        assert_eq!(
            (got.as_slice(), from),
            (p.as_slice(), a.relayed),
            "{split:?}"
        );
        peer.send_to(&p, a.relayed).unwrap();
        let r = c.recv_data(IO_TIMEOUT).expect("a Data indication");
        assert_eq!(
            (r.peer, r.payload.as_slice(), r.channel),
            (peer_addr, p.as_slice(), false)
        );
    }
    c.channel_bind(peer_addr).expect("ChannelBind");
    for p in payloads() {
        c.channel_data(peer_addr, &p);
        let (got, from) = recv_within(&peer, IO_TIMEOUT).expect("ChannelData at the peer");
        assert_eq!(
            (got.as_slice(), from),
            (p.as_slice(), a.relayed),
            "{split:?}"
        );
        peer.send_to(&p, a.relayed).unwrap();
        let r = c.recv_data(IO_TIMEOUT).expect("ChannelData from the peer");
        assert_eq!(
            (r.peer, r.payload.as_slice(), r.channel),
            (peer_addr, p.as_slice(), true),
            "padded ChannelData on the stream, unpadded payload"
        );
    }
    // Many messages in one write: a burst the server must cut apart.
    c.split = None;
    let burst: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i) * 7]).collect();
    for p in &burst {
        c.channel_data(peer_addr, p);
    }
    for p in &burst {
        let (got, _) = recv_within(&peer, IO_TIMEOUT).expect("burst datagram");
        assert_eq!(&got, p);
    }
    match c.refresh(Some(Duration::ZERO)) {
        Ok(Event::Deallocated) => {}
        other => panic!("Refresh 0: {other:?}"),
    }
}

fn tcp_flow(b: Backend) {
    let relay = options(b).start();
    for split in [None, Some(1), Some(3), Some(7)] {
        let mut c = client(&relay, None);
        turn_flow(&mut c, split);
    }
    let m = relay.wait_metrics("TCP connections", |m| {
        m.sum("uturn_tcp_connections_total", &[("transport", "tcp")]) >= 4.0
    });
    assert!(
        m.sum(
            "uturn_requests_total",
            &[("method", "allocate"), ("result", "success")]
        ) >= 4.0
    );
}

fn tls_flow(b: Backend) {
    let relay = options(b).start();
    for split in [None, Some(5)] {
        let mut c = client(&relay, Some(tls_client_config(None)));
        turn_flow(&mut c, split);
    }
    relay.wait_metrics("TLS handshakes", |m| {
        m.sum("uturn_tls_handshakes_total", &[]) >= 2.0
            && m.sum("uturn_tcp_connections_total", &[("transport", "tls")]) >= 2.0
    });
}

fn tls_12_and_13(b: Backend) {
    let relay = options(b).start();
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut c = client(&relay, Some(tls_client_config(Some(version))));
        assert_eq!(c.conn.tls_version(), Some(expected));
        c.allocate(RelayFamily::Ipv4).expect("Allocate over TLS");
    }
    // Not TLS at all on the TLS port: the connection is closed.
    let mut plain = Conn::connect(relay.listen_tls.unwrap(), None);
    let mut buf = [0u8; 64];
    let n = binding_request(TransactionId([1; 12]), &mut buf);
    plain.write_all(&buf[..n]).unwrap();
    assert!(
        plain.closed_within(IO_TIMEOUT),
        "plain STUN on the TLS port is refused"
    );
}

/// A TCP peer: a listener whose accepted connections are handed out by a thread.
struct TcpPeer {
    addr: SocketAddr,
    accepted: crossbeam_channel::Receiver<TcpStream>,
}

impl TcpPeer {
    fn start(ip: IpAddr) -> TcpPeer {
        let l = TcpListener::bind(SocketAddr::new(ip, 0)).expect("peer listener");
        let addr = l.local_addr().unwrap();
        let (tx, accepted) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                if tx.send(s).is_err() {
                    return;
                }
            }
        });
        TcpPeer { addr, accepted }
    }

    fn accept(&self) -> TcpStream {
        let s = self
            .accepted
            .recv_timeout(IO_TIMEOUT)
            .expect("uturn connects to the peer");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }
}

/// A TCP connection to `to` from an address on `ip` (a permitted peer's).
fn connect_from(ip: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    sock.bind(&SocketAddr::new(ip, 0).into())
        .expect("bind the peer");
    sock.connect_timeout(&to.into(), IO_TIMEOUT)
        .expect("the peer connects to the relayed address");
    sock.into()
}

fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    s.read_exact(&mut v).expect("peer reads");
    v
}

/// Data both ways over a bound data connection, byte for byte, small and large (far more
/// than one buffer or queue: back-pressure through the splice).
fn spliced_data_both_ways(data: &mut Conn, early: Vec<u8>, peer: &mut TcpStream) {
    assert!(early.is_empty(), "nothing from the peer before it sent");
    for p in [b"x".to_vec(), b"hello peer".to_vec(), vec![7u8; 3000]] {
        data.write_all(&p).unwrap();
        assert_eq!(read_exact(peer, p.len()), p);
        peer.write_all(&p).unwrap();
        assert_eq!(data.read_exact_within(p.len()), p);
    }
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut w = peer.try_clone().unwrap();
    let sent = big.clone();
    let writer = thread::spawn(move || w.write_all(&sent).unwrap());
    let got = data.read_exact_within(big.len());
    writer.join().unwrap();
    assert!(got == big, "2 MB from the peer, byte for byte");
    let mut r = peer.try_clone().unwrap();
    let n = big.len();
    let reader = thread::spawn(move || read_exact(&mut r, n));
    data.write_all(&big).unwrap();
    assert!(
        reader.join().unwrap() == big,
        "2 MB to the peer, byte for byte"
    );
}

fn rfc6062_connect_and_peer_initiated(b: Backend) {
    for tls in [None, Some(tls_client_config(None))] {
        let relay = options(b).start();
        let mut control = client(&relay, tls.clone());
        let a = control
            .allocate_tcp(RelayFamily::Ipv4)
            .expect("TCP allocation");
        assert!(a.tcp, "REQUESTED-TRANSPORT TCP granted");
        let peer = TcpPeer::start(OTHER_LOOPBACK);
        control
            .create_permission(&[peer.addr.ip()])
            .expect("permission");

        // Client-initiated (RFC 6062 section 4.3).
        let id = control.connect_peer(peer.addr).expect("Connect");
        let mut p = peer.accept();
        assert_eq!(
            p.peer_addr().unwrap(),
            a.relayed,
            "from the relayed address"
        );
        // A second Connect to the same peer while the first connection lives: 446.
        assert_eq!(control.connect_peer(peer.addr), Err(Failure::Error(446)));
        let (mut data, early) = client(&relay, tls.clone())
            .connection_bind(id)
            .expect("ConnectionBind");
        spliced_data_both_ways(&mut data, early, &mut p);
        relay.wait_metrics("one data connection spliced", |m| {
            m.sum("uturn_tcp_spliced_active", &[]) == 1.0
        });
        // The peer hangs up: the data connection closes after the bytes before the FIN.
        p.write_all(b"bye").unwrap();
        drop(p);
        assert_eq!(data.read_exact_within(3), b"bye");
        assert!(
            data.closed_within(IO_TIMEOUT),
            "data connection closed after the peer"
        );

        // Peer-initiated (RFC 6062 section 4.4): ConnectionAttempt on the control connection.
        let mut q = connect_from(OTHER_LOOPBACK, a.relayed);
        q.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // Sent before the bind: waits in the kernel until the splice.
        q.write_all(b"early bytes").unwrap();
        let (from, id) = match control.wait_event(Method::CONNECTION_ATTEMPT) {
            Event::ConnectionAttempt { peer, id } => (peer, id),
            e => panic!("expected ConnectionAttempt, got {e:?}"),
        };
        assert_eq!(from, q.local_addr().unwrap());
        let (mut data, early) = client(&relay, tls.clone())
            .connection_bind(id)
            .expect("ConnectionBind of the accepted connection");
        let mut got = early;
        got.extend(data.read_exact_within(11 - got.len()));
        assert_eq!(got, b"early bytes");
        data.write_all(b"welcome").unwrap();
        assert_eq!(read_exact(&mut q, 7), b"welcome");

        // A peer without a permission is not announced (and closed).
        let mut stranger = TcpStream::connect_timeout(&a.relayed, IO_TIMEOUT);
        if let Ok(s) = stranger.as_mut() {
            // Connected from 127.0.0.1, which has no permission.
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut buf = [0u8; 8];
            assert!(
                matches!(s.read(&mut buf), Ok(0) | Err(_)),
                "a peer without permission is closed"
            );
        }

        // The control connection closes: the allocation and its data connections go.
        control.conn.shutdown();
        drop(control);
        assert!(
            data.closed_within(IO_TIMEOUT),
            "data connection closed with its allocation"
        );
        let mut buf = [0u8; 8];
        assert!(
            matches!(q.read(&mut buf), Ok(0) | Err(_)),
            "peer connection closed"
        );
        relay.wait_metrics("peer connections", |m| {
            m.sum("uturn_tcp_peer_connections_total", &[]) >= 2.0
                && m.sum("uturn_tcp_peer_connections_active", &[]) == 0.0
                && m.sum("uturn_tcp_spliced_active", &[]) == 0.0
                && m.sum("uturn_allocations_active", &[]) == 0.0
        });
    }
}

/// A peer that sends far more than every buffer on the way holds and then closes: a client that
/// reads slowly still gets every byte, then EOF. What the relay holds for the client when the
/// peer's FIN arrives (in its per-connection queue, past the driver's) is written out before the
/// connection closes. (Timing decides whether bytes wait there at that moment, so this run does
/// not always reach that case; `close_spliced_client` handles it.)
fn rfc6062_peer_burst_then_close_reaches_the_client_whole(b: Backend) {
    let relay = options(b).start();
    let mut control = client(&relay, None);
    control
        .allocate_tcp(RelayFamily::Ipv4)
        .expect("TCP allocation");
    let peer = TcpPeer::start(OTHER_LOOPBACK);
    control
        .create_permission(&[peer.addr.ip()])
        .expect("permission");
    let id = control.connect_peer(peer.addr).expect("Connect");
    let p = peer.accept();
    let (mut data, early) = client(&relay, None)
        .connection_bind(id)
        .expect("ConnectionBind");
    assert!(early.is_empty());
    // Small kernel buffers on the client's side, so that the relay's own queues fill.
    let _ = socket2::SockRef::from(data.tcp()).set_recv_buffer_size(65536);
    const N: usize = 4_000_000;
    let burst: Vec<u8> = (0..N as u32).map(|i| (i % 251) as u8).collect();
    let sent = burst.clone();
    let writer = thread::spawn(move || {
        let mut p = p;
        // The client reads slowly: no write timeout.
        p.set_write_timeout(None).unwrap();
        p.write_all(&sent).unwrap();
        // FIN right behind the data.
    });
    // Read nothing until the peer wrote everything it could (the kernel took the rest).
    thread::sleep(Duration::from_millis(500));
    let mut got = Vec::with_capacity(N);
    let until = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 16384];
    loop {
        assert!(
            Instant::now() < until,
            "only {} of {N} bytes in 30 s",
            got.len()
        );
        match data.read_within(&mut buf, Duration::from_secs(5)) {
            Ok(0) => break,
            Ok(k) => {
                got.extend_from_slice(&buf[..k]);
                // A slow reader: the relay's queues for it stay full, so the peer's FIN
                // reaches the relay while bytes still wait there for the client.
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("read after {} of {N} bytes: {e}", got.len()),
        }
    }
    writer.join().unwrap();
    assert_eq!(got.len(), N, "every byte the peer sent before closing");
    assert!(got == burst, "byte for byte");
}

/// With 2 workers, a data connection lands on either; one landing on the worker that does not
/// own the peer connection is moved there (socket and TLS session) and works the same.
fn rfc6062_data_connections_move_between_workers(b: Backend) {
    for tls in [None, Some(tls_client_config(None))] {
        let relay = options(b).start();
        let mut control = client(&relay, tls.clone());
        control
            .allocate_tcp(RelayFamily::Ipv4)
            .expect("TCP allocation");
        let peer = TcpPeer::start(OTHER_LOOPBACK);
        control
            .create_permission(&[peer.addr.ip()])
            .expect("permission");
        let mut moved = false;
        for round in 0..40 {
            let id = control.connect_peer(peer.addr).expect("Connect");
            let mut p = peer.accept();
            let (mut data, early) = client(&relay, tls.clone())
                .connection_bind(id)
                .expect("ConnectionBind");
            assert!(early.is_empty());
            let msg = format!("round {round}");
            data.write_all(msg.as_bytes()).unwrap();
            assert_eq!(read_exact(&mut p, msg.len()), msg.as_bytes());
            p.write_all(msg.as_bytes()).unwrap();
            assert_eq!(data.read_exact_within(msg.len()), msg.as_bytes());
            // Close from the client side this time: the peer connection follows.
            data.shutdown();
            let mut buf = [0u8; 4];
            assert!(matches!(p.read(&mut buf), Ok(0) | Err(_)));
            let (code, body) = http_get(relay.metrics_addr(), "/metrics");
            assert_eq!(code, 200);
            if Metrics::parse(&body).sum("uturn_tcp_handoffs_total", &[("direction", "in")]) > 0.0 {
                moved = true;
                break;
            }
            // Wait out the one-second metrics period before judging the next round.
            thread::sleep(Duration::from_millis(1100));
        }
        assert!(
            moved,
            "no data connection landed on the other worker in 40 rounds"
        );
    }
}

fn stalled_and_slow_connections_are_timed_out(b: Backend) {
    let mut o = options(b);
    o.extra_toml =
        "tcp_handshake_timeout = 1\ntcp_partial_timeout = 1\ntcp_idle_timeout = 2\n".into();
    let relay = o.start();
    let started = Instant::now();
    // Says nothing at all.
    let mut silent = Conn::connect(relay.listen_tcp.unwrap(), None);
    // Half a STUN header, then nothing: a partial message.
    let mut partial = Conn::connect(relay.listen_tcp.unwrap(), None);
    partial.write_all(&[0, 1, 0, 0, 0x21, 0x12]).unwrap();
    // A trickle: one byte every 300 ms keeps sending but never completes a message.
    let trickle = TcpStream::connect(relay.listen_tcp.unwrap()).unwrap();
    let mut t = trickle.try_clone().unwrap();
    let trickler = thread::spawn(move || {
        let mut buf = [0u8; 64];
        let n = binding_request(TransactionId([9; 12]), &mut buf);
        for byte in &buf[..n] {
            if t.write_all(std::slice::from_ref(byte)).is_err() {
                return true;
            }
            thread::sleep(Duration::from_millis(300));
        }
        false
    });
    // A TLS connection that never starts its handshake.
    let mut no_handshake = Conn::connect(relay.listen_tls.unwrap(), None);
    for (name, c) in [
        ("silent", &mut silent),
        ("partial", &mut partial),
        ("no handshake", &mut no_handshake),
    ] {
        assert!(
            c.closed_within(Duration::from_secs(4)),
            "{name} connection closed"
        );
    }
    assert!(trickler.join().unwrap(), "the trickling client was cut off");
    assert!(started.elapsed() < Duration::from_secs(8));
    // An idle client with an allocation: closed after the idle timeout, allocation gone.
    let mut idle = client(&relay, None);
    idle.allocate(RelayFamily::Ipv4).expect("allocate");
    assert!(
        idle.conn.closed_within(Duration::from_secs(5)),
        "idle connection closed"
    );
    relay.wait_metrics("timeouts counted", |m| {
        m.sum(
            "uturn_tcp_connections_closed_total",
            &[("reason", "timeout")],
        ) >= 5.0
            && m.sum("uturn_allocations_active", &[]) == 0.0
    });
}

/// `tcp_max_connections` bounds the connections open at once (memory per connection is
/// bounded, so this bounds the total): one worker with a cap of 2 closes the third at once, and
/// takes a new one when one of the first two has gone.
fn connections_past_the_cap_are_closed_on_accept(b: Backend) {
    let mut o = options(b);
    o.threads = 1;
    o.extra_toml = "tcp_max_connections = 2\n".into();
    let relay = o.start();
    let mut first = client(&relay, None);
    first
        .allocate(RelayFamily::Ipv4)
        .expect("first connection served");
    let mut second = client(&relay, None);
    second
        .allocate(RelayFamily::Ipv4)
        .expect("second connection served");
    let mut third = Conn::connect(relay.listen_tcp.unwrap(), None);
    assert!(
        third.closed_within(IO_TIMEOUT),
        "the third connection is closed on accept"
    );
    relay.wait_metrics("refusal counted", |m| {
        m.sum("uturn_tcp_connections_closed_total", &[("reason", "limit")]) == 1.0
            && m.sum("uturn_tcp_connections_active", &[]) == 2.0
    });
    first.conn.shutdown();
    drop(first);
    relay.wait_metrics("first connection gone", |m| {
        m.sum("uturn_tcp_connections_active", &[]) == 1.0
    });
    let mut fourth = client(&relay, None);
    fourth
        .allocate(RelayFamily::Ipv4)
        .expect("room again after one closed");
    second
        .refresh(Some(Duration::ZERO))
        .expect("the second still works");
}

fn client_that_never_reads_is_closed(b: Backend) {
    let mut o = options(b);
    o.extra_toml = "tcp_max_outbound = 70000\n".into();
    let relay = o.start();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive window, so that the server's side fills up sooner.
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&relay.listen_tcp.unwrap().into(), IO_TIMEOUT)
        .unwrap();
    let mut s: TcpStream = sock.into();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    let n = binding_request(TransactionId([5; 12]), &mut buf);
    let burst: Vec<u8> = buf[..n].repeat(1000);
    let started = Instant::now();
    let mut sent = 0usize;
    let closed = loop {
        match s.write_all(&burst) {
            Ok(()) => sent += burst.len(),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                // The server stopped reading? It must close us, not stall.
            }
            Err(_) => break true,
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    assert!(
        closed,
        "a client that never reads is closed (sent {sent} bytes)"
    );
    eprintln!(
        "closed after {sent} bytes of requests in {:?}",
        started.elapsed()
    );
    relay.wait_metrics("overflow counted", |m| {
        m.sum(
            "uturn_tcp_connections_closed_total",
            &[("reason", "overflow")],
        ) >= 1.0
    });
    // The relay still serves others.
    let mut c = client(&relay, None);
    c.allocate(RelayFamily::Ipv4)
        .expect("allocate after the flood");
}

fn ipv6_tcp(b: Backend) {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let mut o = options(b);
    o.ipv6 = true;
    let relay = o.start();
    assert!(relay.listen_tcp.unwrap().is_ipv6());
    let mut c = client(&relay, None);
    let a = c
        .allocate(RelayFamily::Ipv6)
        .expect("Allocate over TCP on [::1]");
    assert!(a.relayed.is_ipv6());
    let peer = peer_socket("::1".parse().unwrap());
    let peer_addr = peer.local_addr().unwrap();
    c.create_permission(&[peer_addr.ip()]).expect("permission");
    c.channel_bind(peer_addr).expect("ChannelBind");
    c.channel_data(peer_addr, b"over v6");
    let (got, from) = recv_within(&peer, IO_TIMEOUT).expect("ChannelData at the v6 peer");
    assert_eq!((got.as_slice(), from), (&b"over v6"[..], a.relayed));
    peer.send_to(b"back", a.relayed).unwrap();
    assert_eq!(c.recv_data(IO_TIMEOUT).expect("back").payload, b"back");

    // RFC 6062 over IPv6 too.
    let mut control = client(&relay, Some(tls_client_config(None)));
    let a = control
        .allocate_tcp(RelayFamily::Ipv6)
        .expect("TCP allocation on v6");
    let tpeer = TcpPeer::start("::1".parse().unwrap());
    control.create_permission(&[tpeer.addr.ip()]).unwrap();
    let id = control.connect_peer(tpeer.addr).expect("Connect over v6");
    let mut p = tpeer.accept();
    assert_eq!(p.peer_addr().unwrap(), a.relayed);
    let (mut data, _) = client(&relay, Some(tls_client_config(None)))
        .connection_bind(id)
        .expect("bind");
    data.write_all(b"v6 data").unwrap();
    assert_eq!(read_exact(&mut p, 7), b"v6 data");
}

// ---------------------------------------------------------------------------------------------
// RFC 5780 NAT behaviour discovery over UDP.

both_backends!(nat_discovery_answers_from_the_four_addresses);

/// A UDP port free on both loopback addresses.
fn port_free_on_both() -> u16 {
    loop {
        let p = free_udp_port(LOCALHOST_V4);
        if UdpSocket::bind(SocketAddr::new(OTHER_LOOPBACK, p)).is_ok() {
            return p;
        }
    }
}

/// A Binding request with CHANGE-REQUEST and RESPONSE-PORT as given; the answer, where it came
/// from, and on which of the two client sockets.
fn binding_5780(
    a: &UdpSocket,
    b: &UdpSocket,
    to: SocketAddr,
    change: Option<(bool, bool)>,
    response_port: Option<u16>,
) -> (Vec<u8>, SocketAddr, bool) {
    use uturn_proto::stun::attr::{ChangeRequest, ResponsePort};
    use uturn_proto::stun::{Class, Encoder, MessageType};
    let mut buf = [0u8; 128];
    let tid = TransactionId(rand::random());
    let mut e = Encoder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        tid,
    )
    .unwrap();
    if let Some((change_ip, change_port)) = change {
        e.add(&ChangeRequest {
            change_ip,
            change_port,
        })
        .unwrap();
    }
    if let Some(p) = response_port {
        e.add(&ResponsePort(p)).unwrap();
    }
    e.fingerprint().unwrap();
    let n = e.finish();
    a.send_to(&buf[..n], to).unwrap();
    for (sock, on_a) in [(a, true), (b, false)] {
        if let Some((bytes, from)) = recv_within(sock, Duration::from_millis(700)) {
            let m = uturn_proto::stun::Message::parse(&bytes).expect("STUN answer");
            assert_eq!(m.transaction_id(), tid);
            return (bytes, from, on_a);
        }
    }
    panic!("no answer to the Binding request (change {change:?}, port {response_port:?})");
}

fn nat_discovery_answers_from_the_four_addresses(b: Backend) {
    use uturn_proto::stun::attr::{ErrorCode, OtherAddress, ResponseOrigin, XorMappedAddress};
    use uturn_proto::stun::{Class, Message};
    let alt_port = port_free_on_both();
    let mut o = options(b);
    o.extra_toml = format!(
        "nat_discovery = {{ alternate_ip = \"{OTHER_LOOPBACK}\", alternate_port = {alt_port} }}\n"
    );
    let relay = o.start();
    let primary = relay.listen;
    let client_a = peer_socket(LOCALHOST_V4);
    let client_b = peer_socket(LOCALHOST_V4);
    let other = SocketAddr::new(OTHER_LOOPBACK, alt_port);

    // RFC 5780 section 7.3: OTHER-ADDRESS and RESPONSE-ORIGIN in every Binding response.
    let cases = [
        (None, primary),
        (Some((false, false)), primary),
        (Some((false, true)), SocketAddr::new(primary.ip(), alt_port)),
        (
            Some((true, false)),
            SocketAddr::new(OTHER_LOOPBACK, primary.port()),
        ),
        (Some((true, true)), other),
    ];
    for (change, expected_from) in cases {
        let (bytes, from, on_a) = binding_5780(&client_a, &client_b, primary, change, None);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.class(), Class::Success, "{change:?}");
        assert_eq!(
            from, expected_from,
            "CHANGE-REQUEST {change:?} answered from"
        );
        assert!(on_a);
        let origin = m
            .get::<ResponseOrigin>()
            .unwrap()
            .expect("RESPONSE-ORIGIN")
            .0;
        assert_eq!(
            origin, expected_from,
            "RESPONSE-ORIGIN is the answering socket"
        );
        let o = m.get::<OtherAddress>().unwrap().expect("OTHER-ADDRESS").0;
        assert_eq!(o, other, "OTHER-ADDRESS is the alternate IP and port");
        let mapped = m.get::<XorMappedAddress>().unwrap().expect("mapped").0;
        assert_eq!(mapped, client_a.local_addr().unwrap());
    }
    // A request to the alternate address names the primary as the other one.
    let (bytes, from, _) = binding_5780(&client_a, &client_b, other, None, None);
    assert_eq!(from, other);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.get::<OtherAddress>().unwrap().unwrap().0, primary);

    // RESPONSE-PORT (section 7.5): the answer goes to that port of the client's address.
    let b_port = client_b.local_addr().unwrap().port();
    let (_, from, on_a) = binding_5780(&client_a, &client_b, primary, None, Some(b_port));
    assert!(!on_a, "answered to the RESPONSE-PORT");
    assert_eq!(from, primary);

    // Over TCP an answer cannot come from elsewhere: 400.
    let mut c = client(&relay, None);
    let mut buf = [0u8; 64];
    let mut e = uturn_proto::stun::Encoder::new(
        &mut buf,
        uturn_proto::stun::MessageType::new(Method::BINDING, Class::Request),
        TransactionId([3; 12]),
    )
    .unwrap();
    e.add(&uturn_proto::stun::attr::ChangeRequest {
        change_ip: true,
        change_port: false,
    })
    .unwrap();
    let n = e.finish();
    c.conn.write_all(&buf[..n]).unwrap();
    let head = c.conn.read_exact_within(20);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut msg = head;
    msg.extend(c.conn.read_exact_within(len));
    let m = Message::parse(&msg).unwrap();
    assert_eq!(m.class(), Class::Error);
    assert_eq!(m.get::<ErrorCode<'_>>().unwrap().unwrap().code, 400);

    // Off by default: CHANGE-REQUEST is an unknown comprehension-required attribute (420).
    let plain = RelayOptions::new(b).start();
    let (bytes, _, _) = binding_5780(&client_a, &client_b, plain.listen, Some((true, true)), None);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.get::<ErrorCode<'_>>().unwrap().unwrap().code, 420);
    let (bytes, _, _) = binding_5780(&client_a, &client_b, plain.listen, None, None);
    let m = Message::parse(&bytes).unwrap();
    assert!(
        m.get::<OtherAddress>().unwrap().is_none(),
        "no OTHER-ADDRESS when off"
    );
}
