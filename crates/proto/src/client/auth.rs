//! The client side of the long-term credential mechanism (RFC 8489 section 9.2, used by TURN per
//! RFC 8656 section 5): answering a 401 or 438 challenge, choosing the password algorithm,
//! signing later requests and checking the server's signature on responses.

use crate::stun::attr::{types, Nonce, PasswordAlgorithm, PasswordAlgorithms, Realm, Username};
use crate::stun::{EncodeError, Encoder, LongTermKey, Message, PasswordAlgorithmId};

/// Which password algorithms (RFC 8489 section 18.5) the client accepts.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum AlgorithmPolicy {
    /// Either; when the server offers a list, the first one on it the client supports (RFC 8489
    /// section 9.2.5: the server orders its list by preference).
    #[default]
    Any,
    /// Only SHA-256: refuse servers that do not offer it.
    Sha256Only,
    /// Only MD5, the RFC 5389 algorithm.
    Md5Only,
}

impl AlgorithmPolicy {
    fn allows(self, alg: PasswordAlgorithmId) -> bool {
        match self {
            AlgorithmPolicy::Any => true,
            AlgorithmPolicy::Sha256Only => alg == PasswordAlgorithmId::Sha256,
            AlgorithmPolicy::Md5Only => alg == PasswordAlgorithmId::Md5,
        }
    }
}

/// Why a challenge could not be answered.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    #[error("the challenge lacks a valid REALM or NONCE")]
    MalformedChallenge,
    #[error("the server's realm is not the configured one")]
    RealmMismatch,
    #[error("the server offers no password algorithm the client accepts")]
    NoCommonAlgorithm,
}

/// What the client learned from the last challenge: the realm, the nonce and the key, kept for
/// every later request (RFC 8489 section 9.2.3.2). The strings are reused across challenges, so a
/// nonce change does not allocate once the first one has been seen.
#[derive(Clone)]
pub(crate) struct Session {
    realm: String,
    nonce: String,
    /// The value of the server's PASSWORD-ALGORITHMS, echoed byte for byte; `None` when it sent
    /// none (an RFC 5389 server).
    offered: Option<Vec<u8>>,
    key: LongTermKey,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("realm", &self.realm)
            .field("nonce", &self.nonce)
            .field("algorithm", &self.key.algorithm())
            .finish_non_exhaustive()
    }
}

/// The client's own credentials, as configured.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Credentials<'c> {
    pub username: &'c str,
    pub password: &'c str,
    pub realm: Option<&'c str>,
    pub policy: AlgorithmPolicy,
}

impl Session {
    /// Takes REALM, NONCE and PASSWORD-ALGORITHMS from a 401 or 438 response and derives the key,
    /// updating `session` in place (RFC 8489 section 9.2.5).
    pub fn accept_challenge(
        session: &mut Option<Session>,
        msg: &Message<'_>,
        creds: Credentials<'_>,
    ) -> Result<(), AuthError> {
        let (Ok(Some(Realm(realm))), Ok(Some(Nonce(nonce)))) =
            (msg.get::<Realm<'_>>(), msg.get::<Nonce<'_>>())
        else {
            return Err(AuthError::MalformedChallenge);
        };
        if creds.realm.is_some_and(|want| want != realm) {
            return Err(AuthError::RealmMismatch);
        }
        let (algorithm, offered) = match msg.get::<PasswordAlgorithms<'_>>() {
            Err(_) => return Err(AuthError::MalformedChallenge),
            // An RFC 5389 server: MD5 is the only algorithm it knows.
            Ok(None) => (PasswordAlgorithmId::Md5, None),
            Ok(Some(list)) => {
                let chosen = list
                    .iter()
                    .filter(|a| a.params.is_empty())
                    .filter_map(|a| PasswordAlgorithmId::from_number(a.algorithm))
                    .find(|a| creds.policy.allows(*a));
                let raw = msg
                    .attributes()
                    .find(|a| a.typ == types::PASSWORD_ALGORITHMS)
                    .map(|a| a.value);
                (chosen.ok_or(AuthError::NoCommonAlgorithm)?, raw)
            }
        };
        if !creds.policy.allows(algorithm) {
            return Err(AuthError::NoCommonAlgorithm);
        }
        // Deriving the key is a hash over the credentials; skip it when only the nonce changed,
        // which is what a 438 usually means.
        let same_key = session
            .as_ref()
            .is_some_and(|s| s.realm == realm && s.key.algorithm() == algorithm);
        let key = match session {
            Some(s) if same_key => s.key,
            _ => LongTermKey::derive(algorithm, creds.username, realm, creds.password),
        };
        let s = session.get_or_insert_with(|| Session {
            realm: String::new(),
            nonce: String::new(),
            offered: None,
            key,
        });
        s.key = key;
        replace(&mut s.realm, realm);
        replace(&mut s.nonce, nonce);
        match (offered, &mut s.offered) {
            (None, o) => *o = None,
            (Some(raw), Some(buf)) => {
                buf.clear();
                buf.extend_from_slice(raw);
            }
            (Some(raw), o) => *o = Some(raw.to_vec()),
        }
        Ok(())
    }

    /// Adds USERNAME, REALM, NONCE, then PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM when the
    /// server offered a list (RFC 8489 section 9.2.5: echo the list unchanged, name the choice),
    /// then MESSAGE-INTEGRITY and, with SHA-256 keys, MESSAGE-INTEGRITY-SHA256. MESSAGE-INTEGRITY
    /// is always present so that a server that only checks HMAC-SHA1 can verify the request.
    /// FINGERPRINT is the caller's to add after this.
    pub fn sign(&self, enc: &mut Encoder<'_>, username: &str) -> Result<(), EncodeError> {
        enc.add(&Username(username))?;
        enc.add(&Realm(&self.realm))?;
        enc.add(&Nonce(&self.nonce))?;
        if let Some(offered) = &self.offered {
            enc.add_raw(types::PASSWORD_ALGORITHMS, offered)?;
            enc.add(&PasswordAlgorithm {
                algorithm: self.key.algorithm().number(),
                params: &[],
            })?;
        }
        enc.message_integrity(self.key.as_bytes())?;
        if self.key.algorithm() == PasswordAlgorithmId::Sha256 {
            enc.message_integrity_sha256(self.key.as_bytes())?;
        }
        Ok(())
    }

    /// Checks the server's signature on a response: MESSAGE-INTEGRITY-SHA256 when present,
    /// otherwise MESSAGE-INTEGRITY; a response with neither fails.
    pub fn verify(&self, msg: &Message<'_>) -> bool {
        let key = self.key.as_bytes();
        if msg.has_integrity_sha256() {
            msg.verify_integrity_sha256(key).is_ok()
        } else {
            msg.verify_integrity(key).is_ok()
        }
    }
}

/// Overwrites `dst` with `src`, keeping its allocation.
fn replace(dst: &mut String, src: &str) {
    if dst != src {
        dst.clear();
        dst.push_str(src);
    }
}
