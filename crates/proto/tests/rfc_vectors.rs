//! RFC 5769 and RFC 8489 appendix B.1 test vectors, parsed and re-encoded byte for byte.

mod vectors;

use std::net::SocketAddr;
use uturn_proto::stun::attr::*;
use uturn_proto::stun::integrity::userhash;
use uturn_proto::stun::{
    Class, Encoder, IntegrityError, LongTermKey, Message, MessageType, Method, PasswordAlgorithmId,
    TransactionId,
};
use vectors::*;

fn tid(b: [u8; 12]) -> TransactionId {
    TransactionId(b)
}

#[test]
fn rfc5769_sample_request_parses() {
    let m = Message::parse(SAMPLE_REQUEST).unwrap();
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.transaction_id(), tid(SAMPLE_REQUEST_TRANSACTION_ID));
    assert_eq!(
        m.get::<Software<'_>>().unwrap(),
        Some(Software(SAMPLE_REQUEST_SOFTWARE))
    );
    assert_eq!(
        m.get::<Priority>().unwrap(),
        Some(Priority(SAMPLE_REQUEST_PRIORITY))
    );
    assert_eq!(
        m.get::<IceControlled>().unwrap(),
        Some(IceControlled(SAMPLE_REQUEST_ICE_CONTROLLED_TIEBREAKER))
    );
    assert_eq!(
        m.get::<Username<'_>>().unwrap(),
        Some(Username(SAMPLE_REQUEST_USERNAME))
    );
    let types: Vec<u16> = m.attributes().map(|a| a.typ).collect();
    assert_eq!(types, SAMPLE_REQUEST_ATTRIBUTE_TYPES);
    assert!(m.unknown_attributes().is_empty());
    m.verify_integrity(SAMPLE_REQUEST_PASSWORD.as_bytes())
        .unwrap();
    m.check_fingerprint().unwrap();
    assert_eq!(
        m.verify_integrity(b"wrong password"),
        Err(IntegrityError::Mismatch)
    );
}

#[test]
fn rfc5769_sample_request_encodes() {
    let mut buf = [0u8; 256];
    let mut e = Encoder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        tid(SAMPLE_REQUEST_TRANSACTION_ID),
    )
    .unwrap();
    // RFC 5769 pads with spaces to prove receivers ignore padding.
    e.padding_byte(0x20);
    e.add(&Software(SAMPLE_REQUEST_SOFTWARE)).unwrap();
    e.add(&Priority(SAMPLE_REQUEST_PRIORITY)).unwrap();
    e.add(&IceControlled(SAMPLE_REQUEST_ICE_CONTROLLED_TIEBREAKER))
        .unwrap();
    e.add(&Username(SAMPLE_REQUEST_USERNAME)).unwrap();
    e.message_integrity(SAMPLE_REQUEST_PASSWORD.as_bytes())
        .unwrap();
    e.fingerprint().unwrap();
    let n = e.finish();
    assert_eq!(&buf[..n], SAMPLE_REQUEST);
}

fn check_response(raw: &[u8], addr: &str, xor_addr_len: usize) {
    let m = Message::parse(raw).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.method(), Method::BINDING);
    let want: SocketAddr = addr.parse().unwrap();
    assert_eq!(
        m.get::<XorMappedAddress>().unwrap(),
        Some(XorMappedAddress(want))
    );
    assert_eq!(
        m.get::<Software<'_>>().unwrap(),
        Some(Software(SAMPLE_IPV4_RESPONSE_SOFTWARE))
    );
    m.verify_integrity(RFC5769_SHORT_TERM_PASSWORD.as_bytes())
        .unwrap();
    m.check_fingerprint().unwrap();

    let mut buf = [0u8; 256];
    let mut e = Encoder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Success),
        tid(RFC5769_SHORT_TERM_TRANSACTION_ID),
    )
    .unwrap();
    e.padding_byte(0x20);
    e.add(&Software(SAMPLE_IPV4_RESPONSE_SOFTWARE)).unwrap();
    e.add(&XorMappedAddress(want)).unwrap();
    e.message_integrity(RFC5769_SHORT_TERM_PASSWORD.as_bytes())
        .unwrap();
    e.fingerprint().unwrap();
    let n = e.finish();
    assert_eq!(&buf[..n], raw);
    assert_eq!(XorMappedAddress(want).value_len(), xor_addr_len);
}

#[test]
fn rfc5769_ipv4_response() {
    check_response(SAMPLE_IPV4_RESPONSE, SAMPLE_IPV4_RESPONSE_MAPPED_ADDR, 8);
}

#[test]
fn rfc5769_ipv6_response() {
    check_response(SAMPLE_IPV6_RESPONSE, SAMPLE_IPV6_RESPONSE_MAPPED_ADDR, 20);
}

#[test]
fn rfc5769_long_term_request() {
    let m = Message::parse(SAMPLE_REQUEST_LONG_TERM).unwrap();
    assert_eq!(
        m.get::<Username<'_>>().unwrap(),
        Some(Username(SAMPLE_REQUEST_LONG_TERM_USERNAME))
    );
    assert_eq!(
        m.get::<Nonce<'_>>().unwrap(),
        Some(Nonce(SAMPLE_REQUEST_LONG_TERM_NONCE))
    );
    assert_eq!(
        m.get::<Realm<'_>>().unwrap(),
        Some(Realm(SAMPLE_REQUEST_LONG_TERM_REALM))
    );
    let key = LongTermKey::derive(
        PasswordAlgorithmId::Md5,
        SAMPLE_REQUEST_LONG_TERM_USERNAME,
        SAMPLE_REQUEST_LONG_TERM_REALM,
        SAMPLE_REQUEST_LONG_TERM_PASSWORD,
    );
    assert_eq!(key.as_bytes(), SAMPLE_REQUEST_LONG_TERM_KEY);
    m.verify_integrity(key.as_bytes()).unwrap();
    assert!(!m.has_fingerprint());

    let mut buf = [0u8; 256];
    let mut e = Encoder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        tid(SAMPLE_REQUEST_LONG_TERM_TRANSACTION_ID),
    )
    .unwrap();
    e.add(&Username(SAMPLE_REQUEST_LONG_TERM_USERNAME)).unwrap();
    e.add(&Nonce(SAMPLE_REQUEST_LONG_TERM_NONCE)).unwrap();
    e.add(&Realm(SAMPLE_REQUEST_LONG_TERM_REALM)).unwrap();
    e.message_integrity(key.as_bytes()).unwrap();
    let n = e.finish();
    assert_eq!(&buf[..n], SAMPLE_REQUEST_LONG_TERM);
}

#[test]
fn rfc8489_b1_sha256_userhash() {
    let raw = RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256;
    let user = RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_USERNAME;
    let realm = RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_REALM;
    let m = Message::parse(raw).unwrap();
    let hash = userhash(user, realm);
    assert_eq!(hash, RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_USERHASH);
    assert_eq!(m.get::<Userhash>().unwrap(), Some(Userhash(hash)));
    assert_eq!(
        m.get::<Nonce<'_>>().unwrap(),
        Some(Nonce(RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_NONCE))
    );
    assert_eq!(m.get::<Realm<'_>>().unwrap(), Some(Realm(realm)));
    let alg = m.get::<PasswordAlgorithm<'_>>().unwrap().unwrap();
    assert_eq!(alg, PasswordAlgorithm::SHA256);
    let key = LongTermKey::derive(
        PasswordAlgorithmId::Sha256,
        user,
        realm,
        RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_PASSWORD,
    );
    assert_eq!(key.as_bytes(), RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_KEY);
    m.verify_integrity_sha256(key.as_bytes()).unwrap();
    assert_eq!(
        m.verify_integrity(key.as_bytes()),
        Err(IntegrityError::Missing)
    );
    let md5 = LongTermKey::derive(PasswordAlgorithmId::Md5, user, realm, "TheMatrIX");
    assert_eq!(
        m.verify_integrity_sha256(md5.as_bytes()),
        Err(IntegrityError::Mismatch)
    );

    let mut buf = [0u8; 256];
    let mut e = Encoder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        tid(RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_TRANSACTION_ID),
    )
    .unwrap();
    e.add(&Userhash(hash)).unwrap();
    e.add(&Nonce(RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_NONCE))
        .unwrap();
    e.add(&Realm(realm)).unwrap();
    e.add(&PasswordAlgorithm::SHA256).unwrap();
    e.message_integrity_sha256(key.as_bytes()).unwrap();
    let n = e.finish();
    assert_eq!(&buf[..n], raw);
}

#[test]
fn rfc8489_b1_as_published_fails_integrity() {
    // The published text has a length field of 0x009c for a 156-byte message; the parser must
    // refuse it rather than read past the end.
    assert!(Message::parse(RFC8489_B1_AS_PUBLISHED).is_err());
}
