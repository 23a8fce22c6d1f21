//! The agent's one source of randomness: a keyed pseudo-random function over a caller's seed.
//!
//! Everything random an agent does (transaction ids of its checks, ufrag and password, the
//! tie-breaker when none is given, mDNS names, consent jitter) is drawn from here, so two agents
//! built from the same seed behave identically: the load generator replays a run from its seed.
//! The generator is the proto crate's [`TransactionIds`] (SHA-256 of seed and counter), because
//! passwords and transaction ids must be unpredictable to an off-path attacker (RFC 8445 section
//! 5.3, RFC 8489 section 5); a draw costs one SHA-256 block and the agent draws rarely.

use uturn_proto::client::TransactionIds;
use uturn_proto::stun::TransactionId;

/// A seeded stream of unpredictable bytes.
#[derive(Debug, Clone)]
pub(crate) struct Random {
    ids: TransactionIds,
}

impl Random {
    pub fn new(seed: [u8; 32]) -> Self {
        Random {
            ids: TransactionIds::new(seed),
        }
    }

    /// A fresh STUN transaction id.
    pub fn transaction_id(&mut self) -> TransactionId {
        self.ids.next_id()
    }

    /// Fills `out` with unpredictable bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(12) {
            let id = self.ids.next_id();
            chunk.copy_from_slice(&id.0[..chunk.len()]);
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_be_bytes(b)
    }

    /// A seed for another generator (the embedded STUN/TURN clients), independent of this one's
    /// later output.
    pub fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.fill(&mut s);
        s
    }

    /// A number in `0..n` (`n > 0`); the modulo bias is irrelevant for jitter.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A random version-4 UUID followed by `.local`, the name browsers put in mDNS host
    /// candidates instead of the private address (draft-ietf-mmusic-mdns-ice-candidates section
    /// 3.1.1).
    pub fn mdns_name(&mut self) -> String {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        b[6] = (b[6] & 0x0F) | 0x40; // version 4
        b[8] = (b[8] & 0x3F) | 0x80; // RFC 4122 variant
        let mut s = String::with_capacity(36 + 6);
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            s.push(hex(byte >> 4));
            s.push(hex(byte & 0xF));
        }
        s.push_str(".local");
        s
    }

    /// `n` characters from the ICE alphabet (`ice-char`, RFC 8839 section 5.4), 6 bits each.
    pub fn ice_chars(&mut self, n: usize) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut raw = [0u8; 12];
        let mut s = String::with_capacity(n);
        for i in 0..n {
            if i % 12 == 0 {
                self.fill(&mut raw);
            }
            s.push(char::from(ALPHABET[usize::from(raw[i % 12] & 63)]));
        }
        s
    }
}

fn hex(n: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(n & 0xF)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_well_formed() {
        let mut a = Random::new([3; 32]);
        let mut b = Random::new([3; 32]);
        let name = a.mdns_name();
        assert_eq!(name, b.mdns_name(), "same seed, same name");
        assert_eq!(name.len(), 36 + 6);
        assert!(name.ends_with(".local"));
        let uuid = &name[..36];
        let dashes: Vec<usize> = uuid.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, vec![8, 13, 18, 23]);
        assert_eq!(&uuid[14..15], "4", "version 4");
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"), "variant");

        let pwd = a.ice_chars(24);
        assert_eq!(pwd.len(), 24);
        assert!(pwd
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/'));
        assert_ne!(pwd, a.ice_chars(24), "draws differ");
        assert_ne!(
            Random::new([4; 32]).next_u64(),
            Random::new([3; 32]).next_u64()
        );
        for n in [1, 2, 7, 1000] {
            assert!(a.below(n) < n);
        }
    }
}
