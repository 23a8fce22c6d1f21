//! Candidates (RFC 8445 section 5.1): their kinds, addresses and priorities.
//!
//! [`Candidate`] is the signalled form, what an `a=candidate` line carries (see [`crate::sdp`]
//! for the grammar). The agent keeps its own candidates in a smaller internal form and builds
//! a [`Candidate`] only when it announces one.

use core::fmt;
use core::net::{IpAddr, SocketAddr};

/// The four candidate types (RFC 8445 section 5.1.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// An address of a local socket.
    Host,
    /// The address a STUN server saw the socket's packets come from (behind a NAT).
    ServerReflexive,
    /// An address learned from a connectivity check (RFC 8445 sections 7.2.5.3.1, 7.3.1.3).
    PeerReflexive,
    /// An address allocated on a TURN server (RFC 8656).
    Relayed,
}

impl CandidateKind {
    /// The recommended type preferences of RFC 8445 section 5.1.2.2: direct paths first,
    /// relays last. Peer-reflexive ranks above server-reflexive because it was learned from a
    /// check that already worked.
    pub const fn type_preference(self) -> u32 {
        match self {
            CandidateKind::Host => 126,
            CandidateKind::PeerReflexive => 110,
            CandidateKind::ServerReflexive => 100,
            CandidateKind::Relayed => 0,
        }
    }

    /// The `cand-type` token (RFC 8839 section 5.1).
    pub const fn sdp_name(self) -> &'static str {
        match self {
            CandidateKind::Host => "host",
            CandidateKind::ServerReflexive => "srflx",
            CandidateKind::PeerReflexive => "prflx",
            CandidateKind::Relayed => "relay",
        }
    }

    /// The kind a `cand-type` token names (compared without regard to case).
    pub fn from_sdp_name(s: &str) -> Option<Self> {
        [
            CandidateKind::Host,
            CandidateKind::ServerReflexive,
            CandidateKind::PeerReflexive,
            CandidateKind::Relayed,
        ]
        .into_iter()
        .find(|k| k.sdp_name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sdp_name())
    }
}

/// The component this agent handles: one UDP stream, RTP and RTCP multiplexed (RFC 8843
/// bundling and RFC 5761 rtcp-mux, as every browser does today).
pub const COMPONENT: u16 = 1;

/// RFC 8445 section 5.1.2.1:
/// `priority = 2^24 * type preference + 2^8 * local preference + (256 - component ID)`.
///
/// `component` is 1 to 256; larger values saturate to the lowest component preference.
pub const fn candidate_priority(kind: CandidateKind, local_preference: u16, component: u16) -> u32 {
    let component = if component > 256 { 256 } else { component };
    (kind.type_preference() << 24) + ((local_preference as u32) << 8) + (256 - component as u32)
}

/// RFC 8445 section 6.1.2.3: with G the controlling agent's candidate priority and D the
/// controlled agent's, `2^32 * MIN(G,D) + 2 * MAX(G,D) + (G > D ? 1 : 0)`. Both agents compute
/// the same number for the same pair, which is what makes them agree on the order of checks.
///
/// Candidate priorities are at most 2^31 - 1 (section 5.1.2.1), for which the sum fits 64 bits;
/// a peer that signals larger ones gets a saturated pair priority rather than an overflow.
pub const fn pair_priority(controlling: u32, controlled: u32) -> u64 {
    let (g, d) = (controlling as u64, controlled as u64);
    let (min, max) = if g < d { (g, d) } else { (d, g) };
    (min << 32)
        .saturating_add(2 * max)
        .saturating_add(if g > d { 1 } else { 0 })
}

/// Where a candidate is: an IP address, or a name the embedder must resolve first, such as the
/// random `<uuid>.local` of an mDNS host candidate (RFC 8839 section 5.1 allows an FQDN).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => ip.fmt(f),
            Address::Name(n) => f.write_str(n),
        }
    }
}

/// A candidate as signalled in an `a=candidate` line. Only UDP candidates exist here: a line
/// for another transport does not parse (see [`crate::sdp::SdpError::UnsupportedTransport`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// 1 to 32 `ice-char`s; equal for candidates of the same type, base IP and server
    /// (RFC 8445 section 5.1.1.3).
    pub foundation: String,
    pub component: u16,
    pub priority: u32,
    pub address: Address,
    pub port: u16,
    pub kind: CandidateKind,
    /// `raddr`/`rport`: the base of a server-reflexive candidate, the mapped address of a
    /// relayed one. Informational only (RFC 8445 section 5.3); browsers that hide host addresses
    /// behind mDNS send `0.0.0.0 0` here.
    pub related: Option<SocketAddr>,
}

impl Candidate {
    /// The transport address, once the address is an IP.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.address {
            Address::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Address::Name(_) => None,
        }
    }

    /// The mDNS name (`*.local`) in place of the address, for the embedder to resolve.
    pub fn mdns_name(&self) -> Option<&str> {
        match &self.address {
            Address::Name(n) if is_mdns_name(n) => Some(n),
            _ => None,
        }
    }

    /// The same candidate with its name replaced by the address it resolved to.
    pub fn resolved(mut self, ip: IpAddr) -> Candidate {
        self.address = Address::Ip(ip);
        self
    }
}

/// Whether `name` is in the `.local` domain mDNS resolves (RFC 6762 section 3).
pub fn is_mdns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() > 6
        && name
            .get(name.len() - 6..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(".local"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_priorities_follow_rfc8445_5_1_2_1() {
        // 2^24 * 126 + 2^8 * 65535 + 255
        assert_eq!(
            candidate_priority(CandidateKind::Host, 65535, 1),
            2_130_706_431
        );
        assert_eq!(
            candidate_priority(CandidateKind::Host, 65535, 1),
            (1 << 24) * 126 + (1 << 8) * 65535 + 255
        );
        assert_eq!(
            candidate_priority(CandidateKind::PeerReflexive, 65535, 1),
            (1 << 24) * 110 + (1 << 8) * 65535 + 255
        );
        assert_eq!(
            candidate_priority(CandidateKind::ServerReflexive, 65534, 1),
            (1 << 24) * 100 + (1 << 8) * 65534 + 255
        );
        assert_eq!(
            candidate_priority(CandidateKind::Relayed, 0, 2),
            254,
            "relay with zero local preference, RTCP component"
        );
        assert_eq!(candidate_priority(CandidateKind::Relayed, 0, 256), 0);
        assert_eq!(candidate_priority(CandidateKind::Relayed, 0, 999), 0);
        // The order the type preferences impose.
        let p = |k| candidate_priority(k, 65535, 1);
        assert!(p(CandidateKind::Host) > p(CandidateKind::PeerReflexive));
        assert!(p(CandidateKind::PeerReflexive) > p(CandidateKind::ServerReflexive));
        assert!(p(CandidateKind::ServerReflexive) > p(CandidateKind::Relayed));
    }

    #[test]
    fn pair_priorities_follow_rfc8445_6_1_2_3() {
        let (g, d) = (2_130_706_431u32, 16_777_215u32);
        let expect = (1u64 << 32) * u64::from(d) + 2 * u64::from(g) + 1;
        assert_eq!(pair_priority(g, d), expect);
        // Swapping roles changes only the last bit.
        assert_eq!(pair_priority(d, g), expect - 1);
        assert_eq!(pair_priority(g, g), (u64::from(g) << 32) + 2 * u64::from(g));
        // The largest valid priorities fit exactly...
        let top = (1u32 << 31) - 1;
        assert_eq!(
            pair_priority(top, top),
            (u64::from(top) << 32) + 2 * u64::from(top)
        );
        // ...and out-of-range ones from a hostile peer saturate instead of overflowing.
        assert_eq!(pair_priority(u32::MAX, u32::MAX), u64::MAX);
        assert_eq!(pair_priority(u32::MAX - 1, u32::MAX), u64::MAX - 1);
        // MIN dominates: a pair with a better worst candidate wins.
        assert!(pair_priority(1000, 1000) > pair_priority(top, 999));
    }

    #[test]
    fn kinds_and_names() {
        for k in [
            CandidateKind::Host,
            CandidateKind::ServerReflexive,
            CandidateKind::PeerReflexive,
            CandidateKind::Relayed,
        ] {
            assert_eq!(CandidateKind::from_sdp_name(k.sdp_name()), Some(k));
            assert_eq!(
                CandidateKind::from_sdp_name(&k.sdp_name().to_uppercase()),
                Some(k)
            );
        }
        assert_eq!(CandidateKind::from_sdp_name("relayed"), None);
        assert!(is_mdns_name("1f4712db-ea17-4bcf-a596-105139dfd8bf.local"));
        assert!(is_mdns_name("x.LOCAL."));
        assert!(!is_mdns_name(".local"));
        assert!(!is_mdns_name("example.com"));
        assert!(!is_mdns_name("ÿÿÿÿ"));
    }
}
