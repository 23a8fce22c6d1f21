//! [`Agent`]: one side of an ICE session, sans-IO.
//!
//! The embedder owns the sockets (one per host base) and the clock. It registers each socket
//! with [`Agent::add_host`], starts gathering with [`Agent::gather`], passes candidates and
//! credentials through its signalling channel, and then runs the usual loop:
//!
//! ```text
//! loop {
//!     while let Some(t) = agent.poll_transmit(&mut buf) { socket(t.from).send_to(&buf[..t.len], t.to) }
//!     wait for a datagram or until agent.poll_timeout()
//!     match agent.handle_input(now, base, from, &datagram) { Input::Data { payload, .. } => .., _ => {} }
//!     agent.handle_timeout(now)        // whenever poll_timeout() <= now
//!     while let Some(e) = agent.poll_event() { .. }
//! }
//! ```
//!
//! The modules below split the work: `gather` keeps the bases, their STUN and TURN clients and
//! the local candidates; `checks` runs the checklist, answers the peer's checks, nominates and
//! keeps consent.

mod checks;
mod gather;

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::VecDeque;
use std::time::Instant;

use uturn_proto::client::{self as turn, ClientError, Transactions, Transport, TurnClient};
use uturn_proto::stun::TransactionId;

use crate::candidate::{Candidate, CandidateKind};
use crate::config::{AgentConfig, ConfigError, Policy};
use crate::credentials::{Credentials, CredentialsError};
use crate::message::{Answer, BadRequest, BadResponse};
use crate::pair::Pair;
use crate::random::Random;

/// The most host sockets one agent gathers from.
pub const MAX_BASES: usize = 4;
/// The most local candidates, peer-reflexive ones included.
pub const MAX_LOCALS: usize = 16;
/// The most remote candidates: signalled plus peer-reflexive. Both grow only on signalling or
/// on checks that passed MESSAGE-INTEGRITY, and are bounded anyway.
pub const MAX_REMOTES: usize = 32;
/// The most peer-reflexive remote candidates learned from checks arriving on one local
/// candidate (see `on_request` for the storm this stops).
pub const MAX_PRFLX_PER_LOCAL: usize = 8;
/// The most candidate pairs (RFC 8445 section 6.1.2.5 suggests a limit of 100 in all).
pub const MAX_PAIRS: usize = 64;
/// The most checks (connectivity and consent) outstanding at once.
pub const MAX_CHECKS: usize = 24;
/// The most answers to the peer's checks waiting for `poll_transmit`. The peer retransmits, so
/// dropping beyond this loses nothing but time.
pub const MAX_ANSWERS: usize = 8;

/// Where the agent stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Nothing started yet.
    New,
    /// Gathering and checking.
    Checking,
    /// A pair is selected and consent holds.
    Connected,
    /// Consent for the selected pair expired (RFC 7675 section 5.1); nothing is sent on it any
    /// more. An ICE restart ([`Agent::restart`]) is the way back.
    Disconnected,
    /// Every pair failed and both sides finished gathering.
    Failed,
    /// [`Agent::close`] was called: nothing is checked, answered or sent any more, except the
    /// requests that delete the TURN allocations.
    Closed,
}

/// The pair the agent sends on, as reported in [`Event::Connected`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SelectedPair {
    pub local_kind: CandidateKind,
    /// The local candidate's address: the host address, the relayed address, or the
    /// peer-reflexive address the peer saw.
    pub local: SocketAddr,
    /// The socket data leaves from.
    pub base: SocketAddr,
    pub remote_kind: CandidateKind,
    pub remote: SocketAddr,
}

/// What happened, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A candidate to signal to the peer.
    LocalCandidate(Candidate),
    /// Every server answered or gave up: no more local candidates this round (until a restart).
    GatheringDone,
    Connected(SelectedPair),
    /// Consent was lost on the selected pair.
    Disconnected,
    Failed,
}

/// A datagram to send: `buf[..len]` from the socket bound to `from`, to `to`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Transmit {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub len: usize,
}

/// What a received datagram was.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input<'a> {
    /// Application data from `from` (the peer's address, also when it came through the relay),
    /// borrowed from the datagram.
    Data {
        from: SocketAddr,
        payload: &'a [u8],
    },
    /// A STUN or TURN message for the agent, handled.
    Handled,
    Ignored(Ignored),
}

/// Why a datagram was dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Received on a socket that was never added with [`Agent::add_host`].
    UnknownBase,
    /// From the STUN or TURN server, and refused by the client (see its reason).
    Server(turn::Ignored),
    /// STUN, but not a well-formed Binding message.
    Malformed,
    /// A check on a path the agent does not use (a host socket under the relay-only policy, or
    /// a relay whose allocation is gone).
    NoCandidate,
    BadRequest(BadRequest),
    BadResponse(BadResponse),
    /// A response to no outstanding check.
    UnknownTransaction,
    /// A Binding indication (a keepalive, RFC 8445 section 11): nothing to do.
    Keepalive,
}

/// Why an operation was refused; nothing changed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AgentError {
    #[error("this socket was already added")]
    DuplicateBase,
    #[error("at most {MAX_BASES} host sockets")]
    TooManyBases,
    #[error("host sockets must be added before gathering starts")]
    AlreadyGathering,
    #[error("only component 1 is supported")]
    Component,
    #[error("the candidate's address is a name: resolve it first")]
    Unresolved,
    #[error("the candidate's address cannot be sent to")]
    Unusable,
    #[error("too many remote candidates")]
    TooManyCandidates,
    #[error("mDNS name is not a .local name")]
    MdnsName,
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("TURN client: {0}")]
    Turn(#[from] ClientError),
}

/// Why application data could not be sent.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SendError {
    #[error("no selected pair with consent")]
    NotConnected,
    #[error("buffer too small")]
    BufferTooSmall,
    #[error("TURN client: {0}")]
    Turn(#[from] ClientError),
}

/// Counters for the embedder's report.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// Connectivity and consent checks started (not counting retransmissions).
    pub checks_sent: u64,
    /// Valid check requests received.
    pub checks_received: u64,
    /// Check requests or responses dropped as invalid.
    pub invalid: u64,
    /// Role conflicts seen, as 487 sent or received.
    pub role_conflicts: u64,
    /// Peer-reflexive candidates learned, remote and local.
    pub peer_reflexive: u64,
    pub restarts: u64,
}

// ---------------------------------------------------------------------------------------------
// Internal state.

/// How far one kind of gathering on one base got.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Not applicable, or not started.
    Idle,
    Pending,
    Done,
}

/// A local socket and the server clients that gather from it.
#[derive(Debug)]
struct Base {
    addr: SocketAddr,
    mdns: Option<String>,
    /// The local preference of its candidates (RFC 8445 section 5.1.2.1): the first socket
    /// added is preferred.
    local_pref: u16,
    /// Binding to the STUN server, when it is not the TURN server (then `turn` does it).
    stun: Option<Box<TurnClient>>,
    turn: Option<Box<TurnClient>>,
    srflx: Step,
    relay: Step,
}

/// Whether a local candidate can be used.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Live {
    Active,
    /// A relayed candidate after a restart, until a Refresh shows the allocation is still there.
    Probing,
    /// A relayed candidate whose allocation is gone. Kept, so that indices stay stable, until
    /// the next restart.
    Dead,
}

#[derive(Clone, Debug)]
struct Local {
    kind: CandidateKind,
    addr: SocketAddr,
    base: u8,
    priority: u32,
    related: Option<SocketAddr>,
    /// The STUN or TURN server's IP, part of the foundation (RFC 8445 section 5.1.1.3).
    server: Option<IpAddr>,
    live: Live,
}

#[derive(Clone, Debug)]
struct Remote {
    addr: SocketAddr,
    priority: u32,
    kind: CandidateKind,
}

/// What the transaction table remembers about each check, enough to write it again for a
/// retransmission and to act on its response.
#[derive(Copy, Clone, Debug)]
struct Check {
    pair: u16,
    kind: CheckKind,
    /// The role claimed in the request, for 487 handling (RFC 8445 section 7.2.5.1).
    controlling: bool,
    /// PRIORITY sent, the priority of a local peer-reflexive candidate it may reveal.
    priority: u32,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum CheckKind {
    Connectivity,
    /// With USE-CANDIDATE.
    Nomination,
    /// Consent freshness on the selected pair (RFC 7675).
    Consent,
}

/// An answer to a peer's check, waiting for `poll_transmit`.
#[derive(Copy, Clone, Debug)]
struct PendingAnswer {
    tid: TransactionId,
    local: u16,
    to: SocketAddr,
    answer: Answer,
}

#[derive(Copy, Clone, Debug)]
struct Consent {
    next: Instant,
    deadline: Instant,
}

/// A sans-IO ICE agent. See the [module documentation](self).
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    rng: Random,
    controlling: bool,
    tie_breaker: u64,
    local_creds: Credentials,
    remote_creds: Option<Credentials>,
    remote_gathering_done: bool,
    /// Gathering: `Idle` before [`Agent::gather`], then `Pending` until every base is done.
    gathering: Step,
    state: State,
    bases: Vec<Base>,
    locals: Vec<Local>,
    remotes: Vec<Remote>,
    pairs: Vec<Pair>,
    checks: Transactions<Check>,
    triggered: VecDeque<u16>,
    answers: VecDeque<PendingAnswer>,
    events: VecDeque<Event>,
    selected: Option<u16>,
    /// The pair the controlling agent sent USE-CANDIDATE on, until that check ends.
    nominating: Option<u16>,
    /// When the controlling agent nominates even if better pairs are still being checked.
    nominate_at: Option<Instant>,
    last_check: Option<Instant>,
    consent: Option<Consent>,
    /// The latest `now` passed in, for the calls that take none.
    now: Option<Instant>,
    stats: Stats,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Result<Self, ConfigError> {
        if config.ta.is_zero() {
            return Err(ConfigError::Ta);
        }
        if config.consent_interval.is_zero() || config.consent_interval >= config.consent_timeout {
            return Err(ConfigError::Consent);
        }
        if config.policy == Policy::RelayOnly && config.turn.is_none() {
            return Err(ConfigError::RelayOnlyWithoutTurn);
        }
        let mut rng = Random::new(config.seed);
        let tie_breaker = config.tie_breaker.unwrap_or_else(|| rng.next_u64());
        let local_creds = match &config.credentials {
            Some(c) => c.clone(),
            None => Credentials::random(&mut rng),
        };
        Ok(Agent {
            controlling: config.controlling,
            tie_breaker,
            local_creds,
            remote_creds: None,
            remote_gathering_done: false,
            gathering: Step::Idle,
            state: State::New,
            bases: Vec::new(),
            locals: Vec::new(),
            remotes: Vec::new(),
            pairs: Vec::new(),
            checks: Self::check_table(&config),
            triggered: VecDeque::new(),
            answers: VecDeque::new(),
            events: VecDeque::new(),
            selected: None,
            nominating: None,
            nominate_at: None,
            last_check: None,
            consent: None,
            now: None,
            stats: Stats::default(),
            rng,
            config,
        })
    }

    fn check_table(config: &AgentConfig) -> Transactions<Check> {
        Transactions::new(MAX_CHECKS, config.check_retransmit, Transport::Udp)
    }

    // -----------------------------------------------------------------------------------------
    // Accessors.

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The ufrag and password to signal to the peer (`a=ice-ufrag`, `a=ice-pwd`).
    pub fn local_credentials(&self) -> &Credentials {
        &self.local_creds
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_controlling(&self) -> bool {
        self.controlling
    }

    pub fn tie_breaker(&self) -> u64 {
        self.tie_breaker
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The selected pair, while connected or after consent was lost.
    pub fn selected_pair(&self) -> Option<SelectedPair> {
        self.selected.map(|p| self.pair_info(usize::from(p)))
    }

    /// A fresh `<uuid>.local` name for [`Agent::add_host`], drawn from the agent's seed so that
    /// runs replay; the embedder registers it with its resolver.
    pub fn random_mdns_name(&mut self) -> String {
        self.rng.mdns_name()
    }

    // -----------------------------------------------------------------------------------------
    // Signalling.

    /// The peer's ufrag and password, as signalled.
    pub fn set_remote_credentials(&mut self, ufrag: &str, pwd: &str) -> Result<(), AgentError> {
        self.remote_creds = Some(Credentials::new(ufrag, pwd)?);
        if self.state == State::New {
            self.state = State::Checking;
        }
        Ok(())
    }

    /// A candidate the peer signalled, its address resolved (an mDNS name is resolved by the
    /// embedder, see [`Candidate::resolved`]). Pairs are formed with every local candidate of
    /// the same family.
    pub fn add_remote_candidate(
        &mut self,
        now: Instant,
        candidate: &Candidate,
    ) -> Result<(), AgentError> {
        self.now = Some(now);
        if candidate.component != crate::candidate::COMPONENT {
            return Err(AgentError::Component);
        }
        let addr = candidate.socket_addr().ok_or(AgentError::Unresolved)?;
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return Err(AgentError::Unusable);
        }
        self.add_remote(now, addr, candidate.priority, candidate.kind, true)
            .ok_or(AgentError::TooManyCandidates)?;
        if self.state == State::New {
            self.state = State::Checking;
        }
        Ok(())
    }

    /// The peer will signal no more candidates (end-of-candidates, RFC 8838 section 8.2). Lets
    /// the agent declare failure once every pair failed, and nominate without waiting.
    pub fn set_remote_gathering_done(&mut self) {
        self.remote_gathering_done = true;
        self.check_failed();
    }

    // -----------------------------------------------------------------------------------------
    // The sans-IO loop.

    /// Takes one datagram received on the socket bound to `base`, from `from`.
    pub fn handle_input<'a>(
        &mut self,
        now: Instant,
        base: SocketAddr,
        from: SocketAddr,
        data: &'a [u8],
    ) -> Input<'a> {
        self.now = Some(now);
        let Some(b) = self.bases.iter().position(|x| x.addr == base) else {
            return Input::Ignored(Ignored::UnknownBase);
        };
        let input = self.demux(now, b, from, data);
        if !matches!(input, Input::Data { .. }) {
            // Data changes nothing; everything else may have.
            self.after_io(now);
        }
        input
    }

    /// The next datagram to send, written into `buf` (1500 bytes hold anything the agent
    /// writes with credentials of ordinary size).
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self.poll_server_transmit(buf) {
            return Some(t);
        }
        while let Some(a) = self.answers.pop_front() {
            if let Some(t) = self.write_answer(&a, buf) {
                return Some(t);
            }
        }
        while let Some((tid, to, check)) = self.checks.poll_transmit() {
            let check = *check;
            if let Some(t) = self.write_check(tid, to, &check, buf) {
                return Some(t);
            }
        }
        None
    }

    /// When [`Agent::handle_timeout`] has work next. `None` when idle: a connected agent wakes
    /// only for consent and TURN refreshes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pacing = if self.has_check_to_start() {
            self.last_check.map(|t| t + self.config.ta).or(self.now)
        } else {
            None
        };
        let nominate = if self.controlling && self.state == State::Checking {
            self.nominate_at.filter(|_| self.nominating.is_none())
        } else {
            None
        };
        let consent = self
            .consent
            .filter(|_| self.state == State::Connected)
            .map(|c| c.next.min(c.deadline));
        let servers = self
            .bases
            .iter()
            .flat_map(|b| [b.stun.as_deref(), b.turn.as_deref()])
            .flatten()
            .filter_map(|c| c.poll_timeout())
            .min();
        [
            self.checks.poll_timeout(),
            pacing,
            nominate,
            consent,
            servers,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Retransmits, gives up on checks, paces new ones, nominates, keeps consent and lets the
    /// STUN/TURN clients renew what they hold.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        for b in &mut self.bases {
            for c in [b.stun.as_deref_mut(), b.turn.as_deref_mut()]
                .into_iter()
                .flatten()
            {
                c.handle_timeout(now);
            }
        }
        self.checks.handle_timeout(now);
        while let Some((tid, check)) = self.checks.pop_expired(now) {
            self.on_check_timeout(now, tid, &check);
        }
        self.tick_consent(now);
        self.pace(now);
        self.after_io(now);
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Writes application data for the peer into `buf`, addressed along the selected pair:
    /// straight to the peer, or to the TURN server as ChannelData (a Send indication until the
    /// channel is bound).
    pub fn send(&mut self, payload: &[u8], buf: &mut [u8]) -> Result<Transmit, SendError> {
        if self.state != State::Connected {
            return Err(SendError::NotConnected);
        }
        let p = self.selected.ok_or(SendError::NotConnected)?;
        let pair = &self.pairs[usize::from(p)];
        let to = self.remotes[usize::from(pair.remote)].addr;
        self.send_via(usize::from(pair.local), to, payload, buf)
    }

    /// ICE restart (RFC 8445 section 9): new credentials (drawn from the seed when `None`),
    /// every remote candidate, pair and check forgotten, candidates announced again. Host
    /// candidates are announced at once; server-reflexive ones are gathered again (the NAT
    /// mapping may have changed); each TURN allocation is kept but first probed with a Refresh,
    /// and allocated anew if the server no longer knows it (after a relay restart or a NAT
    /// rebinding). The peer must restart too: restart both agents before passing either one's
    /// new credentials and candidates, or the peer's restart would forget what it was told.
    pub fn restart(&mut self, now: Instant, credentials: Option<Credentials>) {
        if self.state == State::Closed {
            return;
        }
        self.now = Some(now);
        self.local_creds = match credentials {
            Some(c) => c,
            None => Credentials::random(&mut self.rng),
        };
        self.remote_creds = None;
        self.remote_gathering_done = false;
        self.remotes.clear();
        self.pairs.clear();
        self.triggered.clear();
        self.answers.clear();
        self.checks = Self::check_table(&self.config);
        self.selected = None;
        self.nominating = None;
        self.nominate_at = None;
        self.last_check = None;
        self.consent = None;
        self.state = State::Checking;
        self.stats.restarts += 1;
        self.regather(now);
    }

    /// Ends the session for good: every candidate, pair and check is forgotten (the peer's
    /// checks are no longer answered) and each TURN allocation is deleted with a Refresh of
    /// lifetime 0 (RFC 8656 section 7), so that the server frees the relayed address now rather
    /// than when the lifetime runs out. Keep calling [`Agent::poll_transmit`],
    /// [`Agent::handle_input`] and [`Agent::handle_timeout`] until [`Agent::is_closed`]. No
    /// event follows, and [`Agent::restart`] does nothing any more.
    pub fn close(&mut self, now: Instant) {
        self.now = Some(now);
        self.state = State::Closed;
        self.locals.clear();
        self.remotes.clear();
        self.pairs.clear();
        self.triggered.clear();
        self.answers.clear();
        self.events.clear();
        self.checks = Self::check_table(&self.config);
        self.selected = None;
        self.nominating = None;
        self.nominate_at = None;
        self.consent = None;
        self.gathering = Step::Done;
        for b in &mut self.bases {
            // A pending Binding has nothing left to tell.
            b.stun = None;
            b.srflx = Step::Done;
            b.relay = Step::Done;
            let Some(turn) = b.turn.as_deref_mut() else {
                continue;
            };
            if turn.allocation().is_none() || turn.deallocate(now).is_err() {
                // Nothing granted (or a request table too full to say goodbye): the server's
                // lifetime will reclaim whatever it holds.
                b.turn = None;
            }
        }
    }

    /// After [`Agent::close`]: every deletion was answered or given up on.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
            && self.bases.iter().all(|b| {
                b.turn
                    .as_deref()
                    .is_none_or(|t| t.allocation().is_none() || t.outstanding() == 0)
            })
    }

    // -----------------------------------------------------------------------------------------
    // Shared helpers.

    /// Reactions common to every input: server client events, nomination, failure.
    fn after_io(&mut self, now: Instant) {
        self.drain_server_events(now);
        self.maybe_nominate(now);
        self.check_failed();
    }

    fn pair_info(&self, p: usize) -> SelectedPair {
        let pair = &self.pairs[p];
        let local = &self.locals[usize::from(pair.valid_local)];
        let base = &self.locals[usize::from(pair.local)];
        let remote = &self.remotes[usize::from(pair.remote)];
        SelectedPair {
            local_kind: local.kind,
            local: local.addr,
            base: self.bases[usize::from(base.base)].addr,
            remote_kind: remote.kind,
            remote: remote.addr,
        }
    }

    /// Sends `bytes` (a check, an answer or application data) from local candidate `local` to
    /// `to`: straight from the base, or wrapped for the TURN server when the candidate is
    /// relayed.
    fn send_via(
        &mut self,
        local: usize,
        to: SocketAddr,
        bytes: &[u8],
        buf: &mut [u8],
    ) -> Result<Transmit, SendError> {
        let l = &self.locals[local];
        let base = &mut self.bases[usize::from(l.base)];
        if l.kind == CandidateKind::Relayed {
            let turn = base.turn.as_deref_mut().ok_or(SendError::NotConnected)?;
            let t = turn.send(to, bytes, buf)?;
            Ok(Transmit {
                from: base.addr,
                to: t.to,
                len: t.len,
            })
        } else {
            let out = buf
                .get_mut(..bytes.len())
                .ok_or(SendError::BufferTooSmall)?;
            out.copy_from_slice(bytes);
            Ok(Transmit {
                from: base.addr,
                to,
                len: bytes.len(),
            })
        }
    }

    fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }
}

/// Whether two addresses can form a pair (RFC 8445 section 6.1.2.2: same address family).
fn same_family(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// A consent interval randomized to 0.8-1.2 times `base` (RFC 7675 section 5.1), so that
/// agents started together do not probe in lockstep.
fn jittered(rng: &mut Random, base: Duration) -> Duration {
    let permille = 800 + rng.below(401) as u32;
    base.saturating_mul(permille) / 1000
}
