//! The driver on real loopback sockets, both backends, each test bounded in time.
//!
//! The worker runs `Hop`, a tiny relay hop: a datagram from client C on socket A gets a 4-byte
//! ChannelData-style header written in place in front of it and goes to peer P via socket B (or
//! via a socket opened at run time); a datagram from P has its 4-byte header skipped and goes back
//! to C via A. A few one-byte commands from C exercise the copy path, open/close and starvation.
//!
//! The uring variant of each test is skipped, with the reason printed, only when
//! `probe_uring` fails (no io_uring on this host); otherwise it runs.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use uturn::driver::{
    bind_udp, probe_uring, run_worker, select_backend, Backend, Chosen, Control, Counters,
    DriverConfig, DriverError, Handler, Io, RecvPacket, SockId, HEADROOM, MAX_DATAGRAM, TAILROOM,
};

const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Sockets the `M` command opens.
const MANY: usize = 1000;

struct Hop {
    a: SockId,
    b: SockId,
    peer: SocketAddr,
    /// Learnt from the datagrams on A.
    client: Option<SocketAddr>,
    /// A socket opened at run time; when set, C's data goes to P through it.
    via: Option<SockId>,
    many: Vec<SockId>,
    /// A timer armed at start; `fired` records when on_tick first saw it due.
    timer: Option<Instant>,
    fired: Option<Instant>,
    /// Every packet's payload started at least HEADROOM into a buffer with TAILROOM after it.
    layout_ok: bool,
}

impl Hop {
    fn new(peer: SocketAddr, timer: Option<Instant>) -> Hop {
        Hop {
            a: SockId(0),
            b: SockId(1),
            peer,
            client: None,
            via: None,
            many: Vec::new(),
            timer,
            fired: None,
            layout_ok: true,
        }
    }

    /// Writes the 4-byte header in the headroom and forwards header + payload.
    fn wrap_and_forward<I: Io>(&self, mut pkt: I::Packet, via: SockId, to: SocketAddr, io: &mut I) {
        let r = pkt.range();
        let start = r.start - 4;
        let len = r.len() as u16;
        let buf = pkt.buf_mut();
        buf[start..start + 2].copy_from_slice(&[0x40, 0x00]);
        buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        io.forward(pkt, via, to, start..r.end);
    }
}

impl Handler for Hop {
    fn on_recv<I: Io>(
        &mut self,
        _now: Instant,
        sock: SockId,
        from: SocketAddr,
        pkt: I::Packet,
        io: &mut I,
    ) {
        let r = pkt.range();
        self.layout_ok &= r.start >= HEADROOM && pkt.buf().len() - r.end >= TAILROOM;
        if sock == self.a {
            self.client = Some(from);
            let cmd = pkt.payload().first().copied();
            match cmd {
                Some(b'P') => {
                    let mut reply = b"PONG".to_vec();
                    reply.extend_from_slice(&pkt.payload()[1..]);
                    io.send(self.a, from, &reply);
                }
                Some(b'O') => {
                    let id = io.open_udp(LOOPBACK).expect("open_udp");
                    let port = io.local_addr(id).expect("local_addr").port();
                    self.via = Some(id);
                    io.send(self.a, from, format!("OPENED {port}").as_bytes());
                }
                Some(b'C') => {
                    if let Some(id) = self.via.take() {
                        io.close(id);
                        let gone = io.local_addr(id).is_err();
                        io.send(self.a, from, if gone { b"CLOSED" } else { b"STILL!" });
                    }
                }
                Some(b'M') => {
                    for _ in 0..MANY {
                        let id = io.open_udp(LOOPBACK).expect("open_udp (many)");
                        self.many.push(id);
                    }
                    io.send(self.a, from, b"MANY");
                }
                Some(b'A') => {
                    // Announce sockets [i, i + 50) from themselves: C learns their ports from
                    // the source addresses (50 at a time, to stay within C's receive buffer).
                    let p = pkt.payload();
                    let i = p
                        .get(1..5)
                        .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()));
                    for &id in self.many.iter().skip(i as usize).take(50) {
                        io.send(id, from, b"HI");
                    }
                }
                Some(b'S') => thread::sleep(Duration::from_millis(60)),
                _ => {
                    let via = self.via.unwrap_or(self.b);
                    self.wrap_and_forward(pkt, via, self.peer, io);
                }
            }
        } else if sock == self.b || Some(sock) == self.via {
            // From P: a header and the payload; check the header before trusting it.
            let r = pkt.range();
            let p = pkt.payload();
            if p.len() < 4 || usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() - 4 {
                return;
            }
            let Some(client) = self.client else { return };
            io.forward(pkt, self.a, client, r.start + 4..r.end);
        } else if self.many.contains(&sock) {
            // Echo from the same socket, zero copy.
            let r: Range<usize> = pkt.range();
            io.forward(pkt, sock, from, r);
        }
    }

    fn on_tick<I: Io>(&mut self, now: Instant, _io: &mut I) {
        if let Some(t) = self.timer {
            if now >= t {
                self.fired = Some(now);
                self.timer = None;
            }
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.timer
    }
}

/// A running worker with its client and peer sockets.
struct Rig {
    control: Sender<Control>,
    done: Receiver<(Hop, Result<Counters, DriverError>)>,
    a: SocketAddr,
    client: UdpSocket,
    peer: UdpSocket,
}

struct Stopped {
    hop: Hop,
    counters: Counters,
    took: Duration,
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind(LOOPBACK).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

impl Rig {
    fn start(backend: Backend, config: DriverConfig, timer: Option<Instant>) -> Rig {
        let client = udp();
        let peer = udp();
        let a = bind_udp(LOOPBACK).unwrap();
        let b = bind_udp(LOOPBACK).unwrap();
        let a_addr = a.local_addr().unwrap();
        let mut hop = Hop::new(peer.local_addr().unwrap(), timer);
        let (control, control_rx) = bounded(4);
        let (done_tx, done) = bounded(1);
        thread::spawn(move || {
            let r = run_worker(backend, &mut hop, vec![a, b], &control_rx, &config);
            let _ = done_tx.send((hop, r));
        });
        Rig {
            control,
            done,
            a: a_addr,
            client,
            peer,
        }
    }

    fn stop(self) -> Stopped {
        let t0 = Instant::now();
        self.control.send(Control::Stop).unwrap();
        let (hop, r) = self
            .done
            .recv_timeout(Duration::from_secs(5))
            .expect("worker did not stop within 5 s");
        let took = t0.elapsed();
        Stopped {
            hop,
            counters: r.expect("worker failed"),
            took,
        }
    }

    /// C sends `msg` to A and returns the reply C gets.
    fn ask(&self, msg: &[u8]) -> Vec<u8> {
        self.client.send_to(msg, self.a).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = self
            .client
            .recv_from(&mut buf)
            .expect("no reply to command");
        buf[..n].to_vec()
    }

    /// Sends `payloads` from C in windows, lets P check and echo each, and checks what C gets
    /// back. Returns the source address P saw.
    fn round_trip(&self, payloads: &[Vec<u8>], window: usize) -> SocketAddr {
        let mut seen_from = None;
        let mut buf = [0u8; 2048];
        for chunk in payloads.chunks(window) {
            for p in chunk {
                self.client.send_to(p, self.a).unwrap();
            }
            let mut expect: HashMap<Vec<u8>, usize> = HashMap::new();
            for p in chunk {
                *expect.entry(p.clone()).or_default() += 1;
            }
            // P: each datagram must be header + one of the payloads, byte for byte.
            for _ in 0..chunk.len() {
                let (n, from) = self.peer.recv_from(&mut buf).expect("peer: datagram lost");
                assert!(n >= 4, "peer got {n} bytes");
                assert_eq!(&buf[..2], &[0x40, 0x00]);
                assert_eq!(usize::from(u16::from_be_bytes([buf[2], buf[3]])), n - 4);
                assert!(
                    expect.contains_key(&buf[4..n]),
                    "peer got a payload nobody sent"
                );
                assert_eq!(
                    *seen_from.get_or_insert(from),
                    from,
                    "source changed mid-run"
                );
                self.peer.send_to(&buf[..n], from).unwrap();
            }
            // C: each echo must come back with the header stripped.
            for _ in 0..chunk.len() {
                let (n, from) = self.client.recv_from(&mut buf).expect("client: echo lost");
                assert_eq!(from, self.a);
                let left = expect
                    .get_mut(&buf[..n])
                    .expect("client got a payload nobody sent");
                assert!(*left > 0, "duplicate payload");
                *left -= 1;
            }
        }
        seen_from.expect("no packets")
    }
}

/// Payload `i`: 'D' then bytes from a simple generator, 1..=1400 bytes.
fn payload(i: usize) -> Vec<u8> {
    let len = 1 + (i * 7919) % 1400;
    let mut x = (i as u32).wrapping_mul(2654435761) | 1;
    let mut v = Vec::with_capacity(len);
    v.push(b'D');
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v
}

fn uring_available() -> bool {
    match probe_uring() {
        Ok(()) => true,
        Err(reason) => {
            eprintln!("SKIPPED: uring backend test: io_uring probe failed: {reason}");
            false
        }
    }
}

/// One test function per backend.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn uring() {
                if uring_available() {
                    super::$name(Backend::Uring);
                }
            }
            #[test]
            fn portable() {
                super::$name(Backend::Portable);
            }
        }
    )*};
}

both_backends!(
    forwards_thousands_of_packets_byte_for_byte,
    forwards_byte_for_byte_without_gso_or_gro,
    copy_path_sends_replies,
    opens_and_closes_sockets_at_run_time,
    receives_on_a_thousand_sockets,
    recovers_from_buffer_starvation,
    drops_oversize_datagrams_and_goes_on,
    stops_within_a_second_and_fires_timers,
);

fn forwards_thousands_of_packets_byte_for_byte(backend: Backend) {
    let rig = Rig::start(backend, DriverConfig::default(), None);
    let payloads: Vec<Vec<u8>> = (0..3000).map(payload).collect();
    assert!(payloads.iter().any(|p| p.len() == 1) && payloads.iter().any(|p| p.len() == 1400));
    rig.round_trip(&payloads, 32);
    // A snapshot while running.
    let (tx, rx) = bounded(1);
    rig.control.send(Control::Snapshot(tx)).unwrap();
    let snap = rx.recv_timeout(IO_TIMEOUT).expect("no snapshot");
    assert_eq!(snap.recv_packets, 6000);
    let s = rig.stop();
    let c = s.counters;
    assert!(s.hop.layout_ok, "payload offset or tailroom wrong");
    assert_eq!(c.recv_packets, 6000, "{c:?}");
    assert_eq!(c.send_packets, 6000, "{c:?}");
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    // C->A payloads, P->B payload + header; A->C payloads, B->P payload + header.
    assert_eq!(c.recv_bytes, 2 * bytes + 4 * 3000, "{c:?}");
    assert_eq!(c.send_bytes, 2 * bytes + 4 * 3000, "{c:?}");
    assert_eq!(
        (c.send_errors, c.drops, c.truncated, c.recv_errors),
        (0, 0, 0, 0),
        "{c:?}"
    );
}

/// The strictly zero-copy path (GSO and GRO off: every datagram received into its own pool
/// buffer, forwarded from it): the same traffic, the same bytes and counts.
fn forwards_byte_for_byte_without_gso_or_gro(backend: Backend) {
    let config = DriverConfig {
        gso: false,
        gro: false,
        ..DriverConfig::default()
    };
    let rig = Rig::start(backend, config, None);
    let payloads: Vec<Vec<u8>> = (0..3000).map(payload).collect();
    rig.round_trip(&payloads, 32);
    let s = rig.stop();
    let c = s.counters;
    assert!(s.hop.layout_ok, "payload offset or tailroom wrong");
    assert_eq!((c.recv_packets, c.send_packets), (6000, 6000), "{c:?}");
    assert_eq!((c.gso_sends, c.gro_receives), (0, 0), "{c:?}");
    assert_eq!(
        (c.send_errors, c.drops, c.truncated, c.recv_errors),
        (0, 0, 0, 0),
        "{c:?}"
    );
}

fn copy_path_sends_replies(backend: Backend) {
    // Two send buffers: most replies find the pool empty and must wait for earlier sends.
    let config = DriverConfig {
        send_buffers: 2,
        ..DriverConfig::default()
    };
    let rig = Rig::start(backend, config, None);
    for i in 0..200u32 {
        let mut msg = b"P".to_vec();
        msg.extend_from_slice(&i.to_be_bytes());
        let reply = rig.ask(&msg);
        assert_eq!(&reply[..4], b"PONG");
        assert_eq!(&reply[4..], &i.to_be_bytes());
    }
    // A burst: more replies in one batch than send buffers.
    for _ in 0..50 {
        rig.client.send_to(b"Pburst", rig.a).unwrap();
    }
    let mut buf = [0u8; 64];
    for _ in 0..50 {
        let (n, _) = rig.client.recv_from(&mut buf).expect("burst reply lost");
        assert_eq!(&buf[..n], b"PONGburst");
    }
    let c = rig.stop().counters;
    assert_eq!(c.send_packets, 250, "{c:?}");
    assert_eq!((c.drops, c.send_errors), (0, 0), "{c:?}");
}

fn opens_and_closes_sockets_at_run_time(backend: Backend) {
    let rig = Rig::start(backend, DriverConfig::default(), None);
    let payloads: Vec<Vec<u8>> = (0..200).map(payload).collect();
    let via_b = rig.round_trip(&payloads, 16);

    let reply = String::from_utf8(rig.ask(b"O")).unwrap();
    let port: u16 = reply
        .strip_prefix("OPENED ")
        .expect(&reply)
        .parse()
        .unwrap();
    let via_new = rig.round_trip(&payloads, 16);
    assert_eq!(
        via_new.port(),
        port,
        "data did not go through the opened socket"
    );
    assert_ne!(via_new, via_b);

    assert_eq!(rig.ask(b"C"), b"CLOSED");
    // The fd is closed once the receive is cancelled: the port becomes free again.
    let deadline = Instant::now() + Duration::from_secs(1);
    let freed = loop {
        match UdpSocket::bind(SocketAddr::new(LOOPBACK.ip(), port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("port {port} still bound 1 s after close: {e}"),
        }
    };
    drop(freed);
    // Back to B, and the worker still works.
    assert_eq!(rig.round_trip(&payloads, 16), via_b);
    let c = rig.stop().counters;
    assert_eq!((c.drops, c.send_errors, c.recv_errors), (0, 0, 0), "{c:?}");
}

fn receives_on_a_thousand_sockets(backend: Backend) {
    let rig = Rig::start(backend, DriverConfig::default(), None);
    assert_eq!(rig.ask(b"M"), b"MANY");
    let mut ports = Vec::new();
    let mut buf = [0u8; 64];
    for i in (0..MANY).step_by(50) {
        let mut cmd = b"A".to_vec();
        cmd.extend_from_slice(&(i as u32).to_be_bytes());
        rig.client.send_to(&cmd, rig.a).unwrap();
        for _ in 0..50 {
            let (n, from) = rig.client.recv_from(&mut buf).expect("announcement lost");
            assert_eq!(&buf[..n], b"HI");
            ports.push(from);
        }
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), MANY);
    // One datagram to every socket, in windows; each is echoed from the socket it reached.
    for chunk in ports.chunks(50) {
        for (i, to) in chunk.iter().enumerate() {
            rig.client.send_to(&(i as u32).to_be_bytes(), to).unwrap();
        }
        let mut got: Vec<SocketAddr> = (0..chunk.len())
            .map(|_| {
                let (n, from) = rig.client.recv_from(&mut buf).expect("echo lost");
                assert_eq!(n, 4);
                let i = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                assert_eq!(chunk[i], from, "echo from the wrong socket");
                from
            })
            .collect();
        got.sort();
        assert_eq!(got, chunk);
    }
    let c = rig.stop().counters;
    assert_eq!((c.drops, c.send_errors), (0, 0), "{c:?}");
}

fn recovers_from_buffer_starvation(backend: Backend) {
    // Four receive buffers; the handler stalls 60 ms while a burst piles up in the socket, so
    // the io_uring multishot receive runs the ring dry (ENOBUFS) and must be re-armed.
    // Without GRO: with it, io_uring receives into a separate ring of large buffers and waits
    // for pool buffers in user space instead (tests/driver_gso.rs covers that).
    let config = DriverConfig {
        recv_buffers: 4,
        gro: false,
        ..DriverConfig::default()
    };
    let rig = Rig::start(backend, config, None);
    let payloads: Vec<Vec<u8>> = (0..100).map(|i| payload(i * 14 + 100)).collect();
    rig.client.send_to(b"S", rig.a).unwrap();
    for p in &payloads {
        rig.client.send_to(p, rig.a).unwrap();
    }
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    for _ in 0..payloads.len() {
        let (n, _) = rig
            .peer
            .recv_from(&mut buf)
            .expect("starved worker lost a datagram");
        got.push(buf[4..n].to_vec());
    }
    got.sort();
    let mut want = payloads.clone();
    want.sort();
    assert_eq!(got, want);
    // And it keeps working afterwards.
    rig.round_trip(&payloads[..20], 10);
    let c = rig.stop().counters;
    if backend == Backend::Uring {
        assert!(c.enobufs > 0, "no ENOBUFS with 4 buffers: {c:?}");
        assert!(c.rearms > 0, "multishot never re-armed: {c:?}");
    }
    assert_eq!((c.drops, c.send_errors), (0, 0), "{c:?}");
}

fn drops_oversize_datagrams_and_goes_on(backend: Backend) {
    let rig = Rig::start(backend, DriverConfig::default(), None);
    let mut big = vec![b'D'; MAX_DATAGRAM + 1];
    big[1] = 1;
    rig.client.send_to(&big, rig.a).unwrap();
    let fits = vec![b'D'; MAX_DATAGRAM - 4];
    let payloads = vec![payload(1), fits, payload(2)];
    rig.round_trip(&payloads, 3);
    let c = rig.stop().counters;
    assert_eq!(c.truncated, 1, "{c:?}");
    assert_eq!(c.recv_packets, 6, "{c:?}");
}

fn stops_within_a_second_and_fires_timers(backend: Backend) {
    // Due between two of the idle loop's 100 ms wake-ups: a driver that ignored next_timeout
    // would only notice it ~50 ms late.
    let due = Instant::now() + Duration::from_millis(350);
    let rig = Rig::start(backend, DriverConfig::default(), Some(due));
    // Let the timer fire on an idle worker, then stop it.
    thread::sleep(Duration::from_millis(600));
    let s = rig.stop();
    assert!(s.took < Duration::from_secs(1), "stop took {:?}", s.took);
    let fired = s.hop.fired.expect("timer never fired");
    assert!(fired >= due);
    assert!(
        fired - due < Duration::from_millis(40),
        "timer late by {:?}",
        fired - due
    );
}

/// io_uring's opt-in zero-copy sends (`send_zc`, a benchmark knob): every datagram still
/// arrives byte for byte, and each buffer goes back once, after the kernel's notification:
/// 6,000 sends through 4,096 receive buffers need every one back, and a buffer reused before
/// the notification could corrupt a payload in flight.
#[test]
fn zero_copy_sends_forward_byte_for_byte() {
    if !uring_available() {
        return;
    }
    let config = DriverConfig {
        send_zc: true,
        gso: false,
        gro: false,
        ..DriverConfig::default()
    };
    let rig = Rig::start(Backend::Uring, config, None);
    let payloads: Vec<Vec<u8>> = (0..3000).map(payload).collect();
    rig.round_trip(&payloads, 32);
    let c = rig.stop().counters;
    assert_eq!(c.send_packets, 6000, "{c:?}");
    assert_eq!((c.send_errors, c.drops), (0, 0), "{c:?}");
}

#[test]
fn auto_picks_uring_exactly_when_the_probe_passes() {
    let sel = select_backend(Backend::Auto).unwrap();
    match probe_uring() {
        Ok(()) => assert_eq!(sel.chosen, Chosen::Uring, "{}", sel.reason),
        Err(_) => assert_eq!(sel.chosen, Chosen::Portable, "{}", sel.reason),
    }
    assert_eq!(
        select_backend(Backend::Portable).unwrap().chosen,
        Chosen::Portable
    );
}

#[test]
fn dropped_control_sender_stops_the_worker() {
    let (tx, rx) = bounded::<Control>(1);
    let (done_tx, done) = bounded(1);
    thread::spawn(move || {
        let mut hop = Hop::new(LOOPBACK, None);
        let r = run_worker(
            Backend::Auto,
            &mut hop,
            vec![],
            &rx,
            &DriverConfig::default(),
        );
        let _ = done_tx.send(r.is_ok());
    });
    drop(tx);
    assert!(done
        .recv_timeout(Duration::from_secs(1))
        .expect("worker still running"));
}
