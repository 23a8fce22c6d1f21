//! Two agents in memory (see `net/mod.rs`): each test sets up a network, lets the agents find
//! each other, and checks one behaviour of RFC 8445 / RFC 7675 end to end, with a real TURN
//! server where relays are involved.

mod net;

use std::time::Duration;

use net::{Net, Spec, RELAY_IP};
use uturn_ice::{
    candidate_priority, Address, CandidateKind, Event, Policy, SelectedPair, SendError, State,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn selected(net: &Net, i: usize) -> SelectedPair {
    net.hosts[i]
        .agent
        .selected_pair()
        .expect("a pair is selected")
}

/// Sends a message each way and checks it arrives intact.
fn exchange_data(net: &mut Net) {
    for i in 0..2 {
        let msg = format!("hello from {i}").into_bytes();
        assert!(net.send_data(i, &msg), "agent {i} can send");
        let other = 1 - i;
        let before = net.hosts[other].received.len();
        net.run_for(Duration::from_millis(50));
        let got = &net.hosts[other].received;
        assert_eq!(got.len(), before + 1, "agent {other} received one datagram");
        assert_eq!(got[before].1, msg);
        // The source is the peer's address on the selected pair.
        assert_eq!(got[before].0, selected(net, other).remote);
    }
}

#[test]
fn host_pair_connects_on_one_lan() {
    let mut net = Net::new([Spec::new(true), Spec::new(false)]);
    assert!(net.run_until(SECS(5), Net::both_connected));
    // Host to host in well under a second: a few Ta plus round trips.
    for h in &net.hosts {
        assert_eq!(h.connected_at().len(), 1);
        assert!(
            h.connected_at()[0] < Duration::from_millis(500),
            "{:?}",
            h.connected_at()
        );
    }
    for i in 0..2 {
        let s = selected(&net, i);
        assert_eq!(
            (s.local_kind, s.remote_kind),
            (CandidateKind::Host, CandidateKind::Host)
        );
        assert_eq!(s.local, net.hosts[i].base);
        assert_eq!(s.remote, net.hosts[1 - i].base);
    }
    assert!(net.hosts[0].agent.is_controlling());
    assert!(!net.hosts[1].agent.is_controlling());
    assert_eq!(net.hosts[0].agent.stats().role_conflicts, 0);
    exchange_data(&mut net);
}

#[test]
fn signalled_candidates_carry_rfc_priorities() {
    let mut spec = [Spec::new(true), Spec::new(false)];
    for (i, s) in spec.iter_mut().enumerate() {
        s.lan = i as u8 + 1;
        s.nat = true;
        s.servers = true;
    }
    let mut net = Net::new(spec);
    assert!(net.run_until(SECS(10), Net::both_connected));
    let cands = net.hosts[0].local_candidates();
    let kinds: Vec<CandidateKind> = cands.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        vec![
            CandidateKind::Host,
            CandidateKind::ServerReflexive,
            CandidateKind::Relayed
        ]
    );
    for c in &cands {
        // One socket: local preference 65535, component 1 (RFC 8445 section 5.1.2.1).
        assert_eq!(c.priority, candidate_priority(c.kind, 65535, 1), "{c:?}");
        assert_eq!(c.component, 1);
    }
    let host = &cands[0];
    assert_eq!(host.socket_addr(), Some(net.hosts[0].base));
    let srflx = &cands[1];
    assert_eq!(srflx.socket_addr(), net.hosts[0].public);
    assert_eq!(srflx.related, Some(net.hosts[0].base));
    let relay = &cands[2];
    assert_eq!(relay.address, Address::Ip(RELAY_IP.into()));
    assert_eq!(
        relay.related, net.hosts[0].public,
        "raddr of a relay is its mapped address"
    );
    // Foundations differ by type.
    assert_ne!(host.foundation, srflx.foundation);
    assert_ne!(srflx.foundation, relay.foundation);
    assert_eq!(net.hosts[0].count(|e| *e == Event::GatheringDone), 1);

    // Across two NATs the host candidates are useless; the server-reflexive path wins, and the
    // NAT's address the peer saw is the server-reflexive candidate the agent gathered.
    for i in 0..2 {
        let s = selected(&net, i);
        assert_eq!(s.local_kind, CandidateKind::ServerReflexive, "agent {i}");
        assert_eq!(s.remote_kind, CandidateKind::ServerReflexive, "agent {i}");
        assert_eq!(s.local, net.hosts[i].public.unwrap());
        assert_eq!(s.base, net.hosts[i].base);
    }
    exchange_data(&mut net);
}

#[test]
fn role_conflict_both_controlling_is_resolved_by_tie_breaker() {
    let mut a = Spec::new(true);
    let mut b = Spec::new(true);
    a.tie_breaker = Some(10);
    b.tie_breaker = Some(20);
    let mut net = Net::new([a, b]);
    assert!(net.run_until(SECS(5), Net::both_connected));
    // RFC 8445 section 7.3.1.1: the larger tie-breaker stays controlling.
    assert!(!net.hosts[0].agent.is_controlling());
    assert!(net.hosts[1].agent.is_controlling());
    let conflicts: u64 = net
        .hosts
        .iter()
        .map(|h| h.agent.stats().role_conflicts)
        .sum();
    assert!(conflicts >= 1, "a 487 was sent or received");
    assert_eq!(
        selected(&net, 0).remote,
        selected(&net, 1).local,
        "both chose the same pair"
    );
    exchange_data(&mut net);
}

#[test]
fn role_conflict_both_controlled_is_resolved_by_tie_breaker() {
    let mut a = Spec::new(false);
    let mut b = Spec::new(false);
    a.tie_breaker = Some(7);
    b.tie_breaker = Some(3);
    a.seed = 11;
    b.seed = 12;
    let mut net = Net::new([a, b]);
    assert!(net.run_until(SECS(5), Net::both_connected));
    assert!(net.hosts[0].agent.is_controlling());
    assert!(!net.hosts[1].agent.is_controlling());
    exchange_data(&mut net);
}

#[test]
fn peer_reflexive_candidate_is_learned_from_checks() {
    let mut spec = [Spec::new(true), Spec::new(false)];
    for (i, s) in spec.iter_mut().enumerate() {
        s.lan = i as u8 + 1;
        s.nat = true;
        s.servers = true;
    }
    let mut net = Net::new(spec);
    // Agent 0 hears only of agent 1's (unreachable) host candidate: it can only learn agent
    // 1's NAT address from agent 1's checks (RFC 8445 section 7.3.1.3). No relays either, to
    // keep the direct path the only one.
    net.signal = Box::new(|to, c| match to {
        0 => c.kind == CandidateKind::Host,
        _ => c.kind != CandidateKind::Relayed,
    });
    assert!(net.run_until(SECS(10), Net::both_connected));
    let s = selected(&net, 0);
    assert_eq!(s.remote_kind, CandidateKind::PeerReflexive);
    assert_eq!(s.remote, net.hosts[1].public.unwrap());
    assert!(net.hosts[0].agent.stats().peer_reflexive >= 1);
    exchange_data(&mut net);
}

#[test]
fn mdns_host_candidates_resolve_on_the_same_lan_only() {
    // Same LAN: the names resolve and the host pair connects.
    let mut spec = [Spec::new(true), Spec::new(false)];
    for s in &mut spec {
        s.mdns = true;
    }
    let mut net = Net::new(spec);
    assert!(net.run_until(SECS(5), Net::both_connected));
    for i in 0..2 {
        let line = &net.hosts[i].lines[0];
        assert!(line.contains(".local 5000 typ host"), "{line}");
        assert!(
            !line.contains("10.0."),
            "the private address stays private: {line}"
        );
        let s = selected(&net, i);
        assert_eq!(
            (s.local_kind, s.remote_kind),
            (CandidateKind::Host, CandidateKind::Host)
        );
    }

    // Different LANs behind NATs: the names do not resolve, the srflx path is used instead,
    // and the srflx candidate hides its base as browsers do.
    let mut spec = [Spec::new(true), Spec::new(false)];
    for (i, s) in spec.iter_mut().enumerate() {
        s.mdns = true;
        s.lan = i as u8 + 1;
        s.nat = true;
        s.servers = true;
    }
    let mut net = Net::new(spec);
    assert!(net.run_until(SECS(10), Net::both_connected));
    for i in 0..2 {
        assert!(
            net.hosts[i].lines.iter().all(|l| !l.contains("10.0.")),
            "{:?}",
            net.hosts[i].lines
        );
        let srflx = net.hosts[i]
            .local_candidates()
            .into_iter()
            .find(|c| c.kind == CandidateKind::ServerReflexive)
            .unwrap();
        assert_eq!(srflx.related, Some("0.0.0.0:0".parse().unwrap()));
        assert_eq!(
            selected(&net, i).remote_kind,
            CandidateKind::ServerReflexive
        );
    }
}

#[test]
fn relay_only_policy_connects_through_the_relay() {
    let mut spec = [Spec::new(true), Spec::new(false)];
    for (i, s) in spec.iter_mut().enumerate() {
        s.lan = i as u8 + 1;
        s.nat = true;
        s.servers = true;
        s.policy = Policy::RelayOnly;
    }
    let mut net = Net::new(spec);
    assert!(net.run_until(SECS(10), Net::both_connected));
    for i in 0..2 {
        // Only the relayed candidate is signalled: no host or NAT address leaks.
        let kinds: Vec<CandidateKind> = net.hosts[i]
            .local_candidates()
            .iter()
            .map(|c| c.kind)
            .collect();
        assert_eq!(kinds, vec![CandidateKind::Relayed], "agent {i}");
        let s = selected(&net, i);
        assert_eq!(
            (s.local_kind, s.remote_kind),
            (CandidateKind::Relayed, CandidateKind::Relayed)
        );
        assert_eq!(s.local.ip(), RELAY_IP);
        assert_eq!(s.remote.ip(), RELAY_IP);
    }
    // Let the ChannelBind complete, then data goes as ChannelData through the relay.
    net.run_for(Duration::from_millis(100));
    let before = net.channel_data_to_server;
    let relayed_before = net.server.stats().packets_to_peer;
    exchange_data(&mut net);
    assert_eq!(
        net.channel_data_to_server,
        before + 2,
        "both sides use their channel"
    );
    assert!(net.server.stats().packets_to_peer >= relayed_before + 2);
    assert_eq!(net.server.stats().channels_active, 2);

    // The TURN client keeps allocation, permissions and channels alive: after 15 minutes of
    // (simulated) idle with consent running, data still flows over the relay.
    net.run_for(SECS(15 * 60));
    assert!(net.both_connected());
    exchange_data(&mut net);
    assert_eq!(net.server.stats().allocations_active, 2);
}

#[test]
fn consent_loss_disconnects_after_about_30_seconds() {
    let mut net = Net::new([Spec::new(true), Spec::new(false)]);
    assert!(net.run_until(SECS(5), Net::both_connected));
    net.run_for(SECS(20));
    let cut = net.elapsed();
    net.drop = Box::new(|_| true);
    assert!(net.run_until(SECS(60), |n| n
        .hosts
        .iter()
        .all(|h| h.agent.state() == State::Disconnected)));
    for h in &net.hosts {
        let at = h.first(|e| *e == Event::Disconnected).unwrap() - cut;
        // Consent was last refreshed at most one randomized interval (6 s) before the cut and
        // lasts 30 s (RFC 7675 section 5.1).
        assert!(
            at >= SECS(24) && at <= SECS(30) + Duration::from_millis(100),
            "{at:?}"
        );
    }
    assert_eq!(
        net.hosts[0].agent.send(b"x", &mut [0; 64]),
        Err(SendError::NotConnected)
    );
    // A disconnected agent goes quiet: nothing to do until a restart.
    net.run_for(SECS(5));
    assert_eq!(net.hosts[0].agent.poll_timeout(), None);
    assert_eq!(net.hosts[1].agent.poll_timeout(), None);
}

#[test]
fn restart_reconnects_with_new_credentials() {
    let mut net = Net::new([Spec::new(true), Spec::new(false)]);
    assert!(net.run_until(SECS(5), Net::both_connected));
    let old = net.hosts[0].agent.local_credentials().clone();
    net.drop = Box::new(|_| true);
    assert!(net.run_until(SECS(40), |n| n.hosts[0].agent.state()
        == State::Disconnected));
    net.drop = Box::new(|_| false);
    net.restart_both();
    assert_ne!(net.hosts[0].agent.local_credentials(), &old);
    assert!(net.run_until(SECS(5), Net::both_connected));
    for h in &net.hosts {
        assert_eq!(h.connected_at().len(), 2);
        assert_eq!(h.agent.stats().restarts, 1);
        assert_eq!(h.count(|e| *e == Event::GatheringDone), 2);
    }
    exchange_data(&mut net);
}

#[test]
fn relay_restart_is_survived_by_an_ice_restart() {
    let mut spec = [Spec::new(true), Spec::new(false)];
    for (i, s) in spec.iter_mut().enumerate() {
        s.lan = i as u8 + 1;
        s.nat = true;
        s.servers = true;
        s.policy = Policy::RelayOnly;
    }
    let mut net = Net::new(spec);
    assert!(net.run_until(SECS(10), Net::both_connected));
    net.restart_relay();
    assert!(net.run_until(SECS(40), |n| n
        .hosts
        .iter()
        .any(|h| h.agent.state() == State::Disconnected)));
    net.restart_both();
    // The Refresh probe meets 437 (the new server has no such allocation): the agents
    // allocate again, announce the new relayed candidates and connect through them.
    assert!(net.run_until(SECS(10), Net::both_connected));
    for i in 0..2 {
        let relays: Vec<_> = net.hosts[i]
            .local_candidates()
            .into_iter()
            .filter(|c| c.kind == CandidateKind::Relayed)
            .collect();
        assert_eq!(
            relays.len(),
            2,
            "the old relay and the new one were announced"
        );
        let s = selected(&net, i);
        assert_eq!(s.local_kind, CandidateKind::Relayed);
        assert_eq!(Some(s.local), relays[1].socket_addr());
    }
    assert_eq!(net.server.stats().allocations_active, 2);
    net.run_for(Duration::from_millis(100));
    exchange_data(&mut net);
}

#[test]
fn restart_keeps_a_working_allocation() {
    let mut spec = [Spec::new(true), Spec::new(false)];
    for (i, s) in spec.iter_mut().enumerate() {
        s.lan = i as u8 + 1;
        s.nat = true;
        s.servers = true;
        s.policy = Policy::RelayOnly;
    }
    let mut net = Net::new(spec);
    assert!(net.run_until(SECS(10), Net::both_connected));
    let relay = selected(&net, 0).local;
    net.restart_both();
    assert!(net.run_until(SECS(10), Net::both_connected));
    assert_eq!(selected(&net, 0).local, relay, "same allocation");
    assert_eq!(net.server.stats().allocations_total, 2, "no new allocation");
}

#[test]
fn fails_when_no_pair_works() {
    let mut net = Net::new([Spec::new(true), Spec::new(false)]);
    // Everything between the agents is lost.
    net.drop = Box::new(|_| true);
    assert!(net.run_until(SECS(30), |n| n
        .hosts
        .iter()
        .all(|h| h.agent.state() == State::Failed)));
    for h in &net.hosts {
        assert_eq!(h.count(|e| *e == Event::Failed), 1);
        // A pair is given up after its 9.5 s retransmission schedule.
        let at = h.first(|e| *e == Event::Failed).unwrap();
        assert!(at >= Duration::from_millis(9500) && at < SECS(11), "{at:?}");
    }
}

#[test]
fn checks_are_paced_by_ta_in_priority_order() {
    use std::time::Instant;
    use uturn_ice::{Agent, AgentConfig, Candidate};
    let t0 = Instant::now();
    let mut cfg = AgentConfig::new(true, [9; 32]);
    cfg.ta = Duration::from_millis(20);
    let mut agent = Agent::new(cfg).unwrap();
    agent
        .add_host("10.0.0.1:5000".parse().unwrap(), None)
        .unwrap();
    agent.gather(t0);
    agent
        .set_remote_credentials("rfrg", "remotepassword22charsxx")
        .unwrap();
    // Five remote candidates of increasing priority, and one of another family (no pair).
    for (i, prio) in [(1u8, 100u32), (2, 500), (3, 300), (4, 900), (5, 700)] {
        let c = Candidate::parse(&format!(
            "candidate:1 1 udp {prio} 10.0.0.{} 6000 typ host",
            10 + i
        ))
        .unwrap();
        agent.add_remote_candidate(t0, &c).unwrap();
    }
    let v6 = Candidate::parse("candidate:1 1 udp 1000 2001:db8::1 6000 typ host").unwrap();
    agent.add_remote_candidate(t0, &v6).unwrap();

    let mut buf = [0u8; 1500];
    let mut first_sends: Vec<(Duration, std::net::SocketAddr)> = Vec::new();
    let mut now = t0;
    while now < t0 + Duration::from_millis(300) {
        agent.handle_timeout(now);
        while let Some(t) = agent.poll_transmit(&mut buf) {
            if !first_sends.iter().any(|(_, to)| *to == t.to) {
                first_sends.push((now - t0, t.to));
            }
        }
        now = agent.poll_timeout().unwrap();
    }
    let order: Vec<u8> = first_sends
        .iter()
        .map(|(_, to)| match to.ip() {
            std::net::IpAddr::V4(v4) => v4.octets()[3] - 10,
            std::net::IpAddr::V6(_) => 0,
        })
        .collect();
    assert_eq!(
        order,
        vec![4, 5, 2, 3, 1],
        "highest pair priority first, no IPv6 pair"
    );
    let times: Vec<u128> = first_sends.iter().map(|(t, _)| t.as_millis()).collect();
    assert_eq!(times, vec![0, 20, 40, 60, 80], "one new check per Ta");
    assert_eq!(agent.stats().checks_sent, 5);
}

#[test]
fn the_same_seeds_replay_the_same_run() {
    let run = || {
        let mut spec = [Spec::new(true), Spec::new(false)];
        for (i, s) in spec.iter_mut().enumerate() {
            s.lan = i as u8 + 1;
            s.nat = true;
            s.servers = true;
            s.mdns = true;
        }
        let mut net = Net::new(spec);
        assert!(net.run_until(SECS(10), Net::both_connected));
        net.run_for(SECS(30));
        net.transcript
    };
    let (a, b) = (run(), run());
    assert!(a.len() > 20);
    assert_eq!(a, b);
}

#[test]
fn a_connected_agent_is_idle_between_consent_checks() {
    let mut net = Net::new([Spec::new(true), Spec::new(false)]);
    assert!(net.run_until(SECS(5), Net::both_connected));
    net.run_for(SECS(12));
    let now = net.now;
    for h in &net.hosts {
        let next = h.agent.poll_timeout().expect("consent timer");
        // No server, no check in flight: the only timer is the next consent check, at most
        // 6 s away (RFC 7675: 4 to 6 s).
        assert!(next > now && next <= now + SECS(6), "{:?}", next - now);
    }
    // Over a minute, about one consent check per 5 s per agent and nothing else.
    let before = net.transcript.len();
    net.run_for(SECS(60));
    let datagrams = net.transcript.len() - before;
    assert!((20..=60).contains(&datagrams), "{datagrams}");
    assert!(net.both_connected());
}

#[test]
fn relayed_pairs_to_refused_addresses_fail_at_once() {
    // Agent 0 may only relay; agent 1 has nothing but a private host address, which the TURN
    // server refuses to relay to (403 to CreatePermission). Agent 0 need not wait for its
    // checks to time out to know it is stuck.
    let mut a = Spec::new(true);
    a.nat = true;
    a.servers = true;
    a.policy = Policy::RelayOnly;
    let mut b = Spec::new(false);
    b.lan = 2;
    b.nat = true;
    let mut net = Net::new([a, b]);
    assert!(net.run_until(SECS(30), |n| n.hosts[0].agent.state() == State::Failed));
    let at = net.hosts[0].first(|e| *e == Event::Failed).unwrap();
    assert!(at < SECS(1), "{at:?}");
}

/// Feeds host `i` thousands of corrupted copies of what it received so far, from `sources`.
fn fuzz(net: &mut Net, i: usize, sources: &[std::net::SocketAddr]) {
    let base = net.hosts[i].base;
    let public = net.hosts[i].public;
    let seeds: Vec<Vec<u8>> = net
        .transcript
        .iter()
        .filter(|t| t.2 == base || Some(t.2) == public)
        .map(|t| t.3.clone())
        .collect();
    assert!(!seeds.is_empty());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let now = net.now;
    let mut buf = [0u8; 1500];
    for _ in 0..10_000 {
        let mut bytes = seeds[(next() % seeds.len() as u64) as usize].clone();
        match next() % 4 {
            0 => bytes.truncate((next() % (bytes.len() as u64 + 1)) as usize),
            1 => bytes = (0..next() % 200).map(|_| next() as u8).collect(),
            _ => {
                for _ in 0..1 + next() % 4 {
                    if !bytes.is_empty() {
                        let at = (next() % bytes.len() as u64) as usize;
                        bytes[at] ^= 1 << (next() % 8);
                    }
                }
            }
        }
        let from = sources[(next() % sources.len() as u64) as usize];
        let agent = &mut net.hosts[i].agent;
        let _ = agent.handle_input(now, base, from, &bytes);
        // Whatever it wants to send in reply is taken and discarded.
        while agent.poll_transmit(&mut buf).is_some() {}
    }
}

#[test]
fn hostile_datagrams_change_nothing() {
    let mut net = Net::new([Spec::new(true), Spec::new(false)]);
    assert!(net.run_until(SECS(5), Net::both_connected));
    let peer = net.hosts[1].base;
    let stranger: std::net::SocketAddr = "10.0.1.99:4444".parse().unwrap();
    fuzz(&mut net, 0, &[peer, stranger]);
    assert!(
        net.hosts[0].agent.stats().invalid > 0,
        "corrupted checks were counted"
    );
    assert_eq!(net.hosts[0].agent.state(), State::Connected);
    net.run_for(SECS(1));
    assert!(net.both_connected());
    exchange_data(&mut net);

    // Through the TURN client too.
    let mut spec = [Spec::new(true), Spec::new(false)];
    for (i, s) in spec.iter_mut().enumerate() {
        s.lan = i as u8 + 1;
        s.nat = true;
        s.servers = true;
        s.policy = Policy::RelayOnly;
    }
    let mut net = Net::new(spec);
    assert!(net.run_until(SECS(10), Net::both_connected));
    net.run_for(Duration::from_millis(100));
    let peer = selected(&net, 0).remote;
    fuzz(&mut net, 0, &[net::server_addr(), peer]);
    net.run_for(SECS(1));
    assert!(net.both_connected());
    exchange_data(&mut net);
}

#[test]
fn remote_candidates_are_checked_before_use() {
    use std::time::Instant;
    use uturn_ice::{Agent, AgentConfig, AgentError, Candidate};
    let now = Instant::now();
    let mut agent = Agent::new(AgentConfig::new(true, [1; 32])).unwrap();
    let parse = |l: &str| Candidate::parse(l).unwrap();
    let mdns = parse("candidate:1 1 udp 1 6f3c1a6e-1d2b-4c1e-9a3d-1e2f3a4b5c6d.local 5 typ host");
    assert_eq!(
        agent.add_remote_candidate(now, &mdns),
        Err(AgentError::Unresolved)
    );
    let rtcp = parse("candidate:1 2 udp 1 10.0.0.1 5 typ host");
    assert_eq!(
        agent.add_remote_candidate(now, &rtcp),
        Err(AgentError::Component)
    );
    for bad in ["0.0.0.0 5", "10.0.0.1 0", "224.0.0.251 5353"] {
        let c = parse(&format!("candidate:1 1 udp 1 {bad} typ host"));
        assert_eq!(
            agent.add_remote_candidate(now, &c),
            Err(AgentError::Unusable),
            "{bad}"
        );
    }
    // The table is bounded: a peer cannot make the agent grow without limit.
    let mut added = 0;
    for i in 0..100u16 {
        let c = parse(&format!(
            "candidate:1 1 udp 1 10.0.{}.{} 5 typ host",
            i / 250,
            i % 250 + 1
        ));
        match agent.add_remote_candidate(now, &c) {
            Ok(()) => added += 1,
            Err(e) => assert_eq!(e, AgentError::TooManyCandidates),
        }
    }
    assert_eq!(added, uturn_ice::agent::MAX_REMOTES);
    assert!(agent
        .set_remote_credentials("ab", "remotepassword22charsxx")
        .is_err());
    assert!(agent.set_remote_credentials("abcd", "short").is_err());
    assert!(agent
        .add_host(
            "10.0.0.1:1".parse().unwrap(),
            Some("not-mdns.example".into())
        )
        .is_err());
}

#[test]
fn close_deletes_the_allocations_and_silences_the_agent() {
    let mut spec = [Spec::new(true), Spec::new(false)];
    for (i, s) in spec.iter_mut().enumerate() {
        s.lan = i as u8 + 1;
        s.nat = true;
        s.servers = true;
    }
    let mut net = Net::new(spec);
    assert!(net.run_until(SECS(10), Net::both_connected));
    assert_eq!(net.server.stats().allocations_active, 2);
    let now = net.now;
    for h in &mut net.hosts {
        h.agent.close(now);
        assert_eq!(h.agent.state(), State::Closed);
        assert!(!h.agent.is_closed(), "the deletion is still outstanding");
    }
    let events_before: Vec<usize> = net.hosts.iter().map(|h| h.events.len()).collect();
    assert!(net.run_until(SECS(5), |n| n.hosts.iter().all(|h| h.agent.is_closed())));
    // RFC 8656 section 7: a Refresh with lifetime 0 deleted both allocations at once.
    assert_eq!(net.server.stats().allocations_active, 0);
    // No event, nothing to send, no data, no timer, and a restart changes nothing.
    let after: Vec<usize> = net.hosts.iter().map(|h| h.events.len()).collect();
    assert_eq!(after, events_before);
    assert!(!net.send_data(0, b"x"));
    net.hosts[0].agent.restart(now, None);
    assert_eq!(net.hosts[0].agent.state(), State::Closed);
    net.run_for(SECS(60));
    for h in &mut net.hosts {
        let mut buf = [0u8; 1500];
        assert_eq!(h.agent.poll_transmit(&mut buf), None);
        assert_eq!(h.agent.poll_timeout(), None);
    }
}

#[test]
fn a_direct_path_found_late_still_beats_the_relay() {
    // Agent 1 is behind a symmetric NAT (a new port per destination): agent 0's check to its
    // server-reflexive address is answered from another port and fails at once (RFC 8445
    // section 7.2.5.2.1); the direct path can only show up as the peer-reflexive source of agent
    // 1's own checks, and those are lost for the first 400 ms. Agent 0's check to agent 1's
    // relay succeeds long before: it must not settle for the relay while a direct path may still
    // appear. Host candidates are mDNS names that do not resolve across LANs, as in a browser,
    // so no unreachable host pair keeps the checklist busy either.
    let mut spec = [Spec::new(true), Spec::new(false)];
    for (i, s) in spec.iter_mut().enumerate() {
        s.lan = i as u8 + 1;
        s.nat = true;
        s.servers = true;
        s.mdns = true;
    }
    spec[1].symmetric = true;
    let mut net = Net::new(spec);
    let (t0, a) = (net.t0, net.hosts[0].public.unwrap());
    let b_ip = net.hosts[1].public.unwrap().ip();
    let is_request = |b: &[u8]| b.len() > 2 && b[0] == 0 && b[1] == 1;
    net.drop = Box::new(move |d| {
        d.from.ip() == b_ip
            && d.to == a
            && is_request(&d.bytes)
            && d.at < t0 + Duration::from_millis(400)
    });
    assert!(net.run_until(SECS(10), Net::both_connected));
    let s = selected(&net, 0);
    assert_eq!(
        (s.local_kind, s.remote_kind),
        (CandidateKind::ServerReflexive, CandidateKind::PeerReflexive),
        "{s:?}"
    );
    assert_eq!(s.remote.ip(), b_ip);
    exchange_data(&mut net);
}
