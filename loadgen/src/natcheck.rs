//! `loadgen natcheck --server HOST:PORT`: finds out how the NAT in front of this host maps and
//! filters UDP, with the tests of RFC 5780 sections 4.3 and 4.4 against a STUN server that
//! supports them (OTHER-ADDRESS, CHANGE-REQUEST: uturn with NAT behaviour discovery on).
//!
//! [`NatCheck`] is the sans-IO state machine: it writes Binding requests into the caller's
//! buffer, takes the responses in, keeps the retransmission timers, and ends in a [`Report`] or a
//! [`NatCheckError`]. [`run`] drives it over two real UDP sockets.
//!
//! The tests, in order:
//! - Mapping, on one socket (section 4.3): test I to the primary address gives the mapped address
//!   M1 and the server's OTHER-ADDRESS A; M1 equal to the local address means no NAT. Test II to
//!   A's IP with the primary port gives M2: M2 = M1 is endpoint-independent mapping. Test III to
//!   A itself gives M3: M3 = M2 is address-dependent, otherwise address- and port-dependent.
//! - Filtering, on a second, fresh socket (section 4.4): test II asks the primary address to
//!   answer from the other IP and port (CHANGE-REQUEST with both flags): an answer means
//!   endpoint-independent filtering. Otherwise test III asks for the other port only: an answer
//!   means address-dependent filtering, silence address- and port-dependent.
//!
//! The filtering tests use their own socket because the mapping tests have already sent to A's
//! IP and port through the first socket's mapping: behind an endpoint-independent mapping with
//! address-dependent filtering those destinations would be let back in, and the filtering would
//! read as endpoint-independent. A fresh mapping has sent to the primary address only, which is
//! what section 4.4 assumes.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use uturn_proto::client::{RetransmitPolicy, TransactionIds, Transactions, Transport};
use uturn_proto::stun::attr::{ChangeRequest, ErrorCode, OtherAddress, XorMappedAddress};
use uturn_proto::stun::{Class, EncodeError, Encoder, Message, MessageType, Method};

use crate::nat::{Filtering, Mapping};

/// Sends at 0, 200, 600 and 1400 ms and gives up at 3 s. A filtering test that gets no answer
/// costs that long; the silence is the answer, so it cannot be shortened much without reading
/// packet loss as filtering.
pub const NATCHECK_RETRANSMIT: RetransmitPolicy = RetransmitPolicy {
    rto: Duration::from_millis(200),
    max_transmits: 4,
    last_wait_factor: 8,
    reliable_timeout: Duration::from_secs(3),
};

/// Which of the two local sockets a request leaves from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The mapping tests' socket.
    Mapping,
    /// The filtering tests' fresh socket.
    Filtering,
}

/// A request to send: `buf[..len]` from the `leg` socket to `to`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub leg: Leg,
    pub to: SocketAddr,
    pub len: usize,
}

/// What the tests found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The mapping socket's address as the server saw it (test I).
    pub mapped: SocketAddr,
    /// The mapping socket's own address.
    pub local: SocketAddr,
    /// The server's OTHER-ADDRESS.
    pub other: SocketAddr,
    /// False when the mapped address is the local one: no NAT (a firewall may still filter).
    pub behind_nat: bool,
    /// RFC 4787 section 4.1. Without a NAT, endpoint-independent.
    pub mapping: Mapping,
    /// RFC 4787 section 5.
    pub filtering: Filtering,
}

/// Why the tests could not finish.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NatCheckError {
    #[error("no answer to test I from {0}: is a STUN server listening on UDP there?")]
    NoAnswer(SocketAddr),
    #[error("{0} does not support RFC 5780 (no OTHER-ADDRESS in its Binding response): turn NAT behaviour discovery on, with an alternate address")]
    NoOtherAddress(SocketAddr),
    #[error("no answer from the server's other address {0} (mapping test {1}): is it reachable?")]
    OtherUnreachable(SocketAddr, &'static str),
    #[error("the server answered {code} to {test}")]
    ErrorResponse { test: &'static str, code: u16 },
    #[error("the server's response to {0} has no mapped address")]
    BadResponse(&'static str),
    #[error("cannot write a request: {0}")]
    Encode(EncodeError),
    #[error("the answer to {test} came from {from}, not from {expected}: the server ignores CHANGE-REQUEST, so filtering cannot be told")]
    ChangeIgnored {
        test: &'static str,
        from: SocketAddr,
        expected: SocketAddr,
    },
}

/// One test of section 4.3 or 4.4.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Test {
    MappingI,
    MappingII,
    MappingIII,
    FilteringII,
    FilteringIII,
}

impl Test {
    fn leg(self) -> Leg {
        match self {
            Test::MappingI | Test::MappingII | Test::MappingIII => Leg::Mapping,
            Test::FilteringII | Test::FilteringIII => Leg::Filtering,
        }
    }

    fn change(self) -> Option<ChangeRequest> {
        match self {
            Test::FilteringII => Some(ChangeRequest {
                change_ip: true,
                change_port: true,
            }),
            Test::FilteringIII => Some(ChangeRequest {
                change_ip: false,
                change_port: true,
            }),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Test::MappingI => "mapping test I",
            Test::MappingII => "mapping test II",
            Test::MappingIII => "mapping test III",
            Test::FilteringII => "filtering test II",
            Test::FilteringIII => "filtering test III",
        }
    }
}

/// The RFC 5780 behaviour tests as a sans-IO machine. See the [module documentation](self).
#[derive(Debug)]
pub struct NatCheck {
    server: SocketAddr,
    local: SocketAddr,
    ids: TransactionIds,
    /// At most one test is outstanding; its retransmissions follow the policy.
    tx: Transactions<Test>,
    mapped: [Option<SocketAddr>; 2],
    other: Option<SocketAddr>,
    behind_nat: bool,
    mapping: Option<Mapping>,
    outcome: Option<Result<Report, NatCheckError>>,
}

impl NatCheck {
    /// Starts test I at `now`. `local` is the mapping socket's own address (to tell "no NAT");
    /// `seed` makes the transaction ids unpredictable.
    pub fn new(
        now: Instant,
        server: SocketAddr,
        local: SocketAddr,
        policy: RetransmitPolicy,
        seed: [u8; 32],
    ) -> Self {
        let mut n = NatCheck {
            server,
            local,
            ids: TransactionIds::new(seed),
            tx: Transactions::new(1, policy, Transport::Udp),
            mapped: [None; 2],
            other: None,
            behind_nat: true,
            mapping: None,
            outcome: None,
        };
        n.begin(now, Test::MappingI, server);
        n
    }

    /// The report, or why there is none, once the tests are over.
    pub fn outcome(&self) -> Option<&Result<Report, NatCheckError>> {
        self.outcome.as_ref()
    }

    fn begin(&mut self, now: Instant, test: Test, to: SocketAddr) {
        let id = self.ids.next_id();
        // The table holds one transaction and the previous one has ended, so this cannot fail.
        let _ = self.tx.start(now, id, to, test);
    }

    /// Ends the tests; nothing is sent or timed after this.
    fn finish(&mut self, outcome: Result<Report, NatCheckError>) {
        self.outcome = Some(outcome);
    }

    /// The next request to send (first copy or retransmission), written into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if self.outcome.is_some() {
            return None;
        }
        let (id, to, test) = self.tx.poll_transmit().map(|(id, to, t)| (id, to, *t))?;
        let written = (|| {
            let typ = MessageType::new(Method::BINDING, Class::Request);
            let mut e = Encoder::new(buf, typ, id)?;
            if let Some(c) = test.change() {
                e.add(&c)?;
            }
            e.fingerprint()?;
            Ok(e.finish())
        })();
        match written {
            Ok(len) => Some(Transmit {
                leg: test.leg(),
                to,
                len,
            }),
            Err(e) => {
                self.finish(Err(NatCheckError::Encode(e)));
                None
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        self.tx.poll_timeout()
    }

    /// Retransmits, and moves on when a test got no answer: for the filtering tests silence is
    /// a result, for the others an error.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        self.tx.handle_timeout(now);
        while let Some((_, test)) = self.tx.pop_expired(now) {
            match test {
                Test::MappingI => self.finish(Err(NatCheckError::NoAnswer(self.server))),
                Test::MappingII | Test::MappingIII => {
                    let other = self.other.unwrap_or(self.server);
                    self.finish(Err(NatCheckError::OtherUnreachable(other, test.name())));
                }
                Test::FilteringII => self.begin(now, Test::FilteringIII, self.server),
                Test::FilteringIII => self.done(Filtering::AddressAndPortDependent),
            }
        }
    }

    /// A datagram arrived on `leg`'s socket from `from`. Anything but a response to the test
    /// outstanding is ignored.
    pub fn handle_input(&mut self, now: Instant, leg: Leg, from: SocketAddr, data: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        let Ok(msg) = Message::parse(data) else {
            return;
        };
        if msg.method() != Method::BINDING
            || !matches!(msg.class(), Class::Success | Class::Error)
            || (msg.has_fingerprint() && msg.check_fingerprint().is_err())
        {
            return;
        }
        let id = msg.transaction_id();
        let Some(&test) = self.tx.get(&id) else {
            return;
        };
        if test.leg() != leg {
            return;
        }
        self.tx.remove(&id);
        if msg.class() == Class::Error {
            let code = msg
                .get::<ErrorCode<'_>>()
                .ok()
                .flatten()
                .map_or(0, |e| e.code);
            return self.finish(Err(NatCheckError::ErrorResponse {
                test: test.name(),
                code,
            }));
        }
        let mapped = msg.get::<XorMappedAddress>().ok().flatten().map(|a| a.0);
        match test {
            Test::MappingI => {
                let Some(m1) = mapped else {
                    return self.finish(Err(NatCheckError::BadResponse(test.name())));
                };
                let Some(OtherAddress(other)) = msg.get::<OtherAddress>().ok().flatten() else {
                    return self.finish(Err(NatCheckError::NoOtherAddress(self.server)));
                };
                self.mapped[0] = Some(m1);
                self.other = Some(other);
                if m1 == self.local {
                    // Section 4.3: no NAT; only the filtering of a firewall is left to find.
                    self.behind_nat = false;
                    self.mapping = Some(Mapping::EndpointIndependent);
                    self.begin(now, Test::FilteringII, self.server);
                } else {
                    let to = SocketAddr::new(other.ip(), self.server.port());
                    self.begin(now, Test::MappingII, to);
                }
            }
            Test::MappingII => {
                let Some(m2) = mapped else {
                    return self.finish(Err(NatCheckError::BadResponse(test.name())));
                };
                if Some(m2) == self.mapped[0] {
                    self.mapping = Some(Mapping::EndpointIndependent);
                    self.begin(now, Test::FilteringII, self.server);
                } else {
                    self.mapped[1] = Some(m2);
                    let other = self.other.unwrap_or(self.server);
                    self.begin(now, Test::MappingIII, other);
                }
            }
            Test::MappingIII => {
                let Some(m3) = mapped else {
                    return self.finish(Err(NatCheckError::BadResponse(test.name())));
                };
                self.mapping = Some(if Some(m3) == self.mapped[1] {
                    Mapping::AddressDependent
                } else {
                    Mapping::AddressAndPortDependent
                });
                self.begin(now, Test::FilteringII, self.server);
            }
            // An answer to a CHANGE-REQUEST says something only if it came from where it was
            // asked to come from (section 4.4): a server that answers from its primary address
            // would make every NAT look endpoint-independent.
            Test::FilteringII | Test::FilteringIII => {
                let other = self.other.unwrap_or(self.server);
                let expected = if test == Test::FilteringII {
                    other
                } else {
                    SocketAddr::new(self.server.ip(), other.port())
                };
                if from != expected {
                    return self.finish(Err(NatCheckError::ChangeIgnored {
                        test: test.name(),
                        from,
                        expected,
                    }));
                }
                self.done(if test == Test::FilteringII {
                    Filtering::EndpointIndependent
                } else {
                    Filtering::AddressDependent
                });
            }
        }
    }

    fn done(&mut self, filtering: Filtering) {
        let (Some(mapped), Some(other), Some(mapping)) = (self.mapped[0], self.other, self.mapping)
        else {
            // Filtering tests start only after the mapping tests filled these in.
            return self.finish(Err(NatCheckError::BadResponse("mapping test I")));
        };
        self.finish(Ok(Report {
            mapped,
            local: self.local,
            other,
            behind_nat: self.behind_nat,
            mapping,
            filtering,
        }))
    }
}

fn mapping_text(m: Mapping) -> &'static str {
    match m {
        Mapping::EndpointIndependent => "endpoint-independent",
        Mapping::AddressDependent => "address-dependent",
        Mapping::AddressAndPortDependent => "address- and port-dependent",
    }
}

fn filtering_text(f: Filtering) -> &'static str {
    match f {
        Filtering::EndpointIndependent => "endpoint-independent",
        Filtering::AddressDependent => "address-dependent",
        Filtering::AddressAndPortDependent => "address- and port-dependent",
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "local address:  {}", self.local)?;
        writeln!(f, "mapped address: {}", self.mapped)?;
        writeln!(f, "other address:  {} (the server's)", self.other)?;
        if self.behind_nat {
            writeln!(
                f,
                "mapping:        {} ({})",
                mapping_text(self.mapping),
                self.mapping.short()
            )?;
        } else {
            writeln!(f, "mapping:        none, no NAT (mapped = local address)")?;
        }
        writeln!(
            f,
            "filtering:      {} ({})",
            filtering_text(self.filtering),
            self.filtering.short()
        )?;
        write!(
            f,
            "as --nat:       {}-{}",
            self.mapping.short(),
            self.filtering.short()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Over real sockets.

/// `loadgen natcheck`: how the NAT in front of this host behaves (RFC 5780).
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen natcheck", bin_name = "loadgen natcheck")]
pub struct NatcheckArgs {
    /// A STUN server with RFC 5780 support, HOST:PORT (UDP).
    #[arg(long, value_name = "HOST:PORT")]
    pub server: String,
    /// The first retransmission timeout; a test without answer is given up after 15 times it.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub rto: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

/// The policy [`NATCHECK_RETRANSMIT`] with another RTO.
pub fn policy_with_rto(rto: Duration) -> RetransmitPolicy {
    RetransmitPolicy {
        rto,
        ..NATCHECK_RETRANSMIT
    }
}

/// The local IP address the host sends from towards `server` (a connected UDP socket learns it
/// from the routing table; nothing is sent).
fn local_ip_towards(server: SocketAddr) -> io::Result<IpAddr> {
    let any: IpAddr = if server.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind((any, 0))?;
    s.connect(server)?;
    Ok(s.local_addr()?.ip())
}

/// Runs the tests against `server` from two fresh UDP sockets on the host's address towards it.
pub fn run(server: SocketAddr, policy: RetransmitPolicy) -> anyhow::Result<Report> {
    let ip = local_ip_towards(server)?;
    let mapping = UdpSocket::bind((ip, 0))?;
    let filtering = UdpSocket::bind((ip, 0))?;
    let socket = |leg: Leg| match leg {
        Leg::Mapping => &mapping,
        Leg::Filtering => &filtering,
    };
    for s in [&mapping, &filtering] {
        s.set_nonblocking(true)?;
    }
    let seed: [u8; 32] = rand::random();
    let mut nc = NatCheck::new(Instant::now(), server, mapping.local_addr()?, policy, seed);
    let mut buf = [0u8; 1500];
    loop {
        while let Some(t) = nc.poll_transmit(&mut buf) {
            // A send that fails (an ICMP error reported late, say) is a lost request: the
            // retransmissions and the timeout deal with it.
            let _ = socket(t.leg).send_to(&buf[..t.len], t.to);
        }
        if let Some(outcome) = nc.outcome() {
            return outcome.map_err(anyhow::Error::from);
        }
        let mut got = false;
        for leg in [Leg::Mapping, Leg::Filtering] {
            while let Ok((n, from)) = socket(leg).recv_from(&mut buf) {
                nc.handle_input(Instant::now(), leg, from, &buf[..n]);
                got = true;
            }
        }
        let now = Instant::now();
        if nc.poll_timeout().is_some_and(|t| t <= now) {
            nc.handle_timeout(now);
        } else if !got {
            // Two sockets and a few datagrams a second: polling every 2 ms is simpler than an
            // event loop and costs nothing measurable.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The `natcheck` subcommand, from its own arguments (the first is the subcommand's name).
/// Exit codes: 0 done, 1 the tests could not be run, 2 bad flags.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = NatcheckArgs::parse_from(args);
    let server = match args.server.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(s)) => s,
        Ok(None) | Err(_) => {
            eprintln!("loadgen natcheck: --server {}: not an address", args.server);
            return ExitCode::from(2);
        }
    };
    match run(server, policy_with_rto(args.rto)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen natcheck: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests;
