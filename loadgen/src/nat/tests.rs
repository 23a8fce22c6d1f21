use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::SeedableRng;

use super::*;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);

fn ep(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn nat(m: Mapping, f: Filtering) -> Nat {
    Nat::new(PUBLIC, NatBehavior::new(m, f))
}

use Filtering::{
    AddressAndPortDependent as Apdf, AddressDependent as Adf, EndpointIndependent as Eif,
};
use Mapping::{
    AddressAndPortDependent as Apdm, AddressDependent as Adm, EndpointIndependent as Eim,
};

/// One row: the behaviour, then what RFC 4787 says must happen. X = 10.0.0.1:5000 sends to
/// R1 = 198.51.100.1:1000 first (mapping p1).
/// - `same_ip`: X's datagram to R1' (R1's address, port 2000) reuses p1 (section 4.1).
/// - `other_ip`: X's datagram to R2 = 198.51.100.2:1000 reuses p1.
/// - `in_r1p`: R1' may reach X through p1 before X sent to R1' (section 5).
/// - `in_r2`: R2 may reach X through p1 before X sent to R2.
/// - `in_r2_after`: R2 may reach X through p1 after X sent to R2 (through whatever mapping the
///   mapping behaviour picked: filtering state is per mapping).
struct Row {
    m: Mapping,
    f: Filtering,
    same_ip: bool,
    other_ip: bool,
    in_r1p: bool,
    in_r2: bool,
    in_r2_after: bool,
}

#[rustfmt::skip]
const TABLE: [Row; 9] = [
    Row { m: Eim,  f: Eif,  same_ip: true,  other_ip: true,  in_r1p: true,  in_r2: true,  in_r2_after: true  },
    Row { m: Eim,  f: Adf,  same_ip: true,  other_ip: true,  in_r1p: true,  in_r2: false, in_r2_after: true  },
    Row { m: Eim,  f: Apdf, same_ip: true,  other_ip: true,  in_r1p: false, in_r2: false, in_r2_after: true  },
    Row { m: Adm,  f: Eif,  same_ip: true,  other_ip: false, in_r1p: true,  in_r2: true,  in_r2_after: true  },
    Row { m: Adm,  f: Adf,  same_ip: true,  other_ip: false, in_r1p: true,  in_r2: false, in_r2_after: false },
    Row { m: Adm,  f: Apdf, same_ip: true,  other_ip: false, in_r1p: false, in_r2: false, in_r2_after: false },
    Row { m: Apdm, f: Eif,  same_ip: false, other_ip: false, in_r1p: true,  in_r2: true,  in_r2_after: true  },
    Row { m: Apdm, f: Adf,  same_ip: false, other_ip: false, in_r1p: true,  in_r2: false, in_r2_after: false },
    Row { m: Apdm, f: Apdf, same_ip: false, other_ip: false, in_r1p: false, in_r2: false, in_r2_after: false },
];

#[test]
fn every_mapping_and_filtering_behaves_per_rfc4787() {
    let t = Instant::now();
    let x = ep("10.0.0.1:5000");
    let r1 = ep("198.51.100.1:1000");
    let r1p = ep("198.51.100.1:2000");
    let r2 = ep("198.51.100.2:1000");
    for row in &TABLE {
        let name = NatBehavior::new(row.m, row.f).to_string();
        let verdict = |r: Result<SocketAddrV4, Refused>| match r {
            Ok(p) => {
                assert_eq!(p, x, "{name}: delivered to the wrong private endpoint");
                true
            }
            Err(Refused::Filtered) => false,
            Err(Refused::NoMapping) => panic!("{name}: the mapping vanished"),
        };

        // Filtering before X sent anywhere but R1.
        let mut n = nat(row.m, row.f);
        let o1 = n.translate_out(t, x, r1).unwrap();
        assert!(o1.opened, "{name}: first datagram opens a mapping");
        assert_eq!(*o1.public.ip(), PUBLIC);
        let p1 = o1.public.port();
        assert!(verdict(n.translate_in(t, p1, r1)), "{name}: R1 itself");
        assert_eq!(
            verdict(n.translate_in(t, p1, r1p)),
            row.in_r1p,
            "{name}: R1'"
        );
        assert_eq!(verdict(n.translate_in(t, p1, r2)), row.in_r2, "{name}: R2");

        // Mapping reuse.
        let o2 = n.translate_out(t, x, r1p).unwrap();
        assert_eq!(o2.public.port() == p1, row.same_ip, "{name}: reuse for R1'");
        assert_eq!(o2.opened, !row.same_ip, "{name}: opened for R1'");
        let o3 = n.translate_out(t, x, r2).unwrap();
        assert_eq!(o3.public.port() == p1, row.other_ip, "{name}: reuse for R2");
        assert_eq!(
            verdict(n.translate_in(t, p1, r2)),
            row.in_r2_after,
            "{name}: R2 after X sent to it"
        );
        // Whatever mapping carried X's datagram to R2 lets R2's answer in (RFC 4787 REQ-8
        // allows no stricter filtering than that).
        assert!(
            verdict(n.translate_in(t, o3.public.port(), r2)),
            "{name}: reply"
        );
        // The same destination again reuses its mapping under every behaviour.
        let again = n.translate_out(t, x, r2).unwrap();
        assert_eq!(
            again,
            Outbound {
                public: o3.public,
                opened: false
            },
            "{name}"
        );

        // Another private endpoint never shares a mapping with X, and X's filtering state does
        // not open Y's mapping.
        let y = ep("10.0.0.2:5000");
        let oy = n.translate_out(t, y, r1).unwrap();
        assert!(
            oy.opened && oy.public.port() != p1,
            "{name}: Y gets its own mapping"
        );
        assert_eq!(n.translate_in(t, oy.public.port(), r1), Ok(y), "{name}");
        let y_from_r2 = n.translate_in(t, oy.public.port(), r2).is_ok();
        assert_eq!(y_from_r2, row.f == Eif, "{name}: Y filtered on its own");
    }
}

#[test]
fn nothing_gets_in_without_a_mapping() {
    let n = nat(Eim, Eif);
    let t = Instant::now();
    assert_eq!(
        n.translate_in(t, 20000, ep("198.51.100.1:1")),
        Err(Refused::NoMapping)
    );
}

#[test]
fn mappings_expire_after_the_timeout_and_only_outbound_refreshes() {
    let t0 = Instant::now();
    let mut b = NatBehavior::new(Eim, Eif);
    b.timeout = Duration::from_secs(30);
    let mut n = Nat::new(PUBLIC, b);
    let x = ep("10.0.0.1:5000");
    let r = ep("198.51.100.1:1000");
    let p = n.translate_out(t0, x, r).unwrap().public;
    assert_eq!(n.poll_timeout(), Some(t0 + Duration::from_secs(30)));

    // Inbound at 20 s does not refresh; outbound at 20 s does.
    let t20 = t0 + Duration::from_secs(20);
    assert!(n.translate_in(t20, p.port(), r).is_ok());
    let t45 = t0 + Duration::from_secs(45);
    n.handle_timeout(t45);
    assert_eq!(n.translate_in(t45, p.port(), r), Err(Refused::NoMapping));
    assert_eq!(n.poll_event(), Some(NatEvent::Closed(p)));
    assert_eq!(n.mappings(), 0);

    let t50 = t0 + Duration::from_secs(50);
    let fresh = n.translate_out(t50, x, r).unwrap();
    assert!(fresh.opened, "a new mapping after expiry");
    assert_ne!(
        fresh.public, p,
        "and a new port: the old one is not reused at once"
    );
    let t70 = t50 + Duration::from_secs(20);
    n.translate_out(t70, x, r).unwrap(); // refresh
    let t90 = t50 + Duration::from_secs(40);
    n.handle_timeout(t90);
    assert_eq!(n.poll_event(), None, "refreshed at 70 s, lives until 100 s");
    assert!(n.translate_in(t90, fresh.public.port(), r).is_ok());
    n.handle_timeout(t50 + Duration::from_secs(51));
    assert_eq!(n.poll_event(), Some(NatEvent::Closed(fresh.public)));
}

#[test]
fn an_expired_mapping_is_dead_before_it_is_reaped() {
    let t0 = Instant::now();
    let mut b = NatBehavior::new(Eim, Eif);
    b.timeout = Duration::from_secs(1);
    let mut n = Nat::new(PUBLIC, b);
    let x = ep("10.0.0.1:5000");
    let r = ep("198.51.100.1:1000");
    let p = n.translate_out(t0, x, r).unwrap().public;
    let late = t0 + Duration::from_secs(2);
    assert_eq!(n.translate_in(late, p.port(), r), Err(Refused::NoMapping));
    let o = n.translate_out(late, x, r).unwrap();
    assert!(o.opened);
    assert_ne!(o.public, p);
    assert_eq!(
        n.poll_event(),
        Some(NatEvent::Closed(p)),
        "old socket closed"
    );
    n.handle_timeout(late);
    assert_eq!(n.poll_event(), None, "the new mapping is alive");
    assert_eq!(n.mappings(), 1);
}

#[test]
fn expire_all_mappings_closes_everything() {
    let t = Instant::now();
    let mut n = nat(Apdm, Apdf);
    let x = ep("10.0.0.1:5000");
    let a = n.translate_out(t, x, ep("198.51.100.1:1")).unwrap().public;
    let b = n.translate_out(t, x, ep("198.51.100.1:2")).unwrap().public;
    n.expire_all_mappings();
    let mut closed = vec![n.poll_event().unwrap(), n.poll_event().unwrap()];
    closed.sort_by_key(|NatEvent::Closed(p)| *p);
    assert_eq!(closed, vec![NatEvent::Closed(a), NatEvent::Closed(b)]);
    assert_eq!(n.poll_event(), None);
    assert_eq!(n.poll_timeout(), None);
    let again = n.translate_out(t, x, ep("198.51.100.1:1")).unwrap();
    assert!(again.opened);
    assert_ne!(again.public, a, "a rebooted NAT hands out a new port");
}

#[test]
fn ports_run_out_come_back_and_can_be_retired() {
    let t = Instant::now();
    let mut b = NatBehavior::new(Apdm, Eif);
    b.timeout = Duration::from_secs(10);
    let mut n = Nat::with_ports(PUBLIC, b, 40000..=40002);
    let x = ep("10.0.0.1:5000");
    let dst = |p: u16| SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), p);
    let ports: Vec<u16> = (1..=3)
        .map(|i| n.translate_out(t, x, dst(i)).unwrap().public.port())
        .collect();
    assert_eq!(ports, vec![40000, 40001, 40002]);
    assert_eq!(
        n.translate_out(t, x, dst(4)),
        Err(NatError::PortsExhausted(PUBLIC))
    );
    // The embedder could not bind 40001: that mapping goes and the port is never used again.
    n.open_failed(40001);
    assert_eq!(n.mappings(), 2);
    assert_eq!(
        n.translate_out(t, x, dst(5)),
        Err(NatError::PortsExhausted(PUBLIC))
    );
    n.handle_timeout(t + Duration::from_secs(11));
    assert_eq!(n.mappings(), 0);
    let later = t + Duration::from_secs(12);
    let mut again: Vec<u16> = (6..=7)
        .map(|i| n.translate_out(later, x, dst(i)).unwrap().public.port())
        .collect();
    again.sort();
    assert_eq!(again, vec![40000, 40002]);
    assert!(n.translate_out(later, x, dst(8)).is_err());
}

#[test]
fn filtering_state_is_bounded() {
    let t = Instant::now();
    let mut n = nat(Eim, Apdf);
    let x = ep("10.0.0.1:5000");
    let dst = |p: u16| SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), p);
    let mut public = None;
    for p in 1..=(MAX_PERMITTED as u16 + 10) {
        public = Some(n.translate_out(t, x, dst(p)).unwrap().public.port());
    }
    let port = public.unwrap();
    assert_eq!(n.translate_in(t, port, dst(1)), Err(Refused::Filtered));
    assert_eq!(
        n.translate_in(t, port, dst(MAX_PERMITTED as u16 + 10)),
        Ok(x)
    );
    assert_eq!(n.translate_in(t, port, dst(11)), Ok(x));
    assert_eq!(n.translate_in(t, port, dst(10)), Err(Refused::Filtered));
}

#[test]
fn all_behaviours_are_nine_distinct() {
    let all = NatBehavior::all(DEFAULT_TIMEOUT);
    assert_eq!(all.len(), 9);
    let names: std::collections::HashSet<String> = all.iter().map(|b| b.to_string()).collect();
    assert_eq!(names.len(), 9);
    assert!(names.contains("apdm-eif"));
}

// ---------------------------------------------------------------------------------------------
// Network: LAN-local delivery, hairpinning, addressing.

#[test]
fn lan_addresses_are_unique_and_round_trip() {
    assert_eq!(LanId(0).public_ip(), Ipv4Addr::new(127, 1, 0, 1));
    assert_eq!(LanId(253).public_ip(), Ipv4Addr::new(127, 1, 0, 254));
    assert_eq!(LanId(254).public_ip(), Ipv4Addr::new(127, 1, 1, 1));
    assert_eq!(LanId(0x0102).host(7), Ipv4Addr::new(10, 1, 2, 7));
    let net = Network::new(0..network::MAX_LANS);
    let mut seen = std::collections::HashSet::new();
    for k in (0..network::MAX_LANS)
        .step_by(97)
        .chain([network::MAX_LANS - 1])
    {
        let ip = LanId(k).public_ip();
        let [a, x, _, z] = ip.octets();
        assert!(a == 127 && x >= 1 && (1..=254).contains(&z), "{ip}");
        assert!(seen.insert(ip));
        assert_eq!(LanId::of_private(LanId(k).host(1)), Some(LanId(k)));
        // Not added to `net`, so unknown to it, but the arithmetic is checked by the next test.
        assert_eq!(net.lan_of_public(ip), None);
    }
    assert_eq!(LanId::of_private(Ipv4Addr::new(10, 0, 0, 0)), None);
    assert_eq!(LanId::of_private(Ipv4Addr::new(192, 168, 0, 1)), None);
}

fn net_with(b: &[NatBehavior], base: u32) -> (Network, Vec<LanId>) {
    let mut net = Network::new(base..base + 100);
    let lans = b.iter().map(|&b| net.add_lan(b).unwrap()).collect();
    (net, lans)
}

#[test]
fn public_addresses_map_back_to_their_lan() {
    let mut net = Network::new(60000..60600);
    for _ in 0..600 {
        let lan = net.add_lan(NatBehavior::new(Eim, Eif)).unwrap();
        assert_eq!(net.lan_of_public(lan.public_ip()), Some(lan));
        assert_eq!(net.nat(lan).unwrap().public_ip(), lan.public_ip());
    }
    assert_eq!(
        net.add_lan(NatBehavior::new(Eim, Eif)),
        Err(NetError::NoLanLeft)
    );
}

#[test]
fn hosts_on_one_lan_reach_each_other_without_the_nat() {
    let t = Instant::now();
    let (mut net, lans) = net_with(&[NatBehavior::new(Apdm, Apdf); 2], 0);
    let a = net.add_host(lans[0]).unwrap();
    let b = net.add_host(lans[0]).unwrap();
    let c = net.add_host(lans[1]).unwrap();
    assert_eq!(a, Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(b, Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(c, Ipv4Addr::new(10, 0, 1, 1));
    let a_ep = SocketAddrV4::new(a, 5000);
    let b_ep = SocketAddrV4::new(b, 6000);
    assert_eq!(
        net.send(t, a_ep, SocketAddr::V4(b_ep)),
        Route::Lan { to: b_ep }
    );
    assert_eq!(
        net.nat(lans[0]).unwrap().mappings(),
        0,
        "no mapping for LAN traffic"
    );
    // Another LAN's private address is not routable, and never becomes a real packet.
    assert_eq!(
        net.send(t, a_ep, SocketAddr::V4(SocketAddrV4::new(c, 1))),
        Route::Drop(DropReason::Unreachable)
    );
    // A host address nobody was given on this LAN is unreachable too.
    assert_eq!(
        net.send(t, a_ep, "10.0.0.9:1".parse().unwrap()),
        Route::Drop(DropReason::Unreachable)
    );
    assert_eq!(
        net.send(t, ep("10.0.0.77:1"), SocketAddr::V4(b_ep)),
        Route::Drop(DropReason::UnknownSource)
    );
    assert_eq!(
        net.send(t, a_ep, "[::1]:3478".parse().unwrap()),
        Route::Drop(DropReason::Ipv6)
    );
}

#[test]
fn wire_traffic_opens_mappings_and_inbound_is_filtered() {
    let t = Instant::now();
    let (mut net, lans) = net_with(&[NatBehavior::new(Eim, Apdf)], 5);
    let a = SocketAddrV4::new(net.add_host(lans[0]).unwrap(), 5000);
    let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
    let Route::Wire { via, to, opened } = net.send(t, a, server) else {
        panic!("expected a wire route")
    };
    assert!(opened);
    assert_eq!(to, server);
    assert_eq!(*via.ip(), lans[0].public_ip());
    assert_eq!(
        net.send(t, a, server),
        Route::Wire {
            via,
            to,
            opened: false
        }
    );
    assert_eq!(net.receive(t, via, server), Ok(a));
    assert_eq!(
        net.receive(t, via, "127.0.0.1:9999".parse().unwrap()),
        Err(Refused::Filtered)
    );
    assert_eq!(
        net.receive(t, SocketAddrV4::new(via.ip().to_owned(), 1), server),
        Err(Refused::NoMapping)
    );
}

#[test]
fn hairpinning_translates_both_ways_and_filters() {
    let t = Instant::now();
    for (f, b_first_to_a, expect) in [(Eif, false, true), (Apdf, false, false), (Apdf, true, true)]
    {
        let (mut net, lans) = net_with(&[NatBehavior::new(Eim, f)], 0);
        let lan = lans[0];
        let a = SocketAddrV4::new(net.add_host(lan).unwrap(), 5000);
        let b = SocketAddrV4::new(net.add_host(lan).unwrap(), 6000);
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let Route::Wire { via: a_pub, .. } = net.send(t, a, server) else {
            panic!()
        };
        let Route::Wire { via: b_pub, .. } = net.send(t, b, server) else {
            panic!()
        };
        if b_first_to_a {
            // A sends to B's public address first: with APDF that opens B's mapping to A... and
            // records B's public endpoint on A's mapping (the hairpinned source).
            let r = net.send(t, a, SocketAddr::V4(b_pub));
            assert!(matches!(r, Route::Hairpin { .. }));
        }
        let r = net.send(t, b, SocketAddr::V4(a_pub));
        let Route::Hairpin { to, from, opened } = r else {
            panic!("{f:?}: expected hairpin, got {r:?}")
        };
        assert_eq!(
            from, b_pub,
            "{f:?}: external source address and port (REQ-9a)"
        );
        assert!(!opened, "EIM: B's mapping already exists");
        assert_eq!(to.is_ok(), expect, "{f:?}: {to:?}");
        if expect {
            assert_eq!(to, Ok(a));
        }
    }
}

#[test]
fn network_timeouts_and_chaos_emit_close_events() {
    let t = Instant::now();
    let mut b = NatBehavior::new(Apdm, Apdf);
    b.timeout = Duration::from_secs(5);
    let (mut net, lans) = net_with(&[b, b], 0);
    let a = SocketAddrV4::new(net.add_host(lans[0]).unwrap(), 1);
    let c = SocketAddrV4::new(net.add_host(lans[1]).unwrap(), 1);
    let Route::Wire { via: va, .. } = net.send(t, a, "127.0.0.1:1".parse().unwrap()) else {
        panic!()
    };
    let later = t + Duration::from_secs(3);
    let Route::Wire { via: vc, .. } = net.send(later, c, "127.0.0.1:1".parse().unwrap()) else {
        panic!()
    };
    assert_eq!(net.poll_timeout(), Some(t + Duration::from_secs(5)));
    net.handle_timeout(t + Duration::from_secs(6));
    assert_eq!(
        net.poll_event(),
        Some(NetEvent::Closed {
            lan: lans[0],
            public: va
        })
    );
    assert_eq!(net.poll_event(), None);
    net.expire_all_mappings();
    assert_eq!(
        net.poll_event(),
        Some(NetEvent::Closed {
            lan: lans[1],
            public: vc
        })
    );
    assert_eq!(net.poll_event(), None);
}

#[test]
fn add_host_limits() {
    let (mut net, lans) = net_with(&[NatBehavior::new(Eim, Eif)], 0);
    for _ in 0..network::MAX_HOSTS {
        net.add_host(lans[0]).unwrap();
    }
    assert_eq!(net.add_host(lans[0]), Err(NetError::LanFull(lans[0])));
    assert_eq!(
        net.add_host(LanId(999)),
        Err(NetError::UnknownLan(LanId(999)))
    );
}

// ---------------------------------------------------------------------------------------------
// mDNS.

#[test]
fn mdns_resolves_only_on_the_same_lan() {
    let mut m = Mdns::new();
    let (l1, l2) = (LanId(1), LanId(2));
    let a = Ipv4Addr::new(10, 0, 1, 1);
    let name = "1f0e5c2a-9d7b-4c1e-8f00-0123456789ab.local";
    m.register(name, a, l1).unwrap();
    assert_eq!(m.resolve(name, l1), Some(a));
    assert_eq!(
        m.resolve(&name.to_uppercase(), l1),
        Some(a),
        "case-insensitive"
    );
    assert_eq!(m.resolve(&format!("{name}."), l1), Some(a), "trailing dot");
    assert_eq!(m.resolve(name, l2), None, "another LAN cannot resolve it");
    assert_eq!(
        m.register(name, Ipv4Addr::new(10, 0, 1, 2), l1),
        Err(MdnsError::Taken(name.into()))
    );
    // The same name on another LAN is another host.
    let b = Ipv4Addr::new(10, 0, 2, 1);
    m.register(name, b, l2).unwrap();
    assert_eq!(m.resolve(name, l2), Some(b));
    assert_eq!(m.len(), 2);
    assert!(m.unregister(name, l1));
    assert!(!m.unregister(name, l1));
    assert_eq!(m.resolve(name, l1), None);
    assert!(matches!(
        m.register("host.example.com", a, l1),
        Err(MdnsError::NotLocal(_))
    ));
    assert!(matches!(
        m.register(".local", a, l1),
        Err(MdnsError::NotLocal(_))
    ));
    assert!(matches!(
        m.register(&format!("{}.local", "a".repeat(300)), a, l1),
        Err(MdnsError::TooLong(_))
    ));
    assert_eq!(m.resolve("nonsense", l1), None);
}

// ---------------------------------------------------------------------------------------------
// --nat parsing.

#[test]
fn spec_parses_every_behaviour_alias_and_option() {
    for m in Mapping::ALL {
        for f in Filtering::ALL {
            let s = format!("{}-{}", m.short(), f.short());
            assert_eq!(
                s.parse::<NatSpec>(),
                Ok(NatSpec::Fixed(NatBehavior::new(m, f))),
                "{s}"
            );
        }
    }
    let with = |m, f, secs| {
        Ok(NatSpec::Fixed(NatBehavior {
            mapping: m,
            filtering: f,
            timeout: Duration::from_secs(secs),
        }))
    };
    assert_eq!("apdm-apdf:timeout=30s".parse(), with(Apdm, Apdf, 30));
    assert_eq!("EIM-ADF:timeout=2m".parse(), with(Eim, Adf, 120));
    assert_eq!("full-cone".parse(), with(Eim, Eif, 120));
    assert_eq!("restricted-cone".parse(), with(Eim, Adf, 120));
    assert_eq!("port-restricted".parse(), with(Eim, Apdf, 120));
    assert_eq!("symmetric:timeout=10s".parse(), with(Apdm, Apdf, 10));
    assert_eq!(
        "mix".parse(),
        Ok(NatSpec::Mix {
            timeout: DEFAULT_TIMEOUT
        })
    );
    assert_eq!(
        "mix:timeout=1m".parse(),
        Ok(NatSpec::Mix {
            timeout: Duration::from_secs(60)
        })
    );
    assert_eq!("none".parse(), Ok(NatSpec::None));
}

#[test]
fn spec_errors_say_what_is_accepted() {
    let e = "eim-xyz".parse::<NatSpec>().unwrap_err();
    assert!(matches!(e, SpecError::Unknown(_)));
    assert!(e.to_string().contains("eim, adm, apdm"));
    for bad in ["", "eim", "eim-eif-x", "cone", "apdm_apdf"] {
        assert!(
            matches!(bad.parse::<NatSpec>(), Err(SpecError::Unknown(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        "eim-eif:ttl=3s".parse::<NatSpec>(),
        Err(SpecError::Option(_))
    ));
    assert!(matches!(
        "eim-eif:timeout=soon".parse::<NatSpec>(),
        Err(SpecError::Timeout(_))
    ));
    assert_eq!(
        "eim-eif:timeout=0".parse::<NatSpec>(),
        Err(SpecError::ZeroTimeout)
    );
    assert_eq!(
        "none:timeout=1s".parse::<NatSpec>(),
        Err(SpecError::NoneWithOptions)
    );
}

#[test]
fn spec_display_round_trips() {
    for s in [
        "eim-eif:timeout=30s",
        "apdm-adf:timeout=2m",
        "mix:timeout=2m",
        "none",
    ] {
        let spec: NatSpec = s.parse().unwrap();
        assert_eq!(spec.to_string(), s);
        assert_eq!(spec.to_string().parse::<NatSpec>(), Ok(spec));
    }
}

#[test]
fn mix_draws_all_nine_behaviours() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let spec = NatSpec::Mix {
        timeout: Duration::from_secs(9),
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..500 {
        let b = spec.pick(&mut rng).unwrap();
        assert_eq!(b.timeout, Duration::from_secs(9));
        seen.insert((b.mapping, b.filtering));
    }
    assert_eq!(seen.len(), 9);
    assert_eq!(NatSpec::None.pick(&mut rng), None);
}

#[test]
fn seeded_networks_start_at_different_ports() {
    let t = Instant::now();
    let b = NatBehavior::new(Eim, Eif);
    let first_port = |seed: u64| {
        let mut net = Network::with_seed(0..10, seed);
        let lan = net.add_lan(b).unwrap();
        let a = SocketAddrV4::new(net.add_host(lan).unwrap(), 1);
        match net.send(t, a, "127.0.0.1:3478".parse().unwrap()) {
            Route::Wire { via, .. } => via.port(),
            r => panic!("{r:?}"),
        }
    };
    assert_eq!(first_port(0), *DEFAULT_PORTS.start());
    let ports: std::collections::HashSet<u16> = (1..20).map(first_port).collect();
    assert!(ports.len() > 15, "{ports:?}");
    assert!(ports.iter().all(|p| DEFAULT_PORTS.contains(p)));
    // Wrapping: a NAT started near the end of its range goes on at the start.
    let mut n = Nat::with_ports(PUBLIC, b, 100..=102).starting_at(102);
    let x = ep("10.0.0.1:1");
    assert_eq!(
        n.translate_out(t, x, ep("198.51.100.1:1"))
            .unwrap()
            .public
            .port(),
        102
    );
    let y = ep("10.0.0.2:1");
    assert_eq!(
        n.translate_out(t, y, ep("198.51.100.1:1"))
            .unwrap()
            .public
            .port(),
        100
    );
}
