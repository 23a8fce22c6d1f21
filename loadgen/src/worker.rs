//! One loadgen worker: a thread, a pinned core, an I/O driver, and a share of the agent pairs.
//!
//! The worker is the part every mode shares; what the agents *are* is a [`Scenario`]: the
//! turn-only clients of [`crate::turn_only`] today, ICE agents tomorrow. The worker owns:
//! - the schedule ([`Plan`]): when each pair starts in the ramp, when sending stops, the drain;
//! - the [`Fabric`] between agents and real sockets (NAT emulation);
//! - the media pacer: each agent the scenario marks streaming sends a probe to its partner every
//!   `1 / rate` seconds (or as fast as it can), through [`Scenario::send_media`];
//! - the measurements: probes received are checked per flow ([`SeqWindow`]) and timed, setup
//!   and allocation times go to histograms, and a per-second [`Interval`] goes to the main
//!   thread.
//!
//! Agents are numbered per worker (`AgentIx`), and agents `2k` and `2k + 1` are partners: pair
//! `k`. The flow id in a probe is the sender's run-wide id, `plan.agent_base + ix`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use uturn::driver::{Handler, Io, RecvPacket, SockId, StreamEvent};

use crate::fabric::{AgentIx, DriverIo, Fabric, FabricCounters, NetIo};
use crate::stats::{Arrival, CandidateType, Clock, Interval, Probe, SeqWindow, Stats, PROBE_LEN};

/// The partner of an agent: pairs are `(2k, 2k + 1)`.
pub fn partner(agent: AgentIx) -> AgentIx {
    agent ^ 1
}

/// What a worker is told to do. All instants are on the run's shared clock.
#[derive(Clone, Debug)]
pub struct Plan {
    pub worker: usize,
    pub clock: Clock,
    /// When each of this worker's pairs starts, ascending.
    pub pair_starts: Vec<Instant>,
    /// The run-wide id of this worker's agent 0.
    pub agent_base: u32,
    /// Start of the measured window (end of the ramp).
    pub hold_start: Instant,
    /// Sending stops here; the measured window ends.
    pub send_end: Instant,
    /// Time after `send_end` for the last probes to arrive before the scenario shuts down.
    pub drain: Duration,
    /// Longest the scenario's shutdown (deallocations) may take.
    pub shutdown_grace: Duration,
    /// An agent not connected this long after its start has failed.
    pub setup_timeout: Duration,
    pub media: Media,
    /// With `--chaos`: when to drop every NAT mapping.
    pub chaos_at: Option<Instant>,
}

/// The media every connected agent sends.
#[derive(Copy, Clone, Debug)]
pub struct Media {
    /// Packets per second per agent (ignored with `max_rate`).
    pub rate: u32,
    /// Payload bytes per packet, at least [`PROBE_LEN`].
    pub size: usize,
    pub max_rate: bool,
}

/// Most probes a worker sends per loop iteration, so that receiving (and the driver's send
/// buffers) keep up; the rest go out in the next iteration, at once.
pub const SEND_BUDGET: usize = 512;

/// The longest a paced sender catches up after its thread was busy: beyond that, the missed
/// probes are skipped (and the sent count shows it) instead of sent in a burst.
const CATCH_UP: Duration = Duration::from_millis(100);

/// How often setup timeouts are looked for.
const SETUP_CHECK: Duration = Duration::from_millis(100);

/// What the worker tells the main thread.
#[derive(Debug)]
pub enum Report {
    /// One second of measurements.
    Interval(Interval),
    /// The worker is done: its final statistics and fabric counters. The main thread then
    /// stops the driver.
    Done(usize, Box<Stats>, FabricCounters),
}

/// The agents' side of a worker. Every call gets a [`Cx`] to send, add agents and report.
pub trait Scenario {
    /// Pair `pair` (agents `2 * pair` and `2 * pair + 1`) reached its start in the ramp: add
    /// its agents to the fabric (in order) and start them.
    fn start_pair(&mut self, now: Instant, pair: usize, cx: &mut Cx<'_>);
    /// A datagram for `agent` from `from`.
    fn on_datagram(
        &mut self,
        now: Instant,
        agent: AgentIx,
        from: SocketAddr,
        data: &[u8],
        cx: &mut Cx<'_>,
    );
    /// Called every loop iteration: timers.
    fn on_tick(&mut self, now: Instant, cx: &mut Cx<'_>);
    /// When `on_tick` is next needed.
    fn next_timeout(&self) -> Option<Instant>;
    /// Sends one probe from `agent` to its partner; false if it could not go out.
    fn send_media(&mut self, now: Instant, agent: AgentIx, payload: &[u8], cx: &mut Cx<'_>)
        -> bool;
    /// Sending is over: release what the server holds (deallocate).
    fn shutdown(&mut self, now: Instant, cx: &mut Cx<'_>);
    /// Everything released or given up on.
    fn is_shut_down(&self) -> bool;
    /// An event on a TCP connection the scenario opened (`--transport tcp|tls`).
    fn on_stream(&mut self, now: Instant, event: StreamEvent<'_>, cx: &mut Cx<'_>) {
        let _ = (now, event, cx);
    }
}

/// A boxed scenario is a scenario, so that the run can pick one per `--mode` at run time.
impl<S: Scenario + ?Sized> Scenario for Box<S> {
    fn start_pair(&mut self, now: Instant, pair: usize, cx: &mut Cx<'_>) {
        (**self).start_pair(now, pair, cx)
    }
    fn on_datagram(
        &mut self,
        now: Instant,
        agent: AgentIx,
        from: SocketAddr,
        data: &[u8],
        cx: &mut Cx<'_>,
    ) {
        (**self).on_datagram(now, agent, from, data, cx)
    }
    fn on_tick(&mut self, now: Instant, cx: &mut Cx<'_>) {
        (**self).on_tick(now, cx)
    }
    fn next_timeout(&self) -> Option<Instant> {
        (**self).next_timeout()
    }
    fn send_media(
        &mut self,
        now: Instant,
        agent: AgentIx,
        payload: &[u8],
        cx: &mut Cx<'_>,
    ) -> bool {
        (**self).send_media(now, agent, payload, cx)
    }
    fn on_stream(&mut self, now: Instant, event: StreamEvent<'_>, cx: &mut Cx<'_>) {
        (**self).on_stream(now, event, cx)
    }
    fn shutdown(&mut self, now: Instant, cx: &mut Cx<'_>) {
        (**self).shutdown(now, cx)
    }
    fn is_shut_down(&self) -> bool {
        (**self).is_shut_down()
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum AgentState {
    Idle,
    Starting(Instant),
    Connected,
    Failed,
}

/// The worker's bookkeeping that scenarios report into.
#[derive(Debug)]
pub struct Core {
    plan: Plan,
    stats: Stats,
    interval: Interval,
    agents: Vec<AgentState>,
    flows: Vec<SeqWindow>,
    next_seq: Vec<u64>,
    /// Streaming agents by next send time.
    pacer: BinaryHeap<Reverse<(Instant, AgentIx)>>,
    /// Agents streaming at max rate, served round-robin.
    flood: Vec<AgentIx>,
    flood_next: usize,
    payload: Vec<u8>,
    interval_ns: u64,
}

/// What a scenario may use during a call.
pub struct Cx<'a> {
    pub io: &'a mut dyn NetIo,
    pub fabric: &'a mut Fabric,
    pub core: &'a mut Core,
}

impl std::fmt::Debug for Cx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cx").finish_non_exhaustive()
    }
}

impl Cx<'_> {
    /// Sends a datagram from `agent` through the fabric.
    pub fn send(&mut self, now: Instant, agent: AgentIx, to: SocketAddr, bytes: &[u8]) -> bool {
        self.fabric.send(now, self.io, agent, to, bytes)
    }
}

impl Core {
    fn new(plan: Plan) -> Self {
        let interval_ns = if plan.media.max_rate {
            0
        } else {
            1_000_000_000 / u64::from(plan.media.rate.max(1))
        };
        let mut payload = vec![0u8; plan.media.size.max(PROBE_LEN)];
        // Filler that is not all zeros, so that nothing on the path can compress it away.
        for (i, b) in payload.iter_mut().enumerate().skip(PROBE_LEN) {
            *b = (i % 251) as u8;
        }
        let second = 0;
        Core {
            interval: Interval::new(plan.worker, second),
            plan,
            stats: Stats::default(),
            agents: Vec::new(),
            flows: Vec::new(),
            next_seq: Vec::new(),
            pacer: BinaryHeap::new(),
            flood: Vec::new(),
            flood_next: 0,
            payload,
            interval_ns,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn ensure(&mut self, agent: AgentIx) {
        if self.agents.len() <= agent {
            self.agents.resize(agent + 1, AgentState::Idle);
            self.flows.resize_with(agent + 1, SeqWindow::default);
            self.next_seq.resize(agent + 1, 0);
        }
    }

    /// The agent started setting up (setup time counts from here).
    pub fn agent_started(&mut self, agent: AgentIx, now: Instant) {
        self.ensure(agent);
        if self.agents[agent] == AgentState::Idle {
            self.agents[agent] = AgentState::Starting(now);
            self.stats.agents += 1;
        }
    }

    /// The agent has a usable path whose local candidate is of type `kind`.
    pub fn agent_connected(&mut self, agent: AgentIx, now: Instant, kind: CandidateType) {
        self.ensure(agent);
        if let AgentState::Starting(at) = self.agents[agent] {
            self.agents[agent] = AgentState::Connected;
            self.stats.connected += 1;
            self.stats.setup_ms.record_duration_ms(now - at);
            self.stats.candidates.add(kind);
        }
    }

    /// The agent will not connect; `reason` is shown in the report. Later calls for the same
    /// agent are ignored: one failure per agent.
    pub fn agent_failed(&mut self, agent: AgentIx, reason: impl Into<String>) {
        self.ensure(agent);
        if matches!(
            self.agents[agent],
            AgentState::Starting(_) | AgentState::Idle
        ) {
            if self.agents[agent] == AgentState::Idle {
                self.stats.agents += 1;
            }
            self.agents[agent] = AgentState::Failed;
            self.stats.fail(reason);
        }
    }

    /// Whether the agent has connected (and not failed).
    pub fn is_connected(&self, agent: AgentIx) -> bool {
        self.agents.get(agent) == Some(&AgentState::Connected)
    }

    /// Whether the agent has failed.
    pub fn has_failed(&self, agent: AgentIx) -> bool {
        self.agents.get(agent) == Some(&AgentState::Failed)
    }

    /// An error after the agent connected (a failed refresh, a lost allocation): counted by
    /// reason, the agent stays connected.
    pub fn error(&mut self, reason: impl Into<String>) {
        *self.stats.errors.entry(reason.into()).or_default() += 1;
    }

    pub fn allocation_done(&mut self, latency: Duration) {
        self.stats.allocation_ms.record_duration_ms(latency);
    }

    pub fn ice_restart(&mut self) {
        self.stats.ice_restarts += 1;
    }

    /// An agent's selected pair stopped working.
    pub fn ice_disconnected(&mut self) {
        self.stats.ice_disconnects += 1;
    }

    /// A pair connected again, `after` its path was lost.
    pub fn ice_recovered(&mut self, after: Duration) {
        self.stats.ice_recovered += 1;
        self.stats.recovery_ms.record_duration_ms(after);
    }

    /// The relay hops (0 to 2) of the path an agent just connected on; see
    /// [`Stats::relay_hops`].
    pub fn relay_hops(&mut self, hops: u64) {
        self.stats.relay_hops += hops;
    }

    /// The agent starts sending probes to its partner now (until the plan's end of sending).
    pub fn start_media(&mut self, agent: AgentIx, now: Instant) {
        if !self.is_connected(agent) || now >= self.plan.send_end {
            return;
        }
        if self.plan.media.max_rate {
            if !self.flood.contains(&agent) {
                self.flood.push(agent);
            }
        } else {
            self.pacer.push(Reverse((now + self.phase(agent), agent)));
            let from = now.max(self.plan.hold_start);
            let due = self
                .plan
                .send_end
                .saturating_duration_since(from)
                .as_secs_f64()
                * f64::from(self.plan.media.rate);
            self.stats.traffic.window_asked += due.round() as u64;
        }
    }

    /// Where in its send interval an agent's probes fall. Pairs start on a regular grid (the
    /// ramp), so without this, agents' schedules line up into bursts that the relay then queues
    /// (a 200-agent run at 50 pps had 1 ms median latency from that alone). The offset is the
    /// fractional part of id x the golden ratio: evenly spread, and the same in every run.
    fn phase(&self, agent: AgentIx) -> Duration {
        let id = u64::from(self.plan.agent_base) + agent as u64;
        // 2^64 / golden ratio: multiplying spreads consecutive ids over the whole u64 range.
        let spread = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let frac = (spread >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_nanos((frac * self.interval_ns as f64) as u64)
    }

    /// Application data that reached `agent`: a probe from its partner, timed and checked.
    pub fn media_received(&mut self, now: Instant, agent: AgentIx, data: &[u8]) {
        let t = &mut self.stats.traffic;
        let expected = self.plan.agent_base + partner(agent) as u32;
        let (Some(p), Some(flow)) = (Probe::parse(data), self.flows.get_mut(agent)) else {
            t.foreign += 1;
            return;
        };
        if p.flow != expected {
            t.foreign += 1;
            return;
        }
        t.received += 1;
        t.bytes_received += data.len() as u64;
        self.interval.received += 1;
        self.interval.bytes_received += data.len() as u64;
        if (self.plan.hold_start..self.plan.send_end + self.plan.drain).contains(&now) {
            t.window_received += 1;
            t.window_bytes += data.len() as u64;
        }
        let before = flow.lost();
        match flow.record(p.seq) {
            Arrival::InOrder => t.unique += 1,
            Arrival::Reordered => {
                t.unique += 1;
                t.reordered += 1;
            }
            Arrival::Duplicate => {
                t.duplicated += 1;
                return;
            }
            // Cannot tell whether it is a first copy: not counted as unique, so loss errs high.
            Arrival::Late => t.late += 1,
        }
        self.interval.lost += flow.lost() - before;
        let latency_us = self.plan.clock.ns(now).saturating_sub(p.sent_ns) / 1000;
        self.stats.latency_us.record(latency_us);
        self.interval.latency_us.record(latency_us);
    }

    /// Writes the agent's next probe into `payload`.
    fn next_probe(&mut self, now: Instant, agent: AgentIx, payload: &mut [u8]) {
        self.ensure(agent);
        let seq = self.next_seq[agent];
        self.next_seq[agent] += 1;
        let probe = Probe {
            flow: self.plan.agent_base + agent as u32,
            seq,
            sent_ns: self.plan.clock.ns(now),
        };
        probe.write(payload);
    }

    fn sent(&mut self, now: Instant, ok: bool, len: usize) {
        let t = &mut self.stats.traffic;
        if now >= self.plan.hold_start {
            t.window_attempted += 1;
        }
        if ok {
            t.sent += 1;
            t.bytes_sent += len as u64;
            self.interval.sent += 1;
            if now >= self.plan.hold_start {
                t.window_sent += 1;
            }
        } else {
            t.send_failed += 1;
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Sending stopped; waiting for the last probes.
    Draining,
    /// The scenario is releasing server state, until this instant at the latest.
    ShuttingDown(Instant),
    Done,
}

/// A worker: the driver's [`Handler`] for a [`Scenario`].
pub struct Worker<S: Scenario> {
    scenario: S,
    core: Core,
    fabric: Fabric,
    next_pair: usize,
    phase: Phase,
    report: Sender<Report>,
    chaos_done: bool,
    next_second: Instant,
    next_setup_check: Instant,
    /// Probes each agent sends back to back (`--gso-burst`); 1 normally.
    burst: usize,
}

impl<S: Scenario> std::fmt::Debug for Worker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("worker", &self.core.plan.worker)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl<S: Scenario> Worker<S> {
    pub fn new(scenario: S, plan: Plan, fabric: Fabric, report: Sender<Report>) -> Self {
        let next_second = plan.clock.epoch() + Duration::from_secs(1);
        Worker {
            scenario,
            core: Core::new(plan),
            fabric,
            next_pair: 0,
            phase: Phase::Running,
            report,
            chaos_done: false,
            next_second,
            next_setup_check: next_second,
            burst: 1,
        }
    }

    /// Each agent sends `n` probes back to back (at `n` times the interval when paced), so
    /// that a driver with GSO sends them as one (`--gso-burst`).
    pub fn with_burst(mut self, n: usize) -> Self {
        self.burst = n.max(1);
        self
    }

    pub fn scenario(&self) -> &S {
        &self.scenario
    }

    fn cx<'a>(io: &'a mut dyn NetIo, fabric: &'a mut Fabric, core: &'a mut Core) -> Cx<'a> {
        Cx { io, fabric, core }
    }

    fn start_due_pairs(&mut self, now: Instant, io: &mut dyn NetIo) {
        while let Some(&at) = self.core.plan.pair_starts.get(self.next_pair) {
            if at > now || now >= self.core.plan.send_end {
                break;
            }
            let pair = self.next_pair;
            self.next_pair += 1;
            let mut cx = Self::cx(io, &mut self.fabric, &mut self.core);
            self.scenario.start_pair(now, pair, &mut cx);
        }
    }

    fn check_setup_timeouts(&mut self, now: Instant) {
        // A linear scan: done every SETUP_CHECK, not every iteration.
        if now < self.next_setup_check {
            return;
        }
        self.next_setup_check = now + SETUP_CHECK;
        let limit = self.core.plan.setup_timeout;
        for a in 0..self.core.agents.len() {
            if let AgentState::Starting(at) = self.core.agents[a] {
                if now.saturating_duration_since(at) >= limit {
                    self.core.agent_failed(a, "setup timeout");
                }
            }
        }
    }

    fn send_due_media(&mut self, now: Instant, io: &mut dyn NetIo) {
        if now >= self.core.plan.send_end {
            self.core.pacer.clear();
            self.core.flood.clear();
            return;
        }
        let mut budget = SEND_BUDGET;
        if !self.core.flood.is_empty() {
            // As fast as possible: one probe per streaming agent per round, within the budget.
            while budget > 0 && !self.core.flood.is_empty() {
                let i = self.core.flood_next % self.core.flood.len();
                self.core.flood_next = i + 1;
                let agent = self.core.flood[i];
                for _ in 0..self.burst {
                    self.send_probe(now, agent, io);
                }
                budget = budget.saturating_sub(self.burst);
            }
            return;
        }
        let step = Duration::from_nanos(self.core.interval_ns * self.burst as u64);
        while budget > 0 {
            let Some(&Reverse((at, agent))) = self.core.pacer.peek() else {
                break;
            };
            if at > now {
                break;
            }
            self.core.pacer.pop();
            for _ in 0..self.burst {
                self.send_probe(now, agent, io);
            }
            budget = budget.saturating_sub(self.burst);
            // Keep the schedule (no drift), catching up on short stalls so that the rate holds;
            // after a stall longer than CATCH_UP the backlog is dropped rather than burst out.
            let next = at + step;
            let next = if next + CATCH_UP < now {
                now + step
            } else {
                next
            };
            self.core.pacer.push(Reverse((next, agent)));
        }
    }

    fn send_probe(&mut self, now: Instant, agent: AgentIx, io: &mut dyn NetIo) {
        // The buffer is lent out for the call so that the scenario can borrow the core too.
        let mut payload = std::mem::take(&mut self.core.payload);
        self.core.next_probe(now, agent, &mut payload);
        let mut cx = Self::cx(io, &mut self.fabric, &mut self.core);
        let ok = self.scenario.send_media(now, agent, &payload, &mut cx);
        self.core.sent(now, ok, payload.len());
        self.core.payload = payload;
    }

    fn flush_intervals(&mut self, now: Instant) {
        while now >= self.next_second {
            let second = self.core.interval.second + 1;
            let mut done = std::mem::replace(
                &mut self.core.interval,
                Interval::new(self.core.plan.worker, second),
            );
            done.connected = self.core.stats.connected;
            done.failed = self.core.stats.failed;
            // The main thread may be busy; a lost sample is a gap in the plot, not a stall here.
            let _ = self.report.try_send(Report::Interval(done));
            self.next_second += Duration::from_secs(1);
        }
    }

    fn advance_phase(&mut self, now: Instant, io: &mut dyn NetIo) {
        let plan = &self.core.plan;
        match self.phase {
            Phase::Running if now >= plan.send_end => {
                self.phase = Phase::Draining;
            }
            Phase::Draining if now >= plan.send_end + plan.drain => {
                // Whoever is not connected by now never will be in this run.
                for a in 0..self.core.agents.len() {
                    if matches!(self.core.agents[a], AgentState::Starting(_)) {
                        self.core
                            .agent_failed(a, "not connected by the end of the run");
                    }
                }
                for pair in self.next_pair..self.core.plan.pair_starts.len() {
                    for a in [2 * pair, 2 * pair + 1] {
                        self.core
                            .agent_failed(a, "not started: the run ended first");
                    }
                }
                let until = now + self.core.plan.shutdown_grace;
                let mut cx = Self::cx(io, &mut self.fabric, &mut self.core);
                self.scenario.shutdown(now, &mut cx);
                self.phase = Phase::ShuttingDown(until);
            }
            Phase::ShuttingDown(until) if self.scenario.is_shut_down() || now >= until => {
                let stats = std::mem::take(&mut self.core.stats);
                let _ = self.report.send(Report::Done(
                    self.core.plan.worker,
                    Box::new(stats),
                    self.fabric.counters,
                ));
                self.phase = Phase::Done;
            }
            _ => {}
        }
    }

    fn deliver_local(&mut self, now: Instant, io: &mut dyn NetIo) {
        while let Some((agent, from, data)) = self.fabric.poll_local() {
            let mut cx = Self::cx(io, &mut self.fabric, &mut self.core);
            self.scenario.on_datagram(now, agent, from, &data, &mut cx);
        }
    }
}

impl<S: Scenario> Handler for Worker<S> {
    fn on_recv<I: Io>(
        &mut self,
        now: Instant,
        sock: SockId,
        from: SocketAddr,
        pkt: I::Packet,
        io: &mut I,
    ) {
        // Close the second first, so that this datagram counts in the second it arrived in.
        self.flush_intervals(now);
        let Some((agent, from)) = self.fabric.recv(now, sock, from) else {
            return;
        };
        let mut io = DriverIo(io);
        let mut cx = Self::cx(&mut io, &mut self.fabric, &mut self.core);
        self.scenario
            .on_datagram(now, agent, from, pkt.payload(), &mut cx);
    }

    fn on_tick<I: Io>(&mut self, now: Instant, io: &mut I) {
        if self.phase == Phase::Done {
            return;
        }
        let mut io = DriverIo(io);
        self.flush_intervals(now);
        self.start_due_pairs(now, &mut io);
        self.deliver_local(now, &mut io);
        {
            let mut cx = Self::cx(&mut io, &mut self.fabric, &mut self.core);
            self.scenario.on_tick(now, &mut cx);
        }
        self.fabric.handle_timeout(now, &mut io);
        if let Some(at) = self.core.plan.chaos_at {
            if !self.chaos_done && now >= at {
                self.chaos_done = true;
                self.fabric.expire_all_mappings(&mut io);
            }
        }
        self.check_setup_timeouts(now);
        self.send_due_media(now, &mut io);
        self.deliver_local(now, &mut io);
        self.advance_phase(now, &mut io);
    }

    fn on_stream<I: Io>(&mut self, now: Instant, event: StreamEvent<'_>, io: &mut I) {
        self.flush_intervals(now);
        let mut io = DriverIo(io);
        let mut cx = Self::cx(&mut io, &mut self.fabric, &mut self.core);
        self.scenario.on_stream(now, event, &mut cx);
    }

    fn next_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        let plan = &self.core.plan;
        let media = if !self.core.flood.is_empty() {
            // Streaming flat out: come straight back.
            Some(Instant::now())
        } else {
            self.core.pacer.peek().map(|Reverse((t, _))| *t)
        };
        let phase = match self.phase {
            Phase::Running => Some(plan.send_end),
            Phase::Draining => Some(plan.send_end + plan.drain),
            // The scenario's own timers drive the shutdown; check at least every 50 ms.
            Phase::ShuttingDown(until) => {
                Some(until.min(Instant::now() + Duration::from_millis(50)))
            }
            Phase::Done => None,
        };
        [
            media,
            phase,
            plan.pair_starts.get(self.next_pair).copied(),
            self.scenario.next_timeout(),
            self.fabric.poll_timeout(),
            Some(self.next_second),
            plan.chaos_at.filter(|_| !self.chaos_done),
            Some(self.next_setup_check),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::DIRECT_IP;
    use std::io;

    /// A NetIo that sends nothing.
    struct NullIo;
    impl NetIo for NullIo {
        fn open_udp(&mut self, _: SocketAddr) -> io::Result<SockId> {
            Ok(SockId(0))
        }
        fn local_addr(&self, _: SockId) -> io::Result<SocketAddr> {
            Ok("127.0.0.1:1".parse().unwrap())
        }
        fn close(&mut self, _: SockId) {}
        fn send(&mut self, _: SockId, _: SocketAddr, _: &[u8]) {}
    }

    /// Agents that connect as soon as they start and deliver every probe to their partner at
    /// once, except that `drop_every`-th probes are lost.
    struct Loopback {
        drop_every: u64,
        sent: u64,
        shut: bool,
    }

    impl Scenario for Loopback {
        fn start_pair(&mut self, now: Instant, pair: usize, cx: &mut Cx<'_>) {
            for a in [2 * pair, 2 * pair + 1] {
                cx.core.agent_started(a, now);
                cx.core
                    .agent_connected(a, now + Duration::from_millis(5), CandidateType::Relay);
            }
            for a in [2 * pair, 2 * pair + 1] {
                cx.core.start_media(a, now);
            }
        }
        fn on_datagram(&mut self, _: Instant, _: AgentIx, _: SocketAddr, _: &[u8], _: &mut Cx<'_>) {
        }
        fn on_tick(&mut self, _: Instant, _: &mut Cx<'_>) {}
        fn next_timeout(&self) -> Option<Instant> {
            None
        }
        fn send_media(
            &mut self,
            now: Instant,
            agent: AgentIx,
            payload: &[u8],
            cx: &mut Cx<'_>,
        ) -> bool {
            self.sent += 1;
            if self.drop_every == 0 || !self.sent.is_multiple_of(self.drop_every) {
                // Delivered 200 µs later.
                cx.core
                    .media_received(now + Duration::from_micros(200), partner(agent), payload);
            }
            true
        }
        fn shutdown(&mut self, _: Instant, _: &mut Cx<'_>) {
            self.shut = true;
        }
        fn is_shut_down(&self) -> bool {
            self.shut
        }
    }

    fn plan(epoch: Instant, pairs: usize, rate: u32) -> Plan {
        Plan {
            worker: 0,
            clock: Clock::new(epoch),
            pair_starts: (0..pairs).map(|_| epoch).collect(),
            agent_base: 100,
            hold_start: epoch,
            send_end: epoch + Duration::from_secs(2),
            drain: Duration::from_millis(100),
            shutdown_grace: Duration::from_millis(100),
            setup_timeout: Duration::from_secs(1),
            media: Media {
                rate,
                size: 64,
                max_rate: false,
            },
            chaos_at: None,
        }
    }

    /// Drives the worker's tick logic over virtual time in 1 ms steps.
    fn drive(w: &mut Worker<Loopback>, from: Instant, until: Instant) {
        let mut io = NullIo;
        let mut now = from;
        while now < until && w.phase != Phase::Done {
            w.flush_intervals(now);
            w.start_due_pairs(now, &mut io);
            w.check_setup_timeouts(now);
            w.send_due_media(now, &mut io);
            w.advance_phase(now, &mut io);
            now += Duration::from_millis(1);
        }
    }

    #[test]
    fn paced_agents_send_at_the_rate_and_everything_is_measured() {
        let epoch = Instant::now();
        let (tx, rx) = crossbeam_channel::unbounded();
        let scenario = Loopback {
            drop_every: 0,
            sent: 0,
            shut: false,
        };
        let fabric = Fabric::new(DIRECT_IP, 0..10, 0);
        let mut w = Worker::new(scenario, plan(epoch, 3, 50), fabric, tx);
        drive(&mut w, epoch, epoch + Duration::from_secs(5));
        assert_eq!(w.phase, Phase::Done);
        let mut intervals = Vec::new();
        let mut done = None;
        for m in rx.try_iter() {
            match m {
                Report::Interval(i) => intervals.push(i),
                Report::Done(_, s, _) => done = Some(s),
            }
        }
        let s = done.expect("Done sent");
        // 6 agents x 50 pps x 2 s.
        assert_eq!(s.traffic.sent, 600);
        assert_eq!(s.traffic.unique, 600);
        assert_eq!(s.traffic.lost(), 0);
        assert_eq!(s.traffic.window_received, 600);
        // Due and tried: everything, the generator never fell behind.
        assert_eq!(s.traffic.window_asked, 600);
        assert_eq!(s.traffic.window_attempted, 600);
        assert_eq!((s.agents, s.connected, s.failed), (6, 6, 0));
        assert_eq!(s.setup_ms.count(), 6);
        assert_eq!(s.latency_us.quantile(0.5), 200);
        assert_eq!(s.candidates.relay, 6);
        assert!(w.scenario().shut, "shutdown was called");
        let per_second: Vec<u64> = intervals.iter().map(|i| i.sent).collect();
        assert_eq!(&per_second[..2], &[300, 300], "{per_second:?}");
    }

    #[test]
    fn losses_are_counted_and_foreign_data_is_not_media() {
        let epoch = Instant::now();
        let (tx, rx) = crossbeam_channel::unbounded();
        let scenario = Loopback {
            drop_every: 10,
            sent: 0,
            shut: false,
        };
        let fabric = Fabric::new(DIRECT_IP, 0..10, 0);
        let mut w = Worker::new(scenario, plan(epoch, 1, 100), fabric, tx);
        // Foreign data: not a probe, and a probe of the wrong flow.
        w.core.ensure(1);
        w.core.media_received(epoch, 0, b"hello");
        let mut wrong = [0u8; 64];
        Probe {
            flow: 999,
            seq: 0,
            sent_ns: 0,
        }
        .write(&mut wrong);
        w.core.media_received(epoch, 0, &wrong);
        drive(&mut w, epoch, epoch + Duration::from_secs(5));
        let s = rx
            .try_iter()
            .find_map(|m| match m {
                Report::Done(_, s, _) => Some(s),
                Report::Interval(_) => None,
            })
            .unwrap();
        assert_eq!(s.traffic.sent, 400);
        assert_eq!(s.traffic.lost(), 40);
        assert_eq!(s.traffic.foreign, 2);
    }

    #[test]
    fn agents_that_never_connect_fail_once_with_a_reason() {
        let epoch = Instant::now();
        let mut core = Core::new(plan(epoch, 1, 50));
        core.agent_started(0, epoch);
        core.agent_started(1, epoch);
        core.agent_failed(0, "allocate: 401");
        core.agent_failed(0, "again");
        core.agent_connected(0, epoch, CandidateType::Host);
        assert!(core.has_failed(0) && !core.is_connected(0));
        core.agent_connected(1, epoch + Duration::from_millis(30), CandidateType::Srflx);
        core.agent_failed(1, "too late");
        assert!(core.is_connected(1));
        assert_eq!((core.stats.failed, core.stats.connected), (1, 1));
        assert_eq!(core.stats.failures.len(), 1);
        assert_eq!(core.stats.setup_ms.quantile(1.0), 30);
    }
}
