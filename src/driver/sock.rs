//! Socket set-up helpers and the socket table both backends keep.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use super::SockId;

/// A non-blocking UDP socket bound to `addr` with SO_REUSEPORT, so that every worker can bind the
/// same listen address and the kernel spreads clients over them by 5-tuple hash.
pub fn bind_reuseport_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = new_udp(addr)?;
    sock.set_reuse_port(true)?;
    // Every client of a worker arrives on this one socket: a few milliseconds of the worker
    // being descheduled must fit in its buffer, or the kernel drops (Udp RcvbufErrors). The
    // default (net.core.rmem_default, ~208 KiB) holds 10-30 ms at 10k-50k pps.
    grow_buffers(&sock, LISTENER_BUFFER);
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// A non-blocking UDP socket bound to `addr` (port 0: any free port), without SO_REUSEPORT: a
/// relay port belongs to one allocation.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    bind_udp_with(addr, UdpOptions::default())
}

/// Options for [`bind_udp_with`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpOptions {
    /// Set the DF bit on outgoing datagrams (TURN's DONT-FRAGMENT, RFC 8656 section 14.8):
    /// IP_MTU_DISCOVER / IPV6_MTU_DISCOVER = PMTUDISC_DO.
    pub dont_fragment: bool,
}

/// [`bind_udp`] with options.
pub fn bind_udp_with(addr: SocketAddr, opts: UdpOptions) -> io::Result<UdpSocket> {
    let sock = new_udp(addr)?;
    if opts.dont_fragment {
        set_dont_fragment(&sock, addr.is_ipv6())?;
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Sets an integer socket option (`setsockopt` with a `c_int`).
pub(crate) fn set_int_opt(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the caller's fd, and a pointer to a c_int that lives for the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_dont_fragment(sock: &Socket, v6: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, value) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    set_int_opt(sock.as_raw_fd(), level, name, value)
}

/// Receive and send buffer asked for listening sockets.
pub const LISTENER_BUFFER: usize = 4 << 20;

/// Asks for `bytes` of socket buffer: SO_RCVBUFFORCE/SO_SNDBUFFORCE where the process may
/// (CAP_NET_ADMIN), which ignores net.core.rmem_max; plain SO_RCVBUF/SO_SNDBUF otherwise, which
/// the kernel caps at rmem_max/wmem_max (tuning/99-uturn.conf raises those). Best effort: a
/// smaller buffer still works.
fn grow_buffers(sock: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_opt(fd, libc::SOL_SOCKET, force, value).is_err() {
            let _ = set_int_opt(fd, libc::SOL_SOCKET, plain, value);
        }
    }
}

/// The receive buffer the kernel actually gave a socket (twice the asked size, as Linux counts
/// its bookkeeping), for the start-up log.
pub fn recv_buffer_size(sock: &UdpSocket) -> usize {
    socket2::SockRef::from(sock).recv_buffer_size().unwrap_or(0)
}

fn new_udp(addr: SocketAddr) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // One socket per family: a v6 listener must not also take v4-mapped traffic that a v4
        // listener on the same port is meant to get.
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Pins the calling thread to CPU `core` (an index into the CPUs this process may use). Returns
/// false when the CPU does not exist or the kernel refuses.
pub fn pin_current_thread(core: usize) -> bool {
    match core_affinity::get_core_ids().and_then(|ids| ids.get(core).copied()) {
        Some(id) => core_affinity::set_for_current(id),
        None => false,
    }
}

/// Sockets indexed by [`SockId`], with reuse of closed slots. `S` is the backend's per-socket
/// state.
#[derive(Debug)]
pub(crate) struct SockTable<S> {
    slots: Vec<Option<S>>,
    free: Vec<u32>,
}

impl<S> SockTable<S> {
    pub(crate) fn new() -> Self {
        SockTable {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    pub(crate) fn insert(&mut self, s: S) -> SockId {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(s);
                SockId(i)
            }
            None => {
                self.slots.push(Some(s));
                SockId((self.slots.len() - 1) as u32)
            }
        }
    }

    pub(crate) fn get(&self, id: SockId) -> Option<&S> {
        self.slots.get(id.0 as usize)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: SockId) -> Option<&mut S> {
        self.slots.get_mut(id.0 as usize)?.as_mut()
    }

    /// Frees the slot; the id may be handed out again.
    pub(crate) fn remove(&mut self, id: SockId) -> Option<S> {
        let s = self.slots.get_mut(id.0 as usize)?.take()?;
        self.free.push(id.0);
        Some(s)
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = SockId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| SockId(i as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_reuses_closed_ids() {
        let mut t = SockTable::new();
        let a = t.insert('a');
        let b = t.insert('b');
        assert_eq!((a, b), (SockId(0), SockId(1)));
        assert_eq!(t.remove(a), Some('a'));
        assert_eq!(t.remove(a), None);
        assert!(t.get(a).is_none());
        assert_eq!(t.insert('c'), SockId(0));
        assert_eq!(t.ids().collect::<Vec<_>>(), vec![SockId(0), SockId(1)]);
        assert!(t.get(SockId(99)).is_none());
    }

    #[test]
    fn reuseport_sockets_share_a_port() {
        let a = bind_reuseport_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = bind_reuseport_udp(a.local_addr().unwrap()).unwrap();
        assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
        let c = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(bind_udp(c.local_addr().unwrap()).is_err());
    }
}
