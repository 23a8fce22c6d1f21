//! Drives the TURN server with sequences of datagrams from a few clients and peers, with the
//! clock advancing in between. Half the clients speak over TCP, so RFC 6062 (TCP allocations,
//! Connect, ConnectionBind, peers connecting, connections closing) is driven too, through a fake
//! `TcpRelays` that the fuzzer answers (connects succeed or fail, peers arrive, close). Besides raw bytes, the fuzzer can send correctly authenticated
//! requests whose attributes it chooses (the harness knows the nonce key and the password), so
//! it reaches the allocation, permission and channel code and not just the 401 path.
//!
//! Asserted after every step: no panic; forwards stay inside the buffer they name; state stays
//! within the configured quotas (bounded memory); every open relay socket belongs to a live
//! allocation and none leaks.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use uturn_proto::stun::attr::*;
use uturn_proto::stun::{Class, Encoder, LongTermKey, MessageType, Method, PasswordAlgorithmId, TransactionId};
use uturn_proto::turn::auth::{make_nonce, Credentials, NonceKey};
use uturn_proto::turn::policy::{PeerPolicy, PeerPolicyConfig};
use uturn_proto::turn::{
    FiveTuple, Now, OpenError, Payload, RelayId, RelaySockets, Server, ServerConfig, TcpRelays, Transport,
};
use uturn_proto::ChannelNumber;

const MAX_ALLOCS: usize = 4;
const MAX_PERMS: usize = 3;
const MAX_CHANNELS: usize = 3;
const REALM: &str = "fuzz";

#[derive(Arbitrary, Debug)]
enum Attr {
    Transport(u8),
    Lifetime(u32),
    Peer { v6: bool, host: u8, port: u16 },
    Channel(u16),
    EvenPort(bool),
    Token([u8; 8]),
    Family(bool),
    Additional(bool),
    DontFragment,
    ConnId(u32),
    Unknown(u16, Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Raw bytes from client `c`.
    Raw { c: u8, bytes: Vec<u8> },
    /// An authenticated request from client `c`.
    Request { c: u8, method: u8, attrs: Vec<Attr>, sha256: bool, stale: bool, wrong_user: bool },
    /// A Send indication from client `c`.
    Send { c: u8, host: u8, port: u16, data: Vec<u8> },
    /// ChannelData from client `c`.
    ChannelData { c: u8, channel: u16, data: Vec<u8> },
    /// A datagram from a peer to the `r`-th open relay socket.
    Peer { r: u8, host: u8, port: u16, data: Vec<u8> },
    /// Time passes.
    Advance { secs: u16 },
    /// A Connect the server started succeeds or fails.
    Connected { k: u8, ok: bool },
    /// A peer connects to the `l`-th relayed TCP address.
    Accepted { l: u8, host: u8, port: u16 },
    /// A peer data connection closes.
    PeerClosed { k: u8 },
    /// Client `c`'s TCP connection closes.
    ClientClosed { c: u8 },
}

/// The TCP side, answered by the fuzzer.
#[derive(Default)]
struct Tcp {
    next: u32,
    listeners: HashMap<u32, RelayId>,
    connecting: Vec<ConnectionId>,
    peers: Vec<ConnectionId>,
}

impl TcpRelays for Tcp {
    fn listen(&mut self, _: SocketAddr, id: RelayId) -> Result<u32, OpenError> {
        self.next += 1;
        self.listeners.insert(self.next, id);
        Ok(self.next)
    }
    fn close_listener(&mut self, h: u32) {
        assert!(self.listeners.remove(&h).is_some(), "close of a listener that is not open");
    }
    fn connect(&mut self, _: SocketAddr, _: SocketAddr, conn: ConnectionId) {
        self.connecting.push(conn);
    }
    fn close_peer(&mut self, conn: ConnectionId) {
        self.connecting.retain(|c| *c != conn);
        self.peers.retain(|c| *c != conn);
    }
    fn splice(&mut self, _: u32, _: ConnectionId) {}
    fn hand_off(&mut self, _: u32, _: u8) {}
}

#[derive(Default)]
struct Relays {
    next: u32,
    open: HashMap<u32, RelayId>,
    tcp: Tcp,
}

impl RelaySockets for Relays {
    fn open(&mut self, _: SocketAddr, id: RelayId, _: bool) -> Result<u32, OpenError> {
        self.next += 1;
        self.open.insert(self.next, id);
        Ok(self.next)
    }
    fn close(&mut self, h: u32) {
        assert!(self.open.remove(&h).is_some(), "close of a handle that is not open");
    }
    fn tcp(&mut self) -> Option<&mut dyn TcpRelays> {
        Some(&mut self.tcp)
    }
}

/// Clients 4 to 7 (mod 8) are on TCP, each on a connection of its own.
fn is_tcp(c: u8) -> bool {
    c & 4 != 0
}

/// The listener token a client's messages arrive on: the shared UDP socket, or its connection.
fn token(c: u8) -> u32 {
    if is_tcp(c) { 100 + u32::from(c % 8) } else { 0 }
}

fn client(c: u8) -> SocketAddr {
    let port = if is_tcp(c) { 41000 } else { 40000 };
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, c % 4)), port + u16::from(c % 2))
}

fn peer(v6: bool, host: u8, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2606, 0x4700, 0, 0, 0, 0, 0, u16::from(host % 4))), port)
    } else {
        // 8.8.8.x is public; a few hosts in special ranges exercise the policy.
        let ip = match host % 8 {
            0 => Ipv4Addr::new(127, 0, 0, 1),
            1 => Ipv4Addr::new(10, 0, 0, 1),
            _ => Ipv4Addr::new(8, 8, 8, host % 4),
        };
        SocketAddr::new(IpAddr::V4(ip), port)
    }
}

fn server_addr() -> SocketAddr {
    "192.0.2.1:3478".parse().unwrap()
}

fn tuple(c: u8) -> FiveTuple {
    let transport = if is_tcp(c) { Transport::Tcp } else { Transport::Udp };
    FiveTuple { client: client(c), server: server_addr(), transport }
}

fuzz_target!(|steps: Vec<Step>| {
    let t0 = Instant::now();
    let creds = Credentials::new(REALM, [("u", "p"), ("v", "q")], ["secret"]).unwrap();
    let key = NonceKey::new([3; 32]);
    let mut cfg = ServerConfig::new(REALM, creds, key.clone());
    cfg.relay_v4 = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)));
    cfg.relay_v6 = Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10)));
    cfg.port_min = 50000;
    cfg.port_max = 50007;
    cfg.max_allocations = MAX_ALLOCS;
    cfg.max_permissions_per_allocation = MAX_PERMS;
    cfg.max_channels_per_allocation = MAX_CHANNELS;
    cfg.bandwidth_limit = Some(10_000);
    cfg.peer_policy = PeerPolicy::new(&PeerPolicyConfig { listen: vec![server_addr()], ..Default::default() });
    let mut s = Server::new(cfg, t0);
    let mut relays = Relays::default();
    let mut elapsed = 0u64;
    let mut out = vec![0u8; 2048];
    let mut tid = 0u64;

    for step in steps.into_iter().take(64) {
        let now = Now { instant: t0 + Duration::from_secs(elapsed), unix_secs: 1_800_000_000 + elapsed };
        let mut next_tid = || {
            tid += 1;
            let mut t = [0u8; 12];
            t[..8].copy_from_slice(&tid.to_be_bytes());
            TransactionId(t)
        };
        let (input, t) = match step {
            Step::Raw { c, bytes } => {
                let t = s.handle_client(now, token(c), tuple(c), &bytes, &mut out, &mut relays);
                (bytes, t)
            }
            Step::Request { c, method, attrs, sha256, stale, wrong_user } => {
                let method = [
                    Method::ALLOCATE,
                    Method::REFRESH,
                    Method::CREATE_PERMISSION,
                    Method::CHANNEL_BIND,
                    Method::BINDING,
                    Method::CONNECT,
                    Method::CONNECTION_BIND,
                ][usize::from(method % 7)];
                let mut buf = vec![0u8; 1500];
                let id = next_tid();
                let Ok(mut e) = Encoder::new(&mut buf, MessageType::new(method, Class::Request), id) else { continue };
                for a in &attrs {
                    let _ = match a {
                        Attr::Transport(t) => e.add(&RequestedTransport(*t)),
                        Attr::Lifetime(l) => e.add(&Lifetime(*l)),
                        Attr::Peer { v6, host, port } => e.add(&XorPeerAddress(peer(*v6, *host, *port))),
                        Attr::Channel(n) => e.add_raw(types::CHANNEL_NUMBER, &[(n >> 8) as u8, *n as u8, 0, 0]),
                        Attr::EvenPort(r) => e.add(&EvenPort { reserve: *r }),
                        Attr::Token(t) => e.add(&ReservationToken(*t)),
                        Attr::Family(v6) => e.add(&RequestedAddressFamily(if *v6 { Family::V6 } else { Family::V4 })),
                        Attr::Additional(v6) => e.add(&AdditionalAddressFamily(if *v6 { Family::V6 } else { Family::V4 })),
                        Attr::DontFragment => e.add(&DontFragment),
                        Attr::ConnId(id) => e.add(&ConnectionId(*id)),
                        Attr::Unknown(t, v) => e.add_raw(*t, v),
                    };
                }
                let user = if wrong_user { "v" } else { "u" };
                let pass = if wrong_user { "q" } else { "p" };
                let nonce_time = if stale { now.unix_secs.saturating_sub(10_000) } else { now.unix_secs };
                let nonce = make_nonce(&key, client(c), nonce_time);
                let _ = e.add(&Username(user));
                let _ = e.add(&Realm(REALM));
                let _ = e.add(&Nonce(nonce.as_str()));
                let alg = if sha256 { PasswordAlgorithmId::Sha256 } else { PasswordAlgorithmId::Md5 };
                let k = LongTermKey::derive(alg, user, REALM, pass);
                if sha256 {
                    let _ = e.add(&PasswordAlgorithms::List(&[PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5]));
                    let _ = e.add(&PasswordAlgorithm::SHA256);
                    let _ = e.message_integrity_sha256(k.as_bytes());
                } else {
                    let _ = e.message_integrity(k.as_bytes());
                }
                let _ = e.fingerprint();
                let n = e.finish();
                buf.truncate(n);
                let t = s.handle_client(now, token(c), tuple(c), &buf, &mut out, &mut relays);
                (buf, t)
            }
            Step::Send { c, host, port, data } => {
                let mut buf = vec![0u8; 1500];
                let Ok(mut e) = Encoder::new(&mut buf, MessageType::new(Method::SEND, Class::Indication), next_tid()) else { continue };
                let _ = e.add(&XorPeerAddress(peer(false, host, port)));
                let _ = e.add(&Data(&data));
                let n = e.finish();
                buf.truncate(n);
                let t = s.handle_client(now, token(c), tuple(c), &buf, &mut out, &mut relays);
                (buf, t)
            }
            Step::ChannelData { c, channel, data } => {
                let mut buf = channel.to_be_bytes().to_vec();
                buf.extend_from_slice(&(data.len() as u16).to_be_bytes());
                buf.extend_from_slice(&data);
                let _ = ChannelNumber::new(channel);
                let t = s.handle_client(now, token(c), tuple(c), &buf, &mut out, &mut relays);
                (buf, t)
            }
            Step::Peer { r, host, port, data } => {
                let ids: Vec<RelayId> = relays.open.values().copied().collect();
                if ids.is_empty() {
                    continue;
                }
                let id = ids[usize::from(r) % ids.len()];
                let mut buf = vec![0u8; 64 + data.len() + 4];
                buf[64..64 + data.len()].copy_from_slice(&data);
                let t = s.handle_peer(now, id, peer(host % 2 == 1, host, port), &mut buf, 64..64 + data.len(), &mut out);
                (buf, t)
            }
            Step::Connected { k, ok } => {
                if relays.tcp.connecting.is_empty() {
                    continue;
                }
                let i = usize::from(k) % relays.tcp.connecting.len();
                let id = relays.tcp.connecting.remove(i);
                if ok {
                    relays.tcp.peers.push(id);
                }
                s.tcp_connected(now, id, ok, &mut relays);
                (Vec::new(), None)
            }
            Step::Accepted { l, host, port } => {
                let ids: Vec<RelayId> = relays.tcp.listeners.values().copied().collect();
                if ids.is_empty() {
                    continue;
                }
                let relay = ids[usize::from(l) % ids.len()];
                if let Some(id) = s.tcp_accepted(now, relay, peer(false, host, port)) {
                    relays.tcp.peers.push(id);
                }
                (Vec::new(), None)
            }
            Step::PeerClosed { k } => {
                if relays.tcp.peers.is_empty() {
                    continue;
                }
                let i = usize::from(k) % relays.tcp.peers.len();
                let id = relays.tcp.peers.remove(i);
                s.tcp_closed(id);
                (Vec::new(), None)
            }
            Step::ClientClosed { c } => {
                s.connection_closed(token(c), tuple(c), &mut relays);
                (Vec::new(), None)
            }
            Step::Advance { secs } => {
                elapsed += u64::from(secs % 700);
                let now = Now { instant: t0 + Duration::from_secs(elapsed), unix_secs: 1_800_000_000 + elapsed };
                s.handle_timeout(now, &mut relays);
                (Vec::new(), None)
            }
        };
        if let Some(t) = t {
            match t.payload {
                Payload::Input(r) => assert!(r.start <= r.end && r.end <= input.len(), "forward range outside its buffer"),
                Payload::Output(n) => assert!(n <= out.len()),
            }
        }
        // Connect results and ConnectionAttempts decided meanwhile.
        while let Some(t) = s.poll_transmit(&mut out) {
            if let Payload::Output(n) = t.payload {
                assert!(n <= out.len());
            }
        }
        let st = s.stats();
        assert!(s.allocation_count() <= MAX_ALLOCS);
        assert_eq!(st.allocations_active as usize, s.allocation_count());
        assert!(st.permissions_active as usize <= MAX_ALLOCS * MAX_PERMS);
        assert!(st.channels_active as usize <= MAX_ALLOCS * MAX_CHANNELS);
        // One relay socket per allocation family, two at most.
        assert!(relays.open.len() <= 2 * s.allocation_count());
        // A TCP allocation listens on one relayed address.
        assert!(relays.tcp.listeners.len() <= s.allocation_count());
    }
});
