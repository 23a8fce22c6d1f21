//! A sans-IO NAT emulator with the behaviours of RFC 4787, an emulated LAN behind each NAT, and an
//! in-process mDNS resolver.
//!
//! loadgen puts every agent's network behind one of these instead of a real NAT: the agents
//! live on private addresses (`10.a.b.c`) that exist only in this emulator, and only a NAT's
//! public side owns real sockets, each NAT on its own loopback address (`127.x.y.z`). The
//! emulator decides, the embedder (a loadgen worker) moves bytes:
//!
//! - [`Nat`] is one NAT box: [`Nat::translate_out`] maps a private source to a public port
//!   (creating or refreshing a mapping per the [`Mapping`] behaviour), [`Nat::translate_in`]
//!   applies the [`Filtering`] behaviour to a datagram arriving on a public port, and
//!   [`Nat::handle_timeout`] expires idle mappings. When a mapping is created the embedder opens a
//!   real socket at the returned public address; when [`NatEvent::Closed`] comes out it closes it.
//! - [`Network`] is the set of emulated LANs of one worker: it routes a private host's datagram
//!   to a host on the same LAN (in process), back in through its own NAT (hairpinning) or out
//!   through the NAT onto the wire.
//! - [`Mdns`] resolves `.local` names only for hosts on the same emulated LAN.
//! - [`NatSpec`] is `--nat`: `eim-eif`, `apdm-apdf:timeout=30s`, `mix`, ...
//!
//! Nothing here reads a clock, draws randomness on its own or owns a socket.

mod mdns;
pub mod network;
mod spec;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

pub use mdns::{Mdns, MdnsError};
pub use network::{DropReason, LanId, NetError, NetEvent, Network, Route};
pub use spec::{NatSpec, SpecError};

/// RFC 4787 section 4.1: when a NAT reuses a mapping for a private endpoint X:x.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mapping {
    /// The same mapping for every destination (`eim`).
    EndpointIndependent,
    /// The same mapping for every port of one destination address (`adm`).
    AddressDependent,
    /// One mapping per destination address and port (`apdm`).
    AddressAndPortDependent,
}

/// RFC 4787 section 5: which inbound datagrams a mapping lets through to X:x.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Filtering {
    /// Any source (`eif`).
    EndpointIndependent,
    /// Only sources whose address X:x has sent to through this mapping (`adf`).
    AddressDependent,
    /// Only sources whose address and port X:x has sent to through this mapping (`apdf`).
    AddressAndPortDependent,
}

impl Mapping {
    pub const ALL: [Mapping; 3] = [
        Mapping::EndpointIndependent,
        Mapping::AddressDependent,
        Mapping::AddressAndPortDependent,
    ];

    /// The short name used by `--nat` and in reports.
    pub fn short(self) -> &'static str {
        match self {
            Mapping::EndpointIndependent => "eim",
            Mapping::AddressDependent => "adm",
            Mapping::AddressAndPortDependent => "apdm",
        }
    }
}

impl Filtering {
    pub const ALL: [Filtering; 3] = [
        Filtering::EndpointIndependent,
        Filtering::AddressDependent,
        Filtering::AddressAndPortDependent,
    ];

    /// The short name used by `--nat` and in reports.
    pub fn short(self) -> &'static str {
        match self {
            Filtering::EndpointIndependent => "eif",
            Filtering::AddressDependent => "adf",
            Filtering::AddressAndPortDependent => "apdf",
        }
    }
}

/// RFC 4787 REQ-5: a UDP mapping must not expire in less than two minutes. The default is that
/// minimum, the least generous compliant NAT; `--nat ...:timeout=30s` emulates worse ones.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Public ports a NAT hands out: below Linux's ephemeral range (32768-60999) and below the
/// relay's default relay ports (49152-65535), so a NAT's bind at `127.x.y.z:port` rarely meets a
/// wildcard bind of another socket on the same port.
pub const DEFAULT_PORTS: RangeInclusive<u16> = 20000..=32767;

/// Most destinations a mapping remembers for address- and port-dependent filtering. Agents send
/// to a handful of candidates each; the bound keeps memory fixed whatever they do. When full,
/// the destination sent to least recently is forgotten.
pub const MAX_PERMITTED: usize = 64;

/// How one NAT behaves.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct NatBehavior {
    pub mapping: Mapping,
    pub filtering: Filtering,
    /// How long a mapping lives after the last outbound datagram that used it.
    pub timeout: Duration,
}

impl NatBehavior {
    pub fn new(mapping: Mapping, filtering: Filtering) -> Self {
        NatBehavior {
            mapping,
            filtering,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Every mapping x filtering combination, for `--nat-matrix`, in a stable order.
    pub fn all(timeout: Duration) -> Vec<NatBehavior> {
        Mapping::ALL
            .iter()
            .flat_map(|&mapping| {
                Filtering::ALL.iter().map(move |&filtering| NatBehavior {
                    mapping,
                    filtering,
                    timeout,
                })
            })
            .collect()
    }
}

impl fmt::Display for NatBehavior {
    /// `eim-eif`, the form `--nat` takes (the timeout is left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.mapping.short(), self.filtering.short())
    }
}

/// The outcome of [`Nat::translate_out`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    /// The public source: send the datagram from a real socket bound here.
    pub public: SocketAddrV4,
    /// The mapping was created by this datagram: open the socket at `public` first. If that
    /// fails, call [`Nat::open_failed`].
    pub opened: bool,
}

/// Why an inbound datagram was not let through.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// No live mapping on that public port (never made, or expired).
    NoMapping,
    /// A mapping exists but its filtering refuses this source.
    Filtered,
}

/// What a NAT tells its embedder outside of a call's return value.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NatEvent {
    /// The mapping on this public address expired or was dropped: close its socket.
    Closed(SocketAddrV4),
}

/// Why a mapping could not be made.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    #[error("the NAT at {0} has no free public port")]
    PortsExhausted(Ipv4Addr),
}

/// The destination part of a mapping's key: what the mapping behaviour looks at.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
enum Dest {
    Any,
    Addr(Ipv4Addr),
    Endpoint(SocketAddrV4),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    private: SocketAddrV4,
    dest: Dest,
}

#[derive(Debug)]
struct Entry {
    key: Key,
    expires: Instant,
    /// Destinations sent to through this mapping, most recent last (filtering state).
    permitted: Vec<SocketAddrV4>,
}

/// One NAT box. See the [module documentation](self).
///
/// Timeouts (RFC 4787 REQ-6): outbound datagrams refresh a mapping, inbound ones do not. That is
/// the behaviour RFC 4787 requires at the least, and it makes agents keep their mappings alive
/// themselves (ICE consent checks, TURN refreshes) instead of leaning on their peers' traffic.
///
/// Hairpinning (RFC 4787 REQ-9): supported, with the external source address and port (REQ-9a).
/// It is done by [`Network`], which owns the LAN: a datagram from a private host to its own NAT's
/// public address is translated out (creating or refreshing the sender's mapping), then in
/// through the destination mapping's filtering, and delivered in process.
#[derive(Debug)]
pub struct Nat {
    public_ip: Ipv4Addr,
    behavior: NatBehavior,
    ports: PortPool,
    by_key: HashMap<Key, u16>,
    by_port: HashMap<u16, Entry>,
    /// Deadline per mapping, checked lazily: a refreshed mapping is pushed back when its old
    /// deadline comes up, so the heap holds one entry per mapping.
    deadlines: BinaryHeap<Reverse<(Instant, u16)>>,
    events: VecDeque<NatEvent>,
}

impl Nat {
    /// A NAT on `public_ip` handing out ports from [`DEFAULT_PORTS`].
    pub fn new(public_ip: Ipv4Addr, behavior: NatBehavior) -> Self {
        Self::with_ports(public_ip, behavior, DEFAULT_PORTS)
    }

    /// A NAT handing out public ports from `ports`.
    pub fn with_ports(
        public_ip: Ipv4Addr,
        behavior: NatBehavior,
        ports: RangeInclusive<u16>,
    ) -> Self {
        Nat {
            public_ip,
            behavior,
            ports: PortPool::new(ports),
            by_key: HashMap::new(),
            by_port: HashMap::new(),
            deadlines: BinaryHeap::new(),
            events: VecDeque::new(),
        }
    }

    /// Starts handing out ports at `port` (wrapping around the range) instead of at its start.
    /// Runs one after another reuse the same public addresses; a different starting port per run
    /// keeps a new run's 5-tuples off the allocations a previous run left on the server.
    pub fn starting_at(mut self, port: u16) -> Self {
        if let Some(i) = self.ports.index(port) {
            self.ports.cursor = i;
        }
        self
    }

    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip
    }

    pub fn behavior(&self) -> NatBehavior {
        self.behavior
    }

    /// Live mappings (some may be past their deadline until the next
    /// [`Nat::handle_timeout`]).
    pub fn mappings(&self) -> usize {
        self.by_port.len()
    }

    fn key(&self, private: SocketAddrV4, dst: SocketAddrV4) -> Key {
        let dest = match self.behavior.mapping {
            Mapping::EndpointIndependent => Dest::Any,
            Mapping::AddressDependent => Dest::Addr(*dst.ip()),
            Mapping::AddressAndPortDependent => Dest::Endpoint(dst),
        };
        Key { private, dest }
    }

    /// A datagram from `private` to `dst` leaves through the NAT: finds or creates the mapping
    /// its [`Mapping`] behaviour selects (RFC 4787 section 4.1), refreshes it (REQ-6) and records
    /// `dst` for filtering.
    pub fn translate_out(
        &mut self,
        now: Instant,
        private: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Result<Outbound, NatError> {
        let key = self.key(private, dst);
        let expires = now + self.behavior.timeout;
        let live = self
            .by_key
            .get(&key)
            .copied()
            .filter(|p| self.by_port.get(p).is_some_and(|e| e.expires > now));
        let (port, opened) = match live {
            Some(port) => (port, false),
            None => {
                // An expired mapping not yet reaped is gone for good: a new one gets a new port,
                // as a real NAT would, and the old socket is closed first.
                if let Some(old) = self.by_key.get(&key).copied() {
                    self.remove(old);
                }
                let port = self
                    .ports
                    .take()
                    .ok_or(NatError::PortsExhausted(self.public_ip))?;
                self.by_key.insert(key, port);
                self.by_port.insert(
                    port,
                    Entry {
                        key,
                        expires,
                        permitted: Vec::new(),
                    },
                );
                self.deadlines.push(Reverse((expires, port)));
                (port, true)
            }
        };
        if let Some(e) = self.by_port.get_mut(&port) {
            e.expires = expires;
            if self.behavior.filtering != Filtering::EndpointIndependent {
                if let Some(i) = e.permitted.iter().position(|&d| d == dst) {
                    e.permitted.remove(i);
                } else if e.permitted.len() >= MAX_PERMITTED {
                    e.permitted.remove(0);
                }
                e.permitted.push(dst);
            }
        }
        Ok(Outbound {
            public: SocketAddrV4::new(self.public_ip, port),
            opened,
        })
    }

    /// A datagram from `from` arrived on public port `port`: the private endpoint to deliver it
    /// to, if the mapping exists and its [`Filtering`] behaviour lets `from` through (RFC 4787
    /// section 5). Inbound traffic does not refresh the mapping.
    pub fn translate_in(
        &self,
        now: Instant,
        port: u16,
        from: SocketAddrV4,
    ) -> Result<SocketAddrV4, Refused> {
        let e = self
            .by_port
            .get(&port)
            .filter(|e| e.expires > now)
            .ok_or(Refused::NoMapping)?;
        let allowed = match self.behavior.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => e.permitted.iter().any(|d| d.ip() == from.ip()),
            Filtering::AddressAndPortDependent => e.permitted.contains(&from),
        };
        if allowed {
            Ok(e.key.private)
        } else {
            Err(Refused::Filtered)
        }
    }

    /// The embedder could not open a socket at the public address [`Nat::translate_out`] just
    /// returned: the mapping is dropped and the port is never handed out again by this NAT.
    pub fn open_failed(&mut self, port: u16) {
        if let Some(e) = self.by_port.remove(&port) {
            self.by_key.remove(&e.key);
        }
        self.ports.retire(port);
    }

    /// Expires the mappings whose deadline passed; each gives a [`NatEvent::Closed`].
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, port))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(e) = self.by_port.get(&port) else {
                continue; // removed earlier (open_failed, expire_all, replaced)
            };
            if e.expires > now {
                self.deadlines.push(Reverse((e.expires, port)));
            } else {
                self.remove(port);
            }
        }
    }

    /// When [`Nat::handle_timeout`] next has something to do (possibly a little early).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    pub fn poll_event(&mut self) -> Option<NatEvent> {
        self.events.pop_front()
    }

    /// Drops every mapping at once, as a NAT reboot or a rebinding would (`--chaos`). Agents
    /// behind it get new public ports on their next outbound datagram.
    pub fn expire_all_mappings(&mut self) {
        let ports: Vec<u16> = self.by_port.keys().copied().collect();
        for p in ports {
            self.remove(p);
        }
        self.deadlines.clear();
    }

    fn remove(&mut self, port: u16) {
        if let Some(e) = self.by_port.remove(&port) {
            if self.by_key.get(&e.key) == Some(&port) {
                self.by_key.remove(&e.key);
            }
            self.ports.give_back(port);
            self.events
                .push_back(NatEvent::Closed(SocketAddrV4::new(self.public_ip, port)));
        }
    }
}

/// Public ports of one NAT. Handed out round-robin from a cursor so that a port just closed is
/// not reused at once: a datagram still in flight to the old mapping must not reach a new one.
#[derive(Debug)]
struct PortPool {
    range: RangeInclusive<u16>,
    /// One bit per port in `range`: in use or retired.
    used: Vec<u64>,
    retired: Vec<u64>,
    cursor: u32,
    free: u32,
}

impl PortPool {
    fn new(range: RangeInclusive<u16>) -> Self {
        let n = range.clone().count();
        let words = n.div_ceil(64);
        PortPool {
            range,
            used: vec![0; words],
            retired: vec![0; words],
            cursor: 0,
            free: n as u32,
        }
    }

    fn len(&self) -> u32 {
        self.range.clone().count() as u32
    }

    fn bit(i: u32) -> (usize, u64) {
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn take(&mut self) -> Option<u16> {
        let n = self.len();
        if self.free == 0 {
            return None;
        }
        for _ in 0..n {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % n;
            let (w, b) = Self::bit(i);
            if self.used[w] & b == 0 {
                self.used[w] |= b;
                self.free -= 1;
                return Some(self.range.start() + i as u16);
            }
        }
        None
    }

    fn index(&self, port: u16) -> Option<u32> {
        self.range
            .contains(&port)
            .then(|| u32::from(port - self.range.start()))
    }

    fn give_back(&mut self, port: u16) {
        let Some(i) = self.index(port) else { return };
        let (w, b) = Self::bit(i);
        if self.used[w] & b != 0 && self.retired[w] & b == 0 {
            self.used[w] &= !b;
            self.free += 1;
        }
    }

    /// Marks a port unusable for good (the embedder could not bind it).
    fn retire(&mut self, port: u16) {
        let Some(i) = self.index(port) else { return };
        let (w, b) = Self::bit(i);
        if self.used[w] & b == 0 {
            self.free -= 1;
        }
        self.used[w] |= b;
        self.retired[w] |= b;
    }
}

#[cfg(test)]
mod tests;
