//! The io_uring backend: one ring per worker, a provided buffer ring for receives, a multishot
//! RecvMsgMulti per socket, and SendMsg SQEs queued during a batch and submitted together with
//! the wait for the next batch (one `io_uring_enter` per batch).
//!
//! # Buffer layout
//! With RecvMsgMulti the kernel writes, at the start of the buffer it picks from the ring, an
//! `io_uring_recvmsg_out` header (16 bytes), then `msg_namelen` bytes of peer address, then
//! `msg_controllen` bytes of control data, then the payload. We ask for exactly enough name and
//! control space that the payload lands at [`PAYLOAD_AT`] == [`HEADROOM`]; once the header and
//! name are parsed, those bytes are free for the handler to overwrite with a ChannelData or Data
//! indication header. The kernel gets `BUF_SIZE - TAILROOM` bytes per buffer, which leaves
//! [`TAILROOM`] free after the largest datagram.
//!
//! # Buffer ownership
//! A buffer id (bid) is at any time in exactly one place: in the kernel's ring, in a [`Packet`]
//! held by the handler, in a send slot (forwarded, waiting for its completion), or in the pool's
//! "returned" list (to be pushed back to the ring at the end of the batch). The ring has as many
//! entries as there are buffers, so pushing a bid back can never overwrite an entry the kernel
//! has not consumed yet.
//!
//! # user_data
//! The top byte says what completed ([`UD_RECV`], [`UD_SEND`], [`UD_CANCEL`], [`UD_GSO`], and
//! the stream kinds from `0x10` in `stream.rs`); the low 32 bits are the socket id (receives),
//! the send slot (sends), the GSO slot, or the stream id.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};
use socket2::SockAddr;

use super::gso;
use super::pool::{BufPool, Packet, Region, SendPool};
use super::sock::{bind_udp, bind_udp_with, SockTable, UdpOptions};
use super::sockaddr::{self, NAME_LEN};
mod stream;

use super::{
    poll_control, valid_range, wait_budget, Control, ControlFlow, Counters, DriverConfig,
    DriverError, Handler, Io, RecvPacket, SockId, BUF_SIZE, HEADROOM, TAILROOM,
};

/// `sizeof(struct io_uring_recvmsg_out)`: namelen, controllen, payloadlen, flags (u32 each).
const OUT_HDR: usize = 16;
/// Control space asked for, only to push the payload to [`HEADROOM`]; no control message is
/// enabled on the sockets, so the kernel writes none.
const CONTROL_LEN: usize = HEADROOM - OUT_HDR - NAME_LEN;
/// Where the payload starts in a receive buffer.
pub const PAYLOAD_AT: usize = OUT_HDR + NAME_LEN + CONTROL_LEN;
/// Bytes of each buffer the kernel may fill.
const RECV_LEN: usize = BUF_SIZE - TAILROOM;
/// The largest payload that fits.
const MAX_PAYLOAD: usize = RECV_LEN - PAYLOAD_AT;

const _: () = assert!(PAYLOAD_AT >= HEADROOM && PAYLOAD_AT >= 52);
const _: () = assert!(BUF_SIZE - (PAYLOAD_AT + MAX_PAYLOAD) >= TAILROOM);

/// The buffer group id of the worker's buffer ring (one ring per io_uring, so always 0).
const BGID: u16 = 0;

/// GRO mode: receive buffers large enough for a coalesced datagram (64 KiB of payload after
/// the header, name and control space), as many as [`GRO_BUFFERS`].
const BIG_CONTROL: usize = 64;
const BIG_PAYLOAD_AT: usize = OUT_HDR + NAME_LEN + BIG_CONTROL;
const BIG_BUF: usize = BIG_PAYLOAD_AT + 65_536;
/// Big receive buffers in GRO mode. Each receive takes one until its segments are copied out:
/// at once, or, when pool buffers run short, once they come back (`gro_backlog`, possibly a
/// later batch). So this bounds the datagrams one batch can receive before
/// a multishot receive runs out; the memory is mapped lazily (a small datagram touches one
/// page), so the resident cost is about 4 KiB each unless large coalesced datagrams arrive.
const GRO_BUFFERS: u16 = 512;

const UD_KIND_SHIFT: u32 = 56;
const UD_RECV: u64 = 1 << UD_KIND_SHIFT;
const UD_SEND: u64 = 2 << UD_KIND_SHIFT;
const UD_CANCEL: u64 = 3 << UD_KIND_SHIFT;
const UD_GSO: u64 = 4 << UD_KIND_SHIFT;
/// GSO slots: sends of two or more datagrams in flight at once; when none is free, a run goes
/// out datagram by datagram.
const GSO_SLOTS: u32 = 256;
const UD_KIND_MASK: u64 = 0xff << UD_KIND_SHIFT;

/// Setup flag sets tried in order; a kernel that lacks one answers EINVAL and we try the next.
#[derive(Copy, Clone, Debug)]
enum RingFlags {
    /// SINGLE_ISSUER + DEFER_TASKRUN (6.1): completions are produced only when this thread
    /// enters the kernel to wait, so no task work interrupts the loop mid-batch.
    Deferred,
    /// SUBMIT_ALL only.
    Plain,
}

fn build_ring(entries: u32, sqpoll: Option<u32>) -> io::Result<(IoUring, RingFlags)> {
    let cq = entries.saturating_mul(4);
    let mut last = None;
    for flags in [RingFlags::Deferred, RingFlags::Plain] {
        let mut b = IoUring::builder();
        // SUBMIT_ALL: one bad SQE must not leave the rest of the batch unsubmitted (we close
        // fds only once everything that names them has been submitted).
        b.setup_submit_all().setup_cqsize(cq);
        if let Some(idle) = sqpoll {
            // DEFER_TASKRUN refuses SQPOLL (EINVAL): the Plain set is tried next.
            b.setup_sqpoll(idle);
        }
        if let RingFlags::Deferred = flags {
            b.setup_single_issuer().setup_defer_taskrun();
        }
        match b.build(entries) {
            Ok(ring) => return Ok((ring, flags)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

/// The provided buffer ring: `count` entries of 16 bytes in page-aligned memory, shared with the
/// kernel. User space writes entries and the tail; the kernel consumes from the head.
#[derive(Debug)]
struct BufRing {
    entries: Region,
    mask: u16,
    /// Bytes the kernel may fill in each buffer.
    buf_len: u32,
    /// Our copy of the tail; published to the kernel with a release store.
    tail: u16,
    /// Buffers currently in the ring (pushed and not yet reported consumed by a CQE).
    in_kernel: u32,
}

impl BufRing {
    fn new(count: u16, buf_len: usize) -> io::Result<BufRing> {
        debug_assert!(count.is_power_of_two());
        let entries = Region::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        Ok(BufRing {
            entries,
            mask: count - 1,
            buf_len: buf_len as u32,
            tail: 0,
            in_kernel: 0,
        })
    }

    fn register(&self, ring: &IoUring) -> io::Result<()> {
        let count = self.mask as u32 + 1;
        // SAFETY: `entries` is page-aligned memory of `count` entries that lives as long as the
        // worker; the worker unregisters the group before dropping it (or leaks both when a
        // drain fails, see `Worker::drain`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.entries.as_ptr() as u64,
                count as u16,
                BGID,
                0,
            )
        }
    }

    /// Writes `bid` (at `addr`) into the next free entry. Not visible until `publish`.
    fn push(&mut self, bid: u32, addr: *mut u8) {
        let idx = usize::from(self.tail & self.mask);
        // SAFETY: idx <= mask, inside the region. The entry is free: the ring has one entry per
        // buffer and `bid` is not in the ring (it came back from user space), so the kernel has
        // consumed whatever this entry held before. The kernel reads entries only up to the
        // published tail, which does not cover this one yet.
        unsafe {
            let entry = &mut *self.entries.as_ptr().cast::<BufRingEntry>().add(idx);
            entry.set_addr(addr as u64);
            entry.set_len(self.buf_len);
            entry.set_bid(bid as u16);
        }
        self.tail = self.tail.wrapping_add(1);
        self.in_kernel += 1;
    }

    /// Makes pushed entries visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field overlays `resv` of entry 0 (io_uring_buf_ring layout); the
        // region is alive and aligned. The release store orders the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr().cast::<BufRingEntry>());
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }
}

/// Where a send's bytes live.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SlotBuf {
    Free,
    /// A receive buffer being forwarded.
    Recv(u32),
    /// A send-pool buffer.
    Copy(u32),
}

impl SlotBuf {
    fn release(self, pool: &BufPool, send_pool: &mut SendPool) {
        match self {
            SlotBuf::Free => {}
            SlotBuf::Recv(bid) => pool.give_back(bid),
            SlotBuf::Copy(i) => send_pool.release(i),
        }
    }
}

/// A send held back to the end of the batch (GSO on), so that sends to one destination can be
/// grouped into runs.
#[derive(Copy, Clone, Debug)]
struct Deferred {
    via: SockId,
    to: SocketAddr,
    /// [`gso::group_key`] of `via` and `to`, computed once: the batch's sort compares keys
    /// O(n log n) times.
    key: u128,
    seq: u32,
    buf: SlotBuf,
    ptr: *mut u8,
    len: usize,
}

/// Everything one GSO SendMsg SQE points at: up to [`gso::MAX_SEGMENTS`] datagrams of one run,
/// each in its own buffer, sent as one `UDP_SEGMENT` message. Slots sit in a Vec that is never
/// resized, so the pointers in `hdr` stay valid until the completion.
struct GsoSlot {
    /// The run's socket, to send its datagrams again one by one if the kernel refuses GSO.
    via: SockId,
    to: SocketAddr,
    hdr: libc::msghdr,
    iov: [libc::iovec; gso::MAX_SEGMENTS],
    bufs: [SlotBuf; gso::MAX_SEGMENTS],
    n: usize,
    addr: SockAddr,
    control: [u8; gso::CMSG_SPACE],
}

/// Everything one SendMsg SQE points at. Slots sit in a Vec that is never resized, so the
/// pointers in `hdr` stay valid until the completion.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: SockAddr,
    buf: SlotBuf,
}

#[derive(Debug)]
struct UringSock {
    fd: OwnedFd,
    local: SocketAddr,
    /// A multishot receive is queued or running in the kernel.
    armed: bool,
    /// `close` was called: deliver nothing more, close the fd once the receive has ended.
    closing: bool,
}

/// One completion, copied out of the CQ so it can wait in `pending`.
#[derive(Copy, Clone, Debug)]
struct Cqe {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// One worker's ring, buffers and sockets. Implements [`Io`] for the handler.
pub struct Worker {
    // Field order is drop order: the ring goes first, so the kernel lets go of the buffer ring
    // and buffers before their memory is unmapped.
    ring: IoUring,
    flags: RingFlags,
    bufring: BufRing,
    pool: Rc<BufPool>,
    send_pool: SendPool,
    slots: Vec<SendSlot>,
    free_slots: Vec<u32>,
    inflight_sends: u32,
    socks: SockTable<UringSock>,
    /// The msghdr every RecvMsgMulti points at: only its namelen and controllen matter.
    recv_hdr: Box<libc::msghdr>,
    pending: VecDeque<Cqe>,
    /// Sockets whose multishot receive ended and must be re-armed.
    to_rearm: Vec<SockId>,
    /// Sockets being closed.
    closing: Vec<SockId>,
    returned: Vec<u32>,
    counters: Counters,
    /// TCP listeners and connections (see `stream`).
    streams: stream::Streams,
    /// GSO: sends of this batch, grouped and submitted at its end.
    gso: bool,
    /// Plain sends as SENDMSG_ZC (see [`DriverConfig::send_zc`]).
    send_zc: bool,
    deferred: Vec<Deferred>,
    gso_slots: Vec<GsoSlot>,
    free_gso: Vec<u32>,
    /// GRO: the big receive buffers the ring holds instead of the pool's (see [`BIG_BUF`]),
    /// and the pool's buffers, all in user space, that segments are copied into.
    big: Option<Region>,
    spare: Vec<u32>,
    /// Big buffers pushed back to the ring since the last publish.
    big_pushed: bool,
    /// GRO receives not fully delivered for want of pool buffers, in arrival order. Their big
    /// buffers stay out of the ring until then, so a ring that runs dry stops the receive
    /// (ENOBUFS) and the kernel keeps the rest in the socket: back-pressure, not loss.
    gro_backlog: VecDeque<GroPending>,
}

/// A GRO receive being delivered segment by segment.
#[derive(Copy, Clone, Debug)]
struct GroPending {
    big_bid: u32,
    sock: SockId,
    from: SocketAddr,
    /// The datagram's length, the bytes of it in the buffer, and its segment size.
    len: usize,
    received: usize,
    segment: usize,
    /// Offset of the next segment to deliver.
    next: usize,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("uring::Worker")
            .field("flags", &self.flags)
            .field("inflight_sends", &self.inflight_sends)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
    unsafe { std::mem::zeroed() }
}

impl Worker {
    fn new(config: &DriverConfig) -> Result<Worker, DriverError> {
        let (ring, flags) = build_ring(config.ring_entries, config.sqpoll_idle_ms)
            .map_err(DriverError::io("io_uring set-up"))?;
        if let Some(us) = config.busy_poll_us {
            let mut napi = io_uring::types::Napi::new()
                .set_busy_poll_timeout(us)
                .set_prefer_busy_poll(true);
            if let Err(e) = ring.submitter().register_napi(&mut napi) {
                tracing::warn!(error = %e, "IORING_REGISTER_NAPI failed; no busy polling");
            }
        }
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_submit_stable() {
            return Err(DriverError::UringUnavailable(
                "kernel lacks IORING_FEAT_EXT_ARG or SUBMIT_STABLE".into(),
            ));
        }
        let count = config.recv_buffers;
        let (ring_count, ring_len) = if config.gro {
            (GRO_BUFFERS, BIG_BUF)
        } else {
            (count, RECV_LEN)
        };
        let bufring =
            BufRing::new(ring_count, ring_len).map_err(DriverError::io("buffer ring memory"))?;
        bufring
            .register(&ring)
            .map_err(DriverError::io("register_buf_ring"))?;
        let pool =
            Rc::new(BufPool::new(u32::from(count)).map_err(DriverError::io("receive buffers"))?);
        let send_pool =
            SendPool::new(config.send_buffers).map_err(DriverError::io("send buffers"))?;
        // One slot per buffer that can be in a send: a forward consumes a receive buffer, a send
        // a send buffer, so slots never run out before buffers do.
        let nslots = u32::from(count) + u32::from(config.send_buffers);
        let slots = (0..nslots)
            .map(|_| SendSlot {
                hdr: zeroed_msghdr(),
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                addr: SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))),
                buf: SlotBuf::Free,
            })
            .collect();
        let mut recv_hdr = Box::new(zeroed_msghdr());
        recv_hdr.msg_namelen = NAME_LEN as u32;
        recv_hdr.msg_controllen = if config.gro { BIG_CONTROL } else { CONTROL_LEN } as _;
        let big = if config.gro {
            Some(
                Region::new_lazy(usize::from(GRO_BUFFERS) * BIG_BUF)
                    .map_err(DriverError::io("GRO receive buffers"))?,
            )
        } else {
            None
        };
        let gso_slots = if config.gso {
            (0..GSO_SLOTS)
                .map(|_| GsoSlot {
                    via: SockId(0),
                    to: SocketAddr::from(([0, 0, 0, 0], 0)),
                    hdr: zeroed_msghdr(),
                    iov: [libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }; gso::MAX_SEGMENTS],
                    bufs: [SlotBuf::Free; gso::MAX_SEGMENTS],
                    n: 0,
                    addr: SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))),
                    control: [0; gso::CMSG_SPACE],
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut w = Worker {
            ring,
            flags,
            bufring,
            pool,
            send_pool,
            slots,
            free_slots: (0..nslots).rev().collect(),
            inflight_sends: 0,
            socks: SockTable::new(),
            recv_hdr,
            pending: VecDeque::new(),
            to_rearm: Vec::new(),
            closing: Vec::new(),
            returned: Vec::with_capacity(usize::from(count)),
            counters: Counters::default(),
            streams: stream::Streams::default(),
            gso: config.gso,
            send_zc: config.send_zc,
            deferred: Vec::new(),
            free_gso: (0..gso_slots.len() as u32).rev().collect(),
            gso_slots,
            big,
            spare: Vec::new(),
            big_pushed: false,
            gro_backlog: VecDeque::new(),
        };
        if let Some(big) = &w.big {
            let base = big.as_ptr();
            for bid in 0..u32::from(GRO_BUFFERS) {
                // SAFETY: bid < GRO_BUFFERS: inside the region, which no one else uses yet.
                let at = unsafe { base.add(bid as usize * BIG_BUF) };
                // Fault in the page every receive writes (header, address, a small datagram)
                // now: a fixed 2 MiB at start rather than resident memory that grows with the
                // first receives and looks like a cost per allocation.
                // SAFETY: `at` is the start of a buffer inside the mapping.
                unsafe { at.write_volatile(0) };
                w.bufring.push(bid, at);
            }
            w.spare = (0..u32::from(count)).rev().collect();
        } else {
            for bid in 0..u32::from(count) {
                let addr = w.pool.buf_ptr(bid);
                w.bufring.push(bid, addr);
            }
        }
        w.bufring.publish();
        tracing::debug!(flags = ?w.flags, buffers = count, "io_uring worker ready");
        Ok(w)
    }

    /// Takes over a socket and starts receiving on it.
    fn adopt(&mut self, sock: UdpSocket) -> io::Result<SockId> {
        sock.set_nonblocking(true)?;
        if self.big.is_some() {
            gso::enable_gro(sock.as_raw_fd())?;
        }
        let local = sock.local_addr()?;
        let id = self.socks.insert(UringSock {
            fd: OwnedFd::from(sock),
            local,
            armed: false,
            closing: false,
        });
        self.arm(id);
        Ok(id)
    }

    /// Queues a multishot receive on `id`.
    fn arm(&mut self, id: SockId) {
        let Some(s) = self.socks.get(id) else { return };
        if s.armed || s.closing {
            return;
        }
        let fd = s.fd.as_raw_fd();
        // The msghdr is boxed and lives as long as the worker; the kernel reads only its
        // namelen/controllen when the SQE is submitted.
        let sqe = opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_hdr, BGID)
            .build()
            .user_data(UD_RECV | u64::from(id.0));
        if self.push_sqe(&sqe) {
            if let Some(s) = self.socks.get_mut(id) {
                s.armed = true;
            }
        } else {
            // Could not queue even after submitting: try again at the end of the next batch.
            self.to_rearm.push(id);
        }
    }

    /// Pushes one SQE, submitting the queue when it is full. False only if the queue stays full
    /// after two submits (the kernel refuses work), which the caller counts as a drop.
    fn push_sqe(&mut self, sqe: &squeue::Entry) -> bool {
        for _ in 0..3 {
            // SAFETY: every pointer in the SQEs we build stays valid until its completion: the
            // receive msghdr is owned by the worker, send msghdrs live in never-resized slots
            // freed only on completion, and the bytes they point at are buffers owned by that
            // slot until then.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return true;
            }
            self.counters.sq_full += 1;
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    // The CQ overflowed into the kernel's backlog: make room, then resubmit.
                    self.reap_now();
                } else {
                    tracing::warn!(error = %e, "io_uring submit failed");
                }
            }
        }
        false
    }

    /// Queues a SendMsg of `len` bytes at `ptr` from `via` to `to`; `buf` owns the bytes. On
    /// failure the caller still owns `buf`.
    fn queue_send(
        &mut self,
        via: SockId,
        to: SocketAddr,
        buf: SlotBuf,
        ptr: *mut u8,
        len: usize,
    ) -> bool {
        let fd = match self.socks.get(via) {
            Some(s) if !s.closing => s.fd.as_raw_fd(),
            _ => return false,
        };
        let Some(slot_idx) = self.free_slots.pop() else {
            return false;
        };
        let slot = &mut self.slots[slot_idx as usize];
        slot.addr = SockAddr::from(to);
        slot.iov = libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        };
        slot.hdr = zeroed_msghdr();
        slot.hdr.msg_name = slot.addr.as_ptr() as *mut libc::c_void;
        slot.hdr.msg_namelen = slot.addr.len();
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        slot.buf = buf;
        let sqe = if self.send_zc {
            opcode::SendMsgZc::new(Fd(fd), &slot.hdr).build()
        } else {
            opcode::SendMsg::new(Fd(fd), &slot.hdr).build()
        }
        .user_data(UD_SEND | u64::from(slot_idx));
        if self.push_sqe(&sqe) {
            self.inflight_sends += 1;
            true
        } else {
            self.slots[slot_idx as usize].buf = SlotBuf::Free;
            self.free_slots.push(slot_idx);
            false
        }
    }

    /// Copies every available CQE: send completions are finished at once (to free send buffers
    /// mid-batch), the rest wait in `pending`.
    fn reap_now(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        let cqes: Vec<Cqe> = cq.map(to_cqe).collect();
        for c in cqes {
            if c.user_data & UD_KIND_MASK == UD_SEND {
                self.complete_send(c);
            } else if c.user_data & UD_KIND_MASK == UD_GSO {
                self.complete_gso(c);
            } else {
                self.pending.push_back(c);
            }
        }
    }

    /// Moves every available CQE to `pending`.
    fn reap(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        self.pending.extend(cq.map(to_cqe));
    }

    fn complete_send(&mut self, c: Cqe) {
        let idx = (c.user_data & 0xffff_ffff) as usize;
        // SENDMSG_ZC: the first completion carries the result and, with MORE, says that the
        // buffer is still the kernel's until a second one flagged NOTIF; only then is it free.
        let (counted, release) = if cqueue::notif(c.flags) {
            (false, true)
        } else {
            (true, !cqueue::more(c.flags))
        };
        if counted {
            if c.result >= 0 {
                self.counters.send_packets += 1;
                self.counters.send_bytes += c.result as u64;
            } else {
                self.counters.send_errors += 1;
            }
        }
        if !release {
            return;
        }
        let Some(slot) = self.slots.get_mut(idx) else {
            tracing::error!(user_data = c.user_data, "send completion for unknown slot");
            return;
        };
        match std::mem::replace(&mut slot.buf, SlotBuf::Free) {
            SlotBuf::Free => {
                tracing::error!(slot = idx, "send completion for a free slot");
                return;
            }
            SlotBuf::Recv(bid) => self.pool.give_back(bid),
            SlotBuf::Copy(i) => self.send_pool.release(i),
        }
        self.free_slots.push(idx as u32);
        self.inflight_sends -= 1;
    }

    fn complete_gso(&mut self, c: Cqe) {
        let idx = (c.user_data & 0xffff_ffff) as usize;
        let Some(slot) = self.gso_slots.get_mut(idx) else {
            tracing::error!(user_data = c.user_data, "GSO completion for unknown slot");
            return;
        };
        let n = std::mem::replace(&mut slot.n, 0);
        if c.result < 0 && gso::refused(-c.result) {
            // The kernel will not segment on this path: the datagrams go again one by one,
            // and this worker stops using GSO.
            let (via, to) = (slot.via, slot.to);
            let segments: Vec<(SlotBuf, *mut u8, usize)> = (0..n)
                .map(|k| {
                    let buf = std::mem::replace(&mut slot.bufs[k], SlotBuf::Free);
                    (buf, slot.iov[k].iov_base.cast(), slot.iov[k].iov_len)
                })
                .collect();
            self.free_gso.push(idx as u32);
            self.inflight_sends -= 1;
            if self.gso {
                tracing::warn!(
                    errno = -c.result,
                    "GSO send refused; GSO off for this worker"
                );
                self.gso = false;
            }
            for (buf, ptr, len) in segments {
                if !self.queue_send(via, to, buf, ptr, len) {
                    self.counters.drops += 1;
                    buf.release(&self.pool, &mut self.send_pool);
                }
            }
            return;
        }
        for b in &mut slot.bufs[..n] {
            std::mem::replace(b, SlotBuf::Free).release(&self.pool, &mut self.send_pool);
        }
        self.free_gso.push(idx as u32);
        self.inflight_sends -= 1;
        if c.result >= 0 {
            self.counters.send_packets += n as u64;
            self.counters.send_bytes += c.result as u64;
            self.counters.gso_sends += 1;
        } else {
            tracing::debug!(errno = -c.result, segments = n, "GSO send failed");
            self.counters.send_errors += n as u64;
        }
    }

    /// Queues the batch's held-back sends (GSO on): grouped by socket and destination in queue
    /// order, each run of one length as one GSO send, the rest one by one.
    fn flush_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let mut d = std::mem::take(&mut self.deferred);
        d.sort_unstable_by_key(|x| (x.key, x.seq));
        let mut i = 0;
        while i < d.len() {
            let (via, to) = (d[i].via, d[i].to);
            let run = gso::run_length(
                d[i..]
                    .iter()
                    .take_while(|x| x.via == via && x.to == to)
                    .map(|x| x.len),
            );
            if run > 1 && self.queue_gso(&d[i..i + run]) {
                i += run;
                continue;
            }
            for x in &d[i..i + run] {
                if !self.queue_send(x.via, x.to, x.buf, x.ptr, x.len) {
                    self.counters.drops += 1;
                    x.buf.release(&self.pool, &mut self.send_pool);
                }
            }
            i += run;
        }
        d.clear();
        self.deferred = d;
    }

    /// Queues one GSO SendMsg for `run` (same socket, destination, and lengths as
    /// [`gso::run_length`] allows). False when no GSO slot is free or the socket is gone; the
    /// caller still owns the buffers then.
    fn queue_gso(&mut self, run: &[Deferred]) -> bool {
        let first = run[0];
        let fd = match self.socks.get(first.via) {
            Some(s) if !s.closing => s.fd.as_raw_fd(),
            _ => return false,
        };
        let Some(idx) = self.free_gso.pop() else {
            return false;
        };
        let slot = &mut self.gso_slots[idx as usize];
        for (k, x) in run.iter().enumerate() {
            slot.iov[k] = libc::iovec {
                iov_base: x.ptr.cast(),
                iov_len: x.len,
            };
            slot.bufs[k] = x.buf;
        }
        slot.n = run.len();
        slot.via = first.via;
        slot.to = first.to;
        slot.addr = SockAddr::from(first.to);
        let clen = gso::write_segment_cmsg(&mut slot.control, first.len as u16);
        slot.hdr = zeroed_msghdr();
        slot.hdr.msg_name = slot.addr.as_ptr() as *mut libc::c_void;
        slot.hdr.msg_namelen = slot.addr.len();
        slot.hdr.msg_iov = slot.iov.as_mut_ptr();
        slot.hdr.msg_iovlen = run.len();
        slot.hdr.msg_control = slot.control.as_mut_ptr().cast();
        slot.hdr.msg_controllen = clen as _;
        let sqe = opcode::SendMsg::new(Fd(fd), &slot.hdr)
            .build()
            .user_data(UD_GSO | u64::from(idx));
        if self.push_sqe(&sqe) {
            self.inflight_sends += 1;
            true
        } else {
            let slot = &mut self.gso_slots[idx as usize];
            slot.n = 0;
            slot.bufs[..run.len()].fill(SlotBuf::Free);
            self.free_gso.push(idx);
            false
        }
    }

    /// A send from the handler: queued at once, or held to the end of the batch with GSO.
    /// False when it cannot be queued; the caller still owns `buf` then.
    fn submit_or_defer(
        &mut self,
        via: SockId,
        to: SocketAddr,
        buf: SlotBuf,
        ptr: *mut u8,
        len: usize,
    ) -> bool {
        if !self.gso {
            return self.queue_send(via, to, buf, ptr, len);
        }
        if !matches!(self.socks.get(via), Some(s) if !s.closing) {
            return false;
        }
        let seq = self.deferred.len() as u32;
        self.deferred.push(Deferred {
            via,
            to,
            key: gso::group_key(via.0, &to),
            seq,
            buf,
            ptr,
            len,
        });
        true
    }

    /// GRO mode: one receive in a big buffer, split into segments, each copied into a pool
    /// buffer of its own (its headroom must be free for the handler) and handed over as its own
    /// packet. The big buffer goes back to the ring once every segment is out (at once unless
    /// pool buffers run short; then it waits in `gro_backlog`).
    fn complete_recv_gro<H: Handler>(&mut self, c: Cqe, handler: Option<&mut H>, now: Instant) {
        let id = SockId((c.user_data & 0xffff_ffff) as u32);
        let big_bid = cqueue::buffer_select(c.flags).map(u32::from);
        if big_bid.is_some() {
            self.bufring.in_kernel = self.bufring.in_kernel.saturating_sub(1);
        }
        if !cqueue::more(c.flags) {
            if let Some(s) = self.socks.get_mut(id) {
                s.armed = false;
                if !s.closing {
                    self.to_rearm.push(id);
                }
            }
        }
        let Some(big_bid) = big_bid.filter(|&b| b < u32::from(GRO_BUFFERS)) else {
            if c.result < 0 {
                match -c.result {
                    libc::ENOBUFS => self.counters.enobufs += 1,
                    libc::ECANCELED => {}
                    _ => self.counters.recv_errors += 1,
                }
            } else {
                self.counters.recv_errors += 1;
            }
            return;
        };
        if c.result < 0 {
            if -c.result != libc::ECANCELED {
                self.counters.recv_errors += 1;
            }
            self.return_big(big_bid);
            return;
        }
        let Some(p) = self.parse_big(big_bid, c.result as usize, id) else {
            self.counters.recv_errors += 1;
            self.return_big(big_bid);
            return;
        };
        if p.segment < p.len {
            self.counters.gro_receives += 1;
        }
        self.gro_backlog.push_back(p);
        if let Some(handler) = handler {
            self.deliver_gro(handler, now);
        } else {
            // Draining at stop: nothing is delivered.
            while let Some(p) = self.gro_backlog.pop_front() {
                self.return_big(p.big_bid);
            }
        }
    }

    /// The start of big buffer `bid`.
    fn big_ptr(&self, bid: u32) -> *mut u8 {
        let base = self
            .big
            .as_ref()
            .map_or(std::ptr::null_mut(), |r| r.as_ptr());
        debug_assert!(!base.is_null() && bid < u32::from(GRO_BUFFERS));
        // SAFETY: bid < GRO_BUFFERS (checked by the callers): inside the region.
        unsafe { base.add(bid as usize * BIG_BUF) }
    }

    /// Gives a big buffer back to the ring (published at the end of the batch).
    fn return_big(&mut self, bid: u32) {
        let addr = self.big_ptr(bid);
        self.bufring.push(bid, addr);
        self.big_pushed = true;
    }

    /// Reads the header, address and GRO segment size the kernel wrote into big buffer `bid`.
    fn parse_big(&self, bid: u32, filled: usize, sock: SockId) -> Option<GroPending> {
        // SAFETY: the buffer is ours until pushed back (the kernel handed it over with the
        // completion); no &mut to it exists.
        let buf = unsafe { std::slice::from_raw_parts(self.big_ptr(bid), BIG_BUF) };
        let out = parse_recv_out_at(buf, filled, BIG_PAYLOAD_AT, BIG_BUF - BIG_PAYLOAD_AT)?;
        let control =
            &buf[OUT_HDR + NAME_LEN..OUT_HDR + NAME_LEN + out.controllen.min(BIG_CONTROL)];
        let segment = gso::gro_segment_size(control)
            .filter(|&g| g < out.len)
            .unwrap_or(out.len.max(1));
        Some(GroPending {
            big_bid: bid,
            sock,
            from: out.from,
            len: out.len,
            received: out.received,
            segment,
            next: 0,
        })
    }

    /// Delivers backlogged GRO segments in order, each copied into a pool buffer of its own, while
    /// pool buffers last; a fully delivered receive gives its big buffer back to the ring.
    fn deliver_gro<H: Handler>(&mut self, handler: &mut H, now: Instant) {
        while let Some(mut p) = self.gro_backlog.pop_front() {
            let open = matches!(self.socks.get(p.sock), Some(s) if !s.closing);
            // `max(1)`: an empty datagram is delivered too, as one empty packet.
            while open && p.next < p.len.max(1) {
                let r = p.next..(p.next + p.segment).min(p.len);
                // Segments past what fitted in the buffer, or too large for a pool buffer, are
                // lost.
                if r.end > p.received || r.len() > MAX_PAYLOAD {
                    self.counters.truncated += 1;
                    p.next = r.end;
                    continue;
                }
                let Some(bid) = self.spare.pop() else {
                    self.counters.enobufs += 1;
                    self.gro_backlog.push_front(p);
                    return;
                };
                let src = self.big_ptr(p.big_bid);
                let dst = self.pool.buf_ptr(bid);
                // SAFETY: `src` is our big buffer (not in the ring), the segment is inside its
                // received payload (r.end <= received); `dst` is a pool buffer no Packet owns,
                // and PAYLOAD_AT + r.len() <= PAYLOAD_AT + MAX_PAYLOAD <= BUF_SIZE.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.add(BIG_PAYLOAD_AT + r.start),
                        dst.add(PAYLOAD_AT),
                        r.len(),
                    );
                }
                p.next = r.end.max(1);
                let pkt = Packet::new(self.pool.clone(), bid, PAYLOAD_AT..PAYLOAD_AT + r.len());
                self.counters.recv_packets += 1;
                self.counters.recv_bytes += r.len() as u64;
                handler.on_recv(now, p.sock, p.from, pkt, self);
                if !matches!(self.socks.get(p.sock), Some(s) if !s.closing) {
                    break; // the handler closed the socket
                }
            }
            self.return_big(p.big_bid);
        }
    }

    /// Handles one completion. `handler` is None while draining at stop: datagrams are dropped.
    fn dispatch<H: Handler>(&mut self, c: Cqe, handler: Option<&mut H>, now: Instant) {
        match c.user_data & UD_KIND_MASK {
            UD_SEND => self.complete_send(c),
            UD_GSO => self.complete_gso(c),
            UD_RECV if self.big.is_some() => self.complete_recv_gro(c, handler, now),
            UD_RECV => self.complete_recv(c, handler, now),
            // A cancel's own result (0, ENOENT when the receive already ended, EALREADY) changes
            // nothing: the receive's final CQE is what we wait for.
            UD_CANCEL => {}
            k if k >= stream::UD_STREAM_FIRST => self.dispatch_stream(c, handler, now),
            _ => tracing::error!(user_data = c.user_data, "completion with unknown user_data"),
        }
    }

    fn complete_recv<H: Handler>(&mut self, c: Cqe, handler: Option<&mut H>, now: Instant) {
        let id = SockId((c.user_data & 0xffff_ffff) as u32);
        // Own the buffer first, so every early return below gives it back.
        let pkt = cqueue::buffer_select(c.flags).map(|bid| {
            self.bufring.in_kernel = self.bufring.in_kernel.saturating_sub(1);
            Packet::new(self.pool.clone(), u32::from(bid), 0..BUF_SIZE)
        });
        if !cqueue::more(c.flags) {
            if let Some(s) = self.socks.get_mut(id) {
                s.armed = false;
                if !s.closing {
                    self.to_rearm.push(id);
                }
            }
        }
        if c.result < 0 {
            match -c.result {
                libc::ENOBUFS => self.counters.enobufs += 1,
                libc::ECANCELED => {}
                errno => {
                    self.counters.recv_errors += 1;
                    tracing::debug!(errno, sock = id.0, "multishot receive error");
                }
            }
            return;
        }
        let Some(pkt) = pkt else {
            self.counters.recv_errors += 1;
            return;
        };
        if !matches!(self.socks.get(id), Some(s) if !s.closing) {
            return;
        }
        let Some(handler) = handler else { return };
        let Some((from, len)) = parse_recv_out(pkt.buf(), c.result as usize) else {
            self.counters.recv_errors += 1;
            return;
        };
        let Some(len) = len else {
            self.counters.truncated += 1;
            return;
        };
        let mut pkt = pkt;
        pkt.set_range(PAYLOAD_AT..PAYLOAD_AT + len);
        self.counters.recv_packets += 1;
        self.counters.recv_bytes += len as u64;
        handler.on_recv(now, id, from, pkt, self);
    }

    /// Pushes given-back buffers to the ring and re-arms ended receives while there is a buffer
    /// to receive into (re-arming into an empty ring would only end with ENOBUFS again).
    fn recycle_and_rearm(&mut self) {
        self.pool.take_returned(&mut self.returned);
        if self.big.is_some() {
            // GRO: the pool's buffers stay in user space; the ring holds the big ones, pushed
            // back as soon as their segments were copied out.
            self.spare.append(&mut self.returned);
            if self.big_pushed {
                self.bufring.publish();
                self.big_pushed = false;
            }
        } else if !self.returned.is_empty() {
            for i in 0..self.returned.len() {
                let bid = self.returned[i];
                let addr = self.pool.buf_ptr(bid);
                self.bufring.push(bid, addr);
            }
            self.bufring.publish();
        }
        if self.bufring.in_kernel > 0 && !self.to_rearm.is_empty() {
            let ids = std::mem::take(&mut self.to_rearm);
            for id in ids {
                if matches!(self.socks.get(id), Some(s) if !s.armed && !s.closing) {
                    self.counters.rearms += 1;
                    self.arm(id);
                }
            }
        }
    }

    /// Submits the batch and waits up to `wait` for at least one completion: one syscall.
    fn submit_and_wait(&mut self, wait: Duration) -> Result<(), DriverError> {
        let ts = Timespec::from(wait);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // Timed out, interrupted, CQ backlog (we reap next), or short of memory for
                // requests (retried on the next batch): none ends the worker.
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(DriverError::Io {
                    what: "io_uring_enter",
                    source: e,
                }),
            },
        }
    }

    /// Closes the fds of closing sockets whose receive has ended, once nothing queued names them.
    fn close_finished(&mut self) {
        if self.closing.is_empty() || !self.ring.submission().is_empty() {
            return;
        }
        let socks = &mut self.socks;
        self.closing.retain(|&id| match socks.get(id) {
            Some(s) if s.armed => true,
            // Dropping the OwnedFd closes it.
            Some(_) => {
                socks.remove(id);
                false
            }
            None => false,
        });
    }

    /// At stop: cancel every receive, give in-flight sends `timeout` to complete. Returns whether
    /// the kernel no longer holds any of our memory.
    fn drain(&mut self, timeout: Duration) -> bool {
        self.flush_deferred();
        let ids: Vec<SockId> = self.socks.ids().collect();
        for id in ids {
            self.close(id);
        }
        self.streams_close_all();
        let deadline = Instant::now() + timeout;
        loop {
            self.close_finished();
            self.streams_release_idle();
            let busy = self.inflight_sends > 0 || !self.closing.is_empty() || self.streams.busy();
            let now = Instant::now();
            if !busy || now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(10));
            if self.submit_and_wait(wait).is_err() {
                break;
            }
            self.reap();
            while let Some(c) = self.pending.pop_front() {
                self.dispatch::<NoHandler>(c, None, now);
            }
        }
        let drained = self.inflight_sends == 0 && self.closing.is_empty() && !self.streams.busy();
        if drained {
            if let Err(e) = self.ring.submitter().unregister_buf_ring(BGID) {
                tracing::warn!(error = %e, "unregister_buf_ring failed");
            }
        }
        drained
    }
}

/// What the kernel wrote at the start of a receive buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct RecvOut {
    from: SocketAddr,
    /// Control bytes written.
    controllen: usize,
    /// The datagram's length.
    len: usize,
    /// Payload bytes actually in the buffer (less than `len` when truncated).
    received: usize,
    /// `msg_flags` (MSG_TRUNC among them).
    flags: u32,
}

/// Parses a receive buffer whose payload starts at `payload_at`, with room for `max_payload`.
fn parse_recv_out_at(
    buf: &[u8],
    filled: usize,
    payload_at: usize,
    max_payload: usize,
) -> Option<RecvOut> {
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(
            buf.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    let (namelen, controllen, payloadlen, flags) = (word(0)?, word(1)?, word(2)?, word(3)?);
    let from = sockaddr::parse(
        buf.get(OUT_HDR..OUT_HDR + NAME_LEN)?,
        (namelen as usize).min(NAME_LEN),
    )?;
    let len = payloadlen as usize;
    let received = filled.saturating_sub(payload_at).min(len).min(max_payload);
    Some(RecvOut {
        from,
        controllen: controllen as usize,
        len,
        received,
        flags,
    })
}

/// Parses the `io_uring_recvmsg_out` header and the peer address at the start of a buffer the
/// kernel filled with `filled` bytes. Returns the sender and the payload length, or `None` for
/// the length when the datagram did not fit (MSG_TRUNC).
fn parse_recv_out(buf: &[u8], filled: usize) -> Option<(SocketAddr, Option<usize>)> {
    let r = parse_recv_out_at(buf, filled, PAYLOAD_AT, MAX_PAYLOAD)?;
    let fits = r.flags & libc::MSG_TRUNC as u32 == 0 && r.len <= MAX_PAYLOAD && r.received == r.len;
    Some((r.from, fits.then_some(r.len)))
}

fn to_cqe(e: cqueue::Entry) -> Cqe {
    Cqe {
        user_data: e.user_data(),
        result: e.result(),
        flags: e.flags(),
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
        let Some(s) = self.socks.get_mut(sock) else {
            return;
        };
        if s.closing {
            return;
        }
        s.closing = true;
        let armed = s.armed;
        self.closing.push(sock);
        if armed {
            let sqe = opcode::AsyncCancel::new(UD_RECV | u64::from(sock.0))
                .build()
                .user_data(UD_CANCEL | u64::from(sock.0));
            if !self.push_sqe(&sqe) {
                // The receive keeps running; its datagrams are dropped (closing) and the fd is
                // closed at stop. Rare enough (the kernel refusing SQEs) to only log.
                tracing::warn!(sock = sock.0, "could not queue receive cancel");
            }
        }
    }

    fn forward(&mut self, pkt: Packet, via: SockId, to: SocketAddr, range: Range<usize>) {
        if !pkt.is_from(&self.pool) || !valid_range(&range) {
            self.counters.drops += 1;
            return;
        }
        let bid = pkt.take();
        // SAFETY: range.start <= BUF_SIZE (valid_range), so the pointer stays inside buffer bid.
        let ptr = unsafe { self.pool.buf_ptr(bid).add(range.start) };
        if !self.submit_or_defer(via, to, SlotBuf::Recv(bid), ptr, range.len()) {
            self.counters.drops += 1;
            self.pool.give_back(bid);
        }
    }

    fn send(&mut self, via: SockId, to: SocketAddr, bytes: &[u8]) {
        if self.send_pool.is_exhausted() {
            // Sends usually complete at submission (UDP copies into the socket buffer), so one
            // submit frees the buffers of this batch's earlier sends (held-back ones first).
            self.flush_deferred();
            if let Err(e) = self.ring.submit() {
                tracing::debug!(error = %e, "submit to free send buffers failed");
            }
            self.reap_now();
        }
        let Some(i) = self.send_pool.fill(bytes) else {
            self.counters.drops += 1;
            return;
        };
        let ptr = self.send_pool.ptr(i);
        if !self.submit_or_defer(via, to, SlotBuf::Copy(i), ptr, bytes.len()) {
            self.counters.drops += 1;
            self.send_pool.release(i);
        }
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// The handler type used while draining (never called).
enum NoHandler {}

impl Handler for NoHandler {
    fn on_recv<I: Io>(&mut self, _: Instant, _: SockId, _: SocketAddr, _: I::Packet, _: &mut I) {
        match *self {}
    }
    fn on_tick<I: Io>(&mut self, _: Instant, _: &mut I) {
        match *self {}
    }
    fn next_timeout(&self) -> Option<Instant> {
        match *self {}
    }
}

/// Runs the uring loop until Stop; see [`super::run_worker`].
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
    let drained = w.drain(config.drain_timeout);
    let counters = w.counters;
    if !drained {
        // The kernel may still write into our buffers: keep the ring and its memory alive for
        // the life of the process rather than unmap memory under it.
        tracing::error!(
            inflight = w.inflight_sends,
            "io_uring worker did not drain in time; leaking its ring and buffers"
        );
        std::mem::forget(w);
    }
    result.map(|()| counters)
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
        let wait = if w.pending.is_empty() && (w.gro_backlog.is_empty() || w.spare.is_empty()) {
            wait_budget(handler.next_timeout(), Instant::now())
        } else {
            Duration::ZERO
        };
        w.submit_and_wait(wait)?;
        w.close_finished();
        let now = Instant::now();
        w.reap();
        // GRO receives that waited for pool buffers go first (the previous batch freed some).
        w.deliver_gro(handler, now);
        while let Some(c) = w.pending.pop_front() {
            w.dispatch(c, Some(&mut *handler), now);
        }
        handler.on_tick(now, w);
        w.flush_deferred();
        w.recycle_and_rearm();
        w.streams_tick(now);
    }
}

/// A handler for the probe: sends one datagram to itself and records what came back.
struct ProbeHandler {
    got: Rc<Cell<Option<(usize, bool)>>>,
}

impl Handler for ProbeHandler {
    fn on_recv<I: Io>(&mut self, _: Instant, _: SockId, _: SocketAddr, pkt: I::Packet, _: &mut I) {
        let ok = pkt.payload() == PROBE_BYTES;
        self.got.set(Some((pkt.range().start, ok)));
    }
    fn on_tick<I: Io>(&mut self, _: Instant, _: &mut I) {}
    fn next_timeout(&self) -> Option<Instant> {
        None
    }
}

const PROBE_BYTES: &[u8] = b"uturn io_uring probe";

/// See [`super::probe_uring`]: opcodes through IORING_REGISTER_PROBE, then the real worker code
/// path on a loopback socket: buffer ring, multishot receive, SendMsg, AsyncCancel at drain.
pub(super) fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    for (name, code) in [
        ("RECVMSG", opcode::RecvMsgMulti::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
        // TCP (see `stream`).
        ("ACCEPT", opcode::AcceptMulti::CODE),
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("POLL_ADD", opcode::PollAdd::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("opcode {name} not supported"));
        }
    }
    drop(ring);

    let config = DriverConfig {
        recv_buffers: 8,
        send_buffers: 2,
        ring_entries: 8,
        drain_timeout: Duration::from_millis(200),
        // The probe checks the plain path every worker relies on.
        gso: false,
        gro: false,
        ..DriverConfig::default()
    };
    let mut w = Worker::new(&config).map_err(|e| e.to_string())?;
    let sock =
        bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|e| format!("socket: {e}"))?;
    let addr = sock.local_addr().map_err(|e| e.to_string())?;
    let id = w.adopt(sock).map_err(|e| format!("adopt: {e}"))?;
    w.send(id, addr, PROBE_BYTES);
    let got = Rc::new(Cell::new(None));
    let mut handler = ProbeHandler { got: got.clone() };
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut error = None;
    while Instant::now() < deadline && got.get().is_none() && error.is_none() {
        if let Err(e) = w.submit_and_wait(Duration::from_millis(20)) {
            error = Some(e.to_string());
            break;
        }
        let now = Instant::now();
        w.reap();
        while let Some(c) = w.pending.pop_front() {
            if c.user_data & UD_KIND_MASK == UD_RECV {
                if c.result < 0 {
                    let e = io::Error::from_raw_os_error(-c.result);
                    error = Some(format!("multishot RecvMsg failed: {e}"));
                } else if !cqueue::more(c.flags) {
                    error = Some("multishot RecvMsg ended after one datagram".into());
                }
            }
            w.dispatch(c, Some(&mut handler), now);
        }
        w.recycle_and_rearm();
        if w.counters.send_errors > 0 {
            error = Some("SendMsg failed".into());
        }
    }
    let result = match (error, got.get()) {
        (Some(e), _) => Err(e),
        (None, Some((at, true))) if at >= HEADROOM => Ok(()),
        (None, Some((at, _))) => Err(format!("datagram corrupted or at offset {at}")),
        (None, None) => Err("no datagram received within 1 s".into()),
    };
    if !w.drain(config.drain_timeout) {
        std::mem::forget(w);
        return Err("probe ring did not drain (AsyncCancel)".into());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_leaves_headroom_and_tailroom() {
        assert_eq!(PAYLOAD_AT, HEADROOM);
        assert_eq!(MAX_PAYLOAD, super::super::MAX_DATAGRAM);
    }

    #[test]
    fn recv_out_parsing_rejects_truncation_and_garbage() {
        let mut buf = vec![0u8; BUF_SIZE];
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let sa = SockAddr::from(from);
        // SAFETY: as_ptr points at len initialised bytes.
        let name =
            unsafe { std::slice::from_raw_parts(sa.as_ptr().cast::<u8>(), sa.len() as usize) };
        buf[OUT_HDR..OUT_HDR + name.len()].copy_from_slice(name);
        let put = |buf: &mut Vec<u8>, i: usize, v: u32| {
            buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes())
        };
        put(&mut buf, 0, name.len() as u32);
        put(&mut buf, 2, 100);
        assert_eq!(
            parse_recv_out(&buf, PAYLOAD_AT + 100),
            Some((from, Some(100)))
        );
        // Claims more payload than the kernel wrote.
        assert_eq!(parse_recv_out(&buf, PAYLOAD_AT + 99), Some((from, None)));
        put(&mut buf, 3, libc::MSG_TRUNC as u32);
        assert_eq!(parse_recv_out(&buf, PAYLOAD_AT + 100), Some((from, None)));
        // Unknown family.
        buf[OUT_HDR] = 0xee;
        buf[OUT_HDR + 1] = 0xee;
        assert_eq!(parse_recv_out(&buf, PAYLOAD_AT + 100), None);
        assert_eq!(parse_recv_out(&buf[..8], 8), None);
    }
}
