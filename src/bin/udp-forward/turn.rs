//! `udp-forward turn`: the kernel reference the end-to-end benchmark runs under the same loadgen
//! command lines as the relays. A TURN server as plain as it gets: one thread, level-triggered
//! epoll, one `recvmmsg` per readable socket per round, every datagram through the project's
//! sans-IO [`Server`] (so loadgen's clients allocate, bind channels and relay exactly as against
//! uturn), and one `sendmmsg` per sending socket per round. No io_uring, no buffer ring, no
//! worker abstraction: what is left is the kernel's per-datagram path plus the protocol.
//!
//! The kernel-path options are what the benchmark compares:
//! - `--gso`: datagrams of one round with the same socket, destination and length leave as one
//!   `UDP_SEGMENT` send (iovecs over the slots, no copy).
//! - `--gro`: `UDP_GRO` on every socket; coalesced receives land in a 64 KiB staging buffer per
//!   message and each segment is copied into a slot of its own (its headroom must be free for
//!   the ChannelData header the server writes in place).
//! - `--connect-relays`: a relay socket is `connect`ed to the first peer it sends to, so its
//!   sends skip the route lookup. This breaks TURN for allocations with more than one peer (a
//!   connected socket receives from its peer only): it is a measurement, not a mode to run.
//! - `--connect-clients`: each client gets a listening socket of its own (SO_REUSEPORT on the
//!   listen address) connected to it: sends to the client skip the route lookup, its datagrams
//!   take the kernel's connected-socket (4-tuple) lookup, and each client's datagrams are read
//!   in batches of their own. Correct for TURN, at one more descriptor per client.
//! - `--connect`: both.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use socket2::SockAddr;
use uturn::config::{self, Cli};
use uturn::driver::{bind_reuseport_udp, bind_udp_with, gso, UdpOptions};
use uturn_proto::turn::auth::NonceKey;
use uturn_proto::turn::{
    FiveTuple, Now, OpenError, Payload, RelayId, RelaySockets, Server, ServerConfig, Transport, Via,
};

/// Datagrams per `recvmmsg` and per `sendmmsg`.
const BATCH: usize = 64;
/// One slot: a datagram with headroom for the ChannelData / Data indication header.
const SLOT: usize = 2048;
const HEADROOM: usize = 64;
/// Slots in the arena: how many datagrams one round may hold before it must flush.
const SLOTS: usize = 4096;
/// A GRO staging buffer: the largest coalesced datagram.
const STAGE: usize = 65_536;
/// epoll events per wait.
const EVENTS: usize = 256;

/// Flags of `udp-forward turn`.
#[derive(clap::Args, Debug, Clone)]
pub struct TurnArgs {
    #[arg(long, default_value = "127.0.0.1:3478")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1")]
    pub relay_ip: String,
    #[arg(long, default_value = "49152-65535")]
    pub relay_ports: String,
    #[arg(long, default_value = "uturn.local")]
    pub realm: String,
    #[arg(
        long = "user",
        value_name = "NAME:PASSWORD",
        default_value = "demo:secret"
    )]
    pub user: Vec<String>,
    /// Coalesce runs of one round to one destination with UDP_SEGMENT.
    #[arg(long)]
    pub gso: bool,
    /// Receive coalesced datagrams (UDP_GRO) and split them.
    #[arg(long)]
    pub gro: bool,
    /// Connected sockets: relay sockets to their first peer, a listening socket per client.
    #[arg(long)]
    pub connect: bool,
    /// Relay sockets connected to their first peer only.
    #[arg(long)]
    pub connect_relays: bool,
    /// A connected listening socket per client only.
    #[arg(long)]
    pub connect_clients: bool,
    /// Pin the thread to this CPU.
    #[arg(long)]
    pub core: Option<usize>,
    /// Stop after this many seconds (default: at SIGTERM / SIGINT).
    #[arg(long)]
    pub duration: Option<f64>,
}

#[derive(Debug)]
enum Kind {
    /// A listening socket; `client` is set for a per-client connected one (`--connect`).
    Listener {
        client: Option<SocketAddr>,
    },
    Relay(RelayId),
}

#[derive(Debug)]
struct Sock {
    fd: OwnedFd,
    kind: Kind,
    /// The peer a `--connect` relay socket is connected to.
    connected: Option<SocketAddr>,
}

/// A datagram to send: `len` bytes at `start` in slot `slot`.
#[derive(Copy, Clone, Debug)]
struct Queued {
    via: u32,
    to: SocketAddr,
    slot: u32,
    start: u16,
    len: u16,
}

#[derive(Copy, Clone, Debug, Default)]
struct Counters {
    recv: u64,
    sent: u64,
    send_errors: u64,
    gso_sends: u64,
    gro_coalesced: u64,
    no_slot: u64,
    truncated: u64,
}

/// Everything the server may open sockets in.
struct Sockets {
    epfd: OwnedFd,
    socks: Vec<Option<Sock>>,
    free: Vec<u32>,
    gro: bool,
}

impl Sockets {
    fn insert(&mut self, fd: OwnedFd, kind: Kind) -> io::Result<u32> {
        if self.gro {
            gso::enable_gro(fd.as_raw_fd())?;
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.socks.push(None);
                (self.socks.len() - 1) as u32
            }
        };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u64::from(idx),
        };
        // SAFETY: both fds are open; the kernel copies `ev`.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if rc < 0 {
            self.free.push(idx);
            return Err(io::Error::last_os_error());
        }
        self.socks[idx as usize] = Some(Sock {
            fd,
            kind,
            connected: None,
        });
        Ok(idx)
    }

    fn remove(&mut self, idx: u32) {
        if let Some(slot) = self.socks.get_mut(idx as usize) {
            if let Some(s) = slot.take() {
                // SAFETY: the fd is open until `s` drops below; a null event is allowed for DEL.
                unsafe {
                    libc::epoll_ctl(
                        self.epfd.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        s.fd.as_raw_fd(),
                        std::ptr::null_mut(),
                    );
                }
                self.free.push(idx);
            }
        }
    }
}

impl RelaySockets for Sockets {
    fn open(
        &mut self,
        addr: SocketAddr,
        id: RelayId,
        dont_fragment: bool,
    ) -> Result<u32, OpenError> {
        let sock = bind_udp_with(addr, UdpOptions { dont_fragment }).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EADDRINUSE) => OpenError::AddrInUse,
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => {
                    OpenError::Exhausted
                }
                _ => OpenError::Other,
            }
        })?;
        self.insert(OwnedFd::from(sock), Kind::Relay(id))
            .map_err(|_| OpenError::Other)
    }

    fn close(&mut self, handle: u32) {
        self.remove(handle);
    }
}

/// The receive side of one `recvmmsg`: headers, iovecs, names and control space.
struct RecvScratch {
    msgs: Vec<libc::mmsghdr>,
    iov: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    control: Vec<[u8; 64]>,
    /// With `--gro`: a staging buffer per message.
    stage: Vec<u8>,
    /// Slots the messages were given (without `--gro`).
    slots: Vec<u32>,
}

/// The bare relay.
struct Bare {
    args: TurnArgs,
    server: Server,
    sockets: Sockets,
    listen_idx: u32,
    /// `--connect`: the connected listening socket of each client.
    client_socks: HashMap<SocketAddr, u32>,
    arena: Vec<u8>,
    free_slots: Vec<u32>,
    queue: Vec<Queued>,
    rx: RecvScratch,
    out: Box<[u8; 2048]>,
    counters: Counters,
    clock_base: Instant,
    unix_base: u64,
}

fn zeroed<T>() -> T {
    // SAFETY: used only for plain C structs (mmsghdr, sockaddr_storage, epoll_event) for which
    // all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn build_server(a: &TurnArgs) -> Result<Server> {
    let cli = Cli {
        listen: vec![a.listen.to_string()],
        relay_ip: vec![a.relay_ip.clone()],
        relay_ports: Some(a.relay_ports.clone()),
        realm: Some(a.realm.clone()),
        user: a.user.clone(),
        threads: Some(1),
        allow_loopback_peers: true,
        ..Cli::default()
    };
    let s = config::load(&cli).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cfg = ServerConfig::new(
        s.realm.clone(),
        s.credentials()?,
        NonceKey::new(rand::random()),
    );
    cfg.relay_v4 = s.relay_v4;
    cfg.relay_v6 = s.relay_v6;
    cfg.port_min = *s.relay_ports.start();
    cfg.port_max = *s.relay_ports.end();
    cfg.max_allocations = s.limits.max_allocations;
    cfg.max_allocations_per_user = s.limits.max_allocations_per_user;
    cfg.peer_policy = s.peer_policy();
    cfg.seed = rand::random();
    Ok(Server::new(cfg, Instant::now()))
}

impl Bare {
    fn new(args: TurnArgs) -> Result<Bare> {
        let server = build_server(&args)?;
        // SAFETY: plain syscall; the fd is owned below.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        anyhow::ensure!(epfd >= 0, "epoll_create1: {}", io::Error::last_os_error());
        // SAFETY: a fresh fd nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let mut sockets = Sockets {
            epfd,
            socks: Vec::new(),
            free: Vec::new(),
            gro: args.gro,
        };
        // A plain bind first: with SO_REUSEPORT alone, another server on the port would silently
        // share it (and answer half of loadgen's requests).
        std::net::UdpSocket::bind(args.listen)
            .with_context(|| format!("listen {} (in use?)", args.listen))?;
        let listener = bind_reuseport_udp(args.listen).context("listen")?;
        let listen_idx = sockets
            .insert(OwnedFd::from(listener), Kind::Listener { client: None })
            .context("register listener")?;
        let stage = if args.gro {
            vec![0u8; BATCH * STAGE]
        } else {
            Vec::new()
        };
        let unix_base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Bare {
            server,
            sockets,
            listen_idx,
            client_socks: HashMap::new(),
            arena: vec![0u8; SLOTS * SLOT],
            free_slots: (0..SLOTS as u32).rev().collect(),
            queue: Vec::with_capacity(SLOTS),
            rx: RecvScratch {
                msgs: vec![zeroed(); BATCH],
                iov: vec![
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0
                    };
                    BATCH
                ],
                names: vec![zeroed(); BATCH],
                control: vec![[0u8; 64]; BATCH],
                stage,
                slots: Vec::with_capacity(BATCH),
            },
            out: Box::new([0; 2048]),
            counters: Counters::default(),
            clock_base: Instant::now(),
            unix_base,
            args,
        })
    }

    fn now(&self, instant: Instant) -> Now {
        Now {
            instant,
            unix_secs: self.unix_base
                + instant.saturating_duration_since(self.clock_base).as_secs(),
        }
    }

    fn slot_ptr(&mut self, slot: u32) -> *mut u8 {
        // SAFETY: slot < SLOTS, inside the arena.
        unsafe { self.arena.as_mut_ptr().add(slot as usize * SLOT) }
    }

    /// One `recvmmsg` on socket `idx`; every datagram (every segment of a coalesced one) goes
    /// through the server. Returns false when the arena is too full to receive a batch.
    fn recv_batch(&mut self, idx: u32, now: Now) -> bool {
        if self.free_slots.len() < BATCH * if self.args.gro { gso::MAX_SEGMENTS } else { 1 } {
            return false;
        }
        let Some(Some(sock)) = self.sockets.socks.get(idx as usize) else {
            return true;
        };
        let fd = sock.fd.as_raw_fd();
        self.rx.slots.clear();
        for i in 0..BATCH {
            let (base, len) = if self.args.gro {
                // SAFETY: i * STAGE < stage.len().
                (unsafe { self.rx.stage.as_mut_ptr().add(i * STAGE) }, STAGE)
            } else {
                let slot = self.free_slots.pop().unwrap_or(0);
                self.rx.slots.push(slot);
                // SAFETY: HEADROOM < SLOT.
                (
                    unsafe { self.slot_ptr(slot).add(HEADROOM) },
                    SLOT - HEADROOM,
                )
            };
            self.rx.iov[i] = libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            };
            let h = &mut self.rx.msgs[i].msg_hdr;
            h.msg_name = (&mut self.rx.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut self.rx.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = self.rx.control[i].as_mut_ptr().cast();
            h.msg_controllen = if self.args.gro { 64 } else { 0 };
            h.msg_flags = 0;
        }
        // SAFETY: every header points at live scratch owned by self for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.rx.msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let n = n.max(0) as usize;
        // Slots given to messages that did not arrive go back.
        for i in (n..self.rx.slots.len()).rev() {
            let s = self.rx.slots[i];
            self.free_slots.push(s);
        }
        for i in 0..n {
            let m = self.rx.msgs[i];
            let len = m.msg_len as usize;
            // SAFETY: the kernel wrote msg_namelen bytes of the address.
            let from =
                unsafe { SockAddr::new(self.rx.names[i], m.msg_hdr.msg_namelen) }.as_socket();
            let Some(from) = from else { continue };
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.counters.truncated += 1;
                if !self.args.gro {
                    self.free_slots.push(self.rx.slots[i]);
                }
                continue;
            }
            if self.args.gro {
                // size_t on glibc, socklen_t on musl.
                #[allow(clippy::unnecessary_cast)]
                let clen = (m.msg_hdr.msg_controllen as usize).min(64);
                let seg = gso::gro_segment_size(&self.rx.control[i][..clen]).unwrap_or(len);
                if seg < len {
                    self.counters.gro_coalesced += 1;
                }
                for r in gso::segments(len, seg) {
                    if r.len() > SLOT - HEADROOM {
                        self.counters.truncated += 1;
                        continue;
                    }
                    let Some(slot) = self.free_slots.pop() else {
                        self.counters.no_slot += 1;
                        continue;
                    };
                    let at = slot as usize * SLOT + HEADROOM;
                    let src = i * STAGE + r.start;
                    self.arena[at..at + r.len()]
                        .copy_from_slice(&self.rx.stage[src..src + r.len()]);
                    self.handle(now, idx, from, slot, r.len());
                }
            } else {
                let slot = self.rx.slots[i];
                self.handle(now, idx, from, slot, len);
            }
        }
        true
    }

    /// One datagram of `len` bytes at HEADROOM in `slot`, from `from` on socket `idx`.
    fn handle(&mut self, now: Now, idx: u32, from: SocketAddr, slot: u32, len: usize) {
        self.counters.recv += 1;
        let base = slot as usize * SLOT;
        let kind = match self.sockets.socks.get(idx as usize) {
            Some(Some(s)) => match s.kind {
                Kind::Listener { .. } => None,
                Kind::Relay(id) => Some(id),
            },
            _ => {
                self.free_slots.push(slot);
                return;
            }
        };
        let range = HEADROOM..HEADROOM + len;
        let (transmit, offset) = match kind {
            Some(id) => {
                let buf = &mut self.arena[base..base + SLOT];
                let t = self
                    .server
                    .handle_peer(now, id, from, buf, range, &mut self.out[..]);
                (t, 0)
            }
            None => {
                let tuple = FiveTuple {
                    client: from,
                    server: self.args.listen,
                    transport: Transport::Udp,
                };
                let t = self.server.handle_client(
                    now,
                    0,
                    tuple,
                    &self.arena[base + HEADROOM..base + HEADROOM + len],
                    &mut self.out[..],
                    &mut self.sockets,
                );
                (t, HEADROOM)
            }
        };
        let Some(t) = transmit else {
            self.free_slots.push(slot);
            return;
        };
        let via = match t.via {
            Via::Listener(_) => self.listener_for(t.to),
            Via::Relay(h) => h,
        };
        let (start, len) = match t.payload {
            Payload::Input(r) => (offset + r.start, r.len()),
            Payload::Output(n) => {
                let n = n.min(SLOT - HEADROOM);
                self.arena[base + HEADROOM..base + HEADROOM + n].copy_from_slice(&self.out[..n]);
                (HEADROOM, n)
            }
        };
        if start + len > SLOT {
            self.free_slots.push(slot);
            return;
        }
        self.queue.push(Queued {
            via,
            to: t.to,
            slot,
            start: start as u16,
            len: len as u16,
        });
    }

    /// The socket to reach `client` from: its own connected one with `--connect` (made on first
    /// use), the shared listener otherwise.
    fn listener_for(&mut self, client: SocketAddr) -> u32 {
        if !(self.args.connect || self.args.connect_clients) {
            return self.listen_idx;
        }
        if let Some(&i) = self.client_socks.get(&client) {
            return i;
        }
        let made = bind_reuseport_udp(self.args.listen).and_then(|s| {
            s.connect(client)?;
            Ok(s)
        });
        match made.and_then(|s| {
            self.sockets.insert(
                OwnedFd::from(s),
                Kind::Listener {
                    client: Some(client),
                },
            )
        }) {
            Ok(i) => {
                self.client_socks.insert(client, i);
                i
            }
            Err(_) => self.listen_idx,
        }
    }

    /// Sends the round's queue: per socket, per destination, GSO runs with `--gso`.
    fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut queue = std::mem::take(&mut self.queue);
        // Stable: keeps each flow's order.
        queue.sort_by_key(|q| (q.via, q.to));
        let mut i = 0;
        while i < queue.len() {
            let via = queue[i].via;
            let mut j = i;
            while j < queue.len() && queue[j].via == via {
                j += 1;
            }
            self.send_group(&queue[i..j]);
            i = j;
        }
        for q in &queue {
            self.free_slots.push(q.slot);
        }
        queue.clear();
        self.queue = queue;
    }

    /// Sends datagrams that all leave by one socket.
    fn send_group(&mut self, group: &[Queued]) {
        let via = group[0].via;
        let Some(Some(sock)) = self.sockets.socks.get_mut(via as usize) else {
            return;
        };
        let fd = sock.fd.as_raw_fd();
        // --connect: a relay socket connects to the first peer it sends to.
        let connect_relays = self.args.connect || self.args.connect_relays;
        if connect_relays && matches!(sock.kind, Kind::Relay(_)) && sock.connected.is_none() {
            let to = SockAddr::from(group[0].to);
            // SAFETY: a valid fd and address.
            if unsafe { libc::connect(fd, to.as_ptr(), to.len()) } == 0 {
                sock.connected = Some(group[0].to);
            }
        }
        let connected = match sock.kind {
            Kind::Listener { client } => client,
            Kind::Relay(_) => sock.connected,
        };
        let mut k = 0;
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH * gso::MAX_SEGMENTS);
        let mut addrs: Vec<SockAddr> = Vec::with_capacity(BATCH);
        let mut cmsgs: Vec<[u8; gso::CMSG_SPACE]> = Vec::with_capacity(BATCH);
        let mut counts: Vec<usize> = Vec::with_capacity(BATCH);
        while k < group.len() {
            msgs.clear();
            iovs.clear();
            addrs.clear();
            cmsgs.clear();
            counts.clear();
            // Build up to BATCH messages; each is one datagram or one GSO run.
            while k < group.len() && msgs.len() < BATCH {
                let to = group[k].to;
                let run = if self.args.gso {
                    let same = group[k..].iter().take_while(|q| q.to == to);
                    gso::run_length(same.map(|q| q.len as usize))
                } else {
                    1
                };
                for q in &group[k..k + run] {
                    let at = q.slot as usize * SLOT + q.start as usize;
                    iovs.push(libc::iovec {
                        // SAFETY: inside the arena (checked when queued).
                        iov_base: unsafe { self.arena.as_mut_ptr().add(at) }.cast(),
                        iov_len: q.len as usize,
                    });
                }
                addrs.push(SockAddr::from(to));
                let mut c = [0u8; gso::CMSG_SPACE];
                if run > 1 {
                    gso::write_segment_cmsg(&mut c, group[k].len);
                }
                cmsgs.push(c);
                counts.push(run);
                msgs.push(zeroed());
                k += run;
            }
            // Pointers are taken only now: the vectors no longer grow.
            let mut iov_at = 0;
            for m in 0..msgs.len() {
                let h = &mut msgs[m].msg_hdr;
                // A connected socket sends to its peer without a name: no route lookup.
                if connected.is_none() || addrs[m].as_socket() != connected {
                    h.msg_name = addrs[m].as_ptr() as *mut libc::c_void;
                    h.msg_namelen = addrs[m].len();
                }
                h.msg_iov = &mut iovs[iov_at];
                h.msg_iovlen = counts[m];
                iov_at += counts[m];
                if counts[m] > 1 {
                    h.msg_control = cmsgs[m].as_mut_ptr().cast();
                    h.msg_controllen = gso::CMSG_SPACE;
                }
            }
            let mut sent = 0;
            while sent < msgs.len() {
                // SAFETY: headers [sent..] point at live vectors of this function.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        msgs.as_mut_ptr().add(sent),
                        (msgs.len() - sent) as u32,
                        0,
                    )
                };
                if r <= 0 {
                    // The reference drops what the kernel refuses (full buffer, error).
                    self.counters.send_errors += counts[sent] as u64;
                    sent += 1;
                    continue;
                }
                for &run in &counts[sent..sent + r as usize] {
                    self.counters.sent += run as u64;
                    if run > 1 {
                        self.counters.gso_sends += 1;
                    }
                }
                sent += r as usize;
            }
        }
    }
}

/// Runs the bare relay until SIGTERM / SIGINT or `--duration`.
pub fn run(args: TurnArgs) -> Result<()> {
    if let Some(c) = args.core {
        if !uturn::driver::pin_current_thread(c) {
            eprintln!("warning: could not pin to CPU {c}");
        }
    }
    uturn::limits::raise_nofile();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let mut bare = Bare::new(args)?;
    eprintln!(
        "udp-forward turn: listening on {} (gso {}, gro {}, connect relays {}, clients {})",
        bare.args.listen,
        bare.args.gso,
        bare.args.gro,
        bare.args.connect || bare.args.connect_relays,
        bare.args.connect || bare.args.connect_clients
    );
    let mut events = vec![zeroed::<libc::epoll_event>(); EVENTS];
    let epfd: RawFd = bare.sockets.epfd.as_raw_fd();
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        let now = Instant::now();
        let wait_ms = bare.server.poll_timeout().map_or(100, |t| {
            t.saturating_duration_since(now).as_millis().min(100) as i32
        });
        // SAFETY: `events` has EVENTS entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), EVENTS as i32, wait_ms) };
        let now = bare.now(Instant::now());
        for e in events.iter().take(n.max(0) as usize) {
            let idx = e.u64 as u32;
            if !bare.recv_batch(idx, now) {
                bare.flush();
                bare.recv_batch(idx, now);
            }
        }
        bare.server.handle_timeout(now, &mut bare.sockets);
        bare.flush();
    }
    let c = bare.counters;
    println!(
        "udp-forward turn: received {} sent {} send_errors {} gso_sends {} gro_coalesced {} no_slot {} truncated {} allocations {}",
        c.recv,
        c.sent,
        c.send_errors,
        c.gso_sends,
        c.gro_coalesced,
        c.no_slot,
        c.truncated,
        bare.server.allocation_count()
    );
    Ok(())
}
