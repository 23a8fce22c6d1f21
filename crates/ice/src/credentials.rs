//! ICE short-term credentials: the username fragment and password each agent announces
//! (`a=ice-ufrag`, `a=ice-pwd`, RFC 8839 section 5.4) and checks are signed with (RFC 8445
//! section 7.2.2: USERNAME `remote-ufrag:local-ufrag`, MESSAGE-INTEGRITY keyed with the
//! password of the agent that answers).

use core::fmt;

use crate::random::Random;
use crate::sdp::is_ice_chars;

/// A ufrag or password that does not follow RFC 8839 section 5.4.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CredentialsError {
    #[error("ufrag is not 4 to 256 ice-chars")]
    Ufrag,
    #[error("password is not 22 to 256 ice-chars")]
    Password,
}

/// A ufrag and password, validated.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    ufrag: String,
    pwd: String,
}

impl Credentials {
    /// RFC 8839 section 5.4: `ice-ufrag = 4*256ice-char`, `ice-pwd = 22*256ice-char`.
    pub fn new(ufrag: impl Into<String>, pwd: impl Into<String>) -> Result<Self, CredentialsError> {
        let (ufrag, pwd) = (ufrag.into(), pwd.into());
        if !is_ice_chars(&ufrag, 4, 256) {
            return Err(CredentialsError::Ufrag);
        }
        if !is_ice_chars(&pwd, 22, 256) {
            return Err(CredentialsError::Password);
        }
        Ok(Credentials { ufrag, pwd })
    }

    /// Fresh random credentials: an 8-character ufrag (48 bits; RFC 8445 section 5.3 asks for
    /// at least 24) and a 24-character password (144 bits; at least 128).
    pub(crate) fn random(rng: &mut Random) -> Self {
        Credentials {
            ufrag: rng.ice_chars(8),
            pwd: rng.ice_chars(24),
        }
    }

    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }

    pub fn pwd(&self) -> &str {
        &self.pwd
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password signs every check: keep it out of logs.
        f.debug_struct("Credentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"..")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_generation() {
        assert!(Credentials::new("abcd", "a".repeat(22)).is_ok());
        assert_eq!(
            Credentials::new("abc", "a".repeat(22)),
            Err(CredentialsError::Ufrag)
        );
        assert_eq!(
            Credentials::new("ab:c", "a".repeat(22)),
            Err(CredentialsError::Ufrag),
            "a colon would split USERNAME in the wrong place"
        );
        assert_eq!(
            Credentials::new("abcd", "a".repeat(21)),
            Err(CredentialsError::Password)
        );
        assert_eq!(
            Credentials::new("abcd", "a".repeat(257)),
            Err(CredentialsError::Password)
        );
        let mut rng = Random::new([1; 32]);
        let c = Credentials::random(&mut rng);
        assert!(Credentials::new(c.ufrag(), c.pwd()).is_ok());
        assert_ne!(c, Credentials::random(&mut rng));
        assert!(!format!("{c:?}").contains(c.pwd()));
    }
}
