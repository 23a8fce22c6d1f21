//! STUN messages (RFC 8489): a borrowed parser, typed attributes and an encoder into caller-owned
//! buffers.

pub mod attr;
pub mod encode;
pub mod error;
pub mod fingerprint;
pub mod header;
pub mod integrity;
pub mod message;

pub use attr::Attribute;
pub use encode::Encoder;
pub use error::{EncodeError, IntegrityError, ParseError};
pub use header::{Class, MessageType, Method, TransactionId};
pub use integrity::{LongTermKey, PasswordAlgorithmId};
pub use message::{Message, RawAttribute};

/// RFC 8489 section 5: the fixed value in bytes 4..8 of every STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The fixed STUN header: type (2), length (2), cookie (4), transaction id (12).
pub const HEADER_LEN: usize = 20;
/// Every attribute starts with a 2-byte type and a 2-byte length.
pub const ATTR_HEADER_LEN: usize = 4;

/// Rounds `n` up to the 32-bit boundary that attributes are padded to (RFC 8489 section 14).
#[inline]
pub const fn padded(n: usize) -> usize {
    (n + 3) & !3
}
