//! The calls from the server into the driver: opening and closing relay sockets, and the TCP
//! operations of RFC 6062.

use core::net::SocketAddr;

/// A peer data connection's name: the CONNECTION-ID value of RFC 6062 section 6.2.1. The server
/// picks it, unique among this server's live connections; its top byte names the worker (see
/// [`super::ServerConfig::worker`]).
pub use crate::stun::attr::ConnectionId;

/// Why a relay socket could not be opened.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum OpenError {
    /// The port is taken (by another process): the server tries another.
    #[error("address in use")]
    AddrInUse,
    /// Out of file descriptors or memory: the server answers 508 and counts it.
    #[error("out of descriptors or memory")]
    Exhausted,
    /// Anything else; the server answers 508.
    #[error("socket error")]
    Other,
}

/// Opens and closes the UDP sockets that allocations relay through. The driver implements it;
/// tests use an in-memory fake.
pub trait RelaySockets {
    /// Binds a UDP socket to `addr`, starts receiving on it and returns the driver's handle.
    /// Datagrams that arrive on it are handed to [`super::Server::handle_peer`] with `id`.
    fn open(
        &mut self,
        addr: SocketAddr,
        id: RelayId,
        dont_fragment: bool,
    ) -> Result<u32, OpenError>;
    /// Closes a socket opened by `open`. Datagrams already received on it may still arrive with
    /// its `RelayId`; the server drops them because the id's generation no longer matches.
    fn close(&mut self, handle: u32);
    /// The TCP operations of RFC 6062, when the driver relays over TCP. The default, `None`,
    /// makes the server answer TCP allocations with 442.
    fn tcp(&mut self) -> Option<&mut dyn TcpRelays> {
        None
    }
}

/// The server's name for one relay socket: the allocation's slot, its generation (so a reused
/// slot does not receive a closed socket's stragglers) and the address family.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RelayId(pub u64);

impl RelayId {
    pub(crate) fn new(slot: usize, generation: u32, v6: bool) -> Self {
        RelayId((u64::from(generation) << 32) | ((slot as u64) << 1) | u64::from(v6))
    }

    pub(crate) fn slot(self) -> usize {
        ((self.0 & 0xFFFF_FFFF) >> 1) as usize
    }

    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// The TCP side of the relay (RFC 6062): listening on an allocation's relayed address,
/// connecting to peers from it, and splicing data connections. No call blocks: `listen`,
/// `connect` and the closes start at once (outcomes come later), `splice` and `hand_off` are
/// carried out once the server's call has returned. See the module docs of [`super`] for the whole
/// contract, in particular which [`super::Server`] method reports each outcome.
///
/// A driver without TCP relaying leaves [`RelaySockets::tcp`] at its default, and TCP
/// allocations are answered 442 (Unsupported Transport Protocol).
pub trait TcpRelays {
    /// Binds a TCP socket to `addr` with SO_REUSEADDR (the connections of
    /// [`TcpRelays::connect`] leave from the same address, RFC 6062 section 5.2) and listens on
    /// it. Connections it accepts are reported with [`super::Server::tcp_accepted`] and `id`.
    fn listen(&mut self, addr: SocketAddr, id: RelayId) -> Result<u32, OpenError>;
    /// Closes a listening socket opened by `listen`. Connections it accepted are closed
    /// separately, with [`TcpRelays::close_peer`].
    fn close_listener(&mut self, handle: u32);
    /// Starts a TCP connection from `from` (the relayed address) to `peer`. The driver reports
    /// the outcome once, with [`super::Server::tcp_connected`] and `conn`, unless
    /// [`TcpRelays::close_peer`] for `conn` comes first.
    fn connect(&mut self, from: SocketAddr, peer: SocketAddr, conn: ConnectionId);
    /// Closes a peer data connection: connecting, waiting for its ConnectionBind, or spliced (and
    /// then the client data connection spliced to it as well). Nothing more is reported for
    /// `conn` afterwards.
    fn close_peer(&mut self, conn: ConnectionId);
    /// RFC 6062 section 5.4: joins client connection `client` (the driver's token, as passed to
    /// [`super::Server::handle_client`]) and peer data connection `conn`. The driver first queues
    /// the ConnectionBind success response returned by the same `handle_client` call on
    /// `client`, then copies bytes as they are between the two connections, starting with what
    /// the peer sent while the connection waited for its ConnectionBind and what the client sent
    /// after its request. The server sees neither connection's bytes again; when either side
    /// closes, the driver closes the other and reports [`super::Server::tcp_closed`].
    fn splice(&mut self, client: u32, conn: ConnectionId);
    /// A ConnectionBind names a connection of another worker (see
    /// [`super::connection_id_worker`]): the driver moves client connection `client` to
    /// worker `worker` and hands it the request just handled again, there. No response is sent
    /// from here. An id naming no worker that exists is a forgery or a stale id: the driver
    /// closes the connection.
    fn hand_off(&mut self, client: u32, worker: u8);
}
