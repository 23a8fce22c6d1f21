//! An in-process stand-in for multicast DNS (RFC 6762) on the emulated LANs.
//!
//! WebRTC agents hide host candidates behind random `.local` names
//! (draft-ietf-mmusic-mdns-ice-candidates); only a host on the same link can resolve one,
//! because the query is link-local multicast. Here a name resolves only for a querier on the
//! LAN that registered it, which is what makes a remote agent's host candidates unusable, as on
//! the real Internet.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::LanId;

/// Most names one resolver holds; an agent registers one per host candidate.
pub const MAX_NAMES: usize = 1 << 20;
/// RFC 1035 section 2.3.4: a name is at most 255 octets.
pub const MAX_NAME_LEN: usize = 255;

/// Why a name could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MdnsError {
    #[error("`{0}` does not end in .local (RFC 6762 section 3)")]
    NotLocal(String),
    #[error("`{0}` is longer than 255 bytes")]
    TooLong(String),
    #[error("`{0}` is already registered on this LAN")]
    Taken(String),
    #[error("the resolver is full ({MAX_NAMES} names)")]
    Full,
}

/// Names per LAN. Names are compared without regard to ASCII case (RFC 6762 section 16).
#[derive(Debug, Default)]
pub struct Mdns {
    names: HashMap<(LanId, String), Ipv4Addr>,
}

impl Mdns {
    pub fn new() -> Self {
        Self::default()
    }

    fn check(name: &str) -> Result<String, MdnsError> {
        if name.len() > MAX_NAME_LEN {
            return Err(MdnsError::TooLong(name.into()));
        }
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        match lower.strip_suffix(".local") {
            Some(label) if !label.is_empty() => Ok(lower),
            _ => Err(MdnsError::NotLocal(name.into())),
        }
    }

    /// Announces `name` for `addr` on `lan`. A name taken on that LAN is refused (RFC 6762
    /// section 9: the prober would see the conflict); the same name on another LAN is fine.
    pub fn register(&mut self, name: &str, addr: Ipv4Addr, lan: LanId) -> Result<(), MdnsError> {
        let name = Self::check(name)?;
        if self.names.len() >= MAX_NAMES {
            return Err(MdnsError::Full);
        }
        match self.names.entry((lan, name)) {
            std::collections::hash_map::Entry::Occupied(e) => {
                Err(MdnsError::Taken(e.key().1.clone()))
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(addr);
                Ok(())
            }
        }
    }

    /// Withdraws a name (an agent that closed); true if it was there.
    pub fn unregister(&mut self, name: &str, lan: LanId) -> bool {
        Self::check(name).is_ok_and(|n| self.names.remove(&(lan, n)).is_some())
    }

    /// What a querier on `lan` learns for `name`: nothing unless a host on `lan` registered it.
    pub fn resolve(&self, name: &str, lan: LanId) -> Option<Ipv4Addr> {
        let n = Self::check(name).ok()?;
        self.names.get(&(lan, n)).copied()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
