//! The TURN server state machine driven in memory: clients, peers and relay sockets are plain
//! data, the clock is simulated. Each test pins down one rule of RFC 8656 / RFC 8489 or one of
//! the project's policies, and fails if the rule is broken.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use uturn_proto::stun::attr::*;
use uturn_proto::stun::{
    Class, Encoder, LongTermKey, Message, MessageType, Method, PasswordAlgorithmId, TransactionId,
};
use uturn_proto::turn::auth::{rest_password, Credentials, NonceKey};
use uturn_proto::turn::policy::{Cidr, PeerPolicy, PeerPolicyConfig};
use uturn_proto::turn::{
    ConnectionId, DropReason, FiveTuple, Now, OpenError, Payload, RelayId, RelaySockets, Server,
    ServerConfig, TcpRelays, Transmit, Transport, Via,
};
use uturn_proto::ChannelNumber;

const REALM: &str = "uturn.test";
const UNIX0: u64 = 1_800_000_000;
const LISTENER: u32 = 7;
const HEADROOM: usize = 64;

fn server_addr() -> SocketAddr {
    "203.0.113.1:3478".parse().unwrap()
}
const RELAY_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
fn relay_v6() -> Ipv6Addr {
    "2001:db8::1".parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fake relay sockets.

#[derive(Default)]
struct FakeRelays {
    next: u32,
    open: HashMap<u32, (SocketAddr, RelayId, bool)>,
    closed: Vec<u32>,
    in_use: HashSet<u16>,
    exhausted: bool,
    /// The driver's TCP side (RFC 6062), when it has one.
    tcp: Option<FakeTcp>,
}

/// What the server ordered of the driver's TCP side.
#[derive(Default, Debug)]
struct FakeTcp {
    next: u32,
    listening: HashMap<u32, (SocketAddr, RelayId)>,
    closed_listeners: Vec<u32>,
    /// Connects ordered: from, to, id.
    connects: Vec<(SocketAddr, SocketAddr, ConnectionId)>,
    /// Peer data connections the driver holds open (connecting, accepted or spliced).
    open: HashSet<ConnectionId>,
    closed: Vec<ConnectionId>,
    splices: Vec<(u32, ConnectionId)>,
    hand_offs: Vec<(u32, u8)>,
}

impl TcpRelays for FakeTcp {
    fn listen(&mut self, addr: SocketAddr, id: RelayId) -> Result<u32, OpenError> {
        assert!(
            !self.listening.values().any(|(a, _)| *a == addr),
            "double listen on {addr}"
        );
        self.next += 1;
        let handle = 1000 + self.next;
        self.listening.insert(handle, (addr, id));
        Ok(handle)
    }
    fn close_listener(&mut self, handle: u32) {
        assert!(self.listening.remove(&handle).is_some(), "unknown listener");
        self.closed_listeners.push(handle);
    }
    fn connect(&mut self, from: SocketAddr, peer: SocketAddr, conn: ConnectionId) {
        assert!(self.open.insert(conn), "connection id {conn:?} reused");
        self.connects.push((from, peer, conn));
    }
    fn close_peer(&mut self, conn: ConnectionId) {
        assert!(self.open.remove(&conn), "close of unknown {conn:?}");
        self.closed.push(conn);
    }
    fn splice(&mut self, client: u32, conn: ConnectionId) {
        assert!(self.open.contains(&conn), "splice of unknown {conn:?}");
        self.splices.push((client, conn));
    }
    fn hand_off(&mut self, client: u32, worker: u8) {
        self.hand_offs.push((client, worker));
    }
}

impl RelaySockets for FakeRelays {
    fn open(&mut self, addr: SocketAddr, id: RelayId, df: bool) -> Result<u32, OpenError> {
        if self.exhausted {
            return Err(OpenError::Exhausted);
        }
        if self.in_use.contains(&addr.port()) {
            return Err(OpenError::AddrInUse);
        }
        assert!(
            !self.open.values().any(|(a, _, _)| *a == addr),
            "double bind of {addr}"
        );
        self.next += 1;
        self.open.insert(self.next, (addr, id, df));
        Ok(self.next)
    }
    fn close(&mut self, handle: u32) {
        assert!(
            self.open.remove(&handle).is_some(),
            "close of unknown handle"
        );
        self.closed.push(handle);
    }
    fn tcp(&mut self) -> Option<&mut dyn TcpRelays> {
        self.tcp.as_mut().map(|t| t as &mut dyn TcpRelays)
    }
}

impl FakeRelays {
    fn by_addr(&self, addr: SocketAddr) -> Option<(u32, RelayId)> {
        self.open
            .iter()
            .find(|(_, (a, _, _))| *a == addr)
            .map(|(h, (_, id, _))| (*h, *id))
    }
}

// ---------------------------------------------------------------------------------------------
// Harness.

struct H {
    server: Server,
    relays: FakeRelays,
    t0: Instant,
    elapsed: Duration,
    out: Vec<u8>,
    tid: u64,
}

/// What came out of one input: the transmit and the bytes it names.
#[derive(Debug)]
struct Sent {
    via: Via,
    to: SocketAddr,
    bytes: Vec<u8>,
    in_place: bool,
}

fn base_config() -> ServerConfig {
    let creds = Credentials::new(
        REALM,
        vec![
            ("alice".to_string(), "alice-pass".to_string()),
            ("bob".to_string(), "bob-pass".to_string()),
        ],
        vec![b"rest-secret-1".to_vec(), b"rest-secret-2".to_vec()],
    )
    .unwrap();
    let mut cfg = ServerConfig::new(REALM, creds, NonceKey::new([9u8; 32]));
    cfg.relay_v4 = Some(IpAddr::V4(RELAY_V4));
    cfg.port_min = 50000;
    cfg.port_max = 50999;
    cfg.peer_policy = policy(vec![], vec![], false);
    cfg
}

fn policy(allow: Vec<Cidr>, deny: Vec<Cidr>, allow_loopback: bool) -> PeerPolicy {
    PeerPolicy::new(&PeerPolicyConfig {
        allow,
        deny,
        allow_loopback,
        listen: vec![server_addr()],
        relay_ips: vec![IpAddr::V4(RELAY_V4), IpAddr::V6(relay_v6())],
        relay_ports: 50000..=50999,
    })
}

impl H {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(f: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut cfg = base_config();
        f(&mut cfg);
        let t0 = Instant::now();
        H {
            server: Server::new(cfg, t0),
            relays: FakeRelays::default(),
            t0,
            elapsed: Duration::ZERO,
            out: vec![0; 2048],
            tid: 0,
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.t0 + self.elapsed,
            unix_secs: UNIX0 + self.elapsed.as_secs(),
        }
    }

    fn advance(&mut self, secs: u64) {
        // Step a second at a time so the sweep runs as it would in a real loop.
        for _ in 0..secs {
            self.elapsed += Duration::from_secs(1);
            let now = self.now();
            self.server.handle_timeout(now, &mut self.relays);
        }
    }

    fn tid(&mut self) -> TransactionId {
        self.tid += 1;
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&self.tid.to_be_bytes());
        TransactionId(t)
    }

    fn collect(&self, t: Option<Transmit>, buf: &[u8]) -> Option<Sent> {
        let t = t?;
        let (bytes, in_place) = match t.payload {
            Payload::Input(r) => (buf[r].to_vec(), true),
            Payload::Output(n) => (self.out[..n].to_vec(), false),
        };
        Some(Sent {
            via: t.via,
            to: t.to,
            bytes,
            in_place,
        })
    }

    /// A datagram from `client` to the listening socket.
    fn client_sends(&mut self, client: SocketAddr, bytes: &[u8]) -> Option<Sent> {
        let buf = bytes.to_vec();
        let tuple = FiveTuple {
            client,
            server: server_addr(),
            transport: Transport::Udp,
        };
        let now = self.now();
        let t =
            self.server
                .handle_client(now, LISTENER, tuple, &buf, &mut self.out, &mut self.relays);
        self.collect(t, &buf)
    }

    /// A datagram from `peer` arriving at relay address `relay`.
    fn peer_sends(&mut self, relay: SocketAddr, peer: SocketAddr, payload: &[u8]) -> Option<Sent> {
        let (_, id) = self.relays.by_addr(relay).expect("relay socket is open");
        self.peer_sends_id(id, peer, payload)
    }

    fn peer_sends_id(&mut self, id: RelayId, peer: SocketAddr, payload: &[u8]) -> Option<Sent> {
        let mut buf = vec![0xEEu8; HEADROOM + payload.len() + 4];
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        let now = self.now();
        let t = self.server.handle_peer(
            now,
            id,
            peer,
            &mut buf,
            HEADROOM..HEADROOM + payload.len(),
            &mut self.out,
        );
        self.collect(t, &buf)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

#[derive(Clone, Copy)]
struct Cred<'a> {
    user: &'a str,
    pass: &'a str,
    sha256: bool,
    userhash: bool,
}

fn cred<'a>(user: &'a str, pass: &'a str) -> Cred<'a> {
    Cred {
        user,
        pass,
        sha256: false,
        userhash: false,
    }
}

fn key_of(c: &Cred<'_>) -> LongTermKey {
    let alg = if c.sha256 {
        PasswordAlgorithmId::Sha256
    } else {
        PasswordAlgorithmId::Md5
    };
    LongTermKey::derive(alg, c.user, REALM, c.pass)
}

/// Builds a request: `attrs` adds the method's attributes; with `auth`, USERNAME (or USERHASH),
/// REALM, NONCE, password algorithm attributes and integrity are appended; FINGERPRINT last.
fn request(
    method: Method,
    tid: TransactionId,
    auth: Option<(&Cred<'_>, &str)>,
    attrs: impl FnOnce(&mut Encoder<'_>),
) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    let mut e = Encoder::new(&mut buf, MessageType::new(method, Class::Request), tid).unwrap();
    attrs(&mut e);
    if let Some((c, nonce)) = auth {
        if c.userhash {
            e.add(&Userhash(uturn_proto::stun::integrity::userhash(
                c.user, REALM,
            )))
            .unwrap();
        } else {
            e.add(&Username(c.user)).unwrap();
        }
        e.add(&Realm(REALM)).unwrap();
        e.add(&Nonce(nonce)).unwrap();
        if c.sha256 {
            e.add(&PasswordAlgorithms::List(&[
                PasswordAlgorithm::SHA256,
                PasswordAlgorithm::MD5,
            ]))
            .unwrap();
            e.add(&PasswordAlgorithm::SHA256).unwrap();
            e.message_integrity_sha256(key_of(c).as_bytes()).unwrap();
        } else {
            e.message_integrity(key_of(c).as_bytes()).unwrap();
        }
    }
    e.fingerprint().unwrap();
    let n = e.finish();
    buf.truncate(n);
    buf
}

fn parse(bytes: &[u8]) -> Message<'_> {
    Message::parse(bytes).expect("server output parses")
}

fn error_code(bytes: &[u8]) -> Option<u16> {
    let m = parse(bytes);
    m.get::<ErrorCode<'_>>().unwrap().map(|e| e.code)
}

fn client(n: u8) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
        40000 + u16::from(n),
    )
}

fn peer(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(8, 8, 4, n)), 9000 + u16::from(n))
}

/// Gets a nonce the way a real client does: an unauthenticated request answered 401.
fn nonce(h: &mut H, c: SocketAddr) -> String {
    let tid = h.tid();
    let req = request(Method::ALLOCATE, tid, None, |e| {
        e.add(&RequestedTransport::UDP).unwrap()
    });
    let resp = h.client_sends(c, &req).expect("401");
    assert_eq!(error_code(&resp.bytes), Some(401));
    let m = parse(&resp.bytes);
    m.get::<Nonce<'_>>().unwrap().unwrap().0.to_string()
}

struct Allocated {
    relay: SocketAddr,
    relays: Vec<SocketAddr>,
    lifetime: u32,
    nonce: String,
    response: Vec<u8>,
}

fn try_allocate(
    h: &mut H,
    c: SocketAddr,
    cr: Cred<'_>,
    attrs: impl FnOnce(&mut Encoder<'_>),
) -> Result<Allocated, (u16, Vec<u8>)> {
    let n = nonce(h, c);
    let tid = h.tid();
    let req = request(Method::ALLOCATE, tid, Some((&cr, &n)), |e| {
        e.add(&RequestedTransport::UDP).unwrap();
        attrs(e);
    });
    let resp = h.client_sends(c, &req).expect("a response");
    assert_eq!(resp.to, c);
    assert_eq!(resp.via, Via::Listener(LISTENER));
    let m = parse(&resp.bytes);
    assert_eq!(m.transaction_id(), tid);
    if let Some(code) = error_code(&resp.bytes) {
        return Err((code, resp.bytes.clone()));
    }
    assert_eq!(m.class(), Class::Success);
    if cr.sha256 {
        m.verify_integrity_sha256(key_of(&cr).as_bytes()).unwrap();
    } else {
        m.verify_integrity(key_of(&cr).as_bytes()).unwrap();
    }
    m.check_fingerprint().unwrap();
    assert_eq!(
        m.get::<XorMappedAddress>().unwrap(),
        Some(XorMappedAddress(c))
    );
    let relays: Vec<SocketAddr> = m
        .get_all::<XorRelayedAddress>()
        .map(|r| r.unwrap().0)
        .collect();
    Ok(Allocated {
        relay: relays[0],
        relays: relays.clone(),
        lifetime: m.get::<Lifetime>().unwrap().unwrap().0,
        nonce: n,
        response: resp.bytes.clone(),
    })
}

fn allocate(h: &mut H, c: SocketAddr, cr: Cred<'_>) -> Allocated {
    try_allocate(h, c, cr, |_| {}).unwrap_or_else(|(code, _)| panic!("allocate failed: {code}"))
}

/// Sends an authenticated request on an allocation and returns the response.
fn authed(
    h: &mut H,
    c: SocketAddr,
    cr: Cred<'_>,
    nonce: &str,
    method: Method,
    attrs: impl FnOnce(&mut Encoder<'_>),
) -> Vec<u8> {
    let tid = h.tid();
    let req = request(method, tid, Some((&cr, nonce)), attrs);
    let resp = h.client_sends(c, &req).expect("a response");
    let m = parse(&resp.bytes);
    assert_eq!(m.transaction_id(), tid);
    assert_eq!(m.method(), method);
    resp.bytes
}

fn create_permission(h: &mut H, c: SocketAddr, a: &Allocated, peers: &[SocketAddr]) -> Option<u16> {
    let r = authed(h, c, ALICE, &a.nonce, Method::CREATE_PERMISSION, |e| {
        for p in peers {
            e.add(&XorPeerAddress(*p)).unwrap();
        }
    });
    error_code(&r)
}

fn channel_bind(h: &mut H, c: SocketAddr, a: &Allocated, n: u16, p: SocketAddr) -> Option<u16> {
    let r = authed(h, c, ALICE, &a.nonce, Method::CHANNEL_BIND, |e| {
        e.add_raw(types::CHANNEL_NUMBER, &[(n >> 8) as u8, n as u8, 0, 0])
            .unwrap();
        e.add(&XorPeerAddress(p)).unwrap();
    });
    error_code(&r)
}

fn channel_data(n: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![(n >> 8) as u8, n as u8];
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn send_indication(tid: TransactionId, p: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    let mut e = Encoder::new(
        &mut buf,
        MessageType::new(Method::SEND, Class::Indication),
        tid,
    )
    .unwrap();
    e.add(&XorPeerAddress(p)).unwrap();
    e.add(&Data(data)).unwrap();
    let n = e.finish();
    buf.truncate(n);
    buf
}

const ALICE: Cred<'static> = Cred {
    user: "alice",
    pass: "alice-pass",
    sha256: false,
    userhash: false,
};
const BOB: Cred<'static> = Cred {
    user: "bob",
    pass: "bob-pass",
    sha256: false,
    userhash: false,
};

// ---------------------------------------------------------------------------------------------
// Binding.

#[test]
fn binding_reflects_address_with_fingerprint_only_when_asked() {
    let mut h = H::new();
    let c = client(1);
    let tid = h.tid();
    let req = request(Method::BINDING, tid, None, |_| {});
    let r = h.client_sends(c, &req).unwrap();
    let m = parse(&r.bytes);
    assert_eq!(m.class(), Class::Success);
    assert_eq!(
        m.get::<XorMappedAddress>().unwrap(),
        Some(XorMappedAddress(c))
    );
    assert!(m.has_fingerprint());
    m.check_fingerprint().unwrap();
    assert!(
        m.get::<Software<'_>>().unwrap().is_none(),
        "SOFTWARE off by default"
    );
    assert!(
        m.get::<MappedAddress>().unwrap().is_none(),
        "MAPPED-ADDRESS off by default"
    );

    // Without FINGERPRINT in the request, none in the response.
    let mut buf = [0u8; 64];
    let e = Encoder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        tid,
    )
    .unwrap();
    let n = e.finish();
    let r = h.client_sends(c, &buf[..n]).unwrap();
    assert!(!parse(&r.bytes).has_fingerprint());
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn binding_software_and_mapped_address_when_configured() {
    let mut h = H::with(|c| {
        c.software = Some("uturn test".into());
        c.mapped_address = true;
    });
    let tid = h.tid();
    let r = h
        .client_sends(client(1), &request(Method::BINDING, tid, None, |_| {}))
        .unwrap();
    let m = parse(&r.bytes);
    assert_eq!(
        m.get::<Software<'_>>().unwrap(),
        Some(Software("uturn test"))
    );
    assert_eq!(
        m.get::<MappedAddress>().unwrap(),
        Some(MappedAddress(client(1)))
    );
}

#[test]
fn unknown_required_attribute_gets_420_with_list() {
    let mut h = H::new();
    let tid = h.tid();
    let req = request(Method::BINDING, tid, None, |e| {
        e.add_raw(0x7777, b"x").unwrap();
        e.add_raw(0xC001, b"optional, ignored").unwrap();
    });
    let r = h.client_sends(client(1), &req).unwrap();
    assert_eq!(error_code(&r.bytes), Some(420));
    let m = parse(&r.bytes);
    let list: Vec<u16> = m
        .get::<UnknownAttributes<'_>>()
        .unwrap()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(list, vec![0x7777]);

    // The same in an authenticated Allocate: 420, signed, nothing allocated.
    let c = client(2);
    let n = nonce(&mut h, c);
    let r = authed(&mut h, c, ALICE, &n, Method::ALLOCATE, |e| {
        e.add(&RequestedTransport::UDP).unwrap();
        e.add_raw(0x7778, &[1, 2, 3, 4]).unwrap();
    });
    assert_eq!(error_code(&r), Some(420));
    parse(&r)
        .verify_integrity(key_of(&ALICE).as_bytes())
        .unwrap();
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn unknown_method_is_400_and_indications_and_responses_are_not_answered() {
    let mut h = H::new();
    let c = client(1);
    let tid = h.tid();
    // A method number small enough that the first byte stays in STUN's 0-3 range (RFC 7983);
    // larger ones are not STUN to the demultiplexer at all.
    let m = Method::new(0x000D).unwrap();
    let r = h.client_sends(c, &request(m, tid, None, |_| {})).unwrap();
    assert_eq!(error_code(&r.bytes), Some(400));

    let mut buf = [0u8; 64];
    for (method, class) in [
        (Method::BINDING, Class::Indication),
        (Method::BINDING, Class::Success),
        (Method::ALLOCATE, Class::Error),
        (Method::DATA, Class::Indication),
    ] {
        let e = Encoder::new(&mut buf, MessageType::new(method, class), tid).unwrap();
        let n = e.finish();
        assert!(
            h.client_sends(c, &buf[..n]).is_none(),
            "{method:?} {class:?}"
        );
    }
    assert!(h.server.stats().dropped(DropReason::Ignored) >= 4);
}

#[test]
fn bad_fingerprint_and_garbage_are_dropped() {
    let mut h = H::new();
    let tid = h.tid();
    let mut req = request(Method::BINDING, tid, None, |_| {});
    let n = req.len();
    req[n - 1] ^= 1;
    assert!(h.client_sends(client(1), &req).is_none());
    assert_eq!(h.server.stats().dropped(DropReason::BadFingerprint), 1);
    for junk in [&[][..], &[0u8; 3], &[0x80; 40], &[0x16, 3, 1, 0, 5]] {
        assert!(h.client_sends(client(1), junk).is_none());
    }
    assert!(h.server.stats().dropped(DropReason::Malformed) >= 4);
}

// ---------------------------------------------------------------------------------------------
// Authentication.

#[test]
fn unauthenticated_allocate_gets_401_and_creates_no_state() {
    let mut h = H::new();
    let tid = h.tid();
    let req = request(Method::ALLOCATE, tid, None, |e| {
        e.add(&RequestedTransport::UDP).unwrap()
    });
    let r = h.client_sends(client(1), &req).unwrap();
    assert_eq!(error_code(&r.bytes), Some(401));
    let m = parse(&r.bytes);
    assert_eq!(m.get::<Realm<'_>>().unwrap(), Some(Realm(REALM)));
    let nonce = m.get::<Nonce<'_>>().unwrap().unwrap();
    assert!(nonce.0.starts_with("obMatJos2"), "RFC 8489 nonce cookie");
    let algs: Vec<u16> = m
        .get::<PasswordAlgorithms<'_>>()
        .unwrap()
        .unwrap()
        .iter()
        .map(|a| a.algorithm)
        .collect();
    assert_eq!(algs, vec![algorithm::SHA256, algorithm::MD5]);
    assert!(!m.has_integrity(), "a 401 cannot be signed");
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.relays.open.is_empty());
    assert_eq!(h.server.poll_timeout(), None, "no timers either");
}

#[test]
fn allocate_with_long_term_credentials() {
    let mut h = H::new();
    let a = allocate(&mut h, client(1), ALICE);
    assert_eq!(a.relay.ip(), IpAddr::V4(RELAY_V4));
    assert!((50000..=50999).contains(&a.relay.port()));
    assert_eq!(a.lifetime, 600);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.relays.open.len(), 1);
    assert_eq!(h.server.stats().allocations_active, 1);
    assert_eq!(h.server.stats().requests_of(Method::ALLOCATE, Some(401)), 1);
    assert_eq!(h.server.stats().requests_of(Method::ALLOCATE, None), 1);
}

#[test]
fn wrong_password_and_unknown_user_get_401() {
    let mut h = H::new();
    let c = client(1);
    for cr in [cred("alice", "nope"), cred("mallory", "x")] {
        let e = try_allocate(&mut h, c, cr, |_| {}).err().expect("refused");
        assert_eq!(e.0, 401);
        assert!(!parse(&e.1).has_integrity());
    }
    assert_eq!(h.server.stats().auth_failures, 2);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn missing_realm_or_nonce_is_400() {
    let mut h = H::new();
    let c = client(1);
    let tid = h.tid();
    let key = key_of(&ALICE);
    let mut buf = vec![0u8; 512];
    let mut e = Encoder::new(
        &mut buf,
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    )
    .unwrap();
    e.add(&RequestedTransport::UDP).unwrap();
    e.add(&Username("alice")).unwrap();
    e.message_integrity(key.as_bytes()).unwrap();
    let n = e.finish();
    let r = h.client_sends(c, &buf[..n]).unwrap();
    assert_eq!(error_code(&r.bytes), Some(400));
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut h = H::new();
    let c = client(1);
    let n = nonce(&mut h, c);
    h.advance(601);
    let r = authed(&mut h, c, ALICE, &n, Method::ALLOCATE, |e| {
        e.add(&RequestedTransport::UDP).unwrap()
    });
    assert_eq!(error_code(&r), Some(438));
    let m = parse(&r);
    let fresh = m.get::<Nonce<'_>>().unwrap().unwrap().0.to_string();
    assert_ne!(fresh, n);
    assert_eq!(m.get::<Realm<'_>>().unwrap(), Some(Realm(REALM)));
    let r = authed(&mut h, c, ALICE, &fresh, Method::ALLOCATE, |e| {
        e.add(&RequestedTransport::UDP).unwrap()
    });
    assert_eq!(error_code(&r), None);
    // A nonce made for another client address is not accepted either.
    let r = authed(&mut h, client(2), ALICE, &fresh, Method::ALLOCATE, |e| {
        e.add(&RequestedTransport::UDP).unwrap()
    });
    assert_eq!(error_code(&r), Some(438));
}

#[test]
fn sha256_password_algorithm_and_message_integrity_sha256() {
    let mut h = H::new();
    let cr = Cred {
        sha256: true,
        ..ALICE
    };
    let a = try_allocate(&mut h, client(1), cr, |_| {})
        .map_err(|e| e.0)
        .unwrap();
    let m = parse(&a.response);
    assert!(
        m.has_integrity_sha256(),
        "answered in the request's integrity kind"
    );
    assert!(!m.has_integrity());
}

#[test]
fn password_algorithm_bid_down_is_refused() {
    let mut h = H::new();
    let c = client(1);
    let n = nonce(&mut h, c);
    let key = LongTermKey::derive(PasswordAlgorithmId::Md5, "alice", REALM, "alice-pass");
    // PASSWORD-ALGORITHM without the echoed PASSWORD-ALGORITHMS list, and a tampered list.
    for with_list in [None, Some(&[PasswordAlgorithm::MD5][..])] {
        let tid = h.tid();
        let mut buf = vec![0u8; 512];
        let mut e = Encoder::new(
            &mut buf,
            MessageType::new(Method::ALLOCATE, Class::Request),
            tid,
        )
        .unwrap();
        e.add(&RequestedTransport::UDP).unwrap();
        e.add(&Username("alice")).unwrap();
        e.add(&Realm(REALM)).unwrap();
        e.add(&Nonce(&n)).unwrap();
        if let Some(l) = with_list {
            e.add(&PasswordAlgorithms::List(l)).unwrap();
        }
        e.add(&PasswordAlgorithm::MD5).unwrap();
        e.message_integrity(key.as_bytes()).unwrap();
        let len = e.finish();
        let r = h.client_sends(c, &buf[..len]).unwrap();
        assert_eq!(error_code(&r.bytes), Some(400));
    }
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn userhash_identifies_a_static_user() {
    let mut h = H::new();
    let cr = Cred {
        userhash: true,
        sha256: true,
        ..ALICE
    };
    allocate(&mut h, client(1), cr);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn rest_credentials_valid_rotated_and_expired() {
    let mut h = H::new();
    let user = format!("{}:carol", UNIX0 + 3600);
    for (i, secret) in [&b"rest-secret-1"[..], b"rest-secret-2"].iter().enumerate() {
        let pass = rest_password(secret, &user);
        let cr = cred(&user, &pass);
        allocate(&mut h, client(1 + i as u8), cr);
    }
    assert_eq!(h.server.allocation_count(), 2);
    // A secret the server does not have.
    let pass = rest_password(b"other", &user);
    assert_eq!(
        try_allocate(&mut h, client(3), cred(&user, &pass), |_| {})
            .err()
            .unwrap()
            .0,
        401
    );
    // Expired: the expiry timestamp is in the past.
    let old = format!("{}", UNIX0 - 1);
    let pass = rest_password(b"rest-secret-1", &old);
    assert_eq!(
        try_allocate(&mut h, client(4), cred(&old, &pass), |_| {})
            .err()
            .unwrap()
            .0,
        401
    );
    // And a credential that expires while we wait.
    let soon = format!("{}", UNIX0 + 10);
    let pass = rest_password(b"rest-secret-1", &soon);
    h.advance(11);
    assert_eq!(
        try_allocate(&mut h, client(5), cred(&soon, &pass), |_| {})
            .err()
            .unwrap()
            .0,
        401
    );
}

#[test]
fn other_user_on_the_same_five_tuple_gets_441() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    let r = authed(&mut h, c, BOB, &a.nonce, Method::REFRESH, |_| {});
    assert_eq!(error_code(&r), Some(441));
}

// ---------------------------------------------------------------------------------------------
// Allocate rules.

#[test]
fn lifetime_is_negotiated_between_default_and_maximum() {
    let mut h = H::new();
    for (i, (asked, got)) in [(30u32, 600u32), (1200, 1200), (5000, 3600)]
        .iter()
        .enumerate()
    {
        let a = try_allocate(&mut h, client(i as u8 + 1), ALICE, |e| {
            e.add(&Lifetime(*asked)).unwrap()
        })
        .map_err(|e| e.0)
        .unwrap();
        assert_eq!(a.lifetime, *got, "asked {asked}");
    }
}

#[test]
fn requested_transport_missing_is_400_unknown_is_442_and_tcp_over_udp_is_400() {
    let mut h = H::new();
    let c = client(1);
    let n = nonce(&mut h, c);
    let r = authed(&mut h, c, ALICE, &n, Method::ALLOCATE, |_| {});
    assert_eq!(error_code(&r), Some(400));
    // Neither UDP nor TCP: 442 (RFC 6062 section 5.1 rule 1).
    let r = authed(&mut h, c, ALICE, &n, Method::ALLOCATE, |e| {
        e.add(&RequestedTransport(132)).unwrap()
    });
    assert_eq!(error_code(&r), Some(442));
    // TCP over UDP: 400 (rule 2), whether or not the driver relays over TCP.
    let r = authed(&mut h, c, ALICE, &n, Method::ALLOCATE, |e| {
        e.add(&RequestedTransport::TCP).unwrap()
    });
    assert_eq!(error_code(&r), Some(400));
    parse(&r)
        .verify_integrity(key_of(&ALICE).as_bytes())
        .unwrap();
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn second_allocate_is_437_but_a_retransmission_gets_the_same_success() {
    let mut h = H::new();
    let c = client(1);
    let n = nonce(&mut h, c);
    let tid = h.tid();
    let req = request(Method::ALLOCATE, tid, Some((&ALICE, &n)), |e| {
        e.add(&RequestedTransport::UDP).unwrap()
    });
    let first = h.client_sends(c, &req).unwrap().bytes;
    assert_eq!(error_code(&first), None);
    let again = h.client_sends(c, &req).unwrap().bytes;
    assert_eq!(again, first, "retransmission answered identically");
    assert_eq!(h.relays.open.len(), 1, "and no second relay");
    let r = authed(&mut h, c, ALICE, &n, Method::ALLOCATE, |e| {
        e.add(&RequestedTransport::UDP).unwrap()
    });
    assert_eq!(error_code(&r), Some(437));
}

#[test]
fn dont_fragment_is_accepted_and_passed_to_the_socket() {
    let mut h = H::new();
    let a = try_allocate(&mut h, client(1), ALICE, |e| e.add(&DontFragment).unwrap())
        .map_err(|e| e.0)
        .unwrap();
    let (h_, _) = h.relays.by_addr(a.relay).unwrap();
    assert!(h.relays.open[&h_].2);
}

#[test]
fn even_port_with_reservation_token() {
    let mut h = H::new();
    let a = try_allocate(&mut h, client(1), ALICE, |e| {
        e.add(&EvenPort { reserve: true }).unwrap()
    })
    .map_err(|e| e.0)
    .unwrap();
    assert_eq!(a.relay.port() % 2, 0);
    let token = parse(&a.response)
        .get::<ReservationToken>()
        .unwrap()
        .expect("RESERVATION-TOKEN");
    let b = try_allocate(&mut h, client(2), ALICE, |e| e.add(&token).unwrap())
        .map_err(|e| e.0)
        .unwrap();
    assert_eq!(b.relay.port(), a.relay.port() + 1);
    // The token is single-use.
    let e = try_allocate(&mut h, client(3), ALICE, |e| e.add(&token).unwrap())
        .err()
        .unwrap();
    assert_eq!(e.0, 508);
    // EVEN-PORT and RESERVATION-TOKEN together are malformed.
    let e = try_allocate(&mut h, client(4), ALICE, |e| {
        e.add(&EvenPort { reserve: false }).unwrap();
        e.add(&token).unwrap();
    })
    .err()
    .unwrap();
    assert_eq!(e.0, 400);
}

#[test]
fn reservation_expires_and_frees_the_port() {
    let mut h = H::with(|c| {
        c.port_min = 50000;
        c.port_max = 50001;
    });
    let a = try_allocate(&mut h, client(1), ALICE, |e| {
        e.add(&EvenPort { reserve: true }).unwrap()
    })
    .map_err(|e| e.0)
    .unwrap();
    assert_eq!(a.relay.port(), 50000);
    assert_eq!(
        try_allocate(&mut h, client(2), ALICE, |_| {})
            .err()
            .unwrap()
            .0,
        508
    );
    h.advance(31);
    let b = allocate(&mut h, client(3), ALICE);
    assert_eq!(b.relay.port(), 50001);
}

#[test]
fn dual_stack_allocation_and_address_family_errors() {
    let mut h = H::with(|c| c.relay_v6 = Some(IpAddr::V6(relay_v6())));
    let a = try_allocate(&mut h, client(1), ALICE, |e| {
        e.add(&AdditionalAddressFamily(Family::V6)).unwrap()
    })
    .map_err(|e| e.0)
    .unwrap();
    assert_eq!(a.relays.len(), 2);
    assert!(a.relays[0].is_ipv4() && a.relays[1].is_ipv6());
    let b = try_allocate(&mut h, client(2), ALICE, |e| {
        e.add(&RequestedAddressFamily(Family::V6)).unwrap()
    })
    .map_err(|e| e.0)
    .unwrap();
    assert_eq!(
        b.relays,
        vec![SocketAddr::new(IpAddr::V6(relay_v6()), b.relay.port())]
    );
    let e = try_allocate(&mut h, client(3), ALICE, |e| {
        e.add(&RequestedAddressFamily(Family::V4)).unwrap();
        e.add(&AdditionalAddressFamily(Family::V6)).unwrap();
    })
    .err()
    .unwrap();
    assert_eq!(e.0, 400, "both family attributes");
    let e = try_allocate(&mut h, client(4), ALICE, |e| {
        e.add(&AdditionalAddressFamily(Family::V4)).unwrap()
    })
    .err()
    .unwrap();
    assert_eq!(e.0, 400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6");

    // Without an IPv6 relay: 440 for an IPv6-only request, and a v4 allocation with
    // ADDRESS-ERROR-CODE for a dual one.
    let mut h = H::new();
    let e = try_allocate(&mut h, client(1), ALICE, |e| {
        e.add(&RequestedAddressFamily(Family::V6)).unwrap()
    })
    .err()
    .unwrap();
    assert_eq!(e.0, 440);
    let a = try_allocate(&mut h, client(2), ALICE, |e| {
        e.add(&AdditionalAddressFamily(Family::V6)).unwrap()
    })
    .map_err(|e| e.0)
    .unwrap();
    assert_eq!(a.relays.len(), 1);
    let aec = parse(&a.response)
        .get::<AddressErrorCode<'_>>()
        .unwrap()
        .unwrap();
    assert_eq!((aec.family, aec.code), (Family::V6, 440));
}

// ---------------------------------------------------------------------------------------------
// Refresh and expiry.

#[test]
fn refresh_extends_and_zero_deletes_at_once() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    create_permission(&mut h, c, &a, &[peer(1)]);
    let r = authed(&mut h, c, ALICE, &a.nonce, Method::REFRESH, |e| {
        e.add(&Lifetime(1800)).unwrap()
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(parse(&r).get::<Lifetime>().unwrap(), Some(Lifetime(1800)));
    h.advance(1000);
    assert_eq!(
        h.server.allocation_count(),
        1,
        "refreshed past the first 600 s"
    );
    let a = Allocated {
        nonce: nonce(&mut h, c),
        ..a
    };

    let (_, id) = h.relays.by_addr(a.relay).unwrap();
    let r = authed(&mut h, c, ALICE, &a.nonce, Method::REFRESH, |e| {
        e.add(&Lifetime(0)).unwrap()
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(parse(&r).get::<Lifetime>().unwrap(), Some(Lifetime(0)));
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.relays.open.is_empty(), "relay socket closed immediately");
    assert!(h.peer_sends_id(id, peer(1), b"late").is_none());
    assert_eq!(h.server.stats().dropped(DropReason::StaleRelay), 1);
    let r = authed(&mut h, c, ALICE, &a.nonce, Method::REFRESH, |_| {});
    assert_eq!(error_code(&r), Some(437));
}

#[test]
fn refresh_with_a_family_the_allocation_lacks_is_443() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    let r = authed(&mut h, c, ALICE, &a.nonce, Method::REFRESH, |e| {
        e.add(&RequestedAddressFamily(Family::V6)).unwrap()
    });
    assert_eq!(error_code(&r), Some(443));
}

#[test]
fn allocation_expires_at_its_lifetime() {
    let mut h = H::new();
    let c = client(1);
    allocate(&mut h, c, ALICE);
    assert!(h.server.poll_timeout().is_some());
    h.advance(599);
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(2);
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.relays.open.is_empty());
    assert_eq!(h.server.stats().allocations_active, 0);
    assert_eq!(h.server.stats().allocations_total, 1);
}

// ---------------------------------------------------------------------------------------------
// Permissions, channels, data.

#[test]
fn create_permission_with_several_peers_and_data_indications() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    assert_eq!(create_permission(&mut h, c, &a, &[peer(1), peer(2)]), None);
    assert_eq!(h.server.stats().permissions_active, 2);
    for p in [peer(1), peer(2)] {
        // Any port of a permitted IP may send (permissions are keyed by IP).
        let from = SocketAddr::new(p.ip(), 1234);
        let s = h.peer_sends(a.relay, from, b"hello client").unwrap();
        assert!(s.in_place, "Data indication built in the headroom");
        assert_eq!((s.via, s.to), (Via::Listener(LISTENER), c));
        let m = parse(&s.bytes);
        assert_eq!((m.method(), m.class()), (Method::DATA, Class::Indication));
        assert_eq!(
            m.get::<XorPeerAddress>().unwrap(),
            Some(XorPeerAddress(from))
        );
        assert_eq!(
            m.get::<Data<'_>>().unwrap(),
            Some(Data(&b"hello client"[..]))
        );
    }
    assert!(h.peer_sends(a.relay, peer(3), b"stranger").is_none());
    assert_eq!(h.server.stats().dropped(DropReason::NoPermission), 1);
}

#[test]
fn send_indication_forwards_the_data_in_place() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    let tid = h.tid();
    assert!(h
        .client_sends(c, &send_indication(tid, peer(1), b"early"))
        .is_none());
    assert_eq!(h.server.stats().dropped(DropReason::NoPermission), 1);
    create_permission(&mut h, c, &a, &[peer(1)]);
    let s = h
        .client_sends(c, &send_indication(tid, peer(1), b"to the peer"))
        .unwrap();
    assert!(s.in_place);
    assert_eq!(s.bytes, b"to the peer");
    let (handle, _) = h.relays.by_addr(a.relay).unwrap();
    assert_eq!((s.via, s.to), (Via::Relay(handle), peer(1)));
    // From a 5-tuple without an allocation: dropped.
    assert!(h
        .client_sends(client(9), &send_indication(tid, peer(1), b"x"))
        .is_none());
    assert_eq!(h.server.stats().dropped(DropReason::NoAllocation), 1);
}

#[test]
fn permission_expires_after_300_seconds() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    create_permission(&mut h, c, &a, &[peer(1)]);
    h.advance(299);
    assert!(h.peer_sends(a.relay, peer(1), b"x").is_some());
    h.advance(2);
    assert!(h.peer_sends(a.relay, peer(1), b"x").is_none());
    assert_eq!(h.server.stats().permissions_active, 0);
}

#[test]
fn channel_bind_and_channel_data_both_ways() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    assert_eq!(channel_bind(&mut h, c, &a, 0x4001, peer(1)), None);
    assert_eq!(h.server.stats().channels_active, 1);
    assert_eq!(
        h.server.stats().permissions_active,
        1,
        "ChannelBind installs a permission"
    );

    let payload: Vec<u8> = (0..=255).collect();
    let s = h.client_sends(c, &channel_data(0x4001, &payload)).unwrap();
    assert!(s.in_place);
    assert_eq!(s.bytes, payload, "the peer gets exactly the payload");
    assert_eq!(s.to, peer(1));

    let s = h.peer_sends(a.relay, peer(1), &payload).unwrap();
    assert!(s.in_place);
    assert_eq!(s.to, c);
    assert_eq!(s.bytes, channel_data(0x4001, &payload), "no padding on UDP");

    // Odd lengths: still no padding over UDP.
    let s = h.peer_sends(a.relay, peer(1), b"abc").unwrap();
    assert_eq!(s.bytes, channel_data(0x4001, b"abc"));

    // Unbound channel: dropped.
    assert!(h.client_sends(c, &channel_data(0x4002, b"x")).is_none());
    assert_eq!(h.server.stats().dropped(DropReason::NoChannel), 1);
    assert_eq!(h.server.stats().packets_to_peer, 1);
    assert_eq!(h.server.stats().packets_to_client, 2);
}

#[test]
fn channel_numbers_outside_the_range_are_400() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    for n in [0x0000, 0x3FFF, 0x5000, 0x7FFF, 0xFFFF] {
        assert_eq!(channel_bind(&mut h, c, &a, n, peer(1)), Some(400), "{n:#x}");
    }
    let r = authed(&mut h, c, ALICE, &a.nonce, Method::CHANNEL_BIND, |e| {
        e.add(&ChannelNumber::new(0x4000).unwrap()).unwrap()
    });
    assert_eq!(error_code(&r), Some(400), "no XOR-PEER-ADDRESS");
}

#[test]
fn channel_uniqueness_in_both_directions_and_rebind_refreshes() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    // A long allocation lifetime, so only channel state is under test.
    let r = authed(&mut h, c, ALICE, &a.nonce, Method::REFRESH, |e| {
        e.add(&Lifetime(3600)).unwrap()
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(channel_bind(&mut h, c, &a, 0x4001, peer(1)), None);
    assert_eq!(
        channel_bind(&mut h, c, &a, 0x4001, peer(2)),
        Some(400),
        "number taken"
    );
    assert_eq!(
        channel_bind(&mut h, c, &a, 0x4002, peer(1)),
        Some(400),
        "peer taken"
    );
    assert_eq!(channel_bind(&mut h, c, &a, 0x4002, peer(2)), None);
    // Re-binding the same pair refreshes it: bind at 0, rebind at 500, still alive at 1000.
    h.advance(290);
    create_permission(&mut h, c, &a, &[peer(1)]);
    h.advance(210);
    // Nonces last 600 s: take a fresh one as a client would after a 438.
    let a = Allocated {
        nonce: nonce(&mut h, c),
        ..a
    };
    assert_eq!(channel_bind(&mut h, c, &a, 0x4001, peer(1)), None);
    h.advance(250);
    create_permission(&mut h, c, &a, &[peer(1)]);
    h.advance(250);
    assert!(h.client_sends(c, &channel_data(0x4001, b"alive")).is_some());
    assert!(h.client_sends(c, &channel_data(0x4002, b"gone")).is_none());
}

#[test]
fn channel_expires_after_600_seconds() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    let r = authed(&mut h, c, ALICE, &a.nonce, Method::REFRESH, |e| {
        e.add(&Lifetime(3600)).unwrap()
    });
    assert_eq!(error_code(&r), None);
    channel_bind(&mut h, c, &a, 0x4001, peer(1));
    for _ in 0..2 {
        h.advance(290);
        create_permission(&mut h, c, &a, &[peer(1)]);
    }
    h.advance(19); // t = 599
    assert!(h.client_sends(c, &channel_data(0x4001, b"x")).is_some());
    h.advance(2);
    assert!(h.client_sends(c, &channel_data(0x4001, b"x")).is_none());
    assert_eq!(h.server.stats().channels_active, 0);
    // The peer's packets now arrive as Data indications (the permission is still alive).
    let s = h.peer_sends(a.relay, peer(1), b"y").unwrap();
    assert_eq!(parse(&s.bytes).method(), Method::DATA);
}

#[test]
fn peer_family_mismatch_is_443() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    let v6: SocketAddr = "[2606:4700::1]:9000".parse().unwrap();
    assert_eq!(create_permission(&mut h, c, &a, &[v6]), Some(443));
    assert_eq!(channel_bind(&mut h, c, &a, 0x4001, v6), Some(443));
}

#[test]
fn nothing_reaches_another_users_allocation() {
    let mut h = H::new();
    let (ca, cb) = (client(1), client(2));
    let a = allocate(&mut h, ca, ALICE);
    let b = allocate(&mut h, cb, BOB);
    assert_ne!(a.relay, b.relay);
    channel_bind(&mut h, ca, &a, 0x4001, peer(1));
    // Bob's client sending on Alice's channel number reaches nothing of Alice's.
    assert!(h.client_sends(cb, &channel_data(0x4001, b"x")).is_none());
    // Bob cannot refresh or delete Alice's allocation from his own 5-tuple: the request
    // applies to his own.
    let r = authed(&mut h, cb, BOB, &b.nonce, Method::REFRESH, |e| {
        e.add(&Lifetime(0)).unwrap()
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(h.server.allocation_count(), 1);
    assert!(h.relays.by_addr(a.relay).is_some());
    // A peer's packet to Alice's relay goes to Alice's client only.
    let s = h.peer_sends(a.relay, peer(1), b"to alice").unwrap();
    assert_eq!(s.to, ca);
}

#[test]
fn stale_relay_ids_do_not_reach_a_reused_slot() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    let (_, old) = h.relays.by_addr(a.relay).unwrap();
    authed(&mut h, c, ALICE, &a.nonce, Method::REFRESH, |e| {
        e.add(&Lifetime(0)).unwrap()
    });
    let b = allocate(&mut h, c, ALICE);
    create_permission(&mut h, c, &b, &[peer(1)]);
    assert!(h.peer_sends_id(old, peer(1), b"straggler").is_none());
    assert!(h.peer_sends(b.relay, peer(1), b"fresh").is_some());
}

// ---------------------------------------------------------------------------------------------
// Quotas.

#[test]
fn allocation_quotas_per_user_and_total_are_486() {
    let mut h = H::with(|c| {
        c.max_allocations_per_user = 2;
        c.max_allocations = 3;
    });
    allocate(&mut h, client(1), ALICE);
    allocate(&mut h, client(2), ALICE);
    assert_eq!(
        try_allocate(&mut h, client(3), ALICE, |_| {})
            .err()
            .unwrap()
            .0,
        486
    );
    allocate(&mut h, client(4), BOB);
    assert_eq!(
        try_allocate(&mut h, client(5), BOB, |_| {})
            .err()
            .unwrap()
            .0,
        486
    );
    // Freeing one of Alice's makes room again.
    h.advance(601);
    allocate(&mut h, client(6), ALICE);
}

#[test]
fn permission_and_channel_quotas_are_508() {
    let mut h = H::with(|c| {
        c.max_permissions_per_allocation = 2;
        c.max_channels_per_allocation = 1;
    });
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    assert_eq!(create_permission(&mut h, c, &a, &[peer(1), peer(2)]), None);
    assert_eq!(create_permission(&mut h, c, &a, &[peer(3)]), Some(508));
    assert_eq!(
        create_permission(&mut h, c, &a, &[peer(1)]),
        None,
        "refresh is fine"
    );
    assert_eq!(channel_bind(&mut h, c, &a, 0x4001, peer(1)), None);
    assert_eq!(channel_bind(&mut h, c, &a, 0x4002, peer(2)), Some(508));
}

#[test]
fn relay_ports_exhausted_is_508_and_ports_in_use_are_skipped() {
    let mut h = H::with(|c| {
        c.port_min = 50000;
        c.port_max = 50002;
    });
    h.relays.in_use.insert(50001);
    let a = allocate(&mut h, client(1), ALICE);
    let b = allocate(&mut h, client(2), ALICE);
    let mut ports = [a.relay.port(), b.relay.port()];
    ports.sort_unstable();
    assert_eq!(ports, [50000, 50002]);
    assert_eq!(
        try_allocate(&mut h, client(3), ALICE, |_| {})
            .err()
            .unwrap()
            .0,
        508
    );
}

#[test]
fn out_of_descriptors_is_a_counted_508() {
    let mut h = H::new();
    h.relays.exhausted = true;
    assert_eq!(
        try_allocate(&mut h, client(1), ALICE, |_| {})
            .err()
            .unwrap()
            .0,
        508
    );
    assert_eq!(h.server.stats().relay_open_failures, 1);
    assert_eq!(h.server.allocation_count(), 0);
    h.relays.exhausted = false;
    allocate(&mut h, client(1), ALICE);
}

#[test]
fn bandwidth_cap_drops_and_counts_the_excess() {
    let mut h = H::with(|c| c.bandwidth_limit = Some(1000));
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    channel_bind(&mut h, c, &a, 0x4001, peer(1));
    let payload = [7u8; 100];
    let passed = (0..20)
        .filter(|_| h.client_sends(c, &channel_data(0x4001, &payload)).is_some())
        .count();
    assert_eq!(passed, 10, "1000 bytes of burst");
    assert_eq!(h.server.stats().dropped(DropReason::Bandwidth), 10);
    h.advance(1);
    assert!(
        h.client_sends(c, &channel_data(0x4001, &payload)).is_some(),
        "refilled"
    );
}

#[test]
fn draining_server_refuses_new_allocations() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    h.server.drain();
    assert_eq!(
        try_allocate(&mut h, client(2), ALICE, |_| {})
            .err()
            .unwrap()
            .0,
        508
    );
    // Existing allocations keep working.
    assert_eq!(create_permission(&mut h, c, &a, &[peer(1)]), None);
}

// ---------------------------------------------------------------------------------------------
// Peer policy.

/// The first and last address of every range refused by default.
const REFUSED: &[&str] = &[
    "0.0.0.0",
    "0.255.255.255",
    "127.0.0.1",
    "127.255.255.255",
    "10.0.0.0",
    "10.255.255.255",
    "100.64.0.0",
    "100.127.255.255",
    "169.254.0.0",
    "169.254.255.255",
    "172.16.0.0",
    "172.31.255.255",
    "192.0.0.0",
    "192.0.0.255",
    "192.0.2.0",
    "192.0.2.255",
    "192.88.99.0",
    "192.88.99.255",
    "192.168.0.0",
    "192.168.255.255",
    "198.18.0.0",
    "198.19.255.255",
    "198.51.100.0",
    "198.51.100.255",
    "203.0.113.0",
    "203.0.113.255",
    "224.0.0.0",
    "239.255.255.255",
    "240.0.0.0",
    "255.255.255.255",
    "::",
    "::1",
    "64:ff9b::",
    "64:ff9b::ffff:ffff",
    "100::",
    "100::ffff:ffff:ffff:ffff",
    "2001::",
    "2001:0:ffff:ffff:ffff:ffff:ffff:ffff",
    "2001:db8::",
    "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
    "2002::",
    "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fc00::",
    "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::",
    "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "ff00::",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    // IPv4-mapped IPv6 forms of refused IPv4 addresses: canonicalised first.
    "::ffff:127.0.0.1",
    "::ffff:10.1.2.3",
    "::ffff:0.0.0.0",
    "::ffff:192.168.1.1",
];

fn dual() -> H {
    H::with(|c| c.relay_v6 = Some(IpAddr::V6(relay_v6())))
}

fn dual_alloc(h: &mut H, c: SocketAddr) -> Allocated {
    try_allocate(h, c, ALICE, |e| {
        e.add(&AdditionalAddressFamily(Family::V6)).unwrap()
    })
    .map_err(|e| e.0)
    .unwrap()
}

#[test]
fn default_policy_refuses_every_special_range() {
    let mut h = dual();
    let c = client(1);
    let a = dual_alloc(&mut h, c);
    for ip in REFUSED {
        let p = SocketAddr::new(ip.parse().unwrap(), 5000);
        assert_eq!(
            create_permission(&mut h, c, &a, &[p]),
            Some(403),
            "CreatePermission {ip}"
        );
        assert_eq!(
            channel_bind(&mut h, c, &a, 0x4000, p),
            Some(403),
            "ChannelBind {ip}"
        );
        let tid = h.tid();
        assert!(
            h.client_sends(c, &send_indication(tid, p, b"x")).is_none(),
            "Send {ip}"
        );
    }
    assert_eq!(h.server.stats().permissions_active, 0);
    assert_eq!(
        h.server.stats().dropped(DropReason::PeerRefused),
        REFUSED.len() as u64
    );
    // Public addresses of both families are fine.
    for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450::1"] {
        let p = SocketAddr::new(ip.parse().unwrap(), 5000);
        assert_eq!(create_permission(&mut h, c, &a, &[p]), None, "{ip}");
    }
}

#[test]
fn a_refused_peer_among_several_installs_nothing() {
    let mut h = H::new();
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    let bad: SocketAddr = "10.0.0.1:1".parse().unwrap();
    assert_eq!(create_permission(&mut h, c, &a, &[peer(1), bad]), Some(403));
    assert_eq!(h.server.stats().permissions_active, 0);
}

#[test]
fn operator_allow_deny_and_the_loopback_switch() {
    let mut h = H::with(|c| {
        c.peer_policy = policy(
            vec![
                "10.1.0.0/16".parse::<Cidr>().unwrap(),
                "203.0.113.0/24".parse::<Cidr>().unwrap(),
            ],
            vec!["8.8.4.0/24".parse::<Cidr>().unwrap()],
            true,
        )
    });
    let c = client(1);
    let a = allocate(&mut h, c, ALICE);
    let ok: SocketAddr = "10.1.2.3:9".parse().unwrap();
    let lo: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let other_private: SocketAddr = "10.2.0.1:9".parse().unwrap();
    assert_eq!(create_permission(&mut h, c, &a, &[ok]), None);
    assert_eq!(create_permission(&mut h, c, &a, &[lo]), None);
    assert_eq!(
        create_permission(&mut h, c, &a, &[other_private]),
        Some(403)
    );
    assert_eq!(
        create_permission(&mut h, c, &a, &[peer(1)]),
        Some(403),
        "operator deny"
    );
    // The server's own listening socket is refused even when an allow list covers its IP;
    // other ports of that IP are not the server's socket.
    assert_eq!(
        channel_bind(&mut h, c, &a, 0x4001, server_addr()),
        Some(403)
    );
    let same_ip = SocketAddr::new(server_addr().ip(), 9999);
    assert_eq!(channel_bind(&mut h, c, &a, 0x4001, same_ip), None);
}

// ---------------------------------------------------------------------------------------------
// The project's own sans-IO client against the server, in memory.

mod with_client {
    use super::*;
    use uturn_proto::client::{ClientConfig, Event, Input, RelayFamily, TurnClient};

    /// Delivers everything the client wants to send to the server, and the server's answers
    /// back to the client; returns what went to peers.
    fn pump(h: &mut H, cl: &mut TurnClient, c: SocketAddr) -> Vec<Sent> {
        let mut to_peers = Vec::new();
        let mut buf = [0u8; 1500];
        while let Some(t) = cl.poll_transmit(&mut buf) {
            assert_eq!(t.to, server_addr());
            let Some(s) = h.client_sends(c, &buf[..t.len]) else {
                continue;
            };
            if s.to == c {
                let now = h.now().instant;
                let input = cl.handle_input(now, server_addr(), &s.bytes);
                assert!(!matches!(input, Input::Ignored(_)), "{input:?}");
            } else {
                to_peers.push(s);
            }
        }
        to_peers
    }

    fn events(cl: &mut TurnClient) -> Vec<Event> {
        std::iter::from_fn(|| cl.poll_event()).collect()
    }

    #[test]
    fn allocate_permission_channel_data_and_delete() {
        let mut h = H::new();
        let c = client(1);
        let cfg = ClientConfig::new(server_addr(), "alice", "alice-pass");
        let mut cl = TurnClient::new(cfg, [5u8; 32]).unwrap();
        let now = h.now().instant;
        cl.allocate(now, RelayFamily::Ipv4).unwrap();
        pump(&mut h, &mut cl, c);
        let relayed = match events(&mut cl).as_slice() {
            [Event::Allocated(a)] => a.relayed,
            other => panic!("{other:?}"),
        };
        assert_eq!(h.server.allocation_count(), 1);

        cl.create_permission(now, &[peer(1).ip()]).unwrap();
        let ch = cl.channel_bind(now, peer(2)).unwrap();
        pump(&mut h, &mut cl, c);
        let ev = events(&mut cl);
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::PermissionCreated { .. })),
            "{ev:?}"
        );
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::ChannelBound { channel, .. } if *channel == ch)),
            "{ev:?}"
        );

        // Client -> peers: a Send indication to peer 1 and ChannelData to peer 2.
        let mut out = [0u8; 1500];
        let t = cl.send(peer(1), b"via send", &mut out).unwrap();
        let s = h.client_sends(c, &out[..t.len]).unwrap();
        assert_eq!((s.to, s.bytes.as_slice()), (peer(1), &b"via send"[..]));
        let t = cl.send(peer(2), b"via channel", &mut out).unwrap();
        let s = h.client_sends(c, &out[..t.len]).unwrap();
        assert_eq!((s.to, s.bytes.as_slice()), (peer(2), &b"via channel"[..]));

        // Peers -> client: a Data indication and ChannelData, both decoded by the client.
        for (p, msg) in [(peer(1), &b"data ind"[..]), (peer(2), b"channel back")] {
            let s = h.peer_sends(relayed, p, msg).unwrap();
            match cl.handle_input(now, server_addr(), &s.bytes) {
                Input::Data { peer, payload } => assert_eq!((peer, payload), (p, msg)),
                other => panic!("{other:?}"),
            }
        }

        cl.deallocate(now).unwrap();
        pump(&mut h, &mut cl, c);
        assert!(events(&mut cl)
            .iter()
            .any(|e| matches!(e, Event::Deallocated)));
        assert_eq!(h.server.allocation_count(), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 5780 NAT behaviour discovery.

mod nat_discovery {
    use super::*;
    use uturn_proto::turn::config::NatDiscovery;

    fn binding(h: &mut H, change: Option<ChangeRequest>, port: Option<u16>) -> Sent {
        let tid = h.tid();
        let req = request(Method::BINDING, tid, None, |e| {
            if let Some(c) = change {
                e.add(&c).unwrap();
            }
            if let Some(p) = port {
                e.add(&ResponsePort(p)).unwrap();
            }
        });
        h.client_sends(client(1), &req).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn off_by_default_and_change_request_is_420() {
        let mut h = H::new();
        let r = binding(
            &mut h,
            Some(ChangeRequest {
                change_ip: true,
                change_port: false,
            }),
            None,
        );
        assert_eq!(error_code(&r.bytes), Some(420));
        let m = parse(&r.bytes);
        let list: Vec<u16> = m
            .get::<UnknownAttributes<'_>>()
            .unwrap()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(list, vec![types::CHANGE_REQUEST]);
        let r = binding(&mut h, None, None);
        let m = parse(&r.bytes);
        assert!(
            m.get::<OtherAddress>().unwrap().is_none(),
            "no OTHER-ADDRESS when off"
        );
        assert!(m.get::<ResponseOrigin>().unwrap().is_none());
    }

    #[test]
    fn change_request_and_response_port_pick_socket_and_destination() {
        let mut h = H::with(|c| {
            c.nat_discovery = Some(NatDiscovery {
                listeners: vec![
                    (LISTENER, server_addr()),
                    (8, addr("203.0.113.1:3479")),
                    (9, addr("203.0.113.2:3478")),
                    (10, addr("203.0.113.2:3479")),
                ],
            })
        });
        let cases = [
            (None, LISTENER, "203.0.113.1:3478"),
            (Some((false, false)), LISTENER, "203.0.113.1:3478"),
            (Some((false, true)), 8, "203.0.113.1:3479"),
            (Some((true, false)), 9, "203.0.113.2:3478"),
            (Some((true, true)), 10, "203.0.113.2:3479"),
        ];
        for (change, via, origin) in cases {
            let change = change.map(|(change_ip, change_port)| ChangeRequest {
                change_ip,
                change_port,
            });
            let r = binding(&mut h, change, None);
            assert_eq!(r.via, Via::Listener(via), "{change:?}");
            assert_eq!(r.to, client(1));
            let m = parse(&r.bytes);
            assert_eq!(
                m.get::<XorMappedAddress>().unwrap(),
                Some(XorMappedAddress(client(1)))
            );
            assert_eq!(
                m.get::<ResponseOrigin>().unwrap(),
                Some(ResponseOrigin(addr(origin)))
            );
            assert_eq!(
                m.get::<OtherAddress>().unwrap(),
                Some(OtherAddress(addr("203.0.113.2:3479")))
            );
        }
        let r = binding(&mut h, None, Some(5555));
        assert_eq!(r.to, SocketAddr::new(client(1).ip(), 5555), "RESPONSE-PORT");
    }
}

#[test]
fn relay_socket_budget_is_a_counted_508() {
    let mut h = H::with(|c| c.max_relay_sockets = 2);
    let a = allocate(&mut h, client(1), ALICE);
    allocate(&mut h, client(2), ALICE);
    assert_eq!(
        try_allocate(&mut h, client(3), ALICE, |_| {})
            .err()
            .unwrap()
            .0,
        508
    );
    assert_eq!(h.server.stats().relay_open_failures, 1);
    let r = authed(&mut h, client(1), ALICE, &a.nonce, Method::REFRESH, |e| {
        e.add(&Lifetime(0)).unwrap()
    });
    assert_eq!(error_code(&r), None);
    allocate(&mut h, client(3), ALICE);
}

// ---------------------------------------------------------------------------------------------
// TURN over TCP/TLS and RFC 6062 TCP relaying.

mod tcp_relay {
    use super::*;
    use uturn_proto::stream::{Frame, Framer};
    use uturn_proto::turn::connection_id_worker;

    /// A client connection as the driver names it: its token, the client's address and the
    /// transport.
    #[derive(Copy, Clone, Debug)]
    struct Conn {
        token: u32,
        client: SocketAddr,
        transport: Transport,
    }

    fn conn(token: u32, client: SocketAddr, transport: Transport) -> Conn {
        Conn {
            token,
            client,
            transport,
        }
    }

    fn tcp_h() -> H {
        tcp_h_with(|_| {})
    }

    fn tcp_h_with(f: impl FnOnce(&mut ServerConfig)) -> H {
        let mut h = H::with(f);
        h.relays.tcp = Some(FakeTcp::default());
        h
    }

    impl H {
        fn tcp(&self) -> &FakeTcp {
            self.relays.tcp.as_ref().unwrap()
        }

        /// One framed message from a client connection.
        fn send_on(&mut self, c: Conn, bytes: &[u8]) -> Option<Sent> {
            let buf = bytes.to_vec();
            let tuple = FiveTuple {
                client: c.client,
                server: server_addr(),
                transport: c.transport,
            };
            let now = self.now();
            let t = self.server.handle_client(
                now,
                c.token,
                tuple,
                &buf,
                &mut self.out,
                &mut self.relays,
            );
            self.collect(t, &buf)
        }

        /// Everything the server decided to send later (Connect responses, ConnectionAttempt).
        fn deferred(&mut self) -> Vec<Sent> {
            let mut v = Vec::new();
            while let Some(t) = self.server.poll_transmit(&mut self.out) {
                v.push(self.collect(Some(t), &[]).unwrap());
            }
            v
        }

        fn connected(&mut self, id: ConnectionId, ok: bool) {
            let now = self.now();
            let tcp = self.relays.tcp.as_mut().unwrap();
            if ok {
                tcp.open.insert(id);
            } else {
                // The driver closes a failed connection itself.
                tcp.open.remove(&id);
            }
            self.server.tcp_connected(now, id, ok, &mut self.relays);
        }

        fn accepted(&mut self, relay: SocketAddr, from: SocketAddr) -> Option<ConnectionId> {
            let (_, id) = self
                .tcp()
                .listening
                .values()
                .copied()
                .find(|(a, _)| *a == relay)
                .expect("listening on the relayed address");
            let now = self.now();
            let got = self.server.tcp_accepted(now, id, from);
            if let Some(c) = got {
                self.relays.tcp.as_mut().unwrap().open.insert(c);
            }
            got
        }
    }

    fn nonce_on(h: &mut H, c: Conn) -> String {
        let tid = h.tid();
        let req = request(Method::ALLOCATE, tid, None, |e| {
            e.add(&RequestedTransport::TCP).unwrap()
        });
        let resp = h.send_on(c, &req).expect("401");
        assert_eq!(error_code(&resp.bytes), Some(401));
        let m = parse(&resp.bytes);
        m.get::<Nonce<'_>>().unwrap().unwrap().0.to_string()
    }

    /// An authenticated request on a connection; the response, checked to be one.
    fn authed_on(
        h: &mut H,
        c: Conn,
        cr: Cred<'_>,
        nonce: &str,
        method: Method,
        attrs: impl FnOnce(&mut Encoder<'_>),
    ) -> Option<(TransactionId, Sent)> {
        let tid = h.tid();
        let req = request(method, tid, Some((&cr, nonce)), attrs);
        let resp = h.send_on(c, &req)?;
        assert_eq!(resp.to, c.client);
        assert_eq!(resp.via, Via::Listener(c.token));
        let m = parse(&resp.bytes);
        assert_eq!(m.transaction_id(), tid);
        assert_eq!(m.method(), method);
        m.verify_integrity(key_of(&cr).as_bytes())
            .expect("signed with the requester's key");
        Some((tid, resp))
    }

    struct TcpAlloc {
        control: Conn,
        relay: SocketAddr,
        nonce: String,
    }

    fn allocate_tcp(h: &mut H, control: Conn) -> TcpAlloc {
        let udp_sockets = h.relays.open.len();
        let nonce = nonce_on(h, control);
        let (_, r) = authed_on(h, control, ALICE, &nonce, Method::ALLOCATE, |e| {
            e.add(&RequestedTransport::TCP).unwrap()
        })
        .unwrap();
        assert_eq!(error_code(&r.bytes), None, "TCP allocation granted");
        let m = parse(&r.bytes);
        assert!(
            m.get::<ReservationToken>().unwrap().is_none(),
            "RFC 6062 5.1 rule 5"
        );
        let relay = m.get::<XorRelayedAddress>().unwrap().unwrap().0;
        assert!(
            h.tcp().listening.values().any(|(a, _)| *a == relay),
            "the server listens on the relayed address"
        );
        assert_eq!(
            h.relays.open.len(),
            udp_sockets,
            "no UDP socket for a TCP allocation"
        );
        TcpAlloc {
            control,
            relay,
            nonce,
        }
    }

    /// Sends Connect; `Some(code)` when answered at once with an error, `None` when the answer
    /// waits for the connection (the request's transaction id is returned then).
    fn connect(h: &mut H, a: &TcpAlloc, p: SocketAddr) -> Result<TransactionId, u16> {
        match authed_on(h, a.control, ALICE, &a.nonce, Method::CONNECT, |e| {
            e.add(&XorPeerAddress(p)).unwrap()
        }) {
            Some((_, r)) => Err(error_code(&r.bytes).expect("an immediate answer is an error")),
            None => Ok(h.tid_last()),
        }
    }

    impl H {
        fn tid_last(&self) -> TransactionId {
            let mut t = [0u8; 12];
            t[..8].copy_from_slice(&self.tid.to_be_bytes());
            TransactionId(t)
        }
    }

    fn connection_bind(h: &mut H, data: Conn, cr: Cred<'_>, id: ConnectionId) -> Option<u16> {
        let n = nonce_on(h, data);
        let (_, r) = authed_on(h, data, cr, &n, Method::CONNECTION_BIND, |e| {
            e.add(&id).unwrap()
        })
        .expect("ConnectionBind is answered at once");
        error_code(&r.bytes)
    }

    fn last_connect(h: &H) -> (SocketAddr, SocketAddr, ConnectionId) {
        *h.tcp().connects.last().expect("a connect was ordered")
    }

    fn control(t: Transport) -> Conn {
        conn(100, client(1), t)
    }

    fn data_conn(token: u32, t: Transport) -> Conn {
        conn(
            token,
            SocketAddr::new(client(1).ip(), 50000 + token as u16),
            t,
        )
    }

    /// RFC 6062 section 4.3 and 5.2 from the client's side, over TCP and over TLS: Connect,
    /// the deferred success with CONNECTION-ID, ConnectionBind on a new connection, the splice.
    #[test]
    fn connect_then_connection_bind_splices_over_tcp_and_tls() {
        for t in [Transport::Tcp, Transport::Tls] {
            let mut h = tcp_h();
            let a = allocate_tcp(&mut h, control(t));
            let tid = connect(&mut h, &a, peer(1)).expect("answered later");
            let (from, to, id) = last_connect(&h);
            assert_eq!(
                (from, to),
                (a.relay, peer(1)),
                "connects from the relayed address"
            );
            assert_eq!(connection_id_worker(id), 0, "the worker's byte tops the id");
            assert!(h.deferred().is_empty(), "nothing until the driver reports");

            h.connected(id, true);
            let out = h.deferred();
            assert_eq!(out.len(), 1);
            let r = &out[0];
            assert_eq!((r.via, r.to), (Via::Listener(100), client(1)));
            let m = parse(&r.bytes);
            assert_eq!((m.method(), m.class()), (Method::CONNECT, Class::Success));
            assert_eq!(m.transaction_id(), tid);
            assert_eq!(m.get::<ConnectionId>().unwrap(), Some(id));
            m.verify_integrity(key_of(&ALICE).as_bytes()).unwrap();
            m.check_fingerprint().unwrap();

            let data = data_conn(101, t);
            assert_eq!(connection_bind(&mut h, data, ALICE, id), None);
            assert_eq!(h.tcp().splices, vec![(101, id)]);
            assert_eq!(h.server.stats().tcp_connections_active, 1);
            assert_eq!(h.server.stats().requests_of(Method::CONNECT, None), 1);
            assert_eq!(
                h.server.stats().requests_of(Method::CONNECTION_BIND, None),
                1
            );

            // The id is spent: a second bind is 400, and the spliced pair still counts as a
            // connection to peer 1 (446).
            assert_eq!(
                connection_bind(&mut h, data_conn(102, t), ALICE, id),
                Some(400)
            );
            assert_eq!(connect(&mut h, &a, peer(1)), Err(446));
            // A connection to another peer is fine meanwhile.
            assert!(connect(&mut h, &a, peer(2)).is_ok());

            // The splice ends (either side closed): peer 1 can be connected to again.
            h.server.tcp_closed(id);
            h.relays.tcp.as_mut().unwrap().open.remove(&id);
            assert!(connect(&mut h, &a, peer(1)).is_ok());
            let (_, _, id2) = last_connect(&h);
            assert_ne!(id2, id);
        }
    }

    /// coturn's uclient (and other clients) send ConnectionBind on the new data connection with
    /// the nonce of the control connection: on streams a nonce holds for the client's IP, any
    /// port. Over UDP it stays bound to the port too.
    #[test]
    fn the_control_connections_nonce_authenticates_a_data_connection() {
        let mut h = tcp_h();
        let a = allocate_tcp(&mut h, control(Transport::Tcp));
        connect(&mut h, &a, peer(1)).expect("answered later");
        let (_, _, id) = last_connect(&h);
        h.connected(id, true);
        h.deferred();
        let data = data_conn(101, Transport::Tcp);
        assert_ne!(data.client.port(), a.control.client.port());
        let (_, r) = authed_on(
            &mut h,
            data,
            ALICE,
            &a.nonce,
            Method::CONNECTION_BIND,
            |e| e.add(&id).unwrap(),
        )
        .expect("answered at once");
        assert_eq!(error_code(&r.bytes), None, "no 438 for the control nonce");
        assert_eq!(h.tcp().splices, vec![(101, id)]);
        // Another IP is another matter.
        let stranger = conn(
            102,
            SocketAddr::new("192.0.2.99".parse().unwrap(), 4000),
            Transport::Tcp,
        );
        let tid = h.tid();
        let req = request(
            Method::CONNECTION_BIND,
            tid,
            Some((&ALICE, &a.nonce)),
            |e| e.add(&id).unwrap(),
        );
        let r = h.send_on(stranger, &req).expect("answered at once");
        assert_eq!(error_code(&r.bytes), Some(438));
    }

    #[test]
    fn connect_to_a_peer_already_connecting_is_446_and_a_failed_connect_is_447() {
        let mut h = tcp_h();
        let a = allocate_tcp(&mut h, control(Transport::Tcp));
        let tid = connect(&mut h, &a, peer(1)).unwrap();
        let (_, _, id) = last_connect(&h);
        assert_eq!(connect(&mut h, &a, peer(1)), Err(446));
        assert_eq!(h.tcp().connects.len(), 1, "no second connect ordered");

        h.connected(id, false);
        let out = h.deferred();
        assert_eq!(out.len(), 1);
        let m = parse(&out[0].bytes);
        assert_eq!(m.transaction_id(), tid);
        assert_eq!(m.class(), Class::Error);
        assert_eq!(error_code(&out[0].bytes), Some(447));
        m.verify_integrity(key_of(&ALICE).as_bytes()).unwrap();
        assert_eq!(h.server.stats().requests_of(Method::CONNECT, Some(447)), 1);
        assert_eq!(h.server.stats().tcp_connections_active, 0);
        // A late or repeated report changes nothing.
        h.connected(id, true);
        assert!(h.deferred().is_empty());
        assert_eq!(h.tcp().closed, vec![id], "a stray connection is closed");

        // Failed connections do not count against 446.
        assert!(connect(&mut h, &a, peer(1)).is_ok());
    }

    /// RFC 6062 section 5.2: the connect timeout is at least 30 s, then 447; a connection
    /// without ConnectionBind is closed after 30 s (sections 5.2 and 5.3).
    #[test]
    fn connect_timeout_is_447_and_unbound_connections_close_after_30_seconds() {
        // Configured shorter than the RFC allows: the server keeps to 30 s.
        let mut h = tcp_h_with(|c| c.tcp_connect_timeout = Duration::from_secs(5));
        let a = allocate_tcp(&mut h, control(Transport::Tcp));
        let tid = connect(&mut h, &a, peer(1)).unwrap();
        let (_, _, stalled) = last_connect(&h);
        h.advance(29);
        assert!(h.deferred().is_empty(), "still waiting at 29 s");
        assert!(h.tcp().closed.is_empty());
        h.advance(2);
        let out = h.deferred();
        assert_eq!(out.len(), 1);
        assert_eq!(parse(&out[0].bytes).transaction_id(), tid);
        assert_eq!(error_code(&out[0].bytes), Some(447));
        assert_eq!(h.tcp().closed, vec![stalled], "the attempt is abandoned");

        // Connected, but never bound.
        connect(&mut h, &a, peer(2)).unwrap();
        let (_, _, id) = last_connect(&h);
        h.connected(id, true);
        assert_eq!(h.deferred().len(), 1);
        h.advance(29);
        assert!(!h.tcp().closed.contains(&id));
        h.advance(2);
        assert!(h.tcp().closed.contains(&id), "closed after 30 s unbound");
        assert_eq!(
            connection_bind(&mut h, data_conn(101, Transport::Tcp), ALICE, id),
            Some(400)
        );
        assert_eq!(h.server.stats().tcp_connections_active, 0);
    }

    /// RFC 6062 section 5.3: a peer connecting to the relayed address needs a permission; then
    /// the client hears of it in a ConnectionAttempt and binds it.
    #[test]
    fn peer_initiated_connection_attempt_and_bind() {
        let mut h = tcp_h();
        let a = allocate_tcp(&mut h, control(Transport::Tls));
        assert_eq!(h.accepted(a.relay, peer(1)), None, "no permission: closed");
        assert_eq!(h.server.stats().tcp_connections_refused, 1);
        assert!(h.deferred().is_empty());

        let (_, r) = authed_on(
            &mut h,
            a.control,
            ALICE,
            &a.nonce,
            Method::CREATE_PERMISSION,
            |e| e.add(&XorPeerAddress(peer(1))).unwrap(),
        )
        .unwrap();
        assert_eq!(error_code(&r.bytes), None);
        // Any port of a permitted IP may connect (permissions are per IP).
        let from = SocketAddr::new(peer(1).ip(), 61000);
        let id = h.accepted(a.relay, from).expect("accepted");
        let out = h.deferred();
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!((s.via, s.to), (Via::Listener(100), client(1)));
        let m = parse(&s.bytes);
        assert_eq!(
            (m.method(), m.class()),
            (Method::CONNECTION_ATTEMPT, Class::Indication)
        );
        assert_eq!(
            m.get::<XorPeerAddress>().unwrap(),
            Some(XorPeerAddress(from))
        );
        assert_eq!(m.get::<ConnectionId>().unwrap(), Some(id));

        // Someone else's credentials cannot take the connection: 441.
        assert_eq!(
            connection_bind(&mut h, data_conn(101, Transport::Tls), BOB, id),
            Some(441)
        );
        assert_eq!(
            connection_bind(&mut h, data_conn(102, Transport::Tls), ALICE, id),
            None
        );
        assert_eq!(h.tcp().splices, vec![(102, id)]);

        // Not while the permission has lapsed.
        h.advance(301);
        assert_eq!(h.accepted(a.relay, from), None);
    }

    /// The peer policy holds for TCP peers: 403 before any connection is attempted.
    #[test]
    fn connect_to_refused_peers_is_403_and_to_port_0_is_400() {
        let mut h = tcp_h();
        let a = allocate_tcp(&mut h, control(Transport::Tcp));
        for p in [
            "0.0.0.0:80",
            "127.0.0.1:80",
            "10.1.2.3:443",
            "192.168.1.1:22",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert_eq!(connect(&mut h, &a, p.parse().unwrap()), Err(403), "{p}");
        }
        // The server's own listening socket.
        assert_eq!(connect(&mut h, &a, server_addr()), Err(403));
        assert_eq!(connect(&mut h, &a, "8.8.4.4:0".parse().unwrap()), Err(400));
        // An IPv6 peer for an IPv4-only allocation.
        assert_eq!(
            connect(&mut h, &a, "[2606:4700::1]:443".parse().unwrap()),
            Err(443)
        );
        let (_, r) =
            authed_on(&mut h, a.control, ALICE, &a.nonce, Method::CONNECT, |_| {}).unwrap();
        assert_eq!(error_code(&r.bytes), Some(400), "no XOR-PEER-ADDRESS");
        assert!(h.tcp().connects.is_empty());

        // Loopback when the operator allows it (tests only).
        let mut h = tcp_h_with(|c| c.peer_policy = policy(vec![], vec![], true));
        let a = allocate_tcp(&mut h, control(Transport::Tcp));
        assert!(connect(&mut h, &a, "127.0.0.1:8080".parse().unwrap()).is_ok());
    }

    #[test]
    fn tcp_allocation_rules_of_rfc_6062_section_5_1() {
        // Without the driver's TCP side: 442.
        let mut h = H::new();
        let c = control(Transport::Tcp);
        let n = nonce_on(&mut h, c);
        let (_, r) = authed_on(&mut h, c, ALICE, &n, Method::ALLOCATE, |e| {
            e.add(&RequestedTransport::TCP).unwrap()
        })
        .unwrap();
        assert_eq!(error_code(&r.bytes), Some(442));

        // DONT-FRAGMENT, EVEN-PORT, RESERVATION-TOKEN: 400.
        let mut h = tcp_h();
        let n = nonce_on(&mut h, c);
        let attrs: [&dyn Fn(&mut Encoder<'_>); 3] = [
            &|e| e.add(&DontFragment).unwrap(),
            &|e| e.add(&EvenPort { reserve: false }).unwrap(),
            &|e| e.add(&ReservationToken([1; 8])).unwrap(),
        ];
        for add in attrs {
            let (_, r) = authed_on(&mut h, c, ALICE, &n, Method::ALLOCATE, |e| {
                e.add(&RequestedTransport::TCP).unwrap();
                add(e);
            })
            .unwrap();
            assert_eq!(error_code(&r.bytes), Some(400));
        }
        assert_eq!(h.server.allocation_count(), 0);
        assert!(h.tcp().listening.is_empty());
    }

    #[test]
    fn tcp_requests_in_the_wrong_place_are_refused() {
        let mut h = tcp_h();
        // Connect over a connection without an allocation: 437.
        let c = control(Transport::Tcp);
        let n = nonce_on(&mut h, c);
        let (_, r) = authed_on(&mut h, c, ALICE, &n, Method::CONNECT, |e| {
            e.add(&XorPeerAddress(peer(1))).unwrap()
        })
        .unwrap();
        assert_eq!(error_code(&r.bytes), Some(437));

        // Connect on a UDP allocation: 400. ConnectionBind over UDP: 400.
        let udp = allocate(&mut h, client(2), ALICE);
        let r = authed(&mut h, client(2), ALICE, &udp.nonce, Method::CONNECT, |e| {
            e.add(&XorPeerAddress(peer(1))).unwrap()
        });
        assert_eq!(error_code(&r), Some(400));
        let r = authed(
            &mut h,
            client(2),
            ALICE,
            &udp.nonce,
            Method::CONNECTION_BIND,
            |e| e.add(&ConnectionId(7)).unwrap(),
        );
        assert_eq!(error_code(&r), Some(400));

        let a = allocate_tcp(&mut h, c);
        // ChannelBind on a TCP allocation: 400; Send indications are dropped.
        let (_, r) = authed_on(&mut h, c, ALICE, &a.nonce, Method::CHANNEL_BIND, |e| {
            e.add(&ChannelNumber::new(0x4001).unwrap()).unwrap();
            e.add(&XorPeerAddress(peer(1))).unwrap();
        })
        .unwrap();
        assert_eq!(error_code(&r.bytes), Some(400));
        let tid = h.tid();
        assert!(h.send_on(c, &send_indication(tid, peer(1), b"x")).is_none());

        // ConnectionBind: without CONNECTION-ID, with an unknown one, on the control
        // connection itself: 400.
        connect(&mut h, &a, peer(1)).unwrap();
        let (_, _, id) = last_connect(&h);
        h.connected(id, true);
        h.deferred();
        let d = data_conn(101, Transport::Tcp);
        let n = nonce_on(&mut h, d);
        let (_, r) = authed_on(&mut h, d, ALICE, &n, Method::CONNECTION_BIND, |_| {}).unwrap();
        assert_eq!(error_code(&r.bytes), Some(400));
        assert_eq!(
            connection_bind(&mut h, d, ALICE, ConnectionId(id.0 ^ 1)),
            Some(400)
        );
        let (_, r) = authed_on(&mut h, c, ALICE, &a.nonce, Method::CONNECTION_BIND, |e| {
            e.add(&id).unwrap()
        })
        .unwrap();
        assert_eq!(error_code(&r.bytes), Some(400));
        assert!(h.tcp().splices.is_empty());
        // Still bindable from a proper data connection.
        assert_eq!(connection_bind(&mut h, d, ALICE, id), None);
    }

    /// A ConnectionBind can land on any worker; an id of another worker is handed there.
    #[test]
    fn connection_bind_for_another_worker_is_handed_off() {
        let mut h = tcp_h_with(|c| c.worker = 3);
        let a = allocate_tcp(&mut h, control(Transport::Tcp));
        connect(&mut h, &a, peer(1)).unwrap();
        let (_, _, id) = last_connect(&h);
        assert_eq!(connection_id_worker(id), 3);
        let d = data_conn(101, Transport::Tcp);
        let n = nonce_on(&mut h, d);
        let tid = h.tid();
        let req = request(Method::CONNECTION_BIND, tid, Some((&ALICE, &n)), |e| {
            e.add(&ConnectionId(0x0100_0001)).unwrap()
        });
        assert!(h.send_on(d, &req).is_none(), "answered by worker 1");
        assert_eq!(h.tcp().hand_offs, vec![(101, 1)]);
        // Unauthenticated, nothing is handed anywhere.
        let tid = h.tid();
        let req = request(Method::CONNECTION_BIND, tid, None, |e| {
            e.add(&ConnectionId(0x0100_0001)).unwrap()
        });
        assert_eq!(error_code(&h.send_on(d, &req).unwrap().bytes), Some(401));
        assert_eq!(h.tcp().hand_offs.len(), 1);
    }

    /// A CONNECTION-ID whose top byte names no worker (forged or stale) is answered 400 on the
    /// spot, not handed anywhere (RFC 6062 section 5.4).
    #[test]
    fn connection_bind_naming_no_worker_is_400() {
        let mut h = tcp_h_with(|c| {
            c.worker = 1;
            c.workers = 2;
        });
        let d = data_conn(101, Transport::Tcp);
        let n = nonce_on(&mut h, d);
        let tid = h.tid();
        let req = request(Method::CONNECTION_BIND, tid, Some((&ALICE, &n)), |e| {
            e.add(&ConnectionId(0x0700_0001)).unwrap()
        });
        assert_eq!(error_code(&h.send_on(d, &req).unwrap().bytes), Some(400));
        assert!(h.tcp().hand_offs.is_empty());
        // Worker 0 exists: handed off.
        let tid = h.tid();
        let req = request(Method::CONNECTION_BIND, tid, Some((&ALICE, &n)), |e| {
            e.add(&ConnectionId(0x0000_0001)).unwrap()
        });
        assert!(h.send_on(d, &req).is_none());
        assert_eq!(h.tcp().hand_offs, vec![(101, 0)]);
    }

    /// Deleting a TCP allocation (Refresh 0, expiry, or its control connection closing) closes
    /// its listening sockets and every data connection, and what it still owed is dropped.
    #[test]
    fn allocation_end_closes_the_tcp_relay_state() {
        enum End {
            Refresh,
            Expiry,
            ConnectionClosed,
        }
        for end in [End::Refresh, End::Expiry, End::ConnectionClosed] {
            let mut h = tcp_h();
            let c = control(Transport::Tcp);
            let a = allocate_tcp(&mut h, c);
            let authed_ok = |h: &mut H, m, p: SocketAddr| {
                let (_, r) = authed_on(h, c, ALICE, &a.nonce, m, |e| {
                    e.add(&XorPeerAddress(p)).unwrap()
                })
                .unwrap();
                assert_eq!(error_code(&r.bytes), None);
            };
            authed_ok(&mut h, Method::CREATE_PERMISSION, peer(3));
            // One connecting, one bound, one accepted and waiting.
            connect(&mut h, &a, peer(1)).unwrap();
            let (_, _, connecting) = last_connect(&h);
            connect(&mut h, &a, peer(2)).unwrap();
            let (_, _, bound) = last_connect(&h);
            h.connected(bound, true);
            h.deferred();
            assert_eq!(
                connection_bind(&mut h, data_conn(101, Transport::Tcp), ALICE, bound),
                None
            );
            let waiting = h.accepted(a.relay, peer(3)).unwrap();
            // The ConnectionAttempt is still queued when the allocation goes.
            match end {
                End::Refresh => {
                    let (_, r) = authed_on(&mut h, c, ALICE, &a.nonce, Method::REFRESH, |e| {
                        e.add(&Lifetime(0)).unwrap()
                    })
                    .unwrap();
                    assert_eq!(error_code(&r.bytes), None);
                }
                End::Expiry => h.advance(601),
                End::ConnectionClosed => {
                    let tuple = FiveTuple {
                        client: c.client,
                        server: server_addr(),
                        transport: c.transport,
                    };
                    h.server.connection_closed(c.token, tuple, &mut h.relays);
                }
            }
            assert_eq!(h.server.allocation_count(), 0);
            let t = h.tcp();
            assert!(t.listening.is_empty(), "listener closed");
            assert_eq!(t.closed_listeners.len(), 1);
            assert!(t.open.is_empty(), "every data connection closed");
            for id in [connecting, bound, waiting] {
                assert!(t.closed.contains(&id), "{id:?}");
            }
            assert!(
                h.deferred().is_empty(),
                "nothing sent for a gone allocation"
            );
            assert_eq!(h.server.stats().tcp_connections_active, 0);
            // Reports arriving afterwards are harmless.
            h.server.tcp_closed(bound);
            let now = h.now();
            h.server
                .tcp_connected(now, connecting, false, &mut h.relays);
            assert!(h.deferred().is_empty());
        }
    }

    /// Moves everything `cl` wants to send over a byte stream to the server (cut into 3-byte
    /// reads, framed by the server side's framer) and everything the server answers, deferred
    /// messages included, back (cut into 5-byte reads, framed by the client side's), until
    /// both are quiet.
    fn pump_stream(
        h: &mut H,
        cl: &mut uturn_proto::client::TurnClient,
        c: Conn,
        framers: &mut (Framer, Framer),
    ) {
        loop {
            let mut up = Vec::new();
            let mut buf = [0u8; 1500];
            while let Some(t) = cl.poll_transmit(&mut buf) {
                up.extend_from_slice(&buf[..t.len]);
            }
            let mut down = Vec::new();
            for piece in up.chunks(3) {
                framers.0.push(piece);
                while let Some(f) = framers.0.next_frame() {
                    let msg = match f.expect("the client frames correctly") {
                        Frame::Stun(b) | Frame::ChannelData(b) => b.to_vec(),
                    };
                    if let Some(s) = h.send_on(c, &msg) {
                        assert_eq!((s.via, s.to), (Via::Listener(c.token), c.client));
                        down.extend_from_slice(&s.bytes);
                    }
                }
            }
            for s in h.deferred() {
                assert_eq!((s.via, s.to), (Via::Listener(c.token), c.client));
                down.extend_from_slice(&s.bytes);
            }
            if down.is_empty() {
                return;
            }
            let now = h.now().instant;
            for piece in down.chunks(5) {
                framers.1.push(piece);
                while let Some(f) = framers.1.next_frame() {
                    let (Frame::Stun(b) | Frame::ChannelData(b)) = f.expect("server frames");
                    let input = cl.handle_input(now, server_addr(), b);
                    assert_eq!(input, uturn_proto::client::Input::Handled);
                }
            }
        }
    }

    /// The project's own client drives RFC 6062 against the server, both ends on framed byte
    /// streams: TCP allocation, Connect, ConnectionBind on a data connection (with its own
    /// 401), and a ConnectionAttempt after a permission.
    #[test]
    fn the_client_drives_a_tcp_allocation_end_to_end() {
        use uturn_proto::client::{
            ClientConfig, Event, RelayFamily, Transport as ClientTransport, TurnClient,
        };
        let mut h = tcp_h();
        let ctl = control(Transport::Tls);
        let mut cfg = ClientConfig::new(server_addr(), "alice", "alice-pass");
        cfg.transport = ClientTransport::Tls;
        let mut cl = TurnClient::new(cfg.clone(), [1; 32]).unwrap();
        let mut stream = (Framer::new(), Framer::new());
        let now = h.now().instant;
        let events =
            |cl: &mut TurnClient| std::iter::from_fn(|| cl.poll_event()).collect::<Vec<_>>();

        cl.allocate_tcp(now, RelayFamily::Ipv4).unwrap();
        pump_stream(&mut h, &mut cl, ctl, &mut stream);
        let relayed = match events(&mut cl)[..] {
            [Event::Allocated(a)] if a.tcp => a.relayed,
            ref other => panic!("{other:?}"),
        };

        cl.connect(now, peer(1)).unwrap();
        pump_stream(&mut h, &mut cl, ctl, &mut stream);
        assert!(events(&mut cl).is_empty(), "waits for the connection");
        let (from, to, id) = last_connect(&h);
        assert_eq!((from, to), (relayed, peer(1)));
        h.connected(id, true);
        pump_stream(&mut h, &mut cl, ctl, &mut stream);
        assert_eq!(
            events(&mut cl),
            vec![Event::Connected { peer: peer(1), id }]
        );

        let data = data_conn(101, Transport::Tls);
        let mut dcl = TurnClient::new(cfg.clone(), [2; 32]).unwrap();
        let mut dstream = (Framer::new(), Framer::new());
        dcl.connection_bind(now, id).unwrap();
        pump_stream(&mut h, &mut dcl, data, &mut dstream);
        assert_eq!(events(&mut dcl), vec![Event::ConnectionBound { id }]);
        assert_eq!(h.tcp().splices, vec![(101, id)]);

        cl.create_permission(now, &[peer(2).ip()]).unwrap();
        pump_stream(&mut h, &mut cl, ctl, &mut stream);
        assert!(matches!(
            events(&mut cl)[..],
            [Event::PermissionCreated { .. }]
        ));
        let id2 = h.accepted(relayed, peer(2)).unwrap();
        pump_stream(&mut h, &mut cl, ctl, &mut stream);
        assert_eq!(
            events(&mut cl),
            vec![Event::ConnectionAttempt {
                peer: peer(2),
                id: id2
            }]
        );
    }

    /// One thing that can happen to a TCP allocation, from the client, the driver or the clock.
    #[derive(Debug, Clone)]
    enum Step {
        Connect(u8),
        Report { which: usize, ok: bool },
        Accept(u8),
        Permit(u8),
        Bind { which: usize, bob: bool },
        Closed(usize),
        Advance(u8),
        Delete,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..4).prop_map(Step::Connect),
            (0usize..8, any::<bool>()).prop_map(|(which, ok)| Step::Report { which, ok }),
            (0u8..4).prop_map(Step::Accept),
            (0u8..4).prop_map(Step::Permit),
            (0usize..8, any::<bool>()).prop_map(|(which, bob)| Step::Bind { which, bob }),
            (0usize..8).prop_map(Step::Closed),
            (0u8..40).prop_map(Step::Advance),
            Just(Step::Delete),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Whatever order clients, drivers and timers act in, the server and the driver agree
        /// on which peer data connections are open (the server never leaks one, never closes
        /// one twice, never reuses an id), and nothing panics.
        #[test]
        fn server_and_driver_agree_on_open_connections(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let mut h = tcp_h();
            let mut a = Some(allocate_tcp(&mut h, control(Transport::Tcp)));
            // Every id the server ever handed out, in order.
            let mut ids: Vec<ConnectionId> = Vec::new();
            let mut next_data = 200u32;
            for s in steps {
                match s {
                    Step::Connect(p) => {
                        if let Some(a) = &a {
                            let before = h.tcp().connects.len();
                            let _ = connect(&mut h, a, peer(p));
                            if h.tcp().connects.len() > before {
                                ids.push(last_connect(&h).2);
                            }
                        }
                    }
                    Step::Report { which, ok } => {
                        if let Some(&id) = ids.get(which) {
                            // A driver reports only connections it still holds.
                            if h.tcp().open.contains(&id) {
                                h.connected(id, ok);
                            }
                        }
                    }
                    Step::Accept(p) => {
                        if let Some(a) = &a {
                            if let Some(id) = h.accepted(a.relay, peer(p)) {
                                ids.push(id);
                            }
                        }
                    }
                    Step::Permit(p) => {
                        if let Some(a) = &a {
                            authed_on(&mut h, a.control, ALICE, &a.nonce, Method::CREATE_PERMISSION, |e| {
                                e.add(&XorPeerAddress(peer(p))).unwrap()
                            });
                        }
                    }
                    Step::Bind { which, bob } => {
                        if let Some(&id) = ids.get(which) {
                            next_data += 1;
                            let cr = if bob { BOB } else { ALICE };
                            connection_bind(&mut h, data_conn(next_data, Transport::Tcp), cr, id);
                        }
                    }
                    Step::Closed(which) => {
                        if let Some(&id) = ids.get(which) {
                            if h.relays.tcp.as_mut().unwrap().open.remove(&id) {
                                h.server.tcp_closed(id);
                            }
                        }
                    }
                    Step::Advance(secs) => h.advance(u64::from(secs)),
                    Step::Delete => {
                        if let Some(al) = a.take() {
                            authed_on(&mut h, al.control, ALICE, &al.nonce, Method::REFRESH, |e| {
                                e.add(&Lifetime(0)).unwrap()
                            });
                        }
                    }
                }
                // Whatever the server queued is well formed and goes to the control connection.
                for out in h.deferred() {
                    proptest::prop_assert_eq!(out.via, Via::Listener(100));
                    parse(&out.bytes);
                }
                proptest::prop_assert_eq!(
                    h.server.stats().tcp_connections_active as usize,
                    h.tcp().open.len()
                );
                if h.server.allocation_count() == 0 {
                    proptest::prop_assert!(h.tcp().open.is_empty());
                    proptest::prop_assert!(h.tcp().listening.is_empty());
                }
            }
            let mut unique = ids.clone();
            unique.sort_by_key(|i| i.0);
            unique.dedup();
            proptest::prop_assert_eq!(unique.len(), ids.len(), "ids are never reused");
        }
    }

    /// TURN over a stream with UDP relaying: ChannelData to the client is padded to 4 bytes,
    /// ChannelData from the client comes unpadded out of the framer, and the allocation goes
    /// with its connection. RFC 5780's answers from elsewhere are refused on a stream.
    #[test]
    fn udp_relaying_over_a_stream_control_connection() {
        use uturn_proto::turn::config::NatDiscovery;
        let mut h = tcp_h_with(|c| {
            c.nat_discovery = Some(NatDiscovery {
                listeners: vec![
                    (LISTENER, server_addr()),
                    (8, "203.0.113.1:3479".parse().unwrap()),
                    (9, "203.0.113.2:3478".parse().unwrap()),
                    (10, "203.0.113.2:3479".parse().unwrap()),
                ],
            })
        });
        let c = control(Transport::Tls);
        let n = nonce_on(&mut h, c);
        let (_, r) = authed_on(&mut h, c, ALICE, &n, Method::ALLOCATE, |e| {
            e.add(&RequestedTransport::UDP).unwrap()
        })
        .unwrap();
        assert_eq!(error_code(&r.bytes), None);
        let relay = parse(&r.bytes)
            .get::<XorRelayedAddress>()
            .unwrap()
            .unwrap()
            .0;
        let (_, r) = authed_on(&mut h, c, ALICE, &n, Method::CHANNEL_BIND, |e| {
            e.add(&ChannelNumber::new(0x4001).unwrap()).unwrap();
            e.add(&XorPeerAddress(peer(1))).unwrap();
        })
        .unwrap();
        assert_eq!(error_code(&r.bytes), None);

        for len in [0usize, 1, 3, 4, 5, 8] {
            let payload: Vec<u8> = (0..len as u8).collect();
            let s = h.peer_sends(relay, peer(1), &payload).unwrap();
            assert_eq!(s.via, Via::Listener(100));
            let padded = (4 + len).div_ceil(4) * 4;
            assert_eq!(s.bytes.len(), padded, "padded to 4 on a stream ({len})");
            assert_eq!(&s.bytes[4..4 + len], &payload[..]);
            assert!(s.bytes[4 + len..].iter().all(|b| *b == 0));
            // The framer hands over the message without its padding.
            let s = h.send_on(c, &channel_data(0x4001, &payload)).unwrap();
            assert_eq!((s.to, s.bytes), (peer(1), payload));
        }

        for (change, port) in [(true, None), (false, Some(4000u16))] {
            let tid = h.tid();
            let req = request(Method::BINDING, tid, None, |e| {
                if change {
                    e.add(&ChangeRequest {
                        change_ip: true,
                        change_port: true,
                    })
                    .unwrap();
                }
                if let Some(p) = port {
                    e.add(&ResponsePort(p)).unwrap();
                }
            });
            let r = h.send_on(c, &req).unwrap();
            assert_eq!(r.via, Via::Listener(100));
            assert_eq!(error_code(&r.bytes), Some(400));
        }

        let tuple = FiveTuple {
            client: c.client,
            server: server_addr(),
            transport: c.transport,
        };
        h.server.connection_closed(c.token, tuple, &mut h.relays);
        assert_eq!(h.server.allocation_count(), 0);
        assert!(h.relays.open.is_empty(), "relay socket closed");
    }
}
