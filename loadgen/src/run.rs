//! A whole run: preflight, workers on their cores, the live display, the report.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use indicatif::{ProgressBar, ProgressStyle};
use uturn::driver::{self, Backend, Chosen, Control, Counters, DriverConfig, DriverError};

use crate::cli::{self, Config, Mode};
use crate::cpu::{CpuWindow, Process};
use crate::fabric::{Fabric, FabricCounters};
use crate::ice::matrix::{self, Matrix};
use crate::ice::{IceConfig, IceScenario, Placement};
use crate::nat::network::MAX_LANS;
use crate::preflight::{self, Preflight, PreflightError};
use crate::report::{DriverCounters, Measured, Report, RunConfig};
use crate::stats::{Clock, Stats, Timeline};
use crate::stream_leg::{self, Transport};
use crate::turn_only::{TurnOnly, TurnOnlyConfig};
use crate::worker::{self, Media, Plan, Scenario, Worker};

/// Time for the last probes to arrive after sending stops.
pub const DRAIN: Duration = Duration::from_secs(1);
/// Longest the deallocations at the end may take. Thousands of agents delete their allocations
/// at once; a generator that fell behind has seconds of datagrams queued in its sockets before
/// the answers.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Workers start this long after the plan is made, so that every thread is up at the epoch.
const START_SLACK: Duration = Duration::from_millis(200);

/// Why a run could not be done. A run that happened but had failed agents is not an error: it
/// is in the report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] cli::ConfigError),
    #[error("preflight: {0}")]
    Preflight(#[from] PreflightError),
    #[error("I/O backend: {0}")]
    Backend(#[from] DriverError),
    #[error("cannot start worker {0}: {1}")]
    Spawn(usize, std::io::Error),
    #[error("worker {0} failed: {1}")]
    Worker(usize, String),
    #[error("writing {what} {path}: {reason}")]
    Output {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("--mode {0} has a runner of its own (loadgen::churn, loadgen::idle)")]
    NotAgentMode(&'static str),
}

/// What a finished run returns.
#[derive(Debug)]
pub struct Outcome {
    pub preflight: Preflight,
    pub report: Report,
    pub fabric: FabricCounters,
}

struct WorkerThread {
    control: Sender<Control>,
    thread: JoinHandle<Result<Counters, String>>,
}

/// Resolves the backend once for every worker (every mode: turn-only, ICE, churn, idle).
pub fn backend(config: &Config) -> Result<(Backend, Chosen), RunError> {
    let selection = driver::select_backend(config.backend)?;
    Ok(match selection.chosen {
        Chosen::Uring => (Backend::Uring, Chosen::Uring),
        Chosen::Portable => (Backend::Portable, Chosen::Portable),
    })
}

/// Writes `value` as pretty JSON (every mode's `--json`).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let output = |e: String| RunError::Output {
        what: "JSON report",
        path: path.display().to_string(),
        reason: e,
    };
    let text = serde_json::to_string_pretty(value).map_err(|e| output(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| output(e.to_string()))
}

/// Runs the load described by `config`; prints progress on stderr unless `config.quiet`.
pub fn run(config: &Config) -> Result<Outcome, RunError> {
    if matches!(config.mode, Mode::Churn | Mode::Idle) {
        return Err(RunError::NotAgentMode(config.mode.name()));
    }
    cli::check_open_files(config)?;
    let pre = match config.transport {
        Transport::Udp => preflight::run(config.server, &config.credentials)?,
        t => stream_leg::preflight(config.server, &config.credentials, t, config.tls.as_ref())?,
    };
    if !config.quiet {
        eprintln!(
            "preflight: {} answers (binding {:.1} ms), allocation granted in {:.1} ms at {}, loopback peers allowed",
            config.server,
            pre.binding_rtt.as_secs_f64() * 1e3,
            pre.allocate.as_secs_f64() * 1e3,
            pre.relayed
        );
    }
    let (backend, chosen) = backend(config)?;

    let threads = config.threads.max(1);
    let pairs = config.agents / 2;
    let now = Instant::now();
    let epoch = now + START_SLACK;
    let clock = Clock::new(epoch);
    let hold_start = epoch + config.ramp;
    let send_end = hold_start + config.duration;
    let chaos_at = config.chaos.then(|| hold_start + config.duration / 2);
    let direct_ip = match config.server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let lans_per_worker = MAX_LANS / threads as u32;
    // Never 0: a seeded network starts its NATs' ports at a random point (see Network).
    let nat_seed = rand::random::<u64>() | 1;

    // --nat-matrix: run-wide pair i is case i (config.agents was set to match).
    let cases: Option<Arc<[matrix::Case]>> = config
        .nat_matrix
        .then(|| matrix::cases(config.nat_timeout()).into());
    let (outcome_tx, outcome_rx) = unbounded();

    // Pair j goes to worker j % threads: the ramp interleaves workers.
    let mut starts: Vec<Vec<Instant>> = vec![Vec::new(); threads];
    for j in 0..pairs {
        let offset = config.ramp.mul_f64(j as f64 / pairs as f64);
        starts[(j % threads as u64) as usize].push(epoch + offset);
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (report_tx, report_rx) = bounded::<worker::Report>(threads * 64);
    let mut workers = Vec::with_capacity(threads);
    let mut agent_base = 0u32;
    for (w, pair_starts) in starts.into_iter().enumerate() {
        let agents_here = 2 * pair_starts.len() as u32;
        let plan = Plan {
            worker: w,
            clock,
            pair_starts,
            agent_base,
            hold_start,
            send_end,
            drain: DRAIN,
            shutdown_grace: SHUTDOWN_GRACE,
            setup_timeout: config.setup_timeout,
            media: Media {
                rate: config.rate,
                size: config.size,
                max_rate: config.max_rate,
            },
            chaos_at,
        };
        agent_base += agents_here;
        let lans = w as u32 * lans_per_worker..(w as u32 + 1) * lans_per_worker;
        let fabric = Fabric::new(direct_ip, lans, nat_seed);
        let scenario: Box<dyn Scenario + Send> = match config.mode {
            Mode::TurnOnly | Mode::Churn | Mode::Idle => Box::new(TurnOnly::new(TurnOnlyConfig {
                server: config.server,
                credentials: config.credentials.clone(),
                nat: config.nat,
                seed: rand::random(),
                transport: config.transport,
                tls: config.tls.clone(),
            })),
            Mode::Ice => Box::new(IceScenario::new(IceConfig {
                server: config.server,
                credentials: config.credentials.clone(),
                policy: match config.policy {
                    cli::Policy::All => uturn_ice::Policy::All,
                    cli::Policy::Relay => uturn_ice::Policy::RelayOnly,
                },
                placement: match &cases {
                    Some(c) => Placement::Matrix(c.clone()),
                    None => Placement::Each(config.nat),
                },
                consent_timeout: config.consent_timeout,
                seed: rand::random(),
                outcomes: cases.is_some().then(|| outcome_tx.clone()),
            })),
        };
        let (control, control_rx) = bounded::<Control>(4);
        let tx = report_tx.clone();
        let gso_burst = config.gso_burst;
        let thread = std::thread::Builder::new()
            .name(format!("loadgen-{w}"))
            .spawn(move || {
                if !driver::pin_current_thread(core_for(w, cores)) {
                    tracing::debug!(worker = w, "not pinned to a core");
                }
                let mut worker = Worker::new(scenario, plan, fabric, tx).with_burst(gso_burst);
                let cfg = DriverConfig {
                    recv_buffers: 8192,
                    send_buffers: 2048,
                    // --gso-burst: the driver sends each agent's burst as one GSO send. Otherwise
                    // no GSO, and never GRO: loadgen's traffic and its own receive cost must
                    // not depend on what the server under test does.
                    gso: gso_burst > 1,
                    gro: false,
                    ..DriverConfig::default()
                };
                driver::run_worker(backend, &mut worker, Vec::new(), &control_rx, &cfg)
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| RunError::Spawn(w, e))?;
        workers.push(WorkerThread { control, thread });
    }
    drop(report_tx);
    drop(outcome_tx);

    let collected = collect(config, &report_rx, &workers, threads, hold_start, send_end);
    let mut driver_counters = DriverCounters::default();
    let mut worker_error = None;
    for w in &workers {
        let _ = w.control.send(Control::Stop);
    }
    for (i, w) in workers.into_iter().enumerate() {
        match w.thread.join() {
            Ok(Ok(c)) => driver_counters.add(&c),
            Ok(Err(e)) => worker_error = Some(RunError::Worker(i, e)),
            Err(_) => worker_error = Some(RunError::Worker(i, "panicked".into())),
        }
    }
    if let Some(e) = worker_error {
        return Err(e);
    }
    let Collected {
        stats,
        fabric,
        timeline,
        generator_cpu_s,
        server_cpu_s,
        missing,
    } = collected;
    if let Some(w) = missing {
        return Err(RunError::Worker(
            w,
            "did not report its results in time".into(),
        ));
    }

    let window_s = config.duration.as_secs_f64();
    let relay_hops = match config.mode {
        Mode::TurnOnly | Mode::Churn | Mode::Idle => 2.0,
        // The mean over connected agents of the relayed candidates on their path.
        Mode::Ice if stats.connected > 0 => stats.relay_hops as f64 / stats.connected as f64,
        Mode::Ice => 0.0,
    };
    let mut report = Report::build(
        config.mode.name(),
        RunConfig {
            server: config.server.to_string(),
            realm: config.credentials.realm.clone(),
            agents: config.agents,
            duration_s: window_s,
            ramp_s: config.ramp.as_secs_f64(),
            rate: config.rate,
            size: config.size,
            max_rate: config.max_rate,
            threads,
            gso_burst: config.gso_burst,
            nat: if config.nat_matrix {
                "matrix".into()
            } else {
                config.nat.to_string()
            },
            policy: match config.policy {
                cli::Policy::All => "all".into(),
                cli::Policy::Relay => "relay".into(),
            },
            transport: config.transport.name().into(),
        },
        &stats,
        Measured {
            window_s,
            generator_cpu_s,
            server: config.server_pid.zip(server_cpu_s),
            relay_hops,
            backend: format!("{chosen:?}").to_lowercase(),
            driver: driver_counters,
            timeline,
        },
    );
    if let Some(cases) = &cases {
        let outcomes: Vec<_> = outcome_rx.try_iter().collect();
        report.matrix = Some(Matrix::build(
            cases,
            config.policy == cli::Policy::Relay,
            &outcomes,
        ));
    }
    if let Some(path) = &config.json {
        write_json(path, &report)?;
    }
    if let Some(path) = &config.plot {
        let title = format!(
            "{} agents, {} against {}",
            config.agents,
            config.mode.name(),
            config.server
        );
        crate::report::plot(&report.timeline, &title, path).map_err(|e| RunError::Output {
            what: "plot",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(Outcome {
        preflight: pre,
        report,
        fabric,
    })
}

/// The core worker `w` is pinned to: counted down from the last core, because the relay pins
/// its workers from core 0 up. On a machine that runs both, they share a core only when together
/// they want more cores than there are; two busy threads pinned to one core would add the
/// scheduler's wake-up latency (milliseconds) to every measurement.
pub fn core_for(w: usize, cores: usize) -> usize {
    let cores = cores.max(1);
    cores - 1 - (w % cores)
}

struct Collected {
    stats: Stats,
    fabric: FabricCounters,
    timeline: Vec<crate::stats::Second>,
    generator_cpu_s: f64,
    server_cpu_s: Option<f64>,
    /// A worker that never reported.
    missing: Option<usize>,
}

/// Receives the workers' per-second samples and final statistics, drives the live display and
/// reads CPU time at the edges of the measured window.
fn collect(
    config: &Config,
    rx: &Receiver<worker::Report>,
    workers: &[WorkerThread],
    threads: usize,
    hold_start: Instant,
    send_end: Instant,
) -> Collected {
    let bar = if config.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {prefix:5} {msg}") {
            b.set_style(style);
        }
        b.enable_steady_tick(Duration::from_millis(200));
        b
    };
    let deadline = send_end + DRAIN + SHUTDOWN_GRACE + Duration::from_secs(5);
    let mut timeline = Timeline::new(threads);
    let mut stats = Stats::default();
    let mut fabric = FabricCounters::default();
    let mut done = vec![false; threads];
    let mut gen_window: Option<CpuWindow> = None;
    let mut server_window: Option<CpuWindow> = None;
    let mut generator_cpu_s = 0.0;
    let mut server_cpu_s = None;
    let mut window_closed = false;
    let server = config.server_pid.map(Process::Pid);
    loop {
        let now = Instant::now();
        if gen_window.is_none() && now >= hold_start {
            gen_window = CpuWindow::start(Process::This).ok();
            server_window = server.and_then(|p| CpuWindow::start(p).ok());
        }
        if !window_closed && now >= send_end {
            window_closed = true;
            generator_cpu_s = gen_window.and_then(|w| w.finish().ok()).unwrap_or(0.0);
            server_cpu_s = server_window.and_then(|w| w.finish().ok());
        }
        let phase = if now < hold_start {
            "ramp"
        } else if now < send_end {
            "hold"
        } else {
            "drain"
        };
        bar.set_prefix(phase);
        if done.iter().all(|&d| d) || now >= deadline {
            break;
        }
        // A worker thread that ended without reporting (its driver failed) ends the wait.
        if workers
            .iter()
            .enumerate()
            .any(|(i, w)| !done[i] && w.thread.is_finished())
        {
            break;
        }
        let next_edge = [hold_start, send_end]
            .into_iter()
            .filter(|&t| t > now)
            .min()
            .unwrap_or(deadline);
        let wait = next_edge
            .min(deadline)
            .saturating_duration_since(now)
            .min(Duration::from_millis(250));
        match rx.recv_timeout(wait) {
            Ok(worker::Report::Interval(i)) => {
                timeline.add(i);
                if let Some(s) = timeline.last() {
                    bar.set_message(format!(
                        "connected {}/{}  {} pps  lost {}  p99 {} µs",
                        s.connected, config.agents, s.pps, s.lost, s.p99_us
                    ));
                }
            }
            Ok(worker::Report::Done(w, s, f)) => {
                stats.merge(&s);
                add_fabric(&mut fabric, &f);
                if let Some(d) = done.get_mut(w) {
                    *d = true;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Drain what is left in the channel (intervals sent just before Done).
    while let Ok(m) = rx.try_recv() {
        match m {
            worker::Report::Interval(i) => timeline.add(i),
            worker::Report::Done(w, s, f) => {
                stats.merge(&s);
                add_fabric(&mut fabric, &f);
                if let Some(d) = done.get_mut(w) {
                    *d = true;
                }
            }
        }
    }
    bar.finish_and_clear();
    if !window_closed {
        generator_cpu_s = gen_window.and_then(|w| w.finish().ok()).unwrap_or(0.0);
        server_cpu_s = server_window.and_then(|w| w.finish().ok());
    }
    Collected {
        stats,
        fabric,
        timeline: timeline.finish(),
        generator_cpu_s,
        server_cpu_s,
        missing: done.iter().position(|&d| !d),
    }
}

fn add_fabric(total: &mut FabricCounters, f: &FabricCounters) {
    total.unreachable += f.unreachable;
    total.ipv6 += f.ipv6;
    total.nat_full += f.nat_full;
    total.no_mapping += f.no_mapping;
    total.filtered += f.filtered;
    total.local_overflow += f.local_overflow;
    total.stray += f.stray;
    total.nat_sockets_opened += f.nat_sockets_opened;
    total.nat_sockets_closed += f.nat_sockets_closed;
}

#[cfg(test)]
mod tests {
    use super::core_for;

    #[test]
    fn workers_pin_from_the_last_core_down() {
        assert_eq!(
            (0..5).map(|w| core_for(w, 4)).collect::<Vec<_>>(),
            [3, 2, 1, 0, 3]
        );
        assert_eq!(core_for(0, 1), 0);
        assert_eq!(core_for(3, 0), 0);
    }
}
