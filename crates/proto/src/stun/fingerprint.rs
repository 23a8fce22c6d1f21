//! FINGERPRINT (RFC 8489 section 14.7): CRC-32 of the message up to the attribute, XORed with
//! 0x5354554e, with the header length already covering the FINGERPRINT attribute.

/// The constant RFC 8489 section 14.7 XORs into the CRC so that it differs from other
/// protocols' CRCs over the same bytes.
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Computes the fingerprint of `msg[..at]` as if the header length ended right after an 8-byte
/// FINGERPRINT attribute placed at `at`.
pub fn compute(msg: &[u8], at: usize) -> u32 {
    let adjusted = (at + 8 - super::HEADER_LEN) as u16;
    let mut h = crc32fast::Hasher::new();
    h.update(&msg[..2]);
    h.update(&adjusted.to_be_bytes());
    h.update(&msg[4..at]);
    h.finalize() ^ FINGERPRINT_XOR
}
