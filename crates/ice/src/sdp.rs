//! The `a=candidate` line of RFC 8839 section 5.1, and the `ice-char` strings of section 5.4.
//!
//! ```text
//! candidate-attribute = "candidate" ":" foundation SP component-id SP transport SP priority SP
//!                       connection-address SP port SP cand-type
//!                       [SP rel-addr] [SP rel-port] *(SP cand-extension)
//! foundation          = 1*32ice-char
//! component-id        = 1*3DIGIT
//! priority            = 1*10DIGIT
//! cand-type           = "typ" SP ("host" / "srflx" / "prflx" / "relay" / token)
//! rel-addr            = "raddr" SP connection-address
//! rel-port            = "rport" SP port
//! cand-extension      = extension-att-name SP extension-att-value
//! ```
//!
//! Lines come from the other side of a signalling channel and are hostile like any other input:
//! parsing never panics, allocates at most the foundation and a host name (both bounded), and
//! rejects anything it cannot use. Extensions (`generation`, `ufrag`, `network-cost`, ...) are
//! skipped. A connection address that is not an IP is kept as a name ([`Address::Name`]) for
//! the embedder to resolve, which is how mDNS host candidates arrive.

use core::fmt;
use core::net::{IpAddr, SocketAddr};
use core::str::FromStr;

use crate::candidate::{Address, Candidate, CandidateKind};

/// Lines longer than this are refused before any parsing: a real candidate line is well under
/// 300 bytes even with every extension browsers add.
pub const MAX_LINE: usize = 1024;
/// RFC 8839 section 5.1: `1*32ice-char`.
pub const MAX_FOUNDATION: usize = 32;
/// The longest DNS name (RFC 1035 section 2.3.4, in text form without the trailing dot).
pub const MAX_NAME: usize = 253;

/// Why a candidate line was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SdpError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("not a candidate attribute")]
    NotACandidate,
    #[error("line ends before the {0}")]
    Missing(&'static str),
    #[error("foundation is not 1 to 32 ice-chars")]
    Foundation,
    #[error("component id is not a number from 1 to 256")]
    Component,
    #[error("transport is not UDP")]
    UnsupportedTransport,
    #[error("priority is not a 32-bit number")]
    Priority,
    #[error("connection address is neither an IP address nor a host name")]
    Address,
    #[error("port is not a number from 0 to 65535")]
    Port,
    #[error("\"typ\" expected after the port")]
    TypKeyword,
    #[error("unknown candidate type")]
    CandidateType,
    #[error("related address is not an IP address")]
    RelatedAddress,
    #[error("related port missing or not a number from 0 to 65535")]
    RelatedPort,
}

impl Candidate {
    /// The attribute as an SDP line: `a=candidate:...`.
    pub fn to_sdp_line(&self) -> String {
        format!("a={self}")
    }

    /// Parses a candidate attribute, with or without the `a=` prefix and line ending (RFC 8839
    /// section 5.1; the `candidate:` form is what browsers pass around in trickle ICE).
    pub fn parse(line: &str) -> Result<Candidate, SdpError> {
        parse(line)
    }
}

/// Without the `a=` prefix, as `RTCIceCandidate.candidate` has it.
impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "candidate:{} {} udp {} {} {} typ {}",
            self.foundation, self.component, self.priority, self.address, self.port, self.kind
        )?;
        if let Some(r) = self.related {
            write!(f, " raddr {} rport {}", r.ip(), r.port())?;
        }
        Ok(())
    }
}

impl FromStr for Candidate {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

fn parse(line: &str) -> Result<Candidate, SdpError> {
    if line.len() > MAX_LINE {
        return Err(SdpError::TooLong);
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let line = line.strip_prefix("a=").unwrap_or(line);
    let rest = line
        .strip_prefix("candidate:")
        .ok_or(SdpError::NotACandidate)?;
    let mut t = rest.split_ascii_whitespace();
    let mut next = |what: &'static str| t.next().ok_or(SdpError::Missing(what));

    let foundation = next("foundation")?;
    if !is_ice_chars(foundation, 1, MAX_FOUNDATION) {
        return Err(SdpError::Foundation);
    }
    let component = digits::<u16>(next("component id")?, 3)
        .filter(|c| (1..=256).contains(c))
        .ok_or(SdpError::Component)?;
    if !next("transport")?.eq_ignore_ascii_case("udp") {
        return Err(SdpError::UnsupportedTransport);
    }
    let priority = digits::<u32>(next("priority")?, 10).ok_or(SdpError::Priority)?;
    let address = parse_address(next("connection address")?)?;
    let port = digits::<u16>(next("port")?, 5).ok_or(SdpError::Port)?;
    if next("candidate type")? != "typ" {
        return Err(SdpError::TypKeyword);
    }
    let kind =
        CandidateKind::from_sdp_name(next("candidate type")?).ok_or(SdpError::CandidateType)?;

    // The rest is name/value pairs: raddr and rport, then extensions, which are skipped. A
    // lone trailing token is tolerated like an unknown extension.
    let (mut raddr, mut rport) = (None, None);
    while let Some(name) = t.next() {
        let value = t.next();
        match name {
            "raddr" => {
                let ip = value.and_then(|v| v.parse::<IpAddr>().ok());
                raddr = Some(ip.ok_or(SdpError::RelatedAddress)?);
            }
            "rport" => {
                let p = value.and_then(|v| digits::<u16>(v, 5));
                rport = Some(p.ok_or(SdpError::RelatedPort)?);
            }
            _ => {}
        }
    }
    let related = match (raddr, rport) {
        (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
        (None, None) => None,
        (Some(_), None) => return Err(SdpError::RelatedPort),
        (None, Some(_)) => return Err(SdpError::RelatedAddress),
    };
    Ok(Candidate {
        foundation: foundation.to_string(),
        component,
        priority,
        address,
        port,
        kind,
        related,
    })
}

/// An IP address, or failing that a syntactically valid host name.
fn parse_address(s: &str) -> Result<Address, SdpError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Address::Ip(ip));
    }
    if is_host_name(s) {
        return Ok(Address::Name(s.to_string()));
    }
    Err(SdpError::Address)
}

/// RFC 1123 section 2.1 host names: dot-separated labels of letters, digits and hyphens, none
/// empty or longer than 63 or starting or ending with a hyphen, and a last label that is not all
/// digits (so that a mangled IPv4 address such as `1.2.3` is not taken for a name).
fn is_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > MAX_NAME {
        return false;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    s.split('.').all(label_ok)
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// `min..=max` characters of `ice-char = ALPHA / DIGIT / "+" / "/"` (RFC 8839 section 5.1).
pub fn is_ice_chars(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// `1*N DIGIT`, as a number that fits `T`. No sign, no leading `+`, which `str::parse` accepts.
fn digits<T: FromStr>(s: &str, max_len: usize) -> Option<T> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(kind: CandidateKind, address: Address, related: Option<&str>) -> Candidate {
        Candidate {
            foundation: "4+/a".to_string(),
            component: 1,
            priority: 2_130_706_431,
            address,
            port: 54321,
            kind,
            related: related.map(|r| r.parse().unwrap()),
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let ip = |s: &str| Address::Ip(s.parse().unwrap());
        let cases = [
            cand(CandidateKind::Host, ip("192.168.1.2"), None),
            cand(
                CandidateKind::Host,
                Address::Name("1f4712db-ea17-4bcf-a596-105139dfd8bf.local".into()),
                None,
            ),
            cand(CandidateKind::Host, ip("2001:db8::7"), None),
            cand(
                CandidateKind::ServerReflexive,
                ip("203.0.113.9"),
                Some("192.168.1.2:54321"),
            ),
            cand(
                CandidateKind::ServerReflexive,
                ip("203.0.113.9"),
                Some("0.0.0.0:0"),
            ),
            cand(
                CandidateKind::PeerReflexive,
                ip("198.51.100.3"),
                Some("[2001:db8::7]:1"),
            ),
            cand(
                CandidateKind::Relayed,
                ip("198.51.100.1"),
                Some("203.0.113.9:40000"),
            ),
        ];
        for c in cases {
            let line = c.to_sdp_line();
            assert!(
                line.starts_with("a=candidate:4+/a 1 udp 2130706431 "),
                "{line}"
            );
            assert_eq!(Candidate::parse(&line), Ok(c.clone()), "{line}");
            assert_eq!(c.to_string().parse::<Candidate>(), Ok(c.clone()));
            assert_eq!(Candidate::parse(&format!("{line}\r\n")), Ok(c.clone()));
        }
    }

    #[test]
    fn browser_lines_parse() {
        let c = Candidate::parse(
            "candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx raddr 0.0.0.0 \
             rport 0 generation 0 ufrag EsAw network-id 1 network-cost 10",
        )
        .unwrap();
        assert_eq!(c.kind, CandidateKind::ServerReflexive);
        assert_eq!(c.socket_addr(), Some("203.0.113.7:61665".parse().unwrap()));
        assert_eq!(c.related, Some("0.0.0.0:0".parse().unwrap()));
        assert_eq!(c.priority, 1_677_729_535);

        let c = Candidate::parse(
            "a=candidate:1 1 UDP 2122260223 1f4712db-ea17-4bcf-a596-105139dfd8bf.local 51472 \
             typ host generation 0",
        )
        .unwrap();
        assert_eq!(
            c.mdns_name(),
            Some("1f4712db-ea17-4bcf-a596-105139dfd8bf.local")
        );
        assert_eq!(c.socket_addr(), None);
        let r = c.resolved("10.0.0.5".parse().unwrap());
        assert_eq!(r.socket_addr(), Some("10.0.0.5:51472".parse().unwrap()));
        assert_eq!(r.mdns_name(), None);

        // Extensions may precede raddr/rport in the wild; order does not matter.
        let c = Candidate::parse(
            "candidate:x 1 udp 7 1.2.3.4 5 typ relay foo bar raddr 5.6.7.8 rport 9",
        )
        .unwrap();
        assert_eq!(c.related, Some("5.6.7.8:9".parse().unwrap()));
        // A dangling extension name is tolerated.
        assert!(Candidate::parse("candidate:x 1 udp 7 1.2.3.4 5 typ host generation").is_ok());
        // A name that is not mDNS is still a name.
        let c = Candidate::parse("candidate:x 1 udp 7 turn.example.com 5 typ relay").unwrap();
        assert_eq!(c.address, Address::Name("turn.example.com".into()));
        assert_eq!(c.mdns_name(), None);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        use SdpError::*;
        let long = format!(
            "candidate:{} 1 udp 1 1.2.3.4 5 typ host",
            "a".repeat(MAX_LINE)
        );
        let cases: &[(&str, SdpError)] = &[
            ("", NotACandidate),
            ("a=candidat:1 1 udp 1 1.2.3.4 5 typ host", NotACandidate),
            ("a=ice-ufrag:abcd", NotACandidate),
            ("candidate:", Missing("foundation")),
            ("candidate:1", Missing("component id")),
            ("candidate:1 1 udp 5 1.2.3.4 7", Missing("candidate type")),
            (
                "candidate:1 1 udp 5 1.2.3.4 7 typ",
                Missing("candidate type"),
            ),
            ("candidate:f:o 1 udp 1 1.2.3.4 5 typ host", Foundation),
            (
                "candidate:123456789012345678901234567890123 1 udp 1 1.2.3.4 5 typ host",
                Foundation,
            ),
            ("candidate:1 0 udp 1 1.2.3.4 5 typ host", Component),
            ("candidate:1 257 udp 1 1.2.3.4 5 typ host", Component),
            ("candidate:1 +1 udp 1 1.2.3.4 5 typ host", Component),
            (
                "candidate:1 1 tcp 1 1.2.3.4 5 typ host tcptype active",
                UnsupportedTransport,
            ),
            ("candidate:1 1 udp 4294967296 1.2.3.4 5 typ host", Priority),
            ("candidate:1 1 udp -1 1.2.3.4 5 typ host", Priority),
            ("candidate:1 1 udp 1 1.2.3 5 typ host", Address),
            ("candidate:1 1 udp 1 fe80::1%eth0 5 typ host", Address),
            ("candidate:1 1 udp 1 -bad-.local 5 typ host", Address),
            ("candidate:1 1 udp 1 a..local 5 typ host", Address),
            ("candidate:1 1 udp 1 1.2.3.4 65536 typ host", Port),
            ("candidate:1 1 udp 1 1.2.3.4 x typ host", Port),
            ("candidate:1 1 udp 1 1.2.3.4 5 type host", TypKeyword),
            ("candidate:1 1 udp 1 1.2.3.4 5 typ stun", CandidateType),
            (
                "candidate:1 1 udp 1 1.2.3.4 5 typ srflx raddr x rport 1",
                RelatedAddress,
            ),
            (
                "candidate:1 1 udp 1 1.2.3.4 5 typ srflx raddr",
                RelatedAddress,
            ),
            (
                "candidate:1 1 udp 1 1.2.3.4 5 typ srflx raddr 1.2.3.4",
                RelatedPort,
            ),
            (
                "candidate:1 1 udp 1 1.2.3.4 5 typ srflx rport 7",
                RelatedAddress,
            ),
            (
                "candidate:1 1 udp 1 1.2.3.4 5 typ srflx raddr 1.2.3.4 rport 99999",
                RelatedPort,
            ),
            (&long, TooLong),
        ];
        for (line, err) in cases {
            assert_eq!(Candidate::parse(line), Err(*err), "{line:?}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: mutate a valid line byte by byte, including into
        // multi-byte UTF-8, and make sure parsing only ever returns.
        let base = "a=candidate:1 1 udp 2130706431 1f4712db-ea17-4bcf-a596-105139dfd8bf.local \
                    5000 typ srflx raddr 0.0.0.0 rport 0 generation 0";
        let mut x: u32 = 1;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut chars: Vec<char> = base.chars().collect();
            let at = (x as usize) % chars.len();
            chars[at] = char::from_u32(x % 0x3000).unwrap_or('é');
            if x.is_multiple_of(3) {
                chars.truncate((x as usize >> 8) % chars.len());
            }
            let s: String = chars.into_iter().collect();
            let _ = Candidate::parse(&s);
        }
    }

    #[test]
    fn ice_chars() {
        assert!(is_ice_chars("abcD09+/", 4, 256));
        assert!(!is_ice_chars("abc", 4, 256));
        assert!(!is_ice_chars("abc:", 4, 256));
        assert!(!is_ice_chars("abcé", 1, 256));
    }
}
