//! `--mode idle`: the memory an idle allocation costs the server.
//!
//! `--agents` clients each allocate (authenticated, as in churn) and then hold the allocation
//! without traffic; at most [`CONCURRENCY`] Allocates are outstanding at once, so a slow server
//! is not flooded into retransmissions. With `--server-pid`, the server's resident memory
//! (`VmRSS`) is read before the first allocation and again once every allocation is held and
//! the server has had a second to settle: the difference over the allocations held is the user
//! space memory per allocation. The machine's kernel slab memory (socket structures) is read at
//! the same two moments; it is system-wide, so other processes show in it. The allocations are
//! then held for `--duration` (the server's CPU while idle is reported too) and deleted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::alloc_clients::{client_ips, rss_kib, slab_kib, split, Behaviour, ClientsPlan, Workers};
use crate::churn::GeneratorCpu;
use crate::cli::Config;
use crate::cpu::{CpuWindow, Process};
use crate::preflight;
use crate::report::r3;
use crate::run::{backend, write_json};
use crate::run::{RunError, SHUTDOWN_GRACE};
use crate::stats::Percentiles;
use crate::turn_only::client_config;

/// Most Allocates outstanding at once (over all workers).
pub const CONCURRENCY: usize = 256;
/// Time the server gets after the last allocation before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// The JSON report of an idle run (`schema` 1; keys are only ever added).
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    pub schema: u32,
    pub mode: &'static str,
    pub config: IdleConfig,
    pub allocations: IdleAllocations,
    pub allocation_us: Percentiles,
    pub server: Option<IdleServer>,
    /// Kernel slab memory of the whole machine, KiB (noisy: other processes are in it).
    pub kernel: Option<IdleKernel>,
    pub generator: GeneratorCpu,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleConfig {
    pub server: String,
    pub realm: String,
    pub agents: u64,
    pub hold_s: f64,
    pub concurrency: usize,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleAllocations {
    pub requested: u64,
    /// Held when memory was read.
    pub held: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Deletions at the end that failed (the server expires those allocations itself).
    pub teardown_failures: BTreeMap<String, u64>,
    /// From the first Allocate to the last allocation granted.
    pub setup_s: f64,
    /// `held / setup_s`.
    pub per_second: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleServer {
    pub pid: u32,
    pub rss_before_kib: u64,
    pub rss_held_kib: u64,
    /// `(rss_held - rss_before) / held`, bytes.
    pub rss_per_allocation_bytes: f64,
    /// The server's CPU while holding the allocations idle.
    pub idle_cpu_seconds: f64,
    pub idle_cpu_cores: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleKernel {
    pub slab_before_kib: u64,
    pub slab_held_kib: u64,
    pub slab_per_allocation_bytes: f64,
}

/// Runs the idle-allocations benchmark described by `config`.
pub fn run(config: &Config) -> Result<IdleReport, RunError> {
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
    // The preflight's allocation is deleted; give the server a moment before the baseline.
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = config.server_pid.and_then(rss_kib);
    let slab_before = slab_kib();

    let clients = usize::try_from(config.agents).unwrap_or(usize::MAX);
    let threads = config.threads.clamp(1, clients.max(1));
    let start = Instant::now() + Duration::from_millis(200);
    // Allocating may take as long as it takes (within the setup timeout per client); the hold
    // ends when the main thread says so. `stop_at` is only a backstop.
    let backstop = start + config.setup_timeout + config.ramp + config.duration * 4;
    let stop = Arc::new(AtomicBool::new(false));
    let ips = client_ips(clients);
    let client = {
        let mut c = client_config(config.server, &config.credentials);
        // Held past the run's end by a crashed loadgen, they expire on their own.
        c.lifetime = Some(Duration::from_secs(600));
        c
    };
    let shares = split(clients, threads);
    let plans = shares
        .iter()
        .enumerate()
        .map(|(worker, &n)| ClientsPlan {
            worker,
            clients: n,
            bind_ips: ips.clone(),
            concurrency: (CONCURRENCY / threads).max(1),
            start,
            window_start: start,
            window_end: backstop,
            stop_at: backstop,
            stop: stop.clone(),
            shutdown_grace: SHUTDOWN_GRACE.max(Duration::from_secs(10)),
            behaviour: Behaviour::Hold,
            client: client.clone(),
        })
        .collect();
    let mut workers = Workers::spawn(plans, backend)?;

    // Wait until every client is answered (held or failed), or the setup time runs out.
    let setup_deadline = start + config.ramp + config.setup_timeout * 2;
    let mut held = 0;
    let mut setup_end = Instant::now();
    let mut progress_at = Instant::now();
    while Instant::now() < setup_deadline && !workers.any_exited() {
        let (h, pending) = workers.poll(Instant::now() + Duration::from_millis(200));
        if h != held {
            held = h;
            setup_end = Instant::now();
        }
        if !config.quiet && Instant::now() >= progress_at {
            eprint!("\rallocations held {held}/{clients}   ");
            progress_at = Instant::now() + Duration::from_secs(1);
        }
        if pending == 0 && Instant::now() > start + Duration::from_millis(500) {
            break;
        }
    }
    if !config.quiet {
        eprintln!("\rallocations held {held}/{clients}   ");
    }
    let setup_s = setup_end.saturating_duration_since(start).as_secs_f64();
    std::thread::sleep(SETTLE);
    let (held, _) = workers.poll(Instant::now());
    let rss_held = config.server_pid.and_then(rss_kib);
    let slab_held = slab_kib();

    let gen = CpuWindow::start(Process::This).ok();
    let server_cpu = config
        .server_pid
        .and_then(|p| CpuWindow::start(Process::Pid(p)).ok());
    let hold_end = Instant::now() + config.duration;
    while Instant::now() < hold_end && !workers.any_exited() {
        let _ = workers.poll(hold_end);
    }
    let gen_s = gen.and_then(|w| w.finish().ok()).unwrap_or(0.0);
    let server_s = server_cpu.and_then(|w| w.finish().ok());
    stop.store(true, Ordering::Relaxed);
    let stats = workers.finish(Instant::now() + Duration::from_secs(15))?;

    let hold_s = config.duration.as_secs_f64();
    let per_alloc = |before: u64, after: u64| {
        r3((after as f64 - before as f64) * 1024.0 / (held.max(1)) as f64)
    };
    let report = IdleReport {
        schema: 1,
        mode: "idle",
        config: IdleConfig {
            server: config.server.to_string(),
            realm: config.credentials.realm.clone(),
            agents: config.agents,
            hold_s,
            concurrency: CONCURRENCY,
            threads,
        },
        allocations: IdleAllocations {
            requested: config.agents,
            held,
            failed: stats.failed(),
            failures: stats.failures.clone(),
            teardown_failures: stats.teardown.clone(),
            setup_s: r3(setup_s),
            per_second: r3(held as f64 / setup_s.max(1e-9)),
        },
        allocation_us: stats.allocation_us(),
        server: match (config.server_pid, rss_before, rss_held) {
            (Some(pid), Some(b), Some(h)) => Some(IdleServer {
                pid,
                rss_before_kib: b,
                rss_held_kib: h,
                rss_per_allocation_bytes: per_alloc(b, h),
                idle_cpu_seconds: r3(server_s.unwrap_or(0.0)),
                idle_cpu_cores: r3(server_s.unwrap_or(0.0) / hold_s.max(1e-9)),
            }),
            _ => None,
        },
        kernel: slab_before.zip(slab_held).map(|(b, h)| IdleKernel {
            slab_before_kib: b,
            slab_held_kib: h,
            slab_per_allocation_bytes: per_alloc(b, h),
        }),
        generator: GeneratorCpu::new(gen_s, hold_s, threads, chosen),
    };
    if let Some(path) = &config.json {
        write_json(path, &report)?;
    }
    Ok(report)
}

impl IdleReport {
    /// The human summary printed at the end.
    pub fn summary(&self) -> String {
        let a = &self.allocations;
        let mut s = format!(
            "loadgen idle: {} allocations against {}, held {}s\n",
            self.config.agents, self.config.server, self.config.hold_s
        );
        s += &format!(
            "  allocations    {} held of {} ({} failed), set up in {:.1} s ({:.0} per second)\n",
            a.held, a.requested, a.failed, a.setup_s, a.per_second
        );
        for (reason, n) in &a.failures {
            s += &format!("    failed: {reason}: {n}\n");
        }
        for (reason, n) in &a.teardown_failures {
            s += &format!("    deletion at the end failed: {reason}: {n}\n");
        }
        if let Some(sv) = &self.server {
            s += &format!(
                "  relay memory   pid {}: RSS {} KiB -> {} KiB: {:.0} bytes per allocation (user space)\n",
                sv.pid, sv.rss_before_kib, sv.rss_held_kib, sv.rss_per_allocation_bytes
            );
            s += &format!(
                "  relay cpu      {:.3} CPU-s while idle ({:.3} cores)\n",
                sv.idle_cpu_seconds, sv.idle_cpu_cores
            );
        }
        if let Some(k) = &self.kernel {
            s += &format!(
                "  kernel slab    {} KiB -> {} KiB: {:.0} bytes per allocation (machine-wide, noisy)\n",
                k.slab_before_kib, k.slab_held_kib, k.slab_per_allocation_bytes
            );
        }
        s
    }
}
