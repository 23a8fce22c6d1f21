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

use super::gso;
use super::pool::{BufPool, Packet, Region, SendPool};
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
    /// The destination, for grouping GSO runs; `to` is the same as the kernel reads it.
    dest: SocketAddr,
    /// [`gso::group_key`] of `via` and `dest`, computed once when queued: the batch's sort
    /// compares keys O(n log n) times.
    key: u128,
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
    /// GRO: the segment size of a coalesced datagram (`len` > `segment`).
    segment: Option<usize>,
    /// Which message of the batch (its staging area, with GRO).
    msg: usize,
}

/// Segments of a coalesced datagram still to deliver, copied out of the receive buffers.
#[derive(Debug)]
struct GroPending {
    sock: SockId,
    from: SocketAddr,
    data: Vec<u8>,
    segment: usize,
    next: usize,
}

/// With GRO, the bytes of a coalesced datagram past the receive buffer land here: one area per
/// message of a batch, so that a 64 KiB datagram fits.
const STAGE_LEN: usize = 65_536 - MAX_DATAGRAM;
/// Control space per received message (one `UDP_GRO` message needs [`gso::CMSG_SPACE`]).
const RCONTROL: usize = 64;

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
    /// Scratch for a coalesced datagram's later segments: (buffer, length).
    segs: Vec<(u32, usize)>,
    /// GRO: the rest of a coalesced datagram whose segments found no free buffer, delivered
    /// before anything else is read; and the spare byte vector it reuses.
    gro_pending: Option<GroPending>,
    gro_spill: Vec<u8>,
    /// Control messages received (GRO segment sizes), one area per message.
    rcontrol: Vec<[u8; RCONTROL]>,
    /// GRO staging, `BATCH * STAGE_LEN` bytes; `None` without GRO.
    stage: Option<Region>,
    /// Scratch for sendmmsg: headers, iovecs (up to [`gso::MAX_SEGMENTS`] per message with GSO),
    /// `UDP_SEGMENT` control messages, and how many queued sends each message carries.
    smsgs: Vec<libc::mmsghdr>,
    siov: Vec<libc::iovec>,
    scmsg: Vec<[u8; gso::CMSG_SPACE]>,
    sruns: Vec<usize>,
    gso: bool,
    gro: bool,
    busy_poll_us: Option<u32>,
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
        let stage = if config.gro {
            Some(Region::new(BATCH * STAGE_LEN).map_err(DriverError::io("GRO staging"))?)
        } else {
            None
        };
        Ok(Worker {
            epfd,
            pool,
            send_pool,
            socks: SockTable::new(),
            ready: Vec::new(),
            queue: Vec::new(),
            rmsgs: vec![zeroed_mmsghdr(); BATCH],
            riov: vec![iov0; 2 * BATCH],
            rnames: vec![Name([0; NAME_LEN]); BATCH],
            rbufs: Vec::with_capacity(BATCH),
            got: Vec::with_capacity(BATCH),
            segs: Vec::with_capacity(gso::MAX_SEGMENTS),
            gro_pending: None,
            gro_spill: if config.gro {
                Vec::with_capacity(65_536)
            } else {
                Vec::new()
            },
            rcontrol: vec![[0; RCONTROL]; BATCH],
            stage,
            smsgs: vec![zeroed_mmsghdr(); BATCH],
            siov: vec![
                iov0;
                if config.gso {
                    BATCH * gso::MAX_SEGMENTS
                } else {
                    BATCH
                }
            ],
            scmsg: vec![[0; gso::CMSG_SPACE]; BATCH],
            sruns: vec![0; BATCH],
            gso: config.gso,
            gro: config.gro,
            busy_poll_us: config.busy_poll_us,
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
        if self.gro {
            gso::enable_gro(sock.as_raw_fd())?;
        }
        if let Some(us) = self.busy_poll_us {
            // Best effort: without CAP_NET_ADMIN a value above net.core.busy_read is refused.
            let v = us.min(i32::MAX as u32) as libc::c_int;
            let _ =
                super::sock::set_int_opt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_BUSY_POLL, v);
        }
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
        // With GRO, each message may need up to MAX_SEGMENTS buffers for its segments: read no
        // more messages than the free buffers can split (at least one; a datagram that still
        // runs short waits in `gro_pending`).
        let want = if self.gro {
            (self.pool.available() / gso::MAX_SEGMENTS).clamp(1, BATCH)
        } else {
            BATCH
        };
        self.pool.take_some(want, &mut self.rbufs);
        let n = self.rbufs.len();
        if n == 0 {
            self.counters.enobufs += 1;
            return RecvOutcome::NoBuffers;
        }
        let stage = self.stage.as_ref().map(|r| r.as_ptr());
        for i in 0..n {
            // SAFETY: HEADROOM < BUF_SIZE, inside buffer rbufs[i].
            let base = unsafe { self.pool.buf_ptr(self.rbufs[i]).add(HEADROOM) };
            self.riov[2 * i] = libc::iovec {
                iov_base: base.cast(),
                iov_len: MAX_DATAGRAM,
            };
            let hdr = &mut self.rmsgs[i].msg_hdr;
            *hdr = zeroed_mmsghdr().msg_hdr;
            hdr.msg_name = self.rnames[i].0.as_mut_ptr().cast();
            hdr.msg_namelen = NAME_LEN as u32;
            hdr.msg_iov = &mut self.riov[2 * i];
            hdr.msg_iovlen = 1;
            if let Some(stage) = stage {
                // A coalesced datagram continues past the buffer into this message's staging
                // area; the kernel says the segment size in a control message.
                self.riov[2 * i + 1] = libc::iovec {
                    // SAFETY: i < BATCH: inside the BATCH * STAGE_LEN staging region.
                    iov_base: unsafe { stage.add(i * STAGE_LEN) }.cast(),
                    iov_len: STAGE_LEN,
                };
                hdr.msg_iovlen = 2;
                hdr.msg_control = self.rcontrol[i].as_mut_ptr().cast();
                hdr.msg_controllen = RCONTROL as _;
            }
            self.rmsgs[i].msg_len = 0;
        }
        // SAFETY: rmsgs[..n] point at rnames[i] (NAME_LEN bytes), riov[2i] (MAX_DATAGRAM bytes
        // of a buffer this worker took off the free list), with GRO riov[2i + 1] (this
        // message's staging area) and rcontrol[i]; nothing else reads or writes them during the
        // call. MSG_DONTWAIT: never blocks.
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
            let len = m.msg_len as usize;
            let segment = if self.gro {
                // size_t on glibc, socklen_t on musl.
                #[allow(clippy::unnecessary_cast)]
                let clen = (m.msg_hdr.msg_controllen as usize).min(RCONTROL);
                gso::gro_segment_size(&self.rcontrol[i][..clen]).filter(|&g| g < len)
            } else {
                None
            };
            let too_long = match segment {
                Some(g) => g > MAX_DATAGRAM,
                None => len > MAX_DATAGRAM,
            };
            self.got.push(RecvMeta {
                bid: self.rbufs[i],
                len: m.msg_len,
                truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || too_long,
                from: sockaddr::parse(&self.rnames[i].0, namelen),
                segment,
                msg: i,
            });
        }
        for &bid in &self.rbufs[got_n..] {
            self.pool.give_back(bid);
        }
        let got = std::mem::take(&mut self.got);
        let mut segs = std::mem::take(&mut self.segs);
        for m in &got {
            let first = m.segment.unwrap_or(m.len as usize).min(MAX_DATAGRAM);
            let pkt = Packet::new(self.pool.clone(), m.bid, HEADROOM..HEADROOM + first);
            if m.truncated {
                self.counters.truncated += 1;
                continue;
            }
            let Some(from) = m.from else {
                self.counters.recv_errors += 1;
                continue;
            };
            segs.clear();
            if self.gro_pending.is_some() {
                // A datagram of this batch is waiting for buffers (`receive` reads no other
                // socket meanwhile). The read limit sized the batch for the free buffers, so
                // this is rare; drop and count rather than deliver out of order.
                self.counters.enobufs += 1;
                continue;
            }
            if let Some(g) = m.segment {
                // Copy the later segments out before the handler sees the first: it may write
                // past the first one's end (padding) into the second.
                self.counters.gro_receives += 1;
                self.split_segments(id, m, g, &mut segs);
            }
            // A handler may close the socket while its batch is being delivered.
            if !matches!(self.socks.get(id), Some(s) if !s.closing) {
                for &(bid, _) in &segs {
                    self.pool.give_back(bid);
                }
                continue;
            }
            self.counters.recv_packets += 1;
            self.counters.recv_bytes += first as u64;
            handler.on_recv(now, id, from, pkt, self);
            for &(bid, len) in &segs {
                let pkt = Packet::new(self.pool.clone(), bid, HEADROOM..HEADROOM + len);
                if !matches!(self.socks.get(id), Some(s) if !s.closing) {
                    continue; // dropping the packet returns its buffer
                }
                self.counters.recv_packets += 1;
                self.counters.recv_bytes += len as u64;
                handler.on_recv(now, id, from, pkt, self);
            }
        }
        self.segs = segs;
        self.got = got;
        if got_n < n {
            RecvOutcome::Drained
        } else {
            RecvOutcome::More
        }
    }

    /// Copies segments 1.. of a coalesced datagram (segment size `g`) into free buffers, at
    /// HEADROOM; appends (buffer, length) to `out`. A segment with no free buffer is dropped and
    /// counted in `enobufs`.
    fn split_segments(
        &mut self,
        sock: SockId,
        m: &RecvMeta,
        g: usize,
        out: &mut Vec<(u32, usize)>,
    ) {
        let len = m.len as usize;
        let src = self.pool.buf_ptr(m.bid);
        let Some(stage) = self.stage.as_ref().map(|r| r.as_ptr()) else {
            return;
        };
        for r in gso::segments(len, g).skip(1) {
            let (bid, dst) = match self.pool.take_one() {
                Some(bid) => (bid, self.pool.buf_ptr(bid)),
                None => {
                    // Out of buffers: the rest waits, copied out (the staging area is reused by
                    // the next read).
                    self.counters.enobufs += 1;
                    let mut data = std::mem::take(&mut self.gro_spill);
                    data.clear();
                    data.resize(len - r.start, 0);
                    let in_buf = r.start.min(MAX_DATAGRAM)..MAX_DATAGRAM.min(len);
                    let in_stage = r.start.max(MAX_DATAGRAM) - MAX_DATAGRAM
                        ..len.max(MAX_DATAGRAM) - MAX_DATAGRAM;
                    // SAFETY: as below; `data` has room for both parts (len - r.start bytes).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.add(HEADROOM + in_buf.start),
                            data.as_mut_ptr(),
                            in_buf.len(),
                        );
                        std::ptr::copy_nonoverlapping(
                            stage.add(m.msg * STAGE_LEN + in_stage.start),
                            data.as_mut_ptr().add(in_buf.len()),
                            in_stage.len(),
                        );
                    }
                    self.gro_pending = m.from.map(|from| GroPending {
                        sock,
                        from,
                        data,
                        segment: g,
                        next: 0,
                    });
                    return;
                }
            };
            // The datagram's bytes [0, MAX_DATAGRAM) are in the buffer at HEADROOM, the rest in
            // the message's staging area.
            let in_buf = r.start.min(MAX_DATAGRAM)..r.end.min(MAX_DATAGRAM);
            let in_stage =
                r.start.max(MAX_DATAGRAM) - MAX_DATAGRAM..r.end.max(MAX_DATAGRAM) - MAX_DATAGRAM;
            // SAFETY: both buffers belong to this worker and no Packet for `bid` exists yet;
            // `m.bid`'s Packet is not handed out until the copies are done. Ranges: r.len() <= g
            // <= MAX_DATAGRAM fits at HEADROOM; `in_buf` ends at MAX_DATAGRAM at most, inside
            // the source buffer; `in_stage` ends at len - MAX_DATAGRAM <= STAGE_LEN, inside this
            // message's staging area (the kernel wrote `len` bytes over the two).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.add(HEADROOM + in_buf.start),
                    dst.add(HEADROOM),
                    in_buf.len(),
                );
                std::ptr::copy_nonoverlapping(
                    stage.add(m.msg * STAGE_LEN + in_stage.start),
                    dst.add(HEADROOM + in_buf.len()),
                    in_stage.len(),
                );
            }
            out.push((bid, r.len()));
        }
    }

    fn queue_send(&mut self, via: SockId, to: SocketAddr, buf: SendBuf, range: Range<usize>) {
        let seq = self.queue.len() as u32;
        self.queue.push(QueuedSend {
            via,
            seq,
            dest: to,
            key: gso::group_key(via.0, &to),
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
        if self.gso {
            // Runs to one destination become adjacent (and stay in queue order).
            queue.sort_unstable_by_key(|q| (q.key, q.seq));
        } else {
            queue.sort_unstable_by_key(|q| (q.via, q.seq));
        }
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

    /// Sends `group` (all via `via`) with as few `sendmmsg` calls as possible; with GSO each
    /// run of datagrams to one destination with one length is one message. Returns how many
    /// queued sends were handled (sent, or failed and counted); the rest wait for EPOLLOUT.
    fn send_group(&mut self, via: SockId, fd: RawFd, group: &[QueuedSend]) -> usize {
        let mut k = 0usize;
        while k < group.len() {
            // Build up to BATCH messages from group[k..].
            let mut n = 0usize;
            let mut iov = 0usize;
            let mut next = k;
            while n < BATCH && next < group.len() {
                let run = if self.gso {
                    let dest = group[next].dest;
                    gso::run_length(
                        group[next..]
                            .iter()
                            .take_while(|q| q.dest == dest)
                            .map(|q| q.len as usize),
                    )
                } else {
                    1
                };
                for (j, q) in group[next..next + run].iter().enumerate() {
                    // SAFETY: start + len <= BUF_SIZE was checked when the send was queued.
                    let base = unsafe { self.buf_ptr(&q.buf).add(q.start as usize) };
                    self.siov[iov + j] = libc::iovec {
                        iov_base: base.cast(),
                        iov_len: q.len as usize,
                    };
                }
                let q = &group[next];
                let hdr = &mut self.smsgs[n].msg_hdr;
                *hdr = zeroed_mmsghdr().msg_hdr;
                hdr.msg_name = q.to.as_ptr() as *mut libc::c_void;
                hdr.msg_namelen = q.to.len();
                hdr.msg_iov = &mut self.siov[iov];
                hdr.msg_iovlen = run;
                if run > 1 {
                    let len = gso::write_segment_cmsg(&mut self.scmsg[n], q.len as u16);
                    hdr.msg_control = self.scmsg[n].as_mut_ptr().cast();
                    hdr.msg_controllen = len as _;
                }
                self.smsgs[n].msg_len = 0;
                self.sruns[n] = run;
                n += 1;
                iov += run;
                next += run;
            }
            // SAFETY: smsgs[..n] point at siov, scmsg and the queued SockAddrs, which point at
            // buffers owned by the queued sends; all outlive the call, which only reads them.
            let ret = unsafe {
                libc::sendmmsg(fd, self.smsgs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT)
            };
            if ret > 0 {
                for m in 0..ret as usize {
                    let run = self.sruns[m];
                    self.counters.send_packets += run as u64;
                    self.counters.send_bytes += u64::from(self.smsgs[m].msg_len);
                    if run > 1 {
                        self.counters.gso_sends += 1;
                    }
                    k += run;
                }
                continue;
            }
            match errno() {
                libc::EINTR => {}
                libc::EAGAIN => {
                    self.block(via);
                    return k;
                }
                e if self.sruns[0] > 1 && gso::refused(e) => {
                    // The kernel will not segment on this path (a device without checksum
                    // offload, a UDP_SEGMENT it does not know...): GSO off for this worker,
                    // and the same datagrams go again one by one (the loop rebuilds them).
                    tracing::warn!(
                        errno = e,
                        sock = via.0,
                        "GSO send refused; GSO off for this worker"
                    );
                    self.gso = false;
                }
                e => {
                    // This message is refused (EMSGSIZE, EACCES, ENETUNREACH...): count its
                    // datagrams and go on.
                    tracing::debug!(
                        errno = e,
                        sock = via.0,
                        run = self.sruns[0],
                        "sendmmsg failed"
                    );
                    self.counters.send_errors += self.sruns[0] as u64;
                    k += self.sruns[0];
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
        if !self.deliver_pending(handler, now) {
            return;
        }
        let mut ready = std::mem::take(&mut self.ready);
        let mut out_of_buffers = false;
        ready.retain(|&id| {
            // A coalesced datagram waiting for buffers (`gro_pending`) goes first: reading
            // another socket meanwhile would have to drop what it read (see `recv_batch`).
            if out_of_buffers || self.gro_pending.is_some() {
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

    /// Delivers the segments of a coalesced datagram that waited for buffers. True when none
    /// is left waiting.
    fn deliver_pending<H: Handler>(&mut self, handler: &mut H, now: Instant) -> bool {
        let Some(mut p) = self.gro_pending.take() else {
            return true;
        };
        while p.next < p.data.len() {
            if !matches!(self.socks.get(p.sock), Some(s) if !s.closing) {
                break;
            }
            let Some(bid) = self.pool.take_one() else {
                self.gro_pending = Some(p);
                return false;
            };
            let r = p.next..(p.next + p.segment).min(p.data.len());
            // SAFETY: `bid` is a free buffer no Packet owns; the segment (<= MAX_DATAGRAM bytes,
            // checked when it was received) fits at HEADROOM.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    p.data[r.clone()].as_ptr(),
                    self.pool.buf_ptr(bid).add(HEADROOM),
                    r.len(),
                );
            }
            p.next = r.end;
            let pkt = Packet::new(self.pool.clone(), bid, HEADROOM..HEADROOM + r.len());
            self.counters.recv_packets += 1;
            self.counters.recv_bytes += r.len() as u64;
            handler.on_recv(now, p.sock, p.from, pkt, self);
        }
        self.gro_spill = p.data;
        true
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
        let wait = if ((!w.ready.is_empty() || w.gro_pending.is_some()) && w.pool.has_returned())
            || w.streams.pending()
        {
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
