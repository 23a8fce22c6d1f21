//! The I/O drivers: one per-core event loop behind one small interface, with two backends.
//!
//! - `uring`: io_uring 0.7 with multishot RecvMsgMulti from a provided buffer ring, sends
//!   batched and submitted once per completion batch.
//! - `portable`: epoll + recvmmsg/sendmmsg, for hosts where io_uring is missing or blocked.
//!
//! A driver owns sockets and buffers; a [`Handler`] owns the protocol state. The driver reads the
//! clock once per batch, hands each received datagram to the handler, and the handler answers
//! through [`Io`]: forward the received buffer itself (zero copy: the payload never moves in user
//! space), send a small message it wrote (a STUN response), or open and close sockets.
//!
//! Buffers have [`HEADROOM`] free bytes in front of the received datagram, so a handler can
//! prepend a ChannelData header (4 bytes) or a Data indication header (up to 48 bytes) in
//! place, and [`TAILROOM`] bytes behind it for the padding a Data indication needs.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

/// Free bytes in front of every received datagram.
pub const HEADROOM: usize = 64;
/// Free bytes after the largest datagram a buffer accepts.
pub const TAILROOM: usize = 4;
/// Size of one receive buffer; the largest datagram accepted is BUF_SIZE - HEADROOM - TAILROOM.
pub const BUF_SIZE: usize = 2048;
/// Largest datagram a receive buffer holds. Larger ones are truncated by the kernel and dropped.
pub const MAX_DATAGRAM: usize = BUF_SIZE - HEADROOM - TAILROOM;

/// A socket in a driver's table. Stable while the socket is open; may be reused after close.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockId(pub u32);

/// A received datagram in a driver-owned buffer. The handler may rewrite any byte of
/// `buf_mut()`, then either pass the packet to [`Io::forward`] (zero copy) or drop it (the buffer
/// returns to the driver at once).
pub trait RecvPacket {
    /// The whole buffer: headroom, datagram, tailroom.
    fn buf_mut(&mut self) -> &mut [u8];
    /// Where the datagram sits in the buffer: `HEADROOM..HEADROOM + len`.
    fn range(&self) -> std::ops::Range<usize>;
}

/// What a handler may ask of the driver while it handles an event. Nothing here blocks; sends
/// are queued and submitted once per batch.
pub trait Io {
    type Packet: RecvPacket;

    /// Opens a non-blocking UDP socket bound to `addr` and starts receiving on it.
    fn open_udp(&mut self, addr: SocketAddr) -> io::Result<SockId>;
    /// Closes a socket; queued sends on it may still go out.
    fn close(&mut self, sock: SockId);
    /// Sends `buf[range]` of a received packet from `via` to `to` without copying it. The buffer
    /// returns to the driver when the send completes.
    fn forward(&mut self, pkt: Self::Packet, via: SockId, to: SocketAddr, range: std::ops::Range<usize>);
    /// Sends a small message (a STUN response) by copying it into a driver send buffer.
    fn send(&mut self, via: SockId, to: SocketAddr, bytes: &[u8]);
}

/// The protocol side of one worker.
pub trait Handler {
    /// One datagram arrived on `sock` from `from`.
    fn on_recv<I: Io>(&mut self, now: Instant, sock: SockId, from: SocketAddr, pkt: I::Packet, io: &mut I);
    /// Called at least once per batch, after the datagrams, and when `next_timeout` passes.
    fn on_tick<I: Io>(&mut self, now: Instant, io: &mut I);
    /// When the handler next needs `on_tick` even if no datagram arrives.
    fn next_timeout(&self) -> Option<Instant>;
}
