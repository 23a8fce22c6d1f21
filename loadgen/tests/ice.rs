//! loadgen's ICE mode against the real relay (`target/<profile>/uturn` on free loopback ports,
//! see `common/mod.rs`): hundreds of agents, the NAT matrix, chaos and the relay-only policy.
//! Rates are moderate so that a debug build passes on a 2-core CI machine.

mod common;

use std::process::Command;

use common::*;
use loadgen::run;

#[test]
fn two_hundred_agents_connect_host_to_host_and_stream_without_loss() {
    let _g = serial();
    let relay = Relay::start();
    let pid = relay.pid().to_string();
    let json = temp("ice-200.json");
    let mut c = config(
        relay.addr,
        &[
            "--mode",
            "ice",
            "--agents",
            "200",
            "--duration",
            "3s",
            "--ramp",
            "1s",
            "--rate",
            "20",
            "--server-pid",
            &pid,
        ],
    );
    c.json = Some(json.clone());
    let out = run::run(&c).unwrap();
    let r = &out.report;
    eprintln!("{}", r.summary());
    assert_eq!(r.mode, "ice");
    assert_eq!(r.agents.connected, 200, "{:?}", r.agents.failures);
    assert!(r.agents.errors.is_empty(), "{:?}", r.agents.errors);
    // On loopback without NATs the host pair is the best and it works.
    assert_eq!(r.candidates.selected.host, 200);
    // Every agent still gathered through the relay: a Binding and an allocation each.
    assert_eq!(r.allocation_ms.count, 200);
    assert_eq!(r.ice.setup_ms.count, 200);
    let t = &r.traffic;
    // 200 agents x 20 pps x 3 s in the window alone.
    assert!(t.sent >= 12_000, "sent {}", t.sent);
    assert_eq!(t.lost, 0, "lost {} of {}", t.lost, t.sent);
    assert_eq!(t.foreign + t.duplicated, 0);
    let server = r.server.as_ref().unwrap();
    assert_eq!(
        (server.relay_hops_per_packet, server.relay_hops_mean),
        (0, 0.0)
    );
    assert_eq!(
        server.packets_per_cpu_second, 0.0,
        "no media crossed the relay"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v.pointer("/mode").unwrap(), "ice");
    assert_eq!(v.pointer("/candidates/selected/host").unwrap(), 200);
    assert!(v.pointer("/matrix").unwrap().is_null());
}

#[test]
fn two_hundred_agents_behind_mixed_nats_take_every_kind_of_path() {
    let _g = serial();
    let relay = Relay::start();
    let c = config(
        relay.addr,
        &[
            "--mode",
            "ice",
            "--agents",
            "200",
            "--duration",
            "3s",
            "--ramp",
            "1s",
            "--rate",
            "20",
            "--nat",
            "mix",
            "--setup-timeout",
            "15s",
        ],
    );
    let out = run::run(&c).unwrap();
    let r = &out.report;
    eprintln!("{}", r.summary());
    assert_eq!(r.agents.connected, 200, "{:?}", r.agents.failures);
    let s = &r.candidates.selected;
    // Nine behaviours drawn at random for 200 networks: direct paths of both kinds and relays
    // all occur; no host pair crosses two LANs.
    assert_eq!(s.host, 0);
    assert!(s.srflx > 0 && s.prflx > 0 && s.relay > 0, "{s:?}");
    assert!(
        r.traffic.loss_ratio < 0.001,
        "{} of {}",
        r.traffic.lost,
        r.traffic.sent
    );
    // Real sockets on the NATs' public side, and the NATs' filtering at work.
    assert!(out.fabric.nat_sockets_opened >= 200);
    assert!(out.fabric.filtered > 0);
}

#[test]
fn relay_policy_sends_everything_through_the_relay() {
    let _g = serial();
    let relay = Relay::start();
    let pid = relay.pid().to_string();
    let c = config(
        relay.addr,
        &[
            "--mode",
            "ice",
            "--agents",
            "40",
            "--duration",
            "2s",
            "--ramp",
            "500ms",
            "--policy",
            "relay",
            "--nat",
            "full-cone",
            "--server-pid",
            &pid,
        ],
    );
    let out = run::run(&c).unwrap();
    let r = &out.report;
    assert_eq!(r.agents.connected, 40, "{:?}", r.agents.failures);
    assert_eq!(r.candidates.selected.relay, 40);
    let server = r.server.as_ref().unwrap();
    assert_eq!(
        (server.relay_hops_per_packet, server.relay_hops_mean),
        (2, 2.0)
    );
    assert!(server.cpu_seconds > 0.0);
    assert!(r.traffic.loss_ratio < 0.001, "{}", r.traffic.loss_ratio);
}

#[test]
fn the_nat_matrix_matches_theory_and_says_so() {
    let _g = serial();
    let relay = Relay::start();
    let json = temp("matrix.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--server",
            &relay.addr.to_string(),
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:{PASS}"),
            "--mode",
            "ice",
            "--nat-matrix",
            "--duration",
            "2s",
            "--ramp",
            "1s",
            "--rate",
            "10",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("matrix: all 91 pairs as theory predicts"),
        "{stdout}"
    );
    assert!(
        stdout.contains("requested 182  connected 182  failed 0"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v.pointer("/matrix/rows").unwrap().as_array().unwrap();
    assert_eq!(rows.len(), 91);
    for row in rows {
        assert_eq!(row["ok"], true, "{row}");
    }
    // The three landmarks of the issue.
    let path = |a: &str, b: &str| {
        rows.iter()
            .find(|r| r["a_nat"] == a && r["b_nat"] == b)
            .map(|r| r["path"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(path("eim-eif (one LAN)", "eim-eif (one LAN)"), "host");
    assert_eq!(path("eim-eif", "eim-eif"), "direct");
    assert_eq!(path("apdm-apdf", "apdm-apdf"), "relay");
}

#[test]
fn chaos_breaks_paths_and_ice_restarts_recover_them() {
    let _g = serial();
    let relay = Relay::start();
    let c = config(
        relay.addr,
        &[
            "--mode",
            "ice",
            "--agents",
            "40",
            "--duration",
            "8s",
            "--ramp",
            "500ms",
            "--rate",
            "20",
            "--nat",
            "port-restricted",
            "--chaos",
            "--consent-timeout",
            "2s",
        ],
    );
    let out = run::run(&c).unwrap();
    let r = &out.report;
    eprintln!("{}", r.summary());
    assert_eq!(r.agents.connected, 40, "{:?}", r.agents.failures);
    // Halfway through every NAT forgets its mappings (and every other pair loses its
    // keepalives too): consent runs out on every pair, both agents restart, and they connect
    // again on new mappings well before the end.
    assert_eq!(out.fabric.nat_sockets_closed, 40);
    assert_eq!(r.ice.recovered, 20, "{:?}", r.ice);
    assert_eq!(r.ice.restarts, 40);
    assert!(r.ice.recovery_ms.max < 2000, "{:?}", r.ice.recovery_ms);
    // What was sent into the dead mappings until consent ran out was lost; the rest arrived.
    assert!(r.traffic.lost > 0);
    assert!(r.traffic.loss_ratio < 0.5, "{}", r.traffic.loss_ratio);
}
