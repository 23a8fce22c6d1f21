//! Prometheus metrics over HTTP (`/metrics`, `/healthz`). Workers count in plain integers and
//! publish a snapshot every second; this thread keeps the latest one per worker and renders
//! them. Labels are worker numbers, methods, results, directions and reasons: never a username
//! or an address.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};
use uturn_proto::turn::stats::{DropReason, RESULTS};
use uturn_proto::turn::Stats;

use crate::worker::Snapshot;

/// Starts the metrics server on `addr`. It runs until `snapshots` is disconnected (all workers
/// gone).
pub fn spawn(
    addr: SocketAddr,
    snapshots: Receiver<Snapshot>,
    workers: usize,
) -> anyhow::Result<JoinHandle<()>> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {addr}: {e}"))?;
    let handle = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || serve(server, snapshots, workers))?;
    Ok(handle)
}

fn serve(server: tiny_http::Server, snapshots: Receiver<Snapshot>, workers: usize) {
    let mut latest: Vec<Option<Snapshot>> = vec![None; workers];
    loop {
        loop {
            match snapshots.try_recv() {
                Ok(s) => {
                    if let Some(slot) = latest.get_mut(s.worker) {
                        *slot = Some(s);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let (code, body) = match req.url() {
            "/metrics" => (200, render(&latest)),
            "/healthz" => (200, "OK\n".to_string()),
            _ => (404, "not found\n".to_string()),
        };
        let ctype = tiny_http::Header::from_bytes(
            &b"Content-Type"[..],
            &b"text/plain; version=0.0.4; charset=utf-8"[..],
        );
        let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
        if let Ok(h) = ctype {
            resp = resp.with_header(h);
        }
        // A client that went away is not our problem.
        let _ = req.respond(resp);
    }
}

/// Renders the Prometheus text format.
pub fn render(latest: &[Option<Snapshot>]) -> String {
    let mut o = String::new();
    let snaps: Vec<&Snapshot> = latest.iter().flatten().collect();
    let gauge = |o: &mut String, name: &str, help: &str, kind: &str, f: &dyn Fn(&Stats) -> u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &snaps {
            let _ = writeln!(o, "{name}{{worker=\"{}\"}} {}", s.worker, f(&s.stats));
        }
    };
    gauge(
        &mut o,
        "uturn_allocations_active",
        "Allocations alive now.",
        "gauge",
        &|s| s.allocations_active,
    );
    gauge(
        &mut o,
        "uturn_allocations_total",
        "Allocations created.",
        "counter",
        &|s| s.allocations_total,
    );
    gauge(
        &mut o,
        "uturn_permissions_active",
        "Permissions alive now.",
        "gauge",
        &|s| s.permissions_active,
    );
    gauge(
        &mut o,
        "uturn_channels_active",
        "Channel bindings alive now.",
        "gauge",
        &|s| s.channels_active,
    );
    gauge(
        &mut o,
        "uturn_auth_failures_total",
        "Requests that failed authentication.",
        "counter",
        &|s| s.auth_failures,
    );
    gauge(
        &mut o,
        "uturn_relay_open_failures_total",
        "Relay sockets that could not be opened (508).",
        "counter",
        &|s| s.relay_open_failures,
    );

    for (name, help, f) in [
        (
            "uturn_packets_relayed_total",
            "Datagrams relayed.",
            &(|s: &Stats| (s.packets_to_peer, s.packets_to_client))
                as &dyn Fn(&Stats) -> (u64, u64),
        ),
        (
            "uturn_bytes_relayed_total",
            "Payload bytes relayed.",
            &|s: &Stats| (s.bytes_to_peer, s.bytes_to_client),
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in &snaps {
            let (p, c) = f(&s.stats);
            let _ = writeln!(
                o,
                "{name}{{worker=\"{}\",direction=\"to_peer\"}} {p}",
                s.worker
            );
            let _ = writeln!(
                o,
                "{name}{{worker=\"{}\",direction=\"to_client\"}} {c}",
                s.worker
            );
        }
    }

    let name = "uturn_requests_total";
    let _ = writeln!(
        o,
        "# HELP {name} STUN/TURN requests by method and result.\n# TYPE {name} counter"
    );
    for s in &snaps {
        for (mi, row) in s.stats.requests.iter().enumerate() {
            for (ri, n) in row.iter().enumerate() {
                if *n > 0 {
                    let _ = writeln!(
                        o,
                        "{name}{{worker=\"{}\",method=\"{}\",result=\"{}\"}} {n}",
                        s.worker,
                        Stats::method_label(mi),
                        RESULTS[ri]
                    );
                }
            }
        }
    }

    let name = "uturn_dropped_total";
    let _ = writeln!(
        o,
        "# HELP {name} Datagrams dropped without an answer, by reason.\n# TYPE {name} counter"
    );
    for s in &snaps {
        for r in DropReason::ALL {
            let _ = writeln!(
                o,
                "{name}{{worker=\"{}\",reason=\"{}\"}} {}",
                s.worker,
                r.name(),
                s.stats.dropped(r)
            );
        }
        let d = &s.driver;
        for (reason, n) in [
            ("send_error", d.send_errors),
            ("driver_queue", d.drops),
            ("truncated", d.truncated),
        ] {
            let _ = writeln!(
                o,
                "{name}{{worker=\"{}\",reason=\"{reason}\"}} {n}",
                s.worker
            );
        }
    }

    for (name, help, f) in [
        (
            "uturn_driver_recv_packets_total",
            "Datagrams received.",
            &(|d: &crate::driver::Counters| d.recv_packets)
                as &dyn Fn(&crate::driver::Counters) -> u64,
        ),
        ("uturn_driver_send_packets_total", "Datagrams sent.", &|d| {
            d.send_packets
        }),
        (
            "uturn_driver_enobufs_total",
            "Receive buffer exhaustion events.",
            &|d| d.enobufs,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in &snaps {
            let _ = writeln!(o, "{name}{{worker=\"{}\"}} {}", s.worker, f(&s.driver));
        }
    }
    o
}
