//! The network between a worker's agents and its real sockets.
//!
//! An agent is either *direct* (no NAT: it owns a real UDP socket on loopback) or *private*
//! (behind an emulated NAT: it has a `10.a.b.c` endpoint that exists only in the [`Network`]).
//! Agents send through [`Fabric::send`] and receive what [`Fabric::recv`] and
//! [`Fabric::poll_local`] hand them, without knowing which they are: a private agent's datagram
//! is routed by the emulator onto the LAN, hairpinned, or sent from the NAT's public socket,
//! which the fabric opens when the mapping appears and closes when it expires.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use uturn::driver::{Io, SockId, StreamId};

use crate::nat::{DropReason, LanId, NatBehavior, NetError, NetEvent, Network, Refused, Route};

/// The part of the driver's [`Io`] the fabric needs, object-safe so that scenarios need not be
/// generic over the driver.
pub trait NetIo {
    fn open_udp(&mut self, addr: SocketAddr) -> io::Result<SockId>;
    fn local_addr(&self, sock: SockId) -> io::Result<SocketAddr>;
    fn close(&mut self, sock: SockId);
    fn send(&mut self, via: SockId, to: SocketAddr, bytes: &[u8]);
    /// TCP for `--transport tcp|tls` (see [`crate::stream_leg`]); without it, none.
    fn tcp_connect(&mut self, to: SocketAddr) -> io::Result<StreamId> {
        let _ = to;
        Err(io::ErrorKind::Unsupported.into())
    }
    fn stream_send(&mut self, id: StreamId, bytes: &[u8]) -> usize {
        let _ = (id, bytes);
        0
    }
    /// How many more bytes [`NetIo::stream_send`] takes now.
    fn stream_room(&self, id: StreamId) -> usize {
        let _ = id;
        0
    }
    fn stream_set_reading(&mut self, id: StreamId, on: bool) {
        let _ = (id, on);
    }
    fn stream_close(&mut self, id: StreamId) {
        let _ = id;
    }
}

/// Any driver [`Io`] as a [`NetIo`].
#[derive(Debug)]
pub struct DriverIo<'a, I: Io>(pub &'a mut I);

impl<I: Io> NetIo for DriverIo<'_, I> {
    fn open_udp(&mut self, addr: SocketAddr) -> io::Result<SockId> {
        self.0.open_udp(addr)
    }
    fn local_addr(&self, sock: SockId) -> io::Result<SocketAddr> {
        self.0.local_addr(sock)
    }
    fn close(&mut self, sock: SockId) {
        self.0.close(sock)
    }
    fn send(&mut self, via: SockId, to: SocketAddr, bytes: &[u8]) {
        self.0.send(via, to, bytes)
    }
    fn tcp_connect(&mut self, to: SocketAddr) -> io::Result<StreamId> {
        self.0.tcp_connect(None, to)
    }
    fn stream_send(&mut self, id: StreamId, bytes: &[u8]) -> usize {
        self.0.stream_send(id, bytes)
    }
    fn stream_room(&self, id: StreamId) -> usize {
        self.0.stream_room(id)
    }
    fn stream_set_reading(&mut self, id: StreamId, on: bool) {
        self.0.stream_set_reading(id, on)
    }
    fn stream_close(&mut self, id: StreamId) {
        self.0.stream_close(id)
    }
}

/// The port every private agent uses on its own host address.
pub const PRIVATE_PORT: u16 = 5000;
/// Most datagrams waiting for in-process delivery (LAN and hairpin traffic); more are dropped
/// and counted, like a full socket buffer.
pub const LOCAL_QUEUE: usize = 4096;

/// An agent of this worker, by index.
pub type AgentIx = usize;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    Direct { sock: SockId, addr: SocketAddr },
    Private { lan: LanId, addr: SocketAddrV4 },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Owner {
    Agent(AgentIx),
    Public(SocketAddrV4),
}

/// Datagrams the fabric dropped, by cause. Shown in the report, never silent.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FabricCounters {
    /// Outbound: to a private address of another LAN, or of nobody.
    pub unreachable: u64,
    /// Outbound: IPv6 from a private agent.
    pub ipv6: u64,
    /// Outbound: the NAT had no public port left or its socket could not be opened.
    pub nat_full: u64,
    /// Inbound (or hairpinned): no live mapping on that port.
    pub no_mapping: u64,
    /// Inbound (or hairpinned): refused by the NAT's filtering.
    pub filtered: u64,
    /// In-process deliveries dropped because the queue was full.
    pub local_overflow: u64,
    /// Datagrams on a socket the fabric no longer knows (closed this batch).
    pub stray: u64,
    /// NAT public sockets opened and closed.
    pub nat_sockets_opened: u64,
    pub nat_sockets_closed: u64,
}

/// Why an agent could not be added.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    #[error("cannot open a socket for an agent: {0}")]
    Socket(#[from] io::Error),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// See the [module documentation](self).
#[derive(Debug)]
pub struct Fabric {
    direct_ip: IpAddr,
    net: Network,
    agents: Vec<Option<Endpoint>>,
    owners: HashMap<SockId, Owner>,
    public: HashMap<SocketAddrV4, SockId>,
    private: HashMap<SocketAddrV4, AgentIx>,
    local: VecDeque<(AgentIx, SocketAddr, Vec<u8>)>,
    pub counters: FabricCounters,
}

impl Fabric {
    /// Direct agents bind `direct_ip` (loopback); emulated LANs take their ids from `lans`
    /// (disjoint per worker, see [`Network::new`]); `seed` picks where NATs start handing out
    /// ports (see [`Network::with_seed`]).
    pub fn new(direct_ip: IpAddr, lans: std::ops::Range<u32>, seed: u64) -> Self {
        Fabric {
            direct_ip,
            net: Network::with_seed(lans, seed),
            agents: Vec::new(),
            owners: HashMap::new(),
            public: HashMap::new(),
            private: HashMap::new(),
            local: VecDeque::new(),
            counters: FabricCounters::default(),
        }
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.net
    }

    /// A new emulated LAN behind a NAT.
    pub fn add_lan(&mut self, behavior: NatBehavior) -> Result<LanId, FabricError> {
        Ok(self.net.add_lan(behavior)?)
    }

    fn set(&mut self, ix: AgentIx, e: Endpoint) {
        if self.agents.len() <= ix {
            self.agents.resize(ix + 1, None);
        }
        self.agents[ix] = Some(e);
    }

    /// Gives agent `ix` a real socket; returns its address.
    pub fn add_direct_agent(
        &mut self,
        io: &mut dyn NetIo,
        ix: AgentIx,
    ) -> Result<SocketAddr, FabricError> {
        let sock = io.open_udp(SocketAddr::new(self.direct_ip, 0))?;
        let addr = match io.local_addr(sock) {
            Ok(a) => a,
            Err(e) => {
                io.close(sock);
                return Err(e.into());
            }
        };
        self.set(ix, Endpoint::Direct { sock, addr });
        self.owners.insert(sock, Owner::Agent(ix));
        Ok(addr)
    }

    /// Makes agent `ix` a new host on `lan`; returns its private address.
    pub fn add_private_agent(
        &mut self,
        lan: LanId,
        ix: AgentIx,
    ) -> Result<SocketAddr, FabricError> {
        let ip = self.net.add_host(lan)?;
        let addr = SocketAddrV4::new(ip, PRIVATE_PORT);
        self.set(ix, Endpoint::Private { lan, addr });
        self.private.insert(addr, ix);
        Ok(SocketAddr::V4(addr))
    }

    /// The agent's own (host) address: real for direct agents, private otherwise.
    pub fn address(&self, agent: AgentIx) -> Option<SocketAddr> {
        Some(match self.agents.get(agent)?.as_ref()? {
            Endpoint::Direct { addr, .. } => *addr,
            Endpoint::Private { addr, .. } => SocketAddr::V4(*addr),
        })
    }

    /// The LAN of a private agent.
    pub fn lan(&self, agent: AgentIx) -> Option<LanId> {
        match self.agents.get(agent)?.as_ref()? {
            Endpoint::Private { lan, .. } => Some(*lan),
            Endpoint::Direct { .. } => None,
        }
    }

    /// Sends `bytes` from `agent` to `to`. Returns false when the datagram went nowhere (the
    /// reason is counted).
    pub fn send(
        &mut self,
        now: Instant,
        io: &mut dyn NetIo,
        agent: AgentIx,
        to: SocketAddr,
        bytes: &[u8],
    ) -> bool {
        let from = match self.agents.get(agent) {
            Some(Some(Endpoint::Direct { sock, .. })) => {
                io.send(*sock, to, bytes);
                return true;
            }
            Some(Some(Endpoint::Private { addr, .. })) => *addr,
            _ => return false,
        };
        let route = self.net.send(now, from, to);
        let sent = match route {
            Route::Lan { to } => self.deliver_local(to, SocketAddr::V4(from), bytes),
            Route::Hairpin { to, from, opened } => {
                if opened && self.open_public(io, from).is_none() {
                    false
                } else {
                    match to {
                        Ok(to) => self.deliver_local(to, SocketAddr::V4(from), bytes),
                        Err(r) => {
                            self.count_refused(r);
                            false
                        }
                    }
                }
            }
            Route::Wire { via, to, .. } => {
                // Open on demand rather than trusting `opened` alone: a mapping made by a
                // hairpinned datagram whose socket failed to open must not be sent from blind.
                let sock = match self.public.get(&via) {
                    Some(&s) => Some(s),
                    None => self.open_public(io, via),
                };
                match sock {
                    Some(s) => {
                        io.send(s, to, bytes);
                        true
                    }
                    None => false,
                }
            }
            Route::Drop(r) => {
                match r {
                    DropReason::UnknownSource | DropReason::Unreachable => {
                        self.counters.unreachable += 1
                    }
                    DropReason::Ipv6 => self.counters.ipv6 += 1,
                    DropReason::NatFull => self.counters.nat_full += 1,
                }
                false
            }
        };
        self.apply_events(io);
        sent
    }

    fn count_refused(&mut self, r: Refused) {
        match r {
            Refused::NoMapping => self.counters.no_mapping += 1,
            Refused::Filtered => self.counters.filtered += 1,
        }
    }

    fn open_public(&mut self, io: &mut dyn NetIo, public: SocketAddrV4) -> Option<SockId> {
        match io.open_udp(SocketAddr::V4(public)) {
            Ok(s) => {
                self.public.insert(public, s);
                self.owners.insert(s, Owner::Public(public));
                self.counters.nat_sockets_opened += 1;
                Some(s)
            }
            Err(e) => {
                tracing::debug!(%public, error = %e, "cannot bind a NAT public socket");
                self.net.open_failed(public);
                self.counters.nat_full += 1;
                None
            }
        }
    }

    fn deliver_local(&mut self, to: SocketAddrV4, from: SocketAddr, bytes: &[u8]) -> bool {
        let Some(&agent) = self.private.get(&to) else {
            self.counters.unreachable += 1;
            return false;
        };
        if self.local.len() >= LOCAL_QUEUE {
            self.counters.local_overflow += 1;
            return false;
        }
        self.local.push_back((agent, from, bytes.to_vec()));
        true
    }

    /// A datagram arrived on real socket `sock` from `from`: the agent it is for and the source
    /// that agent sees, or `None` (dropped and counted).
    pub fn recv(
        &mut self,
        now: Instant,
        sock: SockId,
        from: SocketAddr,
    ) -> Option<(AgentIx, SocketAddr)> {
        match self.owners.get(&sock) {
            Some(Owner::Agent(a)) => Some((*a, from)),
            Some(Owner::Public(public)) => match self.net.receive(now, *public, from) {
                Ok(private) => match self.private.get(&private) {
                    Some(&a) => Some((a, from)),
                    None => {
                        self.counters.unreachable += 1;
                        None
                    }
                },
                Err(r) => {
                    self.count_refused(r);
                    None
                }
            },
            None => {
                self.counters.stray += 1;
                None
            }
        }
    }

    /// The next in-process delivery (LAN or hairpin): agent, source, datagram.
    pub fn poll_local(&mut self) -> Option<(AgentIx, SocketAddr, Vec<u8>)> {
        self.local.pop_front()
    }

    /// Expires NAT mappings and closes their sockets.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut dyn NetIo) {
        self.net.handle_timeout(now);
        self.apply_events(io);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.net.poll_timeout()
    }

    /// Drops every NAT mapping (`--chaos`): private agents get new public ports on their next
    /// datagram, which a TURN server sees as a new client.
    pub fn expire_all_mappings(&mut self, io: &mut dyn NetIo) {
        self.net.expire_all_mappings();
        self.apply_events(io);
    }

    fn apply_events(&mut self, io: &mut dyn NetIo) {
        while let Some(NetEvent::Closed { public, .. }) = self.net.poll_event() {
            if let Some(s) = self.public.remove(&public) {
                self.owners.remove(&s);
                io.close(s);
                self.counters.nat_sockets_closed += 1;
            }
        }
    }

    /// Real sockets open now (agents' own and NATs' public ones).
    pub fn sockets(&self) -> usize {
        self.owners.len()
    }
}

/// The loopback address direct agents bind by default.
pub const DIRECT_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{Filtering, Mapping};
    use std::net::UdpSocket;
    use std::time::Duration;

    /// A NetIo over plain blocking std sockets, for tests without a driver.
    #[derive(Default)]
    struct StdIo {
        socks: Vec<Option<UdpSocket>>,
        opened: Vec<SocketAddr>,
        closed: usize,
    }

    impl NetIo for StdIo {
        fn open_udp(&mut self, addr: SocketAddr) -> io::Result<SockId> {
            let s = UdpSocket::bind(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            self.opened.push(s.local_addr()?);
            self.socks.push(Some(s));
            Ok(SockId(self.socks.len() as u32 - 1))
        }
        fn local_addr(&self, sock: SockId) -> io::Result<SocketAddr> {
            match self.socks.get(sock.0 as usize) {
                Some(Some(s)) => s.local_addr(),
                _ => Err(io::ErrorKind::NotFound.into()),
            }
        }
        fn close(&mut self, sock: SockId) {
            self.socks[sock.0 as usize] = None;
            self.closed += 1;
        }
        fn send(&mut self, via: SockId, to: SocketAddr, bytes: &[u8]) {
            if let Some(Some(s)) = self.socks.get(via.0 as usize) {
                s.send_to(bytes, to).unwrap();
            }
        }
    }

    impl StdIo {
        fn recv(&self, sock: SockId) -> (Vec<u8>, SocketAddr) {
            let mut buf = [0u8; 2048];
            let s = self.socks[sock.0 as usize].as_ref().unwrap();
            let (n, from) = s.recv_from(&mut buf).unwrap();
            (buf[..n].to_vec(), from)
        }
    }

    #[test]
    fn private_agents_go_through_real_nat_sockets() {
        let t = Instant::now();
        let mut io = StdIo::default();
        // LAN ids far from other tests' so that the 127.x addresses do not collide.
        let mut f = Fabric::new(DIRECT_IP, 40_000..40_010, 0);
        let b = NatBehavior::new(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
        );
        let lan = f.add_lan(b).unwrap();
        let a = f.add_private_agent(lan, 0).unwrap();
        assert_eq!(a, "10.156.64.1:5000".parse().unwrap()); // 40000 = 0x9c40
        let d = f.add_direct_agent(&mut io, 1).unwrap();
        assert!(d.ip().is_loopback());
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let s_addr = server.local_addr().unwrap();

        // Out through the NAT: a real datagram from the NAT's public address.
        assert!(f.send(t, &mut io, 0, s_addr, b"hello"));
        let mut buf = [0u8; 64];
        let (n, seen) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(seen.ip(), IpAddr::V4(lan.public_ip()));
        assert_eq!(f.counters.nat_sockets_opened, 1);
        // The server answers the public address; the fabric hands it to agent 0.
        server.send_to(b"back", seen).unwrap();
        let public_sock = SockId(1);
        let (data, from) = io.recv(public_sock);
        assert_eq!(data, b"back");
        assert_eq!(f.recv(t, public_sock, from), Some((0, s_addr)));
        // Another sender is filtered (APDF).
        let other = "127.0.0.1:1".parse().unwrap();
        assert_eq!(f.recv(t, public_sock, other), None);
        assert_eq!(f.counters.filtered, 1);
        // The direct agent's own socket.
        assert_eq!(f.recv(t, SockId(0), s_addr), Some((1, s_addr)));
        assert_eq!(f.recv(t, SockId(77), s_addr), None);
        assert_eq!(f.counters.stray, 1);

        // Expiry closes the public socket.
        f.handle_timeout(t + b.timeout + Duration::from_secs(1), &mut io);
        assert_eq!(f.counters.nat_sockets_closed, 1);
        assert_eq!(io.closed, 1);
        assert_eq!(f.recv(t, public_sock, s_addr), None);
    }

    #[test]
    fn lan_and_hairpin_traffic_stays_in_process() {
        let t = Instant::now();
        let mut io = StdIo::default();
        let mut f = Fabric::new(DIRECT_IP, 40_010..40_020, 0);
        let b = NatBehavior::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
        let lan = f.add_lan(b).unwrap();
        let other = f.add_lan(b).unwrap();
        let a = f.add_private_agent(lan, 0).unwrap();
        let c = f.add_private_agent(lan, 1).unwrap();
        let x = f.add_private_agent(other, 2).unwrap();
        assert!(f.send(t, &mut io, 0, c, b"lan"));
        assert_eq!(f.poll_local(), Some((1, a, b"lan".to_vec())));
        assert!(io.opened.is_empty(), "LAN traffic opens no socket");
        // Another LAN's private address: dropped, counted.
        assert!(!f.send(t, &mut io, 0, x, b"nope"));
        assert_eq!(f.counters.unreachable, 1);
        // Hairpin: agent 1 learns its public address by sending out, agent 0 sends to it.
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(f.send(t, &mut io, 1, sink.local_addr().unwrap(), b"out"));
        let c_public = SocketAddr::V4(SocketAddrV4::new(lan.public_ip(), io.opened[0].port()));
        assert!(f.send(t, &mut io, 0, c_public, b"hairpin"));
        let (agent, from, data) = f.poll_local().unwrap();
        assert_eq!((agent, data.as_slice()), (1, &b"hairpin"[..]));
        assert_eq!(
            from.ip(),
            IpAddr::V4(lan.public_ip()),
            "seen from A's public address"
        );
        assert_eq!(f.poll_local(), None);
        assert_eq!(f.sockets(), 2, "one public socket per mapping (A's, C's)");
    }

    #[test]
    fn chaos_closes_every_public_socket() {
        let t = Instant::now();
        let mut io = StdIo::default();
        let mut f = Fabric::new(DIRECT_IP, 40_020..40_030, 0);
        let b = NatBehavior::new(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
        );
        let lan = f.add_lan(b).unwrap();
        f.add_private_agent(lan, 0).unwrap();
        for port in [1u16, 2, 3] {
            assert!(f.send(
                t,
                &mut io,
                0,
                SocketAddr::from(([127, 0, 0, 1], port)),
                b"x"
            ));
        }
        assert_eq!(f.sockets(), 3);
        f.expire_all_mappings(&mut io);
        assert_eq!(f.sockets(), 0);
        assert_eq!(io.closed, 3);
    }
}
