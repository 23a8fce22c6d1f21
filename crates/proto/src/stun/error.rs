//! Error types of the codec. All are `Copy` and carry no heap data, so a flood of malformed
//! packets costs no allocation.

/// Why a datagram is not a well-formed STUN message, or why an attribute value is malformed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than the 20-byte STUN header")]
    TooShort,
    #[error("the two leading bits are not zero")]
    NotStun,
    #[error("bad magic cookie")]
    BadCookie,
    #[error("length field does not match the datagram length")]
    LengthMismatch,
    #[error("message length is not a multiple of 4")]
    UnalignedLength,
    #[error("attribute header truncated")]
    AttrHeaderTruncated,
    #[error("attribute value or padding runs past the end of the message")]
    AttrValueTruncated,
    #[error("attribute {0:#06x} has a length its type does not allow")]
    AttrLength(u16),
    #[error("attribute {0:#06x} has an invalid value")]
    AttrValue(u16),
}

/// Why a message could not be written into the caller's buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum EncodeError {
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("attribute value longer than its type allows")]
    ValueTooLong,
    #[error("attribute added after MESSAGE-INTEGRITY or FINGERPRINT")]
    AfterIntegrity,
}

/// Why an integrity or fingerprint check failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum IntegrityError {
    #[error("the message carries no such integrity attribute")]
    Missing,
    #[error("integrity check failed")]
    Mismatch,
}
