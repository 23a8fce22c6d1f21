//! A simulated network for in-memory tests of whole workers: the driver's I/O replaced by a
//! queue with a fixed latency, the real sans-IO TURN server of `uturn-proto` with relay sockets
//! that exist only here, and a simulated clock. The worker, its fabric with the NAT emulator, the
//! ICE scenario and the measurements are the real ones; only the kernel is missing.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use std::net::TcpListener;
use std::os::fd::OwnedFd;

use uturn::driver::{
    Counters, Handler, Io, ListenOptions, RecvPacket, SockId, StreamCounters, StreamId, StreamIo,
    UdpOptions,
};
use uturn_proto::turn::auth::{Credentials as TurnCredentials, NonceKey};
use uturn_proto::turn::policy::{PeerPolicy, PeerPolicyConfig};
use uturn_proto::turn::{
    FiveTuple, Now, OpenError, Payload, RelayId, RelaySockets, Server, ServerConfig, Transport, Via,
};

use super::matrix::PairOutcome;
use super::{IceConfig, IceScenario, Placement};
use crate::fabric::{Fabric, FabricCounters, DIRECT_IP};
use crate::stats::{Clock, Stats};
use crate::turn_only::Credentials;
use crate::worker::{Media, Plan, Report, Worker};

pub const REALM: &str = "sim.test";
const USER: &str = "sim";
const PASS: &str = "sim-pass";
const UNIX0: u64 = 1_800_000_000;
const HEADROOM: usize = 64;

pub fn server_addr() -> SocketAddr {
    "127.0.0.1:3478".parse().unwrap()
}
const RELAY_PORTS: std::ops::RangeInclusive<u16> = 50000..=59999;

pub fn credentials() -> Credentials {
    Credentials {
        username: USER.into(),
        password: PASS.into(),
        realm: REALM.into(),
    }
}

/// A received datagram, as the driver would hand it over.
pub struct SimPacket {
    buf: Vec<u8>,
    range: Range<usize>,
}

impl RecvPacket for SimPacket {
    fn buf(&self) -> &[u8] {
        &self.buf
    }
    fn buf_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
    fn range(&self) -> Range<usize> {
        self.range.clone()
    }
}

/// The worker's sockets: addresses in a table, sends collected for the network.
#[derive(Default)]
pub struct SimIo {
    socks: HashMap<SockId, SocketAddr>,
    by_addr: HashMap<SocketAddr, SockId>,
    next_id: u32,
    next_port: u16,
    out: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    counters: Counters,
    streams: StreamCounters,
}

/// The simulated network is UDP only (the ICE scenario never opens a stream): every stream
/// operation fails or does nothing.
impl StreamIo for SimIo {
    fn tcp_listen(&mut self, _: SocketAddr, _: ListenOptions) -> io::Result<StreamId> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn adopt_listener(&mut self, _: TcpListener) -> io::Result<StreamId> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn tcp_connect(&mut self, _: Option<SocketAddr>, _: SocketAddr) -> io::Result<StreamId> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn stream_adopt(&mut self, _: OwnedFd) -> io::Result<StreamId> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn stream_addrs(&self, _: StreamId) -> io::Result<(SocketAddr, Option<SocketAddr>)> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn stream_set_reading(&mut self, _: StreamId, _: bool) {}
    fn stream_send(&mut self, _: StreamId, _: &[u8]) -> usize {
        0
    }
    fn stream_room(&self, _: StreamId) -> usize {
        0
    }
    fn stream_close(&mut self, _: StreamId) {}
    fn stream_detach(&mut self, _: StreamId) -> io::Result<OwnedFd> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn stream_counters(&self) -> &StreamCounters {
        &self.streams
    }
}

impl Io for SimIo {
    type Packet = SimPacket;

    fn open_udp_with(&mut self, addr: SocketAddr, _: UdpOptions) -> io::Result<SockId> {
        let addr = if addr.port() == 0 {
            self.next_port = self.next_port.max(40000) + 1;
            SocketAddr::new(addr.ip(), self.next_port)
        } else {
            addr
        };
        if self.by_addr.contains_key(&addr) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        self.next_id += 1;
        let id = SockId(self.next_id);
        self.socks.insert(id, addr);
        self.by_addr.insert(addr, id);
        Ok(id)
    }
    fn local_addr(&self, sock: SockId) -> io::Result<SocketAddr> {
        self.socks
            .get(&sock)
            .copied()
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }
    fn close(&mut self, sock: SockId) {
        if let Some(a) = self.socks.remove(&sock) {
            self.by_addr.remove(&a);
        }
    }
    fn forward(&mut self, pkt: SimPacket, via: SockId, to: SocketAddr, range: Range<usize>) {
        self.send(via, to, &pkt.buf[range]);
    }
    fn send(&mut self, via: SockId, to: SocketAddr, bytes: &[u8]) {
        if let Some(&from) = self.socks.get(&via) {
            self.counters.send_packets += 1;
            self.out.push((from, to, bytes.to_vec()));
        } else {
            self.counters.drops += 1;
        }
    }
    fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// Relay sockets living in the simulation.
#[derive(Default)]
struct Relays {
    next: u32,
    open: HashMap<u32, (SocketAddr, RelayId)>,
    by_addr: HashMap<SocketAddr, (u32, RelayId)>,
}

impl RelaySockets for Relays {
    fn open(&mut self, addr: SocketAddr, id: RelayId, _df: bool) -> Result<u32, OpenError> {
        if self.by_addr.contains_key(&addr) {
            return Err(OpenError::AddrInUse);
        }
        self.next += 1;
        self.open.insert(self.next, (addr, id));
        self.by_addr.insert(addr, (self.next, id));
        Ok(self.next)
    }
    fn close(&mut self, handle: u32) {
        if let Some((a, _)) = self.open.remove(&handle) {
            self.by_addr.remove(&a);
        }
    }
}

fn turn_server(now: Instant) -> Server {
    let creds = TurnCredentials::new(REALM, vec![(USER, PASS)], Vec::<Vec<u8>>::new()).unwrap();
    let mut cfg = ServerConfig::new(REALM, creds, NonceKey::new([5; 32]));
    cfg.relay_v4 = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    cfg.port_min = *RELAY_PORTS.start();
    cfg.port_max = *RELAY_PORTS.end();
    cfg.peer_policy = PeerPolicy::new(&PeerPolicyConfig {
        allow: vec![],
        deny: vec![],
        allow_loopback: true,
        listen: vec![server_addr()],
        relay_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        relay_ports: RELAY_PORTS,
    });
    Server::new(cfg, now)
}

pub struct Datagram {
    pub at: Instant,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Returns true for datagrams to drop.
pub type Filter = Box<dyn FnMut(Instant, &Datagram) -> bool>;

/// What a simulated run is.
pub struct SimConfig {
    pub placement: Placement,
    pub policy: uturn_ice::Policy,
    pub pairs: usize,
    /// Pairs start this far apart.
    pub spacing: Duration,
    /// Media from the end of the ramp for this long.
    pub duration: Duration,
    pub rate: u32,
    pub consent_timeout: Duration,
    pub setup_timeout: Duration,
    pub chaos_at: Option<Duration>,
    pub seed: u64,
}

impl SimConfig {
    pub fn new(placement: Placement, pairs: usize) -> Self {
        SimConfig {
            placement,
            policy: uturn_ice::Policy::All,
            pairs,
            spacing: Duration::from_millis(10),
            duration: Duration::from_secs(5),
            rate: 20,
            consent_timeout: Duration::from_secs(6),
            setup_timeout: Duration::from_secs(20),
            chaos_at: None,
            seed: 7,
        }
    }
}

/// One worker on the simulated network.
pub struct Sim {
    pub t0: Instant,
    pub now: Instant,
    pub io: SimIo,
    pub worker: Worker<IceScenario>,
    pub server: Server,
    relays: Relays,
    queue: VecDeque<Datagram>,
    pub latency: Duration,
    pub drop: Filter,
    /// Datagrams nobody was listening for.
    pub unrouted: u64,
    reports: Receiver<Report>,
    outcomes: Receiver<PairOutcome>,
    pub stats: Option<(Box<Stats>, FabricCounters)>,
    pub pair_outcomes: Vec<PairOutcome>,
}

impl Sim {
    pub fn new(c: SimConfig) -> Sim {
        let t0 = Instant::now();
        let epoch = t0;
        let ramp = c.spacing * c.pairs as u32;
        let hold_start = epoch + ramp;
        let plan = Plan {
            worker: 0,
            clock: Clock::new(epoch),
            pair_starts: (0..c.pairs).map(|i| epoch + c.spacing * i as u32).collect(),
            agent_base: 0,
            hold_start,
            send_end: hold_start + c.duration,
            drain: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(2),
            setup_timeout: c.setup_timeout,
            media: Media {
                rate: c.rate,
                size: 100,
                max_rate: false,
            },
            chaos_at: c.chaos_at.map(|d| epoch + d),
        };
        let (tx, rx) = unbounded();
        let (otx, orx) = unbounded();
        let scenario = IceScenario::new(IceConfig {
            server: server_addr(),
            credentials: credentials(),
            policy: c.policy,
            placement: c.placement,
            consent_timeout: c.consent_timeout,
            seed: c.seed,
            outcomes: Some(otx),
        });
        let fabric = Fabric::new(DIRECT_IP, 0..2000, 1);
        Sim {
            t0,
            now: t0,
            io: SimIo::default(),
            worker: Worker::new(scenario, plan, fabric, tx),
            server: turn_server(t0),
            relays: Relays::default(),
            queue: VecDeque::new(),
            latency: Duration::from_millis(2),
            drop: Box::new(|_, _| false),
            unrouted: 0,
            reports: rx,
            outcomes: orx,
            stats: None,
            pair_outcomes: Vec::new(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn server_now(&self) -> Now {
        Now {
            instant: self.now,
            unix_secs: UNIX0 + self.elapsed().as_secs(),
        }
    }

    /// Puts what the worker sent on the wire.
    fn collect(&mut self) {
        for (from, to, bytes) in std::mem::take(&mut self.io.out) {
            self.put(from, to, bytes);
        }
    }

    fn put(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        let d = Datagram {
            at: self.now + self.latency,
            from,
            to,
            bytes,
        };
        if (self.drop)(self.now, &d) {
            return;
        }
        self.queue.push_back(d);
    }

    fn route(&mut self, d: Datagram) {
        let now = self.server_now();
        let mut out = vec![0u8; 2048];
        let server = server_addr();
        let sent = if d.to == server {
            let tuple = FiveTuple {
                client: d.from,
                server,
                transport: Transport::Udp,
            };
            self.server
                .handle_client(now, 1, tuple, &d.bytes, &mut out, &mut self.relays)
                .map(|t| {
                    let bytes = match t.payload {
                        Payload::Input(r) => d.bytes[r].to_vec(),
                        Payload::Output(n) => out[..n].to_vec(),
                    };
                    (t.via, t.to, bytes)
                })
        } else if let Some(&(_, id)) = self.relays.by_addr.get(&d.to) {
            let mut buf = vec![0u8; HEADROOM + d.bytes.len() + 4];
            buf[HEADROOM..HEADROOM + d.bytes.len()].copy_from_slice(&d.bytes);
            let range = HEADROOM..HEADROOM + d.bytes.len();
            self.server
                .handle_peer(now, id, d.from, &mut buf, range, &mut out)
                .map(|t| {
                    let bytes = match t.payload {
                        Payload::Input(r) => buf[r].to_vec(),
                        Payload::Output(n) => out[..n].to_vec(),
                    };
                    (t.via, t.to, bytes)
                })
        } else if let Some(&sock) = self.io.by_addr.get(&d.to) {
            let n = d.bytes.len();
            let mut buf = vec![0u8; HEADROOM + n + 4];
            buf[HEADROOM..HEADROOM + n].copy_from_slice(&d.bytes);
            let pkt = SimPacket {
                buf,
                range: HEADROOM..HEADROOM + n,
            };
            self.io.counters.recv_packets += 1;
            self.worker
                .on_recv(self.now, sock, d.from, pkt, &mut self.io);
            self.collect();
            return;
        } else {
            self.unrouted += 1;
            return;
        };
        if let Some((via, to, bytes)) = sent {
            let from = match via {
                Via::Listener(_) => server,
                Via::Relay(h) => match self.relays.open.get(&h) {
                    Some((a, _)) => *a,
                    None => return,
                },
            };
            self.put(from, to, bytes);
        }
    }

    /// Runs until `stop` holds or `limit` of simulated time passed; returns whether `stop` held.
    pub fn run_until(&mut self, limit: Duration, stop: impl Fn(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.worker.on_tick(self.now, &mut self.io);
            self.collect();
            self.drain_reports();
            if stop(self) {
                return true;
            }
            let next = [
                self.queue.front().map(|d| d.at),
                self.worker.next_timeout(),
                self.server.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|&t| t <= end) else {
                self.now = end;
                self.worker.on_tick(self.now, &mut self.io);
                self.collect();
                self.drain_reports();
                return stop(self);
            };
            // Some worker deadlines are read off the real clock, which the simulated one is
            // ahead of: never step backwards, and always step.
            self.now = next.max(self.now + Duration::from_micros(100));
            while self.queue.front().is_some_and(|d| d.at <= self.now) {
                let d = self.queue.pop_front().unwrap();
                self.route(d);
            }
            if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
                let n = self.server_now();
                self.server.handle_timeout(n, &mut self.relays);
            }
        }
    }

    /// Replaces the TURN server by a fresh one, as a relay restart does: every allocation and
    /// relayed address is gone.
    pub fn restart_relay(&mut self) {
        self.server = turn_server(self.now);
        self.relays = Relays::default();
    }

    /// Runs the whole plan: ramp, media, drain and shutdown.
    pub fn run_to_end(&mut self) {
        assert!(
            self.run_until(Duration::from_secs(3600), |s| s.stats.is_some()),
            "the worker never finished"
        );
    }

    fn drain_reports(&mut self) {
        while let Ok(r) = self.reports.try_recv() {
            if let Report::Done(_, s, f) = r {
                self.stats = Some((s, f));
            }
        }
        while let Ok(o) = self.outcomes.try_recv() {
            self.pair_outcomes.push(o);
        }
    }

    pub fn scenario(&self) -> &IceScenario {
        self.worker.scenario()
    }
}
