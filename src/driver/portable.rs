//! The portable backend: edge-triggered epoll, `recvmmsg` straight into pool buffers at
//! [`HEADROOM`], and `sendmmsg` of the batch's queued sends once per batch. For hosts where
//! io_uring is missing or blocked (a container's default seccomp profile).
//!
//! # Readiness
//! Sockets are registered edge-triggered, so a socket that reported readable stays on the
//! `ready` list until a `recvmmsg` returns fewer datagrams than asked (the queue is empty; the
//! next datagram raises a new edge). Each batch reads at most [`BATCH`] datagrams per ready
//! socket, so one busy socket cannot starve thousands of quiet ones.
//!
//! # Sends
//! Sends are queued during the batch and flushed by `sendmmsg`, grouped per socket in queue
//! order. A socket whose send buffer is full (EAGAIN) keeps its remaining sends queued and gets
//! EPOLLOUT interest until it drains, like io_uring's internal poll: nothing is dropped for a
//! momentarily full socket buffer. The queue is bounded by the buffers it holds.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use socket2::SockAddr;

use super::pool::{BufPool, Packet, SendPool};
use super::sock::{bind_udp_with, SockTable, UdpOptions};
use super::sockaddr::{self, NAME_LEN};
mod stream;

use super::{
    poll_control, valid_range, wait_budget, Control, ControlFlow, Counters, DriverConfig,
    DriverError, Handler, Io, SockId, BUF_SIZE, HEADROOM, MAX_DATAGRAM,
};

/// Datagrams per `recvmmsg` / `sendmmsg` call.
pub const BATCH: usize = 64;
/// epoll events fetched per wait.
const EVENTS: usize = 256;

/// Space for one peer address, aligned like a `sockaddr_in6`.
#[derive(Copy, Clone)]
#[repr(C, align(8))]
struct Name([u8; NAME_LEN]);

#[derive(Debug)]
struct PortSock {
    fd: OwnedFd,
    local: SocketAddr,
    /// On the `ready` list (readable, not yet drained).
    ready: bool,
    /// A send hit EAGAIN; EPOLLOUT is registered until the socket is writable again.
    blocked: bool,
    closing: bool,
}

#[derive(Debug)]
enum SendBuf {
    Recv(u32),
    Copy(u32),
}

#[derive(Debug)]
struct QueuedSend {
    via: SockId,
    /// Position in the queue, to keep per-socket order through an unstable sort.
    seq: u32,
    to: SockAddr,
    buf: SendBuf,
    start: u32,
    len: u32,
}

/// What one `recvmmsg` found.
enum RecvOutcome {
    /// Fewer datagrams than asked: the socket's queue is empty.
    Drained,
    /// A full batch: there may be more.
    More,
    /// No free buffer to receive into.
    NoBuffers,
}

/// A datagram received in this batch, before it goes to the handler.
#[derive(Copy, Clone)]
struct RecvMeta {
    bid: u32,
    len: u32,
    truncated: bool,
    from: Option<SocketAddr>,
}

/// One worker's epoll set, buffers and sockets. Implements [`Io`] for the handler.
pub struct Worker {
    epfd: OwnedFd,
    pool: Rc<BufPool>,
    send_pool: SendPool,
    socks: SockTable<PortSock>,
    ready: Vec<SockId>,
    queue: Vec<QueuedSend>,
    /// Scratch for recvmmsg: headers, iovecs and names, never resized (the headers point into
    /// the other two).
    rmsgs: Vec<libc::mmsghdr>,
    riov: Vec<libc::iovec>,
    rnames: Vec<Name>,
    rbufs: Vec<u32>,
    got: Vec<RecvMeta>,
    /// Scratch for sendmmsg.
    smsgs: Vec<libc::mmsghdr>,
    siov: Vec<libc::iovec>,
    events: Vec<libc::epoll_event>,
    /// Scratch for `flush`: per socket group, (end of the handled part, end of the group).
    groups: Vec<(usize, usize)>,
    /// The previous batch's queue vector, kept for its capacity.
    spare_queue: Vec<QueuedSend>,
    closing: Vec<SockId>,
    counters: Counters,
    /// TCP listeners and connections (see `stream`).
    streams: stream::Streams,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("portable::Worker")
            .field("ready", &self.ready.len())
            .field("queued", &self.queue.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct for which all-zero is a valid (empty) value.
    unsafe { std::mem::zeroed() }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn epoll_ctl(epfd: RawFd, op: i32, fd: RawFd, events: u32, id: SockId) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: u64::from(id.0),
    };
    // SAFETY: both fds are open; `ev` lives across the call and the kernel copies it.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const IN: u32 = (libc::EPOLLIN | libc::EPOLLET) as u32;
const IN_OUT: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32;

impl Worker {
    fn new(config: &DriverConfig) -> Result<Worker, DriverError> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(DriverError::Io {
                what: "epoll_create1",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: epfd is a fresh fd that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let count = u32::from(config.recv_buffers);
        let pool = Rc::new(BufPool::new(count).map_err(DriverError::io("receive buffers"))?);
        for bid in (0..count).rev() {
            pool.give_back(bid);
        }
        let send_pool =
            SendPool::new(config.send_buffers).map_err(DriverError::io("send buffers"))?;
        let iov0 = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Ok(Worker {
            epfd,
            pool,
            send_pool,
            socks: SockTable::new(),
            ready: Vec::new(),
            queue: Vec::new(),
            rmsgs: vec![zeroed_mmsghdr(); BATCH],
            riov: vec![iov0; BATCH],
            rnames: vec![Name([0; NAME_LEN]); BATCH],
            rbufs: Vec::with_capacity(BATCH),
            got: Vec::with_capacity(BATCH),
            smsgs: vec![zeroed_mmsghdr(); BATCH],
            siov: vec![iov0; BATCH],
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            groups: Vec::new(),
            spare_queue: Vec::new(),
            closing: Vec::new(),
            counters: Counters::default(),
            streams: stream::Streams::default(),
        })
    }

    fn adopt(&mut self, sock: UdpSocket) -> io::Result<SockId> {
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        let fd = OwnedFd::from(sock);
        let raw = fd.as_raw_fd();
        let id = self.socks.insert(PortSock {
            fd,
            local,
            // Datagrams may already be queued: an edge-triggered registration reports the
            // current state once, but reading first costs one EAGAIN at most.
            ready: true,
            blocked: false,
            closing: false,
        });
        if let Err(e) = epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, raw, IN, id) {
            self.socks.remove(id);
            return Err(e);
        }
        self.ready.push(id);
        Ok(id)
    }

    /// One `recvmmsg` on `id` into free pool buffers; the datagrams go to `handler`.
    fn recv_batch<H: Handler>(&mut self, id: SockId, handler: &mut H, now: Instant) -> RecvOutcome {
        let fd = match self.socks.get(id) {
            Some(s) if !s.closing => s.fd.as_raw_fd(),
            _ => return RecvOutcome::Drained,
        };
        self.rbufs.clear();
        self.pool.take_some(BATCH, &mut self.rbufs);
        let n = self.rbufs.len();
        if n == 0 {
            self.counters.enobufs += 1;
            return RecvOutcome::NoBuffers;
        }
        for i in 0..n {
            // SAFETY: HEADROOM < BUF_SIZE, inside buffer rbufs[i].
            let base = unsafe { self.pool.buf_ptr(self.rbufs[i]).add(HEADROOM) };
            self.riov[i] = libc::iovec {
                iov_base: base.cast(),
                iov_len: MAX_DATAGRAM,
            };
            let hdr = &mut self.rmsgs[i].msg_hdr;
            *hdr = zeroed_mmsghdr().msg_hdr;
            hdr.msg_name = self.rnames[i].0.as_mut_ptr().cast();
            hdr.msg_namelen = NAME_LEN as u32;
            hdr.msg_iov = &mut self.riov[i];
            hdr.msg_iovlen = 1;
            self.rmsgs[i].msg_len = 0;
        }
        // SAFETY: rmsgs[..n] point at rnames[i] (NAME_LEN bytes) and riov[i], which point at
        // MAX_DATAGRAM bytes of buffers this worker took off the free list; nothing else reads or
        // writes them during the call. MSG_DONTWAIT: never blocks.
        let ret = unsafe {
            libc::recvmmsg(
                fd,
                self.rmsgs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if ret < 0 {
            for &bid in &self.rbufs {
                self.pool.give_back(bid);
            }
            return match errno() {
                libc::EAGAIN | libc::EINTR => RecvOutcome::Drained,
                e => {
                    // A pending socket error (ICMP on a connected socket): reported once, the
                    // socket stays usable; the next datagram raises a new edge.
                    self.counters.recv_errors += 1;
                    tracing::debug!(errno = e, sock = id.0, "recvmmsg failed");
                    RecvOutcome::Drained
                }
            };
        }
        let got_n = ret as usize;
        self.got.clear();
        for i in 0..got_n {
            let m = &self.rmsgs[i];
            let namelen = (m.msg_hdr.msg_namelen as usize).min(NAME_LEN);
            self.got.push(RecvMeta {
                bid: self.rbufs[i],
                len: m.msg_len,
                truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0
                    || m.msg_len as usize > MAX_DATAGRAM,
                from: sockaddr::parse(&self.rnames[i].0, namelen),
            });
        }
        for &bid in &self.rbufs[got_n..] {
            self.pool.give_back(bid);
        }
        let got = std::mem::take(&mut self.got);
        for m in &got {
            let pkt = Packet::new(
                self.pool.clone(),
                m.bid,
                HEADROOM..HEADROOM + (m.len as usize).min(MAX_DATAGRAM),
            );
            if m.truncated {
                self.counters.truncated += 1;
                continue;
            }
            let Some(from) = m.from else {
                self.counters.recv_errors += 1;
                continue;
            };
            // A handler may close the socket while its batch is being delivered.
            if !matches!(self.socks.get(id), Some(s) if !s.closing) {
                continue;
            }
            self.counters.recv_packets += 1;
            self.counters.recv_bytes += u64::from(m.len);
            handler.on_recv(now, id, from, pkt, self);
        }
        self.got = got;
        if got_n < n {
            RecvOutcome::Drained
        } else {
            RecvOutcome::More
        }
    }

    fn queue_send(&mut self, via: SockId, to: SocketAddr, buf: SendBuf, range: Range<usize>) {
        let seq = self.queue.len() as u32;
        self.queue.push(QueuedSend {
            via,
            seq,
            to: SockAddr::from(to),
            buf,
            start: range.start as u32,
            len: range.len() as u32,
        });
    }

    fn release(&mut self, buf: SendBuf) {
        match buf {
            SendBuf::Recv(bid) => self.pool.give_back(bid),
            SendBuf::Copy(i) => self.send_pool.release(i),
        }
    }

    fn buf_ptr(&self, buf: &SendBuf) -> *mut u8 {
        match *buf {
            SendBuf::Recv(bid) => self.pool.buf_ptr(bid),
            SendBuf::Copy(i) => self.send_pool.ptr(i),
        }
    }

    /// Sends every queued datagram: `sendmmsg` per socket, in queue order. Sends on a blocked
    /// socket stay queued. Allocation-free once the scratch vectors have grown.
    fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut queue = std::mem::take(&mut self.queue);
        queue.sort_unstable_by_key(|q| (q.via, q.seq));
        // First pass: send each socket's group; remember where each group's unsent tail starts.
        let mut groups = std::mem::take(&mut self.groups);
        groups.clear();
        let mut i = 0usize;
        while i < queue.len() {
            let via = queue[i].via;
            let mut j = i + 1;
            while j < queue.len() && queue[j].via == via {
                j += 1;
            }
            let done = match self.socks.get(via) {
                Some(s) if s.blocked => i,
                Some(s) => i + self.send_group(via, s.fd.as_raw_fd(), &queue[i..j]),
                None => {
                    // Never opened, or closed and reaped already.
                    self.counters.drops += (j - i) as u64;
                    j
                }
            };
            groups.push((done, j));
            i = j;
        }
        // Second pass: release what went out (or failed), keep the rest in order.
        let mut kept = std::mem::take(&mut self.spare_queue);
        kept.clear();
        let mut g = 0usize;
        for (idx, q) in queue.drain(..).enumerate() {
            while groups[g].1 <= idx {
                g += 1;
            }
            if idx < groups[g].0 {
                self.release(q.buf);
            } else {
                let seq = kept.len() as u32;
                kept.push(QueuedSend { seq, ..q });
            }
        }
        self.groups = groups;
        self.spare_queue = queue;
        self.queue = kept;
    }

    /// Sends `group` (all via `via`) with as few `sendmmsg` calls as possible. Returns how many
    /// were handled (sent, or failed and counted); the rest wait for EPOLLOUT.
    fn send_group(&mut self, via: SockId, fd: RawFd, group: &[QueuedSend]) -> usize {
        let mut k = 0usize;
        while k < group.len() {
            let n = (group.len() - k).min(BATCH);
            for m in 0..n {
                let q = &group[k + m];
                // SAFETY: start + len <= BUF_SIZE was checked when the send was queued.
                let base = unsafe { self.buf_ptr(&q.buf).add(q.start as usize) };
                self.siov[m] = libc::iovec {
                    iov_base: base.cast(),
                    iov_len: q.len as usize,
                };
                let hdr = &mut self.smsgs[m].msg_hdr;
                *hdr = zeroed_mmsghdr().msg_hdr;
                hdr.msg_name = q.to.as_ptr() as *mut libc::c_void;
                hdr.msg_namelen = q.to.len();
                hdr.msg_iov = &mut self.siov[m];
                hdr.msg_iovlen = 1;
                self.smsgs[m].msg_len = 0;
            }
            // SAFETY: smsgs[..n] point at siov[m] and at the queued SockAddrs, which point at
            // buffers owned by the queued sends; all outlive the call, which only reads them.
            let ret = unsafe {
                libc::sendmmsg(fd, self.smsgs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT)
            };
            if ret > 0 {
                for m in 0..ret as usize {
                    self.counters.send_packets += 1;
                    self.counters.send_bytes += u64::from(self.smsgs[m].msg_len);
                }
                k += ret as usize;
                continue;
            }
            match errno() {
                libc::EINTR => {}
                libc::EAGAIN => {
                    self.block(via);
                    return k;
                }
                e => {
                    // This datagram is refused (EMSGSIZE, EACCES, ENETUNREACH...): count it and
                    // go on with the next.
                    tracing::debug!(errno = e, sock = via.0, "sendmmsg failed");
                    self.counters.send_errors += 1;
                    k += 1;
                }
            }
        }
        k
    }

    /// Registers EPOLLOUT on a socket whose send buffer is full.
    fn block(&mut self, id: SockId) {
        let epfd = self.epfd.as_raw_fd();
        if let Some(s) = self.socks.get_mut(id) {
            s.blocked = true;
            if let Err(e) = epoll_ctl(epfd, libc::EPOLL_CTL_MOD, s.fd.as_raw_fd(), IN_OUT, id) {
                // Without EPOLLOUT the sends would wait for the next readable edge instead.
                tracing::warn!(error = %e, sock = id.0, "epoll_ctl(EPOLLOUT) failed");
                s.blocked = false;
            }
        }
    }

    /// The socket is writable again: drop EPOLLOUT interest (it would fire on every freed skb).
    fn unblock(&mut self, id: SockId) {
        let epfd = self.epfd.as_raw_fd();
        if let Some(s) = self.socks.get_mut(id) {
            if s.blocked {
                s.blocked = false;
                if let Err(e) = epoll_ctl(epfd, libc::EPOLL_CTL_MOD, s.fd.as_raw_fd(), IN, id) {
                    tracing::warn!(error = %e, sock = id.0, "epoll_ctl(MOD) failed");
                }
            }
        }
    }

    /// Waits for readiness up to `wait` and updates the ready list.
    fn wait(&mut self, wait: std::time::Duration) -> Result<(), DriverError> {
        // epoll_wait takes milliseconds: round up so a timer is never polled early in a loop.
        let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `events` has EVENTS entries; the kernel writes at most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                EVENTS as i32,
                ms,
            )
        };
        if n < 0 {
            return match errno() {
                libc::EINTR => Ok(()),
                _ => Err(DriverError::Io {
                    what: "epoll_wait",
                    source: io::Error::last_os_error(),
                }),
            };
        }
        for e in 0..n as usize {
            let ev = self.events[e];
            if ev.u64 & stream::STREAM_TAG != 0 {
                self.stream_ready(stream::stream_id(ev.u64), ev.events);
                continue;
            }
            let id = SockId(ev.u64 as u32);
            if ev.events & libc::EPOLLOUT as u32 != 0 {
                self.unblock(id);
            }
            if ev.events & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                if let Some(s) = self.socks.get_mut(id) {
                    if !s.ready && !s.closing {
                        s.ready = true;
                        self.ready.push(id);
                    }
                }
            }
        }
        Ok(())
    }

    /// One receive round over the ready sockets (at most BATCH datagrams each).
    fn receive<H: Handler>(&mut self, handler: &mut H, now: Instant) {
        let mut ready = std::mem::take(&mut self.ready);
        let mut out_of_buffers = false;
        ready.retain(|&id| {
            if out_of_buffers {
                return true;
            }
            match self.recv_batch(id, handler, now) {
                RecvOutcome::More => true,
                RecvOutcome::NoBuffers => {
                    out_of_buffers = true;
                    true
                }
                RecvOutcome::Drained => {
                    if let Some(s) = self.socks.get_mut(id) {
                        s.ready = false;
                    }
                    false
                }
            }
        });
        // Sockets opened by the handler during the round were pushed onto self.ready.
        ready.append(&mut self.ready);
        self.ready = ready;
    }

    /// Closes sockets marked closing, after the flush that gave their queued sends a chance.
    fn close_finished(&mut self) {
        if self.closing.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.closing) {
            if self.queue.iter().any(|q| q.via == id) {
                // Sends still waiting for EPOLLOUT on this socket go with it.
                let mut queue = std::mem::take(&mut self.queue);
                let mut kept = std::mem::take(&mut self.spare_queue);
                kept.clear();
                for q in queue.drain(..) {
                    if q.via == id {
                        self.release(q.buf);
                        self.counters.drops += 1;
                    } else {
                        let seq = kept.len() as u32;
                        kept.push(QueuedSend { seq, ..q });
                    }
                }
                self.spare_queue = queue;
                self.queue = kept;
            }
            // Dropping the OwnedFd closes the socket (and removes it from the epoll set).
            self.socks.remove(id);
        }
    }
}

impl Io for Worker {
    type Packet = Packet;

    fn open_udp_with(&mut self, addr: SocketAddr, opts: UdpOptions) -> io::Result<SockId> {
        let sock = bind_udp_with(addr, opts)?;
        self.adopt(sock)
    }

    fn local_addr(&self, sock: SockId) -> io::Result<SocketAddr> {
        match self.socks.get(sock) {
            Some(s) if !s.closing => Ok(s.local),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such socket")),
        }
    }

    fn close(&mut self, sock: SockId) {
        let epfd = self.epfd.as_raw_fd();
        let Some(s) = self.socks.get_mut(sock) else {
            return;
        };
        if s.closing {
            return;
        }
        s.closing = true;
        // SAFETY: plain syscall on open fds; a DEL ignores the event argument.
        unsafe {
            libc::epoll_ctl(
                epfd,
                libc::EPOLL_CTL_DEL,
                s.fd.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
        self.closing.push(sock);
    }

    fn forward(&mut self, pkt: Packet, via: SockId, to: SocketAddr, range: Range<usize>) {
        if !pkt.is_from(&self.pool) || !valid_range(&range) || !self.sendable(via) {
            self.counters.drops += 1;
            return;
        }
        let bid = pkt.take();
        self.queue_send(via, to, SendBuf::Recv(bid), range);
    }

    fn send(&mut self, via: SockId, to: SocketAddr, bytes: &[u8]) {
        if !self.sendable(via) || bytes.len() > BUF_SIZE {
            self.counters.drops += 1;
            return;
        }
        if self.send_pool.is_exhausted() {
            // Sends complete synchronously: flushing frees the buffers of earlier sends.
            self.flush();
        }
        match self.send_pool.fill(bytes) {
            Some(i) => self.queue_send(via, to, SendBuf::Copy(i), 0..bytes.len()),
            None => self.counters.drops += 1,
        }
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }
}

impl Worker {
    fn sendable(&self, via: SockId) -> bool {
        matches!(self.socks.get(via), Some(s) if !s.closing)
    }
}

/// Runs the portable loop until Stop; see [`super::run_worker`].
pub(super) fn run<H: Handler>(
    handler: &mut H,
    sockets: Vec<UdpSocket>,
    control: &Receiver<Control>,
    config: &DriverConfig,
) -> Result<Counters, DriverError> {
    let mut w = Worker::new(config)?;
    for s in sockets {
        w.adopt(s).map_err(DriverError::io("adopt socket"))?;
    }
    let result = event_loop(&mut w, handler, control);
    // Last chance for queued sends; sends are synchronous here, so nothing is left in flight.
    w.flush();
    for id in w.socks.ids().collect::<Vec<_>>() {
        w.close(id);
    }
    w.close_finished();
    result.map(|()| w.counters)
}

fn event_loop<H: Handler>(
    w: &mut Worker,
    handler: &mut H,
    control: &Receiver<Control>,
) -> Result<(), DriverError> {
    loop {
        if let ControlFlow::Stop = poll_control(control, &w.counters) {
            return Ok(());
        }
        let now = Instant::now();
        let wait = if (!w.ready.is_empty() && w.pool.has_returned()) || w.streams.pending() {
            std::time::Duration::ZERO
        } else {
            wait_budget(handler.next_timeout(), now)
        };
        w.wait(wait)?;
        let now = Instant::now();
        w.receive(handler, now);
        w.streams_run(handler, now);
        handler.on_tick(now, w);
        w.flush();
        w.streams_flush(handler, now);
        w.close_finished();
    }
}
