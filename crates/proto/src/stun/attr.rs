//! Typed STUN attributes: each one decodes from a borrowed value and encodes into a caller's
//! buffer. Attribute numbers from RFC 8489 section 18.3, RFC 8656 section 18, RFC 8445
//! section 16.1, RFC 5780 section 7, RFC 6062 section 6.2.

use super::error::{EncodeError, ParseError};
use super::header::TransactionId;
use super::MAGIC_COOKIE;
use crate::channel_data::ChannelNumber;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A typed attribute. `'a` is the lifetime of the datagram the value borrows from.
pub trait Attribute<'a>: Sized {
    /// The 16-bit attribute type.
    const TYPE: u16;
    /// Decodes the value (without the 4-byte TLV header and without padding).
    fn decode(value: &'a [u8], tid: &TransactionId) -> Result<Self, ParseError>;
    /// The value's length, without padding.
    fn value_len(&self) -> usize;
    /// Writes the value into `out`, which is exactly `value_len()` bytes long.
    fn encode(&self, out: &mut [u8], tid: &TransactionId);
    /// Checks limits the type puts on the value before anything is written.
    fn check(&self) -> Result<(), EncodeError> {
        Ok(())
    }
}

/// Attribute type numbers.
pub mod types {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const CHANGE_REQUEST: u16 = 0x0003;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const PADDING: u16 = 0x0026;
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const CONNECTION_ID: u16 = 0x002A;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const ICMP: u16 = 0x8004;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    pub const OTHER_ADDRESS: u16 = 0x802C;

    /// RFC 8489 section 14: types 0x0000-0x7FFF are comprehension-required.
    pub const fn is_comprehension_required(t: u16) -> bool {
        t < 0x8000
    }

    /// The comprehension-required types this codec understands. Anything else in that range is
    /// reported by [`crate::stun::Message::unknown_attributes`] so that a server can answer 420.
    pub const fn is_known_required(t: u16) -> bool {
        matches!(
            t,
            MAPPED_ADDRESS
                | CHANGE_REQUEST
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REALM
                | NONCE
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | DONT_FRAGMENT
                | MESSAGE_INTEGRITY_SHA256
                | PASSWORD_ALGORITHM
                | USERHASH
                | XOR_MAPPED_ADDRESS
                | RESERVATION_TOKEN
                | PRIORITY
                | USE_CANDIDATE
                | PADDING
                | RESPONSE_PORT
                | CONNECTION_ID
        )
    }
}
use types::*;

// ---------------------------------------------------------------------------------------------
// Small readers. Every caller has checked the exact length first, so these index in bounds.

fn be16(v: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([v[at], v[at + 1]])
}

fn be32(v: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]])
}

fn exact<const N: usize>(typ: u16, v: &[u8]) -> Result<[u8; N], ParseError> {
    v.try_into().map_err(|_| ParseError::AttrLength(typ))
}

// ---------------------------------------------------------------------------------------------
// Addresses (RFC 8489 sections 14.1 and 14.2).

/// Address family numbers used in address attributes and in REQUESTED-ADDRESS-FAMILY.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn number(self) -> u8 {
        match self {
            Family::V4 => 0x01,
            Family::V6 => 0x02,
        }
    }

    pub const fn from_number(n: u8) -> Option<Family> {
        match n {
            0x01 => Some(Family::V4),
            0x02 => Some(Family::V6),
            _ => None,
        }
    }

    pub const fn of(addr: &SocketAddr) -> Family {
        match addr {
            SocketAddr::V4(_) => Family::V4,
            SocketAddr::V6(_) => Family::V6,
        }
    }
}

fn address_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Decodes `reserved(1) family(1) port(2) address(4|16)`; XORed with the cookie and transaction
/// id when `xor` is set.
fn decode_address(
    typ: u16,
    v: &[u8],
    tid: &TransactionId,
    xor: bool,
) -> Result<SocketAddr, ParseError> {
    if v.len() < 4 {
        return Err(ParseError::AttrLength(typ));
    }
    let family = Family::from_number(v[1]).ok_or(ParseError::AttrValue(typ))?;
    let mut port = be16(v, 2);
    let cookie = MAGIC_COOKIE.to_be_bytes();
    if xor {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match family {
        Family::V4 => {
            let v = exact::<8>(typ, v)?;
            let mut ip = [v[4], v[5], v[6], v[7]];
            if xor {
                for (b, k) in ip.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        Family::V6 => {
            let v = exact::<20>(typ, v)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&v[4..20]);
            if xor {
                let key = cookie.iter().chain(tid.0.iter());
                for (b, k) in ip.iter_mut().zip(key) {
                    *b ^= k;
                }
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
    }
}

fn encode_address(a: &SocketAddr, out: &mut [u8], tid: &TransactionId, xor: bool) {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    out[0] = 0;
    out[1] = Family::of(a).number();
    let mut port = a.port();
    if xor {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match a.ip() {
        IpAddr::V4(ip) => {
            out[4..8].copy_from_slice(&ip.octets());
            if xor {
                for (b, k) in out[4..8].iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
        }
        IpAddr::V6(ip) => {
            out[4..20].copy_from_slice(&ip.octets());
            if xor {
                let key = cookie.iter().chain(tid.0.iter());
                for (b, k) in out[4..20].iter_mut().zip(key) {
                    *b ^= k;
                }
            }
        }
    }
}

macro_rules! address_attr {
    ($(#[$doc:meta])* $name:ident, $typ:expr, $xor:expr) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(pub SocketAddr);

        impl<'a> Attribute<'a> for $name {
            const TYPE: u16 = $typ;
            fn decode(v: &'a [u8], tid: &TransactionId) -> Result<Self, ParseError> {
                decode_address($typ, v, tid, $xor).map($name)
            }
            fn value_len(&self) -> usize {
                address_len(&self.0)
            }
            fn encode(&self, out: &mut [u8], tid: &TransactionId) {
                encode_address(&self.0, out, tid, $xor)
            }
        }
    };
}

address_attr!(
    /// MAPPED-ADDRESS (RFC 8489 section 14.1): the reflexive address, not obfuscated.
    MappedAddress, MAPPED_ADDRESS, false
);
address_attr!(
    /// XOR-MAPPED-ADDRESS (RFC 8489 section 14.2).
    XorMappedAddress, XOR_MAPPED_ADDRESS, true
);
address_attr!(
    /// XOR-PEER-ADDRESS (RFC 8656 section 18.3).
    XorPeerAddress, XOR_PEER_ADDRESS, true
);
address_attr!(
    /// XOR-RELAYED-ADDRESS (RFC 8656 section 18.5).
    XorRelayedAddress, XOR_RELAYED_ADDRESS, true
);
address_attr!(
    /// ALTERNATE-SERVER (RFC 8489 section 14.15).
    AlternateServer, ALTERNATE_SERVER, false
);
address_attr!(
    /// RESPONSE-ORIGIN (RFC 5780 section 7.3).
    ResponseOrigin, RESPONSE_ORIGIN, false
);
address_attr!(
    /// OTHER-ADDRESS (RFC 5780 section 7.4).
    OtherAddress, OTHER_ADDRESS, false
);

// ---------------------------------------------------------------------------------------------
// UTF-8 strings with a byte limit.

macro_rules! string_attr {
    ($(#[$doc:meta])* $name:ident, $typ:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name<'a>(pub &'a str);

        impl<'a> $name<'a> {
            /// The largest value in bytes that the RFC allows.
            pub const MAX_LEN: usize = $max;
        }

        impl<'a> Attribute<'a> for $name<'a> {
            const TYPE: u16 = $typ;
            fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
                if v.len() > $max {
                    return Err(ParseError::AttrLength($typ));
                }
                core::str::from_utf8(v).map($name).map_err(|_| ParseError::AttrValue($typ))
            }
            fn value_len(&self) -> usize {
                self.0.len()
            }
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                out.copy_from_slice(self.0.as_bytes())
            }
            fn check(&self) -> Result<(), EncodeError> {
                if self.0.len() > $max {
                    Err(EncodeError::ValueTooLong)
                } else {
                    Ok(())
                }
            }
        }
    };
}

string_attr!(
    /// USERNAME (RFC 8489 section 14.3): fewer than 509 bytes.
    Username, USERNAME, 508
);
string_attr!(
    /// REALM (RFC 8489 section 14.9): fewer than 763 bytes.
    Realm, REALM, 762
);
string_attr!(
    /// NONCE (RFC 8489 section 14.10): fewer than 763 bytes.
    Nonce, NONCE, 762
);
string_attr!(
    /// SOFTWARE (RFC 8489 section 14.14): fewer than 763 bytes.
    Software, SOFTWARE, 762
);
string_attr!(
    /// ALTERNATE-DOMAIN (RFC 8489 section 14.16): a DNS name, at most 255 bytes.
    AlternateDomain, ALTERNATE_DOMAIN, 255
);

// ---------------------------------------------------------------------------------------------
// Fixed-size integers and flags.

macro_rules! fixed_attr {
    ($(#[$doc:meta])* $name:ident($inner:ty), $typ:expr, $len:expr,
     |$v:ident| $dec:expr, |$s:ident, $o:ident| $enc:expr) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(pub $inner);

        impl<'a> Attribute<'a> for $name {
            const TYPE: u16 = $typ;
            fn decode($v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
                let $v = exact::<$len>($typ, $v)?;
                Ok($name($dec))
            }
            fn value_len(&self) -> usize {
                $len
            }
            fn encode(&self, $o: &mut [u8], _: &TransactionId) {
                let $s = self;
                $enc
            }
        }
    };
}

fixed_attr!(
    /// LIFETIME in seconds (RFC 8656 section 18.2).
    Lifetime(u32), LIFETIME, 4,
    |v| u32::from_be_bytes(v),
    |s, o| o.copy_from_slice(&s.0.to_be_bytes())
);
fixed_attr!(
    /// PRIORITY of a candidate (RFC 8445 section 16.1).
    Priority(u32), PRIORITY, 4,
    |v| u32::from_be_bytes(v),
    |s, o| o.copy_from_slice(&s.0.to_be_bytes())
);
fixed_attr!(
    /// ICE-CONTROLLED with its tie-breaker (RFC 8445 section 16.1).
    IceControlled(u64), ICE_CONTROLLED, 8,
    |v| u64::from_be_bytes(v),
    |s, o| o.copy_from_slice(&s.0.to_be_bytes())
);
fixed_attr!(
    /// ICE-CONTROLLING with its tie-breaker (RFC 8445 section 16.1).
    IceControlling(u64), ICE_CONTROLLING, 8,
    |v| u64::from_be_bytes(v),
    |s, o| o.copy_from_slice(&s.0.to_be_bytes())
);
fixed_attr!(
    /// FINGERPRINT (RFC 8489 section 14.7). Usually checked with
    /// [`crate::stun::Message::check_fingerprint`] rather than decoded.
    Fingerprint(u32), FINGERPRINT, 4,
    |v| u32::from_be_bytes(v),
    |s, o| o.copy_from_slice(&s.0.to_be_bytes())
);
fixed_attr!(
    /// CONNECTION-ID (RFC 6062 section 6.2.1).
    ConnectionId(u32), CONNECTION_ID, 4,
    |v| u32::from_be_bytes(v),
    |s, o| o.copy_from_slice(&s.0.to_be_bytes())
);
fixed_attr!(
    /// RESERVATION-TOKEN (RFC 8656 section 18.9).
    ReservationToken([u8; 8]), RESERVATION_TOKEN, 8,
    |v| v,
    |s, o| o.copy_from_slice(&s.0)
);
fixed_attr!(
    /// USERHASH (RFC 8489 section 14.4): SHA-256 of `username:realm`.
    Userhash([u8; 32]), USERHASH, 32,
    |v| v,
    |s, o| o.copy_from_slice(&s.0)
);
fixed_attr!(
    /// MESSAGE-INTEGRITY (RFC 8489 section 14.5). Written by
    /// [`crate::stun::Encoder::message_integrity`], checked by
    /// [`crate::stun::Message::verify_integrity`].
    MessageIntegrity([u8; 20]), MESSAGE_INTEGRITY, 20,
    |v| v,
    |s, o| o.copy_from_slice(&s.0)
);
fixed_attr!(
    /// REQUESTED-TRANSPORT (RFC 8656 section 18.7): the IP protocol number, then three RFFU
    /// bytes.
    RequestedTransport(u8), REQUESTED_TRANSPORT, 4,
    |v| v[0],
    |s, o| o.copy_from_slice(&[s.0, 0, 0, 0])
);
fixed_attr!(
    /// RESPONSE-PORT (RFC 5780 section 7.5): a port, then two bytes of padding.
    ResponsePort(u16), RESPONSE_PORT, 4,
    |v| u16::from_be_bytes([v[0], v[1]]),
    |s, o| { o[..2].copy_from_slice(&s.0.to_be_bytes()); o[2..].fill(0) }
);

impl RequestedTransport {
    pub const UDP: RequestedTransport = RequestedTransport(17);
    pub const TCP: RequestedTransport = RequestedTransport(6);
}

macro_rules! flag_attr {
    ($(#[$doc:meta])* $name:ident, $typ:expr) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name;

        impl<'a> Attribute<'a> for $name {
            const TYPE: u16 = $typ;
            fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
                if v.is_empty() {
                    Ok($name)
                } else {
                    Err(ParseError::AttrLength($typ))
                }
            }
            fn value_len(&self) -> usize {
                0
            }
            fn encode(&self, _: &mut [u8], _: &TransactionId) {}
        }
    };
}

flag_attr!(
    /// DONT-FRAGMENT (RFC 8656 section 18.8).
    DontFragment, DONT_FRAGMENT
);
flag_attr!(
    /// USE-CANDIDATE (RFC 8445 section 16.1).
    UseCandidate, USE_CANDIDATE
);

/// CHANNEL-NUMBER (RFC 8656 section 18.1). Decoding refuses numbers outside 0x4000-0x4FFF, so a
/// decoded value is always a usable channel.
impl<'a> Attribute<'a> for ChannelNumber {
    const TYPE: u16 = CHANNEL_NUMBER;
    fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
        let v = exact::<4>(CHANNEL_NUMBER, v)?;
        ChannelNumber::new(u16::from_be_bytes([v[0], v[1]]))
            .ok_or(ParseError::AttrValue(CHANNEL_NUMBER))
    }
    fn value_len(&self) -> usize {
        4
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out[..2].copy_from_slice(&self.get().to_be_bytes());
        out[2..].fill(0);
    }
}

/// EVEN-PORT (RFC 8656 section 18.6): one byte whose top bit asks to reserve the next port.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct EvenPort {
    pub reserve: bool,
}

impl<'a> Attribute<'a> for EvenPort {
    const TYPE: u16 = EVEN_PORT;
    fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
        let [b] = exact::<1>(EVEN_PORT, v)?;
        Ok(EvenPort {
            reserve: b & 0x80 != 0,
        })
    }
    fn value_len(&self) -> usize {
        1
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out[0] = if self.reserve { 0x80 } else { 0 };
    }
}

/// CHANGE-REQUEST (RFC 5780 section 7.2).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ChangeRequest {
    pub change_ip: bool,
    pub change_port: bool,
}

impl<'a> Attribute<'a> for ChangeRequest {
    const TYPE: u16 = CHANGE_REQUEST;
    fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
        let v = exact::<4>(CHANGE_REQUEST, v)?;
        Ok(ChangeRequest {
            change_ip: v[3] & 0x04 != 0,
            change_port: v[3] & 0x02 != 0,
        })
    }
    fn value_len(&self) -> usize {
        4
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out[..3].fill(0);
        out[3] = (u8::from(self.change_ip) << 2) | (u8::from(self.change_port) << 1);
    }
}

/// REQUESTED-ADDRESS-FAMILY (RFC 8656 section 18.10).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestedAddressFamily(pub Family);
/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 section 18.11); only IPv6 is meaningful there, which the
/// server checks, not the codec.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct AdditionalAddressFamily(pub Family);

macro_rules! family_attr {
    ($name:ident, $typ:expr) => {
        impl<'a> Attribute<'a> for $name {
            const TYPE: u16 = $typ;
            fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
                let v = exact::<4>($typ, v)?;
                Family::from_number(v[0])
                    .map($name)
                    .ok_or(ParseError::AttrValue($typ))
            }
            fn value_len(&self) -> usize {
                4
            }
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                out.copy_from_slice(&[self.0.number(), 0, 0, 0]);
            }
        }
    };
}
family_attr!(RequestedAddressFamily, REQUESTED_ADDRESS_FAMILY);
family_attr!(AdditionalAddressFamily, ADDITIONAL_ADDRESS_FAMILY);

// ---------------------------------------------------------------------------------------------
// Opaque byte strings.

/// DATA (RFC 8656 section 18.4): the application payload of Send and Data indications.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Data<'a>(pub &'a [u8]);
/// PADDING (RFC 5780 section 7.6).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Padding<'a>(pub &'a [u8]);

macro_rules! bytes_attr {
    ($name:ident, $typ:expr) => {
        impl<'a> Attribute<'a> for $name<'a> {
            const TYPE: u16 = $typ;
            fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
                Ok($name(v))
            }
            fn value_len(&self) -> usize {
                self.0.len()
            }
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                out.copy_from_slice(self.0)
            }
        }
    };
}
bytes_attr!(Data, DATA);
bytes_attr!(Padding, PADDING);

/// MESSAGE-INTEGRITY-SHA256 (RFC 8489 section 14.6): 16 to 32 bytes, a multiple of 4 (a
/// truncated HMAC-SHA256).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageIntegritySha256<'a>(pub &'a [u8]);

impl<'a> Attribute<'a> for MessageIntegritySha256<'a> {
    const TYPE: u16 = MESSAGE_INTEGRITY_SHA256;
    fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
        if (16..=32).contains(&v.len()) && v.len().is_multiple_of(4) {
            Ok(MessageIntegritySha256(v))
        } else {
            Err(ParseError::AttrLength(MESSAGE_INTEGRITY_SHA256))
        }
    }
    fn value_len(&self) -> usize {
        self.0.len()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out.copy_from_slice(self.0)
    }
    fn check(&self) -> Result<(), EncodeError> {
        if (16..=32).contains(&self.0.len()) && self.0.len().is_multiple_of(4) {
            Ok(())
        } else {
            Err(EncodeError::ValueTooLong)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Error codes (RFC 8489 section 14.8, RFC 8656 section 18.12).

const MAX_REASON: usize = 762;

/// Splits a code into class (hundreds) and number (the rest), as the wire carries it.
fn code_parts(code: u16) -> (u8, u8) {
    ((code / 100) as u8, (code % 100) as u8)
}

fn decode_code(typ: u16, class: u8, number: u8) -> Result<u16, ParseError> {
    let class = class & 0x07;
    if !(3..=6).contains(&class) || number > 99 {
        return Err(ParseError::AttrValue(typ));
    }
    Ok(u16::from(class) * 100 + u16::from(number))
}

fn check_code(code: u16, reason: &str) -> Result<(), EncodeError> {
    if !(300..=699).contains(&code) || reason.len() > MAX_REASON {
        Err(EncodeError::ValueTooLong)
    } else {
        Ok(())
    }
}

/// ERROR-CODE: a code from 300 to 699 and a UTF-8 reason phrase.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode<'a> {
    pub code: u16,
    pub reason: &'a str,
}

impl<'a> Attribute<'a> for ErrorCode<'a> {
    const TYPE: u16 = ERROR_CODE;
    fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
        if v.len() < 4 || v.len() > 4 + MAX_REASON {
            return Err(ParseError::AttrLength(ERROR_CODE));
        }
        let code = decode_code(ERROR_CODE, v[2], v[3])?;
        let reason = core::str::from_utf8(&v[4..]).map_err(|_| ParseError::AttrValue(ERROR_CODE))?;
        Ok(ErrorCode { code, reason })
    }
    fn value_len(&self) -> usize {
        4 + self.reason.len()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        let (class, number) = code_parts(self.code);
        out[..4].copy_from_slice(&[0, 0, class, number]);
        out[4..].copy_from_slice(self.reason.as_bytes());
    }
    fn check(&self) -> Result<(), EncodeError> {
        check_code(self.code, self.reason)
    }
}

/// ADDRESS-ERROR-CODE (RFC 8656 section 18.13): which family of a dual allocation failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct AddressErrorCode<'a> {
    pub family: Family,
    pub code: u16,
    pub reason: &'a str,
}

impl<'a> Attribute<'a> for AddressErrorCode<'a> {
    const TYPE: u16 = ADDRESS_ERROR_CODE;
    fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
        if v.len() < 4 || v.len() > 4 + MAX_REASON {
            return Err(ParseError::AttrLength(ADDRESS_ERROR_CODE));
        }
        let family = Family::from_number(v[0]).ok_or(ParseError::AttrValue(ADDRESS_ERROR_CODE))?;
        let code = decode_code(ADDRESS_ERROR_CODE, v[2], v[3])?;
        let reason = core::str::from_utf8(&v[4..])
            .map_err(|_| ParseError::AttrValue(ADDRESS_ERROR_CODE))?;
        Ok(AddressErrorCode {
            family,
            code,
            reason,
        })
    }
    fn value_len(&self) -> usize {
        4 + self.reason.len()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        let (class, number) = code_parts(self.code);
        out[..4].copy_from_slice(&[self.family.number(), 0, class, number]);
        out[4..].copy_from_slice(self.reason.as_bytes());
    }
    fn check(&self) -> Result<(), EncodeError> {
        check_code(self.code, self.reason)
    }
}

/// ICMP (RFC 8656 section 18.14): an ICMP error a peer's packet caused, passed in a Data
/// indication.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Icmp {
    pub icmp_type: u8,
    pub code: u8,
    pub error_data: u32,
}

impl<'a> Attribute<'a> for Icmp {
    const TYPE: u16 = ICMP;
    fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
        let v = exact::<8>(ICMP, v)?;
        Ok(Icmp {
            icmp_type: v[2] & 0x7F,
            code: v[3],
            error_data: be32(&v, 4),
        })
    }
    fn value_len(&self) -> usize {
        8
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out[..4].copy_from_slice(&[0, 0, self.icmp_type & 0x7F, self.code]);
        out[4..].copy_from_slice(&self.error_data.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Lists: UNKNOWN-ATTRIBUTES and PASSWORD-ALGORITHMS. Decoded values borrow the wire bytes;
// values built for sending borrow a caller's slice. Both iterate the same way.

/// UNKNOWN-ATTRIBUTES (RFC 8489 section 14.13): a list of 16-bit attribute types.
#[derive(Copy, Clone, Debug)]
pub enum UnknownAttributes<'a> {
    Wire(&'a [u8]),
    List(&'a [u16]),
}

impl<'a> UnknownAttributes<'a> {
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        let (wire, list): (&'a [u8], &'a [u16]) = match *self {
            UnknownAttributes::Wire(w) => (w, &[]),
            UnknownAttributes::List(l) => (&[], l),
        };
        wire.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .chain(list.iter().copied())
    }
}

impl PartialEq for UnknownAttributes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl<'a> Attribute<'a> for UnknownAttributes<'a> {
    const TYPE: u16 = UNKNOWN_ATTRIBUTES;
    fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
        if !v.len().is_multiple_of(2) {
            return Err(ParseError::AttrLength(UNKNOWN_ATTRIBUTES));
        }
        Ok(UnknownAttributes::Wire(v))
    }
    fn value_len(&self) -> usize {
        2 * self.iter().count()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        for (chunk, t) in out.chunks_exact_mut(2).zip(self.iter()) {
            chunk.copy_from_slice(&t.to_be_bytes());
        }
    }
}

/// Password algorithm numbers (RFC 8489 section 18.5).
pub mod algorithm {
    pub const MD5: u16 = 0x0001;
    pub const SHA256: u16 = 0x0002;
}

/// PASSWORD-ALGORITHM (RFC 8489 section 14.12): an algorithm and its parameters.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PasswordAlgorithm<'a> {
    pub algorithm: u16,
    pub params: &'a [u8],
}

impl<'a> PasswordAlgorithm<'a> {
    pub const MD5: PasswordAlgorithm<'static> = PasswordAlgorithm {
        algorithm: algorithm::MD5,
        params: &[],
    };
    pub const SHA256: PasswordAlgorithm<'static> = PasswordAlgorithm {
        algorithm: algorithm::SHA256,
        params: &[],
    };

    /// Encoded size of one entry, parameters padded to 4 bytes.
    fn entry_len(&self) -> usize {
        4 + super::padded(self.params.len())
    }

    fn write_entry(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.algorithm.to_be_bytes());
        out[2..4].copy_from_slice(&(self.params.len() as u16).to_be_bytes());
        out[4..4 + self.params.len()].copy_from_slice(self.params);
        out[4 + self.params.len()..self.entry_len()].fill(0);
    }

    /// Reads one entry at the start of `v`; returns it and the bytes it used.
    fn read_entry(typ: u16, v: &'a [u8]) -> Result<(Self, usize), ParseError> {
        if v.len() < 4 {
            return Err(ParseError::AttrLength(typ));
        }
        let algorithm = be16(v, 0);
        let plen = usize::from(be16(v, 2));
        let used = 4 + super::padded(plen);
        if used > v.len() {
            return Err(ParseError::AttrLength(typ));
        }
        Ok((
            PasswordAlgorithm {
                algorithm,
                params: &v[4..4 + plen],
            },
            used,
        ))
    }
}

impl<'a> Attribute<'a> for PasswordAlgorithm<'a> {
    const TYPE: u16 = PASSWORD_ALGORITHM;
    fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
        // Here the parameters are not padded inside the value: the attribute's own padding
        // covers them, so the value is exactly 4 + parameter length.
        if v.len() < 4 || 4 + usize::from(be16(v, 2)) != v.len() {
            return Err(ParseError::AttrLength(PASSWORD_ALGORITHM));
        }
        Ok(PasswordAlgorithm {
            algorithm: be16(v, 0),
            params: &v[4..],
        })
    }
    fn value_len(&self) -> usize {
        4 + self.params.len()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out[..2].copy_from_slice(&self.algorithm.to_be_bytes());
        out[2..4].copy_from_slice(&(self.params.len() as u16).to_be_bytes());
        out[4..].copy_from_slice(self.params);
    }
    fn check(&self) -> Result<(), EncodeError> {
        if self.params.len() > usize::from(u16::MAX) - 4 {
            Err(EncodeError::ValueTooLong)
        } else {
            Ok(())
        }
    }
}

/// PASSWORD-ALGORITHMS (RFC 8489 section 14.11): the algorithms a server offers, in order of
/// preference.
#[derive(Copy, Clone, Debug)]
pub enum PasswordAlgorithms<'a> {
    Wire(&'a [u8]),
    List(&'a [PasswordAlgorithm<'a>]),
}

/// Iterates the entries of PASSWORD-ALGORITHMS. Wire bytes were validated at decode time.
#[derive(Debug)]
pub struct PasswordAlgorithmsIter<'a> {
    wire: &'a [u8],
    list: core::slice::Iter<'a, PasswordAlgorithm<'a>>,
}

impl<'a> Iterator for PasswordAlgorithmsIter<'a> {
    type Item = PasswordAlgorithm<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(a) = self.list.next() {
            return Some(*a);
        }
        let (alg, used) = PasswordAlgorithm::read_entry(PASSWORD_ALGORITHMS, self.wire).ok()?;
        self.wire = &self.wire[used..];
        Some(alg)
    }
}

impl<'a> PasswordAlgorithms<'a> {
    pub fn iter(&self) -> PasswordAlgorithmsIter<'a> {
        match *self {
            PasswordAlgorithms::Wire(w) => PasswordAlgorithmsIter { wire: w, list: [].iter() },
            PasswordAlgorithms::List(l) => PasswordAlgorithmsIter { wire: &[], list: l.iter() },
        }
    }
}

impl PartialEq for PasswordAlgorithms<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl<'a> Attribute<'a> for PasswordAlgorithms<'a> {
    const TYPE: u16 = PASSWORD_ALGORITHMS;
    fn decode(v: &'a [u8], _: &TransactionId) -> Result<Self, ParseError> {
        let mut rest = v;
        while !rest.is_empty() {
            let (_, used) = PasswordAlgorithm::read_entry(PASSWORD_ALGORITHMS, rest)?;
            rest = &rest[used..];
        }
        Ok(PasswordAlgorithms::Wire(v))
    }
    fn value_len(&self) -> usize {
        self.iter().map(|a| a.entry_len()).sum()
    }
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        let mut at = 0;
        for a in self.iter() {
            a.write_entry(&mut out[at..]);
            at += a.entry_len();
        }
    }
    fn check(&self) -> Result<(), EncodeError> {
        if self.value_len() > usize::from(u16::MAX) {
            Err(EncodeError::ValueTooLong)
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Any attribute, for generic walks: fuzzing, logging, round-trip tests.

macro_rules! any_attribute {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// Any attribute this codec knows, or the raw bytes of one it does not.
        #[derive(Copy, Clone, Debug, PartialEq)]
        pub enum AnyAttribute<'a> {
            $($variant($ty),)*
            Unknown { typ: u16, value: &'a [u8] },
        }

        impl<'a> AnyAttribute<'a> {
            /// Decodes one attribute by its type number.
            pub fn decode(typ: u16, value: &'a [u8], tid: &TransactionId)
                -> Result<Self, ParseError> {
                Ok(match typ {
                    $(<$ty as Attribute<'a>>::TYPE =>
                        AnyAttribute::$variant(<$ty as Attribute<'a>>::decode(value, tid)?),)*
                    _ => AnyAttribute::Unknown { typ, value },
                })
            }

            pub fn typ(&self) -> u16 {
                match self {
                    $(AnyAttribute::$variant(_) => <$ty as Attribute<'a>>::TYPE,)*
                    AnyAttribute::Unknown { typ, .. } => *typ,
                }
            }

            /// Appends this attribute to a message being encoded.
            pub fn encode_into(&self, enc: &mut super::Encoder<'_>) -> Result<(), EncodeError> {
                match self {
                    $(AnyAttribute::$variant(a) => enc.add(a),)*
                    AnyAttribute::Unknown { typ, value } => enc.add_raw(*typ, value),
                }
            }
        }
    };
}

any_attribute! {
    MappedAddress(MappedAddress),
    XorMappedAddress(XorMappedAddress),
    XorPeerAddress(XorPeerAddress),
    XorRelayedAddress(XorRelayedAddress),
    AlternateServer(AlternateServer),
    ResponseOrigin(ResponseOrigin),
    OtherAddress(OtherAddress),
    Username(Username<'a>),
    Realm(Realm<'a>),
    Nonce(Nonce<'a>),
    Software(Software<'a>),
    AlternateDomain(AlternateDomain<'a>),
    Userhash(Userhash),
    MessageIntegrity(MessageIntegrity),
    MessageIntegritySha256(MessageIntegritySha256<'a>),
    Fingerprint(Fingerprint),
    ErrorCode(ErrorCode<'a>),
    UnknownAttributes(UnknownAttributes<'a>),
    PasswordAlgorithm(PasswordAlgorithm<'a>),
    PasswordAlgorithms(PasswordAlgorithms<'a>),
    Lifetime(Lifetime),
    RequestedTransport(RequestedTransport),
    RequestedAddressFamily(RequestedAddressFamily),
    AdditionalAddressFamily(AdditionalAddressFamily),
    AddressErrorCode(AddressErrorCode<'a>),
    EvenPort(EvenPort),
    ReservationToken(ReservationToken),
    DontFragment(DontFragment),
    ChannelNumber(ChannelNumber),
    Data(Data<'a>),
    Icmp(Icmp),
    ConnectionId(ConnectionId),
    Priority(Priority),
    UseCandidate(UseCandidate),
    IceControlled(IceControlled),
    IceControlling(IceControlling),
    ChangeRequest(ChangeRequest),
    ResponsePort(ResponsePort),
    Padding(Padding<'a>),
}
