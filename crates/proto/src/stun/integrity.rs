//! Message integrity (RFC 8489 sections 9 and 14.5-14.6) and credential keys.
//!
//! The HMAC covers the message up to the integrity attribute, with the header length field
//! rewritten to end just after that attribute. We feed the HMAC the header in three pieces
//! instead of copying the message, so verifying a borrowed datagram never writes to it.
//!
//! Usernames, realms and passwords are used as given: OpaqueString / SASLprep (RFC 8265) is not
//! applied, so callers must pass already-prepared strings. ASCII credentials, which is what TURN
//! deployments use, are unchanged by that preparation.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

use super::HEADER_LEN;

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// Password algorithms for long-term credentials (RFC 8489 section 18.5).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithmId {
    Md5,
    Sha256,
}

impl PasswordAlgorithmId {
    pub const fn number(self) -> u16 {
        match self {
            PasswordAlgorithmId::Md5 => super::attr::algorithm::MD5,
            PasswordAlgorithmId::Sha256 => super::attr::algorithm::SHA256,
        }
    }

    pub const fn from_number(n: u16) -> Option<Self> {
        match n {
            super::attr::algorithm::MD5 => Some(PasswordAlgorithmId::Md5),
            super::attr::algorithm::SHA256 => Some(PasswordAlgorithmId::Sha256),
            _ => None,
        }
    }
}

/// A long-term credential key (RFC 8489 section 9.2.2): a hash of `username:realm:password`.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub enum LongTermKey {
    Md5([u8; 16]),
    Sha256([u8; 32]),
}

impl core::fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Keys are secrets: never print them.
        match self {
            LongTermKey::Md5(_) => f.write_str("LongTermKey::Md5(..)"),
            LongTermKey::Sha256(_) => f.write_str("LongTermKey::Sha256(..)"),
        }
    }
}

impl LongTermKey {
    pub fn derive(alg: PasswordAlgorithmId, username: &str, realm: &str, password: &str) -> Self {
        match alg {
            PasswordAlgorithmId::Md5 => {
                let mut h = Md5::new();
                feed_triple(&mut h, username, realm, password);
                LongTermKey::Md5(h.finalize().into())
            }
            PasswordAlgorithmId::Sha256 => {
                let mut h = Sha256::new();
                feed_triple(&mut h, username, realm, password);
                LongTermKey::Sha256(h.finalize().into())
            }
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            LongTermKey::Md5(k) => k,
            LongTermKey::Sha256(k) => k,
        }
    }

    pub const fn algorithm(&self) -> PasswordAlgorithmId {
        match self {
            LongTermKey::Md5(_) => PasswordAlgorithmId::Md5,
            LongTermKey::Sha256(_) => PasswordAlgorithmId::Sha256,
        }
    }
}

fn feed_triple<D: Digest>(h: &mut D, username: &str, realm: &str, password: &str) {
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
}

/// USERHASH (RFC 8489 section 14.4): SHA-256 of `username:realm`.
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.finalize().into()
}

/// The short-term key (RFC 8489 section 9.1.1) is the password itself; ICE uses it.
pub fn short_term_key(password: &str) -> &[u8] {
    password.as_bytes()
}

/// HMAC-SHA1 of `msg[..at]` with the header length rewritten to `adjusted_len`.
pub(crate) fn hmac_sha1(key: &[u8], msg: &[u8], at: usize, adjusted_len: u16) -> [u8; 20] {
    // Hmac accepts keys of any length; new_from_slice cannot fail for it.
    let Ok(mut mac) = HmacSha1::new_from_slice(key) else {
        return [0; 20];
    };
    feed_adjusted(&mut mac, msg, at, adjusted_len);
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 of `msg[..at]` with the header length rewritten to `adjusted_len`.
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8], at: usize, adjusted_len: u16) -> [u8; 32] {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    feed_adjusted(&mut mac, msg, at, adjusted_len);
    mac.finalize().into_bytes().into()
}

fn feed_adjusted<M: Mac>(mac: &mut M, msg: &[u8], at: usize, adjusted_len: u16) {
    mac.update(&msg[..2]);
    mac.update(&adjusted_len.to_be_bytes());
    mac.update(&msg[4..at]);
}

/// The header length to use for an integrity attribute at `at` with a `value_len` value.
pub(crate) fn adjusted_len(at: usize, value_len: usize) -> u16 {
    (at + 4 + value_len - HEADER_LEN) as u16
}
