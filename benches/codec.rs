//! Codec throughput on the paths a relay runs per packet. Each iteration handles one message,
//! and `Throughput::Elements(1)` makes criterion report messages per second. Results and the
//! machine they came from are in benches/README.md.
//!
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use uturn_proto::channel_data::{self, ChannelData};
use uturn_proto::stun::attr::{
    Lifetime, Nonce, Realm, RequestedTransport, Username, XorMappedAddress,
};
use uturn_proto::stun::{
    Class, Encoder, LongTermKey, Message, MessageType, Method, PasswordAlgorithmId, TransactionId,
};
use uturn_proto::{classify, ChannelNumber, PacketKind};

/// RFC 5769 section 2.1 "Sample Request": Binding request with SOFTWARE, PRIORITY,
/// ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY and FINGERPRINT (108 bytes). The same bytes are
/// checked against the RFC in crates/proto/tests/vectors/mod.rs.
#[rustfmt::skip]
const RFC5769_SAMPLE_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01,
    0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10,
    0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c,
    0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
    0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76,
    0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c,
    0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

const TID: TransactionId = TransactionId([
    0x2a, 0x51, 0x07, 0x93, 0xc4, 0x10, 0x6e, 0x3b, 0x99, 0x02, 0xfe, 0x18,
]);

/// A Binding request with FINGERPRINT only (28 bytes), as STUN clients send for discovery.
fn minimal_binding_request() -> Vec<u8> {
    let mut buf = [0u8; 64];
    let typ = MessageType::new(Method::BINDING, Class::Request);
    let mut enc = Encoder::new(&mut buf, typ, TID).expect("room for a header");
    enc.fingerprint().expect("fits");
    let n = enc.finish();
    buf[..n].to_vec()
}

const USER: &str = "user-1234";
const REALM: &str = "uturn.example.org";
const NONCE: &str = "obMatJos2AAABdGhpcyBpcyBhIG5vbmNlIGZvciBiZW5jaA";
const PASSWORD: &str = "correct horse battery staple";

/// An authenticated Allocate request (RFC 8656 section 7.1) with an MD5 long-term key.
fn allocate_request(key: &LongTermKey) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let typ = MessageType::new(Method::ALLOCATE, Class::Request);
    let mut enc = Encoder::new(&mut buf, typ, TID).expect("room for a header");
    enc.add(&Username(USER)).expect("fits");
    enc.add(&Realm(REALM)).expect("fits");
    enc.add(&Nonce(NONCE)).expect("fits");
    enc.add(&RequestedTransport::UDP).expect("fits");
    enc.add(&Lifetime(600)).expect("fits");
    enc.message_integrity(key.as_bytes()).expect("fits");
    enc.fingerprint().expect("fits");
    let n = enc.finish();
    buf[..n].to_vec()
}

/// Writes a Binding success response for `tid` into `out`: XOR-MAPPED-ADDRESS and
/// FINGERPRINT. Returns the length.
#[inline]
fn binding_success(out: &mut [u8], tid: TransactionId, mapped: SocketAddr) -> usize {
    let typ = MessageType::new(Method::BINDING, Class::Success);
    let Ok(mut enc) = Encoder::new(out, typ, tid) else {
        return 0;
    };
    if enc.add(&XorMappedAddress(mapped)).is_err() || enc.fingerprint().is_err() {
        return 0;
    }
    enc.finish()
}

fn channel_data(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_data");
    g.throughput(Throughput::Elements(1));
    let mut packet = [0xA5u8; 100];
    let channel = ChannelNumber::new(0x4001).expect("in range");
    let mut header = [0u8; channel_data::HEADER_LEN];
    channel_data::write_header(&mut header, channel, 96);
    packet[..4].copy_from_slice(&header);
    let run = |p: &[u8]| match classify(p) {
        PacketKind::ChannelData => ChannelData::parse(p).ok(),
        _ => None,
    };
    // Measure the accepting path, not an early rejection.
    assert_eq!(run(&packet).map(|cd| cd.payload_range()), Some(4..100));
    g.bench_function("classify_parse_100B", |b| {
        b.iter(|| run(black_box(&packet[..])))
    });
    g.finish();
}

fn binding_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("binding_request");
    g.throughput(Throughput::Elements(1));
    assert!(Message::parse(&RFC5769_SAMPLE_REQUEST).is_ok());
    g.bench_function("parse_rfc5769_sample", |b| {
        b.iter(|| Message::parse(black_box(&RFC5769_SAMPLE_REQUEST[..])).map(|m| m.class()))
    });
    let minimal = minimal_binding_request();
    assert!(Message::parse(&minimal).is_ok());
    g.bench_function("parse_minimal_fingerprint", |b| {
        b.iter(|| Message::parse(black_box(&minimal[..])).map(|m| m.class()))
    });
    g.finish();
}

fn allocate_verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocate_request");
    g.throughput(Throughput::Elements(1));
    // A server derives the long-term key once per user and caches it; the per-request work
    // is the parse, the attribute reads, FINGERPRINT and the HMAC.
    let key = LongTermKey::derive(PasswordAlgorithmId::Md5, USER, REALM, PASSWORD);
    let raw = allocate_request(&key);
    let run = |raw: &[u8], key: &[u8]| {
        let m = Message::parse(raw).ok()?;
        m.check_fingerprint().ok()?;
        let user = m.get::<Username<'_>>().ok()??;
        let realm = m.get::<Realm<'_>>().ok()??;
        let nonce = m.get::<Nonce<'_>>().ok()??;
        let transport = m.get::<RequestedTransport>().ok()??;
        m.verify_integrity(key).ok()?;
        Some((user.0.len(), realm.0.len(), nonce.0.len(), transport.0))
    };
    assert_eq!(
        run(&raw, key.as_bytes()),
        Some((USER.len(), REALM.len(), NONCE.len(), 17))
    );
    g.bench_function("parse_verify_md5_fingerprint", |b| {
        b.iter(|| run(black_box(&raw[..]), black_box(key.as_bytes())))
    });
    g.finish();
}

fn binding_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("binding_success");
    g.throughput(Throughput::Elements(1));
    let mapped: SocketAddr = "203.0.113.77:54321".parse().expect("address");
    let mut probe = [0u8; 64];
    let n = binding_success(&mut probe, TID, mapped);
    assert_eq!(n, 20 + 12 + 8);
    let m = Message::parse(&probe[..n]).expect("parses");
    assert!(m.check_fingerprint().is_ok());
    assert_eq!(
        m.get::<XorMappedAddress>(),
        Ok(Some(XorMappedAddress(mapped)))
    );
    g.bench_function("encode_xor_mapped_fingerprint", |b| {
        b.iter(|| {
            let mut out = [0u8; 64];
            let n = binding_success(&mut out, black_box(TID), black_box(mapped));
            black_box(out);
            n
        })
    });
    g.finish();
}

fn binding_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("binding");
    g.throughput(Throughput::Elements(1));
    let request = minimal_binding_request();
    let mapped: SocketAddr = "203.0.113.77:54321".parse().expect("address");
    // What a STUN server does per Binding request: demultiplex, parse, check FINGERPRINT and
    // the 420 rule, answer with the reflexive address.
    let run = |p: &[u8], out: &mut [u8; 64]| {
        if classify(p) != PacketKind::Stun {
            return 0;
        }
        let Ok(m) = Message::parse(p) else {
            return 0;
        };
        if m.method() != Method::BINDING
            || m.class() != Class::Request
            || m.check_fingerprint().is_err()
            || !m.unknown_attributes().is_empty()
        {
            return 0;
        }
        binding_success(out, m.transaction_id(), mapped)
    };
    let mut probe = [0u8; 64];
    assert_eq!(run(&request, &mut probe), 40);
    g.bench_function("request_parse_success_encode", |b| {
        b.iter(|| {
            let mut out = [0u8; 64];
            let n = run(black_box(&request[..]), &mut out);
            black_box(out);
            n
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    channel_data,
    binding_parse,
    allocate_verify,
    binding_encode,
    binding_round_trip
);
criterion_main!(benches);
