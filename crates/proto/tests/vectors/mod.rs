//! STUN test vectors from RFC 5769 (sections 2.1 to 2.4) and RFC 8489 appendix B.1,
//! copied byte for byte, one row per 4 bytes as in the RFC text.
//!
//! Sources:
//! - RFC 5769, "Test Vectors for Session Traversal Utilities for NAT (STUN)":
//!   <https://www.rfc-editor.org/rfc/rfc5769>. Bytes taken from public copies that
//!   quote the RFC rows verbatim and agree with one another, among them
//!   `sancane/rustun` (`stun-vectors/src/lib.rs`), the libre/re `test/stun.c`
//!   and several independent test suites.
//! - RFC 8489 appendix B.1: <https://www.rfc-editor.org/rfc/rfc8489#appendix-B.1>,
//!   corrected by erratum 6268: <https://www.rfc-editor.org/errata/eid6268>. The corrected
//!   bytes are those given in the erratum's "It should say" block. They also appear in
//!   `ystreet/stun-proto` (`stun-types/src/message.rs`, test `rfc8489_vector1`).
//!
//! Every vector was checked with an independent script (Python `hashlib`/`hmac`/`zlib`)
//! before it was written here:
//! - the header length field equals the total length minus 20 (the 20-byte header);
//! - FINGERPRINT = CRC-32 (ISO-HDLC, as in `zlib.crc32`) of the message before the
//!   FINGERPRINT attribute, XOR 0x5354554e, with the header length counting the
//!   FINGERPRINT attribute;
//! - MESSAGE-INTEGRITY = HMAC-SHA1 over the message before the MESSAGE-INTEGRITY
//!   attribute, with the header length field rewritten to end just after
//!   MESSAGE-INTEGRITY (so for 2.1 to 2.3 it does not count the FINGERPRINT that follows). Key: the
//!   password for short-term credentials (2.1 to 2.3), MD5("username:realm:password") for
//!   long-term credentials (2.4);
//! - MESSAGE-INTEGRITY-SHA256 (B.1) = HMAC-SHA256 in the same way, key
//!   SHA-256("username:realm:password") because PASSWORD-ALGORITHM is SHA-256; and
//!   USERHASH = SHA-256("username:realm").
//!
//! All five vectors (RFC 8489 B.1 in its errata-corrected form) pass every check.
//! The B.1 text *as published* does not; see [`RFC8489_B1_AS_PUBLISHED`].
//!
//! Padding: RFC 5769 pads with non-zero bytes on purpose, to check that receivers ignore
//! padding: USERNAME "evtj:h6vY" in 2.1 is followed by three 0x20 bytes, and SOFTWARE
//! "test vector" in 2.2/2.3 by one 0x20 byte. The padding is covered by the HMAC and the
//! CRC, so a decoder must verify over the bytes as received, not over a re-encoding.
#![allow(dead_code)]

/// The STUN magic cookie, bytes 4..8 of every vector.
pub const MAGIC_COOKIE: u32 = 0x2112_a442;
/// XOR constant for FINGERPRINT ("STUN").
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Binding request message type.
pub const BINDING_REQUEST: u16 = 0x0001;
/// Binding success response message type.
pub const BINDING_SUCCESS_RESPONSE: u16 = 0x0101;

/// Short-term password shared by RFC 5769 sections 2.1, 2.2 and 2.3 (used as the HMAC key as is).
pub const RFC5769_SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

/// Transaction ID shared by RFC 5769 sections 2.1, 2.2 and 2.3.
pub const RFC5769_SHORT_TERM_TRANSACTION_ID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

// ---------------------------------------------------------------------------
// RFC 5769 section 2.1: Sample Request
// ---------------------------------------------------------------------------

/// RFC 5769 section 2.1 "Sample Request": Binding request with SOFTWARE, PRIORITY,
/// ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY (short-term) and FINGERPRINT. 108 bytes.
#[rustfmt::skip]
pub const SAMPLE_REQUEST: &[u8] = &[
    0x00, 0x01, 0x00, 0x58,  // type, length
    0x21, 0x12, 0xa4, 0x42,  // magic cookie
    0xb7, 0xe7, 0xa7, 0x01,  // transaction ID
    0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae,
    0x80, 0x22, 0x00, 0x10,  // SOFTWARE header (type 0x8022, length 16)
    0x53, 0x54, 0x55, 0x4e,  // "STUN test client" (16 bytes, no padding)
    0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c,
    0x69, 0x65, 0x6e, 0x74,
    0x00, 0x24, 0x00, 0x04,  // PRIORITY header (type 0x0024, length 4)
    0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08,  // ICE-CONTROLLED header (type 0x8029, length 8)
    0x93, 0x2f, 0xf9, 0xb1,
    0x51, 0x26, 0x3b, 0x36,
    0x00, 0x06, 0x00, 0x09,  // USERNAME header (type 0x0006, length 9)
    0x65, 0x76, 0x74, 0x6a,  // "evtj:h6vY" (9 bytes) + 3 padding bytes 0x20
    0x3a, 0x68, 0x36, 0x76,
    0x59, 0x20, 0x20, 0x20,
    0x00, 0x08, 0x00, 0x14,  // MESSAGE-INTEGRITY header (type 0x0008, length 20)
    0x9a, 0xea, 0xa7, 0x0c,
    0xbf, 0xd8, 0xcb, 0x56,
    0x78, 0x1e, 0xf2, 0xb5,
    0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2,
    0x80, 0x28, 0x00, 0x04,  // FINGERPRINT header (type 0x8028, length 4)
    0xe5, 0x7a, 0x3b, 0xcf,
];
pub const SAMPLE_REQUEST_LEN: usize = 108;
pub const SAMPLE_REQUEST_TYPE: u16 = BINDING_REQUEST;
/// Header length field (total length - 20).
pub const SAMPLE_REQUEST_HEADER_LENGTH: u16 = 0x0058;
pub const SAMPLE_REQUEST_TRANSACTION_ID: [u8; 12] = RFC5769_SHORT_TERM_TRANSACTION_ID;
pub const SAMPLE_REQUEST_PASSWORD: &str = RFC5769_SHORT_TERM_PASSWORD;
pub const SAMPLE_REQUEST_SOFTWARE: &str = "STUN test client";
pub const SAMPLE_REQUEST_USERNAME: &str = "evtj:h6vY";
/// PRIORITY (0x0024) value.
pub const SAMPLE_REQUEST_PRIORITY: u32 = 0x6e0001ff;
/// ICE-CONTROLLED (0x8029) tie-breaker.
pub const SAMPLE_REQUEST_ICE_CONTROLLED_TIEBREAKER: u64 = 0x932ff9b151263b36;
/// MESSAGE-INTEGRITY (HMAC-SHA1) value.
pub const SAMPLE_REQUEST_MESSAGE_INTEGRITY: [u8; 20] = [
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2,
];
/// FINGERPRINT value.
pub const SAMPLE_REQUEST_FINGERPRINT: u32 = 0xe57a3bcf;
/// Offset of the MESSAGE-INTEGRITY attribute header.
pub const SAMPLE_REQUEST_MESSAGE_INTEGRITY_OFFSET: usize = 76;
/// Offset of the FINGERPRINT attribute header.
pub const SAMPLE_REQUEST_FINGERPRINT_OFFSET: usize = 100;
/// Attribute types in wire order.
pub const SAMPLE_REQUEST_ATTRIBUTE_TYPES: [u16; 6] =
    [0x8022, 0x0024, 0x8029, 0x0006, 0x0008, 0x8028];

// ---------------------------------------------------------------------------
// RFC 5769 section 2.2: Sample IPv4 Response
// ---------------------------------------------------------------------------

/// RFC 5769 section 2.2 "Sample IPv4 Response": Binding success response with SOFTWARE,
/// XOR-MAPPED-ADDRESS (192.0.2.1:32853), MESSAGE-INTEGRITY and FINGERPRINT. 80 bytes.
#[rustfmt::skip]
pub const SAMPLE_IPV4_RESPONSE: &[u8] = &[
    0x01, 0x01, 0x00, 0x3c,  // type, length
    0x21, 0x12, 0xa4, 0x42,  // magic cookie
    0xb7, 0xe7, 0xa7, 0x01,  // transaction ID
    0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae,
    0x80, 0x22, 0x00, 0x0b,  // SOFTWARE header (type 0x8022, length 11)
    0x74, 0x65, 0x73, 0x74,  // "test vector" (11 bytes) + 1 padding byte 0x20
    0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20,
    0x00, 0x20, 0x00, 0x08,  // XOR-MAPPED-ADDRESS header (type 0x0020, length 8)
    0x00, 0x01, 0xa1, 0x47,  // family 0x01 (IPv4), X-Port 0xa147
    0xe1, 0x12, 0xa6, 0x43,  // X-Address
    0x00, 0x08, 0x00, 0x14,  // MESSAGE-INTEGRITY header (type 0x0008, length 20)
    0x2b, 0x91, 0xf5, 0x99,
    0xfd, 0x9e, 0x90, 0xc3,
    0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53,
    0xf0, 0x6b, 0xe7, 0xd7,
    0x80, 0x28, 0x00, 0x04,  // FINGERPRINT header (type 0x8028, length 4)
    0xc0, 0x7d, 0x4c, 0x96,
];
pub const SAMPLE_IPV4_RESPONSE_LEN: usize = 80;
pub const SAMPLE_IPV4_RESPONSE_TYPE: u16 = BINDING_SUCCESS_RESPONSE;
pub const SAMPLE_IPV4_RESPONSE_HEADER_LENGTH: u16 = 0x003c;
pub const SAMPLE_IPV4_RESPONSE_TRANSACTION_ID: [u8; 12] = RFC5769_SHORT_TERM_TRANSACTION_ID;
pub const SAMPLE_IPV4_RESPONSE_PASSWORD: &str = RFC5769_SHORT_TERM_PASSWORD;
/// SOFTWARE value: 11 bytes; the RFC's trailing space is a padding byte, not part of the value.
pub const SAMPLE_IPV4_RESPONSE_SOFTWARE: &str = "test vector";
/// Decoded XOR-MAPPED-ADDRESS: 192.0.2.1 port 32853.
pub const SAMPLE_IPV4_RESPONSE_MAPPED_IP: [u8; 4] = [192, 0, 2, 1];
pub const SAMPLE_IPV4_RESPONSE_MAPPED_PORT: u16 = 32853;
pub const SAMPLE_IPV4_RESPONSE_MAPPED_ADDR: &str = "192.0.2.1:32853";
/// Wire (xor'd) X-Port and X-Address.
pub const SAMPLE_IPV4_RESPONSE_XOR_PORT: u16 = 0xa147;
pub const SAMPLE_IPV4_RESPONSE_XOR_ADDRESS: [u8; 4] = [0xe1, 0x12, 0xa6, 0x43];
pub const SAMPLE_IPV4_RESPONSE_MESSAGE_INTEGRITY: [u8; 20] = [
    0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53,
    0xf0, 0x6b, 0xe7, 0xd7,
];
pub const SAMPLE_IPV4_RESPONSE_FINGERPRINT: u32 = 0xc07d4c96;
pub const SAMPLE_IPV4_RESPONSE_MESSAGE_INTEGRITY_OFFSET: usize = 48;
pub const SAMPLE_IPV4_RESPONSE_FINGERPRINT_OFFSET: usize = 72;
pub const SAMPLE_IPV4_RESPONSE_ATTRIBUTE_TYPES: [u16; 4] = [0x8022, 0x0020, 0x0008, 0x8028];

// ---------------------------------------------------------------------------
// RFC 5769 section 2.3: Sample IPv6 Response
// ---------------------------------------------------------------------------

/// RFC 5769 section 2.3 "Sample IPv6 Response": Binding success response with SOFTWARE,
/// XOR-MAPPED-ADDRESS ([2001:db8:1234:5678:11:2233:4455:6677]:32853), MESSAGE-INTEGRITY
/// and FINGERPRINT. 92 bytes. The IPv6 address is XORed with magic cookie || transaction ID.
#[rustfmt::skip]
pub const SAMPLE_IPV6_RESPONSE: &[u8] = &[
    0x01, 0x01, 0x00, 0x48,  // type, length
    0x21, 0x12, 0xa4, 0x42,  // magic cookie
    0xb7, 0xe7, 0xa7, 0x01,  // transaction ID
    0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae,
    0x80, 0x22, 0x00, 0x0b,  // SOFTWARE header (type 0x8022, length 11)
    0x74, 0x65, 0x73, 0x74,  // "test vector" (11 bytes) + 1 padding byte 0x20
    0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20,
    0x00, 0x20, 0x00, 0x14,  // XOR-MAPPED-ADDRESS header (type 0x0020, length 20)
    0x00, 0x02, 0xa1, 0x47,  // family 0x02 (IPv6), X-Port 0xa147
    0x01, 0x13, 0xa9, 0xfa,  // X-Address (16 bytes)
    0xa5, 0xd3, 0xf1, 0x79,
    0xbc, 0x25, 0xf4, 0xb5,
    0xbe, 0xd2, 0xb9, 0xd9,
    0x00, 0x08, 0x00, 0x14,  // MESSAGE-INTEGRITY header (type 0x0008, length 20)
    0xa3, 0x82, 0x95, 0x4e,
    0x4b, 0xe6, 0x7b, 0xf1,
    0x17, 0x84, 0xc9, 0x7c,
    0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41,
    0x80, 0x28, 0x00, 0x04,  // FINGERPRINT header (type 0x8028, length 4)
    0xc8, 0xfb, 0x0b, 0x4c,
];
pub const SAMPLE_IPV6_RESPONSE_LEN: usize = 92;
pub const SAMPLE_IPV6_RESPONSE_TYPE: u16 = BINDING_SUCCESS_RESPONSE;
pub const SAMPLE_IPV6_RESPONSE_HEADER_LENGTH: u16 = 0x0048;
pub const SAMPLE_IPV6_RESPONSE_TRANSACTION_ID: [u8; 12] = RFC5769_SHORT_TERM_TRANSACTION_ID;
pub const SAMPLE_IPV6_RESPONSE_PASSWORD: &str = RFC5769_SHORT_TERM_PASSWORD;
pub const SAMPLE_IPV6_RESPONSE_SOFTWARE: &str = "test vector";
/// Decoded XOR-MAPPED-ADDRESS: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
pub const SAMPLE_IPV6_RESPONSE_MAPPED_IP: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0x12, 0x34, 0x56, 0x78, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
];
pub const SAMPLE_IPV6_RESPONSE_MAPPED_PORT: u16 = 32853;
pub const SAMPLE_IPV6_RESPONSE_MAPPED_ADDR: &str = "[2001:db8:1234:5678:11:2233:4455:6677]:32853";
pub const SAMPLE_IPV6_RESPONSE_XOR_PORT: u16 = 0xa147;
pub const SAMPLE_IPV6_RESPONSE_XOR_ADDRESS: [u8; 16] = [
    0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
];
pub const SAMPLE_IPV6_RESPONSE_MESSAGE_INTEGRITY: [u8; 20] = [
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41,
];
pub const SAMPLE_IPV6_RESPONSE_FINGERPRINT: u32 = 0xc8fb0b4c;
pub const SAMPLE_IPV6_RESPONSE_MESSAGE_INTEGRITY_OFFSET: usize = 60;
pub const SAMPLE_IPV6_RESPONSE_FINGERPRINT_OFFSET: usize = 84;
pub const SAMPLE_IPV6_RESPONSE_ATTRIBUTE_TYPES: [u16; 4] = [0x8022, 0x0020, 0x0008, 0x8028];

// ---------------------------------------------------------------------------
// RFC 5769 section 2.4: Sample Request with Long-Term Authentication
// ---------------------------------------------------------------------------

/// RFC 5769 section 2.4 "Sample Request with Long-Term Authentication": Binding request with
/// USERNAME, NONCE, REALM and MESSAGE-INTEGRITY (long-term, key = MD5(username:realm:password)).
/// No FINGERPRINT. 116 bytes.
#[rustfmt::skip]
pub const SAMPLE_REQUEST_LONG_TERM: &[u8] = &[
    0x00, 0x01, 0x00, 0x60,  // type, length
    0x21, 0x12, 0xa4, 0x42,  // magic cookie
    0x78, 0xad, 0x34, 0x33,  // transaction ID
    0xc6, 0xad, 0x72, 0xc0,
    0x29, 0xda, 0x41, 0x2e,
    0x00, 0x06, 0x00, 0x12,  // USERNAME header (type 0x0006, length 18)
    0xe3, 0x83, 0x9e, 0xe3,  // USERNAME: 18 bytes UTF-8 + 2 padding bytes 0x00
    0x83, 0x88, 0xe3, 0x83,
    0xaa, 0xe3, 0x83, 0x83,
    0xe3, 0x82, 0xaf, 0xe3,
    0x82, 0xb9, 0x00, 0x00,
    0x00, 0x15, 0x00, 0x1c,  // NONCE header (type 0x0015, length 28)
    0x66, 0x2f, 0x2f, 0x34,  // "f//499k954d6OL34oL9FSTvy64sA" (28 bytes)
    0x39, 0x39, 0x6b, 0x39,
    0x35, 0x34, 0x64, 0x36,
    0x4f, 0x4c, 0x33, 0x34,
    0x6f, 0x4c, 0x39, 0x46,
    0x53, 0x54, 0x76, 0x79,
    0x36, 0x34, 0x73, 0x41,
    0x00, 0x14, 0x00, 0x0b,  // REALM header (type 0x0014, length 11)
    0x65, 0x78, 0x61, 0x6d,  // "example.org" (11 bytes) + 1 padding byte 0x00
    0x70, 0x6c, 0x65, 0x2e,
    0x6f, 0x72, 0x67, 0x00,
    0x00, 0x08, 0x00, 0x14,  // MESSAGE-INTEGRITY header (type 0x0008, length 20)
    0xf6, 0x70, 0x24, 0x65,
    0x6d, 0xd6, 0x4a, 0x3e,
    0x02, 0xb8, 0xe0, 0x71,
    0x2e, 0x85, 0xc9, 0xa2,
    0x8c, 0xa8, 0x96, 0x66,
];
pub const SAMPLE_REQUEST_LONG_TERM_LEN: usize = 116;
pub const SAMPLE_REQUEST_LONG_TERM_TYPE: u16 = BINDING_REQUEST;
pub const SAMPLE_REQUEST_LONG_TERM_HEADER_LENGTH: u16 = 0x0060;
pub const SAMPLE_REQUEST_LONG_TERM_TRANSACTION_ID: [u8; 12] = [
    0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e,
];
/// USERNAME: U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9 (SASLprep leaves it unchanged).
pub const SAMPLE_REQUEST_LONG_TERM_USERNAME: &str =
    "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// The same USERNAME as its 18 UTF-8 bytes on the wire.
pub const SAMPLE_REQUEST_LONG_TERM_USERNAME_UTF8: [u8; 18] = [
    0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3,
    0x82, 0xb9,
];
/// Password as given before SASLprep: "The<U+00AD>M<U+00AA>tr<U+2168>".
pub const SAMPLE_REQUEST_LONG_TERM_PASSWORD_UNPREPPED: &str = "The\u{00AD}M\u{00AA}tr\u{2168}";
/// Password after SASLprep, the one that goes into the key.
pub const SAMPLE_REQUEST_LONG_TERM_PASSWORD: &str = "TheMatrIX";
pub const SAMPLE_REQUEST_LONG_TERM_NONCE: &str = "f//499k954d6OL34oL9FSTvy64sA";
pub const SAMPLE_REQUEST_LONG_TERM_REALM: &str = "example.org";
/// Long-term key MD5("<username>:example.org:TheMatrIX").
pub const SAMPLE_REQUEST_LONG_TERM_KEY: [u8; 16] = [
    0xe8, 0xca, 0x7a, 0xd5, 0x9d, 0x5e, 0xb0, 0x51, 0x8e, 0x31, 0x29, 0x11, 0xd2, 0xda, 0xb2, 0xa9,
];
pub const SAMPLE_REQUEST_LONG_TERM_MESSAGE_INTEGRITY: [u8; 20] = [
    0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2,
    0x8c, 0xa8, 0x96, 0x66,
];
pub const SAMPLE_REQUEST_LONG_TERM_MESSAGE_INTEGRITY_OFFSET: usize = 92;
pub const SAMPLE_REQUEST_LONG_TERM_ATTRIBUTE_TYPES: [u16; 4] = [0x0006, 0x0015, 0x0014, 0x0008];

// ---------------------------------------------------------------------------
// RFC 8489 appendix B.1: Sample Request with Long-Term Authentication with
// MESSAGE-INTEGRITY-SHA256 and USERHASH (errata-corrected)
// ---------------------------------------------------------------------------
//
// Erratum 6268 (https://www.rfc-editor.org/errata/eid6268) against RFC 8489 appendix B.1.
// Two third-party sources call it "verified"; its status was not checked on rfc-editor.org.
// How the published text (RFC8489_B1_AS_PUBLISHED, 156 bytes) differs from the corrected
// vector (RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256, 164 bytes):
//
//  1. Bytes 2..4, header length: published 0x009c (= 156, the total length including the
//     20-byte header); corrected 0x0090 (= 164 - 20). Without any other change the
//     length should have been 0x0088 (156 - 20).
//  2. PASSWORD-ALGORITHM is added at offset 120, before MESSAGE-INTEGRITY-SHA256:
//     `00 1d 00 04  00 02 00 00` (type 0x001d, length 4, algorithm 0x0002 = SHA-256,
//     parameters length 0). The published text uses a SHA-256 key but had no
//     PASSWORD-ALGORITHM attribute to say so, and MD5 is the default.
//  3. As a result MESSAGE-INTEGRITY-SHA256 moves from offset 120 to 128, and its 32-byte
//     HMAC changes from
//       e4 68 6c 8f 0e de b5 90 13 e0 70 90 01 0a 93 ef cc bc cc 54 4c 0a 45 d9 f8 30 aa 6d 6f 73 5a 01
//     to
//       b5 c7 bf 00 5b 6c 52 a2 1c 51 c5 e8 92 f8 19 24 13 62 96 cb 92 7c 43 14 93 09 27 8c c6 51 8e 65
//  Bytes 4..120 (magic cookie, transaction ID, USERHASH, NONCE, REALM) are the same in both.
//
// Checked here: the corrected HMAC verifies with key SHA-256("<username>:example.org:TheMatrIX")
// over bytes 0..128 with the length field at 0x0090. It does not verify with an MD5 key.
// The published HMAC e4 68 6c 8f ... is HMAC-SHA256 with the same SHA-256 key over the
// published bytes 0..120 with the length field left at 0x009c, so it was computed from
// the wrong length value. It does not verify with the correct 0x0088, whichever key is used.
// (sancane/rustun's stun-vectors has a third variant: length 0x0088, no
// PASSWORD-ALGORITHM, HMAC fd 8c 27 38 ... computed with the MD5 key. It is not used here.)

/// RFC 8489 appendix B.1, as corrected by erratum 6268: Binding request with USERHASH, NONCE,
/// REALM, PASSWORD-ALGORITHM (SHA-256) and MESSAGE-INTEGRITY-SHA256. No FINGERPRINT. 164 bytes.
#[rustfmt::skip]
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256: &[u8] = &[
    0x00, 0x01, 0x00, 0x90,  // type, length 0x0090 (erratum 6268; published: 0x009c)
    0x21, 0x12, 0xa4, 0x42,  // magic cookie
    0x78, 0xad, 0x34, 0x33,  // transaction ID
    0xc6, 0xad, 0x72, 0xc0,
    0x29, 0xda, 0x41, 0x2e,
    0x00, 0x1e, 0x00, 0x20,  // USERHASH header (type 0x001e, length 32)
    0x4a, 0x3c, 0xf3, 0x8f,  // USERHASH value (32 bytes)
    0xef, 0x69, 0x92, 0xbd,
    0xa9, 0x52, 0xc6, 0x78,
    0x04, 0x17, 0xda, 0x0f,
    0x24, 0x81, 0x94, 0x15,
    0x56, 0x9e, 0x60, 0xb2,
    0x05, 0xc4, 0x6e, 0x41,
    0x40, 0x7f, 0x17, 0x04,
    0x00, 0x15, 0x00, 0x29,  // NONCE header (type 0x0015, length 41)
    0x6f, 0x62, 0x4d, 0x61,  // NONCE value (41 bytes) + 3 padding bytes 0x00
    0x74, 0x4a, 0x6f, 0x73,
    0x32, 0x41, 0x41, 0x41,
    0x43, 0x66, 0x2f, 0x2f,
    0x34, 0x39, 0x39, 0x6b,
    0x39, 0x35, 0x34, 0x64,
    0x36, 0x4f, 0x4c, 0x33,
    0x34, 0x6f, 0x4c, 0x39,
    0x46, 0x53, 0x54, 0x76,
    0x79, 0x36, 0x34, 0x73,
    0x41, 0x00, 0x00, 0x00,
    0x00, 0x14, 0x00, 0x0b,  // REALM header (type 0x0014, length 11)
    0x65, 0x78, 0x61, 0x6d,  // "example.org" (11 bytes) + 1 padding byte 0x00
    0x70, 0x6c, 0x65, 0x2e,
    0x6f, 0x72, 0x67, 0x00,
    0x00, 0x1d, 0x00, 0x04,  // PASSWORD-ALGORITHM header (added by erratum 6268)
    0x00, 0x02, 0x00, 0x00,  // algorithm 0x0002 (SHA-256), params length 0
    0x00, 0x1c, 0x00, 0x20,  // MESSAGE-INTEGRITY-SHA256 header (type 0x001c, length 32)
    0xb5, 0xc7, 0xbf, 0x00,  // HMAC-SHA256 value (recomputed by erratum 6268)
    0x5b, 0x6c, 0x52, 0xa2,
    0x1c, 0x51, 0xc5, 0xe8,
    0x92, 0xf8, 0x19, 0x24,
    0x13, 0x62, 0x96, 0xcb,
    0x92, 0x7c, 0x43, 0x14,
    0x93, 0x09, 0x27, 0x8c,
    0xc6, 0x51, 0x8e, 0x65,
];
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_LEN: usize = 164;
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_TYPE: u16 = BINDING_REQUEST;
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_HEADER_LENGTH: u16 = 0x0090;
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_TRANSACTION_ID: [u8; 12] = [
    0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e,
];
/// Username (OpaqueString leaves it unchanged). Not sent; only its USERHASH is.
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_USERNAME: &str =
    "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// Password before OpaqueString processing: "The<U+00AD>M<U+00AA>tr<U+2168>".
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_PASSWORD_UNPREPPED: &str =
    "The\u{00AD}M\u{00AA}tr\u{2168}";
/// Password after OpaqueString processing, the one that goes into the key.
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_PASSWORD: &str = "TheMatrIX";
/// NONCE: starts with the "obMatJos2" nonce cookie, then 4 base64 characters of security feature bits.
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_NONCE: &str =
    "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA";
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_REALM: &str = "example.org";
/// USERHASH = SHA-256("<username>:example.org").
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_USERHASH: [u8; 32] = [
    0x4a, 0x3c, 0xf3, 0x8f, 0xef, 0x69, 0x92, 0xbd, 0xa9, 0x52, 0xc6, 0x78, 0x04, 0x17, 0xda, 0x0f,
    0x24, 0x81, 0x94, 0x15, 0x56, 0x9e, 0x60, 0xb2, 0x05, 0xc4, 0x6e, 0x41, 0x40, 0x7f, 0x17, 0x04,
];
/// PASSWORD-ALGORITHM value: 0x0002 = SHA-256, with empty parameters.
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_PASSWORD_ALGORITHM: u16 = 0x0002;
/// Long-term key SHA-256("<username>:example.org:TheMatrIX") (PASSWORD-ALGORITHM SHA-256).
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_KEY: [u8; 32] = [
    0xdd, 0x29, 0x5a, 0x61, 0x3b, 0x90, 0x58, 0xc3, 0xc2, 0x3d, 0x6d, 0xc7, 0x16, 0x5b, 0xda, 0x07,
    0x23, 0x04, 0xd9, 0x89, 0xc9, 0xd0, 0xaf, 0x3a, 0x8c, 0x7e, 0x18, 0x4b, 0x4f, 0x9b, 0xb4, 0xa1,
];
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_MESSAGE_INTEGRITY_SHA256: [u8; 32] = [
    0xb5, 0xc7, 0xbf, 0x00, 0x5b, 0x6c, 0x52, 0xa2, 0x1c, 0x51, 0xc5, 0xe8, 0x92, 0xf8, 0x19, 0x24,
    0x13, 0x62, 0x96, 0xcb, 0x92, 0x7c, 0x43, 0x14, 0x93, 0x09, 0x27, 0x8c, 0xc6, 0x51, 0x8e, 0x65,
];
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_MESSAGE_INTEGRITY_SHA256_OFFSET: usize = 128;
pub const RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256_ATTRIBUTE_TYPES: [u16; 5] =
    [0x001e, 0x0015, 0x0014, 0x001d, 0x001c];

/// RFC 8489 appendix B.1 exactly as published (before erratum 6268), 156 bytes. Kept for
/// negative tests: its header length (0x009c) is not total length - 20, and its
/// MESSAGE-INTEGRITY-SHA256 does not verify over a correctly framed message. Use
/// [`RFC8489_SAMPLE_REQUEST_LONG_TERM_SHA256`] as the positive vector.
#[rustfmt::skip]
pub const RFC8489_B1_AS_PUBLISHED: &[u8] = &[
    0x00, 0x01, 0x00, 0x9c,  // type, length 0x009c (wrong: this is the total length)
    0x21, 0x12, 0xa4, 0x42,  // magic cookie
    0x78, 0xad, 0x34, 0x33,  // transaction ID
    0xc6, 0xad, 0x72, 0xc0,
    0x29, 0xda, 0x41, 0x2e,
    0x00, 0x1e, 0x00, 0x20,  // USERHASH header (type 0x001e, length 32)
    0x4a, 0x3c, 0xf3, 0x8f,
    0xef, 0x69, 0x92, 0xbd,
    0xa9, 0x52, 0xc6, 0x78,
    0x04, 0x17, 0xda, 0x0f,
    0x24, 0x81, 0x94, 0x15,
    0x56, 0x9e, 0x60, 0xb2,
    0x05, 0xc4, 0x6e, 0x41,
    0x40, 0x7f, 0x17, 0x04,
    0x00, 0x15, 0x00, 0x29,  // NONCE header (type 0x0015, length 41)
    0x6f, 0x62, 0x4d, 0x61,
    0x74, 0x4a, 0x6f, 0x73,
    0x32, 0x41, 0x41, 0x41,
    0x43, 0x66, 0x2f, 0x2f,
    0x34, 0x39, 0x39, 0x6b,
    0x39, 0x35, 0x34, 0x64,
    0x36, 0x4f, 0x4c, 0x33,
    0x34, 0x6f, 0x4c, 0x39,
    0x46, 0x53, 0x54, 0x76,
    0x79, 0x36, 0x34, 0x73,
    0x41, 0x00, 0x00, 0x00,
    0x00, 0x14, 0x00, 0x0b,  // REALM header (type 0x0014, length 11)
    0x65, 0x78, 0x61, 0x6d,
    0x70, 0x6c, 0x65, 0x2e,
    0x6f, 0x72, 0x67, 0x00,
    0x00, 0x1c, 0x00, 0x20,  // MESSAGE-INTEGRITY-SHA256 header (type 0x001c, length 32)
    0xe4, 0x68, 0x6c, 0x8f,
    0x0e, 0xde, 0xb5, 0x90,
    0x13, 0xe0, 0x70, 0x90,
    0x01, 0x0a, 0x93, 0xef,
    0xcc, 0xbc, 0xcc, 0x54,
    0x4c, 0x0a, 0x45, 0xd9,
    0xf8, 0x30, 0xaa, 0x6d,
    0x6f, 0x73, 0x5a, 0x01,
];
