//! What a worker measures: the probe payload, per-flow loss / reorder / duplicate detection,
//! counters and hdrhistograms that merge across workers, and the per-second interval samples
//! the live display and the plot are made of.
//!
//! Everything here is owned by one worker thread and only merged at the end (or, for the
//! per-second [`Interval`], sent to the main thread once a second): nothing on the packet path
//! is shared or locked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

// ---------------------------------------------------------------------------------------------
// The probe: what every media-like packet starts with.

/// `LGv1`: tells a probe from anything else that reaches an agent.
pub const PROBE_MAGIC: [u8; 4] = *b"LGv1";
/// Bytes of the probe header: magic, sender id (u32), sequence number (u64), send time (u64),
/// all big-endian. The rest of a packet (`--size`) is filler.
pub const PROBE_LEN: usize = 24;

/// The header of one media-like packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The sending agent's id: identifies the flow at the receiver.
    pub flow: u32,
    /// Per flow, from 0, one per packet.
    pub seq: u64,
    /// Nanoseconds since the run's [`Clock`] epoch when the packet was sent.
    pub sent_ns: u64,
}

impl Probe {
    /// Writes the header into the front of `buf`; false when `buf` is shorter than
    /// [`PROBE_LEN`].
    pub fn write(&self, buf: &mut [u8]) -> bool {
        let Some(h) = buf.get_mut(..PROBE_LEN) else {
            return false;
        };
        h[..4].copy_from_slice(&PROBE_MAGIC);
        h[4..8].copy_from_slice(&self.flow.to_be_bytes());
        h[8..16].copy_from_slice(&self.seq.to_be_bytes());
        h[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
        true
    }

    /// Reads a header; `None` for anything that is not a probe. Never panics on any input.
    pub fn parse(buf: &[u8]) -> Option<Probe> {
        let h: &[u8; PROBE_LEN] = buf.get(..PROBE_LEN)?.try_into().ok()?;
        if h[..4] != PROBE_MAGIC {
            return None;
        }
        let (flow, rest) = h[4..].split_at(4);
        let (seq, sent) = rest.split_at(8);
        Some(Probe {
            flow: u32::from_be_bytes(flow.try_into().ok()?),
            seq: u64::from_be_bytes(seq.try_into().ok()?),
            sent_ns: u64::from_be_bytes(sent.try_into().ok()?),
        })
    }
}

/// The run's time base, shared by every worker (one process, one monotonic clock), so that a
/// receive time minus a send time is a one-way latency.
#[derive(Copy, Clone, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new(epoch: Instant) -> Self {
        Clock { epoch }
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Nanoseconds since the epoch (0 before it).
    pub fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

// ---------------------------------------------------------------------------------------------
// Per-flow sequence tracking.

/// Sequence numbers remembered behind the highest one seen. A packet older than that is counted
/// as late, not classified as duplicate or reordered. 1024 packets is 20 s of audio at 50 pps
/// and far more reordering than any path shows; 128 bytes per flow.
pub const SEQ_WINDOW: u64 = 1024;
const WORDS: usize = (SEQ_WINDOW / 64) as usize;

/// How one arriving packet relates to the ones before it in its flow.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next one or later (a gap before it may be filled by reordered packets).
    InOrder,
    /// Older than the highest seen, first copy.
    Reordered,
    /// Seen before.
    Duplicate,
    /// Older than the window: cannot tell duplicate from reordered.
    Late,
}

/// Loss, reorder and duplicate detection for one flow in bounded memory: a bitmap of the last
/// [`SEQ_WINDOW`] sequence numbers. A packet that leaves the window unseen is counted in
/// [`SeqWindow::lost`], a running estimate for the live display; the exact loss at the end is
/// sent minus unique received.
#[derive(Clone, Debug)]
pub struct SeqWindow {
    /// One more than the highest sequence number seen (0: none yet).
    next: u64,
    /// Bit `s % SEQ_WINDOW` is set once `s` arrived, for `next - SEQ_WINDOW <= s < next`.
    seen: [u64; WORDS],
    lost: u64,
}

impl Default for SeqWindow {
    fn default() -> Self {
        // Sequence numbers below 0 do not exist: mark them seen so they are never "lost".
        SeqWindow {
            next: 0,
            seen: [u64::MAX; WORDS],
            lost: 0,
        }
    }
}

impl SeqWindow {
    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % SEQ_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Records packet `seq`.
    pub fn record(&mut self, seq: u64) -> Arrival {
        // No real flow gets there (2^64 packets); refusing it keeps `next = seq + 1` exact.
        if seq == u64::MAX {
            return Arrival::Late;
        }
        if seq >= self.next {
            let advance = (seq - self.next).saturating_add(1);
            if advance >= SEQ_WINDOW {
                // Everything in the window that was not seen is gone, and so is every number
                // skipped beyond it.
                let unseen: u64 = self.seen.iter().map(|w| u64::from(w.count_zeros())).sum();
                self.lost = self.lost.saturating_add(unseen + (advance - SEQ_WINDOW));
                self.seen = [0; WORDS];
            } else {
                for s in self.next..=seq {
                    // Slot s held s - SEQ_WINDOW, which now leaves the window.
                    let (w, b) = Self::slot(s);
                    if self.seen[w] & b == 0 {
                        self.lost += 1;
                    }
                    self.seen[w] &= !b;
                }
            }
            let (w, b) = Self::slot(seq);
            self.seen[w] |= b;
            self.next = seq + 1;
            return Arrival::InOrder;
        }
        if self.next - seq > SEQ_WINDOW {
            return Arrival::Late;
        }
        let (w, b) = Self::slot(seq);
        if self.seen[w] & b != 0 {
            Arrival::Duplicate
        } else {
            self.seen[w] |= b;
            Arrival::Reordered
        }
    }

    /// Packets that left the window unseen so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

// ---------------------------------------------------------------------------------------------
// Histograms.

/// An hdrhistogram with fixed bounds; values outside are clamped, never an error.
#[derive(Clone, Debug)]
pub struct Hist {
    h: Histogram<u64>,
}

impl Hist {
    /// One-way latency in microseconds: 1 µs to 60 s, 3 significant digits.
    pub fn latency_us() -> Self {
        Self::new(60_000_000, 3)
    }

    /// A coarser latency histogram (2 significant digits) for per-second samples.
    pub fn latency_us_coarse() -> Self {
        Self::new(60_000_000, 2)
    }

    /// Setup and allocation times in milliseconds: 1 ms to 10 minutes.
    pub fn millis() -> Self {
        Self::new(600_000, 3)
    }

    fn new(high: u64, sigfig: u8) -> Self {
        // Bounds are constants that hdrhistogram accepts (low 1, high >= 2, sigfig <= 5).
        let h = Histogram::new_with_bounds(1, high, sigfig)
            .unwrap_or_else(|_| unreachable!("valid constant histogram bounds"));
        Hist { h }
    }

    pub fn record(&mut self, v: u64) {
        self.h.saturating_record(v.max(1));
    }

    pub fn record_duration_ms(&mut self, d: Duration) {
        self.record(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    }

    /// Adds another histogram's counts (values beyond this one's range are clamped).
    pub fn merge(&mut self, other: &Hist) {
        for v in other.h.iter_recorded() {
            let value = v.value_iterated_to().min(self.h.high());
            let _ = self.h.record_n(value, v.count_at_value());
        }
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// The value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.h.is_empty() {
            0
        } else {
            self.h.value_at_quantile(q)
        }
    }

    pub fn max(&self) -> u64 {
        if self.h.is_empty() {
            0
        } else {
            self.h.max()
        }
    }

    pub fn mean(&self) -> f64 {
        if self.h.is_empty() {
            0.0
        } else {
            self.h.mean()
        }
    }

    pub fn summary(&self) -> Percentiles {
        Percentiles {
            count: self.count(),
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            p999: self.quantile(0.999),
            max: self.max(),
            mean: (self.mean() * 10.0).round() / 10.0,
        }
    }

    pub fn reset(&mut self) {
        self.h.reset();
    }
}

/// A histogram's summary as it appears in the report.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

// ---------------------------------------------------------------------------------------------
// Counters.

/// The ICE candidate type of an agent's selected pair (local side). Turn-only clients count as
/// `Relay`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateType {
    Host,
    Srflx,
    Prflx,
    Relay,
}

/// Selected candidate types, by count.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CandidateCounts {
    pub host: u64,
    pub srflx: u64,
    pub prflx: u64,
    pub relay: u64,
}

impl CandidateCounts {
    pub fn add(&mut self, t: CandidateType) {
        match t {
            CandidateType::Host => self.host += 1,
            CandidateType::Srflx => self.srflx += 1,
            CandidateType::Prflx => self.prflx += 1,
            CandidateType::Relay => self.relay += 1,
        }
    }

    fn merge(&mut self, o: &CandidateCounts) {
        self.host += o.host;
        self.srflx += o.srflx;
        self.prflx += o.prflx;
        self.relay += o.relay;
    }
}

/// Media counters of one worker (or, merged, of the run).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Probes handed to the network (a send the driver could not queue is in `send_failed`
    /// instead).
    pub sent: u64,
    pub bytes_sent: u64,
    /// Probes that could not be sent at all (no channel yet, encoding failure).
    pub send_failed: u64,
    /// Probes received, every copy.
    pub received: u64,
    /// Probes received, first copies only: the run's loss is `sent - unique`.
    pub unique: u64,
    pub bytes_received: u64,
    pub reordered: u64,
    pub duplicated: u64,
    pub late: u64,
    /// Application data that was not a probe of the expected flow.
    pub foreign: u64,
    /// Probes received in the measured (hold) window, and their bytes: throughput is these over
    /// the window's length.
    pub window_received: u64,
    pub window_bytes: u64,
    pub window_sent: u64,
    /// Probes the streaming agents were due to send in the window (rate x time each streamed in
    /// it), and the ones the pacer tried to send there (sent or not): fewer tries than due means
    /// the generator fell behind its schedule.
    pub window_asked: u64,
    pub window_attempted: u64,
}

impl Traffic {
    fn merge(&mut self, o: &Traffic) {
        self.sent += o.sent;
        self.bytes_sent += o.bytes_sent;
        self.send_failed += o.send_failed;
        self.received += o.received;
        self.unique += o.unique;
        self.bytes_received += o.bytes_received;
        self.reordered += o.reordered;
        self.duplicated += o.duplicated;
        self.late += o.late;
        self.foreign += o.foreign;
        self.window_received += o.window_received;
        self.window_bytes += o.window_bytes;
        self.window_sent += o.window_sent;
        self.window_asked += o.window_asked;
        self.window_attempted += o.window_attempted;
    }

    /// Probes sent and never received (first copies), at the end of the run.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.unique)
    }
}

/// Everything one worker measured, merged into the run's totals at the end.
#[derive(Clone, Debug)]
pub struct Stats {
    pub agents: u64,
    pub connected: u64,
    pub failed: u64,
    /// Failures by reason ("allocate: 401", "setup timeout", ...): shown, never hidden.
    pub failures: BTreeMap<String, u64>,
    /// Errors after an agent connected (a failed refresh, say), by reason; the agent still
    /// counts as connected.
    pub errors: BTreeMap<String, u64>,
    /// ICE restarts, per agent (both agents of a pair restart together).
    pub ice_restarts: u64,
    /// Agents whose selected pair stopped working (consent lost, allocation gone).
    pub ice_disconnects: u64,
    /// Pairs that connected again after a restart, and how long after the first agent of the
    /// pair lost its path (ms).
    pub ice_recovered: u64,
    pub recovery_ms: Hist,
    /// Relay hops of the selected paths, summed over connected agents (0: direct, 1: one relayed
    /// candidate, 2: relayed on both ends).
    pub relay_hops: u64,
    pub candidates: CandidateCounts,
    pub traffic: Traffic,
    /// Time from an agent's start to its first usable path (turn-only: Allocate sent to channel
    /// bound), in ms.
    pub setup_ms: Hist,
    /// Allocate request to allocation granted, 401 round trip included, in ms.
    pub allocation_ms: Hist,
    /// One-way latency of probes in µs.
    pub latency_us: Hist,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            agents: 0,
            connected: 0,
            failed: 0,
            failures: BTreeMap::new(),
            errors: BTreeMap::new(),
            ice_restarts: 0,
            ice_disconnects: 0,
            ice_recovered: 0,
            recovery_ms: Hist::millis(),
            relay_hops: 0,
            candidates: CandidateCounts::default(),
            traffic: Traffic::default(),
            setup_ms: Hist::millis(),
            allocation_ms: Hist::millis(),
            latency_us: Hist::latency_us(),
        }
    }
}

impl Stats {
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.failed += 1;
        *self.failures.entry(reason.into()).or_default() += 1;
    }

    pub fn merge(&mut self, o: &Stats) {
        self.agents += o.agents;
        self.connected += o.connected;
        self.failed += o.failed;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.ice_restarts += o.ice_restarts;
        self.ice_disconnects += o.ice_disconnects;
        self.ice_recovered += o.ice_recovered;
        self.recovery_ms.merge(&o.recovery_ms);
        self.relay_hops += o.relay_hops;
        self.candidates.merge(&o.candidates);
        self.traffic.merge(&o.traffic);
        self.setup_ms.merge(&o.setup_ms);
        self.allocation_ms.merge(&o.allocation_ms);
        self.latency_us.merge(&o.latency_us);
    }
}

// ---------------------------------------------------------------------------------------------
// Per-second samples.

/// What one worker saw during one second of the run (second `t` covers
/// `[epoch + t s, epoch + t + 1 s)`). Sent to the main thread once a second.
#[derive(Clone, Debug)]
pub struct Interval {
    pub worker: usize,
    pub second: u32,
    pub sent: u64,
    pub received: u64,
    pub bytes_received: u64,
    /// Packets that left a flow's window unseen during this second (the live loss estimate).
    pub lost: u64,
    /// Totals so far, for the live display.
    pub connected: u64,
    pub failed: u64,
    pub latency_us: Hist,
}

impl Interval {
    pub fn new(worker: usize, second: u32) -> Self {
        Interval {
            worker,
            second,
            sent: 0,
            received: 0,
            bytes_received: 0,
            lost: 0,
            connected: 0,
            failed: 0,
            latency_us: Hist::latency_us_coarse(),
        }
    }
}

/// One second of the run, all workers together: a point of the plot and of the JSON timeline.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the run started.
    pub t: u32,
    /// Probes sent and received per second.
    pub sent_pps: u64,
    pub pps: u64,
    pub mbps: f64,
    /// Live loss estimate: packets that left a flow's reorder window unseen.
    pub lost: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub connected: u64,
}

/// Merges the workers' [`Interval`]s into [`Second`]s. A second is complete once every worker
/// reported it; a worker that skipped one (its thread was busy past the boundary) reports the
/// next one with `second` larger, and the missing ones count as complete with what arrived.
#[derive(Debug)]
pub struct Timeline {
    workers: usize,
    pending: BTreeMap<u32, (usize, Interval, u64, u64)>,
    /// The highest second each worker reported.
    latest: Vec<Option<u32>>,
    done: Vec<Second>,
}

impl Timeline {
    pub fn new(workers: usize) -> Self {
        Timeline {
            workers,
            pending: BTreeMap::new(),
            latest: vec![None; workers],
            done: Vec::new(),
        }
    }

    pub fn add(&mut self, i: Interval) {
        if let Some(l) = self.latest.get_mut(i.worker) {
            *l = Some(l.map_or(i.second, |s| s.max(i.second)));
        }
        let entry = self
            .pending
            .entry(i.second)
            .or_insert_with(|| (0, Interval::new(usize::MAX, i.second), 0, 0));
        entry.0 += 1;
        let acc = &mut entry.1;
        acc.sent += i.sent;
        acc.received += i.received;
        acc.bytes_received += i.bytes_received;
        acc.lost += i.lost;
        acc.latency_us.merge(&i.latency_us);
        entry.2 += i.connected;
        entry.3 += i.failed;
        self.flush(false);
    }

    /// Moves complete seconds to the finished list; with `all`, every pending one.
    fn flush(&mut self, all: bool) {
        // Workers report seconds in order, so second s is complete once every worker reported
        // s or a later one.
        let floor: Option<u32> = self.latest.iter().copied().min().flatten();
        while let Some((&second, entry)) = self.pending.first_key_value() {
            let complete = entry.0 >= self.workers || floor.is_some_and(|f| second <= f);
            if !(all || complete) {
                break;
            }
            let Some((_, (_, acc, connected, _failed))) = self.pending.pop_first() else {
                break;
            };
            self.done.push(Second {
                t: second,
                sent_pps: acc.sent,
                pps: acc.received,
                mbps: acc.bytes_received as f64 * 8.0 / 1e6,
                lost: acc.lost,
                p50_us: acc.latency_us.quantile(0.5),
                p99_us: acc.latency_us.quantile(0.99),
                connected,
            });
        }
    }

    /// The last complete second, for the live display.
    pub fn last(&self) -> Option<&Second> {
        self.done.last()
    }

    /// Every second, complete or not.
    pub fn finish(mut self) -> Vec<Second> {
        self.flush(true);
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trips_and_rejects_garbage() {
        let p = Probe {
            flow: 0xdead_beef,
            seq: u64::MAX - 1,
            sent_ns: 123_456_789,
        };
        let mut buf = [0u8; 160];
        assert!(p.write(&mut buf));
        assert_eq!(&buf[..4], b"LGv1");
        assert_eq!(Probe::parse(&buf), Some(p));
        assert_eq!(Probe::parse(&buf[..PROBE_LEN]), Some(p));
        assert_eq!(Probe::parse(&buf[..PROBE_LEN - 1]), None);
        assert!(!p.write(&mut [0u8; 10]));
        buf[0] = b'X';
        assert_eq!(Probe::parse(&buf), None);
        assert_eq!(Probe::parse(&[]), None);
    }

    #[test]
    fn clock_is_relative_to_the_epoch() {
        let e = Instant::now();
        let c = Clock::new(e);
        assert_eq!(c.ns(e), 0);
        assert_eq!(c.ns(e + Duration::from_micros(5)), 5000);
        assert_eq!(c.epoch(), e);
    }

    fn run(seqs: &[u64]) -> (Vec<Arrival>, SeqWindow) {
        let mut w = SeqWindow::default();
        let a = seqs.iter().map(|&s| w.record(s)).collect();
        (a, w)
    }

    #[test]
    fn in_order_flow_has_no_loss() {
        let seqs: Vec<u64> = (0..10_000).collect();
        let (a, w) = run(&seqs);
        assert!(a.iter().all(|&x| x == Arrival::InOrder));
        assert_eq!(w.lost(), 0);
    }

    #[test]
    fn reorder_duplicate_and_late_are_told_apart() {
        use Arrival::*;
        let (a, w) = run(&[0, 2, 1, 1, 3, 2]);
        assert_eq!(
            a,
            vec![InOrder, InOrder, Reordered, Duplicate, InOrder, Duplicate]
        );
        assert_eq!(w.lost(), 0);
        // A packet more than the window behind is late.
        let (a, _) = run(&[0, SEQ_WINDOW + 5, 3]);
        assert_eq!(a[2], Late);
        // The oldest number still in the window is classified; one older is late.
        let (a, _) = run(&[SEQ_WINDOW - 1, 0]);
        assert_eq!(a[1], Reordered);
        let (a, _) = run(&[0, SEQ_WINDOW - 1, 0]);
        assert_eq!(a[2], Duplicate);
        let (a, _) = run(&[SEQ_WINDOW, 0]);
        assert_eq!(a[1], Late);
    }

    #[test]
    fn loss_is_counted_when_a_gap_leaves_the_window() {
        // 5 and 7 never come; counted once they are SEQ_WINDOW behind.
        let seqs: Vec<u64> = (0..3000).filter(|&s| s != 5 && s != 7).collect();
        let (_, w) = run(&seqs);
        assert_eq!(w.lost(), 2);
        // A gap refilled in time is not a loss.
        let mut seqs: Vec<u64> = (0..3000).filter(|&s| s != 100).collect();
        seqs.insert(600, 100);
        let (_, w) = run(&seqs);
        assert_eq!(w.lost(), 0);
        // Not yet out of the window: not yet counted.
        let (_, w) = run(&[0, 2]);
        assert_eq!(w.lost(), 0);
    }

    #[test]
    fn a_huge_jump_costs_no_time_and_counts_everything_skipped() {
        let mut w = SeqWindow::default();
        w.record(0);
        w.record(1);
        w.record(1_000_000_000);
        // 2 ..= 999_999_999 are missing; the last SEQ_WINDOW - 1 of them are still in the
        // window (they may yet arrive), the rest are counted.
        assert_eq!(w.lost(), 1_000_000_000 - 2 - (SEQ_WINDOW - 1));
        assert_eq!(w.record(u64::MAX - 1), Arrival::InOrder);
        assert_eq!(w.record(u64::MAX - 1), Arrival::Duplicate);
        assert_eq!(w.record(u64::MAX), Arrival::Late);
        // The first packet of a flow arriving late counts everything before it once out of
        // the window, and nothing twice.
        let mut w = SeqWindow::default();
        w.record(10);
        for s in 11..(10 + 2 * SEQ_WINDOW) {
            w.record(s);
        }
        assert_eq!(w.lost(), 10);
    }

    #[test]
    fn histograms_summarise_merge_and_clamp() {
        let mut a = Hist::latency_us();
        for v in 1..=1000 {
            a.record(v);
        }
        let s = a.summary();
        assert_eq!(s.count, 1000);
        assert!((499..=501).contains(&s.p50), "{s:?}");
        assert!((989..=991).contains(&s.p99), "{s:?}");
        assert_eq!(s.max, 1000);
        let mut b = Hist::latency_us_coarse();
        b.record(u64::MAX); // clamped to 60 s
        b.record(0); // clamped to 1
        a.merge(&b);
        assert_eq!(a.count(), 1002);
        assert!(
            a.max() >= 59_000_000 && a.max() <= 61_000_000,
            "{}",
            a.max()
        );
        let empty = Hist::millis();
        assert_eq!(empty.summary(), Percentiles::default());
        let mut ms = Hist::millis();
        ms.record_duration_ms(Duration::from_millis(250));
        assert_eq!(ms.quantile(1.0), 250);
    }

    #[test]
    fn stats_merge_adds_everything() {
        let mut a = Stats {
            agents: 2,
            connected: 1,
            ..Stats::default()
        };
        a.fail("allocate: 401");
        a.candidates.add(CandidateType::Relay);
        a.traffic.sent = 10;
        a.traffic.unique = 9;
        a.latency_us.record(100);
        let mut b = Stats {
            agents: 2,
            connected: 2,
            ..Stats::default()
        };
        b.fail("allocate: 401");
        b.fail("setup timeout");
        b.candidates.add(CandidateType::Host);
        b.traffic.sent = 5;
        b.traffic.unique = 5;
        b.traffic.duplicated = 1;
        b.setup_ms.record(30);
        a.merge(&b);
        assert_eq!((a.agents, a.connected, a.failed), (4, 3, 3));
        assert_eq!(a.failures["allocate: 401"], 2);
        assert_eq!(a.failures["setup timeout"], 1);
        assert_eq!(a.candidates.relay + a.candidates.host, 2);
        assert_eq!(a.traffic.lost(), 1);
        assert_eq!(a.traffic.duplicated, 1);
        assert_eq!(a.latency_us.count(), 1);
        assert_eq!(a.setup_ms.count(), 1);
    }

    fn interval(worker: usize, second: u32, received: u64, lat: u64) -> Interval {
        let mut i = Interval::new(worker, second);
        i.received = received;
        i.sent = received;
        i.bytes_received = received * 100;
        i.connected = 10;
        for _ in 0..received {
            i.latency_us.record(lat);
        }
        i
    }

    #[test]
    fn timeline_waits_for_every_worker_then_merges() {
        let mut t = Timeline::new(2);
        t.add(interval(0, 0, 10, 100));
        assert!(t.last().is_none(), "worker 1 has not reported second 0");
        t.add(interval(1, 0, 30, 300));
        let s = *t.last().unwrap();
        assert_eq!((s.t, s.pps, s.sent_pps, s.connected), (0, 40, 40, 20));
        assert!((s.mbps - 4000.0 * 8.0 / 1e6).abs() < 1e-9);
        assert!((299..=303).contains(&s.p99_us), "{s:?}");
        // Worker 0 skips second 1 and reports 2; worker 1 reports 1 and 2.
        t.add(interval(0, 2, 5, 50));
        t.add(interval(1, 1, 7, 70));
        assert_eq!(t.last().unwrap().t, 1);
        t.add(interval(1, 2, 5, 50));
        assert_eq!(t.last().unwrap().t, 2);
        t.add(interval(0, 3, 1, 10));
        let all = t.finish();
        assert_eq!(
            all.iter().map(|s| s.t).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(all[2].pps, 10);
        assert_eq!(
            all[3].pps, 1,
            "an incomplete last second still shows at the end"
        );
    }
}
