//! Property tests of the STUN codec: every attribute type round-trips through the encoder and the
//! parser, whole messages built from arbitrary attribute lists parse back to the same sequence,
//! the integrity attributes the encoder appends verify and catch any single changed byte, and
//! the RFC 8489 section 14 visibility and duplicate rules hold.
//!
//! Values are generated as owned [`Spec`]s and then borrowed as [`AnyAttribute`]s, because the
//! codec's attribute types borrow their bytes and proptest needs owned values.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use uturn_proto::stun::attr::{types, *};
use uturn_proto::stun::{
    fingerprint, padded, Class, Encoder, IntegrityError, Message, MessageType, Method,
    TransactionId, HEADER_LEN,
};
use uturn_proto::ChannelNumber;

// ---------------------------------------------------------------------------------------------
// Owned attribute values.

/// An owned attribute value, one variant per [`AnyAttribute`] variant.
#[derive(Clone, Debug)]
enum Spec {
    MappedAddress(SocketAddr),
    XorMappedAddress(SocketAddr),
    XorPeerAddress(SocketAddr),
    XorRelayedAddress(SocketAddr),
    AlternateServer(SocketAddr),
    ResponseOrigin(SocketAddr),
    OtherAddress(SocketAddr),
    Username(String),
    Realm(String),
    Nonce(String),
    Software(String),
    AlternateDomain(String),
    Userhash([u8; 32]),
    MessageIntegrity([u8; 20]),
    MessageIntegritySha256(Vec<u8>),
    Fingerprint(u32),
    ErrorCode(u16, String),
    UnknownAttributes(Vec<u16>),
    PasswordAlgorithm(u16, Vec<u8>),
    PasswordAlgorithms(Vec<(u16, Vec<u8>)>),
    Lifetime(u32),
    RequestedTransport(u8),
    RequestedAddressFamily(Family),
    AdditionalAddressFamily(Family),
    AddressErrorCode(Family, u16, String),
    EvenPort(bool),
    ReservationToken([u8; 8]),
    DontFragment,
    ChannelNumber(u16),
    Data(Vec<u8>),
    Icmp(u8, u8, u32),
    ConnectionId(u32),
    Priority(u32),
    UseCandidate,
    IceControlled(u64),
    IceControlling(u64),
    ChangeRequest(bool, bool),
    ResponsePort(u16),
    Padding(Vec<u8>),
    Unknown(u16, Vec<u8>),
}

/// The borrowed entries of a PASSWORD-ALGORITHMS spec; empty for every other spec. Kept apart
/// because `AnyAttribute::PasswordAlgorithms` borrows a slice of `PasswordAlgorithm`s.
fn side_list(spec: &Spec) -> Vec<PasswordAlgorithm<'_>> {
    match spec {
        Spec::PasswordAlgorithms(l) => l
            .iter()
            .map(|(algorithm, params)| PasswordAlgorithm {
                algorithm: *algorithm,
                params,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl Spec {
    /// The codec's view of this value. `side` is `side_list(self)`.
    fn as_any<'a>(&'a self, side: &'a [PasswordAlgorithm<'a>]) -> AnyAttribute<'a> {
        match self {
            Spec::MappedAddress(a) => AnyAttribute::MappedAddress(MappedAddress(*a)),
            Spec::XorMappedAddress(a) => AnyAttribute::XorMappedAddress(XorMappedAddress(*a)),
            Spec::XorPeerAddress(a) => AnyAttribute::XorPeerAddress(XorPeerAddress(*a)),
            Spec::XorRelayedAddress(a) => AnyAttribute::XorRelayedAddress(XorRelayedAddress(*a)),
            Spec::AlternateServer(a) => AnyAttribute::AlternateServer(AlternateServer(*a)),
            Spec::ResponseOrigin(a) => AnyAttribute::ResponseOrigin(ResponseOrigin(*a)),
            Spec::OtherAddress(a) => AnyAttribute::OtherAddress(OtherAddress(*a)),
            Spec::Username(s) => AnyAttribute::Username(Username(s)),
            Spec::Realm(s) => AnyAttribute::Realm(Realm(s)),
            Spec::Nonce(s) => AnyAttribute::Nonce(Nonce(s)),
            Spec::Software(s) => AnyAttribute::Software(Software(s)),
            Spec::AlternateDomain(s) => AnyAttribute::AlternateDomain(AlternateDomain(s)),
            Spec::Userhash(h) => AnyAttribute::Userhash(Userhash(*h)),
            Spec::MessageIntegrity(m) => AnyAttribute::MessageIntegrity(MessageIntegrity(*m)),
            Spec::MessageIntegritySha256(m) => {
                AnyAttribute::MessageIntegritySha256(MessageIntegritySha256(m))
            }
            Spec::Fingerprint(f) => AnyAttribute::Fingerprint(Fingerprint(*f)),
            Spec::ErrorCode(code, reason) => AnyAttribute::ErrorCode(ErrorCode {
                code: *code,
                reason,
            }),
            Spec::UnknownAttributes(l) => {
                AnyAttribute::UnknownAttributes(UnknownAttributes::List(l))
            }
            Spec::PasswordAlgorithm(algorithm, params) => {
                AnyAttribute::PasswordAlgorithm(PasswordAlgorithm {
                    algorithm: *algorithm,
                    params,
                })
            }
            Spec::PasswordAlgorithms(_) => {
                AnyAttribute::PasswordAlgorithms(PasswordAlgorithms::List(side))
            }
            Spec::Lifetime(v) => AnyAttribute::Lifetime(Lifetime(*v)),
            Spec::RequestedTransport(v) => AnyAttribute::RequestedTransport(RequestedTransport(*v)),
            Spec::RequestedAddressFamily(f) => {
                AnyAttribute::RequestedAddressFamily(RequestedAddressFamily(*f))
            }
            Spec::AdditionalAddressFamily(f) => {
                AnyAttribute::AdditionalAddressFamily(AdditionalAddressFamily(*f))
            }
            Spec::AddressErrorCode(family, code, reason) => {
                AnyAttribute::AddressErrorCode(AddressErrorCode {
                    family: *family,
                    code: *code,
                    reason,
                })
            }
            Spec::EvenPort(reserve) => AnyAttribute::EvenPort(EvenPort { reserve: *reserve }),
            Spec::ReservationToken(t) => AnyAttribute::ReservationToken(ReservationToken(*t)),
            Spec::DontFragment => AnyAttribute::DontFragment(DontFragment),
            Spec::ChannelNumber(n) => AnyAttribute::ChannelNumber(channel(*n)),
            Spec::Data(d) => AnyAttribute::Data(Data(d)),
            Spec::Icmp(icmp_type, code, error_data) => AnyAttribute::Icmp(Icmp {
                icmp_type: *icmp_type,
                code: *code,
                error_data: *error_data,
            }),
            Spec::ConnectionId(v) => AnyAttribute::ConnectionId(ConnectionId(*v)),
            Spec::Priority(v) => AnyAttribute::Priority(Priority(*v)),
            Spec::UseCandidate => AnyAttribute::UseCandidate(UseCandidate),
            Spec::IceControlled(v) => AnyAttribute::IceControlled(IceControlled(*v)),
            Spec::IceControlling(v) => AnyAttribute::IceControlling(IceControlling(*v)),
            Spec::ChangeRequest(change_ip, change_port) => {
                AnyAttribute::ChangeRequest(ChangeRequest {
                    change_ip: *change_ip,
                    change_port: *change_port,
                })
            }
            Spec::ResponsePort(p) => AnyAttribute::ResponsePort(ResponsePort(*p)),
            Spec::Padding(p) => AnyAttribute::Padding(Padding(p)),
            Spec::Unknown(typ, value) => AnyAttribute::Unknown { typ: *typ, value },
        }
    }

    /// The integrity and fingerprint attributes change what follows them; list tests that
    /// expect every attribute to stay visible leave them out.
    fn is_integrity_or_fingerprint(&self) -> bool {
        matches!(
            self,
            Spec::MessageIntegrity(_) | Spec::MessageIntegritySha256(_) | Spec::Fingerprint(_)
        )
    }
}

fn channel(n: u16) -> ChannelNumber {
    ChannelNumber::new(n).expect("strategy yields 0x4000..=0x4FFF")
}

/// Which `AnyAttribute` variant a value is, by a match with no wildcard arm: adding a variant to
/// the codec without adding it here (and to `Spec` and `spec()`) stops this file compiling.
fn variant_index(a: &AnyAttribute<'_>) -> usize {
    match a {
        AnyAttribute::MappedAddress(_) => 0,
        AnyAttribute::XorMappedAddress(_) => 1,
        AnyAttribute::XorPeerAddress(_) => 2,
        AnyAttribute::XorRelayedAddress(_) => 3,
        AnyAttribute::AlternateServer(_) => 4,
        AnyAttribute::ResponseOrigin(_) => 5,
        AnyAttribute::OtherAddress(_) => 6,
        AnyAttribute::Username(_) => 7,
        AnyAttribute::Realm(_) => 8,
        AnyAttribute::Nonce(_) => 9,
        AnyAttribute::Software(_) => 10,
        AnyAttribute::AlternateDomain(_) => 11,
        AnyAttribute::Userhash(_) => 12,
        AnyAttribute::MessageIntegrity(_) => 13,
        AnyAttribute::MessageIntegritySha256(_) => 14,
        AnyAttribute::Fingerprint(_) => 15,
        AnyAttribute::ErrorCode(_) => 16,
        AnyAttribute::UnknownAttributes(_) => 17,
        AnyAttribute::PasswordAlgorithm(_) => 18,
        AnyAttribute::PasswordAlgorithms(_) => 19,
        AnyAttribute::Lifetime(_) => 20,
        AnyAttribute::RequestedTransport(_) => 21,
        AnyAttribute::RequestedAddressFamily(_) => 22,
        AnyAttribute::AdditionalAddressFamily(_) => 23,
        AnyAttribute::AddressErrorCode(_) => 24,
        AnyAttribute::EvenPort(_) => 25,
        AnyAttribute::ReservationToken(_) => 26,
        AnyAttribute::DontFragment(_) => 27,
        AnyAttribute::ChannelNumber(_) => 28,
        AnyAttribute::Data(_) => 29,
        AnyAttribute::Icmp(_) => 30,
        AnyAttribute::ConnectionId(_) => 31,
        AnyAttribute::Priority(_) => 32,
        AnyAttribute::UseCandidate(_) => 33,
        AnyAttribute::IceControlled(_) => 34,
        AnyAttribute::IceControlling(_) => 35,
        AnyAttribute::ChangeRequest(_) => 36,
        AnyAttribute::ResponsePort(_) => 37,
        AnyAttribute::Padding(_) => 38,
        AnyAttribute::Unknown { .. } => 39,
    }
}

/// The number of typed (non-`Unknown`) variants of `AnyAttribute`.
const TYPED_VARIANTS: usize = 39;

// ---------------------------------------------------------------------------------------------
// Strategies.

fn v4() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 4]>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
}

/// IPv6 socket addresses as the codec decodes them: flow info and scope id are not on the wire,
/// so they are zero.
fn v6() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 16]>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![v4(), v6()]
}

/// UTF-8 text of at most `max` bytes: printable ASCII up to the limit itself, or any chars
/// (multi-byte ones included) cut at the limit.
fn text(max: usize) -> impl Strategy<Value = String> {
    let ascii =
        vec(0x20u8..0x7F, 0..=max).prop_map(|b| b.into_iter().map(char::from).collect::<String>());
    let unicode = vec(any::<char>(), 0..=max / 2).prop_map(move |cs| {
        let mut s = String::new();
        for c in cs {
            if s.len() + c.len_utf8() > max {
                break;
            }
            s.push(c);
        }
        s
    });
    prop_oneof![ascii, unicode]
}

fn family() -> impl Strategy<Value = Family> {
    prop_oneof![Just(Family::V4), Just(Family::V6)]
}

fn error_code() -> impl Strategy<Value = u16> {
    300u16..=699
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// A type number the codec does not model.
fn unknown_type() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("type the codec knows", |t| {
        matches!(
            AnyAttribute::decode(*t, &[], &TransactionId::default()),
            Ok(AnyAttribute::Unknown { .. })
        )
    })
}

/// Any attribute value the codec accepts for sending, every variant equally likely.
fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        addr().prop_map(Spec::MappedAddress),
        addr().prop_map(Spec::XorMappedAddress),
        addr().prop_map(Spec::XorPeerAddress),
        addr().prop_map(Spec::XorRelayedAddress),
        addr().prop_map(Spec::AlternateServer),
        addr().prop_map(Spec::ResponseOrigin),
        addr().prop_map(Spec::OtherAddress),
        text(Username::MAX_LEN).prop_map(Spec::Username),
        text(Realm::MAX_LEN).prop_map(Spec::Realm),
        text(Nonce::MAX_LEN).prop_map(Spec::Nonce),
        text(Software::MAX_LEN).prop_map(Spec::Software),
        text(AlternateDomain::MAX_LEN).prop_map(Spec::AlternateDomain),
        any::<[u8; 32]>().prop_map(Spec::Userhash),
        any::<[u8; 20]>().prop_map(Spec::MessageIntegrity),
        (4usize..=8)
            .prop_flat_map(|words| vec(any::<u8>(), words * 4))
            .prop_map(Spec::MessageIntegritySha256),
        any::<u32>().prop_map(Spec::Fingerprint),
        (error_code(), text(762)).prop_map(|(c, r)| Spec::ErrorCode(c, r)),
        vec(any::<u16>(), 0..=16).prop_map(Spec::UnknownAttributes),
        (any::<u16>(), bytes(40)).prop_map(|(a, p)| Spec::PasswordAlgorithm(a, p)),
        vec((any::<u16>(), bytes(12)), 0..=6).prop_map(Spec::PasswordAlgorithms),
        any::<u32>().prop_map(Spec::Lifetime),
        any::<u8>().prop_map(Spec::RequestedTransport),
        family().prop_map(Spec::RequestedAddressFamily),
        family().prop_map(Spec::AdditionalAddressFamily),
        (family(), error_code(), text(762)).prop_map(|(f, c, r)| Spec::AddressErrorCode(f, c, r)),
        any::<bool>().prop_map(Spec::EvenPort),
        any::<[u8; 8]>().prop_map(Spec::ReservationToken),
        Just(Spec::DontFragment),
        (ChannelNumber::MIN..=ChannelNumber::MAX).prop_map(Spec::ChannelNumber),
        bytes(1500).prop_map(Spec::Data),
        (0u8..=0x7F, any::<u8>(), any::<u32>()).prop_map(|(t, c, d)| Spec::Icmp(t, c, d)),
        any::<u32>().prop_map(Spec::ConnectionId),
        any::<u32>().prop_map(Spec::Priority),
        Just(Spec::UseCandidate),
        any::<u64>().prop_map(Spec::IceControlled),
        any::<u64>().prop_map(Spec::IceControlling),
        (any::<bool>(), any::<bool>()).prop_map(|(i, p)| Spec::ChangeRequest(i, p)),
        any::<u16>().prop_map(Spec::ResponsePort),
        bytes(64).prop_map(Spec::Padding),
        (unknown_type(), bytes(64)).prop_map(|(t, v)| Spec::Unknown(t, v)),
    ]
}

fn message_type() -> impl Strategy<Value = MessageType> {
    let class = prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error),
    ];
    (0u16..=0x0FFF, class)
        .prop_map(|(m, c)| MessageType::new(Method::new(m).expect("strategy yields 12 bits"), c))
}

fn tid() -> impl Strategy<Value = TransactionId> {
    any::<[u8; 12]>().prop_map(TransactionId)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Big enough for any message: the length field is 16 bits.
const MAX_MESSAGE: usize = HEADER_LEN + 0xFFFF;

fn new_encoder(buf: &mut [u8], typ: MessageType, tid: TransactionId) -> Encoder<'_> {
    Encoder::new(buf, typ, tid).expect("buffer holds a header")
}

/// Encodes `attrs` in order with `encode_into` and returns the message length.
fn encode_list(
    buf: &mut [u8],
    typ: MessageType,
    tid: TransactionId,
    attrs: &[AnyAttribute<'_>],
) -> usize {
    let mut enc = new_encoder(buf, typ, tid);
    for a in attrs {
        a.encode_into(&mut enc).expect("valid attribute fits");
    }
    enc.finish()
}

/// Decodes every visible attribute of `m`.
fn decode_all<'a>(m: &Message<'a>) -> Vec<AnyAttribute<'a>> {
    let tid = m.transaction_id();
    m.attributes()
        .map(|a| AnyAttribute::decode(a.typ, a.value, &tid).expect("attribute decodes"))
        .collect()
}

/// Appends one TLV after the end of a finished message and fixes the header length, as a
/// sender that ignores the ordering rules would.
fn append_raw(buf: &mut [u8], len: usize, typ: u16, value: &[u8]) -> usize {
    let vlen = u16::try_from(value.len()).expect("short value");
    buf[len..len + 2].copy_from_slice(&typ.to_be_bytes());
    buf[len + 2..len + 4].copy_from_slice(&vlen.to_be_bytes());
    buf[len + 4..len + 4 + value.len()].copy_from_slice(value);
    let end = len + 4 + padded(value.len());
    buf[len + 4 + value.len()..end].fill(0);
    let body = u16::try_from(end - HEADER_LEN).expect("fits");
    buf[2..4].copy_from_slice(&body.to_be_bytes());
    end
}

/// Encodes one typed attribute on its own, parses the message back and checks that `get`
/// returns the value, that the TLV has the advertised length and padding, and that the generic
/// `AnyAttribute` path agrees.
macro_rules! typed_rt {
    ($ty:ty, $val:expr, $tid:expr) => {{
        let val: $ty = $val;
        let mut buf = vec![0u8; 4096];
        let mut enc = new_encoder(
            &mut buf,
            MessageType::new(Method::BINDING, Class::Request),
            $tid,
        );
        enc.add(&val).expect("valid value encodes");
        let n = enc.finish();
        prop_assert_eq!(n, HEADER_LEN + 4 + padded(val.value_len()));
        let m = Message::parse(&buf[..n]).expect("encoder output parses");
        prop_assert_eq!(m.get::<$ty>().expect("decodes"), Some(val));
        let raw: Vec<_> = m.attributes().collect();
        prop_assert_eq!(raw.len(), 1);
        prop_assert_eq!(raw[0].typ, <$ty as Attribute<'_>>::TYPE);
        prop_assert_eq!(raw[0].value.len(), val.value_len());
        prop_assert!(m.unknown_attributes().is_empty());
    }};
}

/// Round-trips one value through `Encoder::add` and `Message::get` with its concrete type.
fn typed_roundtrip(spec: &Spec, tid: TransactionId) -> Result<(), TestCaseError> {
    let side = side_list(spec);
    match spec.as_any(&side) {
        AnyAttribute::MappedAddress(a) => typed_rt!(MappedAddress, a, tid),
        AnyAttribute::XorMappedAddress(a) => typed_rt!(XorMappedAddress, a, tid),
        AnyAttribute::XorPeerAddress(a) => typed_rt!(XorPeerAddress, a, tid),
        AnyAttribute::XorRelayedAddress(a) => typed_rt!(XorRelayedAddress, a, tid),
        AnyAttribute::AlternateServer(a) => typed_rt!(AlternateServer, a, tid),
        AnyAttribute::ResponseOrigin(a) => typed_rt!(ResponseOrigin, a, tid),
        AnyAttribute::OtherAddress(a) => typed_rt!(OtherAddress, a, tid),
        AnyAttribute::Username(a) => typed_rt!(Username<'_>, a, tid),
        AnyAttribute::Realm(a) => typed_rt!(Realm<'_>, a, tid),
        AnyAttribute::Nonce(a) => typed_rt!(Nonce<'_>, a, tid),
        AnyAttribute::Software(a) => typed_rt!(Software<'_>, a, tid),
        AnyAttribute::AlternateDomain(a) => typed_rt!(AlternateDomain<'_>, a, tid),
        AnyAttribute::Userhash(a) => typed_rt!(Userhash, a, tid),
        AnyAttribute::MessageIntegrity(a) => typed_rt!(MessageIntegrity, a, tid),
        AnyAttribute::MessageIntegritySha256(a) => {
            typed_rt!(MessageIntegritySha256<'_>, a, tid)
        }
        AnyAttribute::Fingerprint(a) => typed_rt!(Fingerprint, a, tid),
        AnyAttribute::ErrorCode(a) => typed_rt!(ErrorCode<'_>, a, tid),
        AnyAttribute::UnknownAttributes(a) => typed_rt!(UnknownAttributes<'_>, a, tid),
        AnyAttribute::PasswordAlgorithm(a) => typed_rt!(PasswordAlgorithm<'_>, a, tid),
        AnyAttribute::PasswordAlgorithms(a) => typed_rt!(PasswordAlgorithms<'_>, a, tid),
        AnyAttribute::Lifetime(a) => typed_rt!(Lifetime, a, tid),
        AnyAttribute::RequestedTransport(a) => typed_rt!(RequestedTransport, a, tid),
        AnyAttribute::RequestedAddressFamily(a) => typed_rt!(RequestedAddressFamily, a, tid),
        AnyAttribute::AdditionalAddressFamily(a) => typed_rt!(AdditionalAddressFamily, a, tid),
        AnyAttribute::AddressErrorCode(a) => typed_rt!(AddressErrorCode<'_>, a, tid),
        AnyAttribute::EvenPort(a) => typed_rt!(EvenPort, a, tid),
        AnyAttribute::ReservationToken(a) => typed_rt!(ReservationToken, a, tid),
        AnyAttribute::DontFragment(a) => typed_rt!(DontFragment, a, tid),
        AnyAttribute::ChannelNumber(a) => typed_rt!(ChannelNumber, a, tid),
        AnyAttribute::Data(a) => typed_rt!(Data<'_>, a, tid),
        AnyAttribute::Icmp(a) => typed_rt!(Icmp, a, tid),
        AnyAttribute::ConnectionId(a) => typed_rt!(ConnectionId, a, tid),
        AnyAttribute::Priority(a) => typed_rt!(Priority, a, tid),
        AnyAttribute::UseCandidate(a) => typed_rt!(UseCandidate, a, tid),
        AnyAttribute::IceControlled(a) => typed_rt!(IceControlled, a, tid),
        AnyAttribute::IceControlling(a) => typed_rt!(IceControlling, a, tid),
        AnyAttribute::ChangeRequest(a) => typed_rt!(ChangeRequest, a, tid),
        AnyAttribute::ResponsePort(a) => typed_rt!(ResponsePort, a, tid),
        AnyAttribute::Padding(a) => typed_rt!(Padding<'_>, a, tid),
        AnyAttribute::Unknown { typ, value } => {
            // No typed API for these: check the raw view and the 420 bookkeeping instead.
            let mut buf = vec![0u8; 4096];
            let mut enc = new_encoder(
                &mut buf,
                MessageType::new(Method::BINDING, Class::Request),
                tid,
            );
            enc.add_raw(typ, value).expect("fits");
            let n = enc.finish();
            let m = Message::parse(&buf[..n]).expect("encoder output parses");
            let raw: Vec<_> = m.attributes().collect();
            prop_assert_eq!(raw.len(), 1);
            prop_assert_eq!(raw[0].typ, typ);
            prop_assert_eq!(raw[0].value, value);
            let want: &[u16] = if types::is_comprehension_required(typ) {
                &[typ]
            } else {
                &[]
            };
            prop_assert_eq!(m.unknown_attributes(), want);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One round-trip test per attribute type; addresses once per family.

macro_rules! per_type {
    ($($name:ident: $strategy:expr;)*) => {
        proptest! {
            $(
                #[test]
                fn $name(spec in $strategy, tid in tid()) {
                    typed_roundtrip(&spec, tid)?;
                }
            )*
        }
    };
}

per_type! {
    mapped_address_v4: v4().prop_map(Spec::MappedAddress);
    mapped_address_v6: v6().prop_map(Spec::MappedAddress);
    xor_mapped_address_v4: v4().prop_map(Spec::XorMappedAddress);
    xor_mapped_address_v6: v6().prop_map(Spec::XorMappedAddress);
    xor_peer_address_v4: v4().prop_map(Spec::XorPeerAddress);
    xor_peer_address_v6: v6().prop_map(Spec::XorPeerAddress);
    xor_relayed_address_v4: v4().prop_map(Spec::XorRelayedAddress);
    xor_relayed_address_v6: v6().prop_map(Spec::XorRelayedAddress);
    alternate_server_v4: v4().prop_map(Spec::AlternateServer);
    alternate_server_v6: v6().prop_map(Spec::AlternateServer);
    response_origin_v4: v4().prop_map(Spec::ResponseOrigin);
    response_origin_v6: v6().prop_map(Spec::ResponseOrigin);
    other_address_v4: v4().prop_map(Spec::OtherAddress);
    other_address_v6: v6().prop_map(Spec::OtherAddress);
    username: text(Username::MAX_LEN).prop_map(Spec::Username);
    realm: text(Realm::MAX_LEN).prop_map(Spec::Realm);
    nonce: text(Nonce::MAX_LEN).prop_map(Spec::Nonce);
    software: text(Software::MAX_LEN).prop_map(Spec::Software);
    alternate_domain: text(AlternateDomain::MAX_LEN).prop_map(Spec::AlternateDomain);
    userhash: any::<[u8; 32]>().prop_map(Spec::Userhash);
    message_integrity: any::<[u8; 20]>().prop_map(Spec::MessageIntegrity);
    message_integrity_sha256: (4usize..=8)
        .prop_flat_map(|w| vec(any::<u8>(), w * 4))
        .prop_map(Spec::MessageIntegritySha256);
    fingerprint_value: any::<u32>().prop_map(Spec::Fingerprint);
    error_code_value: (error_code(), text(762)).prop_map(|(c, r)| Spec::ErrorCode(c, r));
    unknown_attributes_list: vec(any::<u16>(), 0..=32).prop_map(Spec::UnknownAttributes);
    password_algorithm: (any::<u16>(), bytes(64)).prop_map(|(a, p)| Spec::PasswordAlgorithm(a, p));
    password_algorithms: vec((any::<u16>(), bytes(16)), 0..=8).prop_map(Spec::PasswordAlgorithms);
    lifetime: any::<u32>().prop_map(Spec::Lifetime);
    requested_transport: any::<u8>().prop_map(Spec::RequestedTransport);
    requested_address_family: family().prop_map(Spec::RequestedAddressFamily);
    additional_address_family: family().prop_map(Spec::AdditionalAddressFamily);
    address_error_code: (family(), error_code(), text(762))
        .prop_map(|(f, c, r)| Spec::AddressErrorCode(f, c, r));
    even_port: any::<bool>().prop_map(Spec::EvenPort);
    reservation_token: any::<[u8; 8]>().prop_map(Spec::ReservationToken);
    dont_fragment: Just(Spec::DontFragment);
    channel_number: (ChannelNumber::MIN..=ChannelNumber::MAX).prop_map(Spec::ChannelNumber);
    data: bytes(3000).prop_map(Spec::Data);
    icmp: (0u8..=0x7F, any::<u8>(), any::<u32>()).prop_map(|(t, c, d)| Spec::Icmp(t, c, d));
    connection_id: any::<u32>().prop_map(Spec::ConnectionId);
    priority: any::<u32>().prop_map(Spec::Priority);
    use_candidate: Just(Spec::UseCandidate);
    ice_controlled: any::<u64>().prop_map(Spec::IceControlled);
    ice_controlling: any::<u64>().prop_map(Spec::IceControlling);
    change_request: (any::<bool>(), any::<bool>()).prop_map(|(i, p)| Spec::ChangeRequest(i, p));
    response_port: any::<u16>().prop_map(Spec::ResponsePort);
    padding_value: bytes(256).prop_map(Spec::Padding);
    unknown_raw: (unknown_type(), bytes(64)).prop_map(|(t, v)| Spec::Unknown(t, v));
}

/// The mixed strategy used by the list tests yields every typed variant.
#[test]
fn spec_strategy_covers_every_variant() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = spec();
    let mut seen = BTreeSet::new();
    for _ in 0..5000 {
        let s = strategy
            .new_tree(&mut runner)
            .expect("strategy yields")
            .current();
        let side = side_list(&s);
        seen.insert(variant_index(&s.as_any(&side)));
    }
    let want: BTreeSet<usize> = (0..=TYPED_VARIANTS).collect();
    assert_eq!(seen, want);
}

// ---------------------------------------------------------------------------------------------
// Whole messages.

/// RFC 8489 section 14, as a model: which attributes of a list are visible to a reader, in the
/// order they were written. After MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and
/// FINGERPRINT count; after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT; after FINGERPRINT
/// nothing.
fn visible_model(typs: &[u16]) -> Vec<bool> {
    #[derive(Copy, Clone, PartialEq, PartialOrd)]
    enum Seen {
        Nothing,
        Integrity,
        IntegritySha256,
        Fingerprint,
    }
    let mut seen = Seen::Nothing;
    typs.iter()
        .map(|&t| match t {
            types::MESSAGE_INTEGRITY if seen == Seen::Nothing => {
                seen = Seen::Integrity;
                true
            }
            types::MESSAGE_INTEGRITY_SHA256 if seen <= Seen::Integrity => {
                seen = Seen::IntegritySha256;
                true
            }
            types::FINGERPRINT if seen <= Seen::IntegritySha256 => {
                seen = Seen::Fingerprint;
                true
            }
            _ => seen == Seen::Nothing,
        })
        .collect()
}

proptest! {
    /// Any list of attributes without integrity or fingerprint parses back as the same
    /// sequence: same types, same decoded values, same message type and transaction id, and
    /// the unknown comprehension-required types reported once each, in order.
    #[test]
    fn any_attribute_list_round_trips(
        specs in vec(spec().prop_filter("stays visible", |s| !s.is_integrity_or_fingerprint()), 0..12),
        typ in message_type(),
        tid in tid(),
    ) {
        let sides: Vec<_> = specs.iter().map(side_list).collect();
        let attrs: Vec<_> = specs.iter().zip(&sides).map(|(s, side)| s.as_any(side)).collect();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = encode_list(&mut buf, typ, tid, &attrs);
        let m = Message::parse(&buf[..n]).expect("encoder output parses");
        prop_assert_eq!(m.message_type(), typ);
        prop_assert_eq!(m.transaction_id(), tid);
        let got = decode_all(&m);
        prop_assert_eq!(&got, &attrs);
        let got_types: Vec<u16> = m.attributes().map(|a| a.typ).collect();
        let want_types: Vec<u16> = attrs.iter().map(AnyAttribute::typ).collect();
        prop_assert_eq!(got_types, want_types);

        let mut unknown = Vec::new();
        for a in &attrs {
            if let AnyAttribute::Unknown { typ, .. } = a {
                if types::is_comprehension_required(*typ) && !unknown.contains(typ) {
                    unknown.push(*typ);
                }
            }
        }
        unknown.truncate(uturn_proto::stun::message::MAX_UNKNOWN);
        prop_assert_eq!(m.unknown_attributes(), &unknown[..]);
        prop_assert!(!m.has_integrity() && !m.has_integrity_sha256() && !m.has_fingerprint());
    }

    /// With integrity and fingerprint attributes written anywhere in the list (as raw typed
    /// values, so the encoder does not stop at them), a reader sees exactly what the RFC 8489
    /// section 14 ordering rules allow.
    #[test]
    fn visibility_follows_rfc8489_ordering(
        specs in vec(spec(), 0..12),
        tid in tid(),
    ) {
        let sides: Vec<_> = specs.iter().map(side_list).collect();
        let attrs: Vec<_> = specs.iter().zip(&sides).map(|(s, side)| s.as_any(side)).collect();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let typ = MessageType::new(Method::ALLOCATE, Class::Request);
        let n = encode_list(&mut buf, typ, tid, &attrs);
        let m = Message::parse(&buf[..n]).expect("encoder output parses");
        let model = visible_model(&attrs.iter().map(AnyAttribute::typ).collect::<Vec<_>>());
        let want: Vec<_> = attrs
            .iter()
            .zip(&model)
            .filter(|(_, v)| **v)
            .map(|(a, _)| *a)
            .collect();
        prop_assert_eq!(decode_all(&m), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Integrity and fingerprint.

/// Which of the three trailing attributes to append; at least one.
fn trailers() -> impl Strategy<Value = (bool, bool, bool)> {
    any::<(bool, bool, bool)>().prop_filter("at least one", |(a, b, c)| *a || *b || *c)
}

/// Encodes `attrs` and appends the chosen trailers with the encoder. Returns the length and
/// the offset of the first trailer, which is where the protected bytes end.
fn encode_protected(
    buf: &mut [u8],
    tid: TransactionId,
    attrs: &[AnyAttribute<'_>],
    key: &[u8],
    (mi, mi256, fp): (bool, bool, bool),
) -> (usize, usize) {
    let mut enc = new_encoder(buf, MessageType::new(Method::ALLOCATE, Class::Request), tid);
    for a in attrs {
        a.encode_into(&mut enc).expect("valid attribute fits");
    }
    let protected = enc.len();
    if mi {
        enc.message_integrity(key).expect("fits");
    }
    if mi256 {
        enc.message_integrity_sha256(key).expect("fits");
    }
    if fp {
        enc.fingerprint().expect("fits");
    }
    (enc.finish(), protected)
}

/// Checks the chosen trailers on `raw`: all pass when `intact`; otherwise either the message
/// no longer parses or every chosen check fails.
fn check_trailers(
    raw: &[u8],
    key: &[u8],
    (mi, mi256, fp): (bool, bool, bool),
    intact: bool,
) -> Result<(), TestCaseError> {
    let m = match Message::parse(raw) {
        Ok(m) => m,
        Err(e) => {
            prop_assert!(!intact, "intact message failed to parse: {}", e);
            return Ok(());
        }
    };
    if mi {
        prop_assert_eq!(m.verify_integrity(key).is_ok(), intact);
    } else if intact {
        prop_assert_eq!(m.verify_integrity(key), Err(IntegrityError::Missing));
    }
    if mi256 {
        prop_assert_eq!(m.verify_integrity_sha256(key).is_ok(), intact);
    } else if intact {
        prop_assert_eq!(m.verify_integrity_sha256(key), Err(IntegrityError::Missing));
    }
    if fp {
        prop_assert_eq!(m.check_fingerprint().is_ok(), intact);
    } else if intact {
        prop_assert_eq!(m.check_fingerprint(), Err(IntegrityError::Missing));
    }
    Ok(())
}

fn small_spec() -> impl Strategy<Value = Spec> {
    spec().prop_filter("keeps messages short and visible", |s| {
        !s.is_integrity_or_fingerprint() && !matches!(s, Spec::Data(d) if d.len() > 64)
    })
}

proptest! {
    /// MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT written by the encoder
    /// verify, and each of them fails after any single byte before them is changed (or the
    /// message stops parsing). Also a wrong key fails both HMACs.
    #[test]
    fn integrity_and_fingerprint_catch_any_changed_byte(
        specs in vec(small_spec(), 0..6),
        tid in tid(),
        key in bytes(64),
        which in trailers(),
        flips in vec((any::<Index>(), 1u8..=255), 1..16),
    ) {
        let sides: Vec<_> = specs.iter().map(side_list).collect();
        let attrs: Vec<_> = specs.iter().zip(&sides).map(|(s, side)| s.as_any(side)).collect();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (n, protected) = encode_protected(&mut buf, tid, &attrs, &key, which);
        let raw = &buf[..n];
        check_trailers(raw, &key, which, true)?;

        let (mi, mi256, _) = which;
        if mi || mi256 {
            let mut wrong = key.clone();
            wrong.push(0x5A);
            let m = Message::parse(raw).expect("parses");
            if mi {
                prop_assert_eq!(m.verify_integrity(&wrong), Err(IntegrityError::Mismatch));
            }
            if mi256 {
                prop_assert_eq!(m.verify_integrity_sha256(&wrong), Err(IntegrityError::Mismatch));
            }
        }

        for (at, mask) in flips {
            let mut changed = raw.to_vec();
            changed[at.index(protected)] ^= mask;
            check_trailers(&changed, &key, which, false)?;
        }
    }
}

/// The exhaustive form of the property above on one message: every byte before the trailers,
/// header included, flipped with every single-bit mask.
#[test]
fn every_single_bit_flip_is_caught() {
    let key = b"secret key";
    let tid = TransactionId(*b"0123456789ab");
    let user = Username("alice");
    let attrs = [
        AnyAttribute::Username(user),
        AnyAttribute::Realm(Realm("example.org")),
        AnyAttribute::Lifetime(Lifetime(600)),
        AnyAttribute::Data(Data(b"odd")),
    ];
    let which = (true, true, true);
    let mut buf = vec![0u8; 1024];
    let (n, protected) = encode_protected(&mut buf, tid, &attrs, key, which);
    check_trailers(&buf[..n], key, which, true).expect("intact");
    for at in 0..protected {
        for bit in 0..8 {
            let mut changed = buf[..n].to_vec();
            changed[at] ^= 1 << bit;
            check_trailers(&changed, key, which, false)
                .unwrap_or_else(|e| panic!("byte {at} bit {bit}: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// After MESSAGE-INTEGRITY, and duplicates.

proptest! {
    /// Attributes appended after MESSAGE-INTEGRITY are invisible to `get`, `get_all`, `has`,
    /// `attributes` and `unknown_attributes`, and do not disturb the integrity check; a
    /// FINGERPRINT after them is still visible and checks.
    #[test]
    fn attributes_after_message_integrity_are_invisible(
        before in vec(small_spec(), 0..5),
        after in vec(small_spec(), 1..5),
        with_fingerprint in any::<bool>(),
        tid in tid(),
        key in bytes(32),
    ) {
        let before_sides: Vec<_> = before.iter().map(side_list).collect();
        let before: Vec<_> =
            before.iter().zip(&before_sides).map(|(s, side)| s.as_any(side)).collect();
        let after_sides: Vec<_> = after.iter().map(side_list).collect();
        let after: Vec<_> =
            after.iter().zip(&after_sides).map(|(s, side)| s.as_any(side)).collect();

        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut enc = new_encoder(&mut buf, MessageType::new(Method::SEND, Class::Indication), tid);
        for a in &before {
            a.encode_into(&mut enc).expect("fits");
        }
        enc.message_integrity(&key).expect("fits");
        // The encoder refuses to write past MESSAGE-INTEGRITY, so append by hand: encode each
        // trailing attribute into a scratch message and copy its TLV.
        prop_assert!(after[0].encode_into(&mut enc).is_err());
        let mut n = enc.finish();
        for a in &after {
            let mut scratch = vec![0u8; 4096];
            let len = encode_list(&mut scratch, MessageType::new(Method::SEND, Class::Indication), tid, &[*a]);
            let one = Message::parse(&scratch[..len]).expect("parses");
            let tlv = one.attributes().next().expect("one attribute");
            n = append_raw(&mut buf, n, tlv.typ, tlv.value);
        }
        if with_fingerprint {
            // `compute` already covers the header length as it will be with FINGERPRINT.
            let crc = fingerprint::compute(&buf, n);
            n = append_raw(&mut buf, n, types::FINGERPRINT, &crc.to_be_bytes());
        }

        let m = Message::parse(&buf[..n]).expect("parses");
        let mut want = before.clone();
        want.push(AnyAttribute::MessageIntegrity(m.integrity_value().expect("has MI")));
        if with_fingerprint {
            let crc = m.get::<Fingerprint>().expect("decodes").expect("visible");
            want.push(AnyAttribute::Fingerprint(crc));
            prop_assert_eq!(m.check_fingerprint(), Ok(()));
        }
        prop_assert_eq!(decode_all(&m), want);
        prop_assert_eq!(m.verify_integrity(&key), Ok(()));

        let before_types: BTreeSet<u16> = before.iter().map(AnyAttribute::typ).collect();
        for a in &after {
            let t = a.typ();
            if before_types.contains(&t) {
                continue;
            }
            prop_assert!(!m.has(t));
            prop_assert!(!m.unknown_attributes().contains(&t));
            prop_assert!(m.attributes().all(|r| r.typ != t));
            // A typed `get` of one representative type that only appears after MI.
            if t == types::LIFETIME {
                prop_assert_eq!(m.get::<Lifetime>(), Ok(None));
                prop_assert_eq!(m.get_all::<Lifetime>().count(), 0);
            }
            if t == types::USERNAME {
                prop_assert_eq!(m.get::<Username<'_>>(), Ok(None));
            }
        }
    }

    /// Duplicates: `get` returns the first occurrence, `get_all` every occurrence in order,
    /// whatever other attributes are interleaved.
    #[test]
    fn duplicates_first_wins_and_get_all_returns_all(
        peers in vec(addr(), 1..6),
        users in vec(text(64), 1..4),
        noise in vec(small_spec(), 0..6),
        tid in tid(),
    ) {
        let noise: Vec<Spec> = noise
            .into_iter()
            .filter(|s| !matches!(s, Spec::XorPeerAddress(_) | Spec::Username(_)))
            .collect();
        let noise_sides: Vec<_> = noise.iter().map(side_list).collect();
        let mut attrs: Vec<AnyAttribute<'_>> = Vec::new();
        let mut noise_iter = noise.iter().zip(&noise_sides);
        let longest = peers.len().max(users.len());
        for i in 0..longest {
            if let Some(p) = peers.get(i) {
                attrs.push(AnyAttribute::XorPeerAddress(XorPeerAddress(*p)));
            }
            if let Some((s, side)) = noise_iter.next() {
                attrs.push(s.as_any(side));
            }
            if let Some(u) = users.get(i) {
                attrs.push(AnyAttribute::Username(Username(u)));
            }
        }
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = encode_list(&mut buf, MessageType::new(Method::CREATE_PERMISSION, Class::Request), tid, &attrs);
        let m = Message::parse(&buf[..n]).expect("parses");

        prop_assert_eq!(m.get::<XorPeerAddress>(), Ok(Some(XorPeerAddress(peers[0]))));
        let all: Vec<_> = m.get_all::<XorPeerAddress>().map(|r| r.map(|a| a.0)).collect::<Result<_, _>>().expect("decodes");
        prop_assert_eq!(all, peers.clone());

        prop_assert_eq!(m.get::<Username<'_>>(), Ok(Some(Username(&users[0]))));
        let all: Vec<&str> = m.get_all::<Username<'_>>().map(|r| r.map(|a| a.0)).collect::<Result<_, _>>().expect("decodes");
        let want: Vec<&str> = users.iter().map(String::as_str).collect();
        prop_assert_eq!(all, want);
    }
}

/// Regression: an attribute an attacker appends between MESSAGE-INTEGRITY and a recomputed
/// FINGERPRINT used to be visible, because the parser treated everything up to the last
/// visible attribute as visible. It must stay hidden, so that a server never acts on an
/// attribute the integrity check did not cover.
#[test]
fn attribute_between_integrity_and_fingerprint_is_hidden() {
    let key = b"k";
    let tid = TransactionId([7; 12]);
    let mut buf = vec![0u8; 512];
    let mut enc = new_encoder(
        &mut buf,
        MessageType::new(Method::CREATE_PERMISSION, Class::Request),
        tid,
    );
    enc.add(&Username("alice")).expect("fits");
    enc.message_integrity(key).expect("fits");
    let mut n = enc.finish();
    let peer: SocketAddr = "192.0.2.9:4000".parse().expect("address");
    let mut value = [0u8; 8];
    XorPeerAddress(peer).encode(&mut value, &tid);
    n = append_raw(&mut buf, n, types::XOR_PEER_ADDRESS, &value);
    n = append_raw(&mut buf, n, 0x7F00, b"unknown!");
    let crc = fingerprint::compute(&buf, n);
    n = append_raw(&mut buf, n, types::FINGERPRINT, &crc.to_be_bytes());

    let m = Message::parse(&buf[..n]).expect("parses");
    assert_eq!(m.verify_integrity(key), Ok(()));
    assert_eq!(m.check_fingerprint(), Ok(()));
    assert_eq!(m.get::<XorPeerAddress>(), Ok(None));
    assert_eq!(m.get_all::<XorPeerAddress>().count(), 0);
    assert!(!m.has(types::XOR_PEER_ADDRESS));
    assert!(m.unknown_attributes().is_empty());
    let seen: Vec<u16> = m.attributes().map(|a| a.typ).collect();
    assert_eq!(
        seen,
        [
            types::USERNAME,
            types::MESSAGE_INTEGRITY,
            types::FINGERPRINT
        ]
    );
}
