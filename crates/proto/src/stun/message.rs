//! `Message<'a>`: a validated view over a datagram, borrowing it. Parsing walks every attribute
//! once to check its bounds and to note where the integrity attributes are; nothing is copied
//! and nothing is allocated.

use super::attr::{types, Attribute, MessageIntegrity, MessageIntegritySha256};
use super::error::{IntegrityError, ParseError};
use super::header::{Class, MessageType, Method, TransactionId};
use super::integrity::{adjusted_len, hmac_sha1, hmac_sha256};
use super::{fingerprint, padded, ATTR_HEADER_LEN, HEADER_LEN, MAGIC_COOKIE};
use subtle::ConstantTimeEq;

/// How many unknown comprehension-required attribute types a message remembers. A 420 response
/// lists them; more than this many in one request is an attack, not a client, and the first few
/// suffice.
pub const MAX_UNKNOWN: usize = 8;

/// A parsed STUN message that borrows the datagram it came from.
///
/// Attribute rules (RFC 8489 section 14):
/// - Attributes after MESSAGE-INTEGRITY are ignored, except MESSAGE-INTEGRITY-SHA256 and
///   FINGERPRINT; attributes after MESSAGE-INTEGRITY-SHA256 are ignored except FINGERPRINT;
///   attributes after FINGERPRINT are ignored. "Ignored" means [`Message::get`] and
///   [`Message::attributes`] never return them.
/// - Duplicates: the first occurrence wins for [`Message::get`]; [`Message::get_all`] returns
///   every occurrence in order (CreatePermission carries several XOR-PEER-ADDRESS).
/// - Unknown comprehension-required attributes (types below 0x8000 this codec does not know) are
///   collected in [`Message::unknown_attributes`] so that a server can answer 420.
#[derive(Copy, Clone, Debug)]
pub struct Message<'a> {
    raw: &'a [u8],
    typ: MessageType,
    /// Every attribute in `HEADER_LEN..open_end` is visible: the ones before the first of
    /// MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and that one itself.
    open_end: usize,
    /// Past `open_end` only the integrity-sha256 and fingerprint offsets below are visible, and
    /// nothing is visible past `visible_end`. The ignored attributes in between must stay
    /// hidden: anyone can append an attribute after MESSAGE-INTEGRITY and recompute FINGERPRINT.
    visible_end: usize,
    integrity: Option<usize>,
    integrity_sha256: Option<usize>,
    fingerprint: Option<usize>,
    unknown: [u16; MAX_UNKNOWN],
    unknown_len: u8,
}

/// One attribute as it sits in the message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    /// Offset of the attribute's 4-byte header in the message.
    pub offset: usize,
}

/// Iterates the visible TLVs of a validated message body.
#[derive(Clone, Debug)]
pub struct RawIter<'a> {
    raw: &'a [u8],
    at: usize,
    end: usize,
    /// Attributes starting before this are all visible.
    open_end: usize,
    /// Offsets past `open_end` that are visible anyway (usize::MAX for none).
    late: [usize; 2],
}

impl<'a> Iterator for RawIter<'a> {
    type Item = RawAttribute<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.at + ATTR_HEADER_LEN > self.end {
                return None;
            }
            let at = self.at;
            let typ = u16::from_be_bytes([self.raw[at], self.raw[at + 1]]);
            let len = usize::from(u16::from_be_bytes([self.raw[at + 2], self.raw[at + 3]]));
            let value = self
                .raw
                .get(at + ATTR_HEADER_LEN..at + ATTR_HEADER_LEN + len)?;
            self.at = at + ATTR_HEADER_LEN + padded(len);
            if at < self.open_end || self.late.contains(&at) {
                return Some(RawAttribute {
                    typ,
                    value,
                    offset: at,
                });
            }
        }
    }
}

/// Quick check of the fixed header, for demultiplexing: true when `b` starts like a STUN message
/// (two zero bits and the magic cookie), without looking at attributes.
pub fn looks_like_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[0] & 0xC0 == 0 && b[4..8] == MAGIC_COOKIE.to_be_bytes()
}

impl<'a> Message<'a> {
    /// Parses and validates a whole datagram.
    pub fn parse(raw: &'a [u8]) -> Result<Self, ParseError> {
        if raw.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        if raw[0] & 0xC0 != 0 {
            return Err(ParseError::NotStun);
        }
        if raw[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return Err(ParseError::BadCookie);
        }
        let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        if len + HEADER_LEN != raw.len() {
            return Err(ParseError::LengthMismatch);
        }
        if len % 4 != 0 {
            return Err(ParseError::UnalignedLength);
        }
        let typ = MessageType::from_u16(u16::from_be_bytes([raw[0], raw[1]]));

        let mut msg = Message {
            raw,
            typ,
            open_end: HEADER_LEN,
            visible_end: HEADER_LEN,
            integrity: None,
            integrity_sha256: None,
            fingerprint: None,
            unknown: [0; MAX_UNKNOWN],
            unknown_len: 0,
        };
        // What may still be read: 0 = anything, 1 = after MESSAGE-INTEGRITY, 2 = after
        // MESSAGE-INTEGRITY-SHA256, 3 = after FINGERPRINT (nothing).
        let mut stage = 0u8;
        let mut at = HEADER_LEN;
        while at < raw.len() {
            if at + ATTR_HEADER_LEN > raw.len() {
                return Err(ParseError::AttrHeaderTruncated);
            }
            let t = u16::from_be_bytes([raw[at], raw[at + 1]]);
            let vlen = usize::from(u16::from_be_bytes([raw[at + 2], raw[at + 3]]));
            let next = at + ATTR_HEADER_LEN + padded(vlen);
            if next > raw.len() {
                return Err(ParseError::AttrValueTruncated);
            }
            let open = stage == 0;
            let visible = match (stage, t) {
                (0, types::MESSAGE_INTEGRITY) => {
                    if vlen != 20 {
                        return Err(ParseError::AttrLength(t));
                    }
                    msg.integrity = Some(at);
                    stage = 1;
                    true
                }
                (0 | 1, types::MESSAGE_INTEGRITY_SHA256) => {
                    MessageIntegritySha256::decode(
                        &raw[at + 4..at + 4 + vlen],
                        &TransactionId::default(),
                    )?;
                    msg.integrity_sha256 = Some(at);
                    stage = 2;
                    true
                }
                (0..=2, types::FINGERPRINT) => {
                    if vlen != 4 {
                        return Err(ParseError::AttrLength(t));
                    }
                    msg.fingerprint = Some(at);
                    stage = 3;
                    true
                }
                (0, _) => {
                    if types::is_comprehension_required(t) && !types::is_known_required(t) {
                        msg.note_unknown(t);
                    }
                    true
                }
                _ => false,
            };
            if visible {
                msg.visible_end = next;
                if open {
                    msg.open_end = next;
                }
            }
            at = next;
        }
        Ok(msg)
    }

    fn note_unknown(&mut self, t: u16) {
        let n = usize::from(self.unknown_len);
        if n < MAX_UNKNOWN && !self.unknown[..n].contains(&t) {
            self.unknown[n] = t;
            self.unknown_len += 1;
        }
    }

    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn message_type(&self) -> MessageType {
        self.typ
    }

    pub fn method(&self) -> Method {
        self.typ.method
    }

    pub fn class(&self) -> Class {
        self.typ.class
    }

    pub fn transaction_id(&self) -> TransactionId {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.raw[8..20]);
        TransactionId(t)
    }

    /// Unknown comprehension-required attribute types, in order of appearance (at most
    /// [`MAX_UNKNOWN`]).
    pub fn unknown_attributes(&self) -> &[u16] {
        &self.unknown[..usize::from(self.unknown_len)]
    }

    /// The visible attributes in order, integrity attributes included.
    pub fn attributes(&self) -> RawIter<'a> {
        let late = |o: Option<usize>| o.filter(|&o| o >= self.open_end).unwrap_or(usize::MAX);
        RawIter {
            raw: self.raw,
            at: HEADER_LEN,
            end: self.visible_end,
            open_end: self.open_end,
            late: [late(self.integrity_sha256), late(self.fingerprint)],
        }
    }

    /// The first visible attribute of type `A`, decoded; `Ok(None)` when absent.
    pub fn get<A: Attribute<'a>>(&self) -> Result<Option<A>, ParseError> {
        let tid = self.transaction_id();
        match self.attributes().find(|a| a.typ == A::TYPE) {
            Some(a) => A::decode(a.value, &tid).map(Some),
            None => Ok(None),
        }
    }

    /// Whether a visible attribute of this type is present.
    pub fn has(&self, typ: u16) -> bool {
        self.attributes().any(|a| a.typ == typ)
    }

    /// Every visible attribute of type `A`, decoded, in order.
    pub fn get_all<A: Attribute<'a> + 'a>(
        &self,
    ) -> impl Iterator<Item = Result<A, ParseError>> + 'a {
        let tid = self.transaction_id();
        self.attributes()
            .filter(|a| a.typ == A::TYPE)
            .map(move |a| A::decode(a.value, &tid))
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some()
    }

    pub fn has_integrity_sha256(&self) -> bool {
        self.integrity_sha256.is_some()
    }

    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) in constant time.
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let at = self.integrity.ok_or(IntegrityError::Missing)?;
        let expected = hmac_sha1(key, self.raw, at, adjusted_len(at, 20));
        let got = &self.raw[at + 4..at + 24];
        if bool::from(expected[..].ct_eq(got)) {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 in constant time; a truncated value (16-28 bytes) is
    /// compared with the same prefix of the HMAC.
    pub fn verify_integrity_sha256(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let at = self.integrity_sha256.ok_or(IntegrityError::Missing)?;
        let vlen = usize::from(u16::from_be_bytes([self.raw[at + 2], self.raw[at + 3]]));
        let expected = hmac_sha256(key, self.raw, at, adjusted_len(at, vlen));
        let got = &self.raw[at + 4..at + 4 + vlen];
        if bool::from(expected[..vlen].ct_eq(got)) {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }

    /// Checks FINGERPRINT.
    pub fn check_fingerprint(&self) -> Result<(), IntegrityError> {
        let at = self.fingerprint.ok_or(IntegrityError::Missing)?;
        let got = u32::from_be_bytes([
            self.raw[at + 4],
            self.raw[at + 5],
            self.raw[at + 6],
            self.raw[at + 7],
        ]);
        if fingerprint::compute(self.raw, at) == got {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }

    /// The MESSAGE-INTEGRITY value as sent, for callers that want it.
    pub fn integrity_value(&self) -> Option<MessageIntegrity> {
        let at = self.integrity?;
        let mut v = [0u8; 20];
        v.copy_from_slice(&self.raw[at + 4..at + 24]);
        Some(MessageIntegrity(v))
    }
}
