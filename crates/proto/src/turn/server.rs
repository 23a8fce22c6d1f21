//! The TURN server state machine. See the module docs of [`super`] for the I/O contract.

use super::allocation::{
    Allocation, Channel, Millis, PermitOutcome, Relay, RelayTransport, TokenBucket,
};
use super::auth::{check_nonce, make_nonce, AuthError, NonceStatus};
use super::config::ServerConfig;
use super::policy::canonical;
use super::ports::PortPool;
use super::relay::{ConnectionId, OpenError, RelayId, RelaySockets};
use super::response::{finish, start, start_error, Signer};
use super::rng::Rng;
use super::stats::{DropReason, Stats};
use super::tcp::{
    connection_id_worker, ConnState, Deferred, PeerConn, TcpTable, BIND_TIMEOUT,
    MIN_CONNECT_TIMEOUT,
};
use super::{FiveTuple, Now, Payload, Transmit, Transport, Via};
use crate::channel_data::{self, ChannelData, ChannelNumber};
use crate::demux::{classify, PacketKind};
use crate::stun::attr::{
    types, AdditionalAddressFamily, AddressErrorCode, ChangeRequest, DontFragment, EvenPort,
    Family, Lifetime, MappedAddress, Nonce, OtherAddress, PasswordAlgorithm, PasswordAlgorithms,
    Realm, RequestedAddressFamily, RequestedTransport, ReservationToken, ResponseOrigin,
    ResponsePort, Software, UnknownAttributes, Userhash, Username, XorMappedAddress,
    XorPeerAddress, XorRelayedAddress,
};
use crate::stun::{
    Class, EncodeError, Encoder, Message, Method, PasswordAlgorithmId, TransactionId, HEADER_LEN,
    MAGIC_COOKIE,
};
use ahash::RandomState;
use core::net::{IpAddr, SocketAddr};
use core::ops::Range;
use slab::Slab;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The algorithms offered in PASSWORD-ALGORITHMS, in order of preference (RFC 8489 section 9.2.1
/// requires MD5 to be offered for compatibility; SHA-256 is preferred).
const OFFERED: [PasswordAlgorithm<'static>; 2] =
    [PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5];

/// How often expiries are swept. Lifetimes are minutes long; a second of slack is harmless and
/// keeps the sweep off the packet path.
const SWEEP_INTERVAL: Millis = 1000;

/// How long a port kept for a RESERVATION-TOKEN waits for its Allocate (RFC 8656 section 14.9
/// suggests about 30 seconds).
const RESERVATION_LIFETIME: Millis = 30_000;

/// Largest Data indication header in front of a payload: STUN header (20) + XOR-PEER-ADDRESS for
/// IPv6 (4 + 20) + DATA header (4).
pub const MAX_DATA_INDICATION_HEADER: usize = HEADER_LEN + 24 + 4;

/// The allocation table's key: the client's address, the listening socket (or connection) it
/// arrived on, and the transport, packed into 24 bytes. A listener token stands for the server
/// address of the 5-tuple; packing keeps the table small and the hash cheap on the fast path.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct TupleKey([u64; 3]);

impl TupleKey {
    #[inline]
    fn new(listener: u32, t: &FiveTuple) -> Self {
        let transport = match t.transport {
            Transport::Udp => 0u64,
            Transport::Tcp => 1,
            Transport::Tls => 2,
        };
        let tail = u64::from(t.client.port()) | (u64::from(listener) << 16) | (transport << 48);
        match t.client.ip() {
            IpAddr::V4(ip) => TupleKey([u64::from(u32::from(ip)), 0, tail]),
            IpAddr::V6(ip) => {
                let v = u128::from(ip);
                TupleKey([(v >> 64) as u64, v as u64, tail | (1 << 63)])
            }
        }
    }
}

/// A request rejected before any state changed: the error code, and how to sign the answer.
struct Reject {
    code: u16,
    signer: Option<Signer>,
}

impl Reject {
    fn plain(code: u16) -> Self {
        Reject { code, signer: None }
    }
}

/// What authentication established about a request.
struct Authenticated {
    signer: Signer,
    /// The username, resolved from USERNAME or USERHASH. Only Allocate needs it owned.
    user: Box<str>,
}

#[derive(Debug)]
struct Reservation {
    token: [u8; 8],
    family: Family,
    port: u16,
    expires: Millis,
}

/// One worker's TURN server.
#[derive(Debug)]
pub struct Server {
    cfg: ServerConfig,
    epoch: Instant,
    /// The last instant converted by `millis`, and the result.
    clock: (Instant, Millis),
    allocations: Slab<Allocation>,
    by_tuple: HashMap<TupleKey, u32, RandomState>,
    per_user: HashMap<Box<str>, usize, RandomState>,
    ports_v4: PortPool,
    ports_v6: PortPool,
    reservations: Vec<Reservation>,
    next_generation: u32,
    /// Relay sockets open now, against `cfg.max_relay_sockets`.
    relay_sockets: usize,
    next_sweep: Millis,
    draining: bool,
    rng: Rng,
    stats: Stats,
    /// RFC 6062 peer data connections and the messages they owe clients.
    tcp: TcpTable,
}

impl Server {
    pub fn new(cfg: ServerConfig, now: Instant) -> Self {
        let rng = Rng::new(cfg.seed);
        let ports_v4 = PortPool::new(cfg.port_min, cfg.port_max);
        let ports_v6 = PortPool::new(cfg.port_min, cfg.port_max);
        let tcp = TcpTable::new(cfg.worker);
        Server {
            cfg,
            epoch: now,
            clock: (now, 0),
            allocations: Slab::new(),
            by_tuple: HashMap::with_hasher(RandomState::new()),
            per_user: HashMap::with_hasher(RandomState::new()),
            ports_v4,
            ports_v6,
            reservations: Vec::new(),
            next_generation: 1,
            relay_sockets: 0,
            next_sweep: SWEEP_INTERVAL,
            draining: false,
            rng,
            stats: Stats::default(),
            tcp,
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Replaces credentials and peer policy (SIGHUP) without touching allocations.
    pub fn reload(
        &mut self,
        credentials: super::auth::Credentials,
        policy: super::policy::PeerPolicy,
    ) {
        self.cfg.credentials = credentials;
        self.cfg.peer_policy = policy;
    }

    /// Stop taking new allocations (shutdown): Allocate is answered 508 from now on.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Milliseconds since the epoch. Drivers pass the same instant for a whole batch, so the
    /// conversion (a 128-bit division) is cached for it.
    #[inline]
    fn millis(&mut self, t: Instant) -> Millis {
        if t != self.clock.0 {
            self.clock = (
                t,
                t.saturating_duration_since(self.epoch).as_millis() as Millis,
            );
        }
        self.clock.1
    }

    fn dur(d: Duration) -> Millis {
        d.as_millis() as Millis
    }

    /// When [`Server::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.allocations.is_empty() && self.reservations.is_empty() {
            return None;
        }
        Some(self.epoch + Duration::from_millis(self.next_sweep))
    }

    /// Expires permissions, channels, allocations and port reservations.
    pub fn handle_timeout<R: RelaySockets>(&mut self, now: Now, relays: &mut R) {
        let t = self.millis(now.instant);
        if t < self.next_sweep {
            return;
        }
        self.next_sweep = t + SWEEP_INTERVAL;
        let mut dead = Vec::new();
        for (slot, a) in self.allocations.iter_mut() {
            if a.expires <= t {
                dead.push(slot);
                continue;
            }
            let (p, c) = a.expire(t);
            self.stats.permissions_active -= p as u64;
            self.stats.channels_active -= c as u64;
        }
        for slot in dead {
            self.remove_allocation(slot, relays);
        }
        self.expire_connections(t, relays);
        let (v4, v6) = (&mut self.ports_v4, &mut self.ports_v6);
        self.reservations.retain(|r| {
            let keep = r.expires > t;
            if !keep {
                match r.family {
                    Family::V4 => v4.release(r.port),
                    Family::V6 => v6.release(r.port),
                }
            }
            keep
        });
    }

    fn remove_allocation<R: RelaySockets>(&mut self, slot: usize, relays: &mut R) {
        if !self.allocations.contains(slot) {
            return;
        }
        let a = self.allocations.remove(slot);
        self.by_tuple.remove(&TupleKey::new(a.listener, &a.tuple));
        for r in [a.relay_v4, a.relay_v6].into_iter().flatten() {
            close_relay(relays, a.transport, r.handle);
            self.pool(&r.addr.ip()).release(r.addr.port());
            self.relay_sockets -= 1;
        }
        // RFC 6062: the data connections go with their allocation.
        for id in a.connections {
            if self.tcp.conns.remove(&id).is_some() {
                self.stats.tcp_connections_active -= 1;
                if let Some(t) = relays.tcp() {
                    t.close_peer(ConnectionId(id));
                }
            }
        }
        if let Some(n) = self.per_user.get_mut(&a.user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&a.user);
            }
        }
        self.stats.allocations_active -= 1;
        self.stats.permissions_active -= a.permissions.len() as u64;
        self.stats.channels_active -= a.channels.len() as u64;
    }

    // -----------------------------------------------------------------------------------------
    // Packets from clients.

    /// A datagram from a client arrived on a listening socket (driver token `listener`). A
    /// response is written into `out` (at least 1 KiB); [`Payload::Input`] ranges in the result
    /// are relative to `datagram`.
    pub fn handle_client<R: RelaySockets>(
        &mut self,
        now: Now,
        listener: u32,
        tuple: FiveTuple,
        datagram: &[u8],
        out: &mut [u8],
        relays: &mut R,
    ) -> Option<Transmit> {
        match classify(datagram) {
            PacketKind::ChannelData => self.client_channel_data(now, listener, &tuple, datagram),
            PacketKind::Stun => self.client_stun(now, listener, tuple, datagram, out, relays),
            PacketKind::Other => {
                self.stats.drop(DropReason::Malformed);
                None
            }
        }
    }

    /// The fast path: ChannelData from a client goes to the bound peer as a sub-range of the
    /// input buffer.
    #[inline]
    fn client_channel_data(
        &mut self,
        now: Now,
        listener: u32,
        tuple: &FiveTuple,
        data: &[u8],
    ) -> Option<Transmit> {
        let Ok(cd) = ChannelData::parse(data) else {
            self.stats.drop(DropReason::Malformed);
            return None;
        };
        let Some(&slot) = self.by_tuple.get(&TupleKey::new(listener, tuple)) else {
            self.stats.drop(DropReason::NoAllocation);
            return None;
        };
        let t = self.millis(now.instant);
        let a = &mut self.allocations[slot as usize];
        let Some(peer) = a.channel_peer(cd.channel, t) else {
            self.stats.drop(DropReason::NoChannel);
            return None;
        };
        let ip = peer.ip();
        if !a.permits(&ip, t) {
            self.stats.drop(DropReason::NoPermission);
            return None;
        }
        let len = usize::from(cd.len);
        if let Some(b) = a.bucket.as_mut() {
            if !b.take(len, t) {
                self.stats.drop(DropReason::Bandwidth);
                return None;
            }
        }
        let relay = a.relay_for(&ip)?;
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += len as u64;
        let start = channel_data::HEADER_LEN;
        Some(Transmit {
            via: Via::Relay(relay.handle),
            to: peer,
            payload: Payload::Input(start..start + len),
        })
    }

    fn client_stun<R: RelaySockets>(
        &mut self,
        now: Now,
        listener: u32,
        tuple: FiveTuple,
        data: &[u8],
        out: &mut [u8],
        relays: &mut R,
    ) -> Option<Transmit> {
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(_) => {
                self.stats.drop(DropReason::Malformed);
                return None;
            }
        };
        if msg.has_fingerprint() && msg.check_fingerprint().is_err() {
            self.stats.drop(DropReason::BadFingerprint);
            return None;
        }
        match msg.class() {
            Class::Request => {}
            Class::Indication if msg.method() == Method::SEND => {
                return self.client_send(now, listener, &tuple, &msg);
            }
            // Indications are never answered; responses arriving at a server are ignored
            // (RFC 8489 section 6.3).
            _ => {
                self.stats.drop(DropReason::Ignored);
                return None;
            }
        }
        let method = msg.method();
        if method == Method::BINDING {
            return self.binding(now, listener, &tuple, &msg, out);
        }
        let result = match method {
            Method::ALLOCATE
            | Method::REFRESH
            | Method::CREATE_PERMISSION
            | Method::CHANNEL_BIND
            | Method::CONNECT
            | Method::CONNECTION_BIND => {
                self.turn_request(now, listener, &tuple, &msg, out, relays)
            }
            _ => Err(Reject::plain(400)),
        };
        let len = match result {
            Ok(Some(n)) => {
                self.stats.request(method, None);
                n
            }
            // A Connect is answered when the driver reports the connection (see
            // `poll_transmit`); a ConnectionBind of another worker is answered there.
            Ok(None) => return None,
            Err(rej) => {
                self.stats.request(method, Some(rej.code));
                self.error_response(now, &tuple, &msg, rej, out).ok()?
            }
        };
        Some(Transmit {
            via: Via::Listener(listener),
            to: tuple.client,
            payload: Payload::Output(len),
        })
    }

    /// Writes an error response. 401 and 438 carry a fresh NONCE, the REALM and the offered
    /// password algorithms; 420 lists the unknown attributes.
    fn error_response(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        rej: Reject,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let mut e = start_error(out, msg.method(), msg.transaction_id(), rej.code)?;
        match rej.code {
            401 | 438 => {
                let nonce = make_nonce(&self.cfg.nonce_key, nonce_scope(tuple), now.unix_secs);
                e.add(&Realm(&self.cfg.realm))?;
                e.add(&Nonce(nonce.as_str()))?;
                e.add(&PasswordAlgorithms::List(&OFFERED))?;
            }
            420 => {
                // What was not understood: unknown comprehension-required types, or the RFC 5780
                // attributes when NAT behaviour discovery is off.
                let unknown = msg.unknown_attributes();
                let rfc5780: smallvec::SmallVec<[u16; 2]> =
                    [types::CHANGE_REQUEST, types::RESPONSE_PORT]
                        .into_iter()
                        .filter(|t| msg.has(*t))
                        .collect();
                let list = if unknown.is_empty() {
                    &rfc5780[..]
                } else {
                    unknown
                };
                e.add(&UnknownAttributes::List(list))?;
            }
            _ => {}
        }
        self.software(&mut e)?;
        finish(e, rej.signer.as_ref(), msg.has_fingerprint())
    }

    fn software(&self, e: &mut Encoder<'_>) -> Result<(), EncodeError> {
        match &self.cfg.software {
            Some(s) => e.add(&Software(s)),
            None => Ok(()),
        }
    }

    /// Binding (RFC 8489 section 6.3.1): reflect the client's address. With NAT behaviour
    /// discovery on (RFC 5780), also OTHER-ADDRESS and RESPONSE-ORIGIN, and CHANGE-REQUEST /
    /// RESPONSE-PORT decide which socket answers and where to.
    fn binding(
        &mut self,
        now: Now,
        listener: u32,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Option<Transmit> {
        match self.binding_response(tuple, msg, out) {
            Ok((len, via, to)) => {
                self.stats.request(Method::BINDING, None);
                Some(Transmit {
                    via: Via::Listener(via.unwrap_or(listener)),
                    to,
                    payload: Payload::Output(len),
                })
            }
            Err(rej) => {
                self.stats.request(Method::BINDING, Some(rej.code));
                let len = self.error_response(now, tuple, msg, rej, out).ok()?;
                Some(Transmit {
                    via: Via::Listener(listener),
                    to: tuple.client,
                    payload: Payload::Output(len),
                })
            }
        }
    }

    /// The success response to a Binding request, the listener to send it from (when not the
    /// one it arrived on) and where to send it.
    fn binding_response(
        &self,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Result<(usize, Option<u32>, SocketAddr), Reject> {
        if !msg.unknown_attributes().is_empty() {
            return Err(Reject::plain(420));
        }
        let change = msg.get::<ChangeRequest>().map_err(|_| Reject::plain(400))?;
        let port = msg.get::<ResponsePort>().map_err(|_| Reject::plain(400))?;
        let mut via = None;
        let mut to = tuple.client;
        let mut origin = None;
        let mut other = None;
        match &self.cfg.nat_discovery {
            // RFC 5780 section 6.1: a server without an alternate address does not understand
            // CHANGE-REQUEST, nor RESPONSE-PORT: 420, as a plain RFC 8489 server would answer.
            None if change.is_some() || port.is_some() => return Err(Reject::plain(420)),
            None => {}
            Some(d) => {
                let c = change.unwrap_or_default();
                // An answer from another address cannot travel on this connection: CHANGE-REQUEST
                // only means something over UDP, like RESPONSE-PORT (RFC 5780 section 7.5).
                if (c.change_ip || c.change_port) && tuple.transport != Transport::Udp {
                    return Err(Reject::plain(400));
                }
                if c.change_ip || c.change_port {
                    let (tok, addr) = d
                        .alternate(tuple.server, c.change_ip, c.change_port)
                        .ok_or(Reject::plain(420))?;
                    via = Some(tok);
                    origin = Some(addr);
                } else {
                    origin = Some(tuple.server);
                }
                other = d.alternate(tuple.server, true, true).map(|(_, a)| a);
                // RESPONSE-PORT only makes sense for UDP (RFC 5780 section 7.5).
                if let Some(ResponsePort(p)) = port {
                    if tuple.transport != Transport::Udp {
                        return Err(Reject::plain(400));
                    }
                    to = SocketAddr::new(tuple.client.ip(), p);
                }
            }
        }
        let mut build = || -> Result<usize, EncodeError> {
            let mut e = start(out, Method::BINDING, true, msg.transaction_id())?;
            e.add(&XorMappedAddress(tuple.client))?;
            if self.cfg.mapped_address {
                e.add(&MappedAddress(tuple.client))?;
            }
            if let Some(a) = origin {
                e.add(&ResponseOrigin(a))?;
            }
            if let Some(a) = other {
                e.add(&OtherAddress(a))?;
            }
            self.software(&mut e)?;
            finish(e, None, msg.has_fingerprint())
        };
        let len = build().map_err(|_| Reject::plain(500))?;
        Ok((len, via, to))
    }

    // -----------------------------------------------------------------------------------------
    // Authenticated TURN requests.

    /// An authenticated request; `Ok(None)` when it is answered later (Connect) or elsewhere (a
    /// ConnectionBind for another worker).
    fn turn_request<R: RelaySockets>(
        &mut self,
        now: Now,
        listener: u32,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
        relays: &mut R,
    ) -> Result<Option<usize>, Reject> {
        let auth = self.authenticate(now, tuple, msg)?;
        let signer = Some(auth.signer);
        let with = |code: u16| Reject { code, signer };
        if !msg.unknown_attributes().is_empty() {
            return Err(with(420));
        }
        let slot = self
            .by_tuple
            .get(&TupleKey::new(listener, tuple))
            .map(|s| *s as usize);
        // RFC 8656 section 5: requests on an existing allocation must come from its user.
        if let Some(s) = slot {
            if *self.allocations[s].user != *auth.user {
                return Err(with(441));
            }
        }
        let t = self.millis(now.instant);
        match msg.method() {
            Method::ALLOCATE => self
                .allocate(t, listener, tuple, msg, slot, auth, out, relays)
                .map(Some),
            Method::CONNECTION_BIND => {
                self.connection_bind(listener, tuple, msg, slot, &auth, out, relays)
            }
            method => {
                let slot = slot.ok_or(with(437))?;
                let signer = &auth.signer;
                match method {
                    Method::REFRESH => self.refresh(t, slot, msg, signer, out, relays).map(Some),
                    Method::CREATE_PERMISSION => {
                        self.create_permission(t, slot, msg, signer, out).map(Some)
                    }
                    Method::CONNECT => self.connect(t, slot, msg, signer, relays).map(|()| None),
                    _ => self.channel_bind(t, slot, msg, signer, out).map(Some),
                }
            }
        }
    }

    /// Long-term credential check (RFC 8489 section 9.2.4), before any state changes.
    fn authenticate(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        msg: &Message<'_>,
    ) -> Result<Authenticated, Reject> {
        let sha256 = msg.has_integrity_sha256();
        if !msg.has_integrity() && !sha256 {
            return Err(Reject::plain(401));
        }
        let bad = Reject::plain(400);
        let username = msg.get::<Username<'_>>().map_err(|_| Reject::plain(400))?;
        let userhash = msg.get::<Userhash>().map_err(|_| Reject::plain(400))?;
        let realm = msg.get::<Realm<'_>>().map_err(|_| Reject::plain(400))?;
        let nonce = msg.get::<Nonce<'_>>().map_err(|_| Reject::plain(400))?;
        let (Some(_realm), Some(nonce)) = (realm, nonce) else {
            return Err(bad);
        };
        if username.is_none() && userhash.is_none() {
            return Err(Reject::plain(400));
        }
        let validity = self.cfg.nonce_validity.as_secs();
        match check_nonce(
            &self.cfg.nonce_key,
            nonce_scope(tuple),
            nonce.0,
            now.unix_secs,
            validity,
        ) {
            NonceStatus::Valid => {}
            NonceStatus::Stale | NonceStatus::Invalid => return Err(Reject::plain(438)),
        }
        let alg = self.password_algorithm(msg)?;
        let user: &str = match (username, userhash) {
            (Some(u), _) => u.0,
            (None, Some(h)) => match self.cfg.credentials.user_for_hash(&h.0) {
                Some(u) => u,
                None => {
                    self.stats.auth_failures += 1;
                    return Err(Reject::plain(401));
                }
            },
            (None, None) => return Err(Reject::plain(400)),
        };
        let user: Box<str> = user.into();
        let keys = match self.cfg.credentials.keys(&user, alg, now.unix_secs) {
            Ok(k) => k,
            Err(AuthError::UnknownUser | AuthError::Expired | AuthError::Malformed) => {
                self.stats.auth_failures += 1;
                return Err(Reject::plain(401));
            }
        };
        let verified = keys.as_slice().iter().find(|k| {
            if sha256 {
                msg.verify_integrity_sha256(k.as_bytes()).is_ok()
            } else {
                msg.verify_integrity(k.as_bytes()).is_ok()
            }
        });
        match verified {
            Some(key) => Ok(Authenticated {
                signer: Signer { key: *key, sha256 },
                user,
            }),
            None => {
                self.stats.auth_failures += 1;
                Err(Reject::plain(401))
            }
        }
    }

    /// PASSWORD-ALGORITHM negotiation (RFC 8489 section 9.2.4, bid-down protection): if the
    /// client names an algorithm, it must also echo our PASSWORD-ALGORITHMS unchanged.
    fn password_algorithm(&self, msg: &Message<'_>) -> Result<PasswordAlgorithmId, Reject> {
        let algs = msg
            .get::<PasswordAlgorithms<'_>>()
            .map_err(|_| Reject::plain(400))?;
        let alg = msg
            .get::<PasswordAlgorithm<'_>>()
            .map_err(|_| Reject::plain(400))?;
        match (algs, alg) {
            (None, None) => Ok(PasswordAlgorithmId::Md5),
            (Some(list), Some(a)) => {
                if list != PasswordAlgorithms::List(&OFFERED) || !OFFERED.contains(&a) {
                    return Err(Reject::plain(400));
                }
                PasswordAlgorithmId::from_number(a.algorithm).ok_or(Reject::plain(400))
            }
            _ => Err(Reject::plain(400)),
        }
    }

    /// Allocate (RFC 8656 section 7.2).
    #[allow(clippy::too_many_arguments)]
    fn allocate<R: RelaySockets>(
        &mut self,
        t: Millis,
        listener: u32,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        existing: Option<usize>,
        auth: Authenticated,
        out: &mut [u8],
        relays: &mut R,
    ) -> Result<usize, Reject> {
        let signer = auth.signer;
        let with = |code: u16| Reject {
            code,
            signer: Some(signer),
        };
        let tid = msg.transaction_id();
        if let Some(slot) = existing {
            // A retransmitted Allocate gets the same success again; anything else is 437.
            if self.allocations[slot].allocate_tid == tid {
                return self.allocate_success(t, slot, msg, &signer, None, out);
            }
            return Err(with(437));
        }
        if self.draining {
            return Err(with(508));
        }
        let bad = || with(400);
        let transport = match msg.get::<RequestedTransport>().map_err(|_| bad())? {
            None => return Err(bad()),
            Some(RequestedTransport::UDP) => RelayTransport::Udp,
            Some(RequestedTransport::TCP) => RelayTransport::Tcp,
            // RFC 6062 section 5.1 rule 1.
            Some(_) => return Err(with(442)),
        };
        let dont_fragment = msg.get::<DontFragment>().map_err(|_| bad())?.is_some();
        let even = msg.get::<EvenPort>().map_err(|_| bad())?;
        let token = msg.get::<ReservationToken>().map_err(|_| bad())?;
        if transport == RelayTransport::Tcp {
            // RFC 6062 section 5.1 rule 2: a TCP allocation needs a connection to the server,
            // for the control connection and for data connections to bind on.
            if tuple.transport == Transport::Udp {
                return Err(bad());
            }
            // Rule 3: these attributes only mean something for UDP relaying.
            if dont_fragment || even.is_some() || token.is_some() {
                return Err(bad());
            }
            if relays.tcp().is_none() {
                return Err(with(442));
            }
        }
        let requested = msg.get::<RequestedAddressFamily>().map_err(|_| bad())?;
        let additional = msg.get::<AdditionalAddressFamily>().map_err(|_| bad())?;
        // RFC 8656 section 7.2 rules 4-7: the combinations that are malformed.
        if token.is_some() && (even.is_some() || requested.is_some() || additional.is_some()) {
            return Err(bad());
        }
        if requested.is_some() && additional.is_some() {
            return Err(bad());
        }
        if let Some(AdditionalAddressFamily(f)) = additional {
            if f != Family::V6 {
                return Err(bad());
            }
        }
        // Quotas (486) before any resource is taken.
        if self.allocations.len() >= self.cfg.max_allocations {
            return Err(with(486));
        }
        let user_count = self.per_user.get(&auth.user).copied().unwrap_or(0);
        if user_count >= self.cfg.max_allocations_per_user {
            return Err(with(486));
        }

        // A reserved port (EVEN-PORT with R earlier) fixes the family; otherwise the requested
        // one, IPv4 by default, plus IPv6 for a dual allocation (RFC 8656 section 7.2).
        let reservation = match token {
            Some(ReservationToken(tok)) => {
                let Some(i) = self.reservations.iter().position(|r| r.token == tok) else {
                    return Err(with(508));
                };
                Some(self.reservations.swap_remove(i))
            }
            None => None,
        };
        let primary = match (&reservation, requested) {
            (Some(r), _) => r.family,
            (None, Some(RequestedAddressFamily(f))) => f,
            (None, None) => Family::V4,
        };
        let has = |f: Family| match f {
            Family::V4 => self.cfg.relay_v4.is_some(),
            Family::V6 => self.cfg.relay_v6.is_some(),
        };
        if !has(primary) {
            return Err(with(440));
        }
        let mut families: smallvec::SmallVec<[Family; 2]> = smallvec::smallvec![primary];
        let mut address_error = None;
        if additional.is_some() {
            if has(Family::V6) {
                families.push(Family::V6);
            } else {
                address_error = Some(Family::V6);
            }
        }

        let slot = self.allocations.vacant_key();
        let generation = self.next_generation;
        let mut relay_v4 = None;
        let mut relay_v6 = None;
        let mut reservation_out = None;
        for (i, &f) in families.iter().enumerate() {
            let reserved_port = if i == 0 {
                reservation.as_ref().map(|r| r.port)
            } else {
                None
            };
            let want_even = even.is_some() && i == 0;
            let opened = self.open_relay(
                slot,
                generation,
                f,
                transport,
                reserved_port,
                want_even,
                dont_fragment,
                relays,
            );
            match opened {
                Ok(r) => {
                    if want_even && even.is_some_and(|e| e.reserve) {
                        reservation_out = self.reserve_next(f, r.addr.port(), t);
                    }
                    match f {
                        Family::V4 => relay_v4 = Some(r),
                        Family::V6 => relay_v6 = Some(r),
                    }
                }
                Err(code) => {
                    // Undo what this Allocate already opened.
                    for r in [relay_v4.take(), relay_v6.take()].into_iter().flatten() {
                        close_relay(relays, transport, r.handle);
                        self.pool(&r.addr.ip()).release(r.addr.port());
                        self.relay_sockets -= 1;
                    }
                    return Err(with(code));
                }
            }
        }

        let lifetime = self.desired_lifetime(msg).map_err(|_| bad())?.max(1);
        self.next_generation = self.next_generation.wrapping_add(1);
        let a = Allocation {
            tuple: *tuple,
            transport,
            listener,
            user: auth.user.clone(),
            generation,
            relay_v4,
            relay_v6,
            expires: t + lifetime,
            allocate_tid: tid,
            reservation_token: reservation_out,
            permissions: Default::default(),
            channels: Default::default(),
            bucket: self.cfg.bandwidth_limit.map(|r| TokenBucket::new(r, t)),
            connections: Default::default(),
        };
        let inserted = self.allocations.insert(a);
        debug_assert_eq!(inserted, slot);
        self.by_tuple
            .insert(TupleKey::new(listener, tuple), slot as u32);
        *self.per_user.entry(auth.user).or_insert(0) += 1;
        self.stats.allocations_active += 1;
        self.stats.allocations_total += 1;
        self.allocate_success(t, slot, msg, &signer, address_error, out)
    }

    fn pool(&mut self, ip: &IpAddr) -> &mut PortPool {
        match ip {
            IpAddr::V4(_) => &mut self.ports_v4,
            IpAddr::V6(_) => &mut self.ports_v6,
        }
    }

    /// Opens one relay socket (a UDP socket, or a TCP listening socket): a reserved port, or
    /// random ports until one binds.
    #[allow(clippy::too_many_arguments)]
    fn open_relay<R: RelaySockets>(
        &mut self,
        slot: usize,
        generation: u32,
        family: Family,
        transport: RelayTransport,
        reserved: Option<u16>,
        even: bool,
        dont_fragment: bool,
        relays: &mut R,
    ) -> Result<Relay, u16> {
        let ip = match family {
            Family::V4 => self.cfg.relay_v4,
            Family::V6 => self.cfg.relay_v6,
        }
        .ok_or(440u16)?;
        if self.relay_sockets >= self.cfg.max_relay_sockets {
            self.stats.relay_open_failures += 1;
            return Err(508);
        }
        let id = RelayId::new(slot, generation, family == Family::V6);
        // Another process may hold ports of our range (a misconfiguration, but it happens):
        // those stay marked used, and random picks go on until one binds. Binding a taken port
        // fails at once, so even a crowded range costs only a few system calls.
        let mut tried = [0u16; 64];
        for attempt in 0..tried.len() {
            let port = match reserved {
                Some(p) if attempt == 0 => p,
                Some(_) => return Err(508),
                None => {
                    let Some(p) = ({
                        let rng = &mut self.rng;
                        let pool = match family {
                            Family::V4 => &mut self.ports_v4,
                            Family::V6 => &mut self.ports_v6,
                        };
                        pool.take_random(rng, even, &tried[..attempt])
                    }) else {
                        self.stats.relay_open_failures += 1;
                        return Err(508);
                    };
                    p
                }
            };
            tried[attempt] = port;
            let addr = SocketAddr::new(ip, port);
            let opened = match transport {
                RelayTransport::Udp => relays.open(addr, id, dont_fragment),
                RelayTransport::Tcp => match relays.tcp() {
                    Some(t) => t.listen(addr, id),
                    None => Err(OpenError::Other),
                },
            };
            match opened {
                Ok(handle) => {
                    self.relay_sockets += 1;
                    return Ok(Relay { addr, handle });
                }
                // Leave the port marked used: someone else has it.
                Err(OpenError::AddrInUse) => continue,
                Err(OpenError::Exhausted | OpenError::Other) => {
                    self.pool(&ip).release(port);
                    self.stats.relay_open_failures += 1;
                    return Err(508);
                }
            }
        }
        self.stats.relay_open_failures += 1;
        Err(508)
    }

    /// EVEN-PORT with R: keep port + 1 for a later Allocate carrying the token.
    fn reserve_next(&mut self, family: Family, port: u16, t: Millis) -> Option<[u8; 8]> {
        let next = port.checked_add(1)?;
        let pool = match family {
            Family::V4 => &mut self.ports_v4,
            Family::V6 => &mut self.ports_v6,
        };
        if !pool.take(next) {
            return None;
        }
        let mut token = [0u8; 8];
        self.rng.fill(&mut token);
        self.reservations.push(Reservation {
            token,
            family,
            port: next,
            expires: t + RESERVATION_LIFETIME,
        });
        Some(token)
    }

    /// RFC 8656 section 7.3 "desired lifetime": the requested value clamped to
    /// [default, maximum]; the default when absent. Zero stays zero (Refresh deletes).
    fn desired_lifetime(&self, msg: &Message<'_>) -> Result<Millis, crate::stun::ParseError> {
        let default = Self::dur(self.cfg.default_lifetime);
        let max = Self::dur(self.cfg.max_lifetime);
        Ok(match msg.get::<Lifetime>()? {
            Some(Lifetime(0)) => 0,
            Some(Lifetime(s)) => (u64::from(s) * 1000).min(max).max(default.min(max)),
            None => default.min(max),
        })
    }

    fn allocate_success(
        &self,
        t: Millis,
        slot: usize,
        msg: &Message<'_>,
        signer: &Signer,
        address_error: Option<Family>,
        out: &mut [u8],
    ) -> Result<usize, Reject> {
        let a = &self.allocations[slot];
        let remaining = (a.expires.saturating_sub(t) / 1000) as u32;
        let mut build = || -> Result<usize, EncodeError> {
            let mut e = start(out, Method::ALLOCATE, true, msg.transaction_id())?;
            for r in [a.relay_v4, a.relay_v6].into_iter().flatten() {
                e.add(&XorRelayedAddress(r.addr))?;
            }
            if let Some(f) = address_error {
                e.add(&AddressErrorCode {
                    family: f,
                    code: 440,
                    reason: super::response::reason(440),
                })?;
            }
            e.add(&Lifetime(remaining))?;
            if let Some(tok) = a.reservation_token {
                e.add(&ReservationToken(tok))?;
            }
            e.add(&XorMappedAddress(a.tuple.client))?;
            self.software(&mut e)?;
            finish(e, Some(signer), msg.has_fingerprint())
        };
        build().map_err(|_| Reject::plain(500))
    }

    /// Refresh (RFC 8656 section 7.3). Lifetime 0 deletes at once: the relay sockets close now,
    /// so the relay port stops forwarding before the response is even sent.
    fn refresh<R: RelaySockets>(
        &mut self,
        t: Millis,
        slot: usize,
        msg: &Message<'_>,
        signer: &Signer,
        out: &mut [u8],
        relays: &mut R,
    ) -> Result<usize, Reject> {
        let with = |code: u16| Reject {
            code,
            signer: Some(*signer),
        };
        if let Some(RequestedAddressFamily(f)) =
            msg.get::<RequestedAddressFamily>().map_err(|_| with(400))?
        {
            let a = &self.allocations[slot];
            let has = match f {
                Family::V4 => a.relay_v4.is_some(),
                Family::V6 => a.relay_v6.is_some(),
            };
            if !has {
                return Err(with(443));
            }
        }
        let lifetime = self.desired_lifetime(msg).map_err(|_| with(400))?;
        if lifetime == 0 {
            self.remove_allocation(slot, relays);
        } else {
            self.allocations[slot].expires = t + lifetime;
        }
        let mut build = || -> Result<usize, EncodeError> {
            let mut e = start(out, Method::REFRESH, true, msg.transaction_id())?;
            e.add(&Lifetime((lifetime / 1000) as u32))?;
            self.software(&mut e)?;
            finish(e, Some(signer), msg.has_fingerprint())
        };
        build().map_err(|_| Reject::plain(500))
    }

    /// Checks one XOR-PEER-ADDRESS against the allocation's families and the peer policy;
    /// returns the canonical peer.
    fn check_peer(
        &self,
        slot: usize,
        peer: SocketAddr,
        signer: &Signer,
    ) -> Result<SocketAddr, Reject> {
        let with = |code: u16| Reject {
            code,
            signer: Some(*signer),
        };
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        if self.allocations[slot].relay_for(&peer.ip()).is_none() {
            return Err(with(443));
        }
        if !self.cfg.peer_policy.permits_ip(peer.ip()) {
            return Err(with(403));
        }
        Ok(peer)
    }

    /// CreatePermission (RFC 8656 section 9.2): all peers are checked before any is installed.
    fn create_permission(
        &mut self,
        t: Millis,
        slot: usize,
        msg: &Message<'_>,
        signer: &Signer,
        out: &mut [u8],
    ) -> Result<usize, Reject> {
        let with = |code: u16| Reject {
            code,
            signer: Some(*signer),
        };
        let mut peers: smallvec::SmallVec<[IpAddr; 4]> = smallvec::SmallVec::new();
        for p in msg.get_all::<XorPeerAddress>() {
            let XorPeerAddress(p) = p.map_err(|_| with(400))?;
            let ip = self.check_peer(slot, p, signer)?.ip();
            if !peers.contains(&ip) {
                peers.push(ip);
            }
            if peers.len() > self.cfg.max_permissions_per_allocation {
                return Err(with(508));
            }
        }
        if peers.is_empty() {
            return Err(with(400));
        }
        let max = self.cfg.max_permissions_per_allocation;
        let a = &self.allocations[slot];
        let new = peers
            .iter()
            .filter(|ip| !a.permissions.iter().any(|p| p.ip == **ip))
            .count();
        if a.permissions.len() + new > max {
            return Err(with(508));
        }
        let expires = t + Self::dur(self.cfg.permission_lifetime);
        let a = &mut self.allocations[slot];
        for ip in peers {
            if a.permit(ip, expires, max) == PermitOutcome::Created {
                self.stats.permissions_active += 1;
            }
        }
        self.empty_success(Method::CREATE_PERMISSION, msg, signer, out)
    }

    /// ChannelBind (RFC 8656 section 11.2).
    fn channel_bind(
        &mut self,
        t: Millis,
        slot: usize,
        msg: &Message<'_>,
        signer: &Signer,
        out: &mut [u8],
    ) -> Result<usize, Reject> {
        let with = |code: u16| Reject {
            code,
            signer: Some(*signer),
        };
        // A TCP allocation's data flows on data connections, never in channels (RFC 6062
        // section 4: its clients use Connect and ConnectionBind instead).
        if self.allocations[slot].transport == RelayTransport::Tcp {
            return Err(with(400));
        }
        // A CHANNEL-NUMBER outside 0x4000-0x4FFF fails to decode: 400, as the RFC asks.
        let number = msg
            .get::<ChannelNumber>()
            .map_err(|_| with(400))?
            .ok_or(with(400))?;
        let XorPeerAddress(peer) = msg
            .get::<XorPeerAddress>()
            .map_err(|_| with(400))?
            .ok_or(with(400))?;
        let peer = self.check_peer(slot, peer, signer)?;
        if !self.cfg.peer_policy.permits_addr(peer) {
            return Err(with(403));
        }
        let a = &self.allocations[slot];
        // The number must not be bound to another peer, nor the peer to another number.
        for c in &a.channels {
            if (c.number == number) != (c.peer == peer) {
                return Err(with(400));
            }
        }
        let exists = a.channels.iter().any(|c| c.number == number);
        let max_p = self.cfg.max_permissions_per_allocation;
        if !exists && a.channels.len() >= self.cfg.max_channels_per_allocation {
            return Err(with(508));
        }
        if a.permissions.len() >= max_p && !a.permissions.iter().any(|p| p.ip == peer.ip()) {
            return Err(with(508));
        }
        let c_exp = t + Self::dur(self.cfg.channel_lifetime);
        let p_exp = t + Self::dur(self.cfg.permission_lifetime);
        let a = &mut self.allocations[slot];
        match a.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => c.expires = c_exp,
            None => {
                a.channels.push(Channel {
                    number,
                    peer,
                    expires: c_exp,
                });
                self.stats.channels_active += 1;
            }
        }
        // Binding a channel installs or refreshes the permission for the peer's IP too.
        if a.permit(peer.ip(), p_exp, max_p) == PermitOutcome::Created {
            self.stats.permissions_active += 1;
        }
        self.empty_success(Method::CHANNEL_BIND, msg, signer, out)
    }

    fn empty_success(
        &self,
        method: Method,
        msg: &Message<'_>,
        signer: &Signer,
        out: &mut [u8],
    ) -> Result<usize, Reject> {
        let mut build = || -> Result<usize, EncodeError> {
            let mut e = start(out, method, true, msg.transaction_id())?;
            self.software(&mut e)?;
            finish(e, Some(signer), msg.has_fingerprint())
        };
        build().map_err(|_| Reject::plain(500))
    }

    /// Send indication (RFC 8656 section 10.2): forward the DATA value in place; any problem is a
    /// silent drop.
    fn client_send(
        &mut self,
        now: Now,
        listener: u32,
        tuple: &FiveTuple,
        msg: &Message<'_>,
    ) -> Option<Transmit> {
        let Some(&slot) = self.by_tuple.get(&TupleKey::new(listener, tuple)) else {
            self.stats.drop(DropReason::NoAllocation);
            return None;
        };
        let slot = slot as usize;
        if self.allocations[slot].transport == RelayTransport::Tcp {
            // Send indications are UDP relaying; a TCP allocation has no socket to send from.
            self.stats.drop(DropReason::Ignored);
            return None;
        }
        let peer = match msg.get::<XorPeerAddress>() {
            Ok(Some(XorPeerAddress(p))) => SocketAddr::new(canonical(p.ip()), p.port()),
            _ => {
                self.stats.drop(DropReason::Malformed);
                return None;
            }
        };
        let Some(data) = msg.attributes().find(|a| a.typ == types::DATA) else {
            self.stats.drop(DropReason::Malformed);
            return None;
        };
        if !self.cfg.peer_policy.permits_addr(peer) {
            self.stats.drop(DropReason::PeerRefused);
            return None;
        }
        let t = self.millis(now.instant);
        let a = &mut self.allocations[slot];
        if !a.permits(&peer.ip(), t) {
            self.stats.drop(DropReason::NoPermission);
            return None;
        }
        let len = data.value.len();
        if let Some(b) = a.bucket.as_mut() {
            if !b.take(len, t) {
                self.stats.drop(DropReason::Bandwidth);
                return None;
            }
        }
        let Some(relay) = a.relay_for(&peer.ip()) else {
            self.stats.drop(DropReason::PeerRefused);
            return None;
        };
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += len as u64;
        let start = data.offset + crate::stun::ATTR_HEADER_LEN;
        Some(Transmit {
            via: Via::Relay(relay.handle),
            to: peer,
            payload: Payload::Input(start..start + len),
        })
    }

    // -----------------------------------------------------------------------------------------
    // RFC 6062: TCP relaying.

    /// Connect (RFC 6062 section 5.2): checks the peer, then asks the driver to connect to it
    /// from the relayed address. The response waits for [`Server::tcp_connected`] or the connect
    /// timeout, and comes out of [`Server::poll_transmit`].
    fn connect<R: RelaySockets>(
        &mut self,
        t: Millis,
        slot: usize,
        msg: &Message<'_>,
        signer: &Signer,
        relays: &mut R,
    ) -> Result<(), Reject> {
        let with = |code: u16| Reject {
            code,
            signer: Some(*signer),
        };
        // A UDP allocation (the only kind a UDP 5-tuple can hold) has nothing to connect from.
        if self.allocations[slot].transport != RelayTransport::Tcp {
            return Err(with(400));
        }
        let XorPeerAddress(peer) = msg
            .get::<XorPeerAddress>()
            .map_err(|_| with(400))?
            .ok_or(with(400))?;
        // Port 0 is no TCP destination: an invalid XOR-PEER-ADDRESS.
        if peer.port() == 0 {
            return Err(with(400));
        }
        // The peer policy holds for TCP peers as for UDP ones: 403 for 0.0.0.0, loopback, the
        // server's own sockets and the rest of the list (RFC 6062 section 5.2, "forbidden by
        // local policy").
        let peer = self.check_peer(slot, peer, signer)?;
        if !self.cfg.peer_policy.permits_addr(peer) {
            return Err(with(403));
        }
        let a = &self.allocations[slot];
        // 446: a connection to this peer is being made, waits for its ConnectionBind, or is
        // spliced.
        let exists = a
            .connections
            .iter()
            .any(|id| self.tcp.conns.get(id).is_some_and(|c| c.peer == peer));
        if exists {
            return Err(with(446));
        }
        if a.connections.len() >= self.cfg.max_tcp_connections_per_allocation {
            return Err(with(508));
        }
        let from = a.relay_for(&peer.ip()).ok_or(with(443))?.addr;
        let generation = a.generation;
        let Some(tcp) = relays.tcp() else {
            // A TCP allocation exists only where the driver relays over TCP.
            return Err(with(500));
        };
        let id = self.tcp.fresh_id(&mut self.rng).ok_or(with(508))?;
        let timeout = Self::dur(self.cfg.tcp_connect_timeout).max(MIN_CONNECT_TIMEOUT);
        let state = ConnState::Connecting {
            tid: msg.transaction_id(),
            signer: *signer,
            fingerprint: msg.has_fingerprint(),
            deadline: t + timeout,
        };
        self.add_connection(id, slot, generation, peer, state);
        tcp.connect(from, peer, id);
        Ok(())
    }

    /// ConnectionBind (RFC 6062 section 5.4), the first request on a new client connection:
    /// after the success response the driver splices the connection with the peer data
    /// connection, and the server never sees either again.
    #[allow(clippy::too_many_arguments)]
    fn connection_bind<R: RelaySockets>(
        &mut self,
        listener: u32,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        own_allocation: Option<usize>,
        auth: &Authenticated,
        out: &mut [u8],
        relays: &mut R,
    ) -> Result<Option<usize>, Reject> {
        let with = |code: u16| Reject {
            code,
            signer: Some(auth.signer),
        };
        if tuple.transport == Transport::Udp {
            return Err(with(400));
        }
        // A control connection stays one: making it a data connection would strand its
        // allocation.
        if own_allocation.is_some() {
            return Err(with(400));
        }
        let id = msg
            .get::<ConnectionId>()
            .map_err(|_| with(400))?
            .ok_or(with(400))?;
        let Some(tcp) = relays.tcp() else {
            return Err(with(400));
        };
        if !self.tcp.is_ours(id) {
            let worker = connection_id_worker(id);
            // RFC 6062 section 5.4: an unknown CONNECTION-ID is a 400; one naming no worker
            // cannot be known anywhere.
            if u16::from(worker) >= self.cfg.workers {
                return Err(with(400));
            }
            tcp.hand_off(listener, worker);
            return Ok(None);
        }
        let Some(conn) = self.tcp.conns.get(&id.0).copied() else {
            return Err(with(400));
        };
        if !matches!(conn.state, ConnState::Unbound { .. }) {
            return Err(with(400));
        }
        // RFC 8656 section 5: a request about an allocation must carry the credentials that made
        // it; CONNECTION-IDs are not secrets.
        if *self.allocations[conn.slot].user != *auth.user {
            return Err(with(441));
        }
        let len = self.empty_success(Method::CONNECTION_BIND, msg, &auth.signer, out)?;
        if let Some(c) = self.tcp.conns.get_mut(&id.0) {
            c.state = ConnState::Bound;
        }
        tcp.splice(listener, id);
        Ok(Some(len))
    }

    fn add_connection(
        &mut self,
        id: ConnectionId,
        slot: usize,
        generation: u32,
        peer: SocketAddr,
        state: ConnState,
    ) {
        self.tcp.conns.insert(
            id.0,
            PeerConn {
                slot,
                generation,
                peer,
                state,
            },
        );
        self.allocations[slot].connections.push(id.0);
        self.stats.tcp_connections_active += 1;
        self.stats.tcp_connections_total += 1;
    }

    /// Drops a peer data connection from the tables (the driver's socket is the caller's
    /// business).
    fn forget_connection(&mut self, id: u32) -> Option<PeerConn> {
        let c = self.tcp.conns.remove(&id)?;
        if let Some(a) = self.allocations.get_mut(c.slot) {
            if a.generation == c.generation {
                a.connections.retain(|x| *x != id);
            }
        }
        self.stats.tcp_connections_active -= 1;
        Some(c)
    }

    /// Queues the 447 answer of a Connect that did not connect.
    fn connect_failed(&mut self, c: &PeerConn) {
        if let ConnState::Connecting {
            tid,
            signer,
            fingerprint,
            ..
        } = c.state
        {
            self.stats.request(Method::CONNECT, Some(447));
            self.tcp.deferred.push_back(Deferred::ConnectResult {
                slot: c.slot,
                generation: c.generation,
                tid,
                signer,
                fingerprint,
                conn: None,
            });
        }
    }

    /// Closes peer data connections whose Connect or ConnectionBind took too long (RFC 6062
    /// sections 5.2 and 5.3). A scan, once a second, like the allocations' own.
    fn expire_connections<R: RelaySockets>(&mut self, t: Millis, relays: &mut R) {
        let expired: smallvec::SmallVec<[u32; 8]> = self
            .tcp
            .conns
            .iter()
            .filter(|(_, c)| match c.state {
                ConnState::Connecting { deadline, .. } | ConnState::Unbound { deadline } => {
                    deadline <= t
                }
                ConnState::Bound => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(c) = self.forget_connection(id) {
                self.connect_failed(&c);
                if let Some(tcp) = relays.tcp() {
                    tcp.close_peer(ConnectionId(id));
                }
            }
        }
    }

    /// The driver's report on a connection started with
    /// [`super::relay::TcpRelays::connect`]: the Connect response (success with CONNECTION-ID,
    /// or 447 Connection Timeout or Failure) is queued for [`Server::poll_transmit`]. On success
    /// the connection waits up to 30 seconds for its ConnectionBind. `connected: false` about
    /// any other peer data connection means the driver lost it: it is forgotten as by
    /// [`Server::tcp_closed`].
    pub fn tcp_connected<R: RelaySockets>(
        &mut self,
        now: Now,
        conn: ConnectionId,
        connected: bool,
        relays: &mut R,
    ) {
        let t = self.millis(now.instant);
        if !connected {
            // Failed: the driver has no socket for it any more, whatever state it was in. A
            // Connect waiting for it is answered 447.
            if let Some(c) = self.forget_connection(conn.0) {
                self.connect_failed(&c);
            }
            return;
        }
        let state = self.tcp.conns.get(&conn.0).map(|c| c.state);
        let Some(ConnState::Connecting {
            tid,
            signer,
            fingerprint,
            ..
        }) = state
        else {
            // Nothing waits for this connection (it timed out, or its allocation went): it must
            // not stay open unaccounted for. A second report on a live one changes nothing.
            if state.is_none() {
                if let Some(tcp) = relays.tcp() {
                    tcp.close_peer(conn);
                }
            }
            return;
        };
        let Some(c) = self.tcp.conns.get_mut(&conn.0) else {
            return;
        };
        c.state = ConnState::Unbound {
            deadline: t + BIND_TIMEOUT,
        };
        let (slot, generation) = (c.slot, c.generation);
        self.stats.request(Method::CONNECT, None);
        self.tcp.deferred.push_back(Deferred::ConnectResult {
            slot,
            generation,
            tid,
            signer,
            fingerprint,
            conn: Some(conn),
        });
    }

    /// RFC 6062 section 5.3: a peer connected to relayed address `relay` (a TCP listening
    /// socket). Returns the CONNECTION-ID under which the driver keeps the connection, without
    /// reading from it until it is spliced, so that the peer's data waits in the kernel's
    /// bounded buffer; a ConnectionAttempt indication is queued for [`Server::poll_transmit`].
    /// `None`: close the connection at once (no permission for the peer, a peer the policy
    /// refuses, a listener closed in the meantime, or the allocation's connection quota full).
    pub fn tcp_accepted(
        &mut self,
        now: Now,
        relay: RelayId,
        peer: SocketAddr,
    ) -> Option<ConnectionId> {
        let t = self.millis(now.instant);
        let Some(a) = self
            .allocations
            .get(relay.slot())
            .filter(|a| a.generation == relay.generation() && a.transport == RelayTransport::Tcp)
        else {
            self.stats.drop(DropReason::StaleRelay);
            return None;
        };
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        let refused = !a.permits(&peer.ip(), t)
            || !self.cfg.peer_policy.permits_addr(peer)
            || a.connections.len() >= self.cfg.max_tcp_connections_per_allocation;
        if refused {
            self.stats.tcp_connections_refused += 1;
            return None;
        }
        let generation = a.generation;
        let id = self.tcp.fresh_id(&mut self.rng)?;
        let slot = relay.slot();
        let state = ConnState::Unbound {
            deadline: t + BIND_TIMEOUT,
        };
        self.add_connection(id, slot, generation, peer, state);
        self.tcp.deferred.push_back(Deferred::ConnectionAttempt {
            slot,
            generation,
            peer,
            conn: id,
        });
        Some(id)
    }

    /// A peer data connection closed on its own: the peer hung up, an I/O error, or (once
    /// spliced) either side closed and the driver closed the other. The server forgets it, so
    /// the client may Connect to that peer again; a Connect still waiting is answered 447.
    pub fn tcp_closed(&mut self, conn: ConnectionId) {
        if let Some(c) = self.forget_connection(conn.0) {
            self.connect_failed(&c);
        }
    }

    /// A client connection (TCP or TLS) closed. An allocation made on it is deleted with its
    /// relayed addresses and data connections: its 5-tuple is gone, so no request could ever
    /// refresh or delete it.
    pub fn connection_closed<R: RelaySockets>(
        &mut self,
        listener: u32,
        tuple: FiveTuple,
        relays: &mut R,
    ) {
        if tuple.transport == Transport::Udp {
            return;
        }
        if let Some(&slot) = self.by_tuple.get(&TupleKey::new(listener, &tuple)) {
            self.remove_allocation(slot as usize, relays);
        }
    }

    /// The next message decided before it could be written: a Connect response or a
    /// ConnectionAttempt indication, written into `out` (at least 1 KiB). The driver calls it
    /// after every batch until it returns `None`. Messages for allocations deleted in the
    /// meantime are dropped.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<Transmit> {
        while let Some(d) = self.tcp.deferred.pop_front() {
            let (slot, generation) = d.allocation();
            let Some(a) = self
                .allocations
                .get(slot)
                .filter(|a| a.generation == generation)
            else {
                continue;
            };
            let (via, to) = (a.listener, a.tuple.client);
            let written = match d {
                Deferred::ConnectResult {
                    tid,
                    signer,
                    fingerprint,
                    conn,
                    ..
                } => self.connect_response(tid, &signer, fingerprint, conn, out),
                Deferred::ConnectionAttempt { peer, conn, .. } => {
                    self.connection_attempt(peer, conn, out)
                }
            };
            if let Ok(len) = written {
                return Some(Transmit {
                    via: Via::Listener(via),
                    to,
                    payload: Payload::Output(len),
                });
            }
        }
        None
    }

    fn connect_response(
        &self,
        tid: TransactionId,
        signer: &Signer,
        fingerprint: bool,
        conn: Option<ConnectionId>,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let mut e = match conn {
            Some(id) => {
                let mut e = start(out, Method::CONNECT, true, tid)?;
                e.add(&id)?;
                e
            }
            None => start_error(out, Method::CONNECT, tid, 447)?,
        };
        self.software(&mut e)?;
        finish(e, Some(signer), fingerprint)
    }

    /// ConnectionAttempt indication (RFC 6062 section 5.3): the peer's address and the
    /// connection's id.
    fn connection_attempt(
        &mut self,
        peer: SocketAddr,
        conn: ConnectionId,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let mut tid = [0u8; 12];
        self.rng.fill(&mut tid);
        let typ = crate::stun::MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication);
        let mut e = Encoder::new(out, typ, TransactionId(tid))?;
        e.add(&XorPeerAddress(peer))?;
        e.add(&conn)?;
        self.software(&mut e)?;
        e.fingerprint()?;
        Ok(e.finish())
    }

    // -----------------------------------------------------------------------------------------
    // Packets from peers.

    /// A datagram from `from` arrived on relay socket `relay`. `buf[range]` is the payload and
    /// the bytes before `range.start` are free headroom (at least
    /// [`MAX_DATA_INDICATION_HEADER`]) and 3 bytes after `range.end` free tailroom: the
    /// ChannelData or Data indication header is written there in place, and the transmit is a
    /// range of `buf`. With less room, the message is built in `out` instead (a copy).
    pub fn handle_peer(
        &mut self,
        now: Now,
        relay: RelayId,
        from: SocketAddr,
        buf: &mut [u8],
        range: Range<usize>,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let t = self.millis(now.instant);
        let Some(a) = self.allocations.get_mut(relay.slot()) else {
            self.stats.drop(DropReason::StaleRelay);
            return None;
        };
        if a.generation != relay.generation() {
            self.stats.drop(DropReason::StaleRelay);
            return None;
        }
        let from = SocketAddr::new(canonical(from.ip()), from.port());
        if !a.permits(&from.ip(), t) {
            self.stats.drop(DropReason::NoPermission);
            return None;
        }
        let len = range.len();
        if let Some(b) = a.bucket.as_mut() {
            if !b.take(len, t) {
                self.stats.drop(DropReason::Bandwidth);
                return None;
            }
        }
        let via = Via::Listener(a.listener);
        let to = a.tuple.client;
        let stream = a.tuple.transport != Transport::Udp;
        let channel = a.channel_for_peer(&from, t);
        let payload = match channel {
            Some(ch) => write_channel_data(buf, range, ch, stream, out)?,
            None => {
                let mut tid = [0u8; 12];
                self.rng.fill(&mut tid);
                write_data_indication(buf, range, from, TransactionId(tid), out)?
            }
        };
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += len as u64;
        Some(Transmit { via, to, payload })
    }
}

/// What a nonce is bound to: the client's address over UDP; only its IP over TCP and TLS, where
/// RFC 6062 data connections come from new ports with the credentials of the control
/// connection, and clients (coturn's turnutils_uclient among them) send their ConnectionBind
/// with the control connection's nonce instead of waiting for a 401 on the new connection.
/// The nonce is no secret either way: MESSAGE-INTEGRITY authenticates the request.
fn nonce_scope(tuple: &FiveTuple) -> SocketAddr {
    match tuple.transport {
        Transport::Udp => tuple.client,
        Transport::Tcp | Transport::Tls => SocketAddr::new(tuple.client.ip(), 0),
    }
}

/// Closes an allocation's relay socket: a UDP socket, or a TCP listening socket.
fn close_relay<R: RelaySockets>(relays: &mut R, transport: RelayTransport, handle: u32) {
    match transport {
        RelayTransport::Udp => relays.close(handle),
        RelayTransport::Tcp => {
            if let Some(t) = relays.tcp() {
                t.close_listener(handle);
            }
        }
    }
}

/// Prepends the 4-byte ChannelData header in place (RFC 8656 section 12.4); on stream transports
/// the message is padded to a multiple of 4 (section 12.5).
fn write_channel_data(
    buf: &mut [u8],
    range: Range<usize>,
    ch: ChannelNumber,
    stream: bool,
    out: &mut [u8],
) -> Option<Payload> {
    let len = range.len();
    let len16 = u16::try_from(len).ok()?;
    let pad = if stream {
        crate::stun::padded(len) - len
    } else {
        0
    };
    let mut hdr = [0u8; channel_data::HEADER_LEN];
    channel_data::write_header(&mut hdr, ch, len16);
    if range.start >= channel_data::HEADER_LEN && range.end + pad <= buf.len() {
        let start = range.start - channel_data::HEADER_LEN;
        buf[start..range.start].copy_from_slice(&hdr);
        buf[range.end..range.end + pad].fill(0);
        return Some(Payload::Input(start..range.end + pad));
    }
    // Not enough room around the payload: build it in `out` (a copy, off the fast path).
    let total = channel_data::HEADER_LEN + len + pad;
    let o = out.get_mut(..total)?;
    o[..4].copy_from_slice(&hdr);
    o[4..4 + len].copy_from_slice(&buf[range]);
    o[4 + len..].fill(0);
    Some(Payload::Output(total))
}

/// Builds a Data indication (RFC 8656 section 11.6) around the payload in place: STUN header,
/// XOR-PEER-ADDRESS and the DATA attribute header in the headroom, padding in the tailroom.
fn write_data_indication(
    buf: &mut [u8],
    range: Range<usize>,
    peer: SocketAddr,
    tid: TransactionId,
    out: &mut [u8],
) -> Option<Payload> {
    use crate::stun::attr::Attribute;
    let len = range.len();
    let peer_attr = XorPeerAddress(peer);
    let hdr_len = HEADER_LEN + 4 + peer_attr.value_len() + 4;
    let pad = crate::stun::padded(len) - len;
    let body = hdr_len - HEADER_LEN + len + pad;
    let body16 = u16::try_from(body).ok()?;
    let write_header = |h: &mut [u8]| {
        let typ = crate::stun::MessageType::new(Method::DATA, Class::Indication).to_u16();
        h[..2].copy_from_slice(&typ.to_be_bytes());
        h[2..4].copy_from_slice(&body16.to_be_bytes());
        h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        h[8..20].copy_from_slice(&tid.0);
        h[20..22].copy_from_slice(&types::XOR_PEER_ADDRESS.to_be_bytes());
        h[22..24].copy_from_slice(&(peer_attr.value_len() as u16).to_be_bytes());
        let v = 24 + peer_attr.value_len();
        peer_attr.encode(&mut h[24..v], &tid);
        h[v..v + 2].copy_from_slice(&types::DATA.to_be_bytes());
        h[v + 2..v + 4].copy_from_slice(&(len as u16).to_be_bytes());
    };
    if range.start >= hdr_len && range.end + pad <= buf.len() {
        let start = range.start - hdr_len;
        write_header(&mut buf[start..range.start]);
        buf[range.end..range.end + pad].fill(0);
        return Some(Payload::Input(start..range.end + pad));
    }
    let total = hdr_len + len + pad;
    let o = out.get_mut(..total)?;
    write_header(&mut o[..hdr_len]);
    o[hdr_len..hdr_len + len].copy_from_slice(&buf[range]);
    o[hdr_len + len..].fill(0);
    Some(Payload::Output(total))
}
