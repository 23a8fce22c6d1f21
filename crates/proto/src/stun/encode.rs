//! The encoder: writes a STUN message into a caller-provided buffer, never allocating. The header
//! length is kept current after every attribute, so MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256
//! and FINGERPRINT can be computed over exactly the bytes written before them.

use super::attr::{types, Attribute};
use super::error::EncodeError;
use super::header::{MessageType, TransactionId};
use super::integrity::{adjusted_len, hmac_sha1, hmac_sha256};
use super::{fingerprint, padded, ATTR_HEADER_LEN, HEADER_LEN, MAGIC_COOKIE};

/// Writes one message. Create it with [`Encoder::new`], add attributes, then call
/// [`Encoder::finish`] for the length.
#[derive(Debug)]
pub struct Encoder<'b> {
    buf: &'b mut [u8],
    len: usize,
    tid: TransactionId,
    /// 0 = open, 1 = after MESSAGE-INTEGRITY, 2 = after MESSAGE-INTEGRITY-SHA256,
    /// 3 = after FINGERPRINT. Mirrors the parser's ordering rules.
    stage: u8,
    /// The byte written into padding. Zero by default (RFC 8489 section 14); RFC 5769's test
    /// vectors use 0x20 to show that receivers ignore it, and reproducing them needs the same.
    pad: u8,
}

impl<'b> Encoder<'b> {
    pub fn new(
        buf: &'b mut [u8],
        typ: MessageType,
        tid: TransactionId,
    ) -> Result<Self, EncodeError> {
        if buf.len() < HEADER_LEN {
            return Err(EncodeError::BufferTooSmall);
        }
        buf[..2].copy_from_slice(&typ.to_u16().to_be_bytes());
        buf[2..4].fill(0);
        buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf[8..20].copy_from_slice(&tid.0);
        Ok(Encoder {
            buf,
            len: HEADER_LEN,
            tid,
            stage: 0,
            pad: 0,
        })
    }

    /// Sets the byte used for padding attributes added from now on.
    pub fn padding_byte(&mut self, pad: u8) {
        self.pad = pad;
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.tid
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Reserves a TLV of `vlen` bytes, writes its header and padding, updates the message length
    /// and returns the value's offset.
    fn reserve(&mut self, typ: u16, vlen: usize) -> Result<usize, EncodeError> {
        if vlen > usize::from(u16::MAX) {
            return Err(EncodeError::ValueTooLong);
        }
        let total = ATTR_HEADER_LEN + padded(vlen);
        let end = self.len + total;
        if end > self.buf.len() || end - HEADER_LEN > usize::from(u16::MAX) {
            return Err(EncodeError::BufferTooSmall);
        }
        let at = self.len;
        self.buf[at..at + 2].copy_from_slice(&typ.to_be_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&(vlen as u16).to_be_bytes());
        self.buf[at + ATTR_HEADER_LEN + vlen..end].fill(self.pad);
        self.len = end;
        self.buf[2..4].copy_from_slice(&((end - HEADER_LEN) as u16).to_be_bytes());
        Ok(at + ATTR_HEADER_LEN)
    }

    /// Appends a typed attribute.
    pub fn add<'x, A: Attribute<'x>>(&mut self, attr: &A) -> Result<(), EncodeError> {
        if self.stage != 0 {
            return Err(EncodeError::AfterIntegrity);
        }
        attr.check()?;
        let vlen = attr.value_len();
        let at = self.reserve(A::TYPE, vlen)?;
        let tid = self.tid;
        attr.encode(&mut self.buf[at..at + vlen], &tid);
        Ok(())
    }

    /// Appends an attribute from raw bytes (for types this codec does not model).
    pub fn add_raw(&mut self, typ: u16, value: &[u8]) -> Result<(), EncodeError> {
        if self.stage != 0 {
            return Err(EncodeError::AfterIntegrity);
        }
        let at = self.reserve(typ, value.len())?;
        self.buf[at..at + value.len()].copy_from_slice(value);
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY: HMAC-SHA1 with `key` over everything written so far.
    pub fn message_integrity(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        if self.stage != 0 {
            return Err(EncodeError::AfterIntegrity);
        }
        let at = self.len;
        let v = self.reserve(types::MESSAGE_INTEGRITY, 20)?;
        let mac = hmac_sha1(key, self.buf, at, adjusted_len(at, 20));
        self.buf[v..v + 20].copy_from_slice(&mac);
        self.stage = 1;
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes).
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        if self.stage > 1 {
            return Err(EncodeError::AfterIntegrity);
        }
        let at = self.len;
        let v = self.reserve(types::MESSAGE_INTEGRITY_SHA256, 32)?;
        let mac = hmac_sha256(key, self.buf, at, adjusted_len(at, 32));
        self.buf[v..v + 32].copy_from_slice(&mac);
        self.stage = 2;
        Ok(())
    }

    /// Appends FINGERPRINT; nothing can follow it.
    pub fn fingerprint(&mut self) -> Result<(), EncodeError> {
        if self.stage > 2 {
            return Err(EncodeError::AfterIntegrity);
        }
        let at = self.len;
        let v = self.reserve(types::FINGERPRINT, 4)?;
        let crc = fingerprint::compute(self.buf, at);
        self.buf[v..v + 4].copy_from_slice(&crc.to_be_bytes());
        self.stage = 3;
        Ok(())
    }

    /// The finished message's length; the message is `buf[..len]`.
    pub fn finish(self) -> usize {
        self.len
    }
}
