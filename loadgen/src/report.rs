//! The run's report: the JSON document (`--json`, schema in `loadgen/README.md`), the summary
//! table printed at the end, and the SVG plot (`--plot`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::stats::{CandidateCounts, Percentiles, Second, Stats};

/// Bumped when a key changes meaning or goes away (adding keys does not bump it).
pub const SCHEMA_VERSION: u32 = 1;

/// The whole report. Field names are the JSON keys.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    /// `turn-only` or `ice`.
    pub mode: String,
    pub config: RunConfig,
    pub agents: Agents,
    pub ice: Ice,
    pub allocation_ms: Percentiles,
    pub candidates: Candidates,
    pub traffic: TrafficReport,
    pub latency_us: Percentiles,
    pub throughput: Throughput,
    /// Present with `--server-pid`.
    pub server: Option<ServerCpu>,
    pub generator: Generator,
    pub timeline: Vec<Second>,
    /// With `--nat-matrix`: every pair, the path theory predicts and the one it took.
    pub matrix: Option<crate::ice::matrix::Matrix>,
}

/// What was asked for.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub server: String,
    pub realm: String,
    pub agents: u64,
    pub duration_s: f64,
    pub ramp_s: f64,
    pub rate: u32,
    pub size: usize,
    pub max_rate: bool,
    pub threads: usize,
    pub nat: String,
    pub policy: String,
    /// Client-to-server leg: udp, tcp or tls.
    pub transport: String,
    /// `--gso-burst`: probes each agent sends back to back as one UDP GSO send (1: off).
    pub gso_burst: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Agents {
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    /// Failed agents by reason.
    pub failures: BTreeMap<String, u64>,
    /// Errors after agents connected, by reason (those agents still count as connected).
    pub errors: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ice {
    /// Start of an agent to its first usable path, in ms. In turn-only mode: first Allocate
    /// sent to the channel to the partner bound.
    pub setup_ms: Percentiles,
    /// ICE restarts, per agent (both agents of a pair restart together).
    pub restarts: u64,
    /// Agents whose selected pair stopped working (consent lost, allocation gone).
    pub disconnects: u64,
    /// Pairs connected again after a restart.
    pub recovered: u64,
    /// First agent of a pair losing its path to both connected again, in ms.
    pub recovery_ms: Percentiles,
}

#[derive(Clone, Debug, Serialize)]
pub struct Candidates {
    /// The local candidate type of each connected agent's selected pair.
    pub selected: CandidateCounts,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrafficReport {
    pub sent: u64,
    /// Every copy received.
    pub received: u64,
    /// First copies received.
    pub unique: u64,
    /// `sent - unique`.
    pub lost: u64,
    /// `lost / sent` (0 when nothing was sent).
    pub loss_ratio: f64,
    pub reordered: u64,
    pub duplicated: u64,
    /// Received more than the reorder window (1024 packets) behind their flow.
    pub late: u64,
    /// Probes that could not be sent at all (never reached the network).
    pub send_failed: u64,
    /// Application data that was not a probe of the expected flow.
    pub foreign: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// The measured window: from the end of the ramp to the end of sending.
    pub window_s: f64,
    /// Probes received per second in the window.
    pub pps: f64,
    /// Probes sent per second in the window.
    pub sent_pps: f64,
    /// What the streaming agents were due to send per second in the window (0 with
    /// `--max-rate`), and what the pacer tried to send (sent or not: an ICE agent restarting
    /// cannot send). Tries well below the due rate mean loadgen fell behind its own schedule.
    pub asked_pps: f64,
    pub attempted_pps: f64,
    /// Probe payload megabits per second received in the window (UDP/IP headers excluded).
    pub mbps: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerCpu {
    pub pid: u32,
    /// utime + stime of the relay over the measured window.
    pub cpu_seconds: f64,
    /// `cpu_seconds / window_s`: how many cores' worth the relay used.
    pub cpu_cores: f64,
    /// Probes delivered in the window per relay CPU-second.
    pub packets_per_cpu_second: f64,
    /// How many times each delivered probe crossed the relay (turn-only: 2, client to its
    /// allocation, relayed to the partner's allocation, relayed to the partner), rounded; in ice
    /// mode the paths differ, and `relay_hops_mean` is the mean over connected agents.
    pub relay_hops_per_packet: u32,
    pub relay_hops_mean: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Generator {
    /// utime + stime of loadgen over the measured window.
    pub cpu_seconds: f64,
    pub cpu_cores: f64,
    pub threads: usize,
    /// `cpu_cores / threads`: near 1 means loadgen itself was the limit.
    pub utilization: f64,
    pub backend: String,
    pub driver: DriverCounters,
    /// `generator` when loadgen's own threads were saturated (then the figures understate the
    /// server), `not-generator` otherwise.
    pub limit: String,
}

/// The I/O driver's counters summed over loadgen's workers.
#[derive(Copy, Clone, Debug, Default, Serialize)]
pub struct DriverCounters {
    pub send_packets: u64,
    pub recv_packets: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub drops: u64,
    pub enobufs: u64,
    pub truncated: u64,
}

impl DriverCounters {
    pub fn add(&mut self, c: &uturn::driver::Counters) {
        self.send_packets += c.send_packets;
        self.recv_packets += c.recv_packets;
        self.send_errors += c.send_errors;
        self.recv_errors += c.recv_errors;
        self.drops += c.drops;
        self.enobufs += c.enobufs;
        self.truncated += c.truncated;
    }
}

/// Saturation above which loadgen calls itself the limit.
pub const GENERATOR_SATURATED: f64 = 0.9;
/// Below this share of the asked rate, the summary says loadgen fell behind. Its threads may be
/// short of CPU without being busy themselves (other processes on the cores): the rate shows it
/// when utilization does not.
pub const BEHIND: f64 = 0.95;

/// What the run measured besides [`Stats`].
#[derive(Clone, Debug)]
pub struct Measured {
    pub window_s: f64,
    pub generator_cpu_s: f64,
    pub server: Option<(u32, f64)>,
    /// Relay crossings per delivered probe, mean over the agents' selected paths.
    pub relay_hops: f64,
    pub backend: String,
    pub driver: DriverCounters,
    pub timeline: Vec<Second>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Rounds for the report: figures are measurements, not 17-digit truths.
/// Rounded to 3 decimals, for the JSON reports.
pub(crate) fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Report {
    pub fn build(mode: &str, config: RunConfig, stats: &Stats, m: Measured) -> Report {
        let t = &stats.traffic;
        let window = m.window_s;
        let gen_cores = ratio(m.generator_cpu_s, window);
        let threads = config.threads.max(1);
        let utilization = gen_cores / threads as f64;
        let asked_pps = r3(ratio(t.window_asked as f64, window));
        let attempted_pps = r3(ratio(t.window_attempted as f64, window));
        Report {
            schema: SCHEMA_VERSION,
            mode: mode.into(),
            agents: Agents {
                requested: config.agents,
                connected: stats.connected,
                failed: stats.failed,
                failures: stats.failures.clone(),
                errors: stats.errors.clone(),
            },
            config,
            ice: Ice {
                setup_ms: stats.setup_ms.summary(),
                restarts: stats.ice_restarts,
                disconnects: stats.ice_disconnects,
                recovered: stats.ice_recovered,
                recovery_ms: stats.recovery_ms.summary(),
            },
            allocation_ms: stats.allocation_ms.summary(),
            candidates: Candidates {
                selected: stats.candidates,
            },
            traffic: TrafficReport {
                sent: t.sent,
                received: t.received,
                unique: t.unique,
                lost: t.lost(),
                loss_ratio: ratio(t.lost() as f64, t.sent as f64),
                reordered: t.reordered,
                duplicated: t.duplicated,
                late: t.late,
                send_failed: t.send_failed,
                foreign: t.foreign,
                bytes_sent: t.bytes_sent,
                bytes_received: t.bytes_received,
            },
            latency_us: stats.latency_us.summary(),
            throughput: Throughput {
                window_s: r3(window),
                pps: r3(ratio(t.window_received as f64, window)),
                sent_pps: r3(ratio(t.window_sent as f64, window)),
                asked_pps,
                attempted_pps,
                mbps: r3(ratio(t.window_bytes as f64 * 8.0 / 1e6, window)),
            },
            server: m.server.map(|(pid, cpu)| ServerCpu {
                pid,
                cpu_seconds: r3(cpu),
                cpu_cores: r3(ratio(cpu, window)),
                // Direct paths (ICE) do not cross the relay: no figure rather than a silly one.
                packets_per_cpu_second: if m.relay_hops == 0.0 {
                    0.0
                } else {
                    r3(ratio(t.window_received as f64, cpu))
                },
                relay_hops_per_packet: m.relay_hops.round() as u32,
                relay_hops_mean: r3(m.relay_hops),
            }),
            generator: Generator {
                cpu_seconds: r3(m.generator_cpu_s),
                cpu_cores: r3(gen_cores),
                threads,
                utilization: r3(utilization),
                backend: m.backend,
                driver: m.driver,
                limit: if utilization >= GENERATOR_SATURATED {
                    "generator".into()
                } else {
                    "not-generator".into()
                },
            },
            timeline: m.timeline,
            matrix: None,
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain structs of numbers, strings and maps with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The readable summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let mut rate = if c.max_rate {
            "as fast as possible".to_string()
        } else {
            format!("{} pps", c.rate)
        };
        if c.gso_burst > 1 {
            rate += &format!(" in GSO bursts of {}", c.gso_burst);
        }
        let _ = writeln!(
            out,
            "loadgen {}: {} agents against {} for {}s (ramp {}s), {} x {} B per agent, nat {}, {}",
            self.mode, c.agents, c.server, c.duration_s, c.ramp_s, rate, c.size, c.nat, c.transport
        );
        let mut rows: Vec<(&str, String)> = Vec::new();
        let a = &self.agents;
        rows.push((
            "agents",
            format!(
                "requested {}  connected {}  failed {}",
                a.requested, a.connected, a.failed
            ),
        ));
        for (reason, n) in &a.failures {
            rows.push(("  failed", format!("{n} x {reason}")));
        }
        for (reason, n) in &a.errors {
            rows.push(("  error", format!("{n} x {reason}")));
        }
        let p = |s: &Percentiles| {
            format!(
                "p50 {}  p90 {}  p99 {}  max {}  (n {})",
                s.p50, s.p90, s.p99, s.max, s.count
            )
        };
        rows.push(("setup ms", p(&self.ice.setup_ms)));
        rows.push(("allocation ms", p(&self.allocation_ms)));
        if self.ice.restarts + self.ice.disconnects > 0 {
            rows.push((
                "ice restarts",
                format!(
                    "{} agents lost their path, {} agent restarts, {} pairs recovered",
                    self.ice.disconnects, self.ice.restarts, self.ice.recovered
                ),
            ));
            rows.push(("recovery ms", p(&self.ice.recovery_ms)));
        }
        let s = &self.candidates.selected;
        rows.push((
            "selected",
            format!(
                "host {}  srflx {}  prflx {}  relay {}",
                s.host, s.srflx, s.prflx, s.relay
            ),
        ));
        let t = &self.traffic;
        rows.push((
            "packets",
            format!(
                "sent {}  received {}  lost {} ({:.3} %)",
                t.sent,
                t.unique,
                t.lost,
                t.loss_ratio * 100.0
            ),
        ));
        rows.push((
            "",
            format!(
                "reordered {}  duplicated {}  late {}  unsendable {}  foreign {}",
                t.reordered, t.duplicated, t.late, t.send_failed, t.foreign
            ),
        ));
        let l = &self.latency_us;
        rows.push((
            "one-way µs",
            format!(
                "p50 {}  p99 {}  p99.9 {}  max {}  mean {:.1}",
                l.p50, l.p99, l.p999, l.max, l.mean
            ),
        ));
        let th = &self.throughput;
        rows.push((
            "throughput",
            format!(
                "{:.0} pps received ({:.0} sent), {:.2} Mbit/s over {:.1} s",
                th.pps, th.sent_pps, th.mbps, th.window_s
            ),
        ));
        if let Some(sv) = self.server.as_ref().filter(|s| s.relay_hops_mean == 0.0) {
            rows.push((
                "relay cpu",
                format!(
                    "pid {}: {:.2} CPU-s ({:.2} cores); the media went direct, not through the relay",
                    sv.pid, sv.cpu_seconds, sv.cpu_cores
                ),
            ));
        } else if let Some(sv) = &self.server {
            rows.push((
                "relay cpu",
                format!(
                    "pid {}: {:.2} CPU-s ({:.2} cores), {:.0} packets per CPU-second ({})",
                    sv.pid,
                    sv.cpu_seconds,
                    sv.cpu_cores,
                    sv.packets_per_cpu_second,
                    if sv.relay_hops_mean.fract() == 0.0 {
                        format!("{} relay hops each", sv.relay_hops_per_packet)
                    } else {
                        format!("{:.2} relay hops per probe on average", sv.relay_hops_mean)
                    }
                ),
            ));
        }
        let g = &self.generator;
        rows.push((
            "loadgen cpu",
            format!(
                "{:.2} CPU-s ({:.2} cores of {} threads, {:.0} %), backend {}",
                g.cpu_seconds,
                g.cpu_cores,
                g.threads,
                g.utilization * 100.0,
                g.backend
            ),
        ));
        let d = &g.driver;
        if d.drops + d.send_errors + d.enobufs + d.truncated + d.recv_errors > 0 {
            rows.push((
                "loadgen i/o",
                format!(
                    "send drops {}  send errors {}  no-buffer {}  truncated {}  recv errors {}",
                    d.drops, d.send_errors, d.enobufs, d.truncated, d.recv_errors
                ),
            ));
        }
        if th.asked_pps > 0.0 && th.attempted_pps < BEHIND * th.asked_pps {
            rows.push((
                "note",
                format!(
                    "loadgen sent {:.0} of the {:.0} pps due ({:.0} %): it fell behind its schedule (short of CPU?), and latency includes its queues",
                    th.attempted_pps,
                    th.asked_pps,
                    100.0 * th.attempted_pps / th.asked_pps
                ),
            ));
        }
        if g.limit == "generator" {
            rows.push((
                "note",
                "loadgen's threads were saturated: the relay may have had more to give (add --threads or machines)".into(),
            ));
        }
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        out
    }
}

/// Draws packets per second (left axis) and p99 one-way latency (right axis) per second of the
/// run into an SVG file.
pub fn plot(timeline: &[Second], title: &str, path: &Path) -> Result<(), PlotError> {
    use plotters::prelude::*;

    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| PlotError(e.to_string());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let t_max = timeline.iter().map(|s| s.t + 1).max().unwrap_or(1);
    let pps_max = timeline
        .iter()
        .map(|s| s.pps.max(s.sent_pps))
        .max()
        .unwrap_or(0);
    let p99_max = timeline.iter().map(|s| s.p99_us).max().unwrap_or(0);
    // Headroom above the highest point; at least 1 so an empty run still draws axes.
    let y_pps = (pps_max as f64 * 1.1).max(1.0);
    let y_ms = (p99_max as f64 / 1000.0 * 1.1).max(0.1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0f64..f64::from(t_max), 0f64..y_pps)
        .map_err(|e| err(&e))?
        .set_secondary_coord(0f64..f64::from(t_max), 0f64..y_ms);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("packets per second")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .configure_secondary_axes()
        .y_desc("p99 one-way latency (ms)")
        .draw()
        .map_err(|e| err(&e))?;
    let mid = |s: &Second| f64::from(s.t) + 0.5;
    chart
        .draw_series(LineSeries::new(
            timeline.iter().map(|s| (mid(s), s.pps as f64)),
            &BLUE,
        ))
        .map_err(|e| err(&e))?
        .label("received pps")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_secondary_series(LineSeries::new(
            timeline.iter().map(|s| (mid(s), s.p99_us as f64 / 1000.0)),
            &RED,
        ))
        .map_err(|e| err(&e))?
        .label("p99 latency (ms)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Why the plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("plot: {0}")]
pub struct PlotError(String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::CandidateType;

    fn sample() -> Report {
        let mut s = Stats {
            agents: 4,
            connected: 3,
            ..Stats::default()
        };
        s.fail("allocate: 401 Unauthenticated");
        s.candidates.add(CandidateType::Relay);
        s.candidates.add(CandidateType::Relay);
        s.candidates.add(CandidateType::Srflx);
        s.traffic.sent = 1000;
        s.traffic.unique = 990;
        s.traffic.received = 991;
        s.traffic.duplicated = 1;
        s.traffic.window_received = 900;
        s.traffic.window_sent = 910;
        s.traffic.window_bytes = 900 * 160;
        for v in [100, 200, 300] {
            s.latency_us.record(v);
            s.setup_ms.record(v / 10);
            s.allocation_ms.record(v / 20);
        }
        let config = RunConfig {
            server: "127.0.0.1:3478".into(),
            realm: "uturn.local".into(),
            agents: 4,
            duration_s: 3.0,
            ramp_s: 0.0,
            rate: 50,
            size: 160,
            max_rate: false,
            gso_burst: 1,
            threads: 2,
            nat: "none".into(),
            policy: "relay".into(),
            transport: "udp".into(),
        };
        let timeline = vec![
            Second {
                t: 0,
                pps: 400,
                sent_pps: 410,
                p99_us: 300,
                ..Second::default()
            },
            Second {
                t: 1,
                pps: 500,
                sent_pps: 500,
                p99_us: 250,
                ..Second::default()
            },
        ];
        Report::build(
            "turn-only",
            config,
            &s,
            Measured {
                window_s: 3.0,
                generator_cpu_s: 5.7,
                server: Some((42, 1.5)),
                relay_hops: 2.0,
                backend: "portable".into(),
                driver: DriverCounters::default(),
                timeline,
            },
        )
    }

    /// Every key loadgen/README.md promises, as a JSON pointer.
    pub(crate) const DOCUMENTED_KEYS: &[&str] = &[
        "/schema",
        "/mode",
        "/agents/requested",
        "/agents/connected",
        "/agents/failed",
        "/agents/failures",
        "/ice/setup_ms/p50",
        "/ice/setup_ms/p90",
        "/ice/setup_ms/p99",
        "/ice/setup_ms/max",
        "/ice/restarts",
        "/ice/disconnects",
        "/ice/recovered",
        "/ice/recovery_ms/p50",
        "/ice/recovery_ms/max",
        "/allocation_ms/p50",
        "/allocation_ms/p99",
        "/candidates/selected/host",
        "/candidates/selected/srflx",
        "/candidates/selected/prflx",
        "/candidates/selected/relay",
        "/traffic/sent",
        "/traffic/received",
        "/traffic/lost",
        "/traffic/loss_ratio",
        "/traffic/reordered",
        "/traffic/duplicated",
        "/latency_us/p50",
        "/latency_us/p99",
        "/latency_us/p999",
        "/throughput/pps",
        "/throughput/mbps",
        "/throughput/window_s",
        "/throughput/asked_pps",
        "/throughput/attempted_pps",
        "/server/cpu_seconds",
        "/server/packets_per_cpu_second",
        "/generator/cpu_seconds",
        "/generator/utilization",
        "/generator/limit",
        "/timeline/0/t",
        "/timeline/0/pps",
        "/timeline/0/p99_us",
    ];

    #[test]
    fn json_has_every_documented_key() {
        let r = sample();
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for k in DOCUMENTED_KEYS {
            assert!(v.pointer(k).is_some(), "missing {k}");
        }
        assert_eq!(v.pointer("/traffic/lost").unwrap(), 10);
        assert_eq!(v.pointer("/traffic/loss_ratio").unwrap(), 0.01);
        assert_eq!(v.pointer("/throughput/pps").unwrap(), 300.0);
        assert_eq!(v.pointer("/server/packets_per_cpu_second").unwrap(), 600.0);
        assert_eq!(v.pointer("/server/cpu_cores").unwrap(), 0.5);
        assert_eq!(v.pointer("/generator/utilization").unwrap(), 0.95);
        assert_eq!(v.pointer("/generator/limit").unwrap(), "generator");
        assert_eq!(v.pointer("/candidates/selected/relay").unwrap(), 2);
        assert_eq!(
            v.pointer("/agents/failures/allocate: 401 Unauthenticated")
                .unwrap(),
            1
        );
    }

    #[test]
    fn readme_documents_every_key() {
        let readme = include_str!("../README.md");
        for k in DOCUMENTED_KEYS {
            // "/ice/setup_ms/p50" is documented as `ice.setup_ms.p50`.
            let dotted = k
                .trim_start_matches('/')
                .replace("/0/", "[].")
                .replace('/', ".");
            assert!(readme.contains(&dotted), "README lacks `{dotted}`");
        }
    }

    #[test]
    fn without_server_pid_there_is_no_server_section() {
        let mut r = sample();
        r.server = None;
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(v.pointer("/server").unwrap().is_null());
        assert!(v.pointer("/matrix").unwrap().is_null());
    }

    #[test]
    fn summary_shows_failures_and_the_limit() {
        let s = sample().summary();
        assert!(s.contains("requested 4  connected 3  failed 1"), "{s}");
        assert!(s.contains("1 x allocate: 401 Unauthenticated"), "{s}");
        assert!(s.contains("lost 10 (1.000 %)"), "{s}");
        assert!(s.contains("p99.9"), "{s}");
        assert!(s.contains("packets per CPU-second"), "{s}");
        assert!(s.contains("saturated"), "{s}");
        // Nothing was due (the sample has no window_asked): no note.
        assert!(!s.contains("fell behind"), "{s}");
        let mut r = sample();
        r.throughput.asked_pps = 1000.0;
        r.throughput.attempted_pps = 300.0;
        let s = r.summary();
        assert!(
            s.contains("loadgen sent 300 of the 1000 pps due (30 %)"),
            "{s}"
        );
    }

    #[test]
    fn plot_writes_an_svg_with_both_series() {
        let dir = std::env::temp_dir().join(format!("loadgen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.svg");
        let r = sample();
        plot(&r.timeline, "test run", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("received pps"));
        assert!(svg.contains("p99 latency (ms)"));
        assert!(svg.contains("<polyline"), "series drawn");
        // An empty run still draws.
        plot(&[], "empty", &path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
