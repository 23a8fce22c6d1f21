//! TCP in the drivers: listening sockets, accepted and outgoing connections, each with a bounded
//! output queue, behind the [`StreamIo`] half of [`super::Io`] and the [`StreamEvent`]s of
//! [`super::Handler::on_stream`]. Both backends implement the same contract; this module holds
//! what they share (ids, events, options, socket set-up, the output queue).
//!
//! # The contract
//! - Every [`StreamId`] the driver hands out (from [`StreamIo::tcp_listen`],
//!   [`StreamIo::tcp_connect`], [`StreamIo::stream_adopt`] or [`StreamEvent::Accepted`]) stays
//!   valid until the handler calls [`StreamIo::stream_close`] (or [`StreamIo::stream_detach`])
//!   on it, even after [`StreamEvent::Closed`]: the handler owns the id, the driver the socket.
//!   After the close, nothing more is reported for it, and the id may be reused.
//! - A connection is read only while the handler wants it read ([`StreamIo::stream_set_reading`];
//!   off for new connections). Turning reading off is immediate on the portable backend; on
//!   io_uring a receive already in the kernel may still deliver one buffer (at most
//!   [`super::BUF_SIZE`] bytes). A connection that is not read leaves the peer's bytes in the
//!   kernel's receive buffer, which pushes back on the peer (RFC 6062 section 5.3 asks for that).
//! - Output is queued and written at the end of the batch, in order, with partial writes
//!   continued. The queue holds at most [`DEFAULT_MAX_QUEUED`] bytes: [`StreamIo::stream_send`]
//!   takes what fits and says how much; [`StreamEvent::Writable`] follows once a queue that was
//!   filled past half (or refused bytes) has drained.
//! - [`StreamIo::stream_close`] stops reading, writes what is queued (for at most [`LINGER`]),
//!   then closes the socket.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// A TCP socket (listening or connected) in a driver's stream table. A namespace of its own,
/// apart from the UDP [`super::SockId`]s.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// How long a closed connection may take to write out what was queued for it before the socket
/// is closed anyway (a peer that stopped reading must not hold the descriptor).
pub const LINGER: Duration = Duration::from_secs(2);

/// Default output queue bound per connection.
/// How long a listener waits before accepting again after an error (EMFILE: no descriptor
/// left), rather than spinning on a connection it cannot take.
pub(super) const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

pub const DEFAULT_MAX_QUEUED: usize = 256 * 1024;

/// Bytes read from one connection per batch before the others get their turn.
pub const READ_BUDGET: usize = 64 * 1024;

/// Options of a listening socket.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ListenOptions {
    /// SO_REUSEPORT: every worker binds the same listening address and the kernel spreads
    /// connections over them; an RFC 6062 relayed address also needs it so that connections
    /// to peers can leave from it while it listens.
    pub reuse_port: bool,
    /// SO_REUSEADDR.
    pub reuse_addr: bool,
    pub backlog: i32,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            reuse_port: false,
            reuse_addr: true,
            backlog: 1024,
        }
    }
}

/// What happened on a stream, for [`super::Handler::on_stream`].
#[derive(Debug)]
pub enum StreamEvent<'a> {
    /// `listener` accepted `conn` from `peer`. The connection is not read until the handler
    /// turns reading on.
    Accepted {
        listener: StreamId,
        conn: StreamId,
        peer: SocketAddr,
    },
    /// An outgoing connection from [`StreamIo::tcp_connect`] is established (`error: None`) or
    /// failed. Either way the handler closes the id when done with it.
    Connected {
        conn: StreamId,
        error: Option<io::Error>,
    },
    /// Bytes read from `conn`, in order.
    Data { conn: StreamId, bytes: &'a [u8] },
    /// The output queue of `conn` drained after it was more than half full or refused bytes.
    Writable { conn: StreamId },
    /// The other side closed (`error: None`: EOF) or the connection failed. Reading has stopped;
    /// the handler still closes the id.
    Closed {
        conn: StreamId,
        error: Option<io::Error>,
    },
}

/// Stream counters of one driver: plain integers, like [`super::Counters`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    pub accepted: u64,
    pub accept_errors: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub closed: u64,
    /// Connections open now (accepted, connecting, connected; not yet closed).
    pub open: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Bytes [`StreamIo::stream_send`] refused because the queue was full.
    pub refused_bytes: u64,
    /// Connections closed at [`LINGER`] with output still queued.
    pub linger_expired: u64,
}

/// The TCP half of a driver (see the [module documentation](self)). Nothing here blocks.
pub trait StreamIo {
    /// Binds and listens on `addr`; accepted connections come as [`StreamEvent::Accepted`].
    fn tcp_listen(&mut self, addr: SocketAddr, opts: ListenOptions) -> io::Result<StreamId> {
        let l = listen_socket(addr, opts)?;
        self.adopt_listener(l)
    }
    /// Takes over a socket that is already listening (bound before the workers started, see
    /// [`bind_reuseport_tcp`]).
    fn adopt_listener(&mut self, listener: TcpListener) -> io::Result<StreamId>;
    /// Starts a connection to `to`, from `from` when given (bound with SO_REUSEADDR and
    /// SO_REUSEPORT, so that it may share the address of a listening socket of this process).
    /// The outcome comes as [`StreamEvent::Connected`].
    fn tcp_connect(&mut self, from: Option<SocketAddr>, to: SocketAddr) -> io::Result<StreamId>;
    /// Takes over a connected socket (from another worker, see [`StreamIo::stream_detach`]).
    /// Reading is off.
    fn stream_adopt(&mut self, fd: OwnedFd) -> io::Result<StreamId>;
    /// The local and remote address of a connection (remote: `None` for a listener).
    fn stream_addrs(&self, id: StreamId) -> io::Result<(SocketAddr, Option<SocketAddr>)>;
    /// Whether to read from `id`.
    fn stream_set_reading(&mut self, id: StreamId, on: bool);
    /// Queues bytes for `id`; returns how many were taken (all unless the queue is full).
    fn stream_send(&mut self, id: StreamId, bytes: &[u8]) -> usize;
    /// How many more bytes [`StreamIo::stream_send`] takes now.
    fn stream_room(&self, id: StreamId) -> usize;
    /// Closes `id` once its queue is written, at most [`LINGER`] from now.
    fn stream_close(&mut self, id: StreamId);
    /// Takes the socket of connection `id` out of the driver, to hand it to another worker.
    /// Only possible while nothing is queued or in flight on it (`WouldBlock` otherwise; the id
    /// then stays the handler's). Reading stops; the id is released.
    fn stream_detach(&mut self, id: StreamId) -> io::Result<OwnedFd>;
    fn stream_counters(&self) -> &StreamCounters;
}

/// A listening TCP socket with SO_REUSEPORT on `addr`, one per worker, bound and listening
/// before any worker runs (as the UDP listeners are).
pub fn bind_reuseport_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    listen_socket(
        addr,
        ListenOptions {
            reuse_port: true,
            ..ListenOptions::default()
        },
    )
}

/// A non-blocking listening socket on `addr`.
pub fn listen_socket(addr: SocketAddr, opts: ListenOptions) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(opts.reuse_addr)?;
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(opts.backlog)?;
    Ok(sock.into())
}

/// A non-blocking socket connecting to `to` (EINPROGRESS is success: the connect completes
/// later), bound to `from` first when given.
pub fn connect_socket(from: Option<SocketAddr>, to: SocketAddr) -> io::Result<OwnedFd> {
    let sock = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    if to.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.set_nodelay(true)?;
    if let Some(from) = from {
        // RFC 6062 section 5.2: the connection leaves from the relayed address, on which the
        // allocation's listening socket also sits.
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        sock.bind(&from.into())?;
    }
    match sock.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(sock.into())
}

/// Settings for a freshly accepted connection: TURN messages are small and latency matters more
/// than segment count, so Nagle is off.
pub fn prepare_accepted(fd: &OwnedFd) -> io::Result<()> {
    let s = SockRef::from(fd);
    s.set_nonblocking(true)?;
    s.set_nodelay(true)
}

/// The local and remote addresses of a socket.
pub fn addrs_of(fd: &OwnedFd, connected: bool) -> io::Result<(SocketAddr, Option<SocketAddr>)> {
    let s = SockRef::from(fd);
    let not_inet = || io::Error::new(io::ErrorKind::InvalidData, "not an IP socket");
    let local = s.local_addr()?.as_socket().ok_or_else(not_inet)?;
    let peer = if connected {
        Some(s.peer_addr()?.as_socket().ok_or_else(not_inet)?)
    } else {
        None
    };
    Ok((local, peer))
}

/// The pending error of a socket whose connect finished (SO_ERROR).
pub fn connect_result(fd: &OwnedFd) -> Option<io::Error> {
    match SockRef::from(fd).take_error() {
        Ok(None) => None,
        Ok(Some(e)) | Err(e) => Some(e),
    }
}

/// One connection's output, at most `cap` bytes, written in order. Bytes handed to the kernel
/// are *lent*: they sit in `front`, which is not touched until the write completes (io_uring
/// reads them asynchronously), while new bytes go to `back`. The portable backend lends and gets
/// the bytes back within one `send` call.
#[derive(Debug)]
pub(crate) struct OutQueue {
    front: Vec<u8>,
    /// `front[..front_start]` was written.
    front_start: usize,
    back: Vec<u8>,
    /// `front[front_start..]` is in a send the kernel has not completed.
    lent: bool,
    cap: usize,
    /// Set when the queue passed half its capacity or refused bytes: report
    /// [`StreamEvent::Writable`] once it is empty.
    notify: bool,
}

impl OutQueue {
    pub(crate) fn new(cap: usize) -> Self {
        OutQueue {
            front: Vec::new(),
            front_start: 0,
            back: Vec::new(),
            lent: false,
            cap,
            notify: false,
        }
    }

    /// Bytes not yet written (lent ones included).
    pub(crate) fn len(&self) -> usize {
        self.front.len() - self.front_start + self.back.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn room(&self) -> usize {
        self.cap.saturating_sub(self.len())
    }

    /// Appends what fits; returns how much.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        if n < bytes.len() {
            self.notify = true;
        }
        self.back.extend_from_slice(&bytes[..n]);
        if self.len() > self.cap / 2 {
            self.notify = true;
        }
        n
    }

    /// Lends the next contiguous bytes to the kernel: a pointer and a length, valid (the bytes
    /// do not move) until [`OutQueue::returned`]. `None` when there is nothing to write or a
    /// lend is outstanding.
    pub(crate) fn lend(&mut self) -> Option<(*const u8, usize)> {
        if self.lent {
            return None;
        }
        if self.front_start == self.front.len() {
            if self.back.is_empty() {
                return None;
            }
            // The written front's allocation becomes the next back, unless it grew large.
            self.front.clear();
            std::mem::swap(&mut self.front, &mut self.back);
            self.front_start = 0;
            if self.back.capacity() > 64 * 1024 {
                self.back = Vec::new();
            }
        }
        self.lent = true;
        let rest = &self.front[self.front_start..];
        Some((rest.as_ptr(), rest.len()))
    }

    /// The lent bytes came back with `written` of them taken; the rest is lent again first.
    pub(crate) fn returned(&mut self, written: usize) {
        self.lent = false;
        self.front_start = (self.front_start + written).min(self.front.len());
        if self.front_start == self.front.len() && self.front.capacity() > 64 * 1024 {
            self.front = Vec::new();
            self.front_start = 0;
        }
    }

    pub(crate) fn is_lent(&self) -> bool {
        self.lent
    }

    /// Whether a drained queue owes the handler a [`StreamEvent::Writable`]; clears the flag.
    pub(crate) fn take_notify(&mut self) -> bool {
        if self.is_empty() && self.notify {
            self.notify = false;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lent(q: &mut OutQueue) -> Vec<u8> {
        let (p, n) = q.lend().expect("bytes to lend");
        // SAFETY: lend returns a pointer to n bytes of the queue that stay put until returned.
        unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
    }

    #[test]
    fn queue_is_bounded_ordered_and_keeps_lent_bytes_in_place() {
        let mut q = OutQueue::new(10);
        assert_eq!(q.push(b"abcdef"), 6);
        assert!(q.notify, "more than half full");
        let (p, _) = q.lend().unwrap();
        assert!(q.lend().is_none(), "one lend at a time");
        assert_eq!(q.push(b"ghijkl"), 4, "only what fits");
        assert_eq!(q.room(), 0);
        // SAFETY: the lent bytes stay where they were while more bytes were queued.
        assert_eq!(unsafe { std::slice::from_raw_parts(p, 6) }, b"abcdef");
        q.returned(3);
        assert_eq!(q.len(), 7);
        assert_eq!(
            lent(&mut q),
            b"def",
            "a partial write continues where it stopped"
        );
        q.returned(3);
        assert_eq!(q.push(b"xyz"), 3);
        assert_eq!(lent(&mut q), b"ghijxyz");
        assert!(!q.take_notify(), "not drained yet");
        q.returned(7);
        assert!(q.is_empty());
        assert!(q.take_notify());
        assert!(!q.take_notify(), "reported once");
        assert!(q.lend().is_none());
    }

    #[test]
    fn connect_socket_binds_next_to_a_listener() {
        let l = listen_socket(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions {
                reuse_port: true,
                ..ListenOptions::default()
            },
        )
        .unwrap();
        let at = l.local_addr().unwrap();
        let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = connect_socket(Some(at), target.local_addr().unwrap()).unwrap();
        let (local, _) = addrs_of(&fd, false).unwrap();
        assert_eq!(
            local, at,
            "the connection leaves from the listening address"
        );
    }
}
