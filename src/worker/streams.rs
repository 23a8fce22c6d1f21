//! TURN over TCP and TLS in a relay worker (RFC 8656 section 3.1), and RFC 6062 TCP relaying.
//!
//! Client connections arrive on the worker's TCP and TLS listeners (SO_REUSEPORT: the kernel
//! spreads them over the workers, and a connection stays with the worker that accepted it).
//! Each gets a [`StreamConn`]: its bytes are framed into messages for
//! [`Server::handle_client`], with the connection's token (its [`StreamId`] with
//! [`STREAM_TOKEN`] set, so that a `Via::Listener` names either a UDP socket or a connection)
//! standing for the listener. What the server sends back is queued on the connection, through
//! rustls for TLS.
//!
//! RFC 6062: the [`TcpRelays`] orders of the server are carried out here (in the worker's
//! [`Bridge`]): listening on relayed addresses, connecting to peers, splicing a client data
//! connection with a peer data connection (the bytes then go straight from one to the other,
//! with back-pressure: the side that reads stops reading while the other side's output is
//! full), and handing a data connection whose ConnectionBind names another worker's connection
//! to that worker, socket, TLS state and request included, over a channel.
//!
//! Bounds: every client connection's output is capped (its [`StreamConn`] and the driver's
//! queue); its timers close handshakes, partial messages and idle or stalled connections (a
//! sweep every [`SWEEP`]); a peer data connection waiting for its ConnectionBind is not read.

use std::collections::HashMap as StdHashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use uturn_proto::stream::Frame;
use uturn_proto::turn::{
    ConnectionId, FiveTuple, Payload, RelayId, TcpRelays, Transmit, Transport, Via,
};

use super::{open_error, Bridge, RelayWorker};
use crate::driver::{Io, ListenOptions, SockId, StreamEvent, StreamId};
use crate::stream_conn::{CloseReason, StreamConn, StreamLimits};

/// Every stream event looks its connection up here: ahash (as the TURN core uses) rather than
/// SipHash; the keys are this worker's own ids, not attacker-chosen.
type HashMap<K, V> = StdHashMap<K, V, std::hash::BuildHasherDefault<ahash::AHasher>>;

/// Set in the server-side token of a client connection: `STREAM_TOKEN | StreamId`. UDP
/// listening sockets are small [`SockId`]s, so the two never meet.
pub const STREAM_TOKEN: u32 = 1 << 31;

/// How often the connections' timers are looked at. Their timeouts are seconds long.
pub const SWEEP: Duration = Duration::from_millis(250);

/// A spliced peer is not read while the client's output has less room than this: a read
/// delivers at most 16 KiB (portable) or one buffer (io_uring) after reading stops.
const PAUSE_ROOM: usize = 64 * 1024;

/// Backlog of an RFC 6062 relayed address.
const RELAY_BACKLOG: i32 = 64;

/// What a worker needs for TCP and TLS, built by the binary.
#[derive(Debug, Default)]
pub struct StreamSetup {
    /// Client-facing listening sockets, already bound and listening (SO_REUSEPORT), with the
    /// transport they speak.
    pub listeners: Vec<(TcpListener, Transport)>,
    /// For the TLS listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub limits: StreamLimits,
    /// Client connections this worker keeps open at once; more are closed on accept (counted
    /// as closed for `limit`), so that connections cannot take memory without bound.
    pub max_clients: usize,
    /// The hand-off channel of every worker, by worker index; this worker's receiving end.
    pub handoff_peers: Vec<Sender<HandOff>>,
    pub handoff_rx: Option<Receiver<HandOff>>,
}

/// A client data connection moving to the worker that owns the peer data connection its
/// ConnectionBind names (RFC 6062 section 5.4; see [`TcpRelays::hand_off`]).
#[derive(Debug)]
pub struct HandOff {
    fd: OwnedFd,
    conn: Box<StreamConn>,
    tuple: FiveTuple,
    /// The ConnectionBind request, to be handled again by the owner.
    request: Vec<u8>,
}

/// Connection counters of one worker, published with the snapshot.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Client connections open now, TCP and TLS (counted from the table for each snapshot).
    pub clients_tcp: u64,
    pub clients_tls: u64,
    pub accepted_tcp: u64,
    pub accepted_tls: u64,
    /// Client connections closed, by why.
    pub closed_by_client: u64,
    pub closed_timeout: u64,
    pub closed_overflow: u64,
    pub closed_error: u64,
    /// Closed as accepted: the worker had its `max_clients` open.
    pub closed_limit: u64,
    /// TLS handshakes completed (either version) and failed.
    pub tls_handshakes: u64,
    pub tls_failures: u64,
    /// Data connections spliced now (counted for each snapshot), and bytes copied between
    /// spliced connections.
    pub spliced: u64,
    pub spliced_bytes: u64,
    /// Client data connections handed to (and taken from) another worker.
    pub handed_off: u64,
    pub taken_over: u64,
}

/// One client connection.
#[derive(Debug)]
struct Client {
    conn: Box<StreamConn>,
    tuple: FiveTuple,
    /// An RFC 6062 data connection spliced with this peer data connection.
    peer: Option<StreamId>,
    /// Spliced: the client's bytes that the peer's queue did not take yet. While any wait,
    /// the client is not read.
    to_peer: Vec<u8>,
    handshake_counted: bool,
    /// Its spliced peer is gone: what is still queued for the client is written out, then the
    /// connection closes (on `Writable`, or at the stall timer). Nothing more is read from it.
    draining: bool,
    /// A ConnectionBind for another worker that could not move the socket yet (output of this
    /// worker still in the kernel's hands); retried each batch, not read meanwhile.
    handoff: Option<PendingHandOff>,
}

#[derive(Debug)]
struct PendingHandOff {
    request: Vec<u8>,
    worker: u8,
    since: Instant,
}

/// How long a hand-off may wait for the connection's in-flight output before the connection
/// is closed (the client may bind again).
const HANDOFF_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum PeerState {
    /// [`TcpRelays::connect`] started it; the server hears the outcome.
    Connecting,
    /// Connected or accepted, waiting for the ConnectionBind; not read.
    Waiting,
    Spliced {
        client: StreamId,
    },
}

#[derive(Debug)]
struct Peer {
    id: ConnectionId,
    state: PeerState,
}

/// What the server asked for during a call, carried out once the call returned.
#[derive(Debug)]
enum Order {
    /// Close a client data connection whose peer connection the server closed.
    CloseClient(StreamId),
    /// The connect could not even start: tell the server.
    ConnectFailed(ConnectionId),
    /// Splice the client connection being handled with this peer connection.
    Splice { client: u32, peer: StreamId },
    /// Hand the client connection being handled to another worker.
    HandOff { client: u32, worker: u8 },
}

/// The RFC 6062 state the server's orders act on, reachable from the [`Bridge`].
#[derive(Debug, Default)]
pub(super) struct RelayTcp {
    /// Relayed addresses listening for peers.
    listeners: HashMap<StreamId, RelayId>,
    peers: HashMap<StreamId, Peer>,
    by_id: HashMap<u32, StreamId>,
    orders: Vec<Order>,
}

impl RelayTcp {
    /// The server's order to splice client connection `tok`, taken out of the list.
    fn take_splice(&mut self, tok: u32) -> Option<StreamId> {
        let i = self
            .orders
            .iter()
            .position(|o| matches!(o, Order::Splice { client, .. } if *client == tok))?;
        match self.orders.remove(i) {
            Order::Splice { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// The server's order to hand client connection `tok` to another worker: which one.
    fn take_hand_off(&mut self, tok: u32) -> Option<u8> {
        let i = self
            .orders
            .iter()
            .position(|o| matches!(o, Order::HandOff { client, .. } if *client == tok))?;
        match self.orders.remove(i) {
            Order::HandOff { worker, .. } => Some(worker),
            _ => None,
        }
    }
}

/// The TCP and TLS side of a worker.
#[derive(Debug, Default)]
pub(super) struct Streams {
    setup: StreamSetup,
    /// Client-facing listeners: their transport.
    listeners: HashMap<StreamId, Transport>,
    clients: HashMap<StreamId, Client>,
    /// Clients with a [`PendingHandOff`].
    pending_handoffs: Vec<StreamId>,
    pub(super) relay: RelayTcp,
    next_sweep: Option<Instant>,
    pub(super) stats: TcpStats,
}

impl Streams {
    pub(super) fn new(setup: StreamSetup) -> Self {
        Streams {
            setup,
            ..Streams::default()
        }
    }

    /// The counters for a snapshot: those kept as events happen, and what is open now,
    /// counted from the table (once a second; nothing to keep in step by hand).
    pub(super) fn snapshot(&self) -> TcpStats {
        let mut t = self.stats;
        for c in self.clients.values() {
            match c.tuple.transport {
                Transport::Tls => t.clients_tls += 1,
                _ => t.clients_tcp += 1,
            }
            t.spliced += u64::from(c.peer.is_some());
        }
        t
    }

    /// When the connections' timers need a look.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        if self.clients.is_empty() {
            None
        } else {
            self.next_sweep
        }
    }
}

fn token(id: StreamId) -> u32 {
    STREAM_TOKEN | id.0
}

pub(super) fn stream_of(token: u32) -> Option<StreamId> {
    (token & STREAM_TOKEN != 0).then_some(StreamId(token & !STREAM_TOKEN))
}

/// Moves what the connection has for the socket into the driver's queue.
fn flush<I: Io>(now: Instant, id: StreamId, conn: &mut StreamConn, io: &mut I) {
    let out = conn.pending_output();
    if !out.is_empty() {
        let n = io.stream_send(id, out);
        conn.consumed(now, n);
    }
}

impl<I: Io> TcpRelays for Bridge<'_, I> {
    fn listen(
        &mut self,
        addr: SocketAddr,
        id: RelayId,
    ) -> Result<u32, uturn_proto::turn::OpenError> {
        let opts = ListenOptions {
            reuse_port: true,
            reuse_addr: true,
            backlog: RELAY_BACKLOG,
        };
        let sid = self.io.tcp_listen(addr, opts).map_err(|e| open_error(&e))?;
        self.tcp.listeners.insert(sid, id);
        Ok(sid.0)
    }

    fn close_listener(&mut self, handle: u32) {
        let sid = StreamId(handle);
        if self.tcp.listeners.remove(&sid).is_some() {
            self.io.stream_close(sid);
        }
    }

    fn connect(&mut self, from: SocketAddr, peer: SocketAddr, conn: ConnectionId) {
        match self.io.tcp_connect(Some(from), peer) {
            Ok(sid) => {
                self.tcp.peers.insert(
                    sid,
                    Peer {
                        id: conn,
                        state: PeerState::Connecting,
                    },
                );
                self.tcp.by_id.insert(conn.0, sid);
            }
            Err(e) => {
                tracing::debug!(error = %e, %peer, "RFC 6062 connect failed at once");
                self.tcp.orders.push(Order::ConnectFailed(conn));
            }
        }
    }

    fn close_peer(&mut self, conn: ConnectionId) {
        let Some(sid) = self.tcp.by_id.remove(&conn.0) else {
            return;
        };
        if let Some(p) = self.tcp.peers.remove(&sid) {
            if let PeerState::Spliced { client } = p.state {
                self.tcp.orders.push(Order::CloseClient(client));
            }
        }
        self.io.stream_close(sid);
    }

    fn splice(&mut self, client: u32, conn: ConnectionId) {
        match self.tcp.by_id.get(&conn.0) {
            Some(&peer) => self.tcp.orders.push(Order::Splice { client, peer }),
            None => tracing::warn!(conn = conn.0, "splice of an unknown connection"),
        }
    }

    fn hand_off(&mut self, client: u32, worker: u8) {
        self.tcp.orders.push(Order::HandOff { client, worker });
    }
}

impl RelayWorker {
    fn bridge<'a, I: Io>(
        io: &'a mut I,
        relays: &'a mut Vec<Option<RelayId>>,
        tcp: &'a mut RelayTcp,
    ) -> Bridge<'a, I> {
        Bridge { io, relays, tcp }
    }

    /// First tick: the listeners bound by the binary join the driver.
    pub(super) fn adopt_listeners<I: Io>(&mut self, io: &mut I) {
        for (l, transport) in std::mem::take(&mut self.streams.setup.listeners) {
            let addr = l.local_addr().ok();
            match io.adopt_listener(l) {
                Ok(id) => {
                    self.streams.listeners.insert(id, transport);
                }
                Err(e) => {
                    tracing::error!(worker = self.id, ?addr, error = %e, "cannot adopt a TCP listener")
                }
            }
        }
    }

    /// Per batch: hand-offs from other workers, timers, deferred messages.
    pub(super) fn streams_tick<I: Io>(&mut self, now: Instant, io: &mut I) {
        self.take_hand_offs(now, io);
        self.retry_hand_offs(now, io);
        if self.streams.next_sweep.is_none_or(|t| now >= t) {
            self.streams.next_sweep = Some(now + SWEEP);
            self.sweep(now, io);
        }
        self.drain_deferred(now, io);
    }

    /// Hand-offs that had to wait for the connection's output to leave (see [`PendingHandOff`]).
    fn retry_hand_offs<I: Io>(&mut self, now: Instant, io: &mut I) {
        if self.streams.pending_handoffs.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.streams.pending_handoffs) {
            let Some(mut c) = self.streams.clients.remove(&id) else {
                continue;
            };
            let Some(p) = c.handoff.take() else {
                self.streams.clients.insert(id, c);
                continue;
            };
            let flow = self.hand_off(now, id, &mut c, p.request, p.worker, io);
            self.settle(now, id, c, flow, p.since, io);
        }
    }

    /// Puts a client back after frames were handled, as `flow` says.
    fn settle<I: Io>(
        &mut self,
        now: Instant,
        id: StreamId,
        mut c: Client,
        flow: Flow,
        since: Instant,
        io: &mut I,
    ) {
        match flow {
            Flow::Keep => {
                flush(now, id, &mut c.conn, io);
                self.streams.clients.insert(id, c);
            }
            Flow::Close(reason) => {
                self.streams.clients.insert(id, c);
                self.close_client(now, id, reason, io);
            }
            Flow::Gone => {}
            Flow::Later { request, worker } => {
                flush(now, id, &mut c.conn, io);
                self.streams.clients.insert(id, c);
                if now.saturating_duration_since(since) >= HANDOFF_PATIENCE {
                    tracing::debug!(conn = id.0, "hand-off still blocked; closing");
                    return self.close_client(now, id, CloseReason::ClosedByClient, io);
                }
                io.stream_set_reading(id, false);
                if let Some(c) = self.streams.clients.get_mut(&id) {
                    c.handoff = Some(PendingHandOff {
                        request,
                        worker,
                        since,
                    });
                }
                self.streams.pending_handoffs.push(id);
            }
        }
    }

    /// Connection timers (handshake, partial message, idle, stall).
    fn sweep<I: Io>(&mut self, now: Instant, io: &mut I) {
        let expired: Vec<(StreamId, CloseReason)> = self
            .streams
            .clients
            .iter_mut()
            .filter_map(|(id, c)| c.conn.handle_timeout(now).err().map(|r| (*id, r)))
            .collect();
        for (id, reason) in expired {
            self.close_client(now, id, reason, io);
        }
    }

    pub(super) fn on_stream_event<I: Io>(
        &mut self,
        now: Instant,
        event: StreamEvent<'_>,
        io: &mut I,
    ) {
        match event {
            StreamEvent::Accepted {
                listener,
                conn,
                peer,
            } => self.accepted(now, listener, conn, peer, io),
            StreamEvent::Connected { conn, error } => self.connected(now, conn, error, io),
            StreamEvent::Data { conn, bytes } => {
                if self.streams.clients.contains_key(&conn) {
                    self.client_data(now, conn, bytes, io);
                } else if self.streams.relay.peers.contains_key(&conn) {
                    self.peer_data(now, conn, bytes, io);
                }
            }
            StreamEvent::Writable { conn } => self.writable(now, conn, io),
            StreamEvent::Closed { conn, error } => {
                if let Some(e) = &error {
                    tracing::debug!(conn = conn.0, error = %e, "connection failed");
                }
                if self.streams.clients.contains_key(&conn) {
                    // EOF, or a reset: the client is gone either way.
                    self.close_client(now, conn, CloseReason::ClosedByClient, io);
                } else if self.streams.relay.peers.contains_key(&conn) {
                    self.peer_closed(now, conn, io);
                } else {
                    io.stream_close(conn);
                }
            }
        }
        self.carry_out_orders(now, io);
        self.drain_deferred(now, io);
    }

    fn accepted<I: Io>(
        &mut self,
        now: Instant,
        listener: StreamId,
        conn: StreamId,
        peer: SocketAddr,
        io: &mut I,
    ) {
        if let Some(&transport) = self.streams.listeners.get(&listener) {
            if self.streams.clients.len() >= self.streams.setup.max_clients {
                self.streams.stats.closed_limit += 1;
                return io.stream_close(conn);
            }
            let server = match io.stream_addrs(conn) {
                Ok((local, _)) => local,
                Err(_) => return io.stream_close(conn),
            };
            let limits = self.streams.setup.limits;
            let c = match (transport, &self.streams.setup.tls) {
                (Transport::Tls, Some(cfg)) => {
                    match StreamConn::tls(now, limits, Arc::clone(cfg)) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot start a TLS session");
                            return io.stream_close(conn);
                        }
                    }
                }
                (Transport::Tls, None) => return io.stream_close(conn),
                _ => StreamConn::plain(now, limits),
            };
            match transport {
                Transport::Tls => self.streams.stats.accepted_tls += 1,
                _ => self.streams.stats.accepted_tcp += 1,
            }
            let tuple = FiveTuple {
                client: peer,
                server,
                transport,
            };
            self.streams.clients.insert(
                conn,
                Client {
                    conn: Box::new(c),
                    tuple,
                    peer: None,
                    to_peer: Vec::new(),
                    handshake_counted: transport != Transport::Tls,
                    draining: false,
                    handoff: None,
                },
            );
            if self.streams.next_sweep.is_none() {
                self.streams.next_sweep = Some(now + SWEEP);
            }
            io.stream_set_reading(conn, true);
            return;
        }
        let Some(&relay) = self.streams.relay.listeners.get(&listener) else {
            return io.stream_close(conn);
        };
        // RFC 6062 section 5.3: a peer connected to a relayed address. It is not read until
        // it is spliced; the kernel holds (and bounds) what it sends meanwhile.
        let n = self.now(now);
        match self.server.tcp_accepted(n, relay, peer) {
            Some(id) => {
                self.streams.relay.peers.insert(
                    conn,
                    Peer {
                        id,
                        state: PeerState::Waiting,
                    },
                );
                self.streams.relay.by_id.insert(id.0, conn);
            }
            None => io.stream_close(conn),
        }
    }

    fn connected<I: Io>(
        &mut self,
        now: Instant,
        conn: StreamId,
        error: Option<std::io::Error>,
        io: &mut I,
    ) {
        let Some(p) = self.streams.relay.peers.get_mut(&conn) else {
            return io.stream_close(conn);
        };
        let id = p.id;
        let ok = error.is_none();
        if ok {
            p.state = PeerState::Waiting;
        } else {
            self.streams.relay.peers.remove(&conn);
            self.streams.relay.by_id.remove(&id.0);
            io.stream_close(conn);
        }
        let n = self.now(now);
        let mut bridge = Self::bridge(io, &mut self.relays, &mut self.streams.relay);
        self.server.tcp_connected(n, id, ok, &mut bridge);
    }

    /// Bytes from a client connection: TURN messages, or a spliced connection's payload.
    fn client_data<I: Io>(&mut self, now: Instant, id: StreamId, bytes: &[u8], io: &mut I) {
        let Some(mut c) = self.streams.clients.remove(&id) else {
            return;
        };
        if c.draining {
            // Its peer is gone; one buffer read before reading stopped has nowhere to go.
            self.streams.clients.insert(id, c);
            return;
        }
        if let Err(reason) = c.conn.receive(now, bytes) {
            self.streams.clients.insert(id, c);
            return self.close_client(now, id, reason, io);
        }
        if !c.handshake_counted && !c.conn.is_handshaking() {
            c.handshake_counted = true;
            self.streams.stats.tls_handshakes += 1;
        }
        // TLS close_notify: what came before it is handled first, then the connection closes.
        let closing = c.conn.client_has_closed();
        if c.conn.is_spliced() {
            c.conn.take_raw_into(&mut c.to_peer);
            self.streams.clients.insert(id, c);
            self.push_to_peer(id, io);
            flush_client(&mut self.streams.clients, now, id, io);
            if closing {
                self.close_client(now, id, CloseReason::ClosedByClient, io);
            }
            return;
        }
        let flow = self.frames(now, id, &mut c, io);
        let keep = matches!(flow, Flow::Keep);
        self.settle(now, id, c, flow, now, io);
        if keep && closing {
            self.close_client(now, id, CloseReason::ClosedByClient, io);
        }
    }

    /// Hands each whole message of a (framed) client connection to the server, and carries out
    /// what the server answers. `c` is out of the table meanwhile.
    fn frames<I: Io>(&mut self, now: Instant, id: StreamId, c: &mut Client, io: &mut I) -> Flow {
        let tok = token(id);
        let n = self.now(now);
        loop {
            let frame = match c.conn.next_message(now) {
                None => return Flow::Keep,
                Some(Err(reason)) => return Flow::Close(reason),
                Some(Ok(Frame::Stun(b) | Frame::ChannelData(b))) => b,
            };
            let mut bridge = Self::bridge(io, &mut self.relays, &mut self.streams.relay);
            let t =
                self.server
                    .handle_client(n, tok, c.tuple, frame, &mut self.out[..], &mut bridge);
            // A ConnectionBind for another worker: the connection moves, request and all.
            if let Some(worker) = self.streams.relay.take_hand_off(tok) {
                let request = frame.to_vec();
                return self.hand_off(now, id, c, request, worker, io);
            }
            if let Some(t) = t {
                let data = match &t.payload {
                    Payload::Input(r) => frame.get(r.clone()).unwrap_or_default(),
                    Payload::Output(len) => &self.out[..*len],
                };
                match t.via {
                    // The fast path, ChannelData or Send to a UDP peer: no copy but the send's.
                    Via::Relay(h) => io.send(SockId(h), t.to, data),
                    Via::Listener(v) if v == tok => {
                        if let Payload::Output(len) = t.payload {
                            if let Err(reason) = c.conn.send(now, &self.out[..len]) {
                                return Flow::Close(reason);
                            }
                        }
                    }
                    Via::Listener(_) => match t.payload {
                        Payload::Output(len) => self.route_out(now, &t, len, io),
                        Payload::Input(ref r) => {
                            let d = frame.get(r.clone()).unwrap_or_default();
                            self.route(now, &t, d, io);
                        }
                    },
                }
            }
            if let Some(peer) = self.streams.relay.take_splice(tok) {
                self.splice(now, id, c, peer, io);
                return Flow::Keep;
            }
        }
    }

    /// RFC 6062 section 5.4: after the ConnectionBind success (queued already), the client
    /// connection carries the peer's bytes. What followed the request goes to the peer.
    fn splice<I: Io>(
        &mut self,
        now: Instant,
        id: StreamId,
        c: &mut Client,
        peer: StreamId,
        io: &mut I,
    ) {
        let Some(p) = self.streams.relay.peers.get_mut(&peer) else {
            return;
        };
        p.state = PeerState::Spliced { client: id };
        c.peer = Some(peer);
        let rest = c.conn.splice();
        c.to_peer.extend_from_slice(&rest);
        if !c.to_peer.is_empty() {
            let n = io.stream_send(peer, &c.to_peer);
            self.streams.stats.spliced_bytes += n as u64;
            c.to_peer.drain(..n);
        }
        io.stream_set_reading(id, c.to_peer.is_empty());
        io.stream_set_reading(peer, true);
        let _ = now;
    }

    fn hand_off<I: Io>(
        &mut self,
        now: Instant,
        id: StreamId,
        c: &mut Client,
        request: Vec<u8>,
        worker: u8,
        io: &mut I,
    ) -> Flow {
        let Some(tx) = self
            .streams
            .setup
            .handoff_peers
            .get(usize::from(worker))
            .cloned()
        else {
            // A CONNECTION-ID naming no worker: forged or stale.
            return Flow::Close(CloseReason::ClosedByClient);
        };
        let fd = match io.stream_detach(id) {
            Ok(fd) => fd,
            // Output of this worker is still in flight on it: again next batch.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Flow::Later { request, worker };
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a connection off; closing it");
                return Flow::Close(CloseReason::ClosedByClient);
            }
        };
        let placeholder = Box::new(StreamConn::plain(now, self.streams.setup.limits));
        let conn = std::mem::replace(&mut c.conn, placeholder);
        let msg = HandOff {
            fd,
            conn,
            tuple: c.tuple,
            request,
        };
        match tx.try_send(msg) {
            Ok(()) => self.streams.stats.handed_off += 1,
            // The owner is gone or swamped: dropping the message closes the socket, and the
            // client may try again.
            Err(e) => tracing::warn!(worker, error = %e, "hand-off failed"),
        }
        Flow::Gone
    }

    /// Connections handed to this worker by others.
    fn take_hand_offs<I: Io>(&mut self, now: Instant, io: &mut I) {
        loop {
            let msg = match &self.streams.setup.handoff_rx {
                Some(rx) => match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
                },
                None => return,
            };
            let HandOff {
                fd,
                conn,
                tuple,
                request,
            } = msg;
            let id = match io.stream_adopt(fd) {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot adopt a handed-off connection");
                    continue;
                }
            };
            self.streams.stats.taken_over += 1;
            let mut c = Client {
                conn,
                tuple,
                peer: None,
                to_peer: Vec::new(),
                handshake_counted: true,
                draining: false,
                handoff: None,
            };
            let tok = token(id);
            let n = self.now(now);
            let mut bridge = Self::bridge(io, &mut self.relays, &mut self.streams.relay);
            let t = self.server.handle_client(
                n,
                tok,
                c.tuple,
                &request,
                &mut self.out[..],
                &mut bridge,
            );
            let mut flow = Flow::Keep;
            if let Some(t) = t {
                if let Payload::Output(len) = t.payload {
                    if let Err(r) = c.conn.send(now, &self.out[..len]) {
                        flow = Flow::Close(r);
                    }
                }
            }
            if let Some(peer) = self.streams.relay.take_splice(tok) {
                self.splice(now, id, &mut c, peer, io);
            } else if matches!(flow, Flow::Keep) {
                // Not bound (the connection died meanwhile, or a bad request): go on reading
                // TURN messages; the server answered the request already.
                io.stream_set_reading(id, true);
                flow = self.frames(now, id, &mut c, io);
            }
            self.settle(now, id, c, flow, now, io);
            self.carry_out_orders(now, io);
        }
    }

    /// Bytes from a spliced peer go to its client.
    fn peer_data<I: Io>(&mut self, now: Instant, peer: StreamId, bytes: &[u8], io: &mut I) {
        let Some(p) = self.streams.relay.peers.get(&peer) else {
            return;
        };
        let PeerState::Spliced { client } = p.state else {
            // Not spliced: nothing may read it yet (io_uring can deliver one buffer after
            // reading stopped only for a connection that was being read).
            return;
        };
        let Some(c) = self.streams.clients.get_mut(&client) else {
            return;
        };
        if let Err(reason) = c.conn.send(now, bytes) {
            return self.close_client(now, client, reason, io);
        }
        self.streams.stats.spliced_bytes += bytes.len() as u64;
        flush(now, client, &mut c.conn, io);
        if c.conn.outbound_room() < PAUSE_ROOM {
            io.stream_set_reading(peer, false);
        }
    }

    /// Moves a spliced client's bytes into its peer's queue; the client is read only while
    /// none are left over.
    fn push_to_peer<I: Io>(&mut self, client: StreamId, io: &mut I) {
        let Some(c) = self.streams.clients.get_mut(&client) else {
            return;
        };
        let Some(peer) = c.peer else { return };
        if !c.to_peer.is_empty() {
            let n = io.stream_send(peer, &c.to_peer);
            self.streams.stats.spliced_bytes += n as u64;
            c.to_peer.drain(..n);
        }
        io.stream_set_reading(client, c.to_peer.is_empty());
    }

    fn writable<I: Io>(&mut self, now: Instant, conn: StreamId, io: &mut I) {
        if let Some(c) = self.streams.clients.get_mut(&conn) {
            flush(now, conn, &mut c.conn, io);
            if c.draining {
                if c.conn.pending_output().is_empty() {
                    self.close_client(now, conn, CloseReason::ClosedByClient, io);
                }
                return;
            }
            if let Some(peer) = c.peer {
                if c.conn.outbound_room() >= PAUSE_ROOM {
                    io.stream_set_reading(peer, true);
                }
            }
        } else if let Some(Peer {
            state: PeerState::Spliced { client },
            ..
        }) = self.streams.relay.peers.get(&conn)
        {
            let client = *client;
            self.push_to_peer(client, io);
        }
    }

    /// A peer data connection closed (EOF or error).
    fn peer_closed<I: Io>(&mut self, now: Instant, peer: StreamId, io: &mut I) {
        let Some(p) = self.streams.relay.peers.remove(&peer) else {
            return io.stream_close(peer);
        };
        self.streams.relay.by_id.remove(&p.id.0);
        io.stream_close(peer);
        self.server.tcp_closed(p.id);
        if let PeerState::Spliced { client } = p.state {
            self.close_spliced_client(now, client, io);
        }
    }

    /// Closes a spliced client whose peer is gone. Everything the peer sent before it closed
    /// still reaches the client: what the driver's queue cannot take yet stays in the
    /// connection, which drains on `Writable` and closes when empty (a client that stops
    /// reading meanwhile meets the stall timer).
    fn close_spliced_client<I: Io>(&mut self, now: Instant, client: StreamId, io: &mut I) {
        let Some(c) = self.streams.clients.get_mut(&client) else {
            return;
        };
        c.peer = None;
        c.conn.close();
        flush(now, client, &mut c.conn, io);
        if c.conn.pending_output().is_empty() {
            self.close_client(now, client, CloseReason::ClosedByClient, io);
        } else {
            c.draining = true;
            io.stream_set_reading(client, false);
        }
    }

    /// Closes a client connection: an allocation made on it goes (RFC 8656 section 3.1 leaves
    /// it no 5-tuple), as does a peer connection spliced with it.
    pub(super) fn close_client<I: Io>(
        &mut self,
        now: Instant,
        id: StreamId,
        reason: CloseReason,
        io: &mut I,
    ) {
        let Some(mut c) = self.streams.clients.remove(&id) else {
            return;
        };
        tracing::debug!(conn = id.0, client = %c.tuple.client, %reason, "closing a client connection");
        let s = &mut self.streams.stats;
        match reason {
            CloseReason::ClosedByClient => s.closed_by_client += 1,
            CloseReason::HandshakeTimeout
            | CloseReason::PartialTimeout
            | CloseReason::IdleTimeout
            | CloseReason::Stalled => s.closed_timeout += 1,
            CloseReason::OutboundFull(_) => s.closed_overflow += 1,
            CloseReason::Framing(_) => s.closed_error += 1,
            CloseReason::Tls(_) => {
                s.closed_error += 1;
                s.tls_failures += 1;
            }
        }
        if let Some(peer) = c.peer {
            // A data connection: the peer side goes too, after what the client sent.
            if let Some(p) = self.streams.relay.peers.remove(&peer) {
                self.streams.relay.by_id.remove(&p.id.0);
                if !c.to_peer.is_empty() {
                    io.stream_send(peer, &c.to_peer);
                }
                io.stream_close(peer);
                self.server.tcp_closed(p.id);
            }
        } else {
            let mut bridge = Self::bridge(io, &mut self.relays, &mut self.streams.relay);
            self.server
                .connection_closed(token(id), c.tuple, &mut bridge);
        }
        c.conn.close();
        flush(now, id, &mut c.conn, io);
        io.stream_close(id);
        self.carry_out_orders(now, io);
    }

    /// The server's orders that could not be carried out inside its call.
    fn carry_out_orders<I: Io>(&mut self, now: Instant, io: &mut I) {
        while let Some(o) = self.streams.relay.orders.pop() {
            match o {
                Order::CloseClient(client) => self.close_spliced_client(now, client, io),
                Order::ConnectFailed(conn) => {
                    let n = self.now(now);
                    let mut bridge = Self::bridge(io, &mut self.relays, &mut self.streams.relay);
                    self.server.tcp_connected(n, conn, false, &mut bridge);
                }
                // Only meaningful inside the call that made them (see `frames`).
                Order::Splice { .. } | Order::HandOff { .. } => {}
            }
        }
    }

    /// Messages the server decided later than the request (Connect responses,
    /// ConnectionAttempt indications).
    pub(super) fn drain_deferred<I: Io>(&mut self, now: Instant, io: &mut I) {
        while let Some(t) = self.server.poll_transmit(&mut self.out[..]) {
            let Payload::Output(len) = t.payload else {
                continue;
            };
            self.route_out(now, &t, len, io);
        }
    }

    /// Sends a transmit whose bytes are at hand: to a client connection, or from a UDP socket.
    pub(super) fn route<I: Io>(&mut self, now: Instant, t: &Transmit, data: &[u8], io: &mut I) {
        match t.via {
            Via::Listener(tok) => match stream_of(tok) {
                Some(id) => self.send_to_client(now, id, data, io),
                None => io.send(SockId(tok), t.to, data),
            },
            Via::Relay(h) => io.send(SockId(h), t.to, data),
        }
    }

    /// [`Self::route`] for a transmit the server wrote into `self.out`, without copying it out
    /// first.
    pub(super) fn route_out<I: Io>(&mut self, now: Instant, t: &Transmit, len: usize, io: &mut I) {
        let data = &self.out[..len.min(self.out.len())];
        match t.via {
            Via::Listener(tok) => match stream_of(tok) {
                Some(id) => {
                    let Some(c) = self.streams.clients.get_mut(&id) else {
                        return;
                    };
                    if let Err(reason) = c.conn.send(now, data) {
                        return self.close_client(now, id, reason, io);
                    }
                    flush(now, id, &mut c.conn, io);
                }
                None => io.send(SockId(tok), t.to, data),
            },
            Via::Relay(h) => io.send(SockId(h), t.to, data),
        }
    }

    /// Queues a message for a client connection; a client that does not read is closed when its
    /// output cap is reached.
    pub(super) fn send_to_client<I: Io>(
        &mut self,
        now: Instant,
        id: StreamId,
        data: &[u8],
        io: &mut I,
    ) {
        let Some(c) = self.streams.clients.get_mut(&id) else {
            return;
        };
        if let Err(reason) = c.conn.send(now, data) {
            return self.close_client(now, id, reason, io);
        }
        flush(now, id, &mut c.conn, io);
    }
}

/// What to do with a client connection after its messages were handled.
#[derive(Debug)]
enum Flow {
    Keep,
    Close(CloseReason),
    /// Handed off: the connection is no longer this worker's.
    Gone,
    /// A hand-off that must wait (see [`PendingHandOff`]).
    Later {
        request: Vec<u8>,
        worker: u8,
    },
}

fn flush_client<I: Io>(
    clients: &mut HashMap<StreamId, Client>,
    now: Instant,
    id: StreamId,
    io: &mut I,
) {
    if let Some(c) = clients.get_mut(&id) {
        flush(now, id, &mut c.conn, io);
    }
}
