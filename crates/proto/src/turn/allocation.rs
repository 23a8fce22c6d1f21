//! One allocation's state (RFC 8656 section 2.2): its relay sockets, lifetime, permissions and
//! channels. Permissions and channels live in inline arrays: the common case is one or two peers,
//! which then cost no heap allocation and a short linear scan.

use super::FiveTuple;
use crate::channel_data::ChannelNumber;
use crate::stun::TransactionId;
use core::net::{IpAddr, SocketAddr};
use smallvec::SmallVec;

/// Milliseconds since the server's epoch: cheaper to store and compare than `Instant`.
pub type Millis = u64;

/// A relay socket of an allocation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    pub addr: SocketAddr,
    /// The driver's handle for the socket.
    pub handle: u32,
}

/// A permission (RFC 8656 section 9): keyed by IP address only, ports are ignored.
#[derive(Copy, Clone, Debug)]
pub struct Permission {
    pub ip: IpAddr,
    pub expires: Millis,
}

/// A channel binding (RFC 8656 section 12).
#[derive(Copy, Clone, Debug)]
pub struct Channel {
    pub number: ChannelNumber,
    pub peer: SocketAddr,
    pub expires: Millis,
}

/// A token bucket for the optional per-allocation bandwidth cap.
#[derive(Copy, Clone, Debug)]
pub struct TokenBucket {
    /// Bytes per second, which is also the burst size.
    rate: u64,
    tokens: u64,
    last: Millis,
}

impl TokenBucket {
    pub fn new(rate: u64, now: Millis) -> Self {
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes `n` bytes' worth of tokens; false when over the cap (the packet is dropped).
    pub fn take(&mut self, n: usize, now: Millis) -> bool {
        if now > self.last {
            let refill = self.rate.saturating_mul(now - self.last) / 1000;
            self.tokens = self.tokens.saturating_add(refill).min(self.rate);
            self.last = now;
        }
        let n = n as u64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// What an allocation relays over towards peers: UDP (RFC 8656) or TCP (RFC 6062).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RelayTransport {
    Udp,
    Tcp,
}

#[derive(Debug)]
pub struct Allocation {
    pub tuple: FiveTuple,
    /// UDP: the relay handles are UDP sockets. TCP: they are listening sockets, and peer data
    /// connections hang off the allocation (`connections`).
    pub transport: RelayTransport,
    /// The driver's token for the listening socket, to answer and deliver data through.
    pub listener: u32,
    /// The user the allocation belongs to (RFC 8656 section 5: later requests must match).
    pub user: Box<str>,
    /// Bumped on every slot reuse, so stale relay datagrams are recognised.
    pub generation: u32,
    pub relay_v4: Option<Relay>,
    pub relay_v6: Option<Relay>,
    pub expires: Millis,
    /// The Allocate that created it, so a retransmission gets the same success again.
    pub allocate_tid: TransactionId,
    pub reservation_token: Option<[u8; 8]>,
    pub permissions: SmallVec<[Permission; 2]>,
    pub channels: SmallVec<[Channel; 2]>,
    pub bucket: Option<TokenBucket>,
    /// RFC 6062: the CONNECTION-IDs of this allocation's peer data connections, in any state.
    pub connections: SmallVec<[u32; 2]>,
}

impl Allocation {
    pub fn relay_for(&self, peer: &IpAddr) -> Option<&Relay> {
        match peer {
            IpAddr::V4(_) => self.relay_v4.as_ref(),
            IpAddr::V6(_) => self.relay_v6.as_ref(),
        }
    }

    /// Is there a live permission for `ip` (already canonical)?
    #[inline]
    pub fn permits(&self, ip: &IpAddr, now: Millis) -> bool {
        self.permissions
            .iter()
            .any(|p| p.ip == *ip && p.expires > now)
    }

    /// Installs or refreshes a permission; false when the quota is full.
    pub fn permit(&mut self, ip: IpAddr, expires: Millis, max: usize) -> PermitOutcome {
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = expires;
            return PermitOutcome::Refreshed;
        }
        if self.permissions.len() >= max {
            return PermitOutcome::QuotaFull;
        }
        self.permissions.push(Permission { ip, expires });
        PermitOutcome::Created
    }

    #[inline]
    pub fn channel_peer(&self, n: ChannelNumber, now: Millis) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|c| c.number == n && c.expires > now)
            .map(|c| c.peer)
    }

    #[inline]
    pub fn channel_for_peer(&self, peer: &SocketAddr, now: Millis) -> Option<ChannelNumber> {
        self.channels
            .iter()
            .find(|c| c.peer == *peer && c.expires > now)
            .map(|c| c.number)
    }

    /// Drops expired permissions and channels; returns how many of each went.
    pub fn expire(&mut self, now: Millis) -> (usize, usize) {
        let (p, c) = (self.permissions.len(), self.channels.len());
        self.permissions.retain(|x| x.expires > now);
        self.channels.retain(|x| x.expires > now);
        (p - self.permissions.len(), c - self.channels.len())
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PermitOutcome {
    Created,
    Refreshed,
    QuotaFull,
}
