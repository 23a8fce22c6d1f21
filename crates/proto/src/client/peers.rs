//! What the client knows about its peers: permissions (RFC 8656 section 9) and channel bindings
//! (RFC 8656 section 12), with the instant each should be refreshed.
//!
//! Both tables are short vectors scanned linearly: an ICE agent talks to a handful of peers, and
//! the tables only grow when the caller asks for a new peer, never because of received bytes.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use crate::channel_data::ChannelNumber;

/// Up to [`PeerList::CAPACITY`] peer addresses, stored inline so that a CreatePermission request
/// and its event need no allocation.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct PeerList {
    ips: [IpAddr; PeerList::CAPACITY],
    len: u8,
}

impl PeerList {
    /// The most peers one CreatePermission carries. RFC 8656 sets no limit; eight keeps the
    /// request well inside one datagram and the list small enough to copy.
    pub const CAPACITY: usize = 8;

    pub const fn new() -> Self {
        PeerList {
            ips: [IpAddr::V4(Ipv4Addr::UNSPECIFIED); PeerList::CAPACITY],
            len: 0,
        }
    }

    /// A list of the given addresses, duplicates dropped; `None` if more than
    /// [`PeerList::CAPACITY`] distinct ones.
    pub fn from_slice(ips: &[IpAddr]) -> Option<Self> {
        let mut list = PeerList::new();
        for ip in ips {
            if !list.push(*ip) {
                return None;
            }
        }
        Some(list)
    }

    /// Adds `ip` unless present; false when the list is full.
    pub fn push(&mut self, ip: IpAddr) -> bool {
        if self.contains(ip) {
            return true;
        }
        let n = usize::from(self.len);
        match self.ips.get_mut(n) {
            Some(slot) => {
                *slot = ip;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    pub fn as_slice(&self) -> &[IpAddr] {
        &self.ips[..usize::from(self.len)]
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.as_slice().contains(&ip)
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() == PeerList::CAPACITY
    }
}

impl Default for PeerList {
    fn default() -> Self {
        PeerList::new()
    }
}

impl core::fmt::Debug for PeerList {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Where a permission or channel stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    /// First request in flight.
    Requested,
    /// Confirmed by the server; `refresh_at` says when to renew it, if the client renews itself.
    Active { refresh_at: Option<Instant> },
    /// Confirmed, and a renewal is in flight.
    Refreshing,
}

impl State {
    fn confirmed(self) -> bool {
        !matches!(self, State::Requested)
    }

    fn refresh_at(self) -> Option<Instant> {
        match self {
            State::Active { refresh_at } => refresh_at,
            _ => None,
        }
    }

    /// A new request for the same thing: a confirmed one is being refreshed.
    fn requested_again(self) -> State {
        if self.confirmed() {
            State::Refreshing
        } else {
            State::Requested
        }
    }
}

#[derive(Debug)]
struct Permission {
    ip: IpAddr,
    state: State,
}

#[derive(Debug, Default)]
pub(crate) struct Permissions {
    list: Vec<Permission>,
}

impl Permissions {
    /// Notes that a CreatePermission for `peers` is about to be sent.
    pub fn requested(&mut self, peers: &PeerList) {
        for ip in peers.as_slice() {
            match self.list.iter_mut().find(|p| p.ip == *ip) {
                Some(p) => p.state = p.state.requested_again(),
                None => self.list.push(Permission {
                    ip: *ip,
                    state: State::Requested,
                }),
            }
        }
    }

    /// The server installed or refreshed permissions for `peers` (a CreatePermission or a
    /// ChannelBind succeeded).
    pub fn confirmed(&mut self, peers: &[IpAddr], refresh_at: Option<Instant>) {
        for ip in peers {
            let state = State::Active { refresh_at };
            match self.list.iter_mut().find(|p| p.ip == *ip) {
                Some(p) => p.state = state,
                None => self.list.push(Permission { ip: *ip, state }),
            }
        }
    }

    /// A CreatePermission failed: the client stops counting on these peers. The server may still
    /// hold an earlier permission until it expires, but nothing will refresh it.
    pub fn forget(&mut self, peers: &PeerList) {
        self.list.retain(|p| !peers.contains(p.ip));
    }

    /// Whether data from `ip` is expected: a permission was requested or confirmed. Data
    /// indications from other peers are dropped (RFC 8656 section 10.4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.list.iter().any(|p| p.ip == ip)
    }

    pub fn next_refresh(&self) -> Option<Instant> {
        self.list.iter().filter_map(|p| p.state.refresh_at()).min()
    }

    /// Collects up to a list's worth of permissions due for renewal and marks them in flight.
    pub fn take_due(&mut self, now: Instant) -> PeerList {
        let mut due = PeerList::new();
        for p in &mut self.list {
            if p.state.refresh_at().is_some_and(|t| t <= now) && due.push(p.ip) {
                p.state = State::Refreshing;
            }
        }
        due
    }

    /// Moves renewals due by `now` to `later` (the transaction table is full).
    pub fn postpone(&mut self, now: Instant, later: Instant) {
        for p in &mut self.list {
            if p.state.refresh_at().is_some_and(|t| t <= now) {
                p.state = State::Active {
                    refresh_at: Some(later),
                };
            }
        }
    }

    pub fn clear(&mut self) {
        self.list.clear();
    }
}

#[derive(Debug)]
struct Channel {
    peer: SocketAddr,
    number: ChannelNumber,
    state: State,
}

/// Channel bindings. Numbers are handed out in a rising cycle through 0x4000-0x4FFF, so a number
/// is reused only after all others: RFC 8656 section 12 forbids rebinding a number to another
/// peer for 5 minutes after its binding ends.
#[derive(Debug)]
pub(crate) struct Channels {
    list: Vec<Channel>,
    next: u16,
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            list: Vec::new(),
            next: ChannelNumber::MIN,
        }
    }
}

impl Channels {
    /// Notes that a ChannelBind for `peer` is about to be sent and returns its number: the one
    /// already bound to it, or the next free one. `None` when all 4096 are taken.
    pub fn requested(&mut self, peer: SocketAddr) -> Option<ChannelNumber> {
        if let Some(c) = self.list.iter_mut().find(|c| c.peer == peer) {
            c.state = c.state.requested_again();
            return Some(c.number);
        }
        let span = ChannelNumber::MAX - ChannelNumber::MIN + 1;
        let number = (0..span)
            .filter_map(|i| {
                let n = (self.next - ChannelNumber::MIN + i) % span + ChannelNumber::MIN;
                ChannelNumber::new(n)
            })
            .find(|n| self.list.iter().all(|c| c.number != *n))?;
        self.next = if number.get() == ChannelNumber::MAX {
            ChannelNumber::MIN
        } else {
            number.get() + 1
        };
        self.list.push(Channel {
            peer,
            number,
            state: State::Requested,
        });
        Some(number)
    }

    /// The server bound or refreshed `number` for `peer`.
    pub fn confirmed(
        &mut self,
        peer: SocketAddr,
        number: ChannelNumber,
        refresh_at: Option<Instant>,
    ) {
        if let Some(c) = self
            .list
            .iter_mut()
            .find(|c| c.peer == peer && c.number == number)
        {
            c.state = State::Active { refresh_at };
        }
    }

    /// A ChannelBind failed: forget the binding and free its number.
    pub fn forget(&mut self, peer: SocketAddr, number: ChannelNumber) {
        self.list
            .retain(|c| !(c.peer == peer && c.number == number));
    }

    /// The channel to send ChannelData on: only once the server confirmed it (RFC 8656
    /// section 12.1: the client must not send ChannelData before the ChannelBind succeeds).
    pub fn bound(&self, peer: SocketAddr) -> Option<ChannelNumber> {
        self.list
            .iter()
            .find(|c| c.peer == peer && c.state.confirmed())
            .map(|c| c.number)
    }

    /// The peer behind a received ChannelData's number. A binding still being requested counts:
    /// the server may relay on it as soon as it installed it, before its response arrives.
    pub fn peer(&self, number: ChannelNumber) -> Option<SocketAddr> {
        self.list
            .iter()
            .find(|c| c.number == number)
            .map(|c| c.peer)
    }

    pub fn has_ip(&self, ip: IpAddr) -> bool {
        self.list.iter().any(|c| c.peer.ip() == ip)
    }

    pub fn next_refresh(&self) -> Option<Instant> {
        self.list.iter().filter_map(|c| c.state.refresh_at()).min()
    }

    /// One binding due for renewal, marked in flight.
    pub fn take_due(&mut self, now: Instant) -> Option<(SocketAddr, ChannelNumber)> {
        let c = self
            .list
            .iter_mut()
            .find(|c| c.state.refresh_at().is_some_and(|t| t <= now))?;
        c.state = State::Refreshing;
        Some((c.peer, c.number))
    }

    /// Moves renewals due by `now` to `later` (the transaction table is full).
    pub fn postpone(&mut self, now: Instant, later: Instant) {
        for c in &mut self.list {
            if c.state.refresh_at().is_some_and(|t| t <= now) {
                c.state = State::Active {
                    refresh_at: Some(later),
                };
            }
        }
    }

    pub fn clear(&mut self) {
        self.list.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn peer(i: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 10_000 + i)
    }

    #[test]
    fn channel_numbers_are_unique_and_stable_per_peer() {
        let mut ch = Channels::default();
        let mut seen = HashSet::new();
        for i in 0..100 {
            let n = ch.requested(peer(i)).unwrap();
            assert!(seen.insert(n), "number {n:?} handed out twice");
        }
        // Asking again for a known peer refreshes its number instead of taking a new one.
        assert_eq!(ch.requested(peer(7)).unwrap().get(), 0x4007);
        assert_eq!(ch.list.len(), 100);
    }

    #[test]
    fn channel_numbers_cycle_and_run_out() {
        let mut ch = Channels::default();
        for i in 0..4096u16 {
            assert!(ch.requested(peer(i)).is_some());
        }
        assert_eq!(ch.requested(peer(5000)), None, "all 4096 numbers are taken");
        // Freeing one makes exactly that one available; the cursor had wrapped to the start.
        let freed = ChannelNumber::new(0x4100).unwrap();
        let p = ch.peer(freed).unwrap();
        ch.forget(p, freed);
        assert_eq!(ch.requested(peer(5000)), Some(freed));
    }

    #[test]
    fn freed_numbers_are_not_reused_before_the_cycle_ends() {
        let mut ch = Channels::default();
        let a = ch.requested(peer(1)).unwrap();
        ch.forget(peer(1), a);
        let b = ch.requested(peer(2)).unwrap();
        assert_ne!(a, b);
        assert_eq!(b.get(), a.get() + 1);
    }

    #[test]
    fn channels_are_usable_only_once_confirmed() {
        let mut ch = Channels::default();
        let t = Instant::now();
        let n = ch.requested(peer(1)).unwrap();
        assert_eq!(ch.bound(peer(1)), None);
        assert_eq!(ch.peer(n), Some(peer(1)));
        ch.confirmed(peer(1), n, Some(t));
        assert_eq!(ch.bound(peer(1)), Some(n));
        assert_eq!(ch.next_refresh(), Some(t));
        assert_eq!(ch.take_due(t), Some((peer(1), n)));
        assert_eq!(ch.take_due(t), None, "in flight once");
        assert_eq!(ch.bound(peer(1)), Some(n), "still usable while refreshing");
    }

    #[test]
    fn permissions_refresh_in_batches() {
        let mut p = Permissions::default();
        let t = Instant::now();
        let ips: Vec<IpAddr> = (1..=10)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)))
            .collect();
        p.confirmed(&ips, Some(t));
        let first = p.take_due(t);
        assert_eq!(first.len(), PeerList::CAPACITY);
        let second = p.take_due(t);
        assert_eq!(second.len(), 2);
        assert!(p.take_due(t).is_empty());
        assert_eq!(p.next_refresh(), None);
        p.forget(&second);
        assert!(!p.contains(ips[9]));
        assert!(p.contains(ips[0]));
    }

    #[test]
    fn peer_list_bounds_and_dedup() {
        let ip = |i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
        let l = PeerList::from_slice(&[ip(1), ip(1), ip(2)]).unwrap();
        assert_eq!(l.as_slice(), &[ip(1), ip(2)]);
        let nine: Vec<IpAddr> = (1..=9).map(ip).collect();
        assert!(PeerList::from_slice(&nine).is_none());
        assert!(PeerList::from_slice(&nine[..8]).unwrap().is_full());
    }
}
