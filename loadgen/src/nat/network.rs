//! The emulated LANs of one worker, each behind its own [`Nat`].
//!
//! Addressing (both derived from the [`LanId`], so they are unique across every worker of one
//! run when each worker gets its own range of ids):
//! - LAN `k` is the private subnet `10.(k >> 8).(k & 255).0/24`; its hosts are `.1` to `.254`.
//!   Distinct subnets mean a private address names one host of one LAN; a datagram to another
//!   LAN's private address is dropped here, as the real Internet would drop it, and never becomes
//!   a real packet.
//! - LAN `k`'s NAT has the public address `127.(1 + k / 65024).((k / 254) % 256).(1 + k % 254)`:
//!   outside `127.0.0.0/16`, where the server under test usually listens, and never `.0` or
//!   `.255` in the last octet.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::time::Instant;

use super::{Nat, NatBehavior, NatError, NatEvent, Refused};

/// Most emulated LANs in one run: one `/24` each in `10.0.0.0/8`.
pub const MAX_LANS: u32 = 1 << 16;
/// Hosts per LAN: `.1` to `.254`.
pub const MAX_HOSTS: u8 = 254;

/// An emulated LAN, unique in a run.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LanId(pub u32);

impl LanId {
    /// The NAT's public (real, loopback) address.
    pub fn public_ip(self) -> Ipv4Addr {
        let k = self.0;
        Ipv4Addr::new(
            127,
            (1 + k / (254 * 256)) as u8,
            ((k / 254) % 256) as u8,
            (1 + k % 254) as u8,
        )
    }

    /// Host `h` (1..=254) of this LAN.
    pub fn host(self, h: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, (self.0 >> 8) as u8, self.0 as u8, h)
    }

    /// The LAN whose subnet holds `ip`, if `ip` is a host address of the emulator.
    pub fn of_private(ip: Ipv4Addr) -> Option<LanId> {
        let [a, b, c, d] = ip.octets();
        (a == 10 && (1..=MAX_HOSTS).contains(&d)).then(|| LanId(u32::from(b) << 8 | u32::from(c)))
    }
}

/// Where a datagram from a private host goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// To a host on the same LAN: deliver in process to `to`, with the private sender as source.
    Lan {
        to: SocketAddrV4,
    },
    /// Hairpinned through the LAN's own NAT (RFC 4787 REQ-9): deliver in process to `to` when
    /// the destination mapping's filtering lets it in, with the sender's *public* address `from`
    /// as source (REQ-9a). The sender's mapping exists either way: open a socket at `from` when
    /// `opened`, as for [`Route::Wire`], since outside hosts may use that mapping too.
    Hairpin {
        to: Result<SocketAddrV4, Refused>,
        from: SocketAddrV4,
        opened: bool,
    },
    /// Onto the wire: send from the real socket bound at `via` (open it first when `opened`).
    Wire {
        via: SocketAddrV4,
        to: SocketAddr,
        opened: bool,
    },
    Drop(DropReason),
}

/// Why a datagram went nowhere. Counted by the embedder, never silent.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The sender is not a host of this emulator.
    UnknownSource,
    /// A private address of another LAN, or of no host: nothing routes there.
    Unreachable,
    /// IPv6: the emulated LANs are IPv4 only.
    Ipv6,
    /// The NAT had no public port left.
    NatFull,
}

/// What the network tells its embedder outside of a call's return value.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// A NAT mapping is gone: close the real socket bound at this address.
    Closed { lan: LanId, public: SocketAddrV4 },
}

/// Why a LAN or host could not be added.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("no LAN id left in this worker's range")]
    NoLanLeft,
    #[error("LAN {0:?} is not in this network")]
    UnknownLan(LanId),
    #[error("LAN {0:?} already has {MAX_HOSTS} hosts")]
    LanFull(LanId),
    #[error(transparent)]
    Nat(#[from] NatError),
}

#[derive(Debug)]
struct Lan {
    nat: Nat,
    hosts: u8,
}

/// The emulated LANs of one worker. See the [module documentation](self).
#[derive(Debug)]
pub struct Network {
    ids: Range<u32>,
    seed: u64,
    lans: Vec<Lan>,
    events: VecDeque<NetEvent>,
}

impl Network {
    /// A network that gives its LANs the ids in `ids` (clamped to [`MAX_LANS`]). Give each
    /// worker a disjoint range so that addresses are unique across the run.
    pub fn new(ids: Range<u32>) -> Self {
        Self::with_seed(ids, 0)
    }

    /// Like [`Network::new`]; each NAT starts handing out public ports at a point derived from
    /// `seed` and its id (see [`Nat::starting_at`]). Give each run a different seed.
    pub fn with_seed(ids: Range<u32>, seed: u64) -> Self {
        Network {
            seed,
            ids: ids.start.min(MAX_LANS)..ids.end.min(MAX_LANS),
            lans: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// A new LAN behind a NAT with `behavior`.
    pub fn add_lan(&mut self, behavior: NatBehavior) -> Result<LanId, NetError> {
        let id = self.ids.start + self.lans.len() as u32;
        if id >= self.ids.end {
            return Err(NetError::NoLanLeft);
        }
        let lan = LanId(id);
        let nat = Nat::new(lan.public_ip(), behavior);
        let nat = if self.seed == 0 {
            nat
        } else {
            let span = u64::from(super::DEFAULT_PORTS.end() - super::DEFAULT_PORTS.start()) + 1;
            let offset = splitmix(self.seed ^ u64::from(id)) % span;
            nat.starting_at(super::DEFAULT_PORTS.start() + offset as u16)
        };
        self.lans.push(Lan { nat, hosts: 0 });
        Ok(lan)
    }

    /// A new host address on `lan`.
    pub fn add_host(&mut self, lan: LanId) -> Result<Ipv4Addr, NetError> {
        let l = self.lan_mut(lan).ok_or(NetError::UnknownLan(lan))?;
        if l.hosts >= MAX_HOSTS {
            return Err(NetError::LanFull(lan));
        }
        l.hosts += 1;
        Ok(lan.host(l.hosts))
    }

    fn index(&self, lan: LanId) -> Option<usize> {
        let i = lan.0.checked_sub(self.ids.start)? as usize;
        (i < self.lans.len()).then_some(i)
    }

    fn lan_mut(&mut self, lan: LanId) -> Option<&mut Lan> {
        let i = self.index(lan)?;
        self.lans.get_mut(i)
    }

    pub fn nat(&self, lan: LanId) -> Option<&Nat> {
        Some(&self.lans.get(self.index(lan)?)?.nat)
    }

    pub fn nat_mut(&mut self, lan: LanId) -> Option<&mut Nat> {
        Some(&mut self.lan_mut(lan)?.nat)
    }

    /// The LAN a host address of this network belongs to.
    pub fn lan_of(&self, host: Ipv4Addr) -> Option<LanId> {
        let lan = LanId::of_private(host)?;
        let l = self.lans.get(self.index(lan)?)?;
        (host.octets()[3] <= l.hosts).then_some(lan)
    }

    /// The LAN whose NAT has this public address, if it is in this network.
    pub fn lan_of_public(&self, ip: Ipv4Addr) -> Option<LanId> {
        let [a, x, y, z] = ip.octets();
        if a != 127 || x == 0 || z == 0 || z == 255 {
            return None;
        }
        let k = (u32::from(x) - 1) * (254 * 256) + u32::from(y) * 254 + (u32::from(z) - 1);
        let lan = LanId(k);
        self.index(lan)?;
        (lan.public_ip() == ip).then_some(lan)
    }

    /// Routes a datagram from private host endpoint `from` to `to`.
    pub fn send(&mut self, now: Instant, from: SocketAddrV4, to: SocketAddr) -> Route {
        let Some(lan) = self.lan_of(*from.ip()) else {
            return Route::Drop(DropReason::UnknownSource);
        };
        let to = match to {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => return Route::Drop(DropReason::Ipv6),
        };
        if to.ip().is_private() {
            return if self.lan_of(*to.ip()) == Some(lan) {
                Route::Lan { to }
            } else {
                Route::Drop(DropReason::Unreachable)
            };
        }
        let Some(l) = self.lan_mut(lan) else {
            return Route::Drop(DropReason::UnknownSource);
        };
        let out = match l.nat.translate_out(now, from, to) {
            Ok(o) => o,
            Err(_) => return Route::Drop(DropReason::NatFull),
        };
        let hairpin = *to.ip() == l.nat.public_ip();
        let delivered = hairpin.then(|| l.nat.translate_in(now, to.port(), out.public));
        // translate_out may have retired an expired mapping of the same key: pass its Closed on.
        self.collect_events(lan);
        if let Some(to) = delivered {
            return Route::Hairpin {
                to,
                from: out.public,
                opened: out.opened,
            };
        }
        Route::Wire {
            via: out.public,
            to: SocketAddr::V4(to),
            opened: out.opened,
        }
    }

    /// A datagram from `from` arrived on the real socket bound at `public`: the private host
    /// endpoint to deliver it to.
    pub fn receive(
        &mut self,
        now: Instant,
        public: SocketAddrV4,
        from: SocketAddr,
    ) -> Result<SocketAddrV4, Refused> {
        let SocketAddr::V4(from) = from else {
            return Err(Refused::Filtered);
        };
        let lan = self.lan_of_public(*public.ip()).ok_or(Refused::NoMapping)?;
        let l = self.lans.get(self.index(lan).ok_or(Refused::NoMapping)?);
        l.ok_or(Refused::NoMapping)?
            .nat
            .translate_in(now, public.port(), from)
    }

    /// The embedder could not bind a socket at `public` for a mapping just created.
    pub fn open_failed(&mut self, public: SocketAddrV4) {
        if let Some(lan) = self.lan_of_public(*public.ip()) {
            if let Some(l) = self.lan_mut(lan) {
                l.nat.open_failed(public.port());
            }
        }
    }

    /// Expires NAT mappings whose time is up; see [`Network::poll_event`].
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.lans.len() {
            let due = self.lans[i].nat.poll_timeout().is_some_and(|t| t <= now);
            if due {
                self.lans[i].nat.handle_timeout(now);
                self.collect_events(LanId(self.ids.start + i as u32));
            }
        }
    }

    /// The earliest NAT deadline. Linear in the LANs: call it once per loop iteration, not per
    /// datagram.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lans.iter().filter_map(|l| l.nat.poll_timeout()).min()
    }

    pub fn poll_event(&mut self) -> Option<NetEvent> {
        self.events.pop_front()
    }

    /// Drops every mapping of every NAT (`--chaos`).
    pub fn expire_all_mappings(&mut self) {
        for i in 0..self.lans.len() {
            self.lans[i].nat.expire_all_mappings();
            self.collect_events(LanId(self.ids.start + i as u32));
        }
    }

    fn collect_events(&mut self, lan: LanId) {
        let Some(i) = self.index(lan) else { return };
        while let Some(NatEvent::Closed(public)) = self.lans[i].nat.poll_event() {
            self.events.push_back(NetEvent::Closed { lan, public });
        }
    }
}

/// SplitMix64's finaliser: spreads a seed and a LAN id over the port range.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
