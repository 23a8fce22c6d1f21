//! `--mode churn`: authenticated allocations per second.
//!
//! `--agents` clients each loop: a fresh client sends Allocate (answered 401 with a nonce), the
//! authenticated Allocate (granted), then Refresh with lifetime 0 (deleted), and starts over.
//! The first `--ramp` is a warm-up; allocations granted in the following `--duration` give the
//! rate, and the relay's CPU time over the same window (with `--server-pid`) gives allocations
//! per relay CPU-second. The clients are closed loop, so the rate is what the server sustains
//! with `--agents` requests outstanding, not what loadgen offers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use uturn::driver::Chosen;

use crate::alloc_clients::{client_ips, split, Behaviour, ClientStats, ClientsPlan, Workers};
use crate::cli::Config;
use crate::cpu::{CpuWindow, Process};
use crate::preflight;
use crate::report::r3;
use crate::run::{backend, write_json};
use crate::run::{RunError, SHUTDOWN_GRACE};
use crate::stats::Percentiles;
use crate::turn_only::client_config;

/// The JSON report of a churn run (`schema` 1; keys are only ever added).
#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    pub schema: u32,
    pub mode: &'static str,
    pub config: ChurnConfig,
    pub allocations: ChurnAllocations,
    /// Unauthenticated Allocate sent to allocation granted (two round trips), microseconds.
    pub allocation_us: Percentiles,
    pub server: Option<ServerCpu>,
    pub generator: GeneratorCpu,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChurnConfig {
    pub server: String,
    pub realm: String,
    /// Clients cycling at once.
    pub agents: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChurnAllocations {
    /// Granted over the whole run.
    pub granted: u64,
    /// Granted inside the measured window.
    pub in_window: u64,
    pub per_second: f64,
    pub deallocated: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Deletions at the end that failed (the server expires those allocations itself).
    pub teardown_failures: BTreeMap<String, u64>,
}

/// The relay's CPU over a window.
#[derive(Clone, Debug, Serialize)]
pub struct ServerCpu {
    pub pid: u32,
    pub cpu_seconds: f64,
    pub cpu_cores: f64,
    /// Allocations granted per relay CPU-second (churn).
    pub per_cpu_second: f64,
}

/// loadgen's own CPU over the same window.
#[derive(Clone, Debug, Serialize)]
pub struct GeneratorCpu {
    pub cpu_seconds: f64,
    pub cpu_cores: f64,
    pub threads: usize,
    pub utilization: f64,
    /// `generator` when loadgen's threads were saturated: the server may have had more to give.
    pub limit: &'static str,
    pub backend: String,
}

impl GeneratorCpu {
    pub fn new(cpu_seconds: f64, window_s: f64, threads: usize, backend: Chosen) -> Self {
        let cpu_cores = cpu_seconds / window_s.max(1e-9);
        let utilization = cpu_cores / threads.max(1) as f64;
        GeneratorCpu {
            cpu_seconds: r3(cpu_seconds),
            cpu_cores: r3(cpu_cores),
            threads,
            utilization: r3(utilization),
            limit: if utilization >= 0.9 {
                "generator"
            } else {
                "not-generator"
            },
            backend: format!("{backend:?}").to_lowercase(),
        }
    }
}

/// Runs the churn benchmark described by `config`.
pub fn run(config: &Config) -> Result<ChurnReport, RunError> {
    crate::cli::check_open_files(config)?;
    let pre = preflight::run(config.server, &config.credentials)?;
    if !config.quiet {
        eprintln!(
            "preflight: {} answers, allocation granted in {:.1} ms",
            config.server,
            pre.allocate.as_secs_f64() * 1e3
        );
    }
    let (backend, chosen) = backend(config)?;
    let clients = usize::try_from(config.agents).unwrap_or(usize::MAX);
    let threads = config.threads.clamp(1, clients.max(1));
    let start = Instant::now() + Duration::from_millis(200);
    let window_start = start + config.ramp;
    let window_end = window_start + config.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let ips = client_ips(clients);
    let client = client_config(config.server, &config.credentials);
    let plans = split(clients, threads)
        .into_iter()
        .enumerate()
        .map(|(worker, n)| ClientsPlan {
            worker,
            clients: n,
            bind_ips: ips.clone(),
            concurrency: n,
            start,
            window_start,
            window_end,
            stop_at: window_end,
            stop: stop.clone(),
            shutdown_grace: SHUTDOWN_GRACE,
            behaviour: Behaviour::Churn,
            client: client.clone(),
        })
        .collect();
    let mut workers = Workers::spawn(plans, backend)?;
    while Instant::now() < window_start && !workers.any_exited() {
        let _ = workers.poll(window_start);
    }
    let gen = CpuWindow::start(Process::This).ok();
    let server = config
        .server_pid
        .and_then(|p| CpuWindow::start(Process::Pid(p)).ok());
    while Instant::now() < window_end && !workers.any_exited() {
        let _ = workers.poll(window_end);
    }
    let gen_s = gen.and_then(|w| w.finish().ok()).unwrap_or(0.0);
    let server_s = server.and_then(|w| w.finish().ok());
    stop.store(true, Ordering::Relaxed);
    let stats = workers.finish(Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(3))?;
    let report = build(config, threads, &stats, gen_s, server_s, chosen);
    if let Some(path) = &config.json {
        write_json(path, &report)?;
    }
    Ok(report)
}

fn build(
    config: &Config,
    threads: usize,
    s: &ClientStats,
    gen_s: f64,
    server_s: Option<f64>,
    backend: Chosen,
) -> ChurnReport {
    let window_s = config.duration.as_secs_f64();
    let per_second = s.window_allocations as f64 / window_s.max(1e-9);
    ChurnReport {
        schema: 1,
        mode: "churn",
        config: ChurnConfig {
            server: config.server.to_string(),
            realm: config.credentials.realm.clone(),
            agents: config.agents,
            duration_s: window_s,
            warmup_s: config.ramp.as_secs_f64(),
            threads,
        },
        allocations: ChurnAllocations {
            granted: s.allocations,
            in_window: s.window_allocations,
            per_second: r3(per_second),
            deallocated: s.deallocations,
            failed: s.failed(),
            failures: s.failures.clone(),
            teardown_failures: s.teardown.clone(),
        },
        allocation_us: s.allocation_us(),
        server: config.server_pid.zip(server_s).map(|(pid, cpu)| ServerCpu {
            pid,
            cpu_seconds: r3(cpu),
            cpu_cores: r3(cpu / window_s.max(1e-9)),
            per_cpu_second: r3(s.window_allocations as f64 / cpu.max(1e-9)),
        }),
        generator: GeneratorCpu::new(gen_s, window_s, threads, backend),
    }
}

impl ChurnReport {
    /// The human summary printed at the end.
    pub fn summary(&self) -> String {
        let a = &self.allocations;
        let mut s = format!(
            "loadgen churn: {} clients against {} for {}s (warm-up {}s)\n",
            self.config.agents, self.config.server, self.config.duration_s, self.config.warmup_s
        );
        s += &format!(
            "  allocations    {} granted in the window: {:.0} per second ({} in all, {} deleted, {} failed)\n",
            a.in_window, a.per_second, a.granted, a.deallocated, a.failed
        );
        for (reason, n) in &a.failures {
            s += &format!("    failed: {reason}: {n}\n");
        }
        for (reason, n) in &a.teardown_failures {
            s += &format!("    deletion at the end failed: {reason}: {n}\n");
        }
        let l = &self.allocation_us;
        s += &format!(
            "  allocate µs    p50 {}  p90 {}  p99 {}  max {}  (401 round trip included)\n",
            l.p50, l.p90, l.p99, l.max
        );
        if let Some(sv) = &self.server {
            s += &format!(
                "  relay cpu      pid {}: {:.2} CPU-s ({:.2} cores), {:.0} allocations per CPU-second\n",
                sv.pid, sv.cpu_seconds, sv.cpu_cores, sv.per_cpu_second
            );
        }
        let g = &self.generator;
        s += &format!(
            "  loadgen cpu    {:.2} CPU-s ({:.2} cores of {} threads), backend {}\n",
            g.cpu_seconds, g.cpu_cores, g.threads, g.backend
        );
        s
    }
}
