//! The one call from the server into the driver: opening and closing relay sockets.

use core::net::SocketAddr;

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
