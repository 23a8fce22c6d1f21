//! Many independent TURN clients, each on a real socket of its own, for the allocation
//! benchmarks: `--mode churn` (allocate, deallocate, again) and `--mode idle` (allocate, then
//! hold). No media, no pairs, no NAT emulation: these modes measure the server's control path and
//! the memory an allocation costs, not relaying.
//!
//! One [`ClientsWorker`] per loadgen thread is the driver's [`Handler`]. Each client is a
//! [`TurnClient`] state machine; the worker feeds it datagrams and timers and sends what it
//! queues. A churn cycle starts from a *fresh* client (no nonce yet), as a new WebRTC session
//! does: every allocation costs the server an unauthenticated Allocate answered 401 and an
//! authenticated one (RFC 8656 section 7.2, RFC 8489 section 9.2), then a Refresh with lifetime
//! 0 to delete it (RFC 8656 section 7.3). Each cycle also takes a new socket (a new session has a
//! new 5-tuple), so the server sees socket churn as well.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use uturn::driver::{
    self, Backend, Control, Counters, DriverConfig, Handler, Io, RecvPacket, SockId,
};
use uturn_proto::client::{ClientConfig, Event, RelayFamily, TurnClient};
use uturn_proto::stun::Method;

use crate::run::{core_for, RunError};
use crate::stats::{Hist, Percentiles};
use crate::turn_only::failure_text;

/// What a client does once its allocation is granted.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Delete it at once and allocate again with a fresh client, until the plan's end.
    Churn,
    /// Keep it (the client refreshes it before it expires) until the plan's end.
    Hold,
}

/// A failed client waits this long before a churn cycle starts over, so that a server refusing
/// everything is not flooded by the retries.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How often the worker tells the main thread how many allocations it holds.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// One worker's share of the run. All instants are on the same monotonic clock as the main
/// thread's.
#[derive(Clone, Debug)]
pub struct ClientsPlan {
    pub worker: usize,
    /// Clients this worker runs.
    pub clients: usize,
    /// Local addresses the clients' sockets bind (port 0), round-robin: more than one spreads
    /// tens of thousands of sockets over several loopback addresses, each with a whole ephemeral
    /// port range.
    pub bind_ips: Vec<IpAddr>,
    /// Most allocations outstanding (requested, not yet answered) at once. Churn starts every
    /// client at once and keeps them cycling; hold starts the next client when one is answered.
    pub concurrency: usize,
    pub start: Instant,
    /// Allocations completed inside this window are counted for the rate.
    pub window_start: Instant,
    pub window_end: Instant,
    /// No new allocation starts after this; held allocations are deleted. The main thread may
    /// end the run earlier through `stop`.
    pub stop_at: Instant,
    pub stop: Arc<AtomicBool>,
    /// The longest the deletions at the end may take.
    pub shutdown_grace: Duration,
    pub behaviour: Behaviour,
    pub client: ClientConfig,
}

/// What one worker measured.
#[derive(Clone, Debug)]
pub struct ClientStats {
    /// Allocations granted (the whole run).
    pub allocations: u64,
    /// Allocations granted inside the window.
    pub window_allocations: u64,
    /// Allocations deleted (Refresh lifetime 0 answered).
    pub deallocations: u64,
    /// Allocate sent (the unauthenticated one) to allocation granted, in microseconds.
    pub allocation_us: Hist,
    /// Failed requests by reason, while the run was on.
    pub failures: BTreeMap<String, u64>,
    /// Deletions at the end that failed, by reason (the allocations expire on the server).
    pub teardown: BTreeMap<String, u64>,
    /// Clients whose socket could not be opened.
    pub socket_errors: u64,
}

impl Default for ClientStats {
    fn default() -> Self {
        ClientStats {
            allocations: 0,
            window_allocations: 0,
            deallocations: 0,
            allocation_us: Hist::latency_us(),
            failures: BTreeMap::new(),
            teardown: BTreeMap::new(),
            socket_errors: 0,
        }
    }
}

impl ClientStats {
    pub fn merge(&mut self, o: &ClientStats) {
        self.allocations += o.allocations;
        self.window_allocations += o.window_allocations;
        self.deallocations += o.deallocations;
        self.allocation_us.merge(&o.allocation_us);
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.teardown {
            *self.teardown.entry(k.clone()).or_default() += v;
        }
        self.socket_errors += o.socket_errors;
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum::<u64>() + self.socket_errors
    }

    pub fn allocation_us(&self) -> Percentiles {
        self.allocation_us.summary()
    }

    fn fail(&mut self, reason: String) {
        *self.failures.entry(reason).or_default() += 1;
    }
}

/// Messages from a worker to the main thread.
#[derive(Debug)]
pub enum Progress {
    /// Allocations this worker holds now, and clients still to start or waiting for an answer.
    Held {
        worker: usize,
        held: u64,
        pending: u64,
    },
    /// The worker is done; the main thread stops its driver.
    Done(usize, Box<ClientStats>),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    /// Not started yet.
    Waiting,
    Allocating {
        since: Instant,
    },
    Held,
    Deallocating,
    /// Failed; a churn client starts over at this instant.
    Backoff {
        until: Instant,
    },
    Closed,
}

#[derive(Debug)]
struct Client {
    sock: SockId,
    turn: TurnClient,
    state: State,
    /// The timer queued for this client in the heap, if any.
    armed: Option<Instant>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Deleting allocations, until this instant at the latest.
    ShuttingDown(Instant),
    Done,
}

/// See the [module documentation](self).
#[derive(Debug)]
pub struct ClientsWorker {
    plan: ClientsPlan,
    clients: Vec<Option<Client>>,
    /// Client index by socket id.
    by_sock: Vec<Option<usize>>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    next_start: usize,
    outstanding: usize,
    /// Deletions (Refresh lifetime 0) outstanding.
    deleting: usize,
    /// Held allocations still to delete at the end, at most `concurrency` at a time.
    to_delete: Vec<usize>,
    held: u64,
    stats: ClientStats,
    phase: Phase,
    progress: Sender<Progress>,
    next_progress: Instant,
    seed: u64,
    buf: Box<[u8; 2048]>,
    /// Churn cycles started by this worker: each takes the next address of [`churn_ip`].
    cycles: u64,
}

impl ClientsWorker {
    pub fn new(plan: ClientsPlan, progress: Sender<Progress>, seed: u64) -> Self {
        let next_progress = plan.start;
        ClientsWorker {
            clients: Vec::with_capacity(plan.clients),
            by_sock: Vec::new(),
            timers: BinaryHeap::new(),
            next_start: 0,
            outstanding: 0,
            deleting: 0,
            to_delete: Vec::new(),
            held: 0,
            stats: ClientStats::default(),
            phase: Phase::Running,
            progress,
            next_progress,
            seed,
            buf: Box::new([0; 2048]),
            plan,
            cycles: 0,
        }
    }

    /// A client that has no nonce yet: its first Allocate is answered 401.
    fn fresh_turn(&mut self) -> Option<TurnClient> {
        let mut seed = [0u8; 32];
        // Distinct per client and cycle; the transaction ids only need to be unpredictable
        // enough not to collide.
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        seed[8..16].copy_from_slice(&(self.plan.worker as u64).to_le_bytes());
        seed[16..24].copy_from_slice(&rand::random::<u64>().to_le_bytes());
        match TurnClient::new(self.plan.client.clone(), seed) {
            Ok(t) => Some(t),
            Err(e) => {
                self.stats.fail(format!("client: {e}"));
                None
            }
        }
    }

    /// Opens the next client's socket and sends its first Allocate.
    fn start_next<I: Io>(&mut self, now: Instant, io: &mut I) {
        let ix = self.next_start;
        self.next_start += 1;
        let ip = self.plan.bind_ips[ix % self.plan.bind_ips.len()];
        let sock = match io.open_udp(SocketAddr::new(ip, 0)) {
            Ok(s) => s,
            Err(e) => {
                self.stats.socket_errors += 1;
                tracing::debug!(error = %e, "client socket");
                self.clients.push(None);
                return;
            }
        };
        let Some(turn) = self.fresh_turn() else {
            io.close(sock);
            self.clients.push(None);
            return;
        };
        let i = sock.0 as usize;
        if self.by_sock.len() <= i {
            self.by_sock.resize(i + 1, None);
        }
        self.by_sock[i] = Some(ix);
        self.clients.push(Some(Client {
            sock,
            turn,
            state: State::Waiting,
            armed: None,
        }));
        self.allocate(now, ix, io);
    }

    fn allocate<I: Io>(&mut self, now: Instant, ix: usize, io: &mut I) {
        let Some(Some(c)) = self.clients.get_mut(ix) else {
            return;
        };
        match c.turn.allocate(now, RelayFamily::Ipv4) {
            Ok(()) => {
                c.state = State::Allocating { since: now };
                self.outstanding += 1;
            }
            Err(e) => {
                c.state = State::Closed;
                self.stats.fail(format!("allocate: {e}"));
            }
        }
        self.service(now, ix, io);
    }

    /// Sends what the client queued, handles its events, re-arms its timer.
    fn service<I: Io>(&mut self, now: Instant, ix: usize, io: &mut I) {
        let mut events = Vec::new();
        if let Some(Some(c)) = self.clients.get_mut(ix) {
            while let Some(t) = c.turn.poll_transmit(&mut self.buf[..]) {
                io.send(c.sock, t.to, &self.buf[..t.len]);
            }
            while let Some(e) = c.turn.poll_event() {
                events.push(e);
            }
        }
        for e in events {
            self.on_event(now, ix, e, io);
        }
        if let Some(Some(c)) = self.clients.get_mut(ix) {
            while let Some(t) = c.turn.poll_transmit(&mut self.buf[..]) {
                io.send(c.sock, t.to, &self.buf[..t.len]);
            }
            let due = match c.state {
                State::Backoff { until } => Some(until),
                _ => c.turn.poll_timeout(),
            };
            if let Some(t) = due {
                if c.armed.is_none_or(|a| t < a) {
                    c.armed = Some(t);
                    self.timers.push(Reverse((t, ix)));
                }
            }
        }
    }

    fn on_event<I: Io>(&mut self, now: Instant, ix: usize, event: Event, io: &mut I) {
        let running = self.running(now);
        let Some(Some(c)) = self.clients.get_mut(ix) else {
            return;
        };
        match event {
            Event::Allocated(_) => {
                if let State::Allocating { since } = c.state {
                    self.outstanding -= 1;
                    self.stats.allocations += 1;
                    let us = now.saturating_duration_since(since).as_micros();
                    self.stats
                        .allocation_us
                        .record(u64::try_from(us).unwrap_or(u64::MAX));
                    if (self.plan.window_start..self.plan.window_end).contains(&now) {
                        self.stats.window_allocations += 1;
                    }
                }
                let keep = self.plan.behaviour == Behaviour::Hold && running;
                if keep {
                    c.state = State::Held;
                    self.held += 1;
                } else if Self::deallocate(c, now, &mut self.stats) {
                    self.deleting += 1;
                }
            }
            Event::Deallocated => {
                self.stats.deallocations += 1;
                if c.state == State::Deallocating {
                    self.deleting -= 1;
                }
                c.state = State::Closed;
                if self.plan.behaviour == Behaviour::Churn && running {
                    self.restart(now, ix, io);
                }
            }
            Event::Failed { method, failure } => {
                let reason = format!("{}: {}", method_label(method), failure_text(failure));
                if running {
                    self.stats.fail(reason);
                } else {
                    *self.stats.teardown.entry(reason).or_default() += 1;
                }
                match c.state {
                    State::Allocating { .. } => {
                        self.outstanding -= 1;
                        c.state = if self.plan.behaviour == Behaviour::Churn {
                            State::Backoff {
                                until: now + RETRY_BACKOFF,
                            }
                        } else {
                            State::Closed
                        };
                    }
                    // A deletion that failed: the allocation expires on the server anyway.
                    State::Deallocating => {
                        self.deleting -= 1;
                        c.state = if self.plan.behaviour == Behaviour::Churn {
                            State::Backoff {
                                until: now + RETRY_BACKOFF,
                            }
                        } else {
                            State::Closed
                        };
                    }
                    // A failed refresh of a held allocation: it is lost.
                    State::Held => {
                        self.held -= 1;
                        c.state = State::Closed;
                    }
                    State::Waiting | State::Backoff { .. } | State::Closed => {}
                }
            }
            Event::BindingSuccess { .. }
            | Event::Refreshed { .. }
            | Event::PermissionCreated { .. }
            | Event::ChannelBound { .. }
            | Event::Connected { .. }
            | Event::ConnectionAttempt { .. }
            | Event::ConnectionBound { .. } => {}
        }
    }

    /// Sends Refresh(0); true when it went out (the caller counts it in `deleting`).
    fn deallocate(c: &mut Client, now: Instant, stats: &mut ClientStats) -> bool {
        match c.turn.deallocate(now) {
            Ok(()) => {
                c.state = State::Deallocating;
                true
            }
            Err(e) => {
                stats.fail(format!("deallocate: {e}"));
                c.state = State::Closed;
                false
            }
        }
    }

    /// A new churn cycle from a fresh client on a fresh socket: a new session has a new
    /// 5-tuple, and servers may keep a deleted allocation's 5-tuple for a while (coturn answers
    /// 437 to an Allocate from it).
    fn restart<I: Io>(&mut self, now: Instant, ix: usize, io: &mut I) {
        let Some(turn) = self.fresh_turn() else {
            return;
        };
        // Not the client's own address again: the kernel soon hands out a just-closed port
        // once more, and an Allocate from a 5-tuple the server still remembers gets 437.
        let ip = churn_ip(self.plan.worker, self.cycles);
        self.cycles += 1;
        let sock = match io.open_udp(SocketAddr::new(ip, 0)) {
            Ok(s) => s,
            Err(e) => {
                self.stats.socket_errors += 1;
                tracing::debug!(error = %e, "client socket");
                return;
            }
        };
        let Some(Some(c)) = self.clients.get_mut(ix) else {
            io.close(sock);
            return;
        };
        let old = std::mem::replace(&mut c.sock, sock);
        c.turn = turn;
        c.armed = None;
        io.close(old);
        if let Some(slot) = self.by_sock.get_mut(old.0 as usize) {
            *slot = None;
        }
        let i = sock.0 as usize;
        if self.by_sock.len() <= i {
            self.by_sock.resize(i + 1, None);
        }
        self.by_sock[i] = Some(ix);
        self.allocate(now, ix, io);
    }

    fn fire_timers<I: Io>(&mut self, now: Instant, io: &mut I) {
        while let Some(&Reverse((at, ix))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(Some(c)) = self.clients.get_mut(ix) else {
                continue;
            };
            if c.armed != Some(at) {
                continue; // superseded
            }
            c.armed = None;
            if let State::Backoff { until } = c.state {
                if until <= now {
                    c.state = State::Closed;
                    if self.running(now) {
                        self.restart(now, ix, io);
                    }
                    continue;
                }
            }
            if c.turn.poll_timeout().is_some_and(|t| t <= now) {
                c.turn.handle_timeout(now);
            }
            self.service(now, ix, io);
        }
    }

    /// The end: held allocations are queued for deletion, waiting clients closed.
    fn shutdown(&mut self) {
        for ix in 0..self.clients.len() {
            let Some(Some(c)) = self.clients.get_mut(ix) else {
                continue;
            };
            match c.state {
                State::Held => self.to_delete.push(ix),
                State::Backoff { .. } | State::Waiting => c.state = State::Closed,
                // An Allocate in flight is deleted when it is granted (the phase says so).
                State::Allocating { .. } | State::Deallocating | State::Closed => {}
            }
        }
    }

    /// Deletes queued allocations while fewer than `concurrency` deletions are outstanding: a
    /// burst of tens of thousands would overflow the server's receive buffer and time out.
    fn delete_some<I: Io>(&mut self, now: Instant, io: &mut I) {
        while self.deleting < self.plan.concurrency {
            let Some(ix) = self.to_delete.pop() else {
                return;
            };
            let Some(Some(c)) = self.clients.get_mut(ix) else {
                continue;
            };
            if c.state != State::Held {
                continue;
            }
            self.held -= 1;
            if Self::deallocate(c, now, &mut self.stats) {
                self.deleting += 1;
            }
            self.service(now, ix, io);
        }
    }

    /// Still starting allocations: neither the deadline nor the main thread said stop.
    fn running(&self, now: Instant) -> bool {
        self.phase == Phase::Running
            && now < self.plan.stop_at
            && !self.plan.stop.load(Ordering::Relaxed)
    }

    fn busy(&self) -> bool {
        self.outstanding > 0 || self.deleting > 0 || !self.to_delete.is_empty()
    }

    fn report_progress(&mut self, now: Instant) {
        if now < self.next_progress {
            return;
        }
        self.next_progress = now + PROGRESS_EVERY;
        let pending = (self.plan.clients - self.next_start + self.outstanding) as u64;
        let _ = self.progress.try_send(Progress::Held {
            worker: self.plan.worker,
            held: self.held,
            pending,
        });
    }
}

impl Handler for ClientsWorker {
    fn on_recv<I: Io>(
        &mut self,
        now: Instant,
        sock: SockId,
        from: SocketAddr,
        pkt: I::Packet,
        io: &mut I,
    ) {
        let Some(&Some(ix)) = self.by_sock.get(sock.0 as usize) else {
            return;
        };
        let Some(Some(c)) = self.clients.get_mut(ix) else {
            return;
        };
        // Responses only: nothing in these modes sends data, so anything else is ignored.
        let _ = c.turn.handle_input(now, from, pkt.payload());
        drop(pkt);
        self.service(now, ix, io);
    }

    fn on_tick<I: Io>(&mut self, now: Instant, io: &mut I) {
        if self.phase == Phase::Done {
            return;
        }
        if now < self.plan.start {
            return;
        }
        let stopping = now >= self.plan.stop_at || self.plan.stop.load(Ordering::Relaxed);
        if self.phase == Phase::Running && !stopping {
            while self.next_start < self.plan.clients && self.outstanding < self.plan.concurrency {
                self.start_next(now, io);
            }
        }
        self.fire_timers(now, io);
        if self.phase == Phase::Running && stopping {
            self.phase = Phase::ShuttingDown(now + self.plan.shutdown_grace);
            self.shutdown();
        }
        if let Phase::ShuttingDown(until) = self.phase {
            self.delete_some(now, io);
            if !self.busy() || now >= until {
                for c in self.clients.iter().flatten() {
                    io.close(c.sock);
                }
                let stats = std::mem::take(&mut self.stats);
                let _ = self
                    .progress
                    .send(Progress::Done(self.plan.worker, Box::new(stats)));
                self.phase = Phase::Done;
                return;
            }
        }
        self.report_progress(now);
    }

    fn next_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done => None,
            _ if Instant::now() < self.plan.start => Some(self.plan.start),
            _ => {
                let timer = self.timers.peek().map(|Reverse((t, _))| *t);
                let edge = if self.phase == Phase::Running {
                    self.plan.stop_at
                } else {
                    self.next_progress
                };
                Some(timer.map_or(edge, |t| t.min(edge)).min(self.next_progress))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running the workers.

/// One worker thread: its control channel and its handle.
type WorkerThread = (Sender<Control>, JoinHandle<Result<Counters, String>>);

/// Worker threads running [`ClientsWorker`]s, and the channel they report on.
#[derive(Debug)]
pub struct Workers {
    threads: Vec<WorkerThread>,
    rx: Receiver<Progress>,
    held: Vec<(u64, u64)>,
    done: Vec<Option<Box<ClientStats>>>,
}

impl Workers {
    /// Starts one pinned thread per plan (pinned like the turn-only workers, from the last core
    /// down).
    pub fn spawn(plans: Vec<ClientsPlan>, backend: Backend) -> Result<Workers, RunError> {
        let n = plans.len();
        let (tx, rx) = bounded::<Progress>(n * 64);
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let mut threads = Vec::with_capacity(n);
        for plan in plans {
            let w = plan.worker;
            let (control, control_rx) = bounded::<Control>(4);
            let tx = tx.clone();
            let seed = rand::random();
            let thread = std::thread::Builder::new()
                .name(format!("loadgen-{w}"))
                .spawn(move || {
                    let _ = driver::pin_current_thread(core_for(w, cores));
                    let mut worker = ClientsWorker::new(plan, tx, seed);
                    let cfg = DriverConfig {
                        recv_buffers: 8192,
                        send_buffers: 4096,
                        // The same traffic whatever the server does (see run.rs).
                        gso: false,
                        gro: false,
                        ..DriverConfig::default()
                    };
                    driver::run_worker(backend, &mut worker, Vec::new(), &control_rx, &cfg)
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| RunError::Spawn(w, e))?;
            threads.push((control, thread));
        }
        Ok(Workers {
            threads,
            rx,
            held: vec![(0, 0); n],
            done: (0..n).map(|_| None).collect(),
        })
    }

    fn absorb(&mut self, p: Progress) {
        match p {
            Progress::Held {
                worker,
                held,
                pending,
            } => {
                if let Some(h) = self.held.get_mut(worker) {
                    *h = (held, pending);
                }
            }
            Progress::Done(w, stats) => {
                if let Some(d) = self.done.get_mut(w) {
                    *d = Some(stats);
                }
            }
        }
    }

    /// Waits for progress until `until`; returns (allocations held, clients not yet answered)
    /// over all workers as last reported.
    pub fn poll(&mut self, until: Instant) -> (u64, u64) {
        let wait = until.saturating_duration_since(Instant::now());
        if let Ok(p) = self.rx.recv_timeout(wait) {
            self.absorb(p);
            while let Ok(p) = self.rx.try_recv() {
                self.absorb(p);
            }
        }
        self.held
            .iter()
            .fold((0, 0), |(h, p), &(wh, wp)| (h + wh, p + wp))
    }

    /// Whether a worker thread ended early (its driver failed).
    pub fn any_exited(&self) -> bool {
        self.threads
            .iter()
            .enumerate()
            .any(|(i, (_, t))| self.done[i].is_none() && t.is_finished())
    }

    /// Waits for every worker's final statistics until `deadline`, stops the drivers and joins
    /// the threads.
    pub fn finish(mut self, deadline: Instant) -> Result<ClientStats, RunError> {
        while self.done.iter().any(Option::is_none)
            && Instant::now() < deadline
            && !self.any_exited()
        {
            let _ = self.poll(deadline.min(Instant::now() + Duration::from_millis(100)));
        }
        while let Ok(p) = self.rx.try_recv() {
            self.absorb(p);
        }
        for (control, _) in &self.threads {
            let _ = control.send(Control::Stop);
        }
        let mut error = None;
        for (i, (_, t)) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => error = Some(RunError::Worker(i, e)),
                Err(_) => error = Some(RunError::Worker(i, "panicked".into())),
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        let mut total = ClientStats::default();
        for (i, d) in self.done.iter().enumerate() {
            match d {
                Some(s) => total.merge(s),
                None => {
                    return Err(RunError::Worker(
                        i,
                        "did not report its results in time".into(),
                    ))
                }
            }
        }
        Ok(total)
    }
}

/// Splits `total` clients over `threads` workers as evenly as possible.
pub fn split(total: usize, threads: usize) -> Vec<usize> {
    let threads = threads.max(1);
    (0..threads)
        .map(|w| total / threads + usize::from(w < total % threads))
        .collect()
}

/// The address of churn cycle `n` of `worker`: a loopback address of its own from 127.1.0.1
/// on, so that no 5-tuple comes back for millions of cycles (ports alone would: the kernel
/// reuses a just-freed ephemeral port soon). 127/8 is all loopback on Linux.
pub fn churn_ip(worker: usize, n: u64) -> IpAddr {
    // 100 x 250 x 250 addresses, the second octet split between up to 4 workers' ranges.
    let per = 62_500u64 * 25;
    let n = (worker as u64 % 4) * per + n % per;
    IpAddr::V4(std::net::Ipv4Addr::new(
        127,
        1 + (n / 62_500) as u8,
        ((n / 250) % 250) as u8,
        1 + (n % 250) as u8,
    ))
}

/// The loopback addresses clients bind: `127.0.1.1`, `127.0.1.2`, ... one per 20,000 clients.
/// Not 127.0.0.1, whose ports the relay on this machine hands out; each address has a whole
/// ephemeral port range of its own.
pub fn client_ips(clients: usize) -> Vec<IpAddr> {
    let n = clients.div_ceil(20_000).clamp(1, 250);
    (1..=n as u8)
        .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 1, i)))
        .collect()
}

/// Resident memory of a process (`VmRSS` in `/proc/PID/status`), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    proc_kib(&text, "VmRSS:")
}

/// Kernel slab memory of the whole machine (`Slab` in `/proc/meminfo`), in KiB: socket
/// structures live there. System-wide, so other processes' activity is in it too.
pub fn slab_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    proc_kib(&text, "Slab:")
}

/// The value of a `Key:   1234 kB` line.
pub fn proc_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn method_label(m: Method) -> &'static str {
    match m {
        Method::ALLOCATE => "allocate",
        Method::REFRESH => "refresh",
        _ => "request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_split_evenly_and_spread_over_addresses() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(5, 0), vec![5]);
        assert_eq!(client_ips(100).len(), 1);
        assert_eq!(client_ips(50_000).len(), 3);
        assert!(client_ips(50_000).iter().all(|ip| ip.is_loopback()));
        assert!(!client_ips(1).contains(&IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn churn_cycles_never_reuse_an_address_soon() {
        let mut seen = std::collections::HashSet::new();
        for w in 0..2 {
            for n in 0..200_000 {
                let ip = churn_ip(w, n);
                assert!(ip.is_loopback());
                let IpAddr::V4(v4) = ip else { panic!("IPv4") };
                assert_ne!(
                    v4.octets()[1],
                    0,
                    "never 127.0.x.x (relay and idle clients)"
                );
                assert!(seen.insert(ip), "{ip} again after {n} cycles of worker {w}");
            }
        }
    }

    #[test]
    fn reads_kib_lines() {
        let status = "Name:\tuturn\nVmPeak:\t  9000 kB\nVmRSS:\t    4242 kB\n";
        assert_eq!(proc_kib(status, "VmRSS:"), Some(4242));
        assert_eq!(proc_kib(status, "Slab:"), None);
        assert_eq!(proc_kib("VmRSS: x kB", "VmRSS:"), None);
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
        assert!(rss_kib(u32::MAX).is_none());
    }

    #[test]
    fn stats_merge_adds_everything() {
        let mut a = ClientStats {
            allocations: 3,
            window_allocations: 2,
            ..ClientStats::default()
        };
        a.allocation_us.record(100);
        a.fail("allocate: timeout".into());
        let mut b = ClientStats {
            allocations: 4,
            deallocations: 4,
            socket_errors: 1,
            ..ClientStats::default()
        };
        b.allocation_us.record(300);
        b.fail("allocate: timeout".into());
        a.merge(&b);
        assert_eq!((a.allocations, a.window_allocations), (7, 2));
        assert_eq!(a.deallocations, 4);
        assert_eq!(a.failures["allocate: timeout"], 2);
        assert_eq!(a.failed(), 3);
        assert_eq!(a.allocation_us().count, 2);
        assert!(a.allocation_us().max >= 300);
    }
}
