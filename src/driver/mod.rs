//! The I/O drivers: one per-core event loop behind one small interface, with two backends.
//!
//! - `uring`: io_uring 0.7 with multishot RecvMsgMulti from a provided buffer ring, sends
//!   batched and submitted once per completion batch.
//! - `portable`: epoll + recvmmsg/sendmmsg, for hosts where io_uring is missing or blocked
//!   (containers under the default seccomp profile, old kernels, `io_uring_disabled`).
//!
//! A driver owns sockets and buffers; a [`Handler`] owns the protocol state. The driver reads the
//! clock once per batch, hands each received datagram to the handler, and the handler answers
//! through [`Io`]: forward the received buffer itself (zero copy: the payload never moves in user
//! space), send a small message it wrote (a STUN response), or open and close sockets.
//!
//! Buffers have at least [`HEADROOM`] free bytes in front of the received datagram, so a handler
//! can prepend a ChannelData header (4 bytes) or a Data indication header (up to 48 bytes) in
//! place, and [`TAILROOM`] bytes behind it for the padding a Data indication needs.
//!
//! # How a buffer travels
//! receive buffer (driver pool) -> [`Packet`] handed to [`Handler::on_recv`] -> either dropped
//! (the buffer goes back to the pool at once) or passed to [`Io::forward`] (the buffer is owned by
//! the queued send and goes back when the send completes). [`Io::send`] copies into a separate
//! small pool of send buffers, for messages the handler writes itself.
//!
//! # Threads
//! One worker = one thread = one driver. Nothing in a driver is shared with another thread:
//! [`Packet`] is deliberately `!Send`. Control reaches a worker through a crossbeam channel that
//! the loop polls once per batch (and at least every [`MAX_WAIT`]).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

pub mod gso;
mod pool;
pub mod portable;
mod sock;
mod sockaddr;
pub mod stream;
pub mod uring;

pub use pool::Packet;
pub use sock::{
    bind_reuseport_udp, bind_udp, bind_udp_with, pin_current_thread, recv_buffer_size, UdpOptions,
    LISTENER_BUFFER,
};
pub use stream::{
    bind_reuseport_tcp, ListenOptions, StreamCounters, StreamEvent, StreamId, StreamIo,
};

/// Free bytes in front of every received datagram (a minimum: see [`RecvPacket::range`]).
pub const HEADROOM: usize = 64;
/// Free bytes after the largest datagram a buffer accepts.
pub const TAILROOM: usize = 4;
/// Size of one receive buffer; the largest datagram accepted is BUF_SIZE - HEADROOM - TAILROOM.
pub const BUF_SIZE: usize = 2048;
/// Largest datagram a receive buffer holds. Larger ones are truncated by the kernel, dropped and
/// counted in [`Counters::truncated`].
pub const MAX_DATAGRAM: usize = BUF_SIZE - HEADROOM - TAILROOM;
/// Longest a worker sleeps without looking at its control channel.
pub const MAX_WAIT: Duration = Duration::from_millis(100);

/// A socket in a driver's table. Stable while the socket is open; may be reused after close.
/// The sockets given to [`run_worker`] get `SockId(0)`, `SockId(1)`, ... in order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockId(pub u32);

/// A received datagram in a driver-owned buffer. The handler may rewrite any byte of
/// `buf_mut()`, then either pass the packet to [`Io::forward`] (zero copy) or drop it (the buffer
/// returns to the driver at once).
pub trait RecvPacket {
    /// The whole buffer: headroom, datagram, tailroom.
    fn buf(&self) -> &[u8];
    /// The whole buffer, writable: headroom, datagram, tailroom.
    fn buf_mut(&mut self) -> &mut [u8];
    /// Where the datagram sits in the buffer. `range().start >= HEADROOM` and
    /// `buf().len() - range().end >= TAILROOM` always hold; the start is the same for every
    /// packet of one backend but may differ between backends.
    fn range(&self) -> Range<usize>;
    /// The datagram itself.
    fn payload(&self) -> &[u8] {
        &self.buf()[self.range()]
    }
}

/// What a handler may ask of the driver while it handles an event. Nothing here blocks; sends
/// are queued and submitted once per batch. A send the driver cannot queue (closed socket, range
/// outside the buffer, no send buffer left) is dropped and counted in [`Counters::drops`]: UDP
/// is lossy anyway, and a relay must not stall on one slow socket.
///
/// TCP is the [`StreamIo`] half (see [`stream`]).
pub trait Io: StreamIo {
    type Packet: RecvPacket;

    /// Opens a non-blocking UDP socket bound to `addr` (port 0: any free port) and starts
    /// receiving on it.
    fn open_udp(&mut self, addr: SocketAddr) -> io::Result<SockId> {
        self.open_udp_with(addr, UdpOptions::default())
    }
    /// [`Io::open_udp`] with socket options set before the bind.
    fn open_udp_with(&mut self, addr: SocketAddr, opts: UdpOptions) -> io::Result<SockId>;
    /// The address a socket is bound to (to learn the port the kernel picked for port 0).
    fn local_addr(&self, sock: SockId) -> io::Result<SocketAddr>;
    /// Closes a socket: no datagram is delivered from it after this call; sends already queued
    /// on it may still go out. The id may be reused by a later `open_udp`.
    fn close(&mut self, sock: SockId);
    /// Sends `buf[range]` of a received packet from `via` to `to` without copying it. The buffer
    /// returns to the driver when the send completes.
    fn forward(&mut self, pkt: Self::Packet, via: SockId, to: SocketAddr, range: Range<usize>);
    /// Sends a small message (a STUN response) by copying it into a driver send buffer. At most
    /// [`BUF_SIZE`] bytes.
    fn send(&mut self, via: SockId, to: SocketAddr, bytes: &[u8]);
    /// The driver's counters so far.
    fn counters(&self) -> &Counters;
}

/// The protocol side of one worker.
pub trait Handler {
    /// One datagram arrived on `sock` from `from`.
    fn on_recv<I: Io>(
        &mut self,
        now: Instant,
        sock: SockId,
        from: SocketAddr,
        pkt: I::Packet,
        io: &mut I,
    );
    /// Called at least once per batch, after the datagrams, and when `next_timeout` passes.
    fn on_tick<I: Io>(&mut self, now: Instant, io: &mut I);
    /// When the handler next needs `on_tick` even if no datagram arrives.
    fn next_timeout(&self) -> Option<Instant>;
    /// Something happened on a TCP socket the handler opened or accepted (see [`stream`]).
    /// Handlers that open none never get here.
    fn on_stream<I: Io>(&mut self, now: Instant, event: StreamEvent<'_>, io: &mut I) {
        let _ = (now, event, io);
    }
}

/// Which I/O backend to run (`--backend`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// io_uring when [`probe_uring`] passes, the portable loop otherwise.
    #[default]
    Auto,
    /// io_uring or nothing: start-up fails if the probe fails.
    Uring,
    /// epoll + recvmmsg/sendmmsg.
    Portable,
}

/// The backend a worker actually runs, once `Auto` is resolved.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Chosen {
    Uring,
    Portable,
}

/// A resolved backend and why it was chosen, for the start-up log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub chosen: Chosen,
    pub reason: String,
}

/// Resolves `Auto` by probing io_uring, and logs the choice and its reason. Fails only for
/// `Uring` on a host where the probe fails.
pub fn select_backend(requested: Backend) -> Result<Selection, DriverError> {
    let selection = resolve(requested);
    match &selection {
        Ok(s) => tracing::info!(backend = ?s.chosen, reason = %s.reason, "I/O backend selected"),
        Err(e) => tracing::error!(error = %e, "I/O backend unavailable"),
    }
    selection
}

fn resolve(requested: Backend) -> Result<Selection, DriverError> {
    match requested {
        Backend::Portable => Ok(Selection {
            chosen: Chosen::Portable,
            reason: "requested with --backend portable".into(),
        }),
        Backend::Uring => match probe_uring() {
            Ok(()) => Ok(Selection {
                chosen: Chosen::Uring,
                reason: "requested with --backend uring; probe passed".into(),
            }),
            Err(reason) => Err(DriverError::UringUnavailable(reason)),
        },
        Backend::Auto => Ok(match probe_uring() {
            Ok(()) => Selection {
                chosen: Chosen::Uring,
                reason: "auto: io_uring probe passed".into(),
            },
            Err(reason) => Selection {
                chosen: Chosen::Portable,
                reason: format!("auto: io_uring unavailable ({reason})"),
            },
        }),
    }
}

/// Checks that io_uring works here the way the uring backend uses it: ring set-up, every opcode
/// it issues, the features it relies on, and a live multishot receive from a buffer ring on a
/// loopback socket (a seccomp filter or a half-working kernel fails here, not at run time).
///
/// The probe runs on a short-lived thread of its own: io_uring binds task work to the thread
/// that submits, and a ring torn down on the caller's thread can leave a notification that
/// interrupts the caller's next blocking call with EINTR.
pub fn probe_uring() -> Result<(), String> {
    std::thread::Builder::new()
        .name("uring-probe".into())
        .spawn(uring::probe)
        .map_err(|e| format!("cannot spawn the probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the probe panicked".into()))
}

/// Messages to a running worker, polled once per batch.
#[derive(Debug)]
pub enum Control {
    /// Stop the loop: in-flight sends are given a short time to complete, sockets are closed and
    /// [`run_worker`] returns the final counters.
    Stop,
    /// Send a copy of the counters to the given channel.
    Snapshot(Sender<Counters>),
}

/// Driver counters: plain integers owned by one worker.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams handed to the handler.
    pub recv_packets: u64,
    pub recv_bytes: u64,
    /// Datagrams the kernel accepted for sending.
    pub send_packets: u64,
    pub send_bytes: u64,
    /// Sends the kernel refused (the error is per datagram; the loop goes on).
    pub send_errors: u64,
    /// Receive errors other than "no buffer" and "would block".
    pub recv_errors: u64,
    /// Datagrams longer than [`MAX_DATAGRAM`], dropped.
    pub truncated: u64,
    /// Times the receive path found no free buffer (io_uring: the multishot receive ended with
    /// ENOBUFS and was re-armed once buffers came back; portable: a readable socket was left
    /// unread for a batch).
    pub enobufs: u64,
    /// Times the submission queue was full and had to be submitted before queuing more.
    pub sq_full: u64,
    /// Multishot receives re-armed after they ended (ENOBUFS, or the kernel ending them).
    pub rearms: u64,
    /// Sends dropped by the driver itself: closed or unknown socket, range outside the buffer,
    /// no send buffer free, message too large for a send buffer.
    pub drops: u64,
    /// GSO sends made ([`DriverConfig::gso`]): each carried two or more of the datagrams
    /// counted in `send_packets`.
    pub gso_sends: u64,
    /// Coalesced receives ([`DriverConfig::gro`]) split into datagrams; the datagrams are
    /// counted in `recv_packets`.
    pub gro_receives: u64,
}

/// Tunables of one worker. The defaults suit a relay worker; loadgen may want more sockets.
#[derive(Copy, Clone, Debug)]
pub struct DriverConfig {
    /// Receive buffers of [`BUF_SIZE`] bytes (io_uring: the buffer ring; a power of two, at most
    /// 32768).
    pub recv_buffers: u16,
    /// Send buffers of [`BUF_SIZE`] bytes for [`Io::send`].
    pub send_buffers: u16,
    /// io_uring submission queue entries (the completion queue gets four times as many).
    pub ring_entries: u32,
    /// Longest the worker gives in-flight sends to complete at [`Control::Stop`].
    pub drain_timeout: Duration,
    /// UDP GSO: datagrams queued in one batch with the same socket, destination and length
    /// leave as one `UDP_SEGMENT` send (see [`gso`]). They still arrive as separate datagrams.
    /// On by default.
    pub gso: bool,
    /// UDP GRO: sockets may receive several datagrams of one flow coalesced; the driver splits
    /// them and the handler sees each as its own packet. Segments after the first are copied
    /// into buffers of their own (each needs its own headroom); with io_uring every datagram is
    /// received into a large buffer and copied out (see `uring.rs`). On by default.
    pub gro: bool,
    /// io_uring only: a kernel thread polls the submission queue (SQPOLL), going idle after
    /// this many milliseconds without work. Off by default (see tuning/README.md).
    pub sqpoll_idle_ms: Option<u32>,
    /// Busy polling of the NIC queue the traffic arrives on, in microseconds: io_uring NAPI
    /// busy poll (`IORING_REGISTER_NAPI`) or `SO_BUSY_POLL` on each socket (portable). Needs a
    /// NIC with NAPI: on loopback it does nothing. Off by default.
    pub busy_poll_us: Option<u32>,
    /// io_uring only: plain sends (not GSO runs) as `SENDMSG_ZC`, the kernel sending from the
    /// buffer in place and reporting when it is free. Off by default: measured a loss for small
    /// datagrams (tuning/README.md).
    pub send_zc: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            recv_buffers: 4096,
            send_buffers: 1024,
            ring_entries: 1024,
            drain_timeout: Duration::from_millis(300),
            // Both measured a win for heavy flows and no loss for many small ones on both
            // backends (tuning/README.md, "Going past the naive kernel path").
            gso: true,
            gro: true,
            sqpoll_idle_ms: None,
            busy_poll_us: None,
            send_zc: false,
        }
    }
}

/// The environment variable [`DriverConfig::with_env_overrides`] reads.
pub const ENV_OVERRIDES: &str = "UTURN_DRIVER";

impl DriverConfig {
    /// Applies `UTURN_DRIVER=key=value,...` on top of `self`: the knobs the benchmark harness
    /// (tuning/bench.py) turns to compare kernel paths under one binary. Keys: `gso`, `gro`
    /// (0 or 1), `ring_entries`, `recv_buffers`, `send_buffers`, `sqpoll` (idle ms, 0 off),
    /// `busy_poll` (microseconds, 0 off), `send_zc` (0 or 1). Unknown keys and bad values
    /// are logged and ignored: a benchmark knob must not stop a relay from starting.
    pub fn with_env_overrides(self) -> Self {
        match std::env::var(ENV_OVERRIDES) {
            Ok(spec) => self.with_overrides(&spec),
            Err(_) => self,
        }
    }

    /// [`DriverConfig::with_env_overrides`] with the variable's value given.
    pub fn with_overrides(mut self, spec: &str) -> Self {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                tracing::warn!(item, "{ENV_OVERRIDES}: expected key=value");
                continue;
            };
            let flag = match value {
                "1" | "on" | "true" => Some(true),
                "0" | "off" | "false" => Some(false),
                _ => None,
            };
            let ok = match (key, flag) {
                ("gso", Some(f)) => {
                    self.gso = f;
                    true
                }
                ("gro", Some(f)) => {
                    self.gro = f;
                    true
                }
                ("send_zc", Some(f)) => {
                    self.send_zc = f;
                    true
                }
                ("ring_entries", _) => value.parse().map(|v| self.ring_entries = v).is_ok(),
                ("sqpoll", _) => value
                    .parse()
                    .map(|v: u32| self.sqpoll_idle_ms = (v > 0).then_some(v))
                    .is_ok(),
                ("busy_poll", _) => value
                    .parse()
                    .map(|v: u32| self.busy_poll_us = (v > 0).then_some(v))
                    .is_ok(),
                ("recv_buffers", _) => value.parse().map(|v| self.recv_buffers = v).is_ok(),
                ("send_buffers", _) => value.parse().map(|v| self.send_buffers = v).is_ok(),
                _ => false,
            };
            if !ok {
                tracing::warn!(item, "{ENV_OVERRIDES}: unknown key or bad value, ignored");
            }
        }
        self
    }
}

/// Why a worker could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("io_uring unavailable: {0}")]
    UringUnavailable(String),
    #[error("invalid driver configuration: {0}")]
    Config(&'static str),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl DriverError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> DriverError {
        move |source| DriverError::Io { what, source }
    }
}

/// Runs one worker's event loop on the calling thread until [`Control::Stop`] arrives (or the
/// control channel is disconnected: a worker whose owner is gone must not run on forever).
/// `sockets` become `SockId(0)..SockId(n)`; they are set non-blocking and owned by the driver.
/// Returns the final counters.
///
/// `Backend::Auto` probes io_uring on this thread; call [`select_backend`] once beforehand to log
/// the choice and pass the result (`Backend::Uring` or `Backend::Portable`) to every worker.
pub fn run_worker<H: Handler>(
    backend: Backend,
    handler: &mut H,
    sockets: Vec<UdpSocket>,
    control: &Receiver<Control>,
    config: &DriverConfig,
) -> Result<Counters, DriverError> {
    let config = &config.with_env_overrides();
    if !config.recv_buffers.is_power_of_two() || config.recv_buffers > 32768 {
        return Err(DriverError::Config(
            "recv_buffers must be a power of two, at most 32768",
        ));
    }
    if config.send_buffers == 0 {
        return Err(DriverError::Config("send_buffers must be at least 1"));
    }
    let chosen = match backend {
        Backend::Portable => Chosen::Portable,
        Backend::Uring => Chosen::Uring,
        Backend::Auto => select_backend(Backend::Auto)?.chosen,
    };
    match chosen {
        Chosen::Uring => uring::run(handler, sockets, control, config),
        Chosen::Portable => portable::run(handler, sockets, control, config),
    }
}

/// What the loop does after looking at its control channel.
pub(crate) enum ControlFlow {
    Continue,
    Stop,
}

/// Drains the control channel; called once per batch by both backends.
pub(crate) fn poll_control(control: &Receiver<Control>, counters: &Counters) -> ControlFlow {
    loop {
        match control.try_recv() {
            Ok(Control::Stop) => return ControlFlow::Stop,
            Ok(Control::Snapshot(reply)) => {
                // A snapshot nobody waits for any more is not an error of the worker.
                let _ = reply.send(*counters);
            }
            Err(TryRecvError::Empty) => return ControlFlow::Continue,
            Err(TryRecvError::Disconnected) => {
                tracing::warn!("control channel disconnected; stopping worker");
                return ControlFlow::Stop;
            }
        }
    }
}

/// How long to wait for the next event: until the handler's timer, at most [`MAX_WAIT`].
pub(crate) fn wait_budget(next: Option<Instant>, now: Instant) -> Duration {
    match next {
        Some(at) => at.saturating_duration_since(now).min(MAX_WAIT),
        None => MAX_WAIT,
    }
}

/// Checks a forward range against the buffer: it must be inside, and it may start in the
/// headroom (a header written in front of the datagram).
pub(crate) fn valid_range(range: &Range<usize>) -> bool {
    range.start <= range.end && range.end <= BUF_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_known_keys_and_ignore_the_rest() {
        let c = DriverConfig::default().with_overrides("gso=1, gro=on,ring_entries=2048,x=1,gro");
        assert!(c.gso && c.gro);
        assert_eq!(c.ring_entries, 2048);
        let c = c.with_overrides("gso=0,recv_buffers=lots,send_buffers=8,sqpoll=5,busy_poll=0");
        assert_eq!((c.sqpoll_idle_ms, c.busy_poll_us), (Some(5), None));
        assert!(!c.gso && c.gro);
        assert_eq!(c.recv_buffers, DriverConfig::default().recv_buffers);
        assert_eq!(c.send_buffers, 8);
        assert!(DriverConfig::default().with_overrides("").recv_buffers > 0);
    }
}
