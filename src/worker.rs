//! One relay worker: a TURN [`Server`] behind the driver's [`Handler`] interface. The worker owns
//! its server, its listening sockets (SO_REUSEPORT, one per listen address) and the relay sockets
//! its allocations open; nothing here is shared with another worker, except the RFC 6062 data
//! connections handed to the worker that owns their peer connection (see [`streams`]).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use uturn_proto::turn::auth::Credentials;
use uturn_proto::turn::policy::PeerPolicy;
use uturn_proto::turn::{
    FiveTuple, Now, OpenError, Payload, RelayId, RelaySockets, Server, Stats, TcpRelays, Transport,
    Via,
};

use crate::driver::{
    Counters, Handler, Io, RecvPacket, SockId, StreamCounters, StreamEvent, UdpOptions,
};

mod streams;
pub use streams::{HandOff, StreamSetup, TcpStats, STREAM_TOKEN};

/// How often a worker publishes its counters.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Messages from the main thread to a worker's handler.
#[derive(Debug)]
pub enum WorkerMsg {
    /// SIGHUP: new users, secrets and peer policy; allocations are kept.
    Reload(Box<(Credentials, PeerPolicy)>),
    /// SIGTERM/SIGINT: stop taking allocations.
    Drain,
}

/// A worker's counters, published to the metrics thread.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub worker: usize,
    pub stats: Stats,
    pub driver: Counters,
    /// Client connections over TCP and TLS, and RFC 6062 data connections.
    pub tcp: TcpStats,
    pub streams: StreamCounters,
}

/// The handler of one relay worker.
#[derive(Debug)]
pub struct RelayWorker {
    id: usize,
    server: Server,
    /// Listening sockets: `SockId(i)` for `i < listeners.len()`, with their addresses.
    listeners: Vec<SocketAddr>,
    /// Relay socket -> the server's id for it, indexed by `SockId`.
    relays: Vec<Option<RelayId>>,
    out: Box<[u8; 2048]>,
    control: Receiver<WorkerMsg>,
    snapshots: Option<Sender<Snapshot>>,
    next_snapshot: Instant,
    /// Unix time at `clock_base`, so that `Now::unix_secs` costs no system call per batch.
    clock_base: Instant,
    unix_base: u64,
    /// TCP and TLS clients, RFC 6062 relaying.
    streams: streams::Streams,
    started: bool,
}

impl RelayWorker {
    pub fn new(
        id: usize,
        server: Server,
        listeners: Vec<SocketAddr>,
        control: Receiver<WorkerMsg>,
        snapshots: Option<Sender<Snapshot>>,
    ) -> Self {
        let now = Instant::now();
        let unix_base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        RelayWorker {
            id,
            server,
            listeners,
            relays: Vec::new(),
            out: Box::new([0; 2048]),
            control,
            snapshots,
            next_snapshot: now,
            clock_base: now,
            unix_base,
            streams: streams::Streams::default(),
            started: false,
        }
    }

    /// Adds client listeners over TCP and TLS, and the hand-off channels between workers.
    pub fn with_streams(mut self, setup: StreamSetup) -> Self {
        self.streams = streams::Streams::new(setup);
        self
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    fn now(&self, instant: Instant) -> Now {
        Now {
            instant,
            unix_secs: self.unix_base
                + instant.saturating_duration_since(self.clock_base).as_secs(),
        }
    }

    fn relay_id(&self, sock: SockId) -> Option<RelayId> {
        self.relays.get(sock.0 as usize).copied().flatten()
    }

    fn poll_control(&mut self) {
        loop {
            match self.control.try_recv() {
                Ok(WorkerMsg::Reload(b)) => {
                    let (creds, policy) = *b;
                    self.server.reload(creds, policy);
                    tracing::info!(worker = self.id, "credentials and peer policy reloaded");
                }
                Ok(WorkerMsg::Drain) => self.server.drain(),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// The driver seen through the server's [`RelaySockets`] trait (and [`TcpRelays`], in
/// [`streams`]).
struct Bridge<'a, I: Io> {
    io: &'a mut I,
    relays: &'a mut Vec<Option<RelayId>>,
    tcp: &'a mut streams::RelayTcp,
}

impl<I: Io> RelaySockets for Bridge<'_, I> {
    fn open(
        &mut self,
        addr: SocketAddr,
        id: RelayId,
        dont_fragment: bool,
    ) -> Result<u32, OpenError> {
        let sock = self
            .io
            .open_udp_with(addr, UdpOptions { dont_fragment })
            .map_err(|e| open_error(&e))?;
        let i = sock.0 as usize;
        if self.relays.len() <= i {
            self.relays.resize(i + 1, None);
        }
        self.relays[i] = Some(id);
        Ok(sock.0)
    }

    fn close(&mut self, handle: u32) {
        if let Some(slot) = self.relays.get_mut(handle as usize) {
            *slot = None;
        }
        self.io.close(SockId(handle));
    }

    fn tcp(&mut self) -> Option<&mut dyn TcpRelays> {
        Some(self)
    }
}

fn open_error(e: &io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => OpenError::AddrInUse,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => OpenError::Exhausted,
        _ => OpenError::Other,
    }
}

impl Handler for RelayWorker {
    fn on_recv<I: Io>(
        &mut self,
        now: Instant,
        sock: SockId,
        from: SocketAddr,
        mut pkt: I::Packet,
        io: &mut I,
    ) {
        let now = self.now(now);
        let range = pkt.range();
        let (transmit, base) = if let Some(id) = self.relay_id(sock) {
            let t = self
                .server
                .handle_peer(now, id, from, pkt.buf_mut(), range, &mut self.out[..]);
            (t, 0)
        } else if let Some(&server) = self.listeners.get(sock.0 as usize) {
            let tuple = FiveTuple {
                client: from,
                server,
                transport: Transport::Udp,
            };
            let mut bridge = Bridge {
                io,
                relays: &mut self.relays,
                tcp: &mut self.streams.relay,
            };
            let t = self.server.handle_client(
                now,
                sock.0,
                tuple,
                &pkt.buf()[range.clone()],
                &mut self.out[..],
                &mut bridge,
            );
            (t, range.start)
        } else {
            // A datagram on a socket closed earlier in this batch.
            return;
        };
        let Some(t) = transmit else { return };
        if let Via::Listener(tok) = t.via {
            if let Some(id) = streams::stream_of(tok) {
                // To a client on TCP or TLS: the bytes are copied into its connection.
                match t.payload {
                    Payload::Input(r) => {
                        let data = pkt.buf().get(base + r.start..base + r.end);
                        self.send_to_client(now.instant, id, data.unwrap_or_default(), io);
                    }
                    Payload::Output(n) => self.route_out(now.instant, &t, n, io),
                }
                return;
            }
        }
        let via = match t.via {
            Via::Listener(s) | Via::Relay(s) => SockId(s),
        };
        match t.payload {
            Payload::Input(r) => io.forward(pkt, via, t.to, base + r.start..base + r.end),
            Payload::Output(n) => io.send(via, t.to, &self.out[..n]),
        }
    }

    fn on_tick<I: Io>(&mut self, now: Instant, io: &mut I) {
        self.poll_control();
        if !self.started {
            self.started = true;
            self.adopt_listeners(io);
        }
        let n = self.now(now);
        let mut bridge = Bridge {
            io,
            relays: &mut self.relays,
            tcp: &mut self.streams.relay,
        };
        self.server.handle_timeout(n, &mut bridge);
        self.streams_tick(now, io);
        if now >= self.next_snapshot {
            self.next_snapshot = now + STATS_INTERVAL;
            if let Some(tx) = &self.snapshots {
                let _ = tx.try_send(Snapshot {
                    worker: self.id,
                    stats: self.server.stats().clone(),
                    driver: *io.counters(),
                    tcp: self.streams.snapshot(),
                    streams: *io.stream_counters(),
                });
            }
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        [
            self.server.poll_timeout(),
            self.streams.next_timeout(),
            Some(self.next_snapshot),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_stream<I: Io>(&mut self, now: Instant, event: StreamEvent<'_>, io: &mut I) {
        self.on_stream_event(now, event, io);
    }
}
