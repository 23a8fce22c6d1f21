//! Tests of [`TurnClient`] against server responses built by hand with the codec's encoder.
//! This whole file is test code: `mod.rs` declares it under #[cfg(test)].

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::time::Instant;

use super::*;
use crate::channel_data::{ChannelData, ChannelNumber};
use crate::stun::attr::*;
use crate::stun::{
    Class, Encoder, LongTermKey, Message, MessageType, Method, PasswordAlgorithmId, TransactionId,
};

const USER: &str = "alice";
const PASS: &str = "wonderland";
const REALM: &str = "example.org";

fn server() -> SocketAddr {
    "192.0.2.1:3478".parse().unwrap()
}
fn relayed() -> SocketAddr {
    "203.0.113.5:50000".parse().unwrap()
}
fn mapped() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}
fn peer(i: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from([198, 51, 100, 20 + i as u8]), 6000 + i)
}
fn md5_key() -> LongTermKey {
    LongTermKey::derive(PasswordAlgorithmId::Md5, USER, REALM, PASS)
}
fn sha_key() -> LongTermKey {
    LongTermKey::derive(PasswordAlgorithmId::Sha256, USER, REALM, PASS)
}
fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

struct Harness {
    client: TurnClient,
    t0: Instant,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        Harness::with(|_| {})
    }

    fn with(adjust: impl FnOnce(&mut ClientConfig)) -> Self {
        let mut config = ClientConfig::new(server(), USER, PASS);
        adjust(&mut config);
        let t0 = Instant::now();
        Harness {
            client: TurnClient::new(config, [42; 32]).unwrap(),
            t0,
            now: t0,
        }
    }

    /// Everything the client wants to send now.
    fn sent(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1500];
        while let Some(t) = self.client.poll_transmit(&mut buf) {
            assert_eq!(t.to, server());
            out.push(buf[..t.len].to_vec());
        }
        out
    }

    /// Exactly one request, which must carry a valid FINGERPRINT.
    fn one(&mut self) -> Vec<u8> {
        let mut sent = self.sent();
        assert_eq!(sent.len(), 1, "expected one datagram");
        let req = sent.remove(0);
        Message::parse(&req).unwrap().check_fingerprint().unwrap();
        req
    }

    fn feed(&mut self, datagram: &[u8]) -> Input<'static> {
        match self.client.handle_input(self.now, server(), datagram) {
            Input::Data { .. } => panic!("unexpected data"),
            Input::Handled => Input::Handled,
            Input::Ignored(why) => Input::Ignored(why),
        }
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    fn advance_to(&mut self, t: Instant) {
        assert!(t >= self.now);
        self.now = t;
        self.client.handle_timeout(t);
    }

    /// Allocate, answer the 401 with a plain MD5 challenge, grant it; returns the key.
    fn allocated(&mut self) -> LongTermKey {
        self.client.allocate(self.now, RelayFamily::Ipv4).unwrap();
        let first = self.one();
        assert_eq!(
            self.feed(&challenge(&first, 401, "nonce-1", None)),
            Input::Handled
        );
        let retry = self.one();
        let key = md5_key();
        assert_eq!(self.feed(&allocate_ok(&retry, &key, 600)), Input::Handled);
        assert!(matches!(self.events()[..], [Event::Allocated(_)]));
        key
    }
}

/// A response to `req` as a server would write it, signed with `key` when given.
fn respond(
    req: &[u8],
    class: Class,
    key: Option<&LongTermKey>,
    add: impl FnOnce(&mut Encoder<'_>),
) -> Vec<u8> {
    let m = Message::parse(req).unwrap();
    let mut buf = [0u8; 1500];
    let mut enc = Encoder::new(
        &mut buf,
        MessageType::new(m.method(), class),
        m.transaction_id(),
    )
    .unwrap();
    add(&mut enc);
    if let Some(k) = key {
        enc.message_integrity(k.as_bytes()).unwrap();
    }
    enc.fingerprint().unwrap();
    let n = enc.finish();
    buf[..n].to_vec()
}

fn error(req: &[u8], code: u16, key: Option<&LongTermKey>) -> Vec<u8> {
    respond(req, Class::Error, key, |e| {
        e.add(&ErrorCode { code, reason: "no" }).unwrap();
    })
}

/// A 401 or 438 with REALM, NONCE and optionally PASSWORD-ALGORITHMS.
fn challenge(
    req: &[u8],
    code: u16,
    nonce: &str,
    algorithms: Option<&[PasswordAlgorithm<'_>]>,
) -> Vec<u8> {
    challenge_in(req, code, REALM, nonce, algorithms)
}

fn challenge_in(
    req: &[u8],
    code: u16,
    realm: &str,
    nonce: &str,
    algorithms: Option<&[PasswordAlgorithm<'_>]>,
) -> Vec<u8> {
    respond(req, Class::Error, None, |e| {
        e.add(&ErrorCode {
            code,
            reason: "challenge",
        })
        .unwrap();
        e.add(&Realm(realm)).unwrap();
        e.add(&Nonce(nonce)).unwrap();
        if let Some(list) = algorithms {
            e.add(&PasswordAlgorithms::List(list)).unwrap();
        }
    })
}

fn allocate_ok(req: &[u8], key: &LongTermKey, lifetime: u32) -> Vec<u8> {
    respond(req, Class::Success, Some(key), |e| {
        e.add(&XorRelayedAddress(relayed())).unwrap();
        e.add(&Lifetime(lifetime)).unwrap();
        e.add(&XorMappedAddress(mapped())).unwrap();
    })
}

fn ok(req: &[u8], key: &LongTermKey) -> Vec<u8> {
    respond(req, Class::Success, Some(key), |_| {})
}

fn tid(req: &[u8]) -> TransactionId {
    Message::parse(req).unwrap().transaction_id()
}

fn method(req: &[u8]) -> Method {
    Message::parse(req).unwrap().method()
}

// ---------------------------------------------------------------------------------------------
// Authentication.

#[test]
fn allocate_answers_401_with_long_term_credentials() {
    let mut h = Harness::new();
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    let first = h.one();
    let m = Message::parse(&first).unwrap();
    assert_eq!((m.method(), m.class()), (Method::ALLOCATE, Class::Request));
    assert_eq!(
        m.get::<RequestedTransport>().unwrap(),
        Some(RequestedTransport::UDP)
    );
    // RFC 8489 section 9.2.3.1: the first request carries no credentials at all.
    for t in [
        types::USERNAME,
        types::REALM,
        types::NONCE,
        types::MESSAGE_INTEGRITY,
    ] {
        assert!(!m.has(t), "first request carries {t:#06x}");
    }

    assert_eq!(
        h.feed(&challenge(&first, 401, "nonce-1", None)),
        Input::Handled
    );
    assert!(
        h.events().is_empty(),
        "a challenge is answered, not reported"
    );
    let retry = h.one();
    let m = Message::parse(&retry).unwrap();
    assert_ne!(
        m.transaction_id(),
        tid(&first),
        "a retry is a new transaction"
    );
    assert_eq!(m.method(), Method::ALLOCATE);
    assert_eq!(
        m.get::<RequestedTransport>().unwrap(),
        Some(RequestedTransport::UDP)
    );
    assert_eq!(m.get::<Username<'_>>().unwrap(), Some(Username(USER)));
    assert_eq!(m.get::<Realm<'_>>().unwrap(), Some(Realm(REALM)));
    assert_eq!(m.get::<Nonce<'_>>().unwrap(), Some(Nonce("nonce-1")));
    m.verify_integrity(md5_key().as_bytes()).unwrap();
    assert!(m.verify_integrity(sha_key().as_bytes()).is_err());
    // No PASSWORD-ALGORITHMS offered: MD5, nothing to echo, no SHA-256 integrity.
    assert!(!m.has_integrity_sha256());
    assert!(!m.has(types::PASSWORD_ALGORITHMS) && !m.has(types::PASSWORD_ALGORITHM));

    assert_eq!(
        h.feed(&allocate_ok(&retry, &md5_key(), 600)),
        Input::Handled
    );
    let expected = Allocation {
        relayed: relayed(),
        additional_relayed: None,
        mapped: Some(mapped()),
        lifetime: secs(600),
        tcp: false,
    };
    assert_eq!(h.events(), vec![Event::Allocated(expected)]);
    assert_eq!(h.client.allocation(), Some(&expected));
    assert_eq!(h.client.outstanding(), 0);
    // Later requests reuse realm, nonce and key without another challenge.
    h.client.refresh(h.now, Some(secs(300))).unwrap();
    let refresh = h.one();
    let m = Message::parse(&refresh).unwrap();
    assert_eq!(m.get::<Nonce<'_>>().unwrap(), Some(Nonce("nonce-1")));
    assert_eq!(m.get::<Lifetime>().unwrap(), Some(Lifetime(300)));
    m.verify_integrity(md5_key().as_bytes()).unwrap();
}

#[test]
fn stale_nonce_438_is_retried_with_the_new_nonce() {
    let mut h = Harness::new();
    let key = h.allocated();
    h.client.create_permission(h.now, &[peer(1).ip()]).unwrap();
    let req = h.one();
    assert_eq!(
        Message::parse(&req).unwrap().get::<Nonce<'_>>().unwrap(),
        Some(Nonce("nonce-1"))
    );

    // RFC 8489 section 9.2.5 / RFC 8656: 438 carries a fresh NONCE and no integrity.
    assert_eq!(
        h.feed(&challenge(&req, 438, "nonce-2", None)),
        Input::Handled
    );
    let retry = h.one();
    let m = Message::parse(&retry).unwrap();
    assert_ne!(m.transaction_id(), tid(&req));
    assert_eq!(m.method(), Method::CREATE_PERMISSION);
    assert_eq!(m.get::<Nonce<'_>>().unwrap(), Some(Nonce("nonce-2")));
    assert_eq!(
        m.get::<XorPeerAddress>().unwrap().map(|a| a.0.ip()),
        Some(peer(1).ip())
    );
    m.verify_integrity(key.as_bytes()).unwrap();

    assert_eq!(h.feed(&ok(&retry, &key)), Input::Handled);
    let peers = PeerList::from_slice(&[peer(1).ip()]).unwrap();
    assert_eq!(h.events(), vec![Event::PermissionCreated { peers }]);
    // And the new nonce sticks for the next request.
    h.client.channel_bind(h.now, peer(1)).unwrap();
    let next = h.one();
    assert_eq!(
        Message::parse(&next).unwrap().get::<Nonce<'_>>().unwrap(),
        Some(Nonce("nonce-2"))
    );
}

#[test]
fn password_algorithms_negotiate_sha256() {
    let mut h = Harness::new();
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    let first = h.one();
    let offer = [PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5];
    h.feed(&challenge(&first, 401, "obMatJos2AAABnonce", Some(&offer)));
    let retry = h.one();
    let m = Message::parse(&retry).unwrap();
    // RFC 8489 section 9.2.5: echo the list unchanged and name the first supported entry.
    assert_eq!(
        m.get::<PasswordAlgorithms<'_>>().unwrap(),
        Some(PasswordAlgorithms::List(&offer))
    );
    assert_eq!(
        m.get::<PasswordAlgorithm<'_>>().unwrap(),
        Some(PasswordAlgorithm::SHA256)
    );
    assert!(m.has_integrity_sha256());
    m.verify_integrity_sha256(sha_key().as_bytes()).unwrap();
    m.verify_integrity(sha_key().as_bytes()).unwrap();
    assert!(m.verify_integrity(md5_key().as_bytes()).is_err());

    // The server answers with MESSAGE-INTEGRITY-SHA256 only; the client checks that one.
    let resp = respond(&retry, Class::Success, None, |e| {
        e.add(&XorRelayedAddress(relayed())).unwrap();
        e.add(&Lifetime(600)).unwrap();
        e.message_integrity_sha256(sha_key().as_bytes()).unwrap();
    });
    assert_eq!(h.feed(&resp), Input::Handled);
    assert!(matches!(
        h.events()[..],
        [Event::Allocated(Allocation { mapped: None, .. })]
    ));
}

#[test]
fn algorithm_follows_server_order_and_policy() {
    // The server prefers MD5: with the default policy the client takes it.
    let mut h = Harness::new();
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    let first = h.one();
    let offer = [PasswordAlgorithm::MD5, PasswordAlgorithm::SHA256];
    h.feed(&challenge(&first, 401, "n", Some(&offer)));
    let m_bytes = h.one();
    let m = Message::parse(&m_bytes).unwrap();
    assert_eq!(
        m.get::<PasswordAlgorithm<'_>>().unwrap(),
        Some(PasswordAlgorithm::MD5)
    );
    assert_eq!(
        m.get::<PasswordAlgorithms<'_>>().unwrap(),
        Some(PasswordAlgorithms::List(&offer))
    );
    assert!(!m.has_integrity_sha256());
    m.verify_integrity(md5_key().as_bytes()).unwrap();

    // The same offer, a client that insists on SHA-256.
    let mut h = Harness::with(|c| c.algorithms = AlgorithmPolicy::Sha256Only);
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    let first = h.one();
    h.feed(&challenge(&first, 401, "n", Some(&offer)));
    let m_bytes = h.one();
    let m = Message::parse(&m_bytes).unwrap();
    assert_eq!(
        m.get::<PasswordAlgorithm<'_>>().unwrap(),
        Some(PasswordAlgorithm::SHA256)
    );
    m.verify_integrity_sha256(sha_key().as_bytes()).unwrap();

    // Nothing acceptable on offer, or no offer at all (MD5 implied): the Allocate fails.
    for offer in [Some(&[PasswordAlgorithm::MD5][..]), None] {
        let mut h = Harness::with(|c| c.algorithms = AlgorithmPolicy::Sha256Only);
        h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
        let first = h.one();
        h.feed(&challenge(&first, 401, "n", offer));
        assert!(h.sent().is_empty());
        assert_eq!(
            h.events(),
            vec![Event::Failed {
                method: Method::ALLOCATE,
                failure: Failure::Auth(AuthError::NoCommonAlgorithm)
            }]
        );
        // The failed Allocate leaves the client free to try again.
        h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    }
}

#[test]
fn a_challenge_from_another_realm_is_refused_when_the_realm_is_configured() {
    let mut h = Harness::with(|c| c.realm = Some(REALM.into()));
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    let first = h.one();
    h.feed(&challenge_in(&first, 401, "evil.example", "n", None));
    assert!(h.sent().is_empty());
    assert_eq!(
        h.events(),
        vec![Event::Failed {
            method: Method::ALLOCATE,
            failure: Failure::Auth(AuthError::RealmMismatch)
        }]
    );
}

#[test]
fn a_401_to_signed_credentials_fails_instead_of_looping() {
    let mut h = Harness::new();
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    let first = h.one();
    h.feed(&challenge(&first, 401, "n1", None));
    let retry = h.one();
    // Wrong password, say: the server challenges again.
    assert_eq!(h.feed(&challenge(&retry, 401, "n2", None)), Input::Handled);
    assert!(h.sent().is_empty());
    assert_eq!(
        h.events(),
        vec![Event::Failed {
            method: Method::ALLOCATE,
            failure: Failure::Error(401)
        }]
    );
    assert_eq!(h.client.allocation(), None);
}

#[test]
fn endless_stale_nonces_give_up() {
    let mut h = Harness::new();
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    let mut req = h.one();
    h.feed(&challenge(&req, 401, "n0", None));
    for i in 1..=3 {
        req = h.one();
        h.feed(&challenge(&req, 438, &format!("n{i}"), None));
    }
    assert!(h.sent().is_empty());
    assert_eq!(
        h.events(),
        vec![Event::Failed {
            method: Method::ALLOCATE,
            failure: Failure::Error(438)
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// Response checks.

#[test]
fn responses_with_a_wrong_transaction_id_or_method_are_ignored() {
    let mut h = Harness::new();
    let key = h.allocated();
    h.client.create_permission(h.now, &[peer(1).ip()]).unwrap();
    let req = h.one();

    let mut forged = ok(&req, &key);
    forged[8] ^= 0xFF; // transaction id; integrity and fingerprint recomputed below
    let m = Message::parse(&forged).unwrap();
    let mut buf = [0u8; 200];
    let mut enc = Encoder::new(&mut buf, m.message_type(), m.transaction_id()).unwrap();
    enc.message_integrity(key.as_bytes()).unwrap();
    enc.fingerprint().unwrap();
    let n = enc.finish();
    assert_eq!(
        h.feed(&buf[..n]),
        Input::Ignored(Ignored::UnknownTransaction)
    );

    // Right id, wrong method.
    let mut buf = [0u8; 200];
    let mut enc = Encoder::new(
        &mut buf,
        MessageType::new(Method::REFRESH, Class::Success),
        tid(&req),
    )
    .unwrap();
    enc.message_integrity(key.as_bytes()).unwrap();
    let n = enc.finish();
    assert_eq!(
        h.feed(&buf[..n]),
        Input::Ignored(Ignored::UnknownTransaction)
    );

    assert!(h.events().is_empty());
    assert_eq!(
        h.client.outstanding(),
        1,
        "the request still waits for its response"
    );
    assert_eq!(h.feed(&ok(&req, &key)), Input::Handled);
    assert!(matches!(h.events()[..], [Event::PermissionCreated { .. }]));
    assert_eq!(
        h.feed(&ok(&req, &key)),
        Input::Ignored(Ignored::UnknownTransaction),
        "matched once"
    );
}

#[test]
fn responses_with_bad_or_missing_integrity_are_ignored() {
    let mut h = Harness::new();
    let key = h.allocated();
    h.client.create_permission(h.now, &[peer(1).ip()]).unwrap();
    let req = h.one();
    let wrong = LongTermKey::derive(PasswordAlgorithmId::Md5, USER, REALM, "guess");
    assert_eq!(
        h.feed(&ok(&req, &wrong)),
        Input::Ignored(Ignored::BadIntegrity)
    );
    let unsigned = respond(&req, Class::Success, None, |_| {});
    assert_eq!(h.feed(&unsigned), Input::Ignored(Ignored::BadIntegrity));
    // A forged error cannot fail the request either.
    assert_eq!(
        h.feed(&error(&req, 403, None)),
        Input::Ignored(Ignored::BadIntegrity)
    );
    assert!(h.events().is_empty());
    assert_eq!(h.client.outstanding(), 1);

    // A signed error is believed.
    assert_eq!(h.feed(&error(&req, 403, Some(&key))), Input::Handled);
    assert_eq!(
        h.events(),
        vec![Event::Failed {
            method: Method::CREATE_PERMISSION,
            failure: Failure::Error(403)
        }]
    );
    assert!(
        !h.client.has_permission(peer(1).ip()),
        "a refused permission is forgotten"
    );
}

#[test]
fn bad_fingerprints_and_garbage_are_ignored() {
    let mut h = Harness::new();
    h.client.binding(h.now).unwrap();
    let req = h.one();
    let resp = respond(&req, Class::Success, None, |e| {
        e.add(&XorMappedAddress(mapped())).unwrap();
    });
    let mut bad = resp.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(h.feed(&bad), Input::Ignored(Ignored::BadFingerprint));
    assert_eq!(
        h.feed(&resp[..resp.len() - 4]),
        Input::Ignored(Ignored::Malformed)
    );
    assert_eq!(h.feed(&[0xFF; 40]), Input::Ignored(Ignored::NotTurn));
    assert_eq!(h.feed(&[]), Input::Ignored(Ignored::NotTurn));
    assert_eq!(
        h.client.handle_input(h.now, peer(1), &resp),
        Input::Ignored(Ignored::NotFromServer)
    );
    assert!(h.events().is_empty());
    assert_eq!(h.feed(&resp), Input::Handled);
    assert_eq!(h.events(), vec![Event::BindingSuccess { mapped: mapped() }]);
}

#[test]
fn error_codes_are_surfaced() {
    let mut h = Harness::new();
    h.client.allocate(h.now, RelayFamily::Ipv6).unwrap();
    let first = h.one();
    let m = Message::parse(&first).unwrap();
    assert_eq!(
        m.get::<RequestedAddressFamily>().unwrap(),
        Some(RequestedAddressFamily(Family::V6))
    );
    h.feed(&challenge(&first, 401, "n", None));
    let retry = h.one();
    assert_eq!(
        h.feed(&error(&retry, 486, Some(&md5_key()))),
        Input::Handled
    );
    assert_eq!(
        h.events(),
        vec![Event::Failed {
            method: Method::ALLOCATE,
            failure: Failure::Error(486)
        }]
    );
    assert_eq!(h.client.allocation(), None);
    // The realm and nonce are kept: the next Allocate is signed from the start.
    h.client.allocate(h.now, RelayFamily::Dual).unwrap();
    let again = h.one();
    let m = Message::parse(&again).unwrap();
    m.verify_integrity(md5_key().as_bytes()).unwrap();
    assert_eq!(
        m.get::<AdditionalAddressFamily>().unwrap(),
        Some(AdditionalAddressFamily(Family::V6))
    );
    let v6: SocketAddr = "[2001:db8::5]:50001".parse().unwrap();
    let resp = respond(&again, Class::Success, Some(&md5_key()), |e| {
        e.add(&XorRelayedAddress(relayed())).unwrap();
        e.add(&XorRelayedAddress(v6)).unwrap();
        e.add(&Lifetime(600)).unwrap();
    });
    h.feed(&resp);
    assert!(matches!(
        h.events()[..],
        [Event::Allocated(Allocation { additional_relayed: Some(a), .. })] if a == v6
    ));
}

#[test]
fn a_success_without_required_attributes_fails() {
    let mut h = Harness::new();
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    let first = h.one();
    h.feed(&challenge(&first, 401, "n", None));
    let retry = h.one();
    let resp = respond(&retry, Class::Success, Some(&md5_key()), |e| {
        e.add(&Lifetime(600)).unwrap();
    });
    assert_eq!(h.feed(&resp), Input::Handled);
    assert_eq!(
        h.events(),
        vec![Event::Failed {
            method: Method::ALLOCATE,
            failure: Failure::BadResponse
        }]
    );
    assert_eq!(h.client.allocation(), None);
}

// ---------------------------------------------------------------------------------------------
// Timers.

#[test]
fn requests_time_out_after_the_last_retransmission() {
    let mut h = Harness::new();
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    let mut copies = Vec::new();
    let mut at = Vec::new();
    loop {
        for d in h.sent() {
            at.push(h.now - h.t0);
            copies.push(d);
        }
        let events = h.events();
        if !events.is_empty() {
            assert_eq!(
                events,
                vec![Event::Failed {
                    method: Method::ALLOCATE,
                    failure: Failure::Timeout
                }]
            );
            break;
        }
        let next = h.client.poll_timeout().unwrap();
        h.advance_to(next);
    }
    let ms = |v: u64| Duration::from_millis(v);
    assert_eq!(at, [0, 500, 1500, 3500, 7500, 15500, 31500].map(ms));
    assert_eq!(h.now - h.t0, ms(39_500));
    assert!(
        copies.iter().all(|c| *c == copies[0]),
        "retransmissions are identical"
    );
    assert_eq!(h.client.poll_timeout(), None);
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
}

#[test]
fn reliable_transports_do_not_retransmit() {
    let mut h = Harness::with(|c| c.transport = Transport::Tcp);
    h.client.binding(h.now).unwrap();
    assert_eq!(h.sent().len(), 1);
    assert_eq!(
        h.client.poll_timeout(),
        Some(h.t0 + Duration::from_millis(39_500))
    );
    h.advance_to(h.t0 + secs(39));
    assert!(h.sent().is_empty());
    h.advance_to(h.t0 + Duration::from_millis(39_500));
    assert_eq!(
        h.events(),
        vec![Event::Failed {
            method: Method::BINDING,
            failure: Failure::Timeout
        }]
    );
}

#[test]
fn renewals_are_scheduled_before_expiry() {
    let mut h = Harness::new();
    let key = h.allocated();
    // Allocation of 600 s: renewed a minute early.
    assert_eq!(h.client.poll_timeout(), Some(h.t0 + secs(540)));
    h.client.create_permission(h.now, &[peer(1).ip()]).unwrap();
    let req = h.one();
    h.feed(&ok(&req, &key));
    let ch = h.client.channel_bind(h.now, peer(2)).unwrap();
    let req = h.one();
    h.feed(&ok(&req, &key));
    assert_eq!(h.events().len(), 2);
    assert_eq!(h.client.poll_timeout(), Some(h.t0 + PERMISSION_REFRESH));

    // 240 s: both permissions (the explicit one and the channel's) in one CreatePermission.
    h.advance_to(h.t0 + PERMISSION_REFRESH);
    let req = h.one();
    let m = Message::parse(&req).unwrap();
    assert_eq!(m.method(), Method::CREATE_PERMISSION);
    let ips: Vec<IpAddr> = m
        .get_all::<XorPeerAddress>()
        .map(|a| a.unwrap().0.ip())
        .collect();
    assert_eq!(ips, vec![peer(1).ip(), peer(2).ip()]);
    h.feed(&ok(&req, &key));
    assert_eq!(h.client.poll_timeout(), Some(h.t0 + CHANNEL_REFRESH));

    // 480 s: the channel and, again, the permissions.
    h.advance_to(h.t0 + CHANNEL_REFRESH);
    let sent = h.sent();
    let methods: Vec<Method> = sent.iter().map(|r| method(r)).collect();
    assert_eq!(
        methods,
        vec![Method::CREATE_PERMISSION, Method::CHANNEL_BIND]
    );
    let bind = Message::parse(&sent[1]).unwrap();
    assert_eq!(
        bind.get::<ChannelNumber>().unwrap(),
        Some(ch),
        "rebinds the same number"
    );
    assert_eq!(
        bind.get::<XorPeerAddress>().unwrap(),
        Some(XorPeerAddress(peer(2)))
    );
    for r in &sent {
        h.feed(&ok(r, &key));
    }
    assert_eq!(h.client.channel(peer(2)), Some(ch));

    // 540 s: the allocation, with the configured lifetime (none: the server's default).
    assert_eq!(h.client.poll_timeout(), Some(h.t0 + secs(540)));
    h.advance_to(h.t0 + secs(540));
    let req = h.one();
    let m = Message::parse(&req).unwrap();
    assert_eq!(m.method(), Method::REFRESH);
    assert_eq!(m.get::<Lifetime>().unwrap(), None);
    h.feed(&allocate_ok(&req, &key, 600));
    assert!(h.events().contains(&Event::Refreshed {
        lifetime: secs(600)
    }));
    // Next: the permissions renewed at 480 s, due again at 720 s; the allocation at 1080 s.
    assert_eq!(
        h.client.poll_timeout(),
        Some(h.t0 + CHANNEL_REFRESH + PERMISSION_REFRESH)
    );
}

#[test]
fn without_auto_refresh_nothing_is_scheduled() {
    let mut h = Harness::with(|c| c.auto_refresh = false);
    let key = h.allocated();
    h.client.create_permission(h.now, &[peer(1).ip()]).unwrap();
    let req = h.one();
    h.feed(&ok(&req, &key));
    assert_eq!(h.client.poll_timeout(), None);
    h.advance_to(h.t0 + secs(3600));
    assert!(h.sent().is_empty());
}

#[test]
fn the_transaction_table_is_bounded() {
    let mut h = Harness::with(|c| c.max_transactions = 2);
    h.client.binding(h.now).unwrap();
    h.client.binding(h.now).unwrap();
    assert_eq!(
        h.client.binding(h.now),
        Err(ClientError::TooManyTransactions)
    );
    assert_eq!(h.sent().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Allocation lifecycle.

#[test]
fn refresh_zero_deallocates() {
    let mut h = Harness::new();
    let key = h.allocated();
    h.client.create_permission(h.now, &[peer(1).ip()]).unwrap();
    let req = h.one();
    h.feed(&ok(&req, &key));
    h.events();
    h.client.deallocate(h.now).unwrap();
    let req = h.one();
    let m = Message::parse(&req).unwrap();
    assert_eq!(m.method(), Method::REFRESH);
    assert_eq!(m.get::<Lifetime>().unwrap(), Some(Lifetime(0)));
    m.verify_integrity(key.as_bytes()).unwrap();
    h.feed(&respond(&req, Class::Success, Some(&key), |e| {
        e.add(&Lifetime(0)).unwrap()
    }));
    assert_eq!(h.events(), vec![Event::Deallocated]);
    assert_eq!(h.client.allocation(), None);
    assert!(!h.client.has_permission(peer(1).ip()));
    assert_eq!(h.client.poll_timeout(), None, "no renewals left");
    assert_eq!(
        h.client.create_permission(h.now, &[peer(1).ip()]),
        Err(ClientError::NotAllocated)
    );
}

#[test]
fn allocation_mismatch_means_the_allocation_is_gone() {
    let mut h = Harness::new();
    let key = h.allocated();
    h.client.refresh(h.now, None).unwrap();
    let req = h.one();
    h.feed(&error(&req, 437, Some(&key)));
    assert_eq!(
        h.events(),
        vec![Event::Failed {
            method: Method::REFRESH,
            failure: Failure::Error(437)
        }]
    );
    assert_eq!(h.client.allocation(), None);

    // Deleting an allocation that is already gone is success.
    let mut h = Harness::new();
    let key = h.allocated();
    h.client.deallocate(h.now).unwrap();
    let req = h.one();
    h.feed(&error(&req, 437, Some(&key)));
    assert_eq!(h.events(), vec![Event::Deallocated]);
}

#[test]
fn operations_need_an_allocation_and_one_at_a_time() {
    let mut h = Harness::new();
    let mut buf = [0u8; 100];
    assert_eq!(
        h.client.refresh(h.now, None),
        Err(ClientError::NotAllocated)
    );
    assert_eq!(
        h.client.channel_bind(h.now, peer(1)),
        Err(ClientError::NotAllocated)
    );
    assert_eq!(
        h.client.send_indication(peer(1), b"x", &mut buf),
        Err(ClientError::NotAllocated)
    );
    h.client.allocate(h.now, RelayFamily::Ipv4).unwrap();
    assert_eq!(
        h.client.allocate(h.now, RelayFamily::Ipv4),
        Err(ClientError::AllocationExists)
    );
    assert!(TurnClient::new(ClientConfig::new(server(), "u".repeat(509), "p"), [0; 32]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Permissions, channels and data.

#[test]
fn channel_numbers_are_unique_and_channel_data_is_encoded() {
    let mut h = Harness::new();
    let key = h.allocated();
    let mut numbers = Vec::new();
    for i in 1..=3 {
        let n = h.client.channel_bind(h.now, peer(i)).unwrap();
        assert!(!numbers.contains(&n));
        numbers.push(n);
    }
    let reqs = h.sent();
    assert_eq!(reqs.len(), 3);
    let mut buf = [0u8; 64];
    assert_eq!(
        h.client.channel_data(peer(1), b"hello", &mut buf),
        Err(ClientError::NoChannel),
        "no ChannelData before the server confirms"
    );
    for (r, n) in reqs.iter().zip(&numbers) {
        let m = Message::parse(r).unwrap();
        assert_eq!(m.get::<ChannelNumber>().unwrap(), Some(*n));
        m.verify_integrity(key.as_bytes()).unwrap();
        h.feed(&ok(r, &key));
    }
    assert_eq!(
        h.events(),
        (1..=3)
            .zip(&numbers)
            .map(|(i, n)| Event::ChannelBound {
                peer: peer(i),
                channel: *n
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        h.client.channel_bind(h.now, peer(2)),
        Ok(numbers[1]),
        "rebinding keeps the number"
    );

    let t = h.client.channel_data(peer(1), b"hello", &mut buf).unwrap();
    assert_eq!(
        t,
        Transmit {
            to: server(),
            len: 9
        }
    );
    let cd = ChannelData::parse(&buf[..t.len]).unwrap();
    assert_eq!(cd.channel, numbers[0]);
    assert_eq!(&buf[cd.payload_range()], b"hello");
    assert_eq!(
        h.client.channel_data(peer(1), b"hello", &mut buf[..8]),
        Err(ClientError::Encode(
            crate::stun::EncodeError::BufferTooSmall
        ))
    );
    // send() picks the channel once it is bound.
    assert_eq!(h.client.send(peer(1), b"hello", &mut buf).unwrap().len, 9);
}

#[test]
fn channel_data_is_padded_on_stream_transports() {
    let mut h = Harness::with(|c| c.transport = Transport::Tcp);
    let key = h.allocated();
    h.client.channel_bind(h.now, peer(1)).unwrap();
    let req = h.one();
    h.feed(&ok(&req, &key));
    let mut buf = [0xAA; 64];
    let t = h.client.channel_data(peer(1), b"hello", &mut buf).unwrap();
    assert_eq!(
        t.len, 12,
        "RFC 8656 section 12.5: padded to 4 bytes over TCP"
    );
    assert_eq!(&buf[4..12], b"hello\0\0\0");
    assert_eq!(ChannelData::parse(&buf[..12]).unwrap().len, 5);
}

#[test]
fn send_indications_are_encoded() {
    let mut h = Harness::new();
    h.allocated();
    let mut buf = [0u8; 128];
    let t = h.client.send(peer(1), b"payload", &mut buf).unwrap();
    assert_eq!(t.to, server());
    let m = Message::parse(&buf[..t.len]).unwrap();
    assert_eq!((m.method(), m.class()), (Method::SEND, Class::Indication));
    assert_eq!(
        m.get::<XorPeerAddress>().unwrap(),
        Some(XorPeerAddress(peer(1)))
    );
    assert_eq!(m.get::<Data<'_>>().unwrap(), Some(Data(b"payload")));
    assert!(
        !m.has_integrity(),
        "indications are not authenticated (RFC 8656 section 10)"
    );
    m.check_fingerprint().unwrap();
    let t2 = h
        .client
        .send_indication(peer(1), b"payload", &mut buf[64..])
        .unwrap();
    assert_ne!(
        tid(&buf[..t.len]),
        tid(&buf[64..64 + t2.len]),
        "each indication has its own id"
    );
}

fn data_indication(from: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut enc = Encoder::new(
        &mut buf,
        MessageType::new(Method::DATA, Class::Indication),
        TransactionId([9; 12]),
    )
    .unwrap();
    enc.add(&XorPeerAddress(from)).unwrap();
    enc.add(&Data(payload)).unwrap();
    enc.fingerprint().unwrap();
    let n = enc.finish();
    buf[..n].to_vec()
}

#[test]
fn data_indications_and_channel_data_are_decoded_in_place() {
    let mut h = Harness::new();
    let key = h.allocated();
    let ind = data_indication(peer(1), b"from peer");
    assert_eq!(
        h.client.handle_input(h.now, server(), &ind),
        Input::Ignored(Ignored::NoPermission),
        "RFC 8656 section 10.4: no permission, no data"
    );
    h.client.create_permission(h.now, &[peer(1).ip()]).unwrap();
    let req = h.one();
    h.feed(&ok(&req, &key));

    match h.client.handle_input(h.now, server(), &ind) {
        Input::Data { peer: p, payload } => {
            assert_eq!(p, peer(1));
            assert_eq!(payload, b"from peer");
            let range = ind.as_ptr_range();
            assert!(range.contains(&payload.as_ptr()), "borrowed, not copied");
        }
        other => panic!("{other:?}"),
    }
    // Any port of a permitted address.
    let other_port = SocketAddr::new(peer(1).ip(), 1);
    assert!(matches!(
        h.client.handle_input(h.now, server(), &data_indication(other_port, b"x")),
        Input::Data { peer, .. } if peer == other_port
    ));

    let ch = h.client.channel_bind(h.now, peer(2)).unwrap();
    let req = h.one();
    h.feed(&ok(&req, &key));
    let mut cd = vec![0u8; 4];
    crate::channel_data::write_header((&mut cd[..4]).try_into().unwrap(), ch, 3);
    cd.extend_from_slice(b"abc\0"); // trailing padding is ignored on UDP
    assert_eq!(
        h.client.handle_input(h.now, server(), &cd),
        Input::Data {
            peer: peer(2),
            payload: b"abc"
        }
    );
    let mut unknown = cd.clone();
    unknown[1] ^= 0x0F;
    assert_eq!(
        h.client.handle_input(h.now, server(), &unknown),
        Input::Ignored(Ignored::UnknownChannel)
    );
    assert_eq!(
        h.client.handle_input(h.now, server(), &cd[..5]),
        Input::Ignored(Ignored::Malformed),
        "shorter than its length field"
    );
    assert_eq!(
        h.client.handle_input(h.now, peer(2), &cd),
        Input::Ignored(Ignored::NotFromServer)
    );
}

#[test]
fn hostile_input_never_panics() {
    use proptest::prelude::*;
    // A client with an outstanding signed ChannelBind, built the same way every time: the seed is
    // fixed, so the request (and the valid response to it) is too.
    fn setup() -> (Harness, Vec<u8>) {
        let mut h = Harness::new();
        let key = h.allocated();
        h.client.channel_bind(h.now, peer(1)).unwrap();
        let req = h.one();
        let resp = ok(&req, &key);
        (h, resp)
    }
    let (_, template) = setup();
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(
            &(
                proptest::collection::vec(any::<u8>(), 0..200),
                any::<usize>(),
                any::<u8>(),
            ),
            |(noise, at, flip)| {
                let (mut h, resp) = setup();
                prop_assert_eq!(&resp, &template);
                let _ = h.client.handle_input(h.now, server(), &noise);
                let mut mutated = resp.clone();
                let i = at % mutated.len();
                mutated[i] ^= flip;
                let _ = h.client.handle_input(h.now, server(), &mutated);
                let mut buf = [0u8; 1500];
                while h.client.poll_transmit(&mut buf).is_some() {}
                while h.client.poll_event().is_some() {}
                h.advance_to(h.t0 + secs(1000));
                Ok(())
            },
        )
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// RFC 6062: TCP allocations, Connect, ConnectionBind, ConnectionAttempt.

impl Harness {
    /// A TCP allocation over TCP, granted after a 401; returns the key.
    fn tcp_allocated(&mut self) -> LongTermKey {
        self.client
            .allocate_tcp(self.now, RelayFamily::Ipv4)
            .unwrap();
        let first = self.one();
        let m = Message::parse(&first).unwrap();
        assert_eq!(
            m.get::<RequestedTransport>().unwrap(),
            Some(RequestedTransport::TCP)
        );
        self.feed(&challenge(&first, 401, "nonce-1", None));
        let retry = self.one();
        let key = md5_key();
        self.feed(&allocate_ok(&retry, &key, 600));
        match self.events()[..] {
            [Event::Allocated(a)] => assert!(a.tcp),
            ref other => panic!("{other:?}"),
        }
        key
    }
}

fn connection_attempt(p: SocketAddr, id: u32) -> Vec<u8> {
    let mut buf = [0u8; 200];
    let mut e = Encoder::new(
        &mut buf,
        MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication),
        TransactionId([3; 12]),
    )
    .unwrap();
    e.add(&XorPeerAddress(p)).unwrap();
    e.add(&ConnectionId(id)).unwrap();
    let n = e.finish();
    buf[..n].to_vec()
}

#[test]
fn tcp_operations_need_a_stream_and_a_tcp_allocation() {
    let mut h = Harness::new();
    assert_eq!(
        h.client.allocate_tcp(h.now, RelayFamily::Ipv4),
        Err(ClientError::NeedsStream)
    );
    assert_eq!(
        h.client.connection_bind(h.now, ConnectionId(1)),
        Err(ClientError::NeedsStream)
    );
    assert_eq!(
        h.client.connect(h.now, peer(1)),
        Err(ClientError::NotAllocated)
    );
    h.allocated();
    assert_eq!(
        h.client.connect(h.now, peer(1)),
        Err(ClientError::NotTcpAllocation)
    );
    // A ConnectionAttempt means nothing to a UDP allocation.
    assert_eq!(
        h.feed(&connection_attempt(peer(1), 9)),
        Input::Ignored(Ignored::Unexpected)
    );
    assert!(h.sent().is_empty());
}

#[test]
fn connect_success_failure_and_connection_attempt() {
    let mut h = Harness::with(|c| c.transport = Transport::Tls);
    let key = h.tcp_allocated();

    h.client.connect(h.now, peer(1)).unwrap();
    let req = h.one();
    let m = Message::parse(&req).unwrap();
    assert_eq!(m.method(), Method::CONNECT);
    assert_eq!(
        m.get::<XorPeerAddress>().unwrap(),
        Some(XorPeerAddress(peer(1)))
    );
    m.verify_integrity(key.as_bytes()).unwrap();
    let resp = respond(&req, Class::Success, Some(&key), |e| {
        e.add(&ConnectionId(0x0012_3456)).unwrap()
    });
    assert_eq!(h.feed(&resp), Input::Handled);
    assert_eq!(
        h.events(),
        vec![Event::Connected {
            peer: peer(1),
            id: ConnectionId(0x0012_3456)
        }]
    );

    // 447, and a success without CONNECTION-ID.
    h.client.connect(h.now, peer(2)).unwrap();
    let req = h.one();
    h.feed(&error(&req, 447, Some(&key)));
    h.client.connect(h.now, peer(3)).unwrap();
    let req = h.one();
    h.feed(&ok(&req, &key));
    assert_eq!(
        h.events(),
        vec![
            Event::Failed {
                method: Method::CONNECT,
                failure: Failure::Error(447)
            },
            Event::Failed {
                method: Method::CONNECT,
                failure: Failure::BadResponse
            }
        ]
    );
    // Over a stream nothing is sent twice, and a Connect waits Ti for its answer.
    h.client.connect(h.now, peer(4)).unwrap();
    assert_eq!(h.sent().len(), 1);
    h.advance_to(h.now + secs(30));
    assert!(h.sent().is_empty());

    assert_eq!(h.feed(&connection_attempt(peer(5), 77)), Input::Handled);
    assert_eq!(
        h.events(),
        vec![Event::ConnectionAttempt {
            peer: peer(5),
            id: ConnectionId(77)
        }]
    );
    // Without CONNECTION-ID it is malformed.
    let mut bad = connection_attempt(peer(5), 77);
    bad.truncate(bad.len() - 8);
    let len = (bad.len() - 20) as u16;
    bad[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(h.feed(&bad), Input::Ignored(Ignored::Malformed));
}

#[test]
fn connection_bind_on_a_data_connection_answers_its_challenge() {
    let mut h = Harness::with(|c| c.transport = Transport::Tcp);
    h.client.connection_bind(h.now, ConnectionId(42)).unwrap();
    let first = h.one();
    let m = Message::parse(&first).unwrap();
    assert_eq!(m.method(), Method::CONNECTION_BIND);
    assert_eq!(m.get::<ConnectionId>().unwrap(), Some(ConnectionId(42)));
    assert!(
        !m.has_integrity(),
        "the first copy goes without credentials"
    );
    h.feed(&challenge(&first, 401, "nonce-data", None));
    let retry = h.one();
    let m = Message::parse(&retry).unwrap();
    assert_eq!(m.get::<ConnectionId>().unwrap(), Some(ConnectionId(42)));
    m.verify_integrity(md5_key().as_bytes()).unwrap();
    h.feed(&ok(&retry, &md5_key()));
    assert_eq!(
        h.events(),
        vec![Event::ConnectionBound {
            id: ConnectionId(42)
        }]
    );
}
