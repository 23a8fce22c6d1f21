//! TCP on the io_uring backend (see [`crate::driver::stream`] for the contract).
//!
//! - Listening sockets run one multishot Accept each; the peer address of a new connection is
//!   read with `getpeername` (multishot accept cannot report it).
//! - A connection being read has one single-shot Recv in the kernel, with its buffer picked from
//!   the worker's provided buffer ring (so an idle connection holds no buffer, and the UDP and
//!   TCP receive paths share one bounded pool). It is re-armed after each completion while
//!   reading is on: turning reading off lets at most one buffer through, which bounds what a
//!   paused connection can still deliver.
//! - Output: one Send at a time per connection, from the bytes the [`OutQueue`] lent; a partial
//!   send continues with the rest.
//! - Outgoing connects are non-blocking `connect` calls followed by a single-shot POLLOUT poll
//!   and SO_ERROR.
//! - A socket is closed (its fd dropped) only when none of its operations is in the kernel, so
//!   a completion can never name a reused id.
//!
//! user_data: the top byte is one of the `UD_S_*` kinds, the low 32 bits the [`StreamId`].

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd};
use io_uring::{cqueue, opcode, squeue};

use super::super::sock::SockTable;
use super::super::stream::{
    addrs_of, connect_result, connect_socket, prepare_accepted, OutQueue, StreamCounters,
    StreamEvent, StreamId, StreamIo, ACCEPT_RETRY, DEFAULT_MAX_QUEUED, LINGER,
};
use super::super::{Handler, RecvPacket, BUF_SIZE};
use super::{Cqe, Packet, Worker, BGID, RECV_LEN, UD_KIND_MASK, UD_KIND_SHIFT};

/// The first user_data kind of the stream operations; the UDP kinds stay below it.
pub(super) const UD_STREAM_FIRST: u64 = 0x10 << UD_KIND_SHIFT;
const UD_S_ACCEPT: u64 = 0x10 << UD_KIND_SHIFT;
const UD_S_RECV: u64 = 0x11 << UD_KIND_SHIFT;
const UD_S_SEND: u64 = 0x12 << UD_KIND_SHIFT;
const UD_S_POLL: u64 = 0x13 << UD_KIND_SHIFT;
const UD_S_CANCEL: u64 = 0x14 << UD_KIND_SHIFT;

#[derive(Debug)]
enum Kind {
    Listener {
        armed: bool,
        retry_at: Option<Instant>,
    },
    Conn {
        connecting: bool,
        reading: bool,
        recv_armed: bool,
        /// The Recv ended for lack of buffers: arm it again once some come back.
        starved: bool,
        /// EOF or an error was reported: nothing more is read.
        ended: bool,
        out: OutQueue,
        /// On the `dirty` list.
        dirty: bool,
    },
}

#[derive(Debug)]
struct UStream {
    fd: OwnedFd,
    kind: Kind,
    /// Operations of this socket in the kernel.
    ops: u32,
    /// `stream_close` was called: the handler hears nothing more; the fd goes once the queue is
    /// written (or the deadline passes) and `ops` is 0.
    closing: Option<Instant>,
    /// Everything of this socket was cancelled (at the deadline, or at stop).
    cancelled: bool,
}

/// The stream side of one io_uring worker.
#[derive(Debug, Default)]
pub(super) struct Streams {
    table: Option<SockTable<UStream>>,
    /// Connections with bytes to send and no Send in the kernel.
    dirty: Vec<StreamId>,
    /// Sockets to look at each batch: closing ones, starved receives, listeners to retry.
    watch: Vec<StreamId>,
    counters: StreamCounters,
    /// GRO mode: bytes copied out of a big ring buffer (see [`Received`]), reused.
    scratch: Vec<u8>,
}

/// The buffer a stream receive landed in. The ring normally holds pool buffers; in GRO mode it
/// holds big ones (`BIG_BUF`) that must go straight back to the ring, so the bytes are copied
/// out first (one copy of at most `RECV_LEN` bytes, which the handler copies anyway).
enum Received {
    Pool(Packet),
    Copied(Vec<u8>),
}

impl Streams {
    fn table(&mut self) -> &mut SockTable<UStream> {
        self.table.get_or_insert_with(SockTable::new)
    }

    fn get(&self, id: StreamId) -> Option<&UStream> {
        self.table.as_ref()?.get(super::super::SockId(id.0))
    }

    fn get_mut(&mut self, id: StreamId) -> Option<&mut UStream> {
        self.table.as_mut()?.get_mut(super::super::SockId(id.0))
    }

    fn insert(&mut self, s: UStream) -> StreamId {
        StreamId(self.table().insert(s).0)
    }

    fn remove(&mut self, id: StreamId) -> Option<UStream> {
        self.table.as_mut()?.remove(super::super::SockId(id.0))
    }

    /// Whether any stream operation is still in the kernel (the worker may not unmap buffers).
    pub(super) fn busy(&self) -> bool {
        self.table.as_ref().is_some_and(|t| {
            t.ids()
                .any(|i| t.get(i).is_some_and(|s| s.ops > 0 || s.closing.is_some()))
        })
    }
}

fn ud(kind: u64, id: StreamId) -> u64 {
    kind | u64::from(id.0)
}

fn new_conn(fd: OwnedFd, connecting: bool) -> UStream {
    UStream {
        fd,
        kind: Kind::Conn {
            connecting,
            reading: false,
            recv_armed: false,
            starved: false,
            ended: false,
            out: OutQueue::new(DEFAULT_MAX_QUEUED),
            dirty: false,
        },
        ops: 0,
        closing: None,
        cancelled: false,
    }
}

impl Worker {
    fn stream_push(&mut self, sqe: &squeue::Entry, id: StreamId) -> bool {
        if self.push_sqe(sqe) {
            if let Some(s) = self.streams.get_mut(id) {
                s.ops += 1;
            }
            true
        } else {
            false
        }
    }

    fn arm_accept(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(id) else {
            return;
        };
        if s.closing.is_some() || !matches!(s.kind, Kind::Listener { armed: false, .. }) {
            return;
        }
        let sqe = opcode::AcceptMulti::new(Fd(s.fd.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(ud(UD_S_ACCEPT, id));
        let ok = self.stream_push(&sqe, id);
        if let Some(UStream {
            kind: Kind::Listener { armed, retry_at },
            ..
        }) = self.streams.get_mut(id)
        {
            if ok {
                *armed = true;
            } else {
                *retry_at = Some(Instant::now() + ACCEPT_RETRY);
                self.streams.watch.push(id);
            }
        }
    }

    fn arm_recv(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(id) else {
            return;
        };
        let Kind::Conn {
            connecting: false,
            reading: true,
            recv_armed: false,
            ended: false,
            ..
        } = s.kind
        else {
            return;
        };
        if s.closing.is_some() {
            return;
        }
        let sqe = opcode::Recv::new(Fd(s.fd.as_raw_fd()), std::ptr::null_mut(), RECV_LEN as u32)
            .buf_group(BGID)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(ud(UD_S_RECV, id));
        let ok = self.stream_push(&sqe, id);
        if let Some(UStream {
            kind:
                Kind::Conn {
                    recv_armed,
                    starved,
                    ..
                },
            ..
        }) = self.streams.get_mut(id)
        {
            if ok {
                *recv_armed = true;
            } else if !*starved {
                *starved = true;
                self.streams.watch.push(id);
            }
        }
    }

    /// Lends the next queued bytes of `id` to a Send.
    fn submit_send(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(id) else {
            return;
        };
        let fd = s.fd.as_raw_fd();
        let cancelled = s.cancelled;
        let Kind::Conn {
            connecting: false,
            out,
            ..
        } = &mut s.kind
        else {
            return;
        };
        if cancelled {
            return;
        }
        let Some((ptr, len)) = out.lend() else {
            return;
        };
        let len = len.min(u32::MAX as usize) as u32;
        let sqe = opcode::Send::new(Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(UD_S_SEND, id));
        // SAFETY (of the pointer in the SQE): the queue keeps lent bytes in place until
        // `returned`, which only the completion of this Send calls; the stream (and its queue)
        // is not dropped while `ops` counts the Send.
        if !self.stream_push(&sqe, id) {
            if let Some(UStream {
                kind: Kind::Conn { out, dirty, .. },
                ..
            }) = self.streams.get_mut(id)
            {
                out.returned(0);
                if !*dirty {
                    *dirty = true;
                    self.streams.dirty.push(id);
                }
            }
        }
    }

    /// Cancels every operation of `id` in the kernel (once).
    fn cancel_all(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(id) else {
            return;
        };
        if s.cancelled {
            return;
        }
        s.cancelled = true;
        if s.ops == 0 {
            return;
        }
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(s.fd.as_raw_fd())).all())
            .build()
            .user_data(ud(UD_S_CANCEL, id));
        if !self.push_sqe(&sqe) {
            tracing::warn!(stream = id.0, "could not queue a stream cancel");
        }
    }

    /// Cancels the operations that would deliver something (accept, receive, connect poll),
    /// leaving a Send to finish.
    fn cancel_inputs(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(id) else {
            return;
        };
        let targets: &[u64] = match s.kind {
            Kind::Listener { armed: true, .. } => &[UD_S_ACCEPT],
            Kind::Conn {
                recv_armed: true, ..
            } => &[UD_S_RECV],
            Kind::Conn {
                connecting: true, ..
            } => &[UD_S_POLL],
            _ => &[],
        };
        for &k in targets {
            let sqe = opcode::AsyncCancel::new(ud(k, id))
                .build()
                .user_data(ud(UD_S_CANCEL, id));
            if !self.push_sqe(&sqe) {
                tracing::warn!(stream = id.0, "could not queue a receive cancel");
            }
        }
    }

    /// Drops the socket of a closing stream once nothing of it is in the kernel and its output
    /// is written (or past its deadline).
    fn try_release(&mut self, id: StreamId, now: Instant) {
        let Some(s) = self.streams.get(id) else {
            return;
        };
        let Some(deadline) = s.closing else { return };
        let flushed = match &s.kind {
            Kind::Listener { .. } => true,
            Kind::Conn { out, ended, .. } => out.is_empty() || *ended,
        };
        if s.ops == 0 && (flushed || s.cancelled) {
            self.streams.remove(id);
            return;
        }
        if now >= deadline && !s.cancelled {
            if !flushed {
                self.streams.counters.linger_expired += 1;
            }
            self.cancel_all(id);
        }
    }

    /// One stream completion.
    pub(super) fn dispatch_stream<H: Handler>(
        &mut self,
        c: Cqe,
        handler: Option<&mut H>,
        now: Instant,
    ) {
        let id = StreamId((c.user_data & 0xffff_ffff) as u32);
        match c.user_data & UD_KIND_MASK {
            UD_S_ACCEPT => self.complete_accept(id, c, handler, now),
            UD_S_RECV => self.complete_stream_recv(id, c, handler, now),
            UD_S_SEND => self.complete_stream_send(id, c, handler, now),
            UD_S_POLL => self.complete_connect(id, handler, now),
            UD_S_CANCEL => {}
            _ => tracing::error!(user_data = c.user_data, "unknown stream completion"),
        }
        self.try_release(id, now);
    }

    fn op_done(&mut self, id: StreamId) -> Option<&mut UStream> {
        let s = self.streams.get_mut(id)?;
        s.ops = s.ops.saturating_sub(1);
        Some(s)
    }

    fn complete_accept<H: Handler>(
        &mut self,
        id: StreamId,
        c: Cqe,
        handler: Option<&mut H>,
        now: Instant,
    ) {
        let more = cqueue::more(c.flags);
        // A new connection's fd is ours whatever happens next: own it first.
        // SAFETY: a non-negative accept result is a fresh descriptor nothing else owns.
        let fd = (c.result >= 0).then(|| unsafe { OwnedFd::from_raw_fd(c.result) });
        let mut live = false;
        let mut rearm = false;
        if let Some(s) = self.streams.get_mut(id) {
            live = s.closing.is_none();
            if !more {
                s.ops = s.ops.saturating_sub(1);
                if let Kind::Listener { armed, retry_at } = &mut s.kind {
                    *armed = false;
                    if live {
                        // Re-arm at once after the kernel ended it on its own, after a pause
                        // after an error (EMFILE would end it again straight away).
                        let wait = if c.result < 0 {
                            ACCEPT_RETRY
                        } else {
                            Duration::ZERO
                        };
                        *retry_at = Some(now + wait);
                        rearm = true;
                    }
                }
            }
        }
        if rearm {
            self.streams.watch.push(id);
        }
        let Some(fd) = fd else {
            if c.result != -libc::ECANCELED {
                self.streams.counters.accept_errors += 1;
                tracing::debug!(errno = -c.result, stream = id.0, "accept failed");
            }
            return;
        };
        let Some(handler) = handler.filter(|_| live) else {
            return;
        };
        let peer = match prepare_accepted(&fd).and_then(|()| addrs_of(&fd, true)) {
            Ok((_, Some(peer))) => peer,
            _ => {
                // Reset before we could look at it.
                self.streams.counters.accept_errors += 1;
                return;
            }
        };
        let conn = self.streams.insert(new_conn(fd, false));
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
    }

    fn complete_stream_recv<H: Handler>(
        &mut self,
        id: StreamId,
        c: Cqe,
        handler: Option<&mut H>,
        now: Instant,
    ) {
        // Own the buffer first, so every return below gives it back.
        let pkt = cqueue::buffer_select(c.flags).map(|bid| {
            self.bufring.in_kernel = self.bufring.in_kernel.saturating_sub(1);
            if self.big.is_some() {
                let n = usize::try_from(c.result).unwrap_or(0).min(RECV_LEN);
                let mut bytes = std::mem::take(&mut self.streams.scratch);
                bytes.clear();
                // SAFETY: big buffer `bid` came out of the ring with this completion: the kernel
                // wrote its first `c.result` bytes and nothing else uses it until it is returned
                // just below; `n` is within the buffer (RECV_LEN < BIG_BUF).
                bytes.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(self.big_ptr(u32::from(bid)), n)
                });
                self.return_big(u32::from(bid));
                Received::Copied(bytes)
            } else {
                Received::Pool(Packet::new(self.pool.clone(), u32::from(bid), 0..BUF_SIZE))
            }
        });
        let Some(s) = self.op_done(id) else { return };
        let open = s.closing.is_none();
        let Kind::Conn {
            recv_armed,
            starved,
            ended,
            reading,
            ..
        } = &mut s.kind
        else {
            return;
        };
        *recv_armed = false;
        let keep_reading = *reading;
        let mut watch = false;
        let event = match c.result {
            n if n > 0 => None,
            0 => {
                *ended = true;
                Some(StreamEvent::Closed {
                    conn: id,
                    error: None,
                })
            }
            e if -e == libc::ENOBUFS => {
                watch = !*starved;
                *starved = true;
                None
            }
            e if -e == libc::ECANCELED => None,
            e => {
                *ended = true;
                Some(StreamEvent::Closed {
                    conn: id,
                    error: Some(io::Error::from_raw_os_error(-e)),
                })
            }
        };
        if c.result == -libc::ENOBUFS {
            self.counters.enobufs += 1;
        }
        if watch {
            self.streams.watch.push(id);
        }
        if c.result > 0 {
            let Some(pkt) = pkt else {
                self.counters.recv_errors += 1;
                return;
            };
            let n = (c.result as usize).min(RECV_LEN);
            self.streams.counters.read_bytes += n as u64;
            if let Some(h) = handler.filter(|_| open) {
                let bytes = match &pkt {
                    Received::Pool(p) => &p.buf()[..n],
                    Received::Copied(v) => &v[..n.min(v.len())],
                };
                h.on_stream(now, StreamEvent::Data { conn: id, bytes }, self);
            }
            match pkt {
                Received::Pool(p) => drop(p),
                Received::Copied(v) => self.streams.scratch = v,
            }
            if keep_reading {
                // The handler may have turned reading off (or closed): arm_recv checks.
                self.arm_recv(id);
            }
            return;
        }
        if let (Some(h), Some(e)) = (handler.filter(|_| open), event) {
            h.on_stream(now, e, self);
        }
    }

    fn complete_stream_send<H: Handler>(
        &mut self,
        id: StreamId,
        c: Cqe,
        handler: Option<&mut H>,
        now: Instant,
    ) {
        let Some(s) = self.op_done(id) else { return };
        let open = s.closing.is_none();
        let Kind::Conn { out, ended, .. } = &mut s.kind else {
            return;
        };
        let mut event = None;
        let mut written = 0;
        if c.result >= 0 {
            written = c.result as u64;
            out.returned(c.result as usize);
            if out.take_notify() {
                event = Some(StreamEvent::Writable { conn: id });
            }
        } else {
            out.returned(0);
            if c.result != -libc::ECANCELED && !*ended {
                // The connection is broken: report it once, as a read error would.
                *ended = true;
                event = Some(StreamEvent::Closed {
                    conn: id,
                    error: Some(io::Error::from_raw_os_error(-c.result)),
                });
            }
        }
        self.streams.counters.written_bytes += written;
        if c.result >= 0 {
            self.submit_send(id);
        }
        if let (Some(h), Some(e)) = (handler.filter(|_| open), event) {
            h.on_stream(now, e, self);
        }
    }

    fn complete_connect<H: Handler>(
        &mut self,
        id: StreamId,
        handler: Option<&mut H>,
        now: Instant,
    ) {
        let Some(s) = self.op_done(id) else { return };
        let open = s.closing.is_none();
        let error = connect_result(&s.fd);
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
        if let Some(h) = handler.filter(|_| open) {
            h.on_stream(now, StreamEvent::Connected { conn: id, error }, self);
        }
        if ok {
            // Bytes queued while connecting, and a reading turned on meanwhile.
            self.submit_send(id);
            self.arm_recv(id);
        }
    }

    /// Once per batch, after the handler's tick: sends for connections that queued bytes, and
    /// the sockets being watched (closing, starved, listeners to re-arm).
    pub(super) fn streams_tick(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.streams.dirty) {
            if let Some(UStream {
                kind: Kind::Conn { dirty, .. },
                ..
            }) = self.streams.get_mut(id)
            {
                *dirty = false;
                self.submit_send(id);
            }
        }
        if self.streams.watch.is_empty() {
            return;
        }
        let mut watch = std::mem::take(&mut self.streams.watch);
        watch.sort_unstable();
        watch.dedup();
        let buffers = self.bufring.in_kernel > 0;
        watch.retain(|&id| {
            let Some(s) = self.streams.get_mut(id) else {
                return false;
            };
            if s.closing.is_some() {
                self.try_release(id, now);
                return self.streams.get(id).is_some();
            }
            match &mut s.kind {
                Kind::Listener { retry_at, .. } => match *retry_at {
                    Some(at) if at <= now => {
                        *retry_at = None;
                        self.arm_accept(id);
                        false
                    }
                    Some(_) => true,
                    None => false,
                },
                Kind::Conn { starved, .. } => {
                    if !*starved {
                        return false;
                    }
                    if !buffers {
                        return true;
                    }
                    *starved = false;
                    self.arm_recv(id);
                    false
                }
            }
        });
        // Sockets added while walking the list (an arm that could not be queued) stay too.
        watch.append(&mut self.streams.watch);
        self.streams.watch = watch;
    }

    /// At stop: every stream is closed and everything of it cancelled.
    pub(super) fn streams_close_all(&mut self) {
        let ids: Vec<StreamId> = match &self.streams.table {
            Some(t) => t.ids().map(|i| StreamId(i.0)).collect(),
            None => return,
        };
        let now = Instant::now();
        for id in ids {
            if let Some(s) = self.streams.get_mut(id) {
                s.closing.get_or_insert(now);
            }
            self.cancel_all(id);
            self.try_release(id, now);
            if self.streams.get(id).is_some() {
                self.streams.watch.push(id);
            }
        }
    }

    /// During the drain at stop: drops what has nothing in the kernel any more.
    pub(super) fn streams_release_idle(&mut self) {
        let ids: Vec<StreamId> = std::mem::take(&mut self.streams.watch);
        let now = Instant::now();
        for id in ids {
            self.try_release(id, now);
            if self.streams.get(id).is_some() {
                self.streams.watch.push(id);
            }
        }
    }

    fn adopt_stream(&mut self, s: UStream) -> StreamId {
        self.streams.insert(s)
    }
}

impl StreamIo for Worker {
    fn adopt_listener(&mut self, listener: TcpListener) -> io::Result<StreamId> {
        listener.set_nonblocking(true)?;
        let id = self.adopt_stream(UStream {
            fd: OwnedFd::from(listener),
            kind: Kind::Listener {
                armed: false,
                retry_at: None,
            },
            ops: 0,
            closing: None,
            cancelled: false,
        });
        self.arm_accept(id);
        Ok(id)
    }

    fn tcp_connect(&mut self, from: Option<SocketAddr>, to: SocketAddr) -> io::Result<StreamId> {
        let fd = connect_socket(from, to)?;
        let raw = fd.as_raw_fd();
        let id = self.adopt_stream(new_conn(fd, true));
        self.streams.counters.connects += 1;
        self.streams.counters.open += 1;
        let sqe = opcode::PollAdd::new(Fd(raw), libc::POLLOUT as u32)
            .build()
            .user_data(ud(UD_S_POLL, id));
        if !self.stream_push(&sqe, id) {
            self.stream_close(id);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "io_uring submission queue full",
            ));
        }
        Ok(id)
    }

    fn stream_adopt(&mut self, fd: OwnedFd) -> io::Result<StreamId> {
        prepare_accepted(&fd)?;
        let id = self.adopt_stream(new_conn(fd, false));
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
        if let Some(UStream {
            kind: Kind::Conn { reading, .. },
            closing: None,
            ..
        }) = self.streams.get_mut(id)
        {
            *reading = on;
            if on {
                self.arm_recv(id);
            }
        }
    }

    fn stream_send(&mut self, id: StreamId, bytes: &[u8]) -> usize {
        let Some(UStream {
            kind: Kind::Conn {
                out, dirty, ended, ..
            },
            closing: None,
            ..
        }) = self.streams.get_mut(id)
        else {
            self.streams.counters.refused_bytes += bytes.len() as u64;
            return 0;
        };
        if *ended {
            self.streams.counters.refused_bytes += bytes.len() as u64;
            return 0;
        }
        let n = out.push(bytes);
        let queue = n > 0 && !*dirty && !out.is_lent();
        if queue {
            *dirty = true;
        }
        if queue {
            self.streams.dirty.push(id);
        }
        self.streams.counters.refused_bytes += (bytes.len() - n) as u64;
        n
    }

    fn stream_room(&self, id: StreamId) -> usize {
        match self.streams.get(id) {
            Some(UStream {
                kind: Kind::Conn { out, ended, .. },
                closing: None,
                ..
            }) if !*ended => out.room(),
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
        let conn = if let Kind::Conn { reading, .. } = &mut s.kind {
            *reading = false;
            true
        } else {
            false
        };
        if conn {
            self.streams.counters.open = self.streams.counters.open.saturating_sub(1);
            self.streams.counters.closed += 1;
        }
        self.cancel_inputs(id);
        self.try_release(id, now);
        if self.streams.get(id).is_some() {
            self.streams.watch.push(id);
        }
    }

    fn stream_detach(&mut self, id: StreamId) -> io::Result<OwnedFd> {
        let movable = matches!(
            self.streams.get(id),
            Some(UStream {
                kind: Kind::Conn {
                    connecting: false,
                    recv_armed: false,
                    out,
                    ..
                },
                ops: 0,
                closing: None,
                ..
            }) if out.is_empty()
        );
        if !movable {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "stream busy: output queued or an operation in flight",
            ));
        }
        let s = self
            .streams
            .remove(id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such stream"))?;
        self.streams.counters.open = self.streams.counters.open.saturating_sub(1);
        Ok(s.fd)
    }

    fn stream_counters(&self) -> &StreamCounters {
        &self.streams.counters
    }
}
