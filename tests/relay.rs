//! The relay as a real process on loopback, driven by the project's own TURN client over real
//! UDP sockets, on both I/O backends: the full TURN flow, IPv6, 1,000 allocations over several
//! workers, the default peer policy, TURN REST credentials, SIGHUP reload, SIGTERM/SIGINT exit
//! and the metrics endpoint.
//!
//! Each test is `fn name(backend)`, run once per backend by `both_backends!`; the uring run is
//! skipped, with the reason printed, only where the io_uring probe fails.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use uturn_proto::channel_data::write_header;
use uturn_proto::client::{Event, Failure, RelayFamily};
use uturn_proto::turn::auth::rest_password;

both_backends!(
    full_udp_flow,
    ipv6_flow,
    dual_stack_allocation,
    default_policy_refuses_loopback,
    rest_credentials,
    sighup_reloads_users_and_policy,
    sigterm_exits_within_2s,
    sigint_exits_within_2s,
    thousand_allocations_over_workers,
    metrics_endpoint,
    out_of_descriptors_is_a_counted_508,
);

/// A second loopback address: not the relay's own IP, so the peer policy's exception for relay
/// addresses (see `uturn_proto::turn::policy`) does not apply to it.
const OTHER_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Send indications out and Data indications back, byte for byte, for payloads of every awkward
/// size.
fn send_and_data_both_ways(c: &mut Client, peer: &UdpSocket, relayed: SocketAddr) {
    let peer_addr = peer.local_addr().expect("peer addr");
    for p in payloads() {
        c.send_indication(peer_addr, &p);
        let (got, from) = recv_within(peer, IO_TIMEOUT).expect("the peer gets the Send payload");
        assert_eq!(from, relayed, "relayed from the allocation's address");
        assert_eq!(got, p, "Send payload of {} bytes, byte for byte", p.len());

        peer.send_to(&p, relayed).expect("peer send");
        let r = c.recv_data(IO_TIMEOUT).expect("a Data indication");
        assert_eq!(
            r,
            Received {
                peer: peer_addr,
                payload: p.clone(),
                channel: false
            },
            "Data indication of {} bytes",
            p.len()
        );
    }
}

/// ChannelData both ways, byte for byte, once the channel is bound.
fn channel_data_both_ways(c: &mut Client, peer: &UdpSocket, relayed: SocketAddr) {
    let peer_addr = peer.local_addr().expect("peer addr");
    for p in payloads() {
        c.channel_data(peer_addr, &p);
        let (got, from) = recv_within(peer, IO_TIMEOUT).expect("the peer gets ChannelData");
        assert_eq!(from, relayed);
        assert_eq!(got, p, "ChannelData payload of {} bytes", p.len());

        peer.send_to(&p, relayed).expect("peer send");
        let r = c.recv_data(IO_TIMEOUT).expect("ChannelData from the peer");
        assert_eq!(
            r,
            Received {
                peer: peer_addr,
                payload: p.clone(),
                channel: true
            },
            "a bound peer's data comes as ChannelData ({} bytes)",
            p.len()
        );
    }
}

/// Whether `addr` is a closed UDP port: a connected socket sending to it gets the ICMP port
/// unreachable back as ECONNREFUSED. Polled for a while because closing is asynchronous on
/// io_uring.
fn port_closed(addr: SocketAddr) -> bool {
    let s = bind_near(addr.ip());
    s.connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let until = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 64];
    while Instant::now() < until {
        let _ = s.send(b"probe");
        if let Err(e) = s.recv(&mut buf) {
            if e.kind() == ErrorKind::ConnectionRefused {
                return true;
            }
        }
    }
    false
}

/// Allocate (after a 401), CreatePermission, Send/Data, ChannelBind, ChannelData both ways,
/// Refresh 0; then the relay port forwards nothing and is closed.
fn full_udp_flow(b: Backend) {
    let relay = RelayOptions::new(b).start();

    // RFC 8656 section 7.2 and RFC 8489 section 9.2.4: an Allocate without credentials is
    // challenged with 401, the realm and a nonce.
    let (code, realm, nonce) = challenge(relay.listen);
    assert_eq!(code, 401);
    assert_eq!(realm, relay.realm());
    assert!(!nonce.is_empty(), "a NONCE in the 401");

    // The client answers that challenge by itself.
    let mut c = relay.client();
    let a = c.allocate(RelayFamily::Ipv4).expect("Allocate");
    assert_eq!(a.relayed.ip(), LOCALHOST_V4);
    assert!(
        relay.relay_ports.contains(&a.relayed.port()),
        "{} outside {:?}",
        a.relayed,
        relay.relay_ports
    );
    assert_eq!(a.mapped, Some(c.local_addr()), "XOR-MAPPED-ADDRESS");
    assert_eq!(a.lifetime, Duration::from_secs(600), "the default lifetime");

    let peer = peer_socket(LOCALHOST_V4);
    let peer_addr = peer.local_addr().expect("peer addr");

    // Without a permission the peer's datagrams are dropped (RFC 8656 section 9).
    peer.send_to(b"too early", a.relayed).expect("send");
    assert_eq!(c.recv_data(QUIET), None, "no permission yet");

    c.create_permission(&[LOCALHOST_V4])
        .expect("CreatePermission");
    send_and_data_both_ways(&mut c, &peer, a.relayed);

    let channel = c.channel_bind(peer_addr).expect("ChannelBind");
    channel_data_both_ways(&mut c, &peer, a.relayed);

    // Refresh with lifetime 0 deletes the allocation (RFC 8656 section 8).
    assert_eq!(c.refresh(Some(Duration::ZERO)), Ok(Event::Deallocated));

    // The relay port forwards nothing any more, in either direction, and is closed.
    peer.send_to(b"after the end", a.relayed).expect("send");
    assert_eq!(c.recv_data(QUIET), None, "nothing relayed after Refresh 0");
    let mut stale = [0u8; 4 + 5];
    write_header((&mut stale[..4]).try_into().expect("4 bytes"), channel, 5);
    stale[4..].copy_from_slice(b"stale");
    c.sock.send_to(&stale, relay.listen).expect("send");
    assert_eq!(
        recv_within(&peer, QUIET),
        None,
        "ChannelData on a deleted allocation is dropped"
    );
    assert!(
        port_closed(a.relayed),
        "relay port {} still open after Refresh 0",
        a.relayed
    );
}

/// Whether ::1 works here (a host or container without IPv6 has no ::1).
fn ipv6_unusable() -> Option<String> {
    let s = match UdpSocket::bind("[::1]:0") {
        Ok(s) => s,
        Err(e) => return Some(format!("cannot bind [::1]:0: {e}")),
    };
    let me = s.local_addr().ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    if let Err(e) = s.send_to(b"ping", me) {
        return Some(format!("cannot send on ::1: {e}"));
    }
    let mut buf = [0u8; 8];
    match s.recv_from(&mut buf) {
        Ok(_) => None,
        Err(e) => Some(format!("nothing comes back on ::1: {e}")),
    }
}

/// The same flow on ::1: an IPv6 relay address (REQUESTED-ADDRESS-FAMILY), data both ways.
fn ipv6_flow(b: Backend) {
    if let Some(why) = ipv6_unusable() {
        eprintln!("skipped: IPv6 loopback unusable: {why}");
        return;
    }
    let relay = RelayOptions {
        ipv6: true,
        ..RelayOptions::new(b)
    }
    .start();
    assert!(relay.listen.is_ipv6());

    let mut c = relay.client();
    // Listening on ::1 only, the relay has no IPv4 address to give (RFC 8656 section 7.2: 440).
    assert_eq!(
        c.allocate(RelayFamily::Ipv4),
        Err(Failure::Error(440)),
        "no IPv4 relay address"
    );
    let a = c.allocate(RelayFamily::Ipv6).expect("Allocate IPv6");
    assert_eq!(a.relayed.ip(), LOCALHOST_V6);
    assert!(relay.relay_ports.contains(&a.relayed.port()));
    assert_eq!(a.mapped, Some(c.local_addr()));

    let peer = peer_socket(LOCALHOST_V6);
    c.create_permission(&[LOCALHOST_V6])
        .expect("CreatePermission ::1");
    send_and_data_both_ways(&mut c, &peer, a.relayed);
    c.channel_bind(peer.local_addr().expect("addr"))
        .expect("ChannelBind");
    channel_data_both_ways(&mut c, &peer, a.relayed);
    assert_eq!(c.refresh(Some(Duration::ZERO)), Ok(Event::Deallocated));
    assert!(port_closed(a.relayed));
}

/// RFC 8656 section 7: with relay addresses of both families, an Allocate with
/// ADDITIONAL-ADDRESS-FAMILY IPv6 gets an IPv4 and an IPv6 relayed address, and one allocation
/// reaches peers of both families, each from the relayed address of its own family.
fn dual_stack_allocation(b: Backend) {
    if let Some(why) = ipv6_unusable() {
        eprintln!("skipped: IPv6 loopback unusable: {why}");
        return;
    }
    let relay = RelayOptions {
        extra_toml: "relay_ip = [\"127.0.0.1\", \"::1\"]\n".into(),
        ..RelayOptions::new(b)
    }
    .start();
    let mut c = relay.client();
    let a = c.allocate(RelayFamily::Dual).expect("dual allocation");
    let v6 = a
        .additional_relayed
        .expect("an IPv6 relayed address as well");
    assert_eq!(a.relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(v6.ip(), LOCALHOST_V6);
    assert!(relay.relay_ports.contains(&a.relayed.port()));
    assert!(relay.relay_ports.contains(&v6.port()));

    let peer4 = peer_socket(OTHER_LOOPBACK);
    let peer6 = peer_socket(LOCALHOST_V6);
    c.create_permission(&[OTHER_LOOPBACK, LOCALHOST_V6])
        .expect("permissions for both families");
    send_and_data_both_ways(&mut c, &peer4, a.relayed);
    send_and_data_both_ways(&mut c, &peer6, v6);
    c.channel_bind(peer6.local_addr().expect("addr"))
        .expect("ChannelBind to the IPv6 peer");
    channel_data_both_ways(&mut c, &peer6, v6);
    assert_eq!(c.refresh(Some(Duration::ZERO)), Ok(Event::Deallocated));
    assert!(port_closed(a.relayed));
    assert!(port_closed(v6));
}

/// Without --allow-loopback-peers the default policy refuses loopback peers: CreatePermission
/// and ChannelBind get 403, a Send indication is dropped. (The relay's own IP is the one loopback
/// address a permission may name: see the policy module's "Deviation"; its non-relay ports stay
/// refused when data would flow.)
fn default_policy_refuses_loopback(b: Backend) {
    let relay = RelayOptions {
        allow_loopback: false,
        ..RelayOptions::new(b)
    }
    .start();
    let mut c = relay.client();
    c.allocate(RelayFamily::Ipv4).expect("Allocate");

    assert_eq!(
        c.create_permission(&[OTHER_LOOPBACK]),
        Err(Failure::Error(403)),
        "CreatePermission to 127.0.0.2"
    );
    // A peer on 127.0.0.1 itself (the relay IP) but on a port outside the relay range.
    let peer = peer_socket(LOCALHOST_V4);
    let peer_addr = peer.local_addr().expect("addr");
    assert!(!relay.relay_ports.contains(&peer_addr.port()));
    assert_eq!(
        c.channel_bind(peer_addr),
        Err(Failure::Error(403)),
        "ChannelBind to {peer_addr}"
    );
    assert_eq!(
        c.channel_bind(relay.listen),
        Err(Failure::Error(403)),
        "ChannelBind to the relay's own listening port"
    );
    c.send_indication(peer_addr, b"let me through");
    assert_eq!(
        recv_within(&peer, QUIET),
        None,
        "a Send indication to a refused peer is dropped"
    );

    // The same requests pass where loopback peers are allowed: the refusal above is the
    // policy's, not some other failure.
    let open = RelayOptions::new(b).start();
    let mut c = open.client();
    let a2 = c.allocate(RelayFamily::Ipv4).expect("Allocate");
    assert_eq!(c.create_permission(&[OTHER_LOOPBACK]), Ok(()));
    c.channel_bind(peer_addr)
        .expect("ChannelBind with loopback allowed");
    c.channel_data(peer_addr, b"hello");
    let (got, from) = recv_within(&peer, IO_TIMEOUT).expect("relayed");
    assert_eq!((got.as_slice(), from), (&b"hello"[..], a2.relayed));
}

/// TURN REST credentials (--auth-secret): `expiry:name` with an HMAC password is accepted
/// under either of two secrets (rotation); an expired one or a wrong password gets 401.
fn rest_credentials(b: Backend) {
    let secrets = ["first-secret", "second-secret"];
    let relay = RelayOptions {
        users: Vec::new(),
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        ..RelayOptions::new(b)
    }
    .start();

    let user = format!("{}:alice", unix_now() + 3600);
    for secret in secrets {
        let pass = rest_password(secret.as_bytes(), &user);
        let mut c = Client::new(relay.listen, &user, &pass);
        let a = c.allocate(RelayFamily::Ipv4);
        assert!(a.is_ok(), "REST user under {secret}: {a:?}");
    }

    let expired = format!("{}:bob", unix_now() - 60);
    let pass = rest_password(secrets[0].as_bytes(), &expired);
    let mut c = Client::new(relay.listen, &expired, &pass);
    assert_eq!(
        c.allocate(RelayFamily::Ipv4),
        Err(Failure::Error(401)),
        "an expired REST username"
    );

    let pass = rest_password(b"not-the-secret", &user);
    let mut c = Client::new(relay.listen, &user, &pass);
    assert_eq!(
        c.allocate(RelayFamily::Ipv4),
        Err(Failure::Error(401)),
        "a password made with another secret"
    );
}

/// SIGHUP reloads users and peer policy from the file: the old password gets 401, the new one
/// works, a newly denied peer gets 403, and an allocation made before keeps relaying.
fn sighup_reloads_users_and_policy(b: Backend) {
    let before = RelayOptions {
        users: vec![("alice".into(), "old-password".into())],
        ..RelayOptions::new(b)
    };
    let mut relay = before.clone().start();
    let peer = peer_socket(LOCALHOST_V4);
    let peer_addr = peer.local_addr().expect("addr");

    let mut old = Client::new(relay.listen, "alice", "old-password");
    let a = old.allocate(RelayFamily::Ipv4).expect("Allocate");
    old.channel_bind(peer_addr).expect("ChannelBind");
    channel_data_both_ways(&mut old, &peer, a.relayed);
    assert_eq!(old.create_permission(&[OTHER_LOOPBACK]), Ok(()));

    relay.rewrite_config(RelayOptions {
        users: vec![("alice".into(), "new-password".into())],
        extra_toml: "deny_peer = [\"127.0.0.2/32\"]\n".into(),
        ..before
    });
    relay.reload();

    // Several fresh clients, so that both workers (chosen by the source port) are asked.
    for _ in 0..6 {
        let mut c = Client::new(relay.listen, "alice", "old-password");
        assert_eq!(
            c.allocate(RelayFamily::Ipv4),
            Err(Failure::Error(401)),
            "the old password after reload"
        );
    }
    for _ in 0..6 {
        let mut c = Client::new(relay.listen, "alice", "new-password");
        c.allocate(RelayFamily::Ipv4)
            .expect("the new password after reload");
        assert_eq!(
            c.create_permission(&[OTHER_LOOPBACK]),
            Err(Failure::Error(403)),
            "127.0.0.2 is denied after reload"
        );
        assert_eq!(c.create_permission(&[LOCALHOST_V4]), Ok(()));
    }

    // The allocation made under the old configuration is still there and relays both ways.
    channel_data_both_ways(&mut old, &peer, a.relayed);
    assert!(
        !relay.proc.output().contains("panicked"),
        "{}",
        relay.proc.output()
    );
}

/// A stop signal ends the process within 2 seconds with status 0, even with allocations alive,
/// and the listening port is free afterwards.
fn exits_within_2s(b: Backend, sig: i32) {
    let mut relay = RelayOptions {
        threads: 2,
        ..RelayOptions::new(b)
    }
    .start();
    // Live allocations on the workers, with traffic just before the signal.
    let peer = peer_socket(LOCALHOST_V4);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = relay.client();
        let a = c.allocate(RelayFamily::Ipv4).expect("Allocate");
        c.channel_bind(peer.local_addr().expect("addr"))
            .expect("ChannelBind");
        clients.push((c, a));
    }
    for (c, _) in &mut clients {
        c.channel_data(peer.local_addr().expect("addr"), b"last words");
        assert!(recv_within(&peer, IO_TIMEOUT).is_some());
    }

    let t = Instant::now();
    relay.proc.signal(sig);
    let status = relay.proc.wait_timeout(Duration::from_secs(5));
    let took = t.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running 5 s after signal {sig}"));
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} to exit\n{}",
        relay.proc.output()
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status\n{}",
        relay.proc.output()
    );
    assert!(!relay.proc.output().contains("panicked"));
    UdpSocket::bind(relay.listen).expect("the listening port is free after exit");
    for (_, a) in clients {
        UdpSocket::bind(a.relayed).expect("relay ports are free after exit");
    }
    eprintln!("{b:?}: exited {took:?} after signal {sig}");
}

fn sigterm_exits_within_2s(b: Backend) {
    exits_within_2s(b, libc::SIGTERM);
}

fn sigint_exits_within_2s(b: Backend) {
    exits_within_2s(b, libc::SIGINT);
}

/// 1,000 allocations from 1,000 client sockets, on 4 workers: every one gets its own relay port,
/// and the metrics show the allocations spread over more than one worker.
fn thousand_allocations_over_workers(b: Backend) {
    const N: usize = 1000;
    const THREADS: usize = 8;
    // 1,000 client sockets in this process.
    uturn::limits::raise_nofile();
    let relay = RelayOptions {
        threads: 4,
        metrics: true,
        // ~250 allocations per worker expected; 600 ports each leaves room for an uneven hash
        // and for ports another process holds.
        relay_ports: 2400,
        ..RelayOptions::new(b)
    }
    .start();

    let t = Instant::now();
    let listen = relay.listen;
    let per_thread: Vec<Vec<(Client, SocketAddr)>> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(move || {
                    (0..N / THREADS)
                        .map(|_| {
                            let mut c = Client::new(listen, "alice", "alice-password");
                            let a = c.allocate(RelayFamily::Ipv4).expect("Allocate");
                            (c, a.relayed)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let took = t.elapsed();
    let relayed: HashSet<SocketAddr> = per_thread.iter().flatten().map(|(_, r)| *r).collect();
    assert_eq!(
        relayed.len(),
        N,
        "every allocation has its own relay address"
    );
    assert!(relayed
        .iter()
        .all(|r| relay.relay_ports.contains(&r.port())));

    let m = relay.wait_metrics("1000 active allocations", |m| {
        m.sum("uturn_allocations_active", &[]) == N as f64
    });
    let spread = m.per_worker("uturn_allocations_active");
    let busy = spread.iter().filter(|(_, n)| *n > 0.0).count();
    assert!(busy > 1, "allocations on one worker only: {spread:?}");
    eprintln!("{b:?}: {N} allocations in {took:?}, per worker {spread:?}");
    drop(per_thread);
}

/// /healthz answers 200, /metrics serves every metric with a worker label for each worker, and
/// the counters follow what a client did.
fn metrics_endpoint(b: Backend) {
    let relay = RelayOptions {
        threads: 2,
        metrics: true,
        ..RelayOptions::new(b)
    }
    .start();
    let addr = relay.metrics_addr();
    let (code, body) = http_get(addr, "/healthz");
    assert_eq!((code, body.trim()), (200, "OK"));
    assert_eq!(http_get(addr, "/no-such-page").0, 404);

    let mut c = relay.client();
    let a = c.allocate(RelayFamily::Ipv4).expect("Allocate");
    let peer = peer_socket(LOCALHOST_V4);
    let peer_addr = peer.local_addr().expect("addr");
    c.create_permission(&[LOCALHOST_V4]).expect("permission");
    c.channel_bind(peer_addr).expect("ChannelBind");
    c.channel_data(peer_addr, &[7; 100]);
    recv_within(&peer, IO_TIMEOUT).expect("relayed to peer");
    peer.send_to(&[9; 60], a.relayed).expect("send");
    c.recv_data(IO_TIMEOUT).expect("relayed to client");

    let m = relay.wait_metrics("both workers and the traffic", |m| {
        m.workers() == ["0", "1"]
            && m.sum("uturn_allocations_active", &[]) == 1.0
            && m.sum("uturn_packets_relayed_total", &[("direction", "to_client")]) >= 1.0
    });
    let names = [
        ("uturn_allocations_active", "gauge"),
        ("uturn_allocations_total", "counter"),
        ("uturn_permissions_active", "gauge"),
        ("uturn_channels_active", "gauge"),
        ("uturn_auth_failures_total", "counter"),
        ("uturn_relay_open_failures_total", "counter"),
        ("uturn_packets_relayed_total", "counter"),
        ("uturn_bytes_relayed_total", "counter"),
        ("uturn_requests_total", "counter"),
        ("uturn_dropped_total", "counter"),
        ("uturn_driver_recv_packets_total", "counter"),
        ("uturn_driver_send_packets_total", "counter"),
        ("uturn_driver_enobufs_total", "counter"),
    ];
    for (name, kind) in names {
        assert!(
            m.text.contains(&format!("# TYPE {name} {kind}\n")),
            "no TYPE line for {name}:\n{}",
            m.text
        );
        let mut workers: Vec<String> = m
            .samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| {
                s.label("worker")
                    .expect("every sample has a worker label")
                    .to_string()
            })
            .collect();
        workers.sort();
        workers.dedup();
        if name == "uturn_requests_total" {
            // Only the method/result pairs that occurred are listed; a worker that answered
            // nothing has no line.
            assert!(!workers.is_empty(), "{name} has samples");
        } else {
            assert_eq!(workers, ["0", "1"], "{name} for each worker");
        }
    }
    // Labels never carry a username or an address.
    assert!(!m.text.contains("alice") && !m.text.contains("127.0.0.1"));

    let sum = |name: &str, with: &[(&str, &str)]| m.sum(name, with);
    assert_eq!(sum("uturn_allocations_total", &[]), 1.0);
    assert_eq!(sum("uturn_permissions_active", &[]), 1.0);
    assert_eq!(sum("uturn_channels_active", &[]), 1.0);
    let allocate = |result| {
        sum(
            "uturn_requests_total",
            &[("method", "allocate"), ("result", result)],
        )
    };
    assert!(allocate("401") >= 1.0, "the challenge is counted");
    assert_eq!(allocate("success"), 1.0);
    assert_eq!(
        sum(
            "uturn_requests_total",
            &[("method", "channel_bind"), ("result", "success")]
        ),
        1.0
    );
    assert_eq!(
        sum("uturn_bytes_relayed_total", &[("direction", "to_peer")]),
        100.0
    );
    assert_eq!(
        sum("uturn_bytes_relayed_total", &[("direction", "to_client")]),
        60.0
    );
    assert!(sum("uturn_driver_recv_packets_total", &[]) >= 5.0);
}

both_backends!(clients_from_the_first_answer_stay_on_their_worker);

/// Clients that allocate the moment the relay first answers keep their allocation: every
/// worker's socket is in the SO_REUSEPORT group before any worker answers, so the kernel never
/// re-steers a client to a worker that has not seen it. (With a group still growing at start-up,
/// a later request of such a client lands on another worker and gets 437.) Eight workers make
/// the start-up window as wide as it gets.
fn clients_from_the_first_answer_stay_on_their_worker(b: Backend) {
    const CLIENTS: usize = 64;
    let relay = RelayOptions {
        threads: 8,
        relay_ports: 800,
        ..RelayOptions::new(b)
    }
    .start();
    let mut clients: Vec<Client> = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut c = relay.client();
        c.allocate(RelayFamily::Ipv4).expect("Allocate");
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.create_permission(&[LOCALHOST_V4]),
            Ok(()),
            "client {i}: its allocation is on the worker its packets reach"
        );
    }
}

/// Running out of file descriptors is an answer, not a crash: with a low open-file limit the
/// relay answers 508 once its relay sockets use up the descriptors, counts it, keeps serving,
/// and allocates again once one is freed.
fn out_of_descriptors_is_a_counted_508(b: Backend) {
    let relay = RelayOptions {
        threads: 1,
        metrics: true,
        relay_ports: 400,
        // Listeners, the ring or epoll, the metrics server and the runtime take some; the rest
        // can hold only a few dozen relay sockets.
        nofile: Some(64),
        ..RelayOptions::new(b)
    }
    .start();
    let mut clients = Vec::new();
    let mut refused = None;
    for _ in 0..200 {
        let mut c = relay.client();
        match c.allocate(RelayFamily::Ipv4) {
            Ok(_) => clients.push(c),
            Err(f) => {
                refused = Some(f);
                break;
            }
        }
    }
    assert_eq!(
        refused,
        Some(Failure::Error(508)),
        "after {} allocations",
        clients.len()
    );
    assert!(clients.len() >= 5, "only {} allocations fit", clients.len());
    let m = relay.wait_metrics("the 508", |m| {
        m.sum("uturn_relay_open_failures_total", &[]) >= 1.0
    });
    assert!(
        m.sum(
            "uturn_requests_total",
            &[("method", "allocate"), ("result", "508")]
        ) >= 1.0
    );
    // Still alive and serving: free one allocation and the next Allocate gets its descriptor.
    let mut first = clients.remove(0);
    first.refresh(Some(Duration::ZERO)).expect("Refresh 0");
    let mut c = relay.client();
    c.allocate(RelayFamily::Ipv4)
        .expect("an Allocate after a descriptor was freed");
    assert!(relay.proc.output().find("panicked").is_none());
}
