//! A bare UDP forwarder and a blaster, for measuring the driver against the kernel baseline.
//!
//! `udp-forward forward --listen A --peer P --engine bare|uring|portable` forwards every datagram
//! arriving on A to P (from a second socket B), and every datagram from P back to the last client
//! seen on A. `bare` is the naive kernel reference: one thread, `poll` + `recvmmsg`/`sendmmsg`,
//! optionally coalescing the A->P direction with UDP GSO (`--gso`, which costs a copy into the
//! super-buffer). `uring` and `portable` run the same forwarding through `uturn::driver`, zero
//! copy. At the end it prints the forwarded packets per CPU-second of the forwarding thread.
//!
//! `udp-forward blast --target A --sink P` floods `--size`-byte datagrams at A from one thread
//! and counts what reaches P on another, for `--duration` seconds.
//!
//! `udp-forward turn` is the bare TURN reference of the end-to-end benchmark (see `turn.rs`):
//! loadgen runs against it exactly as against a relay.
//!
//! Loopback only by default; `forward` and `blast` stop by themselves after `--duration`.

mod turn;

use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use uturn::driver::{
    self, bind_udp, pin_current_thread, Backend, Control, DriverConfig, Handler, Io, RecvPacket,
    SockId,
};

#[derive(Parser, Debug)]
#[command(about = "Bare UDP forwarder / blaster for driver measurements")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Forward A -> peer and peer -> last client.
    Forward {
        #[arg(long, default_value = "127.0.0.1:40000")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:40001")]
        peer: SocketAddr,
        #[arg(long, value_enum, default_value_t = Engine::Bare)]
        engine: Engine,
        /// bare only: coalesce runs of equal-size datagrams to the peer with UDP_SEGMENT.
        #[arg(long)]
        gso: bool,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Pin the forwarding thread to this CPU.
        #[arg(long)]
        core: Option<usize>,
    },
    /// A bare TURN relay (epoll + recvmmsg/sendmmsg + the sans-IO server), the benchmark's
    /// kernel reference.
    Turn(turn::TurnArgs),
    /// Flood `target` with datagrams and count what arrives at `sink`.
    Blast {
        #[arg(long, default_value = "127.0.0.1:40000")]
        target: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:40001")]
        sink: SocketAddr,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Engine {
    Bare,
    Uring,
    Portable,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().cmd {
        Cmd::Forward {
            listen,
            peer,
            engine,
            gso,
            duration,
            core,
        } => forward(
            listen,
            peer,
            engine,
            gso,
            Duration::from_secs_f64(duration),
            core,
        ),
        Cmd::Turn(args) => turn::run(args),
        Cmd::Blast {
            target,
            sink,
            size,
            duration,
        } => blast(target, sink, size, Duration::from_secs_f64(duration)),
    }
}

/// CPU time (user, system) of the calling thread.
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage writes one rusage into the zeroed struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

fn forward(
    listen: SocketAddr,
    peer: SocketAddr,
    engine: Engine,
    gso: bool,
    duration: Duration,
    core: Option<usize>,
) -> Result<()> {
    if gso && engine != Engine::Bare {
        bail!("--gso applies to the bare engine only");
    }
    let a = bind_udp(listen).context("bind listen socket")?;
    let b = bind_udp(SocketAddr::new(peer.ip(), 0)).context("bind peer-side socket")?;
    let handle = thread::spawn(move || -> Result<(u64, (Duration, Duration), String)> {
        if let Some(c) = core {
            if !pin_current_thread(c) {
                eprintln!("warning: could not pin to CPU {c}");
            }
        }
        let cpu0 = thread_cpu();
        let (forwarded, detail) = match engine {
            Engine::Bare => bare::run(&a, &b, peer, gso, duration)?,
            Engine::Uring | Engine::Portable => {
                let backend = if engine == Engine::Uring {
                    Backend::Uring
                } else {
                    Backend::Portable
                };
                let (tx, rx) = crossbeam_channel::bounded(1);
                thread::spawn(move || {
                    thread::sleep(duration);
                    let _ = tx.send(Control::Stop);
                });
                let mut fwd = Forwarder { peer, client: None };
                let c = driver::run_worker(
                    backend,
                    &mut fwd,
                    vec![a, b],
                    &rx,
                    &DriverConfig::default(),
                )?;
                (c.send_packets, format!("{c:?}"))
            }
        };
        let cpu1 = thread_cpu();
        Ok((forwarded, (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1), detail))
    });
    let (forwarded, (user, sys), detail) = handle
        .join()
        .map_err(|_| anyhow::anyhow!("worker panicked"))??;
    let cpu = user + sys;
    let per_cpu_s = forwarded as f64 / cpu.as_secs_f64().max(1e-9);
    println!(
        "engine={engine:?} gso={gso} forwarded={forwarded} user_s={:.3} sys_s={:.3} \
         pkts_per_cpu_s={per_cpu_s:.0}",
        user.as_secs_f64(),
        sys.as_secs_f64()
    );
    eprintln!("{detail}");
    Ok(())
}

/// The forwarder as a driver handler: zero copy in both directions.
struct Forwarder {
    peer: SocketAddr,
    client: Option<SocketAddr>,
}

impl Handler for Forwarder {
    fn on_recv<I: Io>(
        &mut self,
        _: Instant,
        sock: SockId,
        from: SocketAddr,
        pkt: I::Packet,
        io: &mut I,
    ) {
        let range: Range<usize> = pkt.range();
        if sock == SockId(0) {
            self.client = Some(from);
            io.forward(pkt, SockId(1), self.peer, range);
        } else if let Some(client) = self.client {
            io.forward(pkt, SockId(0), client, range);
        }
    }
    fn on_tick<I: Io>(&mut self, _: Instant, _: &mut I) {}
    fn next_timeout(&self) -> Option<Instant> {
        None
    }
}

/// The naive kernel reference: poll + recvmmsg/sendmmsg on two sockets.
mod bare {
    use super::*;

    const BATCH: usize = 64;
    const SLOT: usize = 2048;
    const GSO_MAX: usize = 64;

    struct Batch {
        bufs: Vec<u8>,
        iov: Vec<libc::iovec>,
        names: Vec<libc::sockaddr_storage>,
        msgs: Vec<libc::mmsghdr>,
    }

    impl Batch {
        fn new() -> Batch {
            // SAFETY: plain C structs for which all-zero is valid.
            let zero_ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let zero_m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            let mut b = Batch {
                bufs: vec![0; BATCH * SLOT],
                iov: vec![
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0
                    };
                    BATCH
                ],
                names: vec![zero_ss; BATCH],
                msgs: vec![zero_m; BATCH],
            };
            let base = b.bufs.as_mut_ptr();
            for i in 0..BATCH {
                // SAFETY: i * SLOT < bufs.len().
                b.iov[i].iov_base = unsafe { base.add(i * SLOT) }.cast();
            }
            b
        }

        /// recvmmsg into the batch; returns how many arrived.
        fn recv(&mut self, fd: i32) -> usize {
            for i in 0..BATCH {
                self.iov[i].iov_len = SLOT;
                let h = &mut self.msgs[i].msg_hdr;
                h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
                h.msg_iov = &mut self.iov[i];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
            // SAFETY: every header points at live buffers of the batch.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.msgs.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            n.max(0) as usize
        }

        /// sendmmsg the first `n` datagrams to `to`; returns how many went out.
        fn send(&mut self, fd: i32, n: usize, to: &socket2::SockAddr) -> u64 {
            for i in 0..n {
                self.iov[i].iov_len = self.msgs[i].msg_len as usize;
                let h = &mut self.msgs[i].msg_hdr;
                h.msg_name = to.as_ptr() as *mut libc::c_void;
                h.msg_namelen = to.len();
            }
            let mut sent = 0usize;
            while sent < n {
                // SAFETY: headers [sent, n) point at live buffers and at `to`.
                let r = unsafe {
                    libc::sendmmsg(fd, self.msgs.as_mut_ptr().add(sent), (n - sent) as u32, 0)
                };
                if r <= 0 {
                    // Dropped: the reference forwarder does not retry.
                    sent += 1;
                    continue;
                }
                sent += r as usize;
            }
            n as u64
        }

        /// Sends the first `n` datagrams to `to`, coalescing runs of equal size with UDP GSO.
        fn send_gso(
            &mut self,
            fd: i32,
            n: usize,
            to: &socket2::SockAddr,
            scratch: &mut Vec<u8>,
        ) -> u64 {
            let mut i = 0;
            let mut out = 0u64;
            while i < n {
                let seg = self.msgs[i].msg_len as usize;
                let mut j = i + 1;
                while j < n
                    && j - i < GSO_MAX
                    && self.msgs[j].msg_len as usize == seg
                    && (j - i + 1) * seg <= 65000
                {
                    j += 1;
                }
                scratch.clear();
                for k in i..j {
                    scratch.extend_from_slice(&self.bufs[k * SLOT..k * SLOT + seg]);
                }
                let mut iov = libc::iovec {
                    iov_base: scratch.as_mut_ptr().cast(),
                    iov_len: scratch.len(),
                };
                // One cmsg: SOL_UDP / UDP_SEGMENT = seg (u16).
                let mut cbuf = [0u64; 4];
                // SAFETY: msghdr is a plain C struct; the cmsg macros stay inside cbuf (32
                // bytes >= CMSG_SPACE(2)).
                let r = unsafe {
                    let mut h: libc::msghdr = std::mem::zeroed();
                    h.msg_name = to.as_ptr() as *mut libc::c_void;
                    h.msg_namelen = to.len();
                    h.msg_iov = &mut iov;
                    h.msg_iovlen = 1;
                    h.msg_control = cbuf.as_mut_ptr().cast();
                    h.msg_controllen = libc::CMSG_SPACE(2) as _;
                    let c = libc::CMSG_FIRSTHDR(&h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
                    libc::sendmsg(fd, &h, 0)
                };
                if r >= 0 {
                    out += (j - i) as u64;
                }
                i = j;
            }
            out
        }
    }

    pub(super) fn run(
        a: &UdpSocket,
        b: &UdpSocket,
        peer: SocketAddr,
        gso: bool,
        duration: Duration,
    ) -> Result<(u64, String)> {
        let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
        let peer = socket2::SockAddr::from(peer);
        let mut client: Option<socket2::SockAddr> = None;
        let mut batch = Batch::new();
        let mut scratch = Vec::with_capacity(65536);
        let mut forwarded = 0u64;
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            let mut fds = [
                libc::pollfd {
                    fd: fa,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: fb,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two pollfds.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
            if fds[0].revents != 0 {
                loop {
                    let n = batch.recv(fa);
                    if n == 0 {
                        break;
                    }
                    // SAFETY: names[n-1] was filled by the kernel with msg_namelen bytes.
                    client = Some(unsafe {
                        socket2::SockAddr::new(
                            batch.names[n - 1],
                            batch.msgs[n - 1].msg_hdr.msg_namelen,
                        )
                    });
                    forwarded += if gso {
                        batch.send_gso(fb, n, &peer, &mut scratch)
                    } else {
                        batch.send(fb, n, &peer)
                    };
                }
            }
            if fds[1].revents != 0 {
                loop {
                    let n = batch.recv(fb);
                    if n == 0 {
                        break;
                    }
                    if let Some(c) = &client {
                        forwarded += batch.send(fa, n, c);
                    }
                }
            }
        }
        Ok((forwarded, "bare".into()))
    }
}

fn blast(target: SocketAddr, sink: SocketAddr, size: usize, duration: Duration) -> Result<()> {
    let sink_sock = UdpSocket::bind(sink).context("bind sink")?;
    sink_sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let src = UdpSocket::bind(SocketAddr::new(target.ip(), 0))?;
    let deadline = Instant::now() + duration;
    let counter = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        while Instant::now() < deadline + Duration::from_millis(200) {
            if sink_sock.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    });
    let payload = vec![0x5au8; size];
    let to = socket2::SockAddr::from(target);
    let fd = src.as_raw_fd();
    let mut iov = [libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: size,
    }; 32];
    // SAFETY: plain C struct.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; 32];
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_name = to.as_ptr() as *mut _;
        m.msg_hdr.msg_namelen = to.len();
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0u64;
    while Instant::now() < deadline {
        // SAFETY: 32 headers pointing at `payload` and `to`, alive across the call.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), 32, 0) };
        if r > 0 {
            sent += r as u64;
        }
    }
    let received = counter
        .join()
        .map_err(|_| anyhow::anyhow!("counter panicked"))?;
    println!(
        "sent={sent} received={received} sent_per_s={:.0} received_per_s={:.0}",
        sent as f64 / duration.as_secs_f64(),
        received as f64 / duration.as_secs_f64()
    );
    Ok(())
}
