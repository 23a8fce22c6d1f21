//! The uturn relay binary: configuration, one pinned worker per core, signals, metrics.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use crossbeam_channel::{bounded, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use uturn::config::{self, Cli, Settings};
use uturn::driver::{self, Backend, Control, DriverConfig};
use uturn::worker::{HandOff, RelayWorker, Snapshot, StreamSetup, WorkerMsg};
use uturn_proto::turn::auth::NonceKey;
use uturn_proto::turn::config::NatDiscovery;
use uturn_proto::turn::{Server, ServerConfig, Transport};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print and exit 0 as clap does.
        Err(e) if !e.use_stderr() => e.exit(),
        // A bad flag is a configuration error like any other: one line naming the flag and the
        // reason, exit code 2. clap's first line says both; its usage hints follow on the next.
        Err(e) => {
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            return ExitCode::from(2);
        }
    };
    let settings = match config::load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::new(&settings.log_level);
    tracing_subscriber::fmt().with_env_filter(filter).init();
    match run(&cli, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uturn: {e:#}");
            ExitCode::from(1)
        }
    }
}

struct WorkerHandle {
    control: Sender<Control>,
    msgs: Sender<WorkerMsg>,
    thread: std::thread::JoinHandle<()>,
}

fn run(cli: &Cli, settings: Settings) -> anyhow::Result<()> {
    let fds = uturn::limits::raise_nofile();
    let listeners =
        settings.udp_listeners().len() + settings.listen_tcp.len() + settings.listen_tls.len();
    let relay_sockets = uturn::limits::relay_socket_budget(fds, settings.threads, listeners);
    tracing::info!(
        open_files = fds,
        relay_sockets_per_worker = relay_sockets,
        allocations = relay_sockets * settings.threads,
        "open-file limit raised to the hard limit; beyond that many allocations (single-family) \
         Allocate gets 508"
    );

    let selection = driver::select_backend(settings.backend).context("backend")?;
    tracing::info!(backend = ?selection.chosen, reason = %selection.reason, "I/O backend");
    let backend = match selection.chosen {
        driver::Chosen::Uring => Backend::Uring,
        driver::Chosen::Portable => Backend::Portable,
    };

    // A port another process holds is a clear error here, before the workers start: a plain
    // bind fails where SO_REUSEPORT would silently share the port with another relay.
    for a in settings.udp_listeners() {
        UdpSocket::bind(a).with_context(|| format!("listen {a}"))?;
    }
    for a in settings.listen_tcp.iter().chain(&settings.listen_tls) {
        std::net::TcpListener::bind(a).with_context(|| format!("listen (TCP) {a}"))?;
    }

    let nonce_key = NonceKey::new(rand::random());
    let (snap_tx, snap_rx) = bounded::<Snapshot>(settings.threads * 4);
    let metrics = match settings.metrics {
        Some(addr) => Some(uturn::metrics::spawn(addr, snap_rx, settings.threads)?),
        None => None,
    };
    let snap_tx = metrics.as_ref().map(|_| snap_tx);

    let (ready_tx, ready_rx) = bounded::<Result<usize, String>>(settings.threads);
    let settings = Arc::new(settings);
    // Every worker's listening sockets are bound here, before any worker runs. SO_REUSEPORT
    // steers a client by hashing its address over the sockets in the group: were a worker
    // already answering while another still bound its socket, the group would grow under it
    // and clients it had allocated for would be moved to a worker that never saw them (437).
    // TCP listeners likewise, and the channels that move RFC 6062 data connections to the
    // worker owning their peer connection.
    let mut listeners = Vec::with_capacity(settings.threads);
    let (mut handoff_tx, mut handoff_rx) = (Vec::new(), Vec::new());
    for _ in 0..settings.threads {
        let udp = settings.udp_listeners();
        let mut sockets = Vec::with_capacity(udp.len());
        for a in &udp {
            sockets.push(driver::bind_reuseport_udp(*a).with_context(|| format!("listen {a}"))?);
        }
        let mut streams = Vec::new();
        for (addrs, transport) in [
            (&settings.listen_tcp, Transport::Tcp),
            (&settings.listen_tls, Transport::Tls),
        ] {
            for a in addrs {
                let l =
                    driver::bind_reuseport_tcp(*a).with_context(|| format!("listen (TCP) {a}"))?;
                streams.push((l, transport));
            }
        }
        listeners.push((sockets, streams));
        let (tx, rx) = bounded::<HandOff>(1024);
        handoff_tx.push(tx);
        handoff_rx.push(rx);
    }
    if let Some(first) = listeners.first().and_then(|l| l.0.first()) {
        // Linux reports twice the size asked for (bookkeeping included).
        let got = driver::recv_buffer_size(first) / 2;
        if got < driver::LISTENER_BUFFER {
            tracing::warn!(
                asked = driver::LISTENER_BUFFER,
                got,
                "listening socket receive buffer capped by net.core.rmem_max: bursts may be \
                 dropped; see tuning/99-uturn.conf"
            );
        } else {
            tracing::info!(bytes = got, "listening socket buffers");
        }
    }
    let mut workers = Vec::new();
    for (i, ((sockets, streams), handoff)) in listeners.into_iter().zip(handoff_rx).enumerate() {
        let (control, control_rx) = bounded::<Control>(16);
        let (msgs, msgs_rx) = bounded::<WorkerMsg>(16);
        let s = Arc::clone(&settings);
        let key = nonce_key.clone();
        let ready = ready_tx.clone();
        let snaps = snap_tx.clone();
        let setup = StreamSetup {
            listeners: streams,
            tls: settings.tls.clone(),
            limits: settings.stream_limits,
            max_clients: settings.tcp_max_connections.div_ceil(settings.threads),
            handoff_peers: handoff_tx.clone(),
            handoff_rx: Some(handoff),
        };
        let thread = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                if !driver::pin_current_thread(i) {
                    tracing::warn!(worker = i, "could not pin to a core");
                }
                let server = match build_server(&s, i, key, relay_sockets) {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready.send(Err(format!("worker {i}: {e:#}")));
                        return;
                    }
                };
                let mut worker = RelayWorker::new(i, server, s.udp_listeners(), msgs_rx, snaps)
                    .with_streams(setup);
                let _ = ready.send(Ok(i));
                if let Err(e) = driver::run_worker(
                    backend,
                    &mut worker,
                    sockets,
                    &control_rx,
                    &DriverConfig::default(),
                ) {
                    tracing::error!(worker = i, "worker stopped: {e}");
                }
            })?;
        workers.push(WorkerHandle {
            control,
            msgs,
            thread,
        });
    }
    drop(ready_tx);
    drop(snap_tx);
    for _ in 0..settings.threads {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                stop(workers, Duration::from_secs(1));
                anyhow::bail!(e);
            }
            Err(_) => anyhow::bail!("a worker exited during start-up"),
        }
    }
    drop(handoff_tx);
    tracing::info!(
        workers = settings.threads,
        listen = ?settings.listen,
        listen_tcp = ?settings.listen_tcp,
        listen_tls = ?settings.listen_tls,
        nat_discovery = ?settings.nat_discovery,
        relay_v4 = ?settings.relay_v4,
        relay_v6 = ?settings.relay_v6,
        relay_ports = ?settings.relay_ports,
        realm = %settings.realm,
        "uturn is running"
    );
    if let Some(pass) = &settings.demo_password {
        print_demo_banner(&settings, pass);
    }

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    for sig in signals.forever() {
        match sig {
            SIGHUP => reload(cli, &settings, &workers),
            _ => {
                tracing::info!("signal {sig}: stopping");
                break;
            }
        }
    }
    stop(workers, Duration::from_millis(1500));
    drop(metrics);
    Ok(())
}

fn build_server(
    s: &Settings,
    worker: usize,
    nonce_key: NonceKey,
    relay_sockets: usize,
) -> anyhow::Result<Server> {
    let mut cfg = ServerConfig::new(s.realm.clone(), s.credentials()?, nonce_key);
    cfg.max_relay_sockets = relay_sockets;
    let ports = s.worker_ports(worker);
    cfg.relay_v4 = s.relay_v4;
    cfg.relay_v6 = s.relay_v6;
    cfg.port_min = *ports.start();
    cfg.port_max = *ports.end();
    let l = &s.limits;
    cfg.default_lifetime = l.default_lifetime;
    cfg.max_lifetime = l.max_lifetime;
    cfg.nonce_validity = l.nonce_validity;
    cfg.max_allocations = l.max_allocations;
    cfg.max_allocations_per_user = l.max_allocations_per_user;
    cfg.max_permissions_per_allocation = l.max_permissions_per_allocation;
    cfg.max_channels_per_allocation = l.max_channels_per_allocation;
    cfg.bandwidth_limit = l.bandwidth_limit;
    cfg.software = l.software.clone();
    cfg.mapped_address = l.mapped_address;
    cfg.peer_policy = s.peer_policy();
    cfg.tcp_connect_timeout = l.tcp_connect_timeout;
    cfg.max_tcp_connections_per_allocation = l.max_tcp_connections_per_allocation;
    // The top byte of this worker's CONNECTION-IDs (threads are at most 256).
    cfg.worker = worker as u8;
    cfg.workers = s.threads as u16;
    if let Some(nd) = &s.nat_discovery {
        // The listener tokens are the sockets' ids: the UDP sockets in `udp_listeners` order.
        // The four of RFC 5780 (the primary and its three alternates) answer CHANGE-REQUEST.
        let four: Vec<SocketAddr> = std::iter::once(nd.primary)
            .chain(nd.extra_listeners())
            .collect();
        let listeners = s
            .udp_listeners()
            .into_iter()
            .enumerate()
            .filter(|(_, a)| four.contains(a))
            .map(|(i, a)| (i as u32, a))
            .collect();
        cfg.nat_discovery = Some(NatDiscovery { listeners });
    }
    cfg.seed = rand::random();
    Ok(Server::new(cfg, Instant::now()))
}

/// SIGHUP: re-read the configuration; users, secrets and peer policy go to every worker.
/// Listening addresses, ports and threads need a restart and are left as they are.
fn reload(cli: &Cli, running: &Settings, workers: &[WorkerHandle]) {
    let fresh = match config::load(cli) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("reload refused, keeping the running configuration: {e}");
            return;
        }
    };
    if fresh.listen != running.listen
        || fresh.listen_tcp != running.listen_tcp
        || fresh.listen_tls != running.listen_tls
        || fresh.relay_ports != running.relay_ports
    {
        tracing::warn!("listen and relay_ports changes need a restart; not applied");
    }
    // In demo mode the password stays the one printed at start-up.
    let users = if running.demo_password.is_some() && fresh.demo_password.is_some() {
        running.users.clone()
    } else {
        fresh.users.clone()
    };
    let fresh = Settings { users, ..fresh };
    for w in workers {
        match fresh.credentials() {
            Ok(c) => {
                let _ = w
                    .msgs
                    .send(WorkerMsg::Reload(Box::new((c, fresh.peer_policy()))));
            }
            Err(e) => {
                tracing::error!("reload refused: {e}");
                return;
            }
        }
    }
    tracing::info!(
        users = fresh.users.len(),
        secrets = fresh.secrets.len(),
        "configuration reloaded"
    );
}

/// Stops taking allocations, stops every worker and waits for them, at most `deadline`.
fn stop(workers: Vec<WorkerHandle>, deadline: Duration) {
    for w in &workers {
        let _ = w.msgs.send(WorkerMsg::Drain);
        let _ = w.control.send(Control::Stop);
    }
    let until = Instant::now() + deadline;
    for w in workers {
        while !w.thread.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if w.thread.is_finished() {
            let _ = w.thread.join();
        }
    }
}

fn print_demo_banner(s: &Settings, pass: &str) {
    let server: SocketAddr = s.listen[0];
    println!("uturn demo: realm {} user demo password {pass}", s.realm);
    println!(
        "try it with loadgen (peers on this machine are loopback addresses, so run uturn with"
    );
    println!("--allow-loopback-peers for that, as the line below assumes):");
    println!(
        "  cargo run --release -p loadgen -- --server {server} --realm {} --user demo:{pass} --agents 100 --duration 10s",
        s.realm
    );
    if !s.policy.allow_loopback {
        println!("note: loopback peers are refused now (default policy); restart with --allow-loopback-peers to try loadgen locally");
    }
}
