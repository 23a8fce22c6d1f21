//! `--mode turn-only`: TURN clients in pairs, each relaying media-like probes to its partner's
//! relayed address. No ICE: every pair is relay to relay, so every probe crosses the relay twice
//! (client A -> A's allocation -> B's allocation -> client B). This is the relay benchmark, and
//! it runs on the same worker, fabric and measurements the ICE agents will use.
//!
//! Per pair: both clients Allocate; once both have relayed addresses, each binds a channel to
//! the other's relayed address (which installs the permission too, RFC 8656 section 12.2); a
//! client is connected when its channel is bound, and the pair streams once both are.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uturn_proto::client::{
    ClientConfig, Event, Failure, Input, RelayFamily, RetransmitPolicy, TurnClient,
};
use uturn_proto::stun::Method;

use crate::fabric::AgentIx;
use crate::nat::NatSpec;
use crate::stats::CandidateType;
use crate::stream_leg::{LegEvent, StreamLeg, TlsSetup, Transport};
use crate::worker::{partner, Cx, Scenario};
use uturn::driver::StreamEvent;

/// A shorter retransmission schedule than RFC 8489's 39.5 s: sends at 0, 0.5, 1.5, 3.5 s and a
/// timeout at 5.5 s. A load test wants a clear failure, not a 40-second stall per request.
pub const LOAD_RETRANSMIT: RetransmitPolicy = RetransmitPolicy {
    rto: Duration::from_millis(500),
    max_transmits: 4,
    last_wait_factor: 4,
    reliable_timeout: Duration::from_millis(5500),
};

/// What every client authenticates with.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub realm: String,
}

/// The client configuration every mode shares: the run's credentials, loadgen's short
/// retransmission schedule (UDP; the caller sets another transport).
pub fn client_config(server: SocketAddr, c: &Credentials) -> ClientConfig {
    let mut cfg = ClientConfig::new(server, &c.username, &c.password);
    cfg.realm = Some(c.realm.clone());
    cfg.software = Some(concat!("uturn-loadgen ", env!("CARGO_PKG_VERSION")).into());
    cfg.retransmit = LOAD_RETRANSMIT;
    cfg
}

/// The turn-only scenario's settings.
#[derive(Clone, Debug)]
pub struct TurnOnlyConfig {
    pub server: SocketAddr,
    pub credentials: Credentials,
    /// NATs in front of the clients: each client gets a LAN of its own.
    pub nat: NatSpec,
    pub seed: u64,
    /// How clients reach the server (`--transport`); TLS needs `tls`.
    pub transport: Transport,
    pub tls: Option<TlsSetup>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    Allocating { since: Instant },
    Allocated,
    Binding,
    Bound,
    Failed,
    Closing,
    Closed,
}

#[derive(Debug)]
struct Client {
    turn: TurnClient,
    state: State,
    relayed: Option<SocketAddr>,
    /// The earliest timer queued for this client in the heap.
    armed: Option<Instant>,
}

/// See the [module documentation](self).
#[derive(Debug)]
pub struct TurnOnly {
    config: TurnOnlyConfig,
    clients: Vec<Option<Client>>,
    timers: BinaryHeap<Reverse<(Instant, AgentIx)>>,
    buf: Box<[u8; 2048]>,
    rng: StdRng,
    closing: usize,
    /// The clients' connections with `--transport tcp|tls`.
    leg: Option<StreamLeg>,
}

impl TurnOnly {
    pub fn new(config: TurnOnlyConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        let leg = (config.transport != Transport::Udp)
            .then(|| StreamLeg::new(config.server, config.tls.clone()));
        TurnOnly {
            config,
            clients: Vec::new(),
            timers: BinaryHeap::new(),
            buf: Box::new([0; 2048]),
            rng,
            closing: 0,
            leg,
        }
    }

    /// Sends one of `agent`'s messages to the server: a datagram through the fabric, or on the
    /// agent's connection.
    fn emit(
        &mut self,
        now: Instant,
        agent: AgentIx,
        len: usize,
        to: SocketAddr,
        cx: &mut Cx<'_>,
    ) -> bool {
        match self.leg.as_mut() {
            Some(leg) => leg.send(agent, &self.buf[..len], cx.io),
            None => cx.send(now, agent, to, &self.buf[..len]),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut cfg = client_config(self.config.server, &self.config.credentials);
        cfg.transport = self.config.transport.client();
        cfg
    }

    fn start_client(&mut self, now: Instant, agent: AgentIx, cx: &mut Cx<'_>) {
        if self.clients.len() <= agent {
            self.clients.resize_with(agent + 1, || None);
        }
        cx.core.agent_started(agent, now);
        if let Some(leg) = self.leg.as_mut() {
            if let Err(e) = leg.open(agent, cx.io) {
                return cx.core.agent_failed(agent, format!("connect: {e}"));
            }
        } else {
            let added = match self.config.nat.pick(&mut self.rng) {
                None => cx.fabric.add_direct_agent(cx.io, agent).map(|_| ()),
                Some(b) => cx
                    .fabric
                    .add_lan(b)
                    .and_then(|lan| cx.fabric.add_private_agent(lan, agent))
                    .map(|_| ()),
            };
            if let Err(e) = added {
                return cx.core.agent_failed(agent, format!("network: {e}"));
            }
        }
        let mut turn = match TurnClient::new(self.client_config(), self.rng.gen()) {
            Ok(t) => t,
            Err(e) => return cx.core.agent_failed(agent, format!("client: {e}")),
        };
        if let Err(e) = turn.allocate(now, RelayFamily::Ipv4) {
            return cx.core.agent_failed(agent, format!("allocate: {e}"));
        }
        self.clients[agent] = Some(Client {
            turn,
            state: State::Allocating { since: now },
            relayed: None,
            armed: None,
        });
        self.service(now, agent, cx);
    }

    /// Sends what the client has to send, handles its events, and re-arms its timer.
    fn service(&mut self, now: Instant, agent: AgentIx, cx: &mut Cx<'_>) {
        let mut events = Vec::new();
        loop {
            let Some(Some(c)) = self.clients.get_mut(agent) else {
                return;
            };
            let Some(t) = c.turn.poll_transmit(&mut self.buf[..]) else {
                while let Some(e) = c.turn.poll_event() {
                    events.push(e);
                }
                break;
            };
            self.emit(now, agent, t.len, t.to, cx);
        }
        for e in events {
            self.on_event(now, agent, e, cx);
        }
        // Events may have queued requests (ChannelBind): send them too.
        while let Some(Some(c)) = self.clients.get_mut(agent) {
            let Some(t) = c.turn.poll_transmit(&mut self.buf[..]) else {
                break;
            };
            self.emit(now, agent, t.len, t.to, cx);
        }
        if let Some(Some(c)) = self.clients.get_mut(agent) {
            if let Some(t) = c.turn.poll_timeout() {
                if c.armed.is_none_or(|a| t < a) {
                    c.armed = Some(t);
                    self.timers.push(Reverse((t, agent)));
                }
            }
        }
    }

    fn on_event(&mut self, now: Instant, agent: AgentIx, event: Event, cx: &mut Cx<'_>) {
        let Some(Some(c)) = self.clients.get_mut(agent) else {
            return;
        };
        match event {
            Event::Allocated(a) => {
                if let State::Allocating { since } = c.state {
                    cx.core.allocation_done(now - since);
                }
                c.state = State::Allocated;
                c.relayed = Some(a.relayed);
                self.bind_pair(now, agent, cx);
            }
            Event::ChannelBound { .. } => {
                if c.state == State::Binding {
                    c.state = State::Bound;
                    cx.core.agent_connected(agent, now, CandidateType::Relay);
                    let p = partner(agent);
                    if cx.core.is_connected(p) {
                        cx.core.start_media(agent, now);
                        cx.core.start_media(p, now);
                    }
                }
            }
            Event::Deallocated => {
                if c.state == State::Closing {
                    self.closing -= 1;
                }
                c.state = State::Closed;
            }
            Event::Failed { method, failure } => self.on_failure(agent, method, failure, cx),
            Event::BindingSuccess { .. }
            | Event::Refreshed { .. }
            | Event::PermissionCreated { .. }
            | Event::Connected { .. }
            | Event::ConnectionAttempt { .. }
            | Event::ConnectionBound { .. } => {}
        }
    }

    fn on_failure(&mut self, agent: AgentIx, method: Method, failure: Failure, cx: &mut Cx<'_>) {
        let Some(Some(c)) = self.clients.get_mut(agent) else {
            return;
        };
        let reason = format!("{}: {}", method_name(method), failure_text(failure));
        match c.state {
            State::Allocating { .. } | State::Allocated | State::Binding => {
                c.state = State::Failed;
                cx.core.agent_failed(agent, reason);
                // The partner cannot stream without this one.
                let p = partner(agent);
                if !cx.core.is_connected(p) {
                    cx.core.agent_failed(p, "partner failed");
                }
            }
            State::Closing => {
                // A Refresh(0) that failed: the allocation times out on the server anyway.
                self.closing -= 1;
                c.state = State::Closed;
                cx.core
                    .error(format!("deallocate: {}", failure_text(failure)));
            }
            State::Bound | State::Failed | State::Closed => cx.core.error(reason),
        }
    }

    /// Once both clients of a pair have relayed addresses, each binds a channel to the other's.
    fn bind_pair(&mut self, now: Instant, agent: AgentIx, cx: &mut Cx<'_>) {
        let p = partner(agent);
        let relayed = |s: &Self, a: AgentIx| match s.clients.get(a) {
            Some(Some(c)) if c.state == State::Allocated => c.relayed,
            _ => None,
        };
        let (Some(mine), Some(theirs)) = (relayed(self, agent), relayed(self, p)) else {
            return;
        };
        for (a, peer) in [(agent, theirs), (p, mine)] {
            let Some(Some(c)) = self.clients.get_mut(a) else {
                continue;
            };
            match c.turn.channel_bind(now, peer) {
                Ok(_) => c.state = State::Binding,
                Err(e) => {
                    c.state = State::Failed;
                    cx.core.agent_failed(a, format!("channel-bind: {e}"));
                }
            }
        }
        // The partner's ChannelBind is queued in its client: send it now.
        self.service(now, p, cx);
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::ALLOCATE => "allocate",
        Method::REFRESH => "refresh",
        Method::CREATE_PERMISSION => "create-permission",
        Method::CHANNEL_BIND => "channel-bind",
        Method::BINDING => "binding",
        _ => "request",
    }
}

/// A failure as the report shows it; the TURN error codes a load test meets are named.
pub fn failure_text(f: Failure) -> String {
    match f {
        Failure::Error(code) => {
            let name = match code {
                400 => " Bad Request",
                401 => " Unauthenticated (bad credentials?)",
                403 => " Forbidden (peer address refused by the server's policy?)",
                420 => " Unknown Attribute",
                437 => " Allocation Mismatch",
                438 => " Stale Nonce",
                440 => " Address Family not Supported",
                441 => " Wrong Credentials",
                442 => " Unsupported Transport Protocol",
                443 => " Peer Address Family Mismatch",
                486 => " Allocation Quota Reached",
                500 => " Server Error",
                508 => " Insufficient Capacity",
                _ => "",
            };
            format!("{code}{name}")
        }
        Failure::Timeout => "timeout (no response)".into(),
        Failure::Auth(e) => format!("authentication: {e}"),
        Failure::BadResponse => "malformed response".into(),
        Failure::Encode(e) => format!("encode: {e}"),
        Failure::Busy => "too many requests in flight".into(),
    }
}

impl Scenario for TurnOnly {
    fn start_pair(&mut self, now: Instant, pair: usize, cx: &mut Cx<'_>) {
        self.start_client(now, 2 * pair, cx);
        self.start_client(now, 2 * pair + 1, cx);
    }

    fn on_datagram(
        &mut self,
        now: Instant,
        agent: AgentIx,
        from: SocketAddr,
        data: &[u8],
        cx: &mut Cx<'_>,
    ) {
        let p = partner(agent);
        let expected_peer = match self.clients.get(p) {
            Some(Some(c)) => c.relayed,
            _ => None,
        };
        let Some(Some(c)) = self.clients.get_mut(agent) else {
            return;
        };
        match c.turn.handle_input(now, from, data) {
            Input::Data { peer, payload } => {
                if Some(peer) == expected_peer {
                    cx.core.media_received(now, agent, payload);
                } else {
                    cx.core.media_received(now, agent, &[]);
                }
            }
            Input::Handled => self.service(now, agent, cx),
            Input::Ignored(_) => {}
        }
    }

    fn on_tick(&mut self, now: Instant, cx: &mut Cx<'_>) {
        while let Some(&Reverse((at, agent))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(Some(c)) = self.clients.get_mut(agent) else {
                continue;
            };
            if c.armed != Some(at) {
                continue; // superseded by an earlier timer
            }
            c.armed = None;
            if c.turn.poll_timeout().is_some_and(|t| t <= now) {
                c.turn.handle_timeout(now);
            }
            self.service(now, agent, cx);
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn send_media(
        &mut self,
        now: Instant,
        agent: AgentIx,
        payload: &[u8],
        cx: &mut Cx<'_>,
    ) -> bool {
        let peer = match self.clients.get(partner(agent)) {
            Some(Some(c)) => c.relayed,
            _ => None,
        };
        let (Some(Some(c)), Some(peer)) = (self.clients.get(agent), peer) else {
            return false;
        };
        match c.turn.channel_data(peer, payload, &mut self.buf[..]) {
            Ok(t) => self.emit(now, agent, t.len, t.to, cx),
            Err(_) => false,
        }
    }

    fn on_stream(&mut self, now: Instant, event: StreamEvent<'_>, cx: &mut Cx<'_>) {
        let Some(leg) = self.leg.as_mut() else {
            return;
        };
        if let LegEvent::Lost(agent, why) = leg.on_stream(event, cx.io) {
            let closing = matches!(
                self.clients.get(agent),
                Some(Some(Client {
                    state: State::Closing | State::Closed,
                    ..
                }))
            );
            if closing {
                // The end of the run: nothing lost.
            } else if cx.core.is_connected(agent) {
                cx.core.error(why);
            } else {
                cx.core.agent_failed(agent, why);
            }
        }
        // Whole messages from the server, as datagrams from it.
        let (inbox, marks) = leg.take_inbox();
        let server = leg.server();
        for &(agent, a, b) in &marks {
            self.on_datagram(now, agent, server, &inbox[a..b], cx);
        }
        if let Some(leg) = self.leg.as_mut() {
            leg.give_back(inbox, marks);
        }
    }

    fn shutdown(&mut self, now: Instant, cx: &mut Cx<'_>) {
        for agent in 0..self.clients.len() {
            let Some(Some(c)) = self.clients.get_mut(agent) else {
                continue;
            };
            if matches!(c.state, State::Allocated | State::Binding | State::Bound)
                && c.turn.deallocate(now).is_ok()
            {
                c.state = State::Closing;
                self.closing += 1;
                self.service(now, agent, cx);
            }
        }
    }

    fn is_shut_down(&self) -> bool {
        self.closing == 0
    }
}
