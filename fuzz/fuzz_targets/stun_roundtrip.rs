//! Feeds arbitrary datagrams to everything that sees network bytes first: the demultiplexer,
//! the ChannelData header parser and the STUN parser. A message that parses is walked
//! attribute by attribute, re-encoded from its decoded attributes, and must parse back to
//! the same message type, transaction id, attributes and unknown-attribute list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uturn_proto::channel_data::ChannelData;
use uturn_proto::stun::attr::{AnyAttribute, Lifetime, Username, XorPeerAddress};
use uturn_proto::stun::{Encoder, Message};
use uturn_proto::{classify, PacketKind};

fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    if let Ok(cd) = ChannelData::parse(data) {
        // The payload the header claims lies inside the datagram.
        assert!(cd.payload_range().end <= data.len());
        assert_eq!(kind, PacketKind::ChannelData);
    }

    let Ok(m) = Message::parse(data) else {
        return;
    };
    // RFC 7983 gives STUN only first bytes 0-3; a valid message of a method above 0xFF starts
    // higher and the demultiplexer rightly leaves it to DTLS and the rest.
    if data[0] <= 3 {
        assert_eq!(kind, PacketKind::Stun);
    }
    let tid = m.transaction_id();

    // Every visible attribute: bounds, then the generic decoder. Values that do not decode are
    // dropped from the re-encoding; they can only sit before the integrity attributes, so
    // dropping them changes no other attribute's visibility.
    let mut decoded = Vec::new();
    for a in m.attributes() {
        assert!(a.offset + 4 + a.value.len() <= data.len());
        if let Ok(d) = AnyAttribute::decode(a.typ, a.value, &tid) {
            assert_eq!(d.typ(), a.typ);
            decoded.push(d);
        }
    }
    // Typed accessors and the checks must not panic either, whatever the message holds.
    let _ = m.get::<Username<'_>>();
    let _ = m.get::<Lifetime>();
    let _ = m.get_all::<XorPeerAddress>().count();
    let _ = m.verify_integrity(b"fuzz key");
    let _ = m.verify_integrity_sha256(b"fuzz key");
    let _ = m.check_fingerprint();

    // Re-encoding writes the same value lengths, so it fits in the original's size.
    let mut buf = vec![0u8; data.len()];
    let mut enc = Encoder::new(&mut buf, m.message_type(), tid).expect("room for a header");
    for d in &decoded {
        d.encode_into(&mut enc)
            .expect("a decoded attribute re-encodes");
    }
    let n = enc.finish();
    let m2 = Message::parse(&buf[..n]).expect("re-encoded message parses");
    assert_eq!(m2.message_type(), m.message_type());
    assert_eq!(m2.transaction_id(), tid);
    let again: Vec<AnyAttribute<'_>> = m2
        .attributes()
        .map(|a| AnyAttribute::decode(a.typ, a.value, &tid).expect("re-encoded attribute decodes"))
        .collect();
    assert_eq!(again, decoded);
    assert_eq!(m2.unknown_attributes(), m.unknown_attributes());
});
