//! TCP on the portable backend (see [`crate::driver::stream`] for the contract).
//!
//! Sockets are registered edge-triggered with their own tag in the epoll data ([`STREAM_TAG`]),
//! apart from the UDP sockets. An edge only sets flags (`readable`, `writable`); the work is
//! done once per batch: accepts and reads in [`Worker::streams_run`] (at most [`READ_BUDGET`]
//! bytes per connection per batch, so one fast sender cannot starve the rest), writes in
//! [`Worker::streams_flush`] after the handler's tick, so that everything a batch queued for a
//! connection goes out in as few `send` calls as possible.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::super::sock::SockTable;
use super::super::stream::{
    addrs_of, connect_result, connect_socket, prepare_accepted, OutQueue, StreamCounters,
    StreamEvent, StreamId, StreamIo, ACCEPT_RETRY, DEFAULT_MAX_QUEUED, LINGER, READ_BUDGET,
};
use super::super::{Handler, SockId};
use super::{errno, Worker};

/// Marks a stream in the epoll data; the low 32 bits are its [`StreamId`].
pub(super) const STREAM_TAG: u64 = 1 << 40;

/// The stream named by an epoll data word carrying [`STREAM_TAG`].
pub(super) fn stream_id(data: u64) -> StreamId {
    StreamId(data as u32)
}

/// Bytes per `recv`.
const CHUNK: usize = 16 * 1024;
/// Connections accepted per listener per batch.
const ACCEPT_BUDGET: usize = 64;

const LISTEN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLET) as u32;
const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

#[derive(Debug)]
enum Kind {
    Listener {
        retry_at: Option<Instant>,
    },
    Conn {
        connecting: bool,
        reading: bool,
        /// EOF or an error was reported: nothing more is read or written.
        ended: bool,
        /// The last write stopped at EAGAIN: wait for EPOLLOUT.
        blocked: bool,
        out: OutQueue,
    },
}

#[derive(Debug)]
struct PStream {
    fd: OwnedFd,
    kind: Kind,
    /// An input edge (or an accept backlog) not yet drained.
    readable: bool,
    /// On the `ready` list.
    listed: bool,
    /// On the `dirty` list.
    dirty: bool,
    closing: Option<Instant>,
}

/// The stream side of one portable worker.
#[derive(Debug, Default)]
pub(super) struct Streams {
    table: Option<SockTable<PStream>>,
    /// Sockets with input (or a connect outcome) to look at.
    ready: Vec<StreamId>,
    /// Connections with output to write, and closing ones.
    dirty: Vec<StreamId>,
    scratch: Vec<u8>,
    counters: StreamCounters,
}

impl Streams {
    fn table(&mut self) -> &mut SockTable<PStream> {
        self.table.get_or_insert_with(SockTable::new)
    }

    fn get(&self, id: StreamId) -> Option<&PStream> {
        self.table.as_ref()?.get(SockId(id.0))
    }

    fn get_mut(&mut self, id: StreamId) -> Option<&mut PStream> {
        self.table.as_mut()?.get_mut(SockId(id.0))
    }

    fn remove(&mut self, id: StreamId) -> Option<PStream> {
        self.table.as_mut()?.remove(SockId(id.0))
    }

    fn list_ready(&mut self, id: StreamId) {
        if let Some(s) = self.get_mut(id) {
            if !s.listed {
                s.listed = true;
                self.ready.push(id);
            }
        }
    }

    fn list_dirty(&mut self, id: StreamId) {
        if let Some(s) = self.get_mut(id) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Whether the loop has stream work without waiting for the kernel.
    pub(super) fn pending(&self) -> bool {
        let Some(t) = &self.table else { return false };
        let can_read = self.ready.iter().any(|&id| {
            t.get(SockId(id.0)).is_some_and(|s| match &s.kind {
                Kind::Listener { retry_at } => retry_at.is_none(),
                Kind::Conn {
                    connecting,
                    reading,
                    ..
                } => !connecting && *reading && s.readable && s.closing.is_none(),
            })
        });
        let can_write = self.dirty.iter().any(|&id| {
            t.get(SockId(id.0)).is_some_and(|s| {
                matches!(&s.kind, Kind::Conn { blocked: false, connecting: false, out, .. }
                    if !out.is_empty())
            })
        });
        can_read || can_write
    }
}

fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, id: StreamId) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: STREAM_TAG | u64::from(id.0),
    };
    // SAFETY: both fds are open; `ev` lives across the call and the kernel copies it.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn new_conn(fd: OwnedFd, connecting: bool) -> PStream {
    PStream {
        fd,
        kind: Kind::Conn {
            connecting,
            reading: false,
            ended: false,
            blocked: false,
            out: OutQueue::new(DEFAULT_MAX_QUEUED),
        },
        // Bytes may have arrived before registration; the first look costs one EAGAIN.
        readable: true,
        listed: false,
        dirty: false,
        closing: None,
    }
}

/// What one read pass over a connection found.
enum ReadOutcome {
    /// Drained (EAGAIN), or not to be read now.
    Done,
    /// The budget ran out with bytes left: look again next batch.
    More,
}

impl Worker {
    fn add_stream(&mut self, s: PStream, events: u32) -> io::Result<StreamId> {
        let raw = s.fd.as_raw_fd();
        let id = StreamId(self.streams.table().insert(s).0);
        if let Err(e) = epoll_add(self.epfd.as_raw_fd(), raw, events, id) {
            self.streams.remove(id);
            return Err(e);
        }
        self.streams.list_ready(id);
        Ok(id)
    }

    /// Readiness from epoll for stream `id` (the tag stripped).
    pub(super) fn stream_ready(&mut self, id: StreamId, events: u32) {
        let input = events
            & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
            != 0;
        let output = events & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        let Some(s) = self.streams.get_mut(id) else {
            return;
        };
        let mut ready = input;
        let mut dirty = false;
        if input {
            s.readable = true;
        }
        if let Kind::Conn {
            connecting,
            blocked,
            out,
            ..
        } = &mut s.kind
        {
            if output {
                *blocked = false;
                dirty = !out.is_empty() || s.closing.is_some();
                // A connect completes (or fails) with the first writable edge.
                ready |= *connecting;
            }
        }
        if ready {
            self.streams.list_ready(id);
        }
        if dirty {
            self.streams.list_dirty(id);
        }
    }

    /// Accepts, connect outcomes and reads for the sockets on the ready list.
    pub(super) fn streams_run<H: Handler>(&mut self, handler: &mut H, now: Instant) {
        if self.streams.ready.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut self.streams.ready);
        let mut again = Vec::new();
        for id in ready {
            let Some(s) = self.streams.get_mut(id) else {
                continue;
            };
            s.listed = false;
            if s.closing.is_some() {
                continue;
            }
            let (listener, connecting) = match &s.kind {
                Kind::Listener { .. } => (true, false),
                Kind::Conn { connecting, .. } => (false, *connecting),
            };
            let more = if listener {
                self.accept_some(id, handler, now)
            } else if connecting {
                self.finish_connect(id, handler, now);
                ReadOutcome::Done
            } else {
                self.read_some(id, handler, now)
            };
            if let ReadOutcome::More = more {
                again.push(id);
            }
        }
        for id in again {
            self.streams.list_ready(id);
        }
    }

    fn accept_some<H: Handler>(
        &mut self,
        id: StreamId,
        handler: &mut H,
        now: Instant,
    ) -> ReadOutcome {
        let Some(s) = self.streams.get_mut(id) else {
            return ReadOutcome::Done;
        };
        if let Kind::Listener { retry_at } = &mut s.kind {
            match *retry_at {
                Some(at) if at > now => return ReadOutcome::More,
                _ => *retry_at = None,
            }
        }
        let lfd = s.fd.as_raw_fd();
        for _ in 0..ACCEPT_BUDGET {
            // SAFETY: plain syscall; no address is asked for (getpeername below).
            let fd = unsafe {
                libc::accept4(
                    lfd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                match errno() {
                    libc::EAGAIN | libc::EINTR => {
                        if let Some(s) = self.streams.get_mut(id) {
                            s.readable = false;
                        }
                        return ReadOutcome::Done;
                    }
                    // The connection was reset in the backlog: on to the next.
                    libc::ECONNABORTED | libc::EPROTO => continue,
                    e => {
                        // Out of descriptors or memory: try again a little later rather than
                        // spin (the backlog keeps the connections meanwhile).
                        self.streams.counters.accept_errors += 1;
                        tracing::debug!(errno = e, stream = id.0, "accept4 failed");
                        if let Some(PStream {
                            kind: Kind::Listener { retry_at },
                            ..
                        }) = self.streams.get_mut(id)
                        {
                            *retry_at = Some(now + ACCEPT_RETRY);
                        }
                        return ReadOutcome::More;
                    }
                }
            }
            // SAFETY: accept4 returned a fresh descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let peer = match prepare_accepted(&fd).and_then(|()| addrs_of(&fd, true)) {
                Ok((_, Some(peer))) => peer,
                _ => {
                    self.streams.counters.accept_errors += 1;
                    continue;
                }
            };
            let conn = match self.add_stream(new_conn(fd, false), CONN_EVENTS) {
                Ok(c) => c,
                Err(e) => {
                    self.streams.counters.accept_errors += 1;
                    tracing::debug!(error = %e, "epoll_ctl for an accepted connection failed");
                    continue;
                }
            };
            self.streams.counters.accepted += 1;
            self.streams.counters.open += 1;
            handler.on_stream(
                now,
                StreamEvent::Accepted {
                    listener: id,
                    conn,
                    peer,
                },
                self,
            );
            // The handler may have closed the listener.
            if self.streams.get(id).is_none_or(|s| s.closing.is_some()) {
                return ReadOutcome::Done;
            }
        }
        ReadOutcome::More
    }

    fn finish_connect<H: Handler>(&mut self, id: StreamId, handler: &mut H, now: Instant) {
        let Some(s) = self.streams.get_mut(id) else {
            return;
        };
        let error = connect_result(&s.fd);
        if error.is_none() {
            // Still connecting (a spurious edge)? A connected socket has a peer.
            if addrs_of(&s.fd, true).is_err() {
                return;
            }
        }
        let Kind::Conn {
            connecting, ended, ..
        } = &mut s.kind
        else {
            return;
        };
        *connecting = false;
        let ok = error.is_none();
        if !ok {
            *ended = true;
            self.streams.counters.connect_failures += 1;
        }
        handler.on_stream(now, StreamEvent::Connected { conn: id, error }, self);
        if ok {
            // Bytes queued while connecting; input that came with the connection.
            self.streams.list_dirty(id);
            self.streams.list_ready(id);
        }
    }

    fn read_some<H: Handler>(
        &mut self,
        id: StreamId,
        handler: &mut H,
        now: Instant,
    ) -> ReadOutcome {
        let mut budget = READ_BUDGET;
        let mut scratch = std::mem::take(&mut self.streams.scratch);
        scratch.resize(CHUNK, 0);
        let outcome = loop {
            let Some(s) = self.streams.get_mut(id) else {
                break ReadOutcome::Done;
            };
            let fd = s.fd.as_raw_fd();
            let go = s.readable
                && s.closing.is_none()
                && matches!(
                    s.kind,
                    Kind::Conn {
                        reading: true,
                        ended: false,
                        connecting: false,
                        ..
                    }
                );
            if !go {
                break ReadOutcome::Done;
            }
            if budget == 0 {
                break ReadOutcome::More;
            }
            let want = CHUNK.min(budget);
            // SAFETY: `scratch` has CHUNK >= want writable bytes; MSG_DONTWAIT never blocks.
            let n =
                unsafe { libc::recv(fd, scratch.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
            let event = if n > 0 {
                let n = n as usize;
                budget -= n;
                self.streams.counters.read_bytes += n as u64;
                StreamEvent::Data {
                    conn: id,
                    bytes: &scratch[..n],
                }
            } else if n == 0 {
                self.stream_ended(id);
                StreamEvent::Closed {
                    conn: id,
                    error: None,
                }
            } else {
                match errno() {
                    libc::EAGAIN => {
                        if let Some(s) = self.streams.get_mut(id) {
                            s.readable = false;
                        }
                        break ReadOutcome::Done;
                    }
                    libc::EINTR => continue,
                    e => {
                        self.stream_ended(id);
                        StreamEvent::Closed {
                            conn: id,
                            error: Some(io::Error::from_raw_os_error(e)),
                        }
                    }
                }
            };
            handler.on_stream(now, event, self);
        };
        self.streams.scratch = scratch;
        outcome
    }

    fn stream_ended(&mut self, id: StreamId) {
        if let Some(PStream {
            kind: Kind::Conn { ended, .. },
            readable,
            ..
        }) = self.streams.get_mut(id)
        {
            *ended = true;
            *readable = false;
        }
    }

    /// Writes queued output, reports drained queues, and closes closing sockets whose output is
    /// out (or whose time is up). After the handler's tick.
    pub(super) fn streams_flush<H: Handler>(&mut self, handler: &mut H, now: Instant) {
        if self.streams.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.streams.dirty);
        let mut again = Vec::new();
        for id in dirty {
            let Some(s) = self.streams.get_mut(id) else {
                continue;
            };
            s.dirty = false;
            let closing = s.closing;
            let fd = s.fd.as_raw_fd();
            let Kind::Conn {
                connecting,
                ended,
                blocked,
                out,
                ..
            } = &mut s.kind
            else {
                // A listener: closing it is dropping it.
                self.streams.remove(id);
                continue;
            };
            let mut error = None;
            let mut written = 0u64;
            if !*connecting && !*ended && !*blocked {
                while let Some((ptr, len)) = out.lend() {
                    // SAFETY: lend returns `len` initialised bytes that stay put until
                    // `returned`, right after the call. MSG_NOSIGNAL: a closed peer is an
                    // EPIPE, not a signal.
                    let n = unsafe {
                        libc::send(fd, ptr.cast(), len, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    };
                    if n >= 0 {
                        out.returned(n as usize);
                        written += n as u64;
                        continue;
                    }
                    out.returned(0);
                    match errno() {
                        libc::EINTR => continue,
                        libc::EAGAIN => *blocked = true,
                        e => {
                            *ended = true;
                            error = Some(io::Error::from_raw_os_error(e));
                        }
                    }
                    break;
                }
            }
            let flushed = out.is_empty() || *ended;
            let notify = closing.is_none() && out.take_notify();
            self.streams.counters.written_bytes += written;
            if let Some(deadline) = closing {
                if flushed || now >= deadline {
                    if !flushed {
                        self.streams.counters.linger_expired += 1;
                    }
                    self.streams.remove(id);
                } else {
                    again.push(id);
                }
                continue;
            }
            if let Some(error) = error {
                if let Some(s) = self.streams.get_mut(id) {
                    s.readable = false;
                }
                handler.on_stream(
                    now,
                    StreamEvent::Closed {
                        conn: id,
                        error: Some(error),
                    },
                    self,
                );
            } else if notify {
                handler.on_stream(now, StreamEvent::Writable { conn: id }, self);
            }
        }
        // Closing sockets waiting for EPOLLOUT or their deadline stay listed.
        for id in again {
            self.streams.list_dirty(id);
        }
    }
}

impl StreamIo for Worker {
    fn adopt_listener(&mut self, listener: TcpListener) -> io::Result<StreamId> {
        listener.set_nonblocking(true)?;
        let s = PStream {
            fd: OwnedFd::from(listener),
            kind: Kind::Listener { retry_at: None },
            readable: true,
            listed: false,
            dirty: false,
            closing: None,
        };
        self.add_stream(s, LISTEN_EVENTS)
    }

    fn tcp_connect(&mut self, from: Option<SocketAddr>, to: SocketAddr) -> io::Result<StreamId> {
        let fd = connect_socket(from, to)?;
        let id = self.add_stream(new_conn(fd, true), CONN_EVENTS)?;
        self.streams.counters.connects += 1;
        self.streams.counters.open += 1;
        Ok(id)
    }

    fn stream_adopt(&mut self, fd: OwnedFd) -> io::Result<StreamId> {
        prepare_accepted(&fd)?;
        let id = self.add_stream(new_conn(fd, false), CONN_EVENTS)?;
        self.streams.counters.open += 1;
        Ok(id)
    }

    fn stream_addrs(&self, id: StreamId) -> io::Result<(SocketAddr, Option<SocketAddr>)> {
        match self.streams.get(id) {
            Some(s) if s.closing.is_none() => addrs_of(&s.fd, matches!(s.kind, Kind::Conn { .. })),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such stream")),
        }
    }

    fn stream_set_reading(&mut self, id: StreamId, on: bool) {
        let Some(PStream {
            kind: Kind::Conn { reading, .. },
            closing: None,
            readable,
            ..
        }) = self.streams.get_mut(id)
        else {
            return;
        };
        *reading = on;
        if on && *readable {
            self.streams.list_ready(id);
        }
    }

    fn stream_send(&mut self, id: StreamId, bytes: &[u8]) -> usize {
        let n = match self.streams.get_mut(id) {
            Some(PStream {
                kind: Kind::Conn {
                    out, ended: false, ..
                },
                closing: None,
                ..
            }) => out.push(bytes),
            _ => 0,
        };
        self.streams.counters.refused_bytes += (bytes.len() - n) as u64;
        if n > 0 {
            self.streams.list_dirty(id);
        }
        n
    }

    fn stream_room(&self, id: StreamId) -> usize {
        match self.streams.get(id) {
            Some(PStream {
                kind: Kind::Conn {
                    out, ended: false, ..
                },
                closing: None,
                ..
            }) => out.room(),
            _ => 0,
        }
    }

    fn stream_close(&mut self, id: StreamId) {
        let now = Instant::now();
        let Some(s) = self.streams.get_mut(id) else {
            return;
        };
        if s.closing.is_some() {
            return;
        }
        s.closing = Some(now + LINGER);
        let (conn, done) = match &mut s.kind {
            Kind::Listener { .. } => (false, true),
            Kind::Conn {
                reading,
                out,
                ended,
                ..
            } => {
                *reading = false;
                (true, out.is_empty() || *ended)
            }
        };
        if conn {
            self.streams.counters.open = self.streams.counters.open.saturating_sub(1);
            self.streams.counters.closed += 1;
        }
        if done {
            // Dropping the fd closes it and takes it out of the epoll set.
            self.streams.remove(id);
        } else {
            self.streams.list_dirty(id);
        }
    }

    fn stream_detach(&mut self, id: StreamId) -> io::Result<OwnedFd> {
        let movable = matches!(
            self.streams.get(id),
            Some(PStream {
                kind: Kind::Conn { connecting: false, out, .. },
                closing: None,
                ..
            }) if out.is_empty()
        );
        if !movable {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "stream busy: output queued",
            ));
        }
        let s = self
            .streams
            .remove(id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such stream"))?;
        // SAFETY: plain syscall on open fds; a DEL ignores the event argument.
        unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                s.fd.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
        self.streams.counters.open = self.streams.counters.open.saturating_sub(1);
        Ok(s.fd)
    }

    fn stream_counters(&self) -> &StreamCounters {
        &self.streams.counters
    }
}
