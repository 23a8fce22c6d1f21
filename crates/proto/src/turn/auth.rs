//! Long-term credentials for the TURN server (RFC 8489 section 9.2, RFC 8656 section 5): stateless
//! nonces, a credential store of static users and TURN REST secrets
//! (draft-uberti-behave-turn-rest-00), and the keys the server verifies MESSAGE-INTEGRITY with.
//!
//! # Nonces
//!
//! A nonce is minted from the client's address and the time, and verified by recomputing its MAC,
//! so an unauthenticated request never creates server state (RFC 8489 section 9.2.3 lets the
//! server choose the nonce's content). Layout, 41 ASCII characters:
//!
//! ```text
//! obMatJos2 AAAD <28 chars: URL-safe base64, no padding, of 21 bytes>
//! cookie    features  version(1) = 1 | timestamp(8, big-endian Unix seconds) | mac(12)
//! ```
//!
//! - The nonce cookie (RFC 8489 section 9.2) tells RFC 8489 clients that the server supports
//!   the security features in the next 4 characters: base64 of the 24-bit feature set. Bits are
//!   counted from the least significant (erratum 6290), so password algorithms (bit 0) plus
//!   username anonymity (bit 1) is `0x000003`, "AAAD".
//! - `mac` is HMAC-SHA256 with the server's [`NonceKey`], truncated to 96 bits, over the version,
//!   the feature set, the timestamp and the client's IP and port. Covering the feature set is
//!   what makes the cookie a bid-down protection: a man in the middle who clears a feature bit
//!   in the 401 produces a nonce that no longer verifies.
//! - [`check_nonce`] answers [`NonceStatus::Stale`] when the MAC is right but the nonce is older
//!   than the validity the caller passes (the server answers 438 with a fresh nonce, RFC 8489
//!   section 9.2.4), and [`NonceStatus::Invalid`] for anything it did not mint for this client,
//!   or minted more than [`MAX_NONCE_FUTURE_S`] in the future. A nonce from an earlier process
//!   (another key) is indistinguishable from a forged one and reads `Invalid`; RFC 8489 section
//!   9.2.4 asks for 438 for any nonce "no longer valid", so the server should answer both with
//!   438 and a fresh nonce.
//!
//! # Credentials
//!
//! [`Credentials`] resolves a USERNAME (or a USERHASH, for static users) to the candidate keys
//! for the requested password algorithm:
//! - a static user has one key, precomputed for MD5 and SHA-256 at load time;
//! - a TURN REST user (`expiry` or `expiry:name`, `expiry` in Unix seconds, not a static user's
//!   name) has one key per configured secret, in the operator's order, because the password is
//!   `base64(HMAC-SHA1(secret, username))` and the server cannot tell which secret the client's
//!   provisioning service used while secrets rotate. The server verifies against each key in
//!   turn and accepts the first that matches. An expired REST username is refused before any key
//!   is derived.
//!
//! Derived REST keys are cached, because a browser refreshes its allocation and permissions with
//! the same username every few minutes. The cache is filled *before* integrity is verified (the
//! keys are needed to verify), so an attacker can fill it with made-up usernames: it is bounded
//! ([`DEFAULT_REST_CACHE_CAP`]) and, when full, drops an arbitrary half of its entries, which
//! costs legitimate users at most one re-derivation. It uses SipHash with a per-process random
//! key (`std`'s `RandomState`), not ahash, because its keys are chosen by the network and
//! ahash without its `runtime-rng` feature has predictable seeds. The cache is not protocol state:
//! nothing the server answers depends on whether an entry was cached.
//!
//! Usernames, realms and passwords are used as given (no OpaqueString preparation, see
//! [`crate::stun::integrity`]).

use core::fmt;
use core::net::{IpAddr, SocketAddr};
use std::collections::HashMap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::stun::integrity::userhash;
use crate::stun::{LongTermKey, PasswordAlgorithmId};

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

// ---------------------------------------------------------------------------------------------
// Nonces
// ---------------------------------------------------------------------------------------------

/// The RFC 8489 section 9.2 nonce cookie.
pub const NONCE_COOKIE: &str = "obMatJos2";

/// A nonce minted more than this many seconds ahead of the caller's clock is refused as
/// invalid: it was not minted by this server's clock (allowing for a small step between
/// cores' readings).
pub const MAX_NONCE_FUTURE_S: u64 = 60;

/// Length of every nonce [`make_nonce`] produces.
pub const NONCE_LEN: usize = COOKIE_LEN + FEATURES_LEN + PAYLOAD_B64_LEN;

const COOKIE_LEN: usize = NONCE_COOKIE.len();
const FEATURES_LEN: usize = 4;
const NONCE_VERSION: u8 = 1;
const MAC_LEN: usize = 12;
const PAYLOAD_LEN: usize = 1 + 8 + MAC_LEN;
const PAYLOAD_B64_LEN: usize = PAYLOAD_LEN / 3 * 4;

/// The STUN security feature set (RFC 8489 section 18.1), 24 bits, bit 0 least significant
/// (erratum 6290).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Features(u32);

impl Features {
    /// Bit 0: the server supports PASSWORD-ALGORITHMS negotiation (RFC 8489 section 9.2.4).
    pub const PASSWORD_ALGORITHMS: Features = Features(1);
    /// Bit 1: the server supports USERHASH (RFC 8489 section 9.2.4).
    pub const USERNAME_ANONYMITY: Features = Features(1 << 1);
    /// What this server advertises in every nonce.
    pub const SERVER: Features = Features(1 | 1 << 1);

    /// Keeps the low 24 bits: the feature set is 24 bits wide on the wire.
    pub const fn from_bits_truncate(bits: u32) -> Self {
        Features(bits & 0x00ff_ffff)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: Features) -> Self {
        Features(self.0 | other.0)
    }

    /// The 4 base64 characters that follow the cookie.
    fn encode(self) -> [u8; FEATURES_LEN] {
        let b = self.0.to_be_bytes();
        let mut out = [b'A'; FEATURES_LEN];
        // 3 bytes always encode to exactly 4 characters.
        let _ = STANDARD.encode_slice([b[1], b[2], b[3]], &mut out);
        out
    }
}

/// The server's nonce MAC key, 32 random bytes from the caller (this crate has no RNG). Keep one
/// per process and share it between cores, so a nonce minted on one core verifies on another.
#[derive(Clone)]
pub struct NonceKey {
    /// Keyed once: every nonce check clones the keyed state instead of re-hashing the key.
    mac: HmacSha256,
}

impl NonceKey {
    pub fn new(secret: [u8; 32]) -> Self {
        // HMAC zero-pads keys shorter than the hash block (RFC 2104 section 2), so keying with the
        // 32 bytes padded to SHA-256's 64-byte block is the same HMAC, through the infallible
        // fixed-size constructor.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&secret);
        NonceKey {
            mac: <HmacSha256 as KeyInit>::new(&block.into()),
        }
    }

    fn tag(&self, features: &[u8], timestamp: u64, client: SocketAddr) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        mac.update(&[NONCE_VERSION]);
        mac.update(features);
        mac.update(&timestamp.to_be_bytes());
        // Canonical, so a dual-stack socket reporting ::ffff:a.b.c.d or a.b.c.d agrees.
        match client.ip().to_canonical() {
            IpAddr::V4(a) => {
                mac.update(&[4]);
                mac.update(&a.octets());
            }
            IpAddr::V6(a) => {
                mac.update(&[6]);
                mac.update(&a.octets());
            }
        }
        mac.update(&client.port().to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

/// A nonce on the stack: always [`NONCE_LEN`] ASCII characters.
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct NonceBuf([u8; NONCE_LEN]);

impl NonceBuf {
    pub fn as_str(&self) -> &str {
        // Built only from the cookie and base64 output, so always ASCII; the fallback is
        // unreachable and merely avoids a panic path.
        core::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl AsRef<str> for NonceBuf {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for NonceBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for NonceBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NonceBuf({:?})", self.as_str())
    }
}

/// What [`check_nonce`] found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NonceStatus {
    /// Minted by this key for this client, within its validity.
    Valid,
    /// Minted by this key for this client, but older than the validity: answer 438.
    Stale,
    /// Not a nonce this key minted for this client (or dated too far in the future).
    Invalid,
}

/// Mints a nonce for `client` at `now_unix_s`, advertising [`Features::SERVER`].
pub fn make_nonce(key: &NonceKey, client: SocketAddr, now_unix_s: u64) -> NonceBuf {
    let mut out = [0u8; NONCE_LEN];
    out[..COOKIE_LEN].copy_from_slice(NONCE_COOKIE.as_bytes());
    let features = Features::SERVER.encode();
    out[COOKIE_LEN..COOKIE_LEN + FEATURES_LEN].copy_from_slice(&features);

    let mut payload = [0u8; PAYLOAD_LEN];
    payload[0] = NONCE_VERSION;
    payload[1..9].copy_from_slice(&now_unix_s.to_be_bytes());
    payload[9..].copy_from_slice(&key.tag(&features, now_unix_s, client));
    // 21 bytes always encode to exactly 28 characters, which is the space left.
    let _ = URL_SAFE_NO_PAD.encode_slice(payload, &mut out[COOKIE_LEN + FEATURES_LEN..]);
    NonceBuf(out)
}

/// Checks a NONCE a client echoed back. Never panics on any input; compares the MAC in constant
/// time.
pub fn check_nonce(
    key: &NonceKey,
    client: SocketAddr,
    nonce: &str,
    now_unix_s: u64,
    validity_s: u64,
) -> NonceStatus {
    let bytes = nonce.as_bytes();
    if bytes.len() != NONCE_LEN || !bytes.starts_with(NONCE_COOKIE.as_bytes()) {
        return NonceStatus::Invalid;
    }
    let features = &bytes[COOKIE_LEN..COOKIE_LEN + FEATURES_LEN];
    let mut payload = [0u8; PAYLOAD_LEN];
    match URL_SAFE_NO_PAD.decode_slice(&bytes[COOKIE_LEN + FEATURES_LEN..], &mut payload) {
        Ok(PAYLOAD_LEN) => {}
        _ => return NonceStatus::Invalid,
    }
    if payload[0] != NONCE_VERSION {
        return NonceStatus::Invalid;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&payload[1..9]);
    let timestamp = u64::from_be_bytes(ts);
    let expected = key.tag(features, timestamp, client);
    if !bool::from(expected.ct_eq(&payload[9..])) {
        return NonceStatus::Invalid;
    }
    if timestamp > now_unix_s.saturating_add(MAX_NONCE_FUTURE_S) {
        NonceStatus::Invalid
    } else if now_unix_s.saturating_sub(timestamp) > validity_s {
        NonceStatus::Stale
    } else {
        NonceStatus::Valid
    }
}

/// The security features a nonce advertises, if it carries the RFC 8489 nonce cookie (a client
/// uses this to decide whether to send PASSWORD-ALGORITHM and may use USERHASH).
pub fn features_from_nonce(nonce: &str) -> Option<Features> {
    let rest = nonce.as_bytes().strip_prefix(NONCE_COOKIE.as_bytes())?;
    let chars = rest.get(..FEATURES_LEN)?;
    let mut bits = [0u8; 3];
    match STANDARD.decode_slice(chars, &mut bits) {
        Ok(3) => Some(Features::from_bits_truncate(u32::from_be_bytes([
            0, bits[0], bits[1], bits[2],
        ]))),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------------

/// The most REST secrets accepted at once (and so the most candidate keys per request). Two
/// cover a rotation; four leave room for an overlap of overlaps.
pub const MAX_REST_SECRETS: usize = 4;

/// Default bound on cached REST keys, both algorithms together.
pub const DEFAULT_REST_CACHE_CAP: usize = 16384;

/// USERNAME must be fewer than 509 bytes (RFC 8489 section 14.3).
const MAX_USERNAME_LEN: usize = 508;

/// REALM must be fewer than 128 characters (RFC 8489 section 14.9).
const MAX_REALM_CHARS: usize = 127;

/// Why a username yields no key. Each maps to 401 Unauthenticated.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown user")]
    UnknownUser,
    #[error("TURN REST credentials expired")]
    Expired,
    #[error("malformed username")]
    Malformed,
}

/// Why a set of users and secrets was refused at load time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("realm must be fewer than 128 characters")]
    RealmTooLong,
    #[error("a static user has an empty name")]
    EmptyUsername,
    #[error("user name {0:?} is 509 bytes or longer (RFC 8489 section 14.3)")]
    UsernameTooLong(String),
    #[error("user {0:?} is listed twice")]
    DuplicateUser(String),
    #[error("{count} REST secrets given; at most {max} are accepted at once")]
    TooManySecrets { count: usize, max: usize },
    #[error("a REST secret is empty")]
    EmptySecret,
    #[error("a REST secret could not key HMAC-SHA1")]
    InvalidSecret,
}

/// The candidate keys for one request: one for a static user, one per secret (in preference
/// order) for a REST user. Try each; the first that verifies authenticates the request.
#[derive(Copy, Clone)]
pub struct Keys {
    keys: [LongTermKey; MAX_REST_SECRETS],
    len: u8,
    rest_expiry: Option<u64>,
}

impl Keys {
    fn one(key: LongTermKey) -> Self {
        Keys {
            keys: [key; MAX_REST_SECRETS],
            len: 1,
            rest_expiry: None,
        }
    }

    pub fn as_slice(&self) -> &[LongTermKey] {
        self.keys.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// For a REST user, the expiry (Unix seconds) carried in the username.
    pub fn rest_expiry(&self) -> Option<u64> {
        self.rest_expiry
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("keys", &self.as_slice())
            .field("rest_expiry", &self.rest_expiry)
            .finish()
    }
}

#[derive(Copy, Clone)]
struct StaticKeys {
    md5: LongTermKey,
    sha256: LongTermKey,
}

impl StaticKeys {
    fn get(&self, alg: PasswordAlgorithmId) -> LongTermKey {
        match alg {
            PasswordAlgorithmId::Md5 => self.md5,
            PasswordAlgorithmId::Sha256 => self.sha256,
        }
    }
}

/// Static users with their keys and USERHASH index, and the keyed REST secrets.
struct Accounts {
    users: HashMap<Box<str>, StaticKeys, ahash::RandomState>,
    by_hash: HashMap<[u8; 32], Box<str>, ahash::RandomState>,
    secrets: Vec<HmacSha1>,
}

impl Accounts {
    fn build<U, P, S>(
        realm: &str,
        users: impl IntoIterator<Item = (U, P)>,
        secrets: impl IntoIterator<Item = S>,
    ) -> Result<Self, CredentialsError>
    where
        U: AsRef<str>,
        P: AsRef<str>,
        S: AsRef<[u8]>,
    {
        let mut map = HashMap::with_hasher(ahash::RandomState::new());
        let mut by_hash = HashMap::with_hasher(ahash::RandomState::new());
        for (name, password) in users {
            let (name, password) = (name.as_ref(), password.as_ref());
            if name.is_empty() {
                return Err(CredentialsError::EmptyUsername);
            }
            if name.len() > MAX_USERNAME_LEN {
                return Err(CredentialsError::UsernameTooLong(name.to_owned()));
            }
            let keys = StaticKeys {
                md5: LongTermKey::derive(PasswordAlgorithmId::Md5, name, realm, password),
                sha256: LongTermKey::derive(PasswordAlgorithmId::Sha256, name, realm, password),
            };
            if map.insert(Box::<str>::from(name), keys).is_some() {
                return Err(CredentialsError::DuplicateUser(name.to_owned()));
            }
            by_hash.insert(userhash(name, realm), Box::<str>::from(name));
        }
        let mut keyed = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref();
            if secret.is_empty() {
                return Err(CredentialsError::EmptySecret);
            }
            keyed.push(
                <HmacSha1 as KeyInit>::new_from_slice(secret)
                    .map_err(|_| CredentialsError::InvalidSecret)?,
            );
        }
        if keyed.len() > MAX_REST_SECRETS {
            return Err(CredentialsError::TooManySecrets {
                count: keyed.len(),
                max: MAX_REST_SECRETS,
            });
        }
        Ok(Accounts {
            users: map,
            by_hash,
            secrets: keyed,
        })
    }
}

/// Derived REST keys by username, one map per algorithm so a lookup borrows the username and a
/// hit never allocates.
struct RestCache {
    maps: [HashMap<Box<str>, Keys>; 2],
    cap_per_alg: usize,
}

impl RestCache {
    fn new(cap: usize) -> Self {
        RestCache {
            maps: [HashMap::new(), HashMap::new()],
            cap_per_alg: (cap / 2).max(1),
        }
    }

    fn map(&mut self, alg: PasswordAlgorithmId) -> &mut HashMap<Box<str>, Keys> {
        match alg {
            PasswordAlgorithmId::Md5 => &mut self.maps[0],
            PasswordAlgorithmId::Sha256 => &mut self.maps[1],
        }
    }

    fn insert(&mut self, username: &str, alg: PasswordAlgorithmId, keys: Keys) {
        let cap = self.cap_per_alg;
        let map = self.map(alg);
        if map.len() >= cap {
            // Drop every other entry in (randomly keyed) hash order: amortised O(1) per insert,
            // and which legitimate users lose their entry is not predictable by an attacker.
            let mut keep = false;
            map.retain(|_, _| {
                keep = !keep;
                keep
            });
        }
        map.insert(username.into(), keys);
    }

    fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum()
    }

    fn clear(&mut self) {
        self.maps.iter_mut().for_each(HashMap::clear);
    }
}

/// The server's credential store: one realm, static users and TURN REST secrets.
pub struct Credentials {
    realm: Box<str>,
    accounts: Accounts,
    cache: RestCache,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names and counts only: never keys or secrets.
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .field("static_users", &self.accounts.users.len())
            .field("rest_secrets", &self.accounts.secrets.len())
            .field("cached_rest_keys", &self.cache.len())
            .finish()
    }
}

impl Credentials {
    /// Builds the store: `users` are (name, password) pairs, `secrets` the REST shared secrets
    /// in preference order (at most [`MAX_REST_SECRETS`]). The REST key cache holds at most
    /// [`DEFAULT_REST_CACHE_CAP`] entries.
    pub fn new<U, P, S>(
        realm: &str,
        users: impl IntoIterator<Item = (U, P)>,
        secrets: impl IntoIterator<Item = S>,
    ) -> Result<Self, CredentialsError>
    where
        U: AsRef<str>,
        P: AsRef<str>,
        S: AsRef<[u8]>,
    {
        if realm.chars().count() > MAX_REALM_CHARS {
            return Err(CredentialsError::RealmTooLong);
        }
        Ok(Credentials {
            realm: realm.into(),
            accounts: Accounts::build(realm, users, secrets)?,
            cache: RestCache::new(DEFAULT_REST_CACHE_CAP),
        })
    }

    /// Sets the bound on cached REST keys (both algorithms together; at least 2) and empties
    /// the cache.
    pub fn with_cache_capacity(mut self, cap: usize) -> Self {
        self.cache = RestCache::new(cap);
        self
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Replaces users and secrets (configuration reload) and empties the REST key cache, so a
    /// retired secret stops working at once. On error nothing changes.
    pub fn replace<U, P, S>(
        &mut self,
        users: impl IntoIterator<Item = (U, P)>,
        secrets: impl IntoIterator<Item = S>,
    ) -> Result<(), CredentialsError>
    where
        U: AsRef<str>,
        P: AsRef<str>,
        S: AsRef<[u8]>,
    {
        self.accounts = Accounts::build(&self.realm, users, secrets)?;
        self.cache.clear();
        Ok(())
    }

    /// The candidate keys for `username` under `alg`. A static user with this exact name wins
    /// over the REST reading of it. Does not allocate when the user is static or cached.
    pub fn keys(
        &mut self,
        username: &str,
        alg: PasswordAlgorithmId,
        now_unix_s: u64,
    ) -> Result<Keys, AuthError> {
        if username.is_empty() || username.len() > MAX_USERNAME_LEN {
            return Err(AuthError::Malformed);
        }
        if let Some(user) = self.accounts.users.get(username) {
            return Ok(Keys::one(user.get(alg)));
        }
        let Some(expiry) = rest_expiry(username)? else {
            return Err(AuthError::UnknownUser);
        };
        if self.accounts.secrets.is_empty() {
            return Err(AuthError::UnknownUser);
        }
        // draft-uberti-behave-turn-rest-00 section 2.2: the username carries its expiry.
        if expiry < now_unix_s {
            return Err(AuthError::Expired);
        }
        if let Some(keys) = self.cache.map(alg).get(username) {
            return Ok(*keys);
        }
        let keys = self.derive_rest(username, alg, expiry);
        self.cache.insert(username, alg, keys);
        Ok(keys)
    }

    fn derive_rest(&self, username: &str, alg: PasswordAlgorithmId, expiry: u64) -> Keys {
        let mut keys = Keys::one(LongTermKey::Md5([0; 16]));
        keys.len = 0;
        keys.rest_expiry = Some(expiry);
        for (slot, secret) in keys.keys.iter_mut().zip(&self.accounts.secrets) {
            let mut b64 = [0u8; 28];
            let password = rest_password_into(secret, username, &mut b64);
            *slot = LongTermKey::derive(alg, username, &self.realm, password);
            keys.len += 1;
        }
        keys
    }

    /// The static user whose USERHASH (SHA-256 of `name:realm`, RFC 8489 section 14.4) this is.
    /// REST users cannot be found this way: their names are not known in advance.
    pub fn user_for_hash(&self, hash: &[u8; 32]) -> Option<&str> {
        self.accounts.by_hash.get(hash).map(|name| &**name)
    }

    /// Number of cached REST keys (for metrics and tests).
    pub fn cached_rest_keys(&self) -> usize {
        self.cache.len()
    }
}

/// Reads a TURN REST username: `expiry` or `expiry:name`. `Ok(None)` when it is not of that
/// form; `Malformed` when the expiry does not fit in 64 bits.
fn rest_expiry(username: &str) -> Result<Option<u64>, AuthError> {
    let digits = match username.split_once(':') {
        Some((head, _)) => head,
        None => username,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    digits.parse().map(Some).map_err(|_| AuthError::Malformed)
}

/// `base64(HMAC-SHA1(secret, username))` into `out`, returned as a `&str`.
fn rest_password_into<'a>(secret: &HmacSha1, username: &str, out: &'a mut [u8; 28]) -> &'a str {
    let mut mac = secret.clone();
    mac.update(username.as_bytes());
    // 20 bytes encode to exactly 28 characters with padding.
    let _ = STANDARD.encode_slice(mac.finalize().into_bytes(), &mut out[..]);
    core::str::from_utf8(out).unwrap_or_default()
}

/// The TURN REST password for `username` (draft-uberti-behave-turn-rest-00 section 2.2): what a
/// provisioning service hands to clients, and what tests and loadgen use.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    // HMAC takes keys of any length, so this never fails in practice; an empty string is
    // a password no server derivation produces.
    match <HmacSha1 as KeyInit>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "example.org";

    fn key() -> NonceKey {
        NonceKey::new([7; 32])
    }

    fn client() -> SocketAddr {
        "192.0.2.1:50000".parse().unwrap()
    }

    // ---- nonces ----

    #[test]
    fn nonce_has_cookie_features_and_fixed_length() {
        let n = make_nonce(&key(), client(), 1_700_000_000);
        let s = n.as_str();
        assert_eq!(s.len(), NONCE_LEN);
        assert_eq!(NONCE_LEN, 41);
        assert!(s.starts_with("obMatJos2AAAD"), "{s}");
        assert!(s.len() < 763, "fits NONCE (RFC 8489 section 14.10)");
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(features_from_nonce(s), Some(Features::SERVER));
        assert!(Features::SERVER.contains(Features::PASSWORD_ALGORITHMS));
        assert!(Features::SERVER.contains(Features::USERNAME_ANONYMITY));
    }

    #[test]
    fn nonce_valid_then_stale() {
        let t = 1_700_000_000;
        let n = make_nonce(&key(), client(), t);
        assert_eq!(
            check_nonce(&key(), client(), n.as_str(), t, 600),
            NonceStatus::Valid
        );
        assert_eq!(
            check_nonce(&key(), client(), n.as_str(), t + 600, 600),
            NonceStatus::Valid
        );
        assert_eq!(
            check_nonce(&key(), client(), n.as_str(), t + 601, 600),
            NonceStatus::Stale
        );
        assert_eq!(
            check_nonce(&key(), client(), n.as_str(), u64::MAX, 600),
            NonceStatus::Stale
        );
        // A clock a little behind the minting core's is fine; far behind is not.
        assert_eq!(
            check_nonce(&key(), client(), n.as_str(), t - 60, 600),
            NonceStatus::Valid
        );
        assert_eq!(
            check_nonce(&key(), client(), n.as_str(), t - 61, 600),
            NonceStatus::Invalid
        );
        assert_eq!(
            check_nonce(&key(), client(), n.as_str(), 0, 600),
            NonceStatus::Invalid
        );
    }

    #[test]
    fn nonce_bound_to_key_and_client_address() {
        let t = 1_700_000_000;
        let n = make_nonce(&key(), client(), t);
        let other_port: SocketAddr = "192.0.2.1:50001".parse().unwrap();
        let other_ip: SocketAddr = "192.0.2.2:50000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:50000".parse().unwrap();
        for c in [other_port, other_ip, v6] {
            assert_eq!(
                check_nonce(&key(), c, n.as_str(), t, 600),
                NonceStatus::Invalid,
                "{c}"
            );
        }
        let other_key = NonceKey::new([8; 32]);
        assert_eq!(
            check_nonce(&other_key, client(), n.as_str(), t, 600),
            NonceStatus::Invalid
        );
        // The IPv4-mapped form of the same client is the same client.
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:50000".parse().unwrap();
        assert_eq!(
            check_nonce(&key(), mapped, n.as_str(), t, 600),
            NonceStatus::Valid
        );
        // And the key matches the plain HMAC definition with the unpadded 32-byte key.
        let reference = <HmacSha256 as KeyInit>::new_from_slice(&[7; 32]).unwrap();
        let mut a = reference.clone();
        let mut b = key().mac.clone();
        a.update(b"x");
        b.update(b"x");
        assert_eq!(a.finalize().into_bytes(), b.finalize().into_bytes());
    }

    #[test]
    fn tampered_nonce_is_invalid() {
        let t = 1_700_000_000;
        let n = make_nonce(&key(), client(), t);
        let s = n.as_str();
        // Flip each character in turn to another valid base64 character.
        for i in 0..s.len() {
            let mut b = s.as_bytes().to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t2 = String::from_utf8(b).unwrap();
            assert_eq!(
                check_nonce(&key(), client(), &t2, t, 600),
                NonceStatus::Invalid,
                "changed char {i}: {t2}"
            );
        }
        // Clearing the advertised features (a bid-down) breaks the MAC.
        let downgraded = s.replacen("AAAD", "AAAA", 1);
        assert_eq!(
            check_nonce(&key(), client(), &downgraded, t, 600),
            NonceStatus::Invalid
        );
        // Re-dating the nonce without the key breaks the MAC too.
        let mut payload = [0u8; PAYLOAD_LEN];
        URL_SAFE_NO_PAD
            .decode_slice(&s[13..], &mut payload)
            .unwrap();
        payload[1..9].copy_from_slice(&(t + 1000).to_be_bytes());
        let redated = format!("{}{}", &s[..13], URL_SAFE_NO_PAD.encode(payload));
        assert_eq!(
            check_nonce(&key(), client(), &redated, t + 1000, 600),
            NonceStatus::Invalid
        );
    }

    #[test]
    fn garbage_nonces_are_invalid_and_never_panic() {
        let t = 1_700_000_000;
        let good = make_nonce(&key(), client(), t);
        let long = "x".repeat(5000);
        let multibyte = format!("obMatJos2AAAD{}", "é".repeat(14));
        let cases = [
            "",
            "obMatJos2",
            "obMatJos2AAAD",
            &good.as_str()[..40],
            &format!("{}A", good.as_str()),
            &long,
            &multibyte,
            "obMatJos2AAAD==========================",
            "obMatJos2AAAD+++++++++++++++++++++++++++",
            "ObMatJos2AAADAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ];
        for c in cases {
            assert_eq!(
                check_nonce(&key(), client(), c, t, 600),
                NonceStatus::Invalid,
                "{c:?}"
            );
            let _ = features_from_nonce(c);
        }
        // Every length and every byte at a boundary: must not panic.
        for len in 0..60 {
            let s: String = good.as_str().chars().cycle().take(len).collect();
            let _ = check_nonce(&key(), client(), &s, t, 600);
            let _ = features_from_nonce(&s);
        }
    }

    #[test]
    fn features_from_foreign_nonces() {
        // RFC 8489 appendix B.1 (with erratum 6268): USERHASH only, bit 1.
        assert_eq!(
            features_from_nonce("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"),
            Some(Features::USERNAME_ANONYMITY)
        );
        assert_eq!(
            features_from_nonce("obMatJos2AAAB"),
            Some(Features::PASSWORD_ALGORITHMS)
        );
        assert_eq!(
            features_from_nonce("obMatJos2/////"),
            Some(Features::from_bits_truncate(!0))
        );
        assert_eq!(Features::from_bits_truncate(!0).bits(), 0x00ff_ffff);
        assert_eq!(features_from_nonce("f//499k954d6OL34oL9FSTvy64sA"), None);
        assert_eq!(features_from_nonce("obMatJos2AA"), None);
        assert_eq!(features_from_nonce("obMatJos2A*AA"), None);
        assert_eq!(
            Features::PASSWORD_ALGORITHMS.union(Features::USERNAME_ANONYMITY),
            Features::SERVER
        );
    }

    // ---- credentials ----

    fn creds(users: &[(&str, &str)], secrets: &[&str]) -> Credentials {
        Credentials::new(REALM, users.iter().copied(), secrets.iter().copied()).unwrap()
    }

    fn md5(user: &str, pass: &str) -> LongTermKey {
        LongTermKey::derive(PasswordAlgorithmId::Md5, user, REALM, pass)
    }

    fn sha256(user: &str, pass: &str) -> LongTermKey {
        LongTermKey::derive(PasswordAlgorithmId::Sha256, user, REALM, pass)
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn static_user_keys_for_both_algorithms() {
        let mut c = creds(&[("alice", "pw"), ("bob", "secret")], &[]);
        let k = c.keys("alice", PasswordAlgorithmId::Md5, NOW).unwrap();
        assert_eq!(k.as_slice(), &[md5("alice", "pw")]);
        assert_eq!(k.rest_expiry(), None);
        let k = c.keys("bob", PasswordAlgorithmId::Sha256, NOW).unwrap();
        assert_eq!(k.as_slice(), &[sha256("bob", "secret")]);
        assert_eq!(
            c.keys("carol", PasswordAlgorithmId::Md5, NOW).unwrap_err(),
            AuthError::UnknownUser
        );
        assert_eq!(
            c.keys("", PasswordAlgorithmId::Md5, NOW).unwrap_err(),
            AuthError::Malformed
        );
        let long = "a".repeat(509);
        assert_eq!(
            c.keys(&long, PasswordAlgorithmId::Md5, NOW).unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(c.realm(), REALM);
        assert_eq!(c.cached_rest_keys(), 0, "static users are not cached");
    }

    #[test]
    fn rest_password_matches_hmac_sha1_base64() {
        // Computed independently: printf '1700003600:alice' | openssl dgst -sha1 -hmac s3cret
        // -binary | base64
        assert_eq!(
            rest_password(b"s3cret", "1700003600:alice"),
            "YAFdW/YDZewZsR1QSgUk2IrfbRI="
        );
        assert_eq!(rest_password(b"s3cret", "x").len(), 28);
    }

    #[test]
    fn rest_username_forms_and_expiry() {
        let mut c = creds(&[], &["s3cret"]);
        for (user, expiry) in [
            ("1700003600", 1_700_003_600),
            ("1700003600:alice", 1_700_003_600),
        ] {
            let k = c.keys(user, PasswordAlgorithmId::Sha256, NOW).unwrap();
            let pw = rest_password(b"s3cret", user);
            assert_eq!(k.as_slice(), &[sha256(user, &pw)], "{user}");
            assert_eq!(k.rest_expiry(), Some(expiry));
        }
        // Expiry equal to now is still valid; one second before is expired.
        assert!(c
            .keys(&NOW.to_string(), PasswordAlgorithmId::Md5, NOW)
            .is_ok());
        assert_eq!(
            c.keys(&format!("{}:alice", NOW - 1), PasswordAlgorithmId::Md5, NOW)
                .unwrap_err(),
            AuthError::Expired
        );
        // The colon only separates once: the name may itself contain colons or be empty.
        assert!(c
            .keys("1800000000:a:b", PasswordAlgorithmId::Md5, NOW)
            .is_ok());
        assert!(c.keys("1800000000:", PasswordAlgorithmId::Md5, NOW).is_ok());
        for user in [
            "alice",
            "alice:1800000000",
            ":1800000000",
            "18000x0000",
            "-1800000000",
            "+1",
        ] {
            assert_eq!(
                c.keys(user, PasswordAlgorithmId::Md5, NOW).unwrap_err(),
                AuthError::UnknownUser,
                "{user}"
            );
        }
        assert_eq!(
            c.keys("99999999999999999999999:x", PasswordAlgorithmId::Md5, NOW)
                .unwrap_err(),
            AuthError::Malformed
        );
        // Without secrets a REST-shaped name is just an unknown user.
        let mut none = creds(&[], &[]);
        assert_eq!(
            none.keys("1800000000", PasswordAlgorithmId::Md5, NOW)
                .unwrap_err(),
            AuthError::UnknownUser
        );
    }

    #[test]
    fn several_secrets_give_one_key_each_in_order() {
        let mut c = creds(&[], &["new-secret", "old-secret"]);
        let user = "1800000000:alice";
        let k = c.keys(user, PasswordAlgorithmId::Md5, NOW).unwrap();
        assert_eq!(
            k.as_slice(),
            &[
                md5(user, &rest_password(b"new-secret", user)),
                md5(user, &rest_password(b"old-secret", user)),
            ]
        );
        // A client provisioned with the old secret still finds its key among the candidates.
        assert!(k
            .as_slice()
            .contains(&md5(user, &rest_password(b"old-secret", user))));
        assert!(!k
            .as_slice()
            .contains(&md5(user, &rest_password(b"other", user))));
    }

    #[test]
    fn static_user_wins_over_rest_reading() {
        let mut c = creds(&[("1800000000", "static-pw")], &["s3cret"]);
        let k = c.keys("1800000000", PasswordAlgorithmId::Md5, NOW).unwrap();
        assert_eq!(k.as_slice(), &[md5("1800000000", "static-pw")]);
        assert_eq!(k.rest_expiry(), None);
        // Even when the REST reading would have expired.
        assert!(c
            .keys("1800000000", PasswordAlgorithmId::Md5, u64::MAX)
            .is_ok());
    }

    #[test]
    fn userhash_lookup() {
        let c = creds(&[("alice", "pw"), ("bob", "pw")], &["s3cret"]);
        assert_eq!(c.user_for_hash(&userhash("alice", REALM)), Some("alice"));
        assert_eq!(c.user_for_hash(&userhash("bob", REALM)), Some("bob"));
        assert_eq!(c.user_for_hash(&userhash("alice", "other.realm")), None);
        assert_eq!(c.user_for_hash(&[0; 32]), None);
    }

    #[test]
    fn cache_hits_return_the_same_keys() {
        let mut c = creds(&[], &["s3cret"]);
        let a = c
            .keys("1800000000:a", PasswordAlgorithmId::Md5, NOW)
            .unwrap();
        assert_eq!(c.cached_rest_keys(), 1);
        let b = c
            .keys("1800000000:a", PasswordAlgorithmId::Md5, NOW)
            .unwrap();
        assert_eq!(c.cached_rest_keys(), 1);
        assert_eq!(a.as_slice(), b.as_slice());
        // The other algorithm is a separate entry with a different key.
        let s = c
            .keys("1800000000:a", PasswordAlgorithmId::Sha256, NOW)
            .unwrap();
        assert_eq!(c.cached_rest_keys(), 2);
        assert_ne!(a.as_slice(), s.as_slice());
        // An expired username is refused even though its keys are cached.
        assert_eq!(
            c.keys("1800000000:a", PasswordAlgorithmId::Md5, 1_800_000_001)
                .unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn cache_stays_bounded_at_the_default_cap() {
        let mut c = creds(&[], &["s3cret"]);
        let mut max_seen = 0;
        for i in 0..DEFAULT_REST_CACHE_CAP + 500 {
            let user = format!("1800000000:{i}");
            let alg = if i % 2 == 0 {
                PasswordAlgorithmId::Md5
            } else {
                PasswordAlgorithmId::Sha256
            };
            let k = c.keys(&user, alg, NOW).unwrap();
            assert_eq!(k.as_slice().len(), 1);
            max_seen = max_seen.max(c.cached_rest_keys());
        }
        assert!(max_seen <= DEFAULT_REST_CACHE_CAP, "{max_seen}");
        assert!(
            c.cached_rest_keys() >= DEFAULT_REST_CACHE_CAP / 4,
            "eviction drops half, not all"
        );
        // Keys derived after an eviction are still right.
        let user = "1800000000:0";
        let k = c.keys(user, PasswordAlgorithmId::Md5, NOW).unwrap();
        assert_eq!(k.as_slice(), &[md5(user, &rest_password(b"s3cret", user))]);
    }

    #[test]
    fn small_cache_capacity_is_honoured() {
        let mut c = creds(&[], &["s3cret"]).with_cache_capacity(10);
        for i in 0..100 {
            c.keys(&format!("1800000000:{i}"), PasswordAlgorithmId::Md5, NOW)
                .unwrap();
            assert!(c.cached_rest_keys() <= 5, "{}", c.cached_rest_keys());
        }
    }

    #[test]
    fn replace_swaps_users_and_secrets_and_clears_the_cache() {
        let mut c = creds(&[("alice", "pw")], &["old"]);
        let user = "1800000000:bob";
        c.keys(user, PasswordAlgorithmId::Md5, NOW).unwrap();
        assert_eq!(c.cached_rest_keys(), 1);
        c.replace([("carol", "pw2")], ["new"]).unwrap();
        assert_eq!(c.cached_rest_keys(), 0);
        assert_eq!(
            c.keys("alice", PasswordAlgorithmId::Md5, NOW).unwrap_err(),
            AuthError::UnknownUser
        );
        assert_eq!(c.user_for_hash(&userhash("alice", REALM)), None);
        assert_eq!(c.user_for_hash(&userhash("carol", REALM)), Some("carol"));
        let k = c.keys(user, PasswordAlgorithmId::Md5, NOW).unwrap();
        assert_eq!(k.as_slice(), &[md5(user, &rest_password(b"new", user))]);
        // A failed reload changes nothing.
        let too_many = ["a", "b", "c", "d", "e"];
        assert_eq!(
            c.replace([("dave", "pw")], too_many).unwrap_err(),
            CredentialsError::TooManySecrets {
                count: 5,
                max: MAX_REST_SECRETS
            }
        );
        assert!(c.keys("carol", PasswordAlgorithmId::Md5, NOW).is_ok());
        assert_eq!(c.cached_rest_keys(), 1);
    }

    #[test]
    fn four_secrets_give_four_keys() {
        let mut c = creds(&[], &["a", "b", "c", "d"]);
        let k = c
            .keys("1800000000", PasswordAlgorithmId::Sha256, NOW)
            .unwrap();
        assert_eq!(k.as_slice().len(), MAX_REST_SECRETS);
    }

    #[test]
    fn load_time_validation() {
        let new = |users: &[(&str, &str)], secrets: &[&str]| {
            Credentials::new(REALM, users.iter().copied(), secrets.iter().copied()).unwrap_err()
        };
        assert_eq!(new(&[("", "pw")], &[]), CredentialsError::EmptyUsername);
        assert_eq!(
            new(&[("a", "1"), ("a", "2")], &[]),
            CredentialsError::DuplicateUser("a".into())
        );
        let long = "u".repeat(509);
        assert_eq!(
            new(&[(&long, "pw")], &[]),
            CredentialsError::UsernameTooLong(long.clone())
        );
        assert_eq!(new(&[], &[""]), CredentialsError::EmptySecret);
        let realm = "r".repeat(128);
        assert_eq!(
            Credentials::new(&realm, [("a", "b")], [b"s"]).unwrap_err(),
            CredentialsError::RealmTooLong
        );
        assert!(Credentials::new(&"r".repeat(127), [("a", "b")], [b"s"]).is_ok());
        // Debug never shows secrets or keys.
        let c = creds(&[("alice", "hunter2")], &["topsecret"]);
        let dbg = format!("{c:?} {:?}", key());
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("topsecret"),
            "{dbg}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_never_a_valid_nonce(s in "\\PC{0,80}", t in proptest::num::u64::ANY) {
            proptest::prop_assert_ne!(check_nonce(&key(), client(), &s, t, 600), NonceStatus::Valid);
            let _ = features_from_nonce(&s);
        }

        #[test]
        fn fresh_nonce_is_valid_for_any_client_and_time(t in proptest::num::u64::ANY, ip in proptest::num::u128::ANY, port in proptest::num::u16::ANY) {
            let c = SocketAddr::new(IpAddr::V6(ip.into()), port);
            let n = make_nonce(&key(), c, t);
            proptest::prop_assert_eq!(check_nonce(&key(), c, n.as_str(), t, 0), NonceStatus::Valid);
        }

        #[test]
        fn any_username_never_panics(u in "\\PC{0,600}") {
            let mut c = creds(&[("alice", "pw")], &["s3cret"]);
            let _ = c.keys(&u, PasswordAlgorithmId::Sha256, NOW);
        }
    }
}
