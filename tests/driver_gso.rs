//! UDP GSO on send and GRO on receive through the driver, both backends, byte for byte.
//!
//! - GSO: a burst of sends queued in one batch to one destination leaves as GSO sends and must
//!   arrive as separate datagrams of the original sizes and contents, in order.
//! - GRO: a client sends GSO bursts (one `sendmsg` with `UDP_SEGMENT`, which on loopback reaches
//!   a GRO socket still coalesced); the handler must see every segment as its own packet, with
//!   headroom in front of it: it writes a 4-byte header there and forwards, and the peer must
//!   get header + segment, byte for byte, for every segment.
//!
//! The uring variant is skipped, with the reason printed, only when `probe_uring` fails.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use uturn::driver::{
    bind_udp, gso, probe_uring, run_worker, Backend, Control, Counters, DriverConfig, DriverError,
    Handler, Io, RecvPacket, SockId, HEADROOM,
};

const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Socket A (SockId 0) takes commands and data from the client; socket B (SockId 1) sends to
/// the peer.
struct Fan {
    peer: SocketAddr,
    /// Every packet on A had HEADROOM free bytes in front of it.
    layout_ok: bool,
    packets: usize,
}

impl Handler for Fan {
    fn on_recv<I: Io>(
        &mut self,
        _now: Instant,
        sock: SockId,
        _from: SocketAddr,
        mut pkt: I::Packet,
        io: &mut I,
    ) {
        if sock != SockId(0) {
            return;
        }
        self.packets += 1;
        let r = pkt.range();
        self.layout_ok &= r.start >= HEADROOM;
        match pkt.payload().first() {
            // "B" n len: queue n copied sends of len bytes (byte i of send j = j + i) in this one
            // call, so that they are in one batch.
            Some(b'B') => {
                let p = pkt.payload();
                let n = u16::from_be_bytes([p[1], p[2]]);
                let len = usize::from(u16::from_be_bytes([p[3], p[4]]));
                for j in 0..n {
                    let bytes: Vec<u8> = (0..len).map(|i| (usize::from(j) + i) as u8).collect();
                    io.send(SockId(1), self.peer, &bytes);
                }
            }
            // "S": stall, so that what the client sends next piles up.
            Some(b'S') => thread::sleep(Duration::from_millis(60)),
            // Anything else: a 4-byte header in the headroom, then forward header + payload.
            _ => {
                let start = r.start - 4;
                let len = r.len() as u16;
                let buf = pkt.buf_mut();
                buf[start..start + 2].copy_from_slice(&[0x40, 0x01]);
                buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
                io.forward(pkt, SockId(1), self.peer, start..r.end);
            }
        }
    }
    fn on_tick<I: Io>(&mut self, _: Instant, _: &mut I) {}
    fn next_timeout(&self) -> Option<Instant> {
        None
    }
}

struct Rig {
    control: Sender<Control>,
    done: Receiver<(Fan, Result<Counters, DriverError>)>,
    a: SocketAddr,
    client: UdpSocket,
    peer: UdpSocket,
}

impl Rig {
    fn start(backend: Backend, config: DriverConfig) -> Rig {
        let client = UdpSocket::bind(LOOPBACK).unwrap();
        let peer = UdpSocket::bind(LOOPBACK).unwrap();
        peer.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // Room for every datagram of a test in the peer's receive buffer.
        socket2::SockRef::from(&peer)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        let a = bind_udp(LOOPBACK).unwrap();
        let b = bind_udp(LOOPBACK).unwrap();
        let a_addr = a.local_addr().unwrap();
        let mut fan = Fan {
            peer: peer.local_addr().unwrap(),
            layout_ok: true,
            packets: 0,
        };
        let (control, control_rx) = bounded(4);
        let (done_tx, done) = bounded(1);
        thread::spawn(move || {
            let r = run_worker(backend, &mut fan, vec![a, b], &control_rx, &config);
            let _ = done_tx.send((fan, r));
        });
        Rig {
            control,
            done,
            a: a_addr,
            client,
            peer,
        }
    }

    fn stop(self) -> (Fan, Counters) {
        self.control.send(Control::Stop).unwrap();
        let (fan, r) = self
            .done
            .recv_timeout(Duration::from_secs(5))
            .expect("worker did not stop");
        (fan, r.expect("worker failed"))
    }

    fn recv_peer(&self) -> Vec<u8> {
        let mut buf = [0u8; 70_000];
        let (n, _) = self.peer.recv_from(&mut buf).expect("peer: datagram lost");
        buf[..n].to_vec()
    }
}

/// One `sendmsg` of `data` cut into `segment`-byte datagrams (UDP_SEGMENT).
fn send_gso(sock: &UdpSocket, to: SocketAddr, data: &[u8], segment: u16) {
    let to = socket2::SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = [0u8; gso::CMSG_SPACE];
    let clen = gso::write_segment_cmsg(&mut control, segment);
    // SAFETY: a zeroed msghdr pointing at live locals for the duration of the call.
    let rc = unsafe {
        let mut h: libc::msghdr = std::mem::zeroed();
        h.msg_name = to.as_ptr() as *mut libc::c_void;
        h.msg_namelen = to.len();
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = control.as_mut_ptr().cast();
        h.msg_controllen = clen as _;
        libc::sendmsg(sock.as_raw_fd(), &h, 0)
    };
    assert_eq!(rc, data.len() as isize, "GSO sendmsg failed");
}

fn config(gso: bool, gro: bool) -> DriverConfig {
    DriverConfig {
        gso,
        gro,
        ..DriverConfig::default()
    }
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
    gso_runs_arrive_as_separate_datagrams_of_the_right_sizes,
    gro_segments_are_split_and_relayed_byte_for_byte,
    gro_and_gso_together_relay_bursts_byte_for_byte,
    plain_datagrams_pass_through_a_gro_socket,
    gro_waits_for_buffers_instead_of_dropping,
);

fn burst_command(n: u16, len: u16) -> Vec<u8> {
    let mut c = vec![b'B'];
    c.extend_from_slice(&n.to_be_bytes());
    c.extend_from_slice(&len.to_be_bytes());
    c
}

fn gso_runs_arrive_as_separate_datagrams_of_the_right_sizes(backend: Backend) {
    let rig = Rig::start(backend, config(true, false));
    // 100 sends of 300 bytes in one batch: at least two GSO sends (64 segments at most each).
    for (n, len) in [(100u16, 300u16), (3, 1200), (1, 50)] {
        rig.client.send_to(&burst_command(n, len), rig.a).unwrap();
        for j in 0..n {
            let got = rig.recv_peer();
            let want: Vec<u8> = (0..usize::from(len))
                .map(|i| (usize::from(j) + i) as u8)
                .collect();
            assert_eq!(got.len(), usize::from(len), "datagram {j} of {n}");
            assert_eq!(
                got, want,
                "datagram {j} of {n}: bytes differ (or out of order)"
            );
        }
    }
    let (_, c) = rig.stop();
    assert!(c.gso_sends >= 2, "no GSO sends: {c:?}");
    assert_eq!(c.send_packets, 104);
    assert_eq!(c.send_errors + c.drops, 0, "{c:?}");
}

/// A burst: `n` segments of `seg` bytes and a shorter tail, each segment's bytes distinct.
fn burst(n: usize, seg: usize, tail: usize, salt: u8) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut segs = Vec::new();
    for k in 0..=n {
        let len = if k == n { tail } else { seg };
        if len == 0 {
            continue;
        }
        // Not starting with 'B': that is the command byte.
        segs.push(
            (0..len)
                .map(|i| (k * 31 + i + usize::from(salt)) as u8 | 0x80)
                .collect(),
        );
    }
    (segs.concat(), segs)
}

fn expect_wrapped(rig: &Rig, segs: &[Vec<u8>]) {
    for (k, s) in segs.iter().enumerate() {
        let got = rig.recv_peer();
        assert_eq!(got.len(), s.len() + 4, "segment {k}: size");
        assert_eq!(&got[..2], &[0x40, 0x01], "segment {k}: header");
        assert_eq!(usize::from(u16::from_be_bytes([got[2], got[3]])), s.len());
        assert_eq!(
            &got[4..],
            &s[..],
            "segment {k}: bytes differ (or out of order)"
        );
    }
}

fn gro_segments_are_split_and_relayed_byte_for_byte(backend: Backend) {
    let rig = Rig::start(backend, config(false, true));
    rig.client.send_to(&[0x81; 10], rig.a).unwrap();
    expect_wrapped(&rig, &[vec![0x81; 10]]);
    // Sizes around the buffer limits: small, the largest that fits a buffer with the header.
    for (i, (n, seg, tail)) in [(10, 100, 40), (20, 1400, 1400), (30, 1900, 7), (3, 24, 0)]
        .into_iter()
        .enumerate()
    {
        let (data, segs) = burst(n, seg, tail, i as u8);
        send_gso(&rig.client, rig.a, &data, seg as u16);
        expect_wrapped(&rig, &segs);
    }
    let (fan, c) = rig.stop();
    assert!(fan.layout_ok, "a segment without headroom");
    assert!(c.gro_receives >= 1, "nothing arrived coalesced: {c:?}");
    assert_eq!(c.recv_packets, 1 + 11 + 21 + 31 + 3);
    assert_eq!(c.truncated + c.send_errors + c.drops, 0, "{c:?}");
}

fn gro_and_gso_together_relay_bursts_byte_for_byte(backend: Backend) {
    let rig = Rig::start(backend, config(true, true));
    rig.client.send_to(&[0x81; 10], rig.a).unwrap();
    expect_wrapped(&rig, &[vec![0x81; 10]]);
    for round in 0..20u8 {
        let (data, segs) = burst(30, 160, 100, round);
        send_gso(&rig.client, rig.a, &data, 160);
        expect_wrapped(&rig, &segs);
    }
    let (fan, c) = rig.stop();
    assert!(fan.layout_ok);
    assert!(c.gro_receives >= 1 && c.gso_sends >= 1, "{c:?}");
    assert_eq!(c.recv_packets, 1 + 20 * 31);
    assert_eq!(c.send_packets, 1 + 20 * 31);
}

fn plain_datagrams_pass_through_a_gro_socket(backend: Backend) {
    let rig = Rig::start(backend, config(true, true));
    let payloads: Vec<Vec<u8>> = (0..500)
        .map(|i| {
            (0..1 + (i * 37) % 1900)
                .map(|b| (b + i) as u8 | 0x80)
                .collect()
        })
        .collect();
    for chunk in payloads.chunks(50) {
        for p in chunk {
            rig.client.send_to(p, rig.a).unwrap();
        }
        expect_wrapped(&rig, chunk);
    }
    // Too large for a buffer: dropped and counted, the next one passes.
    rig.client.send_to(&vec![0x80; 3000], rig.a).unwrap();
    rig.client.send_to(&[0x81; 10], rig.a).unwrap();
    expect_wrapped(&rig, &[vec![0x81; 10]]);
    let (fan, c) = rig.stop();
    assert_eq!(fan.packets, 501);
    assert_eq!(c.truncated, 1, "{c:?}");
}

fn gro_waits_for_buffers_instead_of_dropping(backend: Backend) {
    // Four pool buffers, a stalled handler, and bursts of 20 coalesced segments: most segments
    // find no free buffer when they are split and must wait for one, not be dropped.
    let config = DriverConfig {
        recv_buffers: 4,
        ..config(true, true)
    };
    let rig = Rig::start(backend, config);
    // The worker is up (GRO on its socket) before the bursts.
    rig.client.send_to(&[0x81; 10], rig.a).unwrap();
    expect_wrapped(&rig, &[vec![0x81; 10]]);
    rig.client.send_to(b"S", rig.a).unwrap();
    let mut all = Vec::new();
    for round in 0..5u8 {
        let (data, segs) = burst(19, 200, 50, round);
        send_gso(&rig.client, rig.a, &data, 200);
        all.extend(segs);
    }
    expect_wrapped(&rig, &all);
    let (_, c) = rig.stop();
    assert!(c.gro_receives >= 1, "nothing arrived coalesced: {c:?}");
    assert_eq!(c.recv_packets, 2 + 100, "{c:?}");
    assert_eq!(c.send_packets, 101, "{c:?}");
    assert_eq!(c.truncated + c.drops + c.send_errors, 0, "{c:?}");
}
