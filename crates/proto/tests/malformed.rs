//! Malformed input: every way a datagram can be broken, each with the exact error the codec
//! must give. Also the ChannelData header checks and the RFC 7983 first-byte demultiplexing.

use std::net::SocketAddr;

use uturn_proto::channel_data::{ChannelData, ChannelDataError};
use uturn_proto::stun::attr::{types, *};
use uturn_proto::stun::message::MAX_UNKNOWN;
use uturn_proto::stun::{
    Class, Encoder, IntegrityError, Message, MessageType, Method, ParseError, TransactionId,
    HEADER_LEN, MAGIC_COOKIE,
};
use uturn_proto::{classify, ChannelNumber, PacketKind};

const TID: [u8; 12] = *b"malformed-tx";

/// A STUN header for a Binding request whose length field says `len`, followed by `body`. The
/// length field is *not* derived from `body`, so the two can disagree on purpose.
fn with_len(len: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + body.len());
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(&TID);
    m.extend_from_slice(body);
    m
}

/// A STUN header with a correct length field in front of `body`.
fn stun(body: &[u8]) -> Vec<u8> {
    with_len(u16::try_from(body.len()).expect("short body"), body)
}

/// One TLV, padded with zeros to 4 bytes.
fn tlv(typ: u16, value: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&typ.to_be_bytes());
    t.extend_from_slice(&u16::try_from(value.len()).expect("short").to_be_bytes());
    t.extend_from_slice(value);
    t.resize(t.len() + (4 - value.len() % 4) % 4, 0);
    t
}

fn parse(b: &[u8]) -> Result<(), ParseError> {
    Message::parse(b).map(|_| ())
}

/// Decodes `value` as an attribute of type `$ty` through a whole message, the way a server
/// reads it: the message parses, and `get` reports the attribute's error. (A macro because the
/// borrowing attribute types have a lifetime tied to the local buffer.)
macro_rules! get_err {
    ($ty:ty, $value:expr) => {{
        let raw = stun(&tlv(<$ty as Attribute<'_>>::TYPE, $value));
        let m = Message::parse(&raw).expect("framing is fine");
        m.get::<$ty>().expect_err("value must be refused")
    }};
}

// ---------------------------------------------------------------------------------------------
// Header (RFC 8489 section 5 and 6.3).

#[test]
fn empty_datagram_is_too_short() {
    assert_eq!(parse(&[]), Err(ParseError::TooShort));
}

#[test]
fn nineteen_byte_header_is_too_short() {
    let raw = stun(&[]);
    assert_eq!(parse(&raw[..19]), Err(ParseError::TooShort));
    assert_eq!(parse(&raw[..1]), Err(ParseError::TooShort));
}

#[test]
fn leading_bits_set_is_not_stun() {
    for top in [0x40u8, 0x80, 0xC0] {
        let mut raw = stun(&[]);
        raw[0] |= top;
        assert_eq!(
            parse(&raw),
            Err(ParseError::NotStun),
            "first byte {:#04x}",
            raw[0]
        );
    }
}

#[test]
fn wrong_magic_cookie() {
    for i in 4..8 {
        let mut raw = stun(&[]);
        raw[i] ^= 0x01;
        assert_eq!(parse(&raw), Err(ParseError::BadCookie), "byte {i}");
    }
    // An RFC 3489 style header: transaction id where the cookie should be.
    let mut raw = stun(&[]);
    raw[4..8].copy_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]);
    assert_eq!(parse(&raw), Err(ParseError::BadCookie));
}

#[test]
fn length_claiming_more_than_the_datagram() {
    assert_eq!(parse(&with_len(4, &[])), Err(ParseError::LengthMismatch));
    assert_eq!(
        parse(&with_len(8, &[0; 4])),
        Err(ParseError::LengthMismatch)
    );
    assert_eq!(
        parse(&with_len(0xFFFF, &[])),
        Err(ParseError::LengthMismatch)
    );
    assert_eq!(
        parse(&with_len(0xFFFF, &[0; 1000])),
        Err(ParseError::LengthMismatch)
    );
    // 65532 claimed, one word short.
    assert_eq!(
        parse(&with_len(0xFFFC, &vec![0; 0xFFF8])),
        Err(ParseError::LengthMismatch)
    );
}

#[test]
fn length_less_than_the_datagram() {
    assert_eq!(
        parse(&with_len(0, &[0; 4])),
        Err(ParseError::LengthMismatch)
    );
    let mut raw = stun(&tlv(0x8022, b"abcd"));
    raw.extend_from_slice(&[0; 4]);
    assert_eq!(parse(&raw), Err(ParseError::LengthMismatch));
}

#[test]
fn length_not_a_multiple_of_four() {
    for n in [1usize, 2, 3, 5, 6, 7, 0xFFFF] {
        let body = vec![0u8; n];
        assert_eq!(
            parse(&stun(&body)),
            Err(ParseError::UnalignedLength),
            "length {n}"
        );
    }
}

#[test]
fn zero_length_body_is_a_valid_message_without_attributes() {
    let raw = stun(&[]);
    let m = Message::parse(&raw).expect("valid");
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.transaction_id(), TransactionId(TID));
    assert_eq!(m.attributes().count(), 0);
    assert!(m.unknown_attributes().is_empty());
    assert_eq!(m.get::<Username<'_>>(), Ok(None));
    assert_eq!(m.verify_integrity(b"key"), Err(IntegrityError::Missing));
    assert_eq!(
        m.verify_integrity_sha256(b"key"),
        Err(IntegrityError::Missing)
    );
    assert_eq!(m.check_fingerprint(), Err(IntegrityError::Missing));
}

// ---------------------------------------------------------------------------------------------
// Attribute framing (RFC 8489 section 14).

/// An attribute header cut short. Attributes start on 4-byte boundaries and the body length
/// must be a multiple of 4, so a partial header always shows up as an unaligned length (or as
/// a length field that disagrees with the datagram) before the attribute walk starts. That
/// makes `AttrHeaderTruncated` unreachable from `Message::parse`; it stays as a guard.
#[test]
fn truncated_attribute_header() {
    for n in 1..4 {
        let header = &tlv(0x0006, b"user")[..n];
        assert_eq!(
            parse(&stun(header)),
            Err(ParseError::UnalignedLength),
            "{n} bytes"
        );
        assert_eq!(
            parse(&with_len(4, header)),
            Err(ParseError::LengthMismatch),
            "{n} bytes, length 4"
        );
    }
    let mut body = tlv(0x8022, b"abcd");
    body.extend_from_slice(&[0x00, 0x06]);
    assert_eq!(parse(&stun(&body)), Err(ParseError::UnalignedLength));
}

#[test]
fn attribute_value_running_past_the_end() {
    // USERNAME says 8 bytes, 4 follow.
    let mut body = vec![0x00, 0x06, 0x00, 0x08];
    body.extend_from_slice(b"abcd");
    assert_eq!(parse(&stun(&body)), Err(ParseError::AttrValueTruncated));
    // One byte too many.
    let body = [0x00, 0x06, 0x00, 0x05, b'a', b'b', b'c', b'd'];
    assert_eq!(parse(&stun(&body)), Err(ParseError::AttrValueTruncated));
    // The largest length an attribute can claim.
    let body = [0x00, 0x13, 0xFF, 0xFF, 0, 0, 0, 0];
    assert_eq!(parse(&stun(&body)), Err(ParseError::AttrValueTruncated));
    // A later attribute running past the end after a good one.
    let mut body = tlv(0x8022, b"ok");
    body.extend_from_slice(&[0x00, 0x13, 0x00, 0x40, 1, 2, 3, 4]);
    assert_eq!(parse(&stun(&body)), Err(ParseError::AttrValueTruncated));
}

/// An attribute without its padding. With the padding missing, either the body length is not a
/// multiple of 4 (the sender counted the value only) or the length field claims the padding
/// that the datagram lacks.
#[test]
fn attribute_with_missing_padding() {
    let unpadded = [0x00, 0x06, 0x00, 0x05, b'a', b'l', b'i', b'c', b'e'];
    assert_eq!(parse(&stun(&unpadded)), Err(ParseError::UnalignedLength));
    assert_eq!(
        parse(&with_len(12, &unpadded)),
        Err(ParseError::LengthMismatch)
    );
    // Another attribute right after the unpadded value: the body stays unaligned.
    let mut body = unpadded.to_vec();
    body.extend_from_slice(&tlv(0x8022, b"x"));
    assert_eq!(parse(&stun(&body)), Err(ParseError::UnalignedLength));
    // With the padding in place the same value is fine.
    let raw = stun(&tlv(0x0006, b"alice"));
    assert_eq!(
        Message::parse(&raw).expect("valid").get::<Username<'_>>(),
        Ok(Some(Username("alice")))
    );
}

/// MESSAGE-INTEGRITY is 20 bytes; the parser refuses any other length outright, since it has
/// to locate the HMAC.
#[test]
fn message_integrity_of_the_wrong_length() {
    for n in [0usize, 4, 16, 19, 21, 24, 32] {
        let raw = stun(&tlv(types::MESSAGE_INTEGRITY, &vec![0; n]));
        assert_eq!(
            parse(&raw),
            Err(ParseError::AttrLength(types::MESSAGE_INTEGRITY)),
            "length {n}"
        );
    }
    assert_eq!(
        parse(&stun(&tlv(types::MESSAGE_INTEGRITY, &[0; 20]))),
        Ok(())
    );
}

#[test]
fn message_integrity_sha256_and_fingerprint_of_the_wrong_length() {
    for n in [0usize, 4, 12, 15, 18, 30, 36, 64] {
        let raw = stun(&tlv(types::MESSAGE_INTEGRITY_SHA256, &vec![0; n]));
        assert_eq!(
            parse(&raw),
            Err(ParseError::AttrLength(types::MESSAGE_INTEGRITY_SHA256)),
            "length {n}"
        );
    }
    for n in [16usize, 20, 24, 28, 32] {
        let raw = stun(&tlv(types::MESSAGE_INTEGRITY_SHA256, &vec![0; n]));
        assert_eq!(parse(&raw), Ok(()), "length {n}");
    }
    for n in [0usize, 2, 8] {
        let raw = stun(&tlv(types::FINGERPRINT, &vec![0; n]));
        assert_eq!(
            parse(&raw),
            Err(ParseError::AttrLength(types::FINGERPRINT)),
            "length {n}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Typed attribute values. These are checked when the attribute is read (`get`), not by
// `parse`, so that a message with one odd attribute can still be answered with an error.

/// Every attribute with a fixed value length, with a length one short, one long and zero (or
/// one for the empty flags), through `AnyAttribute::decode` and `Message::get`.
#[test]
fn wrong_fixed_lengths_are_attr_length() {
    let tid = TransactionId(TID);
    let fixed: &[(u16, usize)] = &[
        (types::LIFETIME, 4),
        (types::PRIORITY, 4),
        (types::CONNECTION_ID, 4),
        (types::FINGERPRINT, 4),
        (types::REQUESTED_TRANSPORT, 4),
        (types::RESPONSE_PORT, 4),
        (types::CHANNEL_NUMBER, 4),
        (types::CHANGE_REQUEST, 4),
        (types::REQUESTED_ADDRESS_FAMILY, 4),
        (types::ADDITIONAL_ADDRESS_FAMILY, 4),
        (types::EVEN_PORT, 1),
        (types::ICE_CONTROLLED, 8),
        (types::ICE_CONTROLLING, 8),
        (types::RESERVATION_TOKEN, 8),
        (types::ICMP, 8),
        (types::MESSAGE_INTEGRITY, 20),
        (types::USERHASH, 32),
        (types::DONT_FRAGMENT, 0),
        (types::USE_CANDIDATE, 0),
    ];
    for &(typ, len) in fixed {
        let mut wrong = vec![len + 1, len + 4];
        if len > 0 {
            wrong.extend([0, len - 1]);
        }
        for n in wrong {
            // Valid-looking contents (family 1, channel 0x4000) so that only the length is off.
            let mut value = vec![0u8; n];
            if let Some(b) = value.first_mut() {
                *b = if typ == types::CHANNEL_NUMBER {
                    0x40
                } else {
                    1
                };
            }
            assert_eq!(
                AnyAttribute::decode(typ, &value, &tid),
                Err(ParseError::AttrLength(typ)),
                "type {typ:#06x} length {n}"
            );
        }
    }
    assert_eq!(
        get_err!(Lifetime, &[0; 3]),
        ParseError::AttrLength(types::LIFETIME)
    );
    assert_eq!(
        get_err!(Lifetime, &[0; 5]),
        ParseError::AttrLength(types::LIFETIME)
    );
    assert_eq!(
        get_err!(IceControlling, &[0; 4]),
        ParseError::AttrLength(types::ICE_CONTROLLING)
    );
    assert_eq!(
        get_err!(DontFragment, &[0]),
        ParseError::AttrLength(types::DONT_FRAGMENT)
    );
    assert_eq!(
        get_err!(EvenPort, &[0x80, 0, 0, 0]),
        ParseError::AttrLength(types::EVEN_PORT)
    );
}

const ADDRESS_TYPES: [u16; 7] = [
    types::MAPPED_ADDRESS,
    types::XOR_MAPPED_ADDRESS,
    types::XOR_PEER_ADDRESS,
    types::XOR_RELAYED_ADDRESS,
    types::ALTERNATE_SERVER,
    types::RESPONSE_ORIGIN,
    types::OTHER_ADDRESS,
];

#[test]
fn address_lengths_must_match_the_family() {
    let tid = TransactionId(TID);
    for typ in ADDRESS_TYPES {
        for (family, n) in [
            (1u8, 20usize),
            (1, 7),
            (1, 12),
            (2, 8),
            (2, 19),
            (2, 24),
            (1, 3),
        ] {
            let mut value = vec![0u8; n];
            if n > 1 {
                value[1] = family;
            }
            assert_eq!(
                AnyAttribute::decode(typ, &value, &tid),
                Err(ParseError::AttrLength(typ)),
                "type {typ:#06x} family {family} length {n}"
            );
        }
        assert_eq!(
            AnyAttribute::decode(typ, &[], &tid),
            Err(ParseError::AttrLength(typ))
        );
    }
    assert_eq!(
        get_err!(XorMappedAddress, &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ParseError::AttrLength(types::XOR_MAPPED_ADDRESS)
    );
}

#[test]
fn bad_address_family_is_attr_value() {
    let tid = TransactionId(TID);
    for typ in ADDRESS_TYPES {
        for family in [0u8, 3, 4, 0x41, 0xFF] {
            for n in [8usize, 20] {
                let mut value = vec![0u8; n];
                value[1] = family;
                assert_eq!(
                    AnyAttribute::decode(typ, &value, &tid),
                    Err(ParseError::AttrValue(typ)),
                    "type {typ:#06x} family {family} length {n}"
                );
            }
        }
    }
    assert_eq!(
        get_err!(XorPeerAddress, &[0, 0, 0x12, 0x34, 1, 2, 3, 4]),
        ParseError::AttrValue(types::XOR_PEER_ADDRESS)
    );
    assert_eq!(
        get_err!(RequestedAddressFamily, &[3, 0, 0, 0]),
        ParseError::AttrValue(types::REQUESTED_ADDRESS_FAMILY)
    );
    assert_eq!(
        get_err!(AdditionalAddressFamily, &[0, 0, 0, 0]),
        ParseError::AttrValue(types::ADDITIONAL_ADDRESS_FAMILY)
    );
    assert_eq!(
        get_err!(AddressErrorCode<'_>, &[7, 0, 4, 40]),
        ParseError::AttrValue(types::ADDRESS_ERROR_CODE)
    );
}

#[test]
fn invalid_utf8_in_strings_is_attr_value() {
    let bad: [&[u8]; 4] = [
        &[0xFF],
        &[b'a', 0xC3],             // truncated two-byte sequence
        &[0xED, 0xA0, 0x80],       // UTF-16 surrogate
        &[0xF8, 0x88, 0x80, 0x80], // five-byte form
    ];
    for value in bad {
        assert_eq!(
            get_err!(Username<'_>, value),
            ParseError::AttrValue(types::USERNAME)
        );
        let tid = TransactionId(TID);
        for typ in [
            types::REALM,
            types::NONCE,
            types::SOFTWARE,
            types::ALTERNATE_DOMAIN,
        ] {
            assert_eq!(
                AnyAttribute::decode(typ, value, &tid),
                Err(ParseError::AttrValue(typ))
            );
        }
    }
    // The reason phrase of ERROR-CODE too.
    assert_eq!(
        get_err!(ErrorCode<'_>, &[0, 0, 4, 1, 0xFF]),
        ParseError::AttrValue(types::ERROR_CODE)
    );
}

#[test]
fn username_over_508_bytes_is_attr_length() {
    assert_eq!(
        get_err!(Username<'_>, &[b'u'; 509]),
        ParseError::AttrLength(types::USERNAME)
    );
    let raw = stun(&tlv(types::USERNAME, &[b'u'; 508]));
    let m = Message::parse(&raw).expect("valid");
    assert_eq!(
        m.get::<Username<'_>>().map(|u| u.map(|u| u.0.len())),
        Ok(Some(508))
    );
    // The encoder refuses to write one either.
    let mut buf = [0u8; 1024];
    let typ = MessageType::new(Method::ALLOCATE, Class::Request);
    let mut enc = Encoder::new(&mut buf, typ, TransactionId(TID)).expect("room");
    let long = "u".repeat(509);
    assert!(enc.add(&Username(&long)).is_err());
    // And the other strings at their limits.
    assert_eq!(
        get_err!(Realm<'_>, &[b'r'; 763]),
        ParseError::AttrLength(types::REALM)
    );
    assert_eq!(
        get_err!(Nonce<'_>, &[b'n'; 763]),
        ParseError::AttrLength(types::NONCE)
    );
    assert_eq!(
        get_err!(Software<'_>, &[b's'; 763]),
        ParseError::AttrLength(types::SOFTWARE)
    );
    assert_eq!(
        get_err!(AlternateDomain<'_>, &[b'd'; 256]),
        ParseError::AttrLength(types::ALTERNATE_DOMAIN)
    );
}

#[test]
fn error_code_class_outside_3_to_6_is_attr_value() {
    for class in [0u8, 1, 2, 7] {
        assert_eq!(
            get_err!(ErrorCode<'_>, &[0, 0, class, 0]),
            ParseError::AttrValue(types::ERROR_CODE),
            "class {class}"
        );
        assert_eq!(
            get_err!(AddressErrorCode<'_>, &[1, 0, class, 0]),
            ParseError::AttrValue(types::ADDRESS_ERROR_CODE),
            "class {class}"
        );
    }
    // Number above 99.
    assert_eq!(
        get_err!(ErrorCode<'_>, &[0, 0, 4, 100]),
        ParseError::AttrValue(types::ERROR_CODE)
    );
    // Shorter than the 4 fixed bytes.
    assert_eq!(
        get_err!(ErrorCode<'_>, &[0, 0, 4]),
        ParseError::AttrLength(types::ERROR_CODE)
    );
    for class in 3u8..=6 {
        let raw = stun(&tlv(types::ERROR_CODE, &[0, 0, class, 99, b'x']));
        let m = Message::parse(&raw).expect("valid");
        let e = m.get::<ErrorCode<'_>>().expect("decodes").expect("present");
        assert_eq!(e.code, u16::from(class) * 100 + 99);
        assert_eq!(e.reason, "x");
    }
}

#[test]
fn channel_number_outside_0x4000_to_0x4fff_is_attr_value() {
    for n in [0x0000u16, 0x3FFF, 0x5000, 0x7FFF, 0x8000, 0xFFFF] {
        let [hi, lo] = n.to_be_bytes();
        assert_eq!(
            get_err!(ChannelNumber, &[hi, lo, 0, 0]),
            ParseError::AttrValue(types::CHANNEL_NUMBER),
            "channel {n:#06x}"
        );
    }
    for n in [0x4000u16, 0x4001, 0x4FFF] {
        let [hi, lo] = n.to_be_bytes();
        let raw = stun(&tlv(types::CHANNEL_NUMBER, &[hi, lo, 0, 0]));
        let m = Message::parse(&raw).expect("valid");
        assert_eq!(m.get::<ChannelNumber>(), Ok(ChannelNumber::new(n)));
    }
}

#[test]
fn list_attributes_with_bad_lengths() {
    // UNKNOWN-ATTRIBUTES holds 16-bit types.
    assert_eq!(
        get_err!(UnknownAttributes<'_>, &[0, 1, 0]),
        ParseError::AttrLength(types::UNKNOWN_ATTRIBUTES)
    );
    // PASSWORD-ALGORITHM: the parameter length must match the value.
    assert_eq!(
        get_err!(PasswordAlgorithm<'_>, &[0, 1, 0, 4]),
        ParseError::AttrLength(types::PASSWORD_ALGORITHM)
    );
    assert_eq!(
        get_err!(PasswordAlgorithm<'_>, &[0, 1]),
        ParseError::AttrLength(types::PASSWORD_ALGORITHM)
    );
    // PASSWORD-ALGORITHMS: an entry whose parameters run past the value.
    assert_eq!(
        get_err!(
            PasswordAlgorithms<'_>,
            &[0, 2, 0, 0, 0, 1, 0, 8, 1, 2, 3, 4]
        ),
        ParseError::AttrLength(types::PASSWORD_ALGORITHMS)
    );
    assert_eq!(
        get_err!(PasswordAlgorithms<'_>, &[0, 2]),
        ParseError::AttrLength(types::PASSWORD_ALGORITHMS)
    );
}

// ---------------------------------------------------------------------------------------------
// Unknown attributes (RFC 8489 section 14: 0x0000-0x7FFF comprehension-required).

#[test]
fn unknown_comprehension_required_attributes_are_reported() {
    let mut body = Vec::new();
    body.extend(tlv(0x7F01, b"a"));
    body.extend(tlv(0x8FFF, b"optional"));
    body.extend(tlv(0x0033, &[]));
    body.extend(tlv(0x7F01, b"again"));
    body.extend(tlv(0xC001, b"optional too"));
    body.extend(tlv(types::USERNAME, b"known"));
    let raw = stun(&body);
    let m = Message::parse(&raw).expect("unknown attributes do not fail the parse");
    assert_eq!(m.unknown_attributes(), &[0x7F01, 0x0033]);
    // They are still visible as raw attributes.
    assert!(m.has(0x8FFF) && m.has(0x7F01));
    assert_eq!(m.get::<Username<'_>>(), Ok(Some(Username("known"))));
}

#[test]
fn only_comprehension_optional_unknowns_report_nothing() {
    let mut body = Vec::new();
    for t in [0x8005u16, 0x8FFF, 0xFFFF, 0xC000] {
        body.extend(tlv(t, b"x"));
    }
    let raw = stun(&body);
    let m = Message::parse(&raw).expect("valid");
    assert!(m.unknown_attributes().is_empty());
    assert_eq!(m.attributes().count(), 4);
}

#[test]
fn unknown_list_is_bounded() {
    let mut body = Vec::new();
    for t in 0x7000u16..0x7000 + 3 * MAX_UNKNOWN as u16 {
        body.extend(tlv(t, &[]));
    }
    let raw = stun(&body);
    let m = Message::parse(&raw).expect("valid");
    let want: Vec<u16> = (0x7000u16..0x7000 + MAX_UNKNOWN as u16).collect();
    assert_eq!(m.unknown_attributes(), &want[..]);
}

#[test]
fn unknown_attributes_after_message_integrity_are_not_reported() {
    let mut body = tlv(types::MESSAGE_INTEGRITY, &[0; 20]);
    body.extend(tlv(0x7F01, b"ignored"));
    let raw = stun(&body);
    let m = Message::parse(&raw).expect("valid");
    assert!(m.unknown_attributes().is_empty());
    assert!(!m.has(0x7F01));
}

// ---------------------------------------------------------------------------------------------
// ChannelData (RFC 8656 section 12.4).

#[test]
fn channel_data_header_errors() {
    for n in 0..4 {
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0x00][..n.min(3)]),
            Err(ChannelDataError::TooShort),
            "{n} bytes"
        );
    }
    for channel in [0x0000u16, 0x3FFF, 0x5000, 0x7FFF, 0xFFFF] {
        let [hi, lo] = channel.to_be_bytes();
        assert_eq!(
            ChannelData::parse(&[hi, lo, 0, 0]),
            Err(ChannelDataError::BadChannel),
            "channel {channel:#06x}"
        );
    }
    // Length claims more than arrived.
    assert_eq!(
        ChannelData::parse(&[0x40, 0x00, 0x00, 0x01]),
        Err(ChannelDataError::Truncated)
    );
    let mut big = vec![0x4F, 0xFF, 0xFF, 0xFF];
    big.extend_from_slice(&[0; 100]);
    assert_eq!(ChannelData::parse(&big), Err(ChannelDataError::Truncated));
    // Exact and padded datagrams are fine; the padding is not payload.
    let exact = [0x40, 0x01, 0x00, 0x03, 1, 2, 3];
    let cd = ChannelData::parse(&exact).expect("valid");
    assert_eq!(cd.channel.get(), 0x4001);
    assert_eq!(&exact[cd.payload_range()], &[1, 2, 3]);
    let padded = [0x4F, 0xFF, 0x00, 0x03, 1, 2, 3, 0];
    let cd = ChannelData::parse(&padded).expect("valid");
    assert_eq!(cd.channel.get(), 0x4FFF);
    assert_eq!(cd.payload_range(), 4..7);
    // Zero-length payload.
    assert_eq!(ChannelData::parse(&[0x40, 0, 0, 0]).map(|c| c.len), Ok(0));
}

// ---------------------------------------------------------------------------------------------
// Demultiplexing (RFC 7983 section 7, RFC 8656 section 12; QUIC per RFC 9443).

/// What the demultiplexer must say for an 8-byte-or-longer datagram starting with `b` that
/// carries the magic cookie where STUN has it.
fn expected_kind(b: u8) -> PacketKind {
    match b {
        0..=3 => PacketKind::Stun,              // STUN
        16..=19 => PacketKind::Other,           // ZRTP
        20..=63 => PacketKind::Other,           // DTLS
        64..=79 => PacketKind::ChannelData,     // TURN channels
        128..=191 => PacketKind::Other,         // RTP / RTCP
        192..=255 => PacketKind::Other,         // QUIC (RFC 9443)
        4..=15 | 80..=127 => PacketKind::Other, // unassigned
    }
}

#[test]
fn demux_classifies_every_first_byte() {
    for b in 0..=255u8 {
        let mut raw = stun(&[0; 8]);
        raw[0] = b;
        assert_eq!(classify(&raw), expected_kind(b), "first byte {b}");
    }
}

#[test]
fn demux_needs_the_whole_header_it_reads() {
    // STUN: the cookie and a full 20-byte header.
    let mut raw = stun(&[]);
    assert_eq!(classify(&raw), PacketKind::Stun);
    assert_eq!(classify(&raw[..19]), PacketKind::Other);
    raw[5] ^= 0xFF;
    assert_eq!(
        classify(&raw),
        PacketKind::Other,
        "first byte 0-3 without cookie"
    );
    // ChannelData: a full 4-byte header.
    assert_eq!(classify(&[0x40, 0x00, 0x00]), PacketKind::Other);
    assert_eq!(classify(&[0x40, 0x00, 0x00, 0x00]), PacketKind::ChannelData);
    assert_eq!(classify(&[]), PacketKind::Other);
}

/// A valid STUN message of a method above 0xFF starts with a byte above 3; RFC 7983 hands that
/// byte range to DTLS, so the demultiplexer does not call it STUN even though it parses.
#[test]
fn stun_with_a_high_method_is_not_stun_to_the_demultiplexer() {
    let mut buf = [0u8; 64];
    let method = Method::new(0x0F00).expect("12 bits");
    let typ = MessageType::new(method, Class::Indication);
    let enc = Encoder::new(&mut buf, typ, TransactionId(TID)).expect("room");
    let n = enc.finish();
    assert!(buf[0] > 3);
    assert!(Message::parse(&buf[..n]).is_ok());
    assert_eq!(classify(&buf[..n]), PacketKind::Other);
}

/// A Binding success response with one byte of the fixed header changed fails with the
/// matching error, and the demultiplexer agrees.
#[test]
fn header_damage_on_a_real_request() {
    let addr: SocketAddr = "192.0.2.1:32853".parse().expect("address");
    let mut buf = [0u8; 128];
    let typ = MessageType::new(Method::BINDING, Class::Success);
    let mut enc = Encoder::new(&mut buf, typ, TransactionId(TID)).expect("room");
    enc.add(&XorMappedAddress(addr)).expect("fits");
    enc.fingerprint().expect("fits");
    let n = enc.finish();
    let good = buf[..n].to_vec();
    assert_eq!(parse(&good), Ok(()));
    assert_eq!(classify(&good), PacketKind::Stun);

    let mut bad = good.clone();
    bad[0] |= 0x80;
    assert_eq!(parse(&bad), Err(ParseError::NotStun));
    assert_eq!(classify(&bad), PacketKind::Other);

    let mut bad = good.clone();
    bad[7] ^= 1;
    assert_eq!(parse(&bad), Err(ParseError::BadCookie));
    assert_eq!(classify(&bad), PacketKind::Other);

    let mut bad = good.clone();
    bad[3] += 4;
    assert_eq!(parse(&bad), Err(ParseError::LengthMismatch));

    let mut bad = good;
    bad.pop();
    assert_eq!(parse(&bad), Err(ParseError::LengthMismatch));
}
