//! natcheck against the real sans-IO TURN server (NAT behaviour discovery on, four listening
//! addresses) through the loadgen NAT emulator, all in memory with a simulated clock; and once
//! over real loopback sockets.

use super::*;
use crate::nat::{Nat, NatBehavior};
use std::net::SocketAddrV4;
use uturn_proto::turn::auth::{Credentials, NonceKey};
use uturn_proto::turn::config::NatDiscovery;
use uturn_proto::turn::{
    FiveTuple, Now, OpenError, Payload, RelayId, RelaySockets, Server, ServerConfig, Transport, Via,
};

/// Binding needs no relay sockets.
struct NoRelays;

impl RelaySockets for NoRelays {
    fn open(&mut self, _: SocketAddr, _: RelayId, _: bool) -> Result<u32, OpenError> {
        Err(OpenError::Other)
    }
    fn close(&mut self, _: u32) {}
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Primary address, primary IP with the other port, other IP with the primary port, both other.
fn listeners() -> Vec<(u32, SocketAddr)> {
    vec![
        (0, addr("203.0.113.1:3478")),
        (1, addr("203.0.113.1:3479")),
        (2, addr("203.0.113.2:3478")),
        (3, addr("203.0.113.2:3479")),
    ]
}

fn server(t0: Instant, discovery: bool) -> Server {
    let creds = Credentials::new(
        "natcheck.test",
        Vec::<(&str, &str)>::new(),
        Vec::<&[u8]>::new(),
    )
    .unwrap();
    let mut cfg = ServerConfig::new("natcheck.test", creds, NonceKey::new([3; 32]));
    if discovery {
        cfg.nat_discovery = Some(NatDiscovery {
            listeners: listeners(),
        });
    }
    Server::new(cfg, t0)
}

const MAPPING_SOCKET: &str = "10.0.0.2:5000";
const FILTERING_SOCKET: &str = "10.0.0.2:5001";

fn private(leg: Leg) -> SocketAddrV4 {
    let s = match leg {
        Leg::Mapping => MAPPING_SOCKET,
        Leg::Filtering => FILTERING_SOCKET,
    };
    s.parse().unwrap()
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 only"),
    }
}

/// Runs natcheck to the end: requests go out through the NAT (when there is one) to the
/// server's listener at their destination, answers come back from the listener that sent them
/// and in through the NAT's filtering. Time jumps to the next timer whenever nothing moves.
/// Returns the outcome and how many answers the NAT filtered.
fn run_in_memory(nat: Option<Nat>, discovery: bool) -> (Result<Report, NatCheckError>, usize) {
    run_with(nat, discovery, false)
}

/// `answer_from_primary`: every answer leaves by the primary address, as from a server that
/// ignores CHANGE-REQUEST.
fn run_with(
    mut nat: Option<Nat>,
    discovery: bool,
    answer_from_primary: bool,
) -> (Result<Report, NatCheckError>, usize) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut srv = server(t0, discovery);
    let primary = listeners()[0].1;
    let mut nc = NatCheck::new(
        now,
        primary,
        SocketAddr::V4(private(Leg::Mapping)),
        NATCHECK_RETRANSMIT,
        [9; 32],
    );
    let mut buf = [0u8; 1500];
    let mut out = vec![0u8; 1500];
    let mut filtered = 0;
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(t) = nc.poll_transmit(&mut buf) {
            moved = true;
            let src = match nat.as_mut() {
                Some(n) => SocketAddr::V4(
                    n.translate_out(now, private(t.leg), v4(t.to))
                        .unwrap()
                        .public,
                ),
                None => SocketAddr::V4(private(t.leg)),
            };
            let (tok, _) = *listeners()
                .iter()
                .find(|(_, a)| *a == t.to)
                .expect("natcheck sends only to the server's addresses");
            let tuple = FiveTuple {
                client: src,
                server: t.to,
                transport: Transport::Udp,
            };
            let unix = Now {
                instant: now,
                unix_secs: 1_800_000_000,
            };
            let Some(answer) =
                srv.handle_client(unix, tok, tuple, &buf[..t.len], &mut out, &mut NoRelays)
            else {
                continue;
            };
            let Via::Listener(via) = answer.via else {
                panic!("a Binding answer leaves by a listener")
            };
            let Payload::Output(n) = answer.payload else {
                panic!("a Binding answer is written out")
            };
            let from = if answer_from_primary {
                primary
            } else {
                listeners()[via as usize].1
            };
            let dest = match nat.as_ref() {
                Some(nat) => match nat.translate_in(now, answer.to.port(), v4(from)) {
                    Ok(p) => SocketAddr::V4(p),
                    Err(_) => {
                        filtered += 1;
                        continue;
                    }
                },
                None => answer.to,
            };
            let leg = if dest == SocketAddr::V4(private(Leg::Mapping)) {
                Leg::Mapping
            } else {
                assert_eq!(dest, SocketAddr::V4(private(Leg::Filtering)));
                Leg::Filtering
            };
            nc.handle_input(now, leg, from, &out[..n]);
        }
        if let Some(o) = nc.outcome() {
            return (*o, filtered);
        }
        if !moved {
            now = nc.poll_timeout().expect("a test is waiting");
            nc.handle_timeout(now);
        }
    }
    panic!("natcheck did not finish");
}

/// RFC 5780 sections 4.3 and 4.4 against every mapping x filtering behaviour of the emulator:
/// what natcheck reports is what the NAT does.
#[test]
fn detects_all_nine_behaviours_through_the_emulator() {
    for b in NatBehavior::all(crate::nat::DEFAULT_TIMEOUT) {
        let nat = Nat::new(Ipv4Addr::new(198, 18, 7, 1), b);
        let (outcome, filtered) = run_in_memory(Some(nat), true);
        let r = outcome.unwrap_or_else(|e| panic!("{b}: {e}"));
        assert!(r.behind_nat, "{b}");
        assert_eq!(r.mapping, b.mapping, "{b}: mapping");
        assert_eq!(r.filtering, b.filtering, "{b}: filtering");
        assert_eq!(r.mapped.ip(), IpAddr::V4(Ipv4Addr::new(198, 18, 7, 1)));
        assert_eq!(r.other, addr("203.0.113.2:3479"));
        // The NAT really dropped the answers that tell the filtering apart.
        let expected_drops = match b.filtering {
            Filtering::EndpointIndependent => 0,
            // Filtering test II's answer, each transmission of it.
            Filtering::AddressDependent => NATCHECK_RETRANSMIT.max_transmits as usize,
            Filtering::AddressAndPortDependent => 2 * NATCHECK_RETRANSMIT.max_transmits as usize,
        };
        assert_eq!(filtered, expected_drops, "{b}");
        assert_eq!(
            r.to_string().lines().last().unwrap(),
            format!("as --nat:       {b}")
        );
    }
}

#[test]
fn without_a_nat_the_mapped_address_is_the_local_one() {
    let (outcome, _) = run_in_memory(None, true);
    let r = outcome.unwrap();
    assert!(!r.behind_nat);
    assert_eq!(r.mapped, addr(MAPPING_SOCKET));
    assert_eq!(r.mapping, Mapping::EndpointIndependent);
    assert_eq!(r.filtering, Filtering::EndpointIndependent);
    assert!(r.to_string().contains("no NAT"));
}

#[test]
fn a_server_that_ignores_change_request_is_reported_not_believed() {
    let (outcome, _) = run_with(None, true, true);
    let primary = listeners()[0].1;
    match outcome {
        Err(NatCheckError::ChangeIgnored {
            test,
            from,
            expected,
        }) => {
            assert_eq!(test, "filtering test II");
            assert_eq!(from, primary);
            assert_ne!(expected.ip(), primary.ip());
            assert_ne!(expected.port(), primary.port());
        }
        other => panic!("expected ChangeIgnored, got {other:?}"),
    }
}

#[test]
fn a_server_without_rfc_5780_is_reported() {
    let (outcome, _) = run_in_memory(None, false);
    assert_eq!(
        outcome,
        Err(NatCheckError::NoOtherAddress(addr("203.0.113.1:3478")))
    );
}

#[test]
fn a_silent_server_is_given_up_after_the_schedule() {
    let t0 = Instant::now();
    let server = addr("203.0.113.1:3478");
    let mut nc = NatCheck::new(
        t0,
        server,
        addr(MAPPING_SOCKET),
        NATCHECK_RETRANSMIT,
        [1; 32],
    );
    let mut buf = [0u8; 200];
    let mut sends = 0;
    let mut now = t0;
    while nc.outcome().is_none() {
        while let Some(t) = nc.poll_transmit(&mut buf) {
            assert_eq!((t.leg, t.to), (Leg::Mapping, server));
            let m = Message::parse(&buf[..t.len]).unwrap();
            assert_eq!((m.method(), m.class()), (Method::BINDING, Class::Request));
            m.check_fingerprint().unwrap();
            sends += 1;
        }
        now = match nc.poll_timeout() {
            Some(t) => t,
            None => break,
        };
        nc.handle_timeout(now);
    }
    assert_eq!(sends, NATCHECK_RETRANSMIT.max_transmits);
    assert_eq!(
        now - t0,
        NATCHECK_RETRANSMIT.timeout(uturn_proto::client::Transport::Udp)
    );
    assert_eq!(nc.outcome(), Some(&Err(NatCheckError::NoAnswer(server))));
}

/// Responses that are not the outstanding test's are ignored: a stray or late answer cannot
/// decide a test.
#[test]
fn only_the_outstanding_transaction_counts() {
    let t0 = Instant::now();
    let server = addr("203.0.113.1:3478");
    let mut nc = NatCheck::new(
        t0,
        server,
        addr(MAPPING_SOCKET),
        NATCHECK_RETRANSMIT,
        [1; 32],
    );
    let mut buf = [0u8; 200];
    let t = nc.poll_transmit(&mut buf).unwrap();
    let tid = Message::parse(&buf[..t.len]).unwrap().transaction_id();
    let answer = |tid| {
        let mut out = [0u8; 200];
        let mut e = Encoder::new(
            &mut out,
            MessageType::new(Method::BINDING, Class::Success),
            tid,
        )
        .unwrap();
        e.add(&XorMappedAddress(addr("198.18.0.1:1000"))).unwrap();
        e.add(&OtherAddress(addr("203.0.113.2:3479"))).unwrap();
        let n = e.finish();
        out[..n].to_vec()
    };
    let stray = answer(uturn_proto::stun::TransactionId([7; 12]));
    nc.handle_input(t0, Leg::Mapping, server, &stray);
    assert!(
        nc.poll_transmit(&mut buf).is_none(),
        "test I still outstanding"
    );
    // The right id on the wrong socket does not count either.
    let right = answer(tid);
    nc.handle_input(t0, Leg::Filtering, server, &right);
    assert!(nc.poll_transmit(&mut buf).is_none());
    nc.handle_input(t0, Leg::Mapping, server, &right);
    let t = nc.poll_transmit(&mut buf).unwrap();
    assert_eq!(
        t.to,
        addr("203.0.113.2:3478"),
        "test II: other IP, primary port"
    );
}

/// The real-socket runner against the sans-IO server on four loopback sockets (127.0.0.1 and
/// 127.0.0.2, two ports each) served by a thread: no NAT on loopback.
#[test]
fn run_over_loopback_sockets() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    // Two ports free on both loopback addresses.
    let (socks, addrs) = (0..20)
        .find_map(|_| {
            let a = UdpSocket::bind("127.0.0.1:0").ok()?;
            let b = UdpSocket::bind("127.0.0.1:0").ok()?;
            let (p, q) = (a.local_addr().ok()?.port(), b.local_addr().ok()?.port());
            let c = UdpSocket::bind(("127.0.0.2", p)).ok()?;
            let d = UdpSocket::bind(("127.0.0.2", q)).ok()?;
            let socks = vec![a, b, c, d];
            let addrs: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
            Some((socks, addrs))
        })
        .expect("free loopback ports");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let listeners: Vec<(u32, SocketAddr)> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u32, *a))
        .collect();
    let thread = std::thread::spawn(move || {
        let t0 = Instant::now();
        let creds =
            Credentials::new("lo", Vec::<(&str, &str)>::new(), Vec::<&[u8]>::new()).unwrap();
        let mut cfg = ServerConfig::new("lo", creds, NonceKey::new([1; 32]));
        cfg.nat_discovery = Some(NatDiscovery { listeners });
        let mut srv = Server::new(cfg, t0);
        for s in &socks {
            s.set_nonblocking(true).unwrap();
        }
        let (mut buf, mut out) = ([0u8; 1500], [0u8; 1500]);
        // Bounded: the test stops it, and it stops by itself after 20 s anyway.
        while !stop2.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(20) {
            let mut idle = true;
            for (i, s) in socks.iter().enumerate() {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                idle = false;
                let tuple = FiveTuple {
                    client: from,
                    server: s.local_addr().unwrap(),
                    transport: Transport::Udp,
                };
                let now = Now {
                    instant: Instant::now(),
                    unix_secs: 1_800_000_000,
                };
                if let Some(t) =
                    srv.handle_client(now, i as u32, tuple, &buf[..n], &mut out, &mut NoRelays)
                {
                    let (Via::Listener(v), Payload::Output(len)) = (t.via, t.payload) else {
                        continue;
                    };
                    let _ = socks[v as usize].send_to(&out[..len], t.to);
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let report = run(addrs[0], policy_with_rto(Duration::from_millis(100)));
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
    let r = report.unwrap();
    assert!(!r.behind_nat, "{r}");
    assert_eq!(r.mapped, r.local);
    assert_eq!(r.other, addrs[3]);
    assert_eq!(r.filtering, Filtering::EndpointIndependent);
}
