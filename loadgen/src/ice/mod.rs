//! `--mode ice`: pairs of ICE agents (RFC 8445), one controlling and one controlled, each a
//! sans-IO [`uturn_ice::Agent`] on a socket of the worker's [`crate::fabric::Fabric`].
//!
//! Per pair:
//! - networks: both agents on loopback (no `--nat`), each on an emulated LAN of its own behind a
//!   NAT (`--nat SPEC`), or as the NAT matrix says (both on one LAN, or apart: see [`matrix`]);
//! - gathering: a host candidate (behind a NAT, announced under a random `<uuid>.local` name
//!   registered with the worker's [`Mdns`], as browsers do), a server-reflexive one (Binding to
//!   `--server`) and a relayed one (Allocate on `--server`, `--user`/`--auth-secret`);
//! - signalling: ufrag, password, each candidate and end-of-candidates cross the in-process
//!   [`signal::Channel`] as SDP lines and are parsed on the other side; an mDNS name resolves
//!   only for an agent on the registering LAN (so a remote agent skips it, as on the Internet);
//! - media: once both agents are connected, each sends the worker's probes with
//!   [`Agent::send`] and hands [`Input::Data`] to the worker's measurements;
//! - ICE restart: when either agent loses its selected pair ([`Event::Disconnected`]: consent
//!   lost, RFC 7675, or its allocation gone), both agents restart (both first, then the new
//!   credentials are signalled, as the agent requires), and the time until both are connected
//!   again is the recovery time;
//! - `--chaos`: at the chaos instant the worker drops every NAT mapping, and this scenario drops
//!   the keepalives (consent checks and their answers, [`keepalive`]) of every other pair while
//!   their media flows on, until they restart;
//! - shutdown: every agent is closed, which deletes its allocation ([`Agent::close`]).

pub mod keepalive;
pub mod matrix;
pub mod signal;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uturn_ice::{
    Agent, AgentConfig, CandidateKind, Event, Input, Policy, SdpError, SelectedPair, State,
    TurnServer,
};

use crate::fabric::{AgentIx, FabricError};
use crate::nat::{LanId, Mdns, NatBehavior, NatSpec};
use crate::stats::CandidateType;
use crate::turn_only::Credentials;
use crate::worker::{partner, Cx, Scenario};
use matrix::{Case, PairOutcome, Selected};
use signal::{Channel, Signal, SignalError};

/// The RFC 7675 consent timeout (section 5.1: 30 s); `--consent-timeout` lowers it for chaos runs.
pub const DEFAULT_CONSENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How each pair's networks are laid out.
#[derive(Clone, Debug)]
pub enum Placement {
    /// Every agent on a network of its own: loopback (`none`) or a LAN behind a NAT drawn from
    /// the spec.
    Each(NatSpec),
    /// `--nat-matrix`: run-wide pair `i` is `cases[i]`.
    Matrix(Arc<[Case]>),
}

/// The ICE scenario's settings.
#[derive(Clone, Debug)]
pub struct IceConfig {
    /// The STUN and TURN server.
    pub server: SocketAddr,
    pub credentials: Credentials,
    pub policy: Policy,
    pub placement: Placement,
    /// RFC 7675 consent timeout; consent checks go every sixth of it (5 s at 30 s).
    pub consent_timeout: Duration,
    pub seed: u64,
    /// Where each pair's first outcome goes (the NAT matrix collects them).
    pub outcomes: Option<Sender<PairOutcome>>,
}

/// Where one agent stands, as the scenario sees it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Gathering and checking for the first time.
    Setup,
    Connected,
    /// Restarted after its pair's path was lost; not connected again yet.
    Restarting,
    /// Never connected: every candidate pair failed.
    Failed,
    /// Deleting its allocation at the end of the run.
    Closing,
    Closed,
}

#[derive(Debug)]
struct Peer {
    ice: Agent,
    base: SocketAddr,
    lan: Option<LanId>,
    mdns: Option<String>,
    started: Instant,
    phase: Phase,
    /// The first relayed candidate was seen (allocation latency recorded).
    allocated: bool,
    /// The partner's ufrag, until its password arrives.
    remote_ufrag: Option<String>,
    /// The earliest timer queued for this agent.
    armed: Option<Instant>,
    /// In the work list.
    queued: bool,
    /// The first connection: setup time and selected pair.
    setup: Option<Duration>,
    first: Option<Selected>,
}

#[derive(Debug)]
struct PairCtl {
    /// Run-wide pair number.
    run_pair: usize,
    media: bool,
    /// When the first agent lost its path, until both are connected again.
    lost_at: Option<Instant>,
    /// `--chaos`: the pair's keepalives are dropped until it restarts.
    blackout: bool,
    reported: bool,
}

/// Things the scenario noticed that are not agent outcomes.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct IceCounters {
    /// mDNS candidates skipped because the name does not resolve on the receiver's LAN.
    pub mdns_unresolved: u64,
    /// Consent checks and answers dropped by `--chaos`.
    pub keepalives_dropped: u64,
}

/// One run of the worker's timers and work list handles at most this many rounds of
/// `handle_timeout` per agent before it arms a timer instead (an agent whose timer never moves
/// would otherwise spin the worker).
const ROUNDS: usize = 8;

/// See the [module documentation](self).
#[derive(Debug)]
pub struct IceScenario {
    config: IceConfig,
    peers: Vec<Option<Peer>>,
    pairs: Vec<Option<PairCtl>>,
    timers: BinaryHeap<Reverse<(Instant, AgentIx)>>,
    work: Vec<AgentIx>,
    signals: Channel,
    mdns: Mdns,
    rng: StdRng,
    buf: Box<[u8; 2048]>,
    events: Vec<Event>,
    due: Vec<AgentIx>,
    closing: usize,
    chaos_started: bool,
    counters: IceCounters,
    /// Every signalling line, for tests to inspect.
    #[cfg(test)]
    signalled: Vec<String>,
}

/// The report's name for a candidate type.
pub fn candidate_type(k: CandidateKind) -> CandidateType {
    match k {
        CandidateKind::Host => CandidateType::Host,
        CandidateKind::ServerReflexive => CandidateType::Srflx,
        CandidateKind::PeerReflexive => CandidateType::Prflx,
        CandidateKind::Relayed => CandidateType::Relay,
    }
}

/// Which of a pair's agents sit where.
enum Layout {
    /// Each on its own network: loopback (`None`) or a LAN behind that NAT.
    Apart([Option<NatBehavior>; 2]),
    /// Both on one LAN behind one NAT.
    Together(NatBehavior),
}

impl IceScenario {
    pub fn new(config: IceConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        IceScenario {
            config,
            peers: Vec::new(),
            pairs: Vec::new(),
            timers: BinaryHeap::new(),
            work: Vec::new(),
            signals: Channel::default(),
            mdns: Mdns::new(),
            rng,
            buf: Box::new([0; 2048]),
            events: Vec::new(),
            due: Vec::new(),
            closing: 0,
            chaos_started: false,
            counters: IceCounters::default(),
            #[cfg(test)]
            signalled: Vec::new(),
        }
    }

    pub fn counters(&self) -> IceCounters {
        self.counters
    }

    /// The ICE state of an agent, for tests and diagnostics.
    pub fn state(&self, agent: AgentIx) -> Option<State> {
        Some(self.peers.get(agent)?.as_ref()?.ice.state())
    }

    fn layout(&mut self, run_pair: usize) -> Layout {
        match &self.config.placement {
            Placement::Each(spec) => {
                let spec = *spec;
                Layout::Apart([spec.pick(&mut self.rng), spec.pick(&mut self.rng)])
            }
            Placement::Matrix(cases) => match cases.get(run_pair) {
                Some(Case::SameLan(b)) => Layout::Together(*b),
                Some(Case::Apart { a, b }) => Layout::Apart([Some(*a), Some(*b)]),
                Some(Case::NoNat) | None => Layout::Apart([None, None]),
            },
        }
    }

    /// Gives the pair's agents their host addresses (and LANs).
    fn place(
        &mut self,
        run_pair: usize,
        agents: [AgentIx; 2],
        cx: &mut Cx<'_>,
    ) -> Result<[(SocketAddr, Option<LanId>); 2], FabricError> {
        let one = |nat: Option<NatBehavior>,
                   ix: AgentIx,
                   cx: &mut Cx<'_>|
         -> Result<(SocketAddr, Option<LanId>), FabricError> {
            match nat {
                None => Ok((cx.fabric.add_direct_agent(cx.io, ix)?, None)),
                Some(b) => {
                    let lan = cx.fabric.add_lan(b)?;
                    Ok((cx.fabric.add_private_agent(lan, ix)?, Some(lan)))
                }
            }
        };
        match self.layout(run_pair) {
            Layout::Apart([x, y]) => Ok([one(x, agents[0], cx)?, one(y, agents[1], cx)?]),
            Layout::Together(b) => {
                let lan = cx.fabric.add_lan(b)?;
                Ok([
                    (cx.fabric.add_private_agent(lan, agents[0])?, Some(lan)),
                    (cx.fabric.add_private_agent(lan, agents[1])?, Some(lan)),
                ])
            }
        }
    }

    fn new_peer(
        &mut self,
        now: Instant,
        ix: AgentIx,
        base: SocketAddr,
        lan: Option<LanId>,
    ) -> Result<Peer, String> {
        let c = &self.config;
        // Agents `2k` control, agents `2k + 1` are controlled (RFC 8445 section 6.1.1: the offerer
        // controls).
        let mut cfg = AgentConfig::new(ix.is_multiple_of(2), self.rng.gen());
        cfg.policy = c.policy;
        cfg.stun_server = Some(c.server);
        cfg.turn = Some(TurnServer {
            server: c.server,
            username: c.credentials.username.clone(),
            password: c.credentials.password.clone(),
        });
        cfg.consent_timeout = c.consent_timeout;
        cfg.consent_interval = c.consent_timeout / 6;
        let mut ice = Agent::new(cfg).map_err(|e| format!("ice: {e}"))?;
        // Behind a NAT the host address is private: announce a `.local` name instead.
        let mdns = match (lan, base) {
            (Some(lan), SocketAddr::V4(v4)) => {
                let name = ice.random_mdns_name();
                self.mdns.register(&name, *v4.ip(), lan).ok().map(|()| name)
            }
            _ => None,
        };
        ice.add_host(base, mdns.clone())
            .map_err(|e| format!("ice: {e}"))?;
        Ok(Peer {
            ice,
            base,
            lan,
            mdns,
            started: now,
            phase: Phase::Setup,
            allocated: false,
            remote_ufrag: None,
            armed: None,
            queued: false,
            setup: None,
            first: None,
        })
    }

    fn peer(&mut self, a: AgentIx) -> Option<&mut Peer> {
        self.peers.get_mut(a)?.as_mut()
    }

    fn pair_ctl(&mut self, a: AgentIx) -> Option<&mut PairCtl> {
        self.pairs.get_mut(a / 2)?.as_mut()
    }

    fn queue(&mut self, a: AgentIx) {
        if let Some(p) = self.peer(a) {
            if !p.queued {
                p.queued = true;
                self.work.push(a);
            }
        }
    }

    /// Signals an agent's ufrag and password to its partner.
    fn signal_credentials(&mut self, a: AgentIx) {
        let Some(p) = self.peer(a) else { return };
        let creds = p.ice.local_credentials();
        let lines = [
            Signal::ufrag_line(creds.ufrag()),
            Signal::pwd_line(creds.pwd()),
        ];
        for l in lines {
            self.signals.send(partner(a), l);
        }
    }

    /// Delivers signalling and services agents until nothing is left to do.
    fn run(&mut self, now: Instant, cx: &mut Cx<'_>) {
        loop {
            if let Some((to, line)) = self.signals.recv() {
                self.deliver(now, to, &line, cx);
                continue;
            }
            let Some(a) = self.work.pop() else { break };
            self.service(now, a, cx);
        }
    }

    /// One signalling line reaches agent `to`.
    fn deliver(&mut self, now: Instant, to: AgentIx, line: &str, cx: &mut Cx<'_>) {
        #[cfg(test)]
        self.signalled.push(line.to_string());
        let IceScenario {
            peers,
            mdns,
            counters,
            ..
        } = self;
        let Some(Some(peer)) = peers.get_mut(to) else {
            return;
        };
        if matches!(peer.phase, Phase::Closing | Phase::Closed) {
            return;
        }
        match Signal::parse(line) {
            // RFC 8839 allows TCP candidates; this agent is UDP only and skips them.
            Err(SignalError::Candidate(SdpError::UnsupportedTransport)) => {}
            Err(e) => cx.core.error(format!("signalling: {e}")),
            Ok(Signal::Ufrag(u)) => peer.remote_ufrag = Some(u),
            Ok(Signal::Pwd(pwd)) => match peer.remote_ufrag.take() {
                Some(u) => {
                    if let Err(e) = peer.ice.set_remote_credentials(&u, &pwd) {
                        cx.core.error(format!("signalling: credentials: {e}"));
                    }
                }
                None => cx.core.error("signalling: ice-pwd without ice-ufrag"),
            },
            Ok(Signal::Candidate(c)) => {
                // An mDNS name resolves only on the LAN that registered it (RFC 6762: the
                // query is link-local multicast).
                let resolved = match c.mdns_name() {
                    None => Some(c),
                    Some(name) => match peer.lan.and_then(|lan| mdns.resolve(name, lan)) {
                        Some(ip) => Some(c.resolved(IpAddr::V4(ip))),
                        None => {
                            counters.mdns_unresolved += 1;
                            None
                        }
                    },
                };
                if let Some(c) = resolved {
                    if let Err(e) = peer.ice.add_remote_candidate(now, &c) {
                        cx.core.error(format!("signalling: candidate refused: {e}"));
                    }
                }
            }
            Ok(Signal::EndOfCandidates) => peer.ice.set_remote_gathering_done(),
        }
        self.queue(to);
    }

    /// Sends what the agent has to send, acts on its events and due timers, and arms its
    /// next timer.
    fn service(&mut self, now: Instant, a: AgentIx, cx: &mut Cx<'_>) {
        let server = self.config.server;
        for _ in 0..ROUNDS {
            // Read every round: a restart among the events below ends the blackout, and its
            // checks must go out.
            let blackout = self
                .pairs
                .get(a / 2)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.blackout);
            let IceScenario {
                peers,
                buf,
                events,
                counters,
                ..
            } = self;
            let Some(Some(peer)) = peers.get_mut(a) else {
                return;
            };
            peer.queued = false;
            while let Some(t) = peer.ice.poll_transmit(&mut buf[..]) {
                let bytes = &buf[..t.len];
                if blackout && keepalive::carries_check(bytes, t.to, server) {
                    counters.keepalives_dropped += 1;
                    continue;
                }
                cx.send(now, a, t.to, bytes);
            }
            if peer.phase == Phase::Closing && peer.ice.is_closed() {
                peer.phase = Phase::Closed;
                self.closing -= 1;
                return;
            }
            while let Some(e) = peer.ice.poll_event() {
                events.push(e);
            }
            if !events.is_empty() {
                let mut taken = std::mem::take(&mut self.events);
                for e in taken.drain(..) {
                    self.on_event(now, a, e, cx);
                }
                self.events = taken;
                continue;
            }
            if peer.ice.poll_timeout().is_some_and(|t| t <= now) {
                peer.ice.handle_timeout(now);
                continue;
            }
            break;
        }
        self.arm(now, a);
    }

    fn arm(&mut self, now: Instant, a: AgentIx) {
        let Some(peer) = self.peer(a) else { return };
        let Some(t) = peer.ice.poll_timeout() else {
            return;
        };
        // A timer still in the past after ROUNDS rounds waits a millisecond rather than spin.
        let t = if t <= now {
            now + Duration::from_millis(1)
        } else {
            t
        };
        if peer.armed.is_none_or(|x| t < x) {
            peer.armed = Some(t);
            self.timers.push(Reverse((t, a)));
        }
    }

    fn on_event(&mut self, now: Instant, a: AgentIx, e: Event, cx: &mut Cx<'_>) {
        match e {
            Event::LocalCandidate(c) => {
                if let Some(p) = self.peer(a) {
                    if c.kind == CandidateKind::Relayed && !p.allocated {
                        p.allocated = true;
                        // The Allocate went out when gathering started, with the agent.
                        let latency = now - p.started;
                        cx.core.allocation_done(latency);
                    }
                }
                self.signals.send(partner(a), c.to_sdp_line());
            }
            Event::GatheringDone => {
                // Under the relay-only policy that agent cannot connect at all; otherwise it may
                // still connect directly, but the server's answer is worth knowing.
                if self.peer(a).is_some_and(|p| !p.allocated) {
                    cx.core
                        .error("gathering: no relayed candidate (Allocate refused or unanswered)");
                }
                self.signals
                    .send(partner(a), Signal::END_OF_CANDIDATES.into())
            }
            Event::Connected(sel) => self.on_connected(now, a, sel, cx),
            Event::Disconnected => {
                // Stale if the pair restarted since the event was queued.
                if self
                    .peer(a)
                    .is_some_and(|p| p.ice.state() == State::Disconnected)
                {
                    cx.core.ice_disconnected();
                    self.restart_pair(now, a / 2, cx);
                }
            }
            Event::Failed => self.on_failed(now, a, cx),
        }
    }

    fn on_connected(&mut self, now: Instant, a: AgentIx, sel: SelectedPair, cx: &mut Cx<'_>) {
        let selected = Selected {
            local: candidate_type(sel.local_kind),
            remote: candidate_type(sel.remote_kind),
        };
        let Some(p) = self.peer(a) else { return };
        match p.phase {
            Phase::Setup => {
                p.phase = Phase::Connected;
                p.setup = Some(now - p.started);
                p.first = Some(selected);
                cx.core.agent_connected(a, now, selected.local);
                if cx.core.is_connected(a) {
                    let hops = [selected.local, selected.remote]
                        .iter()
                        .filter(|&&k| k == CandidateType::Relay)
                        .count();
                    cx.core.relay_hops(hops as u64);
                }
            }
            Phase::Restarting => p.phase = Phase::Connected,
            _ => return,
        }
        let both = [a, partner(a)].iter().all(|&x| {
            self.peers
                .get(x)
                .and_then(Option::as_ref)
                .is_some_and(|p| p.phase == Phase::Connected)
        });
        if !both {
            return;
        }
        let Some(ctl) = self.pair_ctl(a) else { return };
        if !ctl.media {
            ctl.media = true;
            cx.core.start_media(a, now);
            cx.core.start_media(partner(a), now);
        }
        if let Some(lost) = ctl.lost_at.take() {
            cx.core.ice_recovered(now - lost);
        }
        self.report_outcome(a / 2);
    }

    fn on_failed(&mut self, now: Instant, a: AgentIx, cx: &mut Cx<'_>) {
        let Some(p) = self.peer(a) else { return };
        match p.phase {
            Phase::Setup => {
                p.phase = Phase::Failed;
                cx.core.agent_failed(a, "ice: every candidate pair failed");
                if !cx.core.is_connected(partner(a)) {
                    cx.core.agent_failed(partner(a), "partner failed");
                }
                self.report_outcome(a / 2);
            }
            Phase::Restarting => {
                // The restart found no path (the network has not healed yet): try again.
                cx.core
                    .error("ice: restart found no path, restarting again");
                self.restart_pair(now, a / 2, cx);
            }
            _ => {}
        }
    }

    /// ICE restart of both agents of a pair (RFC 8445 section 9): both restart before either
    /// learns the other's new credentials, as [`Agent::restart`] requires.
    fn restart_pair(&mut self, now: Instant, pair: usize, cx: &mut Cx<'_>) {
        if let Some(ctl) = self.pairs.get_mut(pair).and_then(Option::as_mut) {
            ctl.lost_at.get_or_insert(now);
            ctl.blackout = false;
        }
        let agents = [2 * pair, 2 * pair + 1];
        let mut restarted = [false; 2];
        for (i, &x) in agents.iter().enumerate() {
            let Some(p) = self.peer(x) else { continue };
            if matches!(p.phase, Phase::Failed | Phase::Closing | Phase::Closed) {
                continue;
            }
            p.ice.restart(now, None);
            if p.phase == Phase::Connected {
                p.phase = Phase::Restarting;
            }
            cx.core.ice_restart();
            restarted[i] = true;
        }
        for (i, &x) in agents.iter().enumerate() {
            if restarted[i] {
                self.signal_credentials(x);
                self.queue(x);
            }
        }
    }

    /// Sends the pair's first outcome once both agents have one.
    fn report_outcome(&mut self, pair: usize) {
        let decided =
            |p: Option<&Peer>| p.is_some_and(|p| p.first.is_some() || p.phase == Phase::Failed);
        let [a, b] = [2 * pair, 2 * pair + 1].map(|x| self.peers.get(x).and_then(Option::as_ref));
        if !(decided(a) && decided(b)) {
            return;
        }
        self.send_outcome(pair);
    }

    fn send_outcome(&mut self, pair: usize) {
        let Some(tx) = &self.config.outcomes else {
            return;
        };
        let Some(ctl) = self.pairs.get_mut(pair).and_then(Option::as_mut) else {
            return;
        };
        if ctl.reported {
            return;
        }
        ctl.reported = true;
        let get = |x: AgentIx| self.peers.get(x).and_then(Option::as_ref);
        let [a, b] = [get(2 * pair), get(2 * pair + 1)];
        let _ = tx.send(PairOutcome {
            pair: ctl.run_pair,
            setup: [a.and_then(|p| p.setup), b.and_then(|p| p.setup)],
            selected: [a.and_then(|p| p.first), b.and_then(|p| p.first)],
        });
    }

    /// `--chaos`: from the chaos instant, every other pair (odd run-wide numbers) loses its
    /// keepalives until it restarts.
    fn start_chaos(&mut self, now: Instant, cx: &mut Cx<'_>) {
        if self.chaos_started || cx.core.plan().chaos_at.is_none_or(|t| now < t) {
            return;
        }
        self.chaos_started = true;
        for ctl in self.pairs.iter_mut().flatten() {
            if ctl.run_pair % 2 == 1 && ctl.media {
                ctl.blackout = true;
            }
        }
    }
}

impl Scenario for IceScenario {
    fn start_pair(&mut self, now: Instant, pair: usize, cx: &mut Cx<'_>) {
        let agents = [2 * pair, 2 * pair + 1];
        let run_pair = cx.core.plan().agent_base as usize / 2 + pair;
        for a in agents {
            cx.core.agent_started(a, now);
        }
        if self.pairs.len() <= pair {
            self.pairs.resize_with(pair + 1, || None);
            self.peers.resize_with(2 * pair + 2, || None);
        }
        self.pairs[pair] = Some(PairCtl {
            run_pair,
            media: false,
            lost_at: None,
            blackout: false,
            reported: false,
        });
        let placed = match self.place(run_pair, agents, cx) {
            Ok(p) => p,
            Err(e) => {
                for a in agents {
                    cx.core.agent_failed(a, format!("network: {e}"));
                }
                return;
            }
        };
        for (&a, (base, lan)) in agents.iter().zip(placed) {
            match self.new_peer(now, a, base, lan) {
                Ok(p) => self.peers[a] = Some(p),
                Err(e) => {
                    for x in agents {
                        cx.core.agent_failed(x, e.clone());
                    }
                    self.peers[agents[0]] = None;
                    return;
                }
            }
        }
        // Offer and answer: credentials both ways, then candidates as they are gathered.
        for a in agents {
            self.signal_credentials(a);
        }
        for a in agents {
            if let Some(p) = self.peer(a) {
                p.ice.gather(now);
            }
            self.queue(a);
        }
        self.run(now, cx);
    }

    fn on_datagram(
        &mut self,
        now: Instant,
        agent: AgentIx,
        from: SocketAddr,
        data: &[u8],
        cx: &mut Cx<'_>,
    ) {
        let Some(p) = self.peer(agent) else { return };
        let base = p.base;
        match p.ice.handle_input(now, base, from, data) {
            Input::Data { payload, .. } => cx.core.media_received(now, agent, payload),
            Input::Handled => {
                self.queue(agent);
                self.run(now, cx);
            }
            Input::Ignored(_) => {}
        }
    }

    fn on_tick(&mut self, now: Instant, cx: &mut Cx<'_>) {
        self.start_chaos(now, cx);
        let mut due = std::mem::take(&mut self.due);
        while let Some(&Reverse((at, a))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(p) = self.peer(a) {
                if p.armed == Some(at) {
                    p.armed = None;
                    due.push(a);
                }
            }
        }
        for a in due.drain(..) {
            if let Some(p) = self.peer(a) {
                if p.ice.poll_timeout().is_some_and(|t| t <= now) {
                    p.ice.handle_timeout(now);
                }
            }
            self.queue(a);
        }
        self.due = due;
        self.run(now, cx);
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
        let IceScenario { peers, buf, .. } = self;
        let Some(Some(p)) = peers.get_mut(agent) else {
            return false;
        };
        match p.ice.send(payload, &mut buf[..]) {
            Ok(t) => cx.send(now, agent, t.to, &buf[..t.len]),
            Err(_) => false,
        }
    }

    fn shutdown(&mut self, now: Instant, cx: &mut Cx<'_>) {
        for pair in 0..self.pairs.len() {
            self.send_outcome(pair);
        }
        for a in 0..self.peers.len() {
            let IceScenario { peers, mdns, .. } = self;
            let Some(Some(p)) = peers.get_mut(a) else {
                continue;
            };
            if matches!(p.phase, Phase::Closing | Phase::Closed) {
                continue;
            }
            p.ice.close(now);
            if let (Some(name), Some(lan)) = (&p.mdns, p.lan) {
                mdns.unregister(name, lan);
            }
            p.phase = Phase::Closing;
            self.closing += 1;
            self.queue(a);
        }
        self.run(now, cx);
    }

    fn is_shut_down(&self) -> bool {
        self.closing == 0
    }
}
