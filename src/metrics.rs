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

    render_tcp(&mut o, &snaps);

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

/// TURN over TCP and TLS, and RFC 6062 data connections.
fn render_tcp(o: &mut String, snaps: &[&Snapshot]) {
    use crate::worker::TcpStats;
    type Pick = fn(&TcpStats) -> u64;
    let per_transport: [(&str, &str, &str, Pick, Pick); 2] = [
        (
            "uturn_tcp_connections_active",
            "Client connections open now, by transport.",
            "gauge",
            |t| t.clients_tcp,
            |t| t.clients_tls,
        ),
        (
            "uturn_tcp_connections_total",
            "Client connections accepted, by transport.",
            "counter",
            |t| t.accepted_tcp,
            |t| t.accepted_tls,
        ),
    ];
    for (name, help, kind, tcp, tls) in per_transport {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in snaps {
            for (transport, v) in [("tcp", tcp(&s.tcp)), ("tls", tls(&s.tcp))] {
                let _ = writeln!(
                    o,
                    "{name}{{worker=\"{}\",transport=\"{transport}\"}} {v}",
                    s.worker
                );
            }
        }
    }
    let name = "uturn_tcp_connections_closed_total";
    let _ = writeln!(
        o,
        "# HELP {name} Client connections closed, by reason.\n# TYPE {name} counter"
    );
    for s in snaps {
        let t = &s.tcp;
        for (reason, v) in [
            ("client", t.closed_by_client),
            ("timeout", t.closed_timeout),
            ("overflow", t.closed_overflow),
            ("error", t.closed_error),
            ("limit", t.closed_limit),
        ] {
            let _ = writeln!(
                o,
                "{name}{{worker=\"{}\",reason=\"{reason}\"}} {v}",
                s.worker
            );
        }
    }
    let name = "uturn_tcp_handoffs_total";
    let _ = writeln!(
        o,
        "# HELP {name} RFC 6062 data connections moved between workers.\n# TYPE {name} counter"
    );
    for s in snaps {
        for (dir, v) in [("out", s.tcp.handed_off), ("in", s.tcp.taken_over)] {
            let _ = writeln!(
                o,
                "{name}{{worker=\"{}\",direction=\"{dir}\"}} {v}",
                s.worker
            );
        }
    }
    type Any = fn(&Snapshot) -> u64;
    let plain: [(&str, &str, &str, Any); 9] = [
        (
            "uturn_tls_handshakes_total",
            "TLS handshakes completed.",
            "counter",
            |s| s.tcp.tls_handshakes,
        ),
        (
            "uturn_tls_failures_total",
            "TLS connections closed on a TLS error.",
            "counter",
            |s| s.tcp.tls_failures,
        ),
        (
            "uturn_tcp_peer_connections_active",
            "RFC 6062 peer data connections open now.",
            "gauge",
            |s| s.stats.tcp_connections_active,
        ),
        (
            "uturn_tcp_peer_connections_total",
            "RFC 6062 peer data connections made or accepted.",
            "counter",
            |s| s.stats.tcp_connections_total,
        ),
        (
            "uturn_tcp_peer_connections_refused_total",
            "Peer connections to relayed addresses refused (no permission, policy, quota).",
            "counter",
            |s| s.stats.tcp_connections_refused,
        ),
        (
            "uturn_tcp_spliced_active",
            "Client data connections spliced with a peer now.",
            "gauge",
            |s| s.tcp.spliced,
        ),
        (
            "uturn_tcp_spliced_bytes_total",
            "Bytes copied between spliced connections.",
            "counter",
            |s| s.tcp.spliced_bytes,
        ),
        (
            "uturn_driver_stream_refused_bytes_total",
            "Bytes a full connection output queue refused.",
            "counter",
            |s| s.streams.refused_bytes,
        ),
        (
            "uturn_driver_stream_linger_expired_total",
            "Connections closed with output still queued after the linger time.",
            "counter",
            |s| s.streams.linger_expired,
        ),
    ];
    for (name, help, kind, f) in plain {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in snaps {
            let _ = writeln!(o, "{name}{{worker=\"{}\"}} {}", s.worker, f(s));
        }
    }
}
