//! loadgen against the real relay (turn-only mode): `target/<profile>/uturn` started on free
//! loopback ports with `--allow-loopback-peers` (see `common/mod.rs`), driven through loadgen's
//! library entry point (and, for the exit codes, its binary).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use loadgen::preflight::PreflightError;
use loadgen::run::{self, RunError};

#[test]
fn two_hundred_clients_relay_to_each_other_without_loss() {
    let _g = serial();
    let relay = Relay::start();
    let json = temp("200.json");
    let svg = temp("200.svg");
    let pid = relay.pid().to_string();
    let mut c = config(
        relay.addr,
        &[
            "--agents",
            "200",
            "--duration",
            "3s",
            "--ramp",
            "500ms",
            "--rate",
            "50",
            "--threads",
            "2",
            "--server-pid",
            &pid,
        ],
    );
    c.json = Some(json.clone());
    c.plot = Some(svg.clone());
    let out = run::run(&c).unwrap();
    let r = &out.report;
    eprintln!("{}", r.summary());
    assert_eq!(r.agents.requested, 200);
    assert_eq!(r.agents.connected, 200, "{:?}", r.agents.failures);
    assert_eq!(r.agents.failed, 0);
    assert_eq!(r.candidates.selected.relay, 200);
    let t = &r.traffic;
    // 200 agents x 50 pps x 3 s in the window alone.
    assert!(t.sent >= 25_000, "sent {}", t.sent);
    assert!(t.loss_ratio < 0.001, "loss {} of {}", t.lost, t.sent);
    assert_eq!(t.foreign, 0);
    assert_eq!(t.duplicated, 0);
    assert!(r.latency_us.count >= t.unique && r.latency_us.p50 > 0);
    assert!(r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max);
    assert_eq!(r.ice.setup_ms.count, 200);
    assert_eq!(r.allocation_ms.count, 200);
    assert!(r.throughput.pps > 5000.0, "{}", r.throughput.pps);
    let server = r.server.as_ref().expect("--server-pid measured");
    assert!(server.cpu_seconds > 0.0 && server.packets_per_cpu_second > 0.0);
    assert!(r.generator.cpu_seconds > 0.0);
    assert!(r.timeline.len() >= 3);
    assert!(r.timeline.iter().any(|s| s.pps > 5000));

    // The JSON on disk has the documented keys with the same figures.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "/agents/requested",
        "/agents/connected",
        "/agents/failed",
        "/ice/setup_ms/p50",
        "/ice/setup_ms/p99",
        "/ice/setup_ms/max",
        "/candidates/selected/host",
        "/candidates/selected/srflx",
        "/candidates/selected/prflx",
        "/candidates/selected/relay",
        "/traffic/sent",
        "/traffic/received",
        "/traffic/lost",
        "/latency_us/p50",
        "/latency_us/p99",
        "/latency_us/p999",
        "/throughput/pps",
        "/ice/restarts",
        "/server/cpu_seconds",
        "/server/packets_per_cpu_second",
    ] {
        assert!(v.pointer(key).is_some(), "JSON lacks {key}");
    }
    assert_eq!(v.pointer("/agents/connected").unwrap(), 200);
    assert_eq!(v.pointer("/traffic/sent").unwrap(), t.sent);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"));
}

#[test]
fn clients_behind_symmetric_nats_relay_through_real_nat_sockets() {
    let _g = serial();
    let relay = Relay::start();
    let c = config(
        relay.addr,
        &[
            "--agents",
            "20",
            "--duration",
            "2s",
            "--ramp",
            "0s",
            "--nat",
            "apdm-apdf",
            "--threads",
            "1",
        ],
    );
    let out = run::run(&c).unwrap();
    let r = &out.report;
    assert_eq!(r.agents.connected, 20, "{:?}", r.agents.failures);
    assert!(
        r.traffic.loss_ratio < 0.01,
        "{} of {}",
        r.traffic.lost,
        r.traffic.sent
    );
    // One public socket per client (its only destination is the server), all on 127.x.y.z
    // addresses of their own, and nothing dropped by the emulated NATs.
    assert_eq!(out.fabric.nat_sockets_opened, 20);
    assert_eq!(
        out.fabric.filtered + out.fabric.no_mapping + out.fabric.unreachable,
        0
    );
}

#[test]
fn chaos_drops_nat_mappings_and_the_loss_shows() {
    let _g = serial();
    let relay = Relay::start();
    let c = config(
        relay.addr,
        &[
            "--agents",
            "10",
            "--duration",
            "2s",
            "--ramp",
            "0s",
            "--nat",
            "eim-eif",
            "--chaos",
            "--threads",
            "1",
        ],
    );
    let out = run::run(&c).unwrap();
    let r = &out.report;
    assert_eq!(r.agents.connected, 10);
    // Halfway through, every client's NAT forgets its mapping: its next datagram leaves from a
    // new public port, a 5-tuple the relay has no allocation for, so the rest is lost.
    assert_eq!(out.fabric.nat_sockets_closed, 10);
    assert_eq!(out.fabric.nat_sockets_opened, 20);
    assert!(r.traffic.loss_ratio > 0.2, "{}", r.traffic.loss_ratio);
}

#[test]
fn bad_credentials_fail_fast_with_a_clear_message() {
    let _g = serial();
    let relay = Relay::start();
    let mut c = config(relay.addr, &["--agents", "2", "--duration", "1s"]);
    c.credentials.password = "wrong".into();
    let t = Instant::now();
    let e = run::run(&c).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        matches!(
            e,
            RunError::Preflight(PreflightError::BadCredentials { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("bad credentials"), "{e}");

    // The binary: exit status 1 and the message on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--server",
            &relay.addr.to_string(),
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:wrong"),
            "--agents",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad credentials"), "{stderr}");
}

#[test]
fn an_unreachable_server_fails_within_seconds() {
    let _g = serial();
    let port = free_udp_port();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--server",
            &format!("127.0.0.1:{port}"),
            "--realm",
            REALM,
            "--user",
            "a:b",
            "--agents",
            "2",
        ])
        .output()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        stderr.contains("refused") || stderr.contains("no answer"),
        "{stderr}"
    );
}

#[test]
fn the_binary_runs_a_small_load_and_writes_its_outputs() {
    let _g = serial();
    let relay = Relay::start();
    let json = temp("bin.json");
    let svg = temp("bin.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--server",
            &relay.addr.to_string(),
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:{PASS}"),
            "--agents",
            "9",
            "--duration",
            "1s",
            "--ramp",
            "200ms",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("rounded up to 10"), "{stderr}");
    assert!(
        stdout.contains("requested 10  connected 10  failed 0"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v.pointer("/agents/requested").unwrap(), 10);
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}
