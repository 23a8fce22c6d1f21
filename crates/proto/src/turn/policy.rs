//! Which peers a client may relay to (RFC 8656 section 21.1.6 and section 17, "the server
//! should not relay to addresses it considers internal").
//!
//! A TURN server is an open UDP proxy for anyone holding credentials; without this check a
//! client could use it to reach the operator's private network, the server's own loopback
//! services, or to bounce traffic off reserved ranges. The check is made on CreatePermission and
//! ChannelBind (refusal: 403 Forbidden) and on each Send indication (refusal: silent drop). It is
//! not made per ChannelData packet: a channel only exists after its ChannelBind passed.
//!
//! # Decision order
//!
//! 1. The peer address is canonicalised: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the
//!    IPv4 address `a.b.c.d`, so `::ffff:127.0.0.1` cannot slip past the `127.0.0.0/8` rule.
//! 2. An operator **deny** CIDR refuses. Nothing overrides it.
//! 3. The server's own **listening sockets** (exact IP and port) refuse, even when an operator
//!    allow CIDR or `allow_loopback` covers them: relaying to the server's own STUN port is a
//!    loop. A listening socket bound to the unspecified address (`0.0.0.0` or `::`) refuses
//!    that port on every peer IP, because we cannot know every address it answers on. Only
//!    [`PeerPolicy::permits_addr`] applies this rule; [`PeerPolicy::permits_ip`] (used by
//!    CreatePermission, which RFC 8656 section 9 keys by IP alone) skips it, and the loop is
//!    still closed because every path that sends data (Send, ChannelBind) checks the port.
//! 4. An operator **allow** CIDR permits (it overrides the default list below).
//! 5. The server's own **relay addresses** permit: see "Deviation" below.
//! 6. With `allow_loopback` (tests only), `127.0.0.0/8` and `::1` permit.
//! 7. The **default deny list** ([`default_deny_list`]) refuses.
//! 8. Anything else (public unicast) is permitted.
//!
//! # Deviation: the server's own relay addresses
//!
//! The issue lists "the server's own listening and relay addresses" as refused. Refusing the
//! relay IPs would break the common case of two relay-only WebRTC clients on the same server,
//! whose only path to each other is one allocation's relay address talking to the other's
//! (coturn allows this). So the relay IPs are not refused; on the contrary, a peer on one of
//! the server's relay IPs *with a port in the relay port range* is permitted even when the IP is
//! private (a deployment whose relay addresses are in 10.0.0.0/8 still lets its clients meet).
//! Other ports on a private relay IP fall through to the default list, so a client cannot reach
//! e.g. a DNS resolver listening on the same host. `permits_ip` admits a relay IP outright,
//! because a CreatePermission by IP only states intent; the port-aware check happens when data
//! would flow.
//!
//! # Default deny list
//!
//! Besides the ranges named in the issue, the list holds:
//! - `::/96`, the deprecated IPv4-compatible addresses (RFC 4291 section 2.5.5.1): `::a.b.c.d`
//!   is not mapped to IPv4 by [`canonical`] (nothing routes it as IPv4 today) and is refused so
//!   that `::127.0.0.1` is not an ambiguous loophole. It contains `::/128` and `::1/128`, which
//!   stay listed on their own for clarity.
//! - `64:ff9b:1::/48`, the local-use NAT64 prefix (RFC 8215), for the same reason as
//!   `64:ff9b::/96`: through a NAT64 it reaches arbitrary IPv4 addresses, private ones included.
//! - `fec0::/10`, deprecated site-local (RFC 3879), still honoured as internal by some stacks.
//! - `3fff::/20`, the second IPv6 documentation prefix (RFC 9637).

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::ops::RangeInclusive;
use core::str::FromStr;

/// Why a CIDR string or value was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address")]
    BadAddress(String),
    #[error("prefix length {0:?} is not a number")]
    BadPrefix(String),
    #[error("prefix length /{prefix} is longer than /{max} for this address family")]
    PrefixTooLong { prefix: u32, max: u8 },
    /// `10.0.0.1/8` is refused rather than silently masked: such a typo in an allow or deny list
    /// usually means the operator meant something else, and guessing would hide it.
    #[error("{addr}/{prefix} has host bits set; the network is {network}/{prefix}")]
    HostBitsSet {
        addr: IpAddr,
        prefix: u8,
        network: IpAddr,
    },
}

/// An IP network: an address and a prefix length, with no host bits set.
///
/// An IPv4-mapped network (`::ffff:a.b.c.d/n`, `n >= 96`) is stored as the IPv4 network
/// `a.b.c.d/(n - 96)`, because addresses are canonicalised to IPv4 before matching and the
/// mapped form would otherwise never match anything.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Validates `addr/prefix`: the prefix must fit the family and host bits must be zero.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if (96..=128).contains(&prefix) => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let max = max_prefix(addr);
        if prefix > max {
            return Err(CidrError::PrefixTooLong {
                prefix: prefix.into(),
                max,
            });
        }
        let network = mask_addr(addr, prefix);
        if network != addr {
            return Err(CidrError::HostBitsSet {
                addr,
                prefix,
                network,
            });
        }
        Ok(Cidr { addr, prefix })
    }

    /// A host route: `/32` for IPv4, `/128` for IPv6 (IPv4-mapped becomes IPv4 `/32`).
    pub fn host(addr: IpAddr) -> Self {
        let addr = addr.to_canonical();
        Cidr {
            addr,
            prefix: max_prefix(addr),
        }
    }

    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    pub const fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` (canonicalised first) lies in this network. Families never match each other.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Prefix::of(self).matches(ip.to_canonical())
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `addr/prefix` or a bare address (a host route).
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| CidrError::BadAddress(addr_s.to_owned()))?;
        let Some(prefix_s) = prefix_s else {
            return Ok(Cidr::host(addr));
        };
        // `u32::from_str` accepts a leading '+'; a prefix is plain digits.
        if prefix_s.is_empty() || !prefix_s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::BadPrefix(prefix_s.to_owned()));
        }
        let prefix: u32 = prefix_s
            .parse()
            .map_err(|_| CidrError::BadPrefix(prefix_s.to_owned()))?;
        match u8::try_from(prefix) {
            Ok(p) => Cidr::new(addr, p),
            Err(_) => Err(CidrError::PrefixTooLong {
                prefix,
                max: max_prefix(addr),
            }),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Maps an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) to IPv4; every other address is returned
/// unchanged. IPv4-compatible addresses (`::a.b.c.d`, deprecated by RFC 4291) stay IPv6 and are
/// refused by the default list through `::/96`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

const fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask_addr(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
    }
}

/// A `prefix`-bit network mask; prefixes past the width saturate to all ones.
fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

/// A network as precomputed integers, so a match is one AND and one compare.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Prefix {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl Prefix {
    fn new(addr: IpAddr, prefix: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let mask = mask32(prefix);
                Prefix::V4 {
                    net: u32::from(a) & mask,
                    mask,
                }
            }
            IpAddr::V6(a) => {
                let mask = mask128(prefix);
                Prefix::V6 {
                    net: u128::from(a) & mask,
                    mask,
                }
            }
        }
    }

    fn of(c: &Cidr) -> Self {
        Prefix::new(c.addr, c.prefix)
    }

    /// `ip` must already be canonical.
    #[inline]
    fn matches(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Prefix::V4 { net, mask }, IpAddr::V4(a)) => u32::from(a) & mask == net,
            (Prefix::V6 { net, mask }, IpAddr::V6(a)) => u128::from(a) & mask == net,
            _ => false,
        }
    }
}

/// A list of networks, split by family so a lookup only scans its own family.
#[derive(Clone, Debug, Default)]
struct PrefixSet {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl PrefixSet {
    fn new(prefixes: impl IntoIterator<Item = Prefix>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for p in prefixes {
            match p {
                Prefix::V4 { net, mask } => v4.push((net, mask)),
                Prefix::V6 { net, mask } => v6.push((net, mask)),
            }
        }
        PrefixSet {
            v4: v4.into(),
            v6: v6.into(),
        }
    }

    /// `ip` must already be canonical.
    #[inline]
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|&(net, mask)| a & mask == net)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|&(net, mask)| a & mask == net)
            }
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> (IpAddr, u8) {
    (IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix)
}

const fn v6(segments: [u16; 8], prefix: u8) -> (IpAddr, u8) {
    let [a, b, c, d, e, f, g, h] = segments;
    (IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix)
}

/// Ranges refused by default (IANA special-purpose registries, RFC 6890 and successors).
const DEFAULT_DENY: [(IpAddr, u8); 29] = [
    v4(0, 0, 0, 0, 8),                         // "this network" (RFC 791)
    v4(127, 0, 0, 0, 8),                       // loopback
    v4(10, 0, 0, 0, 8),                        // private (RFC 1918)
    v4(100, 64, 0, 0, 10),                     // carrier-grade NAT (RFC 6598)
    v4(169, 254, 0, 0, 16),                    // link-local
    v4(172, 16, 0, 0, 12),                     // private
    v4(192, 0, 0, 0, 24),                      // IETF protocol assignments
    v4(192, 0, 2, 0, 24),                      // TEST-NET-1
    v4(192, 88, 99, 0, 24),                    // 6to4 relay anycast (deprecated)
    v4(192, 168, 0, 0, 16),                    // private
    v4(198, 18, 0, 0, 15),                     // benchmarking
    v4(198, 51, 100, 0, 24),                   // TEST-NET-2
    v4(203, 0, 113, 0, 24),                    // TEST-NET-3
    v4(224, 0, 0, 0, 4),                       // multicast
    v4(240, 0, 0, 0, 4),                       // reserved, and 255.255.255.255 broadcast
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128),         // unspecified
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128),         // loopback
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96),          // IPv4-compatible (deprecated)
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),  // NAT64 well-known prefix
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // NAT64 local-use (RFC 8215)
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),     // Teredo
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation (RFC 9637)
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),     // 6to4
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site-local (deprecated)
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
];

/// The ranges refused unless an operator allow CIDR (or `allow_loopback`) admits them.
pub fn default_deny_list() -> impl Iterator<Item = Cidr> {
    DEFAULT_DENY
        .iter()
        .map(|&(addr, prefix)| Cidr { addr, prefix })
}

/// The RFC 8656 section 7.2 recommendation for relay ports (the dynamic range).
pub const DEFAULT_RELAY_PORTS: RangeInclusive<u16> = 49152..=65535;

/// What an operator and the server's own sockets feed into a [`PeerPolicy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicyConfig {
    /// Operator allow CIDRs: override the default deny list (not operator deny, not the
    /// server's own listening sockets).
    pub allow: Vec<Cidr>,
    /// Operator deny CIDRs: override everything.
    pub deny: Vec<Cidr>,
    /// Tests only: admit `127.0.0.0/8` and `::1` as peers.
    pub allow_loopback: bool,
    /// The server's own STUN/TURN listening sockets; a peer with exactly this address and port
    /// is refused (an unspecified IP matches every IP on that port).
    pub listen: Vec<SocketAddr>,
    /// The server's own relay IPs: peers on them with a port in `relay_ports` are other
    /// allocations of this server and are permitted.
    pub relay_ips: Vec<IpAddr>,
    pub relay_ports: RangeInclusive<u16>,
}

impl Default for PeerPolicyConfig {
    fn default() -> Self {
        PeerPolicyConfig {
            allow: Vec::new(),
            deny: Vec::new(),
            allow_loopback: false,
            listen: Vec::new(),
            relay_ips: Vec::new(),
            relay_ports: DEFAULT_RELAY_PORTS,
        }
    }
}

/// The peer policy, with every list precomputed so a check never allocates.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    deny: PrefixSet,
    allow: PrefixSet,
    defaults: PrefixSet,
    allow_loopback: bool,
    listen: Box<[SocketAddr]>,
    relay_ips: Box<[IpAddr]>,
    relay_ports: RangeInclusive<u16>,
}

impl PeerPolicy {
    pub fn new(config: &PeerPolicyConfig) -> Self {
        let listen = config
            .listen
            .iter()
            .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
            .collect();
        let relay_ips = config
            .relay_ips
            .iter()
            .map(|ip| ip.to_canonical())
            .collect();
        PeerPolicy {
            deny: PrefixSet::new(config.deny.iter().map(Prefix::of)),
            allow: PrefixSet::new(config.allow.iter().map(Prefix::of)),
            defaults: PrefixSet::new(DEFAULT_DENY.iter().map(|&(a, p)| Prefix::new(a, p))),
            allow_loopback: config.allow_loopback,
            listen,
            relay_ips,
            relay_ports: config.relay_ports.clone(),
        }
    }

    /// For CreatePermission (keyed by IP, RFC 8656 section 9): steps 1, 2 and 4 to 8 of the
    /// module-level order. The listening-socket rule needs a port and is left to `permits_addr`.
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.contains(ip) {
            return false;
        }
        if self.allow.contains(ip) || self.relay_ips.contains(&ip) {
            return true;
        }
        self.default_rules(ip)
    }

    /// For ChannelBind and Send indications, which name a port: every step of the module-level
    /// order.
    pub fn permits_addr(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        let port = addr.port();
        if self.deny.contains(ip) {
            return false;
        }
        if self
            .listen
            .iter()
            .any(|l| l.port() == port && (l.ip() == ip || l.ip().is_unspecified()))
        {
            return false;
        }
        if self.allow.contains(ip) {
            return true;
        }
        if self.relay_ports.contains(&port) && self.relay_ips.contains(&ip) {
            return true;
        }
        self.default_rules(ip)
    }

    /// Steps 6 to 8: the loopback switch, the default list, else permitted.
    fn default_rules(&self, ip: IpAddr) -> bool {
        if self.allow_loopback && ip.is_loopback() {
            return true;
        }
        !self.defaults.contains(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn policy(config: PeerPolicyConfig) -> PeerPolicy {
        PeerPolicy::new(&config)
    }

    /// First and last address of a network.
    fn bounds(c: &Cidr) -> (IpAddr, IpAddr) {
        match c.addr() {
            IpAddr::V4(a) => {
                let first = u32::from(a);
                let last = first | !mask32(c.prefix());
                (IpAddr::V4(first.into()), IpAddr::V4(last.into()))
            }
            IpAddr::V6(a) => {
                let first = u128::from(a);
                let last = first | !mask128(c.prefix());
                (IpAddr::V6(first.into()), IpAddr::V6(last.into()))
            }
        }
    }

    /// The list named in the issue, as text, so the code's list is checked against it.
    const ISSUE_LIST: &[&str] = &[
        "0.0.0.0/8",
        "127.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "64:ff9b::/96",
        "100::/64",
        "2001::/32",
        "2001:db8::/32",
        "2002::/16",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ];

    #[test]
    fn default_list_contains_the_issue_list_and_is_well_formed() {
        let defaults: Vec<Cidr> = default_deny_list().collect();
        for s in ISSUE_LIST {
            assert!(
                defaults.contains(&cidr(s)),
                "{s} missing from the default list"
            );
        }
        for c in &defaults {
            // Every entry would also pass operator validation (no host bits, sane prefix).
            assert_eq!(Cidr::new(c.addr(), c.prefix()), Ok(*c));
        }
        for extra in ["::/96", "64:ff9b:1::/48", "fec0::/10", "3fff::/20"] {
            assert!(defaults.contains(&cidr(extra)), "{extra}");
        }
    }

    #[test]
    fn every_default_range_is_refused_at_both_ends() {
        let p = policy(PeerPolicyConfig::default());
        for c in default_deny_list() {
            let (first, last) = bounds(&c);
            for a in [first, last] {
                assert!(!p.permits_ip(a), "{a} in {c} permitted");
                assert!(
                    !p.permits_addr(SocketAddr::new(a, 5000)),
                    "{a} in {c} permitted"
                );
            }
        }
        // Spot checks on the edges written out by hand, in case `bounds` is wrong.
        for s in [
            "10.255.255.255",
            "100.127.255.255",
            "172.31.255.255",
            "255.255.255.255",
        ] {
            assert!(!p.permits_ip(ip(s)), "{s}");
        }
        for s in [
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "febf::1",
            "ffff::1",
        ] {
            assert!(!p.permits_ip(ip(s)), "{s}");
        }
    }

    #[test]
    fn addresses_just_outside_default_ranges_are_allowed() {
        let p = policy(PeerPolicyConfig::default());
        for s in [
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "8.8.8.8",
            "2001:1::1",
            "2001:4860:4860::8888",
            "2003::1",
            "fe00::1",
            "2a00:1450:4001:80b::200e",
        ] {
            assert!(p.permits_ip(ip(s)), "{s} refused");
            assert!(p.permits_addr(SocketAddr::new(ip(s), 3478)), "{s} refused");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_cannot_bypass_ipv4_rules() {
        let p = policy(PeerPolicyConfig::default());
        for s in [
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:192.168.1.1",
        ] {
            assert!(!p.permits_ip(ip(s)), "{s}");
            assert!(!p.permits_addr(SocketAddr::new(ip(s), 9)), "{s}");
        }
        // ...and a mapped public address is as good as the IPv4 one.
        assert!(p.permits_ip(ip("::ffff:8.8.8.8")));
        assert_eq!(canonical(ip("::ffff:8.8.8.8")), ip("8.8.8.8"));
    }

    #[test]
    fn ipv4_compatible_and_unspecified_are_refused() {
        let p = policy(PeerPolicyConfig::default());
        for s in ["0.0.0.0", "::", "::127.0.0.1", "::8.8.8.8", "::1"] {
            assert!(!p.permits_ip(ip(s)), "{s}");
        }
        // Not treated as IPv4: canonical leaves it IPv6.
        assert_eq!(canonical(ip("::127.0.0.1")), ip("::127.0.0.1"));
    }

    #[test]
    fn operator_allow_overrides_the_default_list() {
        let p = policy(PeerPolicyConfig {
            allow: vec![cidr("10.1.0.0/16"), cidr("fd00:1::/32")],
            ..PeerPolicyConfig::default()
        });
        assert!(p.permits_ip(ip("10.1.2.3")));
        assert!(p.permits_ip(ip("::ffff:10.1.2.3")));
        assert!(p.permits_addr(sa("10.1.255.255:1")));
        assert!(p.permits_ip(ip("fd00:1::5")));
        // Only the allowed part of 10/8 opens.
        assert!(!p.permits_ip(ip("10.2.0.1")));
        assert!(!p.permits_ip(ip("fd00:2::5")));
    }

    #[test]
    fn operator_deny_overrides_everything() {
        let p = policy(PeerPolicyConfig {
            allow: vec![cidr("8.8.0.0/16"), cidr("127.0.0.0/8")],
            deny: vec![
                cidr("8.8.8.0/24"),
                cidr("2001:4860::/32"),
                cidr("127.0.0.2"),
            ],
            allow_loopback: true,
            relay_ips: vec![ip("8.8.8.1")],
            ..PeerPolicyConfig::default()
        });
        assert!(!p.permits_ip(ip("8.8.8.8")));
        assert!(!p.permits_ip(ip("::ffff:8.8.8.8")));
        assert!(
            !p.permits_addr(sa("8.8.8.1:50000")),
            "deny beats own relay address"
        );
        assert!(!p.permits_ip(ip("2001:4860:4860::8888")));
        assert!(
            !p.permits_ip(ip("127.0.0.2")),
            "deny beats allow and allow_loopback"
        );
        assert!(p.permits_ip(ip("127.0.0.3")));
        assert!(p.permits_ip(ip("8.8.4.4")));
    }

    #[test]
    fn allow_loopback_admits_loopback_only() {
        let p = policy(PeerPolicyConfig {
            allow_loopback: true,
            ..PeerPolicyConfig::default()
        });
        assert!(p.permits_ip(ip("127.0.0.1")));
        assert!(p.permits_ip(ip("127.255.255.254")));
        assert!(p.permits_ip(ip("::1")));
        assert!(p.permits_ip(ip("::ffff:127.0.0.1")));
        assert!(p.permits_addr(sa("127.0.0.1:40000")));
        assert!(!p.permits_ip(ip("0.0.0.0")));
        assert!(!p.permits_ip(ip("::")));
        assert!(!p.permits_ip(ip("10.0.0.1")));
        assert!(!p.permits_ip(ip("::127.0.0.1")));
        let off = policy(PeerPolicyConfig::default());
        assert!(!off.permits_ip(ip("127.0.0.1")));
        assert!(!off.permits_ip(ip("::1")));
    }

    #[test]
    fn own_listening_socket_is_refused_even_when_allowed() {
        let p = policy(PeerPolicyConfig {
            allow: vec![cidr("127.0.0.0/8"), cidr("::/0")],
            allow_loopback: true,
            listen: vec![sa("127.0.0.1:3478"), sa("[::1]:3478")],
            relay_ips: vec![ip("127.0.0.1")],
            relay_ports: 1024..=65535,
            ..PeerPolicyConfig::default()
        });
        assert!(!p.permits_addr(sa("127.0.0.1:3478")));
        assert!(!p.permits_addr(sa("[::ffff:127.0.0.1]:3478")));
        assert!(!p.permits_addr(sa("[::1]:3478")));
        // Other ports on the same IP are fine, and CreatePermission is by IP only.
        assert!(p.permits_addr(sa("127.0.0.1:3479")));
        assert!(p.permits_ip(ip("127.0.0.1")));
    }

    #[test]
    fn wildcard_listening_socket_refuses_its_port_everywhere() {
        let p = policy(PeerPolicyConfig {
            listen: vec![sa("0.0.0.0:3478")],
            ..PeerPolicyConfig::default()
        });
        assert!(!p.permits_addr(sa("8.8.8.8:3478")));
        assert!(p.permits_addr(sa("8.8.8.8:3479")));
    }

    #[test]
    fn own_relay_addresses_are_reachable_on_relay_ports_only() {
        let p = policy(PeerPolicyConfig {
            listen: vec![sa("10.0.0.5:3478")],
            relay_ips: vec![ip("10.0.0.5")],
            relay_ports: 49152..=65535,
            ..PeerPolicyConfig::default()
        });
        assert!(p.permits_addr(sa("10.0.0.5:49152")));
        assert!(p.permits_addr(sa("10.0.0.5:65535")));
        assert!(
            !p.permits_addr(sa("10.0.0.5:53")),
            "a non-relay port on a private relay IP"
        );
        assert!(!p.permits_addr(sa("10.0.0.5:3478")));
        assert!(p.permits_ip(ip("10.0.0.5")));
        assert!(!p.permits_ip(ip("10.0.0.6")));
        // A public relay IP is reachable on any port anyway (it is public).
        let public = policy(PeerPolicyConfig {
            relay_ips: vec![ip("8.8.8.8")],
            ..PeerPolicyConfig::default()
        });
        assert!(public.permits_addr(sa("8.8.8.8:53")));
    }

    #[test]
    fn cidr_parsing_and_display() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(cidr("2001:db8::1").to_string(), "2001:db8::1/128");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
        // IPv4-mapped networks become IPv4 networks.
        assert_eq!(cidr("::ffff:10.0.0.0/104"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("::ffff:10.0.0.1"), cidr("10.0.0.1/32"));
        assert!(cidr("10.0.0.0/8").contains(ip("10.255.0.1")));
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.255.0.1")));
        assert!(!cidr("10.0.0.0/8").contains(ip("11.0.0.0")));
        assert!(
            !cidr("0.0.0.0/0").contains(ip("::1")),
            "families never match"
        );
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
    }

    #[test]
    fn cidr_parsing_errors() {
        let err = |s: &str| s.parse::<Cidr>().unwrap_err();
        assert_eq!(
            err("10.0.0.1/8"),
            CidrError::HostBitsSet {
                addr: ip("10.0.0.1"),
                prefix: 8,
                network: ip("10.0.0.0"),
            }
        );
        assert!(err("10.0.0.1/8").to_string().contains("10.0.0.0/8"));
        assert!(matches!(
            err("2001:db8::1/32"),
            CidrError::HostBitsSet { .. }
        ));
        assert_eq!(
            err("10.0.0.0/33"),
            CidrError::PrefixTooLong {
                prefix: 33,
                max: 32
            }
        );
        assert_eq!(
            err("::/129"),
            CidrError::PrefixTooLong {
                prefix: 129,
                max: 128
            }
        );
        assert_eq!(
            err("::/4294967296"),
            CidrError::BadPrefix("4294967296".into())
        );
        assert_eq!(
            err("10.0.0.0/300"),
            CidrError::PrefixTooLong {
                prefix: 300,
                max: 32
            }
        );
        assert_eq!(err("10.0.0.0/"), CidrError::BadPrefix(String::new()));
        assert_eq!(err("10.0.0.0/+8"), CidrError::BadPrefix("+8".into()));
        assert_eq!(err("10.0.0.0/8/8"), CidrError::BadPrefix("8/8".into()));
        assert_eq!(err("10.0.0/8"), CidrError::BadAddress("10.0.0".into()));
        assert_eq!(err(""), CidrError::BadAddress(String::new()));
        assert_eq!(
            err(" 10.0.0.0/8"),
            CidrError::BadAddress(" 10.0.0.0".into())
        );
        assert_eq!(
            Cidr::new(ip("10.0.0.0"), 40),
            Err(CidrError::PrefixTooLong {
                prefix: 40,
                max: 32
            })
        );
    }

    proptest::proptest! {
        /// The precomputed integer matching agrees with `Cidr::contains` over the default list,
        /// for every address, and the IPv4-mapped form of an address is judged like the address.
        #[test]
        fn permits_agrees_with_reference(v4 in proptest::num::u32::ANY, v6 in proptest::num::u128::ANY, port in proptest::num::u16::ANY) {
            let p = policy(PeerPolicyConfig::default());
            for a in [IpAddr::V4(v4.into()), IpAddr::V6(v6.into())] {
                let refused = default_deny_list().any(|c| c.contains(a));
                proptest::prop_assert_eq!(p.permits_ip(a), !refused, "{}", a);
                proptest::prop_assert_eq!(p.permits_addr(SocketAddr::new(a, port)), !refused, "{}", a);
            }
            let v4 = Ipv4Addr::from(v4);
            proptest::prop_assert_eq!(p.permits_ip(IpAddr::V6(v4.to_ipv6_mapped())), p.permits_ip(IpAddr::V4(v4)));
        }

        #[test]
        fn cidr_parse_never_panics_and_round_trips(s in "\\PC{0,50}", a in proptest::num::u128::ANY, prefix in 0u8..=128) {
            let _ = s.parse::<Cidr>();
            let addr = IpAddr::V6(a.into());
            let c = Cidr::new(mask_addr(addr, prefix), prefix).unwrap();
            proptest::prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
        }
    }
}
