//! Whole workers of ICE agents on the simulated network of [`super::sim`]: the real worker,
//! fabric, NAT emulator, ICE agents and TURN server, on a simulated clock.

use std::sync::Arc;
use std::time::Duration;

use super::matrix::{self, Case, Matrix, Path};
use super::sim::{Sim, SimConfig};
use super::Placement;
use crate::nat::{Filtering, Mapping, NatBehavior, NatSpec, DEFAULT_TIMEOUT};
use crate::stats::CandidateType;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn matrix_run(cases: Vec<Case>, policy: uturn_ice::Policy) -> (Sim, Matrix) {
    let n = cases.len();
    let cases: Arc<[Case]> = cases.into();
    let mut c = SimConfig::new(Placement::Matrix(cases.clone()), n);
    c.policy = policy;
    let mut sim = Sim::new(c);
    assert!(
        sim.run_until(SECS(60), |s| s.pair_outcomes.len() == n),
        "only {} of {n} pairs decided",
        sim.pair_outcomes.len()
    );
    let m = Matrix::build(
        &cases,
        policy == uturn_ice::Policy::RelayOnly,
        &sim.pair_outcomes,
    );
    (sim, m)
}

#[test]
fn every_nat_combination_connects_as_theory_predicts() {
    let (mut sim, m) = matrix_run(matrix::cases(DEFAULT_TIMEOUT), uturn_ice::Policy::All);
    let table = m.table();
    assert_eq!(m.mismatches(), 0, "\n{table}");
    // Every pair connected, and each of the three paths occurs.
    for p in [Path::Host, Path::Direct, Path::Relay] {
        assert!(m.rows.iter().any(|r| r.path == Some(p)), "{p:?}\n{table}");
    }
    // Setup is quick on this 2 ms network: at most a nomination delay and a few round trips
    // beyond the checks' own retransmissions.
    let slowest = m.rows.iter().filter_map(|r| r.setup_ms).max().unwrap();
    assert!(slowest < 4000, "{slowest} ms\n{table}");
    // Media flowed on every pair, whatever its path, and the run ends with every allocation
    // deleted.
    sim.run_to_end();
    let (stats, _) = sim.stats.as_ref().unwrap();
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    assert_eq!(stats.traffic.lost(), 0);
    assert!(stats.traffic.unique > 0);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(sim.server.stats().allocations_active, 0);
}

#[test]
fn relay_policy_relays_every_combination() {
    let t = DEFAULT_TIMEOUT;
    let mut cases = vec![Case::NoNat];
    cases.extend(NatBehavior::all(t).into_iter().map(Case::SameLan));
    let full = NatBehavior::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
    cases.extend(
        NatBehavior::all(t)
            .into_iter()
            .map(|b| Case::Apart { a: full, b }),
    );
    let (mut sim, m) = matrix_run(cases, uturn_ice::Policy::RelayOnly);
    assert_eq!(m.mismatches(), 0, "\n{}", m.table());
    for r in &m.rows {
        // Relayed on both ends: nothing but relayed candidates was signalled.
        assert_eq!(r.a.unwrap().local, CandidateType::Relay, "{r:?}");
        assert_eq!(r.b.unwrap().local, CandidateType::Relay, "{r:?}");
    }
    assert!(sim
        .scenario()
        .signalled
        .iter()
        .all(|l| !l.contains("typ host") && !l.contains("typ srflx")));
    sim.run_to_end();
    let (stats, _) = sim.stats.as_ref().unwrap();
    assert_eq!(stats.relay_hops, 2 * stats.connected);
    assert_eq!(stats.traffic.lost(), 0);
}

#[test]
fn mdns_names_hide_private_addresses_and_resolve_on_one_lan_only() {
    let b = NatBehavior::new(Mapping::EndpointIndependent, Filtering::AddressDependent);
    let (sim, m) = matrix_run(
        vec![Case::SameLan(b), Case::Apart { a: b, b }],
        uturn_ice::Policy::All,
    );
    assert_eq!(m.mismatches(), 0, "\n{}", m.table());
    let lines = &sim.scenario().signalled;
    let hosts: Vec<&String> = lines.iter().filter(|l| l.contains("typ host")).collect();
    assert_eq!(hosts.len(), 4, "{lines:?}");
    for l in &hosts {
        assert!(l.contains(".local 5000 typ host"), "{l}");
    }
    // No private address anywhere in the signalling, not even as a related address.
    assert!(lines.iter().all(|l| !l.contains(" 10.")), "{lines:?}");
    // The pair apart could not resolve each other's names; the pair on one LAN could.
    assert_eq!(sim.scenario().counters().mdns_unresolved, 2);
    assert_eq!(m.rows[0].path, Some(Path::Host));
}

#[test]
fn agents_behind_each_nat_stream_without_loss() {
    for b in NatBehavior::all(DEFAULT_TIMEOUT) {
        let mut sim = Sim::new(SimConfig::new(Placement::Each(NatSpec::Fixed(b)), 3));
        sim.run_to_end();
        let (stats, fabric) = sim.stats.as_ref().unwrap();
        assert_eq!(
            (stats.connected, stats.failed),
            (6, 0),
            "{b}: {:?}",
            stats.failures
        );
        // 6 agents x 20 pps x 5 s, less the time to connect (a relayed pair waits for the
        // nomination delay, 1 s).
        assert!(
            stats.traffic.sent >= 6 * 20 * 3,
            "{b}: {}",
            stats.traffic.sent
        );
        assert_eq!(stats.traffic.lost(), 0, "{b}");
        assert_eq!(stats.setup_ms.count(), 6);
        assert_eq!(stats.allocation_ms.count(), 6, "{b}");
        assert!(fabric.nat_sockets_opened >= 6, "{b}: {fabric:?}");
        assert_eq!(sim.server.stats().allocations_active, 0, "{b}");
    }
}

#[test]
fn without_nat_agents_connect_host_to_host_on_loopback() {
    let mut sim = Sim::new(SimConfig::new(Placement::Each(NatSpec::None), 4));
    sim.run_to_end();
    let (stats, fabric) = sim.stats.as_ref().unwrap();
    assert_eq!(stats.connected, 8);
    assert_eq!(stats.candidates.host, 8);
    assert_eq!(stats.relay_hops, 0);
    assert_eq!(fabric.nat_sockets_opened, 0);
    assert_eq!(stats.traffic.lost(), 0);
    assert!(
        stats.setup_ms.quantile(1.0) < 500,
        "{}",
        stats.setup_ms.quantile(1.0)
    );
    // Host candidates are plain loopback addresses here: there is no LAN to hide.
    assert!(sim
        .scenario()
        .signalled
        .iter()
        .any(|l| l.contains("127.0.0.1") && l.contains("typ host")));
}

#[test]
fn the_matrix_holds_whatever_the_seed() {
    // The live run draws its seeds: ICE's transaction ids, credentials and consent jitter, the
    // NATs' ports. The outcome must not depend on them.
    for seed in [1, 2, 3] {
        let cases: Arc<[Case]> = matrix::cases(DEFAULT_TIMEOUT).into();
        let n = cases.len();
        let mut c = SimConfig::new(Placement::Matrix(cases.clone()), n);
        c.seed = seed;
        c.spacing = Duration::from_millis(1);
        let mut sim = Sim::new(c);
        assert!(sim.run_until(SECS(60), |s| s.pair_outcomes.len() == n));
        let m = Matrix::build(&cases, false, &sim.pair_outcomes);
        assert_eq!(m.mismatches(), 0, "seed {seed}\n{}", m.table());
    }
}

/// Runs `pairs` pairs with media for `duration`, chaos at `chaos_at`, and returns the sim.
fn chaos_run(placement: Placement, pairs: usize, chaos_at: u64, duration: u64) -> Sim {
    let mut c = SimConfig::new(placement, pairs);
    c.duration = SECS(duration);
    c.chaos_at = Some(SECS(chaos_at));
    let mut sim = Sim::new(c);
    sim.run_to_end();
    sim
}

#[test]
fn dropped_keepalives_lose_consent_and_the_pair_restarts_and_recovers() {
    // No NAT: the only chaos is the keepalives of the odd pairs (1 and 3).
    let sim = chaos_run(Placement::Each(NatSpec::None), 4, 3, 20);
    let (stats, _) = sim.stats.as_ref().unwrap();
    assert_eq!((stats.connected, stats.failed), (8, 0));
    assert!(sim.scenario().counters().keepalives_dropped > 0);
    // One agent of each blacked-out pair lost consent (6 s after its last answer) and both
    // restarted together, before the partner's own consent ran out; the others never noticed.
    assert_eq!(stats.ice_disconnects, 2);
    assert_eq!(
        stats.ice_restarts, 4,
        "one restart per agent of the two pairs"
    );
    assert_eq!(stats.ice_recovered, 2);
    // Recovery is measured from the first agent losing its path: a host pair on loopback
    // reconnects within a few check rounds.
    assert!(
        stats.recovery_ms.quantile(1.0) < 1000,
        "{}",
        stats.recovery_ms.quantile(1.0)
    );
    // Media flowed all along (the keepalives were the only casualty), except while the two
    // pairs were restarting: those probes could not be sent at all, and none was lost.
    assert_eq!(stats.traffic.lost(), 0);
    assert!(stats.traffic.send_failed > 0);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
}

#[test]
fn nat_mapping_expiry_breaks_every_pair_and_restarts_recover_them() {
    let b = NatBehavior::new(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
    );
    let sim = chaos_run(Placement::Each(NatSpec::Fixed(b)), 4, 4, 30);
    let (stats, fabric) = sim.stats.as_ref().unwrap();
    assert_eq!((stats.connected, stats.failed), (8, 0));
    // Every NAT forgot its mappings and closed their sockets: the partner's datagrams to the
    // old public ports go nowhere, consent is lost, every pair restarts and reconnects on new
    // mappings.
    assert_eq!(fabric.nat_sockets_closed, 8, "{fabric:?}");
    assert!(sim.unrouted > 0);
    assert_eq!(stats.ice_recovered, 4);
    assert_eq!(stats.ice_restarts, 8);
    // Lost: what was sent into the dead mappings before consent ran out (6 s here).
    let lost = stats.traffic.lost();
    assert!(lost > 0 && lost < 8 * 20 * 8, "{lost}");
    // New srflx candidates after the restart: the agents kept streaming afterwards.
    assert!(
        stats.traffic.unique > 8 * 20 * 20,
        "{}",
        stats.traffic.unique
    );
}

#[test]
fn a_relay_restart_is_survived_by_ice_restarts() {
    let mut c = SimConfig::new(Placement::Each(NatSpec::None), 3);
    c.policy = uturn_ice::Policy::RelayOnly;
    c.duration = SECS(30);
    let mut sim = Sim::new(c);
    assert!(sim.run_until(SECS(5), |s| (0..6)
        .all(|a| s.scenario().state(a) == Some(uturn_ice::State::Connected))));
    let before = sim.server.stats().allocations_total;
    sim.restart_relay();
    sim.run_to_end();
    let (stats, _) = sim.stats.as_ref().unwrap();
    // The relay forgot every allocation: consent was lost, the restarts' Refresh probes met
    // 437, and the agents allocated again and connected through the new allocations.
    assert_eq!(stats.ice_recovered, 3);
    assert_eq!(stats.connected, 6);
    assert!(sim.server.stats().allocations_total >= 6, "{before}");
    assert_eq!(
        sim.server.stats().allocations_active,
        0,
        "deleted at the end"
    );
    assert!(stats.traffic.unique > 6 * 20 * 15);
}

#[test]
fn agents_that_reach_nothing_fail_with_a_reason() {
    let mut c = SimConfig::new(Placement::Each(NatSpec::None), 2);
    c.setup_timeout = SECS(5);
    let mut sim = Sim::new(c);
    sim.drop = Box::new(|_, _| true);
    sim.run_to_end();
    let (stats, _) = sim.stats.as_ref().unwrap();
    assert_eq!((stats.connected, stats.failed), (0, 4));
    assert_eq!(
        stats.failures.get("setup timeout"),
        Some(&4),
        "{:?}",
        stats.failures
    );
}
