//! Writing responses: error codes with their RFC reason phrases, and the integrity and
//! fingerprint trailers.

use crate::stun::attr::ErrorCode;
use crate::stun::{Class, EncodeError, Encoder, LongTermKey, MessageType, Method, TransactionId};

/// The reason phrase the RFCs give each error code (RFC 8489 section 14.8, RFC 8656 section 19,
/// RFC 6062 section 6.3).
pub const fn reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthenticated",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

/// How to sign a response: with the key the request was verified with, in the same integrity
/// attribute the request used (RFC 8489 section 9.2.4).
#[derive(Copy, Clone, Debug)]
pub struct Signer {
    pub key: LongTermKey,
    pub sha256: bool,
}

/// Starts a response to a request of `method` with transaction id `tid`.
pub fn start<'o>(
    out: &'o mut [u8],
    method: Method,
    success: bool,
    tid: TransactionId,
) -> Result<Encoder<'o>, EncodeError> {
    let class = if success {
        Class::Success
    } else {
        Class::Error
    };
    Encoder::new(out, MessageType::new(method, class), tid)
}

/// Starts an error response with ERROR-CODE already added.
pub fn start_error<'o>(
    out: &'o mut [u8],
    method: Method,
    tid: TransactionId,
    code: u16,
) -> Result<Encoder<'o>, EncodeError> {
    let mut e = start(out, method, false, tid)?;
    e.add(&ErrorCode {
        code,
        reason: reason(code),
    })?;
    Ok(e)
}

/// Appends MESSAGE-INTEGRITY(-SHA256) when signing and FINGERPRINT when asked, and returns the
/// length.
pub fn finish(
    mut e: Encoder<'_>,
    signer: Option<&Signer>,
    fingerprint: bool,
) -> Result<usize, EncodeError> {
    if let Some(s) = signer {
        if s.sha256 {
            e.message_integrity_sha256(s.key.as_bytes())?;
        } else {
            e.message_integrity(s.key.as_bytes())?;
        }
    }
    if fingerprint {
        e.fingerprint()?;
    }
    Ok(e.finish())
}
