//! A tiny in-memory network for two agents: LANs, full-cone NATs, a real sans-IO TURN server
//! (the proto crate's `Server`, with fake relay sockets that live in this network), a
//! signalling channel that passes candidates as SDP lines, an mDNS resolver that only answers
//! on the asker's LAN, and a simulated clock. Tests drop or filter traffic per datagram.
//!
//! Addresses: agent `i` on LAN `l` is `10.0.l.(i+1):5000`; behind a NAT its packets to the
//! outside leave from `192.0.2.(i+1):5000` (port-preserving, endpoint-independent mapping and
//! filtering), or with `Spec::symmetric` from `192.0.2.(i+1):(5000 + k)` for the k-th destination
//! it sent to (address- and port-dependent mapping, still endpoint-independent filtering). A private address is reachable only from the same LAN. The TURN server is
//! `203.0.113.1:3478` and relays from `198.51.100.1:50000-50999`.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use uturn_ice::{Agent, AgentConfig, Candidate, Event, Input, Policy, TurnServer};
use uturn_proto::turn::auth::{Credentials as TurnCredentials, NonceKey};
use uturn_proto::turn::policy::{Cidr, PeerPolicy, PeerPolicyConfig};
use uturn_proto::turn::{
    FiveTuple, Now, OpenError, Payload, RelayId, RelaySockets, Server, ServerConfig, Transport, Via,
};

pub const REALM: &str = "uturn.test";
pub const USER: &str = "alice";
pub const PASS: &str = "alice-pass";
const UNIX0: u64 = 1_800_000_000;
const LISTENER: u32 = 1;
const HEADROOM: usize = 64;

pub fn server_addr() -> SocketAddr {
    "203.0.113.1:3478".parse().unwrap()
}
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

fn is_private(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10)
}

// ---------------------------------------------------------------------------------------------
// Relay sockets living in this network.

#[derive(Default)]
pub struct Relays {
    next: u32,
    open: HashMap<u32, (SocketAddr, RelayId)>,
}

impl RelaySockets for Relays {
    fn open(&mut self, addr: SocketAddr, id: RelayId, _df: bool) -> Result<u32, OpenError> {
        if self.open.values().any(|(a, _)| *a == addr) {
            return Err(OpenError::AddrInUse);
        }
        self.next += 1;
        self.open.insert(self.next, (addr, id));
        Ok(self.next)
    }
    fn close(&mut self, handle: u32) {
        self.open.remove(&handle);
    }
}

impl Relays {
    fn by_addr(&self, addr: SocketAddr) -> Option<RelayId> {
        self.open
            .values()
            .find(|(a, _)| *a == addr)
            .map(|(_, id)| *id)
    }
    fn addr(&self, handle: u32) -> Option<SocketAddr> {
        self.open.get(&handle).map(|(a, _)| *a)
    }
}

pub fn turn_server(now: Instant) -> Server {
    let creds = TurnCredentials::new(REALM, vec![(USER, PASS)], Vec::<Vec<u8>>::new()).unwrap();
    let mut cfg = ServerConfig::new(REALM, creds, NonceKey::new([5; 32]));
    cfg.relay_v4 = Some(IpAddr::V4(RELAY_IP));
    cfg.port_min = 50000;
    cfg.port_max = 50999;
    cfg.peer_policy = PeerPolicy::new(&PeerPolicyConfig {
        // The NATs' public side is TEST-NET-1, which the default deny list refuses.
        allow: vec!["192.0.2.0/24".parse::<Cidr>().unwrap()],
        deny: vec![],
        allow_loopback: false,
        listen: vec![server_addr()],
        relay_ips: vec![IpAddr::V4(RELAY_IP)],
        relay_ports: 50000..=50999,
    });
    Server::new(cfg, now)
}

// ---------------------------------------------------------------------------------------------
// Hosts.

/// How one agent is set up.
#[derive(Clone, Debug)]
pub struct Spec {
    pub controlling: bool,
    pub lan: u8,
    pub nat: bool,
    pub mdns: bool,
    pub policy: Policy,
    /// STUN (the TURN server doubles as STUN server) and TURN.
    pub servers: bool,
    pub tie_breaker: Option<u64>,
    pub seed: u8,
    /// Behind the NAT: a new public port per destination (RFC 4787 APDM).
    pub symmetric: bool,
}

impl Spec {
    pub fn new(controlling: bool) -> Self {
        Spec {
            controlling,
            lan: 1,
            nat: false,
            mdns: false,
            policy: Policy::All,
            servers: false,
            tie_breaker: None,
            seed: if controlling { 1 } else { 2 },
            symmetric: false,
        }
    }
}

pub struct Host {
    pub agent: Agent,
    pub base: SocketAddr,
    pub lan: u8,
    pub public: Option<SocketAddr>,
    pub mdns: Option<String>,
    /// Application data received, with its source.
    pub received: Vec<(SocketAddr, Vec<u8>)>,
    /// Every event, with the simulated time it was seen.
    pub events: Vec<(Duration, Event)>,
    /// Every candidate line signalled.
    pub lines: Vec<String>,
    /// With `Spec::symmetric`: the destinations sent to, in order; the k-th one's mapping is
    /// public port 5000 + k.
    pub symmetric: Option<Vec<SocketAddr>>,
}

impl Host {
    pub fn connected_at(&self) -> Vec<Duration> {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Connected(_)))
            .map(|(t, _)| *t)
            .collect()
    }
    pub fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| f(e)).count()
    }
    pub fn first(&self, f: impl Fn(&Event) -> bool) -> Option<Duration> {
        self.events.iter().find(|(_, e)| f(e)).map(|(t, _)| *t)
    }
    pub fn local_candidates(&self) -> Vec<Candidate> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::LocalCandidate(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}

pub struct Datagram {
    pub at: Instant,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

type Filter = Box<dyn FnMut(&Datagram) -> bool>;
type SignalFilter = Box<dyn FnMut(usize, &Candidate) -> bool>;

pub struct Net {
    pub t0: Instant,
    pub now: Instant,
    pub hosts: Vec<Host>,
    pub server: Server,
    pub relays: Relays,
    queue: VecDeque<Datagram>,
    pub latency: Duration,
    /// Returns true for datagrams to drop.
    pub drop: Filter,
    /// Returns false for candidates not to pass to host `.0`.
    pub signal: SignalFilter,
    pub dropped: u64,
    /// ChannelData messages the agents sent to the TURN server.
    pub channel_data_to_server: u64,
    /// (time, from, to, bytes) of every datagram put on the wire, for determinism checks.
    pub transcript: Vec<(Duration, SocketAddr, SocketAddr, Vec<u8>)>,
}

impl Net {
    pub fn new(specs: [Spec; 2]) -> Net {
        let t0 = Instant::now();
        let mut hosts = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let n = i as u8 + 1;
            let mut cfg = AgentConfig::new(s.controlling, [s.seed; 32]);
            cfg.policy = s.policy;
            cfg.tie_breaker = s.tie_breaker;
            if s.servers {
                cfg.stun_server = Some(server_addr());
                cfg.turn = Some(TurnServer {
                    server: server_addr(),
                    username: USER.into(),
                    password: PASS.into(),
                });
            }
            let mut agent = Agent::new(cfg).unwrap();
            let base = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, s.lan, n)), 5000);
            let mdns = s.mdns.then(|| agent.random_mdns_name());
            agent.add_host(base, mdns.clone()).unwrap();
            hosts.push(Host {
                agent,
                base,
                lan: s.lan,
                public: s
                    .nat
                    .then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)), 5000)),
                mdns,
                received: Vec::new(),
                events: Vec::new(),
                lines: Vec::new(),
                symmetric: s.symmetric.then(Vec::new),
            });
        }
        let mut net = Net {
            t0,
            now: t0,
            hosts,
            server: turn_server(t0),
            relays: Relays::default(),
            queue: VecDeque::new(),
            latency: Duration::from_millis(5),
            drop: Box::new(|_| false),
            signal: Box::new(|_, _| true),
            dropped: 0,
            channel_data_to_server: 0,
            transcript: Vec::new(),
        };
        net.exchange_credentials();
        for h in &mut net.hosts {
            h.agent.gather(t0);
        }
        net
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    pub fn exchange_credentials(&mut self) {
        for i in 0..2 {
            let c = self.hosts[i].agent.local_credentials().clone();
            self.hosts[1 - i]
                .agent
                .set_remote_credentials(c.ufrag(), c.pwd())
                .unwrap();
        }
    }

    /// ICE restart on both sides, as the load generator does when the selected pair dies.
    pub fn restart_both(&mut self) {
        let now = self.now;
        for h in &mut self.hosts {
            h.agent.restart(now, None);
        }
        self.exchange_credentials();
    }

    /// Runs until `stop` holds or `limit` of simulated time passed; returns whether `stop` held.
    pub fn run_until(&mut self, limit: Duration, stop: impl Fn(&Net) -> bool) -> bool {
        let end = self.now + limit;
        let mut buf = vec![0u8; 1500];
        let mut spins = 0u32;
        loop {
            self.flush(&mut buf);
            if stop(self) {
                return true;
            }
            let next = [
                self.queue.front().map(|d| d.at),
                self.hosts[0].agent.poll_timeout(),
                self.hosts[1].agent.poll_timeout(),
                self.server.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let next = match next {
                Some(t) if t <= end => t,
                _ => {
                    self.now = end;
                    return stop(self);
                }
            };
            // An agent whose timer stays in the past would spin here forever.
            spins = if next <= self.now { spins + 1 } else { 0 };
            assert!(spins < 10_000, "busy loop: a timer does not move on");
            self.now = self.now.max(next);
            while self.queue.front().is_some_and(|d| d.at <= self.now) {
                let d = self.queue.pop_front().unwrap();
                self.route(d);
            }
            let now = self.now;
            for h in &mut self.hosts {
                if h.agent.poll_timeout().is_some_and(|t| t <= now) {
                    h.agent.handle_timeout(now);
                }
            }
            if self.server.poll_timeout().is_some_and(|t| t <= now) {
                let n = self.server_now();
                self.server.handle_timeout(n, &mut self.relays);
            }
        }
    }

    /// Runs for `d` of simulated time, whatever happens.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    pub fn both_connected(&self) -> bool {
        self.hosts
            .iter()
            .all(|h| h.agent.state() == uturn_ice::State::Connected)
    }

    fn server_now(&self) -> Now {
        Now {
            instant: self.now,
            unix_secs: UNIX0 + self.elapsed().as_secs(),
        }
    }

    fn flush(&mut self, buf: &mut [u8]) {
        loop {
            let mut progress = false;
            for i in 0..self.hosts.len() {
                while let Some(t) = self.hosts[i].agent.poll_transmit(buf) {
                    let bytes = buf[..t.len].to_vec();
                    self.send(t.from, t.to, bytes);
                    progress = true;
                }
                while let Some(e) = self.hosts[i].agent.poll_event() {
                    self.on_event(i, e);
                    progress = true;
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Puts a datagram on the wire: source NAT, reachability, the test's filter.
    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        let sender = self.hosts.iter().find(|h| h.base == from);
        if is_private(to.ip()) {
            // Private addresses are reachable only from their own LAN.
            let lan = match to.ip() {
                IpAddr::V4(v4) => v4.octets()[2],
                IpAddr::V6(_) => 0,
            };
            if sender.is_none_or(|h| h.lan != lan) {
                self.dropped += 1;
                return;
            }
        }
        let from = match sender {
            Some(h) if !is_private(to.ip()) => h.public.unwrap_or(from),
            _ => from,
        };
        // A symmetric NAT: a public port per destination.
        let from = match self.hosts.iter_mut().find(|h| h.public == Some(from)) {
            Some(Host {
                symmetric: Some(dests),
                ..
            }) => {
                let k = dests.iter().position(|d| *d == to).unwrap_or_else(|| {
                    dests.push(to);
                    dests.len() - 1
                });
                SocketAddr::new(from.ip(), 5000 + k as u16)
            }
            _ => from,
        };
        if to == server_addr() && (0x40..=0x4F).contains(&bytes[0]) {
            self.channel_data_to_server += 1;
        }
        let d = Datagram {
            at: self.now + self.latency,
            from,
            to,
            bytes,
        };
        if (self.drop)(&d) {
            self.dropped += 1;
            return;
        }
        self.transcript
            .push((self.elapsed(), d.from, d.to, d.bytes.clone()));
        self.queue.push_back(d);
    }

    fn route(&mut self, d: Datagram) {
        let now = self.server_now();
        let mut out = vec![0u8; 1500];
        if d.to == server_addr() {
            let tuple = FiveTuple {
                client: d.from,
                server: server_addr(),
                transport: Transport::Udp,
            };
            let t = self.server.handle_client(
                now,
                LISTENER,
                tuple,
                &d.bytes,
                &mut out,
                &mut self.relays,
            );
            if let Some(t) = t {
                let bytes = match t.payload {
                    Payload::Input(r) => d.bytes[r].to_vec(),
                    Payload::Output(n) => out[..n].to_vec(),
                };
                self.server_sends(t.via, t.to, bytes);
            }
            return;
        }
        if let Some(id) = self.relays.by_addr(d.to) {
            let mut buf = vec![0u8; HEADROOM + d.bytes.len() + 4];
            buf[HEADROOM..HEADROOM + d.bytes.len()].copy_from_slice(&d.bytes);
            let range = HEADROOM..HEADROOM + d.bytes.len();
            let t = self
                .server
                .handle_peer(now, id, d.from, &mut buf, range, &mut out);
            if let Some(t) = t {
                let bytes = match t.payload {
                    Payload::Input(r) => buf[r].to_vec(),
                    Payload::Output(n) => out[..n].to_vec(),
                };
                self.server_sends(t.via, t.to, bytes);
            }
            return;
        }
        let target = self.hosts.iter().position(|h| {
            h.base == d.to
                || h.public == Some(d.to)
                || (h.symmetric.is_some() && h.public.map(|p| p.ip()) == Some(d.to.ip()))
        });
        let Some(i) = target else {
            self.dropped += 1;
            return;
        };
        let h = &mut self.hosts[i];
        let base = h.base;
        if let Input::Data { from, payload } =
            h.agent.handle_input(self.now, base, d.from, &d.bytes)
        {
            h.received.push((from, payload.to_vec()));
        }
    }

    fn server_sends(&mut self, via: Via, to: SocketAddr, bytes: Vec<u8>) {
        let from = match via {
            Via::Listener(_) => server_addr(),
            Via::Relay(h) => match self.relays.addr(h) {
                Some(a) => a,
                None => return,
            },
        };
        self.send(from, to, bytes);
    }

    fn on_event(&mut self, i: usize, e: Event) {
        let other = 1 - i;
        let now = self.now;
        match &e {
            Event::LocalCandidate(c) => {
                let line = c.to_sdp_line();
                let parsed = Candidate::parse(&line).expect("own lines parse");
                assert_eq!(&parsed, c, "SDP round trip");
                self.hosts[i].lines.push(line);
                if (self.signal)(other, &parsed) {
                    if let Some(resolved) = self.resolve(other, parsed) {
                        self.hosts[other]
                            .agent
                            .add_remote_candidate(now, &resolved)
                            .expect("signalled candidate accepted");
                    }
                }
            }
            Event::GatheringDone => self.hosts[other].agent.set_remote_gathering_done(),
            _ => {}
        }
        let at = self.elapsed();
        self.hosts[i].events.push((at, e));
    }

    /// The emulator's mDNS resolver: a name resolves only for an asker on the same LAN.
    fn resolve(&self, asker: usize, c: Candidate) -> Option<Candidate> {
        let Some(name) = c.mdns_name() else {
            return Some(c);
        };
        let owner = self
            .hosts
            .iter()
            .find(|h| h.mdns.as_deref() == Some(name))?;
        (owner.lan == self.hosts[asker].lan).then(|| c.clone().resolved(owner.base.ip()))
    }

    /// Sends `payload` from host `i` over its selected pair; false if the agent refused.
    pub fn send_data(&mut self, i: usize, payload: &[u8]) -> bool {
        let mut buf = vec![0u8; 1500];
        match self.hosts[i].agent.send(payload, &mut buf) {
            Ok(t) => {
                let bytes = buf[..t.len].to_vec();
                self.send(t.from, t.to, bytes);
                true
            }
            Err(_) => false,
        }
    }

    /// Replaces the TURN server by a fresh one (a relay restart): every allocation is gone.
    pub fn restart_relay(&mut self) {
        self.server = turn_server(self.now);
        self.relays = Relays::default();
    }
}
